//! Controller reset in the middle of I/O, asynchronous events, shadow
//! doorbells on and off, device errors on reads and writes, and commands
//! that hang in the device, against QEMU's controller.

use std::time::{Duration, Instant};

use qemu_harness::{GuestStream, drive_id};
use serde_json::json;
use vm_tests::{check_thread_ranges, image_bytes, run_ok, vm};

#[test]
fn reset_in_the_middle_of_io_loses_nothing() {
    let config = vm();
    let run = run_ok(
        &config,
        "RUST_LOG=nvme_driver=info guest-check reset --threads 3 --resets 3 --region 4096 --seed 71",
    );
    let out = run.stdout_text();
    for i in 1..=3 {
        assert!(out.contains(&format!("reset {i} done")), "{out}");
    }
    for t in 0..3 {
        assert!(out.contains(&format!("thread {t}: ")), "{out}");
    }
    // The queue pairs really had commands in flight when the resets came.
    let err = run.stderr_text();
    let resubmitted: usize = err
        .lines()
        .filter_map(|l| {
            l.split("; ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert!(
        resubmitted > 0,
        "no command was resubmitted after a reset:\n{err}"
    );
    assert!(
        err.contains("created again after a controller reset"),
        "{err}"
    );
    check_thread_ranges(run.disk(1).expect("image"), 3, 4096, 512, 71);
}

#[test]
fn nvmectl_reset_and_features() {
    let config = vm();
    let run = run_ok(
        &config,
        "nvmectl reset && nvmectl set-feature -f 0x06 -v 0 && nvmectl get-feature -f 0x06 \
         && nvmectl get-feature -f 0x0b && nvmectl set-feature -f 0x08 -v 0x0a04; echo \"rc=$?\"; true \
         && dd if=/dev/urandom of=/root/p bs=512 count=4 2>/dev/null \
         && nvmectl write --lba 3 --data /root/p && nvmectl reset \
         && nvmectl read --lba 3 --blocks 4 --output /tmp/b && cmp /root/p /tmp/b && echo same",
    );
    let out = run.stdout_text();
    assert_eq!(
        out.matches("0000:00:03.0: controller reset").count(),
        2,
        "{out}"
    );
    assert!(
        out.contains("set-feature:0x06 (Volatile Write Cache), value:0x00000000"),
        "{out}"
    );
    assert!(
        out.contains("get-feature:0x06 (Volatile Write Cache), Current value:0x00000000"),
        "{out}"
    );
    // The driver asked for SMART warnings and namespace notices at open.
    assert!(
        out.contains(
            "get-feature:0x0b (Asynchronous Event Configuration), Current value:0x0000013f"
        ),
        "{out}"
    );
    // QEMU does not let interrupt coalescing be changed: a clear error.
    assert!(out.contains("rc=1"), "{out}");
    assert!(
        run.stderr_text().contains(
            "nvmectl: Set Features 0x08 (Interrupt Coalescing) failed: Feature Not Changeable (sct 0x1, sc 0x0e, dnr)"
        ),
        "{}",
        run.stderr_text()
    );
    assert!(out.ends_with("same\n"), "{out}");
}

#[test]
fn asynchronous_events_are_reported() {
    let config = vm();
    let run = run_ok(&config, "guest-check events");
    let out = run.stdout_text();
    assert!(out.contains("events before: 0"), "{out}");
    assert!(
        out.contains("event: Temperature Threshold (dw0 0x00020101)"),
        "{out}"
    );
    assert!(out.contains("critical warning 0x2"), "{out}");
}

#[test]
fn shadow_doorbells_on_and_off_move_the_same_data() {
    let config = vm();
    let run = run_ok(
        &config,
        "guest-check threads --threads 2 --region 2048 --seed 81 \
         && guest-check --no-shadow threads --threads 2 --region 2048 --seed 91",
    );
    let out = run.stdout_text();
    assert!(
        out.contains("PRP, shadow doorbells"),
        "QEMU 7.2 offers Doorbell Buffer Config: {out}"
    );
    assert!(out.contains("PRP, MMIO doorbells"), "{out}");
    // The second run overwrote the same ranges with its own pattern.
    check_thread_ranges(run.disk(1).expect("image"), 2, 2048, 512, 91);
}

#[test]
fn device_errors_name_the_status_and_the_lba() {
    let mut config = vm();
    // Reads touching 512-byte sector 2048 of namespace 1 fail with EIO.
    config.blkdebug = Some(
        "[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\nsector = \"2048\"\nonce = \"off\"\n"
            .into(),
    );
    let run = run_ok(
        &config,
        "nvmectl read --lba 2047 --blocks 2 > /dev/null 2>/tmp/err; echo \"rc=$?\"; cat /tmp/err
         nvmectl read --lba 2040 --blocks 8 > /dev/null && echo before-ok
         dd if=/dev/urandom of=/root/p bs=512 count=8 2>/dev/null
         nvmectl write --lba 4096 --data /root/p && nvmectl read --lba 4096 --blocks 8 --output /tmp/b \
           && cmp /root/p /tmp/b && echo elsewhere-ok",
    );
    let out = run.stdout_text();
    assert!(out.contains("rc=1"), "{out}");
    assert!(
        out.contains(
            "nvmectl: Read nsid 1 lba 2047+2 failed: Unrecovered Read Error (sct 0x2, sc 0x81)"
        ),
        "{out}"
    );
    assert!(
        out.contains("before-ok") && out.contains("elsewhere-ok"),
        "{out}"
    );
}

#[test]
fn write_errors_fail_one_request_and_the_queue_goes_on() {
    let mut config = vm();
    // Writes touching 512-byte sector 2048 of namespace 1 fail with EIO.
    config.blkdebug = Some(
        "[inject-error]\nevent = \"write_aio\"\nerrno = \"5\"\nsector = \"2048\"\nonce = \"off\"\n"
            .into(),
    );
    let run = run_ok(&config, "guest-check write-errors --requests 16 --seed 151");
    let out = run.stdout_text();
    // QEMU reports a failed write as Write Fault; the request names its
    // command and LBA range.
    assert!(
        out.contains(
            "write at lba 2048 failed: Write nsid 1 lba 2048+8 failed: Write Fault (sct 0x2, sc 0x80)"
        ),
        "{out}"
    );
    assert!(out.contains("15 of 16 writes completed"), "{out}");
    assert!(out.contains("the other 15 ranges read back"), "{out}");
    // On the host: every write that completed is in the image.
    let image = run.disk(1).expect("image");
    for i in 0..16u64 {
        let slba = 2000 + i * 8;
        if slba == 2048 {
            continue;
        }
        let bytes = image_bytes(image, slba * 512, 8 * 512);
        assert_eq!(
            vm_tests::pattern::first_mismatch(151, slba, 512, &bytes),
            None,
            "LBA range {slba}+8 in the image"
        );
    }
}

#[test]
fn dma_memory_comes_from_huge_pages_when_the_guest_has_them() {
    let mut config = vm();
    config.hugepages = 32;
    let run = run_ok(
        &config,
        "guest-check threads --threads 2 --region 1024 --seed 101",
    );
    let out = run.stdout_text();
    let line = out
        .lines()
        .find(|l| l.starts_with("dma pool:"))
        .unwrap_or_default();
    let (chunks, huge) = line
        .strip_prefix("dma pool: ")
        .and_then(|r| {
            let mut n = r
                .split(|c: char| !c.is_ascii_digit())
                .filter(|w| !w.is_empty());
            Some((
                n.next()?.parse::<usize>().ok()?,
                n.nth(1)?.parse::<usize>().ok()?,
            ))
        })
        .unwrap_or((0, 0));
    assert!(
        chunks > 0 && huge == chunks,
        "every chunk on huge pages: {out}"
    );
}

#[test]
fn interrupt_mode_queues_sleep_and_are_woken_by_msix() {
    let config = vm();
    let run = run_ok(
        &config,
        "guest-check --interrupts threads --threads 2 --region 2048 --qd 4 --seed 111",
    );
    let out = run.stdout_text();
    let wakeups: u64 = out
        .lines()
        .filter(|l| l.starts_with("thread "))
        .filter_map(|l| {
            l.rsplit(", ")
                .next()?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(
        wakeups > 0,
        "no thread was ever woken by its interrupt: {out}"
    );
    check_thread_ranges(run.disk(1).expect("image"), 2, 2048, 512, 111);
}

/// The write limits of namespace 1's drive (QMP `block_set_io_throttle`);
/// 0 is no limit.
fn throttle_writes(bytes_per_second: u64) -> serde_json::Value {
    json!({
        "device": drive_id(1),
        "bps": 0, "bps_rd": 0, "bps_wr": bytes_per_second,
        "iops": 0, "iops_rd": 0, "iops_wr": 0,
    })
}

/// The number in `line` after `label` (`label 12.5 ms` gives 12.5).
fn number_after(text: &str, label: &str) -> Option<f64> {
    let rest = &text[text.find(label)? + label.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Prints the guest's report of a `hang` scenario (the recovery record
/// and times), for the test's output.
fn report_hang(out: &str) {
    for l in out
        .lines()
        .filter(|l| l.starts_with("recovery") || l.starts_with("hang: "))
    {
        println!("guest: {l}");
    }
}

/// Checks what the `hang` scenario wrote: `region` blocks from LBA 0 hold
/// the pattern of `seed`, in the host image.
fn check_hang_region(run: &vm_tests::VmRun, region: u64, seed: u64) {
    let image = run.disk(1).expect("image");
    let bytes = image_bytes(image, 0, region as usize * 512);
    assert_eq!(
        vm_tests::pattern::first_mismatch(seed, 0, 512, &bytes),
        None,
        "LBAs 0..{region} in the host image"
    );
}

/// A command hangs in the device; the driver times it out, sends Abort
/// (QEMU answers "not aborted": its Abort never aborts), and resets the
/// controller; the reset ends the hang, the commands in flight are
/// resubmitted, and every write is answered and on the disk.
///
/// The hang is QEMU's I/O throttle, set over QMP: at 1 byte/s every write
/// after the first waits about an hour in QEMU's block layer. A controller
/// reset drains the namespace (`nvme_ctrl_reset` -> `blk_drain`), and a
/// drain lets throttled requests through, as a real device's reset ends
/// its commands. (A blkdebug breakpoint cannot stand in here: QEMU 7.2
/// drains in the vCPU thread that wrote CC.EN = 0, holding the big lock,
/// and the monitor command that resumes a breakpoint runs in the main
/// loop, which the drain does not run: the reset would never end. See
/// docs/TESTING.md.) The host lifts the throttle when the driver says it
/// resets, so the resubmitted writes run free.
#[test]
fn a_hung_command_is_aborted_and_the_controller_reset_recovers_it() {
    let config = vm();
    let (run, waited) = config
        .run_with(
            &[
                "sh",
                "-c",
                "RUST_LOG=nvme_driver=info guest-check --io-timeout-ms 2000 hang --qd 8 --region 1024 --seed 161",
            ],
            |guest| {
                let long = Duration::from_secs(180);
                guest
                    .wait_for(GuestStream::Stdout, "hang: writing", long)
                    .expect("the guest starts writing");
                let mut qmp = guest.qmp().expect("QMP");
                let version = qmp.version().to_string();
                qmp.execute("block_set_io_throttle", Some(throttle_writes(1)))
                    .expect("throttle");
                let held = Instant::now();
                guest
                    .wait_for(
                        GuestStream::Stderr,
                        "did not come back after Abort; resetting the controller",
                        long,
                    )
                    .expect("the driver resets the controller");
                let waited = held.elapsed();
                qmp.execute("block_set_io_throttle", Some(throttle_writes(0)))
                    .expect("lift the throttle");
                (waited, version)
            },
        )
        .expect("run the guest");
    let (waited, version) = waited;
    // The monitor's greeting names the QEMU that ran (`7.2.22` in
    // `QEMU emulator version 7.2.22 (Debian ...)`).
    assert!(
        run.qemu_version.contains(&format!("version {version}")),
        "QMP says {version}, QEMU says {}",
        run.qemu_version
    );
    let out = run.stdout_text();
    let err = run.stderr_text();
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    report_hang(&out);
    // The timeout, the Abort (not aborted: bit 0 of dword 0), the reset.
    assert!(err.contains("timed out; aborting it"), "{err}");
    assert!(err.contains("(not aborted)"), "{err}");
    assert!(err.contains("controller reset done"), "{err}");
    assert!(
        out.contains("controller reset, ") && out.contains("Abort answered dw0 0x1"),
        "{out}"
    );
    let resubmitted = number_after(&out, "controller reset, ").unwrap_or(0.0);
    assert!(
        resubmitted >= 1.0,
        "the hung writes were resubmitted: {out}"
    );
    // Every request answered, none failed, and the region reads back.
    assert!(out.contains(" 0 failed;"), "{out}");
    assert!(out.contains("hang: LBAs 0..1024 read back"), "{out}");
    check_hang_region(&run, 1024, 161);
    let total = number_after(&out, "recovery time: ").expect("recovery time");
    let reset = number_after(&out, "reset and resubmission ").expect("reset time");
    let first = number_after(&out, "the first write completed ").expect("first write");
    println!(
        "hung command (throttle, reset) on {}: the host saw the reset {:.1} s after holding writes; \
         recovery {total:.1} ms from the timeout to the queue usable again (reset and resubmission \
         {reset:.1} ms); first write completed {first:.1} ms after",
        run.qemu_version,
        waited.as_secs_f64()
    );
    // Generous: 2 s of waiting after the Abort and a reset, on a busy host.
    assert!(
        (2000.0..60_000.0).contains(&total),
        "recovery took {total} ms: {out}"
    );
}

/// A write held by a blkdebug breakpoint (set with HMP `qemu-io`) times
/// out; Abort does not abort it; with `reset_on_timeout` off the driver
/// gives up on it: its request fails with a command timeout naming it,
/// its CID and buffer stay with the device, the queue goes on. The host
/// then resumes the breakpoint; the write completes late, the driver
/// absorbs the completion and frees the CID, and every block is right.
/// (With a reset instead, QEMU 7.2 never finishes the reset while the
/// request is held: see the test above.)
#[test]
fn a_write_held_by_blkdebug_is_given_up_on_and_its_late_completion_absorbed() {
    let mut config = vm();
    // No rules: blkdebug only for its breakpoints.
    config.blkdebug = Some(String::new());
    let (run, ()) = config
        .run_with(
            &[
                "sh",
                "-c",
                "RUST_LOG=nvme_driver=info guest-check --io-timeout-ms 2000 --no-reset-on-timeout \
                 hang --qd 8 --region 1024 --seed 171",
            ],
            |guest| {
                let long = Duration::from_secs(180);
                guest
                    .wait_for(GuestStream::Stdout, "hang: writing", long)
                    .expect("the guest starts writing");
                let mut qmp = guest.qmp().expect("QMP");
                qmp.qemu_io(&drive_id(1), "break write_aio held")
                    .expect("set the breakpoint");
                guest
                    .wait_for(GuestStream::Stdout, "failed: ", long)
                    .expect("the driver gives up on the held write");
                qmp.qemu_io(&drive_id(1), "resume held")
                    .expect("resume the held write");
            },
        )
        .expect("run the guest");
    let out = run.stdout_text();
    let err = run.stderr_text();
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    report_hang(&out);
    assert!(err.contains("(not aborted)"), "{err}");
    assert!(!err.contains("resetting the controller"), "{err}");
    assert!(out.contains(": given up; Abort answered dw0 0x1"), "{out}");
    // Exactly the held write failed, with an error that names it.
    let failures: Vec<&str> = out.lines().filter(|l| l.contains(" failed: ")).collect();
    assert_eq!(failures.len(), 1, "{out}");
    assert!(
        failures[0].contains("no completion within") && failures[0].contains("Write nsid 1 lba "),
        "{out}"
    );
    assert!(out.contains(" 1 failed;"), "{out}");
    // Its late completion came and freed the CID.
    assert!(
        out.contains("hang: commands given up on still in the device: 0"),
        "{out}"
    );
    assert!(err.contains("late completion for CID"), "{err}");
    assert!(out.contains("hang: LBAs 0..1024 read back"), "{out}");
    check_hang_region(&run, 1024, 171);
    let total = number_after(&out, "recovery time: ").expect("recovery time");
    println!(
        "held write (blkdebug, given up) on {}: {total:.1} ms from the timeout to the queue usable again",
        run.qemu_version
    );
}

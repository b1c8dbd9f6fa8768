//! The VM harness itself: exit status, separate stdout and stderr, the
//! wall-clock limit, null-co namespaces, a disk image kept across boots,
//! the CPU model, the IOMMU mode and per-namespace properties, and the
//! chosen QEMU and guest kernel.

use std::time::{Duration, Instant};

use vm_tests::{GuestExit, IommuMode, NsDisk, run, run_ok, vm};

#[test]
fn exit_status_and_streams_come_back_separately() {
    let mut config = vm();
    config.disks = vec![NsDisk::Null];
    let run = run(
        &config,
        "nvmectl read --lba 1000 --blocks 1 --hexdump | head -n 2; printf 'to stderr\\n' >&2; exit 7",
    );
    assert_eq!(run.exit, GuestExit::Exited(7), "{}", run.describe());
    assert_eq!(run.stderr_text(), "to stderr\n");
    let zeros = "00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00";
    assert_eq!(
        run.stdout_text(),
        format!(
            "00000007d000: {zeros}  ................\n00000007d010: {zeros}  ................\n"
        ),
        "null-co reads zeroes, dumped at byte offset 1000 * 512"
    );
    assert!(run.disk(1).is_none(), "a null namespace has no image");
}

#[test]
fn a_hung_guest_is_killed_at_the_limit() {
    // The limit leaves room for a boot on a loaded host (over 30 s with
    // this file's other guests and other builds on the same two cores),
    // so that the output before the hang has come out.
    let limit = Duration::from_secs(60);
    let mut config = vm();
    config.timeout = limit;
    let start = Instant::now();
    let run = run(&config, "echo started; sleep 600");
    assert_eq!(run.exit, GuestExit::TimedOut(limit));
    assert!(
        start.elapsed() < limit + Duration::from_secs(40),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(
        run.stdout_text(),
        "started\n",
        "output before the hang is kept"
    );
}

#[test]
fn a_named_disk_is_kept_between_boots() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("ns1.img");
    let mut config = vm();
    config.disks = vec![NsDisk::File(image.clone())];
    run_ok(
        &config,
        "printf 'kept across boots' > /tmp/m && head -c 512 /dev/zero >> /tmp/m && \
         head -c 512 /tmp/m > /tmp/b && nvmectl write --lba 9 --data /tmp/b",
    );
    assert_eq!(
        std::fs::metadata(&image).expect("image kept").len(),
        config.disk_size,
        "created at the configured size"
    );
    let run = run_ok(
        &config,
        "nvmectl read --lba 9 --blocks 1 --output /tmp/r && head -c 17 /tmp/r",
    );
    assert_eq!(run.stdout_text(), "kept across boots");
}

/// `-cpu max` gives the guest SSE4.2 (TCG's default qemu64 lacks it);
/// `iommu=pt` puts kernel drivers in passthrough while vfio-pci still
/// works (the device gets its own domain); namespace 2 alone has
/// 4096-byte LBAs.
#[test]
fn cpu_model_iommu_mode_and_namespace_properties_reach_the_guest() {
    let mut config = vm();
    config.namespaces = 2;
    config.disks = vec![NsDisk::Null, NsDisk::Null];
    config.ns_props = vec![
        Vec::new(),
        vec![("logical_block_size".into(), "4096".into())],
    ];
    config.cpu = Some("max".into());
    config.iommu_mode = IommuMode::Passthrough;
    let run = run_ok(
        &config,
        "grep -c -w sse4_2 /proc/cpuinfo; cat /proc/cmdline; dmesg | grep -m1 'Default domain type'; \
         nvmectl read --nsid 1 --lba 0 --blocks 1 | wc -c; nvmectl read --nsid 2 --lba 0 --blocks 1 | wc -c",
    );
    let out = run.stdout_text();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert_eq!(lines[0], "2", "every vCPU has SSE4.2: {out}");
    assert!(
        lines[1].split_whitespace().any(|w| w == "iommu=pt"),
        "{out}"
    );
    assert!(lines[2].contains("Passthrough"), "{out}");
    // The raw bytes of one 512-byte block and of one 4096-byte block.
    assert_eq!((lines[3], lines[4]), ("512", "4096"), "{out}");
}

#[test]
fn the_guest_runs_on_the_chosen_kernel_and_qemu() {
    let config = vm();
    let kernel = config.kernel_suite().expect("guest kernel choice");
    let qemu = config.qemu_suite().expect("QEMU choice");
    let run = run_ok(&config, "uname -r; nvmectl identify");
    let out = run.stdout_text();
    let release = out.lines().next().unwrap_or("").trim();
    assert!(
        release.starts_with(&format!("{}.", kernel.kernel_name())),
        "guest kernel {release}, chosen {}",
        kernel.kernel_name()
    );
    assert!(
        run.kernel_package.ends_with(release),
        "guest kernel {release} but package {}",
        run.kernel_package
    );
    assert!(
        run.qemu_version
            .contains(&format!("version {}.", qemu.qemu_name())),
        "QEMU {}, chosen {}",
        run.qemu_version,
        qemu.qemu_name()
    );
    // QEMU's controller reports QEMU's version as its firmware revision.
    let fr = out
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "fr").then(|| v.trim())
        })
        .unwrap_or_else(|| panic!("no fr line in identify:\n{out}"));
    assert!(
        fr.starts_with(&format!("{}.", qemu.qemu_name())),
        "firmware revision {fr}, chosen QEMU {}",
        qemu.qemu_name()
    );
}

//! The vhost-user-blk target in the guest: `nvme-vhost` serves namespace 1
//! (the emulated NVMe device, through the userspace driver) on a unix
//! socket, and libblkio's `virtio-blk-vhost-user` driver (`blkio-check`,
//! a front end written by others) writes a pattern at queue depths 8
//! (on two virtqueues from two threads), 32 and 1, flushes, reads it back
//! and verifies it, reads through a scatter list that breaks the PRP
//! rules, and writes zeroes and discards. The host then checks the raw
//! image. `nvme-bench --vhost-user` runs its workloads, verified, through
//! the same target. The failure paths: a memory region added and removed
//! under I/O, a front end killed in the middle of its writes and the next
//! one checking what it had acknowledged, and hostile descriptor chains
//! (with GET_ID) from a front end driven by hand (`vhost-front`).

use vm_tests::seqwrites::{Layout, Outcome};
use vm_tests::{GuestDriver, NsDisk, image_bytes, pattern, run_ok, vm};

const LEN: u64 = 64 << 20;
const SEED: u64 = 5;

/// A guest script: nvme-vhost (with `daemon` flags, its log in `log`)
/// serves one front end on /tmp/vhost.sock, `client`; the script fails
/// with the daemon's log if the socket never appears, the client fails or
/// the daemon exits with an error, and otherwise prints the log to stderr.
fn served_once(daemon: &str, client: &str, log: &str) -> String {
    format!(
        "nvme-vhost 0000:00:03.0 --socket /tmp/vhost.sock --once {daemon} 2>{log} &
pid=$!
i=0
while [ ! -S /tmp/vhost.sock ]; do
  i=$((i+1)); [ $i -lt 120 ] || {{ cat {log} >&2; echo 'no socket' >&2; exit 9; }}
  sleep 1
done
{client} || {{ rc=$?; cat {log} >&2; exit $rc; }}
wait $pid || {{ rc=$?; cat {log} >&2; exit $rc; }}
rm -f /tmp/vhost.sock
cat {log} >&2
"
    )
}

#[test]
fn libblkio_writes_flushes_and_verifies_through_nvme_vhost() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("ns1.img");
    let mut config = vm();
    config.disk_size = 96 << 20;
    config.disks = vec![NsDisk::File(image.clone())];
    // Three times in one boot, each with its own seed: QD 8 on two
    // virtqueues whose threads sleep on their NVMe queue's interrupt (the
    // default), QD 32 on one spinning (--poll), QD 1 on one with
    // interrupts. The last pass's pattern is the one in the image.
    let pass = |flags: &str, queues: u32, qd: u32, seed: u64, log: &str| {
        served_once(
            &format!("--queues {queues} {flags}"),
            &format!(
                "blkio-check --socket /tmp/vhost.sock --queues {queues} --len {LEN} --chunk 65536 \
  --qd {qd} --seed {seed} --zeroes"
            ),
            log,
        )
    };
    let script = format!(
        "{}{}{}",
        pass("", 2, 8, SEED - 2, "/tmp/irq.log"),
        pass("--poll", 1, 32, SEED - 1, "/tmp/poll.log"),
        pass("", 1, 1, SEED, "/tmp/qd1.log")
    );
    let run = run_ok(&config, &script);
    let out = run.stdout_text();
    eprintln!("{out}");
    assert_eq!(
        out.matches("blkio-check: all verified").count(),
        3,
        "{}",
        run.describe()
    );
    for (qd, queues) in [(8, 2), (32, 1), (1, 1)] {
        assert!(
            out.contains(&format!("65536 at QD{qd} on {queues} queues")),
            "QD {qd}: {out}"
        );
        assert!(
            out.contains(&format!("read: {LEN} bytes at QD{qd} verified")),
            "QD {qd}: {out}"
        );
    }
    assert_eq!(out.matches("flush: ok").count(), 3, "{out}");
    // QEMU's controller has a volatile write cache: FLUSH is offered, so
    // the client's flush reaches the device.
    assert_eq!(out.matches("flush needed true").count(), 3, "{out}");
    let log = run.stderr_text();
    eprintln!("{log}");
    // No error logged, teardown included (a DMA unmap after the VFIO
    // device was closed used to be).
    assert!(!log.contains(" ERROR "), "{log}");
    // The first pass: two virtqueues, two threads, two NVMe queues.
    assert_two_interrupt_queues(&log);
    assert!(log.contains("NVMe queue 1 (polled)"), "{log}");
    // The daemons' summaries after their front end left.
    let summaries: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("front end gone ("))
        .collect();
    assert_eq!(summaries.len(), 3, "{log}");
    for summary in summaries {
        // 1024 writes and 1024 reads of 64 KiB, and the 1 MiB write and
        // read of the zeroes step: page-aligned buffers, all zero-copy;
        // the one scattered read bounced.
        assert_eq!(
            summary_count(summary, "direct"),
            2 * (LEN / 65536) + 2,
            "{summary}"
        );
        assert_eq!(summary_count(summary, "bounced"), 1, "{summary}");
        assert_eq!(summary_count(summary, "failed"), 0, "{summary}");
        assert_eq!(summary_count(summary, "unsupported"), 0, "{summary}");
    }

    let data = image_bytes(&image, 0, LEN as usize);
    assert_eq!(
        pattern::first_mismatch(SEED, 0, 512, &data),
        None,
        "the image holds the pattern the client wrote"
    );
    let zeroed = image_bytes(&image, LEN, 1 << 20);
    assert!(
        zeroed.iter().all(|&b| b == 0),
        "the write-zeroes range is zero in the image"
    );
}

/// The client validated against QEMU's own vhost-user-blk server
/// (qemu-storage-daemon, carried from the host with its libraries),
/// exporting the namespace through the guest kernel's nvme driver: the
/// same checks pass there, so a failure against nvme-vhost is ours.
#[test]
fn libblkio_client_passes_against_qemu_storage_daemon() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("ns1.img");
    let mut config = vm();
    config.disk_size = 96 << 20;
    config.disks = vec![NsDisk::File(image.clone())];
    config.driver = GuestDriver::Kernel;
    config.host_tools = vec!["qemu-storage-daemon".into()];
    let script = format!(
        "qemu-storage-daemon \
  --blockdev driver=host_device,node-name=ns1,filename=/dev/nvme0n1,cache.direct=on \
  --export type=vhost-user-blk,id=exp,node-name=ns1,writable=on,addr.type=unix,addr.path=/tmp/qsd.sock \
  2>/tmp/qsd.log &
pid=$!
i=0
while [ ! -S /tmp/qsd.sock ]; do
  i=$((i+1)); [ $i -lt 120 ] || {{ cat /tmp/qsd.log >&2; echo 'no socket' >&2; exit 9; }}
  sleep 1
done
blkio-check --socket /tmp/qsd.sock --len {LEN} --chunk 65536 --qd 8 --seed {SEED} --zeroes \
  || {{ rc=$?; cat /tmp/qsd.log >&2; exit $rc; }}
kill $pid; wait $pid
sync
"
    );
    let run = run_ok(&config, &script);
    let out = run.stdout_text();
    eprintln!("{out}");
    assert!(
        out.contains("blkio-check: all verified"),
        "{}",
        run.describe()
    );
    let data = image_bytes(&image, 0, LEN as usize);
    assert_eq!(
        pattern::first_mismatch(SEED, 0, 512, &data),
        None,
        "the image holds the pattern the client wrote"
    );
    assert!(
        image_bytes(&image, LEN, 1 << 20).iter().all(|&b| b == 0),
        "the write-zeroes range is zero in the image"
    );
}

/// The daemon as a non-root user whose RLIMIT_MEMLOCK covers the
/// controller but not the client's 32 MiB of shared memory: mapping it
/// fails with the limit named, the client is refused, and nothing is
/// written.
#[test]
fn nvme_vhost_says_when_memlock_cannot_cover_guest_memory() {
    let config = vm();
    let run = run_ok(
        &config,
        "chown nvme /dev/vfio/[0-9]*
(ulimit -l 16384; su -s /bin/sh nvme -c \
  'nvme-vhost 0000:00:03.0 --socket /tmp/vhost.sock --once 2>/tmp/vhost.log') &
pid=$!
i=0
while [ ! -S /tmp/vhost.sock ]; do
  i=$((i+1)); [ $i -lt 120 ] || { cat /tmp/vhost.log; echo 'no socket'; exit 9; }
  sleep 1
done
blkio-check --socket /tmp/vhost.sock --len 4194304 --chunk 1048576 --qd 32 --seed 3 2>&1
echo \"== client rc=$?\"
wait $pid
echo \"== daemon rc=$?\"
cat /tmp/vhost.log",
    );
    let out = run.stdout_text();
    eprintln!("{out}");
    assert!(!out.contains("all verified"), "{out}");
    assert!(
        !out.contains("== client rc=0"),
        "the client is refused: {out}"
    );
    assert!(
        out.contains(
            "mapping guest memory for the device: cannot pin 33554432 bytes of DMA memory"
        ) && out.contains("RLIMIT_MEMLOCK is 16777216 bytes; raise it"),
        "{out}"
    );
    let image = run.disk(1).expect("image");
    assert!(
        image_bytes(image, 0, 4 << 20).iter().all(|&b| b == 0),
        "nothing written"
    );
}

/// The daemon's log says virtqueues 0 and 1 each got an NVMe queue of its
/// own, with interrupts (which gets queue 1 depends on which virtqueue was
/// kicked first).
fn assert_two_interrupt_queues(log: &str) {
    let queue_of = |vq: u32| -> Option<&str> {
        log.lines()
            .find_map(|l| l.split(&format!("virtqueue {vq}: NVMe queue ")).nth(1))
    };
    let (q0, q1) = (queue_of(0), queue_of(1));
    for q in [q0, q1] {
        assert!(q.is_some_and(|q| q.ends_with(" (interrupts)")), "{log}");
    }
    assert_ne!(q0, q1, "{log}");
}

/// Pulls the `direct`/`bounced`/`failed`/`unsupported` count out of a
/// daemon's "front end gone" summary line.
fn summary_count(summary: &str, name: &str) -> u64 {
    summary
        .split("requests ")
        .nth(1)
        .and_then(|counts| counts.split(&format!("{name} ")).nth(1))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {name} count in {summary:?}"))
}

/// nvme-bench's workloads through the vhost-user-blk target: `nvme-bench
/// --vhost-user` (libblkio's client) against `nvme-vhost` in the guest,
/// verified, twice in one boot: a random read/write mix on two threads
/// and two virtqueues (the client sleeping on its call eventfds, the
/// daemon on its NVMe interrupts), then random reads at QD 32 on one
/// polled virtqueue (the daemon polling too). The JSON's counts add up,
/// every read was checked, the daemon served every request of the
/// prefill and the run zero-copy, and the image holds the pattern.
#[test]
fn nvme_bench_runs_verified_through_nvme_vhost() {
    const RANGE: u64 = 16 << 20;
    const SEED: u64 = 9;
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("ns1.img");
    let mut config = vm();
    config.disk_size = 32 << 20;
    config.disks = vec![NsDisk::File(image.clone())];
    let pass = |daemon: &str, queues: u32, bench: &str, log: &str| {
        served_once(
            &format!("--queues {queues} {daemon}"),
            &format!(
                "nvme-bench --vhost-user /tmp/vhost.sock --verify --seed {SEED} --range-size {RANGE} \
  --warmup 0 --json {bench}"
            ),
            log,
        )
    };
    let script = format!(
        "{}{}",
        pass(
            "",
            2,
            "-w randrw -M 50 -q 8 -j 2 -n 1500 --interrupts",
            "/tmp/irq.log"
        ),
        pass("--poll", 1, "-w randread -q 32 -n 3000", "/tmp/poll.log")
    );
    let run = run_ok(&config, &script);
    let out = run.stdout_text();
    let log = run.stderr_text();
    eprintln!("{out}\n{log}");
    let docs: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("nvme-bench's JSON"))
        .collect();
    assert_eq!(docs.len(), 2, "{}", run.describe());
    let summaries: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("front end gone ("))
        .collect();
    assert_eq!(summaries.len(), 2, "{log}");
    assert!(!log.contains(" ERROR "), "{log}");
    // (threads, I/Os each at least, reads and writes both)
    let expect = [(2u64, 1500u64, true), (1, 3000, false)];
    for ((doc, summary), (threads, per_thread, mixed)) in docs.iter().zip(&summaries).zip(expect) {
        let job = &doc["job"];
        assert_eq!(job["device"], "vhost-user:/tmp/vhost.sock", "{doc}");
        assert_eq!(job["vhost_user"], true, "{doc}");
        assert_eq!(job["verify"], true, "{doc}");
        assert_eq!(job["lba_size"], 512, "{doc}");
        assert_eq!(job["range_blocks"], RANGE / 512, "{doc}");
        let total = &doc["total"];
        let n = |v: &serde_json::Value, k: &str| {
            v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {doc}"))
        };
        assert_eq!(n(total, "errors"), 0, "{doc}");
        let ios = n(total, "ios");
        assert_eq!(ios, n(total, "reads") + n(total, "writes"), "{doc}");
        let per = doc["threads"].as_array().expect("threads");
        assert_eq!(per.len() as u64, threads, "{doc}");
        for t in per {
            // Each thread stops after its count, noticed at the next
            // completion batch (the one that crossed it resubmitted);
            // the ones in flight then complete and count too: less than
            // two queue depths over.
            let k = n(t, "ios");
            assert!(k >= per_thread && k < per_thread + 64, "{doc}");
        }
        assert_eq!(per.iter().map(|t| n(t, "ios")).sum::<u64>(), ios, "{doc}");
        if mixed {
            assert!(
                n(total, "reads") > ios / 4 && n(total, "writes") > ios / 4,
                "{doc}"
            );
        } else {
            assert_eq!(n(total, "writes"), 0, "{doc}");
        }
        assert!(total["iops"].as_f64().is_some_and(|x| x > 0.0), "{doc}");
        let lat = &total["latency"];
        let us = |k: &str| lat[k].as_f64().unwrap_or(-1.0);
        assert!(
            0.0 < us("min_us") && us("min_us") <= us("p50_us") && us("p50_us") <= us("max_us"),
            "{doc}"
        );
        // The daemon served the prefill (16 MiB in 128 KiB writes; the
        // flush moves no data) and every measured I/O, all zero-copy:
        // the client's slots are page-aligned.
        assert_eq!(
            summary_count(summary, "direct"),
            RANGE / (128 << 10) + ios,
            "{summary}\n{doc}"
        );
        assert_eq!(summary_count(summary, "bounced"), 0, "{summary}");
        assert_eq!(summary_count(summary, "failed"), 0, "{summary}");
    }
    assert_two_interrupt_queues(&log);
    assert!(log.contains("NVMe queue 1 (polled)"), "{log}");
    let data = image_bytes(&image, 0, RANGE as usize);
    assert_eq!(
        pattern::first_mismatch(SEED, 0, 512, &data),
        None,
        "the image holds the pattern the bench wrote"
    );
}

/// A shell function for guest scripts: `wait_log PATTERN N` waits (up to
/// 120 s) until the daemon's log, /tmp/vhost.log, has N lines matching
/// PATTERN; else the script fails with the log. A log not made yet (the
/// daemon's redirection runs in its background job) counts as none.
const WAIT_LOG: &str = "wait_log() {
  i=0
  while [ \"$(cat /tmp/vhost.log 2>/dev/null | grep -c \"$1\")\" -lt \"$2\" ]; do
    i=$((i+1)); [ $i -lt 120 ] || { cat /tmp/vhost.log >&2; echo \"waited for $2 x $1\" >&2; exit 9; }
    sleep 1
  done
}
";

/// The lines of `log` from the `n`-th (0-based) front end's connection to
/// its summary.
fn front_end_section(log: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = log.lines().collect();
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("front end connected"))
        .collect();
    let ends: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("front end gone ("))
        .collect();
    let (Some(&a), Some(&b)) = (starts.get(n), ends.get(n)) else {
        panic!("no front end {n} in the log:\n{log}");
    };
    assert!(a < b, "front end {n}: summary before connection\n{log}");
    lines[a..=b].to_vec()
}

/// Checks, in one front end's section of the log, that its memory was
/// unmapped only after its queues drained at disconnect: the "queues
/// drained" line says no NVMe command was in flight, and regions go after
/// it; before it, only the `removed` regions the front end took away
/// itself (REM_MEM_REG).
fn assert_drained_before_unmap_at_disconnect(section: &[&str], removed: usize) {
    let all = section.join("\n");
    let drained = section
        .iter()
        .position(|l| l.contains("front end gone: queues drained"))
        .unwrap_or_else(|| panic!("no drain at disconnect:\n{all}"));
    assert!(
        section[drained].contains(", 0 NVMe commands in flight; unmapping"),
        "{all}"
    );
    let unmapped = |range: std::ops::Range<usize>| {
        range
            .filter(|&i| section[i].contains("unmapped from the device"))
            .count()
    };
    assert_eq!(unmapped(0..drained), removed, "{all}");
    assert!(
        unmapped(drained..section.len()) > 0,
        "nothing unmapped at disconnect:\n{all}"
    );
}

/// The failure paths of memory and connections, in one boot against one
/// `nvme-vhost` (two virtqueues, interrupts) serving three front ends:
///
/// 1. libblkio (`blkio-check --mode churn`): queue 0 writes and verifies
///    16 MiB over and over from its first memory region while queue 1,
///    three times, maps a second region (ADD_MEM_REG), writes 1 MiB from
///    it and reads it back into it, and unmaps it (REM_MEM_REG) with
///    queue 0's requests still going. The daemon's log shows, for every
///    removal, the table change waiting until no queue thread used the
///    old table (a serving one drained its requests under it first, with
///    none left in flight) before the region is unmapped.
/// 2. `blkio-check --mode seq-write` writes sequence-numbered 64 KiB
///    chunks over 8 MiB, 16 in flight, printing each acknowledgement,
///    and is killed (SIGKILL) mid-I/O. The daemon answers what was in
///    flight, logs its queues drained with no NVMe command left before it
///    unmaps the dead front end's memory, and takes the next one.
/// 3. `blkio-check --mode seq-verify` reads the range back: every
///    acknowledged write is there unless a later write to its chunk
///    replaced it, no block holds a write that was never submitted. The
///    host runs the same check on the image, with the same result.
#[test]
fn nvme_vhost_drains_for_memory_churn_and_a_killed_front_end() {
    const CHURN_LEN: u64 = 16 << 20;
    const CHURN_SEED: u64 = 21;
    const CYCLES: u64 = 3;
    const SEQ_AT: u64 = 32 << 20;
    const SEQ_LEN: u64 = 8 << 20;
    const CHUNK: u64 = 64 << 10;
    const QD: u64 = 16;
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("ns1.img");
    let mut config = vm();
    config.disk_size = 48 << 20;
    config.disks = vec![NsDisk::File(image.clone())];
    // Commands wait inside QEMU (16 in flight at 200 a second: about 80
    // ms each), so queue 0's thread is serving, holding the memory table,
    // whenever a region goes; without it the daemon, faster than the TCG
    // guest's client, was often between requests and nothing needed
    // draining (seen failing 2 runs of 3 on a quiet host).
    config.drive_props = vec![("throttling.iops-total".into(), "200".into())];
    let seq = format!("--offset {SEQ_AT} --len {SEQ_LEN} --chunk {CHUNK} --qd {QD}");
    let script = format!(
        "{WAIT_LOG}
nvme-vhost 0000:00:03.0 --socket /tmp/vhost.sock --queues 2 2>/tmp/vhost.log &
pid=$!
wait_log 'listening on' 1
blkio-check --socket /tmp/vhost.sock --mode churn --queues 2 --len {CHURN_LEN} --chunk {CHUNK} \
  --qd {QD} --seed {CHURN_SEED} --cycles {CYCLES} || {{ rc=$?; cat /tmp/vhost.log >&2; exit $rc; }}
wait_log 'listening on' 2
# Made before the writer starts, so the count below never reads a
# missing file (the background job's redirection may come later).
: >/tmp/acked
blkio-check --socket /tmp/vhost.sock --mode seq-write {seq} >>/tmp/acked 2>/tmp/writer.err &
w=$!
i=0
while [ \"$(grep -c '^acked' /tmp/acked)\" -lt 400 ]; do
  i=$((i+1)); [ $i -lt 120 ] || {{ cat /tmp/writer.err /tmp/vhost.log >&2; exit 9; }}
  sleep 1
done
kill -9 $w
wait $w
echo \"== writer killed: rc=$?\"
wait_log 'listening on' 3
grep '^acked' /tmp/acked
blkio-check --socket /tmp/vhost.sock --mode seq-verify {seq} --acked /tmp/acked \
  || {{ rc=$?; cat /tmp/vhost.log >&2; exit $rc; }}
wait_log 'front end gone (' 3
kill $pid
wait $pid
cat /tmp/vhost.log >&2
"
    );
    let run = run_ok(&config, &script);
    let out = run.stdout_text();
    let log = run.stderr_text();
    eprintln!("{out}\n{log}");
    assert_eq!(
        out.matches("blkio-check: all verified").count(),
        2,
        "{}",
        run.describe()
    );
    assert!(out.contains("== writer killed: rc=137"), "{out}");
    assert!(!log.contains(" ERROR "), "{log}");
    // No command given up on, no queue memory kept for a device that
    // might still write it.
    assert!(!log.contains("given up on"), "{log}");
    assert!(!log.contains("keeping its memory"), "{log}");
    let summaries: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("front end gone ("))
        .collect();
    assert_eq!(summaries.len(), 3, "{log}");
    for s in &summaries {
        assert_eq!(summary_count(s, "bounced"), 0, "{s}");
        assert_eq!(summary_count(s, "failed"), 0, "{s}");
        assert_eq!(summary_count(s, "unsupported"), 0, "{s}");
    }
    // The counts add up over the daemon's life.
    let direct: Vec<u64> = summaries
        .iter()
        .map(|s| summary_count(s, "direct"))
        .collect();

    // 1. The churn: every removal drained before its region went.
    let churn = front_end_section(&log, 0);
    let all = churn.join("\n");
    let cycle_lines = out
        .lines()
        .filter(|l| l.starts_with("churn: cycle"))
        .count();
    assert_eq!(cycle_lines as u64, CYCLES, "{out}");
    let passes: u64 = out
        .lines()
        .filter(|l| l.contains(" passes of "))
        .find_map(|l| l.strip_prefix("churn: ")?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no pass count in {out}"));
    assert!(passes >= 1, "{out}");
    // Queue 0: passes x (256 writes + 256 reads); queue 1: 4 writes and 4
    // reads a cycle, then 4 reads.
    assert_eq!(
        direct[0],
        passes * 2 * (CHURN_LEN / CHUNK) + CYCLES * 8 + 4,
        "{}",
        summaries[0]
    );
    let gone = churn
        .iter()
        .position(|l| l.contains("front end gone: queues drained"))
        .unwrap_or_else(|| panic!("{all}"));
    let removals: Vec<usize> = (0..gone)
        .filter(|&i| churn[i].contains("unmapped from the device"))
        .collect();
    // The three added regions, then the first one, which the client
    // unmaps (REM_MEM_REG too) before it leaves.
    assert_eq!(
        removals.len() as u64,
        CYCLES + 1,
        "one unmap per removal:\n{all}"
    );
    let mut served_through = 0;
    for &u in &removals {
        // The memory-table change that removed it; then the daemon waited
        // until no queue used the previous table before it unmapped.
        let change = (0..u)
            .rev()
            .find(|&i| churn[i].contains("memory table: "))
            .unwrap_or_else(|| panic!("no table change before line {u}:\n{all}"));
        let window = &churn[change..=u];
        assert!(
            window
                .iter()
                .any(|l| l.contains("memory table changed: no queue uses the previous one")),
            "region unmapped before the queues let go of the old table:\n{}",
            window.join("\n")
        );
        // A queue thread serving then drained its requests first.
        let drains: Vec<&&str> = window
            .iter()
            .filter(|l| l.contains("memory table changed;"))
            .collect();
        for d in &drains {
            assert!(
                d.contains("; 0 NVMe commands in flight after draining"),
                "{all}"
            );
        }
        served_through += usize::from(!drains.is_empty());
    }
    // Queue 0 keeps 16 requests in flight: at least one removal came
    // while its thread was serving them.
    assert!(
        served_through >= 1,
        "no removal drained a serving queue:\n{all}"
    );
    assert_drained_before_unmap_at_disconnect(&churn, CYCLES as usize + 1);

    // 2. The killed writer: its requests all answered, drained before
    // the unmap.
    let acked: Vec<u64> = out
        .lines()
        .filter_map(|l| l.strip_prefix("acked ")?.trim().parse().ok())
        .collect();
    assert!(acked.len() >= 400, "{out}");
    let answered = direct[1] - direct[0];
    assert!(
        answered >= acked.len() as u64 && answered <= acked.len() as u64 + QD,
        "{answered} writes answered, {} acknowledged to the killed client (at most {QD} more \
         in flight)",
        acked.len()
    );
    assert_drained_before_unmap_at_disconnect(&front_end_section(&log, 1), 0);

    // 3. The verifier: 128 reads; what it found is what the image holds.
    assert_eq!(direct[2] - direct[1], SEQ_LEN / CHUNK, "{}", summaries[2]);
    // It unmaps its region before it leaves; the ring memory goes after.
    assert_drained_before_unmap_at_disconnect(&front_end_section(&log, 2), 1);
    let layout = Layout {
        first_lba: SEQ_AT / 512,
        chunks: SEQ_LEN / CHUNK,
        chunk_blocks: CHUNK / 512,
        lba_size: 512,
    };
    let found = layout
        .check(&acked, QD, &image_bytes(&image, SEQ_AT, SEQ_LEN as usize))
        .unwrap_or_else(|e| panic!("the image: {e}"));
    let Outcome {
        acked: a,
        newer,
        untouched,
    } = found;
    assert!(
        out.contains(&format!(
            "seq-verify: {} writes acknowledged; blocks: {a} hold their chunk's last \
             acknowledged write, {newer} a later one, {untouched} untouched",
            acked.len()
        )),
        "the guest's read-back and the image differ ({found:?}):\n{out}"
    );
    // Every chunk was written at least three times over: none untouched.
    assert_eq!(untouched, 0, "{found:?}");
    assert!(a > 0, "{found:?}");

    // The churn's ranges: queue 0's pattern, and the last cycle's MiB.
    let data = image_bytes(&image, 0, CHURN_LEN as usize);
    assert_eq!(pattern::first_mismatch(CHURN_SEED, 0, 512, &data), None);
    let last = image_bytes(&image, CHURN_LEN, 1 << 20);
    assert_eq!(
        pattern::first_mismatch(CHURN_SEED + CYCLES, CHURN_LEN / 512, 512, &last),
        None
    );
}

/// Hostile descriptor chains and GET_ID against the real device: a front
/// end driven by hand (`vhost-front`: rust-vmm's `vhost` frontend, its
/// own virtqueue in shared memory) writes two good 4 KiB blocks (one
/// through an indirect table), then queues 18 chains that break the rules
/// (data outside guest memory or in the wrong direction, headers and
/// status buffers of the wrong size or direction, loops, a next index
/// past the table, bad, nested and too-long indirect tables, a transfer
/// not whole blocks or past the end, an unknown type) with their writes
/// aimed at 512 zero sectors, and a GET_ID; then reads all of it back on
/// a new kick. Each bad chain fails alone with the status the rules give
/// it (IOERR, or nothing where no status byte may be written; UNSUPP for
/// the unknown type), GET_ID answers the controller's serial and the
/// namespace, the daemon goes on serving, and the image holds the good
/// blocks and zeroes where the bad writes pointed. Last, the front end
/// replaces the virtqueue's kick and call eventfds and reads again: the
/// daemon's queue thread, which keeps copies of both across kicks, must
/// serve the new kick and signal the new call eventfd, not the old one.
#[test]
fn nvme_vhost_fails_hostile_chains_alone_and_answers_get_id() {
    const SECTOR: u64 = 2048;
    const SEED: u64 = 31;
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("ns1.img");
    let mut config = vm();
    config.serial = "VHOST-ID-77".into();
    config.disks = vec![NsDisk::File(image.clone())];
    let script = served_once(
        "",
        &format!("vhost-front --socket /tmp/vhost.sock --sector {SECTOR} --seed {SEED}"),
        "/tmp/vhost.log",
    );
    let run = run_ok(&config, &script);
    let out = run.stdout_text();
    let log = run.stderr_text();
    eprintln!("{out}\n{log}");
    assert!(
        out.contains("vhost-front: 18 hostile chains failed alone"),
        "{}",
        run.describe()
    );
    // The id: the controller's serial number and the namespace.
    assert!(out.contains("get-id: VHOST-ID-77-1\n"), "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.contains(": no status written"))
            .count(),
        8,
        "{out}"
    );
    assert_eq!(out.matches(": status 1, length 1").count(), 9, "{out}");
    assert_eq!(out.matches(": status 2, length 1").count(), 1, "{out}");
    assert!(!log.contains(" ERROR "), "{log}");
    let summary = log
        .lines()
        .find(|l| l.contains("front end gone ("))
        .unwrap_or_else(|| panic!("{log}"));
    // The front end replaced its kick and call eventfds and read once
    // more: served on the new kick, signalled on the new call eventfd
    // (the queue thread's copies followed), never on the old one.
    assert!(
        out.contains("new eventfds: kick served, the new call eventfd signalled"),
        "{out}"
    );
    // Two writes and four reads moved data, straight into guest memory;
    // 17 chains failed, one was unsupported (GET_ID moves no data).
    assert_eq!(summary_count(summary, "direct"), 6, "{summary}");
    assert_eq!(summary_count(summary, "bounced"), 0, "{summary}");
    assert_eq!(summary_count(summary, "failed"), 17, "{summary}");
    assert_eq!(summary_count(summary, "unsupported"), 1, "{summary}");
    assert_eq!(
        log.matches("request at descriptor").count(),
        17,
        "each bad chain logged once (the unknown type at debug level):\n{log}"
    );
    let good = image_bytes(&image, SECTOR * 512, 8192);
    assert_eq!(pattern::first_mismatch(SEED, SECTOR, 512, &good), None);
    assert!(
        image_bytes(&image, (SECTOR + 16) * 512, 512 * 512)
            .iter()
            .all(|&b| b == 0),
        "no hostile write reached the image"
    );
}

/// `nvme-vhost --cache`: libblkio's client through the page cache, in one
/// boot. First the checks of the direct mode on two virtqueues with a
/// 32 MiB cache under 64 MiB of data (writeback under pressure, eviction,
/// readahead): write, FLUSH (an fsync of the namespace file), read back
/// and verify, the scattered read, write zeroes and discard; the daemon
/// counts cache hits and misses and moves nothing zero-copy. Then the
/// crash check: the client writes A, flushes, writes B without a flush,
/// and the daemon is killed (SIGKILL) while the client is still
/// connected (so no disconnect writeback runs): A is on the host image
/// (it would not be if FLUSH had not written the cache back: A is under
/// the cache's background writeback limit), B is there or not, block by
/// block.
#[test]
fn libblkio_through_nvme_vhost_page_cache_and_a_crash_after_flush() {
    const CRASH_AT: u64 = 80 << 20;
    const CRASH_LEN: u64 = 2 << 20;
    const CRASH_SEED: u64 = 21;
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("ns1.img");
    let mut config = vm();
    config.disk_size = 96 << 20;
    config.disks = vec![NsDisk::File(image.clone())];
    let pass = served_once(
        "--queues 2 --cache 32M",
        &format!(
            "blkio-check --socket /tmp/vhost.sock --queues 2 --len {LEN} --chunk 65536 --qd 8 \
  --seed {SEED} --zeroes"
        ),
        "/tmp/cache.log",
    );
    let crash = format!(
        "nvme-vhost 0000:00:03.0 --socket /tmp/vhost.sock --once --cache 64M 2>/tmp/crash.log &
dpid=$!
i=0
while [ ! -S /tmp/vhost.sock ]; do
  i=$((i+1)); [ $i -lt 120 ] || {{ cat /tmp/crash.log >&2; echo 'no socket' >&2; exit 9; }}
  sleep 1
done
blkio-check --socket /tmp/vhost.sock --mode crash-check --offset {CRASH_AT} --len {CRASH_LEN} \
  --chunk 65536 --seed {CRASH_SEED} >/tmp/crash.out 2>&1 &
cpid=$!
i=0
until grep -q 'crash-check: A flushed' /tmp/crash.out; do
  i=$((i+1))
  if [ $i -ge 300 ] || ! kill -0 $cpid 2>/dev/null; then
    cat /tmp/crash.out /tmp/crash.log >&2; echo 'no crash-check line' >&2; exit 8
  fi
  sleep 1
done
kill -9 $dpid
wait $dpid
echo \"== daemon killed, rc $?\"
kill $cpid
wait $cpid
cat /tmp/crash.out
echo '== crash log'
cat /tmp/crash.log
"
    );
    let run = run_ok(&config, &format!("{pass}{crash}"));
    let out = run.stdout_text();
    let log = run.stderr_text();
    eprintln!("{out}\n{log}");
    assert!(
        out.contains("blkio-check: all verified"),
        "{}",
        run.describe()
    );
    assert!(out.contains("flush needed true"), "{out}");
    assert!(!log.contains(" ERROR "), "{log}");
    assert!(log.contains("virtqueue 0: through the page cache"), "{log}");
    assert!(log.contains("virtqueue 1: through the page cache"), "{log}");
    assert!(
        log.contains("regions (page-cache mode: not mapped for the device)"),
        "{log}"
    );
    // The pass's summaries: nothing zero-copy; 1024 + 1 writes buffered,
    // one FLUSH, 1024 + 2 reads, from the cache or not.
    let summary = log
        .lines()
        .find(|l| l.contains("front end gone ("))
        .unwrap_or_else(|| panic!("no summary: {log}"));
    for (name, n) in [
        ("direct", 0),
        ("bounced", 0),
        ("failed", 0),
        ("unsupported", 0),
    ] {
        assert_eq!(summary_count(summary, name), n, "{summary}");
    }
    let cache = log
        .lines()
        .find_map(|l| l.split("page cache: ").nth(1))
        .unwrap_or_else(|| panic!("no cache summary: {log}"));
    let count = |name: &str| -> u64 {
        cache
            .split(&format!("{name} "))
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {cache:?}"))
    };
    let chunks = LEN / 65536;
    assert_eq!(count("writes buffered"), chunks + 1, "{cache}");
    assert_eq!(count("flushes"), 1, "{cache}");
    assert_eq!(
        count("read hits") + count("read misses"),
        chunks + 2,
        "{cache}"
    );
    // Readahead served some reads from the cache; the first of each
    // queue's half (and the read after write zeroes) went to the device.
    assert!(
        count("read hits") > 0 && count("read misses") >= 2,
        "{cache}"
    );

    let data = image_bytes(&image, 0, LEN as usize);
    assert_eq!(
        pattern::first_mismatch(SEED, 0, 512, &data),
        None,
        "the image holds the pattern the client wrote"
    );
    assert!(
        image_bytes(&image, LEN, 1 << 20).iter().all(|&b| b == 0),
        "the write-zeroes range is zero in the image"
    );

    // The crash check.
    assert!(out.contains("== daemon killed, rc 137"), "{out}");
    assert!(
        out.contains("crash-check: A flushed, B written unflushed; waiting"),
        "{out}"
    );
    let a = image_bytes(&image, CRASH_AT, CRASH_LEN as usize);
    assert_eq!(
        pattern::first_mismatch(CRASH_SEED, CRASH_AT / 512, 512, &a),
        None,
        "every byte acknowledged by a flush is on the image"
    );
    let b = image_bytes(&image, CRASH_AT + CRASH_LEN, CRASH_LEN as usize);
    let first_b = (CRASH_AT + CRASH_LEN) / 512;
    for (k, block) in b.chunks(512).enumerate() {
        let written =
            pattern::first_mismatch(CRASH_SEED + 1, first_b + k as u64, 512, block).is_none();
        assert!(
            written || block.iter().all(|&x| x == 0),
            "block {} of B is neither B nor the old zeroes",
            k
        );
    }
}

//! The vhost-user-blk target in the guest: `nvme-vhost` serves namespace 1
//! (the emulated NVMe device, through the userspace driver) on a unix
//! socket, and libblkio's `virtio-blk-vhost-user` driver (`blkio-check`,
//! a front end written by others) writes a pattern at queue depth 8
//! (on two virtqueues from two threads, then on one), flushes, reads it back and verifies it, reads through a scatter list
//! that breaks the PRP rules, and writes zeroes and discards. The host
//! then checks the raw image. `nvme-bench --vhost-user` runs its
//! workloads, verified, through the same target.

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
    // Twice in one boot: two virtqueues whose threads sleep on their NVMe
    // queue's interrupt (the default), then one spinning (--poll), each
    // with its own seed.
    let pass = |flags: &str, queues: u32, seed: u64, log: &str| {
        served_once(
            &format!("--queues {queues} {flags}"),
            &format!(
                "blkio-check --socket /tmp/vhost.sock --queues {queues} --len {LEN} --chunk 65536 --qd 8 \
  --seed {seed} --zeroes"
            ),
            log,
        )
    };
    let script = format!(
        "{}{}",
        pass("", 2, SEED - 1, "/tmp/irq.log"),
        pass("--poll", 1, SEED, "/tmp/poll.log")
    );
    let run = run_ok(&config, &script);
    let out = run.stdout_text();
    eprintln!("{out}");
    assert_eq!(
        out.matches("blkio-check: all verified").count(),
        2,
        "{}",
        run.describe()
    );
    assert_eq!(out.matches("flush: ok").count(), 2, "{out}");
    // QEMU's controller has a volatile write cache: FLUSH is offered, so
    // the client's flush reaches the device.
    assert_eq!(out.matches("flush needed true").count(), 2, "{out}");
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
        .filter(|l| l.contains("front end gone"))
        .collect();
    assert_eq!(summaries.len(), 2, "{log}");
    for summary in summaries {
        let counts = summary
            .split("requests ")
            .nth(1)
            .unwrap_or_else(|| panic!("no counts in {summary:?}"));
        let count = |name: &str| -> u64 {
            counts
                .split(&format!("{name} "))
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {name} count in {summary:?}"))
        };
        // 1024 writes and 1024 reads of 64 KiB, and the 1 MiB write and
        // read of the zeroes step: page-aligned buffers, all zero-copy;
        // the one scattered read bounced.
        assert_eq!(count("direct"), 2 * (LEN / 65536) + 2, "{summary}");
        assert_eq!(count("bounced"), 1, "{summary}");
        assert_eq!(count("failed"), 0, "{summary}");
        assert_eq!(count("unsupported"), 0, "{summary}");
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
        .filter(|l| l.contains("front end gone"))
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

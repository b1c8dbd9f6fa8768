//! The vhost-user-blk target in the guest: `nvme-vhost` serves namespace 1
//! (the emulated NVMe device, through the userspace driver) on a unix
//! socket, and libblkio's `virtio-blk-vhost-user` driver (`blkio-check`,
//! a front end written by others) writes a pattern at queue depth 8
//! (on two virtqueues from two threads, then on one), flushes, reads it back and verifies it, reads through a scatter list
//! that breaks the PRP rules, and writes zeroes and discards. The host
//! then checks the raw image.

use vm_tests::{GuestDriver, NsDisk, image_bytes, pattern, run_ok, vm};

const LEN: u64 = 64 << 20;
const SEED: u64 = 5;

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
        format!(
            "nvme-vhost 0000:00:03.0 --socket /tmp/vhost.sock --once --queues {queues} {flags} 2>{log} &
pid=$!
i=0
while [ ! -S /tmp/vhost.sock ]; do
  i=$((i+1)); [ $i -lt 120 ] || {{ cat {log} >&2; echo 'no socket' >&2; exit 9; }}
  sleep 1
done
blkio-check --socket /tmp/vhost.sock --queues {queues} --len {LEN} --chunk 65536 --qd 8 \
  --seed {seed} --zeroes || {{ rc=$?; cat {log} >&2; exit $rc; }}
wait $pid || {{ rc=$?; cat {log} >&2; exit $rc; }}
rm -f /tmp/vhost.sock
cat {log} >&2
"
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
    assert!(
        log.contains("virtqueue 0: NVMe queue 1 (interrupts)"),
        "{log}"
    );
    assert!(
        log.contains("virtqueue 1: NVMe queue 2 (interrupts)"),
        "{log}"
    );
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

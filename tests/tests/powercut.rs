//! Power loss, replayed from QEMU's write log: namespace 1 sits behind
//! QEMU's blklogwrites filter, which logs every write and flush the image
//! completes (dm-log-writes' format). The host rebuilds the image at flush
//! points and at random cut points after them and checks that everything
//! the guest was told was durable is there.

use vm_tests::logwrites::{EntryKind, WriteLog};
use vm_tests::{NsDisk, run_ok, vm};

fn read_log(run: &vm_tests::VmRun) -> WriteLog {
    let path = run.write_log(1).expect("namespace 1 is logged");
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    WriteLog::parse(bytes).unwrap_or_else(|e| panic!("{e}"))
}

/// The log holds the writes, write zeroes, deallocates and flush of
/// `guest-check ops`, and replaying all of it gives the image QEMU wrote.
#[test]
fn write_log_replays_to_the_image() {
    let mut config = vm();
    config.disks = vec![NsDisk::Logged];
    let run = run_ok(&config, "guest-check ops");
    let log = read_log(&run);
    let image = std::fs::read(run.disk(1).expect("image")).expect("image");
    let kinds: Vec<EntryKind> = log.entries.iter().map(|e| e.kind).collect();
    eprintln!("{} entries: {kinds:?}", kinds.len());
    assert_eq!(
        log.unaccounted_bytes, 0,
        "entries past the superblock's count"
    );
    assert!(kinds.contains(&EntryKind::Flush), "{kinds:?}");
    let replayed = log.replay_all(image.len()).expect("replay");
    assert!(replayed == image, "the replayed log differs from the image");
}

/// The seed of the random cuts: `POWERCUT_SEED`, else the clock (printed,
/// so that a failing run can be repeated).
fn cut_seed() -> u64 {
    std::env::var("POWERCUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// The power-cut workload (`guest-check power-cut`: two threads on
/// page-cache files, one raw writer, marks after every fsync and Flush)
/// behind blklogwrites; then the host replays the log to every flush
/// point, right after every mark with every unflushed write dropped, and
/// to 40 random cut points, and checks each against the File model and
/// the raw writes.
#[test]
fn power_cut_at_every_flush_and_random_points_keeps_what_was_promised() {
    use vm_tests::powercut::{self, Expectations, Params};

    let params = Params {
        seed: 161,
        ops: 250,
        max_size: 2 << 20,
        raw_gens: 40,
    };
    let mut config = vm();
    config.disks = vec![NsDisk::Logged];
    config.disk_size = powercut::DISK_SIZE;
    // A hang guard: the run takes about a minute under TCG on a busy host.
    config.timeout = std::time::Duration::from_secs(600);
    let start = std::time::Instant::now();
    let run = run_ok(
        &config,
        &format!(
            "guest-check power-cut --seed {} --ops {} --max-size {} --raw-gens {} --cache {}",
            params.seed,
            params.ops,
            params.max_size,
            params.raw_gens,
            2 << 20
        ),
    );
    let out = run.stdout_text();
    eprintln!("{out}guest run: {:.0?}", start.elapsed());
    // Flush only matters with a volatile write cache, which the
    // controller reports because the drive is cache=writeback.
    assert!(
        out.contains("power-cut: volatile write cache present true, enabled true"),
        "{out}"
    );
    assert!(out.contains("power-cut: done"), "{out}");

    let log = read_log(&run);
    assert_eq!(
        log.unaccounted_bytes, 0,
        "entries past the superblock's count"
    );
    let image = std::fs::read(run.disk(1).expect("image")).expect("image");
    let replayed = log.replay_all(image.len()).expect("replay");
    assert!(
        replayed == image,
        "replaying the whole log does not give QEMU's image"
    );

    let exp = Expectations::new(params);
    let seed = cut_seed();
    let start = std::time::Instant::now();
    let report = powercut::check_log(&log, &exp, 40, seed).unwrap_or_else(|e| panic!("{e}"));
    let checked_in = start.elapsed();
    eprintln!(
        "power cut: seed {seed} (checked in {checked_in:.0?}): {} cuts ({} flush points, {} after marks, {} random), {} writes, \
         {} flushes, {} marks in the log; {} unflushed writes dropped ({} torn), {} bytes checked \
         ({} newer than promised), {} violations",
        report.cuts,
        report.flush_points,
        report.mark_cuts,
        report.random_cuts,
        report.writes,
        report.flushes,
        report.marks,
        report.dropped_writes,
        report.torn_writes,
        report.bytes_checked,
        report.newer_bytes,
        report.violations.len()
    );
    assert!(
        report.violations.is_empty(),
        "seed {seed}: {:#?}",
        report.violations
    );
    assert!(report.random_cuts >= 20 && report.cuts >= 20, "{report:?}");
    // Every flush is one the workload sent (the fsyncs, the raw Flushes,
    // the last one): the device did not write through (it would flush
    // after every write), so unflushed writes really were pending.
    assert!(report.flushes <= report.marks + 1, "{report:?}");
    assert!(report.dropped_writes > 0, "{report:?}");

    // The negative control: the same log without its flushes (a driver
    // that never sent Flush) breaks the promises at the cuts after marks.
    let control = powercut::check_log(&powercut::without_flushes(&log), &exp, 20, seed)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "without flushes: {} of {} cuts fail; first: {}",
        control.violations.len(),
        control.cuts,
        control.violations.first().map_or("", String::as_str)
    );
    assert!(
        control.violations.len() >= control.mark_cuts / 2,
        "{control:?}"
    );
    for who in ["file 0:", "file 1:", "raw:"] {
        assert!(
            control.violations.iter().any(|v| v.contains(who)),
            "no failure of {who} without flushes: {:#?}",
            control.violations
        );
    }
}

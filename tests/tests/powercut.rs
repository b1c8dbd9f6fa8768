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
    assert_eq!(log.unaccounted_bytes, 0, "entries past the superblock's count");
    assert!(kinds.contains(&EntryKind::Flush), "{kinds:?}");
    let replayed = log.replay_all(image.len()).expect("replay");
    assert!(replayed == image, "the replayed log differs from the image");
}

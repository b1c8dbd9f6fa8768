//! The scenarios that need the recording device's fault injection or its
//! control of completion order (held, reversed, released one command at a
//! time): T11, T16, T18's "locked until both complete", T21, T23's failed
//! unwritten ioend, T24 with failed ioends or reordered and held
//! completions, R55's chained ioend completed piece by piece. On the
//! emulated NVMe, T11 and T16 run with blkdebug faults in
//! `tests/tests/cache.rs`.
//!
//! Rule ids (R.., X.., K.., T..): docs/MPAGE.md.

use std::sync::Arc;

use mpage::device::status;
use mpage::{
    BioFlags, BioOp, BlockMapper, DeviceError, ExtentKind, Fault, MapIntent, OpenFile, Order,
    RecordingDevice, SyncMode, buffered_write, fsync, read_folio, writepages,
};
use mpage_conformance::env::{KIB, ScriptMapper, extent_mapper, mapped};
use mpage_conformance::read::{t18_done, t18_reads, t18_setup};
use mpage_conformance::writeback::{
    self, EndIoRecorder, t24_file_contiguous_ioends_merge_on_completion,
};
use mpage_conformance::{Env, RecordingRig};
use pagecache::Errno;

const R: BioOp = BioOp::Read;
const W: BioOp = BioOp::Write;

/// A 32 MiB namespace of 512-byte LBAs, and a handle on its device.
fn rig() -> (RecordingRig, RecordingDevice) {
    let rig = RecordingRig::new(512, 32 << 20).unwrap();
    let dev = rig.device_handle();
    (rig, dev)
}

#[test]
fn t11_failed_readahead_then_demand_read() {
    let (mut rig, dev) = rig();
    let m = extent_mapper(&rig, 4096, 0..0);
    m.insert(0, 16, 1000);
    let mut env = Env::new(&mut rig, 4096, 64 * KIB as u64, m).unwrap();
    env.fill_disk(8000, 4096, 0x5A).unwrap();
    dev.inject(Fault::status(R, 8000..8128, status::UNRECOVERED_READ).times(1));
    env.ra(0..16).unwrap();
    for i in 0..16 {
        let f = env.folio(i).unwrap();
        assert!(!f.is_uptodate() && !f.is_locked());
        assert_eq!(f.error(), Some(Errno::NoData));
    }
    assert_eq!(
        env.cache.wb_err(env.ino.file).unwrap().last(),
        None,
        "no mapping error"
    );
    env.demand(0).unwrap();
    let c = env.commands();
    assert_eq!(
        (c[1].op, c[1].lba, c[1].bytes(), c[1].flags),
        (R, 8000, 4096, BioFlags::empty())
    );
    assert!(env.folio(0).unwrap().is_uptodate());
    assert_eq!(env.bytes(0, 0, 4096).unwrap(), vec![0x5A; 4096]);
}

#[test]
fn t18_folio_stays_locked_until_both_reads_complete() {
    let (mut rig, dev) = rig();
    let (mut env, l) = t18_setup(&mut rig).unwrap();
    dev.set_order(Order::Held);
    read_folio(&mut env.dev, &env.ino, l).unwrap();
    t18_reads(&env).unwrap();
    assert!(
        env.folio(0).unwrap().is_locked(),
        "locked until both complete"
    );
    dev.release();
    env.reap().unwrap();
    t18_done(&env).unwrap();
}

#[test]
fn out_of_order_completion_still_completes_every_folio() {
    let (mut rig, dev) = rig();
    let m = extent_mapper(&rig, 4096, 0..0);
    m.insert(0, 8, 1000);
    m.insert(8, 8, 3000);
    let mut env = Env::new(&mut rig, 4096, 64 * KIB as u64, m).unwrap();
    dev.set_order(Order::Reversed);
    env.ra(0..16).unwrap();
    assert!((0..16).all(|i| env.folio(i).unwrap().is_uptodate()));
}

#[test]
fn t16_write_error_is_reported_once_per_open_file_and_not_retried() {
    let (mut rig, dev) = rig();
    let m = extent_mapper(&rig, 4096, 0..0);
    m.insert(0, 8, 1000);
    let mut env = Env::new(&mut rig, 4096, 32 * KIB as u64, m).unwrap();
    env.write_disk(8000 * 512, &[0x0D; 32768]).unwrap();
    for i in 0..8 {
        env.dirty(i, 0, 4096, 0xAB).unwrap();
    }
    let mut a = OpenFile::open(&env.ino).unwrap();
    dev.inject(Fault::status(W, 8000..8064, status::INTERNAL));
    env.wb().unwrap();
    let mut b = OpenFile::open(&env.ino).unwrap();
    for i in 0..8 {
        let f = env.folio(i).unwrap();
        assert!(!f.is_dirty() && !f.is_writeback() && f.is_uptodate());
        assert_eq!(
            env.bytes(i, 0, 4096).unwrap(),
            vec![0xAB; 4096],
            "cache keeps the new data"
        );
    }
    assert_eq!(env.read_disk(8000 * 512, 32768).unwrap(), vec![0x0D; 32768]);
    assert_eq!(
        fsync(&mut env.dev, &env.ino, &mut a).unwrap_err().errno(),
        Errno::Io
    );
    fsync(&mut env.dev, &env.ino, &mut a).unwrap();
    let mut c = OpenFile::open(&env.ino).unwrap();
    assert_eq!(
        fsync(&mut env.dev, &env.ino, &mut b).unwrap_err().errno(),
        Errno::Io
    );
    fsync(&mut env.dev, &env.ino, &mut c).unwrap();
    assert_eq!(env.count(W), 1, "no write is retried");
}

#[test]
fn t16_capacity_exceeded_reports_enospc() {
    let (mut rig, dev) = rig();
    let m = extent_mapper(&rig, 4096, 0..0);
    m.insert(0, 1, 1000);
    let mut env = Env::new(&mut rig, 4096, 4096, m).unwrap();
    env.dirty(0, 0, 4096, 1).unwrap();
    let mut a = OpenFile::open(&env.ino).unwrap();
    dev.inject(Fault::status(W, 0..u64::MAX, status::CAPACITY_EXCEEDED));
    assert_eq!(
        fsync(&mut env.dev, &env.ino, &mut a).unwrap_err().errno(),
        Errno::NoSpace
    );
}

#[test]
fn t21_failed_read_in_write_begin_truncates_past_eof_and_keeps_the_size() {
    let (mut rig, dev) = rig();
    let m = ScriptMapper::new(512, vec![mapped(0, 16384, 200)]).unwrap();
    let mut env = Env::new(&mut rig, 1024, 8700, m).unwrap();
    env.fill_disk(200, 16384, 0xAA).unwrap();
    // Block 8 ([8192, 9216)) is LBA 216.
    dev.inject(Fault {
        op: Some(R),
        lbas: 216..218,
        error: DeviceError::Status {
            status: status::INTERNAL,
        },
        times: Some(1),
    });
    let err = buffered_write(&mut env.dev, &env.ino, 8600, &[0x55; 1000]).unwrap_err();
    assert_eq!(err.errno(), Errno::Io);
    assert_eq!(env.io(), vec![(R, 216, 1024)], "one read, no writes");
    assert_eq!(env.ino.size(), 8700);
    let f = env.folio(2).unwrap();
    assert!(!f.is_dirty() && !f.is_uptodate() && !f.is_locked());
    // Block 9 lies past EOF: zeroed, not read.
    assert_eq!(env.bytes(2, 1024, 576).unwrap(), vec![0; 576]);
    // Nothing to write back.
    env.wb().unwrap();
    assert_eq!(env.count(W), 0);
    // A later read re-issues the read of block 8 (and zeroes the rest).
    env.clear_log();
    read_folio(&mut env.dev, &env.ino, f.lock()).unwrap();
    env.reap().unwrap();
    assert_eq!(env.io(), vec![(R, 216, 1024)]);
    assert!(f.is_uptodate());
    assert_eq!(
        env.bytes(2, 0, 1024).unwrap(),
        vec![0xAA; 1024],
        "EOF block read whole (R11)"
    );
}

#[test]
fn t23_failed_unwritten_ioend_is_not_converted() {
    let (mut rig, dev) = rig();
    let m = extent_mapper(&rig, 4096, 0..0);
    m.insert_unwritten(0, 2, 100);
    let mut env = Env::new(&mut rig, 4096, 8192, m.clone()).unwrap();
    env.dirty(0, 0, 4096, 1).unwrap();
    env.dirty(1, 0, 4096, 1).unwrap();
    dev.inject(Fault::status(W, 0..u64::MAX, status::WRITE_FAULT));
    env.wb().unwrap();
    let e = m.map(0, 8192, MapIntent::Read).unwrap();
    assert_eq!(e.kind, ExtentKind::Unwritten { lba: 800 });
}

#[test]
fn t24_reversed_completions_merge_the_same() {
    let (mut rig, dev) = rig();
    dev.set_order(Order::Reversed);
    t24_file_contiguous_ioends_merge_on_completion(&mut rig).unwrap();
}

fn t24_env(rig: &mut RecordingRig, max_transfer: u32) -> (Env<'_>, Arc<EndIoRecorder>) {
    writeback::t24_env(rig, max_transfer).unwrap()
}

#[test]
fn t24_failed_ioend_does_not_merge_with_a_successful_one() {
    let (mut rig, dev) = rig();
    let (mut env, m) = t24_env(&mut rig, 1 << 20);
    let mut h = OpenFile::open(&env.ino).unwrap();
    dev.inject(Fault::status(W, 2400..2416, status::WRITE_FAULT));
    env.wb().unwrap();
    assert_eq!(
        m.done(),
        vec![
            (0, 8192, false, 1, Ok(())),
            (8192, 8192, false, 1, Err(Errno::NoData)),
            (16384, 8192, true, 1, Ok(())),
        ]
    );
    let errors: Vec<Option<Errno>> = (0..6).map(|i| env.folio(i).unwrap().error()).collect();
    assert_eq!(
        errors,
        vec![
            None,
            None,
            Some(Errno::NoData),
            Some(Errno::NoData),
            None,
            None
        ]
    );
    assert_eq!(
        fsync(&mut env.dev, &env.ino, &mut h).unwrap_err().errno(),
        Errno::NoData
    );
}

#[test]
fn t24_different_errors_do_not_merge() {
    let (mut rig, dev) = rig();
    let (mut env, m) = t24_env(&mut rig, 1 << 20);
    dev.inject(Fault::status(W, 800..816, status::WRITE_FAULT));
    dev.inject(Fault::status(W, 2400..2416, status::INTERNAL));
    env.wb().unwrap();
    assert_eq!(
        m.done(),
        vec![
            (0, 8192, false, 1, Err(Errno::NoData)),
            (8192, 8192, false, 1, Err(Errno::Io)),
            (16384, 8192, true, 1, Ok(())),
        ]
    );
}

#[test]
fn t24_merged_chain_status_reaches_every_folio_of_every_ioend() {
    // max transfer 4 KiB: A and B are each an ioend of two chained
    // commands. Only the first command of A and the second of B fail (same
    // status); both ioends fail as a whole (R55), merge (R59), and every
    // folio of the chain ends with the error, also folios 1 and 2 whose
    // own commands succeeded.
    let (mut rig, dev) = rig();
    let (mut env, m) = t24_env(&mut rig, 4096);
    dev.inject(Fault::status(W, 800..808, status::WRITE_FAULT));
    dev.inject(Fault::status(W, 2408..2416, status::WRITE_FAULT));
    let rep = env.wb().unwrap();
    assert_eq!(rep.ioends, 3);
    assert_eq!(
        env.commands()
            .iter()
            .map(|c| (c.lba, c.result == Some(Ok(()))))
            .collect::<Vec<_>>(),
        vec![
            (800, false),
            (808, true),
            (2400, true),
            (2408, false),
            (2416, true),
            (2424, true)
        ]
    );
    assert_eq!(
        m.done(),
        vec![
            (0, 16384, false, 2, Err(Errno::NoData)),
            (16384, 8192, true, 1, Ok(())),
        ]
    );
    for i in 0..4 {
        let f = env.folio(i).unwrap();
        assert_eq!(f.error(), Some(Errno::NoData), "folio {i}");
        assert!(!f.is_dirty() && !f.is_writeback() && f.is_uptodate());
    }
    for i in 4..6 {
        assert_eq!(env.folio(i).unwrap().error(), None, "folio {i}");
    }
}

#[test]
fn t24_folios_stay_under_writeback_until_their_chain_finishes() {
    let (mut rig, dev) = rig();
    let (mut env, m) = t24_env(&mut rig, 1 << 20);
    dev.set_order(Order::Held);
    writepages(&mut env.dev, &env.ino, 0..u64::MAX, SyncMode::All).unwrap();
    assert!((0..6).all(|i| env.folio(i).unwrap().is_writeback()));
    assert!(m.done().is_empty());
    dev.release();
    env.reap().unwrap();
    assert_eq!(m.done().len(), 2);
    assert!((0..6).all(|i| !env.folio(i).unwrap().is_writeback()));
}

/// R55's set-up: 12 dirty folios over one extent (lblk 0–11 → pblk
/// 1000–1011) with a 16 KiB transfer limit: one ioend chained into three
/// commands, every completion held.
fn r55_env(rig: &mut RecordingRig) -> (Env<'_>, Arc<EndIoRecorder>) {
    let m = extent_mapper(rig, 4096, 0..0);
    m.insert(0, 12, 1000);
    let m = EndIoRecorder::new(m);
    let env =
        Env::with_max_transfer(rig, 4096, 48 * KIB as u64, m.clone(), 16 * KIB as u32).unwrap();
    for i in 0..12 {
        env.dirty(i, 0, 4096, 0x55).unwrap();
    }
    (env, m)
}

/// Releases the next held command and ends it; returns the folios still
/// under writeback.
fn complete_next(env: &mut Env<'_>, dev: &RecordingDevice) -> Vec<u64> {
    assert_eq!(dev.release_next(1), 1, "a command was held");
    assert_eq!(mpage::io::reap(&mut env.dev, None).unwrap(), 1);
    (0..12)
        .filter(|&i| env.folio(i).unwrap().is_writeback())
        .collect()
}

#[test]
fn r55_folios_stay_under_writeback_until_the_last_piece_of_their_ioend() {
    let (mut rig, dev) = rig();
    let (mut env, m) = r55_env(&mut rig);
    dev.set_order(Order::Held);
    let rep = writepages(&mut env.dev, &env.ino, 0..u64::MAX, SyncMode::All).unwrap();
    assert_eq!(rep.ioends, 1);
    assert_eq!(
        env.io(),
        vec![(W, 8000, 16384), (W, 8032, 16384), (W, 8064, 16384)]
    );
    let all: Vec<u64> = (0..12).collect();
    assert_eq!(
        complete_next(&mut env, &dev),
        all,
        "folios 0-3's own command completed, the ioend did not"
    );
    assert!(m.done().is_empty());
    assert_eq!(complete_next(&mut env, &dev), all);
    assert!(m.done().is_empty());
    assert_eq!(complete_next(&mut env, &dev), Vec::<u64>::new());
    assert_eq!(m.done(), vec![(0, 49152, false, 1, Ok(()))]);
    for i in 0..12 {
        let f = env.folio(i).unwrap();
        assert!(
            f.error().is_none() && !f.is_dirty() && f.is_uptodate(),
            "folio {i}"
        );
    }
}

#[test]
fn r55_a_failed_middle_piece_fails_the_whole_ioend_when_the_last_completes() {
    let (mut rig, dev) = rig();
    let (mut env, m) = r55_env(&mut rig);
    dev.set_order(Order::Held);
    dev.inject(Fault::status(W, 8032..8064, status::WRITE_FAULT));
    writepages(&mut env.dev, &env.ino, 0..u64::MAX, SyncMode::All).unwrap();
    let all: Vec<u64> = (0..12).collect();
    assert_eq!(complete_next(&mut env, &dev), all);
    assert_eq!(
        complete_next(&mut env, &dev),
        all,
        "the failed piece ends nothing by itself"
    );
    assert!((0..12).all(|i| env.folio(i).unwrap().error().is_none()));
    assert!(m.done().is_empty());
    assert_eq!(complete_next(&mut env, &dev), Vec::<u64>::new());
    assert_eq!(m.done(), vec![(0, 49152, false, 1, Err(Errno::NoData))]);
    for i in 0..12 {
        assert_eq!(
            env.folio(i).unwrap().error(),
            Some(Errno::NoData),
            "folio {i}: the ioend's status (R55, K9)"
        );
    }
}

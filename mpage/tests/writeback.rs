//! Writeback and fsync scenarios T12–T16, T22, T23, T25 against the
//! recording device.

mod common;

use std::sync::Arc;

use common::*;
use mpage::{
    BioFlags, BioOp, BlockMapper, ExtentKind, ExtentMapper, Fault, Geometry, MapError, MapIntent,
    OpenFile, SyncMode, fsync, read_folio, writepages,
};
use pagecache::Errno;

const W: BioOp = BioOp::Write;

fn wb(env: &Env) -> mpage::Result<mpage::WritebackReport> {
    let mut d = env.device();
    let r = writepages(&mut d, &env.ino, 0..u64::MAX, SyncMode::All);
    env.reap();
    r
}

#[test]
fn t12_dirty_folios_become_one_plain_write_and_fsync_flushes_after() {
    let m = Arc::new(ExtentMapper::new(4096, 512, 0..0));
    m.insert(0, 8, 1000);
    let env = Env::new(4096, 32 * KIB as u64, m);
    for i in 0..8 {
        env.dirty(i, 0, 4096, i as u8 + 1);
    }
    let rep = wb(&env).unwrap();
    assert_eq!(rep.folios, 8);
    assert_eq!(env.dev.io(), vec![(W, 8000, 32768)]);
    let c = &env.dev.commands()[0];
    assert_eq!(c.flags, BioFlags::SYNC, "no FUA, no other hint");
    assert_eq!(env.dev.count(BioOp::Flush), 0, "no flush without fsync");
    for i in 0..8u64 {
        let f = env.folio(i);
        assert!(!f.is_dirty() && !f.is_writeback() && f.error().is_none());
        assert_eq!(
            env.dev.read_disk((8000 + i * 8) * 512, 4096),
            vec![i as u8 + 1; 4096]
        );
    }
    let mut h = OpenFile::open(&env.ino).unwrap();
    env.dirty(0, 0, 4096, 0xEE);
    let mut d = env.device();
    fsync(&mut d, &env.ino, &mut h).unwrap();
    let ops: Vec<BioOp> = env.dev.commands().iter().map(|c| c.op).collect();
    assert_eq!(
        ops,
        vec![W, W, BioOp::Flush],
        "flush after the write completed"
    );
}

#[test]
fn t13_eof_tail_zeroed_in_cache_and_never_written_past() {
    let m = Arc::new(ExtentMapper::new(1024, 512, 0..0));
    m.insert(0, 8, 100);
    let env = Env::new(1024, 5000, m);
    env.fill_disk(200, 8192, 0xFF);
    env.dirty(0, 0, 4096, 0x11);
    env.dirty(1, 0, 4096, 0x55);
    wb(&env).unwrap();
    assert_eq!(env.dev.io(), vec![(W, 200, 5120)]);
    assert_eq!(env.dev.read_disk(200 * 512 + 4096, 904), vec![0x55; 904]);
    assert_eq!(env.dev.read_disk(200 * 512 + 5000, 120), vec![0; 120]);
    assert_eq!(
        env.dev.read_disk(200 * 512 + 5120, 3072),
        vec![0xFF; 3072],
        "blocks past EOF untouched"
    );
    assert_eq!(env.bytes(1, 904, 3192), vec![0; 3192]);
}

#[test]
fn t13_blocks_past_eof_are_never_mapped() {
    let m = Arc::new(ExtentMapper::new(1024, 512, 1000..2000));
    let env = Env::new(1024, 5000, m.clone());
    env.dirty(1, 0, 4096, 0x55);
    wb(&env).unwrap();
    // Only file blocks 4 (the EOF block) is allocated.
    assert_eq!(env.dev.io(), vec![(W, 2000, 1024)]);
    let e = m.map(5 * 1024, 1024, MapIntent::Read).unwrap();
    assert_eq!(e.kind, ExtentKind::Hole);
}

#[test]
fn t14_folio_wholly_past_eof_is_cleaned_without_io() {
    let m = Arc::new(ExtentMapper::new(4096, 512, 1000..2000));
    let env = Env::new(4096, 8192, m.clone());
    env.dirty(3, 0, 4096, 1);
    env.ino.set_size(4096);
    wb(&env).unwrap();
    assert!(env.dev.commands().is_empty());
    assert_eq!(m.calls(), 0, "nothing allocated");
    let f = env.folio(3);
    assert!(!f.is_dirty() && f.error().is_none());
    assert_eq!(env.cache.wb_err(env.ino.file).unwrap().last(), None);
}

#[test]
fn t15_writes_follow_device_contiguity() {
    let m = Arc::new(ExtentMapper::new(4096, 512, 0..0));
    m.insert(0, 4, 1000);
    m.insert(4, 4, 2000);
    let env = Env::new(4096, 32 * KIB as u64, m);
    for i in 0..8 {
        env.dirty(i, 0, 4096, 1);
    }
    wb(&env).unwrap();
    assert_eq!(env.dev.io(), vec![(W, 8000, 16384), (W, 16000, 16384)]);

    let m = Arc::new(ExtentMapper::new(1024, 512, 0..0));
    m.insert(0, 2, 100);
    m.insert(2, 2, 300);
    let env = Env::new(1024, 4096, m);
    env.dirty(0, 0, 4096, 1);
    wb(&env).unwrap();
    assert_eq!(env.dev.io(), vec![(W, 200, 2048), (W, 600, 2048)]);
}

#[test]
fn t16_write_error_is_reported_once_per_open_file_and_not_retried() {
    let m = Arc::new(ExtentMapper::new(4096, 512, 0..0));
    m.insert(0, 8, 1000);
    let env = Env::new(4096, 32 * KIB as u64, m);
    env.dev.write_disk(8000 * 512, &[0x0D; 32768]);
    for i in 0..8 {
        env.dirty(i, 0, 4096, 0xAB);
    }
    let mut a = OpenFile::open(&env.ino).unwrap();
    env.dev.inject(Fault::status(
        W,
        8000..8064,
        mpage::device::status::INTERNAL,
    ));
    wb(&env).unwrap();
    let mut b = OpenFile::open(&env.ino).unwrap();
    for i in 0..8 {
        let f = env.folio(i);
        assert!(!f.is_dirty() && !f.is_writeback() && f.is_uptodate());
        assert_eq!(
            env.bytes(i, 0, 4096),
            vec![0xAB; 4096],
            "cache keeps the new data"
        );
    }
    assert_eq!(env.dev.read_disk(8000 * 512, 32768), vec![0x0D; 32768]);
    let mut d = env.device();
    assert_eq!(
        fsync(&mut d, &env.ino, &mut a).unwrap_err().errno(),
        Errno::Io
    );
    fsync(&mut d, &env.ino, &mut a).unwrap();
    let mut c = OpenFile::open(&env.ino).unwrap();
    assert_eq!(
        fsync(&mut d, &env.ino, &mut b).unwrap_err().errno(),
        Errno::Io
    );
    fsync(&mut d, &env.ino, &mut c).unwrap();
    assert_eq!(env.dev.count(W), 1, "no write is retried");
}

#[test]
fn t16_capacity_exceeded_reports_enospc() {
    let m = Arc::new(ExtentMapper::new(4096, 512, 0..0));
    m.insert(0, 1, 1000);
    let env = Env::new(4096, 4096, m);
    env.dirty(0, 0, 4096, 1);
    let mut a = OpenFile::open(&env.ino).unwrap();
    env.dev.inject(Fault::status(
        W,
        0..u64::MAX,
        mpage::device::status::CAPACITY_EXCEEDED,
    ));
    let mut d = env.device();
    assert_eq!(
        fsync(&mut d, &env.ino, &mut a).unwrap_err().errno(),
        Errno::NoSpace
    );
}

#[test]
fn t22_only_dirty_blocks_are_written() {
    let m = Arc::new(ExtentMapper::new(1024, 512, 0..0));
    m.insert(0, 4, 100);
    let env = Env::new(1024, 16 * KIB as u64, m);
    env.dirty(0, 1024, 1024, 7);
    wb(&env).unwrap();
    assert_eq!(env.dev.io(), vec![(W, 202, 1024)]);
}

#[test]
fn t23_ioends_split_by_extent_type_and_unwritten_is_converted() {
    let m = Arc::new(ExtentMapper::new(4096, 512, 0..0));
    m.insert(0, 4, 100);
    m.insert_unwritten(4, 4, 104);
    let env = Env::new(4096, 32 * KIB as u64, m.clone());
    for i in 0..8 {
        env.dirty(i, 0, 4096, 3);
    }
    let rep = wb(&env).unwrap();
    assert_eq!(rep.ioends, 2);
    assert_eq!(env.dev.io(), vec![(W, 800, 16384), (W, 832, 16384)]);
    let e = m.map(16384, 16384, MapIntent::Read).unwrap();
    assert_eq!(
        e.kind,
        ExtentKind::Mapped { lba: 832 },
        "converted on completion"
    );
}

#[test]
fn t23_long_ioend_is_chained_at_max_transfer() {
    let m = Arc::new(ExtentMapper::new(4096, 512, 0..0));
    m.insert(0, 300, 1000);
    let g = Geometry::new(512, 1 << 16, 256 * 4096).unwrap();
    let env = Env::with_geometry(4096, 300 * 4096, m, g);
    for i in 0..300 {
        env.dirty(i, 0, 4096, 1);
    }
    let rep = wb(&env).unwrap();
    assert_eq!(rep.ioends, 1);
    assert_eq!(
        env.dev.io(),
        vec![(W, 8000, 256 * 4096), (W, 8000 + 256 * 8, 44 * 4096)]
    );
    assert!((0..300).all(|i| !env.folio(i).is_writeback()));
}

#[test]
fn t23_failed_unwritten_ioend_is_not_converted() {
    let m = Arc::new(ExtentMapper::new(4096, 512, 0..0));
    m.insert_unwritten(0, 2, 100);
    let env = Env::new(4096, 8192, m.clone());
    env.dirty(0, 0, 4096, 1);
    env.dirty(1, 0, 4096, 1);
    env.dev.inject(Fault::status(
        W,
        0..u64::MAX,
        mpage::device::status::WRITE_FAULT,
    ));
    wb(&env).unwrap();
    let e = m.map(0, 8192, MapIntent::Read).unwrap();
    assert_eq!(e.kind, ExtentKind::Unwritten { lba: 800 });
}

#[test]
fn t25a_map_error_discards_the_folio() {
    let m = Arc::new(ExtentMapper::new(4096, 512, 0..0));
    m.insert(0, 1, 100);
    let env = Env::new(4096, 4096, m.clone());
    env.dev.write_disk(800 * 512, &[0x0D; 4096]);
    env.dirty(0, 0, 4096, 0xAB);
    let mut h = OpenFile::open(&env.ino).unwrap();
    m.fail_at(0, MapError::Failed(Errno::Io));
    let err = wb(&env).unwrap_err();
    assert_eq!(err.errno(), Errno::Io);
    assert!(env.dev.commands().is_empty());
    let f = env.folio(0);
    assert!(!f.is_uptodate() && !f.is_dirty() && !f.is_writeback() && !f.is_locked());
    let mut d = env.device();
    assert_eq!(
        fsync(&mut d, &env.ino, &mut h).unwrap_err().errno(),
        Errno::Io
    );
    fsync(&mut d, &env.ino, &mut h).unwrap();
    let l = env.grab(0);
    read_folio(&mut d, &env.ino, l).unwrap();
    env.reap();
    assert_eq!(env.dev.io()[0], (BioOp::Read, 800, 4096));
    assert_eq!(env.bytes(0, 0, 4096), vec![0x0D; 4096], "old device data");
}

#[test]
fn t25b_map_error_mid_folio_fails_mapped_blocks_without_io() {
    let m = Arc::new(ExtentMapper::new(1024, 512, 0..0));
    m.insert(0, 2, 100);
    m.insert(2, 2, 102);
    let env = Env::new(1024, 4096, m.clone());
    env.dirty(0, 0, 4096, 1);
    let mut h = OpenFile::open(&env.ino).unwrap();
    m.fail_at(2, MapError::Failed(Errno::Io));
    assert!(wb(&env).is_err());
    assert_eq!(env.dev.count(W), 0);
    let f = env.folio(0);
    assert!(!f.is_dirty() && !f.is_writeback() && f.error() == Some(Errno::Io));
    let mut d = env.device();
    assert_eq!(
        fsync(&mut d, &env.ino, &mut h).unwrap_err().errno(),
        Errno::Io
    );
}

#[test]
fn allocate_on_write_fills_a_sparse_file() {
    let m = Arc::new(ExtentMapper::new(4096, 512, 500..600));
    let env = Env::new(4096, 16 * KIB as u64, m.clone());
    env.dirty(2, 0, 4096, 9);
    wb(&env).unwrap();
    assert_eq!(env.dev.io(), vec![(W, 4000, 4096)]);
    let e = m.map(8192, 4096, MapIntent::Read).unwrap();
    assert_eq!(e.kind, ExtentKind::Mapped { lba: 4000 });
    assert_eq!(
        m.map(0, 4096, MapIntent::Read).unwrap().kind,
        ExtentKind::Hole
    );
}

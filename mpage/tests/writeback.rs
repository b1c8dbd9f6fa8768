//! Writeback and fsync scenarios T12–T17, T22–T25 against the recording
//! device.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use mpage::map::IoendCompletion;
use mpage::{
    BioFlags, BioOp, BlockDevice, BlockMapper, Extent, ExtentKind, ExtentMapper, Fault, Geometry,
    IdentityMapper, Inode, MapError, MapIntent, OpenFile, Order, SyncMode, fsync, read_folio,
    writepages,
};
use pagecache::{BlockSize, Errno, FolioOrder, Grab};

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

/// A finished chain as `(offset, size, unwritten, ioends, result)`.
type Chain = (u64, u64, bool, usize, Result<(), Errno>);

/// An [`ExtentMapper`] that records the writeback completion work it is
/// given (one entry per merged ioend chain, R59).
#[derive(Debug)]
struct EndIoRecorder {
    inner: ExtentMapper,
    done: Mutex<Vec<IoendCompletion>>,
}

impl EndIoRecorder {
    fn new(inner: ExtentMapper) -> Arc<Self> {
        Arc::new(EndIoRecorder {
            inner,
            done: Mutex::new(Vec::new()),
        })
    }

    /// `(offset, size, unwritten, ioends, result)` per chain, by offset.
    fn done(&self) -> Vec<Chain> {
        let mut v: Vec<_> = self
            .done
            .lock()
            .unwrap()
            .iter()
            .map(|d| (d.offset, d.size, d.unwritten, d.ioends, d.result))
            .collect();
        v.sort_by_key(|d| d.0);
        v
    }
}

impl BlockMapper for EndIoRecorder {
    fn map(&self, pos: u64, len: u64, intent: MapIntent) -> Result<Extent, MapError> {
        self.inner.map(pos, len, intent)
    }

    fn convert_unwritten(&self, pos: u64, len: u64) -> Result<(), MapError> {
        self.inner.convert_unwritten(pos, len)
    }

    fn end_io(&self, done: &IoendCompletion) -> Result<(), MapError> {
        self.done.lock().unwrap().push(done.clone());
        self.inner.end_io(done)
    }
}

/// T24's layout, bs 4096: A [0,8K) MAPPED at pblk 100, B [8K,16K) MAPPED
/// at pblk 300 (device-discontiguous), C [16K,24K) UNWRITTEN at pblk 302
/// (device-contiguous with B, other type). Six dirty folios.
fn t24_env(g: Geometry) -> (Env, Arc<EndIoRecorder>) {
    let m = ExtentMapper::new(4096, 512, 0..0);
    m.insert(0, 2, 100);
    m.insert(2, 2, 300);
    m.insert_unwritten(4, 2, 302);
    let m = EndIoRecorder::new(m);
    let env = Env::with_geometry(4096, 24 * KIB as u64, m.clone(), g);
    for i in 0..6 {
        env.dirty(i, 0, 4096, 0x24);
    }
    (env, m)
}

fn geometry(max_transfer: u32) -> Geometry {
    Geometry::new(512, 1 << 16, max_transfer).unwrap()
}

#[test]
fn t24_file_contiguous_ioends_merge_on_completion() {
    for order in [Order::InOrder, Order::Reversed] {
        let (env, m) = t24_env(geometry(1 << 20));
        env.dev.set_order(order);
        let rep = wb(&env).unwrap();
        assert_eq!(rep.ioends, 3, "{order:?}");
        assert_eq!(
            env.dev.io(),
            vec![(W, 800, 8192), (W, 2400, 8192), (W, 2416, 8192)],
            "{order:?}: three ioends, three commands"
        );
        assert_eq!(
            m.done(),
            vec![(0, 16384, false, 2, Ok(())), (16384, 8192, true, 1, Ok(())),],
            "{order:?}: A+B merged despite the device gap, C separate"
        );
        assert_eq!(
            m.inner.map(16384, 8192, MapIntent::Read).unwrap().kind,
            ExtentKind::Mapped { lba: 2416 },
            "C converted"
        );
        for i in 0..6 {
            let f = env.folio(i);
            assert!(!f.is_dirty() && !f.is_writeback() && f.error().is_none());
        }
    }
}

#[test]
fn t24_failed_ioend_does_not_merge_with_a_successful_one() {
    let (env, m) = t24_env(geometry(1 << 20));
    let mut h = OpenFile::open(&env.ino).unwrap();
    env.dev.inject(Fault::status(
        W,
        2400..2416,
        mpage::device::status::WRITE_FAULT,
    ));
    wb(&env).unwrap();
    assert_eq!(
        m.done(),
        vec![
            (0, 8192, false, 1, Ok(())),
            (8192, 8192, false, 1, Err(Errno::NoData)),
            (16384, 8192, true, 1, Ok(())),
        ]
    );
    let errors: Vec<Option<Errno>> = (0..6).map(|i| env.folio(i).error()).collect();
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
    let mut d = env.device();
    assert_eq!(
        fsync(&mut d, &env.ino, &mut h).unwrap_err().errno(),
        Errno::NoData
    );
}

#[test]
fn t24_different_errors_do_not_merge() {
    let (env, m) = t24_env(geometry(1 << 20));
    env.dev.inject(Fault::status(
        W,
        800..816,
        mpage::device::status::WRITE_FAULT,
    ));
    env.dev.inject(Fault::status(
        W,
        2400..2416,
        mpage::device::status::INTERNAL,
    ));
    wb(&env).unwrap();
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
    let (env, m) = t24_env(geometry(4096));
    env.dev.inject(Fault::status(
        W,
        800..808,
        mpage::device::status::WRITE_FAULT,
    ));
    env.dev.inject(Fault::status(
        W,
        2408..2416,
        mpage::device::status::WRITE_FAULT,
    ));
    let rep = wb(&env).unwrap();
    assert_eq!(rep.ioends, 3);
    assert_eq!(
        env.dev
            .commands()
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
        let f = env.folio(i);
        assert_eq!(f.error(), Some(Errno::NoData), "folio {i}");
        assert!(!f.is_dirty() && !f.is_writeback() && f.is_uptodate());
    }
    for i in 4..6 {
        assert_eq!(env.folio(i).error(), None, "folio {i}");
    }
}

#[test]
fn t24_discontiguous_unwritten_ioends_convert_in_one_call() {
    let m = ExtentMapper::new(4096, 512, 0..0);
    m.insert_unwritten(0, 2, 100);
    m.insert_unwritten(2, 2, 300);
    m.insert_unwritten(5, 1, 500);
    let m = EndIoRecorder::new(m);
    let env = Env::new(4096, 24 * KIB as u64, m.clone());
    for i in [0, 1, 2, 3, 5] {
        env.dirty(i, 0, 4096, 1);
    }
    let rep = wb(&env).unwrap();
    assert_eq!(rep.ioends, 3);
    assert_eq!(
        m.done(),
        vec![(0, 16384, true, 2, Ok(())), (20480, 4096, true, 1, Ok(()))],
        "no merge across the file gap at [16K,20K)"
    );
    for (pos, lba) in [(0, 800), (8192, 2400), (20480, 4000)] {
        assert_eq!(
            m.inner.map(pos, 4096, MapIntent::Read).unwrap().kind,
            ExtentKind::Mapped { lba }
        );
    }
}

#[test]
fn t24_folios_stay_under_writeback_until_their_chain_finishes() {
    let (env, m) = t24_env(geometry(1 << 20));
    env.dev.set_order(Order::Held);
    let mut d = env.device();
    writepages(&mut d, &env.ino, 0..u64::MAX, SyncMode::All).unwrap();
    assert!((0..6).all(|i| env.folio(i).is_writeback()));
    assert!(m.done().is_empty());
    env.dev.release();
    env.reap();
    assert_eq!(m.done().len(), 2);
    assert!((0..6).all(|i| !env.folio(i).is_writeback()));
}

/// T17 set-up, bs 4096: lblk 0–3 → pblk 100–103 flagged BOUNDARY, lblk
/// 4–7 → pblk 105–108; a metadata cache over the namespace (file offset =
/// device byte address), optionally holding pblk 104 dirty.
fn t17_env(meta_dirty: Option<bool>) -> (Env, Arc<Inode>) {
    let m = Arc::new(ExtentMapper::new(4096, 512, 0..0));
    m.insert_boundary(0, 4, 100);
    m.insert(4, 4, 105);
    let env = Env::new(4096, 32 * KIB as u64, m.clone());
    let g = env.dev.geometry();
    let mfile = env.cache.add_file(BlockSize::new(4096).unwrap());
    let meta = Arc::new(Inode::new(
        env.cache.clone(),
        mfile,
        Arc::new(IdentityMapper::namespace(&g)),
        g.capacity_bytes(),
    ));
    m.set_metadata_cache(Some(meta.clone()));
    if let Some(dirty) = meta_dirty {
        let Grab::Created(l) = env
            .cache
            .grab(mfile, 104, FolioOrder::new(0).unwrap())
            .unwrap()
        else {
            panic!("fresh metadata folio");
        };
        l.write(0, &[0x4D; 4096]).unwrap();
        drop(l);
        if !dirty {
            // Clean it: written back once, log forgotten.
            let mut d = env.device();
            writepages(&mut d, &meta, 104..105, SyncMode::All).unwrap();
            env.reap();
            env.dev.clear_log();
        }
    }
    for i in 0..4 {
        env.dirty(i, 0, 4096, 0x17);
    }
    (env, meta)
}

#[test]
fn t17_boundary_submits_the_data_then_the_dirty_metadata_block() {
    let (env, meta) = t17_env(Some(true));
    wb(&env).unwrap();
    assert_eq!(env.dev.io(), vec![(W, 800, 16384), (W, 832, 4096)]);
    assert_eq!(env.dev.read_disk(832 * 512, 4096), vec![0x4D; 4096]);
    let mf = meta.cache.lookup(meta.file, 104).unwrap().unwrap();
    assert!(!mf.is_dirty() && !mf.is_writeback() && mf.error().is_none());
}

#[test]
fn t17_clean_or_uncached_metadata_block_is_not_written() {
    for meta in [Some(false), None] {
        let (env, _) = t17_env(meta);
        wb(&env).unwrap();
        assert_eq!(env.dev.io(), vec![(W, 800, 16384)], "{meta:?}");
    }
}

#[test]
fn t17_boundary_splits_a_device_contiguous_run() {
    // lblk 0–1 BOUNDARY → pblk 100–101, lblk 2–3 → 102–103: without the
    // hint one command; with it, the run is submitted after folio 1.
    for boundary in [false, true] {
        let m = Arc::new(ExtentMapper::new(4096, 512, 0..0));
        if boundary {
            m.insert_boundary(0, 2, 100);
        } else {
            m.insert(0, 2, 100);
        }
        m.insert(2, 2, 102);
        let env = Env::new(4096, 16 * KIB as u64, m);
        for i in 0..4 {
            env.dirty(i, 0, 4096, 1);
        }
        wb(&env).unwrap();
        let want = if boundary {
            vec![(W, 800, 8192), (W, 816, 8192)]
        } else {
            vec![(W, 800, 16384)]
        };
        assert_eq!(env.dev.io(), want);
    }
}

#[test]
fn t17_boundary_mid_folio_submits_before_the_rest_of_the_folio() {
    // bs 1024: the BOUNDARY extent ends inside folio 0 (lblk 0–1 → pblk
    // 100–101), the metadata block is pblk 102 (LBA 204), the data goes
    // on at pblk 103. The kernel only looks at the folio's last block
    // (§5 item 13); we submit where the extent ends, as on the read side.
    let m = Arc::new(ExtentMapper::new(1024, 512, 0..0));
    m.insert_boundary(0, 2, 100);
    m.insert(2, 2, 103);
    let env = Env::new(1024, 4096, m.clone());
    let g = env.dev.geometry();
    let mfile = env.cache.add_file(BlockSize::new(1024).unwrap());
    let meta = Arc::new(Inode::new(
        env.cache.clone(),
        mfile,
        Arc::new(IdentityMapper::namespace(&g)),
        g.capacity_bytes(),
    ));
    m.set_metadata_cache(Some(meta.clone()));
    // Metadata page 25 = device bytes [102400, 106496): pblk 100–103;
    // only block 2 (pblk 102) is dirty.
    let Grab::Created(l) = env
        .cache
        .grab(mfile, 25, FolioOrder::new(0).unwrap())
        .unwrap()
    else {
        panic!("fresh metadata folio");
    };
    l.write(2048, &[0x4D; 1024]).unwrap();
    drop(l);
    env.dirty(0, 0, 4096, 1);
    wb(&env).unwrap();
    assert_eq!(
        env.dev.io(),
        vec![(W, 200, 2048), (W, 204, 1024), (W, 206, 2048)]
    );
}

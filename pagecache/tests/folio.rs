//! Folio state transitions (read, write, writeback, discard), named after
//! the scenarios (T..) and rules (R..) of docs/MPAGE.md they exercise.

use std::sync::Arc;
use std::time::Duration;

use pagecache::{
    BlockSize, Errno, Error, FileId, FolioFlags, FolioOrder, Grab, LockedFolio, PageCache,
    VecMemory,
};

fn cache() -> PageCache {
    PageCache::new(Arc::new(VecMemory::new()), 64 << 20).unwrap()
}

fn file(cache: &PageCache, bs: usize) -> FileId {
    cache.add_file(BlockSize::new(bs).unwrap())
}

fn new_folio(cache: &PageCache, file: FileId, index: u64, order: u8) -> LockedFolio {
    match cache
        .grab(file, index, FolioOrder::new(order).unwrap())
        .unwrap()
    {
        Grab::Created(l) => l,
        Grab::Cached(_) => panic!("folio {index} already cached"),
    }
}

fn bits(map: &pagecache::BlockBitmap) -> String {
    (0..map.len())
        .map(|i| if map.get(i) { '1' } else { '0' })
        .collect()
}

#[test]
fn orders_and_block_sizes_are_validated() {
    assert!(FolioOrder::new(9).is_ok());
    assert!(matches!(FolioOrder::new(10), Err(Error::BadOrder(10))));
    assert_eq!(FolioOrder::new(9).unwrap().size(), 2 << 20);
    for bad in [0, 256, 1000, 8192] {
        assert!(BlockSize::new(bad).is_err(), "{bad}");
    }
    assert!(BlockSize::new(512).is_ok());
}

#[test]
fn new_folio_is_locked_and_not_uptodate() {
    let c = cache();
    let f = file(&c, 4096);
    let l = new_folio(&c, f, 0, 0);
    assert_eq!(l.flags(), FolioFlags::LOCKED);
    assert!(l.folio().try_lock().is_none(), "lock is exclusive");
    let r = l.folio();
    drop(l);
    assert!(!r.is_locked());
    assert!(r.try_lock().is_some());
}

/// R45: a full-folio write makes it uptodate and dirty; with bs = PAGE no
/// per-block state is created (R34).
#[test]
fn r45_full_write_makes_folio_uptodate_and_dirty() {
    let c = cache();
    let f = file(&c, 4096);
    let l = new_folio(&c, f, 0, 0);
    assert!(l.write(0, &[7; 4096]).unwrap(), "clean -> dirty");
    assert!(!l.write(0, &[8; 10]).unwrap(), "already dirty");
    assert!(l.flags().contains(FolioFlags::UPTODATE | FolioFlags::DIRTY));
    assert!(!l.has_block_state());
    assert_eq!(c.dirty_bytes(), 4096);
    let mut out = [0; 12];
    l.read(0, &mut out).unwrap();
    assert_eq!(out, [8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 7, 7]);
}

/// T20 (R42, R45): partial-block writes need the edge blocks uptodate
/// first; a fully covered block needs nothing; the bitmaps track blocks.
#[test]
fn t20_partial_block_writes_need_uptodate_edges() {
    let c = cache();
    let f = file(&c, 1024);
    let l = new_folio(&c, f, 0, 0);
    // (a) 100 B at 1500 on a fresh folio: block 1 must be read first.
    assert!(matches!(
        l.write(1500, &[1; 100]),
        Err(Error::NotUptodate { .. })
    ));
    assert!(!l.is_dirty(), "a refused write changes nothing");
    // (b) 1024 B at 1024: no read needed.
    l.write(1024, &[2; 1024]).unwrap();
    assert_eq!(bits(&l.uptodate_blocks()), "0100");
    assert_eq!(bits(&l.dirty_blocks()), "0100");
    assert!(!l.is_uptodate());
    assert!(l.is_dirty());
    // (c) over a hole: zero the block, then write inside it.
    l.zero_blocks(2048, 1024).unwrap();
    l.write(2100, &[3; 100]).unwrap();
    let mut out = [9; 1024];
    l.read(2048, &mut out).unwrap();
    assert!(out[..52].iter().all(|b| *b == 0));
    assert!(out[52..152].iter().all(|b| *b == 3));
    assert!(out[152..].iter().all(|b| *b == 0));
    assert_eq!(bits(&l.uptodate_blocks()), "0110");
    assert_eq!(bits(&l.dirty_blocks()), "0110");
    // R41: partially uptodate ranges are readable, others are not.
    assert!(l.is_range_uptodate(1024, 2048));
    assert!(!l.is_range_uptodate(1000, 100));
    assert!(l.read(0, &mut [0; 1]).is_err());
    // Zeroing must be block aligned.
    assert!(l.zero_blocks(100, 1024).is_err());
    // The last block completes the folio.
    l.zero_blocks(0, 1024).unwrap();
    l.zero_blocks(3072, 1024).unwrap();
    assert!(l.is_uptodate(), "uptodate once every block is (R34)");
}

/// T18 (R35, R38, R39): a read covers only the non-uptodate blocks; the
/// folio stays locked until every part completed and the submitter is
/// done, and becomes uptodate only then.
#[test]
fn t18_read_fills_only_non_uptodate_blocks() {
    let c = cache();
    let f = file(&c, 1024);
    let l = new_folio(&c, f, 0, 0);
    l.write(1024, &[0x11; 2048]).unwrap(); // bits 0110, dirty
    let folio = l.folio();
    let io = l.start_read();
    assert!(
        io.part(1024, 1024).is_err(),
        "reading into uptodate (dirty) blocks would lose data"
    );
    assert!(io.part(0, 2048).is_err());
    let a = io.part(0, 1024).unwrap();
    let b = io.part(3072, 1024).unwrap();
    assert_eq!(a.iova(), folio.iova());
    assert_eq!(b.iova(), folio.iova() + 3072);
    drop(io); // submission done
    a.fill_from(&[0xAA; 1024]).unwrap();
    a.complete(Ok(()));
    assert!(folio.is_locked(), "one part still in flight");
    assert!(!folio.is_uptodate());
    b.fill_from(&[0xBB; 1024]).unwrap();
    b.complete(Ok(()));
    assert!(!folio.is_locked());
    assert!(folio.is_uptodate());
    assert!(folio.is_dirty(), "reading does not clean");
    let mut out = [0; 4096];
    folio.read(0, &mut out).unwrap();
    assert!(out[..1024].iter().all(|x| *x == 0xAA));
    assert!(out[1024..3072].iter().all(|x| *x == 0x11), "user data kept");
    assert!(out[3072..].iter().all(|x| *x == 0xBB));
}

/// Completions that race ahead of the submitter do not end the read.
#[test]
fn r38_read_does_not_end_before_submission_is_done() {
    let c = cache();
    let f = file(&c, 4096);
    let l = new_folio(&c, f, 0, 0);
    let folio = l.folio();
    let io = l.start_read();
    io.part(0, 4096).unwrap().complete(Ok(()));
    assert!(folio.is_uptodate(), "all blocks read");
    assert!(folio.is_locked(), "still submitting");
    io.submit();
    assert!(!folio.is_locked());
}

/// T11 (R22, X4): a failed read leaves the folio not uptodate, unlocked,
/// with ERROR and no file error; the next read clears ERROR and retries.
#[test]
fn t11_failed_read_then_retry() {
    let c = cache();
    let f = file(&c, 4096);
    let l = new_folio(&c, f, 0, 0);
    let folio = l.folio();
    let io = l.start_read();
    let p = io.part(0, 4096).unwrap();
    drop(io);
    p.complete(Err(Errno::NoData));
    assert!(!folio.is_uptodate());
    assert!(!folio.is_locked());
    assert!(folio.flags().contains(FolioFlags::ERROR));
    assert_eq!(folio.error(), Some(Errno::NoData));
    assert_eq!(
        c.wb_err(f).unwrap().last(),
        None,
        "read errors are not mapping errors"
    );
    let io = folio.lock().start_read();
    assert!(!folio.flags().contains(FolioFlags::ERROR));
    io.part(0, 4096).unwrap().complete(Ok(()));
    drop(io);
    assert!(folio.is_uptodate());
    assert_eq!(folio.error(), None);
}

/// R39/R22: one failed part fails the folio even if the others succeed;
/// a part dropped without completion counts as EIO.
#[test]
fn r39_one_failed_part_fails_the_folio() {
    let c = cache();
    let f = file(&c, 1024);
    let l = new_folio(&c, f, 0, 0);
    let folio = l.folio();
    let io = l.start_read();
    let a = io.part(0, 2048).unwrap();
    let b = io.part(2048, 2048).unwrap();
    drop(io);
    drop(b); // lost command
    a.complete(Ok(()));
    assert!(!folio.is_locked());
    assert!(!folio.is_uptodate());
    assert_eq!(folio.error(), Some(Errno::Io));
    assert_eq!(bits(&folio.uptodate_blocks()), "1100");
}

/// A large folio read in two pieces by two "commands" on other threads.
#[test]
fn large_folio_completes_from_other_threads() {
    let c = cache();
    let f = file(&c, 4096);
    let l = new_folio(&c, f, 0, 4); // 64 KiB
    let folio = l.folio();
    let io = l.start_read();
    let parts: Vec<_> = (0..4).map(|i| io.part(i * 16384, 16384).unwrap()).collect();
    drop(io);
    let threads: Vec<_> = parts
        .into_iter()
        .map(|p| std::thread::spawn(move || p.complete(Ok(()))))
        .collect();
    // A locker waits for the read to end.
    let locked = folio.lock();
    assert!(locked.is_uptodate());
    for t in threads {
        t.join().unwrap();
    }
}

/// R42: the synchronous read of write_begin keeps the folio locked.
#[test]
fn r42_sync_read_keeps_the_lock() {
    let c = cache();
    let f = file(&c, 1024);
    let l = new_folio(&c, f, 0, 0);
    let folio = l.folio();
    let io = l.start_read();
    let p = io.part(1024, 1024).unwrap();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(10));
        p.complete(Ok(()));
    });
    let (locked, outcome) = io.wait_locked();
    t.join().unwrap();
    assert_eq!(outcome, Ok(()));
    assert!(folio.is_locked());
    locked.write(1500, &[5; 100]).unwrap();
    assert_eq!(bits(&folio.dirty_blocks()), "0100");
    drop(locked);
    assert!(!folio.is_locked());
}

fn dirty_uptodate(c: &PageCache, f: FileId, index: u64, bs_fill: u8) -> pagecache::FolioRef {
    let l = new_folio(c, f, index, 0);
    l.write(0, &[bs_fill; 4096]).unwrap();
    l.folio()
}

/// T12 (R23, R28, R31): writeback cleans at start, ends clean without
/// error; accounting moves from dirty to writeback and back to zero.
#[test]
fn t12_writeback_success() {
    let c = cache();
    let f = file(&c, 4096);
    let folio = dirty_uptodate(&c, f, 0, 1);
    assert_eq!(c.dirty_bytes(), 4096);
    let wb = folio.lock().start_writeback().unwrap();
    assert!(!folio.is_locked(), "unlocked while under writeback");
    assert!(folio.is_writeback());
    assert!(!folio.is_dirty());
    assert_eq!((c.dirty_bytes(), c.writeback_bytes()), (0, 4096));
    assert_eq!(wb.dirty_ranges(), vec![0..4096]);
    let p = wb.part(0, 4096).unwrap();
    let mut out = vec![0; 4096];
    p.copy_out(&mut out).unwrap();
    assert!(out.iter().all(|b| *b == 1));
    // X3: never started twice while in flight.
    assert!(matches!(
        folio.lock().start_writeback(),
        Err(Error::UnderWriteback)
    ));
    drop(wb);
    assert!(folio.is_writeback(), "part still in flight");
    p.complete(Ok(()));
    assert!(!folio.is_writeback());
    assert_eq!(c.writeback_bytes(), 0);
    assert_eq!(folio.error(), None);
    assert_eq!(c.wb_err(f).unwrap().last(), None);
}

/// T16 (R31, R61, X1): a failed write ends writeback, leaves the folio
/// clean and uptodate with the new data, and reports the error once per
/// open description.
#[test]
fn t16_failed_writeback_is_not_redirtied() {
    let c = cache();
    let f = file(&c, 4096);
    let wb_err = c.wb_err(f).unwrap();
    let mut fd_a = wb_err.sample();
    let folio = dirty_uptodate(&c, f, 0, 0x42);
    let wb = folio.lock().start_writeback().unwrap();
    wb.part(0, 4096).unwrap().complete(Err(Errno::Io));
    drop(wb);
    let flags = folio.flags();
    assert!(!flags.contains(FolioFlags::DIRTY), "not re-dirtied");
    assert!(!flags.contains(FolioFlags::WRITEBACK));
    assert!(flags.contains(FolioFlags::UPTODATE | FolioFlags::ERROR));
    let mut out = [0; 4];
    folio.read(0, &mut out).unwrap();
    assert_eq!(out, [0x42; 4], "new data still readable from cache");
    let mut fd_b = wb_err.sample();
    assert_eq!(wb_err.check_and_advance(&mut fd_a), Err(Errno::Io));
    assert_eq!(wb_err.check_and_advance(&mut fd_a), Ok(()));
    let mut fd_c = wb_err.sample();
    assert_eq!(wb_err.check_and_advance(&mut fd_b), Err(Errno::Io));
    assert_eq!(wb_err.check_and_advance(&mut fd_c), Ok(()));
    assert_eq!(c.dirty_bytes(), 0);
}

/// X3: a write during writeback re-dirties the folio; writeback's end
/// leaves it dirty.
#[test]
fn x3_write_during_writeback_redirties() {
    let c = cache();
    let f = file(&c, 4096);
    let folio = dirty_uptodate(&c, f, 0, 1);
    let wb = folio.lock().start_writeback().unwrap();
    folio.lock().write(0, &[2; 8]).unwrap();
    assert!(folio.is_dirty() && folio.is_writeback());
    wb.part(0, 4096).unwrap().complete(Ok(()));
    drop(wb);
    assert!(folio.is_dirty());
    assert!(!folio.is_writeback());
    assert_eq!((c.dirty_bytes(), c.writeback_bytes()), (4096, 0));
}

/// R23: a folio without per-block state must be uptodate to be written.
#[test]
fn r23_writeback_needs_uptodate_data() {
    let c = cache();
    let f = file(&c, 4096);
    let l = new_folio(&c, f, 0, 0);
    assert!(matches!(
        l.start_writeback(),
        Err(Error::NotUptodate { .. })
    ));
}

/// T22a (R53 with a dirty bitmap): only dirty blocks are listed, and
/// non-uptodate blocks cannot be written.
#[test]
fn t22_writeback_lists_dirty_blocks_only() {
    let c = cache();
    let f = file(&c, 1024);
    let l = new_folio(&c, f, 0, 0);
    l.zero_blocks(1024, 1024).unwrap();
    l.write(1500, &[9; 100]).unwrap(); // bits 0100
    let wb = l.start_writeback().unwrap();
    assert_eq!(wb.dirty_ranges(), vec![1024..2048]);
    assert_eq!(bits(&wb.folio().dirty_blocks()), "0000", "cleared at start");
    assert!(matches!(wb.part(0, 1024), Err(Error::NotUptodate { .. })));
    assert!(wb.part(1000, 1024).is_err(), "not block aligned");
    wb.part(1024, 1024).unwrap().complete(Ok(()));
}

/// R56: a writeback with nothing to write ends when the handle drops.
#[test]
fn r56_empty_writeback_ends_at_once() {
    let c = cache();
    let f = file(&c, 4096);
    let folio = dirty_uptodate(&c, f, 0, 1);
    folio.lock().start_writeback().unwrap().submit();
    assert!(!folio.is_writeback());
    assert!(!folio.is_dirty());
    assert_eq!(c.writeback_bytes(), 0);
}

/// T25 (R60, K18): a discarded dirty folio ends clean, not
/// uptodate with cleared bitmaps, and the file error is recorded.
#[test]
fn t25_discard_forgets_data_and_records_error() {
    let c = cache();
    let f = file(&c, 1024);
    let wb_err = c.wb_err(f).unwrap();
    let mut fd = wb_err.sample();
    let l = new_folio(&c, f, 0, 0);
    l.zero_blocks(0, 1024).unwrap();
    l.write(1024, &[1; 3072]).unwrap();
    assert!(l.is_uptodate() && l.is_dirty());
    let folio = l.folio();
    l.discard(Errno::Io);
    assert!(!folio.is_locked() && !folio.is_dirty() && !folio.is_uptodate());
    assert!(!folio.is_writeback());
    assert_eq!(bits(&folio.uptodate_blocks()), "0000");
    assert!(
        folio.read(0, &mut [0; 1]).is_err(),
        "next read must go to the device"
    );
    assert_eq!(wb_err.check_and_advance(&mut fd), Err(Errno::Io));
    assert_eq!(c.dirty_bytes(), 0);
}

/// T13 (R27): the EOF tail is zeroed in the cache without state changes.
#[test]
fn t13_zero_tail_keeps_state() {
    let c = cache();
    let f = file(&c, 1024);
    let folio = dirty_uptodate(&c, f, 1, 0x55);
    let l = folio.lock();
    l.zero_tail(904).unwrap();
    assert!(l.zero_tail(4097).is_err());
    drop(l);
    let mut out = [0xFF; 4096];
    folio.read(0, &mut out).unwrap();
    assert!(out[..904].iter().all(|b| *b == 0x55));
    assert!(out[904..].iter().all(|b| *b == 0));
    assert!(folio.is_dirty() && folio.is_uptodate());
}

/// T26a (R49): truncate_page zeroes the rest of the block and dirties it.
#[test]
fn t26_zero_range_dirties() {
    let c = cache();
    let f = file(&c, 1024);
    let l = new_folio(&c, f, 0, 0);
    l.zero_blocks(0, 4096).unwrap();
    assert!(!l.is_dirty());
    assert!(l.zero_range_dirty(2500, 572).unwrap());
    assert_eq!(bits(&l.dirty_blocks()), "0010");
    assert!(!l.mark_range_dirty(0, 10).unwrap());
    assert_eq!(bits(&l.dirty_blocks()), "1010");
}

#[test]
fn readahead_marker_is_tested_and_cleared_once() {
    let c = cache();
    let f = file(&c, 4096);
    let l = new_folio(&c, f, 0, 0);
    l.set_readahead_marker();
    let folio = l.folio();
    drop(l);
    assert!(folio.flags().contains(FolioFlags::READAHEAD));
    assert!(folio.test_clear_readahead());
    assert!(!folio.test_clear_readahead());
}

#[test]
fn wait_clear_times_out_while_locked_and_wakes_on_unlock() {
    let c = cache();
    let f = file(&c, 4096);
    let l = new_folio(&c, f, 0, 0);
    let r = l.folio();
    assert!(!r.wait_clear(FolioFlags::LOCKED, Duration::from_millis(5)));
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        drop(l);
    });
    assert!(r.wait_clear(FolioFlags::LOCKED, Duration::from_secs(10)));
    t.join().unwrap();
}

#[test]
fn zero_bytes_zeroes_without_changing_state() {
    let c = cache();
    let f = file(&c, 1024);
    let l = new_folio(&c, f, 0, 0);
    l.write(0, &[0xAB; 4096]).unwrap();
    let dirty = c.dirty_bytes();
    l.zero_bytes(1500, 100).unwrap();
    assert!(l.is_uptodate() && l.is_dirty());
    assert_eq!(c.dirty_bytes(), dirty);
    let mut out = vec![0; 4096];
    l.read(0, &mut out).unwrap();
    assert!(out[..1500].iter().all(|b| *b == 0xAB));
    assert!(out[1500..1600].iter().all(|b| *b == 0));
    assert!(out[1600..].iter().all(|b| *b == 0xAB));
    assert!(l.zero_bytes(4000, 100).is_err(), "outside the folio");
}

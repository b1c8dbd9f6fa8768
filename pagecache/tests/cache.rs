//! The cache facade: index, budget and eviction, dirty thresholds,
//! readahead driven against the index.

use std::sync::Arc;
use std::time::Duration;

use pagecache::{
    BlockSize, DirtyLimits, DirtyPressure, Error, FileId, FolioOrder, FolioRef, Grab, LockedFolio,
    PageCache, RaState, VecMemory,
};

const PAGE: u64 = 4096;

fn order(o: u8) -> FolioOrder {
    FolioOrder::new(o).unwrap()
}

fn cache_of(pages: u64) -> PageCache {
    PageCache::new(Arc::new(VecMemory::new()), pages * PAGE).unwrap()
}

/// A clean uptodate folio (as after a read), unlocked.
fn clean(c: &PageCache, f: FileId, index: u64, o: u8) -> FolioRef {
    match c.grab(f, index, order(o)).unwrap() {
        Grab::Created(l) => {
            l.zero_blocks(0, l.size()).unwrap();
            l.folio()
        }
        Grab::Cached(r) => r,
    }
}

fn dirty(c: &PageCache, f: FileId, index: u64) -> FolioRef {
    let r = clean(c, f, index, 0);
    r.lock().write(0, b"x").unwrap();
    r
}

#[test]
fn index_lookup_alignment_and_overlap() {
    let c = cache_of(1024);
    let f = c.add_file(BlockSize::PAGE);
    let big = clean(&c, f, 4, 2); // pages 4..8
    for p in 4..8 {
        assert!(c.lookup(f, p).unwrap().unwrap().same(&big), "page {p}");
    }
    assert!(c.lookup(f, 3).unwrap().is_none());
    assert!(c.lookup(f, 8).unwrap().is_none());
    // A grab inside an existing folio returns it.
    assert!(matches!(c.grab(f, 6, order(0)).unwrap(), Grab::Cached(r) if r.same(&big)));
    assert!(matches!(c.grab(f, 2, order(1)).unwrap(), Grab::Created(_)));
    assert!(matches!(
        c.grab(f, 1, order(1)),
        Err(Error::Misaligned { index: 1, order: 1 })
    ));
    // Order-3 folio at 0 would cover pages 4..8.
    assert!(matches!(
        c.grab(f, 0, order(3)),
        Err(Error::Overlap { start: 0, end: 8 })
    ));
    let other = c.add_file(BlockSize::PAGE);
    assert!(c.lookup(other, 5).unwrap().is_none(), "files are separate");
    assert!(matches!(
        c.lookup(FileId(999), 0),
        Err(Error::UnknownFile(FileId(999)))
    ));
}

#[test]
fn range_queries_dirty_folios_and_gaps() {
    let c = cache_of(1024);
    let f = c.add_file(BlockSize::PAGE);
    clean(&c, f, 0, 0);
    dirty(&c, f, 3);
    clean(&c, f, 4, 2); // 4..8
    dirty(&c, f, 10);
    dirty(&c, f, 1);
    let idx: Vec<u64> = c
        .folios_in(f, 2..6)
        .unwrap()
        .iter()
        .map(|r| r.index())
        .collect();
    assert_eq!(idx, vec![3, 4]);
    let idx: Vec<u64> = c
        .folios_in(f, 5..6)
        .unwrap()
        .iter()
        .map(|r| r.index())
        .collect();
    assert_eq!(idx, vec![4], "a folio straddling the start is included");
    let d: Vec<u64> = c
        .dirty_folios(f, 0..100)
        .unwrap()
        .iter()
        .map(|r| r.index())
        .collect();
    assert_eq!(d, vec![1, 3, 10], "ascending");
    assert_eq!(c.gaps(f, 0..12).unwrap(), vec![2..3, 8..10, 11..12]);
    assert_eq!(c.gaps(f, 5..9).unwrap(), vec![8..9]);
    assert_eq!(c.next_miss(f, 3, 10).unwrap(), Some(8));
    assert_eq!(c.next_miss(f, 4, 4).unwrap(), None);
    assert_eq!(c.folios_in(f, 5..5).unwrap().len(), 0);
}

/// Eviction takes clean folios, oldest first, second chance for used ones.
#[test]
fn budget_evicts_clean_folios_in_clock_order() {
    let c = cache_of(4);
    let f = c.add_file(BlockSize::PAGE);
    for i in 0..4 {
        clean(&c, f, i, 0);
    }
    assert_eq!(c.used(), 4 * PAGE);
    // Everything starts referenced: the first turn of the clock clears
    // the bits, the second evicts the oldest.
    clean(&c, f, 4, 0);
    assert_eq!(c.used(), 4 * PAGE);
    assert!(c.lookup(f, 0).unwrap().is_none(), "oldest evicted");
    // Page 1 is used again: it gets a second chance, page 2 goes.
    c.lookup(f, 1).unwrap();
    clean(&c, f, 5, 0);
    assert!(c.lookup(f, 1).unwrap().is_some());
    assert!(c.lookup(f, 2).unwrap().is_none());
    assert_eq!(c.used(), 4 * PAGE);
}

/// Dirty, locked, under-writeback and pinned folios are never evicted;
/// with nothing evictable the cache refuses once it is at its budget.
#[test]
fn never_evicts_busy_folios_and_reports_full() {
    let c = cache_of(4);
    let f = c.add_file(BlockSize::PAGE);
    let d = dirty(&c, f, 0);
    let d_iova = d.iova();
    drop(d);
    let locked = match c.grab(f, 1, order(0)).unwrap() {
        Grab::Created(l) => l,
        Grab::Cached(_) => unreachable!(),
    };
    let wb = dirty(&c, f, 2).lock().start_writeback().unwrap();
    let pinned = clean(&c, f, 3, 0);
    assert_eq!(c.shrink(u64::MAX), 0);
    let err = c.grab(f, 4, order(0)).unwrap_err();
    assert!(matches!(err, Error::CacheFull { used, budget } if used == budget));
    assert_eq!(c.lookup(f, 0).unwrap().unwrap().iova(), d_iova);
    // Release the pin: now there is room.
    drop(pinned);
    assert!(matches!(c.grab(f, 4, order(0)).unwrap(), Grab::Created(_)));
    assert!(c.lookup(f, 3).unwrap().is_none());
    drop(locked);
    drop(wb);
}

/// Usage may pass the budget only by less than one folio.
#[test]
fn budget_overshoot_is_less_than_one_folio() {
    let c = cache_of(4);
    let f = c.add_file(BlockSize::PAGE);
    let pins: Vec<_> = (0..3).map(|i| dirty(&c, f, i)).collect();
    // 3 pages used, all busy: an order-2 folio (4 pages) still fits once.
    clean(&c, f, 4, 2);
    assert_eq!(c.used(), 7 * PAGE);
    // It is clean and unpinned, so the next one evicts it.
    clean(&c, f, 8, 0);
    assert_eq!(c.used(), 4 * PAGE);
    drop(pins);
}

#[test]
fn folios_from_several_threads_stay_within_one_folio_of_budget() {
    let c = Arc::new(cache_of(64));
    let files: Vec<FileId> = (0..4).map(|_| c.add_file(BlockSize::PAGE)).collect();
    let max = FolioOrder::new(3).unwrap().size() as u64;
    let threads: Vec<_> = files
        .into_iter()
        .enumerate()
        .map(|(t, f)| {
            let c = c.clone();
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    let o = ((i + t as u64) % 4) as u8;
                    let index = i * 8;
                    match c.grab(f, index, order(o)) {
                        Ok(Grab::Created(l)) => {
                            l.zero_blocks(0, l.size()).unwrap();
                            if i % 5 == 0 {
                                l.write(0, b"d").unwrap();
                            }
                        }
                        Ok(Grab::Cached(_)) => {}
                        Err(Error::CacheFull { .. }) => {
                            // Write back everything of ours and go on.
                            for d in c.dirty_folios(f, 0..u64::MAX).unwrap() {
                                if let Some(Ok(wb)) = d.try_lock().map(LockedFolio::start_writeback)
                                {
                                    for r in wb.dirty_ranges() {
                                        wb.part(r.start, r.len()).unwrap().complete(Ok(()));
                                    }
                                }
                            }
                        }
                        Err(e) => panic!("{e}"),
                    }
                    let used = c.used();
                    assert!(used < c.budget() + max, "used {used}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(c.used() <= c.budget() + max);
}

#[test]
fn invalidate_drops_dirty_keeps_busy_and_straddling() {
    let c = cache_of(64);
    let f = c.add_file(BlockSize::PAGE);
    dirty(&c, f, 0);
    let locked = clean(&c, f, 1, 0).lock();
    let wb = dirty(&c, f, 2).lock().start_writeback().unwrap();
    clean(&c, f, 4, 2); // 4..8 straddles the end of 0..6
    let pinned = clean(&c, f, 3, 0);
    let report = c.invalidate(f, 0..6).unwrap();
    assert_eq!(report.removed, 2, "dirty 0 and pinned 3");
    let busy: Vec<u64> = report.busy.iter().map(|r| r.index()).collect();
    assert_eq!(busy, vec![1, 2]);
    assert!(c.lookup(f, 0).unwrap().is_none());
    assert!(c.lookup(f, 4).unwrap().is_some(), "straddling folio kept");
    assert_eq!(c.dirty_bytes(), 0, "dropped dirty data unaccounted");
    // The pinned folio left the index but its memory is alive until the
    // pin goes.
    assert!(!pinned.is_uptodate());
    let used = c.used();
    drop(pinned);
    assert_eq!(c.used(), used - PAGE);
    drop((locked, wb, report));
    assert_eq!(c.invalidate(f, 0..6).unwrap().removed, 2);
    assert!(c.remove_file(f).unwrap().busy.is_empty());
    assert!(c.lookup(f, 4).is_err());
    assert_eq!(c.used(), 0);
}

#[test]
fn dirty_thresholds_drive_the_throttle_decision() {
    let c = Arc::new(PageCache::with_limits(
        Arc::new(VecMemory::new()),
        100 * PAGE,
        DirtyLimits::from_ratios(100 * PAGE, 10, 20).unwrap(),
    ));
    let f = c.add_file(BlockSize::PAGE);
    let mut folios = vec![];
    for i in 0..10 {
        folios.push(dirty(&c, f, i));
    }
    assert_eq!(c.dirty_pressure(), DirtyPressure::Below);
    folios.push(dirty(&c, f, 10));
    assert_eq!(c.dirty_pressure(), DirtyPressure::Background);
    for i in 11..21 {
        folios.push(dirty(&c, f, i));
    }
    assert_eq!(c.dirty_pressure(), DirtyPressure::Throttle);
    // Starting writeback does not lift the throttle; completing it does.
    let wbs: Vec<_> = folios[..4]
        .iter()
        .map(|r| r.lock().start_writeback().unwrap())
        .collect();
    let parts: Vec<_> = wbs.iter().map(|w| w.part(0, 4096).unwrap()).collect();
    drop(wbs);
    assert_eq!(c.dirty_pressure(), DirtyPressure::Throttle);
    assert!(!c.wait_dirty_below_hard(Duration::from_millis(5)));
    let c2 = c.clone();
    let waiter = std::thread::spawn(move || c2.wait_dirty_below_hard(Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(10));
    for p in parts {
        p.complete(Ok(()));
    }
    assert!(waiter.join().unwrap());
    assert_eq!(c.dirty_pressure(), DirtyPressure::Background);
}

/// Readahead against the cache: a sequential reader of a 40-page file
/// gets windows 4, 8, 16, then the rest up to EOF; each window is
/// triggered by the marker folio; nothing past EOF is allocated.
#[test]
fn readahead_windows_follow_markers_and_stop_at_eof() {
    let c = cache_of(1024);
    let f = c.add_file(BlockSize::PAGE);
    let i_size = 40 * PAGE - 100;
    let mut ra = RaState::new(32);
    let mut windows = vec![];
    for page in 0..40u64 {
        let plan = match c.lookup(f, page).unwrap() {
            None => ra.on_miss(page, 1, i_size),
            Some(r) if r.test_clear_readahead() => ra.on_marker(page, 1, i_size, |from, max| {
                c.next_miss(f, from, max).unwrap()
            }),
            Some(_) => None,
        };
        if let Some(plan) = plan {
            windows.push(plan.pages.clone());
            for gap in c.gaps(f, plan.pages.clone()).unwrap() {
                for p in gap {
                    let Grab::Created(l) = c.grab(f, p, order(0)).unwrap() else {
                        panic!("gap page {p} cached");
                    };
                    if Some(p) == plan.marker {
                        l.set_readahead_marker();
                    }
                    let io = l.start_read();
                    io.part(0, 4096).unwrap().complete(Ok(()));
                }
            }
        }
        assert!(c.lookup(f, page).unwrap().unwrap().is_uptodate());
        ra.record_read((page + 1) * PAGE);
    }
    assert_eq!(windows, vec![0..4, 4..12, 12..28, 28..40]);
    assert_eq!(c.nr_folios(f).unwrap(), 40, "nothing past EOF");
}

/// Random reads do not trigger readahead: each plans its demand page
/// only, without a marker.
#[test]
fn random_reads_allocate_only_the_demand_page() {
    let mut ra = RaState::new(32);
    for page in [17u64, 300, 5, 900, 42] {
        let plan = ra.on_miss(page, 1, 1 << 30).unwrap();
        assert_eq!(plan.pages, page..page + 1);
        assert_eq!(plan.marker, None);
        ra.record_read((page + 1) * PAGE);
    }
}

/// Dropping the cache with folios still cached (and one still referenced
/// outside it): the index shuts lookups out of every entry before its
/// references go; the referenced folio stays readable, and its memory is
/// returned when the last reference goes.
#[test]
fn dropping_the_cache_with_cached_and_referenced_folios() {
    let c = cache_of(32);
    let f = c.add_file(BlockSize::PAGE);
    for i in 0..4 {
        drop(clean(&c, f, i * 4, 2));
    }
    drop(clean(&c, f, 16, 0));
    let kept = c.lookup(f, 5).unwrap().expect("cached");
    assert_eq!(c.nr_folios(f).unwrap(), 5);
    drop(c);
    assert!(kept.is_uptodate());
    let mut buf = [1u8; 16];
    kept.read(4096, &mut buf).unwrap();
    assert_eq!(buf, [0; 16], "zeroed when created, still there");
}

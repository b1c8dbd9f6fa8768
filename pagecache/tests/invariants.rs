//! Property tests of the cache-wide invariants, over random sequences of
//! grabs, writes, pins, locks, writebacks, shrinks and invalidations:
//!
//! * eviction never removes a dirty, locked, under-writeback or pinned
//!   folio;
//! * memory in use stays below budget + one folio, and equals the sizes of
//!   the live folios (cached, or removed but still referenced);
//! * dirty and writeback byte counters equal the sizes of the folios
//!   carrying those flags;
//! * the lock-free lookup agrees with the locked index after every step
//!   (each page finds the folio covering it, or nothing), also across
//!   files removed and added again (the file table is replaced whole).

use std::collections::HashMap;
use std::sync::Arc;

use pagecache::{
    BlockSize, FileId, FolioFlags, FolioOrder, FolioRef, Grab, IoPart, LockedFolio, PageCache,
    VecMemory, WritebackIo,
};
use proptest::prelude::*;

const PAGE: u64 = 4096;
const BUDGET_PAGES: u64 = 16;
const MAX_ORDER: u8 = 2;
/// Pages of each file the operations touch.
const PAGES: u64 = 48;

#[derive(Debug, Clone)]
enum Op {
    /// Grab a folio; `fate` picks what happens to a new one: 0 stays
    /// locked, 1 becomes clean uptodate, 2 becomes dirty, 3 is released
    /// not uptodate.
    Grab {
        file: usize,
        page: u64,
        order: u8,
        fate: u8,
    },
    Write {
        file: usize,
        page: u64,
    },
    Pin {
        file: usize,
        page: u64,
    },
    Unpin(usize),
    Unlock(usize),
    StartWriteback {
        file: usize,
        page: u64,
    },
    EndWriteback {
        which: usize,
        ok: bool,
    },
    Shrink(u64),
    Invalidate {
        file: usize,
        start: u64,
        len: u64,
    },
    /// Remove the file (if nothing of it is busy) and add a new one in
    /// its place.
    Replace(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let file = 0..2usize;
    let page = 0..PAGES;
    prop_oneof![
        4 => (file.clone(), page.clone(), 0..=MAX_ORDER, 0..4u8)
            .prop_map(|(file, page, order, fate)| Op::Grab { file, page, order, fate }),
        2 => (file.clone(), page.clone()).prop_map(|(file, page)| Op::Write { file, page }),
        1 => (file.clone(), page.clone()).prop_map(|(file, page)| Op::Pin { file, page }),
        1 => (0..8usize).prop_map(Op::Unpin),
        1 => (0..8usize).prop_map(Op::Unlock),
        2 => (file.clone(), page.clone())
            .prop_map(|(file, page)| Op::StartWriteback { file, page }),
        2 => (0..8usize, any::<bool>()).prop_map(|(which, ok)| Op::EndWriteback { which, ok }),
        1 => (0..8 * PAGE).prop_map(Op::Shrink),
        1 => (file.clone(), page, 1..16u64).prop_map(|(file, start, len)| Op::Invalidate { file, start, len }),
        1 => file.prop_map(Op::Replace),
    ]
}

struct World {
    cache: PageCache,
    files: Vec<FileId>,
    pins: Vec<FolioRef>,
    locks: Vec<LockedFolio>,
    writebacks: Vec<(WritebackIo, IoPart)>,
}

/// (file, first page) → (iova, flags) of every cached folio.
fn snapshot(w: &World) -> HashMap<(FileId, u64), (u64, FolioFlags)> {
    let mut out = HashMap::new();
    for &f in &w.files {
        for r in w.cache.all_folios(f).unwrap() {
            out.insert((f, r.index()), (r.iova(), r.flags()));
        }
    }
    out
}

fn held_iovas(w: &World) -> Vec<u64> {
    let mut v: Vec<u64> = w.pins.iter().map(|r| r.iova()).collect();
    v.extend(w.locks.iter().map(|l| l.iova()));
    v.extend(w.writebacks.iter().map(|(io, _)| io.folio().iova()));
    v
}

fn check_counters(w: &World) -> Result<(), TestCaseError> {
    // Live folios: cached ones plus removed ones we still hold.
    let mut live: HashMap<u64, (u64, FolioFlags)> = HashMap::new();
    for &f in &w.files {
        for r in w.cache.all_folios(f).unwrap() {
            live.insert(r.iova(), (r.size() as u64, r.flags()));
        }
    }
    for r in w
        .pins
        .iter()
        .cloned()
        .chain(w.locks.iter().map(|l| l.folio()))
    {
        live.insert(r.iova(), (r.size() as u64, r.flags()));
    }
    for (io, _) in &w.writebacks {
        live.insert(
            io.folio().iova(),
            (io.folio().size() as u64, io.folio().flags()),
        );
    }
    let sum = |flag: Option<FolioFlags>| -> u64 {
        live.values()
            .filter(|(_, fl)| flag.is_none_or(|f| fl.contains(f)))
            .map(|(s, _)| s)
            .sum()
    };
    prop_assert_eq!(w.cache.used(), sum(None), "used");
    prop_assert_eq!(w.cache.dirty_bytes(), sum(Some(FolioFlags::DIRTY)), "dirty");
    prop_assert_eq!(
        w.cache.writeback_bytes(),
        sum(Some(FolioFlags::WRITEBACK)),
        "writeback"
    );
    let max_folio = FolioOrder::new(MAX_ORDER).unwrap().size() as u64;
    prop_assert!(
        w.cache.used() < w.cache.budget() + max_folio,
        "used {} budget {}",
        w.cache.used(),
        w.cache.budget()
    );
    Ok(())
}

fn apply(w: &mut World, op: &Op) {
    match *op {
        Op::Grab {
            file,
            page,
            order,
            fate,
        } => {
            let o = FolioOrder::new(order).unwrap();
            let index = page & !(o.pages() - 1);
            if let Ok(Grab::Created(l)) = w.cache.grab(w.files[file], index, o) {
                match fate {
                    0 => w.locks.push(l),
                    1 => l.zero_blocks(0, l.size()).unwrap(),
                    2 => {
                        l.write(0, &vec![1; l.size()]).unwrap();
                    }
                    _ => drop(l),
                }
            }
        }
        Op::Write { file, page } => {
            if let Ok(Some(r)) = w.cache.lookup(w.files[file], page)
                && let Some(l) = r.try_lock()
                && l.is_uptodate()
            {
                l.write(0, b"w").unwrap();
            }
        }
        Op::Pin { file, page } => {
            if let Ok(Some(r)) = w.cache.lookup(w.files[file], page) {
                w.pins.push(r);
            }
        }
        Op::Unpin(i) => {
            if !w.pins.is_empty() {
                let i = i % w.pins.len();
                w.pins.swap_remove(i);
            }
        }
        Op::Unlock(i) => {
            if !w.locks.is_empty() {
                let i = i % w.locks.len();
                w.locks.swap_remove(i);
            }
        }
        Op::StartWriteback { file, page } => {
            if let Ok(Some(r)) = w.cache.lookup(w.files[file], page)
                && r.is_dirty()
                && !r.is_writeback()
                && let Some(l) = r.try_lock()
            {
                let wb = l.start_writeback().unwrap();
                let part = wb.part(0, wb.folio().size()).unwrap();
                w.writebacks.push((wb, part));
            }
        }
        Op::EndWriteback { which, ok } => {
            if !w.writebacks.is_empty() {
                let i = which % w.writebacks.len();
                let (io, part) = w.writebacks.swap_remove(i);
                drop(io);
                part.complete(if ok {
                    Ok(())
                } else {
                    Err(pagecache::Errno::Io)
                });
            }
        }
        Op::Shrink(bytes) => {
            w.cache.shrink(bytes);
        }
        Op::Invalidate { file, start, len } => {
            w.cache
                .invalidate(w.files[file], start..start + len)
                .unwrap();
        }
        Op::Replace(file) => {
            let old = w.files[file];
            if w.cache.remove_file(old).unwrap().busy.is_empty() {
                let gone = w.cache.block_size(old).unwrap_err();
                assert!(matches!(gone, pagecache::Error::UnknownFile(_)));
                w.files[file] = w.cache.add_file(block_size(file));
                assert!(w.cache.lookup(old, 0).is_err(), "a removed file is unknown");
            }
        }
    }
}

/// Block size of file `i`: a page, or 1 KiB (per-block state).
fn block_size(i: usize) -> BlockSize {
    if i == 0 {
        BlockSize::PAGE
    } else {
        BlockSize::new(1024).unwrap()
    }
}

/// Every page of every file: the lock-free lookup finds the folio the
/// locked index holds for it (same folio, covering the page), or none.
fn check_lookups(w: &World) -> Result<(), TestCaseError> {
    for &f in &w.files {
        let folios = w.cache.all_folios(f).unwrap();
        for page in 0..PAGES {
            let want = folios.iter().find(|r| r.pages().contains(&page));
            let got = w.cache.lookup(f, page).unwrap();
            match (want, &got) {
                (None, None) => {}
                (Some(a), Some(b)) => {
                    prop_assert!(a.same(b), "page {} of {:?}: another folio", page, f);
                    prop_assert!(b.pages().contains(&page));
                    prop_assert_eq!(b.file(), f);
                }
                _ => prop_assert!(
                    false,
                    "page {} of {:?}: index {:?}, lookup {:?}",
                    page,
                    f,
                    want,
                    got
                ),
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn cache_invariants_hold(ops in proptest::collection::vec(op(), 1..120)) {
        let cache = PageCache::new(Arc::new(VecMemory::new()), BUDGET_PAGES * PAGE).unwrap();
        let files = vec![cache.add_file(block_size(0)), cache.add_file(block_size(1))];
        let mut w = World { cache, files, pins: vec![], locks: vec![], writebacks: vec![] };
        for op in &ops {
            let before = snapshot(&w);
            let held = held_iovas(&w);
            apply(&mut w, op);
            if !matches!(op, Op::Invalidate { .. } | Op::Replace(_)) {
                // Only invalidation may remove busy folios; eviction never.
                let after = snapshot(&w);
                for (key, (iova, flags)) in &before {
                    let busy = flags.intersects(FolioFlags::DIRTY | FolioFlags::LOCKED | FolioFlags::WRITEBACK)
                        || held.contains(iova);
                    if busy {
                        prop_assert_eq!(
                            after.get(key).map(|(i, _)| *i),
                            Some(*iova),
                            "busy folio {:?} ({:?}) evicted by {:?}", key, flags, op
                        );
                    }
                }
            }
            check_counters(&w)?;
            check_lookups(&w)?;
        }
        // Dropping everything returns all memory once the files go.
        w.pins.clear();
        w.locks.clear();
        w.writebacks.clear();
        for &f in &w.files.clone() {
            prop_assert!(w.cache.remove_file(f).unwrap().busy.is_empty());
        }
        prop_assert_eq!(w.cache.used(), 0);
        prop_assert_eq!(w.cache.dirty_bytes(), 0);
        prop_assert_eq!(w.cache.writeback_bytes(), 0);
    }
}

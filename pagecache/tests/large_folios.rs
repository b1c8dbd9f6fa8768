//! Folios of mixed orders (1, 4, 64 and 512 pages: leaf slots, one and
//! eight slots of the index's level 1) cached, replaced by folios of other
//! orders, invalidated, evicted and looked up in random sequences, against
//! a model: the lock-free lookup of every page finds the folio covering
//! it, or nothing, and the locked index holds what the model does.

use std::collections::BTreeMap;
use std::sync::Arc;

use pagecache::{BlockSize, FileId, FolioOrder, Grab, PAGE_SIZE, PageCache, VecMemory};
use proptest::prelude::*;

/// Pages the operations touch: the index's root grows to level 2.
const SPACE: u64 = 2 * 4096;

#[derive(Debug, Clone)]
enum Op {
    /// Cache a folio of `order` holding `page`, after invalidating the
    /// folios it would overlap (a large folio replaces small ones, or a
    /// small one the large folio that was there).
    Grab {
        page: u64,
        order: u8,
    },
    Invalidate {
        page: u64,
        len: u64,
    },
    Lookup {
        page: u64,
    },
    /// Evict up to `pages` pages' worth of folios.
    Shrink {
        pages: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let order = prop::sample::select(vec![0u8, 2, 6, 9]);
    prop_oneof![
        4 => (0..SPACE, order).prop_map(|(page, order)| Op::Grab { page, order }),
        1 => (0..SPACE, 1..1024u64).prop_map(|(page, len)| Op::Invalidate { page, len }),
        2 => (0..SPACE).prop_map(|page| Op::Lookup { page }),
        1 => (1..1024u64).prop_map(|pages| Op::Shrink { pages }),
    ]
}

/// First page → pages of the cached folios.
type Model = BTreeMap<u64, u64>;

fn covering(model: &Model, page: u64) -> Option<(u64, u64)> {
    let (&first, &pages) = model.range(..=page).next_back()?;
    (page < first + pages).then_some((first, pages))
}

/// Removes the model's folios wholly inside `start..end`.
fn invalidate(model: &mut Model, start: u64, end: u64) {
    model.retain(|&first, &mut pages| first < start || first + pages > end);
}

/// Each page of `pages` (and the pages either side) finds, without the
/// lock, the folio the model has there.
fn check_pages(
    cache: &PageCache,
    file: FileId,
    model: &Model,
    pages: std::ops::Range<u64>,
) -> Result<(), TestCaseError> {
    for page in pages.start.saturating_sub(1)..pages.end + 1 {
        let got = cache.lookup(file, page).unwrap();
        let got = got.map(|f| (f.index(), f.pages().end - f.pages().start));
        prop_assert_eq!(got, covering(model, page), "page {}", page);
    }
    Ok(())
}

fn check_index(cache: &PageCache, file: FileId, model: &Model) -> Result<(), TestCaseError> {
    let held: Model = cache
        .all_folios(file)
        .unwrap()
        .iter()
        .map(|f| (f.index(), f.pages().end - f.pages().start))
        .collect();
    prop_assert_eq!(&held, model);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn mixed_order_folios_are_found_at_every_page(ops in proptest::collection::vec(op(), 1..60)) {
        // Room for the whole space twice: only `Shrink` evicts.
        let cache = PageCache::new(Arc::new(VecMemory::new()), 2 * SPACE * PAGE_SIZE as u64).unwrap();
        let file = cache.add_file(BlockSize::PAGE);
        let mut model = Model::new();
        for op in &ops {
            match *op {
                Op::Grab { page, order } => {
                    let o = FolioOrder::new(order).unwrap();
                    let first = page & !(o.pages() - 1);
                    let end = first + o.pages();
                    // The overlapping folios lie inside the new one's
                    // pages, or one holds them all.
                    let (start, stop) = match covering(&model, first) {
                        Some((f, p)) if f + p >= end => (f, f + p),
                        _ => (first, end),
                    };
                    let report = cache.invalidate(file, start..stop).unwrap();
                    prop_assert!(report.busy.is_empty());
                    invalidate(&mut model, start, stop);
                    check_pages(&cache, file, &model, start..stop)?;
                    let Grab::Created(locked) = cache.grab(file, first, o).unwrap() else {
                        return Err(TestCaseError::fail("cached after invalidation"));
                    };
                    // Half of them clean and uptodate, half not.
                    if (first / o.pages()).is_multiple_of(2) {
                        locked.zero_blocks(0, locked.size()).unwrap();
                    }
                    drop(locked);
                    model.insert(first, o.pages());
                    check_pages(&cache, file, &model, start..stop)?;
                }
                Op::Invalidate { page, len } => {
                    let end = (page + len).min(SPACE);
                    let report = cache.invalidate(file, page..end).unwrap();
                    prop_assert!(report.busy.is_empty());
                    invalidate(&mut model, page, end);
                    check_pages(&cache, file, &model, page..end)?;
                }
                Op::Lookup { page } => check_pages(&cache, file, &model, page..page + 1)?,
                Op::Shrink { pages } => {
                    cache.shrink(pages * PAGE_SIZE as u64);
                    let held: Vec<u64> =
                        cache.all_folios(file).unwrap().iter().map(|f| f.index()).collect();
                    // Eviction only removes.
                    for first in &held {
                        prop_assert!(model.contains_key(first));
                    }
                    model.retain(|first, _| held.contains(first));
                    check_pages(&cache, file, &model, 0..SPACE)?;
                }
            }
            check_index(&cache, file, &model)?;
        }
        check_pages(&cache, file, &model, 0..SPACE)?;
        prop_assert!(cache.remove_file(file).unwrap().busy.is_empty());
        prop_assert_eq!(cache.used(), 0);
    }
}

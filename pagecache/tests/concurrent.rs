//! Lock-free lookups racing eviction, invalidation, reinsertion, memory
//! recycling and file removal, on real threads.
//!
//! Every page of a folio is filled with a tag naming its file and page
//! (and the folio's generation), through the read path, so the folio is
//! clean and evictable. Readers look pages up without the cache lock and
//! check, while they hold the reference, that the folio covers the page,
//! belongs to the file, and that its bytes are that page's, twice, with
//! the cache evicting and recycling folio memory in between: a folio
//! freed or its memory reused while referenced shows up as another
//! page's tag (`grab_within_budget` gives an evicted folio's memory to
//! the next folio without clearing it). At the end every byte of memory
//! is accounted for. Once with small folios only, once with small and
//! large ones (64 and 512 pages) taking each other's place, so lookups
//! also race the index's multi-slot entries and the freeing of the nodes
//! a large folio's entry replaces.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use pagecache::{BlockSize, FileId, FolioOrder, FolioRef, Grab, PAGE_SIZE, PageCache, VecMemory};

/// Reader lookups per reader thread.
const LOOKUPS: usize = 60_000;

/// What the writer caches, evicts and invalidates.
struct Shape {
    /// Pages of each file.
    pages: u64,
    /// Folio orders it inserts.
    orders: &'static [u8],
    /// At most this many pages per invalidation.
    invalidate: u64,
    /// Readers go on past their lookups until the writer has done this
    /// many steps.
    writes: u64,
    /// The budget, in pages: well below what the three files could hold,
    /// so eviction runs all the time, and above what the readers pin.
    budget: u64,
    /// References a reader keeps across later evictions, at most.
    held: usize,
}

/// Small folios (leaf slots of the index).
const SMALL: Shape = Shape {
    pages: 256,
    orders: &[0, 1, 2],
    invalidate: 16,
    writes: 1000,
    budget: 128,
    held: 16,
};

/// Small and large folios (one and eight slots of the index's level 1),
/// replacing each other in the same pages.
const MIXED: Shape = Shape {
    pages: 4096,
    orders: &[0, 2, 6, 9],
    invalidate: 1024,
    writes: 2000,
    budget: 8192,
    held: 2,
};

/// The 8-byte tag every word of a page holds.
fn tag(file: FileId, page: u64) -> u64 {
    (file.0 << 32) | page
}

/// A tiny deterministic generator (xorshift), one per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Creates the folio of `order` holding `page` (if none is there) and
/// fills it, through a read, with its pages' tags: clean and uptodate.
fn populate(cache: &PageCache, file: FileId, page: u64, order: u8, strict: bool) {
    let o = FolioOrder::new(order).unwrap();
    let index = page & !(o.pages() - 1);
    let grabbed = if strict {
        cache.grab_within_budget(file, index, o)
    } else {
        cache.grab(file, index, o)
    };
    let Ok(Grab::Created(locked)) = grabbed else {
        // Cached, overlapping a folio of another order, or no room.
        return;
    };
    let mut data = vec![0u8; locked.size()];
    for (i, page_bytes) in data.chunks_mut(PAGE_SIZE).enumerate() {
        let t = tag(file, index + i as u64).to_le_bytes();
        page_bytes.copy_from_slice(&t.repeat(PAGE_SIZE / 8));
    }
    let io = locked.start_read();
    let part = io.part(0, data.len()).unwrap();
    part.fill_from(&data).unwrap();
    part.complete(Ok(()));
    drop(io);
}

/// Checks what a reader found for `page` of `file`; returns whether it
/// was readable (uptodate).
fn check(folio: &FolioRef, file: FileId, page: u64) -> bool {
    assert_eq!(folio.file(), file, "a folio of another file");
    assert!(
        folio.pages().contains(&page),
        "page {page} found folio {:?}",
        folio.pages()
    );
    let off = ((page - folio.index()) as usize) * PAGE_SIZE;
    if !folio.is_range_uptodate(off, PAGE_SIZE) {
        return false;
    }
    let mut buf = vec![0u8; PAGE_SIZE];
    match folio.read(off, &mut buf) {
        Ok(()) => {}
        // Truncated since the check above (invalidation removes pinned
        // folios too, and clears their state). Any other error (memory
        // recycled while referenced reads as an error) is a failure.
        Err(pagecache::Error::NotUptodate { .. }) => return false,
        Err(e) => panic!("page {page} of {file:?}: {e}"),
    }
    let want = tag(file, page).to_le_bytes();
    for w in buf.chunks(8) {
        assert_eq!(
            w, want,
            "page {page} of {file:?} holds another page's bytes"
        );
    }
    true
}

#[test]
fn lookups_race_eviction_invalidation_and_reinsertion() {
    race(&SMALL);
}

#[test]
fn lookups_race_eviction_invalidation_and_reinsertion_of_large_folios() {
    race(&MIXED);
}

fn race(shape: &'static Shape) {
    let cache = Arc::new(
        PageCache::new(Arc::new(VecMemory::new()), shape.budget * PAGE_SIZE as u64).unwrap(),
    );
    // Two files readers know for the whole run, and one slot whose file
    // is removed and added again.
    let fixed = [
        cache.add_file(BlockSize::PAGE),
        cache.add_file(BlockSize::PAGE),
    ];
    let churned = Arc::new(AtomicU64::new(cache.add_file(BlockSize::PAGE).0));
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicBool::new(false));
    let found = Arc::new(AtomicUsize::new(0));
    let readers = 3;
    let start = Arc::new(Barrier::new(readers + 2));

    let mut handles = Vec::new();
    for r in 0..readers {
        let (cache, churned, found, start, written) = (
            cache.clone(),
            churned.clone(),
            found.clone(),
            start.clone(),
            written.clone(),
        );
        handles.push(thread::spawn(move || {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (r as u64 + 1));
            start.wait();
            let mut held: Vec<(FolioRef, FileId, u64)> = Vec::new();
            let mut lookups = 0;
            while lookups < LOOKUPS || !written.load(Ordering::Relaxed) {
                lookups += 1;
                let which = rng.below(3);
                let file = match which {
                    0 | 1 => fixed[which as usize],
                    _ => FileId(churned.load(Ordering::Acquire)),
                };
                let page = rng.below(shape.pages);
                match cache.lookup(file, page) {
                    Ok(Some(f)) => {
                        if check(&f, file, page) {
                            found.fetch_add(1, Ordering::Relaxed);
                        }
                        // Keep some references across later evictions
                        // and recycling, and check them again then.
                        if rng.below(8) == 0 {
                            held.push((f, file, page));
                        }
                    }
                    Ok(None) => {}
                    // The churned file was removed between the load of
                    // its id and the lookup.
                    Err(pagecache::Error::UnknownFile(_)) => assert_eq!(which, 2),
                    Err(e) => panic!("lookup: {e}"),
                }
                if held.len() > shape.held {
                    for (f, file, page) in held.drain(..) {
                        check(&f, file, page);
                    }
                }
            }
            for (f, file, page) in held.drain(..) {
                check(&f, file, page);
            }
        }));
    }

    // The writer: inserts (recycling evicted memory half the time),
    // invalidates, shrinks, and replaces the churned file.
    {
        let (cache, churned, stop, start, written) = (
            cache.clone(),
            churned.clone(),
            stop.clone(),
            start.clone(),
            written.clone(),
        );
        handles.push(thread::spawn(move || {
            let mut rng = Rng(0x2545_f491_4f6c_dd1d);
            start.wait();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if n >= shape.writes {
                    written.store(true, Ordering::Relaxed);
                }
                let which = rng.below(3);
                let file = match which {
                    0 | 1 => fixed[which as usize],
                    _ => FileId(churned.load(Ordering::Acquire)),
                };
                let page = rng.below(shape.pages);
                match rng.below(16) {
                    0 => {
                        let len = 1 + rng.below(shape.invalidate);
                        if let Ok(report) = cache.invalidate(file, page..page + len) {
                            assert!(report.busy.is_empty(), "nothing stays locked");
                        }
                    }
                    1 => {
                        cache.shrink(rng.below(8) * PAGE_SIZE as u64);
                    }
                    2 if n.is_multiple_of(64) => {
                        let old = FileId(churned.load(Ordering::Acquire));
                        let report = cache.remove_file(old).unwrap();
                        assert!(report.busy.is_empty());
                        churned.store(cache.add_file(BlockSize::PAGE).0, Ordering::Release);
                    }
                    _ => {
                        let which = rng.below(shape.orders.len() as u64);
                        let order = shape.orders[which as usize];
                        if order >= 6 && rng.below(2) == 0 {
                            // Room for it: a large folio takes the place
                            // of small ones (and of their index nodes).
                            let first = page & !((1 << order) - 1);
                            let pages = first..first + (1 << order);
                            if let Ok(report) = cache.invalidate(file, pages) {
                                assert!(report.busy.is_empty(), "nothing stays locked");
                            }
                        }
                        populate(&cache, file, page, order, rng.below(2) == 0);
                    }
                }
            }
        }));
    }

    start.wait();
    let writer = handles.pop().unwrap();
    for h in handles {
        h.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    assert!(
        found.load(Ordering::Relaxed) > 1000,
        "readers found cached pages ({})",
        found.load(Ordering::Relaxed)
    );
    let max_order = shape.orders.iter().copied().max().unwrap_or(0);
    let max_folio = FolioOrder::new(max_order).unwrap().size() as u64;
    assert!(cache.used() < cache.budget() + max_folio);
    // Every folio the index holds is counted once, nothing else is alive.
    let live: u64 = fixed
        .iter()
        .chain(std::iter::once(&FileId(churned.load(Ordering::Acquire))))
        .flat_map(|&f| cache.all_folios(f).unwrap())
        .map(|f| f.size() as u64)
        .sum();
    assert_eq!(cache.used(), live);
    for f in fixed {
        assert!(cache.remove_file(f).unwrap().busy.is_empty());
    }
    assert!(
        cache
            .remove_file(FileId(churned.load(Ordering::Acquire)))
            .unwrap()
            .busy
            .is_empty()
    );
    assert_eq!(cache.used(), 0, "all folio memory returned");
}

/// A reference taken by a lookup keeps its folio (and its memory, with
/// its bytes) while another thread evicts everything else and recycles
/// memory for new folios.
#[test]
fn a_pinned_folio_survives_eviction_and_recycling() {
    let cache = Arc::new(PageCache::new(Arc::new(VecMemory::new()), 8 * PAGE_SIZE as u64).unwrap());
    let file = cache.add_file(BlockSize::PAGE);
    for page in 0..8 {
        populate(&cache, file, page, 0, false);
    }
    let pinned = cache.lookup(file, 3).unwrap().unwrap();
    let iova = pinned.iova();
    let evictor = {
        let cache = cache.clone();
        thread::spawn(move || {
            for round in 0..200u64 {
                let page = 8 + round % 64;
                populate(&cache, file, page, 0, true);
                cache.shrink(4 * PAGE_SIZE as u64);
            }
        })
    };
    for _ in 0..2000 {
        assert!(check(&pinned, file, 3));
    }
    evictor.join().unwrap();
    assert!(check(&pinned, file, 3));
    let again = cache
        .lookup(file, 3)
        .unwrap()
        .expect("pinned: still cached");
    assert!(again.same(&pinned));
    assert_eq!(again.iova(), iova);
    drop((again, pinned));
    // Unpinned now: everything can go.
    cache.shrink(u64::MAX);
    assert_eq!(cache.nr_folios(file).unwrap(), 0);
    assert_eq!(cache.used(), 0);
}

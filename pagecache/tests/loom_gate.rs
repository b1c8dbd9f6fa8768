//! A loom model of the lock-free lookup's protocol (`src/xarray.rs` and
//! `FileIndex::try_evict`/`remove` in `src/index.rs`), with loom's atomics
//! in place of the real ones: loom explores every interleaving (and the
//! weak-memory outcomes it models) of a lookup racing an eviction or an
//! invalidation of the same folio.
//!
//! Modelled: the slot (the one the lookup's page maps to: a large
//! folio's entry sits in a few, all unlinked before the index drops its
//! reference, and a lookup loads and reloads only its own), the entry's
//! gate, the folio's reference count (an `Arc`'s strong count, with
//! `Arc`'s own orderings for clone, drop and `try_unwrap`) and the
//! folio's memory (a loom `UnsafeCell`, so a read that is not ordered
//! before the memory is freed or recycled is reported). Not modelled: crossbeam's epoch, which keeps the unlinked
//! entry readable for the lookup that loaded it; the model keeps the entry
//! alive throughout, which is what the epoch guarantees. Keep the steps and
//! orderings in step with the real code.

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering, fence};
use loom::thread;

/// The folio's bytes while it is cached.
const DATA: u64 = 7;
/// What its memory holds once recycled for another folio (or freed).
const REUSED: u64 = 99;

struct Folio {
    /// `Arc`'s strong count: the index's reference is 1.
    refs: AtomicUsize,
    data: UnsafeCell<u64>,
}

struct Index {
    /// 1 while the entry is linked, 0 once unlinked.
    slot: AtomicUsize,
    /// 1 live, 1 + readers inside, 0 frozen.
    gate: AtomicUsize,
    folio: Folio,
}

impl Index {
    fn new() -> Self {
        Index {
            slot: AtomicUsize::new(1),
            gate: AtomicUsize::new(1),
            folio: Folio {
                refs: AtomicUsize::new(1),
                data: UnsafeCell::new(DATA),
            },
        }
    }

    /// `XArray::get` (with a bounded number of retries on a frozen gate,
    /// so the model is finite): returns whether a reference was taken.
    fn lookup(&self) -> bool {
        for _ in 0..2 {
            if self.slot.load(Ordering::Acquire) == 0 {
                return false;
            }
            // Entry::try_get.
            let mut gate = self.gate.load(Ordering::Relaxed);
            let got = loop {
                if gate == 0 {
                    break false;
                }
                match self.gate.compare_exchange_weak(
                    gate,
                    gate + 1,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break true,
                    Err(now) => gate = now,
                }
            };
            if !got {
                thread::yield_now();
                continue;
            }
            // Arc::increment_strong_count: Relaxed, as in std.
            self.folio.refs.fetch_add(1, Ordering::Relaxed);
            self.gate.fetch_sub(1, Ordering::Release);
            // xas_reload.
            if self.slot.load(Ordering::Acquire) == 1 {
                return true;
            }
            self.put();
        }
        false
    }

    /// Dropping a reference (`Arc::drop`): the last one frees the memory.
    fn put(&self) {
        if self.folio.refs.fetch_sub(1, Ordering::Release) == 1 {
            fence(Ordering::Acquire);
            // SAFETY: loom checks that this write is ordered after every
            // other access (that is what the model tests).
            self.folio.data.with_mut(|d| unsafe { *d = REUSED });
        }
    }

    /// Reads the folio's bytes through a reference the caller holds.
    fn read(&self) -> u64 {
        // SAFETY: loom checks that no write races with this read.
        self.folio.data.with(|d| unsafe { *d })
    }

    /// `FileIndex::try_evict`, then the recycling of `grab_within_budget`
    /// (`into_backing`: `Arc::try_unwrap`, then the memory is written for
    /// the new folio). Returns whether the folio was evicted.
    fn evict(&self) -> bool {
        // Arc::strong_count is a Relaxed load.
        if self.folio.refs.load(Ordering::Relaxed) > 1 {
            return false;
        }
        if self
            .gate
            .compare_exchange(1, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        if self.folio.refs.load(Ordering::Relaxed) > 1 {
            self.gate.store(1, Ordering::Release);
            return false;
        }
        self.slot.store(0, Ordering::Release);
        // Arc::try_unwrap: the index's reference must be the only one now
        // (the claim the freeze makes true).
        let unwrapped = self
            .folio
            .refs
            .compare_exchange(1, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        assert!(unwrapped, "a lookup took a reference to a frozen folio");
        fence(Ordering::Acquire);
        // SAFETY: loom checks that this write is ordered after every read.
        self.folio.data.with_mut(|d| unsafe { *d = REUSED });
        true
    }

    /// `FileIndex::remove` (truncation): freeze waiting for readers inside
    /// the gate, unlink, drop the index's reference.
    fn invalidate(&self) {
        while self
            .gate
            .compare_exchange(1, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            thread::yield_now();
        }
        self.slot.store(0, Ordering::Release);
        self.put();
    }
}

/// A thread doing one lookup: if it finds the folio, the bytes it reads
/// are the folio's, then it drops its reference.
fn spawn_reader(index: &Arc<Index>) -> thread::JoinHandle<()> {
    let index = index.clone();
    thread::spawn(move || {
        if index.lookup() {
            assert_eq!(index.read(), DATA);
            index.put();
        }
    })
}

/// A lookup racing an eviction that recycles the folio's memory: either
/// the lookup misses, or it holds a reference, the eviction backs off
/// and the bytes it reads are the folio's.
#[test]
fn lookup_races_eviction() {
    loom::model(|| {
        let index = Arc::new(Index::new());
        let reader = spawn_reader(&index);
        let evicted = index.evict();
        reader.join().unwrap();
        if evicted {
            assert_eq!(index.slot.load(Ordering::Relaxed), 0);
        } else {
            assert_eq!(index.slot.load(Ordering::Relaxed), 1);
            assert_eq!(index.gate.load(Ordering::Relaxed), 1, "thawed");
        }
    });
}

/// Two lookups racing an eviction: the gate counts both readers. Three
/// threads: bounded to three preemptions (loom's advice), which keeps it
/// to seconds.
#[test]
fn two_lookups_race_eviction() {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(3);
    model.check(|| {
        let index = Arc::new(Index::new());
        let readers: Vec<_> = (0..2).map(|_| spawn_reader(&index)).collect();
        index.evict();
        for r in readers {
            r.join().unwrap();
        }
    });
}

/// A lookup racing truncation: the folio's memory is freed only after
/// the reader's reference goes, whoever drops last.
#[test]
fn lookup_races_invalidation() {
    loom::model(|| {
        let index = Arc::new(Index::new());
        let reader = spawn_reader(&index);
        index.invalidate();
        reader.join().unwrap();
        assert_eq!(index.folio.refs.load(Ordering::Relaxed), 0, "freed once");
        assert_eq!(index.read(), REUSED);
    });
}

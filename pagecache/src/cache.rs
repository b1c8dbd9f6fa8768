//! The page cache: files, their folio indices, the memory budget, the
//! eviction clock and the dirty accounting, behind one facade that is safe
//! to share between threads.
//!
//! Memory budget: a folio is allocated only after the clock has evicted
//! enough clean, unlocked, not-under-writeback, unpinned folios to make
//! room. If not enough can be evicted, the allocation still goes ahead
//! while usage is below the budget (so usage may exceed the budget by less
//! than one folio), and fails with [`Error::CacheFull`] once it is not;
//! the caller then writes back or waits. Allocation happens under the
//! cache lock, so the overshoot is bounded by one folio for the whole
//! cache, not one per thread.
//!
//! Locking: insertion, eviction, invalidation, the clock and the range
//! walks take the cache lock (one mutex). [`PageCache::lookup`] (the warm
//! read path), [`PageCache::block_size`] and [`PageCache::wb_err`] take
//! none: the file table is an `RcuCell` and each file's folios are also
//! in a lock-free `XArray`, both read under a crossbeam epoch guard.
//! A lookup takes its folio reference through the entry's gate and
//! re-checks the slot (`folio_try_get` + `xas_reload`); eviction freezes
//! the gate before it checks that the index holds the only reference, so
//! a folio is never evicted under a lookup, and unlinked entries and old
//! file tables are freed by the epoch once no lookup can still see them
//! (see `xarray.rs`).
//!
//! Rule ids (R.., X.., K.., T..): docs/MPAGE.md.

use parking_lot::{Mutex, MutexGuard};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::FileId;
use crate::dirty::{Counters, DirtyLimits, DirtyPressure};
use crate::error::{Error, Result};
use crate::errseq::ErrSeq;
use crate::folio::{Folio, FolioParts, FolioRef, LockedFolio};
use crate::index::FileIndex;
use crate::lru::{Clock, Slot, Verdict};
use crate::memory::{FolioBacking, FolioMemory};
use crate::rcu::RcuCell;
use crate::units::{BlockSize, FolioOrder};
use crate::xarray::XArray;

/// Result of [`PageCache::grab`].
#[derive(Debug)]
pub enum Grab {
    /// A new folio, locked and not uptodate: the caller fills it (read,
    /// zero or overwrite) and unlocks it.
    Created(LockedFolio),
    /// The folio already cached at that index.
    Cached(FolioRef),
}

/// Result of [`PageCache::invalidate`].
#[derive(Debug, Default)]
pub struct Invalidated {
    /// Folios removed from the index.
    pub removed: usize,
    /// Folios wholly inside the range that were locked or under writeback
    /// and stayed: wait for them and invalidate again.
    pub busy: Vec<FolioRef>,
}

/// What lookups reach without the cache lock.
#[derive(Debug)]
struct FileShared {
    block: BlockSize,
    wb_err: Arc<ErrSeq>,
    pages: Arc<XArray>,
}

/// The file table as lookups see it (copied on add and remove).
type FileTable = BTreeMap<FileId, Arc<FileShared>>;

#[derive(Debug)]
struct FileEntry {
    block: BlockSize,
    index: FileIndex,
    wb_err: Arc<ErrSeq>,
}

#[derive(Debug, Default)]
struct Inner {
    files: HashMap<FileId, FileEntry>,
    clock: Clock,
    next_file: u64,
}

impl Inner {
    fn file(&self, file: FileId) -> Result<&FileEntry> {
        self.files.get(&file).ok_or(Error::UnknownFile(file))
    }

    fn file_mut(&mut self, file: FileId) -> Result<&mut FileEntry> {
        self.files.get_mut(&file).ok_or(Error::UnknownFile(file))
    }
}

/// The page cache.
#[derive(Debug)]
pub struct PageCache {
    memory: Arc<dyn FolioMemory>,
    budget: u64,
    limits: DirtyLimits,
    counters: Arc<Counters>,
    next_folio: AtomicU64,
    /// Lock-free view of the files (changed under `inner`'s lock).
    files: RcuCell<FileTable>,
    inner: Mutex<Inner>,
}

impl PageCache {
    /// A cache of `budget` bytes of folio memory from `memory`, with the
    /// kernel's default dirty ratios (10 % background, 20 % hard).
    pub fn new(memory: Arc<dyn FolioMemory>, budget: u64) -> Result<Self> {
        let limits = DirtyLimits::from_ratios(
            budget,
            DirtyLimits::DEFAULT_BACKGROUND_RATIO,
            DirtyLimits::DEFAULT_RATIO,
        )?;
        Ok(Self::with_limits(memory, budget, limits))
    }

    /// A cache with explicit dirty limits.
    pub fn with_limits(memory: Arc<dyn FolioMemory>, budget: u64, limits: DirtyLimits) -> Self {
        PageCache {
            memory,
            budget,
            limits,
            counters: Arc::new(Counters::default()),
            next_folio: AtomicU64::new(1),
            files: RcuCell::new(FileTable::new()),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Runs `f` on the file's lock-free part, under an epoch guard.
    fn with_shared<T>(
        &self,
        file: FileId,
        f: impl FnOnce(&FileShared, &crossbeam_epoch::Guard) -> T,
    ) -> Result<T> {
        let guard = crossbeam_epoch::pin();
        let shared = self
            .files
            .load(&guard)
            .get(&file)
            .ok_or(Error::UnknownFile(file))?;
        Ok(f(shared, &guard))
    }

    /// Publishes the file table after a change; `inner`'s lock held.
    fn publish_files(&self, inner: &Inner) {
        let table = inner
            .files
            .iter()
            .map(|(id, e)| {
                let shared = FileShared {
                    block: e.block,
                    wb_err: e.wb_err.clone(),
                    pages: e.index.pages(),
                };
                (*id, Arc::new(shared))
            })
            .collect();
        self.files.replace(table);
    }

    /// Registers a file with block size `block`; its folios are tracked
    /// per block when `block` is smaller than the folio.
    pub fn add_file(&self, block: BlockSize) -> FileId {
        let mut inner = self.inner();
        inner.next_file += 1;
        let id = FileId(inner.next_file);
        inner.files.insert(
            id,
            FileEntry {
                block,
                index: FileIndex::default(),
                wb_err: Arc::new(ErrSeq::new()),
            },
        );
        self.publish_files(&inner);
        id
    }

    /// Drops every folio of `file` (dirty data included) and forgets the
    /// file. Fails, keeping the file, if a folio is locked or under
    /// writeback; the folios that could be dropped are gone then.
    pub fn remove_file(&self, file: FileId) -> Result<Invalidated> {
        let report = self.invalidate(file, 0..u64::MAX)?;
        if report.busy.is_empty() {
            let mut inner = self.inner();
            if inner.files.remove(&file).is_some() {
                self.publish_files(&inner);
            }
        }
        Ok(report)
    }

    /// The file's block size (no lock).
    pub fn block_size(&self, file: FileId) -> Result<BlockSize> {
        self.with_shared(file, |f, _| f.block)
    }

    /// The file's writeback error sequence (X1): sample it at open, check
    /// it at fsync (no lock).
    pub fn wb_err(&self, file: FileId) -> Result<Arc<ErrSeq>> {
        self.with_shared(file, |f, _| f.wb_err.clone())
    }

    /// The folio covering page `index`, pinned (`filemap_get_folio`).
    /// Takes no lock: see the module documentation.
    pub fn lookup(&self, file: FileId, index: u64) -> Result<Option<FolioRef>> {
        let found = self.with_shared(file, |f, guard| f.pages.get(index, guard))?;
        if let Some(f) = &found {
            f.touch();
        }
        Ok(found)
    }

    /// The folio covering page `index`, or a new locked folio of `order`
    /// at `index` (which must be aligned to the order, with none of its
    /// pages cached) (`__filemap_get_folio(FGP_CREAT | FGP_LOCK)` minus the
    /// locking of a cached folio: lock it with [`FolioRef::lock`]).
    pub fn grab(&self, file: FileId, index: u64, order: FolioOrder) -> Result<Grab> {
        self.grab_inner(file, index, order, false)
    }

    /// [`PageCache::grab`] for readahead: never lets usage pass the
    /// budget (fails with [`Error::CacheFull`] if the folio does not fit
    /// after eviction, for optional large folios: the caller retries with
    /// a smaller order, like a large folio allocation that fails without
    /// reclaim effort), and may give the new folio the memory of a folio
    /// of the same order it evicted, without zeroing it (no allocation,
    /// no clearing of megabytes the device is about to overwrite).
    ///
    /// The new folio's bytes are therefore unspecified: the caller must
    /// read or zero every block before it becomes uptodate, as a read
    /// does (R35: every non-uptodate block is read, zeroed or failed).
    /// Bytes of blocks that are not uptodate are never handed out
    /// ([`crate::Folio::read`] and writeback look at uptodate or dirty
    /// blocks only).
    pub fn grab_within_budget(&self, file: FileId, index: u64, order: FolioOrder) -> Result<Grab> {
        self.grab_inner(file, index, order, true)
    }

    fn grab_inner(
        &self,
        file: FileId,
        index: u64,
        order: FolioOrder,
        strict: bool,
    ) -> Result<Grab> {
        let mut inner = self.inner();
        let entry = inner.file(file)?;
        if let Some(f) = entry.index.get(index) {
            f.touch();
            return Ok(Grab::Cached(f.clone()));
        }
        entry.index.check_free(index, order)?;
        let block = entry.block;
        let wb_err = entry.wb_err.clone();
        let size = order.size() as u64;
        let mut recycled = None;
        self.make_room(&mut inner, size, strict.then_some((order, &mut recycled)));
        let used = self.used();
        if used + size > self.budget && (strict || used >= self.budget) {
            return Err(Error::CacheFull {
                used,
                budget: self.budget,
            });
        }
        let backing = match recycled {
            Some(b) => b,
            None => self.memory.alloc(order)?,
        };
        self.counters.used.fetch_add(size, Ordering::AcqRel);
        let id = self.next_folio.fetch_add(1, Ordering::Relaxed);
        let locked = Folio::new_locked(FolioParts {
            id,
            file,
            index,
            order,
            block,
            backing,
            counters: self.counters.clone(),
            wb_err,
        });
        inner.file_mut(file)?.index.insert(locked.folio());
        inner.clock.push(Slot { file, index, id });
        Ok(Grab::Created(locked))
    }

    /// Evicts until `size` more bytes fit the budget or nothing more can
    /// go; with `recycle`, keeps the memory of the first evicted folio of
    /// that order there.
    fn make_room(
        &self,
        inner: &mut Inner,
        size: u64,
        recycle: Option<(FolioOrder, &mut Option<Box<dyn FolioBacking>>)>,
    ) {
        if self.used() + size <= self.budget {
            return;
        }
        let budget = self.budget;
        let n = self.sweep(inner, || self.used() + size <= budget, recycle);
        if n > 0 {
            log::trace!("evicted {n} folios to make room for {size} bytes");
        }
    }

    /// Runs the clock until `done`; returns how many folios went. With
    /// `recycle`, the memory of the first evicted folio of that order is
    /// kept there instead of being freed.
    fn sweep(
        &self,
        inner: &mut Inner,
        done: impl FnMut() -> bool,
        mut recycle: Option<(FolioOrder, &mut Option<Box<dyn FolioBacking>>)>,
    ) -> usize {
        let Inner { files, clock, .. } = inner;
        let n = clock.sweep(
            |slot| {
                let Some(entry) = files.get_mut(&slot.file) else {
                    return Verdict::Stale;
                };
                let Some(f) = entry.index.get(slot.index) else {
                    return Verdict::Stale;
                };
                if f.id() != slot.id || f.index() != slot.index {
                    return Verdict::Stale;
                }
                // Pinned: somebody else holds a reference (a lock or I/O
                // handle holds one too). Checked again by `try_evict`
                // with lookups shut out.
                if f.refs() > 1 || !f.is_reclaimable() {
                    return Verdict::Busy;
                }
                if f.take_referenced() {
                    return Verdict::SecondChance;
                }
                let Some(evicted) = entry.index.try_evict(slot.index) else {
                    // A lookup took it meanwhile.
                    return Verdict::Busy;
                };
                if let Some((order, slot)) = recycle.as_mut()
                    && slot.is_none()
                    && evicted.order() == *order
                {
                    // The only reference (`try_evict`), and out of the
                    // index: nobody can take a new one.
                    **slot = evicted.into_backing().ok();
                }
                Verdict::Evicted
            },
            done,
        );
        self.compact(inner);
        n
    }

    /// Drops clock slots of folios that left the index.
    fn compact(&self, inner: &mut Inner) {
        let live: usize = inner.files.values().map(|e| e.index.len()).sum();
        if inner.clock.len() <= 2 * live + 64 {
            return;
        }
        let Inner { files, clock, .. } = inner;
        clock.retain(|s| {
            files
                .get(&s.file)
                .and_then(|e| e.index.get(s.index))
                .is_some_and(|f| f.id() == s.id)
        });
    }

    /// Evicts clean, unlocked, unpinned folios not under writeback until
    /// `bytes` have been freed or none is left; returns the bytes freed.
    pub fn shrink(&self, bytes: u64) -> u64 {
        let mut inner = self.inner();
        let before = self.used();
        let target = before.saturating_sub(bytes);
        self.sweep(&mut inner, || self.used() <= target, None);
        before.saturating_sub(self.used())
    }

    /// Removes the folios lying wholly inside page range `pages` from the
    /// cache, dirty ones included (`truncate_inode_pages_range`); folios
    /// that straddle the range ends stay (the caller zeroes their part,
    /// R47/T21). Locked folios and folios under writeback stay and are
    /// reported busy.
    pub fn invalidate(&self, file: FileId, pages: Range<u64>) -> Result<Invalidated> {
        let mut inner = self.inner();
        let entry = inner.file_mut(file)?;
        let inside: Vec<FolioRef> = entry
            .index
            .range(pages.clone())
            .filter(|f| f.pages().start >= pages.start && f.pages().end <= pages.end)
            .cloned()
            .collect();
        let mut report = Invalidated::default();
        for f in inside {
            let Some(locked) = f.try_lock() else {
                report.busy.push(f);
                continue;
            };
            if locked.invalidate().is_err() {
                drop(locked);
                report.busy.push(f);
                continue;
            }
            entry.index.remove(f.index());
            report.removed += 1;
        }
        Ok(report)
    }

    /// Folios overlapping page range `pages`, ascending.
    pub fn folios_in(&self, file: FileId, pages: Range<u64>) -> Result<Vec<FolioRef>> {
        Ok(self
            .inner()
            .file(file)?
            .index
            .range(pages)
            .cloned()
            .collect())
    }

    /// Dirty folios overlapping `pages`, in ascending index order: what
    /// writeback visits (R23, X3).
    pub fn dirty_folios(&self, file: FileId, pages: Range<u64>) -> Result<Vec<FolioRef>> {
        Ok(self
            .inner()
            .file(file)?
            .index
            .range(pages)
            .filter(|f| f.is_dirty())
            .cloned()
            .collect())
    }

    /// Page ranges of `pages` not cached, ascending (what readahead has to
    /// allocate).
    pub fn gaps(&self, file: FileId, pages: Range<u64>) -> Result<Vec<Range<u64>>> {
        Ok(self.inner().file(file)?.index.gaps(pages))
    }

    /// First uncached page in `[index, index+max)` (`page_cache_next_miss`,
    /// for [`crate::RaState::on_marker`]).
    pub fn next_miss(&self, file: FileId, index: u64, max: u64) -> Result<Option<u64>> {
        Ok(self.inner().file(file)?.index.next_miss(index, max))
    }

    /// Number of folios cached for `file`.
    pub fn nr_folios(&self, file: FileId) -> Result<usize> {
        Ok(self.inner().file(file)?.index.len())
    }

    /// Every cached folio of `file`, ascending.
    pub fn all_folios(&self, file: FileId) -> Result<Vec<FolioRef>> {
        Ok(self.inner().file(file)?.index.iter().cloned().collect())
    }

    /// The budget in bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes of folio memory alive (cached, or removed but still
    /// referenced).
    pub fn used(&self) -> u64 {
        self.counters.used.load(Ordering::Acquire)
    }

    /// Bytes of dirty folios.
    pub fn dirty_bytes(&self) -> u64 {
        self.counters.dirty()
    }

    /// Bytes of folios under writeback.
    pub fn writeback_bytes(&self) -> u64 {
        self.counters.writeback()
    }

    /// The dirty limits.
    pub fn dirty_limits(&self) -> DirtyLimits {
        self.limits
    }

    /// What writers and the flusher should do now (`balance_dirty_pages`'
    /// decision; see [`crate::dirty`]).
    pub fn dirty_pressure(&self) -> DirtyPressure {
        self.limits
            .pressure(self.counters.dirty(), self.counters.writeback())
    }

    /// Blocks a throttled writer until dirty + writeback bytes are back at
    /// or under the hard limit, or `timeout` passes; returns whether they
    /// are.
    pub fn wait_dirty_below_hard(&self, timeout: Duration) -> bool {
        self.counters.wait_below(self.limits.hard, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::VecMemory;

    fn clean(c: &PageCache, f: FileId, index: u64, order: u8) -> FolioRef {
        let Grab::Created(l) = c.grab(f, index, FolioOrder::new(order).unwrap()).unwrap() else {
            panic!("cached");
        };
        l.zero_blocks(0, l.size()).unwrap();
        l.folio()
    }

    /// Readahead's grab reuses the memory of the folio it evicts (same
    /// order) and never passes the budget.
    #[test]
    fn grab_within_budget_recycles_evicted_memory_and_keeps_the_budget() {
        let c = PageCache::new(Arc::new(VecMemory::new()), 8 * 4096).unwrap();
        let f = c.add_file(BlockSize::PAGE);
        let a = clean(&c, f, 0, 2).iova();
        drop(clean(&c, f, 4, 2));
        // Both are unreferenced since creation: the clock gives each a
        // second chance, then evicts the oldest.
        let o2 = FolioOrder::new(2).unwrap();
        let Grab::Created(l) = c.grab_within_budget(f, 8, o2).unwrap() else {
            panic!("cached");
        };
        assert_eq!(l.iova(), a, "the evicted folio's memory");
        assert_eq!(c.used(), 8 * 4096);
        // Everything pinned: a strict grab fails instead of overshooting.
        let pin = c.lookup(f, 4).unwrap().unwrap();
        let o1 = FolioOrder::new(1).unwrap();
        assert!(matches!(
            c.grab_within_budget(f, 12, o1),
            Err(Error::CacheFull { .. })
        ));
        drop((l, pin));
    }
}

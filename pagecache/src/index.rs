//! The per-file index: page offset → folio (the kernel's `i_pages`
//! xarray). Folios are aligned to their order and never overlap, so a page
//! belongs to at most one folio.
//!
//! Two halves, changed together under the page cache's lock: an ordered
//! map holding the index's reference to each folio (for the range walks
//! of writeback, readahead and truncation, done under the lock) and the
//! lock-free [`XArray`] that lookups read without it. A folio leaves the
//! index only through [`FileIndex::remove`] or [`FileIndex::try_evict`],
//! which freeze its xarray entry first: no lookup can take a new
//! reference to it from then on.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::folio::FolioRef;
use crate::units::FolioOrder;
use crate::xarray::XArray;

/// The folios of one file, keyed by their first page index.
#[derive(Debug, Default)]
pub(crate) struct FileIndex {
    folios: BTreeMap<u64, FolioRef>,
    /// The same folios for lock-free lookups.
    pages: Arc<XArray>,
}

impl FileIndex {
    /// The lock-free half, for [`XArray::get`] without the cache lock.
    pub(crate) fn pages(&self) -> Arc<XArray> {
        self.pages.clone()
    }

    /// The folio covering page `index`.
    pub(crate) fn get(&self, index: u64) -> Option<&FolioRef> {
        let (_, f) = self.folios.range(..=index).next_back()?;
        f.pages().contains(&index).then_some(f)
    }

    /// Checks that a folio of `order` may be inserted at `index`: aligned,
    /// and no page of it cached yet.
    pub(crate) fn check_free(&self, index: u64, order: FolioOrder) -> Result<()> {
        let pages = order.pages();
        if !index.is_multiple_of(pages) {
            return Err(Error::Misaligned {
                index,
                order: order.get(),
            });
        }
        let end = index.checked_add(pages).ok_or(Error::Misaligned {
            index,
            order: order.get(),
        })?;
        if self.first_in(index..end).is_some() {
            return Err(Error::Overlap { start: index, end });
        }
        Ok(())
    }

    /// Inserts a folio whose place was checked with [`Self::check_free`].
    pub(crate) fn insert(&mut self, folio: FolioRef) {
        self.pages.insert(&folio);
        self.folios.insert(folio.index(), folio);
    }

    /// Removes the folio starting at `index`, whoever else holds it
    /// (truncation): lookups in flight finish first, later ones miss.
    pub(crate) fn remove(&mut self, index: u64) -> Option<FolioRef> {
        if !self.folios.contains_key(&index) {
            return None;
        }
        self.pages.freeze(index);
        self.pages.remove(index);
        self.folios.remove(&index)
    }

    /// Removes the folio starting at `index` if the index holds the only
    /// reference to it, checked while no lookup can take a new one (the
    /// entry frozen, as `folio_ref_freeze` in `__remove_mapping`).
    /// Returns the folio, then referenced by the caller alone; `None` if
    /// it is pinned, a lookup was taking it, or there is none.
    pub(crate) fn try_evict(&mut self, index: u64) -> Option<FolioRef> {
        let pinned = self.folios.get(&index)?.refs() > 1;
        if pinned || !self.pages.try_freeze(index) {
            return None;
        }
        // Frozen: no lookup takes a new reference; with the index's the
        // only one, nobody holds one to clone either, so it stays so.
        if self.folios.get(&index).is_some_and(|f| f.refs() > 1) {
            self.pages.thaw(index);
            return None;
        }
        self.pages.remove(index);
        self.folios.remove(&index)
    }

    /// The first folio overlapping `pages`.
    fn first_in(&self, pages: Range<u64>) -> Option<&FolioRef> {
        if pages.is_empty() {
            return None;
        }
        if let Some(f) = self.get(pages.start) {
            return Some(f);
        }
        self.folios.range(pages).next().map(|(_, f)| f)
    }

    /// Folios overlapping page range `pages`, ascending.
    pub(crate) fn range(&self, pages: Range<u64>) -> impl Iterator<Item = &FolioRef> {
        let head = self
            .get(pages.start)
            .filter(|f| f.index() < pages.start && !pages.is_empty());
        let body = if pages.is_empty() {
            self.folios.range(0..0)
        } else {
            self.folios.range(pages)
        };
        head.into_iter().chain(body.map(|(_, f)| f))
    }

    /// Page ranges in `pages` that no folio covers, ascending (what
    /// readahead would have to allocate and read).
    pub(crate) fn gaps(&self, pages: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut pos = pages.start;
        for f in self.range(pages.clone()) {
            let fp = f.pages();
            if fp.start > pos {
                out.push(pos..fp.start.min(pages.end));
            }
            pos = pos.max(fp.end);
        }
        if pos < pages.end {
            out.push(pos..pages.end);
        }
        out
    }

    /// The first page at or after `index`, and before `index + max`, that
    /// is not cached (`page_cache_next_miss`).
    pub(crate) fn next_miss(&self, index: u64, max: u64) -> Option<u64> {
        self.gaps(index..index.saturating_add(max))
            .first()
            .map(|g| g.start)
    }

    /// Number of folios.
    pub(crate) fn len(&self) -> usize {
        self.folios.len()
    }

    /// All folios, ascending.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &FolioRef> {
        self.folios.values()
    }
}

impl Drop for FileIndex {
    /// A file removed with folios still cached (inserted after
    /// `remove_file`'s invalidation), or the whole cache dropped: lookups
    /// that found the file before it left the file table may still walk
    /// its xarray, so every entry is frozen and unlinked before the
    /// index's references to the folios go.
    fn drop(&mut self) {
        for &index in self.folios.keys() {
            self.pages.freeze(index);
            self.pages.remove(index);
        }
    }
}

//! The lock-free half of the per-file index: page index → folio, read
//! without locks under an epoch guard (the kernel's RCU walk of the
//! `i_pages` xarray, with crossbeam's epoch in place of RCU).
//!
//! A radix tree of 64-slot nodes. Its leaves point to [`Entry`]s, one per
//! cached folio, stored in every slot the folio covers (a 2 MiB folio
//! fills 512 slots, as the kernel's multi-index entries cover theirs).
//! Only one thread changes the tree at a time (the page cache's lock);
//! any number look up concurrently with it:
//!
//! * Nodes are only ever added (the tree grows upwards by a new root
//!   whose slot 0 holds the old one), and are freed with the tree, when
//!   no reader can reach it any more (the file table defers that, see
//!   [`crate::rcu`]).
//! * An entry holds the folio by a plain pointer: the folio's reference
//!   belongs to the index (its `BTreeMap`, see `index`). A reader turns
//!   the pointer into a [`FolioRef`] only through the entry's *gate*, a
//!   count that is 1 while the entry is live, more while readers are
//!   inside ([`XArray::get`] increments it only if it is not 0, like
//!   `folio_try_get`), and 0 once the writer *froze* it
//!   ([`XArray::try_freeze`], like `folio_ref_freeze`). The writer freezes
//!   an entry before it unlinks it and before the index drops its
//!   reference: a reader holding the gate therefore always clones a live
//!   reference, and a frozen folio gains no new one, so "the index holds
//!   the only reference" stays true from the freeze to the removal (what
//!   eviction checks).
//! * After taking its reference the reader reloads the slot and starts
//!   over unless it still holds the same entry (`xas_reload`).
//! * An unlinked entry is freed by the epoch ([`Guard::defer_destroy`]):
//!   a reader that loaded it before the unlink may still look at its gate
//!   (and find it 0), never at the folio behind it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_epoch::{self as epoch, Atomic, Guard, Owned, Shared};
use crossbeam_utils::Backoff;

use crate::folio::{Folio, FolioRef};

/// log2 of the slots per node.
const BITS: u32 = 6;
/// Slots per node.
const SLOTS: usize = 1 << BITS;
const MASK: u64 = SLOTS as u64 - 1;

/// One cached folio, as readers find it.
struct Entry {
    /// 1 + readers inside while live; 0 once frozen (see the module
    /// documentation).
    gate: AtomicUsize,
    /// The folio; the reference it stands for belongs to the index.
    folio: *const Folio,
    /// First page and number of pages: the slots holding this entry.
    first: u64,
    pages: u64,
}

// SAFETY: `Folio` is `Send + Sync`; the pointer is only dereferenced
// (cloned into a `FolioRef`) through the gate, which keeps the index's
// reference alive meanwhile, from whichever thread.
unsafe impl Send for Entry {}
// SAFETY: as for `Send`: shared access only reads the pointer and uses
// the atomic gate.
unsafe impl Sync for Entry {}

enum Slots {
    /// Children, each covering 64^level pages.
    Inner(Box<[Atomic<Node>; SLOTS]>),
    /// Entries, one page each.
    Leaf(Box<[Atomic<Entry>; SLOTS]>),
}

struct Node {
    /// Pages covered by one slot: 1 << shift.
    shift: u32,
    slots: Slots,
}

impl Node {
    fn new(shift: u32) -> Node {
        let slots = if shift == 0 {
            Slots::Leaf(Box::new(std::array::from_fn(|_| Atomic::null())))
        } else {
            Slots::Inner(Box::new(std::array::from_fn(|_| Atomic::null())))
        };
        Node { shift, slots }
    }

    /// Whether page `index` lies in this node's range (its range starts
    /// at 0: the tree only grows at the top).
    fn covers(&self, index: u64) -> bool {
        let span = self.shift + BITS;
        span >= u64::BITS || index >> span == 0
    }

    fn slot(&self, index: u64) -> usize {
        ((index >> self.shift) & MASK) as usize
    }
}

/// The lock-free page index of one file. See the module documentation.
pub(crate) struct XArray {
    root: Atomic<Node>,
}

impl std::fmt::Debug for XArray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XArray").finish_non_exhaustive()
    }
}

impl Default for XArray {
    fn default() -> Self {
        XArray {
            root: Atomic::new(Node::new(0)),
        }
    }
}

impl XArray {
    /// The entry in page `index`'s slot.
    fn load<'g>(&self, index: u64, guard: &'g Guard) -> Option<&'g Entry> {
        // SAFETY: nodes are never freed while the tree is reachable (only
        // in `Drop`, which needs the tree exclusively), and the root is
        // never null.
        let mut node = unsafe { self.root.load(Ordering::Acquire, guard).deref() };
        if !node.covers(index) {
            return None;
        }
        loop {
            let i = node.slot(index);
            match &node.slots {
                Slots::Inner(children) => {
                    let child = children[i].load(Ordering::Acquire, guard);
                    // SAFETY: as above: a non-null child pointer stays
                    // valid as long as the tree.
                    node = unsafe { child.as_ref() }?;
                }
                Slots::Leaf(entries) => {
                    let e = entries[i].load(Ordering::Acquire, guard);
                    // SAFETY: entries are freed only through
                    // `defer_destroy` after being unlinked; `guard` was
                    // pinned before this load, so the entry outlives it.
                    return unsafe { e.as_ref() };
                }
            }
        }
    }

    /// The folio covering page `index`, pinned (a new reference), found
    /// without locks (`filemap_get_entry`: load, `folio_try_get`,
    /// `xas_reload`).
    pub(crate) fn get(&self, index: u64, guard: &Guard) -> Option<FolioRef> {
        let backoff = Backoff::new();
        loop {
            let entry = self.load(index, guard)?;
            let Some(folio) = entry.try_get() else {
                // Frozen: being removed, or eviction found it pinned and
                // is about to thaw it. Look again (spinning, then
                // yielding in case the writer lost its CPU).
                backoff.snooze();
                continue;
            };
            match self.load(index, guard) {
                Some(again) if std::ptr::eq(again, entry) => return Some(folio),
                _ => {
                    // Replaced meanwhile: the reference is dropped (it
                    // was a valid one), and the slot read anew.
                    drop(folio);
                }
            }
        }
    }

    /// Links `folio` into every slot it covers. The caller serialises
    /// writers and has checked that the slots are empty.
    pub(crate) fn insert(&self, folio: &FolioRef) {
        let pages = folio.pages();
        let entry = Owned::new(Entry {
            gate: AtomicUsize::new(1),
            // From the index's `Arc` itself (its provenance covers the
            // counts `try_get` increments).
            folio: Arc::as_ptr(folio.arc()),
            first: pages.start,
            pages: pages.end - pages.start,
        });
        let guard = epoch::pin();
        let entry = entry.into_shared(&guard);
        for index in pages {
            let leaf = self.leaf_for_insert(index, &guard);
            if let Slots::Leaf(entries) = &leaf.slots {
                entries[leaf.slot(index)].store(entry, Ordering::Release);
            }
        }
    }

    /// The leaf node holding page `index`, created (and the tree grown)
    /// as needed. Writers only.
    fn leaf_for_insert<'g>(&self, index: u64, guard: &'g Guard) -> &'g Node {
        let mut root = self.root.load(Ordering::Acquire, guard);
        loop {
            // SAFETY: the root is never null and lives as long as the tree.
            let r = unsafe { root.deref() };
            if r.covers(index) {
                break;
            }
            let up = Node::new(r.shift + BITS);
            if let Slots::Inner(children) = &up.slots {
                children[0].store(root, Ordering::Relaxed);
            }
            let up = Owned::new(up).into_shared(guard);
            // Readers see the new root fully built (Release), with the
            // old one below it: nothing they could find disappears.
            self.root.store(up, Ordering::Release);
            root = up;
        }
        // SAFETY: as above.
        let mut node = unsafe { root.deref() };
        loop {
            let i = node.slot(index);
            match &node.slots {
                Slots::Leaf(_) => return node,
                Slots::Inner(children) => {
                    let mut child = children[i].load(Ordering::Acquire, guard);
                    if child.is_null() {
                        child = Owned::new(Node::new(node.shift - BITS)).into_shared(guard);
                        children[i].store(child, Ordering::Release);
                    }
                    // SAFETY: non-null; nodes live as long as the tree.
                    node = unsafe { child.deref() };
                }
            }
        }
    }

    /// Freezes the entry of the folio starting at `index` if no reader is
    /// inside its gate; afterwards no reader can take a new reference
    /// until [`XArray::thaw`] or [`XArray::remove`]. Writers only. Returns
    /// false if a reader was inside (or there is no entry).
    pub(crate) fn try_freeze(&self, index: u64) -> bool {
        let guard = epoch::pin();
        self.load(index, &guard).is_some_and(|e| {
            e.gate
                .compare_exchange(1, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })
    }

    /// Freezes the entry at `index`, waiting for readers inside its gate
    /// (they are a few instructions from leaving it). Writers only.
    pub(crate) fn freeze(&self, index: u64) {
        let backoff = Backoff::new();
        while !self.try_freeze(index) {
            let guard = epoch::pin();
            if self.load(index, &guard).is_none() {
                return;
            }
            backoff.snooze();
        }
    }

    /// Undoes [`XArray::try_freeze`]: the folio stays cached.
    pub(crate) fn thaw(&self, index: u64) {
        let guard = epoch::pin();
        if let Some(e) = self.load(index, &guard) {
            e.gate.store(1, Ordering::Release);
        }
    }

    /// Unlinks the (frozen) entry of the folio starting at `index` from
    /// every slot it covers; its memory goes when no reader can still see
    /// it. The caller drops the index's reference afterwards. Writers
    /// only.
    pub(crate) fn remove(&self, index: u64) {
        let guard = epoch::pin();
        let Some(entry) = self.load(index, &guard) else {
            return;
        };
        debug_assert_eq!(entry.gate.load(Ordering::Relaxed), 0, "not frozen");
        let (first, pages) = (entry.first, entry.pages);
        let mut shared = Shared::null();
        for i in first..first + pages {
            if let Some(leaf) = self.leaf(i, &guard)
                && let Slots::Leaf(entries) = &leaf.slots
            {
                shared = entries[leaf.slot(i)].swap(Shared::null(), Ordering::AcqRel, &guard);
            }
        }
        if !shared.is_null() {
            // SAFETY: the entry is unlinked from every slot, so no new
            // reader finds it; readers that found it before hold guards
            // pinned earlier, which the deferred free waits for.
            unsafe { guard.defer_destroy(shared) };
        }
    }

    /// The existing leaf holding page `index`.
    fn leaf<'g>(&self, index: u64, guard: &'g Guard) -> Option<&'g Node> {
        // SAFETY: as in `load`.
        let mut node = unsafe { self.root.load(Ordering::Acquire, guard).deref() };
        if !node.covers(index) {
            return None;
        }
        loop {
            match &node.slots {
                Slots::Leaf(_) => return Some(node),
                Slots::Inner(children) => {
                    let child = children[node.slot(index)].load(Ordering::Acquire, guard);
                    // SAFETY: as in `load`.
                    node = unsafe { child.as_ref() }?;
                }
            }
        }
    }
}

impl Entry {
    /// A new reference to the folio if the entry is not frozen
    /// (`folio_try_get`).
    fn try_get(&self) -> Option<FolioRef> {
        let mut gate = self.gate.load(Ordering::Relaxed);
        loop {
            if gate == 0 {
                return None;
            }
            match self.gate.compare_exchange_weak(
                gate,
                gate + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => gate = now,
            }
        }
        // SAFETY: the gate is held and was not 0: the writer has not
        // frozen the entry, so the index still holds its reference to the
        // folio (it drops it only after freezing, which waits for the
        // gate), and the pointer came from that reference.
        let folio = unsafe {
            Arc::increment_strong_count(self.folio);
            Arc::from_raw(self.folio)
        };
        // Release: the writer that freezes next sees the new reference.
        self.gate.fetch_sub(1, Ordering::Release);
        Some(FolioRef::from_arc(folio))
    }
}

impl Drop for XArray {
    fn drop(&mut self) {
        // Exclusive access: no reader can reach the tree any more, so the
        // unprotected guard is enough.
        // SAFETY: nothing else accesses the tree (we own it), so nodes and
        // entries can be freed right away.
        let guard = unsafe { epoch::unprotected() };
        let root = self.root.swap(Shared::null(), Ordering::Relaxed, guard);
        // SAFETY: as above; the root came from `Owned`.
        unsafe { free_node(root, 0, guard) };
    }
}

/// Frees `node`, its subtree and the entries still linked in it (each
/// once: at the slot of its first page). `base` is the first page the
/// node covers.
///
/// # Safety
///
/// Nobody else may access the subtree.
unsafe fn free_node(node: Shared<'_, Node>, base: u64, guard: &Guard) {
    if node.is_null() {
        return;
    }
    // SAFETY: the caller guarantees exclusive access; the pointer came
    // from `Owned`.
    let owned = unsafe { node.into_owned() };
    match &owned.slots {
        Slots::Inner(children) => {
            for (i, c) in children.iter().enumerate() {
                let child = c.load(Ordering::Relaxed, guard);
                let child_base = base.wrapping_add((i as u64) << owned.shift);
                // SAFETY: exclusive access, passed on.
                unsafe { free_node(child, child_base, guard) };
            }
        }
        Slots::Leaf(entries) => {
            for (i, e) in entries.iter().enumerate() {
                let entry = e.load(Ordering::Relaxed, guard);
                // SAFETY: exclusive access; a live entry's pointer is
                // valid until it is freed here, once.
                if let Some(en) = unsafe { entry.as_ref() }
                    && en.first == base + i as u64
                {
                    // SAFETY: as above; the entry came from `Owned`.
                    drop(unsafe { entry.into_owned() });
                }
            }
        }
    }
}

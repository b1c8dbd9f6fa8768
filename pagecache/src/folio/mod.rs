//! Folios: 4 KiB..2 MiB of file data in DMA-capable memory, their flags,
//! their per-block state and the transitions I/O takes them through.
//!
//! The lock bit is an owned token, [`LockedFolio`]: whoever holds it may
//! change the folio's contents and start I/O. Starting I/O consumes the
//! token, so a folio cannot be read into twice or written back twice at
//! once, and the I/O handles ([`ReadIo`], [`WritebackIo`]) end the I/O
//! exactly once, also when they are dropped on an error path.
//!
//! Rule ids (R13, K18, ...) are the entries of docs/MPAGE.md.

use crate::FileId;
use crate::dirty::Counters;
use crate::error::{Errno, Error, Result};
use crate::errseq::ErrSeq;
use crate::folio_state::{BlockBitmap, BlockState};
use crate::memory::FolioBacking;
use crate::units::{BlockSize, FolioOrder, PAGE_SHIFT};
use bitflags::bitflags;
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::fmt;
use std::ops::{Deref, Range};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod io;
mod lock;

pub use io::{Direction, IoPart, ReadIo, WritebackIo};
pub use lock::LockedFolio;

bitflags! {
    /// Folio state bits (the kernel's PG_* flags that matter here).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct FolioFlags: u8 {
        /// Held by a [`LockedFolio`] or by read I/O in flight.
        const LOCKED = 1 << 0;
        /// Every block holds valid file data (R34 invariant).
        const UPTODATE = 1 << 1;
        /// Some block differs from the device.
        const DIRTY = 1 << 2;
        /// Writeback I/O in flight.
        const WRITEBACK = 1 << 3;
        /// The last read or writeback of this folio failed (K8:
        /// an explicit outcome, cleared by the next read attempt).
        const ERROR = 1 << 4;
        /// PG_readahead: reaching this folio triggers async readahead.
        const READAHEAD = 1 << 5;
    }
}

/// Pending I/O pieces of one read or one writeback: the submitter holds a
/// bias until it has issued every piece (as iomap's later
/// `read_bytes_pending` bias does), so completions racing with submission
/// cannot end the I/O early.
#[derive(Debug, Default)]
struct Pending {
    parts: usize,
    submitting: bool,
    error: Option<Errno>,
}

impl Pending {
    fn idle(&self) -> bool {
        self.parts == 0 && !self.submitting
    }
}

#[derive(Debug)]
struct State {
    flags: FolioFlags,
    blocks: Option<BlockState>,
    error: Option<Errno>,
    read: Option<Pending>,
    /// Set by [`ReadIo::wait_locked`]: the lock passes back to the waiter
    /// instead of being released when the read ends.
    read_keeps_lock: bool,
    writeback: Option<Pending>,
}

/// A folio. Reached through [`FolioRef`] (a counted reference that pins it
/// against eviction) or [`LockedFolio`].
pub struct Folio {
    id: u64,
    file: FileId,
    index: u64,
    order: FolioOrder,
    block: BlockSize,
    backing: Box<dyn FolioBacking>,
    state: Mutex<State>,
    changed: Condvar,
    referenced: AtomicBool,
    counters: Arc<Counters>,
    wb_err: Arc<ErrSeq>,
}

impl fmt::Debug for Folio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Folio")
            .field("file", &self.file)
            .field("index", &self.index)
            .field("order", &self.order.get())
            .field("flags", &self.flags())
            .finish_non_exhaustive()
    }
}

pub(crate) struct FolioParts {
    pub(crate) id: u64,
    pub(crate) file: FileId,
    pub(crate) index: u64,
    pub(crate) order: FolioOrder,
    pub(crate) block: BlockSize,
    pub(crate) backing: Box<dyn FolioBacking>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) wb_err: Arc<ErrSeq>,
}

impl Folio {
    /// A new folio, locked, not uptodate; the caller accounts its memory
    /// in `counters.used` before calling (the drop gives it back).
    pub(crate) fn new_locked(parts: FolioParts) -> LockedFolio {
        let folio = Folio {
            id: parts.id,
            file: parts.file,
            index: parts.index,
            order: parts.order,
            block: parts.block,
            backing: parts.backing,
            state: Mutex::new(State {
                flags: FolioFlags::LOCKED,
                blocks: None,
                error: None,
                read: None,
                read_keeps_lock: false,
                writeback: None,
            }),
            changed: Condvar::new(),
            referenced: AtomicBool::new(true),
            counters: parts.counters,
            wb_err: parts.wb_err,
        };
        LockedFolio {
            folio: Some(FolioRef(Arc::new(folio))),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    fn wait(&self, guard: &mut MutexGuard<'_, State>) {
        self.changed.wait(guard);
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The file this folio caches.
    pub fn file(&self) -> FileId {
        self.file
    }

    /// Page offset of the folio's first byte in the file (aligned to its
    /// order, as in the kernel).
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Page indices this folio covers.
    pub fn pages(&self) -> Range<u64> {
        self.index..self.index + self.order.pages()
    }

    /// File byte offset of the folio's first byte.
    pub fn pos(&self) -> u64 {
        self.index << PAGE_SHIFT
    }

    /// The folio order.
    pub fn order(&self) -> FolioOrder {
        self.order
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.order.size()
    }

    /// The file's block size.
    pub fn block_size(&self) -> BlockSize {
        self.block
    }

    /// Blocks in this folio.
    pub fn blocks(&self) -> usize {
        self.size() / self.block.bytes()
    }

    /// Device address of byte 0, for building PRPs.
    pub fn iova(&self) -> u64 {
        self.backing.iova()
    }

    /// A snapshot of the flags.
    pub fn flags(&self) -> FolioFlags {
        self.state().flags
    }

    /// Whether every block is uptodate.
    pub fn is_uptodate(&self) -> bool {
        self.flags().contains(FolioFlags::UPTODATE)
    }

    /// Whether the folio is dirty.
    pub fn is_dirty(&self) -> bool {
        self.flags().contains(FolioFlags::DIRTY)
    }

    /// Whether writeback is in flight.
    pub fn is_writeback(&self) -> bool {
        self.flags().contains(FolioFlags::WRITEBACK)
    }

    /// Whether the folio is locked.
    pub fn is_locked(&self) -> bool {
        self.flags().contains(FolioFlags::LOCKED)
    }

    /// The error of the last failed read or writeback, until the next
    /// read attempt clears it.
    pub fn error(&self) -> Option<Errno> {
        self.state().error
    }

    /// Whether the folio carries per-block state (R34: only when it holds
    /// more than one block, and only once something needed it).
    pub fn has_block_state(&self) -> bool {
        self.state().blocks.is_some()
    }

    /// Uptodate bits per block (all equal to the folio flag when there is
    /// no per-block state).
    pub fn uptodate_blocks(&self) -> BlockBitmap {
        let st = self.state();
        match &st.blocks {
            Some(b) => b.uptodate.clone(),
            None => BlockBitmap::new(self.blocks(), st.flags.contains(FolioFlags::UPTODATE)),
        }
    }

    /// Dirty bits per block (all equal to the folio flag when there is no
    /// per-block state).
    pub fn dirty_blocks(&self) -> BlockBitmap {
        let st = self.state();
        match &st.blocks {
            Some(b) => b.dirty.clone(),
            None => BlockBitmap::new(self.blocks(), st.flags.contains(FolioFlags::DIRTY)),
        }
    }

    /// R41 `is_partially_uptodate`: whether every block touching
    /// `[offset, offset+len)` is uptodate, so a buffered read of it needs
    /// no I/O even if the folio as a whole is not uptodate.
    pub fn is_range_uptodate(&self, offset: usize, len: usize) -> bool {
        let Ok(blocks) = self.touched_blocks(offset, len) else {
            return false;
        };
        let st = self.state();
        range_uptodate(&st, blocks)
    }

    /// Copies `out.len()` bytes from `offset` out of the folio: the
    /// zero-copy look at cached data (no lock needed; the bytes must be
    /// uptodate).
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        let blocks = self.touched_blocks(offset, out.len())?;
        let st = self.state();
        if !range_uptodate(&st, blocks) {
            return Err(Error::NotUptodate {
                offset,
                len: out.len(),
            });
        }
        drop(st);
        self.backing.read(offset, out)
    }

    /// Takes the lock if it is free.
    fn try_lock_bit(&self) -> bool {
        let mut st = self.state();
        if st.flags.contains(FolioFlags::LOCKED) {
            return false;
        }
        st.flags.insert(FolioFlags::LOCKED);
        true
    }

    fn lock_bit(&self) {
        let mut st = self.state();
        while st.flags.contains(FolioFlags::LOCKED) {
            self.wait(&mut st);
        }
        st.flags.insert(FolioFlags::LOCKED);
    }

    fn unlock_bit(&self) {
        let mut st = self.state();
        st.flags.remove(FolioFlags::LOCKED);
        drop(st);
        self.changed.notify_all();
    }

    /// Waits until none of `flags` is set, or `timeout` passes; returns
    /// whether they are clear. For waiters whose own device cannot end
    /// the I/O holding the folio (another thread's queue owns it).
    pub fn wait_clear(&self, flags: FolioFlags, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.state();
        while st.flags.intersects(flags) {
            if self.changed.wait_until(&mut st, deadline).timed_out() {
                return !st.flags.intersects(flags);
            }
        }
        true
    }

    /// Waits until no writeback is in flight (`folio_wait_writeback`).
    pub fn wait_writeback(&self) {
        let mut st = self.state();
        while st.flags.contains(FolioFlags::WRITEBACK) {
            self.wait(&mut st);
        }
    }

    /// Clears PG_readahead and says whether it was set
    /// (`folio_test_clear_readahead`, done by the reader that reaches the
    /// async trigger before it asks readahead for the next window).
    pub fn test_clear_readahead(&self) -> bool {
        let mut st = self.state();
        let was = st.flags.contains(FolioFlags::READAHEAD);
        st.flags.remove(FolioFlags::READAHEAD);
        was
    }

    /// Marks the folio recently used (for the eviction clock).
    pub(crate) fn touch(&self) {
        // Read first: a warm folio's bit is already set, and readers on
        // other CPUs then keep sharing its cache line instead of writing.
        if !self.referenced.load(Ordering::Relaxed) {
            self.referenced.store(true, Ordering::Relaxed);
        }
    }

    /// Clears the referenced bit and says whether it was set.
    pub(crate) fn take_referenced(&self) -> bool {
        self.referenced.swap(false, Ordering::Relaxed)
    }

    /// Whether the folio may be evicted (apart from pins, which the cache
    /// checks): clean, unlocked, not under writeback.
    pub(crate) fn is_reclaimable(&self) -> bool {
        !self
            .flags()
            .intersects(FolioFlags::LOCKED | FolioFlags::DIRTY | FolioFlags::WRITEBACK)
    }

    /// Block range touched by a byte range; errors if it leaves the folio.
    fn touched_blocks(&self, offset: usize, len: usize) -> Result<Range<usize>> {
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => {
                let bs = self.block.bytes();
                Ok(offset / bs..end.div_ceil(bs))
            }
            _ => Err(self.bad(offset, len, "outside the folio")),
        }
    }

    /// Block range of a block-aligned byte range.
    fn aligned_blocks(&self, offset: usize, len: usize) -> Result<Range<usize>> {
        let blocks = self.touched_blocks(offset, len)?;
        let bs = self.block.bytes();
        if !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
            return Err(self.bad(offset, len, "not block aligned"));
        }
        Ok(blocks)
    }

    fn bad(&self, offset: usize, len: usize, why: &'static str) -> Error {
        Error::BadRange {
            offset,
            len,
            size: self.size(),
            why,
        }
    }

    /// Sets DIRTY, accounting the folio's bytes once.
    fn set_dirty_flag(&self, st: &mut State) -> bool {
        if st.flags.contains(FolioFlags::DIRTY) {
            return false;
        }
        st.flags.insert(FolioFlags::DIRTY);
        self.counters.add_dirty(self.size() as u64);
        true
    }

    /// Clears DIRTY and the dirty bits, unaccounting the folio's bytes.
    fn clear_dirty_flag(&self, st: &mut State) -> bool {
        if let Some(b) = st.blocks.as_mut() {
            b.dirty.clear_range(0..b.dirty.len());
        }
        if !st.flags.contains(FolioFlags::DIRTY) {
            return false;
        }
        st.flags.remove(FolioFlags::DIRTY);
        self.counters.sub_dirty(self.size() as u64);
        true
    }

    /// The per-block state, created on first need (R34).
    fn block_state<'s>(&self, st: &'s mut State) -> Option<&'s mut BlockState> {
        let n = self.blocks();
        if n <= 1 {
            return None;
        }
        let up = st.flags.contains(FolioFlags::UPTODATE);
        let dirty = st.flags.contains(FolioFlags::DIRTY);
        Some(
            st.blocks
                .get_or_insert_with(|| BlockState::new(n, up, dirty)),
        )
    }

    /// Marks `blocks` uptodate; the folio flag follows the bitmap (R34,
    /// R39 `iomap_set_range_uptodate`).
    fn mark_uptodate(&self, st: &mut State, blocks: Range<usize>) {
        let all = blocks.start == 0 && blocks.end == self.blocks();
        let full = match self.block_state(st) {
            Some(b) => {
                b.uptodate.set_range(blocks);
                b.uptodate.is_full()
            }
            None => all,
        };
        if full {
            st.flags.insert(FolioFlags::UPTODATE);
        }
    }

    /// Marks `blocks` dirty (and the folio).
    fn mark_dirty(&self, st: &mut State, blocks: Range<usize>) -> bool {
        if let Some(b) = self.block_state(st) {
            b.dirty.set_range(blocks);
        }
        self.set_dirty_flag(st)
    }
}

impl Drop for Folio {
    fn drop(&mut self) {
        let st = self.state.get_mut();
        if st.flags.contains(FolioFlags::DIRTY) {
            log::warn!(
                "dirty folio {:?}/{} dropped: its data is lost",
                self.file,
                self.index
            );
            self.counters.sub_dirty(self.size() as u64);
        }
        self.counters
            .used
            .fetch_sub(self.size() as u64, Ordering::AcqRel);
    }
}

fn range_uptodate(st: &State, blocks: Range<usize>) -> bool {
    if st.flags.contains(FolioFlags::UPTODATE) {
        return true;
    }
    match &st.blocks {
        Some(b) => b.uptodate.all_in(blocks),
        None => false,
    }
}

/// A counted reference to a cached folio. While any `FolioRef` (or a lock
/// or I/O handle, which hold one) exists, the folio is pinned: eviction
/// skips it.
#[derive(Debug, Clone)]
pub struct FolioRef(Arc<Folio>);

impl Deref for FolioRef {
    type Target = Folio;
    fn deref(&self) -> &Folio {
        &self.0
    }
}

impl FolioRef {
    /// Takes the folio lock if it is free (`folio_trylock`).
    pub fn try_lock(&self) -> Option<LockedFolio> {
        self.0.try_lock_bit().then(|| LockedFolio {
            folio: Some(self.clone()),
        })
    }

    /// Takes the folio lock, waiting for the holder (or read I/O in
    /// flight) to release it (`folio_lock`).
    pub fn lock(&self) -> LockedFolio {
        self.0.lock_bit();
        LockedFolio {
            folio: Some(self.clone()),
        }
    }

    /// The index's `Arc` (the lock-free index keeps its pointer).
    pub(crate) fn arc(&self) -> &Arc<Folio> {
        &self.0
    }

    /// A reference from an `Arc` the lock-free index made.
    pub(crate) fn from_arc(folio: Arc<Folio>) -> FolioRef {
        FolioRef(folio)
    }

    /// Whether `self` and `other` are the same folio.
    pub fn same(&self, other: &FolioRef) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Number of references (the cache's own one included).
    pub(crate) fn refs(&self) -> usize {
        Arc::strong_count(&self.0)
    }

    /// The memory of an evicted folio nobody else references, for a new
    /// folio of the same order (its bytes are stale: see
    /// [`crate::PageCache::grab_within_budget`]). The folio's accounting
    /// ends as if it had been dropped. `Err(self)` if it is still
    /// referenced elsewhere.
    pub(crate) fn into_backing(self) -> std::result::Result<Box<dyn FolioBacking>, FolioRef> {
        let mut folio = Arc::try_unwrap(self.0).map_err(FolioRef)?;
        Ok(std::mem::replace(&mut folio.backing, Box::new(Recycled)))
    }
}

/// What an evicted folio holds once its memory went to a new folio.
#[derive(Debug)]
struct Recycled;

impl FolioBacking for Recycled {
    fn len(&self) -> usize {
        0
    }

    fn iova(&self) -> u64 {
        0
    }

    fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        Err(Error::Memory(
            format!(
                "read of {} bytes at {offset} from recycled folio memory",
                out.len()
            )
            .into(),
        ))
    }

    fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        Err(Error::Memory(
            format!(
                "write of {} bytes at {offset} to recycled folio memory",
                data.len()
            )
            .into(),
        ))
    }

    fn fill(&self, offset: usize, len: usize, _byte: u8) -> Result<()> {
        Err(Error::Memory(
            format!("fill of {len} bytes at {offset} of recycled folio memory").into(),
        ))
    }
}

//! Folios: 4 KiB..2 MiB of file data in DMA-capable memory, their flags,
//! their per-block state and the transitions I/O takes them through.
//!
//! The lock bit is an owned token, [`LockedFolio`]: whoever holds it may
//! change the folio's contents and start I/O. Starting I/O consumes the
//! token, so a folio cannot be read into twice or written back twice at
//! once, and the I/O handles ([`ReadIo`], [`WritebackIo`]) end the I/O
//! exactly once, also when they are dropped on an error path.

use parking_lot::{Condvar, Mutex, MutexGuard};
use std::fmt;
use std::ops::{Deref, Range};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bitflags::bitflags;

use crate::FileId;
use crate::dirty::Counters;
use crate::error::{Errno, Error, Result};
use crate::errseq::ErrSeq;
use crate::folio_state::{BlockBitmap, BlockState};
use crate::memory::FolioBacking;

/// Bytes in a page: the unit of folio indices.
pub const PAGE_SIZE: usize = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
/// Largest folio order: 2^9 pages = 2 MiB.
pub const MAX_ORDER: u8 = 9;

/// A folio order: the folio holds 2^order pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FolioOrder(u8);

impl FolioOrder {
    /// A single page.
    pub const ZERO: FolioOrder = FolioOrder(0);

    /// Order `order`, which must be at most [`MAX_ORDER`].
    pub fn new(order: u8) -> Result<Self> {
        if order > MAX_ORDER {
            return Err(Error::BadOrder(order));
        }
        Ok(FolioOrder(order))
    }

    /// The order as a number.
    pub fn get(self) -> u8 {
        self.0
    }

    /// Pages in a folio of this order.
    pub fn pages(self) -> u64 {
        1 << self.0
    }

    /// Bytes in a folio of this order.
    pub fn size(self) -> usize {
        PAGE_SIZE << self.0
    }
}

/// A file system block size: a power of two in 512..=4096 (`bs` in
/// docs/MPAGE.md; R1 forbids blocks smaller than the LBA size, which the
/// I/O layer checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockSize(u32);

impl BlockSize {
    /// Block size equal to the page size.
    pub const PAGE: BlockSize = BlockSize(PAGE_SIZE as u32);

    /// `bytes`, which must be a power of two in 512..=4096.
    pub fn new(bytes: usize) -> Result<Self> {
        if !bytes.is_power_of_two() || !(512..=PAGE_SIZE).contains(&bytes) {
            return Err(Error::BadBlockSize(bytes));
        }
        Ok(BlockSize(bytes as u32))
    }

    /// The size in bytes.
    pub fn bytes(self) -> usize {
        self.0 as usize
    }
}

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
            .field("order", &self.order.0)
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

/// The folio lock, held. Dropping it unlocks the folio.
#[derive(Debug)]
pub struct LockedFolio {
    /// `None` only after a consuming transition moved the lock elsewhere.
    folio: Option<FolioRef>,
}

impl Deref for LockedFolio {
    type Target = Folio;
    fn deref(&self) -> &Folio {
        self.folio_ref()
    }
}

impl Drop for LockedFolio {
    fn drop(&mut self) {
        if let Some(f) = self.folio.take() {
            f.unlock_bit();
        }
    }
}

impl LockedFolio {
    fn folio_ref(&self) -> &FolioRef {
        // Consuming transitions take the folio out and forget `self` in
        // the same move, so a live `LockedFolio` always holds one.
        match &self.folio {
            Some(f) => f,
            None => unreachable!("LockedFolio without a folio"),
        }
    }

    /// Gives up the lock without unlocking: the caller owns it from now on.
    fn into_ref(mut self) -> FolioRef {
        match self.folio.take() {
            Some(f) => f,
            None => unreachable!("LockedFolio without a folio"),
        }
    }

    /// A reference that outlives the lock.
    pub fn folio(&self) -> FolioRef {
        self.folio_ref().clone()
    }

    /// Buffered write: copies `data` in at `offset` and marks every
    /// touched block uptodate and dirty, and the folio dirty (R45
    /// write_end). A block the write covers only partly must already be
    /// uptodate (read or zeroed first, R42), else nothing is written.
    /// Returns whether the folio went from clean to dirty.
    ///
    /// Writing into a folio under writeback is allowed (no stable pages,
    /// X3/X6): it re-dirties the folio.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<bool> {
        let f = self.folio_ref();
        let blocks = f.touched_blocks(offset, data.len())?;
        if data.is_empty() {
            return Ok(false);
        }
        let bs = f.block.bytes();
        let end = offset + data.len();
        {
            let st = f.state();
            let first_partial = !offset.is_multiple_of(bs);
            let last_partial = !end.is_multiple_of(bs);
            let edge_ok = |b: usize| range_uptodate(&st, b..b + 1);
            if (first_partial && !edge_ok(blocks.start))
                || (last_partial && !edge_ok(blocks.end - 1))
            {
                return Err(Error::NotUptodate {
                    offset,
                    len: data.len(),
                });
            }
        }
        f.backing.write(offset, data)?;
        let mut st = f.state();
        f.mark_uptodate(&mut st, blocks.clone());
        Ok(f.mark_dirty(&mut st, blocks))
    }

    /// Copies out uptodate bytes (same as [`Folio::read`]).
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        self.folio_ref().read(offset, out)
    }

    /// Zero-fills whole blocks and marks them uptodate, without I/O and
    /// without dirtying: holes, unwritten extents and ranges past EOF on
    /// the read side (R13, R36), and the edges of a partial write over a
    /// range that needs zeroing (R42).
    pub fn zero_blocks(&self, offset: usize, len: usize) -> Result<()> {
        let f = self.folio_ref();
        let blocks = f.aligned_blocks(offset, len)?;
        f.backing.fill(offset, len, 0)?;
        let mut st = f.state();
        f.mark_uptodate(&mut st, blocks);
        Ok(())
    }

    /// Zeroes bytes `[offset, size)` in the cached folio without changing
    /// any state: the EOF-straddling folio's tail on every writeback pass
    /// (R27, R52), so the cache and the device both hold zeros past EOF.
    pub fn zero_tail(&self, offset: usize) -> Result<()> {
        let f = self.folio_ref();
        let size = f.size();
        if offset > size {
            return Err(f.bad(offset, 0, "outside the folio"));
        }
        f.backing.fill(offset, size - offset, 0)
    }

    /// Zeroes bytes `[offset, offset+len)` in the cached folio without
    /// changing any state: the partial folio of a page cache truncation
    /// (`truncate_inode_partial_folio`; R47, T21), whose bytes lie past
    /// EOF.
    pub fn zero_bytes(&self, offset: usize, len: usize) -> Result<()> {
        let f = self.folio_ref();
        f.touched_blocks(offset, len)?;
        f.backing.fill(offset, len, 0)
    }

    /// Sets PG_readahead: the async readahead trigger (see
    /// [`crate::readahead`]).
    pub fn set_readahead_marker(&self) {
        self.folio_ref().state().flags.insert(FolioFlags::READAHEAD);
    }

    /// Starts read I/O into the folio's non-uptodate blocks. The folio
    /// stays locked until every part has completed and the returned handle
    /// is dropped (R22, R39); then it is uptodate if all its blocks are and
    /// no part failed, else it carries ERROR. A previous error is cleared
    /// (X4: a demand read retries a failed readahead; R42 clears it too).
    pub fn start_read(self) -> ReadIo {
        let f = self.into_ref();
        {
            let mut st = f.state();
            st.flags.remove(FolioFlags::ERROR);
            st.error = None;
            st.read = Some(Pending {
                submitting: true,
                ..Pending::default()
            });
            st.read_keeps_lock = false;
        }
        ReadIo { folio: Some(f) }
    }

    /// Starts writeback (the kernel's `folio_clear_dirty_for_io` +
    /// `folio_start_writeback` + unlock, R23, R28):
    /// * fails if writeback is already in flight (X3: never resubmitted
    ///   while in flight; wait with [`Folio::wait_writeback`]);
    /// * fails if the folio is neither uptodate nor has per-block state
    ///   (R23: a folio without per-block state must be uptodate);
    /// * snapshots the dirty blocks, clears DIRTY and the dirty bits, sets
    ///   WRITEBACK and unlocks the folio. Writes from now on re-dirty it.
    ///
    /// A clean folio may be started too: with no parts, writeback ends as
    /// soon as the handle is dropped (R56). On error the lock is released.
    pub fn start_writeback(self) -> Result<WritebackIo> {
        let dirty;
        {
            let f = self.folio_ref();
            let mut st = f.state();
            if st.flags.contains(FolioFlags::WRITEBACK) {
                return Err(Error::UnderWriteback);
            }
            if !st.flags.contains(FolioFlags::UPTODATE) && st.blocks.is_none() {
                return Err(Error::NotUptodate {
                    offset: 0,
                    len: f.size(),
                });
            }
            dirty = match &st.blocks {
                Some(b) => b.dirty.clone(),
                None => BlockBitmap::new(f.blocks(), st.flags.contains(FolioFlags::DIRTY)),
            };
            f.clear_dirty_flag(&mut st);
            st.flags.insert(FolioFlags::WRITEBACK);
            st.writeback = Some(Pending {
                submitting: true,
                ..Pending::default()
            });
            f.counters.add_writeback(f.size() as u64);
        }
        // Dropping the lock token unlocks the folio.
        let folio = self.folio();
        drop(self);
        Ok(WritebackIo {
            folio: Some(folio),
            dirty,
        })
    }

    /// R60 step 2 with K18: the folio's dirty data cannot be
    /// written (the block mapping failed before any block of it was
    /// queued). The folio ends clean, **not uptodate** (both bitmaps
    /// cleared, so the next read goes to the device), not under writeback,
    /// unlocked, with ERROR, and the file's writeback error records `err`
    /// (R60 step 5). It is not re-dirtied (R61).
    pub fn discard(self, err: Errno) {
        let f = self.folio_ref();
        {
            let mut st = f.state();
            f.clear_dirty_flag(&mut st);
            st.flags.remove(FolioFlags::UPTODATE);
            if let Some(b) = st.blocks.as_mut() {
                b.uptodate.clear_range(0..b.uptodate.len());
            }
            st.flags.insert(FolioFlags::ERROR);
            st.error = Some(err);
        }
        f.wb_err.set(err);
        log::warn!("dirty folio {:?}/{} discarded after {err}", f.file, f.index);
    }

    /// Sets the dirty bits of an uptodate range without copying data
    /// (a caller that changed the bytes through other means, e.g. zeroing
    /// for truncate_page, R49). Returns whether the folio became dirty.
    pub fn mark_range_dirty(&self, offset: usize, len: usize) -> Result<bool> {
        let f = self.folio_ref();
        let blocks = f.touched_blocks(offset, len)?;
        let mut st = f.state();
        if !range_uptodate(&st, blocks.clone()) {
            return Err(Error::NotUptodate { offset, len });
        }
        if blocks.is_empty() {
            return Ok(false);
        }
        Ok(f.mark_dirty(&mut st, blocks))
    }

    /// Zeroes `[offset, offset+len)` of an uptodate range and dirties it
    /// (iomap_zero / truncate_page, R49).
    pub fn zero_range_dirty(&self, offset: usize, len: usize) -> Result<bool> {
        let f = self.folio_ref();
        let blocks = f.touched_blocks(offset, len)?;
        if !f.is_range_uptodate(offset, len) {
            return Err(Error::NotUptodate { offset, len });
        }
        f.backing.fill(offset, len, 0)?;
        let mut st = f.state();
        Ok(f.mark_dirty(&mut st, blocks))
    }

    /// Drops all cached state of a clean folio so the next read goes to
    /// the device (the whole-folio invalidate of R34, used by truncate).
    /// Fails while writeback is in flight.
    pub(crate) fn invalidate(&self) -> Result<()> {
        let f = self.folio_ref();
        let mut st = f.state();
        if st.flags.contains(FolioFlags::WRITEBACK) {
            return Err(Error::UnderWriteback);
        }
        f.clear_dirty_flag(&mut st);
        st.flags
            .remove(FolioFlags::UPTODATE | FolioFlags::READAHEAD);
        st.blocks = None;
        Ok(())
    }
}

/// Read I/O in flight into a locked folio. Hand out [`ReadPart`]s to the
/// commands that fill it; drop the handle (or call [`ReadIo::submit`])
/// once every part is issued. The folio is unlocked when both have
/// happened and all parts have completed.
#[derive(Debug)]
pub struct ReadIo {
    folio: Option<FolioRef>,
}

impl ReadIo {
    fn folio_ref(&self) -> &FolioRef {
        match &self.folio {
            Some(f) => f,
            None => unreachable!("ReadIo without a folio"),
        }
    }

    /// The folio being read.
    pub fn folio(&self) -> &FolioRef {
        self.folio_ref()
    }

    /// A piece of the read: the block-aligned range `[offset,
    /// offset+len)`, none of whose blocks may be uptodate (R35: only
    /// non-uptodate blocks are read, so a read never overwrites valid or
    /// dirty data).
    pub fn part(&self, offset: usize, len: usize) -> Result<ReadPart> {
        let f = self.folio_ref();
        let blocks = f.aligned_blocks(offset, len)?;
        if len == 0 {
            return Err(f.bad(offset, len, "empty read part"));
        }
        let mut st = f.state();
        let overlaps = match &st.blocks {
            Some(b) => b.uptodate.any_in(blocks),
            None => st.flags.contains(FolioFlags::UPTODATE),
        };
        if overlaps {
            return Err(f.bad(offset, len, "covers uptodate blocks"));
        }
        if let Some(p) = st.read.as_mut() {
            p.parts += 1;
        }
        Ok(ReadPart {
            folio: Some(f.clone()),
            offset,
            len,
        })
    }

    /// Zero-fills whole blocks and marks them uptodate with no I/O (holes,
    /// R13, R36).
    pub fn zero(&self, offset: usize, len: usize) -> Result<()> {
        let f = self.folio_ref();
        let blocks = f.aligned_blocks(offset, len)?;
        f.backing.fill(offset, len, 0)?;
        let mut st = f.state();
        f.mark_uptodate(&mut st, blocks);
        Ok(())
    }

    /// Marks the submission finished (same as dropping the handle).
    pub fn submit(self) {}

    /// Finishes submission, waits for every part, and keeps the folio
    /// locked: the synchronous read of write_begin (R42), which must hold
    /// the lock throughout. Returns the lock and the read's outcome.
    pub fn wait_locked(mut self) -> (LockedFolio, Result<(), Errno>) {
        let f = match self.folio.take() {
            Some(f) => f,
            None => unreachable!("ReadIo without a folio"),
        };
        let mut st = f.state();
        st.read_keeps_lock = true;
        if let Some(p) = st.read.as_mut() {
            p.submitting = false;
        }
        finish_read_if_idle(&f, &mut st);
        while st.read.is_some() {
            f.wait(&mut st);
        }
        st.read_keeps_lock = false;
        let outcome = match st.error {
            Some(e) => Err(e),
            None => Ok(()),
        };
        drop(st);
        (LockedFolio { folio: Some(f) }, outcome)
    }
}

impl Drop for ReadIo {
    fn drop(&mut self) {
        if let Some(f) = self.folio.take() {
            let mut st = f.state();
            if let Some(p) = st.read.as_mut() {
                p.submitting = false;
            }
            finish_read_if_idle(&f, &mut st);
        }
    }
}

/// Ends the read once nothing is pending (R22, R39).
fn finish_read_if_idle(f: &Folio, st: &mut State) {
    if !st.read.as_ref().is_some_and(Pending::idle) {
        return;
    }
    let Some(p) = st.read.take() else { return };
    match p.error {
        Some(e) => {
            st.flags.insert(FolioFlags::ERROR);
            st.error = Some(e);
            st.flags.remove(FolioFlags::UPTODATE);
        }
        None => {
            if st.blocks.as_ref().is_some_and(|b| b.uptodate.is_full()) {
                st.flags.insert(FolioFlags::UPTODATE);
            }
        }
    }
    if !st.read_keeps_lock {
        st.flags.remove(FolioFlags::LOCKED);
    }
    f.changed.notify_all();
}

/// One command's share of a read: the device writes bytes `[offset,
/// offset+len)` of the folio at [`ReadPart::iova`]. Complete it exactly
/// once; dropping it uncompleted counts as a failure (EIO), so a lost
/// command never leaves the folio locked.
#[derive(Debug)]
pub struct ReadPart {
    folio: Option<FolioRef>,
    offset: usize,
    len: usize,
}

impl ReadPart {
    /// Byte range inside the folio.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len
    }

    /// Device address of the part's first byte.
    pub fn iova(&self) -> u64 {
        self.folio.as_ref().map_or(0, |f| f.iova()) + self.offset as u64
    }

    /// The folio.
    pub fn folio(&self) -> Option<&FolioRef> {
        self.folio.as_ref()
    }

    /// CPU copy into the part (software devices, inline data R37): `data`
    /// must be exactly the part's length.
    pub fn fill_from(&self, data: &[u8]) -> Result<()> {
        let Some(f) = &self.folio else {
            return Ok(());
        };
        if data.len() != self.len {
            return Err(f.bad(self.offset, data.len(), "length differs from the part"));
        }
        f.backing.write(self.offset, data)
    }

    /// Completes the part: on success its blocks become uptodate (the
    /// folio too, once every block is, R39); on failure the read fails
    /// (R22: the folio ends not uptodate with ERROR).
    pub fn complete(mut self, result: Result<(), Errno>) {
        self.finish(result);
    }

    fn finish(&mut self, result: Result<(), Errno>) {
        let Some(f) = self.folio.take() else { return };
        let bs = f.block.bytes();
        let mut st = f.state();
        match result {
            Ok(()) => f.mark_uptodate(&mut st, self.offset / bs..(self.offset + self.len) / bs),
            Err(e) => {
                log::debug!("read of {:?}/{} failed: {e}", f.file, f.index);
                if let Some(p) = st.read.as_mut() {
                    p.error.get_or_insert(e);
                }
            }
        }
        // The folio flag is decided when the whole read ends: a failed
        // part of this read keeps the folio not uptodate.
        if st.read.as_ref().is_some_and(|p| p.error.is_some()) {
            st.flags.remove(FolioFlags::UPTODATE);
        }
        if let Some(p) = st.read.as_mut() {
            p.parts -= 1;
        }
        finish_read_if_idle(&f, &mut st);
    }
}

impl Drop for ReadPart {
    fn drop(&mut self) {
        self.finish(Err(Errno::Io));
    }
}

/// Writeback in flight from an unlocked folio. Hand out
/// [`WritebackPart`]s to the commands that write it; drop the handle once
/// all are issued. Writeback ends when both have happened and all parts
/// completed.
#[derive(Debug)]
pub struct WritebackIo {
    folio: Option<FolioRef>,
    dirty: BlockBitmap,
}

impl WritebackIo {
    fn folio_ref(&self) -> &FolioRef {
        match &self.folio {
            Some(f) => f,
            None => unreachable!("WritebackIo without a folio"),
        }
    }

    /// The folio under writeback.
    pub fn folio(&self) -> &FolioRef {
        self.folio_ref()
    }

    /// The blocks that were dirty when writeback started, as byte ranges
    /// of maximal runs, ascending: what needs writing (the per-block dirty
    /// bitmap of iomap ≥ 6.6, so only dirty blocks are written).
    pub fn dirty_ranges(&self) -> Vec<Range<usize>> {
        let bs = self.folio_ref().block.bytes();
        self.dirty
            .runs()
            .into_iter()
            .map(|r| r.start * bs..r.end * bs)
            .collect()
    }

    /// The dirty bitmap snapshot taken when writeback started.
    pub fn dirty_blocks(&self) -> &BlockBitmap {
        &self.dirty
    }

    /// A piece of the writeback: the block-aligned range `[offset,
    /// offset+len)`, which must be uptodate (R53 skips non-uptodate
    /// blocks; writing them would put stale memory on the device).
    pub fn part(&self, offset: usize, len: usize) -> Result<WritebackPart> {
        let f = self.folio_ref();
        let blocks = f.aligned_blocks(offset, len)?;
        if len == 0 {
            return Err(f.bad(offset, len, "empty writeback part"));
        }
        let mut st = f.state();
        if !range_uptodate(&st, blocks) {
            return Err(Error::NotUptodate { offset, len });
        }
        if let Some(p) = st.writeback.as_mut() {
            p.parts += 1;
        }
        Ok(WritebackPart {
            folio: Some(f.clone()),
            offset,
            len,
        })
    }

    /// Marks the submission finished (same as dropping the handle).
    pub fn submit(self) {}
}

impl Drop for WritebackIo {
    fn drop(&mut self) {
        if let Some(f) = self.folio.take() {
            let mut st = f.state();
            if let Some(p) = st.writeback.as_mut() {
                p.submitting = false;
            }
            finish_writeback_if_idle(&f, &mut st);
        }
    }
}

/// Ends writeback once nothing is pending (R31, R56, R58, R61).
fn finish_writeback_if_idle(f: &Folio, st: &mut State) {
    if !st.writeback.as_ref().is_some_and(Pending::idle) {
        return;
    }
    let Some(p) = st.writeback.take() else { return };
    if let Some(e) = p.error {
        // R31/R58: error mark and mapping error; R61: never re-dirtied,
        // the data stays uptodate in the cache.
        st.flags.insert(FolioFlags::ERROR);
        st.error = Some(e);
        f.wb_err.set(e);
        log::warn!("writeback error {e} on {:?} page {}", f.file, f.index);
    }
    st.flags.remove(FolioFlags::WRITEBACK);
    f.counters.sub_writeback(f.size() as u64);
    f.changed.notify_all();
}

/// One command's share of a writeback: the device reads bytes `[offset,
/// offset+len)` at [`WritebackPart::iova`]. Complete it exactly once;
/// dropping it uncompleted counts as EIO.
#[derive(Debug)]
pub struct WritebackPart {
    folio: Option<FolioRef>,
    offset: usize,
    len: usize,
}

impl WritebackPart {
    /// Byte range inside the folio.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len
    }

    /// Device address of the part's first byte.
    pub fn iova(&self) -> u64 {
        self.folio.as_ref().map_or(0, |f| f.iova()) + self.offset as u64
    }

    /// The folio.
    pub fn folio(&self) -> Option<&FolioRef> {
        self.folio.as_ref()
    }

    /// CPU copy of the part's bytes (software devices): `out` must be
    /// exactly the part's length.
    pub fn copy_out(&self, out: &mut [u8]) -> Result<()> {
        let Some(f) = &self.folio else {
            return Ok(());
        };
        if out.len() != self.len {
            return Err(f.bad(self.offset, out.len(), "length differs from the part"));
        }
        f.backing.read(self.offset, out)
    }

    /// Completes the part; an error is kept for the end of writeback
    /// (also for a part failed without I/O, R57, R60 step 3).
    pub fn complete(mut self, result: Result<(), Errno>) {
        self.finish(result);
    }

    fn finish(&mut self, result: Result<(), Errno>) {
        let Some(f) = self.folio.take() else { return };
        let mut st = f.state();
        if let Some(p) = st.writeback.as_mut() {
            if let Err(e) = result {
                p.error.get_or_insert(e);
            }
            p.parts -= 1;
        }
        finish_writeback_if_idle(&f, &mut st);
    }
}

impl Drop for WritebackPart {
    fn drop(&mut self) {
        self.finish(Err(Errno::Io));
    }
}

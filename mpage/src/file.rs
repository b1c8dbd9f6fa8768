//! [`File`]: the file API for applications: `read_at`, `write_at`,
//! `set_len`, `fsync` and a zero-copy look at cached folios
//! ([`File::folio`]), over one [`Inode`] and the engines of this crate.
//!
//! # Threads and devices
//!
//! A `File` is `Send + Sync`: share it (`Arc<File>`) or open more
//! descriptions of the same inode ([`File::reopen`]). Every operation
//! takes the calling thread's device (`dev: &mut dyn BlockDevice`): on
//! NVMe one queue pair belongs to one thread (`nvme::NvmeDevice`, feature `nvme`,
//! per thread), with the [`crate::RecordingDevice`] one
//! [`crate::RecordingDevice::new_queue`] per thread. A thread that waits
//! for a folio whose I/O another thread's queue carries sleeps on the
//! folio ([`crate::io::wait_folio`]); every operation reaps its own
//! queue before it returns, and waits for the reads and writebacks it
//! needs. Only readahead runs ahead without waiting: its commands
//! complete when the issuing thread next uses its device.
//!
//! # Semantics
//!
//! * `read_at` (filemap_read): short at EOF, 0 at or past it. A missing
//!   page asks the file's readahead window ([`pagecache::RaState`]): a
//!   sequential reader gets growing windows with the PG_readahead mark
//!   triggering the next one asynchronously; a random read reads only
//!   the pages it asked for. Nothing past EOF is read. Partially uptodate
//!   folios serve the blocks they hold (R41); a folio whose readahead
//!   failed is read again on demand and only that result counts (X4).
//! * Readahead windows are read into large folios (`page_cache_ra_order`:
//!   a synchronous window uses order 0, each asynchronous one two orders
//!   more than the marked folio's, up to [`RA_MAX_ORDER`]), so a window
//!   costs a few allocations and lookups, and its commands are as large
//!   as the device allows. Unless [`File::set_readahead`] chose one, the window's
//!   maximum follows the device ([`pagecache::readahead::device_max_pages`]
//!   of its largest command: 8 MiB for MDTS 512 KiB). A reader waits only
//!   for the blocks it copies, not for the whole folio or window.
//! * `write_at` (generic_perform_write): per folio write_begin /
//!   write_end (R42–R47), after zeroing the gap between the old EOF and
//!   the write (as filesystems do before an extending write). Writers of
//!   one inode are serialized (the kernel's i_rwsem); readers are not.
//!   Before each folio the writer checks the dirty limits: above the
//!   background limit it wakes the [`Flusher`], above the hard limit it
//!   writes back its own file and waits until dirty + writeback memory is
//!   back under the limit (throttling; fails with [`Error::Timeout`] if
//!   that never happens). A full cache ([`pagecache::Error::CacheFull`])
//!   is handled the same way: write back, let the clock evict, retry.
//! * `set_len`: growing zeroes `[old, new)` (R49 zero_range; holes and
//!   unwritten extents cost nothing); shrinking zeroes the tail of the new
//!   EOF block (truncate_page, R49), sets the size, zeroes the cached
//!   folio's part past EOF and drops cached folios wholly past it, dirty
//!   or not (waiting for their writeback).
//! * `fsync`: [`crate::fsync`] (X2): writeback, wait, NVMe Flush, and the
//!   newest writeback error since this description last looked, once per
//!   description (X1). Every `File` value is one description: its errseq
//!   sample is taken at open/reopen.
//!
//! Rule ids (R.., X.., K.., T..): docs/MPAGE.md.

use parking_lot::{Mutex, MutexGuard};
use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pagecache::{
    BlockSize, DirtyPressure, FolioFlags, FolioOrder, FolioRef, Grab, PAGE_SHIFT, PAGE_SIZE,
    PageCache, RaState,
};

use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::flusher::Flusher;
use crate::inode::Inode;
use crate::io;
use crate::map::BlockMapper;
use crate::read::{read_folio, readahead_folios};
use crate::sync::{self, OpenFile};
use crate::write;
use crate::writeback::{SyncMode, writepages};

const PAGE: u64 = PAGE_SIZE as u64;

/// Largest folio order readahead allocates: 2 MiB, pagecache's maximum.
pub const RA_MAX_ORDER: u8 = pagecache::MAX_ORDER;

/// A description's readahead window and whether its maximum is still the
/// device-derived default.
#[derive(Debug)]
struct Ra {
    state: RaState,
    /// The maximum follows the device (set on the first read).
    auto: bool,
}

/// The inode's part shared by every description of it.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) ino: Inode,
    /// Serializes writers and truncation (i_rwsem).
    write_lock: Mutex<()>,
    pub(crate) flusher: OnceLock<Arc<Flusher>>,
}

/// An open file: one description of an inode. See the module
/// documentation.
#[derive(Debug)]
pub struct File {
    shared: Arc<Shared>,
    ra: Mutex<Ra>,
    handle: Mutex<OpenFile>,
}

/// A pinned, uptodate folio of a file: the zero-copy look at cached data
/// ([`File::folio`]). Reading copies straight from the folio's memory
/// (the DMA buffer the device filled) into the caller's buffer. While the
/// view lives the folio cannot be evicted; drop it soon.
#[derive(Debug, Clone)]
pub struct FolioView {
    folio: FolioRef,
    len: usize,
}

impl FolioView {
    /// File offset of the folio's first byte.
    pub fn pos(&self) -> u64 {
        self.folio.pos()
    }

    /// Bytes of file data in the folio (less than its size for the folio
    /// holding EOF).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view holds no file data (never, for a returned view).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `out.len()` bytes from `offset` (relative to the folio,
    /// within [`FolioView::len`]) into `out`.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        if offset.checked_add(out.len()).is_none_or(|e| e > self.len) {
            return Err(Error::Invalid("folio view read past the file data"));
        }
        // A view from `File::read_folios` is uptodate over the range that
        // was asked, not necessarily over the whole folio.
        if !self.folio.is_range_uptodate(offset, out.len()) {
            return Err(Error::Invalid(
                "folio view read of bytes that are not uptodate",
            ));
        }
        self.folio
            .read(offset, out)
            .map_err(Error::cache("reading a folio view"))
    }

    /// The folio itself (flags, iova for DMA from it).
    pub fn folio(&self) -> &FolioRef {
        &self.folio
    }
}

impl File {
    /// Opens a new file of `size` bytes in `cache`, with `block`-byte
    /// blocks, whose data `mapper` places on the device.
    pub fn open(
        cache: Arc<PageCache>,
        mapper: Arc<dyn BlockMapper>,
        block: BlockSize,
        size: u64,
    ) -> Result<File> {
        let id = cache.add_file(block);
        Self::from_inode(Inode::new(cache, id, mapper, size))
    }

    /// Opens a description of an existing inode.
    pub fn from_inode(ino: Inode) -> Result<File> {
        let handle = OpenFile::open(&ino)?;
        Ok(File {
            shared: Arc::new(Shared {
                ino,
                write_lock: Mutex::new(()),
                flusher: OnceLock::new(),
            }),
            ra: Mutex::new(Ra {
                state: RaState::new(pagecache::readahead::DEFAULT_MAX_PAGES),
                auto: true,
            }),
            handle: Mutex::new(handle),
        })
    }

    /// Another open description of the same inode: its own readahead
    /// window and its own errseq sample (taken now, X1).
    pub fn reopen(&self) -> Result<File> {
        Ok(File {
            shared: self.shared.clone(),
            ra: Mutex::new({
                let ra = self.ra.lock();
                Ra {
                    state: RaState::new(ra.state.max_pages()),
                    auto: ra.auto,
                }
            }),
            handle: Mutex::new(OpenFile::open(&self.shared.ino)?),
        })
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The inode (cache, file id, mapper, size).
    pub fn inode(&self) -> &Inode {
        &self.shared.ino
    }

    /// The file size.
    pub fn size(&self) -> u64 {
        self.shared.ino.size()
    }

    /// Sets this description's readahead maximum in pages (0 disables
    /// readahead); resets the window. Without it the maximum follows the
    /// device ([`pagecache::readahead::device_max_pages`]).
    pub fn set_readahead(&self, max_pages: u64) {
        *self.ra.lock() = Ra {
            state: RaState::new(max_pages),
            auto: false,
        };
    }

    /// The readahead maximum in pages (the device-derived one once a read
    /// has seen the device).
    pub fn readahead_max(&self) -> u64 {
        self.ra.lock().state.max_pages()
    }

    /// The readahead window: (start, size, async_size) in pages.
    pub fn readahead_window(&self) -> (u64, u64, u64) {
        self.ra.lock().state.window()
    }

    /// The window of this description, its maximum fitted to `dev` if it
    /// still follows the device.
    fn ra(&self, dev: &dyn BlockDevice) -> MutexGuard<'_, Ra> {
        let mut ra = self.ra.lock();
        if ra.auto {
            let io_pages = u64::from(dev.geometry().max_transfer) / PAGE;
            // Growth past the kernel's default is capped at a quarter of
            // the cache, so that a window never evicts its predecessor.
            let cap = (self.shared.ino.cache.budget() / PAGE / 4)
                .max(pagecache::readahead::DEFAULT_MAX_PAGES);
            let max = pagecache::readahead::device_max_pages(io_pages).min(cap);
            ra.state = RaState::new(max);
            ra.auto = false;
        }
        ra
    }

    /// Reads up to `buf.len()` bytes at `pos`; returns how many (short at
    /// EOF, 0 at or past it). A read error is returned if nothing was
    /// read before it.
    pub fn read_at(&self, dev: &mut dyn BlockDevice, pos: u64, buf: &mut [u8]) -> Result<usize> {
        let read = self.walk(dev, pos, buf.len(), |folio, at, to| {
            let fpos = folio.pos();
            let out = &mut buf[(at - pos) as usize..(to - pos) as usize];
            folio
                .read((at - fpos) as usize, out)
                .map_err(Error::cache("copying out of a folio"))
        })?;
        Ok((read - pos) as usize)
    }

    /// The zero-copy read: views of the folios holding `[pos, pos + len)`
    /// (clipped at EOF), uptodate over that range and pinned, after the
    /// same readahead as a [`File::read_at`] of the range (the device
    /// fills the folios; nothing is copied). Empty at or past EOF. A read
    /// error is returned if no folio was ready before it; otherwise the
    /// views before it are.
    pub fn read_folios(
        &self,
        dev: &mut dyn BlockDevice,
        pos: u64,
        len: usize,
    ) -> Result<Vec<FolioView>> {
        let size = self.size();
        let mut views = Vec::new();
        self.walk(dev, pos, len, |folio, _, _| {
            let fpos = folio.pos();
            let fend = size.min(fpos + folio.size() as u64);
            views.push(FolioView {
                len: (fend - fpos) as usize,
                folio: folio.clone(),
            });
            Ok(())
        })?;
        Ok(views)
    }

    /// The read path shared by [`File::read_at`] and
    /// [`File::read_folios`] (filemap_read): each folio of `[pos, pos +
    /// len)` (clipped at EOF), brought uptodate with readahead, is handed
    /// to `take` with the file range `at..to` it covers. Returns the file
    /// offset reached; an error is returned only if nothing was taken.
    fn walk(
        &self,
        dev: &mut dyn BlockDevice,
        pos: u64,
        len: usize,
        mut take: impl FnMut(&FolioRef, u64, u64) -> Result<()>,
    ) -> Result<u64> {
        let size = self.size();
        if pos >= size || len == 0 {
            return Ok(pos);
        }
        let end = size.min(pos.saturating_add(len as u64));
        let last = (end - 1) >> PAGE_SHIFT;
        let mut at = pos;
        let mut result = Ok(());
        while at < end {
            let index = at >> PAGE_SHIFT;
            let taken = self
                .get_folio(dev, index, last - index + 1, at..end, size)
                .and_then(|folio| {
                    let to = end.min(folio.pos() + folio.size() as u64);
                    take(&folio, at, to).map(|()| to)
                });
            match taken {
                Ok(to) => at = to,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.ra.lock().state.record_read(at);
        io::reap(dev, None)?;
        match result {
            Err(e) if at == pos => Err(e),
            _ => Ok(at),
        }
    }

    /// The folio holding file offset `pos`, uptodate over its file data
    /// and pinned: the zero-copy view (no readahead). `None` at or past
    /// EOF.
    pub fn folio(&self, dev: &mut dyn BlockDevice, pos: u64) -> Result<Option<FolioView>> {
        let size = self.size();
        if pos >= size {
            return Ok(None);
        }
        let fstart = pos & !(PAGE - 1);
        let want = fstart..size.min(fstart + PAGE);
        let folio = self.get_folio(dev, pos >> PAGE_SHIFT, 0, want, size)?;
        let len = (size - folio.pos()).min(folio.size() as u64) as usize;
        if !folio.is_range_uptodate(0, len) {
            // A larger folio than the page asked: read whatever it lacks.
            return Err(Error::Io(folio.error().unwrap_or(pagecache::Errno::Io)));
        }
        Ok(Some(FolioView { folio, len }))
    }

    /// The folio covering page `index` with bytes `want` (file offsets)
    /// uptodate (filemap_get_pages). `req` pages are being read from
    /// `index` on (0: no readahead). Three phases: find the folio (a hit
    /// may start the next readahead window, a miss starts a synchronous
    /// one or reads the folio alone), wait for the blocks wanted, and if
    /// its read failed read it again on demand (X4).
    fn get_folio(
        &self,
        dev: &mut dyn BlockDevice,
        index: u64,
        req: u64,
        want: Range<u64>,
        size: u64,
    ) -> Result<FolioRef> {
        let deadline = Instant::now() + io::DEFAULT_TIMEOUT;
        loop {
            let folio = match self.lookup(index)? {
                Some(f) => {
                    if req > 0 {
                        self.async_readahead(dev, &f, index, req, size);
                    }
                    f
                }
                None => self.read_missing(dev, index, req, size, deadline)?,
            };
            if wait_uptodate(dev, &folio, &want)? {
                return Ok(folio);
            }
            match self.read_again(dev, &folio, index, &want)? {
                Reread::Uptodate => return Ok(folio),
                Reread::Truncated => continue,
            }
        }
    }

    /// The cached folio covering page `index`, if any.
    fn lookup(&self, index: u64) -> Result<Option<FolioRef>> {
        let ino = &self.shared.ino;
        ino.cache
            .lookup(ino.file, index)
            .map_err(Error::cache("lookup"))
    }

    /// page_cache_async_ra: a cached `folio` that carries the readahead
    /// mark starts the next window, in folios two orders above its own
    /// (page_cache_ra_order).
    fn async_readahead(
        &self,
        dev: &mut dyn BlockDevice,
        folio: &FolioRef,
        index: u64,
        req: u64,
        size: u64,
    ) {
        if !folio.test_clear_readahead() {
            return;
        }
        let ino = &self.shared.ino;
        let plan =
            self.ra(dev)
                .state
                .on_folio_marker(folio.pages(), index, req, size, |from, max| {
                    ino.cache.next_miss(ino.file, from, max).ok().flatten()
                });
        if let Some(p) = plan {
            let order = (folio.order().get() + 2).min(RA_MAX_ORDER);
            self.readahead(dev, p.pages, p.marker, order);
        }
    }

    /// A miss on page `index`: page_cache_sync_ra when `req` pages are
    /// being read, then the folio it brought; without readahead (random
    /// read, cache full) this folio alone is read.
    fn read_missing(
        &self,
        dev: &mut dyn BlockDevice,
        index: u64,
        req: u64,
        size: u64,
        deadline: Instant,
    ) -> Result<FolioRef> {
        if req > 0 {
            let plan = self.ra(dev).state.on_miss(index, req, size);
            if let Some(p) = plan {
                // A synchronous window starts the order ramp at 0 (and a
                // failed one is retried per page, X4).
                self.readahead(dev, p.pages, p.marker, 0);
            }
        }
        if let Some(f) = self.lookup(index)? {
            return Ok(f);
        }
        match self.grab(dev, index, deadline)? {
            Grab::Created(l) => {
                let f = l.folio();
                read_folio(dev, &self.shared.ino, l)?;
                Ok(f)
            }
            Grab::Cached(f) => Ok(f),
        }
    }

    /// The on-demand read (X4) of a `folio` that is neither uptodate over
    /// `want` nor locked: its read failed (or it is a fresh folio of a
    /// failed write_begin). Only this read's result counts.
    fn read_again(
        &self,
        dev: &mut dyn BlockDevice,
        folio: &FolioRef,
        index: u64,
        want: &Range<u64>,
    ) -> Result<Reread> {
        let locked = io::lock_folio(dev, folio)?;
        if covers(&locked.folio(), want) {
            return Ok(Reread::Uptodate);
        }
        let still = self.lookup(index)?.is_some_and(|f| f.same(folio));
        if !still {
            return Ok(Reread::Truncated);
        }
        read_folio(dev, &self.shared.ino, locked)?;
        io::wait_folio(dev, folio, FolioFlags::LOCKED, "reading a folio")?;
        if covers(folio, want) {
            return Ok(Reread::Uptodate);
        }
        Err(Error::Io(folio.error().unwrap_or(pagecache::Errno::Io)))
    }

    /// Best-effort readahead (errors are logged, R6/X4) into folios of up
    /// to `max_order`.
    fn readahead(
        &self,
        dev: &mut dyn BlockDevice,
        pages: Range<u64>,
        marker: Option<u64>,
        max_order: u8,
    ) {
        let ino = &self.shared.ino;
        match readahead_folios(dev, ino, pages.clone(), marker, max_order) {
            Ok(r) => log::trace!("readahead {pages:?} marker {marker:?}: {r:?}"),
            Err(e) => log::debug!("readahead {pages:?} failed: {e}"),
        }
    }

    /// `grab` with the full-cache handling of [`File::make_room`].
    fn grab(&self, dev: &mut dyn BlockDevice, index: u64, deadline: Instant) -> Result<Grab> {
        let ino = &self.shared.ino;
        let order = FolioOrder::new(0).map_err(Error::cache("folio order"))?;
        loop {
            match ino.cache.grab(ino.file, index, order) {
                Ok(g) => return Ok(g),
                Err(e @ pagecache::Error::CacheFull { .. }) if Instant::now() >= deadline => {
                    return Err(Error::cache("grabbing a folio")(e));
                }
                Err(pagecache::Error::CacheFull { .. }) => self.make_room(dev)?,
                Err(e) => return Err(Error::cache("grabbing a folio")(e)),
            }
        }
    }

    /// The cache is full of folios that cannot be evicted: end the reads
    /// this queue finished, write back this file's dirty folios and wait for them (they become
    /// evictable), wake the flusher for the others, and give writeback
    /// elsewhere a moment.
    fn make_room(&self, dev: &mut dyn BlockDevice) -> Result<()> {
        // Reads (readahead) of this queue that finished unlock their
        // folios, which makes them evictable.
        io::reap(dev, None)?;
        let written = self.writeback_own(dev)?;
        if let Some(f) = self.shared.flusher.get() {
            f.wake();
        }
        if written == 0 {
            let cache = &self.shared.ino.cache;
            cache.wait_dirty_below_hard(Duration::from_millis(5));
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Writes back this file's dirty folios (WB_SYNC_NONE) and waits for
    /// the writeback; returns how many folios were started. Writeback
    /// errors go to the file's errseq (reported by fsync).
    fn writeback_own(&self, dev: &mut dyn BlockDevice) -> Result<usize> {
        let ino = &self.shared.ino;
        let n = match writepages(dev, ino, 0..u64::MAX, SyncMode::None) {
            Ok(r) => r.folios,
            Err(Error::Map { .. } | Error::Io(_)) => 1,
            Err(e) => return Err(e),
        };
        sync::wait_writeback(dev, ino)?;
        Ok(n)
    }

    /// balance_dirty_pages: wake the flusher above the background limit;
    /// above the hard limit, write back this file and wait until dirty +
    /// writeback memory is at or under it.
    fn balance_dirty(&self, dev: &mut dyn BlockDevice) -> Result<()> {
        let cache = &self.shared.ino.cache;
        let pressure = cache.dirty_pressure();
        if pressure == DirtyPressure::Below {
            return Ok(());
        }
        if let Some(f) = self.shared.flusher.get() {
            f.wake();
        }
        if pressure != DirtyPressure::Throttle {
            return Ok(());
        }
        let deadline = Instant::now() + io::DEFAULT_TIMEOUT;
        loop {
            let started = self.writeback_own(dev)?;
            if cache.wait_dirty_below_hard(Duration::from_millis(if started > 0 { 0 } else { 10 }))
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout("dirty memory to fall under the hard limit"));
            }
        }
    }

    /// write_begin, retried while the cache is full.
    fn write_begin(
        &self,
        dev: &mut dyn BlockDevice,
        pos: u64,
        len: usize,
    ) -> Result<pagecache::LockedFolio> {
        let deadline = Instant::now() + io::DEFAULT_TIMEOUT;
        loop {
            match write::write_begin(dev, &self.shared.ino, pos, len) {
                Err(e) if e.is_cache_full() && Instant::now() < deadline => self.make_room(dev)?,
                r => return r,
            }
        }
    }

    /// Zeroes `[start, end)` through the cache, throttled like a write.
    fn zero(&self, dev: &mut dyn BlockDevice, start: u64, end: u64) -> Result<()> {
        let ino = &self.shared.ino;
        let mut at = start;
        while at < end {
            self.balance_dirty(dev)?;
            let deadline = Instant::now() + io::DEFAULT_TIMEOUT;
            at = loop {
                match write::zero_segment(dev, ino, at, end) {
                    Err(e) if e.is_cache_full() && Instant::now() < deadline => {
                        self.make_room(dev)?
                    }
                    r => break r?,
                }
            };
        }
        Ok(())
    }

    /// Writes `data` at `pos` through the cache (buffered; dirty folios
    /// reach the device by writeback, the flusher or fsync) and extends
    /// the file if it ends past EOF. Returns the bytes written: short only
    /// if an error stopped it after some were.
    pub fn write_at(&self, dev: &mut dyn BlockDevice, pos: u64, data: &[u8]) -> Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        pos.checked_add(data.len() as u64)
            .ok_or(Error::Invalid("write past the largest file offset"))?;
        let _writer = self.shared.write_lock.lock();
        let ino = &self.shared.ino;
        let size = ino.size();
        if pos > size {
            // Zero between the old EOF and the write: the old EOF block's
            // tail and anything the device holds there.
            self.zero(dev, size, pos)?;
        }
        let mut done = 0;
        while done < data.len() {
            if let Err(e) = self.balance_dirty(dev) {
                if done > 0 {
                    break;
                }
                return Err(e);
            }
            let at = pos + done as u64;
            let n = (PAGE - at % PAGE).min((data.len() - done) as u64) as usize;
            let folio = match self.write_begin(dev, at, n) {
                Ok(f) => f,
                Err(e) if done > 0 => {
                    log::debug!("short write at {at}: {e}");
                    break;
                }
                Err(e) => return Err(e),
            };
            done += write::write_end(ino, folio, at, &data[done..done + n])?;
        }
        if ino.cache.dirty_pressure() != DirtyPressure::Below
            && let Some(f) = self.shared.flusher.get()
        {
            f.wake();
        }
        io::reap(dev, None)?;
        Ok(done)
    }

    /// Sets the file size (ftruncate). Growing reads as zeros; shrinking
    /// drops the data past the new size from the cache.
    pub fn set_len(&self, dev: &mut dyn BlockDevice, len: u64) -> Result<()> {
        let _writer = self.shared.write_lock.lock();
        let ino = &self.shared.ino;
        let old = ino.size();
        if len > old {
            self.zero(dev, old, len)?;
            ino.set_size(len);
        } else if len < old {
            write::truncate_page(dev, ino, len)?;
            ino.set_size(len);
            write::truncate_pagecache(dev, ino, len, u64::MAX)?;
        }
        io::reap(dev, None)?;
        Ok(())
    }

    /// Runs `op` (a command that changes the device's data without going
    /// through the cache: a deallocate, a device-side Write Zeroes) over
    /// file bytes `[start, end)` with the cache kept coherent around it.
    /// Under the writer lock, every folio overlapping the range (whole,
    /// also a large one straddling an end) is written back if dirty,
    /// waited for and dropped from the cache; `op` runs; and what a reader
    /// brought back in meanwhile is dropped again. Afterwards the cache
    /// holds nothing of the range: the next read asks the device, and no
    /// older dirty data can land on top of what `op` did. A writeback
    /// error of the range goes to the file's errseq (fsync reports it);
    /// `op`'s error is returned.
    pub fn invalidate_around<D: BlockDevice>(
        &self,
        dev: &mut D,
        start: u64,
        end: u64,
        op: impl FnOnce(&mut D) -> Result<()>,
    ) -> Result<()> {
        let _writer = self.shared.write_lock.lock();
        self.drop_range(dev, start, end)?;
        let result = op(dev);
        let dropped = self.drop_range(dev, start, end);
        result.and(dropped)
    }

    /// Writes back and drops every folio overlapping `[start, end)`.
    fn drop_range(&self, dev: &mut dyn BlockDevice, start: u64, end: u64) -> Result<()> {
        let ino = &self.shared.ino;
        let deadline = Instant::now() + io::DEFAULT_TIMEOUT;
        loop {
            let folios = ino
                .cache
                .folios_in(ino.file, start / PAGE..end.div_ceil(PAGE))
                .map_err(Error::cache("listing folios"))?;
            let (Some(first), Some(last)) = (folios.first(), folios.last()) else {
                return Ok(());
            };
            let pages = first.pages().start..last.pages().end;
            match writepages(dev, ino, pages.clone(), SyncMode::All) {
                // Recorded on the file (errseq) by writeback.
                Ok(_) | Err(Error::Map { .. } | Error::Io(_)) => {}
                Err(e) => return Err(e),
            }
            sync::wait_writeback(dev, ino)?;
            let report = ino
                .cache
                .invalidate(ino.file, pages)
                .map_err(Error::cache("dropping a range from the cache"))?;
            if report.busy.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout("dropping a range from the cache"));
            }
            for f in &report.busy {
                io::wait_folio(
                    dev,
                    f,
                    FolioFlags::LOCKED | FolioFlags::WRITEBACK,
                    "dropping a range from the cache",
                )?;
            }
        }
    }

    /// fsync (X1, X2): writes back and waits for every dirty folio, sends
    /// an NVMe Flush, and reports the newest writeback error this
    /// description has not seen yet (once).
    pub fn fsync(&self, dev: &mut dyn BlockDevice) -> Result<()> {
        let mut handle = self.handle.lock();
        sync::fsync(dev, &self.shared.ino, &mut handle)
    }
}

/// How [`File::read_again`] ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reread {
    /// The bytes wanted are uptodate.
    Uptodate,
    /// The folio was truncated away meanwhile: look it up again.
    Truncated,
}

/// Whether the file bytes `want` that `folio` holds are uptodate.
fn covers(folio: &FolioRef, want: &Range<u64>) -> bool {
    let fpos = folio.pos();
    let from = want.start.max(fpos);
    let to = want.end.min(fpos + folio.size() as u64);
    folio.is_range_uptodate((from - fpos) as usize, (to - from) as usize)
}

/// Waits while `folio` is locked (its read in flight) for the blocks
/// `want` covers, not the whole (large) folio; whether they are uptodate.
fn wait_uptodate(dev: &mut dyn BlockDevice, folio: &FolioRef, want: &Range<u64>) -> Result<bool> {
    if covers(folio, want) {
        return Ok(true);
    }
    io::wait_folio_until(dev, folio, FolioFlags::LOCKED, "reading a folio", || {
        covers(folio, want)
    })?;
    Ok(covers(folio, want))
}

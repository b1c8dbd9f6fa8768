//! Page-cache mode (`--cache SIZE`): requests go through the project's
//! page cache over the namespace instead of straight to the device.
//!
//! The namespace is one [`mpage::File`] (an [`IdentityMapper`]: file
//! offset `o` is LBA `o / lba_size`, blocks of one LBA) in a
//! [`PageCache`] of SIZE bytes whose folios are DMA memory. Each queue
//! thread has its own NVMe queue pair ([`NvmeDevice`]) and its own open
//! description of the file (its own readahead window), and serves its
//! requests one at a time, in ring order:
//!
//! - IN: `read_at` (from the cache; what is missing is read through
//!   readahead, as the file API does), copied into the guest's buffers.
//!   Counted a hit when every byte was cached and uptodate before.
//! - OUT: the guest's buffers copied into folios (`write_at`: buffered,
//!   dirty until writeback by the flusher thread or a FLUSH).
//! - FLUSH: `fsync` of the guest's description: every dirty folio written
//!   back and waited for, then an NVMe Flush. A writeback error recorded
//!   since the guest's last FLUSH fails it once (errseq, as fsync): one
//!   description for the guest, whichever queue flushes.
//! - DISCARD and WRITE_ZEROES: the NVMe command, with the range written
//!   back and dropped from the cache before it and dropped again after
//!   it ([`File::invalidate_around`]), so the cache and the device agree.
//! - GET_ID as in the direct mode.
//!
//! The guest's memory is only touched by the CPU here (copies in and
//! out): it is not mapped for the device. A flusher thread with its own
//! queue pair writes back in the background above the cache's dirty
//! limits; when a front end leaves, everything dirty is written back and
//! flushed before the next one is served.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mpage::nvme::{DmaFolioMemory, NvmeDevice};
use mpage::{BlockDevice, File, Flusher, FlusherThread, IdentityMapper};
use nvme_driver::{Controller, IoQPair, IoRequest};
use pagecache::{BlockSize, FolioMemory, PAGE_SIZE, PageCache};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use crate::config::DeviceConfig;
use crate::request::{self, Action, ID_BYTES, Reject};
use crate::worker::{Notify, RequestError, Served, Stats, WorkerError, answer, write_id};

const PAGE: u64 = PAGE_SIZE as u64;
/// The flusher also looks at the cache this often when nobody wakes it.
const FLUSHER_INTERVAL: Duration = Duration::from_secs(1);
/// How long a queue thread waits for its readahead still in flight
/// before it sleeps until the next kick.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the page-cache mode cannot start.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache's memory could not be mapped.
    #[error("page cache: reserving {bytes} bytes: {source}")]
    Reserve {
        /// The cache's budget.
        bytes: u64,
        /// The folio memory's answer.
        #[source]
        source: pagecache::Error,
    },
    /// The cache could not be made.
    #[error("page cache: {0}")]
    Cache(#[source] pagecache::Error),
    /// The namespace's LBA size is no cache block size.
    #[error("page cache: LBA size {lba_size} as a cache block: {source}")]
    Block {
        /// The namespace's LBA size.
        lba_size: u32,
        /// Why.
        #[source]
        source: pagecache::Error,
    },
    /// The namespace could not be opened as a file of the cache.
    #[error("page cache: the namespace as a file: {0}")]
    File(#[source] mpage::Error),
    /// A description of the namespace file could not be opened.
    #[error("page cache: {0}")]
    Reopen(#[source] mpage::Error),
    /// The flusher could not be attached or started.
    #[error("page cache: flusher: {0}")]
    Flusher(#[source] mpage::Error),
    /// No queue pair for the cache's device.
    #[error("page cache: queue pair: {0}")]
    QueuePair(#[source] nvme_driver::Error),
    /// The queue pair could not be made a block device of the cache.
    #[error("page cache: queue pair: {0}")]
    Device(#[source] mpage::DeviceError),
}

/// Why one request failed in page-cache mode: it is answered
/// VIRTIO_BLK_S_IOERR and the message logged with the request.
#[derive(Debug, thiserror::Error)]
enum CachedRequestError {
    /// The guest's buffers (as in the direct mode).
    #[error(transparent)]
    Guest(#[from] RequestError),
    /// The page cache, or the device under it.
    #[error(transparent)]
    File(#[from] mpage::Error),
    /// The file moved fewer bytes than asked.
    #[error("short {op}: {done} of {len} bytes")]
    Short {
        /// "read" or "write".
        op: &'static str,
        /// Bytes moved.
        done: usize,
        /// Bytes asked.
        len: u64,
    },
}

/// The page cache over the namespace, shared by the queue threads.
#[derive(Debug)]
pub struct CacheMode {
    // Dropped first: the flusher thread stops before the file goes.
    _flusher: FlusherThread,
    /// The guest's open description: FLUSH is an fsync through it.
    guest: Mutex<File>,
    /// The description the queue threads' ones are opened from.
    file: File,
    cache: Arc<PageCache>,
    nsid: u32,
    lba_size: u32,
}

impl CacheMode {
    /// A cache of `budget` bytes over namespace `nsid` of `ctrl` (whose
    /// size is `capacity` bytes in blocks of `lba_size`), with its
    /// flusher thread on a queue pair of its own.
    pub fn open(
        ctrl: &Controller,
        nsid: u32,
        lba_size: u32,
        capacity: u64,
        budget: u64,
    ) -> Result<CacheMode, CacheError> {
        let memory: Arc<dyn FolioMemory> = Arc::new(DmaFolioMemory::new(ctrl.dma_pool().clone()));
        // Map the budget's memory now, not on the I/O path.
        memory
            .reserve(budget)
            .map_err(|source| CacheError::Reserve {
                bytes: budget,
                source,
            })?;
        let cache = Arc::new(PageCache::new(memory, budget).map_err(CacheError::Cache)?);
        let block = BlockSize::new(lba_size as usize)
            .map_err(|source| CacheError::Block { lba_size, source })?;
        let blocks = capacity / u64::from(lba_size);
        let mapper = Arc::new(IdentityMapper::new(0, blocks, lba_size));
        let file = File::open(cache.clone(), mapper, block, capacity).map_err(CacheError::File)?;
        let guest = file.reopen().map_err(CacheError::Reopen)?;
        let flusher = Flusher::new(cache.clone());
        flusher.attach(&file).map_err(CacheError::Flusher)?;
        // Asleep on its queue's interrupt while writeback is in flight,
        // when the controller has vectors.
        let dev = device(
            ctrl,
            nsid,
            ctrl.io_qpair_with_interrupts().or_else(|_| ctrl.io_qpair()),
        )?;
        let flusher = flusher
            .spawn(Box::new(dev), FLUSHER_INTERVAL)
            .map_err(CacheError::Flusher)?;
        log::info!(
            "page cache of {budget} bytes over namespace {nsid} ({} pages); flusher running",
            budget / PAGE
        );
        Ok(CacheMode {
            _flusher: flusher,
            guest: Mutex::new(guest),
            file,
            cache,
            nsid,
            lba_size,
        })
    }

    /// A queue thread's server on `qpair`.
    pub fn worker(
        self: &Arc<Self>,
        ctrl: &Controller,
        qpair: nvme_driver::Result<IoQPair>,
        config: DeviceConfig,
        id: [u8; ID_BYTES],
        stats: Arc<Stats>,
    ) -> Result<CacheWorker, CacheError> {
        let dev = device(ctrl, self.nsid, qpair)?;
        let file = self.file.reopen().map_err(CacheError::Reopen)?;
        Ok(CacheWorker {
            mode: self.clone(),
            dev,
            file,
            config,
            id,
            stats,
            copy: Vec::new(),
        })
    }

    /// Writes back everything dirty and flushes (a front end left); the
    /// outcome is logged. Takes the guest's description afresh after, so
    /// that the next front end sees only errors of its own writes.
    pub fn sync(&self, worker: &mut CacheWorker) {
        let mut guest = self.guest.lock().unwrap_or_else(|e| e.into_inner());
        match guest.fsync(&mut worker.dev) {
            Ok(()) => log::info!(
                "page cache written back and flushed ({} bytes cached)",
                self.cache.used()
            ),
            Err(e) => log::error!("writing the page cache back: {e}"),
        }
        match self.file.reopen() {
            Ok(f) => *guest = f,
            Err(e) => log::error!("reopening the namespace file: {e}"),
        }
    }

    /// The cache (budget, memory in use, dirty bytes).
    pub fn cache(&self) -> &Arc<PageCache> {
        &self.cache
    }

    /// Whether every byte of `[pos, end)` is cached and uptodate.
    fn cached(&self, pos: u64, end: u64) -> bool {
        let ino = self.file.inode();
        let Ok(folios) = ino
            .cache
            .folios_in(ino.file, pos / PAGE..end.div_ceil(PAGE))
        else {
            return false;
        };
        let mut at = pos;
        for f in folios {
            let (fs, fe) = (f.pos(), f.pos() + f.size() as u64);
            if fs > at {
                return false;
            }
            let to = fe.min(end);
            if to > at {
                if !f.is_range_uptodate((at - fs) as usize, (to - at) as usize) {
                    return false;
                }
                at = to;
            }
        }
        at >= end
    }
}

fn device(
    ctrl: &Controller,
    nsid: u32,
    qpair: nvme_driver::Result<IoQPair>,
) -> Result<NvmeDevice, CacheError> {
    let qpair = qpair.map_err(CacheError::QueuePair)?;
    NvmeDevice::new(ctrl, qpair, nsid).map_err(CacheError::Device)
}

/// One queue thread's server in page-cache mode.
#[derive(Debug)]
pub struct CacheWorker {
    /// This queue's description of the namespace file (its readahead).
    file: File,
    dev: NvmeDevice,
    mode: Arc<CacheMode>,
    config: DeviceConfig,
    id: [u8; ID_BYTES],
    stats: Arc<Stats>,
    copy: Vec<u8>,
}

impl CacheWorker {
    /// Serves every available chain of `queue`, one at a time, until the
    /// ring is empty with notifications on; signals `call` after each
    /// request when the queue asks for it (else says chains were
    /// returned unsignalled, for the caller to signal). Chains are taken
    /// only while `current()` says `mem` is still the guest's memory
    /// (else it returns with `again`). The readahead a request starts
    /// completes before the next request (a folio locked for it would
    /// otherwise wait for this thread, which may be blocked on the
    /// file's writer lock, or asleep until the next kick).
    pub fn serve(
        &mut self,
        queue: &mut Queue,
        mem: &Arc<GuestMemoryMmap<()>>,
        call: Option<&dyn Notify>,
        current: &dyn Fn() -> bool,
    ) -> Result<Served, WorkerError> {
        let result = self.serve_chains(queue, mem, call, current);
        self.drain();
        result
    }

    fn serve_chains(
        &mut self,
        queue: &mut Queue,
        mem: &Arc<GuestMemoryMmap<()>>,
        call: Option<&dyn Notify>,
        current: &dyn Fn() -> bool,
    ) -> Result<Served, WorkerError> {
        let m = &**mem;
        let mut unsignalled = false;
        loop {
            if !current() {
                // Chains made for the new memory are served with it.
                let again = queue.enable_notification(m)?;
                return Ok(Served { unsignalled, again });
            }
            queue.disable_notification(m)?;
            let chains: Vec<_> = queue
                .iter(mem.clone())?
                .map(|chain| request::parse(chain, &self.config))
                .collect();
            for p in chains {
                let (code, written) = match p.action {
                    Ok(action) => {
                        let answer = self.run(m, &action);
                        // Readahead it started completes now: this thread
                        // may block next (the file's writer lock, a folio)
                        // and must not hold locked folios others wait for.
                        self.drain();
                        answer
                    }
                    Err(Reject::Unsupported(why)) => {
                        log::debug!("request at descriptor {}: unsupported: {why}", p.head);
                        (VIRTIO_BLK_S_UNSUPP, 0)
                    }
                    Err(Reject::Invalid(why)) => {
                        log::warn!("request at descriptor {}: {why}", p.head);
                        (VIRTIO_BLK_S_IOERR, 0)
                    }
                };
                let (head, len) = answer(m, &self.stats, p.head, p.status, code, written);
                queue.add_used(m, head, len)?;
                unsignalled = true;
                if let Some(call) = call
                    && queue.needs_notification(m)?
                {
                    if let Err(e) = call.notify() {
                        log::warn!("signalling the guest: {e}");
                    }
                    unsignalled = false;
                }
            }
            if !queue.enable_notification(m)? {
                return Ok(Served {
                    unsignalled,
                    again: false,
                });
            }
        }
    }

    /// Ends this queue's readahead in flight.
    fn drain(&mut self) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.dev.in_flight() > 0 && Instant::now() < deadline {
            if let Err(e) = mpage::io::reap(&mut self.dev, Some(Duration::from_millis(100))) {
                log::warn!("ending readahead: {e}");
                return;
            }
        }
    }

    /// Runs one request; returns its status and the bytes written into
    /// the guest's buffers.
    fn run(&mut self, mem: &GuestMemoryMmap<()>, action: &Action) -> (u32, u32) {
        match self.try_run(mem, action) {
            Ok(()) => (VIRTIO_BLK_S_OK, action.bytes_written()),
            Err(e) => {
                log::warn!("{}: {e}", describe(action));
                (VIRTIO_BLK_S_IOERR, 0)
            }
        }
    }

    fn try_run(
        &mut self,
        mem: &GuestMemoryMmap<()>,
        action: &Action,
    ) -> Result<(), CachedRequestError> {
        let lba = u64::from(self.mode.lba_size);
        let nsid = self.mode.nsid;
        match action {
            Action::Read { slba, blocks, data } => {
                let (pos, len) = (slba * lba, blocks * lba);
                if self.mode.cached(pos, pos + len) {
                    self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
                }
                self.copy.resize(len as usize, 0);
                let n = self.file.read_at(&mut self.dev, pos, &mut self.copy)?;
                if n as u64 != len {
                    return Err(CachedRequestError::Short {
                        op: "read",
                        done: n,
                        len,
                    });
                }
                let mut at = 0;
                for &(addr, l) in data {
                    mem.write_slice(&self.copy[at..at + l as usize], addr)
                        .map_err(|source| RequestError::WriteGuest {
                            addr: addr.0,
                            source,
                        })?;
                    at += l as usize;
                }
                Ok(())
            }
            Action::Write { slba, blocks, data } => {
                let (pos, len) = (slba * lba, blocks * lba);
                self.copy.resize(len as usize, 0);
                let mut at = 0;
                for &(addr, l) in data {
                    mem.read_slice(&mut self.copy[at..at + l as usize], addr)
                        .map_err(|source| RequestError::ReadGuest {
                            addr: addr.0,
                            source,
                        })?;
                    at += l as usize;
                }
                let n = self.file.write_at(&mut self.dev, pos, &self.copy)?;
                if n as u64 != len {
                    return Err(CachedRequestError::Short {
                        op: "write",
                        done: n,
                        len,
                    });
                }
                self.stats.cache_writes.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Action::Flush => {
                self.stats.cache_flushes.fetch_add(1, Ordering::Relaxed);
                self.mode
                    .guest
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .fsync(&mut self.dev)?;
                Ok(())
            }
            Action::GetId { data } => Ok(write_id(mem, &self.id, data)?),
            Action::Discard(ranges) | Action::WriteZeroes(ranges) => {
                let zeroes = matches!(action, Action::WriteZeroes(_));
                for &(slba, blocks) in ranges {
                    let req = if zeroes {
                        IoRequest::write_zeroes(nsid, slba, blocks)
                    } else {
                        IoRequest::deallocate(nsid, slba, blocks)
                    };
                    self.file.invalidate_around(
                        &mut self.dev,
                        slba * lba,
                        (slba + blocks) * lba,
                        |d| {
                            d.execute(req).map_err(|source| mpage::Error::Device {
                                context: "deallocate or write zeroes",
                                source,
                            })
                        },
                    )?;
                }
                Ok(())
            }
        }
    }
}

fn describe(action: &Action) -> String {
    match action {
        Action::Read { slba, blocks, .. } => format!("cached read of {blocks} blocks at {slba}"),
        Action::Write { slba, blocks, .. } => format!("cached write of {blocks} blocks at {slba}"),
        Action::Flush => "flush (fsync of the namespace file)".into(),
        Action::GetId { .. } => "GET_ID".into(),
        Action::Discard(r) => format!("discard of {} ranges", r.len()),
        Action::WriteZeroes(r) => format!("write zeroes of {} ranges", r.len()),
    }
}

//! The NVMe side of [`BlockDevice`] (feature `nvme`): bios become I/O
//! requests on one of the driver's queue pairs, and folio memory comes from
//! the driver's DMA pool, so the controller reads into and writes from the
//! page cache itself (zero copy).
//!
//! A bio's flags become the command's hints ([`hints`]: readahead →
//! Limited Retry + DSM prefetch, FUA → FUA; R6). A bio's segments are
//! pieces of folios; their device addresses become the request's PRP
//! entries ([`nvme_driver::IoSegments`], whose lists are
//! reused from one request to the next). The bio itself stays here until
//! its request completes, and it keeps the folios alive.
//!
//! Rule ids (R.., X.., K.., T..): docs/MPAGE.md.

use std::time::Duration;

use nvme_driver::{
    Controller, DmaBuffer, DmaPool, IoCompletion, IoHints, IoQPair, IoRequest, IoSegments,
};
use pagecache::{FolioBacking, FolioMemory, FolioOrder};

use crate::device::{Bio, BioFlags, BioOp, BlockDevice, Completion, DeviceError, Geometry};

/// One namespace of a controller, through one I/O queue pair (owned: use
/// one `NvmeDevice` per thread).
#[derive(Debug)]
pub struct NvmeDevice {
    qpair: IoQPair,
    nsid: u32,
    geometry: Geometry,
    /// Bios in flight, by request tag.
    bios: Vec<Option<Bio>>,
    free: Vec<usize>,
    done: Vec<IoCompletion>,
    /// Address lists of completed requests, for the next ones.
    spare: Vec<Vec<(u64, usize)>>,
}

impl NvmeDevice {
    /// Namespace `nsid` of `ctrl`, through `qpair`.
    pub fn new(ctrl: &Controller, qpair: IoQPair, nsid: u32) -> Result<Self, DeviceError> {
        let ns = ctrl.namespace(nsid).map_err(driver_error)?;
        // The PRP builder takes any length up to MDTS; keep it a whole
        // number of pages and within u32.
        let max =
            ctrl.max_transfer().min(1 << 30) as u32 & !(crate::device::DEVICE_PAGE as u32 - 1);
        let geometry = Geometry::new(ns.lba_size, ns.blocks, max)?;
        Ok(NvmeDevice {
            qpair,
            nsid,
            geometry,
            bios: Vec::new(),
            free: Vec::new(),
            done: Vec::new(),
            spare: Vec::new(),
        })
    }

    /// Runs one request outside the bio machinery (a Dataset Management
    /// deallocate, a Write Zeroes: commands that change the device's data
    /// without going through the cache, see [`crate::File::invalidate_around`])
    /// and waits for it. Completions of bios met meanwhile are kept for
    /// the next poll.
    pub fn execute(&mut self, req: IoRequest) -> Result<(), DeviceError> {
        let done = self.qpair.execute(req).map_err(driver_error)?;
        done.result.map_err(driver_error)
    }

    /// The namespace id.
    pub fn nsid(&self) -> u32 {
        self.nsid
    }

    fn park(&mut self, bio: Bio) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.bios[i] = Some(bio);
                i
            }
            None => {
                self.bios.push(Some(bio));
                self.bios.len() - 1
            }
        }
    }

    fn unpark(&mut self, tag: u64) -> Option<Bio> {
        let i = usize::try_from(tag).ok()?;
        let bio = self.bios.get_mut(i)?.take()?;
        self.free.push(i);
        Some(bio)
    }

    fn collect(&mut self, done: &mut Vec<Completion>) -> usize {
        let mut n = 0;
        let mut completed = std::mem::take(&mut self.done);
        for mut c in completed.drain(..) {
            // The driver gave up on a command it keeps the data pointer of.
            let lost = c.op != IoOp::Flush && c.segments.is_none() && c.result.is_err();
            if let Some(segments) = c.segments.take() {
                let mut pieces = segments.into_pieces();
                pieces.clear();
                self.spare.push(pieces);
            }
            let Some(bio) = self.unpark(c.tag) else {
                log::warn!("nvme device: completion for unknown tag {}", c.tag);
                continue;
            };
            if lost {
                // The driver gave up on the command and keeps its data
                // pointer: the device may still write there.
                log::error!(
                    "{:?} lba {}+{} was given up on; its folios may be written late",
                    bio.op(),
                    bio.lba(),
                    bio.blocks()
                );
            }
            done.push(Completion {
                bio,
                result: c.result.map_err(driver_error),
            });
            n += 1;
        }
        self.done = completed;
        n
    }
}

use nvme_driver::IoOp;

impl BlockDevice for NvmeDevice {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn submit(&mut self, bio: Bio) -> Result<(), (Bio, DeviceError)> {
        if let Err(e) = bio.check(&self.geometry) {
            return Err((bio, e));
        }
        let (op, lba, blocks) = (bio.op(), bio.lba(), bio.blocks());
        let segments = |bio: &Bio, spare: &mut Vec<Vec<(u64, usize)>>| {
            let mut pieces = spare.pop().unwrap_or_default();
            bio.dma_ranges_into(&mut pieces);
            IoSegments::new(pieces)
        };
        let req = match op {
            BioOp::Read => {
                IoRequest::read_segments(self.nsid, lba, blocks, segments(&bio, &mut self.spare))
                    .with_hints(hints(op, bio.flags()))
            }
            BioOp::Write => {
                IoRequest::write_segments(self.nsid, lba, blocks, segments(&bio, &mut self.spare))
                    .with_hints(hints(op, bio.flags()))
            }
            BioOp::Flush => IoRequest::flush(self.nsid),
        };
        let tag = self.park(bio) as u64;
        match self.qpair.submit(req.with_tag(tag)) {
            Ok(()) => Ok(()),
            Err(mut rejected) => {
                if let Some(segments) = rejected.request.segments.take() {
                    self.spare.push(segments.into_pieces());
                }
                let error = driver_error(rejected.error);
                match self.unpark(tag) {
                    Some(bio) => Err((bio, error)),
                    // Cannot happen: the bio was parked just above.
                    None => Ok(()),
                }
            }
        }
    }

    fn commit(&mut self) -> Result<(), DeviceError> {
        self.qpair.ring().map_err(driver_error)
    }

    fn poll(&mut self, done: &mut Vec<Completion>) -> Result<usize, DeviceError> {
        self.qpair.poll(&mut self.done).map_err(driver_error)?;
        Ok(self.collect(done))
    }

    fn wait(
        &mut self,
        done: &mut Vec<Completion>,
        timeout: Duration,
    ) -> Result<usize, DeviceError> {
        self.qpair
            .wait(&mut self.done, timeout)
            .map_err(driver_error)?;
        Ok(self.collect(done))
    }

    fn in_flight(&self) -> usize {
        self.qpair.outstanding()
    }
}

/// The NVMe hints a bio's flags become (R6, K6), as Linux's
/// `nvme_setup_rw` sets them: a readahead read gets Limited Retry and the
/// DSM access frequency "speculative read (prefetch)"; FUA becomes the
/// FUA bit. SYNC and BACKGROUND have no field in an NVMe command (they
/// could choose a queue priority) and are not sent.
pub fn hints(op: BioOp, flags: BioFlags) -> IoHints {
    let mut h = IoHints::NONE;
    if op == BioOp::Read && flags.contains(BioFlags::READAHEAD) {
        h = IoHints::READAHEAD;
    }
    if op != BioOp::Flush && flags.contains(BioFlags::FUA) {
        h.flags |= IoHints::FUA.flags;
    }
    h
}

/// Maps a driver error to the device error the page cache understands: an
/// NVMe status keeps its SCT and SC (so R32's errno mapping applies).
fn driver_error(e: nvme_driver::Error) -> DeviceError {
    match e {
        nvme_driver::Error::Command { status, .. } => DeviceError::Status {
            status: u16::from(status.sct) << 8 | u16::from(status.sc),
        },
        other => DeviceError::Failed(other.to_string()),
    }
}

/// Folio memory from the driver's DMA pool: IOMMU-mapped, so the controller
/// moves data straight to and from the cache.
#[derive(Debug, Clone)]
pub struct DmaFolioMemory {
    pool: DmaPool,
}

impl DmaFolioMemory {
    /// Folios from `pool` (e.g. `Controller::dma_pool().clone()`).
    pub fn new(pool: DmaPool) -> Self {
        DmaFolioMemory { pool }
    }
}

impl FolioMemory for DmaFolioMemory {
    fn alloc(&self, order: FolioOrder) -> pagecache::Result<Box<dyn FolioBacking>> {
        let buf = self
            .pool
            .alloc_uninit(order.size())
            .map_err(|e| pagecache::Error::Memory(Box::new(e)))?;
        Ok(Box::new(DmaFolio(buf)))
    }

    fn reserve(&self, bytes: u64) -> pagecache::Result<()> {
        let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        self.pool
            .reserve(bytes)
            .map_err(|e| pagecache::Error::Memory(Box::new(e)))
    }
}

#[derive(Debug)]
struct DmaFolio(DmaBuffer);

impl FolioBacking for DmaFolio {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn iova(&self) -> u64 {
        self.0.iova()
    }

    fn read(&self, offset: usize, out: &mut [u8]) -> pagecache::Result<()> {
        self.0
            .read(offset, out)
            .map_err(|e| pagecache::Error::Memory(Box::new(e)))
    }

    fn write(&self, offset: usize, data: &[u8]) -> pagecache::Result<()> {
        self.0
            .write(offset, data)
            .map_err(|e| pagecache::Error::Memory(Box::new(e)))
    }

    fn fill(&self, offset: usize, len: usize, byte: u8) -> pagecache::Result<()> {
        self.0
            .fill(offset, len, byte)
            .map_err(|e| pagecache::Error::Memory(Box::new(e)))
    }
}

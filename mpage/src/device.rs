//! The device side: one command ([`Bio`]) and the queue that runs it
//! ([`BlockDevice`]).
//!
//! # Contract
//!
//! * A [`Bio`] is **one device command**: [`BioOp::Read`], [`BioOp::Write`]
//!   or [`BioOp::Flush`], a starting LBA and a length in LBAs (in the
//!   device's own LBA size, [`Geometry::lba_size`]), and for reads and
//!   writes an ordered list of [`Segment`]s whose lengths add up to
//!   `blocks · lba_size`. A flush has no segments, LBA 0 and 0 blocks.
//! * Each segment is a piece of one folio. It keeps the folio alive (it
//!   holds a pagecache [`IoPart`]), gives the
//!   device its address ([`Segment::iova`]) and length, and offers host
//!   copies ([`Segment::fill_from`], [`Segment::copy_out`]) for software
//!   devices. An NVMe device needs only `iova`/`len` to build PRPs.
//! * **PRP legality** ([`Bio::is_prp_legal`], R4): after merging
//!   segments that are contiguous in iova, the first may start anywhere
//!   (4-byte aligned), every later one starts on a page boundary, and every
//!   one but the last ends on a page boundary. The builder in
//!   [`crate::bio`] only produces legal bios no larger than
//!   [`Geometry::max_transfer`], so the device never splits a bio.
//! * [`BlockDevice::submit`] takes ownership of the bio. If the device
//!   cannot accept it, it hands it back with the reason (`Err((bio,
//!   error))`), and the caller completes it or retries later. An accepted
//!   bio is owned by the device until it comes back from
//!   [`BlockDevice::poll`] or [`BlockDevice::wait`] as a [`Completion`]; a
//!   command that failed on the device (an NVMe error status, an LBA out
//!   of range) comes back as a completion with an error, not as a
//!   rejection.
//! * The caller ends a completion with [`Completion::finish`] (or
//!   [`Bio::complete`]): every segment's part is completed with the
//!   command's result mapped to an [`Errno`] ([`DeviceError::errno`],
//!   R32), which runs the folio state machine, then the bio's end-io hook
//!   runs (ioend bookkeeping). A bio dropped without completion completes
//!   with EIO, so a lost command never leaves a folio locked or under
//!   writeback.
//! * Submission may be batched (R7, one doorbell write per batch):
//!   [`BlockDevice::commit`] makes everything submitted so far visible to
//!   the device; `poll` and `wait` commit first.
//! * Completions may arrive in any order. Nothing orders a flush against
//!   writes still in flight: fsync waits for writeback before it submits
//!   the flush (X2).
//!
//! Rule ids (R.., X.., K.., T..): docs/MPAGE.md.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use pagecache::{Direction, Errno, FolioRef, IoPart};

/// The device page size PRPs are built on (CC.MPS = 4 KiB).
pub const DEVICE_PAGE: usize = 4096;

/// What a command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BioOp {
    /// Device → memory.
    Read,
    /// Memory → device. Never FUA (R6): durability needs a
    /// [`BioOp::Flush`] (X2).
    Write,
    /// NVMe Flush: everything completed before it is durable.
    Flush,
}

bitflags::bitflags! {
    /// Command hints (the block layer's REQ_* flags that matter here).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct BioFlags: u8 {
        /// Readahead (REQ_RAHEAD): NVMe Limited Retry plus DSM access
        /// frequency "prefetch" (R6, T9). Demand reads never carry it.
        const READAHEAD = 1 << 0;
        /// Writeback for data integrity (WB_SYNC_ALL, REQ_SYNC).
        const SYNC = 1 << 1;
        /// Background writeback (REQ_BACKGROUND).
        const BACKGROUND = 1 << 2;
        /// Force Unit Access (REQ_FUA): the write is durable when it
        /// completes (NVMe FUA bit). The engines never set it (R6:
        /// writeback durability comes from a Flush, X2); for callers
        /// that build their own bios.
        const FUA = 1 << 3;
    }
}

/// The device's shape, as the command builder needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// LBA size in bytes (power of two, 512..=4096).
    pub lba_size: u32,
    /// Namespace size in LBAs (NSZE).
    pub capacity: u64,
    /// Largest data transfer of one command in bytes: min(MDTS, PRP-list
    /// capacity, configured cap); a multiple of [`Geometry::page_size`].
    pub max_transfer: u32,
    /// Memory page size PRPs are built on (4096).
    pub page_size: u32,
}

impl Geometry {
    /// A geometry with 4 KiB device pages, checked.
    pub fn new(lba_size: u32, capacity: u64, max_transfer: u32) -> Result<Self, DeviceError> {
        let g = Geometry {
            lba_size,
            capacity,
            max_transfer,
            page_size: DEVICE_PAGE as u32,
        };
        g.validate()?;
        Ok(g)
    }

    /// Checks the invariants documented on the fields.
    pub fn validate(&self) -> Result<(), DeviceError> {
        if !self.lba_size.is_power_of_two() || !(512..=4096).contains(&self.lba_size) {
            return Err(DeviceError::Geometry(
                "lba_size must be a power of two in 512..=4096",
            ));
        }
        if !self.page_size.is_power_of_two() || self.page_size < self.lba_size {
            return Err(DeviceError::Geometry(
                "page_size must be a power of two ≥ lba_size",
            ));
        }
        if self.max_transfer < self.page_size || !self.max_transfer.is_multiple_of(self.page_size) {
            return Err(DeviceError::Geometry(
                "max_transfer must be a positive multiple of page_size",
            ));
        }
        Ok(())
    }

    /// Namespace size in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity * u64::from(self.lba_size)
    }
}

/// NVMe status values (SCT << 8 | SC) this layer maps to errnos (R32).
pub mod status {
    /// Generic: Invalid Command Opcode.
    pub const INVALID_OPCODE: u16 = 0x001;
    /// Generic: Invalid Field in Command.
    pub const INVALID_FIELD: u16 = 0x002;
    /// Generic: Data Transfer Error.
    pub const DATA_TRANSFER_ERROR: u16 = 0x004;
    /// Generic: Internal Error.
    pub const INTERNAL: u16 = 0x006;
    /// Generic: Invalid Namespace or Format.
    pub const INVALID_NAMESPACE: u16 = 0x00b;
    /// Generic: Namespace is Write Protected.
    pub const NS_WRITE_PROTECTED: u16 = 0x020;
    /// Generic: Command Interrupted.
    pub const INTERRUPTED: u16 = 0x021;
    /// Generic (NVM): LBA Out of Range.
    pub const LBA_OUT_OF_RANGE: u16 = 0x080;
    /// Generic (NVM): Capacity Exceeded.
    pub const CAPACITY_EXCEEDED: u16 = 0x081;
    /// Generic (NVM): Namespace Not Ready.
    pub const NS_NOT_READY: u16 = 0x082;
    /// Media: Write Fault.
    pub const WRITE_FAULT: u16 = 0x280;
    /// Media: Unrecovered Read Error.
    pub const UNRECOVERED_READ: u16 = 0x281;
    /// Media: End-to-end Guard Check Error.
    pub const GUARD_CHECK: u16 = 0x282;
    /// Media: End-to-end Application Tag Check Error.
    pub const APP_TAG_CHECK: u16 = 0x283;
    /// Media: End-to-end Reference Tag Check Error.
    pub const REF_TAG_CHECK: u16 = 0x284;
    /// Media: Compare Failure.
    pub const COMPARE_FAILURE: u16 = 0x285;
    /// Media: Access Denied.
    pub const ACCESS_DENIED: u16 = 0x286;
    /// Media: Deallocated or Unwritten Logical Block.
    pub const DEALLOCATED: u16 = 0x287;
    /// Path: Host Pathing Error.
    pub const HOST_PATH_ERROR: u16 = 0x370;
}

/// Why a command failed or could not be submitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The device completed the command with an NVMe error status.
    #[error("NVMe status {status:#05x} (sct {sct:#x}, sc {sc:#04x})", sct = .status >> 8, sc = .status & 0xff)]
    Status {
        /// SCT << 8 | SC.
        status: u16,
    },
    /// The command's LBA range reaches past the namespace (checked before
    /// submission, R5 with the K6 deviation).
    #[error("LBAs {lba}+{blocks} reach past the namespace end ({capacity} LBAs)")]
    OutOfRange {
        /// First LBA.
        lba: u64,
        /// Number of LBAs.
        blocks: u64,
        /// Namespace size.
        capacity: u64,
    },
    /// The bio breaks the contract (segment sizes, PRP rules, size).
    #[error("invalid bio: {0}")]
    InvalidBio(String),
    /// A geometry that breaks its invariants.
    #[error("invalid geometry: {0}")]
    Geometry(&'static str),
    /// No free command slot or queue entry: poll and retry (back-pressure,
    /// K3).
    #[error("device queue full")]
    Busy,
    /// No completion arrived in time.
    #[error("no completion within {0:?}")]
    Timeout(Duration),
    /// The transport or controller failed (reset, removal, DMA mapping).
    #[error("device failure: {0}")]
    Failed(String),
    /// The error was decided by the host, as an errno (e.g. an ioend
    /// failed without I/O, R57/R60).
    #[error("{0}")]
    Errno(Errno),
}

impl DeviceError {
    /// The errno the page cache records for this failure (R32,
    /// K10): Capacity Exceeded → ENOSPC, medium errors → ENODATA, PI
    /// errors → EILSEQ, path/range errors → EREMOTEIO/ENOLINK, unsupported
    /// → EOPNOTSUPP, anything else → EIO.
    pub fn errno(&self) -> Errno {
        match self {
            DeviceError::Status { status: s } => match *s {
                status::CAPACITY_EXCEEDED => Errno::NoSpace,
                status::WRITE_FAULT
                | status::UNRECOVERED_READ
                | status::DEALLOCATED
                | status::ACCESS_DENIED
                | status::NS_WRITE_PROTECTED
                | status::COMPARE_FAILURE => Errno::NoData,
                status::GUARD_CHECK | status::APP_TAG_CHECK | status::REF_TAG_CHECK => Errno::IlSeq,
                status::LBA_OUT_OF_RANGE | status::NS_NOT_READY | status::INTERRUPTED => {
                    Errno::RemoteIo
                }
                status::INVALID_OPCODE | status::INVALID_FIELD | status::INVALID_NAMESPACE => {
                    Errno::NotSupported
                }
                status::HOST_PATH_ERROR => Errno::NoLink,
                _ => Errno::Io,
            },
            DeviceError::Errno(e) => *e,
            _ => Errno::Io,
        }
    }
}

/// One piece of one folio in a command's data: the pagecache part whose
/// completion runs the folio's state machine.
#[derive(Debug)]
pub struct Segment {
    part: IoPart,
}

impl Segment {
    /// A segment the device writes into (a read command); `part` comes
    /// from [`pagecache::ReadIo::part`].
    pub fn read(part: IoPart) -> Self {
        debug_assert_eq!(part.direction(), Direction::Read);
        Segment { part }
    }

    /// A segment the device reads from (a write command); `part` comes
    /// from [`pagecache::WritebackIo::part`].
    pub fn write(part: IoPart) -> Self {
        debug_assert_eq!(part.direction(), Direction::Writeback);
        Segment { part }
    }

    /// Device address of the first byte.
    pub fn iova(&self) -> u64 {
        self.part.iova()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.range().len()
    }

    /// Whether the segment is empty (never, for a built bio).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Byte range inside the folio.
    pub fn range(&self) -> Range<usize> {
        self.part.range()
    }

    /// The folio (kept alive by the segment).
    pub fn folio(&self) -> Option<&FolioRef> {
        self.part.folio()
    }

    /// Whether the device writes into this segment (read command).
    pub fn is_read(&self) -> bool {
        self.part.direction() == Direction::Read
    }

    /// Host copy into a read segment (software devices); `data.len()` must
    /// equal [`Segment::len`].
    pub fn fill_from(&self, data: &[u8]) -> Result<(), DeviceError> {
        self.part
            .fill_from(data)
            .map_err(|e| DeviceError::InvalidBio(format!("fill segment: {e}")))
    }

    /// Host copy out of a write segment (software devices); `out.len()`
    /// must equal [`Segment::len`].
    pub fn copy_out(&self, out: &mut [u8]) -> Result<(), DeviceError> {
        self.part
            .copy_out(out)
            .map_err(|e| DeviceError::InvalidBio(format!("copy segment: {e}")))
    }

    /// Ends the segment's part with `result` (runs the folio state
    /// machine).
    pub fn complete(self, result: Result<(), Errno>) {
        self.part.complete(result);
    }
}

/// Called once when a bio completes, after its segments were completed.
pub type EndIo = Box<dyn FnOnce(&Result<(), DeviceError>) + Send>;

/// One device command. See the module documentation for the contract.
pub struct Bio {
    op: BioOp,
    lba: u64,
    blocks: u64,
    flags: BioFlags,
    segments: Vec<Segment>,
    end_io: Option<EndIo>,
    completed: bool,
}

impl fmt::Debug for Bio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bio")
            .field("op", &self.op)
            .field("lba", &self.lba)
            .field("blocks", &self.blocks)
            .field("flags", &self.flags)
            .field("segments", &self.segments.len())
            .field("end_io", &self.end_io.is_some())
            .finish()
    }
}

impl Bio {
    /// A read or write command over `segments` starting at `lba`; the
    /// length in LBAs is derived from the segments and `lba_size`.
    /// Fails if the segments do not add up to whole LBAs.
    pub fn new(
        op: BioOp,
        lba: u64,
        lba_size: u32,
        flags: BioFlags,
        segments: Vec<Segment>,
    ) -> Result<Self, DeviceError> {
        let bytes: usize = segments.iter().map(Segment::len).sum();
        if op == BioOp::Flush || bytes == 0 || !bytes.is_multiple_of(lba_size as usize) {
            return Err(DeviceError::InvalidBio(format!(
                "{op:?} of {bytes} bytes is not a positive multiple of {lba_size}-byte LBAs"
            )));
        }
        Ok(Bio {
            op,
            lba,
            blocks: (bytes / lba_size as usize) as u64,
            flags,
            segments,
            end_io: None,
            completed: false,
        })
    }

    /// An NVMe Flush.
    pub fn flush() -> Self {
        Bio {
            op: BioOp::Flush,
            lba: 0,
            blocks: 0,
            flags: BioFlags::SYNC,
            segments: Vec::new(),
            end_io: None,
            completed: false,
        }
    }

    /// Installs the end-io hook (replacing any earlier one).
    pub fn with_end_io(mut self, end_io: EndIo) -> Self {
        self.end_io = Some(end_io);
        self
    }

    /// The operation.
    pub fn op(&self) -> BioOp {
        self.op
    }

    /// Starting LBA.
    pub fn lba(&self) -> u64 {
        self.lba
    }

    /// Length in LBAs (0 for a flush).
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Data length in bytes.
    pub fn bytes(&self) -> usize {
        self.segments.iter().map(Segment::len).sum()
    }

    /// Hints.
    pub fn flags(&self) -> BioFlags {
        self.flags
    }

    /// The data segments, in transfer order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The data as `(iova, len)` pairs with iova-contiguous neighbours
    /// merged: what a PRP builder walks.
    pub fn dma_ranges(&self) -> Vec<(u64, usize)> {
        let mut out = Vec::with_capacity(self.segments.len());
        self.dma_ranges_into(&mut out);
        out
    }

    /// [`Bio::dma_ranges`] into `out` (cleared first), reusing its memory.
    pub fn dma_ranges_into(&self, out: &mut Vec<(u64, usize)>) {
        out.clear();
        for s in &self.segments {
            match out.last_mut() {
                Some((iova, len)) if *iova + *len as u64 == s.iova() => *len += s.len(),
                _ => out.push((s.iova(), s.len())),
            }
        }
    }

    /// Whether the data satisfies the PRP rules (R4) for `page_size`
    /// pages (`nvme_spec::prp::check_pieces`, the rule the driver applies):
    /// first range 4-byte aligned, later ranges page aligned, all but the
    /// last ending on a page boundary.
    pub fn is_prp_legal(&self, page_size: usize) -> bool {
        nvme_spec::prp::check_pieces(&self.dma_ranges(), page_size).is_ok()
    }

    /// Checks the bio against `geometry`: whole LBAs, PRP rules, at most
    /// `max_transfer` bytes. (The LBA range against the capacity is the
    /// device's to check: a command past the end completes with LBA Out
    /// of Range.)
    pub fn check(&self, geometry: &Geometry) -> Result<(), DeviceError> {
        if self.op == BioOp::Flush {
            return if self.segments.is_empty() {
                Ok(())
            } else {
                Err(DeviceError::InvalidBio("flush with data".into()))
            };
        }
        let bytes = self.bytes();
        if bytes as u64 != self.blocks * u64::from(geometry.lba_size) {
            return Err(DeviceError::InvalidBio(format!(
                "{bytes} data bytes for {} LBAs of {}",
                self.blocks, geometry.lba_size
            )));
        }
        if bytes > geometry.max_transfer as usize {
            return Err(DeviceError::InvalidBio(format!(
                "{bytes} bytes exceed max transfer {}",
                geometry.max_transfer
            )));
        }
        if !self.is_prp_legal(geometry.page_size as usize) {
            return Err(DeviceError::InvalidBio(format!(
                "segments {:?} break the PRP rules",
                self.dma_ranges()
            )));
        }
        let wrong_dir = self
            .segments
            .iter()
            .any(|s| s.is_read() != (self.op == BioOp::Read));
        if wrong_dir {
            return Err(DeviceError::InvalidBio(
                "segment direction differs from op".into(),
            ));
        }
        Ok(())
    }

    /// Ends the command: completes every segment with `result` (as an
    /// errno, R32), then runs the end-io hook.
    pub fn complete(mut self, result: Result<(), DeviceError>) {
        self.finish(result);
    }

    fn finish(&mut self, result: Result<(), DeviceError>) {
        if self.completed {
            return;
        }
        self.completed = true;
        if let Err(e) = &result {
            log::debug!(
                "{:?} lba {}+{} failed: {e} ({})",
                self.op,
                self.lba,
                self.blocks,
                e.errno()
            );
        }
        let errno = result.as_ref().map_err(DeviceError::errno).copied();
        for s in self.segments.drain(..) {
            s.complete(errno);
        }
        if let Some(end_io) = self.end_io.take() {
            end_io(&result);
        }
    }
}

impl Drop for Bio {
    fn drop(&mut self) {
        if !self.completed {
            self.finish(Err(DeviceError::Errno(Errno::Io)));
        }
    }
}

/// A command the device has finished.
#[derive(Debug)]
pub struct Completion {
    /// The command, handed back.
    pub bio: Bio,
    /// Its outcome.
    pub result: Result<(), DeviceError>,
}

impl Completion {
    /// Ends the command ([`Bio::complete`]).
    pub fn finish(self) {
        self.bio.complete(self.result);
    }
}

/// A queue of commands to one namespace. Object safe; see the module
/// documentation for the ownership and completion contract.
pub trait BlockDevice: Send + fmt::Debug {
    /// The namespace's geometry (constant while the device is open).
    fn geometry(&self) -> Geometry;

    /// Queues `bio`. On `Err` the bio is handed back untouched with the
    /// reason ([`DeviceError::Busy`]: poll and retry).
    #[allow(clippy::result_large_err)]
    fn submit(&mut self, bio: Bio) -> Result<(), (Bio, DeviceError)>;

    /// Makes every submitted command visible to the device (one doorbell
    /// write per batch, R7). Default: nothing to do.
    fn commit(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }

    /// Appends finished commands to `done` without blocking; returns how
    /// many were appended. `Err` only for a failure of the queue itself.
    fn poll(&mut self, done: &mut Vec<Completion>) -> Result<usize, DeviceError>;

    /// Like [`BlockDevice::poll`] but blocks until at least one command
    /// finished or `timeout` passed (then `Ok(0)`); returns `Ok(0)` at
    /// once when nothing is in flight.
    fn wait(&mut self, done: &mut Vec<Completion>, timeout: Duration)
    -> Result<usize, DeviceError>;

    /// Commands submitted and not yet handed back.
    fn in_flight(&self) -> usize;
}

/// A boxed device is a device (e.g. `Box<dyn BlockDevice>` behind a
/// [`Tap`](crate::Tap)).
impl<D: BlockDevice + ?Sized> BlockDevice for Box<D> {
    fn geometry(&self) -> Geometry {
        (**self).geometry()
    }

    fn submit(&mut self, bio: Bio) -> Result<(), (Bio, DeviceError)> {
        (**self).submit(bio)
    }

    fn commit(&mut self) -> Result<(), DeviceError> {
        (**self).commit()
    }

    fn poll(&mut self, done: &mut Vec<Completion>) -> Result<usize, DeviceError> {
        (**self).poll(done)
    }

    fn wait(
        &mut self,
        done: &mut Vec<Completion>,
        timeout: Duration,
    ) -> Result<usize, DeviceError> {
        (**self).wait(done, timeout)
    }

    fn in_flight(&self) -> usize {
        (**self).in_flight()
    }
}

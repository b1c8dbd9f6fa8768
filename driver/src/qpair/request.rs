//! Requests, completions and rejections: what a caller hands a queue pair
//! and gets back.

use nvme_spec::{DsmHints, RwFlags};

use crate::error::{Error, Result};
use crate::memory::DmaBuffer;

/// The operation of an [`IoRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// Read blocks into the request's buffer.
    Read,
    /// Write blocks from the request's buffer.
    Write,
    /// Flush the namespace's volatile write cache.
    Flush,
    /// Write zeroes to a block range, with no data transfer.
    WriteZeroes,
    /// Deallocate (trim) a block range (Dataset Management, AD).
    Deallocate,
}

impl IoOp {
    pub(super) fn name(self) -> &'static str {
        match self {
            IoOp::Read => "Read",
            IoOp::Write => "Write",
            IoOp::Flush => "Flush",
            IoOp::WriteZeroes => "Write Zeroes",
            IoOp::Deallocate => "Deallocate",
        }
    }
}

/// Device-addressable memory that a request reads into or writes from
/// without being one [`DmaBuffer`]: e.g. pieces of page-cache folios, as
/// (device address, length) pairs in order. The queue pair holds the value
/// until the request completes and hands it back in the
/// [`IoCompletion`], so a caller can refill the same list for its next
/// request (no allocation per I/O). Whatever keeps the memory alive and
/// IOMMU-mapped may travel inside as the owner, or stay with the caller
/// until the completion.
///
/// The pieces must make legal PRPs ([`nvme_spec::prp::check_pieces`]):
/// the first starts on a dword, and a piece either continues the one
/// before it or both meet on page boundaries. Wrong addresses cannot break
/// memory safety (the device only reaches what the IOMMU maps, and the CPU
/// never holds references to DMA memory), only the data.
#[derive(Debug, Default)]
pub struct IoSegments {
    pieces: Vec<(u64, usize)>,
    /// Kept for its drop: what keeps the pieces alive, if the caller
    /// handed it over.
    _owner: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl IoSegments {
    /// Pieces whose memory the caller keeps alive until the completion.
    pub fn new(pieces: Vec<(u64, usize)>) -> Self {
        IoSegments {
            pieces,
            _owner: None,
        }
    }

    /// Pieces and the value that keeps their memory alive (dropped with
    /// the segments; never, if the device may still write there).
    pub fn with_owner(pieces: Vec<(u64, usize)>, owner: impl std::any::Any + Send + Sync) -> Self {
        IoSegments {
            pieces,
            _owner: Some(Box::new(owner)),
        }
    }

    /// Checks that `pieces` can be one request's data as they are (the
    /// PRP rule, [`nvme_spec::prp::check_pieces`] at the driver's page
    /// size); returns their total length. A caller with memory that
    /// breaks the rule (a scatter list from a guest, say) copies it
    /// through a bounce buffer instead.
    pub fn check(pieces: &[(u64, usize)]) -> Result<usize> {
        super::path::check_segments(pieces)
    }

    /// (device address, length) of each piece, in order.
    pub fn pieces(&self) -> &[(u64, usize)] {
        &self.pieces
    }

    /// The list of pieces, for reuse (its allocation with it).
    pub fn into_pieces(self) -> Vec<(u64, usize)> {
        self.pieces
    }
}

/// Per-command hints of a Read or Write, sent in every command of the
/// request (a split request carries them in each piece): the CDW12
/// control bits (FUA: the data is on non-volatile media when the command
/// completes; Limited Retry: fail fast rather than retry hard) and the
/// CDW13 Dataset Management hints (access frequency and latency,
/// sequential, incompressible). What Linux's NVMe driver sends for a
/// readahead is [`IoHints::READAHEAD`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoHints {
    /// FUA and Limited Retry (CDW12 bits 30 and 31).
    pub flags: RwFlags,
    /// Dataset Management hints (CDW13 bits 7:0).
    pub dsm: DsmHints,
}

impl IoHints {
    /// No hints.
    pub const NONE: IoHints = IoHints {
        flags: RwFlags::empty(),
        dsm: DsmHints::NONE,
    };

    /// A readahead (REQ_RAHEAD in Linux's `nvme_setup_rw`): Limited Retry
    /// and access frequency "speculative read (prefetch)".
    pub const READAHEAD: IoHints = IoHints {
        flags: RwFlags::LIMITED_RETRY,
        dsm: DsmHints::PREFETCH,
    };

    /// Force Unit Access (REQ_FUA).
    pub const FUA: IoHints = IoHints {
        flags: RwFlags::FUA,
        dsm: DsmHints::NONE,
    };

    /// Whether there is no hint at all.
    pub fn is_none(&self) -> bool {
        *self == IoHints::NONE
    }
}

/// One I/O request. Read and Write carry a DMA buffer (or a list of
/// segments), which the queue pair owns until the request completes.
#[derive(Debug)]
pub struct IoRequest {
    /// What to do.
    pub op: IoOp,
    /// Namespace id.
    pub nsid: u32,
    /// First logical block.
    pub slba: u64,
    /// Number of logical blocks (0 for Flush).
    pub blocks: u64,
    /// The data buffer (Read and Write).
    pub data: Option<DmaBuffer>,
    /// Byte offset of the data in `data` or `segments` (a multiple of 4).
    pub offset: usize,
    /// The data as a list of device-addressed pieces, instead of `data`.
    pub segments: Option<IoSegments>,
    /// Caller's value, handed back in the completion.
    pub tag: u64,
    /// FUA / Limited Retry / Dataset Management hints (Read and Write
    /// only: a request of another operation with hints is rejected).
    pub hints: IoHints,
}

impl IoRequest {
    fn new(op: IoOp, nsid: u32, slba: u64, blocks: u64, data: Option<DmaBuffer>) -> Self {
        IoRequest {
            op,
            nsid,
            slba,
            blocks,
            data,
            offset: 0,
            segments: None,
            tag: 0,
            hints: IoHints::NONE,
        }
    }

    /// Read `blocks` blocks from `slba` into `buf`.
    pub fn read(nsid: u32, slba: u64, blocks: u64, buf: DmaBuffer) -> Self {
        Self::new(IoOp::Read, nsid, slba, blocks, Some(buf))
    }

    /// Write `blocks` blocks from `buf` at `slba`.
    pub fn write(nsid: u32, slba: u64, blocks: u64, buf: DmaBuffer) -> Self {
        Self::new(IoOp::Write, nsid, slba, blocks, Some(buf))
    }

    /// Read `blocks` blocks from `slba` into the pieces of `segments`.
    pub fn read_segments(nsid: u32, slba: u64, blocks: u64, segments: IoSegments) -> Self {
        IoRequest {
            segments: Some(segments),
            ..Self::new(IoOp::Read, nsid, slba, blocks, None)
        }
    }

    /// Write `blocks` blocks at `slba` from the pieces of `segments`.
    pub fn write_segments(nsid: u32, slba: u64, blocks: u64, segments: IoSegments) -> Self {
        IoRequest {
            segments: Some(segments),
            ..Self::new(IoOp::Write, nsid, slba, blocks, None)
        }
    }

    /// Flush the namespace.
    pub fn flush(nsid: u32) -> Self {
        Self::new(IoOp::Flush, nsid, 0, 0, None)
    }

    /// Write zeroes to `blocks` blocks from `slba`.
    pub fn write_zeroes(nsid: u32, slba: u64, blocks: u64) -> Self {
        Self::new(IoOp::WriteZeroes, nsid, slba, blocks, None)
    }

    /// Deallocate `blocks` blocks from `slba`.
    pub fn deallocate(nsid: u32, slba: u64, blocks: u64) -> Self {
        Self::new(IoOp::Deallocate, nsid, slba, blocks, None)
    }

    /// Sets the tag handed back in the completion.
    pub fn with_tag(mut self, tag: u64) -> Self {
        self.tag = tag;
        self
    }

    /// Sets the byte offset of the data in the buffer.
    pub fn with_offset(mut self, offset: usize) -> Self {
        self.offset = offset;
        self
    }

    /// Sets the command hints (Read and Write only).
    pub fn with_hints(mut self, hints: IoHints) -> Self {
        self.hints = hints;
        self
    }

    /// The completion handing this request back with `result` (and its
    /// data buffer or segments, whatever the request still holds).
    pub(super) fn into_completion(self, result: Result<()>) -> IoCompletion {
        IoCompletion {
            tag: self.tag,
            op: self.op,
            nsid: self.nsid,
            slba: self.slba,
            blocks: self.blocks,
            data: self.data,
            segments: self.segments,
            result,
        }
    }

    pub(super) fn describe(&self) -> String {
        match self.op {
            IoOp::Flush => format!("Flush nsid {}", self.nsid),
            op => format!(
                "{} nsid {} lba {}+{}",
                op.name(),
                self.nsid,
                self.slba,
                self.blocks
            ),
        }
    }
}

/// A finished request: its buffer comes back with the result.
#[derive(Debug)]
pub struct IoCompletion {
    /// The request's tag.
    pub tag: u64,
    /// The request's operation.
    pub op: IoOp,
    /// The request's namespace.
    pub nsid: u32,
    /// The request's first block.
    pub slba: u64,
    /// The request's block count.
    pub blocks: u64,
    /// The data buffer, back to the caller. `None` only if the device may
    /// still write into it (a command given up on after a timeout): then
    /// the queue pair keeps it until the queue is deleted.
    pub data: Option<DmaBuffer>,
    /// The request's segments, back to the caller (same rule as `data`).
    pub segments: Option<IoSegments>,
    /// Success, or the first error of the request's commands.
    pub result: Result<()>,
}

/// A request that could not be accepted, handed back with the reason.
#[derive(Debug)]
pub struct Rejected {
    /// The request, with its buffer.
    pub request: IoRequest,
    /// Why it was rejected.
    pub error: Error,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.request.describe(), self.error)
    }
}

impl std::error::Error for Rejected {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// A Read or Write on a buffer registered with the queue pair
/// ([`IoQPair::register_buffers`], like io_uring's fixed buffers): plain
/// data, copied in and out, so submitting and completing it moves no
/// buffer ownership. The buffer is named by its index in the registered
/// table; the queue pair keeps it alive and mapped while it is registered.
///
/// [`IoQPair::register_buffers`]: super::IoQPair::register_buffers
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedIo {
    /// [`IoOp::Read`] or [`IoOp::Write`].
    pub op: IoOp,
    /// Namespace id.
    pub nsid: u32,
    /// First logical block.
    pub slba: u64,
    /// Number of logical blocks.
    pub blocks: u32,
    /// Index of the registered buffer.
    pub buffer: u32,
    /// Byte offset of the data in the buffer (a multiple of 4).
    pub offset: u32,
    /// Caller's value, handed back in the completion.
    pub tag: u64,
}

impl FixedIo {
    /// Read `blocks` blocks from `slba` into registered buffer `buffer`.
    pub fn read(nsid: u32, slba: u64, blocks: u32, buffer: u32) -> Self {
        FixedIo {
            op: IoOp::Read,
            nsid,
            slba,
            blocks,
            buffer,
            offset: 0,
            tag: 0,
        }
    }

    /// Write `blocks` blocks at `slba` from registered buffer `buffer`.
    pub fn write(nsid: u32, slba: u64, blocks: u32, buffer: u32) -> Self {
        FixedIo {
            op: IoOp::Write,
            ..Self::read(nsid, slba, blocks, buffer)
        }
    }

    /// Sets the tag handed back in the completion.
    pub fn with_tag(mut self, tag: u64) -> Self {
        self.tag = tag;
        self
    }

    /// Sets the byte offset of the data in the buffer.
    pub fn with_offset(mut self, offset: u32) -> Self {
        self.offset = offset;
        self
    }

    pub(super) fn describe(&self) -> String {
        format!(
            "{} nsid {} lba {}+{} (registered buffer {})",
            self.op.name(),
            self.nsid,
            self.slba,
            self.blocks,
            self.buffer
        )
    }
}

/// A finished [`FixedIo`]: its tag and result (the buffer stays
/// registered).
#[derive(Debug)]
pub struct FixedCompletion {
    /// The request's tag.
    pub tag: u64,
    /// Success, or the first error of the request's commands.
    pub result: Result<()>,
}

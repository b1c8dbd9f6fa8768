//! Errors of the page cache, and the error values it records for I/O.
//!
//! Rule ids (R.., X.., K.., T..): docs/MPAGE.md.

use std::fmt;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error value an I/O failure leaves behind: in a folio (read or
/// writeback failure) and in a file's writeback error sequence (X1).
///
/// The NVMe status to errno table of R32 lives in the I/O layer; the cache
/// only stores the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Errno {
    /// EIO: anything not listed below (R32 "anything else").
    Io,
    /// ENOSPC: NVMe Capacity Exceeded (R32).
    NoSpace,
    /// ENODATA: medium errors (R32).
    NoData,
    /// EILSEQ: protection information check failures (R32).
    IlSeq,
    /// EREMOTEIO: LBA out of range, namespace not ready, interrupted (R32).
    RemoteIo,
    /// EOPNOTSUPP: invalid opcode/field/namespace (R32).
    NotSupported,
    /// ENOLINK: host path error (R32).
    NoLink,
}

impl Errno {
    /// The Linux errno number, for logs and for APIs that return one.
    pub const fn raw(self) -> i32 {
        match self {
            Errno::Io => 5,
            Errno::NoSpace => 28,
            Errno::NoData => 61,
            Errno::IlSeq => 84,
            Errno::RemoteIo => 121,
            Errno::NotSupported => 95,
            Errno::NoLink => 67,
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Errno::Io => "EIO",
            Errno::NoSpace => "ENOSPC",
            Errno::NoData => "ENODATA",
            Errno::IlSeq => "EILSEQ",
            Errno::RemoteIo => "EREMOTEIO",
            Errno::NotSupported => "EOPNOTSUPP",
            Errno::NoLink => "ENOLINK",
        };
        f.write_str(name)
    }
}

/// Errors returned by the page cache.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The folio memory provider failed (allocation or copy).
    #[error("folio memory: {0}")]
    Memory(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A folio order outside 0..=9 (4 KiB..2 MiB).
    #[error("folio order {0} is outside 0..=9")]
    BadOrder(u8),
    /// A block size that is not a power of two in 512..=4096.
    #[error("block size {0} is not a power of two in 512..=4096")]
    BadBlockSize(usize),
    /// A byte range that does not fit the folio, or is not block aligned
    /// where it must be.
    #[error("range {offset}+{len} is invalid for a {size}-byte folio ({why})")]
    BadRange {
        /// Start of the range inside the folio.
        offset: usize,
        /// Length of the range.
        len: usize,
        /// Folio size.
        size: usize,
        /// Which rule it breaks.
        why: &'static str,
    },
    /// A folio index not aligned to the folio's order.
    #[error("folio index {index} is not aligned to order {order}")]
    Misaligned {
        /// Page index.
        index: u64,
        /// Folio order.
        order: u8,
    },
    /// The page range is already (partly) cached by another folio.
    #[error("pages {start}..{end} overlap a cached folio")]
    Overlap {
        /// First page index of the new folio.
        start: u64,
        /// One past its last page index.
        end: u64,
    },
    /// The file is not registered with this cache.
    #[error("unknown file {0:?}")]
    UnknownFile(crate::FileId),
    /// The operation needs data that is not uptodate (R45: a block is never
    /// marked uptodate unless it was fully read, zeroed or overwritten).
    #[error("bytes {offset}+{len} of the folio are not uptodate")]
    NotUptodate {
        /// Start of the range.
        offset: usize,
        /// Length.
        len: usize,
    },
    /// The folio is under writeback; writeback may not be started twice
    /// (R23, X3).
    #[error("folio is already under writeback")]
    UnderWriteback,
    /// The memory budget is used up by folios that cannot be evicted
    /// (dirty, locked, under writeback or pinned): write back and retry.
    #[error("page cache full: {used} of {budget} bytes in use, nothing evictable")]
    CacheFull {
        /// Bytes in use.
        used: u64,
        /// Budget in bytes.
        budget: u64,
    },
    /// Dirty limits with background above the hard limit, or ratios above 100.
    #[error("invalid dirty limits: {0}")]
    BadDirtyLimits(&'static str),
}

//! Errors of the mpage layer.
//!
//! Rule ids (R.., X.., K.., T..): docs/MPAGE.md.

use pagecache::Errno;

use crate::device::DeviceError;
use crate::map::MapError;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors returned by the read, writeback and sync engines.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The device refused a command or its queue failed.
    #[error("{context}: {source}")]
    Device {
        /// What was being done.
        context: &'static str,
        /// The device's reason.
        #[source]
        source: DeviceError,
    },
    /// The block mapper failed.
    #[error("mapping file offset {pos}: {source}")]
    Map {
        /// File offset being mapped.
        pos: u64,
        /// The mapper's reason.
        #[source]
        source: MapError,
    },
    /// A page cache operation failed.
    #[error("{context}: {source}")]
    Cache {
        /// What was being done.
        context: &'static str,
        /// The cache's reason.
        #[source]
        source: pagecache::Error,
    },
    /// The file's block size is smaller than the device LBA (R1).
    #[error("block size {block} is smaller than the device LBA size {lba}")]
    BlockTooSmall {
        /// File block size.
        block: usize,
        /// Device LBA size.
        lba: u32,
    },
    /// An I/O error reported to the caller as an errno (a failed read, a
    /// writeback error seen by fsync, X1).
    #[error("I/O error {0}")]
    Io(Errno),
    /// A request the API cannot take (a range outside one folio, a
    /// position overflowing the file).
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    /// Completions did not arrive in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
}

impl Error {
    /// The errno a POSIX-style caller would see.
    pub fn errno(&self) -> Errno {
        match self {
            Error::Device { source, .. } => source.errno(),
            Error::Map { source, .. } => source.errno(),
            Error::Io(e) => *e,
            _ => Errno::Io,
        }
    }

    /// Whether this is the page cache's [`pagecache::Error::CacheFull`]:
    /// nothing could be evicted to make room (write back, then retry).
    pub fn is_cache_full(&self) -> bool {
        matches!(
            self,
            Error::Cache {
                source: pagecache::Error::CacheFull { .. },
                ..
            }
        )
    }

    pub(crate) fn cache(context: &'static str) -> impl FnOnce(pagecache::Error) -> Error {
        move |source| Error::Cache { context, source }
    }
}

impl From<DeviceError> for Error {
    fn from(source: DeviceError) -> Self {
        Error::Device {
            context: "building a command",
            source,
        }
    }
}

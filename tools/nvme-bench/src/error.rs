//! nvme-bench's errors: what the flags ask that the device or the run
//! cannot do, and what failed while running, with the library error as
//! its source where there is one.

/// Why a run could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The flags ask for something this device or this mode cannot do.
    #[error("{0}")]
    Usage(String),
    /// The job's workload generates no I/O.
    #[error(transparent)]
    Spec(#[from] nvme_bench::workload::SpecError),
    /// The driver failed an operation.
    #[error(transparent)]
    Driver(#[from] nvme_driver::Error),
    /// The driver handed a request back.
    #[error(transparent)]
    Rejected(#[from] Box<nvme_driver::Rejected>),
    /// mpage's NVMe device failed (cache mode).
    #[error(transparent)]
    Device(#[from] mpage::DeviceError),
    /// A page cache file operation failed (cache mode).
    #[error("{what}: {source}")]
    Cache {
        /// What was being done.
        what: String,
        /// mpage's error.
        #[source]
        source: mpage::Error,
    },
    /// The page cache could not be set up.
    #[error("page cache: {0}")]
    PageCache(#[from] pagecache::Error),
    /// The page cache's memory could not be mapped before the run.
    #[error("reserving the cache's memory: {0}")]
    Reserve(#[source] pagecache::Error),
    /// The flusher's queue pair could not be opened (cache mode).
    #[error("flusher: {0}")]
    Flusher(#[source] Box<Error>),
    /// A write of the prefill (the pattern written over the range first, so
    /// that reads can be checked) failed.
    #[error("prefill: {0}")]
    Prefill(#[source] nvme_driver::Error),
    /// A libblkio call failed (`--vhost-user`).
    #[error("vhost-user: {call}: {source}")]
    Blkio {
        /// The call or the property.
        call: &'static str,
        /// libblkio's error.
        #[source]
        source: blkio::Error,
    },
    /// An operating-system call failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An I/O's result is wrong: an error status, a short transfer, or
    /// data that fails verification.
    #[error("{0}")]
    Failed(String),
    /// One bench thread failed.
    #[error("thread {thread}: {source}")]
    Thread {
        /// The bench thread.
        thread: usize,
        /// Why.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// `e`, as bench thread `thread`'s failure.
    pub(crate) fn thread(thread: usize, e: impl Into<Error>) -> Error {
        Error::Thread {
            thread,
            source: Box::new(e.into()),
        }
    }

    /// A page cache operation's failure, with what was being done.
    pub(crate) fn cache(what: impl Into<String>) -> impl FnOnce(mpage::Error) -> Error {
        let what = what.into();
        move |source| Error::Cache { what, source }
    }

    /// An OS call's failure, with what was being done.
    pub(crate) fn os(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Os { what, source }
    }

    /// A libblkio call's failure.
    pub(crate) fn blkio(call: &'static str) -> impl FnOnce(blkio::Error) -> Error {
        move |source| Error::Blkio { call, source }
    }
}

/// nvme-bench's results.
pub(crate) type Result<T> = std::result::Result<T, Error>;

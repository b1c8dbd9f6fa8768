//! The driver's errors.

use std::path::PathBuf;

use nvme_spec::{Csts, Status};

/// Result with the driver's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// A step of controller bring-up, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitStep {
    /// Opening the VFIO container, group and device.
    OpenDevice,
    /// Mapping BAR0.
    MapBar,
    /// Clearing CC.EN and waiting for CSTS.RDY to clear.
    Disable,
    /// Allocating the admin queues and programming AQA/ASQ/ACQ.
    AdminQueues,
    /// Setting CC.EN and waiting for CSTS.RDY.
    Enable,
    /// Identify Controller.
    IdentifyController,
    /// Doorbell Buffer Config (shadow doorbells).
    ShadowDoorbells,
    /// Set Features (Number of Queues).
    SetQueueCount,
    /// Posting Asynchronous Event Requests.
    AsyncEvents,
    /// Identify of the active namespaces.
    IdentifyNamespaces,
    /// Creating an I/O completion/submission queue pair.
    CreateIoQueues,
}

impl std::fmt::Display for InitStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InitStep::OpenDevice => "open device",
            InitStep::MapBar => "map BAR0",
            InitStep::Disable => "disable controller",
            InitStep::AdminQueues => "set up admin queues",
            InitStep::Enable => "enable controller",
            InitStep::IdentifyController => "identify controller",
            InitStep::ShadowDoorbells => "set up shadow doorbells",
            InitStep::SetQueueCount => "set number of queues",
            InitStep::AsyncEvents => "post asynchronous event requests",
            InitStep::IdentifyNamespaces => "identify namespaces",
            InitStep::CreateIoQueues => "create I/O queues",
        })
    }
}

/// Everything that can go wrong between the caller and the device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No PCI function at that address.
    #[error("no PCI device {bdf} (see `nvmectl list`)")]
    NoSuchDevice {
        /// The address asked for.
        bdf: String,
    },
    /// The address is not of the form `dddd:bb:dd.f` (or `bb:dd.f`).
    #[error("`{0}` is not a PCI address (expected e.g. 0000:00:03.0)")]
    BadAddress(String),
    /// The function is not an NVMe controller.
    #[error("{bdf} is not an NVMe controller (class {class})")]
    NotNvme {
        /// The address.
        bdf: String,
        /// Its PCI class code.
        class: String,
    },
    /// The controller is bound to another driver than vfio-pci.
    #[error("{bdf} is bound to {}, not vfio-pci; bind it first: nvmectl bind {bdf}", driver.as_deref().unwrap_or("no driver"))]
    NotBoundToVfio {
        /// The address.
        bdf: String,
        /// The driver it is bound to, if any.
        driver: Option<String>,
    },
    /// The function has no IOMMU group: no IOMMU, or it is off.
    #[error(
        "{bdf} has no IOMMU group: enable the IOMMU (intel_iommu=on / amd_iommu=on) so vfio-pci can be used"
    )]
    NoIommuGroup {
        /// The address.
        bdf: String,
    },
    /// No controller given and not exactly one bound to vfio-pci.
    #[error("{0}")]
    Ambiguous(String),
    /// A sysfs or device file operation failed.
    #[error("{what} {path}: {source}")]
    Sysfs {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A VFIO operation failed.
    #[error("VFIO: {what}: {source}")]
    Vfio {
        /// What was being done.
        what: String,
        /// The error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// Pinning DMA memory failed for lack of locked-memory allowance.
    #[error(
        "cannot pin {bytes} bytes of DMA memory: {source} (RLIMIT_MEMLOCK is {}; raise it, e.g. `ulimit -l unlimited`, or run with CAP_IPC_LOCK)",
        limit.map_or("unknown".to_string(), |l| format!("{l} bytes"))
    )]
    Memlock {
        /// The size asked for.
        bytes: usize,
        /// The locked-memory limit in force, if known.
        limit: Option<u64>,
        /// The error.
        source: std::io::Error,
    },
    /// The IOVA space has no room for a mapping.
    #[error("no free IOVA range of {0} bytes")]
    IovaExhausted(usize),
    /// The controller did not reach a state in time.
    #[error("{step}: timed out after {waited_ms} ms (CSTS {csts:#x})")]
    Timeout {
        /// The bring-up step.
        step: InitStep,
        /// How long we waited.
        waited_ms: u64,
        /// The last CSTS read.
        csts: u32,
    },
    /// The controller reported fatal status or vanished.
    #[error("{step}: controller failed (CSTS {:#x}{})", .csts.0, if .csts.is_all_ones() { ", device gone" } else if .csts.fatal() { ", CFS" } else { "" })]
    ControllerFatal {
        /// What was being done.
        step: String,
        /// The CSTS read.
        csts: Csts,
    },
    /// The device was taken away (hot-unplug, `remove` in sysfs): the
    /// platform asked for it back through VFIO's device request interrupt
    /// and the driver released it. Every request outstanding then, and
    /// every one after, fails with this.
    #[error("{bdf}: device removed (the system asked for it back; the driver released it)")]
    DeviceRemoved {
        /// The controller's address.
        bdf: String,
    },
    /// A bring-up step failed for another reason.
    #[error("{step}: {source}")]
    Init {
        /// The bring-up step.
        step: InitStep,
        /// Why.
        source: Box<Error>,
    },
    /// The controller lacks something the driver needs.
    #[error("controller not supported: {0}")]
    Unsupported(String),
    /// The device returned a value that cannot be right.
    #[error("device returned nonsense: {0}")]
    BadDevice(String),
    /// A command completed with an error status.
    #[error("{command} failed: {status}")]
    Command {
        /// The command, e.g. `Read nsid 1 lba 8+16`.
        command: String,
        /// The decoded status.
        status: Status,
    },
    /// A command did not complete in time.
    #[error("{command}: no completion within {waited_ms} ms")]
    CommandTimeout {
        /// The command.
        command: String,
        /// How long we waited.
        waited_ms: u64,
    },
    /// Every I/O queue pair the controller granted is in use.
    #[error("all {granted} I/O queue pairs the controller granted are in use; drop one first")]
    QueuesExhausted {
        /// How many the controller granted.
        granted: usize,
    },
    /// The submission queue is full.
    #[error("submission queue {qid} is full")]
    QueueFull {
        /// The queue.
        qid: u16,
    },
    /// No such namespace.
    #[error("namespace {nsid} is not active on this controller (active: {active})")]
    NoSuchNamespace {
        /// The namespace asked for.
        nsid: u32,
        /// The active ones.
        active: String,
    },
    /// An LBA range outside the namespace.
    #[error("LBA range {slba}+{blocks} is past the end of namespace {nsid} ({capacity} blocks)")]
    LbaOutOfRange {
        /// The namespace.
        nsid: u32,
        /// First block.
        slba: u64,
        /// Number of blocks.
        blocks: u64,
        /// The namespace size in blocks.
        capacity: u64,
    },
    /// A buffer that does not fit the request.
    #[error("{0}")]
    BadBuffer(String),
    /// A request the driver cannot send as asked (e.g. hints on an
    /// operation that has no field for them).
    #[error("{0}")]
    BadRequest(String),
}

impl Error {
    pub(crate) fn sysfs(
        what: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Sysfs {
            what,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn os(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Os {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn vfio(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Vfio {
            what: what.into(),
            source: Box::new(source),
        }
    }

    pub(crate) fn at(self, step: InitStep) -> Self {
        match self {
            // Already naming their step, or about the caller's input.
            e @ (Error::Timeout { .. }
            | Error::Init { .. }
            | Error::NoSuchDevice { .. }
            | Error::NotNvme { .. }
            | Error::NotBoundToVfio { .. }
            | Error::NoIommuGroup { .. }) => e,
            e => Error::Init {
                step,
                source: Box::new(e),
            },
        }
    }
}

//! Boots a QEMU guest with an emulated NVMe controller bound to vfio-pci and
//! runs one command in it.
//!
//! The pieces, in the order a run uses them:
//! - [`versions`]: which QEMU and guest kernel (the host's release or its backports).
//! - [`host`]: installs what the host is missing (QEMU, busybox) from Debian's packages;
//!   [`apt`] downloads packages through the host's apt or a private setup.
//! - [`kernel`]: the Debian guest kernel and the modules the guest loads, cached;
//!   [`modules`] works out their load order.
//! - [`guest_build`]: the project's binaries, built static for the guest.
//! - [`initramfs`]: the newc archives the guest boots from.
//! - [`vm`]: the QEMU command line, the run and its outcome.
//!
//! The guest talks to the host over four serial ports: ttyS0 is the kernel
//! console (kept in a log file), ttyS1 and ttyS2 carry the command's stdout
//! and stderr, and ttyS3 carries its exit status.
//!
//! A test can also act on the guest while it runs ([`VmConfig::run_with`]):
//! its closure gets a [`RunningGuest`], which waits for lines in the
//! guest's output and connects to QEMU's monitor ([`qmp`]) on a unix
//! socket in the run's folder, for `qemu-io` on a drive (blkdebug
//! breakpoints), `block_set_io_throttle`, `device_del` and so on.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod apt;
pub mod error;
pub mod guest_build;
pub mod host;
pub mod initramfs;
pub mod kernel;
pub mod modules;
pub mod qmp;
pub mod versions;
pub mod vm;

pub use error::{Error, Result};
pub use qmp::{Qmp, QmpError};
pub use versions::Suite;
pub use vm::{
    GuestDriver, GuestExit, GuestStream, IommuMode, NVME_BDF_ROOT_PORT, NVME_DEVICE_ID, NsDisk,
    OutputMode, RunningGuest, TcgThreads, VmConfig, VmRun, drive_id,
};

use std::path::PathBuf;

/// The workspace root (the folder holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Where cached guest assets live (kernel, modules, base initramfs).
///
/// `NVME_VM_CACHE` overrides the default `target/vm-cache` in the workspace.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("NVME_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target").join("vm-cache"))
}

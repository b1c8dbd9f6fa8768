//! A userspace NVMe driver over VFIO.
//!
//! Reading order for newcomers:
//! - [`pci`]: finding NVMe functions in sysfs, binding them to vfio-pci.
//! - [`device`]: the device boundary ([`device::DeviceBacking`]: BAR0,
//!   config space, DMA mapping, interrupts), implemented by the VFIO
//!   device and by controllers emulated in this process (the mock).
//! - `vfio` and `hw`: opening the device, mapping BAR0, DMA memory mapped
//!   through the IOMMU. All of the crate's `unsafe` is in `hw`.
//! - [`memory`]: the DMA buffer pool.
//! - `queue` and `prp`: the submission/completion rings and the PRP lists
//!   that describe data buffers to the controller.
//! - [`Controller`]: bring-up, admin commands, shutdown; hands out
//!   [`IoQPair`]s, one per thread, for asynchronous I/O.
//!
//! ```no_run
//! use nvme_driver::{Controller, Options, pci};
//! let f = pci::single_vfio_function()?;
//! let ctrl = Controller::open(f.address, Options::default())?;
//! let mut qpair = ctrl.io_qpair()?;
//! let mut block = vec![0u8; 512];
//! qpair.read(1, 0, &mut block)?;
//! # Ok::<(), nvme_driver::Error>(())
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod admin;
mod ctrl;
pub mod device;
#[cfg(any(test, feature = "test-utils"))]
pub mod device_data;
#[cfg(not(any(test, feature = "test-utils")))]
mod device_data;
mod enable;
mod error;
mod hw;
pub mod iova;
pub mod memory;
#[cfg(any(test, feature = "test-utils"))]
pub mod mock;
mod ns;
pub mod pci;
mod prp;
mod qpair;
mod queue;
mod quiesce;
mod removal;
mod vfio;

pub use ctrl::{Controller, Options, PAGE_SIZE, UNLIMITED_MDTS_TRANSFER};
pub use error::{Error, InitStep, Result};
pub use hw::dma::ExternalDma;
pub use memory::{DmaBuffer, DmaPool};
pub use ns::Namespace;
pub use nvme_spec;
pub use pci::{PciAddress, PciFunction};
pub use qpair::{
    FixedCompletion, FixedIo, FloorJob, FloorResult, IoCompletion, IoHints, IoOp, IoQPair,
    IoRequest, IoSegments, Recovery, RecoveryCause, RecoveryOutcome, Rejected,
};
pub use queue::PathCounters;

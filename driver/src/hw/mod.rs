//! Everything that touches memory the device can see or the kernel's VFIO
//! interface directly. The rest of the crate is safe code.
//!
//! Invariants this module keeps:
//! - [`mmio::MmioBar`] owns a live `mmap` of a BAR for its whole lifetime;
//!   every access is bounds- and alignment-checked and volatile.
//! - [`dma::DmaRegion`] owns an anonymous mapping that is pinned and mapped
//!   into the IOMMU at a fixed IOVA for its whole lifetime. Its bytes are
//!   only read and written through raw pointers (volatile, or bulk copies);
//!   no Rust reference to device-visible memory is ever created, because the
//!   device may write it at any time.
//! - For a device emulated in this process (`crate::device::HostMemory`,
//!   used by the mock controller): `dma::HostMapper` maps IOVA = VA and
//!   lets the emulation copy to and from live mappings (and nowhere else),
//!   again only through raw pointers.
//! - [`vfio_sys`] wraps the few VFIO ioctls and file operations that the
//!   vfio-ioctls crate does not offer (IOMMU info, config space, BAR mmap).
#![allow(unsafe_code)]

pub(crate) mod dma;
pub(crate) mod mmio;
pub(crate) mod vfio_sys;

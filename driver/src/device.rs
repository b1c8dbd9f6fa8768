//! The device boundary: everything the driver asks of the PCI function
//! behind a controller, as one interface ([`DeviceBacking`]).
//!
//! - BAR0, the registers and doorbells ([`Bar`]);
//! - PCI configuration space (the command register: bus mastering);
//! - DMA: how host memory is made visible to the device ([`DmaMapping`]);
//! - MSI-X interrupts routed to eventfds.
//!
//! Two backings implement it: the VFIO device (the real path: BAR0 is an
//! `mmap` of the device file, DMA goes through the IOMMU), and a device
//! emulated in this process, such as the crate's mock controller (BAR0 is
//! an [`EmulatedBar`], DMA is [`HostMemory`]: IOVA = VA). The driver's
//! code paths — bring-up, reset, shadow doorbells, status checks — are the
//! same for both: [`crate::Controller::with_device`] runs them on any
//! backing, [`crate::Controller::open`] on VFIO.
//!
//! The I/O path only writes doorbells, through [`Bar`]: an enum of the two
//! kinds of BAR, so a doorbell is a branch and a volatile store on VFIO
//! (no dynamic call); only an emulated BAR pays a call into the emulation.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::error::{Error, Result};
use crate::hw::dma::{DmaMapper, HostMapper};
use crate::hw::mmio::MmioBar;
use crate::pci::PciAddress;

/// The PCI function behind a controller, as the driver uses it. See the
/// module docs.
pub trait DeviceBacking: Send + Sync + std::fmt::Debug + 'static {
    /// The function's address (it names the controller in logs and errors).
    fn address(&self) -> PciAddress;
    /// Reads a 16-bit register of PCI configuration space.
    fn config_read16(&self, offset: u16) -> Result<u16>;
    /// Writes a 16-bit register of PCI configuration space.
    fn config_write16(&self, offset: u16, value: u16) -> Result<()>;
    /// BAR0: the controller registers and the doorbells (called once).
    fn map_bar0(&self) -> Result<Bar>;
    /// How host memory is made visible to the device.
    fn dma(&self) -> DmaMapping;
    /// MSI-X vectors the function has (0: none, queues are polled only).
    fn msix_vectors(&self) -> u32;
    /// Routes MSI-X vectors `0..fds.len()` to the eventfds.
    fn enable_msix(&self, fds: &[Arc<EventFd>]) -> Result<()>;
    /// An eventfd the platform signals when it wants the device back
    /// (VFIO's device request interrupt: `remove` in sysfs, hot-unplug).
    /// None: the backing sends no such request. Called once, at bring-up.
    fn removal_request(&self) -> Result<Option<Arc<EventFd>>> {
        Ok(None)
    }
    /// Gives the device back after a removal request: closes what holds it
    /// (for VFIO, the device file), so that the kernel's removal can
    /// complete. BAR0 was retired before (its mapping replaced by all-ones); the driver
    /// makes no access through this backing afterwards (those it might
    /// still make fail). Called at most once.
    fn release(&self) {}
}

/// BAR0 of a controller emulated in this process: register reads and
/// writes are calls into the emulation, which may act on them at once
/// (acknowledge CC.EN, serve a doorbell). Offsets are bounds- and
/// alignment-checked by [`Bar`] before they get here.
pub trait EmulatedBar: Send + Sync + std::fmt::Debug {
    /// Size of the BAR in bytes.
    fn size(&self) -> usize;
    /// Reads the 32-bit register at `offset`.
    fn read32(&self, offset: usize) -> u32;
    /// Reads the 64-bit register at `offset` (one access).
    fn read64(&self, offset: usize) -> u64;
    /// Writes the 32-bit register at `offset`.
    fn write32(&self, offset: usize, value: u32);
    /// Writes the 64-bit register at `offset` (one access).
    fn write64(&self, offset: usize, value: u64);
}

/// BAR0 as the driver accesses it: mapped from the VFIO device, or
/// emulated. Every access is bounds- and alignment-checked.
#[derive(Debug)]
pub struct Bar {
    kind: BarKind,
}

#[derive(Debug)]
enum BarKind {
    Mmio(MmioBar),
    Emulated {
        regs: Arc<dyn EmulatedBar>,
        len: usize,
    },
}

impl Bar {
    /// A BAR whose registers `regs` emulates. It must be large enough for
    /// the registers and the admin queue's doorbells (8 KiB).
    pub fn emulated(regs: Arc<dyn EmulatedBar>) -> Result<Bar> {
        let len = regs.size();
        if len < 0x2000 {
            return Err(Error::BadDevice(format!("emulated BAR0 of {len:#x} bytes")));
        }
        Ok(Bar {
            kind: BarKind::Emulated { regs, len },
        })
    }

    /// BAR0 mapped from a VFIO device.
    pub(crate) fn mmio(bar: MmioBar) -> Bar {
        Bar {
            kind: BarKind::Mmio(bar),
        }
    }

    /// After a removal request: a mapped BAR is replaced by all-ones
    /// memory at the same addresses, so the device can be released while
    /// other threads may still access the BAR (see `MmioBar::retire`). An
    /// emulated BAR stays as it is (its emulation decides what a removed
    /// device answers).
    pub(crate) fn retire(&self) -> Result<()> {
        match &self.kind {
            BarKind::Mmio(b) => b.retire(),
            BarKind::Emulated { .. } => Ok(()),
        }
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        match &self.kind {
            BarKind::Mmio(b) => b.len(),
            BarKind::Emulated { len, .. } => *len,
        }
    }

    /// Reads a 32-bit register.
    #[inline]
    pub(crate) fn read32(&self, offset: usize) -> Result<u32> {
        match &self.kind {
            BarKind::Mmio(b) => b.read32(offset),
            BarKind::Emulated { regs, len } => {
                check(offset, 4, *len)?;
                Ok(regs.read32(offset))
            }
        }
    }

    /// Reads a 64-bit register.
    #[inline]
    pub(crate) fn read64(&self, offset: usize) -> Result<u64> {
        match &self.kind {
            BarKind::Mmio(b) => b.read64(offset),
            BarKind::Emulated { regs, len } => {
                check(offset, 8, *len)?;
                Ok(regs.read64(offset))
            }
        }
    }

    /// Writes a 32-bit register (a doorbell on the I/O path).
    #[inline]
    pub(crate) fn write32(&self, offset: usize, value: u32) -> Result<()> {
        match &self.kind {
            BarKind::Mmio(b) => b.write32(offset, value),
            BarKind::Emulated { regs, len } => {
                check(offset, 4, *len)?;
                regs.write32(offset, value);
                Ok(())
            }
        }
    }

    /// Writes a 64-bit register.
    #[inline]
    pub(crate) fn write64(&self, offset: usize, value: u64) -> Result<()> {
        match &self.kind {
            BarKind::Mmio(b) => b.write64(offset, value),
            BarKind::Emulated { regs, len } => {
                check(offset, 8, *len)?;
                regs.write64(offset, value);
                Ok(())
            }
        }
    }
}

/// The bounds and alignment check of an emulated register access.
#[inline]
fn check(offset: usize, size: usize, len: usize) -> Result<()> {
    if !offset.is_multiple_of(size) || offset.checked_add(size).is_none_or(|end| end > len) {
        return Err(outside_bar(offset, size, len));
    }
    Ok(())
}

#[cold]
#[inline(never)]
fn outside_bar(offset: usize, size: usize, len: usize) -> Error {
    Error::BadDevice(format!(
        "register access of {size} bytes at {offset:#x} outside BAR0 ({len:#x} bytes)"
    ))
}

/// How the driver's DMA memory is made visible to a device: through the
/// IOMMU (VFIO), or as it is, to a device emulated in this process
/// ([`HostMemory`]).
#[derive(Debug, Clone)]
pub struct DmaMapping {
    mapper: Arc<dyn DmaMapper>,
}

impl DmaMapping {
    pub(crate) fn new(mapper: Arc<dyn DmaMapper>) -> Self {
        DmaMapping { mapper }
    }

    pub(crate) fn mapper(&self) -> Arc<dyn DmaMapper> {
        self.mapper.clone()
    }
}

/// The DMA side of a device emulated in this process: the driver's DMA
/// memory is mapped with IOVA = VA, and the emulation reads and writes it
/// by IOVA, as a device's DMA would, but only inside a mapping that is
/// live at the time of the access (anything else is an error, as an IOMMU
/// would make it). Clones share the mappings.
#[derive(Debug, Clone, Default)]
pub struct HostMemory {
    mapper: Arc<HostMapper>,
}

impl HostMemory {
    /// No mappings yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Copies `out.len()` bytes at `iova` into `out` (a DMA read).
    pub fn read(&self, iova: u64, out: &mut [u8]) -> Result<()> {
        self.mapper.read(iova, out)
    }

    /// Copies `data` to `iova` (a DMA write).
    pub fn write(&self, iova: u64, data: &[u8]) -> Result<()> {
        self.mapper.write(iova, data)
    }

    /// The mapping to hand to the driver ([`DeviceBacking::dma`]).
    pub fn dma_mapping(&self) -> DmaMapping {
        DmaMapping::new(self.mapper.clone())
    }
}

#[cfg(test)]
mod tests {
    use parking_lot::Mutex;

    use super::*;

    /// Records writes; reads return the offset.
    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<(usize, u64)>>);

    impl EmulatedBar for Recorder {
        fn size(&self) -> usize {
            0x2000
        }
        fn read32(&self, offset: usize) -> u32 {
            offset as u32
        }
        fn read64(&self, offset: usize) -> u64 {
            offset as u64 | 1 << 40
        }
        fn write32(&self, offset: usize, value: u32) {
            self.0.lock().push((offset, u64::from(value)));
        }
        fn write64(&self, offset: usize, value: u64) {
            self.0.lock().push((offset, value));
        }
    }

    #[test]
    fn an_emulated_bar_sees_checked_accesses_only() {
        let regs = Arc::new(Recorder::default());
        let bar = Bar::emulated(regs.clone()).expect("bar");
        assert_eq!(bar.len(), 0x2000);
        assert_eq!(bar.read32(0x1c).expect("read"), 0x1c);
        assert_eq!(bar.read64(0x28).expect("read"), 0x28 | 1 << 40);
        bar.write32(0x1008, 7).expect("write");
        bar.write64(0x30, 9).expect("write");
        assert!(bar.write32(0x2000, 1).is_err(), "past the end");
        assert!(bar.read32(0x1002).is_err(), "misaligned");
        assert!(bar.read64(0x1ffc).is_err(), "straddles the end");
        assert_eq!(*regs.0.lock(), vec![(0x1008, 7), (0x30, 9)]);
        #[derive(Debug)]
        struct Tiny;
        impl EmulatedBar for Tiny {
            fn size(&self) -> usize {
                0x1000
            }
            fn read32(&self, _: usize) -> u32 {
                0
            }
            fn read64(&self, _: usize) -> u64 {
                0
            }
            fn write32(&self, _: usize, _: u32) {}
            fn write64(&self, _: usize, _: u64) {}
        }
        assert!(
            Bar::emulated(Arc::new(Tiny)).is_err(),
            "no room for doorbells"
        );
    }
}

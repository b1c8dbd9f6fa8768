//! Opening an NVMe controller through VFIO: container, group and device
//! (vfio-ioctls), PCI command register, BAR0 mapping and the DMA mapper.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps};
use vmm_sys_util::eventfd::EventFd;

use crate::error::{Error, Result};
use crate::hw::mmio::Bar;
use crate::hw::vfio_sys::{self, IommuInfo, VfioMapper};
use crate::iova::IovaAllocator;
use crate::pci::{self, PciAddress};

/// PCI command register offset in config space, and its bits we set.
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_COMMAND_MASTER: u16 = 1 << 2;
const PCI_COMMAND_INTX_DISABLE: u16 = 1 << 10;

/// A controller opened through VFIO.
pub(crate) struct VfioNvme {
    pub(crate) address: PciAddress,
    pub(crate) mapper: Arc<VfioMapper>,
    pub(crate) iommu: IommuInfo,
    device: VfioDevice,
    _container: Arc<VfioContainer>,
}

impl std::fmt::Debug for VfioNvme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioNvme")
            .field("address", &self.address)
            .field("device_fd", &self.device.as_raw_fd())
            .field("iommu", &self.iommu)
            .finish()
    }
}

impl VfioNvme {
    /// Opens `address`, which must be an NVMe controller bound to vfio-pci.
    pub(crate) fn open(address: PciAddress) -> Result<Self> {
        pci::check_ready(address)?;
        let container = Arc::new(
            VfioContainer::new(None).map_err(|e| Error::vfio("opening /dev/vfio/vfio", e))?,
        );
        let sysfs = pci::sysfs_path(address);
        let device = VfioDevice::new(&sysfs, container.clone() as Arc<dyn VfioOps>, false)
            .map_err(|e| Error::vfio(format!("opening {address}"), e))?;
        // Only valid once the group is attached, i.e. after VfioDevice::new.
        let iommu = vfio_sys::iommu_info(&container)?;
        log::debug!(
            "{address}: IOMMU page sizes {:#x}, IOVA ranges {:x?}, DMA mappings available {:?}",
            iommu.page_sizes,
            iommu.iova_ranges,
            iommu.dma_avail
        );
        let mapper = Arc::new(VfioMapper::new(
            container.clone(),
            IovaAllocator::new(&iommu.iova_ranges),
        ));
        let nvme = VfioNvme {
            address,
            mapper,
            iommu,
            device,
            _container: container,
        };
        nvme.enable_bus_master()?;
        Ok(nvme)
    }

    fn config_offset(&self) -> u64 {
        self.device.get_region_offset(VFIO_PCI_CONFIG_REGION_INDEX)
    }

    /// Reads a 16-bit config space register.
    pub(crate) fn config_read16(&self, reg: u64) -> Result<u16> {
        let mut b = [0u8; 2];
        vfio_sys::pread_exact(self.device.as_raw_fd(), &mut b, self.config_offset() + reg)
            .map_err(|e| {
                Error::os(
                    format!("{}: config space read at {reg:#x}", self.address),
                    e,
                )
            })?;
        Ok(u16::from_le_bytes(b))
    }

    /// Writes a 16-bit config space register.
    pub(crate) fn config_write16(&self, reg: u64, value: u16) -> Result<()> {
        vfio_sys::pwrite_all(
            self.device.as_raw_fd(),
            &value.to_le_bytes(),
            self.config_offset() + reg,
        )
        .map_err(|e| {
            Error::os(
                format!("{}: config space write at {reg:#x}", self.address),
                e,
            )
        })
    }

    /// vfio-pci leaves bus mastering off: without it the first doorbell
    /// sends the controller to fatal status. INTx is disabled (we poll).
    fn enable_bus_master(&self) -> Result<()> {
        let cmd = self.config_read16(PCI_COMMAND)?;
        let want = cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE;
        if want != cmd {
            self.config_write16(PCI_COMMAND, want)?;
        }
        Ok(())
    }

    /// MSI-X vectors the function has.
    pub(crate) fn msix_vectors(&self) -> u32 {
        self.device
            .get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX)
            .map_or(0, |irq| irq.count)
    }

    /// Routes MSI-X vectors 0..fds.len() to the eventfds.
    pub(crate) fn enable_msix(&self, fds: &[Arc<EventFd>]) -> Result<()> {
        self.device
            .enable_msix(fds.iter().map(|f| f.as_ref()).collect())
            .map_err(|e| {
                Error::vfio(
                    format!("{}: enabling {} MSI-X vectors", self.address, fds.len()),
                    e,
                )
            })
    }

    /// Maps BAR0 (the controller registers and doorbells).
    pub(crate) fn map_bar0(&self) -> Result<Bar> {
        let size = self.device.get_region_size(VFIO_PCI_BAR0_REGION_INDEX);
        let flags = self.device.get_region_flags(VFIO_PCI_BAR0_REGION_INDEX);
        if flags & vfio_bindings::bindings::vfio::VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Err(Error::Unsupported(format!(
                "{}: BAR0 cannot be mmapped (region flags {flags:#x})",
                self.address
            )));
        }
        // Registers end at 0x1000 and doorbells follow: 8 KiB at the least.
        if !(0x2000..=1 << 30).contains(&size) {
            return Err(Error::BadDevice(format!("BAR0 size {size:#x}")));
        }
        let offset = self.device.get_region_offset(VFIO_PCI_BAR0_REGION_INDEX);
        Bar::map(self.device.as_raw_fd(), offset, size as usize)
    }
}

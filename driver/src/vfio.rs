//! Opening an NVMe controller through VFIO: container, group and device
//! (vfio-ioctls). [`VfioNvme`] is the real [`DeviceBacking`]: config space
//! through the device file, BAR0 mapped from it, DMA through the IOMMU, and
//! MSI-X routed to eventfds.

use parking_lot::{Mutex, MutexGuard};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_REQ_IRQ_INDEX,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps};
use vmm_sys_util::eventfd::EventFd;

use crate::device::{Bar, DeviceBacking, DmaMapping};
use crate::error::{Error, Result};
use crate::hw::mmio::MmioBar;
use crate::hw::vfio_sys::{self, IommuInfo, VfioMapper};
use crate::iova::IovaAllocator;
use crate::pci::{self, PciAddress};

/// A controller opened through VFIO.
pub(crate) struct VfioNvme {
    pub(crate) address: PciAddress,
    pub(crate) mapper: Arc<VfioMapper>,
    pub(crate) iommu: IommuInfo,
    /// The device file; None once released after a removal request.
    device: Mutex<Option<VfioDevice>>,
    _container: Arc<VfioContainer>,
}

impl std::fmt::Debug for VfioNvme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioNvme")
            .field("address", &self.address)
            .field("device_fd", &self.lock().as_ref().map(|d| d.as_raw_fd()))
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
        Ok(VfioNvme {
            address,
            mapper,
            iommu,
            device: Mutex::new(Some(device)),
            _container: container,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<VfioDevice>> {
        self.device.lock()
    }

    /// Runs `f` on the device, or fails with [`Error::DeviceRemoved`] once
    /// it was released.
    fn with<T>(&self, f: impl FnOnce(&VfioDevice) -> Result<T>) -> Result<T> {
        match self.lock().as_ref() {
            Some(d) => f(d),
            None => Err(Error::DeviceRemoved {
                bdf: self.address.to_string(),
            }),
        }
    }
}

impl DeviceBacking for VfioNvme {
    fn address(&self) -> PciAddress {
        self.address
    }

    fn config_read16(&self, reg: u16) -> Result<u16> {
        let mut b = [0u8; 2];
        self.with(|d| {
            let at = d.get_region_offset(VFIO_PCI_CONFIG_REGION_INDEX) + u64::from(reg);
            vfio_sys::pread_exact(d.as_raw_fd(), &mut b, at).map_err(|e| {
                Error::os(
                    format!("{}: config space read at {reg:#x}", self.address),
                    e,
                )
            })
        })?;
        Ok(u16::from_le_bytes(b))
    }

    fn config_write16(&self, reg: u16, value: u16) -> Result<()> {
        self.with(|d| {
            vfio_sys::pwrite_all(
                d.as_raw_fd(),
                &value.to_le_bytes(),
                d.get_region_offset(VFIO_PCI_CONFIG_REGION_INDEX) + u64::from(reg),
            )
            .map_err(|e| {
                Error::os(
                    format!("{}: config space write at {reg:#x}", self.address),
                    e,
                )
            })
        })
    }

    fn msix_vectors(&self) -> u32 {
        self.lock()
            .as_ref()
            .and_then(|d| d.get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX).map(|irq| irq.count))
            .unwrap_or(0)
    }

    fn enable_msix(&self, fds: &[Arc<EventFd>]) -> Result<()> {
        self.with(|d| {
            d.enable_msix(fds.iter().map(|f| f.as_ref()).collect())
                .map_err(|e| {
                    Error::vfio(
                        format!("{}: enabling {} MSI-X vectors", self.address, fds.len()),
                        e,
                    )
                })
        })
    }

    fn dma(&self) -> DmaMapping {
        DmaMapping::new(self.mapper.clone())
    }

    fn removal_request(&self) -> Result<Option<Arc<EventFd>>> {
        self.with(|d| {
            if d.get_irq_info(VFIO_PCI_REQ_IRQ_INDEX)
                .is_none_or(|irq| irq.count == 0)
            {
                log::info!(
                    "{}: no device request interrupt: a hot-unplug will wait on this process",
                    self.address
                );
                return Ok(None);
            }
            let fd = EventFd::new(libc::EFD_NONBLOCK)
                .map(Arc::new)
                .map_err(|e| Error::os("creating an eventfd", e))?;
            d.enable_irq(VFIO_PCI_REQ_IRQ_INDEX, vec![fd.as_ref()])
                .map_err(|e| {
                    Error::vfio(
                        format!("{}: enabling the device request interrupt", self.address),
                        e,
                    )
                })?;
            Ok(Some(fd))
        })
    }

    fn release(&self) {
        let Some(device) = self.lock().take() else {
            return;
        };
        // The group stays attached to the container until the controller's
        // last handle goes (vfio-ioctls may log that it could not unset
        // it: the device file was still open then).
        vfio_sys::drop_device_kept_open(device);
        self.mapper.device_released();
        log::info!(
            "{}: device file closed after the removal request",
            self.address
        );
    }

    fn map_bar0(&self) -> Result<Bar> {
        let device = self.lock();
        let Some(device) = device.as_ref() else {
            return Err(Error::DeviceRemoved {
                bdf: self.address.to_string(),
            });
        };
        let size = device.get_region_size(VFIO_PCI_BAR0_REGION_INDEX);
        let flags = device.get_region_flags(VFIO_PCI_BAR0_REGION_INDEX);
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
        let offset = device.get_region_offset(VFIO_PCI_BAR0_REGION_INDEX);
        MmioBar::map(device.as_raw_fd(), offset, size as usize).map(Bar::mmio)
    }
}

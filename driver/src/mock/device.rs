//! The mock behind the driver's device boundary: its BAR0 and the rest of
//! the PCI function.

use super::*;

/// The mock as a device: its BAR0 and, through [`MockBacking`], the rest
/// of the PCI function.
#[derive(Debug)]
pub(super) struct MockDevice {
    pub(super) state: Mutex<State>,
    pub(super) bar_len: usize,
    pub(super) dma: HostMemory,
    pub(super) msix_vectors: u32,
}

impl EmulatedBar for MockDevice {
    fn size(&self) -> usize {
        self.bar_len
    }

    fn read32(&self, offset: usize) -> u32 {
        self.state.lock().read_register(offset, 4) as u32
    }

    fn read64(&self, offset: usize) -> u64 {
        self.state.lock().read_register(offset, 8)
    }

    fn write32(&self, offset: usize, value: u32) {
        on_register_write(&self.state, offset, u64::from(value), 4);
    }

    fn write64(&self, offset: usize, value: u64) {
        on_register_write(&self.state, offset, value, 8);
    }
}

/// Acts on a register write (served doorbells included). Kept out of line:
/// `cargo xtask instructions` leaves what it does out of the driver's count.
#[inline(never)]
pub(super) fn on_register_write(state: &Mutex<State>, offset: usize, value: u64, size: usize) {
    let mut s = state.lock();
    if let Err(e) = s.write_register(offset, value, size) {
        s.violation(format!("serving the write to {offset:#x}: {e}"));
    }
}

/// The address the mock reports.
pub(super) const MOCK_ADDRESS: PciAddress = PciAddress {
    domain: 0xffff,
    bus: 0xff,
    device: 0x1f,
    function: 7,
};

/// The mock's side of the device boundary.
#[derive(Debug)]
pub(super) struct MockBacking(pub(super) Arc<MockDevice>);

impl DeviceBacking for MockBacking {
    fn address(&self) -> PciAddress {
        MOCK_ADDRESS
    }

    fn config_read16(&self, offset: u16) -> Result<u16> {
        let s = self.0.state.lock();
        Ok(match offset {
            _ if s.gone => u16::MAX,
            0 => 0x1b36, // vendor (QEMU's, as the device it imitates)
            2 => 0x0010, // device
            PCI_COMMAND => s.regs.pci_command,
            _ => 0,
        })
    }

    fn config_write16(&self, offset: u16, value: u16) -> Result<()> {
        let mut s = self.0.state.lock();
        if offset == PCI_COMMAND && !s.gone {
            s.regs.pci_command = value;
        }
        Ok(())
    }

    fn map_bar0(&self) -> Result<Bar> {
        Bar::emulated(self.0.clone())
    }

    fn dma(&self) -> DmaMapping {
        self.0.dma.dma_mapping()
    }

    fn msix_vectors(&self) -> u32 {
        self.0.msix_vectors
    }

    fn enable_msix(&self, fds: &[Arc<EventFd>]) -> Result<()> {
        if fds.len() > self.0.msix_vectors as usize {
            return Err(Error::Unsupported(format!(
                "{} MSI-X vectors asked for, the mock has {}",
                fds.len(),
                self.0.msix_vectors
            )));
        }
        self.0.state.lock().irqs = fds.to_vec();
        Ok(())
    }

    fn removal_request(&self) -> Result<Option<Arc<EventFd>>> {
        let fd = EventFd::new(libc::EFD_NONBLOCK)
            .map(Arc::new)
            .map_err(|e| Error::os("creating an eventfd", e))?;
        self.0.state.lock().removal_request = Some(fd.clone());
        Ok(Some(fd))
    }

    fn release(&self) {
        // A released device is gone for the driver: as after a removal,
        // reads are all-ones and nothing is served.
        let mut s = self.0.state.lock();
        s.released = true;
        s.gone = true;
    }
}

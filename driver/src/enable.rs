//! Bringing the controller's registers to life: bus mastering, CAP checks,
//! the admin queue's registers, and the CC.EN / CSTS.RDY handshake within
//! CAP.TO (Base 2.0 §3.5.1 and §3.5.2).

use std::time::{Duration, Instant};

use nvme_spec::{Aqa, Cap, Cc, Csts, ShutdownNotification, regs};

use crate::device::{Bar, DeviceBacking};
use crate::error::{Error, InitStep, Result};
use crate::queue::QueuePair;

/// PCI command register offset in config space, and its bits we set.
const PCI_COMMAND: u16 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_COMMAND_MASTER: u16 = 1 << 2;
const PCI_COMMAND_INTX_DISABLE: u16 = 1 << 10;

/// vfio-pci leaves bus mastering off: without it the first doorbell sends
/// the controller to fatal status. INTx is disabled (we poll or use MSI-X).
pub(crate) fn enable_bus_master(device: &dyn DeviceBacking) -> Result<()> {
    let cmd = device.config_read16(PCI_COMMAND)?;
    if cmd == u16::MAX {
        return Err(Error::ControllerFatal {
            step: "reading the PCI command register".into(),
            csts: Csts(u32::MAX),
        });
    }
    let want = cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE;
    if want != cmd {
        device.config_write16(PCI_COMMAND, want)?;
    }
    Ok(())
}

/// Points the controller at the admin queue (AQA, ASQ, ACQ).
pub(crate) fn program_admin_queue(bar: &Bar, q: &QueuePair) -> Result<()> {
    bar.write32(regs::offset::AQA, Aqa::new(q.entries(), q.entries()).0)?;
    bar.write64(regs::offset::ASQ, q.sq_iova())?;
    bar.write64(regs::offset::ACQ, q.cq_iova())
}

pub(crate) fn max_entries(cap: Cap) -> u16 {
    u16::try_from(cap.max_queue_entries()).unwrap_or(u16::MAX)
}

pub(crate) fn check_cap(cap: Cap) -> Result<()> {
    if cap.0 == u64::MAX {
        return Err(Error::ControllerFatal {
            step: "reading CAP".into(),
            csts: Csts(u32::MAX),
        });
    }
    if !cap.supports_nvm_command_set() {
        return Err(Error::Unsupported(
            "the NVM command set is not supported (CAP.CSS)".into(),
        ));
    }
    if !cap.supports_page_shift(12) {
        return Err(Error::Unsupported(format!(
            "4 KiB memory pages are outside CAP.MPSMIN..MPSMAX ({}..{} bytes)",
            cap.min_page_size(),
            cap.max_page_size()
        )));
    }
    if cap.max_queue_entries() < 2 {
        return Err(Error::BadDevice(format!(
            "CAP.MQES {} allows no queue",
            cap.mqes_raw()
        )));
    }
    Ok(())
}

/// CAP.TO, with a floor so a controller reporting 0 still gets time.
pub(crate) fn ready_timeout(cap: Cap) -> Duration {
    Duration::from_millis(cap.timeout_ms().max(500))
}

pub(crate) fn disable(bar: &Bar, cap: Cap) -> Result<()> {
    let cc = Cc(bar.read32(regs::offset::CC)?);
    let csts = Csts(bar.read32(regs::offset::CSTS)?);
    if csts.is_all_ones() {
        return Err(Error::ControllerFatal {
            step: "disable".into(),
            csts,
        });
    }
    if cc.enabled() {
        bar.write32(regs::offset::CC, cc.with_enable(false).0)?;
    } else if !csts.ready() {
        return Ok(());
    }
    wait_ready(bar, cap, false, InitStep::Disable).map(|_| ())
}

/// Sets CC (NVM command set, 4 KiB pages, 64/16-byte entries, EN) and waits
/// for CSTS.RDY.
pub(crate) fn enable(bar: &Bar, cap: Cap) -> Result<()> {
    let cc = Cc(0)
        .with_css(0)
        .with_mps(0)
        .with_ams(0)
        .with_iosqes(6)
        .with_iocqes(4)
        .with_shn(ShutdownNotification::None)
        .with_enable(true);
    bar.write32(regs::offset::CC, cc.0)?;
    wait_ready(bar, cap, true, InitStep::Enable).map(|_| ())
}

/// Polls CSTS.RDY until it equals `want`, CSTS reports failure, or CAP.TO
/// passes.
pub(crate) fn wait_ready(bar: &Bar, cap: Cap, want: bool, step: InitStep) -> Result<Csts> {
    let limit = ready_timeout(cap);
    let start = Instant::now();
    loop {
        let csts = Csts(bar.read32(regs::offset::CSTS)?);
        if csts.is_all_ones() || (want && csts.fatal()) {
            return Err(Error::ControllerFatal {
                step: step.to_string(),
                csts,
            });
        }
        if csts.ready() == want {
            return Ok(csts);
        }
        if start.elapsed() > limit {
            return Err(Error::Timeout {
                step,
                waited_ms: limit.as_millis() as u64,
                csts: csts.0,
            });
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

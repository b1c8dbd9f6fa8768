//! The controller: bring-up as a sequence of named steps, each wait bounded
//! by CAP.TO; admin commands; synchronous I/O; shutdown (CC.SHN) on drop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nvme_spec::admin::{self, Cns, QueuePriority};
use nvme_spec::io as nvm;
use nvme_spec::{
    ActiveNamespaceList, Aqa, Cap, Cc, Cqe, Csts, FeatureId, IdentifyController, IdentifyNamespace,
    NumberOfQueues, ShutdownNotification, ShutdownStatus, Sqe, Vs, regs,
};
use zerocopy::{FromBytes, FromZeros};

use crate::error::{Error, InitStep, Result};
use crate::hw::mmio::Bar;
use crate::memory::{DmaBuffer, DmaPool};
use crate::ns::Namespace;
use crate::pci::PciAddress;
use crate::prp;
use crate::queue::QueuePair;
use crate::vfio::VfioNvme;

/// The memory page size the driver programs (CC.MPS = 0).
pub const PAGE_SIZE: usize = 4096;
/// The largest transfer the driver issues as one command, whatever MDTS says.
pub const DRIVER_MAX_TRANSFER: usize = 2 << 20;
const IDENTIFY_SIZE: usize = 4096;

/// Tunables for [`Controller::open`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Admin queue entries (2..=4096, capped by CAP.MQES).
    pub admin_queue_entries: u16,
    /// I/O queue entries (capped by CAP.MQES).
    pub io_queue_entries: u16,
    /// Back DMA memory with 2 MiB huge pages when the system has them.
    pub prefer_huge_pages: bool,
    /// Deadline for one admin command.
    pub admin_timeout: Duration,
    /// Deadline for one I/O command.
    pub io_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            admin_queue_entries: 32,
            io_queue_entries: 256,
            prefer_huge_pages: true,
            admin_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
        }
    }
}

/// An NVMe controller driven from userspace through VFIO.
#[derive(Debug)]
pub struct Controller {
    // Field order is drop order: queues and DMA memory first, then the
    // BAR mapping, and the VFIO device last (a live BAR mmap would keep
    // the device busy).
    admin: QueuePair,
    /// The I/O queue pair; None only while the controller is being opened.
    io: Option<QueuePair>,
    pool: DmaPool,
    bar: Arc<Bar>,
    cap: Cap,
    vs: Vs,
    identify: Box<IdentifyController>,
    namespaces: Vec<Namespace>,
    max_transfer: usize,
    options: Options,
    vfio: VfioNvme,
}

impl Controller {
    /// Opens the controller at `address` (bound to vfio-pci), resets and
    /// enables it, identifies it and its namespaces, and creates one I/O
    /// queue pair.
    pub fn open(address: PciAddress, options: Options) -> Result<Controller> {
        let vfio = VfioNvme::open(address).map_err(|e| e.at(InitStep::OpenDevice))?;
        let bar = Arc::new(vfio.map_bar0().map_err(|e| e.at(InitStep::MapBar))?);
        let cap = Cap(bar.read64(regs::offset::CAP)?);
        let vs = Vs(bar.read32(regs::offset::VS)?);
        log::debug!("{address}: CAP {:#018x} VS {vs}", cap.0);
        check_cap(cap)?;
        let pool = DmaPool::new(vfio.mapper.clone(), options.prefer_huge_pages);

        disable(&bar, cap).map_err(|e| e.at(InitStep::Disable))?;

        let max_entries = u16::try_from(cap.max_queue_entries()).unwrap_or(u16::MAX);
        let admin_entries = options.admin_queue_entries.clamp(2, 4096).min(max_entries);
        let admin = QueuePair::new(0, admin_entries, cap.dstrd(), bar.clone(), &pool)
            .and_then(|q| {
                bar.write32(regs::offset::AQA, Aqa::new(q.entries(), q.entries()).0)?;
                bar.write64(regs::offset::ASQ, q.sq_iova())?;
                bar.write64(regs::offset::ACQ, q.cq_iova())?;
                Ok(q)
            })
            .map_err(|e| e.at(InitStep::AdminQueues))?;

        let cc = Cc(0)
            .with_css(0)
            .with_mps(0)
            .with_ams(0)
            .with_iosqes(6)
            .with_iocqes(4)
            .with_shn(ShutdownNotification::None)
            .with_enable(true);
        bar.write32(regs::offset::CC, cc.0)?;
        wait_ready(&bar, cap, true, InitStep::Enable)?;
        log::debug!("{address}: enabled");

        let mut ctrl = Controller {
            admin,
            io: None,
            pool,
            bar,
            cap,
            vs,
            identify: Box::new(IdentifyController::new_zeroed()),
            namespaces: Vec::new(),
            max_transfer: PAGE_SIZE,
            options,
            vfio,
        };
        ctrl.identify_controller()
            .map_err(|e| e.at(InitStep::IdentifyController))?;
        let granted = ctrl
            .set_queue_count(1)
            .map_err(|e| e.at(InitStep::SetQueueCount))?;
        log::debug!("{address}: {granted} I/O queue pairs granted");
        ctrl.identify_namespaces()
            .map_err(|e| e.at(InitStep::IdentifyNamespaces))?;
        ctrl.io = Some(
            ctrl.create_io_queue(1)
                .map_err(|e| e.at(InitStep::CreateIoQueues))?,
        );
        Ok(ctrl)
    }

    /// The PCI address.
    pub fn address(&self) -> PciAddress {
        self.vfio.address
    }

    /// Controller capabilities.
    pub fn cap(&self) -> Cap {
        self.cap
    }

    /// The NVMe version the controller implements.
    pub fn version(&self) -> Vs {
        self.vs
    }

    /// Identify Controller data.
    pub fn identify(&self) -> &IdentifyController {
        &self.identify
    }

    /// The active namespaces, by id.
    pub fn namespaces(&self) -> &[Namespace] {
        &self.namespaces
    }

    /// One active namespace.
    pub fn namespace(&self, nsid: u32) -> Result<&Namespace> {
        self.namespaces
            .iter()
            .find(|n| n.nsid == nsid)
            .ok_or_else(|| Error::NoSuchNamespace {
                nsid,
                active: self
                    .namespaces
                    .iter()
                    .map(|n| n.nsid.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The largest transfer one command carries here (MDTS, capped by the
    /// driver's own limit).
    pub fn max_transfer(&self) -> usize {
        self.max_transfer
    }

    /// The pool DMA buffers come from.
    pub fn dma_pool(&self) -> &DmaPool {
        &self.pool
    }

    fn identify_controller(&mut self) -> Result<()> {
        let id: Box<IdentifyController> =
            self.identify_data(Cns::Controller, 0, "Identify Controller")?;
        if id.sqes_min() > 6 || id.sqes_max() < 6 || id.cqes_min() > 4 || id.cqes_max() < 4 {
            return Err(Error::Unsupported(format!(
                "queue entry sizes SQES {:#x} CQES {:#x} do not allow 64/16 bytes",
                id.sqes, id.cqes
            )));
        }
        let mdts = id.max_transfer_bytes(self.cap.min_page_size());
        self.max_transfer = mdts
            .map_or(DRIVER_MAX_TRANSFER, |m| {
                m.min(DRIVER_MAX_TRANSFER as u64) as usize
            })
            .max(PAGE_SIZE);
        log::debug!(
            "identify: model {:?} serial {:?} mdts {} -> max transfer {} bytes",
            id.model().to_string(),
            id.serial().to_string(),
            id.mdts,
            self.max_transfer
        );
        self.identify = id;
        Ok(())
    }

    /// Runs Identify with `cns` for `nsid` and copies out the 4 KiB result.
    fn identify_data<T: FromBytes>(&mut self, cns: Cns, nsid: u32, what: &str) -> Result<Box<T>> {
        let buf = self.pool.alloc(IDENTIFY_SIZE)?;
        self.admin_data(admin::identify(cns, nsid, 0), &buf, what)?;
        read_struct::<T>(&buf)
    }

    /// Set Features (Number of Queues); returns the I/O queue pairs granted.
    fn set_queue_count(&mut self, wanted: u16) -> Result<u32> {
        let req = NumberOfQueues {
            sq: u32::from(wanted),
            cq: u32::from(wanted),
        };
        let cdw11 = req
            .to_cdw11()
            .map_err(|e| Error::BadBuffer(e.to_string()))?;
        let cqe = self.admin_cmd(
            admin::set_features(FeatureId::NumberOfQueues as u8, cdw11, false),
            "Set Features (Number of Queues)",
        )?;
        let got = NumberOfQueues::from_dw0(cqe.result());
        let granted = got.sq.min(got.cq);
        if granted == 0 {
            return Err(Error::BadDevice("controller granted no I/O queues".into()));
        }
        Ok(granted)
    }

    fn identify_namespaces(&mut self) -> Result<()> {
        let list: Box<ActiveNamespaceList> = self.identify_data(
            Cns::ActiveNamespaceList,
            0,
            "Identify (active namespace list)",
        )?;
        let nn = self.identify.nn();
        let mut ids: Vec<u32> = list.iter().collect();
        ids.retain(|&id| id != 0 && id <= nn.max(1) && id != u32::MAX);
        ids.sort_unstable();
        ids.dedup();
        for nsid in ids {
            let id: Box<IdentifyNamespace> =
                self.identify_data(Cns::Namespace, nsid, &format!("Identify Namespace {nsid}"))?;
            match Namespace::from_identify(nsid, id) {
                Ok(ns) => self.namespaces.push(ns),
                Err(e) => log::warn!("skipping namespace {nsid}: {e}"),
            }
        }
        Ok(())
    }

    fn create_io_queue(&mut self, qid: u16) -> Result<QueuePair> {
        let max_entries = u16::try_from(self.cap.max_queue_entries()).unwrap_or(u16::MAX);
        let entries = self.options.io_queue_entries.clamp(2, max_entries.max(2));
        let q = QueuePair::new(qid, entries, self.cap.dstrd(), self.bar.clone(), &self.pool)?;
        let range = |e: nvme_spec::RangeError| Error::BadBuffer(e.to_string());
        let mut cq = admin::create_io_cq(qid, entries, None).map_err(range)?;
        cq.set_prps(q.cq_iova(), 0);
        self.admin_cmd(cq, &format!("Create I/O Completion Queue {qid}"))?;
        let mut sq =
            admin::create_io_sq(qid, entries, qid, QueuePriority::Medium).map_err(range)?;
        sq.set_prps(q.sq_iova(), 0);
        self.admin_cmd(sq, &format!("Create I/O Submission Queue {qid}"))?;
        Ok(q)
    }

    /// Runs an admin command without data.
    pub(crate) fn admin_cmd(&mut self, sqe: Sqe, what: &str) -> Result<Cqe> {
        let cqe = self.admin.execute(sqe, self.options.admin_timeout)?;
        check_status(cqe, what)
    }

    /// Runs an admin command that transfers `buf`.
    pub(crate) fn admin_data(&mut self, mut sqe: Sqe, buf: &DmaBuffer, what: &str) -> Result<Cqe> {
        let prps = prp::build(&self.pool, buf.iova(), buf.len())?;
        sqe.set_prps(prps.prp1, prps.prp2);
        let cqe = self.admin.execute(sqe, self.options.admin_timeout)?;
        drop(prps);
        check_status(cqe, what)
    }

    /// Reads `buf.len()` bytes from `slba` of namespace `nsid`.
    pub fn read(&mut self, nsid: u32, slba: u64, buf: &mut [u8]) -> Result<()> {
        let (lba_size, _) = self.check_io(nsid, slba, buf.len())?;
        let chunk = self.max_transfer.min(buf.len());
        let bounce = self.pool.alloc(chunk)?;
        for (i, part) in buf.chunks_mut(chunk).enumerate() {
            let lba = slba + (i * chunk / lba_size) as u64;
            self.io_dma(IoKind::Read, nsid, lba, &bounce, part.len())?;
            bounce.read(0, part)?;
        }
        Ok(())
    }

    /// Writes `data` at `slba` of namespace `nsid`.
    pub fn write(&mut self, nsid: u32, slba: u64, data: &[u8]) -> Result<()> {
        let (lba_size, _) = self.check_io(nsid, slba, data.len())?;
        let chunk = self.max_transfer.min(data.len());
        let bounce = self.pool.alloc(chunk)?;
        for (i, part) in data.chunks(chunk).enumerate() {
            let lba = slba + (i * chunk / lba_size) as u64;
            bounce.write(0, part)?;
            self.io_dma(IoKind::Write, nsid, lba, &bounce, part.len())?;
        }
        Ok(())
    }

    /// Reads into a DMA buffer directly (no copy): `len` bytes from `slba`.
    pub fn read_dma(&mut self, nsid: u32, slba: u64, buf: &DmaBuffer, len: usize) -> Result<()> {
        self.dma_io(IoKind::Read, nsid, slba, buf, len)
    }

    /// Writes from a DMA buffer directly (no copy): `len` bytes at `slba`.
    pub fn write_dma(&mut self, nsid: u32, slba: u64, buf: &DmaBuffer, len: usize) -> Result<()> {
        self.dma_io(IoKind::Write, nsid, slba, buf, len)
    }

    fn dma_io(
        &mut self,
        kind: IoKind,
        nsid: u32,
        slba: u64,
        buf: &DmaBuffer,
        len: usize,
    ) -> Result<()> {
        if len > buf.len() {
            return Err(Error::BadBuffer(format!(
                "{len} bytes asked of a {}-byte DMA buffer",
                buf.len()
            )));
        }
        let (lba_size, _) = self.check_io(nsid, slba, len)?;
        let chunk = self.max_transfer - self.max_transfer % lba_size;
        let mut done = 0;
        while done < len {
            let n = chunk.min(len - done);
            let lba = slba + (done / lba_size) as u64;
            self.io_dma_at(kind, nsid, lba, buf, done, n)?;
            done += n;
        }
        Ok(())
    }

    /// Flushes namespace `nsid`'s volatile write cache.
    pub fn flush(&mut self, nsid: u32) -> Result<()> {
        self.namespace(nsid)?;
        let timeout = self.options.io_timeout;
        let cqe = self.io_queue()?.execute(nvm::flush(nsid), timeout)?;
        check_status(cqe, &format!("Flush nsid {nsid}")).map(|_| ())
    }

    /// Validates an I/O; returns (LBA size, blocks).
    fn check_io(&self, nsid: u32, slba: u64, len: usize) -> Result<(usize, u64)> {
        let ns = self.namespace(nsid)?;
        let blocks = ns.blocks_in(len)?;
        ns.check_range(slba, blocks)?;
        if !self.max_transfer.is_multiple_of(ns.lba_size as usize) {
            return Err(Error::Unsupported(format!(
                "max transfer {} is not a multiple of the LBA size {}",
                self.max_transfer, ns.lba_size
            )));
        }
        Ok((ns.lba_size as usize, blocks))
    }

    fn io_dma(
        &mut self,
        kind: IoKind,
        nsid: u32,
        slba: u64,
        buf: &DmaBuffer,
        len: usize,
    ) -> Result<()> {
        self.io_dma_at(kind, nsid, slba, buf, 0, len)
    }

    /// One command: `len` bytes (at most max_transfer) at `offset` of `buf`.
    fn io_dma_at(
        &mut self,
        kind: IoKind,
        nsid: u32,
        slba: u64,
        buf: &DmaBuffer,
        offset: usize,
        len: usize,
    ) -> Result<()> {
        let lba_size = self.namespace(nsid)?.lba_size as usize;
        let blocks = u32::try_from(len / lba_size).map_err(|_| {
            Error::BadBuffer(format!("{len} bytes is too many blocks for one command"))
        })?;
        let range = |e: nvme_spec::RangeError| Error::BadBuffer(e.to_string());
        let mut sqe = match kind {
            IoKind::Read => nvm::read(nsid, slba, blocks).map_err(range)?,
            IoKind::Write => nvm::write(nsid, slba, blocks).map_err(range)?,
        };
        let prps = prp::build(&self.pool, buf.iova() + offset as u64, len)?;
        sqe.set_prps(prps.prp1, prps.prp2);
        let timeout = self.options.io_timeout;
        let cqe = self.io_queue()?.execute(sqe, timeout)?;
        drop(prps);
        check_status(cqe, &format!("{kind:?} nsid {nsid} lba {slba}+{blocks}")).map(|_| ())
    }

    fn io_queue(&mut self) -> Result<&mut QueuePair> {
        self.io
            .as_mut()
            .ok_or_else(|| Error::Unsupported("the controller has no I/O queue".into()))
    }

    fn shutdown(&mut self) -> Result<()> {
        if let Some(io) = self.io.take() {
            // The rings stay allocated until the controller has let go of them.
            let qid = io.qid();
            self.admin_cmd(admin::delete_io_sq(qid), "Delete I/O Submission Queue")?;
            self.admin_cmd(admin::delete_io_cq(qid), "Delete I/O Completion Queue")?;
            drop(io);
        }
        let cc = Cc(self.bar.read32(regs::offset::CC)?).with_shn(ShutdownNotification::Normal);
        self.bar.write32(regs::offset::CC, cc.0)?;
        let rtd3e_ms = u64::from(self.identify.rtd3e.get()) / 1000;
        let limit = Duration::from_millis(rtd3e_ms.clamp(5_000, 60_000));
        let start = Instant::now();
        loop {
            let csts = Csts(self.bar.read32(regs::offset::CSTS)?);
            if csts.is_all_ones() {
                return Err(Error::ControllerFatal {
                    step: "shutdown".into(),
                    csts,
                });
            }
            if csts.shutdown_status() == ShutdownStatus::Complete {
                log::debug!("{}: shutdown complete", self.vfio.address);
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(Error::CommandTimeout {
                    command: "shutdown (CC.SHN)".into(),
                    waited_ms: limit.as_millis() as u64,
                });
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            log::warn!("{}: clean shutdown failed: {e}", self.vfio.address);
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum IoKind {
    Read,
    Write,
}

fn check_cap(cap: Cap) -> Result<()> {
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
fn ready_timeout(cap: Cap) -> Duration {
    Duration::from_millis(cap.timeout_ms().max(500))
}

fn disable(bar: &Bar, cap: Cap) -> Result<()> {
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

/// Polls CSTS.RDY until it equals `want`, CSTS reports failure, or CAP.TO
/// passes.
fn wait_ready(bar: &Bar, cap: Cap, want: bool, step: InitStep) -> Result<Csts> {
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

fn check_status(cqe: Cqe, what: &str) -> Result<Cqe> {
    let status = cqe.status();
    if status.is_success() {
        Ok(cqe)
    } else {
        Err(Error::Command {
            command: what.to_string(),
            status,
        })
    }
}

/// Copies a device-written structure out of DMA memory.
fn read_struct<T: FromBytes>(buf: &DmaBuffer) -> Result<Box<T>> {
    let mut bytes = vec![0u8; std::mem::size_of::<T>()];
    buf.read(0, &mut bytes)?;
    T::read_from_bytes(&bytes)
        .map(Box::new)
        .map_err(|_| Error::BadDevice("structure of the wrong size".into()))
}

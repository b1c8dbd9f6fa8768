//! The controller: bring-up as a sequence of named steps, each wait bounded
//! by CAP.TO; the admin queue (shared, behind a lock); I/O queue pairs handed
//! out one per thread; shutdown (CC.SHN) when the last handle goes.

use parking_lot::{Mutex, MutexGuard};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nvme_spec::admin::{self, Cns};
use nvme_spec::{
    ActiveNamespaceList, Cap, Cc, Cqe, Csts, ErrorLogEntry, FeatureId, FeatureSelect,
    IdentifyController, IdentifyNamespace, LogPageId, NumberOfQueues, ShutdownNotification,
    ShutdownStatus, SmartLog, Sqe, Vs, regs,
};
use zerocopy::{FromBytes, FromZeros};

use crate::admin::AdminQueue;
use crate::device::{Bar, DeviceBacking};
use crate::device_data;
use crate::enable::{
    check_cap, disable, enable, enable_bus_master, max_entries, program_admin_queue,
};
use crate::error::{Error, InitStep, Result};
use crate::memory::{DmaBuffer, DmaPool};
use crate::ns::Namespace;
use crate::pci::PciAddress;
use crate::prp;
use crate::qpair::IoQPair;
use crate::queue::{QueuePair, ShadowDoorbells};
use crate::quiesce::Quiesce;
use crate::removal::{self, Removal};
use crate::vfio::VfioNvme;

/// The memory page size the driver programs (CC.MPS = 0).
pub const PAGE_SIZE: usize = 4096;
/// Transfer limit used when the controller reports none (MDTS = 0).
pub const UNLIMITED_MDTS_TRANSFER: usize = 8 << 20;
const IDENTIFY_SIZE: usize = 4096;
/// How long a reset waits for queue pairs inside a doorbell write (each
/// write takes microseconds; the bound only keeps a stuck thread from
/// stopping the reset).
const DOORBELL_DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// Tunables for [`Controller::open`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Admin queue entries (2..=4096, capped by CAP.MQES).
    pub admin_queue_entries: u16,
    /// Entries of each I/O queue (capped by CAP.MQES).
    pub io_queue_entries: u16,
    /// I/O queue pairs to ask for (Set Features, Number of Queues); the
    /// controller may grant fewer.
    pub io_queues: u16,
    /// Back DMA memory with 2 MiB huge pages when the system has them.
    pub prefer_huge_pages: bool,
    /// Describe data with an SGL instead of PRPs when the controller
    /// supports SGLs for I/O commands.
    pub use_sgl: bool,
    /// Deadline for one admin command.
    pub admin_timeout: Duration,
    /// Deadline for one I/O command.
    pub io_timeout: Duration,
    /// How often a command failing with a retryable status is sent again.
    pub retries: u8,
    /// Reset the controller when a timed-out command does not come back
    /// after Abort (its commands are then resubmitted); false gives up on
    /// the command instead.
    pub reset_on_timeout: bool,
    /// Use shadow doorbells (Doorbell Buffer Config) when the controller
    /// supports them; false forces MMIO doorbells (for testing).
    pub shadow_doorbells: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            admin_queue_entries: 32,
            io_queue_entries: 256,
            io_queues: 64,
            prefer_huge_pages: true,
            use_sgl: false,
            admin_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
            retries: 3,
            reset_on_timeout: true,
            shadow_doorbells: true,
        }
    }
}

/// State shared by the controller handle and every queue pair.
#[derive(Debug)]
pub(crate) struct Shared {
    // Field order is drop order: the admin queue and DMA memory first, then
    // the BAR, and the device last (a live BAR mmap would keep a VFIO
    // device busy).
    admin: Mutex<AdminQueue>,
    pub(crate) pool: DmaPool,
    pub(crate) bar: Arc<Bar>,
    pub(crate) cap: Cap,
    vs: Vs,
    identify: Box<IdentifyController>,
    pub(crate) namespaces: Vec<Namespace>,
    pub(crate) max_transfer: usize,
    pub(crate) sgl: bool,
    pub(crate) options: Options,
    /// The doorbell gate closed while a reset runs, and the generation
    /// bumped by every reset: a queue pair that sees it change re-creates
    /// its queues and resubmits what it had in flight.
    quiesce: Arc<Quiesce>,
    /// I/O queue ids created on the controller in this generation (and not
    /// deleted since): what a reset deletes before disabling.
    live_queues: Mutex<Vec<u16>>,
    /// Shadow doorbell pages, when in use.
    dbbuf: Option<Arc<ShadowDoorbells>>,
    /// Asynchronous Event Requests kept outstanding.
    aer_limit: usize,
    /// One eventfd per MSI-X vector, once interrupt mode was first asked for.
    irqs: Mutex<Option<Vec<Arc<vmm_sys_util::eventfd::EventFd>>>>,
    /// Per I/O queue id - 1: in use by a queue pair. Its length is the
    /// number of queue pairs the controller granted.
    qids: Mutex<Vec<bool>>,
    /// Whether the system took the device back ([`crate::removal`]).
    pub(crate) removal: Removal,
    address: PciAddress,
    /// The PCI function: VFIO, or an emulation.
    device: Box<dyn DeviceBacking>,
}

/// An NVMe controller driven from userspace through VFIO (or another
/// [`DeviceBacking`]). Cheap to clone; the controller is shut down when the
/// last handle and the last queue pair are gone.
#[derive(Debug, Clone)]
pub struct Controller {
    shared: Arc<Shared>,
}

impl Controller {
    /// Opens the controller at `address` (bound to vfio-pci), resets and
    /// enables it, identifies it and its namespaces, and negotiates the
    /// number of I/O queues. Queue pairs come from [`Controller::io_qpair`].
    pub fn open(address: PciAddress, options: Options) -> Result<Controller> {
        let vfio = VfioNvme::open(address).map_err(|e| e.at(InitStep::OpenDevice))?;
        Self::with_device(vfio, options)
    }

    /// Brings up the controller behind `device` as [`Controller::open`]
    /// does for a VFIO function: the same steps (bus mastering, disable,
    /// admin queue, enable, identify, shadow doorbells, queue count,
    /// namespaces, asynchronous events) on any [`DeviceBacking`], such as
    /// a controller emulated in this process.
    pub fn with_device(device: impl DeviceBacking, options: Options) -> Result<Controller> {
        let device: Box<dyn DeviceBacking> = Box::new(device);
        let address = device.address();
        enable_bus_master(device.as_ref()).map_err(|e| e.at(InitStep::OpenDevice))?;
        let bar = Arc::new(device.map_bar0().map_err(|e| e.at(InitStep::MapBar))?);
        let cap = Cap(bar.read64(regs::offset::CAP)?);
        let vs = Vs(bar.read32(regs::offset::VS)?);
        log::debug!("{address}: CAP {:#018x} VS {vs}", cap.0);
        check_cap(cap)?;
        let pool = DmaPool::new(device.dma().mapper(), options.prefer_huge_pages);

        disable(&bar, cap).map_err(|e| e.at(InitStep::Disable))?;
        let admin_entries = options
            .admin_queue_entries
            .clamp(2, 4096)
            .min(max_entries(cap));
        let admin = QueuePair::new(0, admin_entries, cap.dstrd(), bar.clone(), &pool)
            .and_then(|q| program_admin_queue(&bar, &q).map(|()| q))
            .map_err(|e| e.at(InitStep::AdminQueues))?;
        enable(&bar, cap)?;
        log::debug!("{address}: enabled");

        let mut shared = Shared {
            admin: Mutex::new(AdminQueue::new(admin)),
            quiesce: Arc::new(Quiesce::default()),
            live_queues: Mutex::new(Vec::new()),
            dbbuf: None,
            aer_limit: 0,
            irqs: Mutex::new(None),
            pool,
            bar,
            cap,
            vs,
            identify: Box::new(IdentifyController::new_zeroed()),
            namespaces: Vec::new(),
            max_transfer: PAGE_SIZE,
            sgl: false,
            options,
            qids: Mutex::new(Vec::new()),
            removal: Removal::unwatched(),
            address,
            device,
        };
        shared
            .identify_controller()
            .map_err(|e| e.at(InitStep::IdentifyController))?;
        shared
            .setup_shadow_doorbells()
            .map_err(|e| e.at(InitStep::ShadowDoorbells))?;
        let granted = shared
            .set_queue_count(&mut shared.lock_admin())
            .map_err(|e| e.at(InitStep::SetQueueCount))?;
        shared.qids = Mutex::new(vec![false; granted as usize]);
        shared
            .identify_namespaces()
            .map_err(|e| e.at(InitStep::IdentifyNamespaces))?;
        shared.aer_limit = device_data::aer_limit(&shared.identify);
        shared
            .lock_admin()
            .enable_aers(shared.aer_limit)
            .map_err(|e| e.at(InitStep::AsyncEvents))?;
        shared.configure_async_events();
        let request = shared
            .device
            .removal_request()
            .map_err(|e| e.at(InitStep::OpenDevice))?;
        let Some(request) = request else {
            return Ok(Controller {
                shared: Arc::new(shared),
            });
        };
        let (watch, stop) = removal::watched()?;
        shared.removal = watch;
        let shared = Arc::new(shared);
        removal::start_watcher(Arc::downgrade(&shared), request, stop)?;
        Ok(Controller { shared })
    }

    /// Whether the system took the device back (`remove` in sysfs, a
    /// hot-unplug): every request then fails with
    /// [`Error::DeviceRemoved`].
    pub fn is_removed(&self) -> bool {
        self.shared.removal.requested()
    }

    /// A new I/O queue pair, for the calling thread to own. Fails with
    /// [`Error::QueuesExhausted`] when every granted queue is in use.
    pub fn io_qpair(&self) -> Result<IoQPair> {
        let qid = self.shared.take_qid()?;
        match self.shared.create_io_queue(qid) {
            Ok((q, generation)) => Ok(IoQPair::new(self.shared.clone(), q, generation)),
            Err(e) => {
                self.shared.release_qid(qid);
                Err(e.at(InitStep::CreateIoQueues))
            }
        }
    }

    /// Resets the controller (CC.EN 0 then 1) and sets it up again. Queue
    /// pairs notice on their next poll, re-create their queues and resubmit
    /// the commands they had in flight.
    pub fn reset(&self) -> Result<()> {
        self.shared.reset_from(None)
    }

    /// Controller resets so far (each bumps this).
    pub fn generation(&self) -> u64 {
        self.shared.generation()
    }

    /// The asynchronous events the controller reported since the last call,
    /// oldest first (Asynchronous Event Requests are kept outstanding).
    pub fn async_events(&self) -> Result<Vec<nvme_spec::AsyncEvent>> {
        let mut admin = self.shared.lock_admin();
        admin.poll()?;
        Ok(admin.take_events())
    }

    /// Whether shadow doorbells are in use.
    pub fn uses_shadow_doorbells(&self) -> bool {
        self.shared.dbbuf.is_some()
    }

    /// A new I/O queue pair whose completion queue raises an MSI-X
    /// interrupt, so that [`IoQPair::wait`] can sleep instead of spinning
    /// (for queues that are often idle). The vector is the queue id.
    pub fn io_qpair_with_interrupts(&self) -> Result<IoQPair> {
        let qid = self.shared.take_qid()?;
        let result = self.shared.interrupt(qid).and_then(|irq| {
            let (q, generation) = self.shared.create_io_queue_with(qid, Some(qid))?;
            IoQPair::new(self.shared.clone(), q, generation).with_interrupt(irq)
        });
        if result.is_err() {
            self.shared.release_qid(qid);
        }
        result.map_err(|e| e.at(InitStep::CreateIoQueues))
    }

    /// The PCI address.
    pub fn address(&self) -> PciAddress {
        self.shared.address
    }

    /// Controller capabilities.
    pub fn cap(&self) -> Cap {
        self.shared.cap
    }

    /// The NVMe version the controller implements.
    pub fn version(&self) -> Vs {
        self.shared.vs
    }

    /// Identify Controller data.
    pub fn identify(&self) -> &IdentifyController {
        &self.shared.identify
    }

    /// The active namespaces, by id.
    pub fn namespaces(&self) -> &[Namespace] {
        &self.shared.namespaces
    }

    /// One active namespace.
    pub fn namespace(&self, nsid: u32) -> Result<&Namespace> {
        self.shared.namespace(nsid)
    }

    /// The largest transfer one command carries (MDTS).
    pub fn max_transfer(&self) -> usize {
        self.shared.max_transfer
    }

    /// Whether I/O data is described with SGLs (else PRPs).
    pub fn uses_sgl(&self) -> bool {
        self.shared.sgl
    }

    /// I/O queue pairs the controller granted.
    pub fn io_queue_limit(&self) -> usize {
        self.shared.lock_qids().len()
    }

    /// The pool DMA buffers come from.
    pub fn dma_pool(&self) -> &DmaPool {
        &self.shared.pool
    }

    /// Reads `len` bytes of log page `lid` (for namespace `nsid`, or
    /// 0xffffffff for the controller).
    pub fn get_log_page(&self, lid: u8, nsid: u32, len: usize) -> Result<Vec<u8>> {
        if len == 0 || !len.is_multiple_of(4) || len > 1 << 20 {
            return Err(Error::BadBuffer(format!(
                "log page length {len} is not a positive multiple of 4 up to 1 MiB"
            )));
        }
        let buf = self.shared.pool.alloc(len)?;
        let sqe = admin::get_log_page(lid, nsid, (len / 4) as u32, 0, false)
            .map_err(|e| Error::BadBuffer(e.to_string()))?;
        self.shared
            .admin_data(sqe, &buf, &format!("Get Log Page {lid:#04x}"))?;
        let mut out = vec![0u8; len];
        buf.read(0, &mut out)?;
        Ok(out)
    }

    /// The SMART / Health Information log (controller-wide).
    pub fn smart_log(&self) -> Result<SmartLog> {
        let raw = self.get_log_page(LogPageId::SmartHealth as u8, u32::MAX, 512)?;
        device_data::smart_log(&raw)
    }

    /// The valid entries of the Error Information log, newest first.
    pub fn error_log(&self) -> Result<Vec<ErrorLogEntry>> {
        let entries = device_data::error_log_entries(self.identify());
        let raw = self.get_log_page(
            LogPageId::ErrorInformation as u8,
            u32::MAX,
            entries * ErrorLogEntry::SIZE,
        )?;
        Ok(device_data::error_log(&raw))
    }

    /// Get Features: the completion's dword 0.
    pub fn get_features(&self, fid: u8, select: FeatureSelect, cdw11: u32) -> Result<u32> {
        let name = FeatureId::try_from(fid).map_or("vendor specific", |f| f.name());
        let cqe = self.shared.admin_cmd(
            admin::get_features(fid, select, cdw11),
            &format!("Get Features {fid:#04x} ({name})"),
        )?;
        Ok(cqe.result())
    }

    /// Set Features: the completion's dword 0.
    pub fn set_features(&self, fid: u8, cdw11: u32) -> Result<u32> {
        let name = FeatureId::try_from(fid).map_or("vendor specific", |f| f.name());
        let cqe = self.shared.admin_cmd(
            admin::set_features(fid, cdw11, false),
            &format!("Set Features {fid:#04x} ({name})"),
        )?;
        Ok(cqe.result())
    }
}

impl Shared {
    pub(crate) fn namespace(&self, nsid: u32) -> Result<&Namespace> {
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

    fn lock_admin(&self) -> MutexGuard<'_, AdminQueue> {
        self.admin.lock()
    }

    fn lock_qids(&self) -> MutexGuard<'_, Vec<bool>> {
        self.qids.lock()
    }

    /// Runs an admin command without data.
    pub(crate) fn admin_cmd(&self, sqe: Sqe, what: &str) -> Result<Cqe> {
        self.run_admin(&mut self.lock_admin(), sqe, what)
    }

    /// Runs an admin command on an admin queue already locked.
    fn run_admin(&self, admin: &mut AdminQueue, sqe: Sqe, what: &str) -> Result<Cqe> {
        if self.removal.requested() {
            return Err(removal::removed_error(self));
        }
        let cqe = admin
            .execute(sqe, self.options.admin_timeout)
            .map_err(|e| self.removed_or(e))?;
        check_status(cqe, what)
    }

    pub(crate) fn address(&self) -> PciAddress {
        self.address
    }

    /// `e`, or [`Error::DeviceRemoved`] if the device was taken away (an
    /// admin command meeting the all-ones BAR fails with fatal status).
    fn removed_or(&self, e: Error) -> Error {
        if self.removal.requested() {
            removal::removed_error(self)
        } else {
            e
        }
    }

    /// On the system's request to take the device back: marks the
    /// controller removed, retires BAR0 (all-ones memory in its place) and
    /// releases the device, so the kernel's removal can complete. Queue
    /// pairs fail their requests on their next poll. Runs once.
    pub(crate) fn handle_removal(&self) {
        if !self.removal.begin() {
            return;
        }
        let start = Instant::now();
        log::warn!(
            "{}: the system asks for the device back (removal); releasing it and failing its requests",
            self.address
        );
        if let Err(e) = self.bar.retire() {
            // The BAR mapping keeps the device file open: the kernel's
            // removal then waits until the controller's last handle goes.
            log::error!("{}: BAR0 could not be retired: {e}", self.address);
        }
        self.device.release();
        self.removal.finish();
        log::info!(
            "{}: device released {} us after the removal request",
            self.address,
            start.elapsed().as_micros()
        );
    }

    pub(crate) fn generation(&self) -> u64 {
        self.quiesce.generation()
    }

    /// Whether a reset is tearing down (or has torn down) the queues of
    /// `generation`.
    pub(crate) fn tearing_down(&self, generation: u64) -> bool {
        self.quiesce.tearing_down(generation)
    }

    fn lock_live_queues(&self) -> MutexGuard<'_, Vec<u16>> {
        self.live_queues.lock()
    }

    /// Doorbell Buffer Config, when wanted and supported: from then on every
    /// queue's doorbells go through the shadow page.
    fn setup_shadow_doorbells(&mut self) -> Result<()> {
        let supported = self
            .identify
            .oacs()
            .contains(nvme_spec::Oacs::DOORBELL_BUFFER_CONFIG);
        if !self.options.shadow_doorbells || !supported {
            return Ok(());
        }
        let dbbuf = Arc::new(ShadowDoorbells {
            shadow: self.pool.alloc(PAGE_SIZE)?,
            eventidx: self.pool.alloc(PAGE_SIZE)?,
        });
        self.send_dbbuf(&mut self.lock_admin(), &dbbuf)?;
        self.dbbuf = Some(dbbuf);
        log::debug!("{}: shadow doorbells on", self.address);
        Ok(())
    }

    fn send_dbbuf(&self, admin: &mut AdminQueue, dbbuf: &Arc<ShadowDoorbells>) -> Result<()> {
        dbbuf.shadow.fill(0, PAGE_SIZE, 0)?;
        dbbuf.eventidx.fill(0, PAGE_SIZE, 0)?;
        let mut sqe = admin::doorbell_buffer_config();
        sqe.set_prps(dbbuf.shadow.iova(), dbbuf.eventidx.iova());
        self.run_admin(admin, sqe, "Doorbell Buffer Config")?;
        admin.q.set_shadow(Some(dbbuf.clone()))
    }

    /// Asks for the events the driver reports (Asynchronous Event
    /// Configuration): every SMART/health critical warning, and the notices
    /// the controller says it can send (OAES). A controller that refuses is
    /// only logged: events are a diagnostic, not needed for I/O.
    fn configure_async_events(&self) {
        const SMART_WARNINGS: u32 = 0x3f;
        let notices = self.identify.oaes.get() & 0xffff_ff00;
        let aec = SMART_WARNINGS | notices;
        let sqe = admin::set_features(FeatureId::AsyncEventConfiguration as u8, aec, false);
        if let Err(e) = self.admin_cmd(sqe, "Set Features (Asynchronous Event Configuration)") {
            log::warn!("{}: asynchronous events stay off: {e}", self.address);
        }
    }

    /// Resets the controller unless it was already reset since generation
    /// `seen` (another queue pair got there first).
    pub(crate) fn reset_from(&self, seen: Option<u64>) -> Result<()> {
        if self.removal.requested() {
            return Err(removal::removed_error(self));
        }
        let mut admin = self.lock_admin();
        if seen.is_some_and(|g| g != self.generation()) {
            return Ok(());
        }
        match seen {
            // Asked for by the user.
            None => log::info!("{}: resetting the controller", self.address),
            Some(_) => log::warn!("{}: resetting the controller to recover", self.address),
        }
        // No queue pair writes a doorbell from here until the queues it
        // names are created again (the gate reopens when `closed` goes).
        let (closed, drained) = self.quiesce.close(DOORBELL_DRAIN_LIMIT);
        if !drained {
            log::warn!(
                "{}: a queue pair stayed inside a doorbell write for {} ms; resetting anyway",
                self.address,
                DOORBELL_DRAIN_LIMIT.as_millis()
            );
        }
        if seen.is_none() {
            self.delete_live_queues(&mut admin);
        } else {
            // Recovering: the controller is suspect, and deletes could
            // each wait out the admin timeout. The disable drops them.
            self.lock_live_queues().clear();
        }
        disable(&self.bar, self.cap).map_err(|e| e.at(InitStep::Disable))?;
        // The controller has dropped every queue and stopped all DMA.
        admin.q.reset_rings()?;
        admin.forget_aers();
        program_admin_queue(&self.bar, &admin.q)?;
        enable(&self.bar, self.cap)?;
        if let Some(dbbuf) = &self.dbbuf {
            self.send_dbbuf(&mut admin, dbbuf)
                .map_err(|e| e.at(InitStep::ShadowDoorbells))?;
        }
        let granted = self
            .set_queue_count(&mut admin)
            .map_err(|e| e.at(InitStep::SetQueueCount))?;
        let had = self.lock_qids().len();
        if (granted as usize) < had {
            log::warn!(
                "after the reset the controller grants {granted} I/O queue pairs, not {had}"
            );
        }
        admin
            .enable_aers(self.aer_limit)
            .map_err(|e| e.at(InitStep::AsyncEvents))?;
        // The new generation is published before the admin lock goes: a
        // queue pair that creates its queues from here on does so in this
        // generation's controller, and reads the generation under the
        // lock (`register_io_queue`), so it cannot record an older one.
        // Queues of the last generation stay shut; the gate reopens.
        self.quiesce.bump();
        drop(closed);
        drop(admin);
        self.configure_async_events();
        log::info!("{}: controller reset done", self.address);
        Ok(())
    }

    /// Runs an admin command that transfers `buf`.
    pub(crate) fn admin_data(&self, mut sqe: Sqe, buf: &DmaBuffer, what: &str) -> Result<Cqe> {
        if self.removal.requested() {
            return Err(removal::removed_error(self));
        }
        let prps = prp::build(&self.pool, buf.iova(), buf.len())?;
        sqe.set_prps(prps.prp1, prps.prp2);
        let cqe = self
            .lock_admin()
            .execute(sqe, self.options.admin_timeout)
            .map_err(|e| self.removed_or(e))?;
        drop(prps);
        check_status(cqe, what)
    }

    /// Runs Identify with `cns` for `nsid` and copies out the 4 KiB result.
    fn identify_data<T: FromBytes>(&self, cns: Cns, nsid: u32, what: &str) -> Result<Box<T>> {
        let buf = self.pool.alloc(IDENTIFY_SIZE)?;
        self.admin_data(admin::identify(cns, nsid, 0), &buf, what)?;
        read_struct::<T>(&buf)
    }

    fn identify_controller(&mut self) -> Result<()> {
        let id: Box<IdentifyController> =
            self.identify_data(Cns::Controller, 0, "Identify Controller")?;
        let limits =
            device_data::controller_limits(&id, self.cap.min_page_size(), self.options.use_sgl)?;
        self.max_transfer = limits.max_transfer;
        self.sgl = limits.sgl;
        log::debug!(
            "identify: model {:?} serial {:?} mdts {} -> max transfer {} bytes, {}",
            id.model().to_string(),
            id.serial().to_string(),
            id.mdts,
            self.max_transfer,
            if self.sgl { "SGLs" } else { "PRPs" }
        );
        self.identify = id;
        Ok(())
    }

    /// Set Features (Number of Queues); returns the I/O queue pairs granted.
    fn set_queue_count(&self, admin: &mut AdminQueue) -> Result<u32> {
        let wanted = u32::from(self.options.io_queues.max(1));
        let req = NumberOfQueues {
            sq: wanted,
            cq: wanted,
        };
        let cdw11 = req
            .to_cdw11()
            .map_err(|e| Error::BadBuffer(e.to_string()))?;
        let cqe = self.run_admin(
            admin,
            admin::set_features(FeatureId::NumberOfQueues as u8, cdw11, false),
            "Set Features (Number of Queues)",
        )?;
        let got = NumberOfQueues::from_dw0(cqe.result());
        // The controller may grant more than asked; use no more than asked.
        let granted = got.sq.min(got.cq).min(wanted);
        if granted == 0 {
            return Err(Error::BadDevice("controller granted no I/O queues".into()));
        }
        if granted < wanted {
            log::info!("asked for {wanted} I/O queue pairs, the controller granted {granted}");
        }
        Ok(granted)
    }

    fn identify_namespaces(&mut self) -> Result<()> {
        let list: Box<ActiveNamespaceList> = self.identify_data(
            Cns::ActiveNamespaceList,
            0,
            "Identify (active namespace list)",
        )?;
        for nsid in device_data::active_namespace_ids(&list, self.identify.nn()) {
            let id: Box<IdentifyNamespace> =
                self.identify_data(Cns::Namespace, nsid, &format!("Identify Namespace {nsid}"))?;
            match Namespace::from_identify(nsid, id) {
                Ok(ns) => self.namespaces.push(ns),
                Err(e) => log::warn!("skipping namespace {nsid}: {e}"),
            }
        }
        Ok(())
    }

    fn take_qid(&self) -> Result<u16> {
        let mut qids = self.lock_qids();
        let index = qids
            .iter()
            .position(|used| !used)
            .ok_or(Error::QueuesExhausted {
                granted: qids.len(),
            })?;
        qids[index] = true;
        u16::try_from(index + 1).map_err(|_| Error::QueuesExhausted { granted: index })
    }

    pub(crate) fn release_qid(&self, qid: u16) {
        if let Some(used) = self.lock_qids().get_mut(usize::from(qid).wrapping_sub(1)) {
            *used = false;
        }
    }

    /// The eventfd of MSI-X vector `vector`, enabling MSI-X the first time.
    fn interrupt(&self, vector: u16) -> Result<Arc<vmm_sys_util::eventfd::EventFd>> {
        let device = &self.device;
        let mut irqs = self.irqs.lock();
        if irqs.is_none() {
            // Vector 0 belongs to the admin queue; one more per I/O queue.
            let granted = self.lock_qids().len() as u32;
            let count = device.msix_vectors().min(granted + 1);
            let fds = (0..count)
                .map(|_| {
                    vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)
                        .map(Arc::new)
                        .map_err(|e| Error::os("creating an eventfd", e))
                })
                .collect::<Result<Vec<_>>>()?;
            device.enable_msix(&fds)?;
            log::debug!("{}: MSI-X enabled with {count} vectors", self.address);
            *irqs = Some(fds);
        }
        irqs.as_ref()
            .and_then(|fds| fds.get(usize::from(vector)).cloned())
            .ok_or_else(|| {
                Error::Unsupported(format!(
                    "queue {vector} has no MSI-X vector (the controller has {})",
                    device.msix_vectors()
                ))
            })
    }

    /// A new I/O queue pair on the controller, and the controller
    /// generation it was created in.
    fn create_io_queue(&self, qid: u16) -> Result<(QueuePair, u64)> {
        self.create_io_queue_with(qid, None)
    }

    fn create_io_queue_with(&self, qid: u16, vector: Option<u16>) -> Result<(QueuePair, u64)> {
        let entries = self
            .options
            .io_queue_entries
            .clamp(2, max_entries(self.cap));
        let mut q = QueuePair::new(qid, entries, self.cap.dstrd(), self.bar.clone(), &self.pool)?;
        q.set_irq_vector(vector);
        let generation = self.register_io_queue(&mut q)?;
        log::debug!("created I/O queue pair {qid} with {entries} entries");
        Ok((q, generation))
    }

    /// Creates the controller's side (CQ, then SQ) of a queue pair whose
    /// rings are empty: a new one, or one whose rings were reset. Returns
    /// the controller generation the queues now live in, read under the
    /// admin lock (a reset holds it until it has published its generation):
    /// one read before could be older than the controller the queues were
    /// created in, and the queue pair would create them again on its next
    /// poll, to be refused (the queue identifier is taken).
    pub(crate) fn register_io_queue(&self, q: &mut QueuePair) -> Result<u64> {
        let (qid, entries) = (q.qid(), q.entries());
        let range = |e: nvme_spec::RangeError| Error::BadBuffer(e.to_string());
        let mut admin = self.lock_admin();
        let generation = self.generation();
        q.set_gate(self.quiesce.clone(), generation);
        // Also clears what the queue's shadow slots kept from before a
        // reset: the controller reads them once the queues exist.
        q.set_shadow(self.dbbuf.clone())?;
        let mut cq = admin::create_io_cq(qid, entries, q.irq_vector()).map_err(range)?;
        cq.set_prps(q.cq_iova(), 0);
        self.run_admin(
            &mut admin,
            cq,
            &format!("Create I/O Completion Queue {qid}"),
        )?;
        let mut sq =
            admin::create_io_sq(qid, entries, qid, admin::QueuePriority::Medium).map_err(range)?;
        sq.set_prps(q.sq_iova(), 0);
        if let Err(e) = self.run_admin(
            &mut admin,
            sq,
            &format!("Create I/O Submission Queue {qid}"),
        ) {
            let _ = self.run_admin(
                &mut admin,
                admin::delete_io_cq(qid),
                "Delete I/O Completion Queue",
            );
            return Err(e);
        }
        self.lock_live_queues().push(qid);
        Ok(generation)
    }

    /// Deletes the controller's side of an I/O queue pair. The rings must
    /// stay allocated until this returns. A queue a reset has deleted (or
    /// dropped) since it was created needs nothing.
    pub(crate) fn delete_io_queue(&self, qid: u16) -> Result<()> {
        let mut admin = self.lock_admin();
        {
            let mut live = self.lock_live_queues();
            let before = live.len();
            live.retain(|&q| q != qid);
            if live.len() == before {
                return Ok(());
            }
        }
        self.send_queue_deletes(&mut admin, qid)
    }

    /// Delete I/O Submission Queue, then Delete I/O Completion Queue.
    fn send_queue_deletes(&self, admin: &mut AdminQueue, qid: u16) -> Result<()> {
        self.run_admin(
            admin,
            admin::delete_io_sq(qid),
            &format!("Delete I/O Submission Queue {qid}"),
        )?;
        self.run_admin(
            admin,
            admin::delete_io_cq(qid),
            &format!("Delete I/O Completion Queue {qid}"),
        )?;
        Ok(())
    }

    /// Before a requested reset, with the doorbells quiesced: deletes every
    /// I/O queue the controller has, as Linux's driver does before it
    /// disables a live controller. The controller then finishes or drops
    /// what those queues had in flight while they still exist, and the
    /// disable finds no queue to tear down. A controller that is not ready
    /// or reports a fatal status is disabled as it is; a delete that fails
    /// ends the deleting (the disable drops the rest).
    fn delete_live_queues(&self, admin: &mut AdminQueue) {
        let live = std::mem::take(&mut *self.lock_live_queues());
        match self.csts() {
            Ok(csts) if csts.ready() && !csts.fatal() && !csts.is_all_ones() => {}
            _ => return,
        }
        for qid in live {
            if let Err(e) = self.send_queue_deletes(admin, qid) {
                log::warn!("{}: before the reset: {e}", self.address);
                return;
            }
        }
    }

    /// Reads CSTS.
    pub(crate) fn csts(&self) -> Result<Csts> {
        Ok(Csts(self.bar.read32(regs::offset::CSTS)?))
    }

    fn shutdown(&self) -> Result<()> {
        let cc = Cc(self.bar.read32(regs::offset::CC)?).with_shn(ShutdownNotification::Normal);
        self.bar.write32(regs::offset::CC, cc.0)?;
        let rtd3e_ms = u64::from(self.identify.rtd3e.get()) / 1000;
        let limit = Duration::from_millis(rtd3e_ms.clamp(5_000, 60_000));
        let start = Instant::now();
        loop {
            let csts = self.csts()?;
            if csts.is_all_ones() {
                return Err(Error::ControllerFatal {
                    step: "shutdown".into(),
                    csts,
                });
            }
            if csts.shutdown_status() == ShutdownStatus::Complete {
                log::debug!("{}: shutdown complete", self.address);
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

impl Drop for Shared {
    fn drop(&mut self) {
        if self.removal.requested() {
            // Released: nothing left to shut down.
            return;
        }
        if let Err(e) = self.shutdown() {
            log::warn!("{}: clean shutdown failed: {e}", self.address);
        }
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

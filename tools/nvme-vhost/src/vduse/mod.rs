//! The same virtio-blk device offered to the local kernel through VDUSE
//! (vDPA Device in Userspace, Linux 5.15+; `vduse` + `virtio_vdpa`):
//! once attached with `vdpa dev add name NAME mgmtdev vduse`, the
//! kernel's own virtio_blk driver is the front end and `/dev/vdX`
//! appears. The virtqueues are served by the same [`Worker`]s, from the
//! same NVMe queue pairs, as the vhost-user front ends.
//!
//! Memory. The driver's DMA addresses are IOVAs of VDUSE's software
//! IOTLB: rings are "coherent" allocations above the bounce area, each
//! an IOTLB entry whose pages this process maps from the file
//! VDUSE_IOTLB_GET_FD returns; data buffers are bounced by the kernel
//! into the bounce area (IOVA 0 to `bounce_size`). That area's kernel
//! pages are allocated lazily, so they cannot be pinned for the NVMe
//! device whole; instead this process registers its own memory as the
//! bounce pages (VDUSE_IOTLB_REG_UMEM) and maps that memory into the
//! controller's IOMMU domain: NVMe commands then move data straight into
//! and out of the bounce pages (the kernel's copy between bounce page and
//! the request's page is VDUSE's own, and the only one).
//!
//! Every value from the kernel (ring addresses and sizes, IOTLB entries,
//! message fields) is checked before use; descriptors are parsed by the
//! same code as for vhost-user front ends.

#[allow(unsafe_code)]
mod sys;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::mmap::MmapRegionError;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionCollectionError, GuestRegionMmap, MmapRegion,
};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::backend::BlkBackend;
use crate::memtable::MemTable;
use crate::worker::{Notify, Worker, WorkerError};

/// Alignment of the rings' areas (the page).
const VQ_ALIGN: u32 = 4096;
/// How often the message loop looks at the stop flag.
const TICK_MS: i32 = 200;
/// Most IOTLB entries accepted (virtio_blk allocates a few per queue).
const MAX_IOTLB_ENTRIES: usize = 4096;
/// Largest IOTLB entry accepted outside the bounce area (VDUSE reserves
/// 128 MiB of IOVA space for rings).
const MAX_COHERENT_ENTRY: u64 = 128 << 20;
const PAGE: u64 = 4096;

/// Why the VDUSE device could not be served.
#[derive(Debug, thiserror::Error)]
pub enum VduseError {
    /// /dev/vduse/control could not be opened.
    #[error("opening /dev/vduse/control: {0} (is the vduse module loaded?)")]
    Control(io::Error),
    /// An ioctl or a file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The system's answer.
        source: io::Error,
    },
    /// The memory for the bounce area could not be allocated.
    #[error("allocating {size} bytes of bounce memory: {source}")]
    BounceMemory {
        /// The bounce area's size.
        size: u64,
        /// Why.
        source: MmapRegionError,
    },
    /// A virtqueue could not be made.
    #[error("virtqueue {index}: {source}")]
    Queue {
        /// The virtqueue.
        index: u32,
        /// Why.
        source: virtio_queue::Error,
    },
    /// A virtqueue value the driver gave was refused.
    #[error("virtqueue {index} from the driver: {what}: {source}")]
    DriverQueue {
        /// The virtqueue.
        index: u32,
        /// Which value (`size 256`, `driver area 0x...`).
        what: String,
        /// Why.
        source: virtio_queue::Error,
    },
}

/// Why a kick could not be served (logged; the queue thread serves the
/// next kick).
#[derive(Debug, thiserror::Error)]
enum ServeError {
    /// The ring addresses the driver gave are not in its IOTLB memory.
    #[error("the rings are not inside the driver's IOTLB memory")]
    Rings,
    /// The worker stopped serving the virtqueue.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// The used ring's notification state could not be read.
    #[error(transparent)]
    Queue(virtio_queue::Error),
    /// The driver could not be signalled.
    #[error("VDUSE_VQ_INJECT_IRQ: {0}")]
    Irq(#[source] io::Error),
    /// Where the bounce area is could not be asked.
    #[error("VDUSE_IOTLB_GET_INFO: {0}")]
    IotlbInfo(#[source] io::Error),
    /// The IOTLB has no bounce area yet.
    #[error("no bounce area in the IOTLB yet")]
    NoBounceArea,
    /// The IOTLB's first region is not the bounce area of the device.
    #[error(
        "the IOTLB's first region is {start:#x}..={last:#x}, not a bounce area of {size:#x} bytes"
    )]
    FirstRegion {
        /// The region's first IOVA.
        start: u64,
        /// Its last IOVA.
        last: u64,
        /// The bounce area's size.
        size: u64,
    },
    /// The kernel's bounce pages could not be asked for.
    #[error("VDUSE_IOTLB_GET_FD at 0: {0}")]
    BounceFd(#[source] io::Error),
    /// The IOTLB has no entry for the bounce area.
    #[error("no bounce area in the IOTLB")]
    NoBounceEntry,
    /// The IOTLB's bounce entry is not the whole area, read-write.
    #[error(
        "IOTLB bounce entry {start:#x}..={last:#x} perm {perm}: expected 0..={:#x} read-write",
        .size - 1
    )]
    BounceEntry {
        /// The entry's first IOVA.
        start: u64,
        /// Its last IOVA.
        last: u64,
        /// Its permission.
        perm: u8,
        /// The bounce area's size.
        size: u64,
    },
    /// The kernel's bounce pages could not be mapped.
    #[error("mapping the kernel's bounce pages: {0}")]
    MapBounce(#[source] MmapRegionError),
    /// The kernel's bounce pages do not fit the address space.
    #[error("bounce region overflows")]
    BounceOverflows,
    /// An IOTLB entry above the bounce area could not be asked for.
    #[error("VDUSE_IOTLB_GET_FD at {at:#x}: {source}")]
    CoherentFd {
        /// Where the search started.
        at: u64,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An IOTLB entry the kernel gave is not acceptable.
    #[error(transparent)]
    Entry(#[from] BadEntry),
    /// An IOTLB entry could not be mapped.
    #[error("IOTLB entry {start:#x}..={last:#x} (offset {offset:#x}): mmap: {source}")]
    MapEntry {
        /// The entry's first IOVA.
        start: u64,
        /// Its last IOVA.
        last: u64,
        /// Its offset in the file the kernel gave.
        offset: u64,
        /// Why.
        #[source]
        source: MmapRegionError,
    },
    /// An IOTLB entry does not fit the address space.
    #[error("IOTLB entry {start:#x}..={last:#x} (offset {offset:#x}): overflows")]
    EntryOverflows {
        /// The entry's first IOVA.
        start: u64,
        /// Its last IOVA.
        last: u64,
        /// Its offset in the file the kernel gave.
        offset: u64,
    },
    /// More IOTLB entries than any driver makes.
    #[error("more than {MAX_IOTLB_ENTRIES} IOTLB entries")]
    TooManyEntries,
    /// The IOTLB's regions make no guest memory (they overlap).
    #[error("the driver's IOTLB regions: {0}")]
    Regions(#[source] GuestRegionCollectionError),
    /// The bounce memory could not be mapped for the NVMe device.
    #[error("mapping the bounce memory for the device: {0}")]
    MapTable(#[source] nvme_driver::Error),
}

/// Why this process's memory could not be registered as the bounce pages
/// (the kernel's own are used then).
#[derive(Debug, thiserror::Error)]
enum UmemError {
    /// The kernel does not offer it for this area.
    #[error("the bounce area does not take user memory")]
    NotOffered,
    /// The pinned pages would not be allowed.
    #[error("raising RLIMIT_MEMLOCK for {size} bytes of bounce memory: {source}")]
    Memlock {
        /// The bounce area's size.
        size: u64,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the memory.
    #[error(
        "VDUSE_IOTLB_REG_UMEM of {size} bytes: {source} (RLIMIT_MEMLOCK is {limit} bytes; \
         it must cover the bounce area)"
    )]
    Register {
        /// The bounce area's size.
        size: u64,
        /// RLIMIT_MEMLOCK after raising it.
        limit: u64,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
}

/// An IOTLB entry above the bounce area that is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("IOTLB entry {start:#x}..={last:#x} (offset {offset:#x}, perm {perm}): {why}")]
struct BadEntry {
    /// The entry's first IOVA.
    start: u64,
    /// Its last IOVA.
    last: u64,
    /// Its offset in the file the kernel gave.
    offset: u64,
    /// Its permission.
    perm: u8,
    /// What is wrong.
    why: &'static str,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> VduseError {
    let what = what.into();
    move |source| VduseError::Io { what, source }
}

/// Set by SIGTERM and SIGINT: the message loop ends, the device goes.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    STOP.store(true, Ordering::Relaxed);
}

/// Creates the VDUSE device `name` for `backend`'s namespace, serves it
/// until SIGTERM or SIGINT, then destroys it. The device must be
/// detached (`vdpa dev del NAME`) before the signal for the destruction
/// to succeed (otherwise the kernel refuses with EBUSY; logged).
///
/// With `kernel_bounce`, the kernel keeps its own bounce pages and data is
/// copied between them and DMA buffers (what happens anyway when this
/// process's memory cannot be registered).
pub fn serve(backend: BlkBackend, name: &str, kernel_bounce: bool) -> Result<(), VduseError> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        vmm_sys_util::signal::register_signal_handler(sig, on_stop_signal)
            .map_err(|e| io_err("installing the signal handler")(io::Error::from(e)))?;
    }
    let mut device = Device::create(&backend, name, kernel_bounce)?;
    let result = device.run();
    let destroyed = device.destroy();
    result.and(destroyed)
}

/// The created device: the control file, the device file, and what
/// lives as long as the device.
#[derive(Debug)]
struct Device {
    name: String,
    control: File,
    shared: Arc<Shared>,
    queues: Vec<QueueThread>,
}

/// What the message loop and the queue threads share.
#[derive(Debug)]
struct Shared {
    dev: File,
    backend: BlkBackend,
    /// This process's memory given to the kernel as the bounce pages of
    /// IOVA 0.. (registered at the first request, once the bounce area
    /// exists), mapped for the NVMe device through the memory table.
    bounce: Arc<GuestRegionMmap<()>>,
    /// Decided at the first request.
    bounce_mode: Mutex<Option<BounceMode>>,
    /// The memory table (built at the first request; dropped on reset and
    /// on an IOTLB update).
    table: RwLock<Option<Arc<MemTable>>>,
}

/// Where the bounce area's pages come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BounceMode {
    /// This process's memory (VDUSE_IOTLB_REG_UMEM), mapped for the NVMe
    /// device: data moves without a copy here.
    Registered,
    /// The kernel's own pages, mapped from the IOTLB file for the CPU
    /// only: data is copied through DMA buffers.
    Kernel,
}

/// One running virtqueue.
#[derive(Debug)]
struct QueueThread {
    queue: Arc<Mutex<Queue>>,
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Device {
    fn create(backend: &BlkBackend, name: &str, kernel_bounce: bool) -> Result<Device, VduseError> {
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/vduse/control")
            .map_err(VduseError::Control)?;
        sys::set_api_version(&control).map_err(io_err("VDUSE_SET_API_VERSION"))?;
        let config = backend.config();
        let features =
            config.features() | 1u64 << VIRTIO_F_ACCESS_PLATFORM | 1u64 << VIRTIO_F_VERSION_1;
        sys::create_dev(
            &control,
            name,
            VIRTIO_ID_BLOCK,
            features,
            u32::from(config.queues),
            VQ_ALIGN,
            &config.bytes(),
        )
        .map_err(io_err(format!("VDUSE_CREATE_DEV {name}")))?;
        log::info!(
            "VDUSE device {name} created: {} virtqueues of {} descriptors, features {features:#x}",
            config.queues,
            config.queue_size
        );
        let path = Path::new("/dev/vduse").join(name);
        let dev = match open_device(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = sys::destroy_dev(&control, name);
                return Err(io_err(format!("opening {}", path.display()))(e));
            }
        };
        let setup = (0..u32::from(config.queues))
            .try_for_each(|i| sys::vq_setup(&dev, i, config.queue_size))
            .map_err(io_err("VDUSE_VQ_SETUP"))
            .and_then(|()| bounce_area(name));
        let bounce = match setup {
            Ok(b) => b,
            Err(e) => {
                drop(dev);
                let _ = sys::destroy_dev(&control, name);
                return Err(e);
            }
        };
        Ok(Device {
            name: name.to_string(),
            control,
            shared: Arc::new(Shared {
                dev,
                backend: backend.clone(),
                bounce: Arc::new(bounce),
                bounce_mode: Mutex::new(kernel_bounce.then_some(BounceMode::Kernel)),
                table: RwLock::new(None),
            }),
            queues: Vec::new(),
        })
    }

    /// The message loop, until a stop signal.
    fn run(&mut self) -> Result<(), VduseError> {
        let epoll = Epoll::new().map_err(io_err("epoll"))?;
        epoll
            .ctl(
                ControlOperation::Add,
                std::os::fd::AsRawFd::as_raw_fd(&self.shared.dev),
                EpollEvent::new(EventSet::IN, 0),
            )
            .map_err(io_err("epoll"))?;
        let mut events = [EpollEvent::default(); 1];
        let mut status = 0u8;
        log::info!(
            "serving; attach with `vdpa dev add name {0} mgmtdev vduse`",
            self.name
        );
        while !STOP.load(Ordering::Relaxed) {
            match epoll.wait(TICK_MS, &mut events) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("waiting for VDUSE messages")(e)),
            }
            let mut raw = [0u8; sys::MSG_SIZE];
            match (&self.shared.dev).read(&mut raw) {
                Ok(n) if n == sys::MSG_SIZE => {}
                Ok(n) => {
                    log::error!("VDUSE message of {n} bytes, expected {}", sys::MSG_SIZE);
                    continue;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(io_err("reading a VDUSE message")(e)),
            }
            let req = sys::Request::parse(&raw);
            let resp = self.handle(&req, &mut status);
            (&self.shared.dev)
                .write_all(&resp)
                .map_err(io_err("answering a VDUSE message"))?;
        }
        log::info!("stop signal: stopping the virtqueues");
        self.stop_queues();
        Ok(())
    }

    /// Answers one request.
    fn handle(&mut self, req: &sys::Request, status: &mut u8) -> [u8; sys::MSG_SIZE] {
        match req.kind {
            sys::REQ_SET_STATUS => {
                let new = req.body[0];
                log::info!("device status {:#04x} -> {new:#04x}", *status);
                let driver_ok = VIRTIO_CONFIG_S_DRIVER_OK as u8;
                let mut result = sys::RESULT_OK;
                if new & driver_ok != 0 && self.queues.is_empty() {
                    if let Err(e) = self.start_queues() {
                        log::error!("starting the virtqueues: {e}");
                        self.stop_queues();
                        result = sys::RESULT_FAILED;
                    }
                } else if new & driver_ok == 0 && !self.queues.is_empty() {
                    // A reset (or a driver giving up): drain, forget the
                    // rings and the memory table.
                    self.stop_queues();
                }
                if result == sys::RESULT_OK {
                    *status = new;
                }
                sys::response(req.id, result, None)
            }
            sys::REQ_GET_VQ_STATE => {
                let index = req.u32_at(0);
                let avail = match self.queues.get(index as usize) {
                    Some(q) => lock(&q.queue).next_avail(),
                    None if index < u32::from(self.shared.backend.config().queues) => 0,
                    None => {
                        log::warn!("GET_VQ_STATE of virtqueue {index}, which does not exist");
                        return sys::response(req.id, sys::RESULT_FAILED, None);
                    }
                };
                sys::response(req.id, sys::RESULT_OK, Some((index, avail)))
            }
            sys::REQ_UPDATE_IOTLB => {
                let (start, last) = (req.u64_at(0), req.u64_at(8));
                log::info!("IOTLB update {start:#x}..={last:#x}: the memory table is rebuilt");
                // Queue threads finish with the table they hold; the next
                // request builds a new one from the IOTLB.
                *self.shared.table.write().unwrap_or_else(|e| e.into_inner()) = None;
                sys::response(req.id, sys::RESULT_OK, None)
            }
            other => {
                log::warn!("unknown VDUSE request type {other}");
                sys::response(req.id, sys::RESULT_FAILED, None)
            }
        }
    }

    /// DRIVER_OK: reads every ready virtqueue's rings and starts a thread
    /// (with its own NVMe queue pair) on its kick eventfd.
    fn start_queues(&mut self) -> Result<(), VduseError> {
        let config = self.shared.backend.config().clone();
        let features =
            sys::driver_features(&self.shared.dev).map_err(io_err("VDUSE_DEV_GET_FEATURES"))?;
        let event_idx = features & (1u64 << VIRTIO_RING_F_EVENT_IDX) != 0;
        log::info!("driver features {features:#x}");
        for index in 0..u32::from(config.queues) {
            let info = sys::vq_info(&self.shared.dev, index)
                .map_err(io_err(format!("VDUSE_VQ_GET_INFO {index}")))?;
            let mut queue = Queue::new(config.queue_size)
                .map_err(|source| VduseError::Queue { index, source })?;
            if info.ready == 0 {
                log::info!("virtqueue {index}: not ready");
                // Keeps the indices in step with the queue numbers.
                self.queues.push(QueueThread {
                    queue: Arc::new(Mutex::new(queue)),
                    stop: EventFd::new(EFD_NONBLOCK).map_err(io_err("eventfd"))?,
                    handle: None,
                });
                continue;
            }
            let bad = |why: String| VduseError::Io {
                what: format!("virtqueue {index} from the driver"),
                source: io::Error::new(io::ErrorKind::InvalidData, why),
            };
            let refused = |what: String| {
                move |source| VduseError::DriverQueue {
                    index,
                    what,
                    source,
                }
            };
            let num = u16::try_from(info.num)
                .map_err(|_| bad(format!("size {} is too big", info.num)))?;
            queue
                .try_set_size(num)
                .map_err(refused(format!("size {num}")))?;
            queue
                .try_set_desc_table_address(GuestAddress(info.desc_addr))
                .map_err(refused(format!("descriptor table {:#x}", info.desc_addr)))?;
            queue
                .try_set_avail_ring_address(GuestAddress(info.driver_addr))
                .map_err(refused(format!("driver area {:#x}", info.driver_addr)))?;
            queue
                .try_set_used_ring_address(GuestAddress(info.device_addr))
                .map_err(refused(format!("device area {:#x}", info.device_addr)))?;
            queue.set_event_idx(event_idx);
            queue.set_next_avail(info.state[0]);
            queue.set_next_used(info.state[0]);
            queue.set_ready(true);
            log::info!(
                "virtqueue {index}: {num} descriptors at {:#x}, driver area {:#x}, device area {:#x}",
                info.desc_addr,
                info.driver_addr,
                info.device_addr
            );
            let kick = EventFd::new(EFD_NONBLOCK).map_err(io_err("eventfd"))?;
            let stop = EventFd::new(EFD_NONBLOCK).map_err(io_err("eventfd"))?;
            let queue = Arc::new(Mutex::new(queue));
            let worker = self
                .shared
                .backend
                .worker(index as usize)
                .map_err(io_err(format!("virtqueue {index}")))?;
            let thread = {
                let shared = self.shared.clone();
                let queue = queue.clone();
                let kick = kick.try_clone().map_err(io_err("eventfd"))?;
                let stop = stop.try_clone().map_err(io_err("eventfd"))?;
                std::thread::Builder::new()
                    .name(format!("vduse-vq{index}"))
                    .spawn(move || shared.run_queue(index, worker, &queue, &kick, &stop))
                    .map_err(io_err("spawning a queue thread"))?
            };
            self.queues.push(QueueThread {
                queue,
                stop,
                handle: Some(thread),
            });
            // A kick before this point is delivered now.
            sys::vq_setup_kickfd(&self.shared.dev, index, &kick)
                .map_err(io_err(format!("VDUSE_VQ_SETUP_KICKFD {index}")))?;
        }
        Ok(())
    }

    /// Stops every queue thread (each first finishes what it started) and
    /// forgets the memory table.
    fn stop_queues(&mut self) {
        if self.queues.is_empty() {
            return;
        }
        for q in &self.queues {
            if let Err(e) = q.stop.write(1) {
                log::error!("stopping a queue thread: {e}");
            }
        }
        for q in &mut self.queues {
            if let Some(h) = q.handle.take()
                && h.join().is_err()
            {
                log::error!("a queue thread panicked");
            }
        }
        self.queues.clear();
        *self.shared.table.write().unwrap_or_else(|e| e.into_inner()) = None;
        let (direct, bounced, failed, unsupported) = self.shared.backend.stats().snapshot();
        log::info!(
            "virtqueues stopped: requests direct {direct}, bounced {bounced}, \
             failed {failed}, unsupported {unsupported}"
        );
    }

    /// Closes the device file and destroys the device.
    fn destroy(mut self) -> Result<(), VduseError> {
        self.stop_queues();
        let Device {
            name,
            control,
            shared,
            ..
        } = self;
        // The device file must be closed first (the kernel refuses to
        // destroy a device that is open); queue threads are gone, so the
        // Arc is the last one.
        match Arc::try_unwrap(shared) {
            Ok(shared) => drop(shared),
            Err(_) => log::error!("device file still shared at teardown"),
        }
        match sys::destroy_dev(&control, &name) {
            Ok(()) => {
                log::info!("VDUSE device {name} destroyed");
                Ok(())
            }
            Err(e) => Err(io_err(format!(
                "VDUSE_DESTROY_DEV {name} (still attached? `vdpa dev del {name}` first)"
            ))(e)),
        }
    }
}

/// Opens /dev/vduse/NAME (devtmpfs makes it as the device is created).
fn open_device(path: &Path) -> io::Result<File> {
    let mut tries = 0;
    loop {
        match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
        {
            Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// This process's memory for the bounce area, as big as the device's
/// (`/sys/class/vduse/NAME/bounce_size`, 64 MiB by default).
fn bounce_area(name: &str) -> Result<GuestRegionMmap<()>, VduseError> {
    let path = Path::new("/sys/class/vduse").join(name).join("bounce_size");
    let text =
        std::fs::read_to_string(&path).map_err(io_err(format!("reading {}", path.display())))?;
    let size: u64 = text.trim().parse().map_err(|_| VduseError::Io {
        what: format!("{}", path.display()),
        source: io::Error::new(io::ErrorKind::InvalidData, format!("{:?}", text.trim())),
    })?;
    if size == 0 || !size.is_multiple_of(PAGE) || size > 1 << 30 {
        return Err(VduseError::Io {
            what: format!("{}", path.display()),
            source: io::Error::new(io::ErrorKind::InvalidData, format!("bounce size {size}")),
        });
    }
    let region = MmapRegion::<()>::new(size as usize)
        .map_err(|source| VduseError::BounceMemory { size, source })?;
    GuestRegionMmap::new(region, GuestAddress(0)).ok_or_else(|| VduseError::Io {
        what: "bounce memory".into(),
        source: io::Error::other("region overflows"),
    })
}

/// Signals virtqueue `index`'s interrupt.
struct Irq<'a> {
    dev: &'a File,
    index: u32,
}

impl Notify for Irq<'_> {
    fn notify(&self) -> io::Result<()> {
        sys::vq_inject_irq(self.dev, self.index)
    }
}

impl Shared {
    /// A queue thread: serves the virtqueue on every kick until stopped.
    fn run_queue(
        &self,
        index: u32,
        mut worker: Worker,
        queue: &Mutex<Queue>,
        kick: &EventFd,
        stop: &EventFd,
    ) {
        let setup = || -> io::Result<Epoll> {
            let epoll = Epoll::new()?;
            for (fd, data) in [
                (std::os::fd::AsRawFd::as_raw_fd(kick), 0u64),
                (std::os::fd::AsRawFd::as_raw_fd(stop), 1),
            ] {
                epoll.ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, data),
                )?;
            }
            Ok(epoll)
        };
        let epoll = match setup() {
            Ok(e) => e,
            Err(e) => {
                log::error!("virtqueue {index}: epoll: {e}");
                return;
            }
        };
        let mut events = [EpollEvent::default(); 2];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("virtqueue {index}: waiting for kicks: {e}");
                    return;
                }
            };
            if events[..n].iter().any(|e| e.data() == 1) {
                return;
            }
            let _ = kick.read();
            if let Err(e) = self.serve_queue(index, &mut worker, queue) {
                log::error!("virtqueue {index}: {e}");
            }
        }
    }

    /// Serves what the virtqueue holds (and what comes while commands
    /// are in flight), then signals the driver if the queue asks for it.
    fn serve_queue(
        &self,
        index: u32,
        worker: &mut Worker,
        queue: &Mutex<Queue>,
    ) -> Result<(), ServeError> {
        let mut table = self.table()?;
        let mut q = lock(queue);
        let irq = Irq {
            dev: &self.dev,
            index,
        };
        if !q.is_valid(&*table.memory()) {
            return Err(ServeError::Rings);
        }
        let mut unsignalled = false;
        loop {
            let current = || {
                self.table
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .is_some_and(|t| Arc::ptr_eq(t, &table))
            };
            let served = worker.serve_with(&mut q, &table, Some(&irq), None, &current)?;
            unsignalled |= served.unsignalled;
            if !served.again {
                break;
            }
            table = self.table()?;
        }
        if unsignalled
            && q.needs_notification(&*table.memory())
                .map_err(ServeError::Queue)?
        {
            irq.notify().map_err(ServeError::Irq)?;
        }
        Ok(())
    }

    /// The memory table, built from the IOTLB if there is none.
    fn table(&self) -> Result<Arc<MemTable>, ServeError> {
        if let Some(t) = self
            .table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            return Ok(t.clone());
        }
        let mut slot = self.table.write().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = slot.as_ref() {
            return Ok(t.clone());
        }
        let mode = self.bounce_mode()?;
        let bounce = match mode {
            BounceMode::Registered => self.bounce.clone(),
            BounceMode::Kernel => self.kernel_bounce()?,
        };
        let mut regions = vec![bounce];
        regions.extend(self.coherent_regions()?);
        let mem = GuestMemoryMmap::from_arc_regions(regions).map_err(ServeError::Regions)?;
        let mem = Arc::new(mem);
        self.probe_ring_pinning(&mem);
        // Only the bounce area holds data: it alone is mapped for the
        // NVMe device, when it is this process's memory.
        let table =
            MemTable::build_with(self.backend.dma_pool(), mem, &MemTable::default(), &|gpa| {
                mode == BounceMode::Registered && gpa == GuestAddress(0)
            })
            .map_err(ServeError::MapTable)?;
        log::info!("memory table: {} IOTLB regions", table.len());
        let table = Arc::new(table);
        *slot = Some(table.clone());
        Ok(table)
    }

    /// Decides (once) where the bounce pages come from: this process's
    /// memory, registered with the kernel (which keeps it until the
    /// device file is closed), unless that fails or was not wanted. The
    /// bounce area exists in the IOTLB from the driver's first DMA
    /// mapping, so before the first request's kick.
    fn bounce_mode(&self) -> Result<BounceMode, ServeError> {
        let mut mode = lock(&self.bounce_mode);
        if let Some(m) = *mode {
            return Ok(m);
        }
        let size = self.bounce.len();
        let info = sys::iotlb_info(&self.dev, 0, 0)
            .map_err(ServeError::IotlbInfo)?
            .ok_or(ServeError::NoBounceArea)?;
        if info.start != 0 || info.last != size - 1 {
            return Err(ServeError::FirstRegion {
                start: info.start,
                last: info.last,
                size,
            });
        }
        self.probe_bounce_pinning(size);
        let m = match self.register_bounce(size, info.capability) {
            Ok(()) => {
                log::info!("bounce area: {size} bytes of this process's memory registered");
                BounceMode::Registered
            }
            Err(e) => {
                log::warn!(
                    "{e}; the kernel keeps its bounce pages and data is copied through DMA buffers"
                );
                BounceMode::Kernel
            }
        };
        *mode = Some(m);
        Ok(m)
    }

    /// VDUSE_IOTLB_REG_UMEM of the bounce memory.
    fn register_bounce(&self, size: u64, capability: u64) -> Result<(), UmemError> {
        if capability & sys::IOVA_CAP_UMEM == 0 {
            return Err(UmemError::NotOffered);
        }
        // The kernel counts the pinned pages against RLIMIT_MEMLOCK (on
        // top of what is pinned already), CAP_IPC_LOCK or not.
        let limit =
            sys::raise_memlock(u64::MAX).map_err(|source| UmemError::Memlock { size, source })?;
        let uaddr = self.bounce.as_ptr() as u64;
        sys::reg_umem(&self.dev, uaddr, size).map_err(|source| UmemError::Register {
            size,
            limit,
            source,
        })
    }

    /// The kernel's bounce pages, mapped from the IOTLB file.
    fn kernel_bounce(&self) -> Result<Arc<GuestRegionMmap<()>>, ServeError> {
        let size = self.bounce.len();
        let (entry, file) = sys::iotlb_get_fd(&self.dev, 0, 0)
            .map_err(ServeError::BounceFd)?
            .ok_or(ServeError::NoBounceEntry)?;
        if entry.start != 0 || entry.last != size - 1 || entry.perm != sys::ACCESS_RW {
            return Err(ServeError::BounceEntry {
                start: entry.start,
                last: entry.last,
                perm: entry.perm,
                size,
            });
        }
        let region = MmapRegion::<()>::build(
            Some(FileOffset::new(file, entry.offset)),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
        .map_err(ServeError::MapBounce)?;
        GuestRegionMmap::new(region, GuestAddress(0))
            .map(Arc::new)
            .ok_or(ServeError::BounceOverflows)
    }

    /// Evidence for the docs: whether the controller's IOMMU can pin the
    /// kernel's own bounce pages through the IOTLB file (it cannot when
    /// any of them is not allocated yet: the mmap fault handler returns
    /// SIGBUS, which pinning reports as EFAULT).
    fn probe_bounce_pinning(&self, size: u64) {
        let result = sys::iotlb_get_fd(&self.dev, 0, 0)
            .map_err(|e| e.to_string())
            .and_then(|found| {
                let (entry, file) = found.ok_or("no bounce entry")?;
                let region = MmapRegion::<()>::build(
                    Some(FileOffset::new(file, entry.offset)),
                    size as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                )
                .map_err(|e| e.to_string())?;
                self.backend
                    .dma_pool()
                    .map_mmap_region(Arc::new(region))
                    .map(drop)
                    .map_err(|e| e.to_string())
            });
        match result {
            Ok(()) => log::info!("pin probe: the kernel's bounce pages could be pinned"),
            Err(e) => log::info!("pin probe: the kernel's bounce pages cannot be pinned: {e}"),
        }
    }

    /// Evidence for the docs: whether a ring area mapped from the IOTLB
    /// file can be pinned for the controller (not needed: no data is
    /// there).
    fn probe_ring_pinning(&self, mem: &GuestMemoryMmap<()>) {
        if let Some(r) = mem.iter().find(|r| r.start_addr() != GuestAddress(0)) {
            match self.backend.dma_pool().map_mmap_region(r.get_mmap()) {
                Ok(_) => log::info!("pin probe: a ring area from the IOTLB file could be pinned"),
                Err(e) => log::info!("pin probe: a ring area cannot be pinned: {e}"),
            }
        }
    }

    /// The IOTLB's regions above the bounce area (the rings), each mapped
    /// from the file VDUSE gives for it.
    fn coherent_regions(&self) -> Result<Vec<Arc<GuestRegionMmap<()>>>, ServeError> {
        let mut out = Vec::new();
        let mut at = self.bounce.len();
        while out.len() < MAX_IOTLB_ENTRIES {
            let Some((entry, file)) = sys::iotlb_get_fd(&self.dev, at, u64::MAX)
                .map_err(|source| ServeError::CoherentFd { at, source })?
            else {
                return Ok(out);
            };
            let (len, prot) = check_coherent_entry(&entry, at)?;
            let (start, last, offset) = (entry.start, entry.last, entry.offset);
            let region = MmapRegion::<()>::build(
                Some(FileOffset::new(file, entry.offset)),
                len as usize,
                prot,
                libc::MAP_SHARED,
            )
            .map_err(|source| ServeError::MapEntry {
                start,
                last,
                offset,
                source,
            })?;
            let region = GuestRegionMmap::new(region, GuestAddress(entry.start)).ok_or(
                ServeError::EntryOverflows {
                    start,
                    last,
                    offset,
                },
            )?;
            out.push(Arc::new(region));
            match entry.last.checked_add(1) {
                Some(next) => at = next,
                None => return Ok(out),
            }
        }
        Err(ServeError::TooManyEntries)
    }
}

/// Checks an IOTLB entry above the bounce area that VDUSE_IOTLB_GET_FD
/// returned for a search from `at`: it starts at or after `at`, is not
/// empty, at most [`MAX_COHERENT_ENTRY`] bytes, page-aligned (address and
/// file offset), with a known permission. Returns its length and the
/// mmap protection.
fn check_coherent_entry(entry: &sys::IotlbEntry, at: u64) -> Result<(u64, i32), BadEntry> {
    let bad = |why: &'static str| BadEntry {
        start: entry.start,
        last: entry.last,
        offset: entry.offset,
        perm: entry.perm,
        why,
    };
    if entry.start < at || entry.last < entry.start {
        return Err(bad("not after the previous one"));
    }
    let len = (entry.last - entry.start)
        .checked_add(1)
        .ok_or_else(|| bad("too big"))?;
    if len > MAX_COHERENT_ENTRY
        || !entry.start.is_multiple_of(PAGE)
        || !entry.offset.is_multiple_of(PAGE)
    {
        return Err(bad("too big or not page-aligned"));
    }
    let prot = match entry.perm {
        sys::ACCESS_RW => libc::PROT_READ | libc::PROT_WRITE,
        sys::ACCESS_RO => libc::PROT_READ,
        sys::ACCESS_WO => libc::PROT_WRITE,
        _ => return Err(bad("unknown permission")),
    };
    Ok((len, prot))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(start: u64, last: u64, offset: u64, perm: u8) -> sys::IotlbEntry {
        sys::IotlbEntry {
            offset,
            start,
            last,
            perm,
            ..sys::IotlbEntry::default()
        }
    }

    #[test]
    fn coherent_entries_from_the_kernel_are_checked() {
        let at = 64 << 20;
        let ring = entry(at, at + 0x2fff, at, sys::ACCESS_RW);
        assert_eq!(
            check_coherent_entry(&ring, at),
            Ok((0x3000, libc::PROT_READ | libc::PROT_WRITE))
        );
        // A ring area whose size is not whole pages is fine (mmap rounds).
        assert_eq!(
            check_coherent_entry(&entry(at, at + 0x28ff, at, sys::ACCESS_RW), at).map(|r| r.0),
            Ok(0x2900)
        );
        for (bad, why) in [
            (
                entry(at - PAGE, at + 0xfff, 0, sys::ACCESS_RW),
                "before the search start",
            ),
            (
                entry(at + PAGE, at, at, sys::ACCESS_RW),
                "last before start",
            ),
            (entry(0, u64::MAX, 0, sys::ACCESS_RW), "the whole space"),
            (
                entry(at, at + MAX_COHERENT_ENTRY, at, sys::ACCESS_RW),
                "too big",
            ),
            (
                entry(at + 8, at + 0xfff, at, sys::ACCESS_RW),
                "unaligned start",
            ),
            (
                entry(at, at + 0xfff, at + 8, sys::ACCESS_RW),
                "unaligned offset",
            ),
            (entry(at, at + 0xfff, at, 0), "no permission"),
            (entry(at, at + 0xfff, at, 7), "unknown permission"),
        ] {
            assert!(check_coherent_entry(&bad, at).is_err(), "{why}");
        }
    }
}

//! The vhost-user back end (rust-vmm's `vhost-user-backend`): features,
//! configuration space, memory-table updates, and one thread per
//! virtqueue, each with its own NVMe queue pair. Its vrings are
//! [`crate::vring::Vring`]s, which keep copies of the kick and call
//! eventfds for the queue thread from one kick to the next.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use nvme_driver::Controller;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use crate::cache::{CacheError, CacheMode, CacheWorker};
use crate::config::DeviceConfig;
use crate::memtable::MemTable;
use crate::request::ID_BYTES;
use crate::vring::Vring;
use crate::worker::{Notify, Stats, Worker};

type Memory = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// The state the queue threads and the vhost-user thread share.
///
/// Fields drop in order: the mappings and queue pairs go before the
/// controller handle.
#[derive(Debug)]
struct Shared {
    /// The guest's memory, mapped for the device (replaced whole on
    /// every memory-table change).
    table: RwLock<Arc<MemTable>>,
    /// One per virtqueue: its thread's worker (created on first use).
    /// A thread holds its lock for a whole batch, so taking it waits
    /// for the queue's commands to drain.
    workers: Vec<Mutex<Option<Server>>>,
    /// The page cache requests go through (`--cache`), if any.
    cache: Option<Arc<CacheMode>>,
    stats: Arc<Stats>,
    nsid: u32,
    config: DeviceConfig,
    id: [u8; ID_BYTES],
    /// Spin on the NVMe completion queues instead of sleeping on their
    /// interrupts while requests are in flight.
    poll: bool,
    /// Hybrid polling window of interrupt-driven queues, in µs
    /// ([`Worker::set_spin`]).
    spin_us: AtomicU64,
    /// Answer reads and writes without the device
    /// ([`Worker::set_null_io`]).
    null_io: AtomicBool,
    /// ([`Worker::set_timings`]).
    timings: AtomicBool,
    ctrl: Controller,
}

/// How one virtqueue is served.
#[derive(Debug)]
enum Server {
    /// Straight to the device, zero-copy when the scatter list allows.
    Direct(Worker),
    /// Through the page cache.
    Cached(CacheWorker),
}

/// The back end: cheap to clone (the vhost-user crate clones it per
/// thread).
#[derive(Debug, Clone)]
pub struct BlkBackend {
    shared: Arc<Shared>,
}

/// Why the back end cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// No such namespace, or an unusable one.
    #[error("namespace {nsid}: {source}")]
    Namespace {
        /// The namespace asked for.
        nsid: u32,
        /// The driver's answer.
        source: nvme_driver::Error,
    },
    /// A namespace whose blocks virtio-blk cannot describe.
    #[error("namespace {nsid}: {why}")]
    Unusable {
        /// The namespace asked for.
        nsid: u32,
        /// Why.
        why: String,
    },
    /// The page cache (`--cache`) could not be set up.
    #[error("{0}")]
    Cache(#[from] CacheError),
}

impl BlkBackend {
    /// A back end serving namespace `nsid` of `ctrl` on `queues`
    /// virtqueues of up to `queue_size` descriptors. With `poll`, queue
    /// threads spin on their NVMe completion queue while requests are in
    /// flight; otherwise they sleep on its MSI-X interrupt (when the
    /// controller has vectors).
    pub fn new(
        ctrl: Controller,
        nsid: u32,
        queues: u16,
        queue_size: u16,
        poll: bool,
    ) -> Result<BlkBackend, BackendError> {
        Self::build(ctrl, nsid, queues, queue_size, poll, None)
    }

    /// [`BlkBackend::new`] in page-cache mode: requests go through a page
    /// cache of `cache_bytes` over the namespace (see [`crate::cache`]),
    /// and the device tells the guest it has a write-back cache (FLUSH
    /// offered, `wce` 1).
    pub fn with_cache(
        ctrl: Controller,
        nsid: u32,
        queues: u16,
        queue_size: u16,
        poll: bool,
        cache_bytes: u64,
    ) -> Result<BlkBackend, BackendError> {
        Self::build(ctrl, nsid, queues, queue_size, poll, Some(cache_bytes))
    }

    fn build(
        ctrl: Controller,
        nsid: u32,
        queues: u16,
        queue_size: u16,
        poll: bool,
        cache_bytes: Option<u64>,
    ) -> Result<BlkBackend, BackendError> {
        let ns = ctrl
            .namespace(nsid)
            .map_err(|source| BackendError::Namespace { nsid, source })?
            .clone();
        let capacity_bytes = ns
            .blocks
            .checked_mul(u64::from(ns.lba_size))
            .ok_or_else(|| BackendError::Unusable {
                nsid,
                why: "size overflows".into(),
            })?;
        let max_transfer = u32::try_from(ctrl.max_transfer()).unwrap_or(u32::MAX);
        if max_transfer < ns.lba_size {
            return Err(BackendError::Unusable {
                nsid,
                why: format!(
                    "LBA size {} is above the transfer limit {max_transfer}",
                    ns.lba_size
                ),
            });
        }
        let id_ctrl = ctrl.identify();
        let oncs = id_ctrl.oncs();
        let config = DeviceConfig {
            capacity_bytes,
            lba_size: ns.lba_size,
            max_transfer,
            // Header and status take two descriptors of the queue.
            seg_max: u32::from(queue_size.saturating_sub(2)).max(1),
            queues,
            queue_size,
            // The page cache is a volatile write cache of its own.
            write_cache: cache_bytes.is_some() || id_ctrl.vwc_present(),
            discard: oncs.contains(nvme_driver::nvme_spec::Oncs::DSM),
            write_zeroes: oncs.contains(nvme_driver::nvme_spec::Oncs::WRITE_ZEROES),
        };
        let mut id = [0u8; ID_BYTES];
        let serial = id_ctrl.serial();
        let serial = serial.as_str().unwrap_or("nvme-vhost").trim();
        let name = format!("{serial}-{nsid}");
        let n = name.len().min(ID_BYTES);
        id[..n].copy_from_slice(&name.as_bytes()[..n]);
        log::info!(
            "namespace {nsid}: {} blocks of {} bytes, transfer limit {max_transfer}, \
             write cache {}, discard {}, write zeroes {}",
            ns.blocks,
            ns.lba_size,
            config.write_cache,
            config.discard,
            config.write_zeroes
        );
        let cache = match cache_bytes {
            Some(budget) => Some(Arc::new(CacheMode::open(
                &ctrl,
                nsid,
                ns.lba_size,
                capacity_bytes,
                budget,
            )?)),
            None => None,
        };
        Ok(BlkBackend {
            shared: Arc::new(Shared {
                cache,
                ctrl,
                nsid,
                config,
                id,
                table: RwLock::new(Arc::new(MemTable::default())),
                workers: (0..queues).map(|_| Mutex::new(None)).collect(),
                stats: Arc::new(Stats::default()),
                poll,
                spin_us: AtomicU64::new(0),
                null_io: AtomicBool::new(false),
                timings: AtomicBool::new(false),
            }),
        })
    }

    /// Hybrid polling for the interrupt-driven queues made from now on:
    /// each wait for completions polls for up to `spin` first, and an
    /// idle virtqueue is looked at for `spin` before its thread sleeps
    /// until a kick ([`Worker::set_spin`]).
    pub fn set_spin(&self, spin: std::time::Duration) {
        let us = u64::try_from(spin.as_micros()).unwrap_or(u64::MAX);
        self.shared.spin_us.store(us, Ordering::Relaxed);
    }

    /// For benchmarks: the queues made from now on answer reads and
    /// writes at once without the device ([`Worker::set_null_io`]).
    pub fn set_null_io(&self, on: bool) {
        self.shared.null_io.store(on, Ordering::Relaxed);
    }

    /// Workers made from now on time each step of their requests into
    /// [`Stats::phases`] ([`Worker::set_timings`]).
    pub fn set_timings(&self, on: bool) {
        self.shared.timings.store(on, Ordering::Relaxed);
    }

    /// The counters of all queues.
    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// The device's configuration.
    pub fn config(&self) -> &DeviceConfig {
        &self.shared.config
    }

    /// The page cache, in page-cache mode.
    pub fn cache(&self) -> Option<&Arc<CacheMode>> {
        self.shared.cache.as_ref()
    }

    /// Forgets the guest's memory (after a front end left): waits for
    /// every queue to drain, then unmaps. In page-cache mode everything
    /// dirty is written back and flushed first.
    pub fn forget_memory(&self) {
        let mut drained: Vec<MutexGuard<'_, Option<Server>>> =
            self.shared.workers.iter().map(lock).collect();
        let outstanding: usize = drained
            .iter()
            .filter_map(|w| w.as_ref())
            .map(|s| match s {
                Server::Direct(w) => w.outstanding(),
                Server::Cached(_) => 0,
            })
            .sum();
        log::info!(
            "front end gone: queues drained, {outstanding} NVMe commands in flight; \
             unmapping its memory"
        );
        if let Some(cache) = &self.shared.cache
            && let Some(Server::Cached(w)) = drained.iter_mut().find_map(|g| g.as_mut())
        {
            cache.sync(w);
        }
        *self.shared.table.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(MemTable::default());
    }

    /// The controller's DMA pool (for mapping front-end memory).
    pub fn dma_pool(&self) -> &nvme_driver::DmaPool {
        self.shared.ctrl.dma_pool()
    }

    /// A new NVMe queue pair for virtqueue `index`: with its MSI-X
    /// interrupt unless polling was asked for (or the controller has no
    /// vector left).
    fn qpair(&self, index: usize) -> nvme_driver::Result<nvme_driver::IoQPair> {
        let ctrl = &self.shared.ctrl;
        if self.shared.poll {
            ctrl.io_qpair()
        } else {
            ctrl.io_qpair_with_interrupts().or_else(|e| {
                log::warn!("virtqueue {index}: no interrupt ({e}); polling");
                ctrl.io_qpair()
            })
        }
    }

    /// A worker for virtqueue `index` on a new NVMe queue pair, serving
    /// straight from guest memory.
    pub fn worker(&self, index: usize) -> std::io::Result<Worker> {
        let qpair = self
            .qpair(index)
            .map_err(|e| io_error(format!("queue pair for virtqueue {index}: {e}")))?;
        log::info!(
            "virtqueue {index}: NVMe queue {}{}",
            qpair.qid(),
            if qpair.has_interrupt() {
                " (interrupts)"
            } else {
                " (polled)"
            }
        );
        let mut worker = Worker::new(
            qpair,
            self.shared.ctrl.dma_pool().clone(),
            self.shared.nsid,
            self.shared.config.clone(),
            self.shared.id,
            self.shared.stats.clone(),
        );
        if self.shared.poll {
            worker.set_idle_poll(IDLE_POLL);
        }
        let spin = self.shared.spin_us.load(Ordering::Relaxed);
        if spin > 0 {
            worker.set_spin(std::time::Duration::from_micros(spin));
        }
        if self.shared.null_io.load(Ordering::Relaxed) {
            log::warn!(
                "virtqueue {index}: reads and writes answered without the device (--null-io)"
            );
            worker.set_null_io(true);
        }
        worker.set_timings(self.shared.timings.load(Ordering::Relaxed));
        Ok(worker)
    }

    /// The server of virtqueue `thread_id`: through the page cache in
    /// cache mode, else a [`BlkBackend::worker`].
    fn server(&self, thread_id: usize) -> std::io::Result<Server> {
        let Some(cache) = &self.shared.cache else {
            return Ok(Server::Direct(self.worker(thread_id)?));
        };
        log::info!("virtqueue {thread_id}: through the page cache");
        let worker = cache
            .worker(
                &self.shared.ctrl,
                self.qpair(thread_id),
                self.shared.config.clone(),
                self.shared.id,
                self.shared.stats.clone(),
            )
            .map_err(|e| io_error(format!("virtqueue {thread_id}: {e}")))?;
        Ok(Server::Cached(worker))
    }

    fn table(&self) -> Arc<MemTable> {
        self.shared
            .table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// How long a memory-table change waits for the queue threads to let go
/// of the previous table (they finish the commands they started under it).
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a `--poll` queue thread keeps looking at an idle virtqueue
/// before it sleeps until a kick.
const IDLE_POLL: std::time::Duration = std::time::Duration::from_millis(1);

fn lock(m: &Mutex<Option<Server>>) -> MutexGuard<'_, Option<Server>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn io_error(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = Vring<Memory>;

    fn num_queues(&self) -> usize {
        usize::from(self.shared.config.queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.shared.config.queue_size)
    }

    fn features(&self) -> u64 {
        self.shared.config.features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&self, enabled: bool) {
        // The vhost-user crate sets it on the queues themselves, and
        // virtio-queue's notification calls follow it.
        log::debug!("event index {}", if enabled { "on" } else { "off" });
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.shared.config.read(offset, size)
    }

    fn update_memory(&self, mem: Memory) -> std::io::Result<()> {
        let old = self.table();
        let snapshot = mem.memory().into_inner();
        let table = if self.shared.cache.is_some() {
            log::info!(
                "memory table: {} regions (page-cache mode: not mapped for the device)",
                snapshot.num_regions()
            );
            MemTable::unmapped(snapshot)
        } else {
            let table =
                MemTable::build(self.shared.ctrl.dma_pool(), snapshot, &old).map_err(|e| {
                    let msg = format!("mapping guest memory for the device: {e}");
                    log::error!("{msg}");
                    io_error(msg)
                })?;
            log::info!("memory table: {} regions mapped", table.len());
            table
        };
        drop(old);
        let previous = std::mem::replace(
            &mut *self.shared.table.write().unwrap_or_else(|e| e.into_inner()),
            Arc::new(table),
        );
        // A queue thread serving with the previous table takes no new
        // chain under it, finishes the commands it started and lets go of
        // it. Waiting for that here means the front end hears the change
        // is done (REPLY_ACK) only when nothing uses the old memory and
        // the regions only the old table held are unmapped.
        let start = std::time::Instant::now();
        while Arc::strong_count(&previous) > 1 && start.elapsed() < RELEASE_WAIT {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if Arc::strong_count(&previous) > 1 {
            // Commands given up on keep it (see `Worker::serve_with`):
            // its mappings go when they complete.
            log::warn!(
                "memory table changed: the previous one is still in use after {RELEASE_WAIT:?}"
            );
        } else {
            log::info!(
                "memory table changed: no queue uses the previous one (waited {} ms)",
                start.elapsed().as_millis()
            );
        }
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.shared.config.queues).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK)
            .map_err(|e| log::error!("exit eventfd: {e}"))
            .ok()
    }

    fn stop_vring(&self, queue_index: u32) -> std::io::Result<()> {
        // Waits for the queue's batch in flight, if any.
        if let Some(w) = self.shared.workers.get(queue_index as usize) {
            drop(lock(w));
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Self::Vring],
        thread_id: usize,
    ) -> std::io::Result<()> {
        if !evset.contains(EventSet::IN) {
            // Not a kick: nothing to serve (an error here would end the
            // queue's thread).
            log::warn!("virtqueue {thread_id}: unexpected events {evset:?}");
            return Ok(());
        }
        let Some(vring) = vrings.get(usize::from(device_event)) else {
            return Err(io_error(format!("no vring {device_event}")));
        };
        let Some(slot) = self.shared.workers.get(thread_id) else {
            return Err(io_error(format!("no worker for thread {thread_id}")));
        };
        let mut slot = lock(slot);
        if slot.is_none() {
            *slot = Some(self.server(thread_id)?);
        }
        let Some(server) = slot.as_mut() else {
            return Err(io_error("worker vanished".into()));
        };
        // The queue thread signals the guest itself while it keeps
        // commands in flight, and sleeps on the kick while it waits for
        // completions: through the copies of the eventfds the vring keeps
        // (the queue is borrowed from the same state), made once when the
        // front end set them, not at every kick (see `crate::vring`).
        let call = vring.call_slot();
        let kick = vring.kick();
        let mut state = vring.get_mut();
        let mut returned = false;
        loop {
            let table = self.table();
            let current = || Arc::ptr_eq(&self.table(), &table);
            let served = match server {
                Server::Direct(worker) => worker.serve_with(
                    state.get_queue_mut(),
                    &table,
                    Some(&call as &dyn Notify),
                    kick.as_ref(),
                    &current,
                ),
                Server::Cached(worker) => worker.serve(
                    state.get_queue_mut(),
                    &table.memory(),
                    Some(&call),
                    &current,
                ),
            }
            .map_err(|e| io_error(format!("virtqueue {thread_id}: {e}")))?;
            if !current()
                && let Server::Direct(worker) = server
            {
                // The worker took no chain under the old table once it
                // changed and returned with nothing in flight; the
                // mappings only the old table held go when `table` does.
                log::info!(
                    "virtqueue {thread_id}: memory table changed; {} NVMe commands in flight \
                     after draining",
                    worker.outstanding()
                );
            }
            returned |= served.unsignalled;
            if !served.again {
                break;
            }
        }
        if returned
            && state
                .needs_notification()
                .map_err(|e| io_error(format!("virtqueue {thread_id}: {e}")))?
        {
            state.signal_used_queue()?;
        }
        Ok(())
    }
}

//! Serving one virtqueue from one NVMe queue pair: parsed requests become
//! NVMe commands whose data pointers go straight into guest memory when
//! the scatter list makes legal PRPs, and through a bounce buffer from the
//! DMA pool when it does not. Each request's status byte is written and
//! its chain returned once all its commands are back.
//!
//! System calls per request in interrupt mode: the thread sleeps on its
//! NVMe queue's MSI-X eventfd and the virtqueue's kick at once in the
//! queue pair's epoll set, where the kick eventfd is registered once
//! ([`IoQPair::watch_readable`], one-shot, re-armed only after it woke a
//! wait) and kept open by this worker while it is; a different kick
//! eventfd (replaced by the front end, or a new front end's) is compared
//! by pointer and registered in its place. The copies of the kick and
//! call eventfds come from [`crate::vring`], made when the front end sets
//! them, so a QD1 request costs the vhost-user thread's `epoll_wait` and
//! kick read, the sleeping `epoll_wait`, the MSI-X eventfd read and the
//! call eventfd write.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nvme_driver::{DmaBuffer, IoCompletion, IoQPair, IoRequest, IoSegments};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory};
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::config::DeviceConfig;
use crate::memtable::MemTable;
use crate::phases::{Phase, Phases};
use crate::request::{self, Action, ID_BYTES, Parsed, Reject};

/// How long one wait for completions sleeps at most before looking again.
const WAIT_TICK: Duration = Duration::from_millis(100);

/// Counters shared by all queue threads.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests whose data went straight between guest memory and the device.
    pub direct: AtomicU64,
    /// Requests copied through a bounce buffer (the scatter list broke
    /// the PRP rules).
    pub bounced: AtomicU64,
    /// Requests answered VIRTIO_BLK_S_IOERR.
    pub failed: AtomicU64,
    /// Requests answered VIRTIO_BLK_S_UNSUPP.
    pub unsupported: AtomicU64,
    /// Page-cache mode: reads whose every byte was cached and uptodate.
    pub cache_hits: AtomicU64,
    /// Page-cache mode: reads that needed the device.
    pub cache_misses: AtomicU64,
    /// Page-cache mode: writes buffered in the cache.
    pub cache_writes: AtomicU64,
    /// Page-cache mode: FLUSH requests (fsyncs of the namespace file).
    pub cache_flushes: AtomicU64,
    /// Where requests' time went (filled only with [`Worker::set_timings`]).
    pub phases: Phases,
}

impl Stats {
    /// (direct, bounced, failed, unsupported).
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.direct.load(Ordering::Relaxed),
            self.bounced.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.unsupported.load(Ordering::Relaxed),
        )
    }

    /// Page-cache mode: (read hits, read misses, writes, flushes).
    pub fn cache_snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.cache_hits.load(Ordering::Relaxed),
            self.cache_misses.load(Ordering::Relaxed),
            self.cache_writes.load(Ordering::Relaxed),
            self.cache_flushes.load(Ordering::Relaxed),
        )
    }
}

/// Errors that stop a queue thread's batch (not a request's).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The virtqueue's rings are not usable.
    #[error("virtqueue: {0}")]
    Queue(#[from] virtio_queue::Error),
    /// Guest memory could not be written (a used-ring update).
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// Why one request failed: it is answered VIRTIO_BLK_S_IOERR, the message
/// is logged with its descriptor, and serving goes on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    /// A data piece outside the guest's memory.
    #[error("data at {addr:#x}+{len:#x} is not in the guest memory")]
    OutsideMemory {
        /// The piece's guest address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// No DMA memory for a bounce buffer.
    #[error("bounce buffer of {bytes} bytes: {source}")]
    Bounce {
        /// The buffer's size.
        bytes: usize,
        /// The pool's answer.
        #[source]
        source: nvme_driver::Error,
    },
    /// Copying into or out of a bounce buffer.
    #[error(transparent)]
    Dma(nvme_driver::Error),
    /// The queue pair refused an NVMe command (it comes back with it).
    #[error(transparent)]
    Submit(Box<nvme_driver::Rejected>),
    /// GET_ID's answer could not be written into the guest's buffer.
    #[error("GET_ID answer at {addr:#x}: {source}")]
    GetId {
        /// The buffer's guest address.
        addr: u64,
        /// Why.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// A write's data could not be read from the guest's buffer.
    #[error("reading guest data at {addr:#x}: {source}")]
    ReadGuest {
        /// The buffer's guest address.
        addr: u64,
        /// Why.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// A read's data could not be written into the guest's buffer.
    #[error("writing guest data at {addr:#x}: {source}")]
    WriteGuest {
        /// The buffer's guest address.
        addr: u64,
        /// Why.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// How the front end learns that chains are back on the used ring: the
/// call eventfd (vhost-user) or an injected interrupt (VDUSE).
pub trait Notify {
    /// Signals the front end.
    fn notify(&self) -> std::io::Result<()>;
}

impl Notify for EventNotifier {
    fn notify(&self) -> std::io::Result<()> {
        EventNotifier::notify(self)
    }
}

/// What [`Worker::serve_with`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// Chains were returned that no signal told the guest about yet (the
    /// caller signals if the queue asks for it).
    pub unsignalled: bool,
    /// The memory table changed while serving and chains are waiting:
    /// serve again with the new table.
    pub again: bool,
}

/// How [`Worker::reap`] waits for completions.
#[derive(Debug, Clone, Copy)]
enum Wait<'a> {
    /// Not at all: chains are waiting to be taken.
    Poll,
    /// On the NVMe queue (its interrupt, or spinning) for up to the tick.
    Sleep,
    /// On the NVMe queue's interrupt and the virtqueue's kick at once.
    SleepOrKick(&'a Arc<EventConsumer>),
}

/// What one request waits for.
#[derive(Debug)]
struct InFlight {
    head: u16,
    status: Option<GuestAddress>,
    /// NVMe requests not yet back.
    outstanding: usize,
    /// The answer so far.
    code: u32,
    /// Bytes written to the guest's buffers on success.
    written: u32,
    /// For a bounced read: where the buffer's bytes go in guest memory.
    bounce_to: Vec<(GuestAddress, u32)>,
    /// With timings: when its commands were submitted.
    submitted: Option<Instant>,
}

/// One queue thread's state: its queue pair and what it reuses.
///
/// Fields drop in order: what holds DMA mappings (the pinned tables, the
/// pool handle) goes before the queue pair, whose drop may be the
/// controller's last handle, which closes the VFIO device; an unmap after
/// that fails.
#[derive(Debug)]
pub struct Worker {
    /// Memory tables kept mapped because a command given up on (a
    /// timeout) may still write into guest memory: released once the
    /// queue pair has none left in flight.
    pinned: Vec<Arc<MemTable>>,
    /// How long the thread keeps looking at an empty ring, nothing in
    /// flight, before it sleeps until a kick (zero: it sleeps at once).
    idle_poll: Duration,
    /// Longest sleep waiting for completions before the ring is looked
    /// at again ([`WAIT_TICK`]).
    wait_tick: Duration,
    /// Kicks that woke the thread while it waited for completions.
    kicks: u64,
    /// The kick eventfd registered in the queue pair's epoll set
    /// ([`IoQPair::watch_readable`]), kept open while it is: registered
    /// once per kick eventfd, not per wait.
    watched: Option<Arc<EventConsumer>>,
    /// With an interrupt-driven queue pair: how long a wait for
    /// completions polls before it sleeps on the interrupt (zero: it
    /// sleeps at once).
    spin: Duration,
    /// Answer reads and writes at once without the device (a benchmark
    /// floor of the vhost-user crossing; no data moves).
    null_io: bool,
    /// Read the clock at each step of a request ([`Stats::phases`]).
    timings: bool,
    /// With timings: when the last chain went back to the used ring.
    last_returned: Option<Instant>,
    /// With timings: when the last wait for completions returned.
    reaped_at: Option<Instant>,
    pool: nvme_driver::DmaPool,
    done: Vec<IoCompletion>,
    copy: Vec<u8>,
    nsid: u32,
    config: DeviceConfig,
    id: [u8; ID_BYTES],
    stats: Arc<Stats>,
    qpair: IoQPair,
}

impl Worker {
    /// A worker on `qpair` for namespace `nsid`.
    pub fn new(
        qpair: IoQPair,
        pool: nvme_driver::DmaPool,
        nsid: u32,
        config: DeviceConfig,
        id: [u8; ID_BYTES],
        stats: Arc<Stats>,
    ) -> Worker {
        Worker {
            qpair,
            pool,
            nsid,
            config,
            id,
            stats,
            done: Vec::new(),
            copy: Vec::new(),
            pinned: Vec::new(),
            idle_poll: Duration::ZERO,
            wait_tick: WAIT_TICK,
            kicks: 0,
            watched: None,
            spin: Duration::ZERO,
            null_io: false,
            timings: false,
            last_returned: None,
            reaped_at: None,
        }
    }

    /// Reads the clock at each step of every request and sums the steps
    /// into [`Stats::phases`] (a benchmark's breakdown; off by default).
    pub fn set_timings(&mut self, on: bool) {
        self.timings = on;
    }

    /// The clock, when timings are on.
    fn clock(&self) -> Option<Instant> {
        self.timings.then(Instant::now)
    }

    /// NVMe commands of this queue still in flight on the device
    /// (submitted and not yet back, given up on ones included).
    pub fn outstanding(&self) -> usize {
        self.qpair.outstanding() + self.qpair.given_up_in_flight()
    }

    /// Kicks that woke this thread while it waited for completions.
    pub fn kicks(&self) -> u64 {
        self.kicks
    }

    /// Sets the longest sleep waiting for completions before the ring is
    /// looked at again without a kick (default 100 ms).
    pub fn set_wait_tick(&mut self, tick: Duration) {
        self.wait_tick = tick;
    }

    /// Keeps looking at the ring for `idle` after the last request before
    /// sleeping until a kick (the polled mode: a front end that submits
    /// again within it is served without a kick and a wake-up).
    pub fn set_idle_poll(&mut self, idle: Duration) {
        self.idle_poll = idle;
    }

    /// Hybrid polling for an interrupt-driven queue pair: a wait for
    /// completions polls for up to `spin` before it sleeps on the
    /// interrupt, and an idle virtqueue is looked at for `spin` after its
    /// last request before the thread sleeps until a kick (QEMU's
    /// adaptive `poll-max-ns`, with a fixed window). No effect on a
    /// polled queue pair beyond [`Worker::set_idle_poll`].
    pub fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
        if self.idle_poll < spin {
            self.idle_poll = spin;
        }
    }

    /// Answers every read and write at once with success, without the
    /// device (the data in guest memory is left as it is): the floor of
    /// the vhost-user crossing, for benchmarks. Other requests are served
    /// as usual.
    pub fn set_null_io(&mut self, on: bool) {
        self.null_io = on;
    }

    /// Serves `queue` until it has no more available chains and nothing
    /// in flight; returns whether chains were returned to the used ring
    /// (the caller then signals the guest if the queue asks for it).
    pub fn serve(&mut self, queue: &mut Queue, table: &Arc<MemTable>) -> Result<bool, WorkerError> {
        self.serve_with(queue, table, None, None, &|| true)
            .map(|s| s.unsignalled)
    }

    /// [`Worker::serve`], keeping commands in flight across the guest's
    /// submissions: while commands are in flight the thread looks at the
    /// ring after every completion batch, returns the finished chains
    /// (signalling `call` when the queue asks for it) and starts the new
    /// ones, so the device sees the front end's whole queue depth, not
    /// batches that drain to empty. With the virtqueue's `kick` eventfd
    /// and an NVMe queue with interrupts, the thread sleeps on both at
    /// once while commands are in flight (notifications on), so a new
    /// chain is started as soon as the front end kicks, not at the next
    /// completion. New chains are taken only while `current()` says
    /// `table` is still the memory table.
    pub fn serve_with(
        &mut self,
        queue: &mut Queue,
        table: &Arc<MemTable>,
        call: Option<&dyn Notify>,
        kick: Option<&Arc<EventConsumer>>,
        current: &dyn Fn() -> bool,
    ) -> Result<Served, WorkerError> {
        if kick.is_none() && self.watched.take().is_some() {
            // The vring has no kick eventfd any more (stopped): let go of
            // the copy registered for it.
            self.qpair.unwatch_readable();
        }
        let result = self.serve_continuously(queue, table, call, kick, current);
        if self.qpair.given_up_in_flight() > 0 {
            if !self.pinned.iter().any(|t| Arc::ptr_eq(t, table)) {
                log::warn!(
                    "queue {}: commands given up on may still write guest memory; \
                     keeping its mapping",
                    self.qpair.qid()
                );
                self.pinned.push(table.clone());
            }
        } else {
            self.pinned.clear();
        }
        result
    }

    fn serve_continuously(
        &mut self,
        queue: &mut Queue,
        table: &MemTable,
        call: Option<&dyn Notify>,
        kick: Option<&Arc<EventConsumer>>,
        current: &dyn Fn() -> bool,
    ) -> Result<Served, WorkerError> {
        let guard = table.memory();
        let mem = &*guard;
        // Requests in flight by tag, and the free tags.
        let mut flights: Vec<Option<InFlight>> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        let mut waiting = 0usize;
        let mut returned: Vec<(u16, u32)> = Vec::new();
        let mut unsignalled = false;
        // When the thread last had something to do.
        let mut idle_since = std::time::Instant::now();
        // With timings: the batch's start, until its first chain is taken.
        let mut entered = self.clock();
        loop {
            if waiting > 0 {
                idle_since = std::time::Instant::now();
            }
            let taking = current();
            if taking {
                let take_at = self.clock();
                queue.disable_notification(mem)?;
                let parsed: Vec<Parsed> = queue
                    .iter(guard.clone())?
                    .map(|chain| request::parse(chain, &self.config))
                    .collect();
                if !parsed.is_empty() {
                    idle_since = std::time::Instant::now();
                }
                let parsed_at = self.clock();
                if let (Some(take), Some(at)) = (take_at, parsed_at)
                    && !parsed.is_empty()
                {
                    let phases = &self.stats.phases;
                    if let (Some(start), Some(last)) = (entered.take(), self.last_returned) {
                        phases.add_between(Phase::Away, last, start);
                    }
                    for _ in &parsed {
                        phases.add_between(Phase::Parse, take, at);
                    }
                    self.reaped_at = parsed_at;
                }
                for p in parsed {
                    let tag = free.pop().unwrap_or_else(|| {
                        flights.push(None);
                        flights.len() - 1
                    });
                    let mut f = self.begin(mem, table, p, tag as u64);
                    if let (Some(at), Some(sent)) = (parsed_at, f.submitted) {
                        self.stats.phases.add_between(Phase::Submit, at, sent);
                    }
                    f.submitted = f.submitted.filter(|_| f.outstanding > 0);
                    if f.outstanding == 0 {
                        returned.push(self.finish(mem, &f));
                        free.push(tag);
                    } else {
                        flights[tag] = Some(f);
                        waiting += 1;
                    }
                }
            }
            if waiting > 0 && returned.is_empty() {
                let how = match kick {
                    // Notifications on for the sleep, so that the front
                    // end kicks (the loop's top turns them off again);
                    // chains that came meanwhile are taken at once.
                    Some(k) if taking && self.qpair.has_interrupt() => {
                        if queue.enable_notification(mem)? {
                            Wait::Poll
                        } else {
                            Wait::SleepOrKick(k)
                        }
                    }
                    _ => Wait::Sleep,
                };
                self.reap(
                    mem,
                    how,
                    &mut flights,
                    &mut free,
                    &mut waiting,
                    &mut returned,
                );
            }
            let n_returned = returned.len();
            for (head, len) in returned.drain(..) {
                queue.add_used(mem, head, len)?;
                unsignalled = true;
            }
            let used_at = if n_returned > 0 { self.clock() } else { None };
            if let (Some(seen), Some(at)) = (self.reaped_at, used_at) {
                for _ in 0..n_returned {
                    self.stats.phases.add_between(Phase::Used, seen, at);
                }
                self.last_returned = used_at;
            }
            if unsignalled
                && let Some(call) = call
                && queue.needs_notification(mem)?
            {
                if let Err(e) = call.notify() {
                    log::warn!("queue {}: signalling the guest: {e}", self.qpair.qid());
                }
                unsignalled = false;
                if let (Some(at), Some(now)) = (used_at, self.clock()) {
                    for _ in 0..n_returned {
                        self.stats.phases.add_between(Phase::Call, at, now);
                    }
                    self.last_returned = Some(now);
                }
            }
            if waiting == 0 && taking && idle_since.elapsed() < self.idle_poll {
                // Polled: look at the ring again without sleeping.
                std::hint::spin_loop();
                continue;
            }
            if waiting == 0 {
                if !taking {
                    // The memory table changed: chains made for the new
                    // one are served with it, by the caller.
                    let again = queue.enable_notification(mem)?;
                    return Ok(Served { unsignalled, again });
                }
                if !queue.enable_notification(mem)? {
                    return Ok(Served {
                        unsignalled,
                        again: false,
                    });
                }
            }
        }
    }

    /// Waits for completions (up to [`WAIT_TICK`], as `how` says) and
    /// finishes the requests whose commands are all back, into
    /// `returned`.
    fn reap<G: GuestMemory + ?Sized>(
        &mut self,
        mem: &G,
        how: Wait<'_>,
        flights: &mut [Option<InFlight>],
        free: &mut Vec<usize>,
        waiting: &mut usize,
        returned: &mut Vec<(u16, u32)>,
    ) {
        let mut done = std::mem::take(&mut self.done);
        let spun = match how {
            Wait::Sleep | Wait::SleepOrKick(_)
                if !self.spin.is_zero() && self.qpair.has_interrupt() =>
            {
                self.spin_for_completions(&mut done)
            }
            _ => Ok(0),
        };
        let waited = match how {
            _ if !matches!(spun, Ok(0)) => spun,
            Wait::Poll => self.qpair.poll(&mut done),
            Wait::Sleep => self.qpair.wait(&mut done, self.wait_tick),
            Wait::SleepOrKick(kick) if !self.watch(kick) => {
                self.qpair.wait(&mut done, self.wait_tick)
            }
            Wait::SleepOrKick(kick) => {
                self.qpair
                    .wait_or_watched(&mut done, self.wait_tick)
                    .map(|(n, kicked)| {
                        if kicked {
                            // Readable, so this does not block; the vhost
                            // thread that also watches it is this one.
                            if let Err(e) = kick.consume() {
                                log::warn!("queue {}: reading the kick: {e}", self.qpair.qid());
                            }
                            self.kicks += 1;
                        }
                        n
                    })
            }
        };
        self.reaped_at = self.clock();
        if let Err(e) = waited {
            // The queue pair failed as a whole (controller gone or dead):
            // every request still waiting fails.
            log::error!("queue {}: {e}", self.qpair.qid());
            for (tag, slot) in flights.iter_mut().enumerate() {
                if let Some(mut f) = slot.take() {
                    f.code = VIRTIO_BLK_S_IOERR;
                    returned.push(self.finish(mem, &f));
                    free.push(tag);
                }
            }
            *waiting = 0;
            done.clear();
            self.done = done;
            return;
        }
        for c in done.drain(..) {
            let tag = c.tag as usize;
            let Some(f) = flights.get_mut(tag).and_then(Option::as_mut) else {
                log::error!("completion with unknown tag {}", c.tag);
                continue;
            };
            if let Err(e) = &c.result {
                log::warn!("request at descriptor {}: {e}", f.head);
                f.code = VIRTIO_BLK_S_IOERR;
            } else if let Some(buf) = &c.data
                && !f.bounce_to.is_empty()
                && let Err(e) = copy_out(&mut self.copy, buf, mem, &f.bounce_to)
            {
                log::warn!("request at descriptor {}: {e}", f.head);
                f.code = VIRTIO_BLK_S_IOERR;
            }
            f.outstanding = f.outstanding.saturating_sub(1);
            if f.outstanding == 0
                && let Some(f) = flights[tag].take()
            {
                if let (Some(sent), Some(seen)) = (f.submitted, self.reaped_at) {
                    self.stats.phases.add_between(Phase::Device, sent, seen);
                }
                *waiting -= 1;
                returned.push(self.finish(mem, &f));
                free.push(tag);
            }
        }
        self.done = done;
    }

    /// Registers `kick` in the queue pair's epoll set unless it is the
    /// one registered already (the front end set a new kick eventfd, or a
    /// new front end came: the previous one is taken out first, while
    /// this worker still holds it open). False when it could not be
    /// registered (the wait then sleeps on the NVMe queue alone, looking
    /// at the ring after each completion or tick).
    fn watch(&mut self, kick: &Arc<EventConsumer>) -> bool {
        if self.watched.as_ref().is_some_and(|w| Arc::ptr_eq(w, kick)) {
            return true;
        }
        let result = self.qpair.watch_readable(&**kick);
        // Dropped only now: the previous fd was open while it was taken
        // out of the epoll set.
        self.watched = None;
        match result {
            Ok(()) => {
                self.watched = Some(kick.clone());
                true
            }
            Err(e) => {
                log::warn!("queue {}: watching the kick: {e}", self.qpair.qid());
                false
            }
        }
    }

    /// Polls the NVMe queue for up to the spin window; returns how many
    /// completions it appended (0: the window passed without one).
    fn spin_for_completions(&mut self, done: &mut Vec<IoCompletion>) -> nvme_driver::Result<usize> {
        let start = std::time::Instant::now();
        loop {
            let n = self.qpair.poll(done)?;
            if n > 0 || self.qpair.outstanding() == 0 || start.elapsed() >= self.spin {
                return Ok(n);
            }
            std::hint::spin_loop();
        }
    }

    /// Starts a parsed request (tag `tag`): its commands go out, or its
    /// answer is known at once (then `outstanding` is 0).
    fn begin<G: GuestMemory + ?Sized>(
        &mut self,
        mem: &G,
        table: &MemTable,
        p: Parsed,
        tag: u64,
    ) -> InFlight {
        let mut f = InFlight {
            head: p.head,
            status: p.status,
            outstanding: 0,
            code: VIRTIO_BLK_S_OK,
            written: 0,
            bounce_to: Vec::new(),
            submitted: None,
        };
        match p.action {
            Ok(action) => {
                f.written = action.bytes_written();
                if let Err(e) = self.start(mem, table, &action, tag, &mut f) {
                    log::warn!("request at descriptor {}: {e}", p.head);
                    f.code = VIRTIO_BLK_S_IOERR;
                }
                f.submitted = self.clock();
            }
            Err(Reject::Unsupported(m)) => {
                log::debug!("request at descriptor {}: unsupported: {m}", p.head);
                f.code = VIRTIO_BLK_S_UNSUPP;
            }
            Err(Reject::Invalid(m)) => {
                log::warn!("request at descriptor {}: {m}", p.head);
                f.code = VIRTIO_BLK_S_IOERR;
            }
        }
        f
    }

    /// Writes `f`'s status and counts it; returns (head, used length).
    fn finish<G: GuestMemory + ?Sized>(&self, mem: &G, f: &InFlight) -> (u16, u32) {
        answer(mem, &self.stats, f.head, f.status, f.code, f.written)
    }

    /// Submits the commands of `action` (tag `tag`), or answers it at
    /// once (GET_ID).
    fn start<G: GuestMemory + ?Sized>(
        &mut self,
        mem: &G,
        table: &MemTable,
        action: &Action,
        tag: u64,
        f: &mut InFlight,
    ) -> Result<(), RequestError> {
        let nsid = self.nsid;
        if self.null_io && matches!(action, Action::Read { .. } | Action::Write { .. }) {
            return Ok(());
        }
        let reqs = match action {
            Action::Read { slba, blocks, data } | Action::Write { slba, blocks, data } => {
                let write = matches!(action, Action::Write { .. });
                vec![self.data_request(mem, table, write, *slba, *blocks, data, f)?]
            }
            Action::Flush => vec![IoRequest::flush(nsid)],
            Action::GetId { data } => {
                write_id(mem, &self.id, data)?;
                Vec::new()
            }
            Action::Discard(ranges) => ranges
                .iter()
                .map(|&(slba, blocks)| IoRequest::deallocate(nsid, slba, blocks))
                .collect(),
            Action::WriteZeroes(ranges) => ranges
                .iter()
                .map(|&(slba, blocks)| IoRequest::write_zeroes(nsid, slba, blocks))
                .collect(),
        };
        for req in reqs {
            self.qpair
                .submit(req.with_tag(tag))
                .map_err(RequestError::Submit)?;
            f.outstanding += 1;
        }
        Ok(())
    }

    /// The NVMe request of a read or write: on the guest's pieces when
    /// they make legal PRPs, else on a bounce buffer (filled now for a
    /// write, copied out at completion for a read).
    #[allow(clippy::too_many_arguments)]
    fn data_request<G: GuestMemory + ?Sized>(
        &mut self,
        mem: &G,
        table: &MemTable,
        write: bool,
        slba: u64,
        blocks: u64,
        data: &[(GuestAddress, u32)],
        f: &mut InFlight,
    ) -> Result<IoRequest, RequestError> {
        let nsid = self.nsid;
        let mut pieces = Vec::with_capacity(data.len());
        // False when some piece is in memory the device cannot reach
        // (copied through a bounce buffer then).
        let mut reachable = true;
        for &(addr, len) in data {
            if !table.translate(addr, len, &mut pieces) {
                if !mem.check_range(addr, len as usize, vm_memory::Permissions::ReadWrite) {
                    return Err(RequestError::OutsideMemory { addr: addr.0, len });
                }
                reachable = false;
            }
        }
        if reachable && IoSegments::check(&pieces).is_ok() {
            self.stats.direct.fetch_add(1, Ordering::Relaxed);
            let segs = IoSegments::new(pieces);
            return Ok(if write {
                IoRequest::write_segments(nsid, slba, blocks, segs)
            } else {
                IoRequest::read_segments(nsid, slba, blocks, segs)
            });
        }
        self.stats.bounced.fetch_add(1, Ordering::Relaxed);
        let total: usize = data.iter().map(|&(_, l)| l as usize).sum();
        let buf = self
            .pool
            .alloc_uninit(total)
            .map_err(|source| RequestError::Bounce {
                bytes: total,
                source,
            })?;
        if write {
            copy_in(&mut self.copy, &buf, mem, data)?;
            Ok(IoRequest::write(nsid, slba, blocks, buf))
        } else {
            f.bounce_to = data.to_vec();
            Ok(IoRequest::read(nsid, slba, blocks, buf))
        }
    }
}

/// Writes a request's status `code` (if it has a status byte) and counts
/// it; returns (head, used length): `written` data bytes plus the status
/// byte on success, the status byte alone on failure, 0 without one.
pub(crate) fn answer<G: GuestMemory + ?Sized>(
    mem: &G,
    stats: &Stats,
    head: u16,
    status: Option<GuestAddress>,
    code: u32,
    written: u32,
) -> (u16, u32) {
    match code {
        VIRTIO_BLK_S_OK => {}
        VIRTIO_BLK_S_UNSUPP => {
            stats.unsupported.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    let Some(status) = status else {
        return (head, 0);
    };
    if let Err(e) = mem.write_obj(code as u8, status) {
        log::warn!("status of descriptor {head}: {e}");
        return (head, 0);
    }
    let data = if code == VIRTIO_BLK_S_OK { written } else { 0 };
    (head, data + 1)
}

/// Writes the device id into the guest's GET_ID pieces (as much as fits).
pub(crate) fn write_id<G: GuestMemory + ?Sized>(
    mem: &G,
    id: &[u8; ID_BYTES],
    data: &[(GuestAddress, u32)],
) -> Result<(), RequestError> {
    let mut left = &id[..];
    for &(addr, len) in data {
        let n = left.len().min(len as usize);
        mem.write_slice(&left[..n], addr)
            .map_err(|source| RequestError::GetId {
                addr: addr.0,
                source,
            })?;
        left = &left[n..];
    }
    Ok(())
}

/// Copies the guest's `data` pieces into `buf`, in order.
fn copy_in<G: GuestMemory + ?Sized>(
    scratch: &mut Vec<u8>,
    buf: &DmaBuffer,
    mem: &G,
    data: &[(GuestAddress, u32)],
) -> Result<(), RequestError> {
    let mut at = 0;
    for &(addr, len) in data {
        scratch.resize(len as usize, 0);
        mem.read_slice(scratch, addr)
            .map_err(|source| RequestError::ReadGuest {
                addr: addr.0,
                source,
            })?;
        buf.write(at, scratch).map_err(RequestError::Dma)?;
        at += len as usize;
    }
    Ok(())
}

/// Copies `buf` out into the guest's `data` pieces, in order.
fn copy_out<G: GuestMemory + ?Sized>(
    scratch: &mut Vec<u8>,
    buf: &DmaBuffer,
    mem: &G,
    data: &[(GuestAddress, u32)],
) -> Result<(), RequestError> {
    let mut at = 0;
    for &(addr, len) in data {
        scratch.resize(len as usize, 0);
        buf.read(at, scratch).map_err(RequestError::Dma)?;
        mem.write_slice(scratch, addr)
            .map_err(|source| RequestError::WriteGuest {
                addr: addr.0,
                source,
            })?;
        at += len as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvme_driver::mock::{MockConfig, MockController};
    use virtio_bindings::virtio_blk::{
        VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
        VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    };
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestMemoryMmap;

    const NS: u32 = 1;
    const LBA: u32 = 512;
    const BLOCKS: u64 = 4096;
    const W: u16 = VRING_DESC_F_WRITE as u16;
    const QSIZE: u16 = 64;

    struct Rig {
        mock: MockController,
        worker: Worker,
        table: Arc<MemTable>,
        mem: Arc<GuestMemoryMmap<()>>,
        stats: Arc<Stats>,
        /// Next free descriptor index and next free header/status slot.
        next_desc: u16,
        next_req: u64,
    }

    fn config() -> DeviceConfig {
        DeviceConfig {
            capacity_bytes: BLOCKS * u64::from(LBA),
            lba_size: LBA,
            max_transfer: 16 << 10,
            seg_max: u32::from(QSIZE) - 2,
            queues: 1,
            queue_size: QSIZE,
            write_cache: true,
            discard: true,
            write_zeroes: true,
        }
    }

    fn rig() -> Rig {
        rig_with(nvme_driver::Options {
            prefer_huge_pages: false,
            ..nvme_driver::Options::default()
        })
    }

    fn rig_with(options: nvme_driver::Options) -> Rig {
        rig_from(options, false)
    }

    /// A rig whose queue pair sleeps on its MSI-X interrupt with `irq`.
    fn rig_from(options: nvme_driver::Options, irq: bool) -> Rig {
        // MDTS 16 KiB: larger requests are split by the driver.
        let cfg = MockConfig::new(&[(NS, LBA, BLOCKS)])
            .max_transfer(16 << 10)
            .msix_vectors(if irq { 4 } else { 0 })
            .options(options);
        let (mock, ctrl) = MockController::new(cfg).expect("mock");
        mock.set_auto(true);
        let mem = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[
                (GuestAddress(0), 0x80_0000),
                (GuestAddress(0x100_0000), 0x10_0000),
            ])
            .expect("guest memory"),
        );
        let table = Arc::new(
            MemTable::build(ctrl.dma_pool(), mem.clone(), &MemTable::default())
                .expect("map guest memory"),
        );
        let stats = Arc::new(Stats::default());
        let mut id = [0u8; ID_BYTES];
        id[..9].copy_from_slice(b"serial-01");
        let qpair = if irq {
            ctrl.io_qpair_with_interrupts()
        } else {
            ctrl.io_qpair()
        };
        let worker = Worker::new(
            qpair.expect("qpair"),
            ctrl.dma_pool().clone(),
            NS,
            config(),
            id,
            stats.clone(),
        );
        Rig {
            mock,
            worker,
            table,
            mem,
            stats,
            next_desc: 0,
            next_req: 0,
        }
    }

    /// Header and status addresses of request slot `n` (below the data).
    fn hdr_addr(n: u64) -> u64 {
        0x8_0000 + n * 32
    }

    /// Queues a request in `mem` on `q`: header (kind, sector), the data
    /// descriptors (address, len, device-writable), status; from
    /// descriptor `*next_desc` and header slot `*next_req` (both
    /// advanced). Returns the status address.
    fn add_chain(
        mem: &GuestMemoryMmap<()>,
        q: &MockSplitQueue<'_, GuestMemoryMmap<()>>,
        next_desc: &mut u16,
        next_req: &mut u64,
        kind: u32,
        sector: u64,
        data: &[(u64, u32, bool)],
    ) -> u64 {
        let hdr = hdr_addr(*next_req);
        let status = hdr + 16;
        *next_req += 1;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(hdr)).expect("header");
        mem.write_obj(0xffu8, GuestAddress(status)).expect("status");
        let mut descs = vec![(hdr, 16, 0u16)];
        descs.extend(data.iter().map(|&(a, l, w)| (a, l, if w { W } else { 0 })));
        descs.push((status, 1, W));
        let first = *next_desc;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let last = i == descs.len() - 1;
                let flags = if last {
                    flags
                } else {
                    flags | VRING_DESC_F_NEXT as u16
                };
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, first + i as u16 + 1))
            })
            .collect();
        q.add_desc_chains(&raw, first).expect("chain");
        *next_desc += raw.len() as u16;
        status
    }

    impl Rig {
        /// Queues a request (see [`add_chain`]).
        fn add(
            &mut self,
            q: &MockSplitQueue<'_, GuestMemoryMmap<()>>,
            kind: u32,
            sector: u64,
            data: &[(u64, u32, bool)],
        ) -> u64 {
            add_chain(
                &self.mem,
                q,
                &mut self.next_desc,
                &mut self.next_req,
                kind,
                sector,
                data,
            )
        }

        fn status(&self, at: u64) -> u8 {
            self.mem.read_obj(GuestAddress(at)).expect("status")
        }

        fn fill(&self, addr: u64, data: &[u8]) {
            self.mem
                .write_slice(data, GuestAddress(addr))
                .expect("fill");
        }

        fn read(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut out = vec![0u8; len];
            self.mem
                .read_slice(&mut out, GuestAddress(addr))
                .expect("read");
            out
        }

        /// Used ring entries (id, len) so far.
        fn used(&self, q: &MockSplitQueue<'_, GuestMemoryMmap<()>>) -> Vec<(u32, u32)> {
            let base = q.used_addr().0;
            let idx: u16 = self.mem.read_obj(GuestAddress(base + 2)).expect("used idx");
            (0..u64::from(idx))
                .map(|i| {
                    let at = GuestAddress(base + 4 + i * 8);
                    let id: u32 = self.mem.read_obj(at).expect("id");
                    let len: u32 = self.mem.read_obj(GuestAddress(at.0 + 4)).expect("len");
                    (id, len)
                })
                .collect()
        }
    }

    fn pattern(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(13) ^ seed)
            .collect()
    }

    #[test]
    fn requests_move_data_zero_copy_or_bounced_and_get_their_status() {
        let mut r = rig();
        let mem = r.mem.clone();
        let q = MockSplitQueue::create(&*mem, GuestAddress(0), QSIZE);
        let mut queue: Queue = q.create_queue().expect("queue");

        // A page-aligned 40 KiB write in two pieces (zero-copy, split by
        // MDTS), a write whose middle piece is not page-aligned (bounced),
        // across the two memory regions too.
        let a = pattern(1, 40 << 10);
        r.fill(0x10_0000, &a[..8192]);
        r.fill(0x20_0000, &a[8192..]);
        let s1 = r.add(
            &q,
            VIRTIO_BLK_T_OUT,
            64,
            &[(0x10_0000, 8192, false), (0x20_0000, 32 << 10, false)],
        );
        let b = pattern(2, 3 * 512);
        r.fill(0x30_0000, &b[..512]);
        r.fill(0x30_0a00, &b[512..1024]);
        r.fill(0x100_0000, &b[1024..]);
        let s2 = r.add(
            &q,
            VIRTIO_BLK_T_OUT,
            1000,
            &[
                (0x30_0000, 512, false),
                (0x30_0a00, 512, false),
                (0x100_0000, 512, false),
            ],
        );
        let s3 = r.add(&q, VIRTIO_BLK_T_FLUSH, 0, &[]);
        assert!(r.worker.serve(&mut queue, &r.table).expect("serve"));
        for s in [s1, s2, s3] {
            assert_eq!(r.status(s), VIRTIO_BLK_S_OK as u8);
        }
        assert_eq!(r.mock.read_disk(NS, 64, 80).expect("disk"), a);
        assert_eq!(r.mock.read_disk(NS, 1000, 3).expect("disk"), b);
        assert_eq!(r.stats.snapshot(), (1, 1, 0, 0), "one direct, one bounced");
        assert!(r.mock.stats().writes >= 4, "the 40 KiB write was split");

        // Read both back, the second through an unaligned list (bounced).
        let s4 = r.add(&q, VIRTIO_BLK_T_IN, 64, &[(0x40_0000, 40 << 10, true)]);
        let s5 = r.add(
            &q,
            VIRTIO_BLK_T_IN,
            1000,
            &[(0x50_0100, 1024, true), (0x50_2000, 512, true)],
        );
        let s6 = r.add(&q, VIRTIO_BLK_T_GET_ID, 0, &[(0x60_0000, 20, true)]);
        assert!(r.worker.serve(&mut queue, &r.table).expect("serve"));
        for s in [s4, s5, s6] {
            assert_eq!(r.status(s), VIRTIO_BLK_S_OK as u8);
        }
        assert_eq!(r.read(0x40_0000, 40 << 10), a);
        let mut back = r.read(0x50_0100, 1024);
        back.extend(r.read(0x50_2000, 512));
        assert_eq!(back, b);
        assert_eq!(&r.read(0x60_0000, 20)[..9], b"serial-01");
        assert_eq!(r.stats.snapshot(), (2, 2, 0, 0));
        let used = r.used(&q);
        assert_eq!(used.len(), 6);
        let lens: std::collections::HashMap<u32, u32> = used.into_iter().collect();
        // Reads report the data written plus the status byte.
        assert_eq!(lens.len(), 6);
        assert!(lens.values().any(|&l| l == (40 << 10) + 1));
        assert!(lens.values().any(|&l| l == 1536 + 1));
        assert!(lens.values().any(|&l| l == 21));
        assert!(r.mock.violations().is_empty(), "{:?}", r.mock.violations());
    }

    #[test]
    fn discard_write_zeroes_and_bad_requests_are_answered_and_serving_goes_on() {
        let mut r = rig();
        let mem = r.mem.clone();
        let q = MockSplitQueue::create(&*mem, GuestAddress(0), QSIZE);
        let mut queue: Queue = q.create_queue().expect("queue");
        r.mock
            .write_disk(NS, 0, &pattern(3, 64 * 512))
            .expect("disk");
        let range = |sector: u64, sectors: u32| {
            let mut v = sector.to_le_bytes().to_vec();
            v.extend(sectors.to_le_bytes());
            v.extend(0u32.to_le_bytes());
            v
        };
        r.fill(0x10_0000, &range(8, 8));
        r.fill(0x10_1000, &[range(32, 4), range(40, 2)].concat());
        let zero = r.add(&q, VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(0x10_0000, 16, false)]);
        let trim = r.add(&q, VIRTIO_BLK_T_DISCARD, 0, &[(0x10_1000, 32, false)]);
        // Hostile or unsupported, between good ones.
        let outside = r.add(&q, VIRTIO_BLK_T_IN, 0, &[(0x7f_ff00, 512, true)]);
        let past_end = r.add(&q, VIRTIO_BLK_T_IN, BLOCKS, &[(0x20_0000, 512, true)]);
        let wrong_dir = r.add(&q, VIRTIO_BLK_T_OUT, 0, &[(0x20_0000, 512, true)]);
        let scsi = r.add(&q, 2, 0, &[]);
        let good = r.add(&q, VIRTIO_BLK_T_IN, 0, &[(0x20_0000, 4096, true)]);
        assert!(r.worker.serve(&mut queue, &r.table).expect("serve"));
        assert_eq!(r.status(zero), VIRTIO_BLK_S_OK as u8);
        assert_eq!(r.status(trim), VIRTIO_BLK_S_OK as u8);
        for s in [outside, past_end, wrong_dir] {
            assert_eq!(r.status(s), VIRTIO_BLK_S_IOERR as u8);
        }
        assert_eq!(r.status(scsi), VIRTIO_BLK_S_UNSUPP as u8);
        assert_eq!(r.status(good), VIRTIO_BLK_S_OK as u8);
        assert_eq!(
            r.mock.read_disk(NS, 8, 8).expect("disk"),
            vec![0u8; 8 * 512]
        );
        assert_eq!(
            r.mock.read_disk(NS, 7, 1).expect("disk"),
            pattern(3, 64 * 512)[7 * 512..8 * 512],
            "the block before the range is kept"
        );
        assert_eq!(r.read(0x20_0000, 4096), pattern(3, 64 * 512)[..4096]);
        let dealloc = r.mock.deallocated();
        assert!(
            dealloc.contains(&(NS, 32, 4)) && dealloc.contains(&(NS, 40, 2)),
            "{dealloc:?}"
        );
        assert_eq!(r.used(&q).len(), 7, "every chain returned");
        let (_, _, failed, unsupported) = r.stats.snapshot();
        assert_eq!((failed, unsupported), (3, 1));
    }

    #[test]
    fn guest_memory_stays_mapped_while_a_command_given_up_on_may_write_it() {
        let mut r = rig_with(nvme_driver::Options {
            prefer_huge_pages: false,
            io_timeout: Duration::from_millis(50),
            admin_timeout: Duration::from_secs(2),
            reset_on_timeout: false,
            ..nvme_driver::Options::default()
        });
        r.mock
            .set_abort_policy(nvme_driver::mock::AbortPolicy::Refuse);
        let mem = r.mem.clone();
        let q = MockSplitQueue::create(&*mem, GuestAddress(0), QSIZE);
        let mut queue: Queue = q.create_queue().expect("queue");
        r.mock.hold_next(nvme_driver::mock::Match::Any, 1);
        let lost = r.add(&q, VIRTIO_BLK_T_IN, 0, &[(0x20_0000, 4096, true)]);
        assert!(r.worker.serve(&mut queue, &r.table).expect("serve"));
        assert_eq!(r.status(lost), VIRTIO_BLK_S_IOERR as u8, "timed out");
        assert_eq!(r.worker.pinned.len(), 1, "the table stays mapped");
        // The held command finally completes; the next batch sees it and
        // lets the table go.
        assert_eq!(r.mock.release_held(), 1);
        let good = r.add(&q, VIRTIO_BLK_T_FLUSH, 0, &[]);
        assert!(r.worker.serve(&mut queue, &r.table).expect("serve"));
        assert_eq!(r.status(good), VIRTIO_BLK_S_OK as u8);
        assert!(r.worker.pinned.is_empty(), "released once nothing is lost");
    }

    /// Commands in flight, the thread asleep on the NVMe interrupt (and a
    /// wait tick of a minute, so that only a wake-up can serve it): a
    /// chain the front end adds and kicks is answered at once, while the
    /// held command is still out.
    #[test]
    fn a_kick_wakes_the_thread_waiting_for_completions() {
        let mut r = rig_from(
            nvme_driver::Options {
                prefer_huge_pages: false,
                ..nvme_driver::Options::default()
            },
            true,
        );
        assert!(r.worker.qpair.has_interrupt());
        r.worker.set_wait_tick(Duration::from_secs(60));
        let mem = r.mem.clone();
        let q = MockSplitQueue::create(&*mem, GuestAddress(0), QSIZE);
        let mut queue: Queue = q.create_queue().expect("queue");
        r.mock.hold_next(nvme_driver::mock::Match::Any, 1);
        let held = r.add(&q, VIRTIO_BLK_T_IN, 0, &[(0x20_0000, 4096, true)]);
        let (kick, kicker) = vmm_sys_util::event::new_event_consumer_and_notifier(
            vmm_sys_util::event::EventFlag::NONBLOCK,
        )
        .expect("kick eventfd");
        let kick = Arc::new(kick);
        let Rig {
            mock,
            worker,
            table,
            next_desc,
            next_req,
            ..
        } = &mut r;
        let table = table.clone();
        let status = |at: u64| -> u8 { mem.read_obj(GuestAddress(at)).expect("status") };
        std::thread::scope(|s| {
            let serving =
                s.spawn(|| worker.serve_with(&mut queue, &table, None, Some(&kick), &|| true));
            // Let the thread take the held read and fall asleep.
            std::thread::sleep(Duration::from_secs(1));
            let id = add_chain(
                &mem,
                &q,
                next_desc,
                next_req,
                VIRTIO_BLK_T_GET_ID,
                0,
                &[(0x60_0000, 20, true)],
            );
            kicker.notify().expect("kick");
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while status(id) != VIRTIO_BLK_S_OK as u8 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the kicked chain was not served while a command was in flight"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(status(held), 0xff, "the held read is still out");
            assert_eq!(mock.release_held(), 1);
            // Completes it (the mock posts on a doorbell or when told to);
            // its MSI-X eventfd wakes the thread.
            mock.process().expect("mock");
            serving.join().expect("the queue thread").expect("served");
        });
        assert_eq!(status(held), VIRTIO_BLK_S_OK as u8);
        assert_eq!(r.worker.kicks(), 1, "woken by the kick");
        assert_eq!(&r.read(0x60_0000, 9), b"serial-01");
    }

    /// The kick eventfd stays in the NVMe queue's epoll set across waits
    /// (one-shot, re-armed after each kick it delivers: two kicks in one
    /// batch both wake the thread), and when the front end gives a new
    /// one, the new one is watched and the old one no longer is: a kick
    /// on the old fd leaves the chain waiting (a wait tick of a minute),
    /// the new fd's kick serves it.
    #[test]
    fn the_kick_stays_watched_across_waits_and_a_replaced_one_is_not() {
        use std::os::fd::AsRawFd;
        let mut r = rig_from(
            nvme_driver::Options {
                prefer_huge_pages: false,
                ..nvme_driver::Options::default()
            },
            true,
        );
        r.worker.set_wait_tick(Duration::from_secs(60));
        let mem = r.mem.clone();
        let q = MockSplitQueue::create(&*mem, GuestAddress(0), QSIZE);
        let mut queue: Queue = q.create_queue().expect("queue");
        let eventfd = || {
            let (k, n) = vmm_sys_util::event::new_event_consumer_and_notifier(
                vmm_sys_util::event::EventFlag::NONBLOCK,
            )
            .expect("kick eventfd");
            (Arc::new(k), n)
        };
        let (kick1, kicker1) = eventfd();
        let (kick2, kicker2) = eventfd();
        let status = |at: u64| -> u8 { mem.read_obj(GuestAddress(at)).expect("status") };
        let served_within = |at: u64, limit: Duration| {
            let deadline = std::time::Instant::now() + limit;
            while status(at) != VIRTIO_BLK_S_OK as u8 {
                if std::time::Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            true
        };
        // A held read, then two chains kicked one at a time while it is
        // out: on kick 1 twice, then on kick 1 (replaced) and kick 2.
        for (kick, kickers) in [
            (&kick1, vec![&kicker1, &kicker1]),
            (&kick2, vec![&kicker1, &kicker2]),
        ] {
            r.mock.hold_next(nvme_driver::mock::Match::Any, 1);
            let held = r.add(&q, VIRTIO_BLK_T_IN, 0, &[(0x20_0000, 4096, true)]);
            let Rig {
                mock,
                worker,
                table,
                next_desc,
                next_req,
                ..
            } = &mut r;
            let table = table.clone();
            std::thread::scope(|s| {
                let serving =
                    s.spawn(|| worker.serve_with(&mut queue, &table, None, Some(kick), &|| true));
                // Let the thread take the held read and fall asleep.
                std::thread::sleep(Duration::from_secs(1));
                for kicker in kickers {
                    let id = add_chain(
                        &mem,
                        &q,
                        next_desc,
                        next_req,
                        VIRTIO_BLK_T_GET_ID,
                        0,
                        &[(0x60_0000, 20, true)],
                    );
                    kicker.notify().expect("kick");
                    if std::ptr::eq(kicker, &kicker1) && Arc::ptr_eq(kick, &kick2) {
                        // The replaced fd: no longer watched.
                        assert!(
                            !served_within(id, Duration::from_millis(500)),
                            "a kick on the replaced eventfd woke the thread"
                        );
                        continue;
                    }
                    assert!(
                        served_within(id, Duration::from_secs(20)),
                        "the kicked chain was not served while a command was in flight"
                    );
                }
                assert_eq!(status(held), 0xff, "the held read is still out");
                assert_eq!(mock.release_held(), 1);
                mock.process().expect("mock");
                serving.join().expect("the queue thread").expect("served");
            });
            assert_eq!(status(held), VIRTIO_BLK_S_OK as u8);
        }
        assert_eq!(r.worker.kicks(), 3, "woken by kick 1 twice, then by kick 2");
        assert_eq!(
            r.worker.qpair.watched_fd(),
            Some(kick2.as_raw_fd()),
            "the new kick is the one watched"
        );
    }

    #[test]
    fn null_io_answers_reads_and_writes_without_the_device() {
        let mut r = rig();
        r.worker.set_null_io(true);
        let mem = r.mem.clone();
        let q = MockSplitQueue::create(&*mem, GuestAddress(0), QSIZE);
        let mut queue: Queue = q.create_queue().expect("queue");
        let on_disk = pattern(4, 4096);
        r.mock.write_disk(NS, 8, &on_disk).expect("disk");
        r.fill(0x20_0000, &[0xaa; 4096]);
        r.fill(0x30_0000, &pattern(5, 4096));
        let read = r.add(&q, VIRTIO_BLK_T_IN, 8, &[(0x20_0000, 4096, true)]);
        let write = r.add(&q, VIRTIO_BLK_T_OUT, 8, &[(0x30_0000, 4096, false)]);
        let flush = r.add(&q, VIRTIO_BLK_T_FLUSH, 0, &[]);
        // Still checked: a read past the end fails.
        let past = r.add(&q, VIRTIO_BLK_T_IN, BLOCKS, &[(0x40_0000, 512, true)]);
        let before = r.mock.stats();
        assert!(r.worker.serve(&mut queue, &r.table).expect("serve"));
        for s in [read, write, flush] {
            assert_eq!(r.status(s), VIRTIO_BLK_S_OK as u8);
        }
        assert_eq!(r.status(past), VIRTIO_BLK_S_IOERR as u8);
        let after = r.mock.stats();
        assert_eq!((after.reads, after.writes), (before.reads, before.writes));
        assert_eq!(
            after.flushes,
            before.flushes + 1,
            "FLUSH reaches the device"
        );
        // No data moved either way.
        assert_eq!(r.read(0x20_0000, 4096), vec![0xaa; 4096]);
        assert_eq!(r.mock.read_disk(NS, 8, 8).expect("disk"), on_disk);
        assert_eq!(
            r.stats.snapshot(),
            (0, 0, 1, 0),
            "neither direct nor bounced"
        );
        let lens: Vec<u32> = r.used(&q).into_iter().map(|(_, l)| l).collect();
        assert!(lens.contains(&4097), "the read reports its bytes: {lens:?}");
    }

    #[test]
    fn hybrid_polling_takes_a_completion_without_sleeping_on_the_interrupt() {
        for spin in [Duration::ZERO, Duration::from_secs(30)] {
            let mut r = rig_from(
                nvme_driver::Options {
                    prefer_huge_pages: false,
                    ..nvme_driver::Options::default()
                },
                true,
            );
            r.worker.set_wait_tick(Duration::from_secs(60));
            r.worker.set_spin(spin);
            // Only the wait for completions spins here (the idle window
            // would keep the thread on the empty ring as long).
            r.worker.set_idle_poll(Duration::ZERO);
            let mem = r.mem.clone();
            let q = MockSplitQueue::create(&*mem, GuestAddress(0), QSIZE);
            let mut queue: Queue = q.create_queue().expect("queue");
            r.mock.hold_next(nvme_driver::mock::Match::Any, 1);
            let held = r.add(&q, VIRTIO_BLK_T_IN, 0, &[(0x20_0000, 4096, true)]);
            let Rig {
                mock,
                worker,
                table,
                ..
            } = &mut r;
            let table = table.clone();
            std::thread::scope(|s| {
                let serving = s.spawn(|| worker.serve(&mut queue, &table));
                std::thread::sleep(Duration::from_millis(300));
                assert_eq!(mock.release_held(), 1);
                mock.process().expect("mock");
                serving.join().expect("the queue thread").expect("served");
            });
            assert_eq!(r.status(held), VIRTIO_BLK_S_OK as u8);
            // Without a window the thread slept and the interrupt woke it;
            // with one (longer than the command) it polled the completion.
            let woken = r.worker.qpair.interrupts();
            if spin.is_zero() {
                assert_eq!(woken, 1, "slept on the interrupt");
            } else {
                assert_eq!(woken, 0, "polled, never slept");
            }
        }
    }
}

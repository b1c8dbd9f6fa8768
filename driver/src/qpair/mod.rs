//! I/O queue pairs: one per thread, owned by it, with no locks on the
//! submit and poll path.
//!
//! [`IoQPair::submit`] takes a request (and the ownership of its DMA
//! buffer) and returns at once; [`IoQPair::poll`] reaps completions and
//! hands back each request's buffer and result. A request larger than the
//! controller's transfer limit (MDTS) is split into child commands that are
//! issued as SQ slots free up, so splitting can neither run out of slots
//! nor deadlock; the request completes once, with the first error.
//!
//! Doorbells are batched: `submit` only writes SQEs, and `poll` rings the
//! SQ tail doorbell once for everything submitted since, and the CQ head
//! doorbell once per reap.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::os::fd::{AsRawFd, RawFd};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::ctrl::Shared;
use crate::error::{Error, Result};
use crate::memory::DmaBuffer;
use crate::queue::QueuePair;

/// Most logical blocks one Read, Write or Write Zeroes command can carry.
const MAX_NLB: u64 = 1 << 16;
/// Empty polls between two looks at CSTS.
const HEALTH_CHECK_INTERVAL: u32 = 4096;
/// Polls between two looks at the clock (for command deadlines): the I/O
/// path reads no clock per command.
pub(crate) const CLOCK_POLLS: u32 = 64;
/// Longest sleep of [`IoQPair::wait`] between two looks at deadlines.
const INTERRUPT_TICK: Duration = Duration::from_millis(100);
/// How long an aborted command gets to come back before it is given up on.
const ABORT_GRACE: Duration = Duration::from_secs(2);

mod blocking;
mod fixed;
mod floor;
mod path;
mod recovery;
mod request;

pub use floor::{FloorJob, FloorResult};
pub use recovery::{Recovery, RecoveryCause, RecoveryOutcome};
pub use request::{
    FixedCompletion, FixedIo, IoCompletion, IoHints, IoOp, IoRequest, IoSegments, Rejected,
};

/// A submitted request and the progress of its commands.
#[derive(Debug)]
struct Parent {
    req: IoRequest,
    lba_size: u32,
    /// Blocks per command.
    per_cmd: u64,
    /// Commands the request needs, and how many were issued.
    total: u64,
    issued: u64,
    /// Commands in flight or waiting for a retry.
    outstanding: u64,
    error: Option<Error>,
    /// A command of this request was given up on: the buffer stays here.
    lost: bool,
    /// The registered-buffer request this one carries (its `req` then
    /// holds the buffer's memory as one segment).
    fixed: Option<FixedIo>,
}

impl Parent {
    fn done(&self) -> bool {
        self.outstanding == 0 && self.issued == self.total
    }
}

/// One command of a request.
#[derive(Debug, Clone, Copy)]
struct Child {
    parent: u32,
    index: u64,
    /// Times sent again after a retryable status.
    tries: u8,
    /// Times it ran past its deadline (a second time gives up on it).
    timeouts: u8,
}

/// A queue's MSI-X interrupt: its eventfd, watched by an epoll instance.
struct Interrupt {
    fd: Arc<EventFd>,
    epoll: Epoll,
    /// The caller's fd registered in `epoll` for good
    /// ([`IoQPair::watch_readable`]), if any.
    watched: Option<RawFd>,
    /// Whether `watched` is armed (one-shot: an event disarms it until
    /// the next [`IoQPair::wait_or_watched`] re-arms it).
    armed: bool,
}

impl std::fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interrupt")
            .field("eventfd", &self.fd.as_raw_fd())
            .field("watched", &self.watched)
            .finish()
    }
}

/// Per CID: the command in flight and the memory reused for its data
/// pointer (PRP list pages, DSM range).
#[derive(Debug, Default)]
struct Slot {
    child: Option<Child>,
    /// A request of one command on the fast path, waiting here instead of
    /// in `parents` (see [`IoQPair::promote`]).
    single: Option<IoRequest>,
    /// A registered-buffer request of one command, waiting here likewise.
    fixed: Option<FixedIo>,
    /// When a deadline scan first saw the command in flight (None: not
    /// yet). Stamping at the scan instead of at submission keeps clock
    /// reads off the I/O path; a command stamped late is timed out late,
    /// never early.
    since: Option<Instant>,
    prp_list: Option<DmaBuffer>,
    dsm: Option<DmaBuffer>,
}

impl Slot {
    /// Whether a command of ours is in flight under this CID.
    fn in_flight(&self) -> bool {
        self.child.is_some() || self.single.is_some() || self.fixed.is_some()
    }
}

/// An I/O submission/completion queue pair, owned by one thread.
#[derive(Debug)]
pub struct IoQPair {
    q: QueuePair,
    slots: Vec<Slot>,
    parents: Vec<Option<Parent>>,
    /// Requests in flight on the fast path (in `Slot::single` or
    /// `Slot::fixed`).
    singles: usize,
    /// Registered buffers ([`IoQPair::register_buffers`]).
    fixed_bufs: Vec<fixed::Registered>,
    /// Finished registered-buffer requests, for [`IoQPair::poll_fixed`].
    fixed_done: Vec<FixedCompletion>,
    /// Reused by [`IoQPair::poll_fixed`] for the other kind's completions.
    spill: Vec<IoCompletion>,
    /// The last request's namespace: (nsid, LBA size, blocks, blocks per
    /// data command, at most [`MAX_NLB`]; 0 when one block exceeds the
    /// transfer limit).
    last_ns: Option<(u32, u32, u64, u64)>,
    free_parents: Vec<u32>,
    /// Requests with commands still to issue, oldest first.
    pending: VecDeque<u32>,
    /// Commands to send again after a retryable error.
    retry: VecDeque<Child>,
    /// Completions finished by a blocking call, for the next poll.
    stash: Vec<IoCompletion>,
    /// Buffers the device may still write (commands given up on).
    quarantine: Vec<DmaBuffer>,
    quarantine_segments: Vec<IoSegments>,
    /// Scratch list of PRP entries for segment requests.
    prp_entries: Vec<u64>,
    /// CIDs of commands given up on: never reused while the queue lives.
    lost_cids: usize,
    idle_polls: u32,
    next_tag: u64,
    /// The controller generation the queues were created in.
    generation: u64,
    /// The CQ's interrupt, in interrupt mode.
    irq: Option<Interrupt>,
    /// Wake-ups by the interrupt so far.
    interrupts: u64,
    /// When deadlines were last checked by [`IoQPair::wait`].
    last_health_check: Instant,
    /// Polls since the clock was last read.
    polls_since_clock: u32,
    /// When the deadlines were last scanned.
    last_scan: Instant,
    /// The last recovery (timeout, fatal controller, reset elsewhere).
    last_recovery: Option<recovery::Recovery>,
    shared: Arc<Shared>,
}

impl IoQPair {
    pub(crate) fn new(shared: Arc<Shared>, q: QueuePair, generation: u64) -> Self {
        let slots = (0..q.entries()).map(|_| Slot::default()).collect();
        IoQPair {
            q,
            slots,
            parents: Vec::new(),
            singles: 0,
            fixed_bufs: Vec::new(),
            fixed_done: Vec::new(),
            spill: Vec::new(),
            last_ns: None,
            free_parents: Vec::new(),
            pending: VecDeque::new(),
            retry: VecDeque::new(),
            stash: Vec::new(),
            quarantine: Vec::new(),
            quarantine_segments: Vec::new(),
            prp_entries: Vec::new(),
            lost_cids: 0,
            idle_polls: 0,
            next_tag: 1 << 63,
            generation,
            irq: None,
            interrupts: 0,
            last_health_check: Instant::now(),
            polls_since_clock: 0,
            last_scan: Instant::now(),
            last_recovery: None,
            shared,
        }
    }

    /// Puts the queue pair in interrupt mode: [`IoQPair::wait`] sleeps on
    /// `fd`, which the CQ's MSI-X vector signals.
    pub(crate) fn with_interrupt(mut self, fd: Arc<EventFd>) -> Result<Self> {
        let epoll = Epoll::new().map_err(|e| Error::os("epoll_create", e))?;
        epoll
            .ctl(
                ControlOperation::Add,
                fd.as_raw_fd(),
                EpollEvent::new(EventSet::IN, 0),
            )
            .map_err(|e| Error::os("adding an eventfd to epoll", e))?;
        self.irq = Some(Interrupt {
            fd,
            epoll,
            watched: None,
            armed: false,
        });
        Ok(self)
    }

    /// The longest a caller sleeping on [`IoQPair::interrupt_fd`] itself
    /// should sleep while requests are in flight, so that deadlines and
    /// the controller's health are checked on time.
    pub const SLEEP_TICK: Duration = INTERRUPT_TICK;

    /// Whether the CQ raises interrupts ([`Controller::io_qpair_with_interrupts`]).
    ///
    /// [`Controller::io_qpair_with_interrupts`]: crate::Controller::io_qpair_with_interrupts
    pub fn has_interrupt(&self) -> bool {
        self.irq.is_some()
    }

    /// Times [`IoQPair::wait`] was woken by the queue's interrupt.
    pub fn interrupts(&self) -> u64 {
        self.interrupts
    }

    /// The queue id.
    pub fn qid(&self) -> u16 {
        self.q.qid()
    }

    /// Entries of the submission queue (at most one less are in flight).
    pub fn depth(&self) -> usize {
        self.q.entries() as usize
    }

    /// Commands given up on after a timeout whose completion has not come
    /// yet: their CIDs stay taken (and their buffers kept) until it does.
    pub fn given_up_in_flight(&self) -> usize {
        self.lost_cids
    }

    /// Requests submitted and not yet handed back.
    pub fn outstanding(&self) -> usize {
        self.parents.len() - self.free_parents.len()
            + self.singles
            + self.stash.len()
            + self.fixed_done.len()
    }
}

impl Drop for IoQPair {
    fn drop(&mut self) {
        let qid = self.q.qid();
        if self.shared.removal.requested() {
            // The removal watcher is giving the device back right now (a
            // few milliseconds): a Delete I/O SQ through the retired BAR
            // would only fail and leak the queue's memory.
            let start = std::time::Instant::now();
            while !self.shared.removal.released()
                && start.elapsed() < std::time::Duration::from_secs(5)
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        if self.shared.removal.released() {
            // The device was taken away: it has no queues and does no DMA.
            self.shared.release_qid(qid);
            return;
        }
        if self.shared.generation() != self.generation {
            // A reset since this queue pair last looked: the controller has
            // no such queues and does no DMA for them any more.
            self.shared.release_qid(qid);
            return;
        }
        // Deleting the SQ makes the controller finish or drop what is in
        // flight; only then may the rings and buffers be reused.
        match self.shared.delete_io_queue(qid) {
            Ok(()) => self.shared.release_qid(qid),
            Err(e) => {
                log::warn!("queue {qid}: delete failed ({e}); keeping its memory");
                // The device may still write the rings and buffers: never
                // give them back. The qid stays taken too.
                self.q.leak();
                for slot in &mut self.slots {
                    slot.prp_list
                        .iter_mut()
                        .chain(slot.dsm.iter_mut())
                        .for_each(DmaBuffer::leak);
                }
                for req in self.slots.iter_mut().filter_map(|s| s.single.as_mut()) {
                    req.data.iter_mut().for_each(DmaBuffer::leak);
                    if let Some(segs) = req.segments.take() {
                        std::mem::forget(segs);
                    }
                }
                for p in self.parents.iter_mut().flatten() {
                    p.req.data.iter_mut().for_each(DmaBuffer::leak);
                    // The device may still write this memory: never release it.
                    if let Some(segs) = p.req.segments.take() {
                        std::mem::forget(segs);
                    }
                }
                for segs in self.quarantine_segments.drain(..) {
                    std::mem::forget(segs);
                }
                self.quarantine.iter_mut().for_each(DmaBuffer::leak);
                for r in &mut self.fixed_bufs {
                    r.buf.leak();
                }
            }
        }
    }
}

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

use std::os::fd::AsRawFd;

use nvme_spec::io as nvm;
use nvme_spec::{Cqe, DsmAttributes, DsmRange, SglDescriptor, Sqe, admin};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use zerocopy::IntoBytes;

use crate::ctrl::{PAGE_SIZE, Shared};
use crate::error::{Error, Result};
use crate::memory::DmaBuffer;
use crate::prp;
use crate::queue::QueuePair;

/// Most logical blocks one Read, Write or Write Zeroes command can carry.
const MAX_NLB: u64 = 1 << 16;
/// Empty polls with commands in flight after which doorbells kept in the
/// shadow page are written by MMIO too (a few milliseconds): QEMU 7.2 was
/// seen to miss a shadow update and stall a queue until the command
/// timeout.
const SHADOW_KICK_INTERVAL: u32 = 1 << 16;
/// Empty polls between two looks at the clock and at CSTS.
const HEALTH_CHECK_INTERVAL: u32 = 4096;
/// Longest sleep of [`IoQPair::wait`] between two looks at deadlines.
const INTERRUPT_TICK: Duration = Duration::from_millis(100);
/// How long an aborted command gets to come back before it is given up on.
const ABORT_GRACE: Duration = Duration::from_secs(2);

/// The operation of an [`IoRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// Read blocks into the request's buffer.
    Read,
    /// Write blocks from the request's buffer.
    Write,
    /// Flush the namespace's volatile write cache.
    Flush,
    /// Write zeroes to a block range, with no data transfer.
    WriteZeroes,
    /// Deallocate (trim) a block range (Dataset Management, AD).
    Deallocate,
}

impl IoOp {
    fn name(self) -> &'static str {
        match self {
            IoOp::Read => "Read",
            IoOp::Write => "Write",
            IoOp::Flush => "Flush",
            IoOp::WriteZeroes => "Write Zeroes",
            IoOp::Deallocate => "Deallocate",
        }
    }
}

/// Device-addressable memory that a request reads into or writes from
/// without being one [`DmaBuffer`]: e.g. pieces of page-cache folios. The
/// queue pair holds the value until the request completes, so whatever
/// keeps the memory alive and IOMMU-mapped should live in it.
///
/// The pieces must make a legal PRP list: the first may start anywhere
/// (4-byte aligned), every later one starts at a 4 KiB page boundary, and
/// every one but the last ends at a page boundary. Wrong addresses cannot
/// break memory safety (the device only reaches what the IOMMU maps, and
/// the CPU never holds references to DMA memory), only the data.
pub trait IoSegments: Send + Sync + std::fmt::Debug {
    /// (device address, length in bytes) of each piece, in order.
    fn segments(&self) -> &[(u64, usize)];
}

/// One I/O request. Read and Write carry a DMA buffer (or a list of
/// segments), which the queue pair owns until the request completes.
#[derive(Debug)]
pub struct IoRequest {
    /// What to do.
    pub op: IoOp,
    /// Namespace id.
    pub nsid: u32,
    /// First logical block.
    pub slba: u64,
    /// Number of logical blocks (0 for Flush).
    pub blocks: u64,
    /// The data buffer (Read and Write).
    pub data: Option<DmaBuffer>,
    /// Byte offset of the data in `data` or `segments` (a multiple of 4).
    pub offset: usize,
    /// The data as a list of device-addressed pieces, instead of `data`.
    pub segments: Option<Box<dyn IoSegments>>,
    /// Caller's value, handed back in the completion.
    pub tag: u64,
}

impl IoRequest {
    fn new(op: IoOp, nsid: u32, slba: u64, blocks: u64, data: Option<DmaBuffer>) -> Self {
        IoRequest {
            op,
            nsid,
            slba,
            blocks,
            data,
            offset: 0,
            segments: None,
            tag: 0,
        }
    }

    /// Read `blocks` blocks from `slba` into `buf`.
    pub fn read(nsid: u32, slba: u64, blocks: u64, buf: DmaBuffer) -> Self {
        Self::new(IoOp::Read, nsid, slba, blocks, Some(buf))
    }

    /// Write `blocks` blocks from `buf` at `slba`.
    pub fn write(nsid: u32, slba: u64, blocks: u64, buf: DmaBuffer) -> Self {
        Self::new(IoOp::Write, nsid, slba, blocks, Some(buf))
    }

    /// Read `blocks` blocks from `slba` into the pieces of `segments`.
    pub fn read_segments(nsid: u32, slba: u64, blocks: u64, segments: Box<dyn IoSegments>) -> Self {
        IoRequest {
            segments: Some(segments),
            ..Self::new(IoOp::Read, nsid, slba, blocks, None)
        }
    }

    /// Write `blocks` blocks at `slba` from the pieces of `segments`.
    pub fn write_segments(
        nsid: u32,
        slba: u64,
        blocks: u64,
        segments: Box<dyn IoSegments>,
    ) -> Self {
        IoRequest {
            segments: Some(segments),
            ..Self::new(IoOp::Write, nsid, slba, blocks, None)
        }
    }

    /// Flush the namespace.
    pub fn flush(nsid: u32) -> Self {
        Self::new(IoOp::Flush, nsid, 0, 0, None)
    }

    /// Write zeroes to `blocks` blocks from `slba`.
    pub fn write_zeroes(nsid: u32, slba: u64, blocks: u64) -> Self {
        Self::new(IoOp::WriteZeroes, nsid, slba, blocks, None)
    }

    /// Deallocate `blocks` blocks from `slba`.
    pub fn deallocate(nsid: u32, slba: u64, blocks: u64) -> Self {
        Self::new(IoOp::Deallocate, nsid, slba, blocks, None)
    }

    /// Sets the tag handed back in the completion.
    pub fn with_tag(mut self, tag: u64) -> Self {
        self.tag = tag;
        self
    }

    /// Sets the byte offset of the data in the buffer.
    pub fn with_offset(mut self, offset: usize) -> Self {
        self.offset = offset;
        self
    }

    fn describe(&self) -> String {
        match self.op {
            IoOp::Flush => format!("Flush nsid {}", self.nsid),
            op => format!(
                "{} nsid {} lba {}+{}",
                op.name(),
                self.nsid,
                self.slba,
                self.blocks
            ),
        }
    }
}

/// A finished request: its buffer comes back with the result.
#[derive(Debug)]
pub struct IoCompletion {
    /// The request's tag.
    pub tag: u64,
    /// The request's operation.
    pub op: IoOp,
    /// The request's namespace.
    pub nsid: u32,
    /// The request's first block.
    pub slba: u64,
    /// The request's block count.
    pub blocks: u64,
    /// The data buffer, back to the caller. `None` only if the device may
    /// still write into it (a command given up on after a timeout): then
    /// the queue pair keeps it until the queue is deleted.
    pub data: Option<DmaBuffer>,
    /// The request's segments, back to the caller (same rule as `data`).
    pub segments: Option<Box<dyn IoSegments>>,
    /// Success, or the first error of the request's commands.
    pub result: Result<()>,
}

/// A request that could not be accepted, handed back with the reason.
#[derive(Debug)]
pub struct Rejected {
    /// The request, with its buffer.
    pub request: IoRequest,
    /// Why it was rejected.
    pub error: Error,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.request.describe(), self.error)
    }
}

impl std::error::Error for Rejected {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

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
}

impl std::fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interrupt")
            .field("eventfd", &self.fd.as_raw_fd())
            .finish()
    }
}

/// Per CID: the command in flight and the memory reused for its data
/// pointer (PRP list pages, DSM range).
#[derive(Debug, Default)]
struct Slot {
    child: Option<Child>,
    deadline: Option<Instant>,
    prp_list: Option<DmaBuffer>,
    dsm: Option<DmaBuffer>,
}

/// An I/O submission/completion queue pair, owned by one thread.
#[derive(Debug)]
pub struct IoQPair {
    q: QueuePair,
    slots: Vec<Slot>,
    parents: Vec<Option<Parent>>,
    free_parents: Vec<u32>,
    /// Requests with commands still to issue, oldest first.
    pending: VecDeque<u32>,
    /// Commands to send again after a retryable error.
    retry: VecDeque<Child>,
    /// Completions finished by a blocking call, for the next poll.
    stash: Vec<IoCompletion>,
    /// Buffers the device may still write (commands given up on).
    quarantine: Vec<DmaBuffer>,
    quarantine_segments: Vec<Box<dyn IoSegments>>,
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
    shared: Arc<Shared>,
}

impl IoQPair {
    pub(crate) fn new(shared: Arc<Shared>, q: QueuePair, generation: u64) -> Self {
        let slots = (0..q.entries()).map(|_| Slot::default()).collect();
        IoQPair {
            q,
            slots,
            parents: Vec::new(),
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
        self.irq = Some(Interrupt { fd, epoll });
        Ok(self)
    }

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

    /// Polls; if nothing finished, waits up to `timeout` for something to
    /// finish: asleep on the queue's interrupt in interrupt mode, spinning
    /// otherwise. Returns how many requests it appended to `out` (0 when
    /// the time ran out or nothing is outstanding).
    pub fn wait(&mut self, out: &mut Vec<IoCompletion>, timeout: Duration) -> Result<usize> {
        let start = Instant::now();
        loop {
            let n = self.poll(out)?;
            if n > 0 || self.outstanding() == 0 {
                return Ok(n);
            }
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                return Ok(0);
            }
            let Some(irq) = &self.irq else {
                std::hint::spin_loop();
                continue;
            };
            // Sleep at most a tick, so that deadlines are checked on time
            // even when no interrupt comes.
            let nap = (timeout - elapsed).min(INTERRUPT_TICK);
            let mut events = [EpollEvent::default()];
            let woke = irq
                .epoll
                .wait(nap.as_millis().max(1) as i32, &mut events)
                .map_err(|e| Error::os("epoll_wait", e))?;
            if woke > 0 {
                // Non-blocking: clears the counter; an interrupt after this
                // read leaves the eventfd readable, so none is lost.
                let _ = irq.fd.read();
                self.interrupts += 1;
            }
            if self.last_health_check.elapsed() >= INTERRUPT_TICK {
                self.last_health_check = Instant::now();
                let mut done = Vec::new();
                self.check_health(&mut done)?;
                let n = done.len();
                out.append(&mut done);
                if n > 0 {
                    return Ok(n);
                }
            }
        }
    }

    /// The queue id.
    pub fn qid(&self) -> u16 {
        self.q.qid()
    }

    /// Entries of the submission queue (at most one less are in flight).
    pub fn depth(&self) -> usize {
        self.q.entries() as usize
    }

    /// Requests submitted and not yet handed back.
    pub fn outstanding(&self) -> usize {
        self.parents.len() - self.free_parents.len() + self.stash.len()
    }

    /// Accepts a request. Its commands are written to the SQ as slots
    /// allow; the doorbell is rung by the next [`IoQPair::poll`] (or
    /// [`IoQPair::ring`]).
    pub fn submit(&mut self, req: IoRequest) -> std::result::Result<(), Box<Rejected>> {
        let (lba_size, per_cmd, total) = match self.plan(&req) {
            Ok(plan) => plan,
            Err(error) => {
                return Err(Box::new(Rejected {
                    request: req,
                    error,
                }));
            }
        };
        let parent = Parent {
            req,
            lba_size,
            per_cmd,
            total,
            issued: 0,
            outstanding: 0,
            error: None,
            lost: false,
        };
        let id = match self.free_parents.pop() {
            Some(id) => {
                self.parents[id as usize] = Some(parent);
                id
            }
            None => {
                self.parents.push(Some(parent));
                (self.parents.len() - 1) as u32
            }
        };
        self.pending.push_back(id);
        if let Err(error) = self.fill_sq() {
            match self.unlink_unstarted(id) {
                Some(request) => return Err(Box::new(Rejected { request, error })),
                // Part of it is in flight: it completes, with this error.
                None => self.fail_child_inner(id, error),
            }
        }
        Ok(())
    }

    /// Removes a parent none of whose commands were issued.
    fn unlink_unstarted(&mut self, id: u32) -> Option<IoRequest> {
        let started = self.parents[id as usize].as_ref()?.issued > 0;
        if started {
            return None;
        }
        self.pending.retain(|&p| p != id);
        let parent = self.parents[id as usize].take()?;
        self.free_parents.push(id);
        Some(parent.req)
    }

    /// Validates a request; returns (LBA size, blocks per command, commands).
    fn plan(&self, req: &IoRequest) -> Result<(u32, u64, u64)> {
        let ns = self.shared.namespace(req.nsid)?;
        let lba = ns.lba_size;
        if req.op == IoOp::Flush {
            return Ok((lba, 0, 1));
        }
        ns.check_range(req.slba, req.blocks)?;
        let per_cmd = match req.op {
            IoOp::Read | IoOp::Write => {
                let per = (self.shared.max_transfer / lba as usize) as u64;
                if per == 0 {
                    return Err(Error::Unsupported(format!(
                        "LBA size {lba} exceeds the transfer limit {}",
                        self.shared.max_transfer
                    )));
                }
                let have = match (&req.data, &req.segments) {
                    (Some(buf), None) => buf.len(),
                    (None, Some(segs)) => check_segments(segs.segments())?,
                    _ => {
                        return Err(Error::BadBuffer(format!(
                            "{} needs a data buffer or segments (one of them)",
                            req.op.name()
                        )));
                    }
                };
                let need = req
                    .blocks
                    .checked_mul(lba as u64)
                    .and_then(|b| b.checked_add(req.offset as u64));
                if need.is_none_or(|n| n > have as u64) {
                    return Err(Error::BadBuffer(format!(
                        "{} blocks of {lba} bytes at offset {} do not fit {have} bytes of data",
                        req.blocks, req.offset,
                    )));
                }
                if !req.offset.is_multiple_of(4) {
                    return Err(Error::BadBuffer(format!(
                        "data offset {} is not a multiple of 4",
                        req.offset
                    )));
                }
                per.min(MAX_NLB)
            }
            IoOp::WriteZeroes => MAX_NLB,
            IoOp::Deallocate => u64::from(u32::MAX),
            IoOp::Flush => 1,
        };
        Ok((lba, per_cmd, req.blocks.div_ceil(per_cmd)))
    }

    /// Issues waiting commands (retries first) while the SQ has room.
    fn fill_sq(&mut self) -> Result<()> {
        loop {
            let child = if let Some(c) = self.retry.front().copied() {
                c
            } else {
                let Some(&id) = self.pending.front() else {
                    return Ok(());
                };
                let Some(p) = self.parents[id as usize].as_ref() else {
                    self.pending.pop_front();
                    continue;
                };
                if p.issued >= p.total {
                    self.pending.pop_front();
                    continue;
                }
                Child {
                    parent: id,
                    index: p.issued,
                    tries: 0,
                    timeouts: 0,
                }
            };
            // Commands from the retry queue were issued (and counted in
            // `outstanding`) before; new ones come from their request.
            let from_retry = !self.retry.is_empty();
            let Some(cid) = self.q.reserve() else {
                return Ok(());
            };
            match self.build(cid, child) {
                Ok(sqe) => self.q.post_reserved(cid, sqe)?,
                Err(e) => {
                    self.q.unreserve(cid);
                    // A command that cannot even be built fails its request.
                    self.take_child_source(from_retry, child);
                    if from_retry && let Some(p) = self.parents[child.parent as usize].as_mut() {
                        p.outstanding = p.outstanding.saturating_sub(1);
                    }
                    self.fail_child(child, e);
                    continue;
                }
            }
            self.take_child_source(from_retry, child);
            let slot = &mut self.slots[cid as usize];
            slot.child = Some(child);
            slot.deadline = Some(Instant::now() + self.shared.options.io_timeout);
            if !from_retry && let Some(p) = self.parents[child.parent as usize].as_mut() {
                p.outstanding += 1;
            }
        }
    }

    /// Marks `child` as taken from the retry queue or its parent's cursor.
    fn take_child_source(&mut self, from_retry: bool, child: Child) {
        if from_retry {
            self.retry.pop_front();
        } else if let Some(p) = self.parents[child.parent as usize].as_mut() {
            p.issued += 1;
        }
    }

    /// The SQE of one command, with its data pointer.
    fn build(&mut self, cid: u16, child: Child) -> Result<Sqe> {
        let p = self.parents[child.parent as usize]
            .as_ref()
            .ok_or_else(|| Error::BadDevice("command of a finished request".into()))?;
        let req = &p.req;
        let first = child.index * p.per_cmd;
        let slba = req.slba + first;
        let blocks = (req.blocks - first).min(p.per_cmd);
        let range = |e: nvme_spec::RangeError| Error::BadBuffer(e.to_string());
        let slot = &mut self.slots[cid as usize];
        let sqe = match req.op {
            IoOp::Read | IoOp::Write => {
                let nlb = blocks as u32;
                let mut sqe = if req.op == IoOp::Read {
                    nvm::read(req.nsid, slba, nlb)
                } else {
                    nvm::write(req.nsid, slba, nlb)
                }
                .map_err(range)?;
                let start = req.offset + (first * u64::from(p.lba_size)) as usize;
                let len = blocks as usize * p.lba_size as usize;
                if let Some(segs) = &req.segments {
                    // Pieces of memory: PRP entries across them (SGL mode
                    // would need a descriptor list; PRPs always fit, as
                    // submit checked).
                    segment_entries(segs.segments(), start, len, &mut self.prp_entries);
                    let (prp1, prp2) = prp::fill_entries(
                        &self.shared.pool,
                        &mut slot.prp_list,
                        &self.prp_entries,
                    )?;
                    sqe.set_prps(prp1, prp2);
                    return Ok(sqe);
                }
                let buf = req
                    .data
                    .as_ref()
                    .ok_or_else(|| Error::BadBuffer("no data buffer".into()))?;
                let iova = buf.iova() + start as u64;
                if self.shared.sgl {
                    sqe.set_sgl1(SglDescriptor::data_block(iova, len as u32));
                } else {
                    let (prp1, prp2) = prp::fill(&self.shared.pool, &mut slot.prp_list, iova, len)?;
                    sqe.set_prps(prp1, prp2);
                }
                sqe
            }
            IoOp::Flush => nvm::flush(req.nsid),
            IoOp::WriteZeroes => {
                nvm::write_zeroes(req.nsid, slba, blocks as u32, false).map_err(range)?
            }
            IoOp::Deallocate => {
                if slot.dsm.is_none() {
                    slot.dsm = Some(self.shared.pool.alloc(PAGE_SIZE)?);
                }
                let dsm = slot
                    .dsm
                    .as_ref()
                    .ok_or_else(|| Error::BadBuffer("no DSM buffer".into()))?;
                dsm.write(0, DsmRange::new(slba, blocks as u32).as_bytes())?;
                let mut sqe =
                    nvm::dataset_management(req.nsid, 1, DsmAttributes::AD).map_err(range)?;
                sqe.set_prps(dsm.iova(), 0);
                sqe
            }
        };
        Ok(sqe)
    }

    /// Rings the SQ doorbell for everything submitted since the last ring.
    pub fn ring(&mut self) -> Result<()> {
        self.q.ring()
    }

    /// Rings the SQ doorbell, reaps completions, and appends the requests
    /// that finished to `out`; returns how many it appended. A poll that
    /// fails appends nothing: what finished before the failure is handed
    /// back by the next poll.
    pub fn poll(&mut self, out: &mut Vec<IoCompletion>) -> Result<usize> {
        let before = out.len();
        match self.poll_inner(out) {
            Ok(()) => Ok(out.len() - before),
            Err(e) => {
                // A caller propagating the error with `?` must not lose
                // requests that did finish.
                self.stash.extend(out.drain(before..));
                Err(e)
            }
        }
    }

    fn poll_inner(&mut self, out: &mut Vec<IoCompletion>) -> Result<()> {
        out.append(&mut self.stash);
        self.q.ring()?;
        let reaped = self.reap(out);
        // Use the slots freed by this reap, or by an earlier one that
        // stopped at a bad entry, and issue retries: waiting requests must
        // not depend on another completion coming to wake them.
        self.fill_sq()?;
        self.q.ring()?;
        if reaped? > 0 {
            self.idle_polls = 0;
        } else if self.shared.generation() != self.generation {
            self.recover(out)?;
        } else if self.q.in_flight() > self.lost_cids {
            self.idle_polls = self.idle_polls.wrapping_add(1);
            if self.idle_polls.is_multiple_of(SHADOW_KICK_INTERVAL) && self.q.has_shadow() {
                self.q.kick()?;
            }
            if self.idle_polls.is_multiple_of(HEALTH_CHECK_INTERVAL) {
                self.check_health(out)?;
            }
        }
        Ok(())
    }

    /// Reaps every completion posted so far and rings the CQ head doorbell
    /// for every entry consumed, a rejected one included: unacknowledged
    /// bad entries would leave the device believing the CQ full.
    fn reap(&mut self, out: &mut Vec<IoCompletion>) -> Result<usize> {
        let mut reaped = 0usize;
        let result = loop {
            match self.q.pop() {
                Ok(Some(cqe)) => {
                    reaped += 1;
                    self.complete(cqe, out);
                }
                Ok(None) => break Ok(reaped),
                Err(e) => break Err(e),
            }
        };
        if reaped > 0 || result.is_err() {
            self.q.ring_cq()?;
        }
        result
    }

    fn complete(&mut self, cqe: Cqe, out: &mut Vec<IoCompletion>) {
        let cid = cqe.cid() as usize;
        let Some(child) = self.slots.get_mut(cid).and_then(|s| s.child.take()) else {
            // The queue had the CID in flight, so this is a command given
            // up on after a timeout, completing after all: the queue has
            // freed its CID, which no longer counts as lost.
            self.lost_cids = self.lost_cids.saturating_sub(1);
            log::warn!(
                "queue {}: late completion for CID {cid}, given up on before",
                self.qid()
            );
            return;
        };
        self.slots[cid].deadline = None;
        let status = cqe.status();
        let Some(p) = self.parents[child.parent as usize].as_mut() else {
            return;
        };
        p.outstanding = p.outstanding.saturating_sub(1);
        if !status.is_success() {
            if status.is_retryable() && child.tries < self.shared.options.retries {
                log::debug!(
                    "queue {}: retrying {} after {status}",
                    self.q.qid(),
                    p.req.describe()
                );
                p.outstanding += 1;
                self.retry.push_back(Child {
                    tries: child.tries + 1,
                    ..child
                });
                return;
            }
            let e = Error::Command {
                command: p.req.describe(),
                status,
            };
            self.fail_child_inner(child.parent, e);
        }
        self.finish_if_done(child.parent, out);
    }

    /// Records `e` for the child's request and stops issuing its commands.
    fn fail_child(&mut self, child: Child, e: Error) {
        self.fail_child_inner(child.parent, e);
        let mut out = Vec::new();
        self.finish_if_done(child.parent, &mut out);
        self.stash.append(&mut out);
    }

    fn fail_child_inner(&mut self, parent: u32, e: Error) {
        if let Some(p) = self.parents[parent as usize].as_mut() {
            if p.error.is_none() {
                p.error = Some(e);
            }
            p.issued = p.total;
        }
    }

    fn finish_if_done(&mut self, id: u32, out: &mut Vec<IoCompletion>) {
        let done = self.parents[id as usize].as_ref().is_some_and(Parent::done);
        if !done {
            return;
        }
        let Some(mut p) = self.parents[id as usize].take() else {
            return;
        };
        self.free_parents.push(id);
        let (data, segments) = if p.lost {
            if let Some(buf) = p.req.data.take() {
                self.quarantine.push(buf);
            }
            if let Some(segs) = p.req.segments.take() {
                self.quarantine_segments.push(segs);
            }
            (None, None)
        } else {
            (p.req.data.take(), p.req.segments.take())
        };
        out.push(IoCompletion {
            tag: p.req.tag,
            op: p.req.op,
            nsid: p.req.nsid,
            slba: p.req.slba,
            blocks: p.req.blocks,
            data,
            segments,
            result: p.error.map_or(Ok(()), Err),
        });
    }

    /// After a controller reset: start the rings over, create the queues
    /// again, and resubmit every command that was in flight (first, before
    /// anything not yet issued). Commands given up on before are forgotten
    /// with their CIDs: the reset ended any DMA they could still do.
    fn recover(&mut self, out: &mut Vec<IoCompletion>) -> Result<()> {
        let generation = self.shared.generation();
        let qid = self.q.qid();
        self.q.reset_rings()?;
        let mut again = Vec::new();
        for slot in &mut self.slots {
            if let Some(child) = slot.child.take() {
                slot.deadline = None;
                again.push(child);
            }
        }
        let resent = again.len();
        for child in again.into_iter().rev() {
            // Still counted in its request's `outstanding`.
            self.retry.push_front(child);
        }
        self.lost_cids = 0;
        self.quarantine.clear();
        self.quarantine_segments.clear();
        if let Err(e) = self.shared.register_io_queue(&mut self.q) {
            log::error!("queue {qid}: cannot be created again after a reset: {e}");
            let msg = e.to_string();
            self.give_up_all(out, &|| {
                Error::Unsupported(format!(
                    "queue {qid} could not be created again after a controller reset: {msg}"
                ))
            });
            return Err(e);
        }
        self.generation = generation;
        log::info!(
            "queue {qid}: created again after a controller reset; {resent} commands resubmitted"
        );
        self.fill_sq()?;
        self.q.ring()
    }

    /// Resets the controller (unless another queue pair just did) and
    /// recovers; if the reset fails, every request fails with `e`.
    fn reset_and_recover(
        &mut self,
        out: &mut Vec<IoCompletion>,
        e: impl Fn() -> Error,
    ) -> Result<()> {
        match self.shared.reset_from(Some(self.generation)) {
            Ok(()) => self.recover(out),
            Err(reset_error) => {
                log::error!(
                    "queue {}: controller reset failed: {reset_error}",
                    self.q.qid()
                );
                self.give_up_all(out, &e);
                Err(e())
            }
        }
    }

    /// On a long idle stretch with commands in flight: the controller's
    /// status, then each command's deadline. A command past its deadline
    /// is aborted; if it does not come back, it is given up on.
    fn check_health(&mut self, out: &mut Vec<IoCompletion>) -> Result<()> {
        let csts = self.shared.csts()?;
        if csts.fatal() || csts.is_all_ones() {
            let qid = self.q.qid();
            let e = || Error::ControllerFatal {
                step: format!("polling queue {qid}"),
                csts,
            };
            // A device that is gone cannot be reset: the reset fails at
            // once and every request fails with this error.
            return self.reset_and_recover(out, e);
        }
        let now = Instant::now();
        let expired: Vec<u16> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.child.is_some() && s.deadline.is_some_and(|d| d <= now))
            .map(|(cid, _)| cid as u16)
            .collect();
        for cid in expired {
            self.abort(cid, out)?;
        }
        Ok(())
    }

    fn abort(&mut self, cid: u16, out: &mut Vec<IoCompletion>) -> Result<()> {
        let qid = self.q.qid();
        log::warn!("queue {qid}: command {cid} timed out; aborting it");
        if let Err(e) = self.shared.admin_cmd(admin::abort(qid, cid), "Abort") {
            log::warn!("queue {qid}: Abort of command {cid} failed: {e}");
        }
        let start = Instant::now();
        while start.elapsed() < ABORT_GRACE {
            self.reap(out)?;
            if self.slots[cid as usize].child.is_none() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        // Still not back. The first time, reset the controller: the command
        // is resubmitted with the others. The second time, give up on it:
        // its CID stays taken and its buffer is kept, since the device may
        // yet write to it.
        let first_timeout = self.slots[cid as usize]
            .child
            .as_ref()
            .is_some_and(|c| c.timeouts == 0);
        if first_timeout && self.shared.options.reset_on_timeout {
            if let Some(c) = self.slots[cid as usize].child.as_mut() {
                c.timeouts += 1;
            }
            log::warn!(
                "queue {qid}: command {cid} did not come back after Abort; resetting the controller"
            );
            let waited = self.shared.options.io_timeout + ABORT_GRACE;
            return self.reset_and_recover(out, || Error::CommandTimeout {
                command: format!("command {cid} on queue {qid}"),
                waited_ms: waited.as_millis() as u64,
            });
        }
        if let Some(child) = self.slots[cid as usize].child.take() {
            self.slots[cid as usize].deadline = None;
            self.lost_cids += 1;
            if let Some(p) = self.parents[child.parent as usize].as_mut() {
                p.outstanding = p.outstanding.saturating_sub(1);
                p.lost = true;
                let waited = self.shared.options.io_timeout + ABORT_GRACE;
                let e = Error::CommandTimeout {
                    command: p.req.describe(),
                    waited_ms: waited.as_millis() as u64,
                };
                self.fail_child_inner(child.parent, e);
            }
            self.finish_if_done(child.parent, out);
        }
        Ok(())
    }

    /// Fails every outstanding request (the controller is gone or fatal).
    fn give_up_all(&mut self, out: &mut Vec<IoCompletion>, e: &dyn Fn() -> Error) {
        for cid in 0..self.slots.len() {
            if let Some(child) = self.slots[cid].child.take() {
                self.slots[cid].deadline = None;
                self.lost_cids += 1;
                if let Some(p) = self.parents[child.parent as usize].as_mut() {
                    p.outstanding = p.outstanding.saturating_sub(1);
                    p.lost = true;
                }
            }
        }
        while let Some(child) = self.retry.pop_front() {
            if let Some(p) = self.parents[child.parent as usize].as_mut() {
                p.outstanding = p.outstanding.saturating_sub(1);
            }
        }
        for id in 0..self.parents.len() as u32 {
            if self.parents[id as usize].is_some() {
                self.fail_child_inner(id, e());
                self.finish_if_done(id, out);
            }
        }
        self.pending.clear();
    }

    /// Submits `req` and polls until it completes; completions of other
    /// requests met meanwhile are kept for the next [`IoQPair::poll`].
    pub fn execute(&mut self, mut req: IoRequest) -> Result<IoCompletion> {
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1) | 1 << 63;
        let user_tag = req.tag;
        req.tag = tag;
        self.submit(req).map_err(|r| r.error)?;
        let mut got = Vec::new();
        loop {
            // Spins, or sleeps on the interrupt in interrupt mode.
            let polled = self.wait(&mut got, INTERRUPT_TICK);
            if polled.is_err() {
                // A failed poll keeps what finished in the stash.
                got.append(&mut self.stash);
            }
            if let Some(i) = got.iter().position(|c| c.tag == tag) {
                let mut done = got.swap_remove(i);
                self.stash.append(&mut got);
                done.tag = user_tag;
                return Ok(done);
            }
            if let Err(e) = polled {
                // Other requests' completions stay for the next poll.
                self.stash.append(&mut got);
                return Err(e);
            }
        }
    }

    fn execute_ok(&mut self, req: IoRequest) -> Result<Option<DmaBuffer>> {
        let done = self.execute(req)?;
        done.result?;
        Ok(done.data)
    }

    fn blocks_of(&self, nsid: u32, len: usize) -> Result<u64> {
        self.shared.namespace(nsid)?.blocks_in(len)
    }

    /// Reads `buf.len()` bytes (whole blocks) from `slba`.
    pub fn read(&mut self, nsid: u32, slba: u64, buf: &mut [u8]) -> Result<()> {
        let blocks = self.blocks_of(nsid, buf.len())?;
        let dma = self.shared.pool.alloc(buf.len())?;
        let dma = self
            .execute_ok(IoRequest::read(nsid, slba, blocks, dma))?
            .ok_or_else(|| Error::BadDevice("read buffer kept after a lost command".into()))?;
        dma.read(0, buf)
    }

    /// Writes `data` (whole blocks) at `slba`.
    pub fn write(&mut self, nsid: u32, slba: u64, data: &[u8]) -> Result<()> {
        let blocks = self.blocks_of(nsid, data.len())?;
        let dma = self.shared.pool.alloc(data.len())?;
        dma.write(0, data)?;
        self.execute_ok(IoRequest::write(nsid, slba, blocks, dma))
            .map(drop)
    }

    /// Flushes the namespace's volatile write cache.
    pub fn flush(&mut self, nsid: u32) -> Result<()> {
        self.execute_ok(IoRequest::flush(nsid)).map(drop)
    }

    /// Writes zeroes to `blocks` blocks from `slba`.
    pub fn write_zeroes(&mut self, nsid: u32, slba: u64, blocks: u64) -> Result<()> {
        self.execute_ok(IoRequest::write_zeroes(nsid, slba, blocks))
            .map(drop)
    }

    /// Deallocates `blocks` blocks from `slba`.
    pub fn deallocate(&mut self, nsid: u32, slba: u64, blocks: u64) -> Result<()> {
        self.execute_ok(IoRequest::deallocate(nsid, slba, blocks))
            .map(drop)
    }
}

impl Drop for IoQPair {
    fn drop(&mut self) {
        let qid = self.q.qid();
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
            }
        }
    }
}

/// Checks that `segs` make a legal PRP list; returns their total length.
fn check_segments(segs: &[(u64, usize)]) -> Result<usize> {
    let page = PAGE_SIZE as u64;
    let last = segs.len().saturating_sub(1);
    let mut total = 0usize;
    for (i, &(iova, len)) in segs.iter().enumerate() {
        let bad = |why: &str| {
            Err(Error::BadBuffer(format!(
                "segment {i} ({len} bytes at {iova:#x}) {why}"
            )))
        };
        if len == 0 {
            return bad("is empty");
        }
        if i == 0 && !iova.is_multiple_of(4) {
            return bad("does not start at a multiple of 4");
        }
        if i > 0 && !iova.is_multiple_of(page) {
            return bad("is not the first and does not start at a page boundary");
        }
        if i < last && !(iova + len as u64).is_multiple_of(page) {
            return bad("is not the last and does not end at a page boundary");
        }
        total = total
            .checked_add(len)
            .ok_or_else(|| Error::BadBuffer("segments too long".into()))?;
    }
    if segs.is_empty() {
        return Err(Error::BadBuffer("no segments".into()));
    }
    Ok(total)
}

/// The PRP entries for bytes `start..start + len` of the pieces `segs`
/// (checked by [`check_segments`]): the first address as is, then every
/// page the bytes touch.
fn segment_entries(segs: &[(u64, usize)], start: usize, len: usize, out: &mut Vec<u64>) {
    let page = PAGE_SIZE as u64;
    out.clear();
    let end = start + len;
    let mut pos = 0usize;
    for &(iova, seg_len) in segs {
        let (seg_start, seg_end) = (pos, pos + seg_len);
        pos = seg_end;
        if seg_end <= start {
            continue;
        }
        if seg_start >= end {
            break;
        }
        let from = iova + (start.max(seg_start) - seg_start) as u64;
        let to = iova + (end.min(seg_end) - seg_start) as u64;
        out.push(from);
        let mut next = (from & !(page - 1)) + page;
        while next < to {
            out.push(next);
            next += page;
        }
    }
}

#[cfg(test)]
mod segment_tests {
    use super::*;

    #[test]
    fn prp_legality_of_segments() {
        assert_eq!(
            check_segments(&[(0x1000, 4096), (0x9000, 8192)]).ok(),
            Some(12288)
        );
        assert!(
            check_segments(&[(0x1200, 3584), (0x9000, 100)]).is_ok(),
            "first may start mid-page"
        );
        assert!(
            check_segments(&[(0x1000, 512), (0x9000, 100)]).is_err(),
            "first ends mid-page"
        );
        assert!(
            check_segments(&[(0x1000, 4096), (0x9200, 100)]).is_err(),
            "second starts mid-page"
        );
        assert!(
            check_segments(&[(0x1002, 4096)]).is_err(),
            "not dword aligned"
        );
        assert!(check_segments(&[]).is_err());
        assert!(check_segments(&[(0x1000, 0)]).is_err());
    }

    #[test]
    fn entries_cover_a_window_across_segments() {
        let segs = [
            (0x10_0000u64, 8192usize),
            (0x50_0000, 4096),
            (0x90_0000, 12288),
        ];
        let mut out = Vec::new();
        segment_entries(&segs, 0, 24576, &mut out);
        assert_eq!(
            out,
            [
                0x10_0000, 0x10_1000, 0x50_0000, 0x90_0000, 0x90_1000, 0x90_2000
            ]
        );
        // A child window starting mid-page of the first piece, ending in the third.
        segment_entries(&segs, 6144, 8192, &mut out);
        assert_eq!(out, [0x10_1800, 0x50_0000, 0x90_0000]);
        // Entirely inside the last piece.
        segment_entries(&segs, 16384, 512, &mut out);
        assert_eq!(out, [0x90_1000]);
    }
}

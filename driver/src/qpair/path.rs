//! The I/O path: accepting a request, issuing its commands as SQ slots
//! allow, reaping completions and handing requests back.

use nvme_spec::io as nvm;
use nvme_spec::{DsmAttributes, DsmRange, SglDescriptor, Sqe, Status};
use zerocopy::IntoBytes;

use super::{
    CLOCK_POLLS, Child, FixedCompletion, HEALTH_CHECK_INTERVAL, IoCompletion, IoOp, IoQPair,
    IoRequest, MAX_NLB, Parent, Rejected, Slot,
};
use crate::ctrl::{PAGE_SIZE, Shared};
use crate::error::{Error, Result};
use crate::prp;
use crate::queue::PathCounters;

impl IoQPair {
    /// Accepts a request. Its commands are written to the SQ as slots
    /// allow; the doorbell is rung by the next [`IoQPair::poll`] (or
    /// [`IoQPair::ring`]).
    pub fn submit(&mut self, req: IoRequest) -> std::result::Result<(), Box<Rejected>> {
        if self.shared.removal.requested() {
            return Err(Box::new(Rejected {
                request: req,
                error: crate::removal::removed_error(&self.shared),
            }));
        }
        let (lba_size, per_cmd, total) = match self.plan(&req) {
            Ok(plan) => plan,
            Err(error) => {
                return Err(Box::new(Rejected {
                    request: req,
                    error,
                }));
            }
        };
        // The fast path: a request of one command, with nothing waiting
        // before it, goes straight to the SQ and waits in its slot (no
        // parent, no trip through `pending`).
        if total == 1
            && self.pending.is_empty()
            && self.retry.is_empty()
            && let Some(cid) = self.q.reserve()
        {
            let built = command(
                &self.shared,
                &mut self.slots[cid as usize],
                &mut self.prp_entries,
                &req,
                lba_size,
                0,
                req.blocks,
            );
            let posted = match built {
                Ok(sqe) => self.q.post_reserved(cid, sqe),
                Err(e) => {
                    self.q.unreserve(cid);
                    Err(e)
                }
            };
            if let Err(error) = posted {
                return Err(Box::new(Rejected {
                    request: req,
                    error,
                }));
            }
            let slot = &mut self.slots[cid as usize];
            slot.single = Some(req);
            // Stamped by the next deadline scan: no clock read per command.
            slot.since = None;
            self.singles += 1;
            return Ok(());
        }
        self.submit_parent(Parent {
            req,
            lba_size,
            per_cmd,
            total,
            issued: 0,
            outstanding: 0,
            error: None,
            lost: false,
            fixed: None,
        })
    }

    /// Queues a request with the bookkeeping for splitting and retries,
    /// and issues what the SQ has room for. If nothing of it could be
    /// issued, the request comes back with the error; otherwise the error
    /// is its completion's.
    pub(super) fn submit_parent(
        &mut self,
        parent: Parent,
    ) -> std::result::Result<(), Box<Rejected>> {
        let id = self.store_parent(parent);
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

    /// Keeps `parent` until its request completes; returns its id.
    fn store_parent(&mut self, parent: Parent) -> u32 {
        match self.free_parents.pop() {
            Some(id) => {
                self.parents[id as usize] = Some(parent);
                id
            }
            None => {
                self.parents.push(Some(parent));
                (self.parents.len() - 1) as u32
            }
        }
    }

    /// Turns the single-command request waiting in slot `cid` (the fast
    /// path) into a parent with one child in flight, for the paths that
    /// need the bookkeeping: a retry, an abort, a reset, giving up.
    pub(super) fn promote(&mut self, cid: usize) {
        let Some(slot) = self.slots.get_mut(cid) else {
            return;
        };
        let (req, fixed) = if let Some(io) = slot.fixed.take() {
            (self.fixed_request(&io), Some(io))
        } else if let Some(req) = slot.single.take() {
            (req, None)
        } else {
            return;
        };
        self.singles -= 1;
        // The namespace was found at submission; namespaces do not go away.
        let lba_size = self
            .shared
            .namespace(req.nsid)
            .map_or(PAGE_SIZE as u32, |n| n.lba_size);
        let per_cmd = req.blocks;
        let id = self.store_parent(Parent {
            req,
            lba_size,
            per_cmd,
            total: 1,
            issued: 1,
            outstanding: 1,
            error: None,
            lost: false,
            fixed,
        });
        self.slots[cid].child = Some(Child {
            parent: id,
            index: 0,
            tries: 0,
            timeouts: 0,
        });
    }

    /// [`IoQPair::promote`] for every single-command request in flight.
    pub(super) fn promote_all(&mut self) {
        if self.singles == 0 {
            return;
        }
        for cid in 0..self.slots.len() {
            self.promote(cid);
        }
    }

    /// Removes a parent none of whose commands were issued.
    pub(super) fn unlink_unstarted(&mut self, id: u32) -> Option<IoRequest> {
        let started = self.parents[id as usize].as_ref()?.issued > 0;
        if started {
            return None;
        }
        self.pending.retain(|&p| p != id);
        let parent = self.parents[id as usize].take()?;
        self.free_parents.push(id);
        Some(parent.req)
    }

    /// The namespace `nsid`'s (LBA size, blocks, blocks per data command:
    /// what the transfer limit allows, at most [`MAX_NLB`], 0 if not even
    /// one block), remembered from the last request (namespaces do not
    /// change while the controller is open).
    #[inline]
    pub(super) fn ns_info(&mut self, nsid: u32) -> Result<(u32, u64, u64)> {
        match self.last_ns {
            Some((last, lba, capacity, per)) if last == nsid => Ok((lba, capacity, per)),
            _ => {
                let ns = self.shared.namespace(nsid)?;
                let per = ((self.shared.max_transfer / ns.lba_size as usize) as u64).min(MAX_NLB);
                self.last_ns = Some((nsid, ns.lba_size, ns.blocks, per));
                Ok((ns.lba_size, ns.blocks, per))
            }
        }
    }

    /// Validates a request; returns (LBA size, blocks per command, commands).
    pub(super) fn plan(&mut self, req: &IoRequest) -> Result<(u32, u64, u64)> {
        let (lba, capacity, per_data_cmd) = self.ns_info(req.nsid)?;
        // The operation first: a Read or Write (nearly every request) then
        // skips comparing its hints.
        if !matches!(req.op, IoOp::Read | IoOp::Write) && !req.hints.is_none() {
            return Err(Error::BadRequest(format!(
                "{} cannot carry FUA, Limited Retry or DSM hints (Read and Write only)",
                req.op.name()
            )));
        }
        if req.op == IoOp::Flush {
            return Ok((lba, 0, 1));
        }
        crate::ns::check_range(req.nsid, capacity, req.slba, req.blocks)?;
        let per_cmd = match req.op {
            IoOp::Read | IoOp::Write => {
                let per = per_data_cmd;
                if per == 0 {
                    return Err(Error::Unsupported(format!(
                        "LBA size {lba} exceeds the transfer limit {}",
                        self.shared.max_transfer
                    )));
                }
                let have = match (&req.data, &req.segments) {
                    (Some(buf), None) => buf.len(),
                    (None, Some(segs)) => check_segments(segs.pieces())?,
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
                per
            }
            IoOp::WriteZeroes => MAX_NLB,
            IoOp::Deallocate => u64::from(u32::MAX),
            IoOp::Flush => 1,
        };
        let commands = if req.blocks <= per_cmd {
            1
        } else {
            req.blocks.div_ceil(per_cmd)
        };
        Ok((lba, per_cmd, commands))
    }

    /// Issues waiting commands (retries first) while the SQ has room.
    pub(super) fn fill_sq(&mut self) -> Result<()> {
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
            self.issue(cid, child, from_retry)?;
        }
    }

    /// Builds and posts `child` under the reserved `cid`, and records it in
    /// flight. A command that cannot be built fails its request (which is
    /// not an error of this call); an error means the SQ entry could not be
    /// written, and the command is still waiting where it came from.
    pub(super) fn issue(&mut self, cid: u16, child: Child, from_retry: bool) -> Result<()> {
        match self.build(cid, child) {
            Ok(sqe) => self.q.post_reserved(cid, sqe)?,
            Err(e) => {
                self.q.unreserve(cid);
                self.take_child_source(from_retry, child);
                if from_retry && let Some(p) = self.parents[child.parent as usize].as_mut() {
                    debug_assert!(
                        p.outstanding > 0,
                        "a parent completed more commands than it issued"
                    );
                    p.outstanding = p.outstanding.saturating_sub(1);
                }
                self.fail_child(child, e);
                return Ok(());
            }
        }
        self.take_child_source(from_retry, child);
        let slot = &mut self.slots[cid as usize];
        slot.child = Some(child);
        // Stamped by the next deadline scan: no clock read per command.
        slot.since = None;
        if !from_retry && let Some(p) = self.parents[child.parent as usize].as_mut() {
            p.outstanding += 1;
        }
        Ok(())
    }

    /// Marks `child` as taken from the retry queue or its parent's cursor.
    pub(super) fn take_child_source(&mut self, from_retry: bool, child: Child) {
        if from_retry {
            self.retry.pop_front();
        } else if let Some(p) = self.parents[child.parent as usize].as_mut() {
            p.issued += 1;
        }
    }

    /// The SQE of one command of a split or retried request.
    pub(super) fn build(&mut self, cid: u16, child: Child) -> Result<Sqe> {
        let p = self.parents[child.parent as usize]
            .as_ref()
            .ok_or_else(|| Error::BadDevice("command of a finished request".into()))?;
        let first = child.index * p.per_cmd;
        let blocks = (p.req.blocks - first).min(p.per_cmd);
        command(
            &self.shared,
            &mut self.slots[cid as usize],
            &mut self.prp_entries,
            &p.req,
            p.lba_size,
            first,
            blocks,
        )
    }

    /// What this queue pair's doorbells and polls did so far (see
    /// [`PathCounters`]).
    pub fn path_counters(&self) -> PathCounters {
        self.q.counters
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

    // Inlined into `poll` and `poll_fixed`, which are then one call (at QD1
    // every I/O pays for a poll's calls). `reap` stays a call of its own:
    // inlined as well, its loop spilled more registers per completion than
    // the call costs per poll (callgrind: +20 instructions per I/O at QD32).
    #[inline(always)]
    pub(super) fn poll_inner(&mut self, out: &mut Vec<IoCompletion>) -> Result<()> {
        if !self.stash.is_empty() {
            out.append(&mut self.stash);
        }
        self.q.ring()?;
        let reaped = self.reap(out);
        // Use the slots freed by this reap, or by an earlier one that
        // stopped at a bad entry, and issue retries: waiting requests must
        // not depend on another completion coming to wake them.
        if !self.pending.is_empty() || !self.retry.is_empty() {
            self.fill_sq()?;
            self.q.ring()?;
        }
        self.polls_since_clock += 1;
        if self.polls_since_clock >= CLOCK_POLLS {
            self.polls_since_clock = 0;
            self.tick(out)?;
        }
        if reaped? > 0 {
            self.idle_polls = 0;
        } else if self.shared.generation() != self.generation {
            self.recover_after_reset(out)?;
        } else if self.q.in_flight() > self.lost_cids {
            self.idle_polls = self.idle_polls.wrapping_add(1);
            if self.idle_polls.is_multiple_of(HEALTH_CHECK_INTERVAL) {
                self.check_health(out)?;
            }
        }
        Ok(())
    }

    /// Reaps every completion posted so far and rings the CQ head doorbell
    /// for every entry consumed, a rejected one included: unacknowledged
    /// bad entries would leave the device believing the CQ full.
    pub(super) fn reap(&mut self, out: &mut Vec<IoCompletion>) -> Result<usize> {
        let mut reaped = 0usize;
        let result = loop {
            match self.q.pop_io() {
                Ok(Some((cid, status))) => {
                    reaped += 1;
                    self.complete(cid, status, out);
                }
                Ok(None) => break Ok(reaped),
                Err(e) => break Err(e),
            }
        };
        let c = &mut self.q.counters;
        c.polls += 1;
        c.cqes += reaped as u64;
        c.reaping_polls += u64::from(reaped > 0);
        if reaped > 0 || result.is_err() {
            self.q.ring_cq()?;
        }
        result
    }

    /// Completes the command `cid` with the CQE status word `word` (phase
    /// in bit 0).
    pub(super) fn complete(&mut self, cid: u16, word: u16, out: &mut Vec<IoCompletion>) {
        let cid = cid as usize;
        // Success (SCT and SC both 0) needs no decoding.
        let success = word & STATUS_CODE_BITS == 0;
        if let Some(slot) = self.slots.get_mut(cid) {
            if success {
                // The fast paths' ends: straight back to the caller.
                // `since` stays: it is read only while a command is in
                // flight, and every submission clears it.
                if let Some(io) = slot.fixed.take() {
                    self.singles -= 1;
                    self.fixed_done.push(FixedCompletion {
                        tag: io.tag,
                        result: Ok(()),
                    });
                    return;
                }
                if let Some(req) = slot.single.take() {
                    self.singles -= 1;
                    out.push(req.into_completion(Ok(())));
                    return;
                }
            } else if slot.fixed.is_some() || slot.single.is_some() {
                if self.fail_single(cid, word, out) {
                    return;
                }
                self.promote(cid);
            }
        }
        let status = Status::from_cqe_status(word);
        let Some(child) = self.slots.get_mut(cid).and_then(|s| s.child.take()) else {
            // The queue had the CID in flight, so this is a command given
            // up on after a timeout, completing after all: the queue has
            // freed its CID, which no longer counts as lost.
            debug_assert!(self.lost_cids > 0, "CID {cid} in flight without a command");
            self.lost_cids = self.lost_cids.saturating_sub(1);
            log::warn!(
                "queue {}: late completion for CID {cid}, given up on before",
                self.qid()
            );
            return;
        };
        self.slots[cid].since = None;
        let Some(p) = self.parents[child.parent as usize].as_mut() else {
            return;
        };
        debug_assert!(
            p.outstanding > 0,
            "a parent completed more commands than it issued"
        );
        p.outstanding = p.outstanding.saturating_sub(1);
        if !status.is_success() {
            if ended_by_reset(&self.shared, self.generation, status) {
                // Sent again as it was; not a try of its own.
                log::debug!(
                    "queue {}: {} ended by a reset's queue deletion; sending it again",
                    self.q.qid(),
                    p.req.describe()
                );
                p.outstanding += 1;
                self.retry.push_back(child);
                return;
            }
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

    /// The single-command request in slot `cid` (either kind) failed with
    /// the CQE status word `word`: unless the status is to be retried,
    /// hands it back with the error and returns true.
    #[cold]
    fn fail_single(&mut self, cid: usize, word: u16, out: &mut Vec<IoCompletion>) -> bool {
        let status = Status::from_cqe_status(word);
        let retry = status.is_retryable() && self.shared.options.retries > 0
            || ended_by_reset(&self.shared, self.generation, status);
        if retry {
            return false;
        }
        let slot = &mut self.slots[cid];
        if let Some(io) = slot.fixed.take() {
            slot.since = None;
            self.singles -= 1;
            let e = Error::Command {
                command: io.describe(),
                status,
            };
            self.fixed_done.push(FixedCompletion {
                tag: io.tag,
                result: Err(e),
            });
            return true;
        }
        if let Some(req) = slot.single.take() {
            slot.since = None;
            self.singles -= 1;
            let e = Error::Command {
                command: req.describe(),
                status,
            };
            out.push(req.into_completion(Err(e)));
            return true;
        }
        false
    }

    /// Records `e` for the child's request and stops issuing its commands.
    pub(super) fn fail_child(&mut self, child: Child, e: Error) {
        self.fail_child_inner(child.parent, e);
        let mut out = Vec::new();
        self.finish_if_done(child.parent, &mut out);
        self.stash.append(&mut out);
    }

    pub(super) fn fail_child_inner(&mut self, parent: u32, e: Error) {
        if let Some(p) = self.parents[parent as usize].as_mut() {
            if p.error.is_none() {
                p.error = Some(e);
            }
            p.issued = p.total;
        }
    }

    pub(super) fn finish_if_done(&mut self, id: u32, out: &mut Vec<IoCompletion>) {
        let done = self.parents[id as usize].as_ref().is_some_and(Parent::done);
        if !done {
            return;
        }
        let Some(mut p) = self.parents[id as usize].take() else {
            return;
        };
        self.free_parents.push(id);
        let result = p.error.map_or(Ok(()), Err);
        if let Some(io) = p.fixed {
            // The registered buffer: kept out of use while the device may
            // still write there.
            if p.lost {
                self.quarantine_fixed(io.buffer);
            }
            self.fixed_done.push(FixedCompletion {
                tag: io.tag,
                result,
            });
            return;
        }
        if p.lost {
            // The device may still write there: the queue pair keeps it.
            if let Some(buf) = p.req.data.take() {
                self.quarantine.push(buf);
            }
            if let Some(segs) = p.req.segments.take() {
                self.quarantine_segments.push(segs);
            }
        }
        out.push(p.req.into_completion(result));
    }
}

/// The Status Code and Status Code Type bits of a CQE status word (bits
/// 1..=11; bit 0 is the phase tag).
const STATUS_CODE_BITS: u16 = 0x0ffe;

/// Checks that `segs` can be one command's data (`nvme_spec::prp`'s rule);
/// returns their total length.
pub(super) fn check_segments(segs: &[(u64, usize)]) -> Result<usize> {
    nvme_spec::prp::check_pieces(segs, PAGE_SIZE).map_err(|e| Error::BadBuffer(e.to_string()))
}

/// The PRP entries for bytes `start..start + len` of the pieces `segs`
/// (checked by [`check_segments`]), into `out`.
fn segment_entries(segs: &[(u64, usize)], start: usize, len: usize, out: &mut Vec<u64>) {
    out.clear();
    nvme_spec::prp::piece_entries(segs, start, len, PAGE_SIZE, |e| out.push(e));
}

/// The SQE of the command carrying `blocks` blocks of `req` from its block
/// `first`, with its data pointer (PRP list pages and DSM ranges go in
/// `slot`'s reused buffers).
#[inline(always)]
fn command(
    shared: &Shared,
    slot: &mut Slot,
    prp_entries: &mut Vec<u64>,
    req: &IoRequest,
    lba_size: u32,
    first: u64,
    blocks: u64,
) -> Result<Sqe> {
    let slba = req.slba + first;
    let range = |e: nvme_spec::RangeError| Error::BadBuffer(e.to_string());
    let sqe = match req.op {
        IoOp::Read | IoOp::Write => {
            let nlb = blocks as u32;
            let (flags, dsm) = (req.hints.flags, req.hints.dsm);
            let mut sqe = if req.op == IoOp::Read {
                nvm::read_hinted(req.nsid, slba, nlb, flags, dsm)
            } else {
                nvm::write_hinted(req.nsid, slba, nlb, flags, dsm)
            }
            .map_err(range)?;
            let start = req.offset + (first * u64::from(lba_size)) as usize;
            let len = blocks as usize * lba_size as usize;
            if let Some(segs) = &req.segments {
                // Pieces of memory: PRP entries across them (SGL mode would
                // need a descriptor list; PRPs always fit, as submit
                // checked).
                segment_entries(segs.pieces(), start, len, prp_entries);
                let (prp1, prp2) =
                    prp::fill_entries(&shared.pool, &mut slot.prp_list, prp_entries)?;
                sqe.set_prps(prp1, prp2);
                return Ok(sqe);
            }
            let buf = req
                .data
                .as_ref()
                .ok_or_else(|| Error::BadBuffer("no data buffer".into()))?;
            set_data(
                shared,
                slot,
                prp_entries,
                &mut sqe,
                buf.iova() + start as u64,
                len,
            )?;
            sqe
        }
        IoOp::Flush => nvm::flush(req.nsid),
        IoOp::WriteZeroes => {
            nvm::write_zeroes(req.nsid, slba, blocks as u32, false).map_err(range)?
        }
        IoOp::Deallocate => {
            if slot.dsm.is_none() {
                slot.dsm = Some(shared.pool.alloc(PAGE_SIZE)?);
            }
            let dsm = slot
                .dsm
                .as_ref()
                .ok_or_else(|| Error::BadBuffer("no DSM buffer".into()))?;
            dsm.write(0, DsmRange::new(slba, blocks as u32).as_bytes())?;
            let mut sqe = nvm::dataset_management(req.nsid, 1, DsmAttributes::AD).map_err(range)?;
            sqe.set_prps(dsm.iova(), 0);
            sqe
        }
    };
    Ok(sqe)
}

/// Points `sqe` at `len` bytes of contiguous device memory at `iova`: one
/// SGL data block, or PRPs (a list in `slot`'s reused page if needed).
#[inline(always)]
pub(super) fn set_data(
    shared: &Shared,
    slot: &mut Slot,
    prp_entries: &mut Vec<u64>,
    sqe: &mut Sqe,
    iova: u64,
    len: usize,
) -> Result<()> {
    if shared.sgl {
        sqe.set_sgl1(SglDescriptor::data_block(iova, len as u32));
    } else {
        let (prp1, prp2) = prp::fill(&shared.pool, &mut slot.prp_list, iova, len, prp_entries)?;
        sqe.set_prps(prp1, prp2);
    }
    Ok(())
}

/// Whether a failed command of a queue created in `generation` was ended
/// by a reset rather than by its own fault, and is to be sent again once
/// the queues exist again (outside the retry budget):
/// - "Command Aborted due to SQ Deletion": a queue pair deletes its SQ
///   only when dropped, so this is a reset deleting the queues before
///   it disables the controller (`Shared::reset_from`);
/// - any error reaped while a reset tears the queue down (or after,
///   before the queue pair noticed): the controller may fail what the
///   deletion cancels with a status of its own choosing (QEMU ends a
///   cancelled Flush or Dataset Management with Write Fault or
///   Internal Error).
///
/// Called for a failed command only, off the fast path.
#[cold]
fn ended_by_reset(shared: &Shared, generation: u64, status: Status) -> bool {
    status.is(
        nvme_spec::StatusCodeType::Generic,
        nvme_spec::status::generic::ABORTED_SQ_DELETION,
    ) || shared.tearing_down(generation)
}

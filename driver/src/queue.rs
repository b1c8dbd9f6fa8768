//! A submission/completion queue pair in DMA memory, polled directly.
//!
//! The SQ tail doorbell is written once per batch ([`QueuePair::ring`]),
//! the CQ head doorbell once per reap. Every completion entry is checked
//! before use: the device is untrusted, so a CID that was not issued or an
//! SQ head past the ring end is an error, never an index.

use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use nvme_spec::{Cqe, Csts, DoorbellKind, Sqe, doorbell_offset, regs};
use zerocopy::{FromBytes, IntoBytes};

use crate::error::{Error, Result};
use crate::hw::mmio::Bar;
use crate::memory::{DmaBuffer, DmaPool};

/// Bytes in a submission queue entry.
pub(crate) const SQE_SIZE: usize = 64;
/// Bytes in a completion queue entry.
pub(crate) const CQE_SIZE: usize = 16;
/// Offset of the status word (phase in bit 0) inside a CQE.
const CQE_STATUS: usize = 14;

/// One SQ and its CQ.
#[derive(Debug)]
pub(crate) struct QueuePair {
    qid: u16,
    entries: u16,
    sq: DmaBuffer,
    cq: DmaBuffer,
    sq_tail: u16,
    /// Tail value last written to the doorbell.
    sq_tail_rung: u16,
    sq_head: u16,
    cq_head: u16,
    phase: bool,
    sq_doorbell: usize,
    cq_doorbell: usize,
    bar: Arc<Bar>,
    /// Per CID: a command is in flight with this id.
    in_flight: Vec<bool>,
    /// CIDs not in flight (a stack: the most recently freed is reused first,
    /// which keeps the per-CID PRP list pages warm).
    free_cids: Vec<u16>,
    /// Per CID: the SQ slot its command was written to.
    sq_slot: Vec<u16>,
}

impl QueuePair {
    /// Allocates the rings for queue `qid` with `entries` slots each.
    pub(crate) fn new(
        qid: u16,
        entries: u16,
        dstrd: u8,
        bar: Arc<Bar>,
        pool: &DmaPool,
    ) -> Result<Self> {
        if entries < 2 {
            return Err(Error::BadBuffer(format!(
                "queue {qid}: {entries} entries (at least 2)"
            )));
        }
        let sq = pool.alloc(entries as usize * SQE_SIZE)?;
        let cq = pool.alloc(entries as usize * CQE_SIZE)?;
        let sq_doorbell = doorbell_offset(qid, DoorbellKind::SqTail, dstrd);
        let cq_doorbell = doorbell_offset(qid, DoorbellKind::CqHead, dstrd);
        if cq_doorbell + 4 > bar.len() {
            return Err(Error::BadDevice(format!(
                "queue {qid}: doorbell at {cq_doorbell:#x} is past BAR0 ({:#x} bytes)",
                bar.len()
            )));
        }
        Ok(QueuePair {
            qid,
            entries,
            sq,
            cq,
            sq_tail: 0,
            sq_tail_rung: 0,
            sq_head: 0,
            cq_head: 0,
            phase: true,
            sq_doorbell,
            cq_doorbell,
            bar,
            in_flight: vec![false; entries as usize],
            // One slot always stays empty (a full ring looks empty), so at
            // most entries - 1 commands are in flight.
            free_cids: (0..entries - 1).rev().collect(),
            sq_slot: vec![0; entries as usize],
        })
    }

    /// Keeps the rings' memory forever (the device may still use it).
    pub(crate) fn leak(&mut self) {
        self.sq.leak();
        self.cq.leak();
    }

    /// Queue id.
    pub(crate) fn qid(&self) -> u16 {
        self.qid
    }

    /// Slots per ring.
    pub(crate) fn entries(&self) -> u16 {
        self.entries
    }

    /// Device address of the SQ ring.
    pub(crate) fn sq_iova(&self) -> u64 {
        self.sq.iova()
    }

    /// Device address of the CQ ring.
    pub(crate) fn cq_iova(&self) -> u64 {
        self.cq.iova()
    }

    fn next(&self, i: u16) -> u16 {
        if i + 1 == self.entries { 0 } else { i + 1 }
    }

    /// Takes a free CID if the SQ has room for one more command.
    pub(crate) fn reserve(&mut self) -> Option<u16> {
        if self.next(self.sq_tail) == self.sq_head {
            return None;
        }
        self.free_cids.pop()
    }

    /// Gives back a CID from [`QueuePair::reserve`] that was not posted.
    pub(crate) fn unreserve(&mut self, cid: u16) {
        self.free_cids.push(cid);
    }

    /// Writes `sqe` with a CID from [`QueuePair::reserve`] into the next SQ
    /// slot. The device sees it after [`QueuePair::ring`].
    pub(crate) fn post_reserved(&mut self, cid: u16, mut sqe: Sqe) -> Result<()> {
        sqe.set_cid(cid);
        if let Err(e) = self
            .sq
            .write(self.sq_tail as usize * SQE_SIZE, sqe.as_bytes())
        {
            self.free_cids.push(cid);
            return Err(e);
        }
        self.in_flight[cid as usize] = true;
        self.sq_slot[cid as usize] = self.sq_tail;
        self.sq_tail = self.next(self.sq_tail);
        Ok(())
    }

    /// Reserves a CID and posts `sqe` with it.
    pub(crate) fn post(&mut self, sqe: Sqe) -> Result<u16> {
        let cid = self.reserve().ok_or(Error::QueueFull { qid: self.qid })?;
        self.post_reserved(cid, sqe)?;
        Ok(cid)
    }

    /// Commands in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.entries as usize - 1 - self.free_cids.len()
    }

    /// Rings the SQ tail doorbell if anything was posted since the last ring.
    pub(crate) fn ring(&mut self) -> Result<()> {
        if self.sq_tail != self.sq_tail_rung {
            // The SQEs must be in memory before the device learns of them.
            fence(Ordering::SeqCst);
            self.bar.write32(self.sq_doorbell, self.sq_tail as u32)?;
            self.sq_tail_rung = self.sq_tail;
        }
        Ok(())
    }

    /// Takes the next completion if the device has posted one. The CQ head
    /// doorbell is not written: call [`QueuePair::ring_cq`] after a reap.
    pub(crate) fn pop(&mut self) -> Result<Option<Cqe>> {
        let slot = self.cq_head as usize * CQE_SIZE;
        let status = self.cq.read_u16(slot + CQE_STATUS)?;
        if (status & 1 == 1) != self.phase {
            return Ok(None);
        }
        // Read the rest of the entry only after seeing the phase flip.
        fence(Ordering::Acquire);
        let mut raw = [0u8; CQE_SIZE];
        self.cq.read(slot, &mut raw)?;
        let cqe = Cqe::read_from_bytes(&raw)
            .map_err(|_| Error::BadDevice("completion entry of the wrong size".into()))?;
        self.cq_head = self.next(self.cq_head);
        if self.cq_head == 0 {
            self.phase = !self.phase;
        }
        let cid = cqe.cid();
        if cid >= self.entries || !self.in_flight[cid as usize] {
            return Err(Error::BadDevice(format!(
                "queue {}: completion for CID {cid}, which is not in flight",
                self.qid
            )));
        }
        if cqe.sq_head() >= self.entries {
            return Err(Error::BadDevice(format!(
                "queue {}: completion reports SQ head {} of a {}-entry queue",
                self.qid,
                cqe.sq_head(),
                self.entries
            )));
        }
        self.in_flight[cid as usize] = false;
        self.free_cids.push(cid);
        self.sq_head = self.advance_head(cqe.sq_head(), self.sq_slot[cid as usize]);
        Ok(Some(cqe))
    }

    /// The SQ head after the completion of the command written to `slot`
    /// that reports `reported`. The device has consumed at least that
    /// slot, and nothing past the tail last rung; between those bounds the
    /// head only moves forward. A report outside them is not believed: a
    /// head past the tail would make the SQ look full with nothing in
    /// flight, and no completion would come to correct it.
    fn advance_head(&self, reported: u16, slot: u16) -> u16 {
        let entries = u32::from(self.entries);
        let ahead = |to: u16| (u32::from(to) + entries - u32::from(self.sq_head)) % entries;
        let limit = ahead(self.sq_tail_rung);
        [self.next(slot), reported]
            .into_iter()
            .filter(|&h| ahead(h) <= limit)
            .max_by_key(|&h| ahead(h))
            .unwrap_or(self.sq_head)
    }

    /// Tells the device how far the CQ has been consumed.
    pub(crate) fn ring_cq(&mut self) -> Result<()> {
        self.bar.write32(self.cq_doorbell, self.cq_head as u32)
    }

    /// Posts `sqe`, rings, and polls until its completion arrives or
    /// `timeout` passes. Only for queues with nothing else in flight.
    pub(crate) fn execute(&mut self, sqe: Sqe, timeout: Duration) -> Result<Cqe> {
        let cid = self.post(sqe)?;
        self.ring()?;
        let start = Instant::now();
        let mut spins: u32 = 0;
        loop {
            if let Some(cqe) = self.pop()? {
                self.ring_cq()?;
                if cqe.cid() != cid {
                    return Err(Error::BadDevice(format!(
                        "queue {}: completion for CID {} while waiting for {cid}",
                        self.qid,
                        cqe.cid()
                    )));
                }
                return Ok(cqe);
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                let csts = Csts(self.bar.read32(regs::offset::CSTS)?);
                if csts.fatal() || csts.is_all_ones() {
                    return Err(Error::ControllerFatal {
                        step: format!("waiting on queue {}", self.qid),
                        csts,
                    });
                }
                if start.elapsed() >= timeout {
                    // The CID stays marked in flight: the device may still
                    // complete it, and its buffers must not be reused.
                    return Err(Error::CommandTimeout {
                        command: format!("opcode {:#04x} on queue {}", sqe.opcode, self.qid),
                        waited_ms: timeout.as_millis() as u64,
                    });
                }
            }
            std::hint::spin_loop();
        }
    }
}

//! A submission/completion queue pair in DMA memory, polled directly.
//!
//! The SQ tail doorbell is written once per batch ([`QueuePair::ring`]),
//! the CQ head doorbell once per reap. Every completion entry is checked
//! before use: the device is untrusted, so a CID that was not issued or an
//! SQ head past the ring end is an error, never an index.

use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};

use nvme_spec::{Cqe, DoorbellKind, Sqe, doorbell_offset};
use zerocopy::FromBytes;

use crate::device::Bar;
use crate::error::{Error, Result};
use crate::hw::dma::{DmaRing, RingEntry};
use crate::memory::{DmaBuffer, DmaPool};
use crate::quiesce::Quiesce;

/// Bytes in a submission queue entry.
pub(crate) const SQE_SIZE: usize = 64;
/// Bytes in a completion queue entry.
pub(crate) const CQE_SIZE: usize = 16;
/// Offset of the status word (phase in bit 0) inside a CQE.
const CQE_STATUS: usize = 14;
/// Offset of the command identifier inside a CQE.
const CQE_CID: usize = 12;

/// The shadow doorbell and EventIdx pages (Doorbell Buffer Config): the
/// host writes new tails and heads to the first, the controller says in
/// the second up to where it has looked; an MMIO doorbell write is needed
/// only when the new value passes that point (the event-index rule).
#[derive(Debug)]
pub(crate) struct ShadowDoorbells {
    pub(crate) shadow: DmaBuffer,
    pub(crate) eventidx: DmaBuffer,
}

/// Whether moving a doorbell from `old` to `new` passes `event_idx`.
pub(crate) fn need_event(event_idx: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event_idx).wrapping_sub(1) < new.wrapping_sub(old)
}

/// What a queue pair's doorbells and polls did since it was created:
/// counters for judging the I/O path's batching (a few additions per
/// doorbell and per poll, none per command). Divide by `cqes` for figures
/// per I/O.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathCounters {
    /// Polls of the CQ (by [`IoQPair::poll`], [`IoQPair::poll_fixed`] or the
    /// floor loop's poll loop).
    ///
    /// [`IoQPair::poll`]: crate::IoQPair::poll
    /// [`IoQPair::poll_fixed`]: crate::IoQPair::poll_fixed
    pub polls: u64,
    /// Polls that found at least one completion.
    pub reaping_polls: u64,
    /// Completion entries consumed.
    pub cqes: u64,
    /// SQ entries posted and made known to the device (by a tail doorbell
    /// update).
    pub sqes: u64,
    /// SQ tail doorbell updates (each covering every entry posted since
    /// the last): through the shadow page when the controller has shadow
    /// doorbells, otherwise MMIO.
    pub sq_rings: u64,
    /// Of those, the ones written to the MMIO doorbell (all of them without
    /// shadow doorbells; with them, those the EventIdx asked for).
    pub sq_mmio: u64,
    /// CQ head doorbell updates.
    pub cq_rings: u64,
    /// Of those, the ones written to the MMIO doorbell.
    pub cq_mmio: u64,
}

/// One SQ and its CQ.
#[derive(Debug)]
pub(crate) struct QueuePair {
    qid: u16,
    entries: u16,
    sq: DmaBuffer,
    cq: DmaBuffer,
    /// The same memory as rings of entries, checked once (see [`DmaRing`]).
    sq_ring: DmaRing<SQE_SIZE>,
    cq_ring: DmaRing<CQE_SIZE>,
    sq_tail: u16,
    /// Tail value last written to the doorbell.
    sq_tail_rung: u16,
    cq_head: u16,
    /// Head value last written to the CQ doorbell.
    cq_head_rung: u16,
    phase: bool,
    sq_doorbell: usize,
    cq_doorbell: usize,
    bar: Arc<Bar>,
    /// Per CID: a command is in flight with this id.
    in_flight: Vec<bool>,
    /// CIDs not in flight (a stack: the most recently freed is reused first,
    /// which keeps the per-CID PRP list pages warm). There are `entries - 1`
    /// CIDs, and that alone keeps the SQ from overflowing: every entry the
    /// device has not fetched yet belongs to a command in flight (the device
    /// fetches in order and completes only what it fetched), so at most
    /// `entries - 1` slots are ever taken. The SQ head a completion reports
    /// is therefore not needed, and not used (as Linux's driver does).
    free_cids: Vec<u16>,
    /// Shadow doorbells, when the controller has them enabled.
    shadow: Option<Arc<ShadowDoorbells>>,
    /// The MSI-X vector of the CQ, for a queue in interrupt mode.
    irq_vector: Option<u16>,
    /// For an I/O queue: the reset gate and the controller generation the
    /// queue was created in (doorbells are written only through it).
    gate: Option<(Arc<Quiesce>, u64)>,
    /// Doorbell and poll counters.
    pub(crate) counters: PathCounters,
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
        let sq_bytes = entries as usize * SQE_SIZE;
        // With fault injection an I/O SQ ring has its own IOMMU mapping,
        // which `revoke_sq` can take away without touching anything else.
        #[cfg(feature = "fault-injection")]
        let sq = if qid == 0 {
            pool.alloc(sq_bytes)?
        } else {
            pool.alloc_dedicated(sq_bytes)?
        };
        #[cfg(not(feature = "fault-injection"))]
        let sq = pool.alloc(sq_bytes)?;
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
            sq_ring: sq.ring(entries.into())?,
            cq_ring: cq.ring(entries.into())?,
            sq,
            cq,
            sq_tail: 0,
            sq_tail_rung: 0,
            cq_head: 0,
            cq_head_rung: 0,
            phase: true,
            sq_doorbell,
            cq_doorbell,
            bar,
            in_flight: vec![false; entries as usize],
            // One slot always stays empty (a full ring looks empty), so at
            // most entries - 1 commands are in flight.
            free_cids: (0..entries - 1).rev().collect(),
            shadow: None,
            irq_vector: None,
            gate: None,
            counters: PathCounters::default(),
        })
    }

    /// The MSI-X vector the CQ signals (None: polled only).
    pub(crate) fn irq_vector(&self) -> Option<u16> {
        self.irq_vector
    }

    /// Sets the vector the CQ will be created with.
    pub(crate) fn set_irq_vector(&mut self, vector: Option<u16>) {
        self.irq_vector = vector;
    }

    /// Writes doorbells only through `gate`, as a queue created in
    /// `generation`: none while a reset runs or after it.
    pub(crate) fn set_gate(&mut self, gate: Arc<Quiesce>, generation: u64) {
        self.gate = Some((gate, generation));
    }

    /// Uses shadow doorbells from now on (None: MMIO doorbells only). The
    /// queue's shadow slots take the current tail and head.
    ///
    /// An I/O queue's EventIdx slots take them too. This runs before the
    /// controller creates the queue, and the slots may still hold what the
    /// controller wrote for an earlier queue with the same id (a queue pair
    /// dropped and taken again): left there, an EventIdx ahead of the new
    /// queue's tail says the controller is still looking, so the first
    /// doorbells would go to the shadow page only, where nobody reads them
    /// (QEMU re-reads the shadow tail only while it works through the SQ,
    /// which an MMIO doorbell starts). The admin queue's slots are fresh:
    /// both pages are zeroed before Doorbell Buffer Config is sent.
    pub(crate) fn set_shadow(&mut self, shadow: Option<Arc<ShadowDoorbells>>) -> Result<()> {
        if let Some(s) = &shadow {
            let (sq, cq) = self.shadow_offsets();
            s.shadow.write_u32(sq, u32::from(self.sq_tail_rung))?;
            s.shadow.write_u32(cq, u32::from(self.cq_head))?;
            if self.qid != 0 {
                s.eventidx.write_u32(sq, u32::from(self.sq_tail_rung))?;
                s.eventidx.write_u32(cq, u32::from(self.cq_head))?;
            }
        }
        self.shadow = shadow;
        Ok(())
    }

    /// Offsets of this queue's SQ tail and CQ head in the shadow pages: the
    /// doorbell offsets relative to the first doorbell.
    fn shadow_offsets(&self) -> (usize, usize) {
        let base = nvme_spec::regs::offset::DOORBELL_BASE;
        (self.sq_doorbell - base, self.cq_doorbell - base)
    }

    /// Writes a doorbell: through the shadow page (and MMIO only when the
    /// event index says the controller is not looking), or MMIO. None: not
    /// written (the gate is closed); otherwise whether MMIO was written.
    #[inline(always)]
    fn write_doorbell(
        &self,
        mmio: usize,
        shadow_at: usize,
        new: u16,
        old: u16,
    ) -> Result<Option<bool>> {
        let _pass = match &self.gate {
            Some((gate, generation)) => match gate.enter(*generation) {
                Some(pass) => Some(pass),
                None => return Ok(None),
            },
            None => None,
        };
        if let Some(s) = &self.shadow {
            s.shadow.write_u32(shadow_at, u32::from(new))?;
            // The shadow value must be visible before the EventIdx is read.
            fence(Ordering::SeqCst);
            let event_idx = s.eventidx.read_u32(shadow_at)? as u16;
            if !need_event(event_idx, new, old) {
                return Ok(Some(false));
            }
        }
        self.bar.write32(mmio, u32::from(new))?;
        Ok(Some(true))
    }

    /// Forgets every command and starts the rings over (empty, phase 1):
    /// only while the controller has no such queue (after a reset).
    pub(crate) fn reset_rings(&mut self) -> Result<()> {
        // An SQ ring whose mapping fault injection took away is mapped
        // again (same IOVA) before the queue is created again.
        #[cfg(feature = "fault-injection")]
        self.sq.restore()?;
        self.cq.fill(0, self.entries as usize * CQE_SIZE, 0)?;
        self.sq_tail = 0;
        self.sq_tail_rung = 0;
        self.cq_head = 0;
        self.cq_head_rung = 0;
        self.phase = true;
        self.in_flight.iter_mut().for_each(|f| *f = false);
        self.free_cids = (0..self.entries - 1).rev().collect();
        self.shadow = None;
        Ok(())
    }

    /// Fault injection: removes the IOMMU mapping of the SQ ring (an I/O
    /// queue's, which has one of its own), so the controller's next fetch
    /// from it fails. [`QueuePair::reset_rings`] maps it again.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn revoke_sq(&self) -> Result<()> {
        self.sq.revoke()
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

    #[inline]
    fn next(&self, i: u16) -> u16 {
        if i + 1 == self.entries { 0 } else { i + 1 }
    }

    /// Takes a free CID (the SQ has room for its command, see `free_cids`).
    #[inline]
    pub(crate) fn reserve(&mut self) -> Option<u16> {
        self.free_cids.pop()
    }

    /// Gives back a CID from [`QueuePair::reserve`] that was not posted.
    pub(crate) fn unreserve(&mut self, cid: u16) {
        self.free_cids.push(cid);
    }

    /// Writes `sqe` with a CID from [`QueuePair::reserve`] into the next SQ
    /// slot. The device sees it after [`QueuePair::ring`].
    #[inline(always)]
    pub(crate) fn post_reserved(&mut self, cid: u16, mut sqe: Sqe) -> Result<()> {
        sqe.set_cid(cid);
        let bytes: &[u8; SQE_SIZE] = zerocopy::transmute_ref!(&sqe);
        if let Err(e) = self.sq_ring.write_entry(self.sq_tail, bytes) {
            self.free_cids.push(cid);
            return Err(e);
        }
        self.in_flight[cid as usize] = true;
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
    #[inline]
    pub(crate) fn in_flight(&self) -> usize {
        self.entries as usize - 1 - self.free_cids.len()
    }

    /// Rings the SQ tail doorbell if anything was posted since the last ring.
    #[inline]
    pub(crate) fn ring(&mut self) -> Result<()> {
        if self.sq_tail != self.sq_tail_rung {
            // The SQEs must be in memory before the device learns of them.
            fence(Ordering::SeqCst);
            let (shadow_at, _) = self.shadow_offsets();
            let (new, old) = (self.sq_tail, self.sq_tail_rung);
            if let Some(mmio) = self.write_doorbell(self.sq_doorbell, shadow_at, new, old)? {
                let posted = if new >= old {
                    new - old
                } else {
                    new + self.entries - old
                };
                self.counters.sqes += u64::from(posted);
                self.counters.sq_rings += 1;
                self.counters.sq_mmio += u64::from(mmio);
                self.sq_tail_rung = new;
            }
        }
        Ok(())
    }

    /// If the device has posted the entry at the CQ head (its phase
    /// flipped): the entry (its index checked once, for the reads of the
    /// rest of it) and its index in the CQ, with the head moved past it
    /// and an acquire fence so the rest of it is read after the phase.
    /// Also the entry's status word (phase in bit 0).
    #[inline(always)]
    fn take_head(&mut self) -> Result<Option<(RingEntry<'_, CQE_SIZE>, u16, u16)>> {
        let slot = self.cq_head;
        let entry = self.cq_ring.at(slot)?;
        let status = entry.read_u16::<CQE_STATUS>();
        if (status & 1 == 1) != self.phase {
            return Ok(None);
        }
        // Read the rest of the entry only after seeing the phase flip.
        fence(Ordering::Acquire);
        self.cq_head = if slot + 1 == self.entries {
            0
        } else {
            slot + 1
        };
        if self.cq_head == 0 {
            self.phase = !self.phase;
        }
        Ok(Some((entry, slot, status)))
    }

    /// Takes the next completion if the device has posted one. The CQ head
    /// doorbell is not written: call [`QueuePair::ring_cq`] after a reap.
    pub(crate) fn pop(&mut self) -> Result<Option<Cqe>> {
        let Some((_, slot, _)) = self.take_head()? else {
            return Ok(None);
        };
        let raw = self.cq_ring.read_entry(slot)?;
        let cqe = Cqe::read_from_bytes(&raw)
            .map_err(|_| Error::BadDevice("completion entry of the wrong size".into()))?;
        self.check_and_retire(cqe.cid(), cqe.sq_head())?;
        Ok(Some(cqe))
    }

    /// [`QueuePair::pop`] for an I/O queue, whose completions carry nothing
    /// in DW0/DW1 the driver needs: reads only the second half of the
    /// entry and returns the CID and the status word (phase in bit 0),
    /// with the same checks.
    #[inline(always)]
    pub(crate) fn pop_io(&mut self) -> Result<Option<(u16, u16)>> {
        let Some((entry, _, status)) = self.take_head()? else {
            return Ok(None);
        };
        // DW2 (SQ head, SQ id) and DW3 (CID, status).
        let high = entry.read_u64::<8>();
        let (sq_head, cid) = (high as u16, (high >> 32) as u16);
        self.check_and_retire(cid, sq_head)?;
        Ok(Some((cid, status)))
    }

    /// Checks a completion's CID and SQ head (the device is untrusted; an
    /// SQ head outside the ring marks a corrupt entry, though the value is
    /// not needed, see `free_cids`) and frees the CID.
    #[inline(always)]
    fn check_and_retire(&mut self, cid: u16, sq_head: u16) -> Result<()> {
        if sq_head >= self.entries {
            return Err(head_out_of_range(self.qid, sq_head, self.entries));
        }
        match self.in_flight.get_mut(cid as usize) {
            Some(f) if *f => *f = false,
            _ => return Err(cid_not_in_flight(self.qid, cid)),
        }
        self.free_cids.push(cid);
        Ok(())
    }

    /// Writes `sqe` (its CID set by the caller) to the next SQ slot with no
    /// CID bookkeeping: for the floor loop, which owns every CID while it
    /// runs and never has more than `entries - 1` commands in flight (so
    /// the ring cannot overflow: a command completes only after the device
    /// has fetched it and every entry before it).
    #[inline]
    pub(crate) fn push_untracked(&mut self, sqe: &Sqe) -> Result<()> {
        let bytes: &[u8; SQE_SIZE] = zerocopy::transmute_ref!(sqe);
        self.sq_ring.write_entry(self.sq_tail, bytes)?;
        self.sq_tail = self.next(self.sq_tail);
        Ok(())
    }

    /// The next completion's CID and status word (phase in bit 0), if the
    /// device has posted one, with no CID bookkeeping (see
    /// [`QueuePair::push_untracked`]); the caller checks the CID.
    #[inline]
    pub(crate) fn pop_untracked(&mut self) -> Result<Option<(u16, u16)>> {
        let Some((entry, _, status)) = self.take_head()? else {
            return Ok(None);
        };
        let cid = entry.read_u16::<CQE_CID>();
        Ok(Some((cid, status)))
    }

    /// Tells the device how far the CQ has been consumed.
    #[inline]
    pub(crate) fn ring_cq(&mut self) -> Result<()> {
        let (_, shadow_at) = self.shadow_offsets();
        let old = self.cq_head_rung;
        if let Some(mmio) = self.write_doorbell(self.cq_doorbell, shadow_at, self.cq_head, old)? {
            self.counters.cq_rings += 1;
            self.counters.cq_mmio += u64::from(mmio);
            self.cq_head_rung = self.cq_head;
        }
        Ok(())
    }

    /// Reads a controller register (for status checks while waiting).
    pub(crate) fn read_register(&self, offset: usize) -> Result<u32> {
        self.bar.read32(offset)
    }
}

/// A completion's CID that is not in flight (the device is untrusted).
#[cold]
#[inline(never)]
fn cid_not_in_flight(qid: u16, cid: u16) -> Error {
    Error::BadDevice(format!(
        "queue {qid}: completion for CID {cid}, which is not in flight"
    ))
}

/// A completion's SQ head outside the queue.
#[cold]
#[inline(never)]
fn head_out_of_range(qid: u16, head: u16, entries: u16) -> Error {
    Error::BadDevice(format!(
        "queue {qid}: completion reports SQ head {head} of a {entries}-entry queue"
    ))
}

#[cfg(test)]
mod shadow_tests {
    use super::need_event;

    #[test]
    fn event_index_rule() {
        // The controller looked up to 5: moving 3 -> 8 passes it, 6 -> 8 does not.
        assert!(need_event(5, 8, 3));
        assert!(!need_event(5, 8, 6));
        assert!(need_event(7, 8, 7), "exactly the next entry");
        assert!(!need_event(8, 8, 7), "the controller is already past it");
        // Across the u16 wrap.
        assert!(need_event(0xfffe, 2, 0xfff0));
        // Writing entry 2 when the controller waits for entry 2.
        assert!(need_event(2, 3, 2));
    }
}

#[cfg(test)]
mod gate_tests {
    use parking_lot::Mutex;
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::Duration;

    use nvme_spec::{DoorbellKind, Sqe, doorbell_offset};

    use super::{QueuePair, ShadowDoorbells};
    use crate::device::{Bar, EmulatedBar};
    use crate::hw::dma::HostMapper;
    use crate::memory::DmaPool;
    use crate::quiesce::Quiesce;

    const QID: u16 = 1;

    /// Registers that read back what was last written (0 before).
    #[derive(Debug, Default)]
    struct Registers(Mutex<HashMap<usize, u64>>);

    impl EmulatedBar for Registers {
        fn size(&self) -> usize {
            0x2000
        }
        fn read32(&self, offset: usize) -> u32 {
            self.read64(offset) as u32
        }
        fn read64(&self, offset: usize) -> u64 {
            *self.0.lock().get(&offset).unwrap_or(&0)
        }
        fn write32(&self, offset: usize, value: u32) {
            self.write64(offset, u64::from(value));
        }
        fn write64(&self, offset: usize, value: u64) {
            self.0.lock().insert(offset, value);
        }
    }

    fn queue(gate: &Arc<Quiesce>) -> (QueuePair, Arc<Bar>, DmaPool) {
        let bar = Arc::new(Bar::emulated(Arc::new(Registers::default())).expect("bar"));
        let pool = DmaPool::new(Arc::new(HostMapper::default()), false);
        let mut q = QueuePair::new(QID, 8, 0, bar.clone(), &pool).expect("queue");
        q.set_gate(gate.clone(), gate.generation());
        (q, bar, pool)
    }

    fn sq_doorbell(bar: &Bar) -> u32 {
        bar.read32(doorbell_offset(QID, DoorbellKind::SqTail, 0))
            .expect("read")
    }
    #[test]
    fn no_doorbell_while_a_reset_runs_and_the_ring_happens_after() {
        let gate = Arc::new(Quiesce::default());
        let (mut q, bar, _pool) = queue(&gate);
        q.post(Sqe::default()).expect("post");
        let (closed, drained) = gate.close(Duration::from_secs(1));
        assert!(drained);
        q.ring().expect("ring");
        assert_eq!(sq_doorbell(&bar), 0, "rung while the gate was closed");
        drop(closed);
        // The reset failed (no new generation): the queue still exists and
        // the held-back doorbell is written at the next ring.
        q.ring().expect("ring");
        assert_eq!(sq_doorbell(&bar), 1);
    }

    #[test]
    fn a_queue_of_an_earlier_generation_writes_no_doorbell_nor_shadow_slot() {
        let gate = Arc::new(Quiesce::default());
        let (mut q, bar, pool) = queue(&gate);
        let dbbuf = Arc::new(ShadowDoorbells {
            shadow: pool.alloc(4096).expect("shadow"),
            eventidx: pool.alloc(4096).expect("eventidx"),
        });
        q.set_shadow(Some(dbbuf.clone())).expect("shadow");
        gate.bump();
        q.post(Sqe::default()).expect("post");
        q.ring().expect("ring");
        // The SQ tail slot of queue 1 is at offset 8 of the shadow page.
        assert_eq!(dbbuf.shadow.read_u32(8).expect("read"), 0);
        assert_eq!(sq_doorbell(&bar), 0);
        // Created again in the new generation: rings as usual.
        q.reset_rings().expect("reset");
        q.set_gate(gate.clone(), gate.generation());
        q.set_shadow(Some(dbbuf.clone())).expect("shadow");
        q.post(Sqe::default()).expect("post");
        q.ring().expect("ring");
        assert_eq!(dbbuf.shadow.read_u32(8).expect("read"), 1);
        // The EventIdx page is zero: the controller waits for entry 0, so
        // the MMIO doorbell is written too.
        assert_eq!(sq_doorbell(&bar), 1);
    }
}

//! The mock's state: registers, queues, disks, faults, and the core of
//! serving them (fetching commands, completing them, doorbells).

use super::*;

#[derive(Debug, Clone, Copy)]
pub(super) enum Action {
    Fail(Status),
    Hold,
    Delay(u32),
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Rule {
    pub(super) when: Match,
    pub(super) action: Action,
    pub(super) remaining: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hold {
    Ready,
    Forever,
    Passes(u32),
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Cmd {
    pub(super) sqe: Sqe,
    pub(super) seq: u64,
    pub(super) fail: Option<Status>,
    pub(super) hold: Hold,
}

#[derive(Debug)]
pub(super) struct Sq {
    pub(super) base: u64,
    pub(super) entries: u16,
    pub(super) cqid: u16,
    pub(super) head: u16,
    /// The tail last written to the doorbell, to see an overrun: a new
    /// tail that puts more than `entries - 1` entries past the head has
    /// written over entries not fetched yet.
    pub(super) tail: u16,
    pub(super) pending: Vec<Cmd>,
}

#[derive(Debug)]
pub(super) struct Cq {
    pub(super) base: u64,
    pub(super) entries: u16,
    pub(super) tail: u16,
    pub(super) phase: bool,
    /// MSI-X vector, when created with interrupts enabled.
    pub(super) vector: Option<u16>,
    /// Completions waiting for a free slot, oldest first.
    pub(super) backlog: VecDeque<Cqe>,
}

#[derive(Debug)]
pub(super) struct Disk {
    pub(super) lba_size: u32,
    pub(super) blocks: u64,
    pub(super) data: Vec<u8>,
}

/// The admin queue, as read from AQA/ASQ/ACQ when CC.EN was set.
#[derive(Debug)]
pub(super) struct AdminState {
    pub(super) asq: u64,
    pub(super) acq: u64,
    pub(super) sq_entries: u16,
    pub(super) cq_entries: u16,
    pub(super) sq_head: u16,
    pub(super) cq_tail: u16,
    /// Phase of the next admin completion.
    pub(super) phase: bool,
}

/// The controller registers (BAR0) and PCI config space.
#[derive(Debug)]
pub(super) struct Regs {
    pub(super) cap: u64,
    pub(super) vs: u32,
    pub(super) intms: u32,
    pub(super) cc: u32,
    pub(super) csts: u32,
    pub(super) aqa: u32,
    pub(super) asq: u64,
    pub(super) acq: u64,
    /// Doorbells by index (2 * qid, + 1 for a CQ head).
    pub(super) doorbells: Vec<u32>,
    pub(super) pci_command: u16,
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) dma: HostMemory,
    pub(super) regs: Regs,
    /// CSTS.RDY is to become `.0` after `.1` more CSTS reads.
    pub(super) rdy_pending: Option<(bool, u32)>,
    pub(super) ready_delay: u32,
    /// Surprise removal: reads are all-ones, writes lost.
    pub(super) gone: bool,
    /// Shadow doorbell and EventIdx pages (Doorbell Buffer Config).
    pub(super) dbbuf: Option<(u64, u64)>,
    pub(super) shadow_supported: bool,
    /// CIDs of outstanding Asynchronous Event Requests.
    pub(super) aers: Vec<u16>,
    pub(super) irqs: Vec<Arc<EventFd>>,
    /// The eventfd the driver listens on for removal requests.
    pub(super) removal_request: Option<Arc<EventFd>>,
    /// The driver released the device after a removal request.
    pub(super) released: bool,
    pub(super) msix_vectors: u32,
    pub(super) oncs: nvme_spec::Oncs,
    pub(super) max_entries: u32,
    pub(super) io_queues: usize,
    pub(super) max_transfer: usize,
    pub(super) mdts: u8,
    pub(super) sgl: bool,
    pub(super) disks: BTreeMap<u32, Disk>,
    /// The admin queue, while enabled.
    pub(super) admin: Option<AdminState>,
    pub(super) sqs: BTreeMap<u16, Sq>,
    pub(super) cqs: BTreeMap<u16, Cq>,
    pub(super) rules: Vec<Rule>,
    pub(super) order: Order,
    pub(super) rng: u64,
    pub(super) abort_policy: AbortPolicy,
    pub(super) auto: bool,
    pub(super) seq: u64,
    pub(super) stats: MockStats,
    pub(super) violations: Vec<String>,
    pub(super) commands: Vec<CommandRecord>,
    pub(super) deallocated: Vec<(u32, u64, u64)>,
    /// How long each admin command takes ([`MockController::set_admin_latency`]).
    pub(super) admin_latency: Duration,
}

/// A status with DNR set: the mock's answer to a command it rejects.
pub(super) fn reject(sct: StatusCodeType, sc: u8) -> Status {
    Status {
        sct: sct.raw(),
        sc,
        crd: 0,
        more: false,
        dnr: true,
    }
}

pub(super) fn next(i: u16, entries: u16) -> u16 {
    if i + 1 >= entries { 0 } else { i + 1 }
}

pub(super) fn block_range(sqe: &Sqe) -> (u64, u64) {
    let slba = u64::from(sqe.cdw10.get()) | u64::from(sqe.cdw11.get()) << 32;
    (slba, u64::from(sqe.cdw12.get() & 0xffff) + 1)
}

/// The FUA / Limited Retry bits and the DSM hint byte a block command
/// carries (none for other commands).
pub(super) fn hints_of(sqe: &Sqe) -> (nvme_spec::RwFlags, u8) {
    if sqe.opcode == NvmOpcode::Read as u8 || sqe.opcode == NvmOpcode::Write as u8 {
        nvme_spec::io::rw_hints_of(sqe)
    } else if is_block_command(sqe.opcode) {
        (nvme_spec::io::rw_hints_of(sqe).0, 0)
    } else {
        (nvme_spec::RwFlags::empty(), 0)
    }
}

pub(super) fn is_block_command(opcode: u8) -> bool {
    opcode == NvmOpcode::Read as u8
        || opcode == NvmOpcode::Write as u8
        || opcode == NvmOpcode::WriteZeroes as u8
}

impl State {
    pub(super) fn violation(&mut self, what: String) {
        log::warn!("mock controller: {what}");
        self.violations.push(what);
    }

    pub(super) fn random(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(super) fn matches(when: Match, sqe: &Sqe, seq: u64) -> bool {
        match when {
            Match::Any => true,
            Match::Opcode(op) => sqe.opcode == op as u8,
            Match::Nth(n) => seq == n,
            Match::Lba(lba) => {
                let (slba, blocks) = block_range(sqe);
                is_block_command(sqe.opcode) && slba <= lba && lba - slba < blocks
            }
        }
    }

    /// The fault for a command just fetched: the first rule that matches.
    pub(super) fn fault_for(&mut self, sqe: &Sqe, seq: u64) -> (Option<Status>, Hold) {
        let Some(rule) = self
            .rules
            .iter_mut()
            .find(|r| r.remaining > 0 && Self::matches(r.when, sqe, seq))
        else {
            return (None, Hold::Ready);
        };
        rule.remaining -= 1;
        let action = rule.action;
        self.rules.retain(|r| r.remaining > 0);
        match action {
            Action::Fail(status) => (Some(status), Hold::Ready),
            Action::Hold => (None, Hold::Forever),
            Action::Delay(0) => (None, Hold::Ready),
            Action::Delay(n) => (None, Hold::Passes(n)),
        }
    }

    // ----- I/O queues -------------------------------------------------

    /// Fetches the SQEs of `qid` up to its tail doorbell.
    pub(super) fn fetch(&mut self, qid: u16) -> Result<usize> {
        if !self.serving() || !self.sqs.contains_key(&qid) {
            return Ok(0);
        }
        let tail = self.doorbell_value(qid, false);
        if self.dbbuf.is_some() {
            // The shadow tail may have moved with no MMIO write to check.
            self.check_sq_overrun(qid, u64::from(tail));
        }
        let Some(sq) = self.sqs.get_mut(&qid) else {
            return Ok(0);
        };
        if tail >= u32::from(sq.entries) {
            let entries = sq.entries;
            self.violation(format!(
                "SQ {qid}: tail doorbell {tail} past its {entries} entries"
            ));
            return Ok(0);
        }
        let mut raw = Vec::new();
        let mut bad = None;
        while sq.head != tail as u16 {
            let mut bytes = [0u8; 64];
            if let Err(e) = self
                .dma
                .read(sq.base + u64::from(sq.head) * SQE_BYTES, &mut bytes)
            {
                bad = Some(format!("SQ {qid}: fetching entry {}: {e}", sq.head));
                break;
            }
            sq.head = next(sq.head, sq.entries);
            raw.push(bytes);
        }
        if let Some(what) = bad {
            // As QEMU does (`nvme_process_sq`): a failed SQ fetch is fatal.
            self.violation(what);
            self.regs.csts |= CSTS_CFS;
        }
        self.write_event_idx(qid, false, tail);
        let fetched = raw.len();
        for bytes in raw {
            let Ok(sqe) = Sqe::read_from_bytes(&bytes) else {
                continue;
            };
            let seq = self.seq;
            self.seq += 1;
            self.stats.fetched += 1;
            let (fail, hold) = self.fault_for(&sqe, seq);
            let duplicate = self
                .sqs
                .get(&qid)
                .is_some_and(|sq| sq.pending.iter().any(|c| c.sqe.cid() == sqe.cid()));
            if duplicate {
                self.violation(format!(
                    "SQ {qid}: CID {} submitted while a command with it is in flight",
                    sqe.cid()
                ));
            }
            if let Some(sq) = self.sqs.get_mut(&qid) {
                sq.pending.push(Cmd {
                    sqe,
                    seq,
                    fail,
                    hold,
                });
            }
        }
        Ok(fetched)
    }

    /// Counts down delays (one processing pass).
    pub(super) fn tick(&mut self) {
        for sq in self.sqs.values_mut() {
            for c in &mut sq.pending {
                if let Hold::Passes(n) = c.hold {
                    c.hold = if n <= 1 {
                        Hold::Ready
                    } else {
                        Hold::Passes(n - 1)
                    };
                }
            }
        }
    }

    /// Completes up to `*budget` ready commands of `qid`, in the chosen
    /// order; returns how many.
    pub(super) fn complete_ready(&mut self, qid: u16, budget: &mut usize) -> Result<usize> {
        let Some(sq) = self.sqs.get(&qid) else {
            return Ok(0);
        };
        let mut ready: Vec<u64> = sq
            .pending
            .iter()
            .filter(|c| c.hold == Hold::Ready)
            .map(|c| c.seq)
            .collect();
        match self.order {
            Order::Fifo => {}
            Order::Lifo => ready.reverse(),
            Order::Random(seed) => {
                if self.rng == 0 {
                    self.rng = seed | 1;
                }
                for i in (1..ready.len()).rev() {
                    let j = (self.random() % (i as u64 + 1)) as usize;
                    ready.swap(i, j);
                }
            }
        }
        ready.truncate(*budget);
        *budget -= ready.len();
        let mut done = 0;
        for seq in ready {
            let Some(sq) = self.sqs.get_mut(&qid) else {
                break;
            };
            let Some(i) = sq.pending.iter().position(|c| c.seq == seq) else {
                continue;
            };
            let cmd = sq.pending.remove(i);
            let (sq_head, cqid) = (sq.head, sq.cqid);
            let status = self.execute(qid, &cmd);
            self.stats.completed += 1;
            self.post(cqid, completion(qid, cmd.sqe.cid(), sq_head, status, 0))?;
            done += 1;
        }
        Ok(done)
    }

    /// One processing pass over `qids`: count down delays, fetch, complete.
    pub(super) fn pass(&mut self, qids: &[u16], mut budget: usize) -> Result<usize> {
        if !self.serving() {
            return Ok(0);
        }
        self.tick();
        for &qid in qids {
            self.fetch(qid)?;
        }
        let mut done = 0;
        for &qid in qids {
            done += self.complete_ready(qid, &mut budget)?;
        }
        Ok(done)
    }

    /// Queues `cqe` on `cqid` and posts what fits.
    pub(super) fn post(&mut self, cqid: u16, cqe: Cqe) -> Result<()> {
        match self.cqs.get_mut(&cqid) {
            Some(cq) => cq.backlog.push_back(cqe),
            None => {
                self.violation(format!("completion for CQ {cqid}, which does not exist"));
                return Ok(());
            }
        }
        self.flush_cq(cqid)
    }

    /// The CQ head doorbell of `cqid` if it lies inside the queue (else a
    /// description of the problem). Tells the EventIdx page it was seen.
    pub(super) fn cq_head(&mut self, cqid: u16) -> std::result::Result<u16, String> {
        let Some(entries) = self.cqs.get(&cqid).map(|cq| cq.entries) else {
            return Err(format!("CQ {cqid} does not exist"));
        };
        let head = self.doorbell_value(cqid, true);
        self.write_event_idx(cqid, true, head);
        if head >= u32::from(entries) {
            return Err(format!(
                "CQ {cqid}: head doorbell {head} past its {entries} entries"
            ));
        }
        Ok(head as u16)
    }

    /// Posts waiting completions of `cqid` while the CQ has room.
    pub(super) fn flush_cq(&mut self, cqid: u16) -> Result<()> {
        if !self.serving() || self.cqs.get(&cqid).is_none_or(|cq| cq.backlog.is_empty()) {
            return Ok(());
        }
        let head = match self.cq_head(cqid) {
            Ok(head) => head,
            Err(what) => {
                self.violation(what);
                return Ok(());
            }
        };
        let dma = self.dma.clone();
        let mut problem = None;
        let mut posted = 0;
        let mut vector = None;
        if let Some(cq) = self.cqs.get_mut(&cqid) {
            vector = cq.vector;
            while let Some(&cqe) = cq.backlog.front() {
                if next(cq.tail, cq.entries) == head {
                    break;
                }
                let mut cqe = cqe;
                cqe.status = U16::new((cqe.status.get() & !1) | u16::from(cq.phase));
                if let Err(e) = write_cqe(&dma, cq.base + u64::from(cq.tail) * CQE_BYTES, &cqe) {
                    problem = Some(format!("CQ {cqid}: posting: {e}"));
                    break;
                }
                posted += 1;
                cq.backlog.pop_front();
                cq.tail = next(cq.tail, cq.entries);
                if cq.tail == 0 {
                    cq.phase = !cq.phase;
                }
            }
        }
        if let Some(what) = problem {
            self.violation(what);
        }
        if posted > 0 {
            self.interrupt(vector);
        }
        Ok(())
    }

    /// Signals MSI-X `vector`, if the queue has one and it is routed.
    pub(super) fn interrupt(&mut self, vector: Option<u16>) {
        let Some(fd) = vector.and_then(|v| self.irqs.get(usize::from(v))) else {
            return;
        };
        if let Err(e) = fd.write(1) {
            let what = format!("signalling MSI-X vector {vector:?}: {e}");
            self.violation(what);
        } else {
            self.stats.interrupts += 1;
        }
    }

    // ----- registers -----------------------------------------------------

    /// Serving commands: enabled, not failed, not gone.
    pub(super) fn serving(&self) -> bool {
        !self.gone && self.regs.csts & CSTS_CFS == 0 && self.admin.is_some()
    }

    /// The value of a doorbell: from the shadow page once Doorbell Buffer
    /// Config set one up, else the MMIO register.
    pub(super) fn doorbell_value(&mut self, qid: u16, cq: bool) -> u32 {
        let index = 2 * usize::from(qid) + usize::from(cq);
        if let Some((shadow, _)) = self.dbbuf {
            let mut b = [0u8; 4];
            match self.dma.read(shadow + 4 * index as u64, &mut b) {
                Ok(()) => return u32::from_le_bytes(b),
                Err(e) => self.violation(format!("reading the shadow doorbell {index}: {e}")),
            }
        }
        self.regs.doorbells.get(index).copied().unwrap_or(0)
    }

    /// Tells the driver (EventIdx page) how far the mock has looked.
    pub(super) fn write_event_idx(&mut self, qid: u16, cq: bool, value: u32) {
        let Some((_, eventidx)) = self.dbbuf else {
            return;
        };
        let index = 2 * usize::from(qid) + usize::from(cq);
        if let Err(e) = self
            .dma
            .write(eventidx + 4 * index as u64, &value.to_le_bytes())
        {
            self.violation(format!("writing EventIdx {index}: {e}"));
        }
    }

    /// CSTS, counting the read towards a pending CSTS.RDY change.
    pub(super) fn read_csts(&mut self) -> u32 {
        if let Some((ready, polls)) = self.rdy_pending {
            if polls == 0 {
                self.regs.csts = (self.regs.csts & !CSTS_RDY) | u32::from(ready);
                self.rdy_pending = None;
            } else if polls != u32::MAX {
                self.rdy_pending = Some((ready, polls - 1));
            }
        }
        self.regs.csts
    }

    /// CSTS.RDY becomes `ready` after the configured delay.
    pub(super) fn set_ready_later(&mut self, ready: bool) {
        self.rdy_pending = Some((ready, self.ready_delay));
        if self.ready_delay == 0 {
            self.read_csts();
        }
    }

    /// A register read of `size` bytes (4 or 8).
    pub(super) fn read_register(&mut self, offset: usize, size: usize) -> u64 {
        use regs::offset as r;
        if self.gone {
            return if size == 8 {
                u64::MAX
            } else {
                u64::from(u32::MAX)
            };
        }
        let half = |v: u64, high: bool| if high { v >> 32 } else { v & 0xffff_ffff };
        match offset {
            r::CAP | 4 if size == 4 => half(self.regs.cap, offset == 4),
            r::CAP => self.regs.cap,
            r::VS => u64::from(self.regs.vs),
            r::INTMS | r::INTMC => u64::from(self.regs.intms),
            r::CC => u64::from(self.regs.cc),
            r::CSTS => u64::from(self.read_csts()),
            r::AQA => u64::from(self.regs.aqa),
            0x28 | 0x2c if size == 4 => half(self.regs.asq, offset == 0x2c),
            r::ASQ => self.regs.asq,
            0x30 | 0x34 if size == 4 => half(self.regs.acq, offset == 0x34),
            r::ACQ => self.regs.acq,
            o if o >= r::DOORBELL_BASE => {
                let index = (o - r::DOORBELL_BASE) / 4;
                u64::from(self.regs.doorbells.get(index).copied().unwrap_or(0))
            }
            _ => 0,
        }
    }

    /// A register write of `size` bytes (4 or 8): acts on CC and doorbells.
    pub(super) fn write_register(&mut self, offset: usize, value: u64, size: usize) -> Result<()> {
        use regs::offset as r;
        if self.gone {
            return Ok(());
        }
        let set_half = |reg: &mut u64, high: bool, v: u64| {
            *reg = if high {
                (*reg & 0xffff_ffff) | v << 32
            } else {
                (*reg & !0xffff_ffff) | (v & 0xffff_ffff)
            };
        };
        match offset {
            r::INTMS => self.regs.intms |= value as u32,
            r::INTMC => self.regs.intms &= !(value as u32),
            r::CC => self.write_cc(value as u32),
            r::AQA => self.regs.aqa = value as u32,
            0x28 | 0x2c if size == 4 => set_half(&mut self.regs.asq, offset == 0x2c, value),
            r::ASQ => self.regs.asq = value,
            0x30 | 0x34 if size == 4 => set_half(&mut self.regs.acq, offset == 0x34, value),
            r::ACQ => self.regs.acq = value,
            o if o >= r::DOORBELL_BASE && size == 4 => return self.doorbell(o, value),
            // CAP, VS and CSTS are read-only; the rest is not emulated.
            _ => {}
        }
        Ok(())
    }

    /// CC: enable (read the admin queue registers, then CSTS.RDY), disable
    /// (a controller reset), shutdown notification.
    pub(super) fn write_cc(&mut self, value: u32) {
        let (old, new) = (Cc(self.regs.cc), Cc(value));
        self.regs.cc = value;
        if !old.enabled() && new.enabled() {
            self.enable(new);
        } else if old.enabled() && !new.enabled() {
            self.controller_reset();
        }
        if new.shn() != ShutdownNotification::None && old.shn() == ShutdownNotification::None {
            self.regs.csts = (self.regs.csts & !CSTS_SHST_MASK) | CSTS_SHST_COMPLETE;
            self.stats.shutdowns += 1;
        } else if new.shn() == ShutdownNotification::None {
            self.regs.csts &= !CSTS_SHST_MASK;
        }
    }

    /// CC.EN 0 -> 1: takes the admin queue from AQA/ASQ/ACQ. A setting the
    /// mock cannot run with is a violation and fails the controller (CFS),
    /// where a real one might hang or corrupt memory.
    pub(super) fn enable(&mut self, cc: Cc) {
        let aqa = Aqa(self.regs.aqa);
        let (asq, acq) = (self.regs.asq, self.regs.acq);
        let problem = if cc.css() != 0 || cc.mps() != 0 {
            Some(format!(
                "CC.CSS {} / CC.MPS {}: only the NVM command set and 4 KiB pages",
                cc.css(),
                cc.mps()
            ))
        } else if cc.iosqes() != 6 || cc.iocqes() != 4 {
            Some(format!(
                "CC.IOSQES {} / CC.IOCQES {}: 64/16-byte entries",
                cc.iosqes(),
                cc.iocqes()
            ))
        } else if asq == 0 || acq == 0 || !asq.is_multiple_of(PAGE) || !acq.is_multiple_of(PAGE) {
            Some(format!("ASQ {asq:#x} / ACQ {acq:#x}: not page-aligned"))
        } else if u32::from(aqa.sq_entries().max(aqa.cq_entries())) > self.max_entries {
            Some(format!("AQA {:#x}: more entries than CAP.MQES", aqa.0))
        } else {
            None
        };
        if let Some(what) = problem {
            self.violation(format!("enable: {what}"));
            self.regs.csts |= CSTS_CFS;
            return;
        }
        self.admin = Some(AdminState {
            asq,
            acq,
            sq_entries: aqa.sq_entries(),
            cq_entries: aqa.cq_entries(),
            sq_head: 0,
            cq_tail: 0,
            phase: true,
        });
        self.regs.doorbells.fill(0);
        self.stats.enables += 1;
        self.set_ready_later(true);
    }

    /// CC.EN 1 -> 0: every queue and pending command is dropped, shadow
    /// doorbells and AERs forgotten, CFS cleared; CSTS.RDY clears later.
    pub(super) fn controller_reset(&mut self) {
        self.stats.resets += 1;
        let dropped: usize = self.sqs.values().map(|sq| sq.pending.len()).sum();
        self.stats.dropped_by_reset += dropped as u64;
        self.sqs.clear();
        self.cqs.clear();
        self.admin = None;
        self.dbbuf = None;
        self.aers.clear();
        self.regs.doorbells.fill(0);
        self.regs.csts &= !(CSTS_CFS | CSTS_SHST_MASK);
        self.set_ready_later(false);
    }

    // ----- command execution -------------------------------------------
    // (command execution: command.rs; the data walk: data.rs; admin: admin.rs)

    /// A new queue's doorbell starts at 0 (whatever was written to it
    /// while the queue did not exist).
    pub(super) fn reset_doorbell(&mut self, index: usize) {
        if let Some(d) = self.regs.doorbells.get_mut(index) {
            *d = 0;
        }
        if let Some((shadow, _)) = self.dbbuf {
            let _ = self.dma.write(shadow + 4 * index as u64, &[0; 4]);
        }
    }

    /// Aborts command `cid` of SQ `qid` per the policy; whether it was.
    pub(super) fn abort(&mut self, qid: u16, cid: u16) -> Result<bool> {
        if self.abort_policy == AbortPolicy::Refuse {
            return Ok(false);
        }
        let Some(sq) = self.sqs.get_mut(&qid) else {
            return Ok(false);
        };
        let Some(i) = sq.pending.iter().position(|c| c.sqe.cid() == cid) else {
            return Ok(false);
        };
        let cmd = sq.pending.remove(i);
        let (sq_head, cqid) = (sq.head, sq.cqid);
        let status = Status::generic(generic::ABORT_REQUESTED);
        self.commands.push(CommandRecord {
            qid,
            cid,
            opcode: cmd.sqe.opcode,
            nsid: cmd.sqe.nsid.get(),
            slba: block_range(&cmd.sqe).0,
            blocks: 0,
            bytes: 0,
            data: DataPointer::None,
            status,
            rw_flags: hints_of(&cmd.sqe).0,
            dsm: hints_of(&cmd.sqe).1,
        });
        self.stats.aborted += 1;
        self.post(cqid, completion(qid, cid, sq_head, status, 0))?;
        Ok(true)
    }

    /// Flags a tail doorbell write that moves the tail over entries the
    /// mock has not fetched (an SQ overrun: those commands are lost).
    pub(super) fn check_sq_overrun(&mut self, qid: u16, value: u64) {
        let Some(sq) = self.sqs.get_mut(&qid) else {
            return;
        };
        let entries = u64::from(sq.entries);
        if value >= entries {
            return; // `fetch` reports a tail past the ring.
        }
        let ahead = |from: u16, to: u64| (to + entries - u64::from(from)) % entries;
        let unfetched = ahead(sq.head, u64::from(sq.tail));
        let added = ahead(sq.tail, value);
        sq.tail = value as u16;
        if unfetched + added > entries - 1 {
            let what = format!(
                "SQ {qid}: overrun: tail moved by {added} with {unfetched} of {entries} entries not fetched"
            );
            self.violation(what);
        }
    }

    /// A doorbell write (offset inside the doorbell area).
    pub(super) fn doorbell(&mut self, offset: usize, value: u64) -> Result<()> {
        let index = (offset - regs::offset::DOORBELL_BASE) >> (2 + DSTRD);
        if let Some(d) = self.regs.doorbells.get_mut(index) {
            *d = value as u32;
        }
        if let Some((shadow, _)) = self.dbbuf {
            // The MMIO value is the newest: keep the shadow slot with it.
            let _ = self
                .dma
                .write(shadow + 4 * index as u64, &(value as u32).to_le_bytes());
        }
        self.stats.mmio_doorbells += 1;
        let qid = (index / 2) as u16;
        let cq_head = index % 2 == 1;
        if qid != 0 && !cq_head {
            self.check_sq_overrun(qid, value);
        }
        match (qid, cq_head) {
            (0, false) => self.admin_doorbell(),
            (0, true) => Ok(()),
            (qid, false) if self.auto => self.pass(&[qid], usize::MAX).map(drop),
            (qid, true) if self.auto => self.flush_cq(qid),
            _ => Ok(()),
        }
    }
}

/// A completion entry (phase bit clear; set when posted).
pub(super) fn completion(qid: u16, cid: u16, sq_head: u16, status: Status, dw0: u32) -> Cqe {
    Cqe {
        dw0: U32::new(dw0),
        dw1: U32::ZERO,
        sq_head: U16::new(sq_head),
        sq_id: U16::new(qid),
        cid: U16::new(cid),
        status: U16::new(status.to_cqe_status(false)),
    }
}

/// Writes a CQE as a device would: the status word (with the phase) last.
pub(super) fn write_cqe(dma: &HostMemory, at: u64, cqe: &Cqe) -> Result<()> {
    let bytes = cqe.as_bytes();
    dma.write(at, &bytes[..14])?;
    std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
    dma.write(at + 14, &bytes[14..])
}

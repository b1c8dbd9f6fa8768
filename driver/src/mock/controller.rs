//! [`MockController`]: the test's handle on the mock.

use super::*;

/// A mock NVMe controller: BAR0 and in-memory disks, serving the admin
/// queue synchronously and I/O queues when told to. See the module docs.
#[derive(Debug)]
pub struct MockController {
    pub(super) device: Arc<MockDevice>,
    /// BAR0 as the driver sees it (for tests that play the driver).
    pub(super) bar: Bar,
    pub(super) pool: DmaPool,
}

impl MockController {
    /// Builds the mock and brings up a [`Controller`] on it with
    /// [`Controller::with_device`], as on a real device: the namespaces,
    /// MDTS and queue count the driver finds are those of `config`. Queue
    /// pairs come from [`Controller::io_qpair`], which creates them through
    /// the admin queue.
    pub fn new(config: MockConfig) -> Result<(MockController, Controller)> {
        let mut mock = Self::device(&config)?;
        let ctrl = mock.open(config.options)?;
        Ok((mock, ctrl))
    }

    /// Builds the mock alone: a controller left enabled by a previous
    /// owner, with no admin queue yet. [`MockController::open`] brings it
    /// up.
    pub fn device(config: &MockConfig) -> Result<MockController> {
        let mut disks = BTreeMap::new();
        for ns in &config.namespaces {
            let bytes = ns.blocks.checked_mul(u64::from(ns.lba_size));
            if !ns.lba_size.is_power_of_two()
                || ns.blocks == 0
                || ns.nsid == 0
                || ns.nsid == u32::MAX
                || bytes.is_none_or(|b| b > MAX_DISK_BYTES)
            {
                return Err(Error::BadBuffer(format!(
                    "mock namespace {}: {} blocks of {} bytes",
                    ns.nsid, ns.blocks, ns.lba_size
                )));
            }
            disks.insert(
                ns.nsid,
                Disk {
                    lba_size: ns.lba_size,
                    blocks: ns.blocks,
                    data: vec![0; bytes.unwrap_or(0) as usize],
                },
            );
        }
        let io_queues = config.io_queues.clamp(1, 1024);
        let bar_len = (doorbell_offset(io_queues as u16, DoorbellKind::CqHead, DSTRD) + 4)
            .next_multiple_of(PAGE_SIZE)
            .max(0x2000);
        let mqes = u64::from(config.max_queue_entries.max(2) - 1);
        // MQES, CQR, TO = 500 ms, DSTRD 0, CSS = NVM, MPSMIN = MPSMAX = 4 KiB.
        let cap = Cap(mqes | 1 << 16 | 1 << 24 | 1 << 37);
        // MDTS in 4 KiB pages, a power of two of at least 2 (0 would mean
        // no limit).
        let pages = (config.max_transfer / PAGE_SIZE).max(2);
        let mdts = (usize::BITS - 1 - pages.leading_zeros()).min(15) as u8;
        let cc = Cc(0).with_iosqes(6).with_iocqes(4).with_enable(true);
        let dma = HostMemory::new();
        let state = State {
            dma: dma.clone(),
            regs: Regs {
                cap: cap.0,
                vs: Vs::new(1, 4, 0).0,
                intms: 0,
                cc: cc.0,
                csts: CSTS_RDY,
                aqa: 0,
                asq: 0,
                acq: 0,
                doorbells: vec![0; (bar_len - regs::offset::DOORBELL_BASE) / 4],
                pci_command: 0,
            },
            rdy_pending: None,
            ready_delay: config.ready_delay,
            gone: false,
            dbbuf: None,
            shadow_supported: config.shadow_doorbells,
            aers: Vec::new(),
            irqs: Vec::new(),
            removal_request: None,
            released: false,
            msix_vectors: config.msix_vectors,
            oncs: config.oncs,
            max_entries: cap.max_queue_entries(),
            io_queues,
            max_transfer: PAGE_SIZE << mdts,
            mdts,
            sgl: true,
            disks,
            admin: None,
            sqs: BTreeMap::new(),
            cqs: BTreeMap::new(),
            rules: Vec::new(),
            order: Order::Fifo,
            rng: 0,
            abort_policy: AbortPolicy::Abort,
            auto: false,
            seq: 0,
            stats: MockStats::default(),
            violations: Vec::new(),
            commands: Vec::new(),
            deallocated: Vec::new(),
            admin_latency: Duration::ZERO,
        };
        let device = Arc::new(MockDevice {
            state: Mutex::new(state),
            bar_len,
            dma: dma.clone(),
            msix_vectors: config.msix_vectors,
        });
        let bar = Bar::emulated(device.clone())?;
        let pool = DmaPool::new(dma.dma_mapping().mapper(), false);
        Ok(MockController { device, bar, pool })
    }

    /// Brings up a [`Controller`] on this mock ([`Controller::with_device`]).
    /// Its DMA pool becomes the one [`MockController::pool`] hands out.
    pub fn open(&mut self, options: Options) -> Result<Controller> {
        let ctrl = Controller::with_device(MockBacking(self.device.clone()), options)?;
        self.pool = ctrl.dma_pool().clone();
        Ok(ctrl)
    }

    /// [`MockController::new`] and one queue pair (the controller handle
    /// lives on inside it).
    pub fn with_qpair(config: MockConfig) -> Result<(MockController, IoQPair)> {
        let (mock, ctrl) = Self::new(config)?;
        let qpair = ctrl.io_qpair()?;
        Ok((mock, qpair))
    }

    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.device.state.lock()
    }

    pub(super) fn qids(&self) -> Vec<u16> {
        self.state().sqs.keys().copied().collect()
    }

    /// The pool of the controller's DMA memory, for request buffers.
    pub fn pool(&self) -> &DmaPool {
        &self.pool
    }

    /// One processing pass over every I/O queue: counts down delays,
    /// fetches the commands rung since the last pass, and completes every
    /// command that is not held. Returns the completions produced.
    pub fn process(&self) -> Result<usize> {
        self.process_limit(usize::MAX)
    }

    /// Like [`MockController::process`], completing at most `max`.
    pub fn process_limit(&self, max: usize) -> Result<usize> {
        let qids = self.qids();
        self.state().pass(&qids, max)
    }

    /// Fetches the commands rung since the last pass, completing none.
    pub fn fetch(&self) -> Result<usize> {
        let qids = self.qids();
        let mut s = self.state();
        let mut n = 0;
        for qid in qids {
            n += s.fetch(qid)?;
        }
        Ok(n)
    }

    /// Serve I/O queues inside their doorbell writes, as well (for the
    /// blocking helpers of [`IoQPair`]).
    pub fn set_auto(&self, auto: bool) {
        self.state().auto = auto;
    }

    /// Admin doorbells take `latency` before the commands are served (the
    /// driver holds its admin lock meanwhile), as on a device: widens the
    /// windows between a reset and the queue pairs recovering from it.
    pub fn set_admin_latency(&self, latency: Duration) {
        self.state().admin_latency = latency;
    }

    /// The next `times` commands matching `when` complete with `status`,
    /// moving no data.
    pub fn fail_next(&self, when: Match, status: Status, times: u32) {
        self.add_rule(when, Action::Fail(status), times);
    }

    /// The next `times` commands matching `when` are held: they complete
    /// only after [`MockController::release_held`] (or an Abort).
    pub fn hold_next(&self, when: Match, times: u32) {
        self.add_rule(when, Action::Hold, times);
    }

    /// The next `times` commands matching `when` complete `passes`
    /// processing passes after the one that fetched them.
    pub fn delay_next(&self, when: Match, passes: u32, times: u32) {
        self.add_rule(when, Action::Delay(passes), times);
    }

    pub(super) fn add_rule(&self, when: Match, action: Action, times: u32) {
        if times > 0 {
            self.state().rules.push(Rule {
                when,
                action,
                remaining: times,
            });
        }
    }

    /// Drops every fault rule not yet used up.
    pub fn clear_faults(&self) {
        self.state().rules.clear();
    }

    /// Makes every held or delayed command ready; returns how many.
    pub fn release_held(&self) -> usize {
        let mut s = self.state();
        let mut n = 0;
        for sq in s.sqs.values_mut() {
            for c in &mut sq.pending {
                if c.hold != Hold::Ready {
                    c.hold = Hold::Ready;
                    n += 1;
                }
            }
        }
        n
    }

    /// Sets the completion order.
    pub fn set_order(&self, order: Order) {
        let mut s = self.state();
        s.order = order;
        if let Order::Random(seed) = order {
            s.rng = seed | 1;
        }
    }

    /// Sets what Abort does.
    pub fn set_abort_policy(&self, policy: AbortPolicy) {
        self.state().abort_policy = policy;
    }

    /// Commands fetched and not completed.
    pub fn pending(&self) -> Vec<PendingCommand> {
        let s = self.state();
        s.sqs
            .iter()
            .flat_map(|(&qid, sq)| {
                sq.pending.iter().map(move |c| PendingCommand {
                    qid,
                    cid: c.sqe.cid(),
                    opcode: c.sqe.opcode,
                    slba: block_range(&c.sqe).0,
                    held: c.hold != Hold::Ready,
                })
            })
            .collect()
    }

    /// Posts 16 raw bytes as the next entry of completion queue `cqid`
    /// (see [`RawCqe`]). Entries whose phase bit is the one the slot
    /// expects are visible to the driver. A visible entry naming a pending
    /// command (its CID, with an SQ head inside the ring) is what the
    /// driver takes as that command's completion, so the mock forgets the
    /// command: that mirrors the checks of the driver's completion path,
    /// and assumes the mock has fetched every command the driver rang
    /// (call [`IoQPair::ring`] and [`MockController::fetch`] first).
    pub fn post_raw_cqe(&self, cqid: u16, raw: [u8; 16]) -> Result<RawCqe> {
        let mut s = self.state();
        let s = &mut *s;
        if !s.cqs.contains_key(&cqid) {
            return Err(Error::BadBuffer(format!(
                "mock: no completion queue {cqid}"
            )));
        }
        let head = s.cq_head(cqid);
        let cq = s
            .cqs
            .get_mut(&cqid)
            .ok_or_else(|| Error::BadBuffer(format!("mock: no completion queue {cqid}")))?;
        let room = head.is_ok_and(|head| next(cq.tail, cq.entries) != head);
        if !cq.backlog.is_empty() || !room {
            return Ok(RawCqe::NoRoom);
        }
        s.dma
            .write(cq.base + u64::from(cq.tail) * CQE_BYTES, &raw)?;
        if (raw[14] & 1 == 1) != cq.phase {
            return Ok(RawCqe::Invisible);
        }
        cq.tail = next(cq.tail, cq.entries);
        if cq.tail == 0 {
            cq.phase = !cq.phase;
        }
        s.stats.raw_cqes += 1;
        let Ok(cqe) = Cqe::read_from_bytes(&raw[..]) else {
            return Ok(RawCqe::Stray);
        };
        let hit = s.sqs.iter_mut().find_map(|(&qid, sq)| {
            let accepted = sq.cqid == cqid && cqe.sq_head() < sq.entries;
            let i = sq
                .pending
                .iter()
                .position(|c| accepted && c.sqe.cid() == cqe.cid())?;
            Some((qid, sq.pending.remove(i)))
        });
        let Some((qid, cmd)) = hit else {
            return Ok(RawCqe::Stray);
        };
        let (slba, blocks) = if is_block_command(cmd.sqe.opcode) {
            block_range(&cmd.sqe)
        } else {
            (0, 0)
        };
        let record = CommandRecord {
            qid,
            cid: cqe.cid(),
            opcode: cmd.sqe.opcode,
            nsid: cmd.sqe.nsid.get(),
            slba,
            blocks,
            bytes: 0,
            data: DataPointer::None,
            status: cqe.status(),
            rw_flags: hints_of(&cmd.sqe).0,
            dsm: hints_of(&cmd.sqe).1,
        };
        s.commands.push(record);
        Ok(RawCqe::Completed(record))
    }

    /// Posts a well-formed completion entry with the phase the slot
    /// expects (see [`MockController::post_raw_cqe`]).
    pub fn post_cqe(&self, cqid: u16, cid: u16, sq_head: u16, status: Status) -> Result<RawCqe> {
        let phase = self.state().cqs.get(&cqid).is_some_and(|cq| cq.phase);
        let mut cqe = completion(cqid, cid, sq_head, status, 0);
        cqe.status = U16::new(status.to_cqe_status(phase));
        let mut raw = [0u8; 16];
        raw.copy_from_slice(cqe.as_bytes());
        self.post_raw_cqe(cqid, raw)
    }

    /// The SQ head the mock would report now for queue `qid`.
    pub fn sq_head(&self, qid: u16) -> Option<u16> {
        self.state().sqs.get(&qid).map(|sq| sq.head)
    }

    /// Reads `blocks` blocks of namespace `nsid` from the disk.
    pub fn read_disk(&self, nsid: u32, slba: u64, blocks: u64) -> Result<Vec<u8>> {
        let s = self.state();
        let (at, len) = s.disk_range(nsid, slba, blocks).map_err(|_| {
            Error::BadBuffer(format!(
                "mock: no blocks {slba}+{blocks} in namespace {nsid}"
            ))
        })?;
        Ok(s.disks
            .get(&nsid)
            .map(|d| d.data[at..at + len].to_vec())
            .unwrap_or_default())
    }

    /// Writes whole blocks of namespace `nsid` on the disk directly.
    pub fn write_disk(&self, nsid: u32, slba: u64, data: &[u8]) -> Result<()> {
        let mut s = self.state();
        let lba = s.disks.get(&nsid).map_or(512, |d| d.lba_size as usize);
        let blocks = (data.len() / lba) as u64;
        let (at, len) = s
            .disk_range(nsid, slba, blocks)
            .ok()
            .filter(|&(_, len)| len == data.len())
            .ok_or_else(|| {
                Error::BadBuffer(format!(
                    "mock: {} bytes at block {slba} of namespace {nsid}",
                    data.len()
                ))
            })?;
        if let Some(d) = s.disks.get_mut(&nsid) {
            d.data[at..at + len].copy_from_slice(data);
        }
        Ok(())
    }

    /// Counters.
    pub fn stats(&self) -> MockStats {
        self.state().stats.clone()
    }

    /// Every command completed so far, in completion order.
    pub fn commands(&self) -> Vec<CommandRecord> {
        self.state().commands.clone()
    }

    /// Ranges deallocated by Dataset Management: (nsid, slba, blocks).
    pub fn deallocated(&self) -> Vec<(u32, u64, u64)> {
        self.state().deallocated.clone()
    }

    /// Protocol violations seen: things a real controller would reject or
    /// corrupt memory over. A correct driver leaves this empty.
    pub fn violations(&self) -> Vec<String> {
        self.state().violations.clone()
    }

    /// Raises CSTS.CFS (Controller Fatal Status): the mock stops serving
    /// until the driver resets it (CC.EN 1 -> 0 clears CFS).
    pub fn set_fatal(&self) {
        self.state().regs.csts |= CSTS_CFS;
    }

    /// Plays a surprise removal: from now on every register and config
    /// space read is all-ones, writes are lost, nothing is served.
    pub fn vanish(&self) {
        self.state().gone = true;
    }

    /// Plays the system asking for the device back (vfio-pci's device
    /// request interrupt, as on `remove` in sysfs): signals the eventfd
    /// the driver registered. False if it registered none.
    pub fn request_removal(&self) -> bool {
        let fd = self.state().removal_request.clone();
        fd.is_some_and(|fd| fd.write(1).is_ok())
    }

    /// Whether the driver released the device (after a removal request).
    pub fn released(&self) -> bool {
        self.state().released
    }

    /// Sets the CSTS reads CSTS.RDY lags CC.EN by, from the next change of
    /// CC.EN (`u32::MAX`: it never follows).
    pub fn set_ready_delay(&self, polls: u32) {
        self.state().ready_delay = polls;
    }

    /// Completes an outstanding Asynchronous Event Request with `dw0`
    /// (event type, information and log page); false if none is
    /// outstanding.
    pub fn async_event(&self, dw0: u32) -> bool {
        let mut s = self.state();
        if !s.serving() || s.aers.is_empty() {
            return false;
        }
        let cid = s.aers.remove(0);
        s.post_admin(cid, Status::SUCCESS, dw0);
        true
    }

    /// The shadow doorbell and EventIdx pages (IOVAs) Doorbell Buffer
    /// Config set up, while in use.
    pub fn shadow_pages(&self) -> Option<(u64, u64)> {
        self.state().dbbuf
    }

    /// The value the mock uses for a doorbell of queue `qid` (SQ tail, or
    /// CQ head if `cq`): the shadow slot once shadow doorbells are on.
    pub fn doorbell(&self, qid: u16, cq: bool) -> u32 {
        self.state().doorbell_value(qid, cq)
    }

    /// Reads a register as the driver would (counts as a poll of CSTS).
    pub fn register(&self, offset: usize) -> Result<u32> {
        self.bar.read32(offset)
    }
}

// ---------------------------------------------------------------------------
// The completion-stream property harness
// ---------------------------------------------------------------------------

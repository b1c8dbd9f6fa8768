//! A mock NVMe controller in host memory: runs the queue-pair logic
//! ([`IoQPair`]: splitting, PRP lists, SGLs, retries, timeouts and aborts)
//! in unit tests and fuzzers, with no VFIO and no device.
//!
//! The mock is a device behind the driver's device boundary
//! ([`DeviceBacking`]), so the driver runs on it exactly as on VFIO:
//! [`MockController::new`] calls [`Controller::with_device`], the real
//! bring-up (bus mastering, CC.EN, the admin queue, Identify, shadow
//! doorbells, Number of Queues, namespaces, AERs). [`MockController::device`]
//! and [`MockController::open`] do it in two steps, for tests of bring-up
//! itself.
//! - BAR0 is emulated ([`EmulatedBar`]): registers are state in the mock.
//!   CC.EN 0 -> 1 reads AQA/ASQ/ACQ and sets CSTS.RDY; CC.EN 1 -> 0 is a
//!   controller reset (every I/O queue and pending command dropped) and
//!   clears it; each after [`MockConfig::ready_delay`] CSTS reads. CC.SHN
//!   sets CSTS.SHST. [`MockController::set_fatal`] raises CSTS.CFS (the
//!   mock then stops serving until a reset); [`MockController::vanish`]
//!   plays a surprise removal: every read is all-ones, writes are lost.
//! - DMA memory is [`HostMemory`] (IOVA = VA, every live mapping known);
//!   the mock reads SQEs, PRP lists and data, and writes data and CQEs,
//!   only inside those mappings. An access anywhere else is recorded
//!   as a protocol violation ([`MockController::violations`]), as is any
//!   other thing a real controller would reject or trip over (a CID reused
//!   while in flight, a transfer past MDTS, a malformed PRP or SGL, an SQ
//!   overrun, an admin doorbell while disabled or without bus mastering,
//!   an enable with an admin queue it cannot use).
//! - Admin commands are served synchronously, inside the doorbell write
//!   (Identify, Create/Delete I/O queues, Abort, Get/Set Features,
//!   Doorbell Buffer Config; Asynchronous Event Requests are kept until
//!   [`MockController::async_event`]), so the blocking admin path works on
//!   one thread.
//! - With [`MockConfig::shadow_doorbells`] the mock advertises Doorbell
//!   Buffer Config and, once configured, takes every tail and head from the
//!   shadow page and writes the EventIdx page as QEMU does.
//! - With [`MockConfig::msix_vectors`], a completion queue created with
//!   interrupts signals its MSI-X eventfd when an entry is posted.
//! - I/O queues are served when the test says so ([`MockController::process`]
//!   between [`IoQPair::poll`] calls), which keeps every test deterministic;
//!   [`MockController::set_auto`] serves them inside the doorbell write too,
//!   for the blocking helpers ([`IoQPair::read`] and friends). The mock is
//!   `Send` and `Sync`, so it may also be driven from another thread, as a
//!   device would run beside the driver.
//!
//! Faults are injected per command, chosen when the mock fetches it:
//! [`MockController::fail_next`] (a status, no data moved),
//! [`MockController::hold_next`] (never completes until released: for
//! timeouts), [`MockController::delay_next`]; completion order is
//! [`MockController::set_order`]; raw completion entries are posted with
//! [`MockController::post_raw_cqe`].
//!
//! [`run_cqe_stream`] is the property harness shared by the proptest in
//! this module and the cargo-fuzz target in `driver/fuzz`.

use parking_lot::{Mutex, MutexGuard};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use nvme_spec::status::{command_specific, generic};
use nvme_spec::{
    AdminOpcode, Aqa, Cap, Cc, Cqe, DoorbellKind, IdentifyController, IdentifyNamespace, NvmOpcode,
    SglDescriptor, ShutdownNotification, Sqe, Status, StatusCodeType, Vs, doorbell_offset, regs,
};
use vmm_sys_util::eventfd::EventFd;
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::ctrl::{Controller, Options, PAGE_SIZE};
use crate::device::{Bar, DeviceBacking, DmaMapping, EmulatedBar, HostMemory};
use crate::error::{Error, Result};
use crate::memory::DmaPool;
use crate::pci::PciAddress;
use crate::qpair::{IoCompletion, IoQPair, IoRequest};

const PAGE: u64 = PAGE_SIZE as u64;
const SQE_BYTES: u64 = 64;
const CQE_BYTES: u64 = 16;
/// CAP.DSTRD of the mock (4-byte doorbell stride).
const DSTRD: u8 = 0;
/// The largest disk the mock agrees to hold in memory.
const MAX_DISK_BYTES: u64 = 1 << 30;
/// CSTS bits.
const CSTS_RDY: u32 = 1;
const CSTS_CFS: u32 = 1 << 1;
const CSTS_SHST_MASK: u32 = 0b11 << 2;
const CSTS_SHST_COMPLETE: u32 = 0b10 << 2;
/// PCI command register: bus master enable.
const PCI_COMMAND: u16 = 0x04;
const PCI_COMMAND_MASTER: u16 = 1 << 2;
/// Asynchronous Event Request Limit (0's based) the mock reports.
const AERL: u8 = 0;

/// A namespace of the mock controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MockNamespace {
    /// Namespace id.
    pub nsid: u32,
    /// Bytes per logical block (a power of two, 512..=65536).
    pub lba_size: u32,
    /// Size in logical blocks.
    pub blocks: u64,
}

/// How a [`MockController`] is built.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// The namespaces, each backed by a zeroed in-memory disk.
    pub namespaces: Vec<MockNamespace>,
    /// The transfer limit (MDTS) in bytes; larger commands are violations.
    pub max_transfer: usize,
    /// I/O queue pairs the controller grants.
    pub io_queues: usize,
    /// CAP.MQES + 1: the most entries a queue may have.
    pub max_queue_entries: u16,
    /// Advertise Doorbell Buffer Config (shadow doorbells).
    pub shadow_doorbells: bool,
    /// CSTS reads after a change of CC.EN before CSTS.RDY follows it
    /// (`u32::MAX`: never).
    pub ready_delay: u32,
    /// MSI-X vectors of the function.
    pub msix_vectors: u32,
    /// The driver's options (queue sizes, SGL, timeouts, retries).
    pub options: Options,
}

impl MockConfig {
    /// Namespaces given as `(nsid, lba_size, blocks)`, everything else
    /// default.
    pub fn new(namespaces: &[(u32, u32, u64)]) -> Self {
        MockConfig {
            namespaces: namespaces
                .iter()
                .map(|&(nsid, lba_size, blocks)| MockNamespace {
                    nsid,
                    lba_size,
                    blocks,
                })
                .collect(),
            ..MockConfig::default()
        }
    }

    /// Sets the transfer limit.
    pub fn max_transfer(mut self, bytes: usize) -> Self {
        self.max_transfer = bytes;
        self
    }

    /// Sets the driver options.
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// Advertises shadow doorbells (or not).
    pub fn shadow_doorbells(mut self, on: bool) -> Self {
        self.shadow_doorbells = on;
        self
    }

    /// Sets the CSTS reads CSTS.RDY lags CC.EN by.
    pub fn ready_delay(mut self, polls: u32) -> Self {
        self.ready_delay = polls;
        self
    }

    /// Sets the MSI-X vectors of the function.
    pub fn msix_vectors(mut self, vectors: u32) -> Self {
        self.msix_vectors = vectors;
        self
    }
}

impl Default for MockConfig {
    /// Namespace 1 of 2048 512-byte blocks, 128 KiB MDTS, 4 I/O queues of
    /// 64 entries, no huge pages, no shadow doorbells, no MSI-X, CSTS.RDY
    /// two polls behind CC.EN.
    fn default() -> Self {
        MockConfig {
            namespaces: vec![MockNamespace {
                nsid: 1,
                lba_size: 512,
                blocks: 2048,
            }],
            max_transfer: 128 << 10,
            io_queues: 4,
            max_queue_entries: 1024,
            shadow_doorbells: false,
            ready_delay: 2,
            msix_vectors: 0,
            options: Options {
                admin_queue_entries: 8,
                io_queue_entries: 64,
                prefer_huge_pages: false,
                // A timed-out command is given up on (tests of resets ask
                // for them).
                reset_on_timeout: false,
                ..Options::default()
            },
        }
    }
}

/// Which commands a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// Every command.
    Any,
    /// Commands with this opcode.
    Opcode(NvmOpcode),
    /// Read, Write or Write Zeroes commands whose block range holds this LBA.
    Lba(u64),
    /// The n-th I/O command the mock fetches (0-based, over all queues).
    Nth(u64),
}

/// The order in which ready commands complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// In the order they were fetched.
    #[default]
    Fifo,
    /// Newest first.
    Lifo,
    /// Shuffled, from this seed.
    Random(u64),
}

/// What the mock does with an Abort command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AbortPolicy {
    /// Aborts the command if it is pending: it completes with Command Abort
    /// Requested, and the Abort with DW0 bit 0 clear.
    #[default]
    Abort,
    /// Completes the Abort with DW0 bit 0 set (not aborted) and leaves the
    /// command alone.
    Refuse,
}

/// How a command's data was described.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPointer {
    /// No data transfer (Flush, Write Zeroes, a failed command).
    None,
    /// PRP1 and possibly PRP2, with this many PRP list pages (0: no list).
    Prp {
        /// PRP list pages walked.
        list_pages: usize,
    },
    /// One SGL Data Block descriptor.
    Sgl,
}

/// A command the mock completed (or that a raw CQE completed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandRecord {
    /// Submission queue.
    pub qid: u16,
    /// Command identifier.
    pub cid: u16,
    /// Opcode.
    pub opcode: u8,
    /// Namespace.
    pub nsid: u32,
    /// First LBA (block commands; else 0).
    pub slba: u64,
    /// Blocks (block commands; else 0).
    pub blocks: u64,
    /// Bytes moved.
    pub bytes: usize,
    /// The data pointer used.
    pub data: DataPointer,
    /// The status posted.
    pub status: Status,
}

/// A command fetched and not yet completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingCommand {
    /// Submission queue.
    pub qid: u16,
    /// Command identifier.
    pub cid: u16,
    /// Opcode.
    pub opcode: u8,
    /// First LBA (block commands).
    pub slba: u64,
    /// Held (by [`MockController::hold_next`] or a delay not yet run out).
    pub held: bool,
}

/// What became of a raw completion entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawCqe {
    /// Not written: the completion queue has no free slot (or older
    /// completions are still waiting for one).
    NoRoom,
    /// Written with the phase the driver treats as old: invisible, and the
    /// slot is overwritten by the next entry posted.
    Invisible,
    /// Posted; the driver must reject it (no such CID in flight, or an SQ
    /// head past the ring).
    Stray,
    /// Posted with the CID of a pending command, which the driver takes as
    /// that command's completion (no data was moved): the mock forgets it.
    Completed(CommandRecord),
}

/// What the mock has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MockStats {
    /// I/O commands fetched.
    pub fetched: u64,
    /// I/O completions produced (not counting raw entries).
    pub completed: u64,
    /// Reads executed.
    pub reads: u64,
    /// Writes executed.
    pub writes: u64,
    /// Flushes executed.
    pub flushes: u64,
    /// Write Zeroes executed.
    pub write_zeroes: u64,
    /// Dataset Management commands executed.
    pub dataset_management: u64,
    /// Commands whose data used a PRP list.
    pub prp_lists: u64,
    /// Commands whose PRP list spanned more than one page (chained).
    pub chained_prp_lists: u64,
    /// Commands whose data used an SGL.
    pub sgls: u64,
    /// The largest data transfer of one command, in bytes.
    pub max_command_bytes: usize,
    /// Commands failed by [`MockController::fail_next`].
    pub injected: u64,
    /// Abort commands received.
    pub aborts: u64,
    /// Commands aborted by them.
    pub aborted: u64,
    /// Raw entries posted (visible ones).
    pub raw_cqes: u64,
    /// I/O queues created (SQs).
    pub queues_created: u64,
    /// I/O queues deleted (SQs).
    pub queues_deleted: u64,
    /// Shutdown notifications (CC.SHN) received.
    pub shutdowns: u64,
    /// Controller resets (CC.EN 1 -> 0).
    pub resets: u64,
    /// Enables (CC.EN 0 -> 1) that found a valid admin queue.
    pub enables: u64,
    /// Commands fetched and dropped, not completed, by a reset.
    pub dropped_by_reset: u64,
    /// Commands fetched and dropped, not completed, by Delete I/O SQ.
    pub dropped_by_delete: u64,
    /// Doorbell Buffer Config commands accepted.
    pub shadow_configs: u64,
    /// MMIO doorbell writes (with shadow doorbells, only those the EventIdx
    /// asked for).
    pub mmio_doorbells: u64,
    /// MSI-X interrupts signalled.
    pub interrupts: u64,
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Fail(Status),
    Hold,
    Delay(u32),
}

#[derive(Debug, Clone, Copy)]
struct Rule {
    when: Match,
    action: Action,
    remaining: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    Ready,
    Forever,
    Passes(u32),
}

#[derive(Debug, Clone, Copy)]
struct Cmd {
    sqe: Sqe,
    seq: u64,
    fail: Option<Status>,
    hold: Hold,
}

#[derive(Debug)]
struct Sq {
    base: u64,
    entries: u16,
    cqid: u16,
    head: u16,
    /// The tail last written to the doorbell, to see an overrun: a new
    /// tail that puts more than `entries - 1` entries past the head has
    /// written over entries not fetched yet.
    tail: u16,
    pending: Vec<Cmd>,
}

#[derive(Debug)]
struct Cq {
    base: u64,
    entries: u16,
    tail: u16,
    phase: bool,
    /// MSI-X vector, when created with interrupts enabled.
    vector: Option<u16>,
    /// Completions waiting for a free slot, oldest first.
    backlog: VecDeque<Cqe>,
}

#[derive(Debug)]
struct Disk {
    lba_size: u32,
    blocks: u64,
    data: Vec<u8>,
}

/// The admin queue, as read from AQA/ASQ/ACQ when CC.EN was set.
#[derive(Debug)]
struct AdminState {
    asq: u64,
    acq: u64,
    sq_entries: u16,
    cq_entries: u16,
    sq_head: u16,
    cq_tail: u16,
    /// Phase of the next admin completion.
    phase: bool,
}

/// The controller registers (BAR0) and PCI config space.
#[derive(Debug)]
struct Regs {
    cap: u64,
    vs: u32,
    intms: u32,
    cc: u32,
    csts: u32,
    aqa: u32,
    asq: u64,
    acq: u64,
    /// Doorbells by index (2 * qid, + 1 for a CQ head).
    doorbells: Vec<u32>,
    pci_command: u16,
}

#[derive(Debug)]
struct State {
    dma: HostMemory,
    regs: Regs,
    /// CSTS.RDY is to become `.0` after `.1` more CSTS reads.
    rdy_pending: Option<(bool, u32)>,
    ready_delay: u32,
    /// Surprise removal: reads are all-ones, writes lost.
    gone: bool,
    /// Shadow doorbell and EventIdx pages (Doorbell Buffer Config).
    dbbuf: Option<(u64, u64)>,
    shadow_supported: bool,
    /// CIDs of outstanding Asynchronous Event Requests.
    aers: Vec<u16>,
    irqs: Vec<Arc<EventFd>>,
    /// The eventfd the driver listens on for removal requests.
    removal_request: Option<Arc<EventFd>>,
    /// The driver released the device after a removal request.
    released: bool,
    msix_vectors: u32,
    max_entries: u32,
    io_queues: usize,
    max_transfer: usize,
    mdts: u8,
    sgl: bool,
    disks: BTreeMap<u32, Disk>,
    /// The admin queue, while enabled.
    admin: Option<AdminState>,
    sqs: BTreeMap<u16, Sq>,
    cqs: BTreeMap<u16, Cq>,
    rules: Vec<Rule>,
    order: Order,
    rng: u64,
    abort_policy: AbortPolicy,
    auto: bool,
    seq: u64,
    stats: MockStats,
    violations: Vec<String>,
    commands: Vec<CommandRecord>,
    deallocated: Vec<(u32, u64, u64)>,
    /// How long each admin command takes ([`MockController::set_admin_latency`]).
    admin_latency: Duration,
}

/// A status with DNR set: the mock's answer to a command it rejects.
fn reject(sct: StatusCodeType, sc: u8) -> Status {
    Status {
        sct: sct.raw(),
        sc,
        crd: 0,
        more: false,
        dnr: true,
    }
}

fn next(i: u16, entries: u16) -> u16 {
    if i + 1 >= entries { 0 } else { i + 1 }
}

fn block_range(sqe: &Sqe) -> (u64, u64) {
    let slba = u64::from(sqe.cdw10.get()) | u64::from(sqe.cdw11.get()) << 32;
    (slba, u64::from(sqe.cdw12.get() & 0xffff) + 1)
}

fn is_block_command(opcode: u8) -> bool {
    opcode == NvmOpcode::Read as u8
        || opcode == NvmOpcode::Write as u8
        || opcode == NvmOpcode::WriteZeroes as u8
}

impl State {
    fn violation(&mut self, what: String) {
        log::warn!("mock controller: {what}");
        self.violations.push(what);
    }

    fn random(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn matches(when: Match, sqe: &Sqe, seq: u64) -> bool {
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
    fn fault_for(&mut self, sqe: &Sqe, seq: u64) -> (Option<Status>, Hold) {
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
    fn fetch(&mut self, qid: u16) -> Result<usize> {
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
    fn tick(&mut self) {
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
    fn complete_ready(&mut self, qid: u16, budget: &mut usize) -> Result<usize> {
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
    fn pass(&mut self, qids: &[u16], mut budget: usize) -> Result<usize> {
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
    fn post(&mut self, cqid: u16, cqe: Cqe) -> Result<()> {
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
    fn cq_head(&mut self, cqid: u16) -> std::result::Result<u16, String> {
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
    fn flush_cq(&mut self, cqid: u16) -> Result<()> {
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
    fn interrupt(&mut self, vector: Option<u16>) {
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
    fn serving(&self) -> bool {
        !self.gone && self.regs.csts & CSTS_CFS == 0 && self.admin.is_some()
    }

    /// The value of a doorbell: from the shadow page once Doorbell Buffer
    /// Config set one up, else the MMIO register.
    fn doorbell_value(&mut self, qid: u16, cq: bool) -> u32 {
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
    fn write_event_idx(&mut self, qid: u16, cq: bool, value: u32) {
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
    fn read_csts(&mut self) -> u32 {
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
    fn set_ready_later(&mut self, ready: bool) {
        self.rdy_pending = Some((ready, self.ready_delay));
        if self.ready_delay == 0 {
            self.read_csts();
        }
    }

    /// A register read of `size` bytes (4 or 8).
    fn read_register(&mut self, offset: usize, size: usize) -> u64 {
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
    fn write_register(&mut self, offset: usize, value: u64, size: usize) -> Result<()> {
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
    fn write_cc(&mut self, value: u32) {
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
    fn enable(&mut self, cc: Cc) {
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
    fn controller_reset(&mut self) {
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

    fn execute(&mut self, qid: u16, cmd: &Cmd) -> Status {
        let sqe = cmd.sqe;
        let mut record = CommandRecord {
            qid,
            cid: sqe.cid(),
            opcode: sqe.opcode,
            nsid: sqe.nsid.get(),
            slba: 0,
            blocks: 0,
            bytes: 0,
            data: DataPointer::None,
            status: Status::SUCCESS,
        };
        if is_block_command(sqe.opcode) {
            (record.slba, record.blocks) = block_range(&sqe);
        }
        let status = match cmd.fail {
            Some(status) => {
                self.stats.injected += 1;
                status
            }
            None => match self.run(&sqe, &mut record) {
                Ok(()) => Status::SUCCESS,
                Err(status) => status,
            },
        };
        record.status = status;
        self.commands.push(record);
        status
    }

    fn disk_range(
        &self,
        nsid: u32,
        slba: u64,
        blocks: u64,
    ) -> std::result::Result<(usize, usize), Status> {
        let disk = self.disks.get(&nsid).ok_or(reject(
            StatusCodeType::Generic,
            generic::INVALID_NAMESPACE_OR_FORMAT,
        ))?;
        if slba.checked_add(blocks).is_none_or(|end| end > disk.blocks) {
            return Err(reject(StatusCodeType::Generic, generic::LBA_OUT_OF_RANGE));
        }
        let lba = u64::from(disk.lba_size);
        Ok(((slba * lba) as usize, (blocks * lba) as usize))
    }

    fn run(&mut self, sqe: &Sqe, record: &mut CommandRecord) -> std::result::Result<(), Status> {
        let nsid = sqe.nsid.get();
        let op = NvmOpcode::from_raw(sqe.opcode);
        match op {
            Some(NvmOpcode::Flush) => {
                if nsid != u32::MAX && !self.disks.contains_key(&nsid) {
                    return Err(reject(
                        StatusCodeType::Generic,
                        generic::INVALID_NAMESPACE_OR_FORMAT,
                    ));
                }
                self.stats.flushes += 1;
                Ok(())
            }
            Some(NvmOpcode::Read | NvmOpcode::Write) => {
                let (slba, blocks) = block_range(sqe);
                let (at, len) = self.disk_range(nsid, slba, blocks)?;
                if len > self.max_transfer {
                    self.violation(format!(
                        "{len}-byte transfer exceeds the {}-byte MDTS",
                        self.max_transfer
                    ));
                    return Err(reject(StatusCodeType::Generic, generic::INVALID_FIELD));
                }
                let segments = self.data_segments(sqe, len, record)?;
                let write = op == Some(NvmOpcode::Write);
                self.transfer(nsid, at, &segments, write)?;
                record.bytes = len;
                self.stats.max_command_bytes = self.stats.max_command_bytes.max(len);
                if write {
                    self.stats.writes += 1;
                } else {
                    self.stats.reads += 1;
                }
                Ok(())
            }
            Some(NvmOpcode::WriteZeroes) => {
                let (slba, blocks) = block_range(sqe);
                let (at, len) = self.disk_range(nsid, slba, blocks)?;
                if let Some(d) = self.disks.get_mut(&nsid) {
                    d.data[at..at + len].fill(0);
                }
                self.stats.write_zeroes += 1;
                Ok(())
            }
            Some(NvmOpcode::DatasetManagement) => {
                let ranges = (sqe.cdw10.get() & 0xff) as usize + 1;
                let deallocate = sqe.cdw11.get() & 4 != 0;
                let segments = self.data_segments(sqe, ranges * 16, record)?;
                let mut raw = vec![0u8; ranges * 16];
                self.gather(&segments, &mut raw)?;
                let parsed: Vec<(u64, u64)> = raw
                    .chunks_exact(16)
                    .filter_map(|c| nvme_spec::DsmRange::read_from_bytes(c).ok())
                    .map(|r| (r.slba.get(), u64::from(r.length.get())))
                    .collect();
                for &(slba, blocks) in &parsed {
                    if blocks == 0 {
                        continue;
                    }
                    self.disk_range(nsid, slba, blocks)?;
                }
                if deallocate {
                    for (slba, blocks) in parsed {
                        if blocks == 0 {
                            continue;
                        }
                        let (at, len) = self.disk_range(nsid, slba, blocks)?;
                        if let Some(d) = self.disks.get_mut(&nsid) {
                            d.data[at..at + len].fill(0);
                        }
                        self.deallocated.push((nsid, slba, blocks));
                    }
                }
                self.stats.dataset_management += 1;
                Ok(())
            }
            _ => Err(reject(StatusCodeType::Generic, generic::INVALID_OPCODE)),
        }
    }

    /// The host memory a command's data pointer names, as (IOVA, length)
    /// runs covering `len` bytes.
    fn data_segments(
        &mut self,
        sqe: &Sqe,
        len: usize,
        record: &mut CommandRecord,
    ) -> std::result::Result<Vec<(u64, usize)>, Status> {
        match sqe.psdt() {
            Sqe::PSDT_PRP => self.prp_segments(sqe, len, record),
            Sqe::PSDT_SGL_MPTR_CONTIGUOUS => {
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&sqe.prp1.get().to_le_bytes());
                bytes[8..].copy_from_slice(&sqe.prp2.get().to_le_bytes());
                let sgl = SglDescriptor::read_from_bytes(&bytes[..]).unwrap_or_default();
                if sgl.descriptor_type() != nvme_spec::sqe::sgl_type::DATA_BLOCK
                    || sgl.subtype() != nvme_spec::sqe::sgl_subtype::ADDRESS
                {
                    self.violation(format!("SGL descriptor of id {:#04x}", sgl.sgl_id));
                    return Err(reject(
                        StatusCodeType::Generic,
                        generic::SGL_DESCRIPTOR_TYPE_INVALID,
                    ));
                }
                if sgl.length.get() as usize != len {
                    self.violation(format!(
                        "SGL of {} bytes for a {len}-byte transfer",
                        sgl.length.get()
                    ));
                    return Err(reject(
                        StatusCodeType::Generic,
                        generic::DATA_SGL_LENGTH_INVALID,
                    ));
                }
                if sgl.address.get() & 3 != 0 {
                    self.violation(format!(
                        "SGL address {:#x} not dword aligned",
                        sgl.address.get()
                    ));
                    return Err(reject(StatusCodeType::Generic, generic::INVALID_FIELD));
                }
                record.data = DataPointer::Sgl;
                self.stats.sgls += 1;
                Ok(vec![(sgl.address.get(), len)])
            }
            psdt => {
                self.violation(format!("PSDT {psdt}"));
                Err(reject(StatusCodeType::Generic, generic::INVALID_FIELD))
            }
        }
    }

    fn prp_segments(
        &mut self,
        sqe: &Sqe,
        len: usize,
        record: &mut CommandRecord,
    ) -> std::result::Result<Vec<(u64, usize)>, Status> {
        let bad_offset = reject(StatusCodeType::Generic, generic::PRP_OFFSET_INVALID);
        let prp1 = sqe.prp1.get();
        if prp1 & 3 != 0 {
            self.violation(format!("PRP1 {prp1:#x} not dword aligned"));
            return Err(bad_offset);
        }
        let first = len.min((PAGE - prp1 % PAGE) as usize);
        let mut segments = vec![(prp1, first)];
        let mut left = len - first;
        record.data = DataPointer::Prp { list_pages: 0 };
        if left == 0 {
            return Ok(segments);
        }
        let prp2 = sqe.prp2.get();
        if left <= PAGE_SIZE {
            if !prp2.is_multiple_of(PAGE) {
                self.violation(format!("PRP2 {prp2:#x} has a page offset"));
                return Err(bad_offset);
            }
            segments.push((prp2, left));
            return Ok(segments);
        }
        if prp2 & 7 != 0 {
            self.violation(format!("PRP list pointer {prp2:#x} not qword aligned"));
            return Err(bad_offset);
        }
        let mut at = prp2;
        let mut list_pages = 1usize;
        let page_limit = len / PAGE_SIZE + 2;
        while left > 0 {
            let mut e = [0u8; 8];
            if let Err(err) = self.dma.read(at, &mut e) {
                self.violation(format!("reading PRP list entry at {at:#x}: {err}"));
                return Err(reject(
                    StatusCodeType::Generic,
                    generic::DATA_TRANSFER_ERROR,
                ));
            }
            let entry = u64::from_le_bytes(e);
            if at % PAGE == PAGE - 8 && left > PAGE_SIZE {
                // The last slot of a list page, with more than one page of
                // data left: a pointer to the next list page.
                list_pages += 1;
                if entry & 7 != 0 || list_pages > page_limit {
                    self.violation(format!("PRP list chain pointer {entry:#x}"));
                    return Err(bad_offset);
                }
                at = entry;
                continue;
            }
            if !entry.is_multiple_of(PAGE) {
                self.violation(format!("PRP list entry {entry:#x} has a page offset"));
                return Err(bad_offset);
            }
            let n = left.min(PAGE_SIZE);
            segments.push((entry, n));
            left -= n;
            at += 8;
        }
        record.data = DataPointer::Prp { list_pages };
        self.stats.prp_lists += 1;
        if list_pages > 1 {
            self.stats.chained_prp_lists += 1;
        }
        Ok(segments)
    }

    /// Copies host memory named by `segments` into `out`.
    fn gather(
        &mut self,
        segments: &[(u64, usize)],
        out: &mut [u8],
    ) -> std::result::Result<(), Status> {
        let mut off = 0;
        for &(iova, n) in segments {
            if let Err(e) = self.dma.read(iova, &mut out[off..off + n]) {
                self.violation(format!("DMA read of {n} bytes at {iova:#x}: {e}"));
                return Err(reject(
                    StatusCodeType::Generic,
                    generic::DATA_TRANSFER_ERROR,
                ));
            }
            off += n;
        }
        Ok(())
    }

    /// Moves data between the disk at byte `at` and host memory.
    fn transfer(
        &mut self,
        nsid: u32,
        at: usize,
        segments: &[(u64, usize)],
        write: bool,
    ) -> std::result::Result<(), Status> {
        let len: usize = segments.iter().map(|s| s.1).sum();
        if write {
            let mut buf = vec![0u8; len];
            self.gather(segments, &mut buf)?;
            if let Some(d) = self.disks.get_mut(&nsid) {
                d.data[at..at + len].copy_from_slice(&buf);
            }
            return Ok(());
        }
        let mut off = at;
        let mut problem = None;
        if let Some(d) = self.disks.get(&nsid) {
            for &(iova, n) in segments {
                if let Err(e) = self.dma.write(iova, &d.data[off..off + n]) {
                    problem = Some(format!("DMA write of {n} bytes at {iova:#x}: {e}"));
                    break;
                }
                off += n;
            }
        }
        match problem {
            None => Ok(()),
            Some(what) => {
                self.violation(what);
                Err(reject(
                    StatusCodeType::Generic,
                    generic::DATA_TRANSFER_ERROR,
                ))
            }
        }
    }

    // ----- admin queue ---------------------------------------------------

    fn admin_doorbell(&mut self) -> Result<()> {
        if self.regs.pci_command & PCI_COMMAND_MASTER == 0 {
            // What a real controller does without bus mastering.
            self.violation("admin doorbell with bus mastering off".into());
            self.regs.csts |= CSTS_CFS;
            return Ok(());
        }
        if self.admin.is_none() {
            self.violation("admin doorbell while the controller is disabled".into());
            return Ok(());
        }
        if !self.serving() {
            return Ok(());
        }
        if !self.admin_latency.is_zero() {
            // The driver holds its admin lock meanwhile, as on a device.
            std::thread::sleep(self.admin_latency);
        }
        let tail = self.doorbell_value(0, false);
        let sq_entries = self.admin.as_ref().map_or(0, |a| a.sq_entries);
        if tail >= u32::from(sq_entries) {
            self.violation(format!("admin SQ tail doorbell {tail} past {sq_entries}"));
            return Ok(());
        }
        while let Some(a) = self.admin.as_mut() {
            if u32::from(a.sq_head) == tail {
                break;
            }
            let at = a.asq + u64::from(a.sq_head) * SQE_BYTES;
            a.sq_head = next(a.sq_head, a.sq_entries);
            let mut bytes = [0u8; 64];
            if let Err(e) = self.dma.read(at, &mut bytes) {
                self.violation(format!("fetching an admin command: {e}"));
                continue;
            }
            let Ok(sqe) = Sqe::read_from_bytes(&bytes) else {
                continue;
            };
            if let Some((status, dw0)) = self.admin_command(&sqe)? {
                self.post_admin(sqe.cid(), status, dw0);
            }
        }
        self.write_event_idx(0, false, tail);
        Ok(())
    }

    /// Posts an admin completion.
    fn post_admin(&mut self, cid: u16, status: Status, dw0: u32) {
        let head = self.doorbell_value(0, true);
        self.write_event_idx(0, true, head);
        let Some(a) = self.admin.as_mut() else {
            return;
        };
        let mut cqe = completion(0, cid, a.sq_head, status, dw0);
        let overflow = u32::from(next(a.cq_tail, a.cq_entries)) == head;
        cqe.status = U16::new(cqe.status.get() | u16::from(a.phase));
        let at = a.acq + u64::from(a.cq_tail) * CQE_BYTES;
        a.cq_tail = next(a.cq_tail, a.cq_entries);
        if a.cq_tail == 0 {
            a.phase = !a.phase;
        }
        if overflow {
            self.violation("admin CQ overflow".into());
        }
        if let Err(e) = write_cqe(&self.dma, at, &cqe) {
            self.violation(format!("posting an admin completion: {e}"));
        }
    }

    /// Writes `data` where an admin command's PRP1 (and PRP2, for a second
    /// page) point.
    fn admin_data_out(&mut self, sqe: &Sqe, data: &[u8]) -> Status {
        let (prp1, prp2) = (sqe.prp1.get(), sqe.prp2.get());
        let first = ((PAGE - prp1 % PAGE) as usize).min(data.len());
        let rest = &data[first..];
        let mut result = self.dma.write(prp1, &data[..first]);
        if result.is_ok() && !rest.is_empty() {
            result = if prp2.is_multiple_of(PAGE) && rest.len() <= PAGE_SIZE {
                self.dma.write(prp2, rest)
            } else {
                Err(Error::BadBuffer(format!("PRP2 {prp2:#x}")))
            };
        }
        match result {
            Ok(()) => Status::SUCCESS,
            Err(e) => {
                self.violation(format!("admin opcode {:#04x}: data: {e}", sqe.opcode));
                reject(StatusCodeType::Generic, generic::DATA_TRANSFER_ERROR)
            }
        }
    }

    /// Identify Controller data.
    fn identify_controller(&self) -> IdentifyController {
        let mut id = IdentifyController::new_zeroed();
        let ascii = |field: &mut [u8], text: &str| {
            field.fill(b' ');
            field[..text.len()].copy_from_slice(text.as_bytes());
        };
        ascii(&mut id.sn, "MOCK-0001");
        ascii(&mut id.mn, "nvme-driver mock controller");
        ascii(&mut id.fr, "1.0");
        id.mdts = self.mdts;
        id.cntlid = U16::new(1);
        id.ver = U32::new(self.regs.vs);
        if self.shadow_supported {
            id.oacs = U16::new(nvme_spec::Oacs::DOORBELL_BUFFER_CONFIG.bits());
        }
        id.aerl = AERL;
        id.sqes = 0x66;
        id.cqes = 0x44;
        id.nn = U32::new(self.disks.keys().copied().max().unwrap_or(0));
        // SGLs supported, no alignment requirement.
        id.sgls = U32::new(u32::from(self.sgl));
        id
    }

    /// Identify (controller, active namespace list, namespace).
    fn identify(&mut self, sqe: &Sqe) -> Status {
        let cns = sqe.cdw10.get() & 0xff;
        let nsid = sqe.nsid.get();
        let mut data = vec![0u8; PAGE_SIZE];
        match nvme_spec::admin::Cns::from_raw(cns as u8) {
            Some(nvme_spec::admin::Cns::Controller) => {
                data.copy_from_slice(self.identify_controller().as_bytes());
            }
            Some(nvme_spec::admin::Cns::ActiveNamespaceList) => {
                for (i, id) in self
                    .disks
                    .keys()
                    .filter(|&&id| id > nsid)
                    .take(1024)
                    .enumerate()
                {
                    data[i * 4..i * 4 + 4].copy_from_slice(&id.to_le_bytes());
                }
            }
            Some(nvme_spec::admin::Cns::Namespace) => {
                let Some(disk) = self.disks.get(&nsid) else {
                    return reject(
                        StatusCodeType::Generic,
                        generic::INVALID_NAMESPACE_OR_FORMAT,
                    );
                };
                let mut id = IdentifyNamespace::new_zeroed();
                id.nsze = disk.blocks.into();
                id.ncap = disk.blocks.into();
                id.nuse = disk.blocks.into();
                id.lbaf[0].lbads = disk.lba_size.trailing_zeros() as u8;
                data.copy_from_slice(id.as_bytes());
            }
            _ => return reject(StatusCodeType::Generic, generic::INVALID_FIELD),
        }
        self.admin_data_out(sqe, &data)
    }

    /// Doorbell Buffer Config: from now on tails and heads come from the
    /// shadow page. As QEMU does, the current doorbells are copied there.
    fn doorbell_buffer_config(&mut self, sqe: &Sqe) -> Status {
        let (shadow, eventidx) = (sqe.prp1.get(), sqe.prp2.get());
        if !self.shadow_supported {
            return reject(StatusCodeType::Generic, generic::INVALID_OPCODE);
        }
        let mut probe = [0u8; PAGE_SIZE];
        let usable = |a: u64| a != 0 && a.is_multiple_of(PAGE);
        if !usable(shadow)
            || !usable(eventidx)
            || self.dma.read(shadow, &mut probe).is_err()
            || self.dma.read(eventidx, &mut probe).is_err()
        {
            self.violation(format!(
                "Doorbell Buffer Config: pages {shadow:#x} / {eventidx:#x} are not mapped pages"
            ));
            return reject(StatusCodeType::Generic, generic::INVALID_FIELD);
        }
        let mut live = vec![0usize, 1];
        for &qid in self.sqs.keys() {
            live.push(2 * usize::from(qid));
        }
        for &qid in self.cqs.keys() {
            live.push(2 * usize::from(qid) + 1);
        }
        for index in live {
            let value = self.regs.doorbells.get(index).copied().unwrap_or(0);
            let _ = self
                .dma
                .write(shadow + 4 * index as u64, &value.to_le_bytes());
        }
        self.dbbuf = Some((shadow, eventidx));
        self.stats.shadow_configs += 1;
        Status::SUCCESS
    }

    /// Runs one admin command: (status, DW0), or None for one that stays
    /// outstanding (an Asynchronous Event Request).
    fn admin_command(&mut self, sqe: &Sqe) -> Result<Option<(Status, u32)>> {
        let cdw10 = sqe.cdw10.get();
        let cdw11 = sqe.cdw11.get();
        let qid = (cdw10 & 0xffff) as u16;
        let size = (cdw10 >> 16) + 1;
        let queue_error = |sc| reject(StatusCodeType::CommandSpecific, sc);
        let ok = (Status::SUCCESS, 0);
        Ok(Some(match AdminOpcode::from_raw(sqe.opcode) {
            Some(AdminOpcode::Identify) => (self.identify(sqe), 0),
            Some(AdminOpcode::DoorbellBufferConfig) => (self.doorbell_buffer_config(sqe), 0),
            Some(AdminOpcode::AsyncEventRequest) => {
                if self.aers.len() > usize::from(AERL) {
                    let limit = command_specific::ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED;
                    (queue_error(limit), 0)
                } else {
                    self.aers.push(sqe.cid());
                    return Ok(None);
                }
            }
            Some(AdminOpcode::CreateIoCq) => {
                if qid == 0 || usize::from(qid) > self.io_queues || self.cqs.contains_key(&qid) {
                    (queue_error(command_specific::INVALID_QUEUE_IDENTIFIER), 0)
                } else if size < 2 || size > self.max_entries {
                    (queue_error(command_specific::INVALID_QUEUE_SIZE), 0)
                } else if cdw11 & 1 == 0 || !sqe.prp1.get().is_multiple_of(PAGE) {
                    self.violation(format!("Create I/O CQ {qid}: not a contiguous page"));
                    (reject(StatusCodeType::Generic, generic::INVALID_FIELD), 0)
                } else if cdw11 & 2 != 0 && cdw11 >> 16 >= self.msix_vectors {
                    let bad = command_specific::INVALID_INTERRUPT_VECTOR;
                    (queue_error(bad), 0)
                } else {
                    self.cqs.insert(
                        qid,
                        Cq {
                            base: sqe.prp1.get(),
                            entries: size as u16,
                            tail: 0,
                            phase: true,
                            vector: (cdw11 & 2 != 0).then_some((cdw11 >> 16) as u16),
                            backlog: VecDeque::new(),
                        },
                    );
                    self.reset_doorbell(2 * usize::from(qid) + 1);
                    ok
                }
            }
            Some(AdminOpcode::CreateIoSq) => {
                let cqid = (cdw11 >> 16) as u16;
                if qid == 0 || usize::from(qid) > self.io_queues || self.sqs.contains_key(&qid) {
                    (queue_error(command_specific::INVALID_QUEUE_IDENTIFIER), 0)
                } else if !self.cqs.contains_key(&cqid) {
                    (queue_error(command_specific::COMPLETION_QUEUE_INVALID), 0)
                } else if size < 2 || size > self.max_entries {
                    (queue_error(command_specific::INVALID_QUEUE_SIZE), 0)
                } else if cdw11 & 1 == 0 || !sqe.prp1.get().is_multiple_of(PAGE) {
                    self.violation(format!("Create I/O SQ {qid}: not a contiguous page"));
                    (reject(StatusCodeType::Generic, generic::INVALID_FIELD), 0)
                } else {
                    self.sqs.insert(
                        qid,
                        Sq {
                            base: sqe.prp1.get(),
                            entries: size as u16,
                            cqid,
                            head: 0,
                            tail: 0,
                            pending: Vec::new(),
                        },
                    );
                    self.reset_doorbell(2 * usize::from(qid));
                    self.stats.queues_created += 1;
                    ok
                }
            }
            Some(AdminOpcode::DeleteIoSq) => match self.sqs.remove(&qid) {
                Some(sq) => {
                    self.stats.queues_deleted += 1;
                    self.stats.dropped_by_delete += sq.pending.len() as u64;
                    ok
                }
                None => (queue_error(command_specific::INVALID_QUEUE_IDENTIFIER), 0),
            },
            Some(AdminOpcode::DeleteIoCq) => {
                if self.sqs.values().any(|sq| sq.cqid == qid) {
                    (queue_error(command_specific::INVALID_QUEUE_DELETION), 0)
                } else if self.cqs.remove(&qid).is_some() {
                    ok
                } else {
                    (queue_error(command_specific::INVALID_QUEUE_IDENTIFIER), 0)
                }
            }
            Some(AdminOpcode::Abort) => {
                self.stats.aborts += 1;
                let cid = (cdw10 >> 16) as u16;
                (Status::SUCCESS, u32::from(!self.abort(qid, cid)?))
            }
            Some(AdminOpcode::SetFeatures | AdminOpcode::GetFeatures) => {
                let fid = cdw10 & 0xff;
                if fid == nvme_spec::FeatureId::NumberOfQueues as u32 {
                    let n = (self.io_queues.max(1) - 1) as u32 & 0xffff;
                    (Status::SUCCESS, n | n << 16)
                } else {
                    ok
                }
            }
            _ => (reject(StatusCodeType::Generic, generic::INVALID_OPCODE), 0),
        }))
    }

    /// A new queue's doorbell starts at 0 (whatever was written to it
    /// while the queue did not exist).
    fn reset_doorbell(&mut self, index: usize) {
        if let Some(d) = self.regs.doorbells.get_mut(index) {
            *d = 0;
        }
        if let Some((shadow, _)) = self.dbbuf {
            let _ = self.dma.write(shadow + 4 * index as u64, &[0; 4]);
        }
    }

    /// Aborts command `cid` of SQ `qid` per the policy; whether it was.
    fn abort(&mut self, qid: u16, cid: u16) -> Result<bool> {
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
        });
        self.stats.aborted += 1;
        self.post(cqid, completion(qid, cid, sq_head, status, 0))?;
        Ok(true)
    }

    /// Flags a tail doorbell write that moves the tail over entries the
    /// mock has not fetched (an SQ overrun: those commands are lost).
    fn check_sq_overrun(&mut self, qid: u16, value: u64) {
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
    fn doorbell(&mut self, offset: usize, value: u64) -> Result<()> {
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
fn completion(qid: u16, cid: u16, sq_head: u16, status: Status, dw0: u32) -> Cqe {
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
fn write_cqe(dma: &HostMemory, at: u64, cqe: &Cqe) -> Result<()> {
    let bytes = cqe.as_bytes();
    dma.write(at, &bytes[..14])?;
    std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
    dma.write(at + 14, &bytes[14..])
}

/// The mock as a device: its BAR0 and, through [`MockBacking`], the rest
/// of the PCI function.
#[derive(Debug)]
struct MockDevice {
    state: Mutex<State>,
    bar_len: usize,
    dma: HostMemory,
    msix_vectors: u32,
}

impl EmulatedBar for MockDevice {
    fn size(&self) -> usize {
        self.bar_len
    }

    fn read32(&self, offset: usize) -> u32 {
        self.state.lock().read_register(offset, 4) as u32
    }

    fn read64(&self, offset: usize) -> u64 {
        self.state.lock().read_register(offset, 8)
    }

    fn write32(&self, offset: usize, value: u32) {
        on_register_write(&self.state, offset, u64::from(value), 4);
    }

    fn write64(&self, offset: usize, value: u64) {
        on_register_write(&self.state, offset, value, 8);
    }
}

/// Acts on a register write (served doorbells included). Kept out of line:
/// `cargo xtask instructions` leaves what it does out of the driver's count.
#[inline(never)]
fn on_register_write(state: &Mutex<State>, offset: usize, value: u64, size: usize) {
    let mut s = state.lock();
    if let Err(e) = s.write_register(offset, value, size) {
        s.violation(format!("serving the write to {offset:#x}: {e}"));
    }
}

/// The address the mock reports.
const MOCK_ADDRESS: PciAddress = PciAddress {
    domain: 0xffff,
    bus: 0xff,
    device: 0x1f,
    function: 7,
};

/// The mock's side of the device boundary.
#[derive(Debug)]
struct MockBacking(Arc<MockDevice>);

impl DeviceBacking for MockBacking {
    fn address(&self) -> PciAddress {
        MOCK_ADDRESS
    }

    fn config_read16(&self, offset: u16) -> Result<u16> {
        let s = self.0.state.lock();
        Ok(match offset {
            _ if s.gone => u16::MAX,
            0 => 0x1b36, // vendor (QEMU's, as the device it imitates)
            2 => 0x0010, // device
            PCI_COMMAND => s.regs.pci_command,
            _ => 0,
        })
    }

    fn config_write16(&self, offset: u16, value: u16) -> Result<()> {
        let mut s = self.0.state.lock();
        if offset == PCI_COMMAND && !s.gone {
            s.regs.pci_command = value;
        }
        Ok(())
    }

    fn map_bar0(&self) -> Result<Bar> {
        Bar::emulated(self.0.clone())
    }

    fn dma(&self) -> DmaMapping {
        self.0.dma.dma_mapping()
    }

    fn msix_vectors(&self) -> u32 {
        self.0.msix_vectors
    }

    fn enable_msix(&self, fds: &[Arc<EventFd>]) -> Result<()> {
        if fds.len() > self.0.msix_vectors as usize {
            return Err(Error::Unsupported(format!(
                "{} MSI-X vectors asked for, the mock has {}",
                fds.len(),
                self.0.msix_vectors
            )));
        }
        self.0.state.lock().irqs = fds.to_vec();
        Ok(())
    }

    fn removal_request(&self) -> Result<Option<Arc<EventFd>>> {
        let fd = EventFd::new(libc::EFD_NONBLOCK)
            .map(Arc::new)
            .map_err(|e| Error::os("creating an eventfd", e))?;
        self.0.state.lock().removal_request = Some(fd.clone());
        Ok(Some(fd))
    }

    fn release(&self) {
        // A released device is gone for the driver: as after a removal,
        // reads are all-ones and nothing is served.
        let mut s = self.0.state.lock();
        s.released = true;
        s.gone = true;
    }
}

/// A mock NVMe controller: BAR0 and in-memory disks, serving the admin
/// queue synchronously and I/O queues when told to. See the module docs.
#[derive(Debug)]
pub struct MockController {
    device: Arc<MockDevice>,
    /// BAR0 as the driver sees it (for tests that play the driver).
    bar: Bar,
    pool: DmaPool,
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

    fn state(&self) -> MutexGuard<'_, State> {
        self.device.state.lock()
    }

    fn qids(&self) -> Vec<u16> {
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

    fn add_rule(&self, when: Match, action: Action, times: u32) {
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

/// Blocks per LBA of the harness namespace, and its size.
const STREAM_LBA: u64 = 512;
const STREAM_BLOCKS: u64 = 256;
const STREAM_MAX_REQUEST_BLOCKS: u64 = 40;
const STREAM_MAX_OUTSTANDING: usize = 12;
const STREAM_QUEUE_ENTRIES: u16 = 8;
/// The harness's I/O timeout: short, so that [`StreamOp::Stall`] reaches
/// Abort and [`StreamOp::StallReset`] a reset (and a long run may time a
/// command out by itself).
const STREAM_IO_TIMEOUT: Duration = Duration::from_millis(20);

/// One step of [`run_cqe_stream`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamOp {
    /// Submit a read or a write of `blocks % 40 + 1` blocks at `slba`
    /// (wrapped into the namespace), unless it overlaps a request still
    /// outstanding or 12 are.
    Submit {
        /// Write (else read).
        write: bool,
        /// First block, before wrapping.
        slba: u16,
        /// Block count, before wrapping.
        blocks: u8,
    },
    /// Ring, let the mock fetch, post these bytes as the next completion
    /// entry, and poll until the completion queue is drained.
    Raw([u8; 16]),
    /// Like [`StreamOp::Raw`], for a well-formed entry with the phase the
    /// slot expects, CID `cid % 16`, SQ head `sq_head % 16` and this status
    /// word: likely to name a command in flight.
    Cqe {
        /// CID, before wrapping.
        cid: u8,
        /// SQ head, before wrapping.
        sq_head: u8,
        /// Status word (bits 15:1 as in a CQE).
        status: u16,
    },
    /// Let the mock complete up to this many commands properly, then poll.
    Complete(u8),
    /// The next command fetched fails with this status word (bits 15:1 as
    /// in a CQE; a success status is ignored).
    Fail(u16),
    /// Poll until drained.
    Poll,
    /// Let every command in flight be fetched, wait past the I/O timeout
    /// and poll until the deadlines are scanned: what is still in flight
    /// is aborted (the mock aborts it, or it is given up on). Only the
    /// first stall of a run waits; later ones poll.
    Stall,
    /// Like [`StreamOp::Stall`], with the mock refusing every Abort: a
    /// command not back 2 s after its Abort makes the driver reset the
    /// controller, re-create the queue and resubmit what was in flight.
    StallReset,
}

impl StreamOp {
    /// Decodes fuzzer bytes into steps. Every byte string decodes.
    pub fn decode(bytes: &[u8]) -> Vec<StreamOp> {
        let mut ops = Vec::new();
        let mut it = bytes.iter().copied();
        while let Some(tag) = it.next() {
            let mut byte = || it.next().unwrap_or(0);
            let op = match tag % 8 {
                0 | 1 => StreamOp::Submit {
                    write: tag & 0x80 != 0,
                    slba: u16::from_le_bytes([byte(), byte()]),
                    blocks: byte(),
                },
                2 => {
                    let mut raw = [0u8; 16];
                    raw.iter_mut().for_each(|b| *b = byte());
                    StreamOp::Raw(raw)
                }
                3 => StreamOp::Cqe {
                    cid: byte(),
                    sq_head: byte(),
                    status: u16::from_le_bytes([byte(), byte()]),
                },
                4 | 5 => StreamOp::Complete(byte()),
                6 => StreamOp::Fail(u16::from_le_bytes([byte(), byte()])),
                // Rare: a stall costs two timeouts of wall-clock time.
                _ if tag == 0xff => StreamOp::Stall,
                // Rarer: it waits 2 s more (the abort grace).
                _ if tag == 0xf7 && byte() == 0xf7 => StreamOp::StallReset,
                _ => StreamOp::Poll,
            };
            ops.push(op);
        }
        ops
    }
}

/// What a [`run_cqe_stream`] run saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamReport {
    /// Requests submitted.
    pub submitted: usize,
    /// Requests handed back by poll.
    pub completed: usize,
    /// Of those, with an error result.
    pub failed: usize,
    /// Polls that returned [`Error::BadDevice`].
    pub bad_device: usize,
    /// Raw entries the driver could see.
    pub raw_visible: usize,
    /// Raw entries that completed a pending command.
    pub raw_completed: usize,
    /// Requests whose data was checked against the disk.
    pub data_checked: usize,
    /// Abort commands the driver sent.
    pub aborts: u64,
    /// Requests given up on (a command that did not come back after Abort).
    pub given_up: usize,
    /// Controller resets (CC.EN 1 -> 0) the mock saw.
    pub resets: u64,
}

#[derive(Debug)]
struct StreamRequest {
    write: bool,
    slba: u64,
    blocks: u64,
    /// A raw entry completed one of its commands: its data is not checked.
    tainted: bool,
}

fn stream_pattern(tag: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (tag as u8).wrapping_mul(37) ^ (i as u8) ^ ((i >> 8) as u8).wrapping_mul(11))
        .collect()
}

struct Stream {
    mock: MockController,
    qpair: IoQPair,
    outstanding: BTreeMap<u64, StreamRequest>,
    seen: HashSet<u64>,
    next_tag: u64,
    report: StreamReport,
    stalled: bool,
    /// Block ranges of writes given up on: the device may still write them.
    lost: Vec<(u64, u64)>,
}

type StreamResult<T> = std::result::Result<T, String>;

impl Stream {
    fn submit(&mut self, write: bool, slba: u16, blocks: u8) -> StreamResult<()> {
        let blocks = u64::from(blocks) % STREAM_MAX_REQUEST_BLOCKS + 1;
        let slba = u64::from(slba) % (STREAM_BLOCKS - blocks + 1);
        let overlaps = self
            .outstanding
            .values()
            .any(|r| r.slba < slba + blocks && slba < r.slba + r.blocks);
        if overlaps || self.outstanding.len() >= STREAM_MAX_OUTSTANDING {
            return Ok(());
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        let len = (blocks * STREAM_LBA) as usize;
        let buf = self.mock.pool().alloc(len).map_err(|e| e.to_string())?;
        let req = if write {
            buf.write(0, &stream_pattern(tag, len))
                .map_err(|e| e.to_string())?;
            IoRequest::write(1, slba, blocks, buf)
        } else {
            IoRequest::read(1, slba, blocks, buf)
        };
        self.qpair
            .submit(req.with_tag(tag))
            .map_err(|r| format!("request rejected: {r}"))?;
        self.outstanding.insert(
            tag,
            StreamRequest {
                write,
                slba,
                blocks,
                tainted: false,
            },
        );
        self.report.submitted += 1;
        Ok(())
    }

    /// Polls until a poll succeeds (each failing one consumes an entry).
    fn drain(&mut self) -> StreamResult<()> {
        let limit = 4 * usize::from(STREAM_QUEUE_ENTRIES) + 8;
        for _ in 0..limit {
            let mut out = Vec::new();
            let polled = self.qpair.poll(&mut out);
            if polled.is_err() && !out.is_empty() {
                return Err("poll failed but handed back completions".into());
            }
            for c in out {
                self.check(c)?;
            }
            match polled {
                Ok(_) => return Ok(()),
                Err(Error::BadDevice(_)) => self.report.bad_device += 1,
                Err(e) => return Err(format!("poll failed: {e}")),
            }
        }
        Err("poll keeps failing".into())
    }

    fn check(&mut self, c: IoCompletion) -> StreamResult<()> {
        if !self.seen.insert(c.tag) {
            return Err(format!("request {} completed twice", c.tag));
        }
        let r = self
            .outstanding
            .remove(&c.tag)
            .ok_or_else(|| format!("completion for unknown request {}", c.tag))?;
        self.report.completed += 1;
        if c.data.is_none() && matches!(c.result, Err(Error::CommandTimeout { .. })) {
            // Given up on: the device may still write the buffer, or the
            // disk if it was a write.
            self.report.failed += 1;
            self.report.given_up += 1;
            if r.write {
                self.lost.push((r.slba, r.blocks));
            }
            return Ok(());
        }
        let buf = c
            .data
            .ok_or_else(|| format!("request {} came back without its buffer", c.tag))?;
        if c.result.is_err() {
            self.report.failed += 1;
            return Ok(());
        }
        let overlaps_lost =
            |&(slba, blocks): &(u64, u64)| slba < r.slba + r.blocks && r.slba < slba + blocks;
        if r.tainted || self.lost.iter().any(overlaps_lost) {
            return Ok(());
        }
        let disk = self
            .mock
            .read_disk(1, r.slba, r.blocks)
            .map_err(|e| e.to_string())?;
        let want = if r.write {
            stream_pattern(c.tag, disk.len())
        } else {
            let mut got = vec![0u8; disk.len()];
            buf.read(0, &mut got).map_err(|e| e.to_string())?;
            got
        };
        if want != disk {
            return Err(format!(
                "{} {} blocks at {}: data differs from the disk",
                if r.write { "write" } else { "read" },
                r.blocks,
                r.slba
            ));
        }
        self.report.data_checked += 1;
        Ok(())
    }

    fn raw(&mut self, raw: Option<[u8; 16]>, cqe: (u8, u8, u16)) -> StreamResult<()> {
        self.qpair.ring().map_err(|e| e.to_string())?;
        self.mock.fetch().map_err(|e| e.to_string())?;
        let qid = self.qpair.qid();
        let (cid, sq_head, word) = cqe;
        let posted = match raw {
            Some(raw) => self.mock.post_raw_cqe(qid, raw),
            None => self.mock.post_cqe(
                qid,
                u16::from(cid % 16),
                u16::from(sq_head % 16),
                Status::from_cqe_status(word),
            ),
        };
        match posted.map_err(|e| e.to_string())? {
            RawCqe::NoRoom | RawCqe::Invisible => {}
            RawCqe::Stray => self.report.raw_visible += 1,
            RawCqe::Completed(cmd) => {
                self.report.raw_visible += 1;
                self.report.raw_completed += 1;
                let owner = self
                    .outstanding
                    .values_mut()
                    .find(|r| r.slba <= cmd.slba && cmd.slba < r.slba + r.blocks)
                    .ok_or_else(|| {
                        format!("raw entry completed a command of no request: {cmd:?}")
                    })?;
                owner.tainted = true;
            }
        }
        self.drain()
    }

    fn step(&mut self, op: &StreamOp) -> StreamResult<()> {
        match *op {
            StreamOp::Submit {
                write,
                slba,
                blocks,
            } => self.submit(write, slba, blocks)?,
            StreamOp::Raw(raw) => self.raw(Some(raw), (0, 0, 0))?,
            StreamOp::Cqe {
                cid,
                sq_head,
                status,
            } => self.raw(None, (cid, sq_head, status))?,
            StreamOp::Complete(n) => {
                self.mock
                    .process_limit(usize::from(n))
                    .map_err(|e| e.to_string())?;
                self.drain()?;
            }
            StreamOp::Fail(word) => {
                let status = Status::from_cqe_status(word & !1);
                if !status.is_success() {
                    self.mock.fail_next(Match::Any, status, 1);
                }
            }
            StreamOp::Poll => self.drain()?,
            StreamOp::Stall | StreamOp::StallReset if self.stalled => self.drain()?,
            StreamOp::Stall | StreamOp::StallReset => {
                self.stalled = true;
                if *op == StreamOp::StallReset {
                    self.mock.set_abort_policy(AbortPolicy::Refuse);
                }
                for _ in 0..2 {
                    // Everything in flight is pending in the mock (so Abort
                    // finds it), then two deadline scans a timeout apart.
                    self.qpair.ring().map_err(|e| e.to_string())?;
                    self.mock.fetch().map_err(|e| e.to_string())?;
                    self.drain()?;
                    std::thread::sleep(STREAM_IO_TIMEOUT + STREAM_IO_TIMEOUT / 4);
                    for _ in 0..2 * crate::qpair::CLOCK_POLLS {
                        self.drain()?;
                    }
                }
                self.mock.set_abort_policy(AbortPolicy::Abort);
            }
        }
        if self.qpair.outstanding() != self.outstanding.len() {
            return Err(format!(
                "queue pair reports {} outstanding, {} were submitted and not handed back",
                self.qpair.outstanding(),
                self.outstanding.len()
            ));
        }
        Ok(())
    }

    fn finish(&mut self) -> StreamResult<()> {
        self.mock.clear_faults();
        for _ in 0..256 {
            if self.outstanding.is_empty() {
                break;
            }
            self.mock.release_held();
            self.qpair.ring().map_err(|e| e.to_string())?;
            self.mock.process().map_err(|e| e.to_string())?;
            self.drain()?;
        }
        if !self.outstanding.is_empty() {
            return Err(format!(
                "{} requests never completed (queue pair: {} outstanding; mock: {} pending)",
                self.outstanding.len(),
                self.qpair.outstanding(),
                self.mock.pending().len()
            ));
        }
        let violations = self.mock.violations();
        if !violations.is_empty() {
            return Err(format!("protocol violations: {violations:?}"));
        }
        Ok(())
    }
}

/// Runs `ops` against one queue pair of a fresh mock (one namespace of
/// 256 512-byte blocks, 8 KiB MDTS, an 8-entry queue, 2 retries, a 20 ms
/// I/O timeout: Abort, then a controller reset) and checks, after every step: poll
/// hands back no request twice and none that was not submitted,
/// [`IoQPair::outstanding`] equals what was submitted and not handed back,
/// every completion carries its buffer unless its request was given up on
/// after a timeout, and the data of every successful request none of whose
/// commands a raw entry completed, and that overlaps no write given up on,
/// matches the disk; and at the end, once the mock completes
/// everything properly, that every request completes and the driver broke
/// no protocol rule. Returns what it saw, or the first broken property.
pub fn run_cqe_stream(ops: &[StreamOp]) -> std::result::Result<StreamReport, String> {
    let config = MockConfig {
        namespaces: vec![MockNamespace {
            nsid: 1,
            lba_size: STREAM_LBA as u32,
            blocks: STREAM_BLOCKS,
        }],
        max_transfer: 8 << 10,
        io_queues: 1,
        // Bring-up is not what this harness is about: no waiting on RDY.
        ready_delay: 0,
        options: Options {
            admin_queue_entries: 4,
            io_queue_entries: STREAM_QUEUE_ENTRIES,
            prefer_huge_pages: false,
            io_timeout: STREAM_IO_TIMEOUT,
            reset_on_timeout: true,
            retries: 2,
            ..Options::default()
        },
        ..MockConfig::default()
    };
    let (mock, qpair) = MockController::with_qpair(config).map_err(|e| e.to_string())?;
    let mut stream = Stream {
        mock,
        qpair,
        outstanding: BTreeMap::new(),
        seen: HashSet::new(),
        next_tag: 0,
        report: StreamReport::default(),
        stalled: false,
        lost: Vec::new(),
    };
    for op in ops {
        stream.step(op)?;
    }
    stream.finish()?;
    stream.report.aborts = stream.mock.stats().aborts;
    stream.report.resets = stream.mock.stats().resets;
    Ok(stream.report)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use nvme_spec::status::media;
    use proptest::prelude::*;

    use nvme_spec::Csts;

    use super::*;
    use crate::qpair::{IoOp, RecoveryCause, RecoveryOutcome};

    const NS: u32 = 1;
    const LBA: usize = 512;

    fn config(io_entries: u16, max_transfer: usize, blocks: u64) -> MockConfig {
        MockConfig {
            namespaces: vec![MockNamespace {
                nsid: NS,
                lba_size: LBA as u32,
                blocks,
            }],
            max_transfer,
            options: Options {
                admin_queue_entries: 8,
                io_queue_entries: io_entries,
                prefer_huge_pages: false,
                ..Options::default()
            },
            ..MockConfig::default()
        }
    }

    fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// Polls, letting the mock process between polls, until `n` requests
    /// have completed; fails the test if they do not.
    fn complete(mock: &MockController, qp: &mut IoQPair, n: usize) -> Vec<IoCompletion> {
        let mut out = Vec::new();
        for _ in 0..100_000 {
            qp.poll(&mut out).expect("poll");
            if out.len() >= n {
                break;
            }
            mock.process().expect("mock processing");
        }
        assert_eq!(out.len(), n, "requests completed");
        out
    }

    fn write_request(mock: &MockController, slba: u64, data: &[u8], offset: usize) -> IoRequest {
        let buf = mock.pool().alloc(offset + data.len()).expect("buffer");
        buf.write(offset, data).expect("fill buffer");
        IoRequest::write(NS, slba, (data.len() / LBA) as u64, buf).with_offset(offset)
    }

    fn read_request(mock: &MockController, slba: u64, len: usize, offset: usize) -> IoRequest {
        let buf = mock.pool().alloc(offset + len).expect("buffer");
        IoRequest::read(NS, slba, (len / LBA) as u64, buf).with_offset(offset)
    }

    /// Writes `data` at `slba`, reads it back through another buffer
    /// offset, and returns what was read.
    fn round_trip(
        mock: &MockController,
        qp: &mut IoQPair,
        slba: u64,
        data: &[u8],
        offsets: (usize, usize),
    ) -> Vec<u8> {
        qp.submit(write_request(mock, slba, data, offsets.0).with_tag(1))
            .expect("write accepted");
        let w = complete(mock, qp, 1);
        assert_eq!(w[0].tag, 1);
        assert_eq!(w[0].op, IoOp::Write);
        w[0].result.as_ref().expect("write succeeds");
        assert!(w[0].data.is_some(), "buffer handed back");
        qp.submit(read_request(mock, slba, data.len(), offsets.1).with_tag(2))
            .expect("read accepted");
        let mut r = complete(mock, qp, 1);
        let r = r.pop().expect("one completion");
        assert_eq!((r.tag, r.op, r.slba), (2, IoOp::Read, slba));
        r.result.expect("read succeeds");
        let mut back = vec![0u8; data.len()];
        r.data
            .expect("buffer handed back")
            .read(offsets.1, &mut back)
            .expect("copy out");
        back
    }

    fn no_violations(mock: &MockController) {
        assert_eq!(mock.violations(), Vec::<String>::new());
    }

    #[test]
    fn a_stalled_device_never_sees_its_sq_overrun() {
        // The driver keeps the SQ from overflowing by its CIDs alone (the
        // SQ head in completions is not tracked): with a device that
        // fetches nothing, a 4-entry queue holds 3 commands and the rest
        // wait; once the device catches up, every request completes.
        let (mock, mut qp) = MockController::with_qpair(config(4, 64 << 10, 1024)).expect("mock");
        for tag in 0..10u64 {
            qp.submit(read_request(&mock, tag, LBA, 0).with_tag(tag))
                .expect("accepted");
        }
        qp.ring().expect("ring");
        assert_eq!(qp.outstanding(), 10);
        let done = complete(&mock, &mut qp, 10);
        assert_eq!(done.len(), 10);
        no_violations(&mock);
    }

    #[test]
    fn the_mock_flags_an_sq_overrun() {
        let (mock, qp) = MockController::with_qpair(config(4, 64 << 10, 1024)).expect("mock");
        let qid = qp.qid();
        let ring = |tail: u32| {
            mock.bar
                .write32(doorbell_offset(qid, DoorbellKind::SqTail, DSTRD), tail)
                .expect("doorbell");
        };
        // Three entries posted and not fetched: the ring is full.
        ring(3);
        no_violations(&mock);
        // One more moves the tail onto the unfetched head.
        ring(0);
        let v = mock.violations();
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("overrun"), "{v:?}");
    }

    #[test]
    fn write_then_read_back_at_various_sizes_and_offsets() {
        let (mock, mut qp) = MockController::with_qpair(config(16, 128 << 10, 4096)).expect("mock");
        let cases = [
            (0u64, 1usize, (0usize, 0usize)),
            (1, 1, (4, 8)),
            (7, 3, (512, 4092)),
            (100, 8, (4092, 0)),
            (33, 17, (2048, 1024)),
            (500, 64, (0, 3000)),
            (1000, 129, (8, 4)),
            (2000, 256, (0, 0)),
            (4095, 1, (4088, 12)),
        ];
        for (i, &(slba, blocks, offsets)) in cases.iter().enumerate() {
            let data = random_bytes(i as u64 + 1, blocks * LBA);
            let back = round_trip(&mock, &mut qp, slba, &data, offsets);
            assert_eq!(
                back, data,
                "slba {slba} blocks {blocks} offsets {offsets:?}"
            );
            assert_eq!(
                mock.read_disk(NS, slba, blocks as u64).expect("disk"),
                data,
                "disk at {slba}"
            );
        }
        assert_eq!(qp.outstanding(), 0);
        assert_eq!(mock.stats().writes, cases.len() as u64);
        no_violations(&mock);
    }

    #[test]
    fn segment_requests_move_data_between_separate_buffers() {
        // MDTS 16 KiB: the 28 KiB write is split, and children start and
        // end inside pieces.
        let (mock, mut qp) = MockController::with_qpair(config(8, 16 << 10, 1024)).expect("mock");
        let sizes = [12288usize, 4096, 12288];
        let bufs: Vec<crate::DmaBuffer> = sizes
            .iter()
            .map(|&n| mock.pool().alloc(n + 4096).expect("alloc"))
            .collect();
        // The first piece starts 2 KiB into its buffer (allowed for the first).
        let mut segs = vec![(bufs[0].iova() + 2048, sizes[0] - 2048)];
        segs.extend(
            bufs[1..]
                .iter()
                .zip(&sizes[1..])
                .map(|(b, &n)| (b.iova() + 4096, n)),
        );
        let data = random_bytes(77, segs.iter().map(|s| s.1).sum());
        let mut at = 0;
        for (i, (buf, &(_, len))) in bufs.iter().zip(&segs).enumerate() {
            let off = if i == 0 { 2048 } else { 4096 };
            buf.write(off, &data[at..at + len]).expect("fill");
            at += len;
        }
        let blocks = (data.len() / LBA) as u64;
        // Pieces of separate DMA buffers, as the page cache hands folios over.
        let pieces = crate::IoSegments::with_owner(segs, bufs);
        qp.submit(IoRequest::write_segments(NS, 40, blocks, pieces).with_tag(5))
            .expect("accepted");
        let mut done = complete(&mock, &mut qp, 1);
        let w = done.pop().expect("one completion");
        w.result.expect("write succeeds");
        assert!(w.segments.is_some(), "segments handed back");
        assert!(mock.stats().writes >= 2, "split by MDTS");
        assert_eq!(mock.read_disk(NS, 40, blocks).expect("disk"), data);
        no_violations(&mock);

        // Illegal pieces are refused at submit, with the request handed back.
        let b = mock.pool().alloc(8192).expect("alloc");
        let bad = crate::IoSegments::with_owner(vec![(b.iova(), 512), (b.iova() + 4096, 512)], b);
        let rejected = qp
            .submit(IoRequest::read_segments(NS, 0, 2, bad))
            .expect_err("first piece ends mid-page");
        assert!(
            rejected
                .to_string()
                .contains("a gap is only legal between page boundaries"),
            "{rejected}"
        );
        assert!(rejected.request.segments.is_some());
    }

    #[test]
    fn blocking_helpers_work_when_the_mock_serves_doorbells() {
        let (mock, mut qp) = MockController::with_qpair(config(8, 16 << 10, 1024)).expect("mock");
        mock.set_auto(true);
        let data = random_bytes(9, 40 * LBA);
        qp.write(NS, 10, &data).expect("write");
        let mut back = vec![0u8; data.len()];
        qp.read(NS, 10, &mut back).expect("read");
        assert_eq!(back, data);
        qp.write_zeroes(NS, 12, 2).expect("write zeroes");
        qp.deallocate(NS, 20, 3).expect("deallocate");
        qp.flush(NS).expect("flush");
        qp.read(NS, 10, &mut back).expect("read");
        let mut want = data.clone();
        want[2 * LBA..4 * LBA].fill(0);
        want[10 * LBA..13 * LBA].fill(0);
        assert_eq!(back, want);
        let s = mock.stats();
        assert_eq!((s.write_zeroes, s.dataset_management, s.flushes), (1, 1, 1));
        // 40 blocks of 512 bytes with a 16 KiB limit: 2 commands each way.
        assert_eq!((s.writes, s.reads), (2, 4));
        no_violations(&mock);
    }

    #[test]
    fn requests_larger_than_mdts_are_split_and_complete_once() {
        let (mock, mut qp) = MockController::with_qpair(config(16, 8 << 10, 1024)).expect("mock");
        let data = random_bytes(3, 200 * LBA);
        qp.submit(write_request(&mock, 5, &data, 0).with_tag(7))
            .expect("accepted");
        let done = complete(&mock, &mut qp, 1);
        assert_eq!(done[0].tag, 7);
        done[0].result.as_ref().expect("write succeeds");
        // Nothing else comes back, however long we poll.
        let mut more = Vec::new();
        for _ in 0..10 {
            mock.process().expect("process");
            qp.poll(&mut more).expect("poll");
        }
        assert!(more.is_empty(), "completed twice: {more:?}");
        assert_eq!(qp.outstanding(), 0);
        let cmds = mock.commands();
        assert_eq!(cmds.len(), 13, "200 blocks in 16-block commands");
        let mut next_lba = 5;
        for c in &cmds {
            assert_eq!(c.slba, next_lba, "commands cover the range in order");
            assert!(c.blocks <= 16 && c.bytes <= 8 << 10, "{c:?}");
            next_lba += c.blocks;
        }
        assert_eq!(next_lba, 205);
        assert_eq!(mock.read_disk(NS, 5, 200).expect("disk"), data);
        no_violations(&mock);
    }

    #[test]
    fn tiny_queue_with_many_large_requests_does_not_deadlock() {
        let (mock, mut qp) = MockController::with_qpair(config(4, 8 << 10, 4096)).expect("mock");
        assert_eq!(qp.depth(), 4);
        mock.set_order(Order::Random(42));
        let n = 24u64;
        let blocks = 128u64; // 64 KiB: 8 commands each
        let data: Vec<Vec<u8>> = (0..n)
            .map(|i| random_bytes(100 + i, blocks as usize * LBA))
            .collect();
        for (i, d) in data.iter().enumerate() {
            let req = write_request(&mock, i as u64 * blocks, d, 4 * i);
            qp.submit(req.with_tag(i as u64)).expect("accepted");
        }
        assert_eq!(qp.outstanding(), n as usize);
        let mut done = complete(&mock, &mut qp, n as usize);
        done.sort_by_key(|c| c.tag);
        for (i, c) in done.iter().enumerate() {
            assert_eq!(c.tag, i as u64);
            c.result.as_ref().expect("write succeeds");
        }
        for i in 0..n {
            qp.submit(read_request(&mock, i * blocks, blocks as usize * LBA, 0).with_tag(i))
                .expect("accepted");
        }
        for c in complete(&mock, &mut qp, n as usize) {
            let mut back = vec![0u8; blocks as usize * LBA];
            c.data.expect("buffer").read(0, &mut back).expect("copy");
            assert_eq!(back, data[c.tag as usize], "request {}", c.tag);
        }
        assert_eq!(mock.stats().writes, n * 8);
        assert_eq!(qp.outstanding(), 0);
        no_violations(&mock);
    }

    #[test]
    fn prp_lists_describe_transfers_of_more_than_two_pages() {
        let (mock, mut qp) = MockController::with_qpair(config(16, 128 << 10, 4096)).expect("mock");
        for (i, &(blocks, offset)) in [(128usize, 0usize), (24, 512), (17, 4092)]
            .iter()
            .enumerate()
        {
            let data = random_bytes(40 + i as u64, blocks * LBA);
            let back = round_trip(&mock, &mut qp, 64, &data, (offset, offset));
            assert_eq!(back, data);
        }
        let cmds = mock.commands();
        assert_eq!(cmds.len(), 6);
        for c in &cmds {
            assert_eq!(c.data, DataPointer::Prp { list_pages: 1 }, "{c:?}");
        }
        assert_eq!(mock.stats().prp_lists, 6);
        assert_eq!(mock.stats().chained_prp_lists, 0);
        no_violations(&mock);
    }

    #[test]
    fn chained_prp_lists_carry_transfers_of_more_than_512_pages() {
        let blocks = 16384; // 8 MiB
        let (mock, mut qp) = MockController::with_qpair(config(16, 8 << 20, blocks)).expect("mock");
        // 4 MiB + 1.5 KiB from a page offset: 1026 pages, 1025 list entries.
        let data = random_bytes(77, (4 << 20) + 3 * LBA);
        let back = round_trip(&mock, &mut qp, 1000, &data, (1024, 2048));
        assert!(back == data, "data read back differs");
        let cmds = mock.commands();
        assert_eq!(cmds.len(), 2, "one command each way: {cmds:?}");
        for c in &cmds {
            assert_eq!(c.data, DataPointer::Prp { list_pages: 3 }, "{c:?}");
            assert_eq!(c.bytes, data.len());
        }
        assert_eq!(mock.stats().chained_prp_lists, 2);
        no_violations(&mock);
    }

    #[test]
    fn sgl_mode_moves_the_same_data() {
        let mut cfg = config(8, 16 << 10, 2048);
        cfg.options.use_sgl = true;
        let (mock, mut qp) = MockController::with_qpair(cfg).expect("mock");
        for (i, &(blocks, offsets)) in
            [(1usize, (0usize, 4usize)), (24, (512, 4092)), (100, (8, 0))]
                .iter()
                .enumerate()
        {
            let data = random_bytes(60 + i as u64, blocks * LBA);
            assert_eq!(round_trip(&mock, &mut qp, 300, &data, offsets), data);
        }
        let s = mock.stats();
        assert!(s.sgls > 0);
        assert_eq!(s.sgls, s.reads + s.writes, "every transfer used an SGL");
        assert_eq!(s.prp_lists, 0);
        assert!(mock.commands().iter().all(|c| c.data == DataPointer::Sgl));
        no_violations(&mock);
    }

    #[test]
    fn retryable_status_is_retried_then_succeeds() {
        let mut cfg = config(8, 128 << 10, 1024);
        cfg.options.retries = 3;
        let (mock, mut qp) = MockController::with_qpair(cfg).expect("mock");
        let transient = Status::generic(generic::DATA_TRANSFER_ERROR);
        assert!(transient.is_retryable());
        mock.fail_next(Match::Opcode(NvmOpcode::Write), transient, 2);
        let data = random_bytes(5, 8 * LBA);
        assert_eq!(round_trip(&mock, &mut qp, 0, &data, (0, 0)), data);
        let writes: Vec<Status> = mock
            .commands()
            .iter()
            .filter(|c| c.opcode == NvmOpcode::Write as u8)
            .map(|c| c.status)
            .collect();
        assert_eq!(writes, vec![transient, transient, Status::SUCCESS]);
        no_violations(&mock);
    }

    #[test]
    fn retries_stop_at_the_configured_count() {
        let mut cfg = config(8, 128 << 10, 1024);
        cfg.options.retries = 2;
        let (mock, mut qp) = MockController::with_qpair(cfg).expect("mock");
        let transient = Status::generic(generic::COMMAND_INTERRUPTED);
        mock.fail_next(Match::Any, transient, 100);
        qp.submit(read_request(&mock, 0, 4 * LBA, 0))
            .expect("accepted");
        let done = complete(&mock, &mut qp, 1);
        match &done[0].result {
            Err(Error::Command { status, .. }) => assert_eq!(*status, transient),
            other => panic!("expected the transient status, got {other:?}"),
        }
        assert_eq!(mock.stats().injected, 3, "first try and two retries");
        no_violations(&mock);
    }

    #[test]
    fn a_fatal_error_fails_a_split_request_once_with_its_first_error() {
        let (mock, mut qp) = MockController::with_qpair(config(16, 8 << 10, 1024)).expect("mock");
        let unrecovered = reject(
            StatusCodeType::MediaAndDataIntegrity,
            media::UNRECOVERED_READ_ERROR,
        );
        let fault = reject(StatusCodeType::MediaAndDataIntegrity, media::WRITE_FAULT);
        mock.fail_next(Match::Lba(20), unrecovered, 1);
        mock.fail_next(Match::Lba(40), fault, 1);
        // 64 blocks in 16-block commands: the 2nd and 3rd fail.
        qp.submit(read_request(&mock, 0, 64 * LBA, 0).with_tag(3))
            .expect("accepted");
        let done = complete(&mock, &mut qp, 1);
        assert_eq!(done[0].tag, 3);
        match &done[0].result {
            Err(Error::Command { status, command }) => {
                assert_eq!(*status, unrecovered, "the first error wins");
                assert!(command.contains("Read"), "{command}");
            }
            other => panic!("expected a media error, got {other:?}"),
        }
        assert!(done[0].data.is_some());
        let mut more = Vec::new();
        for _ in 0..10 {
            mock.process().expect("process");
            qp.poll(&mut more).expect("poll");
        }
        assert!(more.is_empty(), "completed twice: {more:?}");
        assert_eq!(qp.outstanding(), 0);
        // Media errors are not retried.
        assert_eq!(mock.stats().injected, 2);
        assert_eq!(
            mock.commands().iter().filter(|c| c.slba == 16).count(),
            1,
            "no retry of the failed command"
        );
        no_violations(&mock);
    }

    #[test]
    fn write_zeroes_and_deallocate_reach_the_disk_and_flush_completes() {
        let mut cfg = config(16, 128 << 10, 1024);
        cfg.namespaces.push(MockNamespace {
            nsid: 2,
            lba_size: 512,
            blocks: 70_000,
        });
        let (mock, mut qp) = MockController::with_qpair(cfg).expect("mock");
        let data = random_bytes(11, 64 * LBA);
        qp.submit(write_request(&mock, 100, &data, 0))
            .expect("accepted");
        complete(&mock, &mut qp, 1)[0]
            .result
            .as_ref()
            .expect("write");
        mock.write_disk(2, 69_990, &[0xaa; 10 * LBA]).expect("disk");
        for req in [
            IoRequest::write_zeroes(NS, 110, 10).with_tag(1),
            IoRequest::deallocate(NS, 130, 5).with_tag(2),
            IoRequest::flush(NS).with_tag(3),
            IoRequest::write_zeroes(2, 0, 70_000).with_tag(4),
        ] {
            qp.submit(req).expect("accepted");
        }
        let mut done = complete(&mock, &mut qp, 4);
        done.sort_by_key(|c| c.tag);
        for c in &done {
            c.result.as_ref().expect("succeeds");
            assert!(c.data.is_none(), "no buffer");
        }
        let mut want = data;
        want[10 * LBA..20 * LBA].fill(0);
        want[30 * LBA..35 * LBA].fill(0);
        assert_eq!(mock.read_disk(NS, 100, 64).expect("disk"), want);
        assert_eq!(mock.deallocated(), vec![(NS, 130, 5)]);
        assert_eq!(
            mock.read_disk(2, 69_990, 10).expect("disk"),
            vec![0; 10 * LBA]
        );
        let s = mock.stats();
        assert_eq!((s.flushes, s.dataset_management), (1, 1));
        assert_eq!(s.write_zeroes, 3, "70000 blocks take two commands");
        let big: Vec<(u64, u64)> = mock
            .commands()
            .iter()
            .filter(|c| c.nsid == 2)
            .map(|c| (c.slba, c.blocks))
            .collect();
        assert_eq!(big, vec![(0, 65_536), (65_536, 4_464)]);
        no_violations(&mock);
    }

    #[test]
    fn out_of_order_completions_reach_their_requests() {
        let (mock, mut qp) = MockController::with_qpair(config(16, 128 << 10, 1024)).expect("mock");
        for i in 0..5u64 {
            mock.write_disk(NS, i * 8, &random_bytes(200 + i, 8 * LBA))
                .expect("disk");
            qp.submit(read_request(&mock, i * 8, 8 * LBA, 0).with_tag(i))
                .expect("accepted");
        }
        mock.set_order(Order::Lifo);
        let mut out = Vec::new();
        qp.poll(&mut out).expect("poll rings");
        assert_eq!(mock.process().expect("process"), 5);
        qp.poll(&mut out).expect("poll");
        let tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
        assert_eq!(tags, vec![4, 3, 2, 1, 0], "completed newest first");
        for c in out {
            let mut back = vec![0u8; 8 * LBA];
            c.data.expect("buffer").read(0, &mut back).expect("copy");
            assert_eq!(
                back,
                random_bytes(200 + c.tag, 8 * LBA),
                "request {}",
                c.tag
            );
        }
        no_violations(&mock);
    }

    #[test]
    fn delayed_commands_complete_after_their_passes() {
        let (mock, mut qp) = MockController::with_qpair(config(16, 128 << 10, 1024)).expect("mock");
        mock.delay_next(Match::Nth(0), 2, 1);
        for i in 0..3u64 {
            qp.submit(read_request(&mock, i, LBA, 0).with_tag(i))
                .expect("accepted");
        }
        let mut out = Vec::new();
        qp.poll(&mut out).expect("poll");
        assert_eq!(mock.process().expect("pass 1"), 2);
        assert_eq!(mock.process().expect("pass 2"), 0);
        assert_eq!(mock.process().expect("pass 3"), 1);
        qp.poll(&mut out).expect("poll");
        let tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
        assert_eq!(tags, vec![1, 2, 0]);
    }

    #[test]
    fn a_stray_cid_is_bad_device_and_the_queue_keeps_working() {
        let (mock, mut qp) = MockController::with_qpair(config(8, 128 << 10, 1024)).expect("mock");
        let qid = qp.qid();
        for i in 0..2u64 {
            mock.write_disk(NS, i, &[i as u8 + 1; LBA]).expect("disk");
            qp.submit(read_request(&mock, i, LBA, 0).with_tag(i))
                .expect("accepted");
        }
        let mut out = Vec::new();
        qp.poll(&mut out).expect("poll rings");
        assert_eq!(mock.process_limit(1).expect("first"), 1);
        let head = mock.sq_head(qid).expect("queue");
        assert_eq!(
            mock.post_cqe(qid, 6, head, Status::SUCCESS).expect("post"),
            RawCqe::Stray
        );
        assert_eq!(mock.process().expect("second"), 1);
        match qp.poll(&mut out) {
            Err(Error::BadDevice(what)) => assert!(what.contains("CID 6"), "{what}"),
            other => panic!("expected BadDevice, got {other:?}"),
        }
        assert!(out.is_empty(), "a failed poll hands nothing back");
        assert_eq!(qp.outstanding(), 2, "nothing lost");
        assert_eq!(qp.poll(&mut out).expect("poll"), 2);
        for c in &out {
            let mut back = [0u8; LBA];
            c.data
                .as_ref()
                .expect("buffer")
                .read(0, &mut back)
                .expect("copy");
            assert_eq!(back, [c.tag as u8 + 1; LBA]);
        }
        // An SQ head past the ring is refused the same way, and the command
        // it named still completes properly afterwards.
        qp.submit(read_request(&mock, 0, LBA, 0).with_tag(9))
            .expect("accepted");
        qp.ring().expect("ring");
        mock.fetch().expect("fetch");
        let cid = mock.pending()[0].cid;
        assert_eq!(
            mock.post_cqe(qid, cid, 200, Status::SUCCESS).expect("post"),
            RawCqe::Stray
        );
        assert!(matches!(qp.poll(&mut out), Err(Error::BadDevice(_))));
        let done = complete(&mock, &mut qp, 1);
        assert_eq!(done[0].tag, 9);
        done[0].result.as_ref().expect("read");
        no_violations(&mock);
    }

    #[test]
    fn a_stray_entry_after_a_retryable_error_does_not_strand_the_retry() {
        let (mock, mut qp) = MockController::with_qpair(config(4, 128 << 10, 1024)).expect("mock");
        let qid = qp.qid();
        mock.write_disk(NS, 3, &[7; LBA]).expect("disk");
        mock.fail_next(Match::Any, Status::generic(generic::DATA_TRANSFER_ERROR), 1);
        qp.submit(read_request(&mock, 3, LBA, 0).with_tag(1))
            .expect("accepted");
        let mut out = Vec::new();
        qp.poll(&mut out).expect("poll rings");
        assert_eq!(mock.process().expect("process"), 1);
        let head = mock.sq_head(qid).expect("queue");
        assert_eq!(
            mock.post_cqe(qid, 3, head, Status::SUCCESS).expect("post"),
            RawCqe::Stray
        );
        // Reaps the failed command (queuing its retry), then the stray.
        assert!(matches!(qp.poll(&mut out), Err(Error::BadDevice(_))));
        // Nothing is in flight now: only the poll itself can issue the retry.
        let done = complete(&mock, &mut qp, 1);
        done[0].result.as_ref().expect("the retry succeeds");
        let mut back = [0u8; LBA];
        done[0]
            .data
            .as_ref()
            .expect("buffer")
            .read(0, &mut back)
            .expect("copy");
        assert_eq!(back, [7; LBA]);
        no_violations(&mock);
    }

    #[test]
    fn a_blocking_call_failing_on_a_stray_entry_loses_no_other_request() {
        let (mock, mut qp) = MockController::with_qpair(config(8, 128 << 10, 1024)).expect("mock");
        let qid = qp.qid();
        mock.set_auto(true);
        qp.submit(read_request(&mock, 0, LBA, 0).with_tag(10))
            .expect("accepted");
        qp.ring().expect("ring: the mock completes it at once");
        let head = mock.sq_head(qid).expect("queue");
        assert_eq!(
            mock.post_cqe(qid, 5, head, Status::SUCCESS).expect("post"),
            RawCqe::Stray
        );
        // The blocking read reaps request 10, then meets the stray entry.
        let mut block = vec![0u8; LBA];
        assert!(matches!(
            qp.read(NS, 1, &mut block),
            Err(Error::BadDevice(_))
        ));
        let mut out = Vec::new();
        qp.poll(&mut out).expect("poll");
        let tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
        assert!(tags.contains(&10), "request 10 was handed back: {tags:?}");
        assert_eq!(qp.outstanding(), 0);
    }

    #[test]
    fn a_wrong_sq_head_in_a_completion_does_not_wedge_the_queue() {
        let (mock, mut qp) = MockController::with_qpair(config(4, 128 << 10, 1024)).expect("mock");
        let qid = qp.qid();
        qp.submit(read_request(&mock, 0, LBA, 0).with_tag(1))
            .expect("accepted");
        qp.ring().expect("ring");
        mock.fetch().expect("fetch");
        let cid = mock.pending()[0].cid;
        // The device has consumed one entry (head 1) but reports head 2,
        // one past the tail: taken at its word, the SQ would look full
        // with nothing in flight.
        assert_eq!(mock.sq_head(qid), Some(1));
        assert!(matches!(
            mock.post_cqe(qid, cid, 2, Status::SUCCESS).expect("post"),
            RawCqe::Completed(_)
        ));
        let done = complete(&mock, &mut qp, 1);
        assert_eq!(done[0].tag, 1);
        for i in 0..4u64 {
            qp.submit(read_request(&mock, i, LBA, 0).with_tag(10 + i))
                .expect("accepted");
        }
        let done = complete(&mock, &mut qp, 4);
        assert!(done.iter().all(|c| c.result.is_ok()));
        no_violations(&mock);
    }

    #[test]
    fn stray_entries_are_acknowledged_to_the_device() {
        // Fill the whole CQ (3 usable slots of 4) with strays: the device may
        // post nothing more until the driver writes the CQ head doorbell.
        let (mock, mut qp) = MockController::with_qpair(config(4, 128 << 10, 1024)).expect("mock");
        let qid = qp.qid();
        for _ in 0..3 {
            assert_eq!(
                mock.post_cqe(qid, 2, 0, Status::SUCCESS).expect("post"),
                RawCqe::Stray
            );
        }
        assert_eq!(
            mock.post_cqe(qid, 2, 0, Status::SUCCESS).expect("post"),
            RawCqe::NoRoom
        );
        let mut out = Vec::new();
        for _ in 0..3 {
            assert!(matches!(qp.poll(&mut out), Err(Error::BadDevice(_))));
        }
        qp.submit(read_request(&mock, 0, LBA, 0)).expect("accepted");
        let done = complete(&mock, &mut qp, 1);
        done[0].result.as_ref().expect("read");
        no_violations(&mock);
    }

    fn timeout_config(policy: AbortPolicy) -> (MockController, IoQPair) {
        let mut cfg = config(8, 128 << 10, 1024);
        cfg.options.io_timeout = Duration::from_millis(50);
        cfg.options.admin_timeout = Duration::from_secs(2);
        // These tests pin the give-up path; the reset escalation is
        // `a_command_lost_by_the_device_is_resubmitted_after_a_reset`.
        cfg.options.reset_on_timeout = false;
        let (mock, qp) = MockController::with_qpair(cfg).expect("mock");
        mock.set_abort_policy(policy);
        (mock, qp)
    }

    /// Polls (with the mock processing) until one request completes or
    /// `limit` passes.
    fn wait_one(mock: &MockController, qp: &mut IoQPair, limit: Duration) -> IoCompletion {
        let start = Instant::now();
        let mut out = Vec::new();
        while out.is_empty() {
            assert!(start.elapsed() < limit, "no completion within {limit:?}");
            qp.poll(&mut out).expect("poll");
            mock.process().expect("process");
        }
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    #[test]
    fn a_command_that_never_completes_is_aborted() {
        let (mock, mut qp) = timeout_config(AbortPolicy::Abort);
        mock.hold_next(Match::Any, 1);
        let start = Instant::now();
        qp.submit(read_request(&mock, 0, LBA, 0).with_tag(5))
            .expect("accepted");
        let done = wait_one(&mock, &mut qp, Duration::from_secs(10));
        assert!(
            start.elapsed() >= Duration::from_millis(50),
            "not before the timeout"
        );
        assert_eq!(done.tag, 5);
        match done.result {
            Err(Error::Command { status, .. }) => {
                assert_eq!((status.sct, status.sc), (0, generic::ABORT_REQUESTED))
            }
            other => panic!("expected Command Abort Requested, got {other:?}"),
        }
        assert!(
            done.data.is_some(),
            "an aborted command gives its buffer back"
        );
        let s = mock.stats();
        assert_eq!((s.aborts, s.aborted), (1, 1));
        // The queue pair goes on working.
        let data = random_bytes(1, 2 * LBA);
        assert_eq!(round_trip(&mock, &mut qp, 8, &data, (0, 0)), data);
        no_violations(&mock);
    }

    #[test]
    fn a_command_that_cannot_be_aborted_is_given_up_on() {
        let (mock, mut qp) = timeout_config(AbortPolicy::Refuse);
        mock.hold_next(Match::Any, 1);
        qp.submit(read_request(&mock, 0, LBA, 0).with_tag(5))
            .expect("accepted");
        let done = wait_one(&mock, &mut qp, Duration::from_secs(10));
        assert_eq!(done.tag, 5);
        assert!(
            matches!(done.result, Err(Error::CommandTimeout { .. })),
            "{:?}",
            done.result
        );
        assert!(done.data.is_none(), "the device may still write the buffer");
        assert_eq!(qp.outstanding(), 0);
        assert_eq!(mock.stats().aborts, 1);
        // The lost command's CID is not reused while the device holds it
        // (the mock flags a CID submitted twice).
        let data = random_bytes(2, 4 * LBA);
        assert_eq!(round_trip(&mock, &mut qp, 8, &data, (0, 0)), data);
        no_violations(&mock);

        // The lost command completes at last: its CID is free again, and
        // timeouts are still detected for the commands that follow.
        assert_eq!(mock.release_held(), 1);
        mock.process().expect("late completion");
        let mut out = Vec::new();
        qp.poll(&mut out).expect("late completion is absorbed");
        assert!(out.is_empty());
        mock.set_abort_policy(AbortPolicy::Abort);
        mock.hold_next(Match::Any, 1);
        qp.submit(read_request(&mock, 0, LBA, 0).with_tag(6))
            .expect("accepted");
        let done = wait_one(&mock, &mut qp, Duration::from_secs(10));
        assert_eq!(done.tag, 6);
        assert!(
            matches!(done.result, Err(Error::Command { status, .. }) if status.sc == generic::ABORT_REQUESTED),
            "{:?}",
            done.result
        );
        no_violations(&mock);
    }

    /// Submits `n` one-block writes of distinct patterns at LBAs 0..n and
    /// rings; returns the patterns.
    fn submit_writes(mock: &MockController, qp: &mut IoQPair, n: u64) -> Vec<Vec<u8>> {
        let mut patterns = Vec::new();
        for tag in 0..n {
            let data = random_bytes(tag + 100, LBA);
            qp.submit(write_request(mock, tag, &data, 0).with_tag(tag))
                .expect("accepted");
            patterns.push(data);
        }
        qp.ring().expect("ring");
        patterns
    }

    /// Polls (the mock processing) until `n` requests completed or `limit`
    /// passed; poll errors are kept, not fatal.
    fn drain(
        mock: &MockController,
        qp: &mut IoQPair,
        n: usize,
        limit: Duration,
    ) -> (Vec<IoCompletion>, Vec<Error>) {
        let start = Instant::now();
        let (mut out, mut errors) = (Vec::new(), Vec::new());
        while out.len() < n && start.elapsed() < limit {
            if let Err(e) = qp.poll(&mut out) {
                errors.push(e);
            }
            mock.process().expect("process");
        }
        (out, errors)
    }

    /// Every request answered once, each successfully, and its data on the
    /// mock's disk.
    fn all_written(mock: &MockController, out: &[IoCompletion], patterns: &[Vec<u8>]) {
        let mut tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
        tags.sort_unstable();
        assert_eq!(tags, (0..patterns.len() as u64).collect::<Vec<_>>());
        for c in out {
            assert!(c.result.is_ok(), "tag {}: {:?}", c.tag, c.result);
        }
        for (lba, data) in patterns.iter().enumerate() {
            let disk = mock.read_disk(NS, lba as u64, 1).expect("disk");
            assert_eq!(&disk, data, "LBA {lba}");
        }
    }

    #[test]
    fn open_runs_the_real_bring_up_on_the_mock() {
        let cfg = config(16, 64 << 10, 1024).ready_delay(5);
        let (mock, ctrl) = MockController::new(cfg).expect("mock");
        let s = mock.stats();
        // Left enabled by a "previous owner": disabled, then enabled once.
        assert_eq!((s.resets, s.enables), (1, 1));
        assert_eq!(ctrl.max_transfer(), 64 << 10, "from Identify's MDTS");
        assert_eq!(
            ctrl.identify().model().to_string(),
            "nvme-driver mock controller"
        );
        assert_eq!(ctrl.namespace(NS).expect("namespace").blocks, 1024);
        assert_eq!(ctrl.io_queue_limit(), 4);
        assert!(!ctrl.uses_shadow_doorbells(), "not advertised");
        let csts = Csts(mock.register(regs::offset::CSTS).expect("CSTS"));
        assert!(csts.ready() && !csts.fatal());
        let cc = Cc(mock.register(regs::offset::CC).expect("CC"));
        assert!(cc.enabled());
        assert_eq!((cc.iosqes(), cc.iocqes()), (6, 4));
        drop(ctrl);
        assert_eq!(mock.stats().shutdowns, 1);
        no_violations(&mock);
    }

    #[test]
    fn a_controller_that_never_becomes_ready_fails_bring_up_in_time() {
        let mut mock = MockController::device(&config(16, 64 << 10, 1024)).expect("mock");
        mock.set_ready_delay(u32::MAX);
        let start = Instant::now();
        let err = mock
            .open(config(16, 64 << 10, 1024).options)
            .expect_err("never ready");
        // CAP.TO is 500 ms; the disable step waits that long for RDY to clear.
        assert!(
            matches!(
                err,
                Error::Timeout {
                    step: crate::InitStep::Disable,
                    ..
                }
            ),
            "{err}"
        );
        assert!(start.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn the_admin_queue_is_read_again_at_every_enable() {
        // Plays the driver on the bare registers: two enables, each with
        // its own admin queue; each command completes in the queue
        // programmed before that enable.
        let mock = MockController::device(&config(16, 64 << 10, 1024)).expect("mock");
        mock.state().regs.pci_command = PCI_COMMAND_MASTER;
        let wait_ready = |want: bool| {
            for _ in 0..100 {
                if Csts(mock.register(regs::offset::CSTS).expect("CSTS")).ready() == want {
                    return;
                }
            }
            panic!("CSTS.RDY never became {want}");
        };
        let run = |sq: &crate::DmaBuffer, cq: &crate::DmaBuffer, cid: u16| {
            mock.bar.write32(regs::offset::CC, 0).expect("disable");
            wait_ready(false);
            mock.bar
                .write32(regs::offset::AQA, Aqa::new(2, 2).0)
                .expect("AQA");
            mock.bar.write64(regs::offset::ASQ, sq.iova()).expect("ASQ");
            mock.bar.write64(regs::offset::ACQ, cq.iova()).expect("ACQ");
            let cc = Cc(0).with_iosqes(6).with_iocqes(4).with_enable(true);
            mock.bar.write32(regs::offset::CC, cc.0).expect("enable");
            wait_ready(true);
            let mut sqe = nvme_spec::admin::set_features(
                nvme_spec::FeatureId::NumberOfQueues as u8,
                0x0001_0001,
                false,
            );
            sqe.set_cid(cid);
            sq.write(0, sqe.as_bytes()).expect("SQE");
            let tail = doorbell_offset(0, DoorbellKind::SqTail, DSTRD);
            mock.bar.write32(tail, 1).expect("doorbell");
        };
        let completion = |cq: &crate::DmaBuffer| {
            let mut raw = [0u8; 16];
            cq.read(0, &mut raw).expect("CQE");
            Cqe::read_from_bytes(&raw[..]).expect("CQE")
        };
        let pool = mock.pool();
        let (sq1, cq1) = (pool.alloc(4096).expect("SQ"), pool.alloc(4096).expect("CQ"));
        let (sq2, cq2) = (pool.alloc(4096).expect("SQ"), pool.alloc(4096).expect("CQ"));
        run(&sq1, &cq1, 7);
        assert_eq!(completion(&cq1).cid(), 7);
        assert!(completion(&cq1).phase());
        run(&sq2, &cq2, 8);
        let c = completion(&cq2);
        assert_eq!(
            (c.cid(), c.phase()),
            (8, true),
            "the new queue, from slot 0"
        );
        assert_eq!(completion(&cq1).cid(), 7, "the old queue untouched");
        assert_eq!(mock.stats().enables, 2);
        no_violations(&mock);
    }

    #[test]
    fn a_bad_enable_is_refused_with_fatal_status() {
        let mock = MockController::device(&config(16, 64 << 10, 1024)).expect("mock");
        mock.bar.write32(regs::offset::CC, 0).expect("disable");
        for _ in 0..10 {
            mock.register(regs::offset::CSTS).expect("CSTS");
        }
        // No admin queue programmed: the mock cannot start.
        mock.bar
            .write32(regs::offset::CC, Cc(0).with_enable(true).0)
            .expect("enable");
        let csts = Csts(mock.register(regs::offset::CSTS).expect("CSTS"));
        assert!(csts.fatal() && !csts.ready());
        assert_eq!(mock.violations().len(), 1, "{:?}", mock.violations());
    }

    #[test]
    fn bring_up_on_a_vanished_device_says_the_device_is_gone() {
        let mut mock = MockController::device(&config(16, 64 << 10, 1024)).expect("mock");
        mock.vanish();
        let err = mock
            .open(config(16, 64 << 10, 1024).options)
            .expect_err("gone");
        assert!(err.to_string().contains("device gone"), "{err}");
    }

    #[test]
    fn a_reset_during_io_resubmits_what_was_in_flight() {
        let (mock, ctrl) = MockController::new(config(16, 64 << 10, 1024)).expect("mock");
        let mut qp = ctrl.io_qpair().expect("queue pair");
        let patterns = submit_writes(&mock, &mut qp, 8);
        // Half fetched and held by the device, half not even fetched.
        mock.hold_next(Match::Any, 4);
        mock.process_limit(0).expect("fetch");
        assert_eq!(mock.pending().len(), 8);
        ctrl.reset().expect("reset");
        let s = mock.stats();
        assert_eq!((s.resets, s.enables), (2, 2));
        // The reset deleted the queue before disabling the controller
        // (docs/ARCHITECTURE.md, "Controller reset"): the deletion dropped
        // the commands, the disable found nothing left.
        assert_eq!(s.queues_deleted, 1);
        assert_eq!(s.dropped_by_delete, 8, "the device forgot them");
        assert_eq!(s.dropped_by_reset, 0);
        assert_eq!(ctrl.generation(), 1);
        let (out, errors) = drain(&mock, &mut qp, 8, Duration::from_secs(10));
        assert!(errors.is_empty(), "{errors:?}");
        all_written(&mock, &out, &patterns);
        assert_eq!(
            mock.stats().queues_created,
            2,
            "the queue was created again"
        );
        // The queue pair keeps working.
        let data = random_bytes(9, 4 * LBA);
        assert_eq!(round_trip(&mock, &mut qp, 40, &data, (0, 0)), data);
        no_violations(&mock);
    }

    /// Several commands time out in the same deadline scan; the first
    /// one's Abort is refused, so the controller is reset and everything
    /// in flight is resubmitted under fresh CIDs. The scan must stop
    /// there: the other CIDs it found expired now name the resubmitted
    /// commands, just sent. (It used to go on and abort them too and, as
    /// they could not come back while the test's device waited, reset the
    /// controller again for each: three Aborts and three resets.)
    #[test]
    fn commands_timing_out_together_cost_one_abort_and_one_reset() {
        let mut cfg = config(8, 128 << 10, 1024);
        cfg.options.io_timeout = Duration::from_millis(50);
        cfg.options.reset_on_timeout = true;
        let (mock, mut qp) = MockController::with_qpair(cfg).expect("mock");
        mock.set_abort_policy(AbortPolicy::Refuse);
        mock.hold_next(Match::Any, 3);
        let patterns = submit_writes(&mock, &mut qp, 4);
        let (out, errors) = drain(&mock, &mut qp, 4, Duration::from_secs(30));
        assert!(errors.is_empty(), "{errors:?}");
        all_written(&mock, &out, &patterns);
        let s = mock.stats();
        assert_eq!(s.aborts, 1, "{s:?}");
        assert_eq!(s.resets, 2, "bring-up's and one more: {s:?}");
        assert_eq!(s.dropped_by_reset, 3, "{s:?}");
        let r = qp.last_recovery().expect("a recovery record");
        assert_eq!(r.outcome, RecoveryOutcome::Reset { resubmitted: 3 });
        assert_eq!(r.abort_dw0, Some(1), "the Abort was refused");
        assert!(
            r.total >= r.grace && r.grace >= Duration::from_secs(2),
            "{r:?}"
        );
        // The queue goes on.
        let more = random_bytes(50, 2 * LBA);
        assert_eq!(round_trip(&mock, &mut qp, 100, &more, (0, 0)), more);
        no_violations(&mock);
    }

    /// A queue pair recovers from one reset while another reset is under
    /// way: its queues are created in the second reset's controller, so it
    /// must record the second generation. It used to record the one it saw
    /// when it started recovering (the first), create its queues again on
    /// its next poll, and be refused: the queue identifier was taken, and
    /// every request failed (as seen once in
    /// `reset_in_the_middle_of_io_loses_nothing` on QEMU, three threads and
    /// three resets).
    #[test]
    fn a_queue_recovering_during_a_second_reset_records_the_second() {
        let (mock, ctrl) = MockController::new(config(32, 128 << 10, 1024)).expect("mock");
        let mut qp = ctrl.io_qpair().expect("queue pair");
        let patterns = submit_writes(&mock, &mut qp, 1);
        ctrl.reset().expect("first reset");
        // The second reset holds the admin lock for a while (each admin
        // doorbell takes 100 ms); the queue pair starts recovering from the
        // first meanwhile.
        mock.set_admin_latency(Duration::from_millis(100));
        std::thread::scope(|s| {
            let second = s.spawn(|| ctrl.reset().expect("second reset"));
            std::thread::sleep(Duration::from_millis(30));
            let mut out = Vec::new();
            qp.poll(&mut out)
                .expect("recovering across the second reset");
            second.join().expect("second reset");
        });
        mock.set_admin_latency(Duration::ZERO);
        let (out, errors) = drain(&mock, &mut qp, 1, Duration::from_secs(10));
        assert!(errors.is_empty(), "{errors:?}");
        all_written(&mock, &out, &patterns);
        let data = random_bytes(61, 2 * LBA);
        assert_eq!(round_trip(&mock, &mut qp, 8, &data, (0, 0)), data);
        let s = mock.stats();
        assert_eq!(s.resets, 3, "bring-up's and two: {s:?}");
        // Created at open and once more: not again after the second reset.
        assert_eq!(s.queues_created, 2, "{s:?}");
        no_violations(&mock);
    }

    #[test]
    fn a_queue_pair_behind_a_reset_rings_nothing_until_its_queue_exists_again() {
        let cfg = config(16, 64 << 10, 1024).shadow_doorbells(true);
        let (mock, ctrl) = MockController::new(cfg).expect("mock");
        let mut qp = ctrl.io_qpair().expect("queue pair");
        let qid = qp.qid();
        let mut patterns = submit_writes(&mock, &mut qp, 4);
        assert_eq!(mock.doorbell(qid, false), 4);
        mock.process_limit(0).expect("fetch");
        ctrl.reset().expect("reset");
        let s = mock.stats();
        assert_eq!((s.queues_deleted, s.dropped_by_delete), (1, 4));
        // More work before the queue pair has looked at the controller
        // again: its queue is gone, so neither its shadow slot (zeroed by
        // the reset) nor its MMIO doorbell is written.
        let mmio = mock.stats().mmio_doorbells;
        for tag in 4..6 {
            let data = random_bytes(tag + 100, LBA);
            qp.submit(write_request(&mock, tag, &data, 0).with_tag(tag))
                .expect("accepted");
            patterns.push(data);
        }
        qp.ring().expect("ring");
        assert_eq!(mock.doorbell(qid, false), 0, "shadow slot written");
        assert_eq!(mock.stats().mmio_doorbells, mmio, "MMIO doorbell written");
        // The next poll creates the queue again and sends everything.
        let (out, errors) = drain(&mock, &mut qp, 6, Duration::from_secs(10));
        assert!(errors.is_empty(), "{errors:?}");
        all_written(&mock, &out, &patterns);
        assert_eq!(mock.stats().queues_created, 2);
        no_violations(&mock);
    }

    #[test]
    fn an_error_posted_while_a_reset_tears_the_queue_down_is_sent_again() {
        // QEMU ends a Flush its Delete I/O SQ cancels with Write Fault; the
        // queue pair reaps that after the reset and sends the command again.
        let (mock, ctrl) = MockController::new(config(16, 64 << 10, 1024)).expect("mock");
        let mut qp = ctrl.io_qpair().expect("queue pair");
        let fault = reject(StatusCodeType::MediaAndDataIntegrity, media::WRITE_FAULT);
        // Without a reset the fault is the request's answer.
        mock.fail_next(Match::Opcode(NvmOpcode::Write), fault, 1);
        let _ = submit_writes(&mock, &mut qp, 1);
        let (out, _) = drain(&mock, &mut qp, 1, Duration::from_secs(10));
        match &out[0].result {
            Err(Error::Command { status, .. }) => assert_eq!(*status, fault),
            other => panic!("expected the write fault, got {other:?}"),
        }
        // Posted (not yet reaped) when the reset comes.
        mock.fail_next(Match::Opcode(NvmOpcode::Write), fault, 1);
        let patterns = submit_writes(&mock, &mut qp, 2);
        assert_eq!(mock.process().expect("complete"), 2);
        ctrl.reset().expect("reset");
        let (out, errors) = drain(&mock, &mut qp, 2, Duration::from_secs(10));
        assert!(errors.is_empty(), "{errors:?}");
        all_written(&mock, &out, &patterns);
        no_violations(&mock);
    }

    #[test]
    fn a_command_lost_by_the_device_is_resubmitted_after_a_reset() {
        let mut cfg = config(8, 128 << 10, 1024);
        cfg.options.io_timeout = Duration::from_millis(50);
        cfg.options.reset_on_timeout = true;
        let (mock, mut qp) = MockController::with_qpair(cfg).expect("mock");
        // The device neither completes nor aborts the command.
        mock.set_abort_policy(AbortPolicy::Refuse);
        mock.hold_next(Match::Any, 1);
        let patterns = submit_writes(&mock, &mut qp, 3);
        let (out, errors) = drain(&mock, &mut qp, 3, Duration::from_secs(30));
        assert!(errors.is_empty(), "{errors:?}");
        all_written(&mock, &out, &patterns);
        let s = mock.stats();
        assert_eq!(s.aborts, 1, "Abort first");
        assert_eq!(s.resets, 2, "then a reset (the first was bring-up's)");
        no_violations(&mock);
    }

    #[test]
    fn fatal_status_leads_to_a_reset_and_what_was_in_flight_completes() {
        let (mock, mut qp) = timeout_config(AbortPolicy::Abort);
        mock.hold_next(Match::Any, 2);
        let patterns = submit_writes(&mock, &mut qp, 4);
        mock.process().expect("two complete, two held");
        mock.set_fatal();
        assert!(Csts(mock.register(regs::offset::CSTS).expect("CSTS")).fatal());
        let (out, errors) = drain(&mock, &mut qp, 4, Duration::from_secs(10));
        assert!(errors.is_empty(), "{errors:?}");
        all_written(&mock, &out, &patterns);
        let s = mock.stats();
        assert_eq!(s.resets, 2, "CFS noticed, controller reset");
        assert_eq!(s.queues_deleted, 0, "a recovery reset deletes no queue");
        assert!(!Csts(mock.register(regs::offset::CSTS).expect("CSTS")).fatal());
        no_violations(&mock);
    }

    #[test]
    fn an_sq_ring_unmapped_by_fault_injection_is_fatal_and_the_reset_resubmits() {
        let (mock, mut qp) = timeout_config(AbortPolicy::Abort);
        // Two writes fetched and held in the device, two more after the
        // fault: all four must come back, and be on the disk.
        mock.hold_next(Match::Any, 2);
        let patterns: Vec<Vec<u8>> = (0..4u64).map(|t| random_bytes(t + 300, LBA)).collect();
        for (tag, data) in patterns.iter().enumerate().take(2) {
            qp.submit(write_request(&mock, tag as u64, data, 0).with_tag(tag as u64))
                .expect("accepted");
        }
        qp.ring().expect("ring");
        mock.process().expect("fetch and hold");
        qp.inject_unmap_sq().expect("inject");
        for (tag, data) in patterns.iter().enumerate().skip(2) {
            qp.submit(write_request(&mock, tag as u64, data, 0).with_tag(tag as u64))
                .expect("accepted");
        }
        qp.ring().expect("ring");
        mock.process().expect("the fetch fails");
        assert!(Csts(mock.register(regs::offset::CSTS).expect("CSTS")).fatal());
        let (out, errors) = drain(&mock, &mut qp, 4, Duration::from_secs(10));
        assert!(errors.is_empty(), "{errors:?}");
        all_written(&mock, &out, &patterns);
        assert_eq!(mock.stats().resets, 2, "bring-up's, then the recovery's");
        let violations = mock.violations();
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(
            violations[0].starts_with("SQ 1: fetching entry 2: "),
            "{violations:?}"
        );
        let r = qp.last_recovery().expect("a recovery record");
        assert!(
            matches!(r.cause, RecoveryCause::ControllerFatal { csts } if Csts(csts).fatal()),
            "{r:?}"
        );
        assert_eq!(r.outcome, RecoveryOutcome::Reset { resubmitted: 4 });
        assert_eq!((r.cid, r.abort_dw0), (None, None), "no Abort for CFS");
        assert!(r.total >= r.reset && r.reset > Duration::ZERO);
        // The ring was mapped again, and the queue works.
        let data = random_bytes(400, LBA);
        qp.submit(write_request(&mock, 9, &data, 0).with_tag(9))
            .expect("accepted");
        let (out, errors) = drain(&mock, &mut qp, 1, Duration::from_secs(10));
        assert!(errors.is_empty() && out.len() == 1 && out[0].result.is_ok());
        assert_eq!(mock.read_disk(NS, 9, 1).expect("disk"), data);
        assert_eq!(mock.violations().len(), 1, "no new violation");
    }

    #[test]
    fn a_vanished_device_fails_every_request_with_device_gone() {
        let (mock, mut qp) = timeout_config(AbortPolicy::Abort);
        mock.hold_next(Match::Any, 3);
        let _ = submit_writes(&mock, &mut qp, 5);
        mock.process().expect("fetch");
        mock.vanish();
        let start = Instant::now();
        let (out, errors) = drain(&mock, &mut qp, 5, Duration::from_secs(10));
        assert!(start.elapsed() < Duration::from_secs(10), "no hang");
        assert_eq!(out.len(), 5, "every request answered");
        assert_eq!(qp.outstanding(), 0);
        for c in &out {
            let tag = c.tag;
            match &c.result {
                // The two the device completed before it went (the first
                // three fetched were held).
                Ok(_) => assert!(tag >= 3, "tag {tag}"),
                Err(e) => {
                    assert!(e.to_string().contains("device gone"), "tag {tag}: {e}");
                    assert!(tag < 3, "tag {tag}");
                }
            }
        }
        assert!(
            errors.iter().any(|e| e.to_string().contains("device gone")),
            "{errors:?}"
        );
        // New work fails at once rather than waiting on a dead device.
        let mut blocking = vec![0u8; LBA];
        let t = Instant::now();
        assert!(qp.read(NS, 0, &mut blocking).is_err());
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_removal_request_releases_the_device_and_fails_every_request_with_device_removed() {
        let (mock, ctrl) = MockController::new(config(8, 128 << 10, 1024)).expect("mock");
        let mut qp = ctrl.io_qpair().expect("queue pair");
        // Three commands the device fetched and never completes, two it
        // completes: the removal must answer the three.
        mock.hold_next(Match::Any, 3);
        let patterns = submit_writes(&mock, &mut qp, 5);
        mock.process().expect("fetch");
        assert!(!mock.released());
        assert!(mock.request_removal(), "the driver listens for removal");
        let start = Instant::now();
        let (out, errors) = drain(&mock, &mut qp, 5, Duration::from_secs(10));
        let answered = start.elapsed();
        assert!(
            errors.is_empty(),
            "answered through completions: {errors:?}"
        );
        assert_eq!(out.len(), 5, "every request answered");
        assert!(
            answered < Duration::from_secs(1),
            "answered in {answered:?}"
        );
        assert_eq!(qp.outstanding(), 0);
        assert!(mock.released(), "the device was given back");
        assert!(ctrl.is_removed());
        for c in &out {
            let tag = c.tag;
            match &c.result {
                Ok(_) => {
                    assert!(tag >= 3, "tag {tag}");
                    let disk = mock.read_disk(NS, tag, 1).expect("disk");
                    assert_eq!(disk, patterns[tag as usize], "acknowledged write {tag}");
                }
                Err(e) => {
                    assert!(matches!(e, Error::DeviceRemoved { .. }), "tag {tag}: {e}");
                    assert!(e.to_string().contains("device removed"), "{e}");
                    assert!(tag < 3, "tag {tag}");
                }
            }
        }
        // New work fails at once, with the same error.
        let t = Instant::now();
        let data = random_bytes(9, LBA);
        let rejected = qp
            .submit(write_request(&mock, 9, &data, 0))
            .expect_err("refused");
        assert!(
            matches!(rejected.error, Error::DeviceRemoved { .. }),
            "{}",
            rejected.error
        );
        let mut block = vec![0u8; LBA];
        let e = qp.read(NS, 0, &mut block).expect_err("refused");
        assert!(e.to_string().contains("device removed"), "{e}");
        let e = ctrl.smart_log().expect_err("admin refused");
        assert!(e.to_string().contains("device removed"), "{e}");
        let e = ctrl.reset().expect_err("no reset of a removed device");
        assert!(e.to_string().contains("device removed"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        // Dropping the queue pair and the controller sends nothing more.
        let before = mock.stats();
        drop(qp);
        drop(ctrl);
        assert_eq!(format!("{:?}", mock.stats()), format!("{before:?}"));
    }

    #[test]
    fn a_removal_request_answers_every_thread_within_a_second() {
        const THREADS: usize = 4;
        let (mock, ctrl) = MockController::new(config(16, 128 << 10, 4096)).expect("mock");
        let qps: Vec<IoQPair> = (0..THREADS)
            .map(|_| ctrl.io_qpair().expect("queue pair"))
            .collect();
        let removed_at = Mutex::new(None::<Instant>);
        let results = std::thread::scope(|scope| {
            let handles: Vec<_> = qps
                .into_iter()
                .enumerate()
                .map(|(t, mut qp)| {
                    let mock = &mock;
                    scope.spawn(move || {
                        let mut answered = 0u64;
                        let mut removed = 0u64;
                        let mut submitted = 0u64;
                        let mut out = Vec::new();
                        let start = Instant::now();
                        loop {
                            if qp.outstanding() < 8 {
                                let lba = (t as u64) * 1024 + submitted % 1024;
                                let data = random_bytes(lba, LBA);
                                match qp.submit(write_request(mock, lba, &data, 0)) {
                                    Ok(()) => {
                                        submitted += 1;
                                    }
                                    Err(r) => {
                                        assert!(
                                            matches!(r.error, Error::DeviceRemoved { .. }),
                                            "{}",
                                            r.error
                                        );
                                        if qp.outstanding() == 0 {
                                            break;
                                        }
                                    }
                                }
                            }
                            qp.poll(&mut out).expect("poll");
                            for c in out.drain(..) {
                                answered += 1;
                                if let Err(e) = c.result {
                                    assert!(matches!(e, Error::DeviceRemoved { .. }), "{e}");
                                    removed += 1;
                                }
                            }
                            assert!(start.elapsed() < Duration::from_secs(30), "hang");
                        }
                        (submitted, answered, removed, Instant::now())
                    })
                })
                .collect();
            // The device serves for a while, then is asked for back while
            // commands are held in flight.
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(100) {
                mock.process().expect("process");
            }
            // Held from now on (at most 4 x 8 are in flight): wait until
            // some are.
            // Counted as the device fetches them, not as the threads submit:
            // if every thread's 8 were still unfetched at this point, all
            // of them are held and no thread submits again until the
            // removal (a loaded host made that happen).
            mock.hold_next(Match::Any, 64);
            let before = mock.stats().fetched;
            let start = Instant::now();
            while mock.stats().fetched < before + 8 {
                mock.process().expect("process");
                assert!(start.elapsed() < Duration::from_secs(30), "nothing fetched");
            }
            for _ in 0..10 {
                mock.process().expect("process");
            }
            *removed_at.lock() = Some(Instant::now());
            assert!(mock.request_removal());
            while handles.iter().any(|h| !h.is_finished()) {
                let _ = mock.process();
                std::thread::yield_now();
            }
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect::<Vec<_>>()
        });
        let removed_at = removed_at.lock().expect("removal requested");
        let mut held = 0;
        for (submitted, answered, removed, done) in results {
            assert_eq!(submitted, answered, "every request answered");
            held += removed;
            let took = done.saturating_duration_since(removed_at);
            assert!(
                took < Duration::from_secs(1),
                "answered {took:?} after the request"
            );
        }
        assert!(held > 0, "some requests were in flight at the removal");
        assert!(mock.released());
    }

    #[test]
    fn shadow_doorbells_are_set_up_used_and_set_up_again_after_a_reset() {
        let cfg = config(16, 64 << 10, 1024).shadow_doorbells(true);
        let (mock, ctrl) = MockController::new(cfg).expect("mock");
        assert!(ctrl.uses_shadow_doorbells());
        let (shadow, eventidx) = mock.shadow_pages().expect("configured");
        assert_ne!(shadow, eventidx);
        assert_eq!(mock.stats().shadow_configs, 1);
        let mut qp = ctrl.io_qpair().expect("queue pair");
        let qid = qp.qid();
        let patterns = submit_writes(&mock, &mut qp, 5);
        // The mock takes the tail from the shadow page.
        assert_eq!(mock.doorbell(qid, false), 5);
        let (out, _) = drain(&mock, &mut qp, 5, Duration::from_secs(10));
        all_written(&mock, &out, &patterns);
        assert_eq!(mock.doorbell(qid, true), 5, "CQ head in the shadow page");
        // After a reset the controller has forgotten the pages: they are
        // configured again, and the queue works through them.
        ctrl.reset().expect("reset");
        assert_eq!(mock.stats().shadow_configs, 2);
        assert!(mock.shadow_pages().is_some());
        let patterns = submit_writes(&mock, &mut qp, 3);
        let (out, errors) = drain(&mock, &mut qp, 3, Duration::from_secs(10));
        assert!(errors.is_empty(), "{errors:?}");
        all_written(&mock, &out, &patterns);
        no_violations(&mock);
    }

    #[test]
    fn shadow_doorbells_skip_mmio_writes_the_event_index_does_not_ask_for() {
        let cfg = config(16, 64 << 10, 1024).shadow_doorbells(true);
        let (mock, ctrl) = MockController::new(cfg).expect("mock");
        let mut qp = ctrl.io_qpair().expect("queue pair");
        let qid = qp.qid();
        let (_, eventidx) = mock.shadow_pages().expect("configured");
        // The device says it will look at the SQ by itself up to entry 10.
        let dma = mock.state().dma.clone();
        dma.write(eventidx + 8 * u64::from(qid), &10u32.to_le_bytes())
            .expect("EventIdx");
        let before = mock.stats().mmio_doorbells;
        let patterns = submit_writes(&mock, &mut qp, 3);
        assert_eq!(mock.stats().mmio_doorbells, before, "no MMIO write needed");
        assert_eq!(mock.doorbell(qid, false), 3, "the shadow page has the tail");
        let (out, _) = drain(&mock, &mut qp, 3, Duration::from_secs(10));
        all_written(&mock, &out, &patterns);
        no_violations(&mock);
    }

    #[test]
    fn a_queue_id_taken_again_rings_its_first_doorbell_by_mmio() {
        let cfg = config(16, 64 << 10, 1024).shadow_doorbells(true);
        let (mock, ctrl) = MockController::new(cfg).expect("mock");
        let mut qp = ctrl.io_qpair().expect("queue pair");
        let qid = qp.qid();
        let patterns = submit_writes(&mock, &mut qp, 5);
        let (out, _) = drain(&mock, &mut qp, 5, Duration::from_secs(10));
        all_written(&mock, &out, &patterns);
        // The mock, as QEMU, leaves the SQ's EventIdx at the last tail seen.
        let (_, eventidx) = mock.shadow_pages().expect("configured");
        let dma = mock.state().dma.clone();
        let mut ei = [0u8; 4];
        dma.read(eventidx + 8 * u64::from(qid), &mut ei)
            .expect("EventIdx");
        assert_eq!(u32::from_le_bytes(ei), 5);
        drop(qp);
        let mut qp = ctrl.io_qpair().expect("queue pair again");
        assert_eq!(qp.qid(), qid, "the same queue id");
        // QEMU looks at an SQ only after an MMIO doorbell: the new queue's
        // first doorbell (tail 0 -> 3) must be one, whatever the earlier
        // queue left in its EventIdx slot (5 would say "still looking").
        let before = mock.stats().mmio_doorbells;
        let patterns = submit_writes(&mock, &mut qp, 3);
        assert_eq!(mock.stats().mmio_doorbells, before + 1, "an MMIO doorbell");
        let (out, errors) = drain(&mock, &mut qp, 3, Duration::from_secs(10));
        assert!(errors.is_empty(), "{errors:?}");
        all_written(&mock, &out, &patterns);
        no_violations(&mock);
    }

    #[test]
    fn msix_goes_through_the_device_boundary() {
        // A function without MSI-X: a clear error, and the queue id is
        // given back.
        let (_mock, ctrl) = MockController::new(config(16, 64 << 10, 1024)).expect("mock");
        let err = ctrl.io_qpair_with_interrupts().expect_err("no vectors");
        assert!(err.to_string().contains("MSI-X"), "{err}");
        for _ in 0..4 {
            // Each failure gives its queue id back (4 are granted).
            assert!(ctrl.io_qpair_with_interrupts().is_err());
        }
        drop(ctrl.io_qpair().expect("ids not leaked"));

        let cfg = config(16, 64 << 10, 1024).msix_vectors(4);
        let (mock, ctrl) = MockController::new(cfg).expect("mock");
        let mut qp = ctrl.io_qpair_with_interrupts().expect("interrupts");
        let patterns = submit_writes(&mock, &mut qp, 2);
        assert_eq!(mock.stats().interrupts, 0);
        mock.process().expect("process");
        assert_eq!(mock.stats().interrupts, 2, "one per completion posted");
        let mut out = Vec::new();
        while out.len() < 2 {
            qp.wait(&mut out, Duration::from_secs(10)).expect("wait");
        }
        all_written(&mock, &out, &patterns);
        // The blocking helpers, with the mock serving each doorbell.
        mock.set_auto(true);
        let mut back = vec![0u8; LBA];
        qp.read(NS, 1, &mut back).expect("read");
        assert_eq!(back, patterns[1]);
        assert_eq!(mock.stats().interrupts, 3);
        no_violations(&mock);
    }

    #[test]
    fn asynchronous_events_reach_the_controller() {
        let (mock, ctrl) = MockController::new(config(16, 64 << 10, 1024)).expect("mock");
        // SMART / health, temperature threshold (type 1, info 1, log 2).
        assert!(mock.async_event(0x0002_0101));
        let events = ctrl.async_events().expect("events");
        assert_eq!(events.len(), 1);
        no_violations(&mock);
    }

    #[test]
    fn queues_are_created_and_deleted_and_the_controller_shut_down() {
        let mut cfg = config(8, 128 << 10, 1024);
        cfg.io_queues = 2;
        let (mock, ctrl) = MockController::new(cfg).expect("mock");
        assert_eq!(ctrl.io_queue_limit(), 2);
        assert_eq!(ctrl.namespace(NS).expect("namespace").blocks, 1024);
        let a = ctrl.io_qpair().expect("first queue pair");
        let b = ctrl.io_qpair().expect("second queue pair");
        assert_ne!(a.qid(), b.qid());
        assert!(matches!(
            ctrl.io_qpair(),
            Err(Error::QueuesExhausted { granted: 2 })
        ));
        let qid = a.qid();
        drop(a);
        assert_eq!(ctrl.io_qpair().expect("reused").qid(), qid);
        let s = mock.stats();
        assert_eq!((s.queues_created, s.queues_deleted), (3, 2));
        assert_eq!(s.shutdowns, 0);
        drop(b);
        drop(ctrl);
        let s = mock.stats();
        assert_eq!(s.queues_deleted, 3);
        assert_eq!(s.shutdowns, 1, "shut down when the last handle went");
        no_violations(&mock);
    }

    #[test]
    fn the_mock_rejects_malformed_commands_and_reports_violations() {
        let (mock, qp) = MockController::with_qpair(config(8, 8 << 10, 64)).expect("mock");
        let qid = qp.qid();
        let buf = mock.pool().alloc(16 << 10).expect("buffer");
        let (dma, base) = {
            let s = mock.state();
            (s.dma.clone(), s.sqs[&qid].base)
        };
        // Plays the driver: writes SQEs into the ring and rings the doorbell.
        let mut slot = 0u16;
        let mut submit = |mut sqe: Sqe, cid: u16| {
            sqe.set_cid(cid);
            dma.write(base + u64::from(slot) * SQE_BYTES, sqe.as_bytes())
                .expect("SQ slot");
            slot += 1;
            mock.bar
                .write32(
                    doorbell_offset(qid, DoorbellKind::SqTail, DSTRD),
                    u32::from(slot),
                )
                .expect("doorbell");
            mock.process().expect("process");
            mock.commands().last().map(|c| c.status)
        };
        let read = |slba, nlb| nvme_spec::io::read(NS, slba, nlb).expect("read");
        let mut unmapped = read(0, 1);
        unmapped.set_prps(0x1000, 0);
        let mut misaligned = read(0, 1);
        misaligned.set_prps(buf.iova() + 2, 0);
        let mut too_big = read(0, 32);
        too_big.set_prps(buf.iova(), buf.iova() + 4096);
        let mut past_end = read(60, 8);
        past_end.set_prps(buf.iova(), buf.iova() + 4096);
        let statuses = [
            submit(unmapped, 0),
            submit(misaligned, 1),
            submit(too_big, 2),
            submit(past_end, 3),
        ];
        let sc: Vec<u8> = statuses.iter().map(|s| s.map_or(0xff, |s| s.sc)).collect();
        assert_eq!(
            sc,
            vec![
                generic::DATA_TRANSFER_ERROR,
                generic::PRP_OFFSET_INVALID,
                generic::INVALID_FIELD,
                generic::LBA_OUT_OF_RANGE,
            ]
        );
        assert!(statuses.iter().all(|s| s.is_some_and(|s| s.dnr)));
        // A range past the namespace is the caller's error, not a protocol
        // violation; the other three are.
        let v = mock.violations();
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(v[0].contains("outside every DMA mapping"), "{}", v[0]);
        assert!(v[1].contains("not dword aligned"), "{}", v[1]);
        assert!(v[2].contains("MDTS"), "{}", v[2]);
        // A CID reused while its command is in flight.
        mock.hold_next(Match::Any, 1);
        let mut ok = read(0, 1);
        ok.set_prps(buf.iova(), 0);
        submit(ok, 4);
        submit(ok, 4);
        let v = mock.violations();
        assert!(v.last().is_some_and(|w| w.contains("CID 4")), "{v:?}");
    }

    fn plausible_cqe() -> impl Strategy<Value = [u8; 16]> {
        (0u16..10, 0u16..10, any::<u16>(), any::<u32>()).prop_map(|(cid, head, status, dw0)| {
            let mut raw = [0u8; 16];
            raw[..4].copy_from_slice(&dw0.to_le_bytes());
            raw[8..10].copy_from_slice(&head.to_le_bytes());
            raw[10..12].copy_from_slice(&1u16.to_le_bytes());
            raw[12..14].copy_from_slice(&cid.to_le_bytes());
            raw[14..].copy_from_slice(&status.to_le_bytes());
            raw
        })
    }

    fn stream_op() -> impl Strategy<Value = StreamOp> {
        prop_oneof![
            4 => (any::<bool>(), any::<u16>(), any::<u8>())
                .prop_map(|(write, slba, blocks)| StreamOp::Submit { write, slba, blocks }),
            1 => any::<[u8; 16]>().prop_map(StreamOp::Raw),
            1 => plausible_cqe().prop_map(StreamOp::Raw),
            2 => (any::<u8>(), any::<u8>(), any::<u16>())
                .prop_map(|(cid, sq_head, status)| StreamOp::Cqe { cid, sq_head, status }),
            3 => (0u8..6).prop_map(StreamOp::Complete),
            1 => any::<u16>().prop_map(StreamOp::Fail),
            1 => Just(StreamOp::Poll),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_completion_streams_keep_the_queue_pair_sound(
            ops in proptest::collection::vec(stream_op(), 0..80)
        ) {
            if let Err(e) = run_cqe_stream(&ops) {
                prop_assert!(false, "{}", e);
            }
        }
    }

    #[test]
    fn the_stream_harness_exercises_what_it_claims() {
        // A long pseudo-random stream: the checks must have had something
        // to check.
        let bytes = random_bytes(2024, 6000);
        let report = run_cqe_stream(&StreamOp::decode(&bytes)).expect("properties hold");
        assert!(report.submitted > 50, "{report:?}");
        assert_eq!(report.completed, report.submitted);
        assert!(report.data_checked > 20, "{report:?}");
        assert!(report.bad_device > 0, "{report:?}");
        assert!(report.raw_completed > 0, "{report:?}");
        assert!(report.failed > 0, "{report:?}");
    }

    #[test]
    fn stream_regressions() {
        // Found by the fuzz target before the fixes in `IoQPair::poll`: a
        // stray entry ending a reap left the waiting requests unissued.
        let ops = [
            StreamOp::Submit {
                write: false,
                slba: 65535,
                blocks: 255,
            },
            StreamOp::Poll,
            StreamOp::Complete(0),
            StreamOp::Complete(0),
            StreamOp::Submit {
                write: false,
                slba: 72,
                blocks: 33,
            },
            StreamOp::Submit {
                write: false,
                slba: 29940,
                blocks: 116,
            },
            StreamOp::Cqe {
                cid: 91,
                sq_head: 0,
                status: 0,
            },
        ];
        let report = run_cqe_stream(&ops).expect("properties hold");
        assert_eq!((report.submitted, report.completed), (3, 3));
        assert_eq!(report.bad_device, 1);
    }

    #[test]
    fn decoding_fuzz_bytes_is_total() {
        assert_eq!(StreamOp::decode(&[]), vec![]);
        assert_eq!(StreamOp::decode(&[7]), vec![StreamOp::Poll]);
        assert_eq!(
            StreamOp::decode(&[0x80, 1, 0, 3, 4]),
            vec![
                StreamOp::Submit {
                    write: true,
                    slba: 1,
                    blocks: 3
                },
                StreamOp::Complete(0)
            ]
        );
        assert!(
            matches!(StreamOp::decode(&[2, 1])[0], StreamOp::Raw(r) if r[0] == 1 && r[1..] == [0; 15])
        );
        assert_eq!(
            StreamOp::decode(&[3, 1, 2, 3, 4]),
            vec![StreamOp::Cqe {
                cid: 1,
                sq_head: 2,
                status: 0x0403
            }]
        );
    }

    fn floor_job(write: bool, depth: usize, io_blocks: u32, count: u64) -> crate::FloorJob {
        crate::FloorJob {
            nsid: NS,
            write,
            first_lba: 0,
            blocks: 1024,
            io_blocks,
            depth,
            random: !write,
            seed: 3,
            warmup: Duration::ZERO,
            time: Duration::from_secs(3600),
            count: Some(count),
        }
    }

    #[test]
    fn the_floor_loop_counts_what_the_mock_served_and_leaves_the_queue_working() {
        let (mock, mut qp) = MockController::with_qpair(config(64, 128 << 10, 1024)).expect("mock");
        mock.set_auto(true);
        // 64 KiB reads: PRP lists built once per CID.
        let r = qp.floor(&floor_job(false, 8, 128, 2000)).expect("floor");
        assert!(r.ios >= 2000 && r.errors == 0, "{r:?}");
        let s = mock.stats();
        assert!(
            (r.ios..=r.ios + 8).contains(&s.reads),
            "counted {} reads, the mock served {}",
            r.ios,
            s.reads
        );
        let w = qp.floor(&floor_job(true, 3, 1, 500)).expect("floor");
        assert!(w.ios >= 500 && mock.stats().writes >= w.ios, "{w:?}");
        no_violations(&mock);
        // The queue pair goes on with the full path afterwards.
        let data = random_bytes(9, 4 * LBA);
        mock.set_auto(false);
        assert_eq!(round_trip(&mock, &mut qp, 16, &data, (0, 0)), data);
        no_violations(&mock);
        // What the floor cannot do is refused.
        assert!(
            qp.floor(&floor_job(false, 64, 1, 10)).is_err(),
            "depth past entries - 1"
        );
        assert!(
            qp.floor(&floor_job(false, 4, 512, 10)).is_err(),
            "past the transfer limit"
        );
        mock.fail_next(Match::Any, Status::generic(generic::DATA_TRANSFER_ERROR), 3);
        mock.set_auto(true);
        let e = qp.floor(&floor_job(false, 4, 1, 100)).expect("floor");
        assert_eq!(e.errors, 3, "{e:?}");
        assert_eq!(
            e.first_error.map(|s| s.sc),
            Some(generic::DATA_TRANSFER_ERROR)
        );
    }

    #[test]
    fn a_floor_loop_on_a_hung_command_times_out_instead_of_spinning() {
        let (mock, mut qp) = timeout_config(AbortPolicy::Abort);
        mock.set_auto(true);
        mock.hold_next(Match::Any, 1);
        let start = Instant::now();
        let e = qp
            .floor(&floor_job(false, 2, 1, 100))
            .expect_err("the held command never completes");
        assert!(e.to_string().contains("floor loop on queue"), "{e}");
        assert!(
            start.elapsed() >= Duration::from_millis(50),
            "not before the timeout"
        );
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn commands_ended_by_sq_deletion_are_sent_again_outside_the_retry_budget() {
        // What a reset's queue deletion does to commands in flight on a
        // device that aborts them: they are sent again, even with no
        // retries allowed, on the fast path and as parts of a split request.
        let mut cfg = config(16, 8 << 10, 1024);
        cfg.options.retries = 0;
        let (mock, mut qp) = MockController::with_qpair(cfg).expect("mock");
        let deleted = Status::generic(generic::ABORTED_SQ_DELETION);
        assert!(!deleted.is_retryable());
        for (seed, blocks) in [(70, 8usize), (71, 64)] {
            mock.fail_next(Match::Opcode(NvmOpcode::Write), deleted, 5);
            let data = random_bytes(seed, blocks * LBA);
            assert_eq!(round_trip(&mock, &mut qp, 0, &data, (0, 0)), data);
        }
        let writes: Vec<Status> = mock
            .commands()
            .iter()
            .filter(|c| c.opcode == NvmOpcode::Write as u8)
            .map(|c| c.status)
            .collect();
        // Each request: its first five write commands ended by deletion.
        assert_eq!(writes.iter().filter(|s| **s == deleted).count(), 10);
        assert_eq!(writes.iter().filter(|s| s.is_success()).count(), 5);
        no_violations(&mock);
    }
}

/// Bad requests through the public API: each is refused at submit with a
/// one-line error, the request (and its buffer) comes back, and nothing
/// reaches the device. The table in docs/TESTING.md ("Bad input") quotes
/// these messages.
#[cfg(test)]
mod bad_requests {
    use super::*;

    #[test]
    fn bad_requests_are_refused_at_submit_and_nothing_is_written() {
        let (mock, mut qp) =
            MockController::with_qpair(MockConfig::new(&[(1, 512, 4096)])).expect("mock");
        let buf = || mock.pool().alloc(4096).expect("buffer");
        let cases: Vec<(IoRequest, &str)> = vec![
            (
                IoRequest::write(1, 0, 16, buf()),
                "16 blocks of 512 bytes at offset 0 do not fit 4096 bytes of data",
            ),
            (
                IoRequest::read(1, 0, 9, buf()),
                "9 blocks of 512 bytes at offset 0 do not fit 4096 bytes of data",
            ),
            (
                IoRequest::write(1, 0, 8, buf()).with_offset(1),
                "8 blocks of 512 bytes at offset 1 do not fit 4096 bytes of data",
            ),
            (
                IoRequest::write(1, 0, 1, buf()).with_offset(1),
                "data offset 1 is not a multiple of 4",
            ),
            (
                IoRequest::write(0, 0, 1, buf()),
                "namespace 0 is not active on this controller (active: 1)",
            ),
            (
                IoRequest::write(0xffff_ffff, 0, 1, buf()),
                "namespace 4294967295 is not active on this controller (active: 1)",
            ),
            (
                IoRequest::read(0xffff_ffff, 0, 1, buf()),
                "namespace 4294967295 is not active on this controller (active: 1)",
            ),
            (
                IoRequest::write(7, 0, 1, buf()),
                "namespace 7 is not active on this controller (active: 1)",
            ),
            (IoRequest::write(1, 0, 0, buf()), "a transfer of 0 blocks"),
            (
                IoRequest::write(1, 4095, 2, buf()),
                "LBA range 4095+2 is past the end of namespace 1 (4096 blocks)",
            ),
            (
                IoRequest::write(1, u64::MAX, 1, buf()),
                "LBA range 18446744073709551615+1 is past the end of namespace 1 (4096 blocks)",
            ),
        ];
        for (req, message) in cases {
            let (nsid, slba, blocks) = (req.nsid, req.slba, req.blocks);
            let rejected = qp.submit(req).expect_err(message);
            assert_eq!(rejected.error.to_string(), message);
            assert_eq!(
                (
                    rejected.request.nsid,
                    rejected.request.slba,
                    rejected.request.blocks
                ),
                (nsid, slba, blocks),
                "the request comes back"
            );
        }
        assert_eq!(qp.outstanding(), 0);
        mock.process().expect("mock");
        let stats = mock.stats();
        assert_eq!(
            (stats.writes, stats.reads),
            (0, 0),
            "nothing reached the device"
        );
        assert!(
            mock.read_disk(1, 0, 4096)
                .expect("disk")
                .iter()
                .all(|&b| b == 0),
            "nothing written"
        );
    }
}

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
    /// Optional NVM commands the controller says it supports (Identify
    /// ONCS; the mock executes Dataset Management and Write Zeroes
    /// whatever it says).
    pub oncs: nvme_spec::Oncs,
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

    /// Sets the optional NVM commands Identify Controller reports (ONCS).
    pub fn oncs(mut self, oncs: nvme_spec::Oncs) -> Self {
        self.oncs = oncs;
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
            oncs: nvme_spec::Oncs::empty(),
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
    /// CDW12's FUA and Limited Retry bits, as received (Read, Write and
    /// the other block commands; else empty).
    pub rw_flags: nvme_spec::RwFlags,
    /// CDW13 bits 7:0, the Dataset Management hints, as received (Read
    /// and Write; else 0). Decode with [`nvme_spec::DsmHints::from_bits`].
    pub dsm: u8,
}

impl CommandRecord {
    /// The Dataset Management hints received, decoded (`None` for a
    /// reserved access frequency).
    pub fn dsm_hints(&self) -> Option<nvme_spec::DsmHints> {
        nvme_spec::DsmHints::from_bits(self.dsm).ok()
    }
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

mod admin;
mod command;
mod controller;
mod data;
mod device;
mod state;
mod stream;

pub use controller::MockController;
use device::*;
use state::*;
pub use stream::{StreamOp, StreamReport, run_cqe_stream};

#[cfg(test)]
mod bad_requests;
#[cfg(test)]
mod tests;

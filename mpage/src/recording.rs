//! [`RecordingDevice`]: an in-memory namespace that records every command,
//! for host tests (the recording device the scenarios of
//! docs/MPAGE.md assume).
//!
//! * The disk is a `Vec<u8>` of `capacity · lba_size` bytes.
//! * Every accepted command is recorded ([`Command`]: op, LBA, LBAs,
//!   flags, data ranges, outcome) in submission order.
//! * Faults ([`Fault`]) fail commands that match an op and overlap an LBA
//!   range, with a chosen [`DeviceError`], a given number of times or
//!   forever. A failed write changes nothing on the disk; a failed read
//!   copies nothing.
//! * Completion order ([`Order`]): in submission order, reversed per poll,
//!   or held until [`RecordingDevice::release`] (all) or
//!   [`RecordingDevice::release_next`] (the oldest n, one command at a
//!   time).
//! * Commands execute (data is copied) at submission; completion is what
//!   is delayed. Clones share the same disk, record and completion queue,
//!   so a test keeps a clone to inspect what the engine, owning the other,
//!   did. [`RecordingDevice::new_queue`] gives another queue on the same
//!   namespace (disk, record, faults shared; completions not), as each
//!   thread has its own queue pair on NVMe.
//! * Bios are checked against the [`Geometry`] ([`Bio::check`]): a bio
//!   that breaks the PRP rules or exceeds the max transfer is rejected,
//!   so the tests also verify the builder. A command past the namespace
//!   end completes with LBA Out of Range.

use parking_lot::{Mutex, MutexGuard};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use crate::device::{Bio, BioOp, BlockDevice, Completion, DeviceError, Geometry, status};
pub use crate::tap::Command;
use crate::tap::CommandLog;

/// A fault to inject.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Only commands of this op (any op when `None`).
    pub op: Option<BioOp>,
    /// Only commands overlapping these LBAs (flushes match any range).
    pub lbas: Range<u64>,
    /// The error to complete them with.
    pub error: DeviceError,
    /// How many commands to fail; `None` = every matching one.
    pub times: Option<usize>,
}

impl Fault {
    /// Fails every `op` command overlapping `lbas` with NVMe `status`.
    pub fn status(op: BioOp, lbas: Range<u64>, status: u16) -> Self {
        Fault {
            op: Some(op),
            lbas,
            error: DeviceError::Status { status },
            times: None,
        }
    }

    /// Only the next `n` matching commands.
    pub fn times(mut self, n: usize) -> Self {
        self.times = Some(n);
        self
    }
}

/// When completions are handed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// At the next poll, in submission order.
    #[default]
    InOrder,
    /// At the next poll, newest first.
    Reversed,
    /// Only after [`RecordingDevice::release`].
    Held,
}

#[derive(Debug)]
struct State {
    geometry: Geometry,
    disk: Vec<u8>,
    faults: Vec<Fault>,
    order: Order,
    /// Rejects submissions with Busy while this many are in flight on a
    /// queue.
    queue_depth: Option<usize>,
}

/// One queue's completions.
#[derive(Debug, Default)]
struct Queue {
    ready: Vec<Completion>,
    held: Vec<Completion>,
}

/// The recording in-memory device. See the module documentation.
#[derive(Debug, Clone)]
pub struct RecordingDevice {
    state: Arc<Mutex<State>>,
    log: CommandLog,
    queue: Arc<Mutex<Queue>>,
}

impl RecordingDevice {
    /// A zeroed namespace of the given geometry.
    pub fn new(geometry: Geometry) -> Result<Self, DeviceError> {
        geometry.validate()?;
        let size = usize::try_from(geometry.capacity_bytes())
            .map_err(|_| DeviceError::Geometry("capacity does not fit memory"))?;
        Ok(RecordingDevice {
            state: Arc::new(Mutex::new(State {
                geometry,
                disk: vec![0; size],
                faults: Vec::new(),
                order: Order::InOrder,
                queue_depth: None,
            })),
            log: CommandLog::new(),
            queue: Arc::new(Mutex::new(Queue::default())),
        })
    }

    /// Another queue on the same namespace: the disk, the record and the
    /// faults are shared, completions are this queue's own (a thread's
    /// own queue pair).
    pub fn new_queue(&self) -> RecordingDevice {
        RecordingDevice {
            state: self.state.clone(),
            log: self.log.clone(),
            queue: Arc::new(Mutex::new(Queue::default())),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock()
    }

    /// Every command accepted so far, in submission order.
    pub fn commands(&self) -> Vec<Command> {
        self.log.commands()
    }

    /// Read and write commands only, as `(op, lba, bytes)`.
    pub fn io(&self) -> Vec<(BioOp, u64, usize)> {
        self.log.io()
    }

    /// Number of recorded commands of `op`.
    pub fn count(&self, op: BioOp) -> usize {
        self.log.count(op)
    }

    /// Forgets the record (not the disk).
    pub fn clear_log(&self) {
        self.log.clear();
    }

    /// Adds a fault.
    pub fn inject(&self, fault: Fault) {
        self.state().faults.push(fault);
    }

    /// Removes all faults.
    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    /// Sets the completion order.
    pub fn set_order(&self, order: Order) {
        self.state().order = order;
    }

    /// Makes this queue's held completions available to the next poll.
    pub fn release(&self) {
        let mut q = self.queue();
        let held = std::mem::take(&mut q.held);
        q.ready.extend(held);
    }

    /// Makes the oldest `n` of this queue's held completions (in
    /// submission order) available to the next poll, the rest stay held:
    /// the pieces of one chained ioend complete one at a time. Returns
    /// how many were released.
    pub fn release_next(&self, n: usize) -> usize {
        let mut q = self.queue();
        let n = n.min(q.held.len());
        let first: Vec<Completion> = q.held.drain(..n).collect();
        q.ready.extend(first);
        n
    }

    /// Limits the number of commands in flight (submit returns Busy).
    pub fn set_queue_depth(&self, depth: Option<usize>) {
        self.state().queue_depth = depth;
    }

    /// Copies `len` bytes of the disk at byte offset `offset`.
    pub fn read_disk(&self, offset: u64, len: usize) -> Vec<u8> {
        let st = self.state();
        let start = (offset as usize).min(st.disk.len());
        let end = (start + len).min(st.disk.len());
        st.disk[start..end].to_vec()
    }

    /// Writes `data` to the disk at byte offset `offset` (test setup).
    pub fn write_disk(&self, offset: u64, data: &[u8]) {
        let mut st = self.state();
        let start = (offset as usize).min(st.disk.len());
        let end = (start + data.len()).min(st.disk.len());
        st.disk[start..end].copy_from_slice(&data[..end - start]);
    }

    fn execute(st: &mut State, bio: &Bio) -> Result<(), DeviceError> {
        let fault = st.faults.iter_mut().position(|f| {
            f.op.is_none_or(|op| op == bio.op())
                && (bio.op() == BioOp::Flush
                    || (f.lbas.start < bio.lba() + bio.blocks() && bio.lba() < f.lbas.end))
                && f.times != Some(0)
        });
        if let Some(i) = fault {
            let f = &mut st.faults[i];
            if let Some(n) = f.times.as_mut() {
                *n -= 1;
            }
            return Err(f.error.clone());
        }
        if bio.op() == BioOp::Flush {
            return Ok(());
        }
        let lba_size = u64::from(st.geometry.lba_size);
        if bio.lba() + bio.blocks() > st.geometry.capacity {
            return Err(DeviceError::Status {
                status: status::LBA_OUT_OF_RANGE,
            });
        }
        let mut at = (bio.lba() * lba_size) as usize;
        for seg in bio.segments() {
            let span = at..at + seg.len();
            match bio.op() {
                BioOp::Read => seg.fill_from(&st.disk[span])?,
                _ => seg.copy_out(&mut st.disk[span])?,
            }
            at += seg.len();
        }
        Ok(())
    }

    fn in_flight_locked(q: &Queue) -> usize {
        q.ready.len() + q.held.len()
    }
}

impl BlockDevice for RecordingDevice {
    fn geometry(&self) -> Geometry {
        self.state().geometry
    }

    fn submit(&mut self, bio: Bio) -> Result<(), (Bio, DeviceError)> {
        let mut st = self.state();
        if let Err(e) = bio.check(&st.geometry) {
            log::error!("rejected {bio:?}: {e}");
            return Err((bio, e));
        }
        let mut q = self.queue();
        if st
            .queue_depth
            .is_some_and(|d| Self::in_flight_locked(&q) >= d)
        {
            return Err((bio, DeviceError::Busy));
        }
        let result = Self::execute(&mut st, &bio);
        log::trace!("{bio:?} -> {result:?}");
        self.log.push(Command::of(&bio, Some(result.clone())));
        let done = Completion { bio, result };
        match st.order {
            Order::Held => q.held.push(done),
            _ => q.ready.push(done),
        }
        Ok(())
    }

    fn poll(&mut self, done: &mut Vec<Completion>) -> Result<usize, DeviceError> {
        let order = self.state().order;
        let mut ready = std::mem::take(&mut self.queue().ready);
        if order == Order::Reversed {
            ready.reverse();
        }
        let n = ready.len();
        done.extend(ready);
        Ok(n)
    }

    fn wait(
        &mut self,
        done: &mut Vec<Completion>,
        _timeout: Duration,
    ) -> Result<usize, DeviceError> {
        // Nothing completes by itself: held commands wait for `release`,
        // so waiting longer cannot help.
        self.poll(done)
    }

    fn in_flight(&self) -> usize {
        Self::in_flight_locked(&self.queue())
    }
}

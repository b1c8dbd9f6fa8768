//! Serving one virtqueue from one NVMe queue pair: parsed requests become
//! NVMe commands whose data pointers go straight into guest memory when
//! the scatter list makes legal PRPs, and through a bounce buffer from the
//! DMA pool when it does not. Each request's status byte is written and
//! its chain returned once all its commands are back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nvme_driver::{DmaBuffer, IoCompletion, IoQPair, IoRequest, IoSegments};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::config::DeviceConfig;
use crate::memtable::MemTable;
use crate::request::{self, Action, ID_BYTES, Parsed, Reject};

/// How long one wait for completions sleeps at most before looking again.
const WAIT_TICK: Duration = Duration::from_millis(100);

/// Counters shared by all queue threads.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests whose data went straight between guest memory and the device.
    pub direct: AtomicU64,
    /// Requests copied through a bounce buffer (the scatter list broke
    /// the PRP rules).
    pub bounced: AtomicU64,
    /// Requests answered VIRTIO_BLK_S_IOERR.
    pub failed: AtomicU64,
    /// Requests answered VIRTIO_BLK_S_UNSUPP.
    pub unsupported: AtomicU64,
}

impl Stats {
    /// (direct, bounced, failed, unsupported).
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.direct.load(Ordering::Relaxed),
            self.bounced.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.unsupported.load(Ordering::Relaxed),
        )
    }
}

/// Errors that stop a queue thread's batch (not a request's).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The virtqueue's rings are not usable.
    #[error("virtqueue: {0}")]
    Queue(#[from] virtio_queue::Error),
    /// Guest memory could not be written (a used-ring update).
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// What one request waits for.
#[derive(Debug)]
struct InFlight {
    head: u16,
    status: Option<GuestAddress>,
    /// NVMe requests not yet back.
    outstanding: usize,
    /// The answer so far.
    code: u32,
    /// Bytes written to the guest's buffers on success.
    written: u32,
    /// For a bounced read: where the buffer's bytes go in guest memory.
    bounce_to: Vec<(GuestAddress, u32)>,
}

/// One queue thread's state: its queue pair and what it reuses.
#[derive(Debug)]
pub struct Worker {
    qpair: IoQPair,
    pool: nvme_driver::DmaPool,
    nsid: u32,
    config: DeviceConfig,
    id: [u8; ID_BYTES],
    stats: Arc<Stats>,
    done: Vec<IoCompletion>,
    copy: Vec<u8>,
}

impl Worker {
    /// A worker on `qpair` for namespace `nsid`.
    pub fn new(
        qpair: IoQPair,
        pool: nvme_driver::DmaPool,
        nsid: u32,
        config: DeviceConfig,
        id: [u8; ID_BYTES],
        stats: Arc<Stats>,
    ) -> Worker {
        Worker {
            qpair,
            pool,
            nsid,
            config,
            id,
            stats,
            done: Vec::new(),
            copy: Vec::new(),
        }
    }

    /// Serves `queue` until it has no more available chains; returns
    /// whether chains were returned to the used ring (the caller then
    /// signals the guest if the queue asks for it).
    pub fn serve(&mut self, queue: &mut Queue, table: &MemTable) -> Result<bool, WorkerError> {
        let mem = table.memory();
        let mut any = false;
        loop {
            queue.disable_notification(&*mem)?;
            let parsed: Vec<Parsed> = queue
                .iter(mem.clone())?
                .map(|chain| request::parse(chain, &self.config))
                .collect();
            if !parsed.is_empty() {
                for (head, len) in self.run(&*mem, table, parsed) {
                    queue.add_used(&*mem, head, len)?;
                }
                any = true;
            }
            if !queue.enable_notification(&*mem)? {
                break;
            }
        }
        Ok(any)
    }

    /// Runs parsed requests to completion: their commands all go out
    /// first, then the completions are reaped. Returns (head, used
    /// length) of each, in completion order, with its status written.
    pub fn run<G: GuestMemory + ?Sized>(
        &mut self,
        mem: &G,
        table: &MemTable,
        parsed: Vec<Parsed>,
    ) -> Vec<(u16, u32)> {
        let mut flights = Vec::with_capacity(parsed.len());
        for (tag, p) in parsed.into_iter().enumerate() {
            let mut f = InFlight {
                head: p.head,
                status: p.status,
                outstanding: 0,
                code: VIRTIO_BLK_S_OK,
                written: 0,
                bounce_to: Vec::new(),
            };
            match p.action {
                Ok(action) => {
                    f.written = action.bytes_written();
                    if let Err(e) = self.start(mem, table, &action, tag as u64, &mut f) {
                        log::warn!("request at descriptor {}: {e}", p.head);
                        f.code = VIRTIO_BLK_S_IOERR;
                    }
                }
                Err(Reject::Unsupported(m)) => {
                    log::debug!("request at descriptor {}: unsupported: {m}", p.head);
                    f.code = VIRTIO_BLK_S_UNSUPP;
                }
                Err(Reject::Invalid(m)) => {
                    log::warn!("request at descriptor {}: {m}", p.head);
                    f.code = VIRTIO_BLK_S_IOERR;
                }
            }
            flights.push(f);
        }
        let mut waiting: usize = flights.iter().filter(|f| f.outstanding > 0).count();
        let mut out = Vec::with_capacity(flights.len());
        for f in flights.iter().filter(|f| f.outstanding == 0) {
            out.push(self.finish(mem, f));
        }
        while waiting > 0 {
            let mut done = std::mem::take(&mut self.done);
            if let Err(e) = self.qpair.wait(&mut done, WAIT_TICK) {
                // The queue pair failed as a whole (controller gone or
                // dead): every request still waiting fails.
                log::error!("queue {}: {e}", self.qpair.qid());
                for f in flights.iter_mut().filter(|f| f.outstanding > 0) {
                    f.outstanding = 0;
                    f.code = VIRTIO_BLK_S_IOERR;
                    out.push(self.finish(mem, f));
                }
                self.done = done;
                break;
            }
            for c in done.drain(..) {
                let Some(f) = flights.get_mut(c.tag as usize) else {
                    log::error!("completion with unknown tag {}", c.tag);
                    continue;
                };
                if let Err(e) = &c.result {
                    log::warn!("request at descriptor {}: {e}", f.head);
                    f.code = VIRTIO_BLK_S_IOERR;
                } else if let Some(buf) = &c.data
                    && !f.bounce_to.is_empty()
                    && let Err(e) = copy_out(&mut self.copy, buf, mem, &f.bounce_to)
                {
                    log::warn!("request at descriptor {}: {e}", f.head);
                    f.code = VIRTIO_BLK_S_IOERR;
                }
                f.outstanding = f.outstanding.saturating_sub(1);
                if f.outstanding == 0 {
                    waiting -= 1;
                    let f = &flights[c.tag as usize];
                    out.push(self.finish(mem, f));
                }
            }
            self.done = done;
        }
        out
    }

    /// Writes `f`'s status and counts it; returns (head, used length).
    fn finish<G: GuestMemory + ?Sized>(&self, mem: &G, f: &InFlight) -> (u16, u32) {
        match f.code {
            VIRTIO_BLK_S_OK => {}
            VIRTIO_BLK_S_UNSUPP => {
                self.stats.unsupported.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        let Some(status) = f.status else {
            return (f.head, 0);
        };
        if let Err(e) = mem.write_obj(f.code as u8, status) {
            log::warn!("status of descriptor {}: {e}", f.head);
            return (f.head, 0);
        }
        let data = if f.code == VIRTIO_BLK_S_OK {
            f.written
        } else {
            0
        };
        (f.head, data + 1)
    }

    /// Submits the commands of `action` (tag `tag`), or answers it at
    /// once (GET_ID).
    fn start<G: GuestMemory + ?Sized>(
        &mut self,
        mem: &G,
        table: &MemTable,
        action: &Action,
        tag: u64,
        f: &mut InFlight,
    ) -> Result<(), String> {
        let nsid = self.nsid;
        let reqs = match action {
            Action::Read { slba, blocks, data } | Action::Write { slba, blocks, data } => {
                let write = matches!(action, Action::Write { .. });
                vec![self.data_request(mem, table, write, *slba, *blocks, data, f)?]
            }
            Action::Flush => vec![IoRequest::flush(nsid)],
            Action::GetId { data } => {
                let mut left = &self.id[..];
                for &(addr, len) in data {
                    let n = left.len().min(len as usize);
                    mem.write_slice(&left[..n], addr)
                        .map_err(|e| format!("GET_ID answer at {:#x}: {e}", addr.0))?;
                    left = &left[n..];
                }
                Vec::new()
            }
            Action::Discard(ranges) => ranges
                .iter()
                .map(|&(slba, blocks)| IoRequest::deallocate(nsid, slba, blocks))
                .collect(),
            Action::WriteZeroes(ranges) => ranges
                .iter()
                .map(|&(slba, blocks)| IoRequest::write_zeroes(nsid, slba, blocks))
                .collect(),
        };
        for req in reqs {
            self.qpair
                .submit(req.with_tag(tag))
                .map_err(|rejected| rejected.to_string())?;
            f.outstanding += 1;
        }
        Ok(())
    }

    /// The NVMe request of a read or write: on the guest's pieces when
    /// they make legal PRPs, else on a bounce buffer (filled now for a
    /// write, copied out at completion for a read).
    #[allow(clippy::too_many_arguments)]
    fn data_request<G: GuestMemory + ?Sized>(
        &mut self,
        mem: &G,
        table: &MemTable,
        write: bool,
        slba: u64,
        blocks: u64,
        data: &[(GuestAddress, u32)],
        f: &mut InFlight,
    ) -> Result<IoRequest, String> {
        let nsid = self.nsid;
        let mut pieces = Vec::with_capacity(data.len());
        for &(addr, len) in data {
            if !table.translate(addr, len, &mut pieces) {
                return Err(format!(
                    "data at {:#x}+{len:#x} is not in the mapped guest memory",
                    addr.0
                ));
            }
        }
        if IoSegments::check(&pieces).is_ok() {
            self.stats.direct.fetch_add(1, Ordering::Relaxed);
            let segs = IoSegments::new(pieces);
            return Ok(if write {
                IoRequest::write_segments(nsid, slba, blocks, segs)
            } else {
                IoRequest::read_segments(nsid, slba, blocks, segs)
            });
        }
        self.stats.bounced.fetch_add(1, Ordering::Relaxed);
        let total: usize = data.iter().map(|&(_, l)| l as usize).sum();
        let buf = self
            .pool
            .alloc_uninit(total)
            .map_err(|e| format!("bounce buffer of {total} bytes: {e}"))?;
        if write {
            copy_in(&mut self.copy, &buf, mem, data)?;
            Ok(IoRequest::write(nsid, slba, blocks, buf))
        } else {
            f.bounce_to = data.to_vec();
            Ok(IoRequest::read(nsid, slba, blocks, buf))
        }
    }
}

/// Copies the guest's `data` pieces into `buf`, in order.
fn copy_in<G: GuestMemory + ?Sized>(
    scratch: &mut Vec<u8>,
    buf: &DmaBuffer,
    mem: &G,
    data: &[(GuestAddress, u32)],
) -> Result<(), String> {
    let mut at = 0;
    for &(addr, len) in data {
        scratch.resize(len as usize, 0);
        mem.read_slice(scratch, addr)
            .map_err(|e| format!("reading guest data at {:#x}: {e}", addr.0))?;
        buf.write(at, scratch).map_err(|e| e.to_string())?;
        at += len as usize;
    }
    Ok(())
}

/// Copies `buf` out into the guest's `data` pieces, in order.
fn copy_out<G: GuestMemory + ?Sized>(
    scratch: &mut Vec<u8>,
    buf: &DmaBuffer,
    mem: &G,
    data: &[(GuestAddress, u32)],
) -> Result<(), String> {
    let mut at = 0;
    for &(addr, len) in data {
        scratch.resize(len as usize, 0);
        buf.read(at, scratch).map_err(|e| e.to_string())?;
        mem.write_slice(scratch, addr)
            .map_err(|e| format!("writing guest data at {:#x}: {e}", addr.0))?;
        at += len as usize;
    }
    Ok(())
}

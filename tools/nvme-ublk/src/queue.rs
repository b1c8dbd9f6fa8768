//! One ublk queue served from one NVMe queue pair, on one thread.
//!
//! Each tag owns a buffer from the driver's DMA pool. The tag is fetched
//! (and later committed) with that buffer's address: for a write the
//! kernel copies the bio's pages into it before handing the tag over, and
//! for a read it copies the buffer into the bio once the tag is committed.
//! The controller moves the data between the buffer and the namespace;
//! this process never reads or writes the bytes, and never holds a Rust
//! reference to them.
//!
//! The loop reaps NVMe completions and queues their commits in the ublk
//! ring, then sends the whole batch in one `io_uring_enter`. With
//! nothing more to do it sleeps in that same call, on the ublk ring, where
//! a poll on the NVMe queue's interrupt eventfd and a tick timeout are
//! armed too: a ublk request, an NVMe completion or the driver's deadline
//! tick wakes it (with nothing in flight, only a request). With
//! `--spin-us` it first polls the NVMe queue for that long, entering the
//! kernel only to send commits; a queue pair without an interrupt is
//! polled, the kernel entered on every turn to pick up new requests.

use std::time::{Duration, Instant};

use io_uring::{opcode, types};
use libublk::io::{UblkQueue, with_task_io_ring_mut};
use libublk::{BufDesc, UblkError, UblkIORes, UblkUringData, sys};
use nvme_driver::nvme_spec::RwFlags;
use nvme_driver::{DmaBuffer, DmaPool, IoCompletion, IoQPair};

use crate::params::Geometry;
use crate::request::{self, Descriptor};

/// Why a queue stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The ublk side (io_uring) failed.
    #[error("ublk queue {qid}: {source}")]
    Ublk {
        /// The queue.
        qid: u16,
        /// libublk's error.
        source: UblkError,
    },
    /// The NVMe side failed as a whole (controller gone or dead).
    #[error("ublk queue {qid}: NVMe queue pair: {source}")]
    Nvme {
        /// The queue.
        qid: u16,
        /// The driver's error.
        source: nvme_driver::Error,
    },
    /// A tag's buffer could not be replaced.
    #[error("ublk queue {qid}: tag {tag}: no DMA buffer: {source}")]
    Buffer {
        /// The queue.
        qid: u16,
        /// The tag whose buffer is missing.
        tag: u16,
        /// The DMA pool's error.
        source: nvme_driver::Error,
    },
}

/// What one queue thread owns: its NVMe queue pair and one DMA buffer per
/// tag (made before the ublk device is added, so a failure leaves no
/// device behind).
#[derive(Debug)]
pub struct QueueIo {
    qpair: IoQPair,
    pool: DmaPool,
    /// Per tag: its buffer, `None` while a command owns it.
    bufs: Vec<Option<DmaBuffer>>,
    /// Per tag: the address the kernel was last given for it.
    addrs: Vec<usize>,
    /// Per tag: what a success completes with (the request's bytes).
    done_bytes: Vec<i32>,
    /// Per tag: the request is a read or write with FUA (counted).
    fua: Vec<bool>,
    buf_bytes: usize,
    /// How long to poll the NVMe queue before sleeping on its interrupt.
    spin: Duration,
    /// Benchmark floor: complete every request at once, no NVMe command.
    null_io: bool,
}

/// Counts of one queue's requests, logged when it stops.
#[derive(Debug, Default, Clone, Copy)]
pub struct QueueStats {
    /// Requests completed successfully.
    pub ok: u64,
    /// Requests the NVMe side failed.
    pub failed: u64,
    /// Requests refused by validation.
    pub refused: u64,
    /// Of those completed successfully: reads and writes with FUA.
    pub fua: u64,
}

impl QueueIo {
    /// Resources for a queue of `depth` tags with `buf_bytes`-byte buffers.
    pub fn new(
        qpair: IoQPair,
        pool: &DmaPool,
        depth: u16,
        buf_bytes: usize,
    ) -> nvme_driver::Result<Self> {
        let bufs = (0..depth)
            .map(|_| pool.alloc_uninit(buf_bytes))
            .collect::<nvme_driver::Result<Vec<_>>>()?;
        let addrs = bufs.iter().map(DmaBuffer::host_address).collect();
        Ok(QueueIo {
            qpair,
            pool: pool.clone(),
            bufs: bufs.into_iter().map(Some).collect(),
            addrs,
            done_bytes: vec![0; depth as usize],
            fua: vec![false; depth as usize],
            buf_bytes,
            spin: Duration::ZERO,
            null_io: false,
        })
    }

    /// The no-device floor (`--null-io`): every request that passes the
    /// checks completes at once with success (a read or write with its
    /// byte count, the data untouched: a read returns whatever the tag's
    /// buffer held), and no NVMe command is sent. What the ublk crossing
    /// alone costs a client; not for real use.
    pub fn with_null_io(mut self, on: bool) -> Self {
        self.null_io = on;
        self
    }

    /// Hybrid polling: with requests in flight and nothing else to do,
    /// poll the NVMe queue for up to `spin` before sleeping on its
    /// interrupt (zero: sleep at once). A queue pair without an interrupt
    /// always polls.
    pub fn with_spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self
    }

    /// Serves queue `q` until the device stops, then waits for the NVMe
    /// commands still in flight (their buffers must not be given back
    /// while the controller may use them).
    pub fn serve(mut self, q: &UblkQueue, g: &Geometry) -> Result<QueueStats, QueueError> {
        let qid = q.get_qid();
        let ublk = |source| QueueError::Ublk { qid, source };
        let depth = self.bufs.len();
        if q.get_depth() as usize != depth {
            // Let the device's start fail rather than wait for this queue.
            q.dev.notify_buffer_registration_complete(true);
            return Err(ublk(UblkError::InvalidVal));
        }
        for tag in q.tags() {
            // FETCH with the tag's buffer address. The future is for
            // async targets and is not polled: this loop reaps the CQE.
            #[allow(deprecated, clippy::let_underscore_future)]
            let _ = q.submit_io_cmd(
                tag,
                sys::UBLK_U_IO_FETCH_REQ,
                std::ptr::with_exposed_provenance_mut(self.addrs[tag as usize]),
                -1,
            );
        }
        // The device is started (START_DEV) once every queue says its
        // buffers are in place; libublk counts only its own IoBufs, so
        // this queue says it itself.
        q.dev.notify_buffer_registration_complete(false);
        let mut stats = QueueStats::default();
        let mut arrived: Vec<(u64, i32)> = Vec::with_capacity(depth);
        let mut done: Vec<IoCompletion> = Vec::with_capacity(depth);
        let mut wake = Wake::new();
        let mut down = false;
        let mut spin_from: Option<Instant> = None;
        loop {
            // The NVMe side first: its completions become commits, queued
            // in the ublk ring and sent together below.
            let mut progressed = false;
            if self.qpair.outstanding() > 0 {
                match self.qpair.poll(&mut done) {
                    Ok(n) => progressed = n > 0,
                    Err(source) => {
                        self.drain(qid);
                        return Err(QueueError::Nvme { qid, source });
                    }
                }
                for c in done.drain(..) {
                    self.finish(q, c, &mut stats)?;
                }
            } else if down {
                return Ok(stats);
            }
            if down {
                // No more requests come: wait for those in flight.
                if let Err(source) = self.qpair.wait(&mut done, IoQPair::SLEEP_TICK) {
                    self.drain(qid);
                    return Err(QueueError::Nvme { qid, source });
                }
                for c in done.drain(..) {
                    self.finish(q, c, &mut stats)?;
                }
                continue;
            }
            let in_flight = self.qpair.outstanding() > 0;
            let hybrid = !self.spin.is_zero() && self.qpair.interrupt_fd().is_some();
            if hybrid && (progressed || spin_from.is_none()) {
                spin_from = Some(Instant::now());
            }
            let to_wait = if !in_flight {
                // Idle: send the commits and sleep until the kernel hands
                // over a request, in one io_uring_enter.
                spin_from = None;
                1
            } else if hybrid && spin_from.is_some_and(|t| t.elapsed() < self.spin) {
                // Hybrid polling: the NVMe completion may be close. The
                // kernel is entered only to send commits (which also runs
                // its pending task work: a request handed over lands in
                // the CQ only then).
                // Peeking at the ring costs no syscall.
                let work = with_task_io_ring_mut(|r| {
                    !r.submission().is_empty() || !r.completion().is_empty()
                });
                if !work {
                    std::hint::spin_loop();
                    continue;
                }
                0
            } else if wake.armed(q, self.qpair.interrupt_fd()) {
                // Send the commits and sleep on the ublk ring and the NVMe
                // interrupt (and the tick, for the driver's deadlines) in
                // one io_uring_enter; it returns at once if the ring holds
                // completions already.
                spin_from = None;
                1
            } else {
                // A polled queue pair: spin, entering the kernel on every
                // turn to pick up new requests.
                0
            };
            let r = q.flush_and_wake_io_tasks(
                |user_data, cqe, _last| arrived.push((user_data, cqe.result())),
                to_wait,
            );
            match r {
                Ok(_) => {}
                Err(UblkError::QueueIsDown) => {
                    log::info!("ublk queue {qid}: stopping");
                    down = true;
                }
                Err(UblkError::IOError(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.drain(qid);
                    return Err(ublk(e));
                }
            }
            let mut woke = false;
            for (user_data, res) in arrived.drain(..) {
                if user_data & UblkUringData::Target as u64 != 0 {
                    woke |= wake.completed(user_data);
                    continue;
                }
                // The tag is the low 16 bits of an io command's user data.
                let tag = user_data as u16;
                if !q.owns_tag(tag) || usize::from(tag) >= depth {
                    log::error!("ublk queue {qid}: completion for foreign tag {tag}");
                    continue;
                }
                if res == sys::UBLK_IO_RES_OK as i32 {
                    self.start(q, g, tag, &mut stats);
                } else if res != sys::UBLK_IO_RES_ABORT {
                    log::warn!("ublk queue {qid}: tag {tag}: command result {res}");
                }
            }
            if (woke || (to_wait == 1 && in_flight))
                && let Err(source) = self.qpair.after_sleep(woke)
            {
                self.drain(qid);
                return Err(QueueError::Nvme { qid, source });
            }
        }
    }

    /// Starts the request the kernel handed over on `tag`.
    fn start(&mut self, q: &UblkQueue, g: &Geometry, tag: u16, stats: &mut QueueStats) {
        let t = usize::from(tag);
        let d = Descriptor::from(q.get_iod(tag));
        let plan = match request::plan(d, g, self.buf_bytes) {
            Ok(plan) => plan,
            Err(e) => {
                log::warn!("ublk queue {}: tag {tag}: {e}", q.get_qid());
                stats.refused += 1;
                self.complete(q, tag, e.errno());
                return;
            }
        };
        self.fua[t] = plan.hints.flags.contains(RwFlags::FUA);
        if self.null_io {
            stats.ok += 1;
            stats.fua += u64::from(self.fua[t]);
            self.complete(q, tag, plan.done_bytes);
            return;
        }
        let Some(req) = plan.request(g.nsid, || self.bufs[t].take()) else {
            // Never: a tag's buffer is back before it is fetched.
            log::error!("ublk queue {}: tag {tag}: buffer in use", q.get_qid());
            self.complete(q, tag, -libc::EIO);
            return;
        };
        self.done_bytes[t] = plan.done_bytes;
        if let Err(rejected) = self.qpair.submit(req.with_tag(u64::from(tag))) {
            log::warn!("ublk queue {}: tag {tag}: {rejected}", q.get_qid());
            stats.failed += 1;
            let rejected = *rejected;
            if let Some(buf) = rejected.request.data {
                self.bufs[t] = Some(buf);
            }
            self.complete(q, tag, -libc::EIO);
        }
    }

    /// Completes the request whose NVMe command finished.
    fn finish(
        &mut self,
        q: &UblkQueue,
        c: IoCompletion,
        stats: &mut QueueStats,
    ) -> Result<(), QueueError> {
        let qid = q.get_qid();
        let Some(tag) = u16::try_from(c.tag)
            .ok()
            .filter(|t| usize::from(*t) < self.bufs.len())
        else {
            log::error!(
                "ublk queue {qid}: NVMe completion with unknown tag {}",
                c.tag
            );
            return Ok(());
        };
        let t = usize::from(tag);
        let data_op = matches!(c.op, nvme_driver::IoOp::Read | nvme_driver::IoOp::Write);
        if let Some(buf) = c.data {
            self.bufs[t] = Some(buf);
        } else if data_op {
            // The driver gave up on the command and keeps the buffer (the
            // device may still write it): the tag gets a new one, whose
            // address goes to the kernel with this commit.
            let buf = self
                .pool
                .alloc_uninit(self.buf_bytes)
                .map_err(|source| QueueError::Buffer { qid, tag, source })?;
            self.addrs[t] = buf.host_address();
            self.bufs[t] = Some(buf);
        }
        let res = match c.result {
            Ok(()) => {
                stats.ok += 1;
                stats.fua += u64::from(self.fua[t]);
                self.done_bytes[t]
            }
            Err(e) => {
                log::warn!("ublk queue {qid}: tag {tag}: {e}");
                stats.failed += 1;
                -libc::EIO
            }
        };
        self.complete(q, tag, res);
        Ok(())
    }

    /// Commits `tag` with `res` (bytes done, or a negative errno) and
    /// fetches its next request into the tag's buffer.
    fn complete(&self, q: &UblkQueue, tag: u16, res: i32) {
        let addr = std::ptr::with_exposed_provenance::<u8>(self.addrs[usize::from(tag)]);
        if let Err(e) =
            q.complete_io_cmd_unified(tag, BufDesc::RawAddress(addr), Ok(UblkIORes::Result(res)))
        {
            log::error!("ublk queue {}: tag {tag}: commit failed: {e}", q.get_qid());
        }
    }

    /// Waits for the NVMe commands still in flight after a failure, so
    /// that no buffer goes back while the device may use it (the queue
    /// pair keeps those it gives up on).
    fn drain(&mut self, qid: u16) {
        let mut done = Vec::new();
        while self.qpair.outstanding() > 0 {
            done.clear();
            if let Err(e) = self
                .qpair
                .wait(&mut done, std::time::Duration::from_secs(1))
            {
                log::warn!("ublk queue {qid}: draining: {e}");
                break;
            }
        }
    }
}

/// User data of the ring's poll on the NVMe queue's interrupt eventfd
/// (target bit set: libublk leaves such completions to the target).
const WAKE_IRQ: u64 = UblkUringData::Target as u64 | 1;
/// User data of the ring's timeout of one driver tick.
const WAKE_TICK: u64 = UblkUringData::Target as u64 | 2;

/// What wakes the queue's thread from `io_uring_enter` besides a ublk
/// request while NVMe commands are in flight: a poll on the queue pair's
/// interrupt eventfd and a timeout of [`IoQPair::SLEEP_TICK`] (so that the
/// driver scans its deadlines on time), both in the ublk queue's ring.
/// Each is armed again only after it completed, so a sleep costs no SQE
/// when they are already there.
#[derive(Debug)]
struct Wake {
    irq: bool,
    tick: bool,
    /// Read by the kernel when the timeout SQE is submitted: kept here
    /// until then (and after).
    tick_len: Box<types::Timespec>,
}

impl Wake {
    fn new() -> Self {
        let tick = IoQPair::SLEEP_TICK;
        Wake {
            irq: false,
            tick: false,
            tick_len: Box::new(
                types::Timespec::new()
                    .sec(tick.as_secs())
                    .nsec(tick.subsec_nanos()),
            ),
        }
    }

    /// Queues the poll and the timeout that are not armed yet; false if
    /// the queue pair has no interrupt (then the thread must not sleep).
    fn armed(&mut self, q: &UblkQueue, irq_fd: Option<std::os::fd::RawFd>) -> bool {
        let Some(fd) = irq_fd else {
            return false;
        };
        if !self.irq {
            let sqe = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
                .build()
                .user_data(WAKE_IRQ);
            if let Err(e) = q.ublk_submit_sqe_sync(sqe) {
                log::warn!("ublk queue {}: polling the interrupt: {e}", q.get_qid());
                return false;
            }
            self.irq = true;
        }
        if !self.tick {
            let ts: *const types::Timespec = &*self.tick_len;
            let sqe = opcode::Timeout::new(ts).build().user_data(WAKE_TICK);
            if let Err(e) = q.ublk_submit_sqe_sync(sqe) {
                log::warn!("ublk queue {}: arming the tick: {e}", q.get_qid());
                return false;
            }
            self.tick = true;
        }
        true
    }

    /// Notes a completion of the ring with the target bit; true if it is
    /// the interrupt's poll (the eventfd is then to be cleared).
    fn completed(&mut self, user_data: u64) -> bool {
        match user_data {
            WAKE_IRQ => {
                self.irq = false;
                true
            }
            WAKE_TICK => {
                self.tick = false;
                false
            }
            _ => false,
        }
    }
}

//! Blocking helpers over the asynchronous path: wait, execute, and
//! read/write/flush/... that return when their request is done.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};

use super::{INTERRUPT_TICK, IoCompletion, IoQPair, IoRequest};
use crate::error::{Error, Result};
use crate::memory::DmaBuffer;

/// Epoll token of the fd of [`IoQPair::watch_readable`] (the interrupt
/// eventfd is registered with 0).
const EXTRA_FD_TOKEN: u64 = 1;

/// How the fd of [`IoQPair::watch_readable`] is registered: readable,
/// one event per arming.
const WATCHED_EVENTS: EventSet = EventSet::IN.union(EventSet::ONE_SHOT);

impl IoQPair {
    /// Polls; if nothing finished, waits up to `timeout` for something to
    /// finish: asleep on the queue's interrupt in interrupt mode, spinning
    /// otherwise. Returns how many requests it appended to `out` (0 when
    /// the time ran out or nothing is outstanding).
    pub fn wait(&mut self, out: &mut Vec<IoCompletion>, timeout: Duration) -> Result<usize> {
        self.wait_with(timeout, |q| q.poll(out))
    }

    /// Registers `fd` in the queue's epoll set for good, so that
    /// [`IoQPair::wait_or_watched`] also returns as soon as it is readable
    /// (a virtqueue's kick eventfd, say) with no system call per wait:
    /// one thread sleeps on its completions and on another event at once.
    /// Replaces the fd watched before, if any. The caller keeps `fd` open
    /// until it watches another one, calls [`IoQPair::unwatch_readable`],
    /// or drops the queue pair (a number closed and reused meanwhile is
    /// not the file that was registered). Does nothing in polled mode.
    ///
    /// The registration is one-shot: an event seen by a plain
    /// [`IoQPair::wait`] disarms it without waking that wait again, and
    /// the next [`IoQPair::wait_or_watched`] re-arms it (one `epoll_ctl`,
    /// only after an event was seen).
    pub fn watch_readable(&mut self, fd: &impl AsRawFd) -> Result<()> {
        self.unwatch_readable();
        let qid = self.qid();
        let Some(irq) = &mut self.irq else {
            return Ok(());
        };
        let raw = fd.as_raw_fd();
        irq.epoll
            .ctl(
                ControlOperation::Add,
                raw,
                EpollEvent::new(WATCHED_EVENTS, EXTRA_FD_TOKEN),
            )
            .map_err(|e| Error::os("adding an fd to the queue's epoll", e))?;
        log::debug!("queue {qid}: watching fd {raw}");
        irq.watched = Some(raw);
        irq.armed = true;
        Ok(())
    }

    /// Takes the fd of [`IoQPair::watch_readable`] out of the queue's
    /// epoll set (before the caller closes it).
    pub fn unwatch_readable(&mut self) {
        let qid = self.qid();
        let Some(irq) = &mut self.irq else {
            return;
        };
        if let Some(raw) = irq.watched.take()
            && let Err(e) = irq
                .epoll
                .ctl(ControlOperation::Delete, raw, EpollEvent::default())
        {
            log::warn!("queue {qid}: removing fd {raw} from its epoll: {e}");
        }
        irq.armed = false;
    }

    /// The fd [`IoQPair::watch_readable`] registered, if any.
    pub fn watched_fd(&self) -> Option<RawFd> {
        self.irq.as_ref().and_then(|irq| irq.watched)
    }

    /// [`IoQPair::wait`] that also returns as soon as the fd of
    /// [`IoQPair::watch_readable`] is readable. Returns the requests
    /// appended to `out` and whether the fd was seen readable (it is not
    /// read: the caller consumes the event). In polled mode, or with
    /// nothing watched, the flag is always false (a polled caller spins
    /// anyway).
    pub fn wait_or_watched(
        &mut self,
        out: &mut Vec<IoCompletion>,
        timeout: Duration,
    ) -> Result<(usize, bool)> {
        let qid = self.qid();
        if let Some(irq) = &mut self.irq
            && let Some(raw) = irq.watched
            && !irq.armed
        {
            irq.epoll
                .ctl(
                    ControlOperation::Modify,
                    raw,
                    EpollEvent::new(WATCHED_EVENTS, EXTRA_FD_TOKEN),
                )
                .map_err(|e| Error::os("re-arming a watched fd", e))?;
            log::trace!("queue {qid}: fd {raw} re-armed");
            irq.armed = true;
        }
        let mut readable = false;
        let n = self.wait_inner(timeout, Some(&mut readable), |q| q.poll(out))?;
        Ok((n, readable))
    }

    /// The eventfd the queue's interrupt signals, for a caller that sleeps
    /// on it in its own event loop (an io_uring poll, say) instead of in
    /// [`IoQPair::wait`] (open as long as the queue pair is); `None` in
    /// polled mode. Such a caller sleeps at
    /// most [`IoQPair::SLEEP_TICK`] at a time while requests are in flight
    /// and calls [`IoQPair::after_sleep`] after each sleep.
    pub fn interrupt_fd(&self) -> Option<RawFd> {
        self.irq.as_ref().map(|irq| irq.fd.as_raw_fd())
    }

    /// After a caller's own sleep on [`IoQPair::interrupt_fd`]: clears the
    /// eventfd if `woke` (the interrupt was seen), so that the next sleep
    /// does not return at once, and does what [`IoQPair::wait`] does while
    /// it sleeps: scans the deadlines and, once a tick, checks the
    /// controller's health. What these finish is handed back by the next
    /// poll.
    pub fn after_sleep(&mut self, woke: bool) -> Result<()> {
        if woke && let Some(irq) = &self.irq {
            // Non-blocking: an interrupt after this read leaves the
            // eventfd readable, so none is lost.
            let _ = irq.fd.read();
            self.interrupts += 1;
        }
        let mut done = Vec::new();
        let result = self.tick(&mut done).and_then(|()| {
            if self.last_health_check.elapsed() >= INTERRUPT_TICK {
                self.last_health_check = Instant::now();
                self.check_health(&mut done)?;
            }
            Ok(())
        });
        self.stash.append(&mut done);
        result
    }

    /// The loop of [`IoQPair::wait`], around one kind of poll.
    pub(super) fn wait_with(
        &mut self,
        timeout: Duration,
        poll: impl FnMut(&mut Self) -> Result<usize>,
    ) -> Result<usize> {
        self.wait_inner(timeout, None, poll)
    }

    /// The loop of [`IoQPair::wait`]; with `readable`, returns early,
    /// setting it, when the fd of [`IoQPair::watch_readable`] wakes it
    /// (without, such a wake-up only disarms the fd).
    fn wait_inner(
        &mut self,
        timeout: Duration,
        mut readable: Option<&mut bool>,
        mut poll: impl FnMut(&mut Self) -> Result<usize>,
    ) -> Result<usize> {
        let start = Instant::now();
        loop {
            let n = poll(self)?;
            if n > 0 || self.outstanding() == 0 || readable.as_deref() == Some(&true) {
                return Ok(n);
            }
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                return Ok(0);
            }
            let Some(irq) = &mut self.irq else {
                std::hint::spin_loop();
                continue;
            };
            // Sleep at most a tick, so that deadlines are checked on time
            // even when no interrupt comes.
            let nap = (timeout - elapsed).min(INTERRUPT_TICK);
            let mut events = [EpollEvent::default(); 2];
            let woke = irq
                .epoll
                .wait(nap.as_millis().max(1) as i32, &mut events)
                .map_err(|e| Error::os("epoll_wait", e))?;
            let mut interrupted = false;
            for e in &events[..woke] {
                if e.data() == EXTRA_FD_TOKEN {
                    // One-shot: disarmed until the next wait_or_watched.
                    irq.armed = false;
                    if let Some(r) = readable.as_deref_mut() {
                        *r = true;
                    }
                } else {
                    interrupted = true;
                }
            }
            if interrupted {
                // Non-blocking: clears the counter; an interrupt after this
                // read leaves the eventfd readable, so none is lost.
                let _ = irq.fd.read();
                self.interrupts += 1;
            }
            if self.last_health_check.elapsed() >= INTERRUPT_TICK {
                self.last_health_check = Instant::now();
                // What this finishes is handed back by the next poll.
                let mut done = Vec::new();
                self.check_health(&mut done)?;
                self.stash.append(&mut done);
            }
        }
    }

    /// Submits `req` and polls until it completes; completions of other
    /// requests met meanwhile are kept for the next [`IoQPair::poll`].
    pub fn execute(&mut self, mut req: IoRequest) -> Result<IoCompletion> {
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1) | 1 << 63;
        let user_tag = req.tag;
        req.tag = tag;
        self.submit(req).map_err(|r| r.error)?;
        let mut got = Vec::new();
        loop {
            // Spins, or sleeps on the interrupt in interrupt mode.
            let polled = self.wait(&mut got, INTERRUPT_TICK);
            if polled.is_err() {
                // A failed poll keeps what finished in the stash.
                got.append(&mut self.stash);
            }
            if let Some(i) = got.iter().position(|c| c.tag == tag) {
                let mut done = got.swap_remove(i);
                self.stash.append(&mut got);
                done.tag = user_tag;
                return Ok(done);
            }
            if let Err(e) = polled {
                // Other requests' completions stay for the next poll.
                self.stash.append(&mut got);
                return Err(e);
            }
        }
    }

    pub(super) fn execute_ok(&mut self, req: IoRequest) -> Result<Option<DmaBuffer>> {
        let done = self.execute(req)?;
        done.result?;
        Ok(done.data)
    }

    pub(super) fn blocks_of(&self, nsid: u32, len: usize) -> Result<u64> {
        self.shared.namespace(nsid)?.blocks_in(len)
    }

    /// Reads `buf.len()` bytes (whole blocks) from `slba`.
    pub fn read(&mut self, nsid: u32, slba: u64, buf: &mut [u8]) -> Result<()> {
        let blocks = self.blocks_of(nsid, buf.len())?;
        let dma = self.shared.pool.alloc(buf.len())?;
        let dma = self
            .execute_ok(IoRequest::read(nsid, slba, blocks, dma))?
            .ok_or_else(|| Error::BadDevice("read buffer kept after a lost command".into()))?;
        dma.read(0, buf)
    }

    /// Writes `data` (whole blocks) at `slba`.
    pub fn write(&mut self, nsid: u32, slba: u64, data: &[u8]) -> Result<()> {
        let blocks = self.blocks_of(nsid, data.len())?;
        let dma = self.shared.pool.alloc(data.len())?;
        dma.write(0, data)?;
        self.execute_ok(IoRequest::write(nsid, slba, blocks, dma))
            .map(drop)
    }

    /// Flushes the namespace's volatile write cache.
    pub fn flush(&mut self, nsid: u32) -> Result<()> {
        self.execute_ok(IoRequest::flush(nsid)).map(drop)
    }

    /// Writes zeroes to `blocks` blocks from `slba`.
    pub fn write_zeroes(&mut self, nsid: u32, slba: u64, blocks: u64) -> Result<()> {
        self.execute_ok(IoRequest::write_zeroes(nsid, slba, blocks))
            .map(drop)
    }

    /// Deallocates `blocks` blocks from `slba`.
    pub fn deallocate(&mut self, nsid: u32, slba: u64, blocks: u64) -> Result<()> {
        self.execute_ok(IoRequest::deallocate(nsid, slba, blocks))
            .map(drop)
    }
}

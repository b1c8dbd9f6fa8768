//! The admin queue: commands run one at a time (the caller holds the
//! controller's admin lock), with Asynchronous Event Requests kept
//! outstanding beside them. AER completions that arrive while a command is
//! awaited are recorded and the request is posted again at once.

use std::time::{Duration, Instant};

use nvme_spec::{AsyncEvent, Cqe, Csts, Sqe, admin, regs};

use crate::error::{Error, Result};
use crate::queue::QueuePair;

/// Events kept before the oldest are dropped.
const MAX_EVENTS: usize = 64;

/// The admin queue pair and its outstanding AERs.
#[derive(Debug)]
pub(crate) struct AdminQueue {
    pub(crate) q: QueuePair,
    /// CIDs of outstanding Asynchronous Event Requests.
    aer_cids: Vec<u16>,
    /// How many AERs to keep outstanding (0 until enabled).
    aer_limit: usize,
    events: Vec<AsyncEvent>,
}

impl AdminQueue {
    pub(crate) fn new(q: QueuePair) -> Self {
        AdminQueue {
            q,
            aer_cids: Vec::new(),
            aer_limit: 0,
            events: Vec::new(),
        }
    }

    /// Keeps `limit` AERs outstanding from now on (AERL + 1 is the most
    /// the controller accepts; one slot is always left for commands).
    pub(crate) fn enable_aers(&mut self, limit: usize) -> Result<()> {
        self.aer_limit = limit.min(self.q.entries() as usize / 2);
        self.post_aers()
    }

    fn post_aers(&mut self) -> Result<()> {
        while self.aer_cids.len() < self.aer_limit {
            let cid = self.q.post(admin::async_event_request())?;
            self.aer_cids.push(cid);
        }
        self.q.ring()
    }

    /// Forgets outstanding AERs (the controller was reset); they are posted
    /// again by the next [`AdminQueue::enable_aers`].
    pub(crate) fn forget_aers(&mut self) {
        self.aer_cids.clear();
    }

    /// Handles a completion that is not the awaited command's. Returns
    /// false if it is not an AER either.
    fn handle_other(&mut self, cqe: &Cqe) -> Result<bool> {
        let Some(i) = self.aer_cids.iter().position(|&c| c == cqe.cid()) else {
            return Ok(false);
        };
        self.aer_cids.swap_remove(i);
        let status = cqe.status();
        if status.is_success() {
            let event = AsyncEvent::from_dw0(cqe.result());
            log::info!("asynchronous event: {}", event.description());
            if self.events.len() == MAX_EVENTS {
                self.events.remove(0);
            }
            self.events.push(event);
            self.post_aers()?;
        } else {
            // E.g. Asynchronous Event Request Limit Exceeded: keep one fewer.
            log::warn!("Asynchronous Event Request completed with {status}");
            self.aer_limit = self.aer_limit.saturating_sub(1);
        }
        Ok(true)
    }

    /// Reaps what the admin CQ holds (AER completions).
    pub(crate) fn poll(&mut self) -> Result<()> {
        let mut reaped = false;
        let result = loop {
            match self.q.pop() {
                Ok(Some(cqe)) => {
                    reaped = true;
                    if !self.handle_other(&cqe)? {
                        break Err(stray(&cqe));
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if reaped || result.is_err() {
            self.q.ring_cq()?;
        }
        result
    }

    /// The events received so far, oldest first; the list is emptied.
    pub(crate) fn take_events(&mut self) -> Vec<AsyncEvent> {
        std::mem::take(&mut self.events)
    }

    /// Posts `sqe`, rings, and polls until its completion arrives or
    /// `timeout` passes, handling AER completions met meanwhile.
    pub(crate) fn execute(&mut self, sqe: Sqe, timeout: Duration) -> Result<Cqe> {
        let cid = self.q.post(sqe)?;
        self.q.ring()?;
        let start = Instant::now();
        let mut spins: u32 = 0;
        loop {
            match self.q.pop() {
                Ok(Some(cqe)) => {
                    // Acknowledge every entry consumed, a stray one too.
                    self.q.ring_cq()?;
                    if cqe.cid() == cid {
                        return Ok(cqe);
                    }
                    if !self.handle_other(&cqe)? {
                        return Err(stray(&cqe));
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    self.q.ring_cq()?;
                    return Err(e);
                }
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                let csts = Csts(self.q.read_register(regs::offset::CSTS)?);
                if csts.fatal() || csts.is_all_ones() {
                    return Err(Error::ControllerFatal {
                        step: "waiting on the admin queue".into(),
                        csts,
                    });
                }
                if start.elapsed() >= timeout {
                    // The CID stays marked in flight: the device may still
                    // complete it, and its buffers must not be reused.
                    return Err(Error::CommandTimeout {
                        command: format!("admin opcode {:#04x}", sqe.opcode),
                        waited_ms: timeout.as_millis() as u64,
                    });
                }
            }
            std::hint::spin_loop();
        }
    }
}

fn stray(cqe: &Cqe) -> Error {
    Error::BadDevice(format!(
        "admin queue: completion for CID {}, which no command awaits",
        cqe.cid()
    ))
}

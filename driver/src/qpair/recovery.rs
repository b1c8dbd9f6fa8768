//! Recovery: command deadlines, Abort, controller reset and re-creating
//! the queues, and failing everything when the controller is gone.

use std::time::{Duration, Instant};

use nvme_spec::admin;

use super::{ABORT_GRACE, IoCompletion, IoQPair};
use crate::error::{Error, Result};

impl IoQPair {
    /// After a controller reset: start the rings over, create the queues
    /// again, and resubmit every command that was in flight (first, before
    /// anything not yet issued). Commands given up on before are forgotten
    /// with their CIDs: the reset ended any DMA they could still do.
    pub(super) fn recover(&mut self, out: &mut Vec<IoCompletion>) -> Result<()> {
        let generation = self.shared.generation();
        let qid = self.q.qid();
        self.promote_all();
        self.q.reset_rings()?;
        let mut again = Vec::new();
        for slot in &mut self.slots {
            if let Some(child) = slot.child.take() {
                slot.since = None;
                again.push(child);
            }
        }
        let resent = again.len();
        for child in again.into_iter().rev() {
            // Still counted in its request's `outstanding`.
            self.retry.push_front(child);
        }
        self.lost_cids = 0;
        self.quarantine.clear();
        self.quarantine_segments.clear();
        self.release_fixed_quarantine();
        if let Err(e) = self.shared.register_io_queue(&mut self.q) {
            log::error!("queue {qid}: cannot be created again after a reset: {e}");
            let msg = e.to_string();
            self.give_up_all(out, &|| {
                Error::Unsupported(format!(
                    "queue {qid} could not be created again after a controller reset: {msg}"
                ))
            });
            return Err(e);
        }
        self.generation = generation;
        log::info!(
            "queue {qid}: created again after a controller reset; {resent} commands resubmitted"
        );
        self.fill_sq()?;
        self.q.ring()
    }

    /// Resets the controller (unless another queue pair just did) and
    /// recovers; if the reset fails, every request fails with `e`.
    pub(super) fn reset_and_recover(
        &mut self,
        out: &mut Vec<IoCompletion>,
        e: impl Fn() -> Error,
    ) -> Result<()> {
        match self.shared.reset_from(Some(self.generation)) {
            Ok(()) => self.recover(out),
            Err(reset_error) => {
                log::error!(
                    "queue {}: controller reset failed: {reset_error}",
                    self.q.qid()
                );
                self.give_up_all(out, &e);
                Err(e())
            }
        }
    }

    /// On a long idle stretch with commands in flight: the controller's
    /// status, then each command's deadline. A command past its deadline
    /// is aborted; if it does not come back, it is given up on.
    pub(super) fn check_health(&mut self, out: &mut Vec<IoCompletion>) -> Result<()> {
        let csts = self.shared.csts()?;
        if csts.fatal() || csts.is_all_ones() {
            let qid = self.q.qid();
            let e = || Error::ControllerFatal {
                step: format!("polling queue {qid}"),
                csts,
            };
            // A device that is gone cannot be reset: the reset fails at
            // once and every request fails with this error.
            return self.reset_and_recover(out, e);
        }
        self.last_scan = Instant::now();
        self.scan_deadlines(self.last_scan, out)
    }

    /// At most every [`IoQPair::scan_interval`], from the poll path (which
    /// reads the clock every few polls): scans the deadlines.
    pub(super) fn tick(&mut self, out: &mut Vec<IoCompletion>) -> Result<()> {
        let now = Instant::now();
        if now.saturating_duration_since(self.last_scan) < self.scan_interval() {
            return Ok(());
        }
        self.last_scan = now;
        self.scan_deadlines(now, out)
    }

    /// Time between two deadline scans: an eighth of the I/O timeout,
    /// within 1 ms..=1 s. A command is stamped by the first scan that sees
    /// it, so it times out between one and two intervals (plus the time
    /// between polls) after the timeout.
    fn scan_interval(&self) -> Duration {
        (self.shared.options.io_timeout / 8).clamp(Duration::from_millis(1), Duration::from_secs(1))
    }

    /// Stamps the commands in flight not yet seen, and aborts those in
    /// flight for longer than the I/O timeout.
    fn scan_deadlines(&mut self, now: Instant, out: &mut Vec<IoCompletion>) -> Result<()> {
        let timeout = self.shared.options.io_timeout;
        let mut expired = Vec::new();
        for (cid, slot) in self.slots.iter_mut().enumerate() {
            if slot.child.is_none() && slot.single.is_none() && slot.fixed.is_none() {
                continue;
            }
            match slot.since {
                None => slot.since = Some(now),
                Some(t) if now.saturating_duration_since(t) >= timeout => expired.push(cid as u16),
                Some(_) => {}
            }
        }
        for cid in expired {
            self.abort(cid, out)?;
        }
        Ok(())
    }

    pub(super) fn abort(&mut self, cid: u16, out: &mut Vec<IoCompletion>) -> Result<()> {
        let qid = self.q.qid();
        self.promote(cid as usize);
        log::warn!("queue {qid}: command {cid} timed out; aborting it");
        if let Err(e) = self.shared.admin_cmd(admin::abort(qid, cid), "Abort") {
            log::warn!("queue {qid}: Abort of command {cid} failed: {e}");
        }
        let start = Instant::now();
        while start.elapsed() < ABORT_GRACE {
            self.reap(out)?;
            if self.slots[cid as usize].child.is_none() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        // Still not back. The first time, reset the controller: the command
        // is resubmitted with the others. The second time, give up on it:
        // its CID stays taken and its buffer is kept, since the device may
        // yet write to it.
        let first_timeout = self.slots[cid as usize]
            .child
            .as_ref()
            .is_some_and(|c| c.timeouts == 0);
        if first_timeout && self.shared.options.reset_on_timeout {
            if let Some(c) = self.slots[cid as usize].child.as_mut() {
                c.timeouts += 1;
            }
            log::warn!(
                "queue {qid}: command {cid} did not come back after Abort; resetting the controller"
            );
            let waited = self.shared.options.io_timeout + ABORT_GRACE;
            return self.reset_and_recover(out, || Error::CommandTimeout {
                command: format!("command {cid} on queue {qid}"),
                waited_ms: waited.as_millis() as u64,
            });
        }
        if let Some(child) = self.slots[cid as usize].child.take() {
            self.slots[cid as usize].since = None;
            self.lost_cids += 1;
            if let Some(p) = self.parents[child.parent as usize].as_mut() {
                p.outstanding = p.outstanding.saturating_sub(1);
                p.lost = true;
                let waited = self.shared.options.io_timeout + ABORT_GRACE;
                let e = Error::CommandTimeout {
                    command: p.req.describe(),
                    waited_ms: waited.as_millis() as u64,
                };
                self.fail_child_inner(child.parent, e);
            }
            self.finish_if_done(child.parent, out);
        }
        Ok(())
    }

    /// Fails every outstanding request (the controller is gone or fatal).
    pub(super) fn give_up_all(&mut self, out: &mut Vec<IoCompletion>, e: &dyn Fn() -> Error) {
        self.promote_all();
        for cid in 0..self.slots.len() {
            if let Some(child) = self.slots[cid].child.take() {
                self.slots[cid].since = None;
                self.lost_cids += 1;
                if let Some(p) = self.parents[child.parent as usize].as_mut() {
                    p.outstanding = p.outstanding.saturating_sub(1);
                    p.lost = true;
                }
            }
        }
        while let Some(child) = self.retry.pop_front() {
            if let Some(p) = self.parents[child.parent as usize].as_mut() {
                p.outstanding = p.outstanding.saturating_sub(1);
            }
        }
        for id in 0..self.parents.len() as u32 {
            if self.parents[id as usize].is_some() {
                self.fail_child_inner(id, e());
                self.finish_if_done(id, out);
            }
        }
        self.pending.clear();
    }
}

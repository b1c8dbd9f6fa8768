//! Recovery: command deadlines, Abort, controller reset and re-creating
//! the queues, and failing everything when the controller is gone.

use std::time::{Duration, Instant};

use nvme_spec::admin;

use super::{ABORT_GRACE, IoCompletion, IoQPair};
use crate::error::{Error, Result};

/// What made a queue pair recover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryCause {
    /// A command ran past its deadline ([`Recovery::cid`]): Abort first,
    /// then perhaps a reset.
    Timeout,
    /// This queue pair's health check read a fatal controller status
    /// (CSTS.CFS set, or all-ones: gone): a reset at once, no Abort.
    ControllerFatal {
        /// The CSTS value read.
        csts: u32,
    },
    /// The controller was reset by someone else (another queue pair's
    /// recovery, or [`crate::Controller::reset`]); this queue pair noticed
    /// the new generation, created its queues again and resubmitted.
    ResetElsewhere,
}

/// How the driver dealt with a command that ran past its deadline, or
/// with a controller that failed or was reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryOutcome {
    /// The command came back after the Abort (aborted, or completed after
    /// all).
    CameBack,
    /// The controller was reset, the queue created again and the commands
    /// in flight resubmitted.
    Reset {
        /// Commands resubmitted on this queue.
        resubmitted: usize,
    },
    /// The command was given up on: its request failed with
    /// [`Error::CommandTimeout`] (a second timeout, or `reset_on_timeout`
    /// off).
    GaveUp,
    /// The reset failed: every request on the queue failed.
    Failed,
}

/// What one recovery (from a timed-out command, a fatal controller, or a
/// reset elsewhere) did and how long each step took, from
/// [`IoQPair::last_recovery`].
#[derive(Debug, Clone, Copy)]
pub struct Recovery {
    /// The queue.
    pub qid: u16,
    /// What started it.
    pub cause: RecoveryCause,
    /// The command that timed out ([`RecoveryCause::Timeout`] only).
    pub cid: Option<u16>,
    /// When the deadline scan found it expired, the health check read
    /// the fatal status, or the queue pair saw the new generation.
    pub detected: Instant,
    /// Dword 0 of the Abort's completion (bit 0 set: not aborted), None
    /// if the Abort failed or none was sent.
    pub abort_dw0: Option<u32>,
    /// From detection to the Abort's completion.
    pub abort: Duration,
    /// Waiting for the command after the Abort.
    pub grace: Duration,
    /// The controller reset, creating the queue again and resubmitting
    /// (zero without a reset; for [`RecoveryCause::ResetElsewhere`], only
    /// creating the queue again and resubmitting).
    pub reset: Duration,
    /// From detection to the queue taking commands again.
    pub total: Duration,
    /// What was done.
    pub outcome: RecoveryOutcome,
}

impl Recovery {
    /// A record of a recovery with no Abort, detected at `detected`.
    fn without_abort(qid: u16, cause: RecoveryCause, detected: Instant) -> Self {
        Recovery {
            qid,
            cause,
            cid: None,
            detected,
            abort_dw0: None,
            abort: Duration::ZERO,
            grace: Duration::ZERO,
            reset: Duration::ZERO,
            total: Duration::ZERO,
            outcome: RecoveryOutcome::Failed,
        }
    }
}

impl IoQPair {
    /// After a controller reset someone else did: creates the queues again
    /// and resubmits ([`IoQPair::recover`]), and records it.
    pub(super) fn recover_after_reset(&mut self, out: &mut Vec<IoCompletion>) -> Result<()> {
        let mut record =
            Recovery::without_abort(self.q.qid(), RecoveryCause::ResetElsewhere, Instant::now());
        let result = self.recover(out);
        record.reset = record.detected.elapsed();
        record.total = record.reset;
        if let Ok(resubmitted) = result {
            record.outcome = RecoveryOutcome::Reset { resubmitted };
        }
        self.last_recovery = Some(record);
        result.map(|_| ())
    }

    /// Fault injection: takes the IOMMU mapping of this queue pair's SQ
    /// ring away, so the controller's next fetch from it fails. QEMU's
    /// controller then sets CSTS.CFS and stops the queue; the driver's
    /// health check sees it, resets the controller and resubmits what was
    /// in flight (see [`RecoveryCause::ControllerFatal`]). The ring is
    /// mapped again, at the same IOVA, before the queue is created again.
    /// Only with the `fault-injection` feature.
    #[cfg(feature = "fault-injection")]
    pub fn inject_unmap_sq(&mut self) -> Result<()> {
        log::warn!(
            "queue {}: fault injection: unmapping the SQ ring at IOVA {:#x}",
            self.q.qid(),
            self.q.sq_iova()
        );
        self.q.revoke_sq()
    }

    /// After a controller reset: start the rings over, create the queues
    /// again, and resubmit every command that was in flight (first, before
    /// anything not yet issued). Commands given up on before are forgotten
    /// with their CIDs: the reset ended any DMA they could still do.
    pub(super) fn recover(&mut self, out: &mut Vec<IoCompletion>) -> Result<usize> {
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
        let generation = match self.shared.register_io_queue(&mut self.q) {
            Ok(g) => g,
            Err(e) => {
                log::error!("queue {qid}: cannot be created again after a reset: {e}");
                let msg = e.to_string();
                self.give_up_all(out, &|| {
                    Error::Unsupported(format!(
                        "queue {qid} could not be created again after a controller reset: {msg}"
                    ))
                });
                return Err(e);
            }
        };
        self.generation = generation;
        log::info!(
            "queue {qid}: created again after a controller reset; {resent} commands resubmitted"
        );
        self.fill_sq()?;
        self.q.ring()?;
        Ok(resent)
    }

    /// Resets the controller (unless another queue pair just did) and
    /// recovers; if the reset fails, every request fails with `e`. Returns
    /// the number of commands resubmitted.
    pub(super) fn reset_and_recover(
        &mut self,
        out: &mut Vec<IoCompletion>,
        e: impl Fn() -> Error,
    ) -> Result<usize> {
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
        if self.shared.removal.requested() {
            self.fail_if_released(out);
            return Ok(());
        }
        let csts = self.shared.csts()?;
        if self.shared.removal.requested() {
            // Removed since the look above: CSTS may be the all-ones that
            // stands in for the BAR.
            self.fail_if_released(out);
            return Ok(());
        }
        if csts.fatal() || csts.is_all_ones() {
            let qid = self.q.qid();
            let mut record = Recovery::without_abort(
                qid,
                RecoveryCause::ControllerFatal { csts: csts.0 },
                Instant::now(),
            );
            log::warn!(
                "queue {qid}: controller failed (CSTS {:#x}); resetting it",
                csts.0
            );
            let e = || Error::ControllerFatal {
                step: format!("polling queue {qid}"),
                csts,
            };
            // A device that is gone cannot be reset: the reset fails at
            // once and every request fails with this error.
            let result = self.reset_and_recover(out, e);
            record.reset = record.detected.elapsed();
            record.total = record.reset;
            if let Ok(resubmitted) = result {
                record.outcome = RecoveryOutcome::Reset { resubmitted };
                log::info!(
                    "queue {qid}: recovered from the fatal controller status in {:.1?}",
                    record.total
                );
            }
            self.last_recovery = Some(record);
            return result.map(|_| ());
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
            if !slot.in_flight() {
                continue;
            }
            match slot.since {
                None => slot.since = Some(now),
                Some(t) if now.saturating_duration_since(t) >= timeout => expired.push(cid as u16),
                Some(_) => {}
            }
        }
        let generation = self.generation;
        for cid in expired {
            if self.generation != generation {
                // A reset re-created the queue and resubmitted everything
                // under new CIDs with fresh deadlines: the CIDs found above
                // name other commands now.
                break;
            }
            let slot = &self.slots[cid as usize];
            if !slot.in_flight() {
                // Came back while an earlier command's Abort was waited for.
                continue;
            }
            self.abort(cid, out)?;
        }
        Ok(())
    }

    /// What the last recovery on this queue pair (from a timed-out
    /// command, a fatal controller, or a reset elsewhere) did, and how long
    /// it took.
    pub fn last_recovery(&self) -> Option<Recovery> {
        self.last_recovery
    }

    pub(super) fn abort(&mut self, cid: u16, out: &mut Vec<IoCompletion>) -> Result<()> {
        if self.shared.removal.requested() {
            // Nothing to abort on a device taken away: the health check
            // fails every request once it is released.
            return Ok(());
        }
        let qid = self.q.qid();
        let detected = Instant::now();
        self.promote(cid as usize);
        log::warn!("queue {qid}: command {cid} timed out; aborting it");
        let abort_dw0 = match self.shared.admin_cmd(admin::abort(qid, cid), "Abort") {
            Ok(cqe) => {
                // Dword 0 bit 0 set: the controller did not abort it.
                log::info!(
                    "queue {qid}: Abort of command {cid} answered, dw0 {:#x}{}",
                    cqe.result(),
                    if cqe.result() & 1 == 1 {
                        " (not aborted)"
                    } else {
                        ""
                    }
                );
                Some(cqe.result())
            }
            Err(e) => {
                log::warn!("queue {qid}: Abort of command {cid} failed: {e}");
                None
            }
        };
        let abort_done = Instant::now();
        let mut record = Recovery {
            qid,
            cause: RecoveryCause::Timeout,
            cid: Some(cid),
            detected,
            abort_dw0,
            abort: abort_done - detected,
            grace: Duration::ZERO,
            reset: Duration::ZERO,
            total: Duration::ZERO,
            outcome: RecoveryOutcome::CameBack,
        };
        while abort_done.elapsed() < ABORT_GRACE {
            self.reap(out)?;
            if self.slots[cid as usize].child.is_none() {
                record.grace = abort_done.elapsed();
                record.total = detected.elapsed();
                self.last_recovery = Some(record);
                return Ok(());
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        record.grace = abort_done.elapsed();
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
            let reset_start = Instant::now();
            let result = self.reset_and_recover(out, || Error::CommandTimeout {
                command: format!("command {cid} on queue {qid}"),
                waited_ms: waited.as_millis() as u64,
            });
            record.reset = reset_start.elapsed();
            record.total = detected.elapsed();
            record.outcome = match result {
                Ok(resubmitted) => RecoveryOutcome::Reset { resubmitted },
                Err(_) => RecoveryOutcome::Failed,
            };
            self.last_recovery = Some(record);
            log::info!(
                "queue {qid}: recovered from the timeout of command {cid} in {:.1?} \
                 (Abort {:.1?}, waiting after it {:.1?}, reset and resubmission {:.1?})",
                record.total,
                record.abort,
                record.grace,
                record.reset
            );
            return result.map(|_| ());
        }
        if let Some(child) = self.slots[cid as usize].child.take() {
            self.slots[cid as usize].since = None;
            self.lost_cids += 1;
            if let Some(p) = self.parents[child.parent as usize].as_mut() {
                debug_assert!(
                    p.outstanding > 0,
                    "a parent completed more commands than it issued"
                );
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
        record.outcome = RecoveryOutcome::GaveUp;
        record.total = detected.elapsed();
        self.last_recovery = Some(record);
        Ok(())
    }

    /// After a removal request: once the device is released (it can do no
    /// more DMA), fails every outstanding request with
    /// [`Error::DeviceRemoved`]; until then, waits.
    pub(super) fn fail_if_released(&mut self, out: &mut Vec<IoCompletion>) {
        if !self.shared.removal.released() {
            return;
        }
        let shared = self.shared.clone();
        self.give_up_all(out, &|| crate::removal::removed_error(&shared));
    }

    /// Fails every outstanding request (the controller is gone or fatal).
    pub(super) fn give_up_all(&mut self, out: &mut Vec<IoCompletion>, e: &dyn Fn() -> Error) {
        self.promote_all();
        for cid in 0..self.slots.len() {
            if let Some(child) = self.slots[cid].child.take() {
                self.slots[cid].since = None;
                self.lost_cids += 1;
                if let Some(p) = self.parents[child.parent as usize].as_mut() {
                    debug_assert!(
                        p.outstanding > 0,
                        "a parent completed more commands than it issued"
                    );
                    p.outstanding = p.outstanding.saturating_sub(1);
                    p.lost = true;
                }
            }
        }
        while let Some(child) = self.retry.pop_front() {
            if let Some(p) = self.parents[child.parent as usize].as_mut() {
                debug_assert!(
                    p.outstanding > 0,
                    "a parent completed more commands than it issued"
                );
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

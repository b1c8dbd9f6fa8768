//! The floor: the leanest loop that keeps a queue busy, to measure what the
//! device and the machine allow any driver, beside which the full path
//! ([`IoQPair::submit`] / [`IoQPair::poll`]) is judged.
//!
//! One queue pair, driven at the queue level: one SQE per slot built once
//! (opcode, namespace, data pointer, block count, CID), of which only the
//! LBA changes; CID `i` always uses buffer `i`; no requests, no splitting,
//! no deadlines, no clock read per command (the clock is looked at every
//! [`CLOCK_EVERY`] completions), no latency record, only a count. One SQ
//! doorbell per batch of resubmissions and one CQ doorbell per reap, as
//! on the full path. The device's values are still checked: a CID that is
//! not one of the loop's is an error, never an index.

use std::time::{Duration, Instant};

use nvme_spec::Status;
use nvme_spec::io as nvm;

use super::IoQPair;
use crate::error::{Error, Result};
use crate::memory::DmaBuffer;
use crate::prp;

/// Completions between two looks at the clock.
const CLOCK_EVERY: u64 = 256;
/// Empty polls between two looks at the clock while nothing completes.
const IDLE_CLOCK_EVERY: u64 = 1 << 14;

/// What the floor loop runs.
#[derive(Debug, Clone)]
pub struct FloorJob {
    /// Namespace id.
    pub nsid: u32,
    /// Writes instead of reads.
    pub write: bool,
    /// First LBA of the range.
    pub first_lba: u64,
    /// Blocks in the range.
    pub blocks: u64,
    /// Blocks per command (at most the transfer limit).
    pub io_blocks: u32,
    /// Commands kept in flight (at most the queue's entries - 1).
    pub depth: usize,
    /// Random offsets (aligned to `io_blocks`) instead of sequential.
    pub random: bool,
    /// Seed of the random offsets.
    pub seed: u64,
    /// Time run before counting starts.
    pub warmup: Duration,
    /// Counted time (ignored when `count` is set).
    pub time: Duration,
    /// Stop after this many counted completions instead.
    pub count: Option<u64>,
}

/// What the floor loop measured (after the warm-up).
#[derive(Debug, Clone)]
pub struct FloorResult {
    /// Commands completed successfully.
    pub ios: u64,
    /// Commands completed with an error status.
    pub errors: u64,
    /// The first error status seen, if any.
    pub first_error: Option<Status>,
    /// Wall time of the counted part.
    pub elapsed: Duration,
}

impl FloorResult {
    /// Completions per second.
    pub fn iops(&self) -> f64 {
        (self.ios + self.errors) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Offsets of the floor's commands: sequential, or xorshift64* random.
struct Offsets {
    state: u64,
    random: bool,
    next: u64,
    /// Commands that fit the range.
    slots: u64,
}

impl Offsets {
    /// The next command's slot in the range.
    fn next(&mut self) -> u64 {
        if self.random {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let r = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d);
            // Multiply-high instead of a division: uniform enough.
            ((u128::from(r) * u128::from(self.slots)) >> 64) as u64
        } else {
            let n = self.next;
            self.next = if n + 1 == self.slots { 0 } else { n + 1 };
            n
        }
    }
}

impl IoQPair {
    /// Runs the floor loop (see the module documentation) on this queue
    /// pair, which must have nothing outstanding. A command that does not
    /// complete within the I/O timeout resets the controller (which ends
    /// its DMA) and fails the run.
    pub fn floor(&mut self, job: &FloorJob) -> Result<FloorResult> {
        if self.outstanding() != 0 || self.q.in_flight() != 0 {
            return Err(Error::BadBuffer(format!(
                "the floor loop needs an idle queue pair ({} requests outstanding)",
                self.outstanding()
            )));
        }
        let ns = self.shared.namespace(job.nsid)?;
        ns.check_range(job.first_lba, job.blocks)?;
        let lba_size = ns.lba_size as usize;
        let bytes = job.io_blocks as usize * lba_size;
        if job.io_blocks == 0 || u64::from(job.io_blocks) > job.blocks {
            return Err(Error::BadBuffer(format!(
                "{} blocks per command do not fit a range of {} blocks",
                job.io_blocks, job.blocks
            )));
        }
        if bytes > self.shared.max_transfer {
            return Err(Error::BadBuffer(format!(
                "{bytes} bytes per command exceed the transfer limit ({} bytes): the floor loop \
                 does not split",
                self.shared.max_transfer
            )));
        }
        let most = self.q.entries() as usize - 1;
        if job.depth == 0 || job.depth > most {
            return Err(Error::BadBuffer(format!(
                "floor depth {} outside 1..={most} (the queue's entries - 1)",
                job.depth
            )));
        }
        // Buffer i, its PRP list and its SQE belong to CID i.
        let mut bufs: Vec<DmaBuffer> = Vec::with_capacity(job.depth);
        let mut lists: Vec<Option<DmaBuffer>> = Vec::with_capacity(job.depth);
        let mut sqes = Vec::with_capacity(job.depth);
        let range = |e: nvme_spec::RangeError| Error::BadBuffer(e.to_string());
        for cid in 0..job.depth {
            let buf = self.shared.pool.alloc(bytes)?;
            let mut list = None;
            let (prp1, prp2) = prp::fill(
                &self.shared.pool,
                &mut list,
                buf.iova(),
                bytes,
                &mut Vec::new(),
            )?;
            let mut sqe = if job.write {
                nvm::write(job.nsid, job.first_lba, job.io_blocks)
            } else {
                nvm::read(job.nsid, job.first_lba, job.io_blocks)
            }
            .map_err(range)?;
            sqe.set_prps(prp1, prp2);
            sqe.set_cid(cid as u16);
            sqes.push(sqe);
            bufs.push(buf);
            lists.push(list);
        }
        let mut offsets = Offsets {
            state: job.seed | 1,
            random: job.random,
            next: 0,
            slots: job.blocks / u64::from(job.io_blocks),
        };
        let stride = u64::from(job.io_blocks);
        let mut issue = |q: &mut crate::queue::QueuePair, cid: usize| {
            let sqe = &mut sqes[cid];
            let lba = job.first_lba + offsets.next() * stride;
            sqe.cdw10.set(lba as u32);
            sqe.cdw11.set((lba >> 32) as u32);
            q.push_untracked(sqe)
        };
        for cid in 0..job.depth {
            issue(&mut self.q, cid)?;
        }
        self.q.ring()?;

        let mut result = FloorResult {
            ios: 0,
            errors: 0,
            first_error: None,
            elapsed: Duration::ZERO,
        };
        let mut in_flight = job.depth as u64;
        let start = Instant::now();
        let mut counting_since = (job.warmup.is_zero()).then_some(start);
        let mut since_clock = 0u64;
        // Empty polls in a row, and what the last look at the clock during
        // such a stretch saw: completions so far, and since when that
        // number has not moved.
        let mut idle = 0u64;
        let mut completed = 0u64;
        let mut seen = (0u64, start);
        let mut stopping = false;
        while in_flight > 0 {
            let mut reaped = 0u64;
            while let Some((cid, status)) = self.q.pop_untracked()? {
                reaped += 1;
                in_flight -= 1;
                let cid = cid as usize;
                if cid >= job.depth {
                    // Not a command of this loop: the rings cannot be
                    // trusted any more; a reset starts them over.
                    let e = Error::BadDevice(format!(
                        "queue {}: completion for CID {cid}, which the floor loop did not issue",
                        self.q.qid()
                    ));
                    return self.floor_abandon(e);
                }
                let status = Status::from_cqe_status(status);
                if counting_since.is_some() && !stopping {
                    if status.is_success() {
                        result.ios += 1;
                    } else {
                        result.errors += 1;
                        result.first_error.get_or_insert(status);
                    }
                }
                if !stopping {
                    issue(&mut self.q, cid)?;
                    in_flight += 1;
                }
            }
            let c = &mut self.q.counters;
            c.polls += 1;
            c.cqes += reaped;
            c.reaping_polls += u64::from(reaped > 0);
            if reaped == 0 {
                idle += 1;
                if idle.is_multiple_of(IDLE_CLOCK_EVERY) {
                    let now = Instant::now();
                    if seen.0 != completed {
                        seen = (completed, now);
                    } else if now - seen.1 > self.shared.options.io_timeout {
                        let e = Error::CommandTimeout {
                            command: format!("floor loop on queue {}", self.q.qid()),
                            waited_ms: self.shared.options.io_timeout.as_millis() as u64,
                        };
                        return self.floor_abandon(e);
                    }
                }
                continue;
            }
            idle = 0;
            completed += reaped;
            self.q.ring_cq()?;
            self.q.ring()?;
            since_clock += reaped;
            if since_clock < CLOCK_EVERY && !stopping {
                continue;
            }
            since_clock = 0;
            let now = Instant::now();
            match counting_since {
                None if now - start >= job.warmup => counting_since = Some(now),
                Some(t0) if !stopping => {
                    let done = result.ios + result.errors;
                    stopping = match job.count {
                        Some(n) => done >= n,
                        None => now - t0 >= job.time,
                    };
                    if stopping {
                        result.elapsed = now - t0;
                    }
                }
                _ => {}
            }
        }
        Ok(result)
    }

    /// Ends a floor run the device broke: a controller reset ends any DMA
    /// into the loop's buffers (dropped after this) and starts the rings
    /// over; the run fails with `e`.
    fn floor_abandon(&mut self, e: Error) -> Result<FloorResult> {
        let msg = e.to_string();
        let mut out = Vec::new();
        match self.reset_and_recover(&mut out, || Error::BadDevice(msg.clone())) {
            Ok(_) => Err(e),
            Err(reset) => Err(Error::BadDevice(format!(
                "{msg}; the controller reset that followed failed: {reset}"
            ))),
        }
    }
}

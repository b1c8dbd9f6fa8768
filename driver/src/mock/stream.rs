//! The CQE-stream property harness ([`run_cqe_stream`]), shared by the
//! proptest in this module and the cargo-fuzz target in `driver/fuzz`.

use super::*;

/// Blocks per LBA of the harness namespace, and its size.
pub(super) const STREAM_LBA: u64 = 512;
pub(super) const STREAM_BLOCKS: u64 = 256;
pub(super) const STREAM_MAX_REQUEST_BLOCKS: u64 = 40;
pub(super) const STREAM_MAX_OUTSTANDING: usize = 12;
pub(super) const STREAM_QUEUE_ENTRIES: u16 = 8;
/// The harness's I/O timeout: short, so that [`StreamOp::Stall`] reaches
/// Abort and [`StreamOp::StallReset`] a reset (and a long run may time a
/// command out by itself).
pub(super) const STREAM_IO_TIMEOUT: Duration = Duration::from_millis(20);

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
pub(super) struct StreamRequest {
    pub(super) write: bool,
    pub(super) slba: u64,
    pub(super) blocks: u64,
    /// A raw entry completed one of its commands: its data is not checked.
    pub(super) tainted: bool,
}

pub(super) fn stream_pattern(tag: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (tag as u8).wrapping_mul(37) ^ (i as u8) ^ ((i >> 8) as u8).wrapping_mul(11))
        .collect()
}

pub(super) struct Stream {
    pub(super) mock: MockController,
    pub(super) qpair: IoQPair,
    pub(super) outstanding: BTreeMap<u64, StreamRequest>,
    pub(super) seen: HashSet<u64>,
    pub(super) next_tag: u64,
    pub(super) report: StreamReport,
    pub(super) stalled: bool,
    /// Block ranges of writes given up on: the device may still write them.
    pub(super) lost: Vec<(u64, u64)>,
}

pub(super) type StreamResult<T> = std::result::Result<T, String>;

impl Stream {
    pub(super) fn submit(&mut self, write: bool, slba: u16, blocks: u8) -> StreamResult<()> {
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
    pub(super) fn drain(&mut self) -> StreamResult<()> {
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

    pub(super) fn check(&mut self, c: IoCompletion) -> StreamResult<()> {
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

    pub(super) fn raw(&mut self, raw: Option<[u8; 16]>, cqe: (u8, u8, u16)) -> StreamResult<()> {
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

    pub(super) fn step(&mut self, op: &StreamOp) -> StreamResult<()> {
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

    pub(super) fn finish(&mut self) -> StreamResult<()> {
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

//! Registered buffers: a table of DMA buffers the queue pair holds, and
//! requests that name one by index ([`FixedIo`]), the way io_uring's fixed
//! buffers and SPDK's preallocated task buffers work. Submitting and
//! completing such a request copies a few words; no buffer changes hands,
//! so the request and its completion are small and the path is short.
//!
//! A request of one command waits in its CID's slot; anything else (larger
//! than one command, a retry, an abort, a reset) becomes an ordinary
//! parent request whose data is the buffer's memory as one segment, and
//! comes back as a [`FixedCompletion`] all the same.

use std::time::Duration;

use super::path::set_data;
use super::{FixedCompletion, FixedIo, IoOp, IoQPair, IoRequest, Parent};
use crate::error::{Error, Result};
use crate::memory::DmaBuffer;
use nvme_spec::io as nvm;

/// One registered buffer.
#[derive(Debug)]
pub(super) struct Registered {
    pub(super) buf: DmaBuffer,
    /// The buffer's device address and length, kept beside it so that a
    /// request does not reach them through the buffer's region.
    iova: u64,
    len: u64,
    /// What a request may use of it: `len`, or 0 while quarantined (one
    /// comparison then refuses both a request too large and one on a
    /// quarantined buffer; the refusal tells which).
    usable: u64,
    /// A command on it was given up on: the device may still write it, so
    /// it takes no requests and is not handed back until a controller
    /// reset ends that DMA.
    pub(super) quarantined: bool,
}

impl IoQPair {
    /// Registers `buffers` for [`IoQPair::submit_fixed`], which names them
    /// by their index here, replacing any registered before. Fails while a
    /// registered-buffer request is outstanding.
    pub fn register_buffers(&mut self, buffers: Vec<DmaBuffer>) -> Result<()> {
        if buffers.len() > u32::MAX as usize {
            return Err(Error::BadBuffer(format!(
                "{} buffers: at most {} can be registered",
                buffers.len(),
                u32::MAX
            )));
        }
        self.unregister_buffers()?;
        self.fixed_bufs = buffers
            .into_iter()
            .map(|buf| Registered {
                iova: buf.iova(),
                len: buf.len() as u64,
                usable: buf.len() as u64,
                buf,
                quarantined: false,
            })
            .collect();
        Ok(())
    }

    /// Takes the registered buffers back (all but those the device may
    /// still write, which the queue pair keeps). Fails while a
    /// registered-buffer request is outstanding.
    pub fn unregister_buffers(&mut self) -> Result<Vec<DmaBuffer>> {
        let in_flight = self.slots.iter().filter(|s| s.fixed.is_some()).count()
            + self
                .parents
                .iter()
                .flatten()
                .filter(|p| p.fixed.is_some())
                .count();
        if in_flight + self.fixed_done.len() > 0 {
            return Err(Error::BadBuffer(format!(
                "{} requests on registered buffers are outstanding; \
                 poll them back before unregistering",
                in_flight + self.fixed_done.len()
            )));
        }
        let mut back = Vec::with_capacity(self.fixed_bufs.len());
        for r in self.fixed_bufs.drain(..) {
            if r.quarantined {
                self.quarantine.push(r.buf);
            } else {
                back.push(r.buf);
            }
        }
        Ok(back)
    }

    /// Registered buffer `index`, e.g. to fill it before a write or read
    /// it after a read has completed.
    pub fn registered_buffer(&self, index: u32) -> Option<&DmaBuffer> {
        self.fixed_bufs.get(index as usize).map(|r| &r.buf)
    }

    /// Accepts a request on a registered buffer. Its commands are written
    /// to the SQ as slots allow; the doorbell is rung by the next poll.
    /// Its completion comes back from [`IoQPair::poll_fixed`] (never from
    /// [`IoQPair::poll`]).
    pub fn submit_fixed(&mut self, io: FixedIo) -> Result<()> {
        if self.shared.removal.requested() {
            return Err(crate::removal::removed_error(&self.shared));
        }
        let (lba_size, capacity, per_cmd) = self.ns_info(io.nsid)?;
        if !matches!(io.op, IoOp::Read | IoOp::Write) {
            return Err(not_read_or_write(io.op));
        }
        crate::ns::check_range(io.nsid, capacity, io.slba, u64::from(io.blocks))?;
        let len = u64::from(io.blocks) * u64::from(lba_size);
        let iova = self.fixed_iova(&io, len)?;
        let blocks = u64::from(io.blocks);
        // The fast path: one command, nothing waiting before it (`blocks`
        // is at least 1, so `per_cmd` is too).
        if blocks <= per_cmd
            && self.pending.is_empty()
            && self.retry.is_empty()
            && let Some(cid) = self.q.reserve()
        {
            let sqe = if io.op == IoOp::Read {
                nvm::read(io.nsid, io.slba, io.blocks)
            } else {
                nvm::write(io.nsid, io.slba, io.blocks)
            };
            let mut sqe = match sqe {
                Ok(sqe) => sqe,
                Err(e) => {
                    self.q.unreserve(cid);
                    return Err(bad_block_count(e));
                }
            };
            let slot = &mut self.slots[cid as usize];
            let data = set_data(
                &self.shared,
                slot,
                &mut self.prp_entries,
                &mut sqe,
                iova,
                len as usize,
            );
            if let Err(e) = data {
                self.q.unreserve(cid);
                return Err(e);
            }
            // On failure the queue takes the CID back itself.
            self.q.post_reserved(cid, sqe)?;
            slot.fixed = Some(io);
            // Stamped by the next deadline scan: no clock read per command.
            slot.since = None;
            self.singles += 1;
            return Ok(());
        }
        if per_cmd == 0 {
            return Err(lba_exceeds_transfer(lba_size, self.shared.max_transfer));
        }
        let req = self.fixed_request(&io);
        self.submit_parent(Parent {
            req,
            lba_size,
            per_cmd,
            total: blocks.div_ceil(per_cmd),
            issued: 0,
            outstanding: 0,
            error: None,
            lost: false,
            fixed: Some(io),
        })
        .map_err(|rejected| rejected.error)
    }

    /// The device address of `io`'s data, `len` bytes, after checking that
    /// its buffer is registered, usable and large enough.
    #[inline]
    fn fixed_iova(&self, io: &FixedIo, len: u64) -> Result<u64> {
        let Some(r) = self.fixed_bufs.get(io.buffer as usize) else {
            return Err(no_such_buffer(io.buffer, self.fixed_bufs.len()));
        };
        if len + u64::from(io.offset) > r.usable || !io.offset.is_multiple_of(4) {
            return Err(if r.quarantined {
                quarantined(io.buffer)
            } else {
                does_not_fit(io, len, r.len)
            });
        }
        Ok(r.iova + u64::from(io.offset))
    }

    /// `io` as an ordinary request on its buffer's memory (one segment),
    /// for the paths that need a parent's bookkeeping. The buffer stays
    /// registered while the request is outstanding, so its memory lives.
    pub(super) fn fixed_request(&self, io: &FixedIo) -> IoRequest {
        let (iova, len) = self.fixed_bufs.get(io.buffer as usize).map_or((0, 0), |r| {
            (r.buf.iova() + u64::from(io.offset), r.buf.len())
        });
        let len = len.saturating_sub(io.offset as usize);
        let segments = super::IoSegments::new(vec![(iova, len)]);
        let req = if io.op == IoOp::Write {
            IoRequest::write_segments(io.nsid, io.slba, u64::from(io.blocks), segments)
        } else {
            IoRequest::read_segments(io.nsid, io.slba, u64::from(io.blocks), segments)
        };
        req.with_tag(io.tag)
    }

    /// Takes registered buffer `index` out of use: the device may still
    /// write it.
    pub(super) fn quarantine_fixed(&mut self, index: u32) {
        if let Some(r) = self.fixed_bufs.get_mut(index as usize) {
            r.quarantined = true;
            r.usable = 0;
        }
    }

    /// Back in use after a controller reset, which ended all DMA.
    pub(super) fn release_fixed_quarantine(&mut self) {
        for r in &mut self.fixed_bufs {
            r.quarantined = false;
            r.usable = r.len;
        }
    }

    /// [`IoQPair::poll`] for registered-buffer requests: rings, reaps, and
    /// appends those that finished to `out`; returns how many. Completions
    /// of ordinary requests met meanwhile wait for the next
    /// [`IoQPair::poll`]. A poll that fails appends nothing.
    pub fn poll_fixed(&mut self, out: &mut Vec<FixedCompletion>) -> Result<usize> {
        let mut other = std::mem::take(&mut self.spill);
        let polled = self.poll_inner(&mut other);
        if !other.is_empty() {
            self.stash.append(&mut other);
        }
        self.spill = other;
        polled?;
        let n = self.fixed_done.len();
        if out.is_empty() {
            // The usual case: hand over the whole list, no copy.
            std::mem::swap(out, &mut self.fixed_done);
        } else {
            out.append(&mut self.fixed_done);
        }
        Ok(n)
    }

    /// [`IoQPair::wait`] for registered-buffer requests.
    pub fn wait_fixed(
        &mut self,
        out: &mut Vec<FixedCompletion>,
        timeout: Duration,
    ) -> Result<usize> {
        self.wait_with(timeout, |q| q.poll_fixed(out))
    }
}

// The refusals of `submit_fixed`, built out of line (cold): the checks
// stay on the path, their messages do not.

#[cold]
#[inline(never)]
fn not_read_or_write(op: IoOp) -> Error {
    Error::Unsupported(format!(
        "{} on a registered buffer (only Read and Write carry one)",
        op.name()
    ))
}

#[cold]
#[inline(never)]
fn bad_block_count(e: nvme_spec::RangeError) -> Error {
    Error::BadBuffer(e.to_string())
}

#[cold]
#[inline(never)]
fn lba_exceeds_transfer(lba_size: u32, max_transfer: usize) -> Error {
    Error::Unsupported(format!(
        "LBA size {lba_size} exceeds the transfer limit {max_transfer}"
    ))
}

#[cold]
#[inline(never)]
fn quarantined(index: u32) -> Error {
    Error::BadBuffer(format!(
        "registered buffer {index} is out of use: a command on it was given up on \
         and the device may still write it (until a controller reset)"
    ))
}

#[cold]
#[inline(never)]
fn does_not_fit(io: &FixedIo, len: u64, have: u64) -> Error {
    Error::BadBuffer(format!(
        "{len} bytes at offset {} do not fit registered buffer {} ({have} bytes, \
         the offset a multiple of 4)",
        io.offset, io.buffer
    ))
}

#[cold]
#[inline(never)]
fn no_such_buffer(index: u32, registered: usize) -> Error {
    Error::BadBuffer(format!(
        "registered buffer {index} does not exist ({registered} are registered)"
    ))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use nvme_spec::{NvmOpcode, Status, status::generic};

    use crate::mock::{AbortPolicy, Match, MockConfig, MockController, MockNamespace};
    use crate::{Error, FixedCompletion, FixedIo, IoQPair, IoRequest, Options};

    const NS: u32 = 1;
    const LBA: usize = 512;

    fn mock(max_transfer: usize, tweak: impl FnOnce(&mut Options)) -> (MockController, IoQPair) {
        MockController::with_qpair(config(max_transfer, tweak)).expect("mock")
    }

    /// One namespace of 1024 blocks, small queues, `tweak`ed options.
    fn config(max_transfer: usize, tweak: impl FnOnce(&mut Options)) -> MockConfig {
        let mut options = Options {
            admin_queue_entries: 8,
            io_queue_entries: 8,
            prefer_huge_pages: false,
            ..Options::default()
        };
        tweak(&mut options);
        MockConfig {
            namespaces: vec![MockNamespace {
                nsid: NS,
                lba_size: LBA as u32,
                blocks: 1024,
            }],
            max_transfer,
            options,
            ..MockConfig::default()
        }
    }

    fn bytes(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    /// Polls with the mock processing until `n` fixed requests are back.
    fn complete(mock: &MockController, qp: &mut IoQPair, n: usize) -> Vec<FixedCompletion> {
        let start = Instant::now();
        let mut out = Vec::new();
        while out.len() < n {
            assert!(start.elapsed() < Duration::from_secs(20), "{out:?}");
            qp.poll_fixed(&mut out).expect("poll");
            mock.process().expect("mock processing");
        }
        assert_eq!(out.len(), n);
        out
    }

    fn register(mock: &MockController, qp: &mut IoQPair, sizes: &[usize]) {
        let bufs = sizes
            .iter()
            .map(|&s| mock.pool().alloc(s).expect("buffer"))
            .collect();
        qp.register_buffers(bufs).expect("register");
    }

    #[test]
    fn fixed_requests_move_data_and_hand_back_their_tags() {
        let (mock, mut qp) = mock(128 << 10, |_| {});
        register(&mock, &mut qp, &[8 * LBA, 8 * LBA]);
        let data = bytes(1, 6 * LBA);
        let b0 = qp.registered_buffer(0).expect("buffer 0");
        b0.write(8, &data).expect("fill");
        qp.submit_fixed(FixedIo::write(NS, 10, 6, 0).with_offset(8).with_tag(70))
            .expect("write accepted");
        let w = complete(&mock, &mut qp, 1);
        assert_eq!(w[0].tag, 70);
        w[0].result.as_ref().expect("write succeeds");
        assert_eq!(mock.read_disk(NS, 10, 6).expect("disk"), data);
        qp.submit_fixed(FixedIo::read(NS, 10, 6, 1).with_tag(71))
            .expect("read accepted");
        let r = complete(&mock, &mut qp, 1);
        assert_eq!(r[0].tag, 71);
        r[0].result.as_ref().expect("read succeeds");
        let mut back = vec![0u8; data.len()];
        qp.registered_buffer(1)
            .expect("buffer 1")
            .read(0, &mut back)
            .expect("copy out");
        assert_eq!(back, data);
        assert_eq!(qp.outstanding(), 0);
        assert_eq!(mock.violations(), Vec::<String>::new());
    }

    #[test]
    fn path_counters_count_one_doorbell_per_batch_and_every_entry() {
        let (mock, mut qp) = mock(128 << 10, |_| {});
        register(&mock, &mut qp, &[LBA; 5]);
        for i in 0..5 {
            qp.submit_fixed(FixedIo::read(NS, u64::from(i), 1, i).with_tag(u64::from(i)))
                .expect("accepted");
        }
        assert_eq!(qp.path_counters(), crate::PathCounters::default());
        // The first poll rings once for all five and finds nothing; the
        // mock then completes them, and the next poll reaps all five.
        qp.poll_fixed(&mut Vec::new()).expect("poll");
        mock.process().expect("mock processing");
        let done = complete(&mock, &mut qp, 5);
        assert_eq!(done.len(), 5);
        let c = qp.path_counters();
        assert_eq!(
            (c.sqes, c.sq_rings, c.cqes, c.cq_rings),
            (5, 1, 5, 1),
            "{c:?}"
        );
        assert_eq!((c.polls, c.reaping_polls), (2, 1), "{c:?}");
        assert!(c.sq_mmio <= c.sq_rings && c.cq_mmio <= c.cq_rings, "{c:?}");
    }

    #[test]
    fn bad_fixed_requests_are_refused_and_nothing_is_sent() {
        let (mock, mut qp) = mock(128 << 10, |_| {});
        let none = qp.submit_fixed(FixedIo::read(NS, 0, 1, 0));
        assert!(
            matches!(&none, Err(Error::BadBuffer(m)) if m.contains("registered buffer 0 does not exist")),
            "{none:?}"
        );
        register(&mock, &mut qp, &[4 * LBA]);
        let cases = [
            (FixedIo::read(NS, 0, 5, 0), "do not fit registered buffer 0"),
            (FixedIo::read(NS, 0, 1, 0).with_offset(2), "multiple of 4"),
            (
                FixedIo::read(NS, 0, 1, 3),
                "registered buffer 3 does not exist",
            ),
            (FixedIo::read(NS, 1024, 1, 0), "past the end"),
            (FixedIo::read(NS, 0, 0, 0), "0 blocks"),
            (FixedIo::read(9, 0, 1, 0), "namespace 9"),
            (
                FixedIo {
                    op: crate::IoOp::Flush,
                    ..FixedIo::read(NS, 0, 1, 0)
                },
                "only Read and Write",
            ),
        ];
        for (io, want) in cases {
            let got = qp.submit_fixed(io).expect_err("refused").to_string();
            assert!(got.contains(want), "{io:?}: {got}");
        }
        assert!(mock.commands().is_empty(), "nothing reached the device");
        assert_eq!(qp.outstanding(), 0);
    }

    #[test]
    fn large_fixed_requests_are_split_and_complete_once() {
        let (mock, mut qp) = mock(8 << 10, |_| {});
        register(&mock, &mut qp, &[100 * LBA]);
        let data = bytes(3, 100 * LBA);
        qp.registered_buffer(0)
            .expect("buffer")
            .write(0, &data)
            .expect("fill");
        qp.submit_fixed(FixedIo::write(NS, 5, 100, 0).with_tag(9))
            .expect("accepted");
        let done = complete(&mock, &mut qp, 1);
        assert_eq!(done[0].tag, 9);
        done[0].result.as_ref().expect("write succeeds");
        assert_eq!(mock.commands().len(), 7, "100 blocks in 16-block commands");
        assert_eq!(mock.read_disk(NS, 5, 100).expect("disk"), data);
        assert_eq!(qp.outstanding(), 0);
    }

    #[test]
    fn fixed_and_owned_requests_share_the_queue_and_each_poll_keeps_the_other_kind() {
        let (mock, mut qp) = mock(128 << 10, |_| {});
        register(&mock, &mut qp, &[LBA]);
        let buf = mock.pool().alloc(LBA).expect("buffer");
        qp.submit(IoRequest::read(NS, 0, 1, buf).with_tag(1))
            .expect("owned accepted");
        qp.submit_fixed(FixedIo::read(NS, 1, 1, 0).with_tag(2))
            .expect("fixed accepted");
        let fixed = complete(&mock, &mut qp, 1);
        assert_eq!(fixed[0].tag, 2);
        // The owned request finished too, and waits for `poll`.
        assert_eq!(qp.outstanding(), 1);
        let mut owned = Vec::new();
        qp.poll(&mut owned).expect("poll");
        assert_eq!(owned.len(), 1);
        assert_eq!(owned[0].tag, 1);
        assert!(owned[0].data.is_some());
        assert_eq!(qp.outstanding(), 0);
    }

    #[test]
    fn retryable_errors_on_fixed_requests_are_retried_and_fatal_ones_named() {
        let (mock, mut qp) = mock(128 << 10, |o| o.retries = 2);
        register(&mock, &mut qp, &[LBA]);
        let transient = Status::generic(generic::DATA_TRANSFER_ERROR);
        mock.fail_next(Match::Opcode(NvmOpcode::Read), transient, 1);
        qp.submit_fixed(FixedIo::read(NS, 0, 1, 0).with_tag(1))
            .expect("accepted");
        let done = complete(&mock, &mut qp, 1);
        done[0].result.as_ref().expect("the retry succeeds");
        let fatal = Status::generic(generic::INVALID_FIELD);
        mock.fail_next(Match::Opcode(NvmOpcode::Read), fatal, 1);
        qp.submit_fixed(FixedIo::read(NS, 7, 1, 0).with_tag(2))
            .expect("accepted");
        let done = complete(&mock, &mut qp, 1);
        assert_eq!(done[0].tag, 2);
        match &done[0].result {
            Err(Error::Command { command, status }) => {
                assert_eq!(*status, fatal);
                assert!(command.contains("Read nsid 1 lba 7+1"), "{command}");
            }
            other => panic!("expected a command error, got {other:?}"),
        }
        assert_eq!(qp.outstanding(), 0);
    }

    #[test]
    fn a_fixed_buffer_given_up_on_is_kept_out_of_use() {
        let (mock, mut qp) = mock(128 << 10, |o| {
            o.io_timeout = Duration::from_millis(50);
            o.admin_timeout = Duration::from_secs(2);
            o.reset_on_timeout = false;
        });
        mock.set_abort_policy(AbortPolicy::Refuse);
        register(&mock, &mut qp, &[LBA, LBA]);
        mock.hold_next(Match::Any, 1);
        qp.submit_fixed(FixedIo::read(NS, 0, 1, 1).with_tag(5))
            .expect("accepted");
        let done = complete(&mock, &mut qp, 1);
        assert!(
            matches!(done[0].result, Err(Error::CommandTimeout { .. })),
            "{:?}",
            done[0].result
        );
        let refused = qp.submit_fixed(FixedIo::read(NS, 0, 1, 1));
        assert!(
            matches!(&refused, Err(Error::BadBuffer(m)) if m.contains("out of use")),
            "{refused:?}"
        );
        // The other buffer still works; unregistering keeps the lost one.
        qp.submit_fixed(FixedIo::read(NS, 0, 1, 0).with_tag(6))
            .expect("accepted");
        complete(&mock, &mut qp, 1)[0]
            .result
            .as_ref()
            .expect("read succeeds");
        assert_eq!(qp.unregister_buffers().expect("unregister").len(), 1);
    }

    #[test]
    fn a_quarantined_fixed_buffer_takes_requests_again_after_a_reset() {
        let config = config(128 << 10, |o| {
            o.io_timeout = Duration::from_millis(50);
            o.admin_timeout = Duration::from_secs(2);
            o.reset_on_timeout = false;
        });
        let (mock, ctrl) = MockController::new(config).expect("mock");
        let mut qp = ctrl.io_qpair().expect("queue pair");
        mock.set_abort_policy(AbortPolicy::Refuse);
        register(&mock, &mut qp, &[LBA]);
        mock.hold_next(Match::Any, 1);
        qp.submit_fixed(FixedIo::read(NS, 0, 1, 0).with_tag(1))
            .expect("accepted");
        let done = complete(&mock, &mut qp, 1);
        assert!(
            matches!(done[0].result, Err(Error::CommandTimeout { .. })),
            "{:?}",
            done[0].result
        );
        let refused = qp.submit_fixed(FixedIo::read(NS, 0, 1, 0));
        assert!(
            matches!(&refused, Err(Error::BadBuffer(m)) if m.contains("out of use")),
            "{refused:?}"
        );
        // The reset ends the device's DMA: the buffer is usable again, for
        // as much as it holds and no more.
        ctrl.reset().expect("reset");
        qp.poll_fixed(&mut Vec::new())
            .expect("poll after the reset");
        let too_big = qp.submit_fixed(FixedIo::read(NS, 0, 2, 0));
        assert!(
            matches!(&too_big, Err(Error::BadBuffer(m)) if m.contains("do not fit")),
            "{too_big:?}"
        );
        qp.submit_fixed(FixedIo::read(NS, 0, 1, 0).with_tag(2))
            .expect("accepted after the reset");
        let done = complete(&mock, &mut qp, 1);
        assert_eq!(done[0].tag, 2);
        done[0].result.as_ref().expect("read succeeds");
    }

    #[test]
    fn buffers_cannot_be_unregistered_under_a_request() {
        let (mock, mut qp) = mock(128 << 10, |_| {});
        register(&mock, &mut qp, &[LBA]);
        qp.submit_fixed(FixedIo::read(NS, 0, 1, 0))
            .expect("accepted");
        let busy = qp.unregister_buffers();
        assert!(
            matches!(&busy, Err(Error::BadBuffer(m)) if m.contains("outstanding")),
            "{busy:?}"
        );
        complete(&mock, &mut qp, 1);
        assert_eq!(qp.unregister_buffers().expect("unregister").len(), 1);
        assert!(qp.registered_buffer(0).is_none());
    }
}

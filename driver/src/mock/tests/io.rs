//! The data path: sizes, splitting, PRP lists, SGLs, retries, completion
//! order, stray and malformed completion entries.

use super::*;

#[test]
fn a_stalled_device_never_sees_its_sq_overrun() {
    // The driver keeps the SQ from overflowing by its CIDs alone (the
    // SQ head in completions is not tracked): with a device that
    // fetches nothing, a 4-entry queue holds 3 commands and the rest
    // wait; once the device catches up, every request completes.
    let (mock, mut qp) = MockController::with_qpair(config(4, 64 << 10, 1024)).expect("mock");
    for tag in 0..10u64 {
        qp.submit(read_request(&mock, tag, LBA, 0).with_tag(tag))
            .expect("accepted");
    }
    qp.ring().expect("ring");
    assert_eq!(qp.outstanding(), 10);
    let done = complete(&mock, &mut qp, 10);
    assert_eq!(done.len(), 10);
    no_violations(&mock);
}

#[test]
fn the_mock_flags_an_sq_overrun() {
    let (mock, qp) = MockController::with_qpair(config(4, 64 << 10, 1024)).expect("mock");
    let qid = qp.qid();
    let ring = |tail: u32| {
        mock.bar
            .write32(doorbell_offset(qid, DoorbellKind::SqTail, DSTRD), tail)
            .expect("doorbell");
    };
    // Three entries posted and not fetched: the ring is full.
    ring(3);
    no_violations(&mock);
    // One more moves the tail onto the unfetched head.
    ring(0);
    let v = mock.violations();
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("overrun"), "{v:?}");
}

#[test]
fn write_then_read_back_at_various_sizes_and_offsets() {
    let (mock, mut qp) = MockController::with_qpair(config(16, 128 << 10, 4096)).expect("mock");
    let cases = [
        (0u64, 1usize, (0usize, 0usize)),
        (1, 1, (4, 8)),
        (7, 3, (512, 4092)),
        (100, 8, (4092, 0)),
        (33, 17, (2048, 1024)),
        (500, 64, (0, 3000)),
        (1000, 129, (8, 4)),
        (2000, 256, (0, 0)),
        (4095, 1, (4088, 12)),
    ];
    for (i, &(slba, blocks, offsets)) in cases.iter().enumerate() {
        let data = random_bytes(i as u64 + 1, blocks * LBA);
        let back = round_trip(&mock, &mut qp, slba, &data, offsets);
        assert_eq!(
            back, data,
            "slba {slba} blocks {blocks} offsets {offsets:?}"
        );
        assert_eq!(
            mock.read_disk(NS, slba, blocks as u64).expect("disk"),
            data,
            "disk at {slba}"
        );
    }
    assert_eq!(qp.outstanding(), 0);
    assert_eq!(mock.stats().writes, cases.len() as u64);
    no_violations(&mock);
}

#[test]
fn segment_requests_move_data_between_separate_buffers() {
    // MDTS 16 KiB: the 28 KiB write is split, and children start and
    // end inside pieces.
    let (mock, mut qp) = MockController::with_qpair(config(8, 16 << 10, 1024)).expect("mock");
    let sizes = [12288usize, 4096, 12288];
    let bufs: Vec<crate::DmaBuffer> = sizes
        .iter()
        .map(|&n| mock.pool().alloc(n + 4096).expect("alloc"))
        .collect();
    // The first piece starts 2 KiB into its buffer (allowed for the first).
    let mut segs = vec![(bufs[0].iova() + 2048, sizes[0] - 2048)];
    segs.extend(
        bufs[1..]
            .iter()
            .zip(&sizes[1..])
            .map(|(b, &n)| (b.iova() + 4096, n)),
    );
    let data = random_bytes(77, segs.iter().map(|s| s.1).sum());
    let mut at = 0;
    for (i, (buf, &(_, len))) in bufs.iter().zip(&segs).enumerate() {
        let off = if i == 0 { 2048 } else { 4096 };
        buf.write(off, &data[at..at + len]).expect("fill");
        at += len;
    }
    let blocks = (data.len() / LBA) as u64;
    // Pieces of separate DMA buffers, as the page cache hands folios over.
    let pieces = crate::IoSegments::with_owner(segs, bufs);
    qp.submit(IoRequest::write_segments(NS, 40, blocks, pieces).with_tag(5))
        .expect("accepted");
    let mut done = complete(&mock, &mut qp, 1);
    let w = done.pop().expect("one completion");
    w.result.expect("write succeeds");
    assert!(w.segments.is_some(), "segments handed back");
    assert!(mock.stats().writes >= 2, "split by MDTS");
    assert_eq!(mock.read_disk(NS, 40, blocks).expect("disk"), data);
    no_violations(&mock);

    // Illegal pieces are refused at submit, with the request handed back.
    let b = mock.pool().alloc(8192).expect("alloc");
    let bad = crate::IoSegments::with_owner(vec![(b.iova(), 512), (b.iova() + 4096, 512)], b);
    let rejected = qp
        .submit(IoRequest::read_segments(NS, 0, 2, bad))
        .expect_err("first piece ends mid-page");
    assert!(
        rejected
            .to_string()
            .contains("a gap is only legal between page boundaries"),
        "{rejected}"
    );
    assert!(rejected.request.segments.is_some());
}

#[test]
fn blocking_helpers_work_when_the_mock_serves_doorbells() {
    let (mock, mut qp) = MockController::with_qpair(config(8, 16 << 10, 1024)).expect("mock");
    mock.set_auto(true);
    let data = random_bytes(9, 40 * LBA);
    qp.write(NS, 10, &data).expect("write");
    let mut back = vec![0u8; data.len()];
    qp.read(NS, 10, &mut back).expect("read");
    assert_eq!(back, data);
    qp.write_zeroes(NS, 12, 2).expect("write zeroes");
    qp.deallocate(NS, 20, 3).expect("deallocate");
    qp.flush(NS).expect("flush");
    qp.read(NS, 10, &mut back).expect("read");
    let mut want = data.clone();
    want[2 * LBA..4 * LBA].fill(0);
    want[10 * LBA..13 * LBA].fill(0);
    assert_eq!(back, want);
    let s = mock.stats();
    assert_eq!((s.write_zeroes, s.dataset_management, s.flushes), (1, 1, 1));
    // 40 blocks of 512 bytes with a 16 KiB limit: 2 commands each way.
    assert_eq!((s.writes, s.reads), (2, 4));
    no_violations(&mock);
}

#[test]
fn requests_larger_than_mdts_are_split_and_complete_once() {
    let (mock, mut qp) = MockController::with_qpair(config(16, 8 << 10, 1024)).expect("mock");
    let data = random_bytes(3, 200 * LBA);
    qp.submit(write_request(&mock, 5, &data, 0).with_tag(7))
        .expect("accepted");
    let done = complete(&mock, &mut qp, 1);
    assert_eq!(done[0].tag, 7);
    done[0].result.as_ref().expect("write succeeds");
    // Nothing else comes back, however long we poll.
    let mut more = Vec::new();
    for _ in 0..10 {
        mock.process().expect("process");
        qp.poll(&mut more).expect("poll");
    }
    assert!(more.is_empty(), "completed twice: {more:?}");
    assert_eq!(qp.outstanding(), 0);
    let cmds = mock.commands();
    assert_eq!(cmds.len(), 13, "200 blocks in 16-block commands");
    let mut next_lba = 5;
    for c in &cmds {
        assert_eq!(c.slba, next_lba, "commands cover the range in order");
        assert!(c.blocks <= 16 && c.bytes <= 8 << 10, "{c:?}");
        next_lba += c.blocks;
    }
    assert_eq!(next_lba, 205);
    assert_eq!(mock.read_disk(NS, 5, 200).expect("disk"), data);
    no_violations(&mock);
}

#[test]
fn hints_reach_every_command_of_a_split_request() {
    use crate::qpair::IoHints;
    use nvme_spec::{AccessFrequency, AccessLatency, DsmHints, RwFlags};
    let (mock, mut qp) = MockController::with_qpair(config(16, 8 << 10, 1024)).expect("mock");
    let data = random_bytes(4, 40 * LBA);
    let seq = DsmHints {
        frequency: AccessFrequency::OneTimeRead,
        latency: AccessLatency::Idle,
        sequential: true,
        incompressible: false,
    };
    let write = IoHints {
        flags: RwFlags::FUA,
        dsm: seq,
    };
    qp.submit(write_request(&mock, 0, &data, 0).with_hints(write))
        .expect("write accepted");
    complete(&mock, &mut qp, 1)[0]
        .result
        .as_ref()
        .expect("write succeeds");
    qp.submit(read_request(&mock, 0, data.len(), 0).with_hints(IoHints::READAHEAD))
        .expect("read accepted");
    complete(&mock, &mut qp, 1)[0]
        .result
        .as_ref()
        .expect("read succeeds");
    qp.submit(read_request(&mock, 0, LBA, 0))
        .expect("plain read");
    complete(&mock, &mut qp, 1);
    let cmds: Vec<(u8, u64, RwFlags, u8)> = mock
        .commands()
        .iter()
        .map(|c| (c.opcode, c.slba, c.rw_flags, c.dsm))
        .collect();
    let (w, r) = (NvmOpcode::Write as u8, NvmOpcode::Read as u8);
    let ra = (RwFlags::LIMITED_RETRY, 7);
    assert_eq!(
        cmds,
        vec![
            (w, 0, RwFlags::FUA, 0x56),
            (w, 16, RwFlags::FUA, 0x56),
            (w, 32, RwFlags::FUA, 0x56),
            (r, 0, ra.0, ra.1),
            (r, 16, ra.0, ra.1),
            (r, 32, ra.0, ra.1),
            (r, 0, RwFlags::empty(), 0),
        ]
    );
    assert_eq!(mock.commands()[0].dsm_hints(), Some(seq));
    no_violations(&mock);
}

#[test]
fn tiny_queue_with_many_large_requests_does_not_deadlock() {
    let (mock, mut qp) = MockController::with_qpair(config(4, 8 << 10, 4096)).expect("mock");
    assert_eq!(qp.depth(), 4);
    mock.set_order(Order::Random(42));
    let n = 24u64;
    let blocks = 128u64; // 64 KiB: 8 commands each
    let data: Vec<Vec<u8>> = (0..n)
        .map(|i| random_bytes(100 + i, blocks as usize * LBA))
        .collect();
    for (i, d) in data.iter().enumerate() {
        let req = write_request(&mock, i as u64 * blocks, d, 4 * i);
        qp.submit(req.with_tag(i as u64)).expect("accepted");
    }
    assert_eq!(qp.outstanding(), n as usize);
    let mut done = complete(&mock, &mut qp, n as usize);
    done.sort_by_key(|c| c.tag);
    for (i, c) in done.iter().enumerate() {
        assert_eq!(c.tag, i as u64);
        c.result.as_ref().expect("write succeeds");
    }
    for i in 0..n {
        qp.submit(read_request(&mock, i * blocks, blocks as usize * LBA, 0).with_tag(i))
            .expect("accepted");
    }
    for c in complete(&mock, &mut qp, n as usize) {
        let mut back = vec![0u8; blocks as usize * LBA];
        c.data.expect("buffer").read(0, &mut back).expect("copy");
        assert_eq!(back, data[c.tag as usize], "request {}", c.tag);
    }
    assert_eq!(mock.stats().writes, n * 8);
    assert_eq!(qp.outstanding(), 0);
    no_violations(&mock);
}

#[test]
fn prp_lists_describe_transfers_of_more_than_two_pages() {
    let (mock, mut qp) = MockController::with_qpair(config(16, 128 << 10, 4096)).expect("mock");
    for (i, &(blocks, offset)) in [(128usize, 0usize), (24, 512), (17, 4092)]
        .iter()
        .enumerate()
    {
        let data = random_bytes(40 + i as u64, blocks * LBA);
        let back = round_trip(&mock, &mut qp, 64, &data, (offset, offset));
        assert_eq!(back, data);
    }
    let cmds = mock.commands();
    assert_eq!(cmds.len(), 6);
    for c in &cmds {
        assert_eq!(c.data, DataPointer::Prp { list_pages: 1 }, "{c:?}");
    }
    assert_eq!(mock.stats().prp_lists, 6);
    assert_eq!(mock.stats().chained_prp_lists, 0);
    no_violations(&mock);
}

#[test]
fn chained_prp_lists_carry_transfers_of_more_than_512_pages() {
    let blocks = 16384; // 8 MiB
    let (mock, mut qp) = MockController::with_qpair(config(16, 8 << 20, blocks)).expect("mock");
    // 4 MiB + 1.5 KiB from a page offset: 1026 pages, 1025 list entries.
    let data = random_bytes(77, (4 << 20) + 3 * LBA);
    let back = round_trip(&mock, &mut qp, 1000, &data, (1024, 2048));
    assert!(back == data, "data read back differs");
    let cmds = mock.commands();
    assert_eq!(cmds.len(), 2, "one command each way: {cmds:?}");
    for c in &cmds {
        assert_eq!(c.data, DataPointer::Prp { list_pages: 3 }, "{c:?}");
        assert_eq!(c.bytes, data.len());
    }
    assert_eq!(mock.stats().chained_prp_lists, 2);
    no_violations(&mock);
}

#[test]
fn sgl_mode_moves_the_same_data() {
    let mut cfg = config(8, 16 << 10, 2048);
    cfg.options.use_sgl = true;
    let (mock, mut qp) = MockController::with_qpair(cfg).expect("mock");
    for (i, &(blocks, offsets)) in [(1usize, (0usize, 4usize)), (24, (512, 4092)), (100, (8, 0))]
        .iter()
        .enumerate()
    {
        let data = random_bytes(60 + i as u64, blocks * LBA);
        assert_eq!(round_trip(&mock, &mut qp, 300, &data, offsets), data);
    }
    let s = mock.stats();
    assert!(s.sgls > 0);
    assert_eq!(s.sgls, s.reads + s.writes, "every transfer used an SGL");
    assert_eq!(s.prp_lists, 0);
    assert!(mock.commands().iter().all(|c| c.data == DataPointer::Sgl));
    no_violations(&mock);
}

#[test]
fn retryable_status_is_retried_then_succeeds() {
    let mut cfg = config(8, 128 << 10, 1024);
    cfg.options.retries = 3;
    let (mock, mut qp) = MockController::with_qpair(cfg).expect("mock");
    let transient = Status::generic(generic::DATA_TRANSFER_ERROR);
    assert!(transient.is_retryable());
    mock.fail_next(Match::Opcode(NvmOpcode::Write), transient, 2);
    let data = random_bytes(5, 8 * LBA);
    assert_eq!(round_trip(&mock, &mut qp, 0, &data, (0, 0)), data);
    let writes: Vec<Status> = mock
        .commands()
        .iter()
        .filter(|c| c.opcode == NvmOpcode::Write as u8)
        .map(|c| c.status)
        .collect();
    assert_eq!(writes, vec![transient, transient, Status::SUCCESS]);
    no_violations(&mock);
}

#[test]
fn retries_stop_at_the_configured_count() {
    let mut cfg = config(8, 128 << 10, 1024);
    cfg.options.retries = 2;
    let (mock, mut qp) = MockController::with_qpair(cfg).expect("mock");
    let transient = Status::generic(generic::COMMAND_INTERRUPTED);
    mock.fail_next(Match::Any, transient, 100);
    qp.submit(read_request(&mock, 0, 4 * LBA, 0))
        .expect("accepted");
    let done = complete(&mock, &mut qp, 1);
    match &done[0].result {
        Err(Error::Command { status, .. }) => assert_eq!(*status, transient),
        other => panic!("expected the transient status, got {other:?}"),
    }
    assert_eq!(mock.stats().injected, 3, "first try and two retries");
    no_violations(&mock);
}

#[test]
fn a_fatal_error_fails_a_split_request_once_with_its_first_error() {
    let (mock, mut qp) = MockController::with_qpair(config(16, 8 << 10, 1024)).expect("mock");
    let unrecovered = reject(
        StatusCodeType::MediaAndDataIntegrity,
        media::UNRECOVERED_READ_ERROR,
    );
    let fault = reject(StatusCodeType::MediaAndDataIntegrity, media::WRITE_FAULT);
    mock.fail_next(Match::Lba(20), unrecovered, 1);
    mock.fail_next(Match::Lba(40), fault, 1);
    // 64 blocks in 16-block commands: the 2nd and 3rd fail.
    qp.submit(read_request(&mock, 0, 64 * LBA, 0).with_tag(3))
        .expect("accepted");
    let done = complete(&mock, &mut qp, 1);
    assert_eq!(done[0].tag, 3);
    match &done[0].result {
        Err(Error::Command { status, command }) => {
            assert_eq!(*status, unrecovered, "the first error wins");
            assert!(command.contains("Read"), "{command}");
        }
        other => panic!("expected a media error, got {other:?}"),
    }
    assert!(done[0].data.is_some());
    let mut more = Vec::new();
    for _ in 0..10 {
        mock.process().expect("process");
        qp.poll(&mut more).expect("poll");
    }
    assert!(more.is_empty(), "completed twice: {more:?}");
    assert_eq!(qp.outstanding(), 0);
    // Media errors are not retried.
    assert_eq!(mock.stats().injected, 2);
    assert_eq!(
        mock.commands().iter().filter(|c| c.slba == 16).count(),
        1,
        "no retry of the failed command"
    );
    no_violations(&mock);
}

#[test]
fn write_zeroes_and_deallocate_reach_the_disk_and_flush_completes() {
    let mut cfg = config(16, 128 << 10, 1024);
    cfg.namespaces.push(MockNamespace {
        nsid: 2,
        lba_size: 512,
        blocks: 70_000,
    });
    let (mock, mut qp) = MockController::with_qpair(cfg).expect("mock");
    let data = random_bytes(11, 64 * LBA);
    qp.submit(write_request(&mock, 100, &data, 0))
        .expect("accepted");
    complete(&mock, &mut qp, 1)[0]
        .result
        .as_ref()
        .expect("write");
    mock.write_disk(2, 69_990, &[0xaa; 10 * LBA]).expect("disk");
    for req in [
        IoRequest::write_zeroes(NS, 110, 10).with_tag(1),
        IoRequest::deallocate(NS, 130, 5).with_tag(2),
        IoRequest::flush(NS).with_tag(3),
        IoRequest::write_zeroes(2, 0, 70_000).with_tag(4),
    ] {
        qp.submit(req).expect("accepted");
    }
    let mut done = complete(&mock, &mut qp, 4);
    done.sort_by_key(|c| c.tag);
    for c in &done {
        c.result.as_ref().expect("succeeds");
        assert!(c.data.is_none(), "no buffer");
    }
    let mut want = data;
    want[10 * LBA..20 * LBA].fill(0);
    want[30 * LBA..35 * LBA].fill(0);
    assert_eq!(mock.read_disk(NS, 100, 64).expect("disk"), want);
    assert_eq!(mock.deallocated(), vec![(NS, 130, 5)]);
    assert_eq!(
        mock.read_disk(2, 69_990, 10).expect("disk"),
        vec![0; 10 * LBA]
    );
    let s = mock.stats();
    assert_eq!((s.flushes, s.dataset_management), (1, 1));
    assert_eq!(s.write_zeroes, 3, "70000 blocks take two commands");
    let big: Vec<(u64, u64)> = mock
        .commands()
        .iter()
        .filter(|c| c.nsid == 2)
        .map(|c| (c.slba, c.blocks))
        .collect();
    assert_eq!(big, vec![(0, 65_536), (65_536, 4_464)]);
    no_violations(&mock);
}

#[test]
fn out_of_order_completions_reach_their_requests() {
    let (mock, mut qp) = MockController::with_qpair(config(16, 128 << 10, 1024)).expect("mock");
    for i in 0..5u64 {
        mock.write_disk(NS, i * 8, &random_bytes(200 + i, 8 * LBA))
            .expect("disk");
        qp.submit(read_request(&mock, i * 8, 8 * LBA, 0).with_tag(i))
            .expect("accepted");
    }
    mock.set_order(Order::Lifo);
    let mut out = Vec::new();
    qp.poll(&mut out).expect("poll rings");
    assert_eq!(mock.process().expect("process"), 5);
    qp.poll(&mut out).expect("poll");
    let tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
    assert_eq!(tags, vec![4, 3, 2, 1, 0], "completed newest first");
    for c in out {
        let mut back = vec![0u8; 8 * LBA];
        c.data.expect("buffer").read(0, &mut back).expect("copy");
        assert_eq!(
            back,
            random_bytes(200 + c.tag, 8 * LBA),
            "request {}",
            c.tag
        );
    }
    no_violations(&mock);
}

#[test]
fn delayed_commands_complete_after_their_passes() {
    let (mock, mut qp) = MockController::with_qpair(config(16, 128 << 10, 1024)).expect("mock");
    mock.delay_next(Match::Nth(0), 2, 1);
    for i in 0..3u64 {
        qp.submit(read_request(&mock, i, LBA, 0).with_tag(i))
            .expect("accepted");
    }
    let mut out = Vec::new();
    qp.poll(&mut out).expect("poll");
    assert_eq!(mock.process().expect("pass 1"), 2);
    assert_eq!(mock.process().expect("pass 2"), 0);
    assert_eq!(mock.process().expect("pass 3"), 1);
    qp.poll(&mut out).expect("poll");
    let tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
    assert_eq!(tags, vec![1, 2, 0]);
}

#[test]
fn a_stray_cid_is_bad_device_and_the_queue_keeps_working() {
    let (mock, mut qp) = MockController::with_qpair(config(8, 128 << 10, 1024)).expect("mock");
    let qid = qp.qid();
    for i in 0..2u64 {
        mock.write_disk(NS, i, &[i as u8 + 1; LBA]).expect("disk");
        qp.submit(read_request(&mock, i, LBA, 0).with_tag(i))
            .expect("accepted");
    }
    let mut out = Vec::new();
    qp.poll(&mut out).expect("poll rings");
    assert_eq!(mock.process_limit(1).expect("first"), 1);
    let head = mock.sq_head(qid).expect("queue");
    assert_eq!(
        mock.post_cqe(qid, 6, head, Status::SUCCESS).expect("post"),
        RawCqe::Stray
    );
    assert_eq!(mock.process().expect("second"), 1);
    match qp.poll(&mut out) {
        Err(Error::BadDevice(what)) => assert!(what.contains("CID 6"), "{what}"),
        other => panic!("expected BadDevice, got {other:?}"),
    }
    assert!(out.is_empty(), "a failed poll hands nothing back");
    assert_eq!(qp.outstanding(), 2, "nothing lost");
    assert_eq!(qp.poll(&mut out).expect("poll"), 2);
    for c in &out {
        let mut back = [0u8; LBA];
        c.data
            .as_ref()
            .expect("buffer")
            .read(0, &mut back)
            .expect("copy");
        assert_eq!(back, [c.tag as u8 + 1; LBA]);
    }
    // An SQ head past the ring is refused the same way, and the command
    // it named still completes properly afterwards.
    qp.submit(read_request(&mock, 0, LBA, 0).with_tag(9))
        .expect("accepted");
    qp.ring().expect("ring");
    mock.fetch().expect("fetch");
    let cid = mock.pending()[0].cid;
    assert_eq!(
        mock.post_cqe(qid, cid, 200, Status::SUCCESS).expect("post"),
        RawCqe::Stray
    );
    assert!(matches!(qp.poll(&mut out), Err(Error::BadDevice(_))));
    let done = complete(&mock, &mut qp, 1);
    assert_eq!(done[0].tag, 9);
    done[0].result.as_ref().expect("read");
    no_violations(&mock);
}

#[test]
fn a_stray_entry_after_a_retryable_error_does_not_strand_the_retry() {
    let (mock, mut qp) = MockController::with_qpair(config(4, 128 << 10, 1024)).expect("mock");
    let qid = qp.qid();
    mock.write_disk(NS, 3, &[7; LBA]).expect("disk");
    mock.fail_next(Match::Any, Status::generic(generic::DATA_TRANSFER_ERROR), 1);
    qp.submit(read_request(&mock, 3, LBA, 0).with_tag(1))
        .expect("accepted");
    let mut out = Vec::new();
    qp.poll(&mut out).expect("poll rings");
    assert_eq!(mock.process().expect("process"), 1);
    let head = mock.sq_head(qid).expect("queue");
    assert_eq!(
        mock.post_cqe(qid, 3, head, Status::SUCCESS).expect("post"),
        RawCqe::Stray
    );
    // Reaps the failed command (queuing its retry), then the stray.
    assert!(matches!(qp.poll(&mut out), Err(Error::BadDevice(_))));
    // Nothing is in flight now: only the poll itself can issue the retry.
    let done = complete(&mock, &mut qp, 1);
    done[0].result.as_ref().expect("the retry succeeds");
    let mut back = [0u8; LBA];
    done[0]
        .data
        .as_ref()
        .expect("buffer")
        .read(0, &mut back)
        .expect("copy");
    assert_eq!(back, [7; LBA]);
    no_violations(&mock);
}

#[test]
fn a_blocking_call_failing_on_a_stray_entry_loses_no_other_request() {
    let (mock, mut qp) = MockController::with_qpair(config(8, 128 << 10, 1024)).expect("mock");
    let qid = qp.qid();
    mock.set_auto(true);
    qp.submit(read_request(&mock, 0, LBA, 0).with_tag(10))
        .expect("accepted");
    qp.ring().expect("ring: the mock completes it at once");
    let head = mock.sq_head(qid).expect("queue");
    assert_eq!(
        mock.post_cqe(qid, 5, head, Status::SUCCESS).expect("post"),
        RawCqe::Stray
    );
    // The blocking read reaps request 10, then meets the stray entry.
    let mut block = vec![0u8; LBA];
    assert!(matches!(
        qp.read(NS, 1, &mut block),
        Err(Error::BadDevice(_))
    ));
    let mut out = Vec::new();
    qp.poll(&mut out).expect("poll");
    let tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
    assert!(tags.contains(&10), "request 10 was handed back: {tags:?}");
    assert_eq!(qp.outstanding(), 0);
}

#[test]
fn a_wrong_sq_head_in_a_completion_does_not_wedge_the_queue() {
    let (mock, mut qp) = MockController::with_qpair(config(4, 128 << 10, 1024)).expect("mock");
    let qid = qp.qid();
    qp.submit(read_request(&mock, 0, LBA, 0).with_tag(1))
        .expect("accepted");
    qp.ring().expect("ring");
    mock.fetch().expect("fetch");
    let cid = mock.pending()[0].cid;
    // The device has consumed one entry (head 1) but reports head 2,
    // one past the tail: taken at its word, the SQ would look full
    // with nothing in flight.
    assert_eq!(mock.sq_head(qid), Some(1));
    assert!(matches!(
        mock.post_cqe(qid, cid, 2, Status::SUCCESS).expect("post"),
        RawCqe::Completed(_)
    ));
    let done = complete(&mock, &mut qp, 1);
    assert_eq!(done[0].tag, 1);
    for i in 0..4u64 {
        qp.submit(read_request(&mock, i, LBA, 0).with_tag(10 + i))
            .expect("accepted");
    }
    let done = complete(&mock, &mut qp, 4);
    assert!(done.iter().all(|c| c.result.is_ok()));
    no_violations(&mock);
}

#[test]
fn stray_entries_are_acknowledged_to_the_device() {
    // Fill the whole CQ (3 usable slots of 4) with strays: the device may
    // post nothing more until the driver writes the CQ head doorbell.
    let (mock, mut qp) = MockController::with_qpair(config(4, 128 << 10, 1024)).expect("mock");
    let qid = qp.qid();
    for _ in 0..3 {
        assert_eq!(
            mock.post_cqe(qid, 2, 0, Status::SUCCESS).expect("post"),
            RawCqe::Stray
        );
    }
    assert_eq!(
        mock.post_cqe(qid, 2, 0, Status::SUCCESS).expect("post"),
        RawCqe::NoRoom
    );
    let mut out = Vec::new();
    for _ in 0..3 {
        assert!(matches!(qp.poll(&mut out), Err(Error::BadDevice(_))));
    }
    qp.submit(read_request(&mock, 0, LBA, 0)).expect("accepted");
    let done = complete(&mock, &mut qp, 1);
    done[0].result.as_ref().expect("read");
    no_violations(&mock);
}

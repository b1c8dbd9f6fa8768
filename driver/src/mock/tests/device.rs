//! Shadow doorbells, MSI-X, asynchronous events, queue management, the
//! mock's own checks, the CQE-stream harness and the floor loop.

use super::*;

#[test]
fn shadow_doorbells_are_set_up_used_and_set_up_again_after_a_reset() {
    let cfg = config(16, 64 << 10, 1024).shadow_doorbells(true);
    let (mock, ctrl) = MockController::new(cfg).expect("mock");
    assert!(ctrl.uses_shadow_doorbells());
    let (shadow, eventidx) = mock.shadow_pages().expect("configured");
    assert_ne!(shadow, eventidx);
    assert_eq!(mock.stats().shadow_configs, 1);
    let mut qp = ctrl.io_qpair().expect("queue pair");
    let qid = qp.qid();
    let patterns = submit_writes(&mock, &mut qp, 5);
    // The mock takes the tail from the shadow page.
    assert_eq!(mock.doorbell(qid, false), 5);
    let (out, _) = drain(&mock, &mut qp, 5, Duration::from_secs(10));
    all_written(&mock, &out, &patterns);
    assert_eq!(mock.doorbell(qid, true), 5, "CQ head in the shadow page");
    // After a reset the controller has forgotten the pages: they are
    // configured again, and the queue works through them.
    ctrl.reset().expect("reset");
    assert_eq!(mock.stats().shadow_configs, 2);
    assert!(mock.shadow_pages().is_some());
    let patterns = submit_writes(&mock, &mut qp, 3);
    let (out, errors) = drain(&mock, &mut qp, 3, Duration::from_secs(10));
    assert!(errors.is_empty(), "{errors:?}");
    all_written(&mock, &out, &patterns);
    no_violations(&mock);
}

#[test]
fn shadow_doorbells_skip_mmio_writes_the_event_index_does_not_ask_for() {
    let cfg = config(16, 64 << 10, 1024).shadow_doorbells(true);
    let (mock, ctrl) = MockController::new(cfg).expect("mock");
    let mut qp = ctrl.io_qpair().expect("queue pair");
    let qid = qp.qid();
    let (_, eventidx) = mock.shadow_pages().expect("configured");
    // The device says it will look at the SQ by itself up to entry 10.
    let dma = mock.state().dma.clone();
    dma.write(eventidx + 8 * u64::from(qid), &10u32.to_le_bytes())
        .expect("EventIdx");
    let before = mock.stats().mmio_doorbells;
    let patterns = submit_writes(&mock, &mut qp, 3);
    assert_eq!(mock.stats().mmio_doorbells, before, "no MMIO write needed");
    assert_eq!(mock.doorbell(qid, false), 3, "the shadow page has the tail");
    let (out, _) = drain(&mock, &mut qp, 3, Duration::from_secs(10));
    all_written(&mock, &out, &patterns);
    no_violations(&mock);
}

#[test]
fn a_queue_id_taken_again_rings_its_first_doorbell_by_mmio() {
    let cfg = config(16, 64 << 10, 1024).shadow_doorbells(true);
    let (mock, ctrl) = MockController::new(cfg).expect("mock");
    let mut qp = ctrl.io_qpair().expect("queue pair");
    let qid = qp.qid();
    let patterns = submit_writes(&mock, &mut qp, 5);
    let (out, _) = drain(&mock, &mut qp, 5, Duration::from_secs(10));
    all_written(&mock, &out, &patterns);
    // The mock, as QEMU, leaves the SQ's EventIdx at the last tail seen.
    let (_, eventidx) = mock.shadow_pages().expect("configured");
    let dma = mock.state().dma.clone();
    let mut ei = [0u8; 4];
    dma.read(eventidx + 8 * u64::from(qid), &mut ei)
        .expect("EventIdx");
    assert_eq!(u32::from_le_bytes(ei), 5);
    drop(qp);
    let mut qp = ctrl.io_qpair().expect("queue pair again");
    assert_eq!(qp.qid(), qid, "the same queue id");
    // QEMU looks at an SQ only after an MMIO doorbell: the new queue's
    // first doorbell (tail 0 -> 3) must be one, whatever the earlier
    // queue left in its EventIdx slot (5 would say "still looking").
    let before = mock.stats().mmio_doorbells;
    let patterns = submit_writes(&mock, &mut qp, 3);
    assert_eq!(mock.stats().mmio_doorbells, before + 1, "an MMIO doorbell");
    let (out, errors) = drain(&mock, &mut qp, 3, Duration::from_secs(10));
    assert!(errors.is_empty(), "{errors:?}");
    all_written(&mock, &out, &patterns);
    no_violations(&mock);
}

#[test]
fn msix_goes_through_the_device_boundary() {
    // A function without MSI-X: a clear error, and the queue id is
    // given back.
    let (_mock, ctrl) = MockController::new(config(16, 64 << 10, 1024)).expect("mock");
    let err = ctrl.io_qpair_with_interrupts().expect_err("no vectors");
    assert!(err.to_string().contains("MSI-X"), "{err}");
    for _ in 0..4 {
        // Each failure gives its queue id back (4 are granted).
        assert!(ctrl.io_qpair_with_interrupts().is_err());
    }
    drop(ctrl.io_qpair().expect("ids not leaked"));

    let cfg = config(16, 64 << 10, 1024).msix_vectors(4);
    let (mock, ctrl) = MockController::new(cfg).expect("mock");
    let mut qp = ctrl.io_qpair_with_interrupts().expect("interrupts");
    let patterns = submit_writes(&mock, &mut qp, 2);
    assert_eq!(mock.stats().interrupts, 0);
    mock.process().expect("process");
    assert_eq!(mock.stats().interrupts, 2, "one per completion posted");
    let mut out = Vec::new();
    while out.len() < 2 {
        qp.wait(&mut out, Duration::from_secs(10)).expect("wait");
    }
    all_written(&mock, &out, &patterns);
    // The blocking helpers, with the mock serving each doorbell.
    mock.set_auto(true);
    let mut back = vec![0u8; LBA];
    qp.read(NS, 1, &mut back).expect("read");
    assert_eq!(back, patterns[1]);
    assert_eq!(mock.stats().interrupts, 3);
    no_violations(&mock);
}

/// The fd of `watch_readable` stays registered across waits: a write to
/// it wakes `wait_or_watched` (and is left for the caller to read), a
/// plain `wait` that meets it does not return early for it (one-shot: it
/// only disarms), the next `wait_or_watched` re-arms it and reports the
/// fd still readable at once, and after `unwatch_readable` a write to it
/// wakes nothing.
#[test]
fn a_watched_fd_wakes_wait_or_watched_and_not_a_plain_wait() {
    let cfg = config(16, 64 << 10, 1024).msix_vectors(4);
    let (mock, ctrl) = MockController::new(cfg).expect("mock");
    let mut qp = ctrl.io_qpair_with_interrupts().expect("interrupts");
    let fd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    qp.watch_readable(&fd).expect("watch");
    assert_eq!(qp.watched_fd(), Some(std::os::fd::AsRawFd::as_raw_fd(&fd)));
    // One write in flight, not processed by the mock: only the fd can
    // end a wait early.
    let patterns = submit_writes(&mock, &mut qp, 1);
    let mut out = Vec::new();
    let short = Duration::from_millis(300);
    let (n, readable) = qp.wait_or_watched(&mut out, short).expect("wait");
    assert_eq!((n, readable), (0, false), "nothing readable yet");
    fd.write(1).expect("write");
    let start = std::time::Instant::now();
    let (n, readable) = qp
        .wait_or_watched(&mut out, Duration::from_secs(10))
        .expect("wait");
    assert_eq!((n, readable), (0, true));
    assert!(start.elapsed() < Duration::from_secs(5), "woken by the fd");
    // Not read: a plain wait sees the event once, disarms it, and sleeps
    // its whole timeout instead of spinning on it.
    let start = std::time::Instant::now();
    assert_eq!(qp.wait(&mut out, short).expect("wait"), 0);
    assert!(start.elapsed() >= short, "a plain wait returned early");
    // Re-armed: still readable, reported at once.
    let (_, readable) = qp
        .wait_or_watched(&mut out, Duration::from_secs(10))
        .expect("wait");
    assert!(readable, "re-armed");
    assert_eq!(fd.read().expect("read"), 1, "left for the caller");
    qp.unwatch_readable();
    assert_eq!(qp.watched_fd(), None);
    fd.write(1).expect("write");
    let (_, readable) = qp.wait_or_watched(&mut out, short).expect("wait");
    assert!(!readable, "unwatched");
    mock.process().expect("process");
    while out.is_empty() {
        qp.wait(&mut out, Duration::from_secs(10)).expect("wait");
    }
    all_written(&mock, &out, &patterns);
    no_violations(&mock);
}

#[test]
fn asynchronous_events_reach_the_controller() {
    let (mock, ctrl) = MockController::new(config(16, 64 << 10, 1024)).expect("mock");
    // SMART / health, temperature threshold (type 1, info 1, log 2).
    assert!(mock.async_event(0x0002_0101));
    let events = ctrl.async_events().expect("events");
    assert_eq!(events.len(), 1);
    no_violations(&mock);
}

#[test]
fn queues_are_created_and_deleted_and_the_controller_shut_down() {
    let mut cfg = config(8, 128 << 10, 1024);
    cfg.io_queues = 2;
    let (mock, ctrl) = MockController::new(cfg).expect("mock");
    assert_eq!(ctrl.io_queue_limit(), 2);
    assert_eq!(ctrl.namespace(NS).expect("namespace").blocks, 1024);
    let a = ctrl.io_qpair().expect("first queue pair");
    let b = ctrl.io_qpair().expect("second queue pair");
    assert_ne!(a.qid(), b.qid());
    assert!(matches!(
        ctrl.io_qpair(),
        Err(Error::QueuesExhausted { granted: 2 })
    ));
    let qid = a.qid();
    drop(a);
    assert_eq!(ctrl.io_qpair().expect("reused").qid(), qid);
    let s = mock.stats();
    assert_eq!((s.queues_created, s.queues_deleted), (3, 2));
    assert_eq!(s.shutdowns, 0);
    drop(b);
    drop(ctrl);
    let s = mock.stats();
    assert_eq!(s.queues_deleted, 3);
    assert_eq!(s.shutdowns, 1, "shut down when the last handle went");
    no_violations(&mock);
}

#[test]
fn the_mock_rejects_malformed_commands_and_reports_violations() {
    let (mock, qp) = MockController::with_qpair(config(8, 8 << 10, 64)).expect("mock");
    let qid = qp.qid();
    let buf = mock.pool().alloc(16 << 10).expect("buffer");
    let (dma, base) = {
        let s = mock.state();
        (s.dma.clone(), s.sqs[&qid].base)
    };
    // Plays the driver: writes SQEs into the ring and rings the doorbell.
    let mut slot = 0u16;
    let mut submit = |mut sqe: Sqe, cid: u16| {
        sqe.set_cid(cid);
        dma.write(base + u64::from(slot) * SQE_BYTES, sqe.as_bytes())
            .expect("SQ slot");
        slot += 1;
        mock.bar
            .write32(
                doorbell_offset(qid, DoorbellKind::SqTail, DSTRD),
                u32::from(slot),
            )
            .expect("doorbell");
        mock.process().expect("process");
        mock.commands().last().map(|c| c.status)
    };
    let read = |slba, nlb| nvme_spec::io::read(NS, slba, nlb).expect("read");
    let mut unmapped = read(0, 1);
    unmapped.set_prps(0x1000, 0);
    let mut misaligned = read(0, 1);
    misaligned.set_prps(buf.iova() + 2, 0);
    let mut too_big = read(0, 32);
    too_big.set_prps(buf.iova(), buf.iova() + 4096);
    let mut past_end = read(60, 8);
    past_end.set_prps(buf.iova(), buf.iova() + 4096);
    let statuses = [
        submit(unmapped, 0),
        submit(misaligned, 1),
        submit(too_big, 2),
        submit(past_end, 3),
    ];
    let sc: Vec<u8> = statuses.iter().map(|s| s.map_or(0xff, |s| s.sc)).collect();
    assert_eq!(
        sc,
        vec![
            generic::DATA_TRANSFER_ERROR,
            generic::PRP_OFFSET_INVALID,
            generic::INVALID_FIELD,
            generic::LBA_OUT_OF_RANGE,
        ]
    );
    assert!(statuses.iter().all(|s| s.is_some_and(|s| s.dnr)));
    // A range past the namespace is the caller's error, not a protocol
    // violation; the other three are.
    let v = mock.violations();
    assert_eq!(v.len(), 3, "{v:?}");
    assert!(v[0].contains("outside every DMA mapping"), "{}", v[0]);
    assert!(v[1].contains("not dword aligned"), "{}", v[1]);
    assert!(v[2].contains("MDTS"), "{}", v[2]);
    // A CID reused while its command is in flight.
    mock.hold_next(Match::Any, 1);
    let mut ok = read(0, 1);
    ok.set_prps(buf.iova(), 0);
    submit(ok, 4);
    submit(ok, 4);
    let v = mock.violations();
    assert!(v.last().is_some_and(|w| w.contains("CID 4")), "{v:?}");
}

fn plausible_cqe() -> impl Strategy<Value = [u8; 16]> {
    (0u16..10, 0u16..10, any::<u16>(), any::<u32>()).prop_map(|(cid, head, status, dw0)| {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&dw0.to_le_bytes());
        raw[8..10].copy_from_slice(&head.to_le_bytes());
        raw[10..12].copy_from_slice(&1u16.to_le_bytes());
        raw[12..14].copy_from_slice(&cid.to_le_bytes());
        raw[14..].copy_from_slice(&status.to_le_bytes());
        raw
    })
}

fn stream_op() -> impl Strategy<Value = StreamOp> {
    prop_oneof![
        4 => (any::<bool>(), any::<u16>(), any::<u8>())
            .prop_map(|(write, slba, blocks)| StreamOp::Submit { write, slba, blocks }),
        1 => any::<[u8; 16]>().prop_map(StreamOp::Raw),
        1 => plausible_cqe().prop_map(StreamOp::Raw),
        2 => (any::<u8>(), any::<u8>(), any::<u16>())
            .prop_map(|(cid, sq_head, status)| StreamOp::Cqe { cid, sq_head, status }),
        3 => (0u8..6).prop_map(StreamOp::Complete),
        1 => any::<u16>().prop_map(StreamOp::Fail),
        1 => Just(StreamOp::Poll),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_completion_streams_keep_the_queue_pair_sound(
        ops in proptest::collection::vec(stream_op(), 0..80)
    ) {
        if let Err(e) = run_cqe_stream(&ops) {
            prop_assert!(false, "{}", e);
        }
    }
}

#[test]
fn the_stream_harness_exercises_what_it_claims() {
    // A long pseudo-random stream: the checks must have had something
    // to check.
    let bytes = random_bytes(2024, 6000);
    let report = run_cqe_stream(&StreamOp::decode(&bytes)).expect("properties hold");
    assert!(report.submitted > 50, "{report:?}");
    assert_eq!(report.completed, report.submitted);
    assert!(report.data_checked > 20, "{report:?}");
    assert!(report.bad_device > 0, "{report:?}");
    assert!(report.raw_completed > 0, "{report:?}");
    assert!(report.failed > 0, "{report:?}");
}

#[test]
fn stream_regressions() {
    // Found by the fuzz target before the fixes in `IoQPair::poll`: a
    // stray entry ending a reap left the waiting requests unissued.
    let ops = [
        StreamOp::Submit {
            write: false,
            slba: 65535,
            blocks: 255,
        },
        StreamOp::Poll,
        StreamOp::Complete(0),
        StreamOp::Complete(0),
        StreamOp::Submit {
            write: false,
            slba: 72,
            blocks: 33,
        },
        StreamOp::Submit {
            write: false,
            slba: 29940,
            blocks: 116,
        },
        StreamOp::Cqe {
            cid: 91,
            sq_head: 0,
            status: 0,
        },
    ];
    let report = run_cqe_stream(&ops).expect("properties hold");
    assert_eq!((report.submitted, report.completed), (3, 3));
    assert_eq!(report.bad_device, 1);
}

#[test]
fn decoding_fuzz_bytes_is_total() {
    assert_eq!(StreamOp::decode(&[]), vec![]);
    assert_eq!(StreamOp::decode(&[7]), vec![StreamOp::Poll]);
    assert_eq!(
        StreamOp::decode(&[0x80, 1, 0, 3, 4]),
        vec![
            StreamOp::Submit {
                write: true,
                slba: 1,
                blocks: 3
            },
            StreamOp::Complete(0)
        ]
    );
    assert!(
        matches!(StreamOp::decode(&[2, 1])[0], StreamOp::Raw(r) if r[0] == 1 && r[1..] == [0; 15])
    );
    assert_eq!(
        StreamOp::decode(&[3, 1, 2, 3, 4]),
        vec![StreamOp::Cqe {
            cid: 1,
            sq_head: 2,
            status: 0x0403
        }]
    );
}

fn floor_job(write: bool, depth: usize, io_blocks: u32, count: u64) -> crate::FloorJob {
    crate::FloorJob {
        nsid: NS,
        write,
        first_lba: 0,
        blocks: 1024,
        io_blocks,
        depth,
        random: !write,
        seed: 3,
        warmup: Duration::ZERO,
        time: Duration::from_secs(3600),
        count: Some(count),
    }
}

#[test]
fn the_floor_loop_counts_what_the_mock_served_and_leaves_the_queue_working() {
    let (mock, mut qp) = MockController::with_qpair(config(64, 128 << 10, 1024)).expect("mock");
    mock.set_auto(true);
    // 64 KiB reads: PRP lists built once per CID.
    let r = qp.floor(&floor_job(false, 8, 128, 2000)).expect("floor");
    assert!(r.ios >= 2000 && r.errors == 0, "{r:?}");
    let s = mock.stats();
    assert!(
        (r.ios..=r.ios + 8).contains(&s.reads),
        "counted {} reads, the mock served {}",
        r.ios,
        s.reads
    );
    let w = qp.floor(&floor_job(true, 3, 1, 500)).expect("floor");
    assert!(w.ios >= 500 && mock.stats().writes >= w.ios, "{w:?}");
    no_violations(&mock);
    // The queue pair goes on with the full path afterwards.
    let data = random_bytes(9, 4 * LBA);
    mock.set_auto(false);
    assert_eq!(round_trip(&mock, &mut qp, 16, &data, (0, 0)), data);
    no_violations(&mock);
    // What the floor cannot do is refused.
    assert!(
        qp.floor(&floor_job(false, 64, 1, 10)).is_err(),
        "depth past entries - 1"
    );
    assert!(
        qp.floor(&floor_job(false, 4, 512, 10)).is_err(),
        "past the transfer limit"
    );
    mock.fail_next(Match::Any, Status::generic(generic::DATA_TRANSFER_ERROR), 3);
    mock.set_auto(true);
    let e = qp.floor(&floor_job(false, 4, 1, 100)).expect("floor");
    assert_eq!(e.errors, 3, "{e:?}");
    assert_eq!(
        e.first_error.map(|s| s.sc),
        Some(generic::DATA_TRANSFER_ERROR)
    );
}

#[test]
fn a_floor_loop_on_a_hung_command_times_out_instead_of_spinning() {
    let (mock, mut qp) = timeout_config(AbortPolicy::Abort);
    mock.set_auto(true);
    mock.hold_next(Match::Any, 1);
    let start = Instant::now();
    let e = qp
        .floor(&floor_job(false, 2, 1, 100))
        .expect_err("the held command never completes");
    assert!(e.to_string().contains("floor loop on queue"), "{e}");
    assert!(
        start.elapsed() >= Duration::from_millis(50),
        "not before the timeout"
    );
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn commands_ended_by_sq_deletion_are_sent_again_outside_the_retry_budget() {
    // What a reset's queue deletion does to commands in flight on a
    // device that aborts them: they are sent again, even with no
    // retries allowed, on the fast path and as parts of a split request.
    let mut cfg = config(16, 8 << 10, 1024);
    cfg.options.retries = 0;
    let (mock, mut qp) = MockController::with_qpair(cfg).expect("mock");
    let deleted = Status::generic(generic::ABORTED_SQ_DELETION);
    assert!(!deleted.is_retryable());
    for (seed, blocks) in [(70, 8usize), (71, 64)] {
        mock.fail_next(Match::Opcode(NvmOpcode::Write), deleted, 5);
        let data = random_bytes(seed, blocks * LBA);
        assert_eq!(round_trip(&mock, &mut qp, 0, &data, (0, 0)), data);
    }
    let writes: Vec<Status> = mock
        .commands()
        .iter()
        .filter(|c| c.opcode == NvmOpcode::Write as u8)
        .map(|c| c.status)
        .collect();
    // Each request: its first five write commands ended by deletion.
    assert_eq!(writes.iter().filter(|s| **s == deleted).count(), 10);
    assert_eq!(writes.iter().filter(|s| s.is_success()).count(), 5);
    no_violations(&mock);
}

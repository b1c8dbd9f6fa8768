//! Timeouts, aborts, bring-up, controller resets, fatal status and removal.

use super::*;

/// Polls (with the mock processing) until one request completes or
/// `limit` passes.
fn wait_one(mock: &MockController, qp: &mut IoQPair, limit: Duration) -> IoCompletion {
    let start = Instant::now();
    let mut out = Vec::new();
    while out.is_empty() {
        assert!(start.elapsed() < limit, "no completion within {limit:?}");
        qp.poll(&mut out).expect("poll");
        mock.process().expect("process");
    }
    assert_eq!(out.len(), 1);
    out.remove(0)
}

#[test]
fn a_command_that_never_completes_is_aborted() {
    let (mock, mut qp) = timeout_config(AbortPolicy::Abort);
    mock.hold_next(Match::Any, 1);
    let start = Instant::now();
    qp.submit(read_request(&mock, 0, LBA, 0).with_tag(5))
        .expect("accepted");
    let done = wait_one(&mock, &mut qp, Duration::from_secs(10));
    assert!(
        start.elapsed() >= Duration::from_millis(50),
        "not before the timeout"
    );
    assert_eq!(done.tag, 5);
    match done.result {
        Err(Error::Command { status, .. }) => {
            assert_eq!((status.sct, status.sc), (0, generic::ABORT_REQUESTED))
        }
        other => panic!("expected Command Abort Requested, got {other:?}"),
    }
    assert!(
        done.data.is_some(),
        "an aborted command gives its buffer back"
    );
    let s = mock.stats();
    assert_eq!((s.aborts, s.aborted), (1, 1));
    // The queue pair goes on working.
    let data = random_bytes(1, 2 * LBA);
    assert_eq!(round_trip(&mock, &mut qp, 8, &data, (0, 0)), data);
    no_violations(&mock);
}

#[test]
fn a_command_that_cannot_be_aborted_is_given_up_on() {
    let (mock, mut qp) = timeout_config(AbortPolicy::Refuse);
    mock.hold_next(Match::Any, 1);
    qp.submit(read_request(&mock, 0, LBA, 0).with_tag(5))
        .expect("accepted");
    let done = wait_one(&mock, &mut qp, Duration::from_secs(10));
    assert_eq!(done.tag, 5);
    assert!(
        matches!(done.result, Err(Error::CommandTimeout { .. })),
        "{:?}",
        done.result
    );
    assert!(done.data.is_none(), "the device may still write the buffer");
    assert_eq!(qp.outstanding(), 0);
    assert_eq!(mock.stats().aborts, 1);
    // The lost command's CID is not reused while the device holds it
    // (the mock flags a CID submitted twice).
    let data = random_bytes(2, 4 * LBA);
    assert_eq!(round_trip(&mock, &mut qp, 8, &data, (0, 0)), data);
    no_violations(&mock);

    // The lost command completes at last: its CID is free again, and
    // timeouts are still detected for the commands that follow.
    assert_eq!(mock.release_held(), 1);
    mock.process().expect("late completion");
    let mut out = Vec::new();
    qp.poll(&mut out).expect("late completion is absorbed");
    assert!(out.is_empty());
    mock.set_abort_policy(AbortPolicy::Abort);
    mock.hold_next(Match::Any, 1);
    qp.submit(read_request(&mock, 0, LBA, 0).with_tag(6))
        .expect("accepted");
    let done = wait_one(&mock, &mut qp, Duration::from_secs(10));
    assert_eq!(done.tag, 6);
    assert!(
        matches!(done.result, Err(Error::Command { status, .. }) if status.sc == generic::ABORT_REQUESTED),
        "{:?}",
        done.result
    );
    no_violations(&mock);
}

#[test]
fn open_runs_the_real_bring_up_on_the_mock() {
    let cfg = config(16, 64 << 10, 1024).ready_delay(5);
    let (mock, ctrl) = MockController::new(cfg).expect("mock");
    let s = mock.stats();
    // Left enabled by a "previous owner": disabled, then enabled once.
    assert_eq!((s.resets, s.enables), (1, 1));
    assert_eq!(ctrl.max_transfer(), 64 << 10, "from Identify's MDTS");
    assert_eq!(
        ctrl.identify().model().to_string(),
        "nvme-driver mock controller"
    );
    assert_eq!(ctrl.namespace(NS).expect("namespace").blocks, 1024);
    assert_eq!(ctrl.io_queue_limit(), 4);
    assert!(!ctrl.uses_shadow_doorbells(), "not advertised");
    let csts = Csts(mock.register(regs::offset::CSTS).expect("CSTS"));
    assert!(csts.ready() && !csts.fatal());
    let cc = Cc(mock.register(regs::offset::CC).expect("CC"));
    assert!(cc.enabled());
    assert_eq!((cc.iosqes(), cc.iocqes()), (6, 4));
    drop(ctrl);
    assert_eq!(mock.stats().shutdowns, 1);
    no_violations(&mock);
}

#[test]
fn a_controller_that_never_becomes_ready_fails_bring_up_in_time() {
    let mut mock = MockController::device(&config(16, 64 << 10, 1024)).expect("mock");
    mock.set_ready_delay(u32::MAX);
    let start = Instant::now();
    let err = mock
        .open(config(16, 64 << 10, 1024).options)
        .expect_err("never ready");
    // CAP.TO is 500 ms; the disable step waits that long for RDY to clear.
    assert!(
        matches!(
            err,
            Error::Timeout {
                step: crate::InitStep::Disable,
                ..
            }
        ),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(20));
}

#[test]
fn the_admin_queue_is_read_again_at_every_enable() {
    // Plays the driver on the bare registers: two enables, each with
    // its own admin queue; each command completes in the queue
    // programmed before that enable.
    let mock = MockController::device(&config(16, 64 << 10, 1024)).expect("mock");
    mock.state().regs.pci_command = PCI_COMMAND_MASTER;
    let wait_ready = |want: bool| {
        for _ in 0..100 {
            if Csts(mock.register(regs::offset::CSTS).expect("CSTS")).ready() == want {
                return;
            }
        }
        panic!("CSTS.RDY never became {want}");
    };
    let run = |sq: &crate::DmaBuffer, cq: &crate::DmaBuffer, cid: u16| {
        mock.bar.write32(regs::offset::CC, 0).expect("disable");
        wait_ready(false);
        mock.bar
            .write32(regs::offset::AQA, Aqa::new(2, 2).0)
            .expect("AQA");
        mock.bar.write64(regs::offset::ASQ, sq.iova()).expect("ASQ");
        mock.bar.write64(regs::offset::ACQ, cq.iova()).expect("ACQ");
        let cc = Cc(0).with_iosqes(6).with_iocqes(4).with_enable(true);
        mock.bar.write32(regs::offset::CC, cc.0).expect("enable");
        wait_ready(true);
        let mut sqe = nvme_spec::admin::set_features(
            nvme_spec::FeatureId::NumberOfQueues as u8,
            0x0001_0001,
            false,
        );
        sqe.set_cid(cid);
        sq.write(0, sqe.as_bytes()).expect("SQE");
        let tail = doorbell_offset(0, DoorbellKind::SqTail, DSTRD);
        mock.bar.write32(tail, 1).expect("doorbell");
    };
    let completion = |cq: &crate::DmaBuffer| {
        let mut raw = [0u8; 16];
        cq.read(0, &mut raw).expect("CQE");
        Cqe::read_from_bytes(&raw[..]).expect("CQE")
    };
    let pool = mock.pool();
    let (sq1, cq1) = (pool.alloc(4096).expect("SQ"), pool.alloc(4096).expect("CQ"));
    let (sq2, cq2) = (pool.alloc(4096).expect("SQ"), pool.alloc(4096).expect("CQ"));
    run(&sq1, &cq1, 7);
    assert_eq!(completion(&cq1).cid(), 7);
    assert!(completion(&cq1).phase());
    run(&sq2, &cq2, 8);
    let c = completion(&cq2);
    assert_eq!(
        (c.cid(), c.phase()),
        (8, true),
        "the new queue, from slot 0"
    );
    assert_eq!(completion(&cq1).cid(), 7, "the old queue untouched");
    assert_eq!(mock.stats().enables, 2);
    no_violations(&mock);
}

#[test]
fn a_bad_enable_is_refused_with_fatal_status() {
    let mock = MockController::device(&config(16, 64 << 10, 1024)).expect("mock");
    mock.bar.write32(regs::offset::CC, 0).expect("disable");
    for _ in 0..10 {
        mock.register(regs::offset::CSTS).expect("CSTS");
    }
    // No admin queue programmed: the mock cannot start.
    mock.bar
        .write32(regs::offset::CC, Cc(0).with_enable(true).0)
        .expect("enable");
    let csts = Csts(mock.register(regs::offset::CSTS).expect("CSTS"));
    assert!(csts.fatal() && !csts.ready());
    assert_eq!(mock.violations().len(), 1, "{:?}", mock.violations());
}

#[test]
fn bring_up_on_a_vanished_device_says_the_device_is_gone() {
    let mut mock = MockController::device(&config(16, 64 << 10, 1024)).expect("mock");
    mock.vanish();
    let err = mock
        .open(config(16, 64 << 10, 1024).options)
        .expect_err("gone");
    assert!(err.to_string().contains("device gone"), "{err}");
}

#[test]
fn a_reset_during_io_resubmits_what_was_in_flight() {
    let (mock, ctrl) = MockController::new(config(16, 64 << 10, 1024)).expect("mock");
    let mut qp = ctrl.io_qpair().expect("queue pair");
    let patterns = submit_writes(&mock, &mut qp, 8);
    // Half fetched and held by the device, half not even fetched.
    mock.hold_next(Match::Any, 4);
    mock.process_limit(0).expect("fetch");
    assert_eq!(mock.pending().len(), 8);
    ctrl.reset().expect("reset");
    let s = mock.stats();
    assert_eq!((s.resets, s.enables), (2, 2));
    // The reset deleted the queue before disabling the controller
    // (docs/ARCHITECTURE.md, "Controller reset"): the deletion dropped
    // the commands, the disable found nothing left.
    assert_eq!(s.queues_deleted, 1);
    assert_eq!(s.dropped_by_delete, 8, "the device forgot them");
    assert_eq!(s.dropped_by_reset, 0);
    assert_eq!(ctrl.generation(), 1);
    let (out, errors) = drain(&mock, &mut qp, 8, Duration::from_secs(10));
    assert!(errors.is_empty(), "{errors:?}");
    all_written(&mock, &out, &patterns);
    assert_eq!(
        mock.stats().queues_created,
        2,
        "the queue was created again"
    );
    // The queue pair keeps working.
    let data = random_bytes(9, 4 * LBA);
    assert_eq!(round_trip(&mock, &mut qp, 40, &data, (0, 0)), data);
    no_violations(&mock);
}

/// Several commands time out in the same deadline scan; the first
/// one's Abort is refused, so the controller is reset and everything
/// in flight is resubmitted under fresh CIDs. The scan must stop
/// there: the other CIDs it found expired now name the resubmitted
/// commands, just sent. (It used to go on and abort them too and, as
/// they could not come back while the test's device waited, reset the
/// controller again for each: three Aborts and three resets.)
#[test]
fn commands_timing_out_together_cost_one_abort_and_one_reset() {
    let mut cfg = config(8, 128 << 10, 1024);
    cfg.options.io_timeout = Duration::from_millis(50);
    cfg.options.reset_on_timeout = true;
    let (mock, mut qp) = MockController::with_qpair(cfg).expect("mock");
    mock.set_abort_policy(AbortPolicy::Refuse);
    mock.hold_next(Match::Any, 3);
    let patterns = submit_writes(&mock, &mut qp, 4);
    let (out, errors) = drain(&mock, &mut qp, 4, Duration::from_secs(30));
    assert!(errors.is_empty(), "{errors:?}");
    all_written(&mock, &out, &patterns);
    let s = mock.stats();
    assert_eq!(s.aborts, 1, "{s:?}");
    assert_eq!(s.resets, 2, "bring-up's and one more: {s:?}");
    assert_eq!(s.dropped_by_reset, 3, "{s:?}");
    let r = qp.last_recovery().expect("a recovery record");
    assert_eq!(r.outcome, RecoveryOutcome::Reset { resubmitted: 3 });
    assert_eq!(r.abort_dw0, Some(1), "the Abort was refused");
    assert!(
        r.total >= r.grace && r.grace >= Duration::from_secs(2),
        "{r:?}"
    );
    // The queue goes on.
    let more = random_bytes(50, 2 * LBA);
    assert_eq!(round_trip(&mock, &mut qp, 100, &more, (0, 0)), more);
    no_violations(&mock);
}

/// A queue pair recovers from one reset while another reset is under
/// way: its queues are created in the second reset's controller, so it
/// must record the second generation. It used to record the one it saw
/// when it started recovering (the first), create its queues again on
/// its next poll, and be refused: the queue identifier was taken, and
/// every request failed (as seen once in
/// `reset_in_the_middle_of_io_loses_nothing` on QEMU, three threads and
/// three resets).
#[test]
fn a_queue_recovering_during_a_second_reset_records_the_second() {
    let (mock, ctrl) = MockController::new(config(32, 128 << 10, 1024)).expect("mock");
    let mut qp = ctrl.io_qpair().expect("queue pair");
    let patterns = submit_writes(&mock, &mut qp, 1);
    ctrl.reset().expect("first reset");
    // The second reset holds the admin lock for a while (each admin
    // doorbell takes 100 ms); the queue pair starts recovering from the
    // first meanwhile.
    mock.set_admin_latency(Duration::from_millis(100));
    std::thread::scope(|s| {
        let second = s.spawn(|| ctrl.reset().expect("second reset"));
        std::thread::sleep(Duration::from_millis(30));
        let mut out = Vec::new();
        qp.poll(&mut out)
            .expect("recovering across the second reset");
        second.join().expect("second reset");
    });
    mock.set_admin_latency(Duration::ZERO);
    let (out, errors) = drain(&mock, &mut qp, 1, Duration::from_secs(10));
    assert!(errors.is_empty(), "{errors:?}");
    all_written(&mock, &out, &patterns);
    let data = random_bytes(61, 2 * LBA);
    assert_eq!(round_trip(&mock, &mut qp, 8, &data, (0, 0)), data);
    let s = mock.stats();
    assert_eq!(s.resets, 3, "bring-up's and two: {s:?}");
    // Created at open and once more: not again after the second reset.
    assert_eq!(s.queues_created, 2, "{s:?}");
    no_violations(&mock);
}

#[test]
fn a_queue_pair_behind_a_reset_rings_nothing_until_its_queue_exists_again() {
    let cfg = config(16, 64 << 10, 1024).shadow_doorbells(true);
    let (mock, ctrl) = MockController::new(cfg).expect("mock");
    let mut qp = ctrl.io_qpair().expect("queue pair");
    let qid = qp.qid();
    let mut patterns = submit_writes(&mock, &mut qp, 4);
    assert_eq!(mock.doorbell(qid, false), 4);
    mock.process_limit(0).expect("fetch");
    ctrl.reset().expect("reset");
    let s = mock.stats();
    assert_eq!((s.queues_deleted, s.dropped_by_delete), (1, 4));
    // More work before the queue pair has looked at the controller
    // again: its queue is gone, so neither its shadow slot (zeroed by
    // the reset) nor its MMIO doorbell is written.
    let mmio = mock.stats().mmio_doorbells;
    for tag in 4..6 {
        let data = random_bytes(tag + 100, LBA);
        qp.submit(write_request(&mock, tag, &data, 0).with_tag(tag))
            .expect("accepted");
        patterns.push(data);
    }
    qp.ring().expect("ring");
    assert_eq!(mock.doorbell(qid, false), 0, "shadow slot written");
    assert_eq!(mock.stats().mmio_doorbells, mmio, "MMIO doorbell written");
    // The next poll creates the queue again and sends everything.
    let (out, errors) = drain(&mock, &mut qp, 6, Duration::from_secs(10));
    assert!(errors.is_empty(), "{errors:?}");
    all_written(&mock, &out, &patterns);
    assert_eq!(mock.stats().queues_created, 2);
    no_violations(&mock);
}

#[test]
fn an_error_posted_while_a_reset_tears_the_queue_down_is_sent_again() {
    // QEMU ends a Flush its Delete I/O SQ cancels with Write Fault; the
    // queue pair reaps that after the reset and sends the command again.
    let (mock, ctrl) = MockController::new(config(16, 64 << 10, 1024)).expect("mock");
    let mut qp = ctrl.io_qpair().expect("queue pair");
    let fault = reject(StatusCodeType::MediaAndDataIntegrity, media::WRITE_FAULT);
    // Without a reset the fault is the request's answer.
    mock.fail_next(Match::Opcode(NvmOpcode::Write), fault, 1);
    let _ = submit_writes(&mock, &mut qp, 1);
    let (out, _) = drain(&mock, &mut qp, 1, Duration::from_secs(10));
    match &out[0].result {
        Err(Error::Command { status, .. }) => assert_eq!(*status, fault),
        other => panic!("expected the write fault, got {other:?}"),
    }
    // Posted (not yet reaped) when the reset comes.
    mock.fail_next(Match::Opcode(NvmOpcode::Write), fault, 1);
    let patterns = submit_writes(&mock, &mut qp, 2);
    assert_eq!(mock.process().expect("complete"), 2);
    ctrl.reset().expect("reset");
    let (out, errors) = drain(&mock, &mut qp, 2, Duration::from_secs(10));
    assert!(errors.is_empty(), "{errors:?}");
    all_written(&mock, &out, &patterns);
    no_violations(&mock);
}

#[test]
fn a_command_lost_by_the_device_is_resubmitted_after_a_reset() {
    let mut cfg = config(8, 128 << 10, 1024);
    cfg.options.io_timeout = Duration::from_millis(50);
    cfg.options.reset_on_timeout = true;
    let (mock, mut qp) = MockController::with_qpair(cfg).expect("mock");
    // The device neither completes nor aborts the command.
    mock.set_abort_policy(AbortPolicy::Refuse);
    mock.hold_next(Match::Any, 1);
    let patterns = submit_writes(&mock, &mut qp, 3);
    let (out, errors) = drain(&mock, &mut qp, 3, Duration::from_secs(30));
    assert!(errors.is_empty(), "{errors:?}");
    all_written(&mock, &out, &patterns);
    let s = mock.stats();
    assert_eq!(s.aborts, 1, "Abort first");
    assert_eq!(s.resets, 2, "then a reset (the first was bring-up's)");
    no_violations(&mock);
}

#[test]
fn fatal_status_leads_to_a_reset_and_what_was_in_flight_completes() {
    let (mock, mut qp) = timeout_config(AbortPolicy::Abort);
    mock.hold_next(Match::Any, 2);
    let patterns = submit_writes(&mock, &mut qp, 4);
    mock.process().expect("two complete, two held");
    mock.set_fatal();
    assert!(Csts(mock.register(regs::offset::CSTS).expect("CSTS")).fatal());
    let (out, errors) = drain(&mock, &mut qp, 4, Duration::from_secs(10));
    assert!(errors.is_empty(), "{errors:?}");
    all_written(&mock, &out, &patterns);
    let s = mock.stats();
    assert_eq!(s.resets, 2, "CFS noticed, controller reset");
    assert_eq!(s.queues_deleted, 0, "a recovery reset deletes no queue");
    assert!(!Csts(mock.register(regs::offset::CSTS).expect("CSTS")).fatal());
    no_violations(&mock);
}

#[test]
fn an_sq_ring_unmapped_by_fault_injection_is_fatal_and_the_reset_resubmits() {
    let (mock, mut qp) = timeout_config(AbortPolicy::Abort);
    // Two writes fetched and held in the device, two more after the
    // fault: all four must come back, and be on the disk.
    mock.hold_next(Match::Any, 2);
    let patterns: Vec<Vec<u8>> = (0..4u64).map(|t| random_bytes(t + 300, LBA)).collect();
    for (tag, data) in patterns.iter().enumerate().take(2) {
        qp.submit(write_request(&mock, tag as u64, data, 0).with_tag(tag as u64))
            .expect("accepted");
    }
    qp.ring().expect("ring");
    mock.process().expect("fetch and hold");
    qp.inject_unmap_sq().expect("inject");
    for (tag, data) in patterns.iter().enumerate().skip(2) {
        qp.submit(write_request(&mock, tag as u64, data, 0).with_tag(tag as u64))
            .expect("accepted");
    }
    qp.ring().expect("ring");
    mock.process().expect("the fetch fails");
    assert!(Csts(mock.register(regs::offset::CSTS).expect("CSTS")).fatal());
    let (out, errors) = drain(&mock, &mut qp, 4, Duration::from_secs(10));
    assert!(errors.is_empty(), "{errors:?}");
    all_written(&mock, &out, &patterns);
    assert_eq!(mock.stats().resets, 2, "bring-up's, then the recovery's");
    let violations = mock.violations();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(
        violations[0].starts_with("SQ 1: fetching entry 2: "),
        "{violations:?}"
    );
    let r = qp.last_recovery().expect("a recovery record");
    assert!(
        matches!(r.cause, RecoveryCause::ControllerFatal { csts } if Csts(csts).fatal()),
        "{r:?}"
    );
    assert_eq!(r.outcome, RecoveryOutcome::Reset { resubmitted: 4 });
    assert_eq!((r.cid, r.abort_dw0), (None, None), "no Abort for CFS");
    assert!(r.total >= r.reset && r.reset > Duration::ZERO);
    // The ring was mapped again, and the queue works.
    let data = random_bytes(400, LBA);
    qp.submit(write_request(&mock, 9, &data, 0).with_tag(9))
        .expect("accepted");
    let (out, errors) = drain(&mock, &mut qp, 1, Duration::from_secs(10));
    assert!(errors.is_empty() && out.len() == 1 && out[0].result.is_ok());
    assert_eq!(mock.read_disk(NS, 9, 1).expect("disk"), data);
    assert_eq!(mock.violations().len(), 1, "no new violation");
}

#[test]
fn a_vanished_device_fails_every_request_with_device_gone() {
    let (mock, mut qp) = timeout_config(AbortPolicy::Abort);
    mock.hold_next(Match::Any, 3);
    let _ = submit_writes(&mock, &mut qp, 5);
    mock.process().expect("fetch");
    mock.vanish();
    let start = Instant::now();
    let (out, errors) = drain(&mock, &mut qp, 5, Duration::from_secs(10));
    assert!(start.elapsed() < Duration::from_secs(10), "no hang");
    assert_eq!(out.len(), 5, "every request answered");
    assert_eq!(qp.outstanding(), 0);
    for c in &out {
        let tag = c.tag;
        match &c.result {
            // The two the device completed before it went (the first
            // three fetched were held).
            Ok(_) => assert!(tag >= 3, "tag {tag}"),
            Err(e) => {
                assert!(e.to_string().contains("device gone"), "tag {tag}: {e}");
                assert!(tag < 3, "tag {tag}");
            }
        }
    }
    assert!(
        errors.iter().any(|e| e.to_string().contains("device gone")),
        "{errors:?}"
    );
    // New work fails at once rather than waiting on a dead device.
    let mut blocking = vec![0u8; LBA];
    let t = Instant::now();
    assert!(qp.read(NS, 0, &mut blocking).is_err());
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_removal_request_releases_the_device_and_fails_every_request_with_device_removed() {
    let (mock, ctrl) = MockController::new(config(8, 128 << 10, 1024)).expect("mock");
    let mut qp = ctrl.io_qpair().expect("queue pair");
    // Three commands the device fetched and never completes, two it
    // completes: the removal must answer the three.
    mock.hold_next(Match::Any, 3);
    let patterns = submit_writes(&mock, &mut qp, 5);
    mock.process().expect("fetch");
    assert!(!mock.released());
    assert!(mock.request_removal(), "the driver listens for removal");
    let start = Instant::now();
    let (out, errors) = drain(&mock, &mut qp, 5, Duration::from_secs(10));
    let answered = start.elapsed();
    assert!(
        errors.is_empty(),
        "answered through completions: {errors:?}"
    );
    assert_eq!(out.len(), 5, "every request answered");
    assert!(
        answered < Duration::from_secs(1),
        "answered in {answered:?}"
    );
    assert_eq!(qp.outstanding(), 0);
    assert!(mock.released(), "the device was given back");
    assert!(ctrl.is_removed());
    for c in &out {
        let tag = c.tag;
        match &c.result {
            Ok(_) => {
                assert!(tag >= 3, "tag {tag}");
                let disk = mock.read_disk(NS, tag, 1).expect("disk");
                assert_eq!(disk, patterns[tag as usize], "acknowledged write {tag}");
            }
            Err(e) => {
                assert!(matches!(e, Error::DeviceRemoved { .. }), "tag {tag}: {e}");
                assert!(e.to_string().contains("device removed"), "{e}");
                assert!(tag < 3, "tag {tag}");
            }
        }
    }
    // New work fails at once, with the same error.
    let t = Instant::now();
    let data = random_bytes(9, LBA);
    let rejected = qp
        .submit(write_request(&mock, 9, &data, 0))
        .expect_err("refused");
    assert!(
        matches!(rejected.error, Error::DeviceRemoved { .. }),
        "{}",
        rejected.error
    );
    let mut block = vec![0u8; LBA];
    let e = qp.read(NS, 0, &mut block).expect_err("refused");
    assert!(e.to_string().contains("device removed"), "{e}");
    let e = ctrl.smart_log().expect_err("admin refused");
    assert!(e.to_string().contains("device removed"), "{e}");
    let e = ctrl.reset().expect_err("no reset of a removed device");
    assert!(e.to_string().contains("device removed"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // Dropping the queue pair and the controller sends nothing more.
    let before = mock.stats();
    drop(qp);
    drop(ctrl);
    assert_eq!(format!("{:?}", mock.stats()), format!("{before:?}"));
}

#[test]
fn a_removal_request_answers_every_thread_within_a_second() {
    const THREADS: usize = 4;
    let (mock, ctrl) = MockController::new(config(16, 128 << 10, 4096)).expect("mock");
    let qps: Vec<IoQPair> = (0..THREADS)
        .map(|_| ctrl.io_qpair().expect("queue pair"))
        .collect();
    let removed_at = Mutex::new(None::<Instant>);
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = qps
            .into_iter()
            .enumerate()
            .map(|(t, mut qp)| {
                let mock = &mock;
                scope.spawn(move || {
                    let mut answered = 0u64;
                    let mut removed = 0u64;
                    let mut submitted = 0u64;
                    let mut out = Vec::new();
                    let start = Instant::now();
                    loop {
                        if qp.outstanding() < 8 {
                            let lba = (t as u64) * 1024 + submitted % 1024;
                            let data = random_bytes(lba, LBA);
                            match qp.submit(write_request(mock, lba, &data, 0)) {
                                Ok(()) => {
                                    submitted += 1;
                                }
                                Err(r) => {
                                    assert!(
                                        matches!(r.error, Error::DeviceRemoved { .. }),
                                        "{}",
                                        r.error
                                    );
                                    if qp.outstanding() == 0 {
                                        break;
                                    }
                                }
                            }
                        }
                        qp.poll(&mut out).expect("poll");
                        for c in out.drain(..) {
                            answered += 1;
                            if let Err(e) = c.result {
                                assert!(matches!(e, Error::DeviceRemoved { .. }), "{e}");
                                removed += 1;
                            }
                        }
                        assert!(start.elapsed() < Duration::from_secs(30), "hang");
                    }
                    (submitted, answered, removed, Instant::now())
                })
            })
            .collect();
        // The device serves for a while, then is asked for back while
        // commands are held in flight.
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(100) {
            mock.process().expect("process");
        }
        // Held from now on (at most 4 x 8 are in flight): wait until
        // some are.
        // Counted as the device fetches them, not as the threads submit:
        // if every thread's 8 were still unfetched at this point, all
        // of them are held and no thread submits again until the
        // removal (a loaded host made that happen).
        mock.hold_next(Match::Any, 64);
        let before = mock.stats().fetched;
        let start = Instant::now();
        while mock.stats().fetched < before + 8 {
            mock.process().expect("process");
            assert!(start.elapsed() < Duration::from_secs(30), "nothing fetched");
        }
        for _ in 0..10 {
            mock.process().expect("process");
        }
        *removed_at.lock() = Some(Instant::now());
        assert!(mock.request_removal());
        while handles.iter().any(|h| !h.is_finished()) {
            let _ = mock.process();
            std::thread::yield_now();
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect::<Vec<_>>()
    });
    let removed_at = removed_at.lock().expect("removal requested");
    let mut held = 0;
    for (submitted, answered, removed, done) in results {
        assert_eq!(submitted, answered, "every request answered");
        held += removed;
        let took = done.saturating_duration_since(removed_at);
        assert!(
            took < Duration::from_secs(1),
            "answered {took:?} after the request"
        );
    }
    assert!(held > 0, "some requests were in flight at the removal");
    assert!(mock.released());
}

//! The mock's tests: the queue pair's data path against it (`io`), bring-up,
//! timeouts, resets and removal (`recovery`), and the device's own features
//! and harnesses (`device`).

use std::time::Instant;

use nvme_spec::status::media;
use proptest::prelude::*;

use nvme_spec::Csts;

use super::*;
use crate::qpair::{IoOp, RecoveryCause, RecoveryOutcome};

const NS: u32 = 1;
const LBA: usize = 512;

fn config(io_entries: u16, max_transfer: usize, blocks: u64) -> MockConfig {
    MockConfig {
        namespaces: vec![MockNamespace {
            nsid: NS,
            lba_size: LBA as u32,
            blocks,
        }],
        max_transfer,
        options: Options {
            admin_queue_entries: 8,
            io_queue_entries: io_entries,
            prefer_huge_pages: false,
            ..Options::default()
        },
        ..MockConfig::default()
    }
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Polls, letting the mock process between polls, until `n` requests
/// have completed; fails the test if they do not.
fn complete(mock: &MockController, qp: &mut IoQPair, n: usize) -> Vec<IoCompletion> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        qp.poll(&mut out).expect("poll");
        if out.len() >= n {
            break;
        }
        mock.process().expect("mock processing");
    }
    assert_eq!(out.len(), n, "requests completed");
    out
}

fn write_request(mock: &MockController, slba: u64, data: &[u8], offset: usize) -> IoRequest {
    let buf = mock.pool().alloc(offset + data.len()).expect("buffer");
    buf.write(offset, data).expect("fill buffer");
    IoRequest::write(NS, slba, (data.len() / LBA) as u64, buf).with_offset(offset)
}

fn read_request(mock: &MockController, slba: u64, len: usize, offset: usize) -> IoRequest {
    let buf = mock.pool().alloc(offset + len).expect("buffer");
    IoRequest::read(NS, slba, (len / LBA) as u64, buf).with_offset(offset)
}

/// Writes `data` at `slba`, reads it back through another buffer
/// offset, and returns what was read.
fn round_trip(
    mock: &MockController,
    qp: &mut IoQPair,
    slba: u64,
    data: &[u8],
    offsets: (usize, usize),
) -> Vec<u8> {
    qp.submit(write_request(mock, slba, data, offsets.0).with_tag(1))
        .expect("write accepted");
    let w = complete(mock, qp, 1);
    assert_eq!(w[0].tag, 1);
    assert_eq!(w[0].op, IoOp::Write);
    w[0].result.as_ref().expect("write succeeds");
    assert!(w[0].data.is_some(), "buffer handed back");
    qp.submit(read_request(mock, slba, data.len(), offsets.1).with_tag(2))
        .expect("read accepted");
    let mut r = complete(mock, qp, 1);
    let r = r.pop().expect("one completion");
    assert_eq!((r.tag, r.op, r.slba), (2, IoOp::Read, slba));
    r.result.expect("read succeeds");
    let mut back = vec![0u8; data.len()];
    r.data
        .expect("buffer handed back")
        .read(offsets.1, &mut back)
        .expect("copy out");
    back
}

fn no_violations(mock: &MockController) {
    assert_eq!(mock.violations(), Vec::<String>::new());
}

fn timeout_config(policy: AbortPolicy) -> (MockController, IoQPair) {
    let mut cfg = config(8, 128 << 10, 1024);
    cfg.options.io_timeout = Duration::from_millis(50);
    cfg.options.admin_timeout = Duration::from_secs(2);
    // These tests pin the give-up path; the reset escalation is
    // `a_command_lost_by_the_device_is_resubmitted_after_a_reset`.
    cfg.options.reset_on_timeout = false;
    let (mock, qp) = MockController::with_qpair(cfg).expect("mock");
    mock.set_abort_policy(policy);
    (mock, qp)
}

/// Submits `n` one-block writes of distinct patterns at LBAs 0..n and
/// rings; returns the patterns.
fn submit_writes(mock: &MockController, qp: &mut IoQPair, n: u64) -> Vec<Vec<u8>> {
    let mut patterns = Vec::new();
    for tag in 0..n {
        let data = random_bytes(tag + 100, LBA);
        qp.submit(write_request(mock, tag, &data, 0).with_tag(tag))
            .expect("accepted");
        patterns.push(data);
    }
    qp.ring().expect("ring");
    patterns
}

/// Polls (the mock processing) until `n` requests completed or `limit`
/// passed; poll errors are kept, not fatal.
fn drain(
    mock: &MockController,
    qp: &mut IoQPair,
    n: usize,
    limit: Duration,
) -> (Vec<IoCompletion>, Vec<Error>) {
    let start = Instant::now();
    let (mut out, mut errors) = (Vec::new(), Vec::new());
    while out.len() < n && start.elapsed() < limit {
        if let Err(e) = qp.poll(&mut out) {
            errors.push(e);
        }
        mock.process().expect("process");
    }
    (out, errors)
}

/// Every request answered once, each successfully, and its data on the
/// mock's disk.
fn all_written(mock: &MockController, out: &[IoCompletion], patterns: &[Vec<u8>]) {
    let mut tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
    tags.sort_unstable();
    assert_eq!(tags, (0..patterns.len() as u64).collect::<Vec<_>>());
    for c in out {
        assert!(c.result.is_ok(), "tag {}: {:?}", c.tag, c.result);
    }
    for (lba, data) in patterns.iter().enumerate() {
        let disk = mock.read_disk(NS, lba as u64, 1).expect("disk");
        assert_eq!(&disk, data, "LBA {lba}");
    }
}

mod device;
mod io;
mod recovery;

//! Bad requests through the public API: each is refused at submit with a
//! one-line error, the request (and its buffer) comes back, and nothing
//! reaches the device. The table in docs/TESTING.md ("Bad input") quotes
//! these messages.

use super::*;

#[test]
fn bad_requests_are_refused_at_submit_and_nothing_is_written() {
    let (mock, mut qp) =
        MockController::with_qpair(MockConfig::new(&[(1, 512, 4096)])).expect("mock");
    let buf = || mock.pool().alloc(4096).expect("buffer");
    let cases: Vec<(IoRequest, &str)> = vec![
        (
            IoRequest::write(1, 0, 16, buf()),
            "16 blocks of 512 bytes at offset 0 do not fit 4096 bytes of data",
        ),
        (
            IoRequest::read(1, 0, 9, buf()),
            "9 blocks of 512 bytes at offset 0 do not fit 4096 bytes of data",
        ),
        (
            IoRequest::write(1, 0, 8, buf()).with_offset(1),
            "8 blocks of 512 bytes at offset 1 do not fit 4096 bytes of data",
        ),
        (
            IoRequest::write(1, 0, 1, buf()).with_offset(1),
            "data offset 1 is not a multiple of 4",
        ),
        (
            IoRequest::write(0, 0, 1, buf()),
            "namespace 0 is not active on this controller (active: 1)",
        ),
        (
            IoRequest::write(0xffff_ffff, 0, 1, buf()),
            "namespace 4294967295 is not active on this controller (active: 1)",
        ),
        (
            IoRequest::read(0xffff_ffff, 0, 1, buf()),
            "namespace 4294967295 is not active on this controller (active: 1)",
        ),
        (
            IoRequest::write(7, 0, 1, buf()),
            "namespace 7 is not active on this controller (active: 1)",
        ),
        (IoRequest::write(1, 0, 0, buf()), "a transfer of 0 blocks"),
        (
            IoRequest::flush(1).with_hints(crate::qpair::IoHints::FUA),
            "Flush cannot carry FUA, Limited Retry or DSM hints (Read and Write only)",
        ),
        (
            IoRequest::write(1, 4095, 2, buf()),
            "LBA range 4095+2 is past the end of namespace 1 (4096 blocks)",
        ),
        (
            IoRequest::write(1, u64::MAX, 1, buf()),
            "LBA range 18446744073709551615+1 is past the end of namespace 1 (4096 blocks)",
        ),
    ];
    for (req, message) in cases {
        let (nsid, slba, blocks) = (req.nsid, req.slba, req.blocks);
        let rejected = qp.submit(req).expect_err(message);
        assert_eq!(rejected.error.to_string(), message);
        assert_eq!(
            (
                rejected.request.nsid,
                rejected.request.slba,
                rejected.request.blocks
            ),
            (nsid, slba, blocks),
            "the request comes back"
        );
    }
    assert_eq!(qp.outstanding(), 0);
    mock.process().expect("mock");
    let stats = mock.stats();
    assert_eq!(
        (stats.writes, stats.reads),
        (0, 0),
        "nothing reached the device"
    );
    assert!(
        mock.read_disk(1, 0, 4096)
            .expect("disk")
            .iter()
            .all(|&b| b == 0),
        "nothing written"
    );
}

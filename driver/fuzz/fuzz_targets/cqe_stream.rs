//! Arbitrary streams of completion entries, interleaved with submissions
//! and proper completions, against one I/O queue pair of the mock
//! controller. Any broken property (a request completed twice or never,
//! a wrong outstanding count, wrong data, a protocol violation) or panic
//! is a crash. The checks are `nvme_driver::mock::run_cqe_stream`'s, shared
//! with the proptest in the driver's unit tests.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvme_driver::mock::{StreamOp, run_cqe_stream};

fuzz_target!(|data: &[u8]| {
    let ops = StreamOp::decode(data);
    if let Err(broken) = run_cqe_stream(&ops) {
        panic!("{broken}\nops: {ops:?}");
    }
});

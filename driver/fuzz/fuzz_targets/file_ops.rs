//! Arbitrary sequences of File operations (write_at, read_at, read_folios
//! and folio views, set_len, fsync, eviction, injected read and write
//! errors) on mpage's `File` over the in-memory recording device in a
//! small cache, checked op by op against a plain model: reads equal the
//! model, after an fsync that succeeds the device holds the model, a
//! failed command surfaces as an error or a short count (never as other
//! bytes) and the next fsync reports a failed write. The checks are
//! `mpage::model::run_file_ops`', shared with mpage's proptest; `cargo
//! test` also runs them on this target's corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpage::model::{FileOp, run_file_ops};

fuzz_target!(|data: &[u8]| {
    let (config, ops) = FileOp::decode(data);
    if let Err(broken) = run_file_ops(config, &ops) {
        panic!("{broken}");
    }
});

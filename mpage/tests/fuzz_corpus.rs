//! The committed seed corpus of the fuzz target `file_ops`
//! (`driver/fuzz/corpus/file_ops`), replayed through the target's body on
//! stable Rust, so `cargo test` runs it without nightly or cargo-fuzz. A
//! crash the fuzzer finds is added to the corpus (and so becomes a
//! regression test here).

use std::path::PathBuf;

use mpage::model::{FileOp, run_file_ops};

#[test]
fn the_file_ops_corpus_matches_the_model() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../driver/fuzz/corpus/file_ops");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no corpus", dir.display());
    let (mut failed_commands, mut checked) = (0, 0);
    for path in &files {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (config, ops) = FileOp::decode(&data);
        match run_file_ops(config, &ops) {
            Ok(report) => {
                failed_commands += report.failed_commands;
                checked += report.bytes_checked;
            }
            Err(broken) => panic!("{}: {broken}", path.display()),
        }
    }
    assert!(failed_commands > 0, "the corpus injects device errors");
    assert!(checked > 0, "the corpus reads something");
}

//! The committed seed corpora of the fuzz targets `cqe_stream` and
//! `device_pages` (`driver/fuzz/corpus/`), replayed through the targets'
//! bodies on stable Rust, so `cargo test` runs them without nightly or
//! cargo-fuzz. A crash the fuzzer finds is added to the corpus (and so
//! becomes a regression test here).

use std::path::PathBuf;

use nvme_driver::device_data::check_page;
use nvme_driver::mock::{StreamOp, run_cqe_stream};

/// Every file of `driver/fuzz/corpus/<target>`, with its name.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    let inputs: Vec<_> = files
        .iter()
        .map(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            (
                name.unwrap_or_default(),
                std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
            )
        })
        .collect();
    assert!(!inputs.is_empty(), "{}: no corpus", dir.display());
    inputs
}

#[test]
fn the_cqe_stream_corpus_keeps_the_queue_pair_sound() {
    let (mut aborts, mut resets) = (0, 0);
    for (name, data) in corpus("cqe_stream") {
        let ops = StreamOp::decode(&data);
        match run_cqe_stream(&ops) {
            Ok(report) => {
                aborts += report.aborts;
                resets += report.resets;
            }
            Err(broken) => panic!("{name}: {broken}\nops: {ops:?}"),
        }
    }
    assert!(aborts > 0, "the corpus reaches Abort");
    assert!(resets > 0, "the corpus reaches a controller reset");
}

#[test]
fn the_device_pages_corpus_parses_soundly() {
    let (mut controllers, mut namespaces) = (0, 0);
    for (name, data) in corpus("device_pages") {
        let report = check_page(&data).unwrap_or_else(|broken| panic!("{name}: {broken}"));
        controllers += usize::from(report.controller_accepted);
        namespaces += usize::from(report.namespace_accepted);
    }
    assert!(
        controllers > 0 && namespaces > 0,
        "the corpus has pages that are accepted"
    );
}

#[test]
fn a_stall_aborts_what_is_in_flight_and_the_queue_pair_goes_on() {
    let ops = [
        StreamOp::Submit {
            write: true,
            slba: 0,
            blocks: 3,
        },
        StreamOp::Submit {
            write: false,
            slba: 100,
            blocks: 20,
        },
        StreamOp::Stall,
        StreamOp::Submit {
            write: false,
            slba: 0,
            blocks: 3,
        },
        StreamOp::Complete(8),
    ];
    let report = run_cqe_stream(&ops).expect("properties hold");
    assert!(report.aborts >= 2, "{report:?}");
    assert_eq!(report.failed, 2, "both aborted: {report:?}");
    assert_eq!(report.completed, 3);
    assert_eq!(
        report.data_checked, 1,
        "the read after the stall: {report:?}"
    );
}

#[test]
fn a_stall_whose_aborts_are_refused_resets_and_resubmits() {
    let ops = [
        StreamOp::Submit {
            write: true,
            slba: 0,
            blocks: 3,
        },
        StreamOp::Submit {
            write: false,
            slba: 100,
            blocks: 20,
        },
        StreamOp::StallReset,
        StreamOp::Complete(8),
        StreamOp::Submit {
            write: false,
            slba: 0,
            blocks: 3,
        },
        StreamOp::Complete(8),
    ];
    let report = run_cqe_stream(&ops).expect("properties hold");
    assert!(report.resets >= 1, "{report:?}");
    assert_eq!(report.completed, 3, "{report:?}");
    assert_eq!(report.failed, 0, "resubmitted after the reset: {report:?}");
    assert_eq!(report.data_checked, 3, "{report:?}");
}

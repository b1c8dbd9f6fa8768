//! The page cache and the mpage layer over the NVMe driver, against QEMU's
//! controller: folios live in DMA memory, writeback and readahead turn them
//! into NVMe commands, fsync ends with a Flush. The host then checks the
//! raw image.
//!
//! Rule ids (R.., X.., K.., T..): docs/MPAGE.md.

use vm_tests::{image_bytes, pattern, run_ok, vm};

fn check_image(run: &vm_tests::VmRun, pages: usize, lba: usize, seed: u64) {
    let data = image_bytes(run.disk(1).expect("image"), 0, pages * 4096);
    assert_eq!(pattern::first_mismatch(seed, 0, lba, &data), None);
    let after = image_bytes(run.disk(1).expect("image"), (pages * 4096) as u64, 4096);
    assert!(
        after.iter().all(|&b| b == 0),
        "nothing written past the file"
    );
}

#[test]
fn write_fsync_and_readahead_through_the_page_cache() {
    let config = vm();
    let run = run_ok(&config, "guest-check cache --pages 1024 --seed 121");
    let out = run.stdout_text();
    assert!(
        out.contains("cache: wrote 1024 pages through the page cache; fsync ok"),
        "{out}"
    );
    assert!(
        out.contains(
            "cache: read 1024 pages back by readahead (1024 folios started), all verified"
        ),
        "{out}"
    );
    check_image(&run, 1024, 512, 121);
}

#[test]
fn page_cache_on_4k_lbas_with_small_mdts() {
    let mut config = vm();
    config.nvme_props = vec![
        ("mdts".into(), "3".into()),
        ("logical_block_size".into(), "4096".into()),
    ];
    let run = run_ok(&config, "guest-check cache --pages 512 --seed 131");
    assert!(
        run.stdout_text().contains("max transfer 32768 bytes"),
        "{}",
        run.stdout_text()
    );
    assert!(
        run.stdout_text().contains("all verified"),
        "{}",
        run.stdout_text()
    );
    check_image(&run, 512, 4096, 131);
}

/// Runs the model scenario in the guest, then replays it on the host and
/// compares the image with the model's final bytes.
fn file_model(config: &vm_tests::VmConfig, seed: u64) {
    let run = run_ok(
        config,
        &format!(
            "guest-check file-model --ops 400 --max-size 8388608 --cache 1048576 --seed {seed}"
        ),
    );
    let out = run.stdout_text();
    assert!(out.contains("file-model: 401 ops"), "{out}");
    let model = vm_tests::model::Model::after(&vm_tests::model::ops(seed, 400, 8 << 20));
    assert!(
        out.contains(&format!("final size {}", model.bytes.len())),
        "the guest's file ended at the model's size: {out}"
    );
    let image = image_bytes(run.disk(1).expect("image"), 0, model.bytes.len());
    let first_diff = image.iter().zip(&model.bytes).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "the image differs from the model");
}

#[test]
fn random_file_operations_match_a_model_on_the_device() {
    file_model(&vm(), 141);
}

#[test]
fn random_file_operations_match_a_model_on_4k_lbas_with_small_mdts() {
    let mut config = vm();
    config.nvme_props = vec![
        ("mdts".into(), "3".into()),
        ("logical_block_size".into(), "4096".into()),
    ];
    file_model(&config, 151);
}

/// T1/T12 on the device: a contiguous run of folios becomes the fewest
/// commands the transfer limit allows, counted by the controller's own
/// SMART host command counters.
#[test]
fn readahead_and_writeback_use_the_largest_legal_commands() {
    let run = run_ok(&vm(), "guest-check commands --pages 64");
    let out = run.stdout_text();
    assert!(
        out.contains("readahead of 64 pages: 1 read commands (expected 1"),
        "{out}"
    );
    assert!(
        out.contains("writeback of 64 dirty pages: 1 write commands (expected 1)"),
        "{out}"
    );

    let mut config = vm();
    config.nvme_props = vec![("mdts".into(), "3".into())];
    let run = run_ok(&config, "guest-check commands --pages 64");
    let out = run.stdout_text();
    assert!(
        out.contains("readahead of 64 pages: 8 read commands (expected 8"),
        "{out}"
    );
    assert!(
        out.contains("writeback of 64 dirty pages: 8 write commands (expected 8)"),
        "{out}"
    );
}

/// T16, X1 and T11 on the device: blkdebug makes writes at byte 1 MiB and
/// reads at byte 2 MiB fail.
#[test]
fn device_errors_through_the_page_cache() {
    let mut config = vm();
    config.blkdebug = Some(
        "[inject-error]\nevent = \"write_aio\"\nerrno = \"5\"\nsector = \"2048\"\nonce = \"off\"\n\n\
         [inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\nsector = \"4096\"\nonce = \"off\"\n"
            .into(),
    );
    let run = run_ok(&config, "guest-check cache-errors");
    let out = run.stdout_text();
    // The write error reaches fsync once per open file, also one opened
    // before it; a file opened after does not see it.
    for line in [
        "fsync A: error: I/O error ENODATA",
        "fsync A again: ok",
        "fsync B (opened before): error: I/O error ENODATA",
        "fsync B again: ok",
        "fsync C (opened after): ok",
        // The folio keeps its data and its error, and is not re-dirtied.
        "page 256: dirty false, writeback false, error Some(NoData), uptodate true",
        "read at 3 MiB: ok 4096 bytes",
    ] {
        assert!(out.contains(line), "missing `{line}` in:\n{out}");
    }
    // A failed read is not cached as failed: the next one asks the device again.
    let again = out
        .lines()
        .find(|l| l.starts_with("read page 512 again: error"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(!again.contains("(0 read commands sent)"), "{again}");
}

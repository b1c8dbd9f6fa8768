//! The scenarios of docs/MPAGE.md (the `mpage-conformance` crate) against
//! QEMU's emulated NVMe controller, through our driver: the same scenario
//! code and checks as the host tests on the recording device (commands,
//! data, folio state, fsync results), at 512 and 4096-byte LBAs, with the
//! scenarios' default 1 MiB transfer limit (mdts=8). The host then replays
//! the same sequence on the recording device and compares its disk with
//! the raw image, byte for byte.

use mpage_conformance::{RecordingRig, Rig};
use vm_tests::{image_bytes, run, vm};

fn scenarios_on_the_device(lba: u32) {
    let mut config = vm();
    config.nvme_props = vec![
        ("mdts".into(), "8".into()),
        ("logical_block_size".into(), lba.to_string()),
    ];
    let run = run(&config, "guest-check conformance");
    let out = run.stdout_text();
    let failed: Vec<&str> = out.lines().filter(|l| l.contains(": FAILED")).collect();
    assert!(
        failed.is_empty(),
        "{} scenarios failed at {lba}-byte LBAs:\n{}\n\n{}",
        failed.len(),
        failed.join("\n"),
        run.describe()
    );
    let expected: Vec<&str> = mpage_conformance::all()
        .filter(|s| s.runs_on(lba))
        .map(|s| s.name)
        .collect();
    for name in &expected {
        let line = format!("conformance: {name}: ok");
        assert!(
            out.lines().any(|l| l == line),
            "{name} did not pass at {lba}-byte LBAs:\n{}",
            run.describe()
        );
    }
    assert!(
        out.contains(&format!(
            "conformance: {} passed, 0 failed at {lba}-byte LBAs",
            expected.len()
        )),
        "{}",
        run.describe()
    );
    assert_eq!(run.code(), Some(0), "{}", run.describe());

    // What the writes left on the device: the same sequence on the
    // recording device gives the expected image.
    let mut rig = RecordingRig::new(lba, config.disk_size).expect("recording rig");
    let (_, replay_failed) = mpage_conformance::run_all(&mut rig, |s, outcome| {
        if let Err(e) = outcome {
            eprintln!("replay: {}: {e}", s.name);
        }
    });
    assert_eq!(
        replay_failed, 0,
        "the replay on the recording device failed"
    );
    let size = config.disk_size as usize;
    let want = rig.read_disk(0, size).expect("recording disk");
    let image = image_bytes(run.disk(1).expect("image"), 0, size);
    let first_diff = image.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(
        first_diff, None,
        "the image differs from the recording device's disk (byte offset)"
    );
    assert!(
        want.iter().any(|&b| b != 0),
        "the scenarios wrote something"
    );
}

#[test]
fn spec_scenarios_on_the_emulated_nvme_at_512_byte_lbas() {
    scenarios_on_the_device(512);
}

#[test]
fn spec_scenarios_on_the_emulated_nvme_at_4096_byte_lbas() {
    scenarios_on_the_device(4096);
}

//! The soak (`vm_tests::soak`): mixed multi-thread I/O on QEMU's
//! controller while it is reset every few seconds and blkdebug fails every
//! request touching a few blocks; then every block of the image is checked
//! on the host against the model the guest wrote to namespace 2. A short
//! one runs with the suite; `cargo xtask soak --minutes N` runs the long
//! one.

use std::time::Duration;

use vm_tests::{run_ok, soak, vm};

const THREADS: u64 = 4;
const REGION: u64 = 4096;
/// One bad block in three of the four threads' ranges (the last one at
/// the end of its range).
const BAD: [u64; 3] = [100, REGION + 2000, 3 * REGION - 1];

/// blkdebug rules failing every read and write touching the bad blocks.
fn blkdebug() -> String {
    BAD.iter()
        .flat_map(|b| {
            ["read_aio", "write_aio"].map(|event| {
                format!("[inject-error]\nevent = \"{event}\"\nerrno = \"5\"\nsector = \"{b}\"\nonce = \"off\"\n")
            })
        })
        .collect()
}

/// Soaks for `seconds` with a reset every `reset_ms` (none if 0) and,
/// with `errors`, blkdebug failing the bad blocks.
fn soak_for(seconds: u64, reset_ms: u64, errors: bool) {
    let bad_blocks: &[u64] = if errors { &BAD } else { &[] };
    let mut config = vm();
    config.namespaces = 2;
    config.blkdebug = errors.then(blkdebug);
    config.timeout = Duration::from_secs(seconds + 300);
    let bad: Vec<String> = bad_blocks.iter().map(u64::to_string).collect();
    let bad = if bad.is_empty() {
        String::new()
    } else {
        format!(" --bad {}", bad.join(","))
    };
    let run = run_ok(
        &config,
        &format!(
            "guest-check soak --threads {THREADS} --region {REGION} --seconds {seconds} \
             --reset-ms {reset_ms}{bad} --seed 161"
        ),
    );
    let out = run.stdout_text();
    println!("{out}");
    let summary = out
        .lines()
        .find(|l| l.starts_with("soak: ") && l.contains("no wrong byte"))
        .unwrap_or_else(|| panic!("no summary:\n{out}"));
    // Every bad block was hit, and the controller was reset while the
    // threads ran (each reset line names its duration).
    let injected: u64 = summary
        .split(", ")
        .find_map(|f| f.strip_suffix(" injected errors")?.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(injected >= bad_blocks.len() as u64, "{summary}");
    let resets = out.lines().filter(|l| l.contains(" took ")).count() as u64;
    if reset_ms > 0 {
        assert!(
            resets * reset_ms * 2 >= seconds * 1000,
            "{resets} resets:\n{out}"
        );
    }
    for t in 0..THREADS {
        assert!(out.contains(&format!("soak thread {t} (")), "{out}");
    }
    let v = soak::verify(
        run.disk(1).expect("namespace 1 image"),
        run.disk(2).expect("namespace 2 image"),
        512,
        bad_blocks,
    )
    .unwrap_or_else(|e| panic!("host check: {e}\n{out}"));
    println!("host: {v:?}");
    assert_eq!(v.blocks + v.skipped_bad, THREADS * REGION);
    assert_eq!(v.skipped_bad, bad_blocks.len() as u64);
    assert!(v.written > THREADS * REGION / 2, "{v:?}");
}

#[test]
fn a_short_soak_with_resets_and_device_errors_loses_nothing() {
    soak_for(20, 2000, true);
}

/// The long soak: `NVME_SOAK_SECONDS` (default 600) of the same;
/// `NVME_SOAK_RESET_MS` (default 2000; 0 for none) and `NVME_SOAK_ERRORS`
/// (default 1; 0 for no blkdebug) change the mix.
#[test]
#[ignore = "minutes long: `cargo xtask soak --minutes N` runs it"]
fn soak_long() {
    let var = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    soak_for(
        var("NVME_SOAK_SECONDS", 600),
        var("NVME_SOAK_RESET_MS", 2000),
        var("NVME_SOAK_ERRORS", 1) != 0,
    );
}

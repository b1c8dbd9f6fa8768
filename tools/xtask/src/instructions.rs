//! `cargo xtask instructions`: the driver's instructions per I/O, counted by
//! valgrind's callgrind (deterministic: the same binary and inputs give the
//! same count whatever else the machine does).
//!
//! The driver's `io_cost` example runs I/O against the mock controller
//! (host memory, served inside the doorbell write). Callgrind collects only
//! inside `IoQPair::submit` and `IoQPair::poll` (the full path on owned
//! buffers), `IoQPair::submit_fixed` and `IoQPair::poll_fixed` (the full
//! path on registered buffers, through two out-of-line wrappers in the
//! example, since link-time optimisation inlines them into its loop) or
//! `IoQPair::floor` (the floor loop), and not inside the mock's emulated
//! BAR (its register reads and writes, where it serves doorbells), so the
//! count is the driver's own work from submission to the completion handed
//! back, divided by the I/Os.

use std::path::{Path, PathBuf};
use std::process::Command;

use qemu_harness::host::{Package, ensure_packages};
use qemu_harness::workspace_root;

use crate::Result;

/// valgrind, for callgrind.
const VALGRIND: Package = Package {
    name: "valgrind",
    provides: "/usr/bin/valgrind",
};

/// Functions whose entry and exit toggle collection: the driver's entry
/// points, and the mock's emulated register accesses inside them (toggled
/// off again: serving a doorbell is the device's work).
const TOGGLES: [&str; 8] = [
    "*IoQPair>::submit",
    "*IoQPair>::poll",
    "io_cost::submit_fixed",
    "io_cost::poll_fixed",
    "*IoQPair>::floor",
    "*MockDevice as nvme_driver::device::EmulatedBar>::write32",
    "*MockDevice as nvme_driver::device::EmulatedBar>::write64",
    "*MockDevice as nvme_driver::device::EmulatedBar>::read32",
];

/// One measured case.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Case {
    pub name: &'static str,
    pub write: bool,
    pub depth: usize,
    pub bytes: usize,
    pub ios: u64,
}

/// The cases of the table in docs/PERFORMANCE.md.
pub(crate) const CASES: [Case; 5] = [
    Case {
        name: "4K read QD1",
        write: false,
        depth: 1,
        bytes: 4096,
        ios: 20_000,
    },
    Case {
        name: "4K read QD32",
        write: false,
        depth: 32,
        bytes: 4096,
        ios: 20_000,
    },
    Case {
        name: "4K read QD128",
        write: false,
        depth: 128,
        bytes: 4096,
        ios: 20_000,
    },
    Case {
        name: "4K write QD32",
        write: true,
        depth: 32,
        bytes: 4096,
        ios: 20_000,
    },
    Case {
        name: "128K read QD8",
        write: false,
        depth: 8,
        bytes: 128 << 10,
        ios: 5_000,
    },
];

/// Instructions per I/O of one case on each path.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Count {
    pub case: Case,
    /// The full path on registered buffers (nvme-bench's default).
    pub registered: f64,
    /// The full path on owned buffers.
    pub owned: f64,
    pub floor: f64,
}

/// Builds the example in a target folder of its own (so that this also
/// runs from inside `cargo test`), returns the binary.
fn build_example() -> Result<PathBuf> {
    let root = workspace_root();
    let target = root.join("target").join("instructions");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "nvme-driver",
            "--example",
            "io_cost",
            "--features",
            "test-utils",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .status()?;
    if !status.success() {
        return Err(format!("building the io_cost example failed ({status})").into());
    }
    Ok(target.join("release").join("examples").join("io_cost"))
}

/// Runs one path of one case under callgrind; returns instructions per I/O.
fn count(bin: &Path, path: &str, case: &Case, ios: u64) -> Result<f64> {
    let out = std::env::temp_dir().join(format!("xtask-callgrind-{}.out", std::process::id()));
    let mut cmd = Command::new("valgrind");
    cmd.args(["--tool=callgrind", "--collect-atstart=no"])
        .arg(format!("--callgrind-out-file={}", out.display()));
    for t in TOGGLES {
        cmd.arg(format!("--toggle-collect={t}"));
    }
    let run = cmd
        .arg(bin)
        .args([
            path,
            &ios.to_string(),
            &case.depth.to_string(),
            &case.bytes.to_string(),
            if case.write { "write" } else { "read" },
        ])
        .output()?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    if !run.status.success() {
        return Err(format!(
            "io_cost {path} ({}) failed: {}{}",
            case.name,
            stdout,
            String::from_utf8_lossy(&run.stderr)
        )
        .into());
    }
    let done: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ios "))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("io_cost printed no I/O count: {stdout}"))?;
    let profile = std::fs::read_to_string(&out)?;
    let _ = std::fs::remove_file(&out);
    let total = totals(&profile).ok_or("callgrind wrote no totals")?;
    if done < ios || total == 0 {
        return Err(format!(
            "io_cost {path} ({}): {done} I/Os of {ios}, {total} instructions",
            case.name
        )
        .into());
    }
    Ok(total as f64 / done as f64)
}

/// The `totals:` (or `summary:`) line of a callgrind output file.
pub(crate) fn totals(profile: &str) -> Option<u64> {
    profile.lines().find_map(|l| {
        l.strip_prefix("totals:")
            .or_else(|| l.strip_prefix("summary:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    })
}

/// Counts every case on both paths; `scale` divides the I/O counts (tests).
pub(crate) fn measure(scale: u64) -> Result<Vec<Count>> {
    ensure_packages(&[VALGRIND])?;
    let bin = build_example()?;
    CASES
        .iter()
        .map(|case| {
            let ios = (case.ios / scale.max(1)).max(100);
            Ok(Count {
                case: *case,
                registered: count(&bin, "fixed", case, ios)?,
                owned: count(&bin, "full", case, ios)?,
                floor: count(&bin, "floor", case, ios)?,
            })
        })
        .collect()
}

/// `cargo xtask instructions`: prints the table (and JSON with `--json`).
pub(crate) fn run(json: bool) -> Result<std::process::ExitCode> {
    let counts = measure(1)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&counts)?);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    println!(
        "{:<16}{:>12}{:>8}{:>12}{:>8}{:>12}",
        "case", "registered", "ratio", "owned", "ratio", "floor loop"
    );
    for c in &counts {
        println!(
            "{:<16}{:>12.0}{:>7.2}x{:>12.0}{:>7.2}x{:>12.0}",
            c.case.name,
            c.registered,
            c.registered / c.floor,
            c.owned,
            c.owned / c.floor,
            c.floor,
        );
    }
    println!("(ratio: to the floor loop)");
    println!("instructions per I/O, submit to completion, on the mock (callgrind)");
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callgrind_totals_are_read() {
        assert_eq!(totals("events: Ir\nsummary: 1234\n"), Some(1234));
        assert_eq!(totals("events: Ir\ntotals: 99 \n"), Some(99));
        assert_eq!(totals("events: Ir\n"), None);
    }

    /// The counting harness runs end to end: the example builds, runs
    /// under callgrind on every path, and every case gets a count. No
    /// threshold: the figures go to docs/PERFORMANCE.md, not into a test.
    #[test]
    fn counting_harness_runs() {
        let counts = measure(20).expect("the counting harness runs");
        assert_eq!(counts.len(), CASES.len());
        for c in &counts {
            assert!(
                c.registered > 0.0 && c.owned > 0.0 && c.floor > 0.0,
                "{c:?}"
            );
        }
    }
}

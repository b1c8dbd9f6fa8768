//! `cargo xtask fuzz`: runs the cargo-fuzz targets of `driver/fuzz` for a
//! time budget each, seeded with their committed corpus
//! (`driver/fuzz/corpus/<target>`, which stays untouched unless `--merge`
//! is given). Installs cargo-fuzz from crates.io if it is missing, and
//! uses the nightly toolchain if there is one, else the pinned stable one
//! with `RUSTC_BOOTSTRAP=1` (cargo-fuzz's sanitizer flags are unstable).
//! A crash fails the command; libFuzzer's reproducer is in
//! `driver/fuzz/artifacts/<target>/`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use clap::Args;
use qemu_harness::workspace_root;

use crate::Result;

/// The targets, with the longest input each is given (bytes).
const TARGETS: [(&str, usize); 3] = [
    // One 4 KiB page and five bytes of knobs.
    ("device_pages", 4101),
    // A few hundred queue operations.
    ("cqe_stream", 1024),
    // A few hundred file operations (each costs real copies and I/O).
    ("file_ops", 512),
];

/// cargo-fuzz version installed when missing.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

#[derive(Args, Debug)]
pub(crate) struct FuzzArgs {
    /// Seconds of fuzzing per target.
    #[arg(long, default_value_t = 60)]
    budget: u64,
    /// Targets to run (comma separated; default: all).
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// Afterwards, merge what the run found into the committed corpus
    /// (libFuzzer's -merge=1: only inputs that add coverage are kept).
    #[arg(long)]
    merge: bool,
}

pub(crate) fn run(args: FuzzArgs) -> Result<std::process::ExitCode> {
    let root = workspace_root();
    let fuzz_dir = root.join("driver/fuzz");
    let targets: Vec<(&str, usize)> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets
            .iter()
            .map(|t| {
                TARGETS
                    .iter()
                    .find(|(name, _)| name == t)
                    .copied()
                    .ok_or_else(|| format!("no fuzz target {t:?} (have: {})", names()))
            })
            .collect::<std::result::Result<_, _>>()?
    };
    let toolchain = Toolchain::pick()?;
    ensure_cargo_fuzz()?;
    let target_dir = root.join("target/fuzz");
    let start = Instant::now();
    let built = cargo_fuzz(&toolchain, &fuzz_dir)
        .args(["build", "--target-dir"])
        .arg(&target_dir)
        .status()?;
    if !built.success() {
        return Err("building the fuzz targets failed".into());
    }
    eprintln!(
        "xtask fuzz: built with {} in {:.0?}",
        toolchain.describe(),
        start.elapsed()
    );
    for (name, max_len) in targets {
        let committed = fuzz_dir.join("corpus").join(name);
        // New inputs go to a scratch corpus; the committed one seeds it.
        let scratch = target_dir.join("corpus").join(name);
        std::fs::create_dir_all(&scratch)?;
        let t = Instant::now();
        let status = cargo_fuzz(&toolchain, &fuzz_dir)
            .args(["run", "--target-dir"])
            .arg(&target_dir)
            .arg(name)
            .arg(&scratch)
            .arg(&committed)
            .arg("--")
            .arg(format!("-max_total_time={}", args.budget))
            .arg(format!("-max_len={max_len}"))
            // One input never takes this long (a stall of the CQE
            // harness waits two 20 ms timeouts, a given-up command 2 s).
            .arg("-timeout=60")
            .arg("-print_final_stats=1")
            .status()?;
        if !status.success() {
            return Err(format!(
                "fuzz target {name} failed ({status}); the reproducer is in {}",
                fuzz_dir.join("artifacts").join(name).display()
            )
            .into());
        }
        eprintln!("xtask fuzz: {name}: no crash in {:.0?}", t.elapsed());
        if args.merge {
            merge(
                &toolchain,
                &fuzz_dir,
                &target_dir,
                name,
                &committed,
                &scratch,
            )?;
        }
    }
    eprintln!("xtask fuzz: done in {:.0?}", start.elapsed());
    Ok(std::process::ExitCode::SUCCESS)
}

fn names() -> String {
    TARGETS.map(|(n, _)| n).join(", ")
}

/// Merges `scratch` into `committed`, keeping inputs that add coverage.
fn merge(
    toolchain: &Toolchain,
    fuzz_dir: &Path,
    target_dir: &Path,
    name: &str,
    committed: &Path,
    scratch: &Path,
) -> Result<()> {
    let before = std::fs::read_dir(committed)?.count();
    let status = cargo_fuzz(toolchain, fuzz_dir)
        .args(["run", "--target-dir"])
        .arg(target_dir)
        .arg(name)
        .arg(committed)
        .arg(scratch)
        .args(["--", "-merge=1"])
        .status()?;
    if !status.success() {
        return Err(format!("merging the corpus of {name} failed ({status})").into());
    }
    let after = std::fs::read_dir(committed)?.count();
    eprintln!(
        "xtask fuzz: {name}: corpus {before} -> {after} files in {}",
        committed.display()
    );
    Ok(())
}

/// The toolchain cargo-fuzz builds with.
enum Toolchain {
    Nightly,
    /// The pinned stable toolchain, with unstable flags allowed.
    Bootstrap,
}

impl Toolchain {
    fn pick() -> Result<Toolchain> {
        let out = Command::new("rustup")
            .args(["toolchain", "list"])
            .output()?;
        let list = String::from_utf8_lossy(&out.stdout);
        Ok(if list.lines().any(|l| l.starts_with("nightly")) {
            Toolchain::Nightly
        } else {
            Toolchain::Bootstrap
        })
    }

    fn describe(&self) -> &'static str {
        match self {
            Toolchain::Nightly => "the nightly toolchain",
            Toolchain::Bootstrap => "the pinned toolchain (RUSTC_BOOTSTRAP=1)",
        }
    }
}

fn cargo_fuzz(toolchain: &Toolchain, fuzz_dir: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    match toolchain {
        Toolchain::Nightly => {
            cmd.arg("+nightly");
        }
        Toolchain::Bootstrap => {
            cmd.env("RUSTC_BOOTSTRAP", "1");
        }
    }
    // The outer cargo (running xtask) sets these for its own toolchain.
    for var in ["RUSTUP_TOOLCHAIN", "RUSTC", "RUSTDOC", "CARGO"] {
        cmd.env_remove(var);
    }
    cmd.arg("fuzz").current_dir(fuzz_dir);
    cmd
}

/// Installs cargo-fuzz with `cargo install` unless `cargo fuzz` runs.
fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    let status = Command::new("cargo")
        .args(["install", "--locked", "cargo-fuzz", "--version"])
        .arg(CARGO_FUZZ_VERSION)
        .status()?;
    if !status.success() {
        return Err("cargo install cargo-fuzz failed".into());
    }
    Ok(())
}

//! `cargo xtask fuzz`: runs the cargo-fuzz targets of `driver/fuzz` for a
//! time budget each, seeded with their committed corpus
//! (`driver/fuzz/corpus/<target>`, which stays untouched unless
//! `--minimize` is given). Installs cargo-fuzz from crates.io if it is missing, and
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
    /// Afterwards, replace the committed corpus with at most N inputs of
    /// it and of what the run found: the fewest that cover the most
    /// coverage edges (a greedy set cover over libFuzzer's merge control
    /// file).
    #[arg(long, value_name = "N")]
    minimize: Option<usize>,
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
        if let Some(limit) = args.minimize {
            minimize(&toolchain, &fuzz_dir, &target_dir, name, limit)?;
        }
    }
    eprintln!("xtask fuzz: done in {:.0?}", start.elapsed());
    Ok(std::process::ExitCode::SUCCESS)
}

fn names() -> String {
    TARGETS.map(|(n, _)| n).join(", ")
}

/// Replaces the committed corpus of `name` with at most `limit` inputs of
/// it and of the scratch corpus, chosen greedily for the coverage edges
/// they add (libFuzzer's merge lists every input's edges in its control
/// file; `cargo fuzz cmin` keeps every input that adds any feature, which
/// is hundreds).
fn minimize(
    toolchain: &Toolchain,
    fuzz_dir: &Path,
    target_dir: &Path,
    name: &str,
    limit: usize,
) -> Result<()> {
    let committed = fuzz_dir.join("corpus").join(name);
    let scratch = target_dir.join("corpus").join(name);
    let work = target_dir.join("minimize").join(name);
    let _ = std::fs::remove_dir_all(&work);
    let empty = work.join("empty");
    std::fs::create_dir_all(&empty)?;
    let control = work.join("control");
    let status = cargo_fuzz(toolchain, fuzz_dir)
        .args(["run", "--target-dir"])
        .arg(target_dir)
        .arg(name)
        .arg(&empty)
        .arg(&committed)
        .arg(&scratch)
        .arg("--")
        .arg("-merge=1")
        .arg(format!("-merge_control_file={}", control.display()))
        .status()?;
    if !status.success() {
        return Err(format!("merging the corpus of {name} failed ({status})").into());
    }
    // Control file: the input count, a line, the input paths, then per
    // input "COV <index> <edge>..." among other lines.
    let text = std::fs::read_to_string(&control)?;
    let mut lines = text.lines();
    let count: usize = lines
        .next()
        .and_then(|l| l.parse().ok())
        .ok_or("control file")?;
    lines.next();
    let paths: Vec<&str> = lines.by_ref().take(count).collect();
    let mut edges: Vec<(usize, std::collections::BTreeSet<u64>)> = Vec::new();
    for line in lines {
        let mut words = line.split_whitespace();
        if words.next() != Some("COV") {
            continue;
        }
        let Some(index) = words.next().and_then(|w| w.parse().ok()) else {
            continue;
        };
        edges.push((index, words.filter_map(|w| w.parse().ok()).collect()));
    }
    let total: std::collections::BTreeSet<u64> =
        edges.iter().flat_map(|(_, e)| e).copied().collect();
    let mut covered = std::collections::BTreeSet::new();
    let mut chosen = Vec::new();
    while chosen.len() < limit {
        let best = edges
            .iter()
            .map(|(i, e)| (e.difference(&covered).count(), *i))
            .max();
        match best {
            Some((gain, index)) if gain > 0 => {
                if let Some((_, e)) = edges.iter().find(|(i, _)| *i == index) {
                    covered.extend(e.iter().copied());
                }
                chosen.push(index);
            }
            _ => break,
        }
    }
    let picked = work.join("picked");
    std::fs::create_dir_all(&picked)?;
    for &index in &chosen {
        let from = Path::new(paths.get(index).ok_or("control file index")?);
        let file = from.file_name().ok_or("corpus file name")?;
        std::fs::copy(from, picked.join(file))?;
    }
    std::fs::remove_dir_all(&committed)?;
    std::fs::create_dir_all(&committed)?;
    for entry in std::fs::read_dir(&picked)? {
        let entry = entry?;
        std::fs::copy(entry.path(), committed.join(entry.file_name()))?;
    }
    eprintln!(
        "xtask fuzz: {name}: corpus of {} inputs covering {} of {} edges in {}",
        chosen.len(),
        covered.len(),
        total.len(),
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

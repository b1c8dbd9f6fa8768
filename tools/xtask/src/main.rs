//! Project automation, run as `cargo xtask <command>`
//! (see <https://github.com/matklad/cargo-xtask/>).
//!
//! - `vm [OPTIONS] -- CMD [ARGS...]`: boot a guest with an emulated NVMe
//!   controller bound to vfio-pci, run CMD in it, exit with CMD's status.
//! - `test`: unit tests and VM tests.
//! - `bench`: the main job against the default emulated device.
//! - `lint`: rustfmt and clippy, as CI runs them.
//! - `instructions`: the driver's instructions per I/O (callgrind, mock).
//! - `fuzz [--budget S]`: the cargo-fuzz targets, S seconds each
//!   (installs cargo-fuzz if missing).
//!
//! Each installs what it is missing (Debian packages, QEMU, the guest
//! kernel); every command first installs the workspace's native build
//! dependencies (libclang, for libublk's bindgen). `--kernel 6.1|6.12` and `--qemu 7.2|10.0` (any command) choose
//! the guest kernel and QEMU.

#![forbid(unsafe_code)]

mod bench;
mod chart;
mod fuzz;
mod instructions;
mod vm_args;

use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};
use qemu_harness::{GuestExit, OutputMode, guest_build, workspace_root};

#[derive(Parser, Debug)]
#[command(name = "cargo xtask", about = "Project automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    #[command(flatten)]
    versions: vm_args::Versions,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Boot a guest with an emulated NVMe device bound to vfio-pci and run CMD in it.
    Vm(Box<vm_args::VmArgs>),
    /// Run the unit tests and the VM tests.
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
        #[arg(last = true)]
        rest: Vec<String>,
    },
    /// The main job: the benchmark suite on the default emulated device,
    /// our driver and the kernel's (fio) side by side in one VM boot.
    Bench(Box<bench::BenchArgs>),
    /// rustfmt --check, clippy -D warnings and rustdoc -D warnings over the
    /// workspace.
    Lint,
    /// The driver's instructions per I/O (full path and floor loop), counted
    /// by valgrind's callgrind against the mock controller.
    Instructions {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The long soak (not in CI): mixed multi-thread I/O in a guest with
    /// controller resets every 2 s and blkdebug errors on chosen blocks,
    /// every block checked on the host at the end (tests/tests/soak.rs).
    Soak {
        /// How long the guest runs I/O.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Milliseconds between controller resets (0: none).
        #[arg(long, default_value_t = 2000)]
        reset_ms: u64,
        /// No blkdebug errors.
        #[arg(long)]
        no_errors: bool,
    },
    /// The fuzz targets of driver/fuzz, a time budget each, seeded with
    /// their committed corpus (installs cargo-fuzz if missing).
    Fuzz(fuzz::FuzzArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .init();
    let cli = Cli::parse();
    qemu_harness::versions::set_defaults(cli.versions.kernel, cli.versions.qemu);
    // Every command compiles the workspace (lint, test, bench, fuzz, the
    // guest binaries): its native build dependencies come first.
    if let Err(e) = qemu_harness::host::ensure_packages(qemu_harness::host::BUILD_PACKAGES) {
        eprintln!("xtask: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Cmd::Vm(args) => vm(*args),
        Cmd::Test { rest } => test(&rest),
        Cmd::Bench(args) => bench::run(*args),
        Cmd::Lint => lint(),
        Cmd::Instructions { json } => instructions::run(json),
        Cmd::Soak {
            minutes,
            reset_ms,
            no_errors,
        } => soak(minutes, reset_ms, !no_errors),
        Cmd::Fuzz(args) => fuzz::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn vm(args: vm_args::VmArgs) -> Result<ExitCode> {
    let qemu_log = args.qemu_log.clone();
    let (mut config, cmd, write_log) = args.into_config()?;
    config.output = OutputMode::Inherit;
    let console = config.console_log.clone();
    let run = config.run(&cmd)?;
    if let Some(to) = &qemu_log {
        std::fs::write(to, run.qemu_output())
            .map_err(|e| format!("writing QEMU's output to {}: {e}", to.display()))?;
        eprintln!("xtask vm: QEMU's output: {}", to.display());
    }
    if let (Some(to), Some(log)) = (&write_log, run.write_log(1)) {
        std::fs::copy(log, to)
            .map_err(|e| format!("copying the write log to {}: {e}", to.display()))?;
        eprintln!("xtask vm: write log of namespace 1: {}", to.display());
    }
    let code = match &run.exit {
        GuestExit::Exited(code) => return Ok(ExitCode::from((*code).clamp(0, 255) as u8)),
        GuestExit::TimedOut(limit) => {
            eprintln!("xtask vm: the guest was still running after {limit:?}; QEMU was killed");
            124
        }
        GuestExit::SetupFailed(why) => {
            eprintln!("xtask vm: guest setup failed: {why}");
            125
        }
        GuestExit::NoStatus(why) => {
            eprintln!("xtask vm: {why}");
            125
        }
    };
    eprintln!(
        "xtask vm: guest console log: {}",
        console.unwrap_or(run.console_log.clone()).display()
    );
    Ok(ExitCode::from(code))
}

/// Installs the VM prerequisites and builds the guest binaries once, so the
/// VM tests find them through `NVME_GUEST_BIN_DIR`.
fn prepare_guest() -> Result<std::path::PathBuf> {
    qemu_harness::host::ensure_packages(qemu_harness::host::VM_PACKAGES)?;
    qemu_harness::VmConfig::default().prepare_peers()?;
    Ok(guest_build::build()?)
}

fn soak(minutes: f64, reset_ms: u64, errors: bool) -> Result<ExitCode> {
    if !(minutes > 0.0 && minutes <= 24.0 * 60.0) {
        return Err(format!("--minutes {minutes}: expected more than 0, at most a day").into());
    }
    let seconds = (minutes * 60.0).round().max(1.0) as u64;
    let bins = prepare_guest()?;
    let status = Command::new(cargo())
        .current_dir(workspace_root())
        .args(["test", "-p", "vm-tests", "--test", "soak", "--"])
        .args(["--ignored", "--exact", "soak_long", "--nocapture"])
        .env(guest_build::BIN_DIR_ENV, &bins)
        .env("NVME_SOAK_SECONDS", seconds.to_string())
        .env("NVME_SOAK_RESET_MS", reset_ms.to_string())
        .env("NVME_SOAK_ERRORS", if errors { "1" } else { "0" })
        .env(
            qemu_harness::versions::KERNEL_ENV,
            qemu_harness::versions::default_kernel()?.kernel_name(),
        )
        .env(
            qemu_harness::versions::QEMU_ENV,
            qemu_harness::versions::default_qemu()?.qemu_name(),
        )
        .status()?;
    Ok(exit_code(status))
}

fn test(rest: &[String]) -> Result<ExitCode> {
    let bins = prepare_guest()?;
    // The test processes get the choice through the environment.
    let kernel = qemu_harness::versions::default_kernel()?;
    let qemu = qemu_harness::versions::default_qemu()?;
    eprintln!(
        "xtask test: guest kernel {} ({kernel}), QEMU {} ({qemu})",
        kernel.kernel_name(),
        qemu.qemu_name()
    );
    let status = Command::new(cargo())
        .current_dir(workspace_root())
        .args(["test", "--workspace", "--all-targets", "--no-fail-fast"])
        .arg("--")
        .args(rest)
        .env(guest_build::BIN_DIR_ENV, &bins)
        .env(qemu_harness::versions::KERNEL_ENV, kernel.kernel_name())
        .env(qemu_harness::versions::QEMU_ENV, qemu.qemu_name())
        .status()?;
    // `--all-targets` leaves the doctests out (the README's examples among
    // them, see vm_tests::ReadmeDoctests): they run on their own.
    let doc = Command::new(cargo())
        .current_dir(workspace_root())
        .args(["test", "--workspace", "--doc", "--no-fail-fast"])
        .arg("--")
        .args(rest)
        .status()?;
    Ok(if status.success() {
        exit_code(doc)
    } else {
        exit_code(status)
    })
}

fn lint() -> Result<ExitCode> {
    let root = workspace_root();
    let fmt = Command::new(cargo())
        .current_dir(&root)
        .args(["fmt", "--all", "--check"])
        .status()?;
    if !fmt.success() {
        return Ok(exit_code(fmt));
    }
    let clippy = Command::new(cargo())
        .current_dir(&root)
        .args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        .status()?;
    if !clippy.success() {
        return Ok(exit_code(clippy));
    }
    // The binaries the guest build compiles with a feature of their own
    // (the driver's fault injection): skipped above, where it is off.
    for (package, bin, feature) in guest_build::GUEST_FEATURE_BINARIES {
        let clippy = Command::new(cargo())
            .current_dir(&root)
            .args(["clippy", "--package", package, "--bin", bin, "--features"])
            .arg(format!("{package}/{feature}"))
            .args(["--", "-D", "warnings"])
            .status()?;
        if !clippy.success() {
            return Ok(exit_code(clippy));
        }
    }
    // The API docs build without broken or ambiguous links.
    let doc = Command::new(cargo())
        .current_dir(&root)
        .args(["doc", "--workspace", "--no-deps", "--quiet"])
        .env("RUSTDOCFLAGS", "-D warnings")
        .status()?;
    if !doc.success() {
        return Ok(exit_code(doc));
    }
    Ok(ExitCode::SUCCESS)
}

fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(c.clamp(1, 255) as u8),
        None => ExitCode::FAILURE,
    }
}

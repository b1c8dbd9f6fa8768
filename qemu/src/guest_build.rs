//! The project's binaries, built as static executables for the guest.
//!
//! glibc with `+crt-static` gives static-pie binaries that need nothing else
//! in the initramfs. `--target` keeps the flags away from proc-macros, and a
//! target folder of their own keeps the host build untouched.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::workspace_root;

/// The guest's target triple.
pub const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The binaries put on the guest's PATH, by package and binary name.
pub const GUEST_BINARIES: &[(&str, &str)] = &[
    ("nvmectl", "nvmectl"),
    ("nvme-bench", "nvme-bench"),
    ("nvme-vhost", "nvme-vhost"),
    ("nvme-ublk", "nvme-ublk"),
    ("vm-tests", "guest-check"),
    ("vm-tests", "blkio-check"),
    ("vm-tests", "vhost-front"),
];

/// Binaries built in a build of their own with a feature of their package
/// turned on, by package, binary and feature: the driver's fault-injection
/// hook must not reach the other binaries (features are unified across a
/// build), so it is compiled into `guest-fault` alone.
pub const GUEST_FEATURE_BINARIES: &[(&str, &str, &str)] =
    &[("vm-tests", "guest-fault", "fault-injection")];

/// Every binary put on the guest's PATH.
pub fn guest_binary_names() -> impl Iterator<Item = &'static str> {
    GUEST_BINARIES
        .iter()
        .map(|(_, name)| *name)
        .chain(GUEST_FEATURE_BINARIES.iter().map(|(_, name, _)| *name))
}

/// Environment variable naming a folder of prebuilt guest binaries; when it
/// is set nothing is built.
pub const BIN_DIR_ENV: &str = "NVME_GUEST_BIN_DIR";

static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Returns the folder holding the guest binaries, building them first
/// (once per process) unless [`BIN_DIR_ENV`] names one.
pub fn guest_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(dir) = built.as_ref() {
        return Ok(dir.clone());
    }
    let dir = build()?;
    *built = Some(dir.clone());
    Ok(dir)
}

/// Builds the guest binaries (release, static) and returns their folder.
pub fn build() -> Result<PathBuf> {
    crate::host::ensure_packages(crate::host::BUILD_PACKAGES)?;
    let root = workspace_root();
    let target_dir = root.join("target").join("guest");
    let mut args: Vec<&str> = Vec::new();
    for (package, _) in GUEST_BINARIES {
        args.extend(["--package", package]);
    }
    log::info!("building guest binaries (static, release)");
    cargo_build(&target_dir, &args)?;
    for (package, bin, feature) in GUEST_FEATURE_BINARIES {
        // The same target folder: artifacts built with other features get
        // other file names, so neither build undoes the other.
        let feature = format!("{package}/{feature}");
        log::info!("building guest binary {bin} with {feature}");
        cargo_build(
            &target_dir,
            &["--package", package, "--bin", bin, "--features", &feature],
        )?;
    }
    Ok(target_dir.join(GUEST_TARGET).join("release"))
}

/// `cargo build --release` for the guest target with `args`.
fn cargo_build(target_dir: &std::path::Path, args: &[&str]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "--release", "--target", GUEST_TARGET])
        .args(args)
        .env("CARGO_TARGET_DIR", target_dir)
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static --cfg getrandom_backend=\"linux_getrandom\"",
        );
    let status = cmd.status().map_err(|source| Error::Spawn {
        cmd: "cargo build (guest)".into(),
        source,
    })?;
    if !status.success() {
        return Err(Error::Command {
            cmd: format!(
                "cargo build --release --target {GUEST_TARGET} {} (guest binaries)",
                args.join(" ")
            ),
            status,
            stderr: String::new(),
        });
    }
    Ok(())
}

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
    ("vm-tests", "guest-check"),
];

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
    let root = workspace_root();
    let target_dir = root.join("target").join("guest");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--release", "--target", GUEST_TARGET])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static --cfg getrandom_backend=\"linux_getrandom\"",
        );
    for (package, _) in GUEST_BINARIES {
        cmd.args(["--package", package]);
    }
    log::info!("building guest binaries (static, release)");
    let status = cmd.status().map_err(|source| Error::Spawn {
        cmd: "cargo build (guest)".into(),
        source,
    })?;
    if !status.success() {
        return Err(Error::Command {
            cmd: "cargo build --release --target x86_64-unknown-linux-gnu (guest binaries)".into(),
            status,
            stderr: String::new(),
        });
    }
    Ok(target_dir.join(GUEST_TARGET).join("release"))
}

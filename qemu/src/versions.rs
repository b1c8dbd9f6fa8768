//! Which QEMU and which guest kernel a run uses ("the peers").
//!
//! Both come from Debian, from one of two suites: the host's release
//! (bookworm: QEMU 7.2, Linux 6.1) or its backports (QEMU 10.0, Linux
//! 6.12). A run takes, in this order: the [`VmConfig`](crate::VmConfig)'s
//! own choice, the process-wide default set with [`set_defaults`] (the
//! xtask's `--kernel`/`--qemu`), the environment (`NVME_VM_KERNEL`,
//! `NVME_VM_QEMU`), and last [`DEFAULT_KERNEL`] / [`DEFAULT_QEMU`].

use std::fmt;
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Environment variable choosing the guest kernel (`6.1`, `6.12`, ...).
pub const KERNEL_ENV: &str = "NVME_VM_KERNEL";
/// Environment variable choosing QEMU (`7.2`, `10.0`, ...).
pub const QEMU_ENV: &str = "NVME_VM_QEMU";

/// The Debian suite a peer comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suite {
    /// The host's own release (bookworm: QEMU 7.2, Linux 6.1).
    Release,
    /// The release's backports (bookworm-backports: QEMU 10.0, Linux 6.12).
    Backports,
}

/// The guest kernel when nothing else is chosen: bookworm's, until the
/// backports' pair passes the suite without a failure of its own (QEMU
/// 10.0.2 aborted once in three full runs, see docs/TESTING.md).
pub const DEFAULT_KERNEL: Suite = Suite::Release;
/// QEMU when nothing else is chosen (see [`DEFAULT_KERNEL`]).
pub const DEFAULT_QEMU: Suite = Suite::Release;

impl Suite {
    /// Parses a `--kernel` value: `6.1`, `debian`, `bookworm` or `6.12`, `backports`.
    pub fn parse_kernel(s: &str) -> std::result::Result<Suite, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "6.1" | "debian" | "bookworm" | "release" => Ok(Suite::Release),
            "6.12" | "backports" | "bookworm-backports" => Ok(Suite::Backports),
            other => Err(format!(
                "unknown guest kernel `{other}`: use 6.1 (or debian) or 6.12 (or backports)"
            )),
        }
    }

    /// Parses a `--qemu` value: `7.2`, `system`, `bookworm` or `10.0`, `backports`.
    pub fn parse_qemu(s: &str) -> std::result::Result<Suite, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "7.2" | "system" | "debian" | "bookworm" | "release" => Ok(Suite::Release),
            "10.0" | "10" | "backports" | "bookworm-backports" => Ok(Suite::Backports),
            other => Err(format!(
                "unknown QEMU `{other}`: use 7.2 (or system) or 10.0 (or backports)"
            )),
        }
    }

    /// The kernel's version as users name it (`6.1`, `6.12`).
    pub fn kernel_name(self) -> &'static str {
        match self {
            Suite::Release => "6.1",
            Suite::Backports => "6.12",
        }
    }

    /// QEMU's version as users name it (`7.2`, `10.0`).
    pub fn qemu_name(self) -> &'static str {
        match self {
            Suite::Release => "7.2",
            Suite::Backports => "10.0",
        }
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Suite::Release => "release",
            Suite::Backports => "backports",
        })
    }
}

/// Process-wide choices: (kernel, qemu).
static DEFAULTS: Mutex<(Option<Suite>, Option<Suite>)> = Mutex::new((None, None));

/// Sets the process-wide kernel and QEMU choice (None leaves one as is).
pub fn set_defaults(kernel: Option<Suite>, qemu: Option<Suite>) {
    let mut d = DEFAULTS.lock().unwrap_or_else(|e| e.into_inner());
    if kernel.is_some() {
        d.0 = kernel;
    }
    if qemu.is_some() {
        d.1 = qemu;
    }
}

/// The guest kernel a run uses when its configuration does not choose.
pub fn default_kernel() -> Result<Suite> {
    let set = DEFAULTS.lock().unwrap_or_else(|e| e.into_inner()).0;
    resolve(set, KERNEL_ENV, Suite::parse_kernel, DEFAULT_KERNEL)
}

/// The QEMU a run uses when its configuration does not choose.
pub fn default_qemu() -> Result<Suite> {
    let set = DEFAULTS.lock().unwrap_or_else(|e| e.into_inner()).1;
    resolve(set, QEMU_ENV, Suite::parse_qemu, DEFAULT_QEMU)
}

fn resolve(
    set: Option<Suite>,
    var: &str,
    parse: fn(&str) -> std::result::Result<Suite, String>,
    default: Suite,
) -> Result<Suite> {
    if let Some(s) = set {
        return Ok(s);
    }
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => {
            parse(&v).map_err(|e| Error::Config(format!("{var}: {e}")))
        }
        _ => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_choices() {
        assert_eq!(Suite::parse_kernel("6.12"), Ok(Suite::Backports));
        assert_eq!(Suite::parse_kernel("Debian"), Ok(Suite::Release));
        assert_eq!(Suite::parse_kernel("6.1"), Ok(Suite::Release));
        assert!(Suite::parse_kernel("5.10").is_err());
        assert_eq!(Suite::parse_qemu("10.0"), Ok(Suite::Backports));
        assert_eq!(Suite::parse_qemu("system"), Ok(Suite::Release));
        assert!(Suite::parse_qemu("8.2").is_err());
        assert_eq!(Suite::Backports.kernel_name(), "6.12");
        assert_eq!(Suite::Release.qemu_name(), "7.2");
    }
}

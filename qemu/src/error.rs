//! Errors of the harness.

use std::path::PathBuf;

/// Result with the harness [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// What can go wrong while preparing or running a guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host command could not be started.
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why it could not start.
        source: std::io::Error,
    },
    /// A host command ran and failed.
    #[error("`{cmd}` failed ({status}){}", stderr_suffix(.stderr))]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The tail of what it printed on stderr.
        stderr: String,
    },
    /// File I/O on the host failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A prerequisite is missing and cannot be installed here.
    #[error("missing prerequisite: {0}")]
    Missing(String),
    /// The configuration asks for something impossible.
    #[error("invalid VM configuration: {0}")]
    Config(String),
    /// A wait on a running guest's output ended without the line.
    #[error("{0}")]
    Wait(String),
    /// Talking to QEMU's monitor failed.
    #[error(transparent)]
    Qmp(#[from] crate::qmp::QmpError),
    /// The guest booted but its init script failed before running the command.
    #[error("guest setup failed: {0}")]
    GuestSetup(String),
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", stderr.trim())
    }
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// Runs a host command to completion, returning its stdout.
pub(crate) fn run_cmd(cmd: &mut std::process::Command) -> Result<String> {
    let shown = format!("{cmd:?}").replace('"', "");
    log::debug!("running {shown}");
    let out = cmd.output().map_err(|source| Error::Spawn {
        cmd: shown.clone(),
        source,
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        return Err(Error::Command {
            cmd: shown,
            status: out.status,
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

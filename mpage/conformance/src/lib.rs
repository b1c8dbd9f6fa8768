//! The scenarios of `docs/MPAGE.md` (section T, T1–T28) as
//! code that runs against any device: the host tests run it on the
//! in-memory [`RecordingDevice`](mpage::RecordingDevice), the VM tests on
//! QEMU's emulated NVMe controller through the driver
//! ([`nvme::NvmeRig`], feature `nvme`, from `guest-check conformance`).
//! The same code makes the same checks on both: the commands (op, LBA,
//! length, flags, data addresses, outcome, recorded by a [`mpage::Tap`]),
//! the bytes in folios and on the disk, folio state and fsync results.
//!
//! * [`check`]: [`Failure`], [`Outcome`] and the [`ensure!`] /
//!   [`ensure_eq!`] macros: a scenario returns its first failed check
//!   instead of panicking, so a runner reports every scenario.
//! * [`rig`]: the [`Rig`] a scenario runs on, and the [`RecordingRig`].
//! * [`mod@env`]: one scenario's page cache, file, tapped device and helpers;
//!   the scenarios speak 512-byte sectors, as docs/MPAGE.md does.
//! * [`read`], [`writeback`], [`mod@write`]: the scenarios.
//!
//! [`all`] lists them with the fs block size each uses: a
//! scenario runs on devices whose LBA size is at most its block size
//! ([`Scenario::runs_on`]), so 1 KiB-block scenarios run at 512-byte
//! LBAs only. Scenarios that need injected device faults or held and
//! reordered completions are host-only; they are in this crate's
//! `tests/recording_only.rs`, on the same [`Env`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::panic::{AssertUnwindSafe, catch_unwind};

/// Builds the scenario table of a module: `name: fs block size, ...`.
macro_rules! scenarios {
    ($($name:ident: $block:expr),* $(,)?) => {
        [$($crate::Scenario { name: stringify!($name), block: $block, run: $name }),*]
    };
}

pub mod check;
pub mod env;
#[cfg(feature = "nvme")]
pub mod nvme;
pub mod read;
pub mod rig;
pub mod write;
pub mod writeback;

pub use check::{Failure, Outcome};
pub use env::Env;
pub use rig::{RecordingRig, Rig};

/// One scenario of docs/MPAGE.md.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Its name (the host test's name too).
    pub name: &'static str,
    /// The fs block size it uses, in bytes.
    pub block: usize,
    /// The scenario.
    pub run: fn(&mut dyn Rig) -> Outcome,
}

impl Scenario {
    /// Whether it runs on a device with `lba_size`-byte LBAs (blocks
    /// smaller than an LBA cannot be addressed, R1).
    pub fn runs_on(&self, lba_size: u32) -> bool {
        lba_size as usize <= self.block
    }

    /// Runs it on `rig`; a panic is a failure too.
    pub fn check(&self, rig: &mut dyn Rig) -> Outcome {
        match catch_unwind(AssertUnwindSafe(|| (self.run)(rig))) {
            Ok(outcome) => outcome,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                Err(Failure::new(format!("panicked: {message}")))
            }
        }
    }
}

/// Every scenario, in docs/MPAGE.md's order within each path (read,
/// writeback, buffered write).
pub fn all() -> impl Iterator<Item = &'static Scenario> {
    read::SCENARIOS
        .iter()
        .chain(writeback::SCENARIOS)
        .chain(write::SCENARIOS)
}

/// The scenario called `name`.
pub fn find(name: &str) -> Option<&'static Scenario> {
    all().find(|s| s.name == name)
}

/// Runs, one after the other on `rig`, every scenario its LBA size
/// allows, telling `report` each outcome; returns (passed, failed).
pub fn run_all(rig: &mut dyn Rig, mut report: impl FnMut(&Scenario, &Outcome)) -> (usize, usize) {
    let lba_size = rig.lba_size();
    let (mut passed, mut failed) = (0, 0);
    for s in all().filter(|s| s.runs_on(lba_size)) {
        let outcome = s.check(rig);
        if outcome.is_ok() {
            passed += 1;
        } else {
            failed += 1;
        }
        report(s, &outcome);
    }
    (passed, failed)
}

/// For tests: runs every scenario for `rig`'s block size and panics,
/// naming each failure and its outcome, unless all of them pass.
pub fn assert_all_pass(rig: &mut dyn Rig) {
    let lba_size = rig.lba_size();
    let mut failures = Vec::new();
    let (passed, failed) = run_all(rig, |s, outcome| {
        if let Err(e) = outcome {
            failures.push(format!("{}: {e}", s.name));
        }
    });
    assert_eq!(
        failed,
        0,
        "at {lba_size}-byte LBAs:\n{}",
        failures.join("\n")
    );
    let expected = all().filter(|s| s.runs_on(lba_size)).count();
    assert_eq!(passed, expected);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_block_sizes_addressable() {
        let mut names: Vec<&str> = all().map(|s| s.name).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate scenario names");
        assert!(all().all(|s| s.runs_on(512)));
        assert!(all().any(|s| !s.runs_on(4096)));
    }

    #[test]
    fn a_panicking_scenario_fails() {
        fn panics(_: &mut dyn Rig) -> Outcome {
            panic!("boom")
        }
        let s = Scenario {
            name: "panics",
            block: 4096,
            run: panics,
        };
        let mut rig = RecordingRig::new(512, 1 << 20).unwrap();
        let e = s.check(&mut rig).unwrap_err();
        assert_eq!(e.message(), "panicked: boom");
    }
}

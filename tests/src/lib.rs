//! Helpers shared by the VM tests: each test boots a guest through the
//! qemu-harness crate, runs the project's tools in it against QEMU's
//! emulated NVMe controller, and checks what comes out (and, after the
//! guest has powered off, the bytes in the raw disk image).
//!
//! Nothing here skips: a missing prerequisite is installed by the harness
//! or fails the test.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod fscrash;
pub mod logwrites;
pub mod model;
pub mod oracle;
pub mod powercut;
pub mod seqwrites;
pub mod soak;
pub use nvme_bench::pattern;

use std::path::Path;
use std::time::Duration;

pub use qemu_harness::{
    GuestDriver, GuestExit, GuestStream, IommuMode, NsDisk, TcgThreads, VmConfig, VmRun,
};

/// Guest settings for tests: a small disk, a generous time limit (TCG on
/// two shared cores), and the two vCPUs run by one host thread: with a
/// thread each, QEMU itself crashes now and then when the guest opens or
/// closes a device while the other vCPU touches MMIO (see
/// [`qemu_harness::TcgThreads`]). Benchmarks keep a thread per vCPU.
pub fn vm() -> VmConfig {
    VmConfig {
        disk_size: 64 << 20,
        // The initramfs carries every guest binary (about 75 MB) and, in
        // some tests, fio or qemu-storage-daemon with their libraries; the
        // kernel needs room for the archive and its unpacked copy at once
        // (at 512 MiB, fio's test failed: "Initramfs unpacking failed:
        // write error", then a Bus error from the truncated fio).
        mem_mib: 1024,
        timeout: Duration::from_secs(240),
        tcg_threads: TcgThreads::Single,
        ..VmConfig::default()
    }
}

/// Runs a shell script in the guest and returns the run; the script must
/// exit 0, else the test fails with the guest's stdout, stderr and console.
pub fn run_ok(config: &VmConfig, script: &str) -> VmRun {
    let run = run(config, script);
    assert_eq!(
        run.code(),
        Some(0),
        "guest script failed\n{}",
        run.describe()
    );
    run
}

/// Runs a shell script in the guest, whatever its exit status.
pub fn run(config: &VmConfig, script: &str) -> VmRun {
    config
        .run(&["sh", "-c", script])
        .unwrap_or_else(|e| panic!("could not run the guest: {e}"))
}

/// Reads `len` bytes at `offset` of a raw image on the host.
pub fn image_bytes(image: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f =
        std::fs::File::open(image).unwrap_or_else(|e| panic!("open {}: {e}", image.display()));
    f.seek(SeekFrom::Start(offset)).expect("seek in image");
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).expect("read image");
    buf
}

/// The value of an `nvmectl identify` field (`name      : value`).
pub fn field<'a>(identify: &'a str, name: &str) -> Option<&'a str> {
    identify.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim())
    })
}

/// Checks that each guest-check thread's range of the image holds its
/// pattern: thread t wrote blocks [t * region, (t + 1) * region) with seed
/// `seed + t`.
pub fn check_thread_ranges(image: &Path, threads: u64, region: u64, lba: usize, seed: u64) {
    for t in 0..threads {
        let first = t * region;
        let data = image_bytes(image, first * lba as u64, region as usize * lba);
        assert_eq!(
            pattern::first_mismatch(seed + t, first, lba, &data),
            None,
            "thread {t}'s range in the image"
        );
    }
}

/// The README's Rust examples, compiled as doctests (`cargo test --doc`,
/// which `cargo xtask test` runs): they need a controller to run, so they
/// are `no_run`, but an API change that breaks them fails the build.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// POSIX `cksum`'s CRC (what busybox's and coreutils' `cksum` print
/// first): CRC-32 with polynomial 0x04C11DB7, MSB first, over the data and
/// then its length in as few bytes as it takes (least significant first),
/// inverted. Lets the host check bytes the guest summed.
pub fn posix_cksum(data: &[u8]) -> u32 {
    fn feed(crc: u32, byte: u8) -> u32 {
        let mut c = crc ^ (u32::from(byte) << 24);
        for _ in 0..8 {
            c = if c & 0x8000_0000 != 0 {
                (c << 1) ^ 0x04C1_1DB7
            } else {
                c << 1
            };
        }
        c
    }
    let mut crc = data.iter().fold(0u32, |c, &b| feed(c, b));
    let mut len = data.len() as u64;
    while len != 0 {
        crc = feed(crc, len as u8);
        len >>= 8;
    }
    !crc
}

#[cfg(test)]
mod tests {
    #[test]
    fn posix_cksum_matches_the_cksum_tool() {
        // Values printed by coreutils' cksum.
        assert_eq!(super::posix_cksum(b"123456789"), 930_766_865);
        assert_eq!(super::posix_cksum(b""), 4_294_967_295);
        assert_eq!(super::posix_cksum(&[0u8; 100_000]), 1_260_869_142);
    }
}

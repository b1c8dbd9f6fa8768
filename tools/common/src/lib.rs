//! What the tools share:
//!
//! - [`bench`](mod@bench): the document `nvme-bench --json` prints and
//!   `cargo xtask bench` reads ([`bench::Report`]), and the vocabulary of
//!   a benchmark job ([`bench::Workload`], [`bench::Mode`], ...;
//!   spdk_nvme_perf's and fio's names, docs/PERFORMANCE.md maps them).
//!   nvme-bench serializes the type and xtask deserializes the same one, so
//!   a field renamed or dropped on one side breaks the build or the parse of
//!   the other instead of reading as a silent 0.
//! - [`parse_bytes`]: the size syntax of nvme-bench's, nvme-vhost's and
//!   `cargo xtask vm`'s flags (`4096`, `64k`, `256M`, `1G`, `1T`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bench;
mod size;

pub use size::{SizeError, parse_bytes};

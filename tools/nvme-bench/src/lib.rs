//! The pieces of `nvme-bench` that other crates reuse: the verifiable data
//! pattern, the workload generators and the statistics.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod pattern;
pub mod stats;
pub mod workload;

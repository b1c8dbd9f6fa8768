//! The words of a benchmark job, as flags (clap) and in the report
//! (serde): spdk_nvme_perf's `-w` and fio's `rw=` workload names.

use serde::{Deserialize, Serialize};

/// How the namespace is driven (`--mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The driver's queue pairs directly, `-q` I/Os in flight per thread.
    #[default]
    Raw,
    /// Buffered `read_at`/`write_at` through one shared page cache
    /// (pagecache + mpage), one synchronous call at a time per thread.
    Cache,
}

/// The workloads, named as spdk_nvme_perf's `-w` and fio's `rw=` name them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Uniformly random (or zipf) reads.
    #[default]
    Randread,
    /// Random writes.
    Randwrite,
    /// Sequential mix of reads and writes (`-M` read percentage).
    Rw,
    /// Random mix of reads and writes.
    Randrw,
}

impl Workload {
    /// Whether offsets are random.
    pub fn is_random(self) -> bool {
        matches!(
            self,
            Workload::Randread | Workload::Randwrite | Workload::Randrw
        )
    }

    /// Percentage of reads, given `-M` for the mixed workloads.
    pub fn read_percent(self, mix: u8) -> u8 {
        match self {
            Workload::Read | Workload::Randread => 100,
            Workload::Write | Workload::Randwrite => 0,
            Workload::Rw | Workload::Randrw => mix.min(100),
        }
    }
}

/// Which files the threads of a cache-mode job work on (`--files`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Files {
    /// One file over the whole range; each thread opens its own
    /// description of it.
    #[default]
    Shared,
    /// One file per thread, over the thread's share of the range.
    PerThread,
}

/// What the cache holds when a cache-mode job's measured window starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheState {
    /// Nothing: a fresh cache and file.
    #[default]
    Cold,
    /// The whole range, read in before the warm-up.
    Warm,
}

/// Where a raw-mode job's data buffers come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Buffers {
    /// Registered with the queue pair once and named by index
    /// (`IoQPair::submit_fixed`, SPDK's perf and fio's `fixedbufs`).
    #[default]
    Registered,
    /// Passed to the driver and back with each I/O (`--owned-buffers`).
    Owned,
}

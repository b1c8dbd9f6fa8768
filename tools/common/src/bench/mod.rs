//! nvme-bench's `--json` document and the words of its job.

mod report;
mod vocabulary;

pub use report::{
    CacheReport, IoFigures, JobReport, Latency, PathReport, ReadaheadWindow, Report, ThreadCache,
    ThreadReport, Total, Traffic,
};
pub use vocabulary::{Buffers, CacheState, Files, Mode, Workload};

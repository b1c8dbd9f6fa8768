//! The document `nvme-bench --json` prints, one line per run.
//!
//! Rates and times are `f64`. JSON has no NaN: a value that is not finite
//! (a rate over an empty window) is written as `null` and reads back as
//! NaN, so the document round-trips.

use serde::{Deserialize, Deserializer, Serialize};

use super::vocabulary::{Buffers, CacheState, Files, Mode, Workload};

/// `null` (how serde_json writes a non-finite `f64`) reads as NaN.
fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Option::<f64>::deserialize(d).map(|v| v.unwrap_or(f64::NAN))
}

/// One run of nvme-bench. `Default` is an empty run (zeros, the flags'
/// defaults), a start for tests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `--label`, copied (xtask names its runs with it).
    pub label: String,
    /// Raw queue pairs or the page cache.
    pub mode: Mode,
    /// What was asked and what the device allowed.
    pub job: JobReport,
    /// Every thread's figures together.
    pub total: Total,
    /// Each thread's figures, in thread order.
    pub threads: Vec<ThreadReport>,
    /// Cache mode: the page cache's side of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheReport>,
}

/// The job: the flags, resolved against the device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobReport {
    /// The PCI address, or `vhost-user:SOCK`.
    pub device: String,
    /// Run through a vhost-user-blk device (`--vhost-user`).
    pub vhost_user: bool,
    /// Namespace id.
    pub nsid: u32,
    /// `-w`.
    pub workload: Workload,
    /// `-M`: read percentage of the mixed workloads.
    pub rwmixread: u8,
    /// `-o`: bytes per I/O (per call in cache mode).
    pub io_size: u64,
    /// `-q`; none in cache mode (one call at a time).
    pub queue_depth: Option<usize>,
    /// Threads, one queue pair each.
    pub threads: usize,
    /// `-c`, as hex (`0x3`).
    pub core_mask: Option<String>,
    /// `-t`: measured seconds asked.
    #[serde(deserialize_with = "nan_if_null")]
    pub time: f64,
    /// `-n`: measured I/Os per thread asked.
    pub io_count: Option<u64>,
    /// `-a`: warm-up seconds.
    #[serde(deserialize_with = "nan_if_null")]
    pub warmup: f64,
    /// `--dist`, as Rust's `Debug` prints it (`Uniform`, `Zipf(1.2)`).
    pub dist: String,
    /// First LBA of the range.
    pub range_start: u64,
    /// Blocks of the range.
    pub range_blocks: u64,
    /// Bytes per block.
    pub lba_size: u64,
    /// `--verify`.
    pub verify: bool,
    /// `--zero-copy`.
    pub zero_copy: bool,
    /// `--floor`.
    pub floor: bool,
    /// Registered or owned data buffers.
    pub buffers: Buffers,
    /// `--buffer-pool` bytes.
    pub buffer_pool: Option<u64>,
    /// `--interrupts`.
    pub interrupts: bool,
    /// Whether the controller's shadow doorbells are in use.
    pub shadow_doorbells: bool,
    /// Whether SGLs are in use.
    pub sgl: bool,
    /// The largest command in bytes.
    pub max_transfer: usize,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Minimum.
    #[serde(deserialize_with = "nan_if_null")]
    pub min_us: f64,
    /// Mean.
    #[serde(deserialize_with = "nan_if_null")]
    pub mean_us: f64,
    /// Median.
    #[serde(deserialize_with = "nan_if_null")]
    pub p50_us: f64,
    /// 90th percentile.
    #[serde(deserialize_with = "nan_if_null")]
    pub p90_us: f64,
    /// 99th percentile.
    #[serde(deserialize_with = "nan_if_null")]
    pub p99_us: f64,
    /// 99.9th percentile.
    #[serde(deserialize_with = "nan_if_null")]
    pub p999_us: f64,
    /// Maximum.
    #[serde(deserialize_with = "nan_if_null")]
    pub max_us: f64,
}

/// What a thread, or the run as a whole, measured: the fields [`Total`]
/// and [`ThreadReport`] share, flattened into each (the JSON has no
/// `figures` object).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IoFigures {
    /// I/Os completed (reads + writes).
    pub ios: u64,
    /// Reads completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Failed I/Os.
    pub errors: u64,
    /// I/Os per second.
    #[serde(deserialize_with = "nan_if_null")]
    pub iops: f64,
    /// 10^6 bytes per second.
    #[serde(deserialize_with = "nan_if_null")]
    pub mbps: f64,
    /// The measured window.
    #[serde(deserialize_with = "nan_if_null")]
    pub seconds: f64,
    /// Latency of the I/Os.
    pub latency: Latency,
}

/// The run's figures over every thread.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Total {
    /// Every thread's I/Os together.
    #[serde(flatten)]
    pub figures: IoFigures,
    /// CPU time of the process (user + system) over the run.
    #[serde(deserialize_with = "nan_if_null")]
    pub cpu_seconds: f64,
    /// Wall-clock time of the run (warm-up included).
    #[serde(deserialize_with = "nan_if_null")]
    pub wall_seconds: f64,
}

/// One thread's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ThreadReport {
    /// Thread number, from 0.
    pub thread: usize,
    /// Its queue pair's id (virtqueue index under `--vhost-user`).
    pub qid: u16,
    /// The thread's I/Os over its measured window.
    #[serde(flatten)]
    pub figures: IoFigures,
    /// Cache mode: the thread's side of the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<ThreadCache>,
    /// Raw mode: what the queue pair's I/O path did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathReport>,
}

/// A queue pair's path counters (the driver's `PathCounters`) over the
/// measured window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathReport {
    /// Calls that looked at the completion queue.
    pub polls: u64,
    /// Polls that found at least one completion.
    pub reaping_polls: u64,
    /// Completion entries consumed.
    pub cqes: u64,
    /// Submission entries written.
    pub sqes: u64,
    /// Submission doorbell updates (shadow or MMIO).
    pub sq_rings: u64,
    /// Of those, MMIO writes.
    pub sq_mmio: u64,
    /// Completion doorbell updates (shadow or MMIO).
    pub cq_rings: u64,
    /// Of those, MMIO writes.
    pub cq_mmio: u64,
    /// Registered buffers looked at to find a free one (0 with one
    /// buffer per slot, the default; one per I/O with `--buffer-pool`).
    pub buffer_scan: u64,
}

/// Commands a queue pair carried (cache mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Read commands.
    pub read_commands: u64,
    /// Bytes they read.
    pub read_bytes: u64,
    /// Write commands.
    pub write_commands: u64,
    /// Bytes they wrote.
    pub write_bytes: u64,
    /// Flush commands.
    pub flushes: u64,
}

/// A readahead window, in pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadaheadWindow {
    /// First page.
    pub start: u64,
    /// Pages in the window.
    pub pages: u64,
    /// Pages of it read ahead asynchronously.
    pub async_pages: u64,
}

/// One thread's side of a cache-mode run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ThreadCache {
    /// The closing fsync, for workloads that write.
    pub fsync_seconds: Option<f64>,
    /// What the thread's own queue pair carried.
    pub device: Traffic,
    /// Its readahead window at the end.
    pub readahead_window: ReadaheadWindow,
    /// Its readahead maximum in pages (set, or sized from the device).
    pub readahead_max_pages: u64,
}

/// The page cache's side of a cache-mode run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheReport {
    /// Cold or warm at the start of the measured window.
    pub state: CacheState,
    /// The cache's budget in bytes.
    pub cache_size: u64,
    /// Bytes of the benchmark range (all files together).
    pub file_size: u64,
    /// One shared file or one per thread.
    pub files: Files,
    /// Bytes of each file.
    pub bytes_per_file: u64,
    /// Readahead maximum in pages.
    pub readahead_max_pages: u64,
    /// Whether the background flusher ran.
    pub flusher: bool,
    /// Warm: seconds the preload took.
    pub preload_seconds: Option<f64>,
    /// Warm: bytes of the file cached after the preload.
    pub preload_resident_bytes: Option<u64>,
    /// The slowest thread's closing fsync.
    pub fsync_max_seconds: Option<f64>,
    /// What every queue pair carried in the measured window.
    pub device: Traffic,
    /// Of that, the threads' own queue pairs.
    pub device_threads: Traffic,
    /// Of that, the flusher's queue pair.
    pub device_flusher: Traffic,
    /// Cache memory in use at the end.
    pub used_bytes_end: u64,
    /// Of that, dirty.
    pub dirty_bytes_end: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latency(v: f64) -> Latency {
        Latency {
            min_us: v,
            mean_us: v,
            p50_us: v,
            p90_us: v,
            p99_us: v,
            p999_us: v,
            max_us: v,
        }
    }

    fn report() -> Report {
        Report {
            label: "ours/randread-4k-qd32/1".into(),
            mode: Mode::Cache,
            job: JobReport {
                device: "0000:00:04.0".into(),
                vhost_user: false,
                nsid: 1,
                workload: Workload::Randread,
                rwmixread: 50,
                io_size: 4096,
                queue_depth: None,
                threads: 1,
                core_mask: Some("0x3".into()),
                time: 10.0,
                io_count: None,
                warmup: 1.0,
                dist: "Uniform".into(),
                range_start: 0,
                range_blocks: 1 << 20,
                lba_size: 512,
                verify: false,
                zero_copy: false,
                floor: false,
                buffers: Buffers::Registered,
                buffer_pool: None,
                interrupts: false,
                shadow_doorbells: true,
                sgl: false,
                max_transfer: 512 << 10,
            },
            total: Total {
                figures: IoFigures {
                    ios: 10,
                    reads: 10,
                    writes: 0,
                    errors: 0,
                    iops: 1.0,
                    mbps: 0.004,
                    seconds: 10.0,
                    latency: latency(12.5),
                },
                cpu_seconds: 1.5,
                wall_seconds: 11.0,
            },
            threads: vec![ThreadReport {
                thread: 0,
                qid: 1,
                figures: IoFigures {
                    ios: 10,
                    reads: 10,
                    writes: 0,
                    errors: 0,
                    iops: 1.0,
                    mbps: 0.004,
                    seconds: 10.0,
                    latency: latency(f64::NAN),
                },
                cache: Some(ThreadCache {
                    fsync_seconds: None,
                    device: Traffic::default(),
                    readahead_window: ReadaheadWindow {
                        start: 0,
                        pages: 32,
                        async_pages: 16,
                    },
                    readahead_max_pages: 2048,
                }),
                path: None,
            }],
            cache: Some(CacheReport {
                state: CacheState::Warm,
                cache_size: 256 << 20,
                file_size: 8 << 20,
                files: Files::PerThread,
                bytes_per_file: 8 << 20,
                readahead_max_pages: 2048,
                flusher: true,
                preload_seconds: Some(0.5),
                preload_resident_bytes: Some(8 << 20),
                fsync_max_seconds: None,
                device: Traffic::default(),
                device_threads: Traffic::default(),
                device_flusher: Traffic::default(),
                used_bytes_end: 8 << 20,
                dirty_bytes_end: 0,
            }),
        }
    }

    #[test]
    fn the_document_keeps_its_field_names_and_round_trips() {
        let r = report();
        let text = serde_json::to_string(&r).expect("serializes");
        let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        // The names docs/PERFORMANCE.md and the VM tests read.
        assert_eq!(v["mode"], "cache");
        assert_eq!(v["job"]["workload"], "randread");
        assert_eq!(v["job"]["buffers"], "registered");
        assert_eq!(v["job"]["queue_depth"], serde_json::Value::Null);
        assert_eq!(v["total"]["latency"]["p999_us"], 12.5);
        assert_eq!(v["cache"]["files"], "per-thread");
        assert_eq!(v["cache"]["state"], "warm");
        assert_eq!(
            v["threads"][0]["cache"]["readahead_window"]["async_pages"],
            16
        );
        assert!(v["threads"][0].get("path").is_none(), "{v}");
        // NaN is written as null and read back as NaN.
        assert_eq!(
            v["threads"][0]["latency"]["mean_us"],
            serde_json::Value::Null
        );
        let back: Report = serde_json::from_str(&text).expect("reads back");
        assert!(back.threads[0].figures.latency.mean_us.is_nan());
        assert_eq!(serde_json::to_string(&back).expect("serializes"), text);
        assert_eq!(back.total, r.total);
        assert_eq!(back.cache, r.cache);
    }

    /// Three lines nvme-bench printed in a `cargo xtask bench` smoke run:
    /// `--vhost-user`, raw mode with its path counters, cache mode.
    const REAL: &str = include_str!("testdata/nvme-bench.jsonl");

    /// `text` with the values of the first `n` fields named `key` made
    /// `null` (how serde_json writes NaN).
    fn null_out(text: &str, key: &str, n: usize) -> String {
        let tag = format!("\"{key}\":");
        let mut out = String::new();
        let mut rest = text;
        for _ in 0..n {
            let at = rest.find(&tag).expect("the field") + tag.len();
            let end = at + rest[at..].find([',', '}']).expect("the value's end");
            out.push_str(&rest[..at]);
            out.push_str("null");
            rest = &rest[end..];
        }
        out.push_str(rest);
        out
    }

    #[test]
    fn real_reports_read_and_write_back_byte_for_byte() {
        assert_eq!(REAL.lines().count(), 3);
        for line in REAL.lines() {
            let r: Report = serde_json::from_str(line).expect(line);
            // The same keys, in the same order, with the same values.
            assert_eq!(serde_json::to_string(&r).expect("serializes"), line);
            // The shared figures are read from the flattened fields.
            let v: serde_json::Value = serde_json::from_str(line).expect("JSON");
            for (figures, json) in std::iter::once((&r.total.figures, &v["total"])).chain(
                r.threads
                    .iter()
                    .zip(v["threads"].as_array().expect("threads"))
                    .map(|(t, j)| (&t.figures, j)),
            ) {
                assert!(figures.ios > 0, "{line}");
                assert_eq!(json["ios"].as_u64(), Some(figures.ios));
                assert_eq!(json["reads"].as_u64(), Some(figures.reads));
                assert_eq!(json["iops"].as_f64(), Some(figures.iops));
                assert_eq!(json["seconds"].as_f64(), Some(figures.seconds));
                assert_eq!(
                    json["latency"]["p999_us"].as_f64(),
                    Some(figures.latency.p999_us)
                );
                assert!(json.get("figures").is_none(), "flattened: {json}");
            }
        }
        let raw: Report = serde_json::from_str(REAL.lines().nth(1).expect("line")).expect("raw");
        assert_eq!(raw.threads[0].qid, 1);
        assert_eq!(
            raw.threads[0].path.map(|p| p.cqes),
            Some(raw.total.figures.ios)
        );
        let cached: Report =
            serde_json::from_str(REAL.lines().nth(2).expect("line")).expect("cache");
        assert_eq!(cached.mode, Mode::Cache);
        assert!(cached.threads[0].cache.is_some() && cached.cache.is_some());
    }

    /// A non-finite figure is written as `null` and reads back as NaN in
    /// the flattened fields too, and in the fields beside them.
    #[test]
    fn null_figures_read_as_nan_through_the_flattened_struct() {
        let line = REAL.lines().nth(1).expect("the raw-mode line");
        // The total's and the thread's iops and mean latency, the total's
        // CPU time.
        let text = null_out(&null_out(line, "iops", 2), "mean_us", 2);
        let text = null_out(&text, "cpu_seconds", 1);
        assert_eq!(
            text.matches(":null").count(),
            line.matches(":null").count() + 5
        );
        let r: Report = serde_json::from_str(&text).expect("reads");
        for f in [&r.total.figures, &r.threads[0].figures] {
            assert!(f.iops.is_nan() && f.latency.mean_us.is_nan(), "{f:?}");
            assert!(f.mbps.is_finite() && f.latency.p50_us.is_finite());
        }
        assert!(r.total.cpu_seconds.is_nan());
        assert!(r.total.wall_seconds.is_finite());
        assert_eq!(serde_json::to_string(&r).expect("serializes"), text);
    }

    #[test]
    fn a_missing_field_is_an_error() {
        let mut v = serde_json::to_value(report()).expect("serializes");
        if let Some(t) = v["total"].as_object_mut() {
            t.remove("iops");
        }
        let err = serde_json::from_value::<Report>(v).expect_err("iops is required");
        assert!(err.to_string().contains("iops"), "{err}");
    }
}

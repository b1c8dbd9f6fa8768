//! What the guest printed, turned into figures: one [`Run`] per JSON line
//! (nvme-bench's or fio's), then the median and spread of each job and
//! variant over the rounds ([`Cell`]), the table and the targets.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;
use tools_common::bench::Report as BenchReport;

use super::suite::{Boot, Job, Metric, Side, Variant, parse_label};

/// Latency summary in µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Latency {
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    /// The percentiles charted, with their names.
    pub(crate) fn percentiles(&self) -> [(&'static str, f64); 4] {
        [
            ("p50", self.p50),
            ("p90", self.p90),
            ("p99", self.p99),
            ("p99.9", self.p999),
        ]
    }
}

/// The figures of one run (reads and writes together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Figures {
    pub iops: f64,
    /// 10^6 bytes per second.
    pub mbps: f64,
    pub latency: Latency,
    /// CPU seconds the benchmark process used (user + system).
    pub cpu_seconds: Option<f64>,
    pub errors: u64,
}

impl Figures {
    pub(crate) fn metric(&self, m: Metric) -> f64 {
        match m {
            Metric::Iops => self.iops,
            Metric::Mbps => self.mbps,
            Metric::MeanLatency => self.latency.mean,
        }
    }
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Run {
    pub variant: Variant,
    pub job: &'static str,
    pub round: u32,
    pub figures: Figures,
}

/// Everything the guest reported.
#[derive(Debug, Default)]
pub(crate) struct Output {
    pub runs: Vec<Run>,
    /// nvme-bench's JSON documents.
    pub ours: Vec<BenchReport>,
    /// fio's JSON documents, as printed.
    pub kernel: Vec<Value>,
    /// Runs that failed, with the reason the guest gave.
    pub failures: Vec<String>,
    /// `@@key value` lines: the run's conditions (guest kernel, fio, ...).
    pub conditions: BTreeMap<String, String>,
    /// nvme-vhost's request counts after each vhost run.
    pub vhost_requests: Vec<VhostRequests>,
}

impl Output {
    /// Adds what another boot reported; its conditions get `prefix`.
    pub(crate) fn merge(&mut self, other: Output, prefix: &str) {
        self.runs.extend(other.runs);
        self.ours.extend(other.ours);
        self.kernel.extend(other.kernel);
        self.failures.extend(other.failures);
        self.vhost_requests.extend(other.vhost_requests);
        for (k, v) in other.conditions {
            self.conditions.insert(format!("{prefix}{k}"), v);
        }
    }
}

/// What nvme-vhost served in one run (`@@vhost_requests LABEL direct N,
/// bounced N, failed N, unsupported N`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct VhostRequests {
    pub label: String,
    /// Served zero-copy (PRPs into the client's memory).
    pub direct: u64,
    /// Through a bounce buffer.
    pub bounced: u64,
    pub failed: u64,
}

impl VhostRequests {
    fn parse(rest: &str) -> Option<VhostRequests> {
        let (label, counts) = rest.split_once(' ')?;
        let count = |name: &str| -> Option<u64> {
            counts
                .split(", ")
                .find_map(|c| c.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        };
        Some(VhostRequests {
            label: label.to_string(),
            direct: count("direct")?,
            bounced: count("bounced")?,
            failed: count("failed")?,
        })
    }
}

/// The share of nvme-vhost's requests served zero-copy over every vhost
/// run (None without one).
pub(crate) fn zero_copy_share(reqs: &[VhostRequests]) -> Option<f64> {
    let direct: u64 = reqs.iter().map(|r| r.direct).sum();
    let all = direct + reqs.iter().map(|r| r.bounced).sum::<u64>();
    (all > 0).then(|| direct as f64 / all as f64)
}

/// Parses the guest's stdout.
pub(crate) fn parse(stdout: &str) -> Output {
    let mut out = Output::default();
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("@@failed ") {
            out.failures.push(rest.to_string());
        } else if let Some(rest) = line.strip_prefix("@@vhost_requests ") {
            match VhostRequests::parse(rest) {
                Some(r) => out.vhost_requests.push(r),
                None => out
                    .failures
                    .push(format!("no nvme-vhost request counts: {rest:.200}")),
            }
        } else if let Some(rest) = line.strip_prefix("@@") {
            let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
            out.conditions
                .entry(k.to_string())
                .and_modify(|old| {
                    old.push_str("; ");
                    old.push_str(v);
                })
                .or_insert_with(|| v.to_string());
        } else if line.starts_with('{') {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                out.failures
                    .push(format!("unparsable result line: {line:.200}"));
                continue;
            };
            let parsed = if v.get("fio version").is_some() {
                let r = from_fio(&v);
                out.kernel.push(v);
                r
            } else {
                match serde_json::from_value::<BenchReport>(v) {
                    Ok(report) => {
                        let r = from_ours(&report);
                        out.ours.push(report);
                        r
                    }
                    Err(source) => Err(LineError::NotAReport {
                        source,
                        line: line.to_string(),
                    }),
                }
            };
            match parsed {
                Ok(run) => out.runs.push(run),
                Err(why) => out.failures.push(why.to_string()),
            }
        }
    }
    out
}

fn num(v: &Value) -> f64 {
    v.as_f64().filter(|x| x.is_finite()).unwrap_or(0.0)
}

/// Why a result line gives no [`Run`] (kept in [`Output::failures`] as its
/// message).
#[derive(Debug, thiserror::Error)]
pub(crate) enum LineError {
    #[error("result with an unknown label {0:?}")]
    UnknownLabel(String),
    #[error("{job}: fio error {code}")]
    Fio { job: String, code: Value },
    #[error("not an nvme-bench report ({source}): {line:.200}")]
    NotAReport {
        source: serde_json::Error,
        line: String,
    },
}

fn labelled(label: &str) -> Result<(Variant, Job, u32), LineError> {
    parse_label(label).ok_or_else(|| LineError::UnknownLabel(label.to_string()))
}

/// A figure that is not a number (nvme-bench's `null`) counts as 0.
fn finite(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

/// nvme-bench's `--json` document.
fn from_ours(v: &BenchReport) -> Result<Run, LineError> {
    let (variant, job, round) = labelled(&v.label)?;
    let t = &v.total.figures;
    let l = &t.latency;
    let figures = Figures {
        iops: finite(t.iops),
        mbps: finite(t.mbps),
        latency: Latency {
            min: finite(l.min_us),
            mean: finite(l.mean_us),
            p50: finite(l.p50_us),
            p90: finite(l.p90_us),
            p99: finite(l.p99_us),
            p999: finite(l.p999_us),
            max: finite(l.max_us),
        },
        cpu_seconds: Some(v.total.cpu_seconds).filter(|c| !c.is_nan()),
        errors: t.errors,
    };
    Ok(Run {
        variant,
        job: job.name,
        round,
        figures,
    })
}

/// fio's JSON document (one job; reads and writes summed).
fn from_fio(v: &Value) -> Result<Run, LineError> {
    let j = &v["jobs"][0];
    let (variant, job, round) = labelled(j["jobname"].as_str().unwrap_or(""))?;
    if j["error"].as_u64().unwrap_or(0) != 0 {
        return Err(LineError::Fio {
            job: j["jobname"].as_str().unwrap_or("").to_string(),
            code: j["error"].clone(),
        });
    }
    let sides = [&j["read"], &j["write"]];
    let ios = |s: &Value| num(&s["total_ios"]);
    let iops: f64 = sides.iter().map(|s| num(&s["iops"])).sum();
    let mbps: f64 = sides.iter().map(|s| num(&s["bw_bytes"])).sum::<f64>() / 1e6;
    // The side that did the I/O carries the latency (mixed jobs are not
    // in the suite; the busier side is taken).
    let busy = if ios(&j["write"]) > ios(&j["read"]) {
        &j["write"]
    } else {
        &j["read"]
    };
    let l = &busy["lat_ns"];
    let pct = |p: &str| num(&l["percentile"][p]) / 1000.0;
    let runtime = num(&j["job_runtime"]) / 1000.0;
    let cpu = (num(&j["usr_cpu"]) + num(&j["sys_cpu"])) / 100.0 * runtime;
    let figures = Figures {
        iops,
        mbps,
        latency: Latency {
            min: num(&l["min"]) / 1000.0,
            mean: num(&l["mean"]) / 1000.0,
            p50: pct("50.000000"),
            p90: pct("90.000000"),
            p99: pct("99.000000"),
            p999: pct("99.900000"),
            max: num(&l["max"]) / 1000.0,
        },
        cpu_seconds: Some(cpu),
        errors: 0,
    };
    Ok(Run {
        variant,
        job: job.name,
        round,
        figures,
    })
}

/// One job on one variant over the rounds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Cell {
    pub job: &'static str,
    pub variant: Variant,
    /// Rounds measured.
    pub runs: usize,
    /// The job's metric: median, lowest, highest.
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Medians of every figure over the rounds.
    pub figures: Figures,
}

impl Cell {
    /// (max − min) / median, in percent.
    pub(crate) fn spread_pct(&self) -> f64 {
        if self.median > 0.0 {
            (self.max - self.min) / self.median * 100.0
        } else {
            0.0
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The cell of every (job, variant) that has runs.
pub(crate) fn cells(runs: &[Run], jobs: &[Job]) -> Vec<Cell> {
    let mut out = Vec::new();
    for job in jobs {
        for variant in Variant::all() {
            let rs: Vec<&Figures> = runs
                .iter()
                .filter(|r| r.job == job.name && r.variant == variant)
                .map(|r| &r.figures)
                .collect();
            if rs.is_empty() {
                continue;
            }
            let m = |f: &dyn Fn(&Figures) -> f64| median(rs.iter().map(|x| f(x)).collect());
            let metric: Vec<f64> = rs.iter().map(|f| f.metric(job.metric)).collect();
            let cpu: Vec<f64> = rs.iter().filter_map(|f| f.cpu_seconds).collect();
            out.push(Cell {
                job: job.name,
                variant,
                runs: rs.len(),
                median: median(metric.clone()),
                min: metric.iter().copied().fold(f64::INFINITY, f64::min),
                max: metric.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                figures: Figures {
                    iops: m(&|f| f.iops),
                    mbps: m(&|f| f.mbps),
                    latency: Latency {
                        min: m(&|f| f.latency.min),
                        mean: m(&|f| f.latency.mean),
                        p50: m(&|f| f.latency.p50),
                        p90: m(&|f| f.latency.p90),
                        p99: m(&|f| f.latency.p99),
                        p999: m(&|f| f.latency.p999),
                        max: m(&|f| f.latency.max),
                    },
                    cpu_seconds: (!cpu.is_empty()).then(|| median(cpu)),
                    errors: rs.iter().map(|f| f.errors).sum(),
                },
            });
        }
    }
    out
}

fn cell<'a>(cells: &'a [Cell], job: &str, v: Variant) -> Option<&'a Cell> {
    cells.iter().find(|c| c.job == job && c.variant == v)
}

/// The kernel variant with the best median for `job` (highest, or lowest
/// for latency), among every kernel variant that ran it.
pub(crate) fn best_kernel<'a>(cells: &'a [Cell], job: &Job) -> Option<&'a Cell> {
    best_among(cells, job, |v| v.is_kernel())
}

fn best_among<'a>(
    cells: &'a [Cell],
    job: &Job,
    which: impl Fn(Variant) -> bool,
) -> Option<&'a Cell> {
    let kernel = cells
        .iter()
        .filter(|c| c.job == job.name && which(c.variant) && c.median > 0.0);
    if job.metric.higher_is_better() {
        kernel.max_by(|a, b| a.median.total_cmp(&b.median))
    } else {
        kernel.min_by(|a, b| a.median.total_cmp(&b.median))
    }
}

/// Our figure over the kernel's best for `job` (for latency, ours over the
/// kernel's lowest: below 1 is better), with the kernel variant it is
/// compared to.
pub(crate) fn ratio_to_best_kernel(cells: &[Cell], job: &Job) -> Option<(f64, Variant)> {
    let ours = cell(cells, job.name, Variant::OURS)?;
    let best = best_kernel(cells, job)?;
    Some((ours.median / best.median, best.variant))
}

/// Compact figure: 29.6k, 1.23M, 51.2.
pub(crate) fn compact(x: f64) -> String {
    let a = x.abs();
    if a >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", x / 1e3)
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// `median ±spread%` of a cell.
fn figure(c: &Cell) -> String {
    format!("{} ±{:.0}%", compact(c.median), c.spread_pct())
}

/// The table: `header` (the run's conditions), one row per job (the job's
/// metric for ours and for the best kernel variant, median ± spread over
/// the rounds, and their ratio), then every other variant per job (the
/// kernel's, and any other of ours).
pub(crate) fn table(cells: &[Cell], jobs: &[Job], header: &str) -> String {
    let mut s = String::new();
    for line in header.lines() {
        let _ = writeln!(s, "# {line}");
    }
    let _ = writeln!(
        s,
        "{:<26} {:<8} {:>14} {:>14}  {:<22} ours/best kernel",
        "job", "metric", "ours", "best kernel", "(variant)"
    );
    for job in jobs {
        let main_boot = cells
            .iter()
            .any(|c| c.job == job.name && c.variant.boot() == Boot::Main);
        if !main_boot && cells.iter().any(|c| c.variant.boot() == Boot::Frontend) {
            // A front-end job only: in the front ends' table.
            continue;
        }
        let ours = cell(cells, job.name, Variant::OURS).map_or("-".into(), figure);
        let best = best_kernel(cells, job);
        let _ = write!(
            s,
            "{:<26} {:<8} {ours:>14} {:>14}  {:<22}",
            job.name,
            job.metric.unit(),
            best.map_or("-".into(), figure),
            best.map_or("", |c| c.variant.name()),
        );
        match ratio_to_best_kernel(cells, job) {
            Some((r, _)) => {
                let _ = writeln!(s, " {r:.2}x");
            }
            None => {
                let _ = writeln!(s, " -");
            }
        }
    }
    let _ = writeln!(s, "\nevery other variant (median ±spread):");
    for job in jobs {
        let all: Vec<String> = Variant::all()
            .filter(|&v| v != Variant::OURS)
            .filter_map(|v| cell(cells, job.name, v))
            .map(|c| format!("{} {}", c.variant.name(), figure(c)))
            .collect();
        if !all.is_empty() {
            let _ = writeln!(s, "  {:<26} {}", job.name, all.join(", "));
        }
    }
    s
}

/// The best median of `job` among the variants `which` picks (highest,
/// or lowest for latency).
fn best_of<'a>(cells: &'a [Cell], job: &str, which: impl Fn(Variant) -> bool) -> Option<&'a Cell> {
    best_among(cells, &Job::by_name(job)?, which)
}

/// ublk's rows (any placement and wait mode), not its no-device floor.
fn is_ublk(v: Variant) -> bool {
    v.is_ublk() && !v.is_ublk_null()
}

/// nvme-ublk's no-device floor (`--null-io`), batched or not.
fn is_ublk_null(v: Variant) -> bool {
    v.is_ublk_null()
}

/// The kernel nvme driver under fio in the front ends' boot.
fn is_frontend_kernel(v: Variant) -> bool {
    v.is_fio_on_nvme() && v.boot() == Boot::Frontend
}

/// qemu-storage-daemon's rows (either iothread setting).
fn is_qsd(v: Variant) -> bool {
    matches!(v.def().side, Side::QsdVhost(_))
}

/// The front ends' boot in a table: per job, the best ublk figure
/// against the best of the kernel nvme driver, and each nvme-vhost mode
/// against the best qemu-storage-daemon figure (empty without front-end
/// runs).
pub(crate) fn frontend_table(cells: &[Cell], jobs: &[Job]) -> String {
    let mut s = String::new();
    let fe = |c: &&Cell| c.variant.boot() == Boot::Frontend;
    if !cells.iter().any(|c| fe(&c)) {
        return s;
    }
    let _ = writeln!(
        s,
        "\nfront ends, same boot (median ±spread; ratio: the first over the second's best):"
    );
    let pair = |name: &str, a: Option<&Cell>, b: Option<&Cell>| -> Option<String> {
        let (a, b) = (a?, b?);
        (b.median > 0.0).then(|| {
            format!(
                "{name} {} {} / {} {} = {:.2}x",
                a.variant.name(),
                figure(a),
                b.variant.name(),
                figure(b),
                a.median / b.median
            )
        })
    };
    for job in jobs {
        if !cells.iter().filter(fe).any(|c| c.job == job.name) {
            continue;
        }
        let mut parts = Vec::new();
        let ublk = best_of(cells, job.name, is_ublk);
        let ublk_null = best_of(cells, job.name, is_ublk_null);
        let fe_kernel = best_of(cells, job.name, is_frontend_kernel);
        parts.extend(pair("ublk/kernel:", ublk, fe_kernel));
        // The floor: what the ublk crossing allows at best, against the
        // kernel and against the real rows.
        parts.extend(pair("ublk-null/kernel:", ublk_null, fe_kernel));
        parts.extend(pair("ublk/ublk-null:", ublk, ublk_null));
        let qsd = best_of(cells, job.name, is_qsd);
        for name in [
            "vhost",
            "vhost-irq",
            "vhost-spin",
            "vhost-null",
            "vhost-null-poll",
        ] {
            let v = Variant::from_name(name).and_then(|v| cell(cells, job.name, v));
            parts.extend(pair(&format!("{name}/qsd:"), v, qsd));
        }
        if let Some(raw) = Variant::from_name("fe-ours").and_then(|v| cell(cells, job.name, v)) {
            parts.push(format!("raw driver (fe-ours) {}", figure(raw)));
        }
        if parts.is_empty() {
            continue;
        }
        let _ = writeln!(s, "  {} ({}):", job.name, job.metric.unit());
        for p in parts {
            let _ = writeln!(s, "    {p}");
        }
    }
    s
}

/// A ratio the issues ask to report, without a goal.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub what: String,
    pub ratio: f64,
}

/// The ratios reported without a goal: ublk's QD1 latency against the
/// kernel nvme driver's, and where nvme-vhost's QD1 latency stands
/// between our raw driver and its own no-device floor.
pub(crate) fn reported(cells: &[Cell]) -> Vec<Report> {
    let qd1 = "randread-4k-qd1";
    let named = |n: &str| Variant::from_name(n).and_then(|v| cell(cells, qd1, v));
    let mut out = Vec::new();
    let mut ratio = |what: &str, a: Option<&Cell>, b: Option<&Cell>| {
        if let (Some(a), Some(b)) = (a, b)
            && b.median > 0.0
        {
            out.push(Report {
                what: what.into(),
                ratio: a.median / b.median,
            });
        }
    };
    ratio(
        "4K randread QD1 mean latency: ublk vs the kernel nvme driver",
        best_of(cells, qd1, is_ublk),
        best_of(cells, qd1, is_frontend_kernel),
    );
    for name in ["vhost-irq", "vhost", "vhost-spin", "vhost-null", "ublk"] {
        ratio(
            &format!("4K randread QD1 mean latency: {name} vs our raw driver (fe-ours)"),
            named(name),
            named("fe-ours"),
        );
    }
    ratio(
        "4K randread QD1 mean latency: raw driver on its interrupt vs polled",
        named("fe-ours-irq"),
        named("fe-ours"),
    );
    // nvme-ublk's no-device floor against the kernel nvme driver, per
    // ublk job: where the ublk crossing alone stands against the targets.
    for (job, what) in [
        ("randread-4k-qd1", "4K randread QD1 mean latency"),
        ("randread-4k-qd32", "4K randread QD32 IOPS"),
        ("read-128k-qd8", "128K sequential read MB/s"),
    ] {
        ratio(
            &format!("{what}: ublk-null (no device) vs the kernel nvme driver (best)"),
            best_of(cells, job, is_ublk_null),
            best_of(cells, job, is_frontend_kernel),
        );
        ratio(
            &format!("{what}: ublk vs its no-device floor (ublk-null)"),
            best_of(cells, job, is_ublk),
            best_of(cells, job, is_ublk_null),
        );
    }
    out
}

/// One of the issue's targets, checked against the cells.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Target {
    pub what: String,
    pub ratio: f64,
    pub goal: String,
    pub met: bool,
}

/// The targets that the measured jobs allow checking; `zero_copy`: the
/// share of nvme-vhost's requests served zero-copy, if vhost runs ran.
pub(crate) fn targets(cells: &[Cell], null_backend: bool, zero_copy: Option<f64>) -> Vec<Target> {
    let mut out = Vec::new();
    let get = |job: &str, v: Variant| cell(cells, job, v).map(|c| c.median);
    // The best median of `job` among the kernel variants whose name
    // starts with `family` (io_uring-polled: with and without batching).
    let best = |job: &str, family: &dyn Fn(&str) -> bool| {
        let j = Job::by_name(job)?;
        best_among(cells, &j, |v| v.is_kernel() && family(v.name())).map(|c| c.median)
    };
    let polled = |n: &str| n.starts_with("io_uring-polled");
    let irq = |n: &str| n.starts_with("io_uring") && !n.starts_with("io_uring-polled");
    let any = |_: &str| true;
    // A ratio ours / other against `goal`: at least it, or (for
    // latencies) at most it.
    let mut check =
        |what: &str, ours: Option<f64>, other: Option<f64>, goal: f64, at_most: bool| {
            if let (Some(o), Some(k)) = (ours, other)
                && k > 0.0
            {
                let ratio = o / k;
                out.push(Target {
                    what: what.into(),
                    ratio,
                    goal: format!("{} {goal}x", if at_most { "≤" } else { "≥" }),
                    met: if at_most {
                        ratio <= goal
                    } else {
                        ratio >= goal
                    },
                });
            }
        };
    let mut at_least = |what: &str, ours: Option<f64>, other: Option<f64>, goal: f64| {
        check(what, ours, other, goal, false)
    };
    let ours = |job: &str| get(job, Variant::OURS);
    let floor = |job: &str| get(job, Variant::FLOOR);
    // Issue 9: the full path against the floor loop, and against the
    // kernel at its best (the best median of every kernel variant).
    for job in ["randread-4k-qd32", "randread-4k-qd128"] {
        at_least(
            &format!("{job} IOPS: the full path vs the floor loop"),
            ours(job),
            floor(job),
            0.9,
        );
        at_least(
            &format!("{job} IOPS vs the kernel's best"),
            ours(job),
            best(job, &any),
            2.5,
        );
    }
    at_least(
        "4K randread QD32 IOPS vs io_uring interrupts (best of batched or not)",
        ours("randread-4k-qd32"),
        best("randread-4k-qd32", &irq),
        2.0,
    );
    at_least(
        "4K randread QD32 IOPS vs io_uring polled (best of batched or not)",
        ours("randread-4k-qd32"),
        best("randread-4k-qd32", &polled),
        1.5,
    );
    for job in ["read-128k-qd8", "write-128k-qd8"] {
        at_least(
            &format!("{job} MB/s vs the kernel's best"),
            ours(job),
            best(job, &any),
            2.0,
        );
    }
    at_least(
        &format!(
            "page-cache cold sequential read (zero-copy) vs our raw 128K read ({})",
            if null_backend { "null-co" } else { "image" }
        ),
        ours("cache-read-128k-cold-zc"),
        ours("read-128k-qd8"),
        if null_backend { 0.8 } else { 0.9 },
    );
    // The same with the raw read streaming through as much memory as the
    // cache (what the device's and the emulator's per-page work sees).
    at_least(
        "page-cache cold sequential read (zero-copy) vs our raw 128K read over the cache's footprint",
        ours("cache-read-128k-cold-zc"),
        get("read-128k-qd8", Variant::FOOTPRINT),
        if null_backend { 0.8 } else { 0.9 },
    );
    at_least(
        "page-cache cold sequential read (copying) vs the kernel's",
        ours("cache-read-128k-cold"),
        best("cache-read-128k-cold", &any),
        1.0,
    );
    at_least(
        "warm page-cache 4K re-read IOPS vs our raw 4K QD32 IOPS",
        ours("cache-randread-4k-warm"),
        ours("randread-4k-qd32"),
        2.0,
    );
    for job in [
        "cache-randread-4k-warm-2t",
        "cache-randread-4k-warm-2t-files",
    ] {
        at_least(
            &format!("{job}: two threads vs one (warm page cache)"),
            ours(job),
            ours("cache-randread-4k-warm"),
            1.8,
        );
    }
    check(
        "4K randread QD1 mean latency: the full path vs the floor loop",
        ours("randread-4k-qd1"),
        floor("randread-4k-qd1"),
        1.1,
        true,
    );
    check(
        "4K randread QD1 mean latency vs the kernel's best",
        ours("randread-4k-qd1"),
        best("randread-4k-qd1", &any),
        0.4,
        true,
    );
    // Issue 12: fio on nvme-ublk's block device against fio on the kernel
    // nvme driver at its best, same jobs, same (6.12) boot.
    let fe_best =
        |job: &str, which: fn(Variant) -> bool| best_of(cells, job, which).map(|c| c.median);
    check(
        "4K randread QD32 IOPS: ublk vs the kernel nvme driver (best)",
        fe_best("randread-4k-qd32", is_ublk),
        fe_best("randread-4k-qd32", is_frontend_kernel),
        1.0,
        false,
    );
    check(
        "128K sequential read MB/s: ublk vs the kernel nvme driver (best)",
        fe_best("read-128k-qd8", is_ublk),
        fe_best("read-128k-qd8", is_frontend_kernel),
        0.9,
        false,
    );
    // Issue 11: nvme-vhost against qemu-storage-daemon (io_uring, O_DIRECT,
    // an iothread, the kernel's nvme driver) at its best, the same client
    // in the same boot; polled, in the default interrupt mode, and with
    // hybrid polling.
    let qsd = |job: &str| fe_best(job, is_qsd);
    for name in ["vhost", "vhost-irq", "vhost-spin"] {
        let vhost = |job: &str| Variant::from_name(name).and_then(|v| get(job, v));
        check(
            &format!("4K randread QD32 IOPS: {name} vs qemu-storage-daemon"),
            vhost("randread-4k-qd32"),
            qsd("randread-4k-qd32"),
            2.0,
            false,
        );
        check(
            &format!("4K randread QD1 mean latency: {name} vs qemu-storage-daemon"),
            vhost("randread-4k-qd1"),
            qsd("randread-4k-qd1"),
            0.6,
            true,
        );
    }
    if let Some(share) = zero_copy {
        check(
            "nvme-vhost requests served zero-copy (share; page-aligned client)",
            Some(share),
            Some(1.0),
            0.99,
            false,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::suite::JOBS;

    /// A one-round run of `variant` on `job` whose IOPS, MB/s and mean
    /// latency are all `x`.
    fn run(variant: &str, job: &'static str, x: f64) -> Run {
        Run {
            variant: Variant::from_name(variant).unwrap(),
            job,
            round: 1,
            figures: Figures {
                iops: x,
                mbps: x,
                latency: Latency {
                    mean: x,
                    ..Latency::default()
                },
                ..Figures::default()
            },
        }
    }

    /// nvme-bench's document for a run labelled `label`.
    fn ours(label: &str, iops: f64, latency: tools_common::bench::Latency) -> String {
        let report = BenchReport {
            label: label.into(),
            total: tools_common::bench::Total {
                figures: tools_common::bench::IoFigures {
                    ios: 100,
                    iops,
                    mbps: 122.9,
                    latency,
                    ..Default::default()
                },
                cpu_seconds: 2.9,
                ..Default::default()
            },
            ..Default::default()
        };
        serde_json::to_string(&report).expect("serializes")
    }

    fn ours_qd32() -> String {
        let latency = tools_common::bench::Latency {
            min_us: 20.0,
            mean_us: 1000.0,
            p50_us: 900.0,
            p90_us: 1200.0,
            p99_us: 1500.0,
            p999_us: 2000.0,
            max_us: 3000.0,
        };
        ours("ours|randread-4k-qd32|1", 30000.0, latency)
    }

    const FIO: &str = r#"{"fio version":"fio-3.33","jobs":[{"jobname":"io_uring-polled|randread-4k-qd32|1","error":0,"job_runtime":3000,"usr_cpu":10.0,"sys_cpu":40.0,"read":{"iops":15000.0,"bw_bytes":61440000,"total_ios":45000,"lat_ns":{"min":10000,"max":900000,"mean":2000000.0,"percentile":{"50.000000":1900000,"90.000000":2500000,"99.000000":3000000,"99.900000":4000000}}},"write":{"iops":0.0,"bw_bytes":0,"total_ios":0,"lat_ns":{"min":0,"max":0,"mean":0.0}}}]}"#;

    #[test]
    fn both_sides_parse_into_runs() {
        let text = format!(
            "@@kernel 6.1.0\n{}\n{FIO}\n@@failed libaio|randread-4k-qd32|1: fio: bad\nnoise\n",
            ours_qd32()
        );
        let out = parse(&text);
        assert_eq!(out.failures.len(), 1);
        assert_eq!(out.conditions["kernel"], "6.1.0");
        assert_eq!(out.runs.len(), 2);
        let (o, k) = (&out.runs[0].figures, &out.runs[1].figures);
        assert_eq!((o.iops, o.latency.p999), (30000.0, 2000.0));
        assert_eq!(out.runs[1].variant.name(), "io_uring-polled");
        assert_eq!((k.iops, k.mbps), (15000.0, 61.44));
        assert_eq!((k.latency.mean, k.latency.p99), (2000.0, 3000.0));
        assert_eq!(k.cpu_seconds, Some(1.5));
        let cells = cells(&out.runs, JOBS);
        let job = Job::by_name("randread-4k-qd32").unwrap();
        let (r, v) = ratio_to_best_kernel(&cells, &job).unwrap();
        assert_eq!((r, v.name()), (2.0, "io_uring-polled"));
        let t = targets(&cells, false, None);
        let vs_polled = t
            .iter()
            .find(|t| t.what.contains("vs io_uring polled"))
            .unwrap();
        assert!(vs_polled.met && vs_polled.ratio == 2.0, "{t:?}");
        assert!(
            !t.iter().any(|t| t.what.contains("floor")),
            "no floor run, no floor target: {t:?}"
        );
        let t = table(&cells, JOBS, "iommu pt\ncpu max");
        assert!(t.starts_with("# iommu pt\n# cpu max\n"), "{t}");
        let row = t
            .lines()
            .find(|l| l.starts_with("randread-4k-qd32 "))
            .unwrap();
        assert!(
            row.contains("io_uring-polled") && row.ends_with(" 2.00x"),
            "{t}"
        );
        assert!(
            t.contains("randread-4k-qd32           io_uring-polled 15.0k ±0%"),
            "{t}"
        );
    }

    #[test]
    fn medians_and_spread_over_rounds() {
        let run = |round, iops| Run {
            variant: Variant::OURS,
            job: "randread-4k-qd32",
            round,
            figures: Figures {
                iops,
                ..Figures::default()
            },
        };
        let runs = vec![run(1, 100.0), run(2, 120.0), run(3, 90.0)];
        let c = &cells(&runs, JOBS)[0];
        assert_eq!((c.median, c.min, c.max, c.runs), (100.0, 90.0, 120.0, 3));
        assert!((c.spread_pct() - 30.0).abs() < 1e-9);
    }

    #[test]
    fn vhost_rows_give_their_targets_and_the_zero_copy_share() {
        let ours = |label: &str, iops: f64, mean_us: f64| {
            let latency = tools_common::bench::Latency {
                mean_us,
                ..Default::default()
            };
            ours(label, iops, latency)
        };
        let text = [
            ours("vhost|randread-4k-qd32|1", 50000.0, 600.0),
            "@@vhost_requests vhost|randread-4k-qd32|1 direct 199, bounced 1, failed 0, unsupported 0".into(),
            ours("qsd-vhost|randread-4k-qd32|1", 20000.0, 1500.0),
            ours("vhost|randread-4k-qd1|1", 4000.0, 250.0),
            "@@vhost_requests vhost|randread-4k-qd1|1 direct 800, bounced 0, failed 0, unsupported 0".into(),
            ours("qsd-vhost|randread-4k-qd1|1", 2000.0, 500.0),
            "@@vhost_requests x|y|1 garbage".into(),
        ]
        .join("\n");
        let out = parse(&text);
        assert_eq!(out.runs.len(), 4);
        assert_eq!(out.failures.len(), 1, "{:?}", out.failures);
        assert_eq!(
            out.vhost_requests[0],
            VhostRequests {
                label: "vhost|randread-4k-qd32|1".into(),
                direct: 199,
                bounced: 1,
                failed: 0
            }
        );
        let share = zero_copy_share(&out.vhost_requests);
        assert_eq!(share, Some(999.0 / 1000.0));
        let cells = cells(&out.runs, JOBS);
        let t = targets(&cells, false, share);
        let find = |what: &str| t.iter().find(|t| t.what.contains(what)).unwrap();
        let qd32 = find("QD32 IOPS: vhost vs qemu-storage-daemon");
        assert!(qd32.met && qd32.ratio == 2.5, "{t:?}");
        let qd1 = find("QD1 mean latency: vhost vs qemu-storage-daemon");
        assert!(qd1.met && qd1.ratio == 0.5, "{t:?}");
        assert!(find("zero-copy").met);
        // No vhost-irq run, no vhost-irq target; the vhost rows are not
        // the kernel's best.
        assert!(!t.iter().any(|t| t.what.contains("vhost-irq")), "{t:?}");
        assert!(best_kernel(&cells, &Job::by_name("randread-4k-qd32").unwrap()).is_none());
        assert_eq!(zero_copy_share(&[]), None);
    }

    #[test]
    fn ublk_rows_are_judged_against_the_kernel_in_their_own_boot() {
        let runs = vec![
            run("ublk-batch", "randread-4k-qd32", 30000.0),
            run("fe-io_uring-polled", "randread-4k-qd32", 20000.0),
            run("fe-io_uring-polled-batch", "randread-4k-qd32", 25000.0),
            // The main boot's kernel rows are not the peer.
            run("io_uring-polled-batch", "randread-4k-qd32", 90000.0),
            run("ublk-batch", "read-128k-qd8", 800.0),
            run("fe-io_uring-polled", "read-128k-qd8", 1000.0),
            run("ublk", "randread-4k-qd1", 150.0),
            // The floor is no ublk row for the targets, however fast.
            run("ublk-null-batch", "randread-4k-qd32", 60000.0),
            run("ublk-null-batch", "read-128k-qd8", 2000.0),
            run("ublk-null", "randread-4k-qd1", 120.0),
            run("fe-io_uring-polled", "randread-4k-qd1", 100.0),
            run("fe-ours", "randread-4k-qd1", 40.0),
            run("vhost-irq", "randread-4k-qd1", 160.0),
            run("vhost-null", "randread-4k-qd1", 120.0),
            run("qsd-vhost", "randread-4k-qd1", 200.0),
            run("qsd-vhost-poll", "randread-4k-qd1", 180.0),
        ];
        let cells = cells(&runs, JOBS);
        let t = targets(&cells, false, None);
        let find = |what: &str| t.iter().find(|t| t.what.contains(what)).unwrap();
        let qd32 = find("QD32 IOPS: ublk vs the kernel nvme driver");
        assert!(qd32.met && qd32.ratio == 1.2, "{t:?}");
        let seq = find("128K sequential read MB/s: ublk");
        assert!(!seq.met && seq.ratio == 0.8, "{t:?}");
        // qemu-storage-daemon at its best (the longer poll window here).
        let vs_qsd = find("QD1 mean latency: vhost-irq vs qemu-storage-daemon");
        assert!((vs_qsd.ratio - 160.0 / 180.0).abs() < 1e-9, "{t:?}");
        let r = reported(&cells);
        let find = |what: &str| r.iter().find(|r| r.what.contains(what)).unwrap().ratio;
        assert_eq!(find("QD1 mean latency: ublk vs the kernel"), 1.5);
        assert_eq!(find("vhost-irq vs our raw driver"), 4.0);
        assert_eq!(find("vhost-null vs our raw driver"), 3.0);
        assert_eq!(
            find("QD32 IOPS: ublk-null (no device) vs the kernel nvme driver"),
            2.4
        );
        assert_eq!(
            find("128K sequential read MB/s: ublk vs its no-device"),
            0.4
        );
        assert_eq!(find("QD1 mean latency: ublk vs its no-device"), 1.25);
        let table = frontend_table(&cells, JOBS);
        assert!(
            table.contains(
                "ublk/kernel: ublk-batch 30.0k ±0% / fe-io_uring-polled-batch 25.0k ±0% = 1.20x"
            ),
            "{table}"
        );
        assert!(table.contains("raw driver (fe-ours) 40.0"), "{table}");
        assert!(
            table.contains(
                "ublk-null/kernel: ublk-null-batch 60.0k ±0% / fe-io_uring-polled-batch 25.0k ±0% = 2.40x"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "ublk/ublk-null: ublk-batch 30.0k ±0% / ublk-null-batch 60.0k ±0% = 0.50x"
            ),
            "{table}"
        );
        assert_eq!(frontend_table(&cells[..0], JOBS), "");
    }

    #[test]
    fn bad_lines_are_failures_not_panics() {
        let out = parse("{not json\n{\"label\":\"x|y|1\"}\n{\"fio version\":1,\"jobs\":[]}\n");
        assert_eq!(out.runs.len(), 0);
        assert_eq!(out.failures.len(), 3);
        assert_eq!(compact(29612.0), "29.6k");
        assert_eq!(compact(1_480_000.0), "1.48M");
        assert_eq!(compact(50.94), "50.9");
    }

    #[test]
    fn the_best_kernel_figure_is_the_best_of_every_variant() {
        let runs = vec![
            run("ours", "randread-4k-qd32", 60000.0),
            run("io_uring", "randread-4k-qd32", 15000.0),
            run("io_uring-polled", "randread-4k-qd32", 20000.0),
            run("io_uring-polled-batch", "randread-4k-qd32", 30000.0),
            run("ours", "randread-4k-qd1", 40.0),
            run("io_uring-polled", "randread-4k-qd1", 80.0),
            run("libaio", "randread-4k-qd1", 70.0),
        ];
        let cells = cells(&runs, JOBS);
        let qd32 = Job::by_name("randread-4k-qd32").unwrap();
        let (r, v) = ratio_to_best_kernel(&cells, &qd32).unwrap();
        assert_eq!((r, v.name()), (2.0, "io_uring-polled-batch"));
        // Latency: the lowest wins.
        let qd1 = Job::by_name("randread-4k-qd1").unwrap();
        let (r, v) = ratio_to_best_kernel(&cells, &qd1).unwrap();
        assert_eq!((r, v.name()), (40.0 / 70.0, "libaio"));
        // The "vs polled" target takes the better of batched or not; the
        // interrupt one the io_uring variants without polling.
        let t = targets(&cells, false, None);
        let find = |what: &str| t.iter().find(|t| t.what.contains(what)).unwrap();
        assert_eq!(find("QD32 IOPS vs io_uring polled").ratio, 2.0, "{t:?}");
        assert_eq!(find("QD32 IOPS vs io_uring interrupts").ratio, 4.0, "{t:?}");
        // QD1 latency against the lowest of every kernel variant.
        assert_eq!(
            find("QD1 mean latency vs the kernel's best").ratio,
            40.0 / 70.0
        );
    }
}

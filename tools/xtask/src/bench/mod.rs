//! `cargo xtask bench`: the main job. One guest boot runs the suite
//! ([`suite`]) on the same emulated controller with our driver (vfio-pci)
//! and with the kernel's nvme driver under fio, in rounds; a second boot,
//! on the 6.12 kernel, runs the front ends (nvme-ublk under fio,
//! nvme-vhost under libblkio's client) against their peers (the kernel
//! nvme driver under fio, qemu-storage-daemon) in the same way; the host then
//! prints one table (median ± spread per job and variant, ours against the
//! best kernel figure), checks the targets, and writes under the output
//! folder (default target/bench/): `results.json` (conditions, every run,
//! the summary), `ours.json` and `kernel.json` (the tools' own JSON
//! documents), `table.txt` and `chart.svg`.

mod results;
mod suite;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use qemu_harness::{GuestDriver, GuestExit, NsDisk, OutputMode, VmConfig, workspace_root};
use serde_json::json;

use crate::chart;
use crate::vm_args::IommuArg;
use qemu_harness::Suite;
use results::{Cell, Output};
use suite::{Boot, JOBS, Job, NAMESPACE_LBAS, Plan, Timing, Variant};

/// What backs the emulated namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Backend {
    /// A raw image file on the host (a fresh sparse file, written once
    /// before measuring).
    Image,
    /// QEMU's null-co driver: no storage, the emulated device's own ceiling.
    Null,
}

/// The guest's vCPU model unless `--cpu` says otherwise.
const DEFAULT_CPU: &str = "max,erms=off,fsrm=off";

/// `cargo xtask bench [OPTIONS]`
#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    /// Namespace backend.
    #[arg(long, value_enum, default_value_t = Backend::Image)]
    backend: Backend,
    /// Measured seconds of each time-based run.
    #[arg(long, default_value_t = 3.0)]
    runtime: f64,
    /// Warm-up seconds before each time-based run (not measured).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Rounds: each job runs this many times on each side (the table shows
    /// the median and the spread).
    #[arg(long, default_value_t = 3)]
    repeat: u32,
    /// Jobs to run, comma-separated (default: the whole suite; see --list).
    #[arg(long, value_delimiter = ',')]
    jobs: Vec<String>,
    /// Variants to run, comma-separated (default: all but libaio; see --list).
    #[arg(long, value_delimiter = ',')]
    variants: Vec<String>,
    /// How the guest kernel uses the IOMMU: pt (passthrough for kernel
    /// drivers: the nvme driver maps nothing per I/O; vfio-pci keeps its
    /// own translated domain), translated (the kernel's default), strict.
    #[arg(long, value_enum, default_value_t = IommuArg::Pt)]
    iommu: IommuArg,
    /// vCPU model of the guest (QEMU's -cpu); both sides share it. The
    /// default is TCG's most complete model (SSE4.2, AVX2) without ERMS
    /// and FSRM: with them glibc's memcpy and the kernel's copy_to_user
    /// use `rep movsb`, which made large copies 2.5 to 3.5 times slower
    /// on both sides under TCG.
    #[arg(long, value_name = "MODEL", default_value = DEFAULT_CPU)]
    cpu: String,
    /// Guest vCPUs (both sides share the guest).
    #[arg(long, default_value_t = 2)]
    smp: u32,
    /// Run all vCPUs on one host thread (`-accel tcg,thread=single`), as
    /// the tests do, so that QEMU's memory-map race cannot take the guest
    /// down (see `qemu_harness::TcgThreads`). Threads then do not run in
    /// parallel: for smoke runs, not for figures.
    #[arg(long)]
    tcg_single: bool,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    mem: u32,
    /// 2 MiB huge pages the guest reserves at boot, from which our side
    /// takes its DMA memory (as SPDK and libvfn deployments do; the
    /// emulated IOMMU then maps 2 MiB at a time). 0 for none. The kernel
    /// side does not use them; they leave it `mem` minus their size.
    #[arg(long, default_value_t = 160)]
    hugepages: u32,
    /// Output folder.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// List the jobs and variants, then exit.
    #[arg(long)]
    list: bool,
    /// Extra guest kernel command line word, both boots (repeatable;
    /// e.g. `mitigations=off`).
    #[arg(long = "kernel-arg", value_name = "WORD")]
    kernel_args: Vec<String>,
    /// Leave out the front ends' boot (the 6.12 guest with the ublk and
    /// vhost-user rows) from the default variants.
    #[arg(long)]
    no_frontends: bool,
}

impl BenchArgs {
    fn tcg_threads(&self) -> qemu_harness::TcgThreads {
        if self.tcg_single {
            qemu_harness::TcgThreads::Single
        } else {
            qemu_harness::TcgThreads::Multi
        }
    }

    /// The plan of each boot that has runs: the main boot (the suite,
    /// on the harness's default kernel), then the front ends' boot (6.12:
    /// ublk, vhost-user and their peers).
    fn plans(&self) -> std::result::Result<Vec<Plan>, PlanError> {
        let jobs = if self.jobs.is_empty() {
            JOBS.to_vec()
        } else {
            self.jobs
                .iter()
                .map(|n| Job::by_name(n).ok_or_else(|| PlanError::NoJob(n.clone())))
                .collect::<std::result::Result<_, _>>()?
        };
        let variants: Vec<Variant> = if self.variants.is_empty() {
            Variant::defaults()
                .filter(|v| !(self.no_frontends && v.boot() == Boot::Frontend))
                .collect()
        } else {
            self.variants
                .iter()
                .map(|n| Variant::from_name(n).ok_or_else(|| PlanError::NoVariant(n.clone())))
                .collect::<std::result::Result<_, _>>()?
        };
        if self.repeat == 0 {
            return Err(PlanError::Rounds);
        }
        let valid = |s: f64, min: f64| s.is_finite() && s >= min;
        if !valid(self.runtime, 0.1) || !valid(self.warmup, 0.0) {
            return Err(PlanError::Timing);
        }
        let plans: Vec<Plan> = [Boot::Main, Boot::Frontend]
            .into_iter()
            .map(|boot| Plan {
                jobs: jobs.clone(),
                variants: variants.clone(),
                rounds: self.repeat,
                timing: Timing {
                    runtime: self.runtime,
                    warmup: self.warmup,
                },
                precondition: self.backend == Backend::Image,
                boot,
            })
            .filter(|p| p.run_count() > 0)
            .collect();
        if plans.is_empty() {
            return Err(PlanError::NoRun);
        }
        Ok(plans)
    }

    /// The guest of `plan`'s boot.
    fn vm_config(&self, plan: &Plan, out_dir: &std::path::Path) -> VmConfig {
        let namespaces = plan.namespaces();
        let frontend = plan.boot == Boot::Frontend;
        VmConfig {
            disks: vec![
                match self.backend {
                    Backend::Image => NsDisk::Temp,
                    Backend::Null => NsDisk::Null,
                };
                namespaces as usize
            ],
            namespaces,
            ns_props: NAMESPACE_LBAS[..namespaces as usize]
                .iter()
                .map(|lba| {
                    vec![
                        ("logical_block_size".into(), lba.to_string()),
                        ("physical_block_size".into(), lba.to_string()),
                    ]
                })
                .collect(),
            iommu_mode: self.iommu.into(),
            cpu: Some(self.cpu.clone()),
            disk_size: 2 * suite::RANGE,
            mem_mib: self.mem,
            smp: self.smp,
            tcg_threads: self.tcg_threads(),
            hugepages: self.hugepages,
            // The kernel driver's modules are loaded and own the controller at
            // boot; the script moves it to vfio-pci for our side and back.
            driver: GuestDriver::Kernel,
            host_tools: [
                (plan.has_kernel_side(), "fio"),
                (plan.has_qsd(), "qemu-storage-daemon"),
            ]
            .into_iter()
            .filter(|(needed, _)| *needed)
            .map(|(_, tool)| tool.to_string())
            .collect(),
            // The front ends' boot: the backports' kernel, which has
            // ublk_drv (Debian's 6.1 has none), whatever the default is.
            kernel: frontend.then_some(Suite::Backports),
            ship_modules: if plan.has_ublk() {
                vec!["ublk_drv".into()]
            } else {
                Vec::new()
            },
            kernel_args: self.kernel_args.clone(),
            timeout: Duration::from_secs_f64(plan.estimate_seconds() * 2.0 + 180.0),
            output: OutputMode::StreamStderr,
            console_log: Some(out_dir.join(if frontend {
                "console-frontend.log"
            } else {
                "console.log"
            })),
            ..VmConfig::default()
        }
    }
}

/// Why `cargo xtask bench`'s flags make no plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PlanError {
    #[error("no job {0:?} (see --list)")]
    NoJob(String),
    #[error("no variant {0:?} (see --list)")]
    NoVariant(String),
    #[error("--repeat must be at least 1")]
    Rounds,
    #[error("--runtime must be at least 0.1 s and --warmup not negative")]
    Timing,
    #[error("the chosen jobs and variants make no run")]
    NoRun,
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

pub(crate) fn run(args: BenchArgs) -> Result<ExitCode> {
    if args.list {
        println!(
            "job, its metric, the variants that run it (in parentheses: only when --variants names it)"
        );
        for j in JOBS {
            let vs: Vec<String> = j
                .variants()
                .iter()
                .map(|v| {
                    if v.def().by_default {
                        v.name().to_string()
                    } else {
                        format!("({})", v.name())
                    }
                })
                .collect();
            println!("{:<26} {:<8} {}", j.name, j.metric.unit(), vs.join(", "));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let plans = args.plans()?;
    let out_dir = if args.out.is_absolute() {
        args.out.clone()
    } else {
        workspace_root().join(&args.out)
    };
    std::fs::create_dir_all(&out_dir)?;
    let estimate: f64 = plans.iter().map(Plan::estimate_seconds).sum();
    let run_count: usize = plans.iter().map(Plan::run_count).sum();
    eprintln!(
        "bench: {run_count} runs ({} rounds) in {} boot(s), about {:.0} min in the guests; backend {:?}",
        args.repeat,
        plans.len(),
        estimate / 60.0,
        args.backend
    );
    let started = Instant::now();
    let mut output = Output::default();
    let mut boots = Vec::new();
    for plan in &plans {
        let frontend = plan.boot == Boot::Frontend;
        if frontend {
            eprintln!("bench: the front ends' boot (Linux 6.12: ublk, vhost-user and their peers)");
        }
        let config = args.vm_config(plan, &out_dir);
        let run = config.run(&["sh".into(), "-c".into(), plan.script()])?;
        let stdout = String::from_utf8_lossy(&run.stdout);
        std::fs::write(
            out_dir.join(if frontend {
                "guest-stdout-frontend.txt"
            } else {
                "guest-stdout.txt"
            }),
            stdout.as_bytes(),
        )?;
        output.merge(
            results::parse(&stdout),
            if frontend { "frontend_" } else { "" },
        );
        boots.push((plan.boot, plan.run_count(), run));
    }
    let elapsed = started.elapsed();
    let jobs: Vec<Job> = plans[0].jobs.clone();
    let cells = results::cells(&output.runs, &jobs);
    let header = header(&args, &output, elapsed);
    let mut table = results::table(&cells, &jobs, &header);
    table.push_str(&results::frontend_table(&cells, &jobs));
    let zero_copy = results::zero_copy_share(&output.vhost_requests);
    let targets = results::targets(&cells, args.backend == Backend::Null, zero_copy);
    let reported = results::reported(&cells);

    println!();
    println!("{table}");
    for t in &targets {
        println!(
            "target: {:<60} {:>6.2}x  (goal {}) {}",
            t.what,
            t.ratio,
            t.goal,
            if t.met { "met" } else { "NOT met" }
        );
    }
    for r in &reported {
        println!("reported: {:<58} {:>6.2}x", r.what, r.ratio);
    }
    let main_boot = boots.iter().find(|(b, ..)| *b == Boot::Main);
    let fe_boot = boots.iter().find(|(b, ..)| *b == Boot::Frontend);
    let mut conditions = conditions(
        &args,
        &output,
        elapsed,
        plans.iter().map(Plan::namespaces).max().unwrap_or(1),
        main_boot.or(fe_boot).map_or(("", ""), |(_, _, r)| {
            (r.qemu_version.as_str(), r.kernel_package.as_str())
        }),
    );
    if let Some((_, _, r)) = fe_boot {
        conditions["frontend_kernel_package"] = json!(r.kernel_package);
    }
    conditions["host_load_average"] = json!(std::fs::read_to_string("/proc/loadavg").ok());
    std::fs::write(out_dir.join("table.txt"), &table)?;
    let doc = json!({
        "conditions": conditions,
        "jobs": jobs,
        "summary": cells,
        "targets": targets,
        "reported": reported,
        "runs": output.runs,
        "vhost_requests": output.vhost_requests,
        "failures": output.failures,
    });
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&doc)?,
    )?;
    std::fs::write(
        out_dir.join("ours.json"),
        serde_json::to_string_pretty(&output.ours)?,
    )?;
    std::fs::write(
        out_dir.join("kernel.json"),
        serde_json::to_string_pretty(&output.kernel)?,
    )?;
    std::fs::write(
        out_dir.join("chart.svg"),
        render_chart(&cells, &jobs, &args, &output),
    )?;
    println!(
        "\nbench: {} runs in {:.1} min; results in {}",
        output.runs.len(),
        elapsed.as_secs_f64() / 60.0,
        out_dir.display()
    );

    let mut failed = false;
    for f in &output.failures {
        eprintln!("bench: failed run: {f}");
        failed = true;
    }
    if output.runs.len() != run_count {
        eprintln!(
            "bench: {} of {run_count} runs reported results",
            output.runs.len()
        );
        failed = true;
    }
    for (_, _, run) in &boots {
        match &run.exit {
            GuestExit::Exited(0) => {}
            other => {
                eprintln!(
                    "bench: the guest did not finish cleanly ({other:?}); console log: {}",
                    run.console_log.display()
                );
                if matches!(other, GuestExit::NoStatus(why) if why.contains("signal"))
                    && !args.tcg_single
                {
                    eprintln!(
                        "bench: QEMU itself died: multi-threaded TCG can crash when the guest \
                     changes its memory map (docs/TESTING.md, \"QEMU's memory-map race\"); \
                     run again, or with --tcg-single for a smoke run"
                    );
                }
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The run's conditions for results.json: what was asked, and what the
/// guest reported (`@@key value` lines).
fn conditions(
    args: &BenchArgs,
    output: &Output,
    elapsed: Duration,
    namespaces: u32,
    (qemu, kernel_package): (&str, &str),
) -> serde_json::Value {
    json!({
        "backend": args.backend,
        "runtime": args.runtime,
        "warmup": args.warmup,
        "rounds": args.repeat,
        "smp": args.smp,
        "mem_mib": args.mem,
        "hugepages": args.hugepages,
        "accel": args.tcg_threads().accel(),
        "cpu": args.cpu,
        "iommu": args.iommu,
        "kernel_args": args.kernel_args,
        "namespaces": NAMESPACE_LBAS[..namespaces as usize]
            .iter()
            .enumerate()
            .map(|(i, lba)| json!({"nsid": i + 1, "lba_size": lba}))
            .collect::<Vec<_>>(),
        // The kernel page cache's readahead (set to ours) and what ours
        // used in its cache runs.
        "kernel_read_ahead_kb": output.conditions.get("read_ahead_kb").and_then(|v| v.parse::<u64>().ok()),
        "ours_readahead_max_pages": ours_readahead(output),
        "qemu": qemu,
        "kernel_package": kernel_package,
        "host_cpu": std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        }),
        "host_cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "guest": output.conditions,
        "wall_seconds": elapsed.as_secs_f64(),
    })
}

/// Our readahead maximum in pages: the largest that the probe and our
/// cache runs reported (a warm run never reads the device, so it reports
/// the starting maximum, not the device-sized one).
fn ours_readahead(output: &Output) -> Option<u64> {
    let probe = output
        .conditions
        .get("readahead_max_pages")
        .and_then(|v| v.parse().ok());
    output
        .ours
        .iter()
        .filter_map(|v| v.cache.as_ref().map(|c| c.readahead_max_pages))
        .chain(probe)
        .max()
}

/// The conditions a table is read with, one line each.
fn header(args: &BenchArgs, output: &Output, elapsed: Duration) -> String {
    let c = |k: &str| output.conditions.get(k).map_or("?", |s| s.as_str());
    let iommu = ["iommu_domain", "iommu_invalidation"]
        .iter()
        .filter_map(|k| output.conditions.get(*k))
        .filter(|v| !v.is_empty())
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    let readahead = match (
        output.conditions.get("read_ahead_kb"),
        ours_readahead(output),
    ) {
        (Some(kb), Some(pages)) => format!(
            "kernel read_ahead_kb {kb}, ours readahead max {pages} pages ({} KiB)",
            pages * 4
        ),
        (Some(kb), None) => format!("kernel read_ahead_kb {kb}"),
        (None, Some(pages)) => format!("ours readahead max {pages} pages"),
        (None, None) => "readahead: no cache job".into(),
    };
    let frontend = output
        .conditions
        .get("frontend_kernel")
        .map_or(String::new(), |k| {
            format!(
                "\nfront ends' boot: guest {k}, kernel nvme queues {}; host load average {}",
                c("frontend_queues"),
                std::fs::read_to_string("/proc/loadavg")
                    .ok()
                    .and_then(|l| l.rsplitn(3, ' ').nth(2).map(str::to_string))
                    .unwrap_or_else(|| "?".into())
            )
        });
    // The raw path's boot reports its guest, CPU flags and queues; a run of
    // the front ends' boot alone has none of them.
    let raw_boot = match output.conditions.get("kernel") {
        Some(kernel) => format!(
            " ({}), {} vCPUs, {} MiB ({} huge pages), {:?} backend; guest {kernel}, iommu {} ({iommu})\n\
             kernel nvme queues {}; {readahead}",
            c("cpu_flags").trim(),
            args.smp,
            args.mem,
            args.hugepages,
            args.backend,
            args.iommu.name(),
            c("queues"),
        ),
        None => format!(
            ", {} vCPUs, {} MiB ({} huge pages), {:?} backend; the raw path's boot did not run",
            args.smp, args.mem, args.hugepages, args.backend,
        ),
    };
    format!(
        "QEMU {} TCG{} -cpu {}{raw_boot}\n\
         {} rounds of {} s (+{} s warm-up); wall {:.1} min{frontend}",
        host_fact(qemu_harness::host::QEMU, &["--version"])
            .as_deref()
            .and_then(|v| v.split_whitespace().nth(3))
            .unwrap_or("?"),
        if args.tcg_single {
            " (one thread for all vCPUs)"
        } else {
            ""
        },
        args.cpu,
        args.repeat,
        args.runtime,
        args.warmup,
        elapsed.as_secs_f64() / 60.0,
    )
}

/// The first line a host command prints, if it runs.
fn host_fact(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(|l| l.trim().to_string())
}

fn render_chart(cells: &[Cell], jobs: &[Job], args: &BenchArgs, output: &Output) -> String {
    let variants: Vec<Variant> = Variant::all()
        .filter(|v| cells.iter().any(|c| c.variant == *v))
        .collect();
    let get = |job: &Job, v: Variant| cells.iter().find(|c| c.job == job.name && c.variant == v);
    let panel = |title: &str,
                 unit: &str,
                 jobs: &[&Job],
                 value: &dyn Fn(&Cell) -> f64,
                 spread: bool,
                 log| {
        chart::Panel {
            title: title.into(),
            unit: unit.into(),
            categories: jobs.iter().map(|j| j.name.to_string()).collect(),
            series: variants
                .iter()
                .map(|&v| chart::Series {
                    name: v.name().into(),
                    values: jobs.iter().map(|j| get(j, v).map(value)).collect(),
                })
                .collect(),
            spread: variants
                .iter()
                .map(|&v| {
                    jobs.iter()
                        .map(|j| get(j, v).filter(|_| spread).map(|c| (c.min, c.max)))
                        .collect()
                })
                .collect(),
            log_scale: log,
        }
    };
    let all: Vec<&Job> = jobs.iter().collect();
    let mut panels = vec![panel(
        "IOPS per job (median of the rounds; higher is better)",
        "IOPS",
        &all,
        &|c| c.figures.iops,
        false,
        true,
    )];
    let bw: Vec<&Job> = jobs
        .iter()
        .filter(|j| j.metric == suite::Metric::Mbps)
        .collect();
    if !bw.is_empty() {
        panels.push(panel(
            "Bandwidth (MB/s; bars: min..max of the rounds)",
            "MB/s",
            &bw,
            &|c| c.median,
            true,
            false,
        ));
    }
    // Latency percentiles of each job whose metric is latency.
    for job in jobs
        .iter()
        .filter(|j| j.metric == suite::Metric::MeanLatency)
    {
        let names = ["p50", "p90", "p99", "p99.9"];
        panels.push(chart::Panel {
            title: format!("{}: latency percentiles (lower is better)", job.name),
            unit: "µs".into(),
            categories: names.iter().map(|s| s.to_string()).collect(),
            series: variants
                .iter()
                .map(|&v| chart::Series {
                    name: v.name().into(),
                    values: names
                        .iter()
                        .enumerate()
                        .map(|(i, _)| get(job, v).map(|c| c.figures.latency.percentiles()[i].1))
                        .collect(),
                })
                .collect(),
            spread: Vec::new(),
            log_scale: true,
        });
    }
    let subtitle = format!(
        "QEMU emulated NVMe ({:?} backend), TCG -cpu {}, {} vCPUs, {} MiB ({} huge pages), iommu {}; {} rounds of {} s (+{} s warm-up); guest {}",
        args.backend,
        args.cpu,
        args.smp,
        args.mem,
        args.hugepages,
        args.iommu.name(),
        args.repeat,
        args.runtime,
        args.warmup,
        output.conditions.get("kernel").map_or("?", |s| s.as_str())
    );
    chart::render(
        "nvme-bench: our userspace driver vs the kernel nvme driver (fio)",
        &subtitle,
        &panels,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn args(argv: &[&str]) -> BenchArgs {
        Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied()))
            .expect("valid arguments")
            .bench
    }

    #[test]
    fn the_kernel_gets_its_best_by_default_and_the_conditions_say_so() {
        let a = args(&[]);
        assert_eq!((a.iommu, a.cpu.as_str()), (IommuArg::Pt, DEFAULT_CPU));
        let strict = args(&["--iommu", "strict", "--cpu", "qemu64"]);
        assert_eq!(strict.iommu, IommuArg::Strict);
        let warm = tools_common::bench::Report {
            label: "ours|cache-randread-4k-warm|1".into(),
            cache: Some(tools_common::bench::CacheReport {
                readahead_max_pages: 32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let guest = format!(
            "@@kernel 6.1.0\n@@read_ahead_kb 8192\n@@readahead_max_pages 2048\n\
             @@iommu_domain Passthrough\n@@queues 2/0/2 default/read/poll queues\n{}\n",
            serde_json::to_string(&warm).expect("serializes")
        );
        let output = results::parse(&guest);
        assert_eq!(output.ours.len(), 1, "{:?}", output.failures);
        assert_eq!(ours_readahead(&output), Some(2048));
        let c = conditions(
            &a,
            &output,
            Duration::from_secs(60),
            2,
            ("QEMU emulator version 7.2.22", "linux-image-6.1.0-57-amd64"),
        );
        assert_eq!(c["qemu"], "QEMU emulator version 7.2.22");
        assert_eq!(c["kernel_package"], "linux-image-6.1.0-57-amd64");
        assert_eq!(c["iommu"], "pt");
        assert_eq!(c["cpu"], DEFAULT_CPU);
        assert_eq!(c["kernel_read_ahead_kb"], 8192);
        assert_eq!(c["ours_readahead_max_pages"], 2048);
        assert_eq!(c["namespaces"][1]["lba_size"], 4096);
        assert_eq!(c["guest"]["iommu_domain"], "Passthrough");
        let h = header(&strict, &output, Duration::from_secs(60));
        for part in [
            "-cpu qemu64",
            "iommu strict (Passthrough)",
            "kernel read_ahead_kb 8192, ours readahead max 2048 pages (8192 KiB)",
            "2/0/2 default/read/poll queues",
        ] {
            assert!(h.contains(part), "{part} missing in {h}");
        }
        // The front ends' boot alone: no raw-boot facts, no question marks.
        let fe_only = results::parse(
            "@@frontend_kernel 6.12.95+deb12-amd64\n@@frontend_queues 2/0/2 default/read/poll queues\n",
        );
        let h = header(&strict, &fe_only, Duration::from_secs(60));
        assert!(h.contains("the raw path's boot did not run"), "{h}");
        assert!(
            h.contains("front ends' boot: guest 6.12.95+deb12-amd64, kernel nvme queues 2/0/2"),
            "{h}"
        );
        assert!(
            !h.contains("guest ?") && !h.contains("(?)") && !h.contains("queues ?"),
            "{h}"
        );
    }

    #[test]
    fn plans_reject_what_cannot_run() {
        assert!(args(&["--jobs", "nope"]).plans().is_err());
        assert!(args(&["--variants", "nope"]).plans().is_err());
        assert!(args(&["--repeat", "0"]).plans().is_err());
        // The default: the main boot, then the front ends' (6.12).
        let boots = |a: &[&str]| -> Vec<Boot> {
            args(a)
                .plans()
                .expect("plans")
                .iter()
                .map(|p| p.boot)
                .collect()
        };
        assert_eq!(boots(&[]), [Boot::Main, Boot::Frontend]);
        assert_eq!(boots(&["--no-frontends"]), [Boot::Main]);
        assert_eq!(boots(&["--variants", "vhost,qsd-vhost"]), [Boot::Frontend]);
        assert_eq!(boots(&["--jobs", "cache-randread-4k-warm"]), [Boot::Main]);
        let ci = args(&[
            "--repeat",
            "1",
            "--runtime",
            "0.5",
            "--warmup",
            "0",
            "--jobs",
            "randread-4k-qd1,cache-randread-4k-warm",
        ])
        .plans()
        .expect("the CI's subset");
        assert_eq!(ci.len(), 2);
        assert!(ci.iter().all(|p| p.namespaces() == 1));
        let fe = args(&[]).vm_config(&ci[1], std::path::Path::new("/tmp"));
        assert_eq!(fe.kernel, Some(Suite::Backports));
        assert_eq!(fe.ship_modules, ["ublk_drv"]);
        assert_eq!(fe.host_tools, ["fio", "qemu-storage-daemon"]);
        let main = args(&[]).vm_config(&ci[0], std::path::Path::new("/tmp"));
        assert_eq!(main.kernel, None);
        assert!(main.ship_modules.is_empty());
        assert!(
            args(&[
                "--jobs",
                "cache-read-128k-cold-zc",
                "--variants",
                "io_uring"
            ])
            .plans()
            .is_err()
        );
    }
}

//! `cargo xtask bench`: the main job. One guest boot runs the suite
//! ([`suite`]) on the same emulated controller with our driver (vfio-pci)
//! and with the kernel's nvme driver under fio, in rounds; the host then
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
use results::{Cell, Output};
use suite::{JOBS, Job, Plan, Timing, Variant};

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
    /// Variants to run, comma-separated: ours, io_uring, io_uring-polled,
    /// libaio, kernel-cache (default: all).
    #[arg(long, value_delimiter = ',')]
    variants: Vec<String>,
    /// Guest vCPUs (both sides share the guest).
    #[arg(long, default_value_t = 2)]
    smp: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    mem: u32,
    /// Output folder.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// List the jobs and variants, then exit.
    #[arg(long)]
    list: bool,
}

impl BenchArgs {
    fn plan(&self) -> std::result::Result<Plan, String> {
        let jobs = if self.jobs.is_empty() {
            JOBS.to_vec()
        } else {
            self.jobs
                .iter()
                .map(|n| Job::by_name(n).ok_or_else(|| format!("no job {n:?} (see --list)")))
                .collect::<std::result::Result<_, _>>()?
        };
        let variants = if self.variants.is_empty() {
            Variant::ALL.to_vec()
        } else {
            self.variants
                .iter()
                .map(|n| {
                    Variant::from_name(n).ok_or_else(|| format!("no variant {n:?} (see --list)"))
                })
                .collect::<std::result::Result<_, _>>()?
        };
        if self.repeat == 0 {
            return Err("--repeat must be at least 1".into());
        }
        let valid = |s: f64, min: f64| s.is_finite() && s >= min;
        if !valid(self.runtime, 0.1) || !valid(self.warmup, 0.0) {
            return Err("--runtime must be at least 0.1 s and --warmup not negative".into());
        }
        let plan = Plan {
            jobs,
            variants,
            rounds: self.repeat,
            timing: Timing {
                runtime: self.runtime,
                warmup: self.warmup,
            },
            precondition: self.backend == Backend::Image,
        };
        if plan.run_count() == 0 {
            return Err("the chosen jobs and variants make no run".into());
        }
        Ok(plan)
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

pub(crate) fn run(args: BenchArgs) -> Result<ExitCode> {
    if args.list {
        for j in JOBS {
            let vs: Vec<&str> = j.variants().iter().map(|v| v.name()).collect();
            println!("{:<24} {:<8} {}", j.name, j.metric.unit(), vs.join(", "));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let plan = args.plan()?;
    let out_dir = if args.out.is_absolute() {
        args.out.clone()
    } else {
        workspace_root().join(&args.out)
    };
    std::fs::create_dir_all(&out_dir)?;
    let estimate = plan.estimate_seconds();
    eprintln!(
        "bench: {} runs ({} rounds), about {:.0} min in the guest; backend {:?}",
        plan.run_count(),
        plan.rounds,
        estimate / 60.0,
        args.backend
    );
    let config = VmConfig {
        disks: vec![match args.backend {
            Backend::Image => NsDisk::Temp,
            Backend::Null => NsDisk::Null,
        }],
        disk_size: 2 * suite::RANGE,
        mem_mib: args.mem,
        smp: args.smp,
        // The kernel driver's modules are loaded and own the controller at
        // boot; the script moves it to vfio-pci for our side and back.
        driver: GuestDriver::Kernel,
        host_tools: if plan.has_kernel_side() {
            vec!["fio".into()]
        } else {
            Vec::new()
        },
        timeout: Duration::from_secs_f64(estimate * 2.0 + 180.0),
        output: OutputMode::StreamStderr,
        console_log: Some(out_dir.join("console.log")),
        ..VmConfig::default()
    };
    let started = Instant::now();
    let run = config.run(&["sh".into(), "-c".into(), plan.script()])?;
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&run.stdout);
    std::fs::write(out_dir.join("guest-stdout.txt"), stdout.as_bytes())?;
    let output = results::parse(&stdout);
    let cells = results::cells(&output.runs, &plan.jobs);
    let table = results::table(&cells, &plan.jobs);
    let targets = results::targets(&cells);

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
    let conditions = json!({
        "backend": args.backend,
        "runtime": args.runtime,
        "warmup": args.warmup,
        "rounds": args.repeat,
        "smp": args.smp,
        "mem_mib": args.mem,
        "accel": "tcg",
        "qemu": run.qemu_version,
        "kernel_package": run.kernel_package,
        "host_cpu": std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        }),
        "host_cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "guest": output.conditions,
        "wall_seconds": elapsed.as_secs_f64(),
    });
    std::fs::write(out_dir.join("table.txt"), &table)?;
    let doc = json!({
        "conditions": conditions,
        "jobs": plan.jobs,
        "summary": cells,
        "targets": targets,
        "runs": output.runs,
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
        render_chart(&cells, &plan.jobs, &args, &output),
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
    let expected = plan.run_count();
    if output.runs.len() != expected {
        eprintln!(
            "bench: {} of {expected} runs reported results",
            output.runs.len()
        );
        failed = true;
    }
    match run.exit {
        GuestExit::Exited(0) => {}
        other => {
            eprintln!(
                "bench: the guest did not finish cleanly ({other:?}); console log: {}",
                run.console_log.display()
            );
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn render_chart(cells: &[Cell], jobs: &[Job], args: &BenchArgs, output: &Output) -> String {
    let variants: Vec<Variant> = Variant::ALL
        .into_iter()
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
        "QEMU emulated NVMe ({:?} backend), TCG, {} vCPUs, {} MiB; {} rounds of {} s (+{} s warm-up); guest {}",
        args.backend,
        args.smp,
        args.mem,
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

//! The comparison suite: which jobs run, on which side, with which
//! command line, and the guest script that runs them all in one boot.
//!
//! Every job has our command (nvme-bench through the userspace driver, the
//! controller bound to vfio-pci) and its kernel counterparts (fio against
//! /dev/nvme0n1, the controller bound to the kernel's nvme driver with one
//! poll queue). The script runs the suite in rounds; each round runs every
//! job once on our side, rebinds the controller to nvme, runs every kernel
//! variant once, and rebinds it back, so slow drift of the host affects
//! both sides alike and the repeats show the spread.

use std::fmt::Write as _;

/// The controller's PCI address in the guest (the harness pins it).
pub(crate) const DEVICE: &str = "0000:00:03.0";
/// The guest block device of namespace 1 under the kernel driver.
const BLOCK_DEVICE: &str = "/dev/nvme0n1";
/// Bytes of the namespace the device jobs use (from LBA 0).
pub(crate) const RANGE: u64 = 1 << 30;
/// Bytes the warm-cache job reads at random (cached whole first; fits our
/// cache budget and the guest's memory).
const WARM_RANGE: u64 = 128 << 20;
/// Our page cache budget in the cache jobs.
const CACHE_BUDGET: &str = "256M";

/// Who runs a job (serialized by [`Variant::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(into = "&'static str")]
pub(crate) enum Variant {
    /// nvme-bench through our driver (raw queue pairs, or our page cache).
    Ours,
    /// fio, io_uring, interrupts.
    IoUring,
    /// fio, io_uring with hipri on the poll queue (no interrupts).
    IoUringPolled,
    /// fio, libaio, interrupts.
    Libaio,
    /// fio, psync, buffered: the kernel's page cache.
    KernelCache,
}

impl From<Variant> for &'static str {
    fn from(v: Variant) -> Self {
        v.name()
    }
}

impl Variant {
    /// Every variant, in table order.
    pub(crate) const ALL: [Variant; 5] = [
        Variant::Ours,
        Variant::IoUring,
        Variant::IoUringPolled,
        Variant::Libaio,
        Variant::KernelCache,
    ];

    /// Column heading and label in the results.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Variant::Ours => "ours",
            Variant::IoUring => "io_uring",
            Variant::IoUringPolled => "io_uring-polled",
            Variant::Libaio => "libaio",
            Variant::KernelCache => "kernel-cache",
        }
    }

    pub(crate) fn from_name(s: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|v| v.name() == s)
    }

    /// The kernel side.
    pub(crate) fn is_kernel(self) -> bool {
        self != Variant::Ours
    }
}

/// What a job measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) enum Kind {
    /// Direct device I/O at a queue depth.
    Device,
    /// Buffered sequential read of the whole range once, from an empty
    /// cache (readahead).
    CacheCold,
    /// [`Kind::CacheCold`] through zero-copy folio views (our side only:
    /// the data is not copied, as in the raw jobs).
    CacheColdViews,
    /// Buffered random reads of a range read into the cache first.
    CacheWarm,
}

/// The figure a job is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) enum Metric {
    /// I/Os per second, higher is better.
    Iops,
    /// MB/s (10^6 bytes), higher is better.
    Mbps,
    /// Mean latency in µs, lower is better.
    MeanLatency,
}

impl Metric {
    pub(crate) fn unit(self) -> &'static str {
        match self {
            Metric::Iops => "IOPS",
            Metric::Mbps => "MB/s",
            Metric::MeanLatency => "mean µs",
        }
    }

    pub(crate) fn higher_is_better(self) -> bool {
        self != Metric::MeanLatency
    }
}

/// One job of the suite.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Job {
    /// Name used on the command line and in the results.
    pub name: &'static str,
    pub kind: Kind,
    /// fio's rw= / nvme-bench's -w.
    pub rw: &'static str,
    /// Bytes per I/O.
    pub bs: u64,
    /// Queue depth (1 for the buffered jobs: one synchronous call at a time).
    pub qd: u32,
    pub metric: Metric,
}

/// The standard suite.
pub(crate) const JOBS: [Job; 8] = [
    Job {
        name: "randread-4k-qd1",
        kind: Kind::Device,
        rw: "randread",
        bs: 4096,
        qd: 1,
        metric: Metric::MeanLatency,
    },
    Job {
        name: "randread-4k-qd32",
        kind: Kind::Device,
        rw: "randread",
        bs: 4096,
        qd: 32,
        metric: Metric::Iops,
    },
    Job {
        name: "randwrite-4k-qd32",
        kind: Kind::Device,
        rw: "randwrite",
        bs: 4096,
        qd: 32,
        metric: Metric::Iops,
    },
    Job {
        name: "read-128k-qd8",
        kind: Kind::Device,
        rw: "read",
        bs: 128 << 10,
        qd: 8,
        metric: Metric::Mbps,
    },
    Job {
        name: "write-128k-qd8",
        kind: Kind::Device,
        rw: "write",
        bs: 128 << 10,
        qd: 8,
        metric: Metric::Mbps,
    },
    Job {
        name: "cache-read-128k-cold",
        kind: Kind::CacheCold,
        rw: "read",
        bs: 128 << 10,
        qd: 1,
        metric: Metric::Mbps,
    },
    Job {
        name: "cache-read-128k-cold-zc",
        kind: Kind::CacheColdViews,
        rw: "read",
        bs: 128 << 10,
        qd: 1,
        metric: Metric::Mbps,
    },
    Job {
        name: "cache-randread-4k-warm",
        kind: Kind::CacheWarm,
        rw: "randread",
        bs: 4096,
        qd: 1,
        metric: Metric::Iops,
    },
];

impl Job {
    pub(crate) fn by_name(name: &str) -> Option<Job> {
        JOBS.into_iter().find(|j| j.name == name)
    }

    /// The variants that run this job.
    pub(crate) fn variants(&self) -> &'static [Variant] {
        match self.kind {
            Kind::Device => &[
                Variant::Ours,
                Variant::IoUring,
                Variant::IoUringPolled,
                Variant::Libaio,
            ],
            Kind::CacheCold | Kind::CacheWarm => &[Variant::Ours, Variant::KernelCache],
            Kind::CacheColdViews => &[Variant::Ours],
        }
    }
}

/// How long each run lasts.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Timing {
    /// Measured seconds of a time-based run.
    pub runtime: f64,
    /// Warm-up seconds before it, not measured.
    pub warmup: f64,
}

/// The label of one run: `variant|job|round`.
pub(crate) fn label(variant: Variant, job: &Job, round: u32) -> String {
    format!("{}|{}|{round}", variant.name(), job.name)
}

/// Splits a label made by [`label`].
pub(crate) fn parse_label(s: &str) -> Option<(Variant, Job, u32)> {
    let mut it = s.split('|');
    let variant = Variant::from_name(it.next()?)?;
    let job = Job::by_name(it.next()?)?;
    let round = it.next()?.parse().ok()?;
    it.next().is_none().then_some((variant, job, round))
}

/// nvme-bench's arguments for our side of `job`.
fn ours_args(job: &Job, t: Timing) -> String {
    match job.kind {
        Kind::Device => format!(
            "-w {} -o {} -q {} -t {} --warmup {} --range-size {RANGE}",
            job.rw, job.bs, job.qd, t.runtime, t.warmup
        ),
        // One pass over the range from an empty cache, no warm-up: the
        // same bytes the kernel side reads.
        Kind::CacheCold | Kind::CacheColdViews => format!(
            "--mode cache --cold -w {} -o {} -n {} --warmup 0 --range-size {RANGE} --cache-size {CACHE_BUDGET}{}",
            job.rw,
            job.bs,
            RANGE / job.bs,
            if job.kind == Kind::CacheColdViews {
                " --zero-copy"
            } else {
                ""
            }
        ),
        Kind::CacheWarm => format!(
            "--mode cache --warm -w {} -o {} -t {} --warmup {} --range-size {WARM_RANGE} --cache-size {CACHE_BUDGET}",
            job.rw, job.bs, t.runtime, t.warmup
        ),
    }
}

/// fio's arguments for a kernel variant of `job` (None: it does not run it).
fn fio_args(job: &Job, variant: Variant, t: Timing) -> Option<String> {
    // fio takes whole units: milliseconds keep fractional seconds.
    let ms = |s: f64| (s * 1000.0).round() as u64;
    let timed = format!(
        "--time_based --runtime={}ms --ramp_time={}ms",
        ms(t.runtime),
        ms(t.warmup)
    );
    let common = format!(
        "--filename={BLOCK_DEVICE} --rw={} --bs={} --randrepeat=0 --norandommap --lat_percentiles=1 \
         --eta=never --output-format=json",
        job.rw, job.bs
    );
    let engine = match (job.kind, variant) {
        (Kind::Device, Variant::IoUring) => {
            "--ioengine=io_uring --fixedbufs=1 --registerfiles=1".to_string()
        }
        (Kind::Device, Variant::IoUringPolled) => {
            "--ioengine=io_uring --hipri=1 --fixedbufs=1 --registerfiles=1".to_string()
        }
        (Kind::Device, Variant::Libaio) => "--ioengine=libaio".to_string(),
        (Kind::CacheCold, Variant::KernelCache) => {
            // One pass over the range; fio drops the range from the page
            // cache first (invalidate=1, BLKFLSBUF on a block device).
            return Some(format!(
                "{common} --ioengine=psync --direct=0 --invalidate=1 --size={RANGE}"
            ));
        }
        (Kind::CacheWarm, Variant::KernelCache) => {
            // The script reads the range in first (dd); fio must not drop it.
            return Some(format!(
                "{common} --ioengine=psync --direct=0 --invalidate=0 --size={WARM_RANGE} {timed}"
            ));
        }
        _ => return None,
    };
    Some(format!(
        "{common} {engine} --direct=1 --iodepth={} --size={RANGE} {timed}",
        job.qd
    ))
}

/// What the guest script runs.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub jobs: Vec<Job>,
    pub variants: Vec<Variant>,
    pub rounds: u32,
    pub timing: Timing,
    /// Write the whole range once before measuring (an image backend:
    /// reads of never-written parts of a sparse file cost less).
    pub precondition: bool,
}

impl Plan {
    /// Runs of one side per round.
    fn runs(&self, kernel: bool) -> impl Iterator<Item = (Job, Variant)> + '_ {
        self.jobs.iter().flat_map(move |job| {
            job.variants()
                .iter()
                .filter(move |v| v.is_kernel() == kernel && self.variants.contains(v))
                .map(move |v| (*job, *v))
        })
    }

    /// Number of runs in the whole plan.
    pub(crate) fn run_count(&self) -> usize {
        (self.runs(false).count() + self.runs(true).count()) * self.rounds as usize
    }

    /// Whether any kernel variant runs (fio is needed in the guest).
    pub(crate) fn has_kernel_side(&self) -> bool {
        self.runs(true).next().is_some()
    }

    /// Rough guest run time in seconds, for the VM's time limit.
    pub(crate) fn estimate_seconds(&self) -> f64 {
        let per_run = self.timing.runtime + self.timing.warmup + 3.0;
        self.run_count() as f64 * per_run + 30.0
    }

    /// The guest shell script. Results go to stdout, one JSON document
    /// per line (nvme-bench's `--json` line, fio's JSON joined into one
    /// line) or `@@failed LABEL: why`; progress goes to stderr.
    pub(crate) fn script(&self) -> String {
        let mut s = format!("DEV={DEVICE}\n");
        s.push_str(SCRIPT_PRELUDE);
        // Identify needs the controller on vfio-pci.
        let _ = writeln!(s, "to_vfio\nconditions");
        if self.precondition {
            let _ = writeln!(
                s,
                "say 'precondition: writing the {} MiB range once'\n\
                 nvme-bench -w write -o 1M -q 8 -n {} --warmup 0 --range-size {RANGE} > /dev/null 2> /tmp/run.err \
                 || {{ echo \"@@failed precondition: $(tr '\\n' ' ' < /tmp/run.err)\"; exit 1; }}",
                RANGE >> 20,
                RANGE >> 20
            );
        }
        let total = self.run_count();
        let mut n = 0;
        for round in 1..=self.rounds {
            let ours: Vec<_> = self.runs(false).collect();
            if !ours.is_empty() {
                let _ = writeln!(s, "to_vfio");
            }
            for (job, v) in ours {
                n += 1;
                let _ = writeln!(
                    s,
                    "ours '{}' '[{n}/{total}] round {round} {} {}' {}",
                    label(v, &job, round),
                    v.name(),
                    job.name,
                    ours_args(&job, self.timing)
                );
            }
            let kernel: Vec<_> = self.runs(true).collect();
            if !kernel.is_empty() {
                let _ = writeln!(s, "to_nvme");
            }
            for (job, v) in kernel {
                let Some(args) = fio_args(&job, v, self.timing) else {
                    continue;
                };
                n += 1;
                let warm = job.kind == Kind::CacheWarm;
                if warm {
                    // The last close of a block device drops its page
                    // cache: fd 3 keeps it open from the preload through
                    // the measured run.
                    let _ = writeln!(
                        s,
                        "exec 3< {BLOCK_DEVICE}\n\
                         dd if={BLOCK_DEVICE} of=/dev/null bs=1M count={} 2> /dev/null",
                        WARM_RANGE >> 20
                    );
                }
                let _ = writeln!(
                    s,
                    "kern '{}' '[{n}/{total}] round {round} kernel {} {}' {args}",
                    label(v, &job, round),
                    v.name(),
                    job.name,
                );
                if warm {
                    let _ = writeln!(s, "exec 3<&-");
                }
            }
        }
        s.push_str("say done\n");
        s
    }
}

/// Helpers of the guest script: switching drivers and running one job.
const SCRIPT_PRELUDE: &str = r#"
say() { echo "bench: $*" >&2; }
conditions() {
    echo "@@kernel $(uname -r)"
    echo "@@cpus $(grep -c ^processor /proc/cpuinfo)"
    echo "@@mem_kib $(awk '/MemTotal/ {print $2}' /proc/meminfo)"
    echo "@@cmdline $(cat /proc/cmdline)"
    command -v fio > /dev/null && echo "@@fio $(fio --version)"
    nvmectl identify 2> /dev/null | grep -E '^(mn|fr|mdts|nsze|lbaf) ' | sed 's/^/@@identify /'
}
to_vfio() {
    [ -e /sys/bus/pci/drivers/vfio-pci/$DEV ] && return 0
    nvmectl bind $DEV > /dev/null || { echo "@@failed bind: nvmectl bind $DEV"; exit 1; }
}
to_nvme() {
    [ -e /sys/bus/pci/drivers/nvme/$DEV ] && return 0
    echo 1 > /sys/module/nvme/parameters/poll_queues
    nvmectl unbind $DEV > /dev/null || { echo "@@failed bind: nvmectl unbind $DEV"; exit 1; }
    i=0
    while [ ! -b /dev/nvme0n1 ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
    [ -b /dev/nvme0n1 ] || { echo "@@failed bind: no /dev/nvme0n1"; exit 1; }
    [ -n "$QUEUES_SHOWN" ] || { echo "@@queues $(dmesg | grep 'poll queues' | tail -1 | sed 's/.*: //')"; QUEUES_SHOWN=1; }
}
ours() {
    label=$1; what=$2; shift 2
    say "$what"
    if nvme-bench "$@" --json --label "$label" > /tmp/run.out 2> /tmp/run.err; then
        grep '^{' /tmp/run.out
    else
        echo "@@failed $label: $(tr '\n' ' ' < /tmp/run.err)"
    fi
}
kern() {
    label=$1; what=$2; shift 2
    say "$what"
    if fio --name="$label" "$@" --output=/tmp/run.json > /tmp/run.err 2>&1; then
        tr -d '\n' < /tmp/run.json; echo
    else
        echo "@@failed $label: $(tr '\n' ' ' < /tmp/run.err)"
    fi
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            jobs: JOBS.to_vec(),
            variants: Variant::ALL.to_vec(),
            rounds: 3,
            timing: Timing {
                runtime: 3.0,
                warmup: 1.0,
            },
            precondition: true,
        }
    }

    #[test]
    fn labels_round_trip() {
        for job in JOBS {
            for &v in job.variants() {
                assert_eq!(
                    parse_label(&label(v, &job, 2)).map(|(v, j, r)| (v, j.name, r)),
                    Some((v, job.name, 2))
                );
            }
        }
        assert!(parse_label("ours|nope|1").is_none());
        assert!(parse_label("ours|randread-4k-qd1|x").is_none());
        assert!(parse_label("ours|randread-4k-qd1|1|2").is_none());
    }

    #[test]
    fn the_default_suite_runs_every_variant_each_round() {
        let p = plan();
        // 5 device jobs × 4 variants + 2 cache jobs × 2 variants + the
        // zero-copy job, 3 rounds.
        assert_eq!(p.run_count(), (5 * 4 + 2 * 2 + 1) * 3);
        let s = p.script();
        assert_eq!(s.matches("\nours '").count(), 8 * 3);
        assert_eq!(s.matches(" --zero-copy\n").count(), 3);
        assert_eq!(s.matches("\nkern '").count(), 17 * 3);
        assert_eq!(s.matches("to_nvme\n").count(), 3);
        assert!(s.contains("--hipri=1"));
        assert!(s.contains("'ours|cache-read-128k-cold|1'"));
        assert!(s.contains("-n 8192 --warmup 0 --range-size 1073741824"));
        // The estimate keeps the default suite inside ten minutes.
        assert!(p.estimate_seconds() < 600.0, "{}", p.estimate_seconds());
    }

    #[test]
    fn a_subset_runs_only_what_was_chosen() {
        let p = Plan {
            jobs: vec![JOBS[0]],
            variants: vec![Variant::Ours],
            rounds: 1,
            precondition: false,
            ..plan()
        };
        assert_eq!(p.run_count(), 1);
        assert!(!p.has_kernel_side());
        let s = p.script();
        assert!(!s.contains("\nkern '") && !s.contains("to_nvme\n"));
    }
}

//! The comparison suite: which jobs run, on which side, with which
//! command line, and the guest script that runs them all in one boot.
//!
//! Every job has our command (nvme-bench through the userspace driver, the
//! controller bound to vfio-pci) and its kernel counterparts (fio against
//! the namespace's block device, the controller bound to the kernel's nvme
//! driver with a poll queue per vCPU). The script runs the suite in
//! rounds; each round runs every job once on our side, rebinds the
//! controller to nvme, runs every kernel variant once, and rebinds it
//! back, so slow drift of the host affects both sides alike and the
//! repeats show the spread.
//!
//! The suite is two tables: [`JOBS`] (what is measured) and [`VARIANTS`]
//! (who measures it, in which boot, and on which jobs). Adding a job or a
//! variant is one entry in one of them. Each boot ([`Boot`]) has its own
//! [`Plan`] and script: the main one, and the front ends' (6.12: ublk and
//! vhost-user, each daemon started for its run, with their peers).

use std::fmt::Write as _;

/// The controller's PCI address in the guest (the harness pins it).
pub(crate) const DEVICE: &str = "0000:00:03.0";
/// nvme-ublk's block device in the front-end boot (the script asks for id 0).
const UBLK_DEVICE: &str = "/dev/ublkb0";
/// Bytes of the namespace the device jobs use (from LBA 0).
pub(crate) const RANGE: u64 = 1 << 30;
/// Bytes the warm-cache job reads at random (cached whole first; fits our
/// cache budget and the guest's memory).
const WARM_RANGE: u64 = 128 << 20;
/// Our page cache budget in the cache jobs (a macro, for `concat!`).
macro_rules! cache_budget {
    () => {
        "256M"
    };
}
const CACHE_BUDGET: &str = cache_budget!();
/// The LBA size of each namespace, nsid 1 first: the device jobs choose
/// theirs by [`Job::lba`].
pub(crate) const NAMESPACE_LBAS: [u32; 2] = [512, 4096];
/// The block device holding the cache jobs' range (namespace 1), whose
/// `read_ahead_kb` the script sets to our readahead maximum.
const CACHE_NS: u32 = 1;

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

const DEVICE_KINDS: &[Kind] = &[Kind::Device];
const ALL_KINDS: &[Kind] = &[
    Kind::Device,
    Kind::CacheCold,
    Kind::CacheColdViews,
    Kind::CacheWarm,
];

/// Which guest boot runs a variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Boot {
    /// The suite's boot, on the harness's default guest kernel (6.1).
    Main,
    /// The front ends' boot (issues 11 and 12): the 6.12 guest kernel,
    /// which has `ublk_drv` (Debian's 6.1 has none), with the ublk and
    /// vhost-user rows and their peers (the kernel's nvme driver under
    /// fio, qemu-storage-daemon, our raw driver) measured in the same
    /// boot.
    Frontend,
}

/// Which side runs a variant, with what options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// nvme-bench through our driver, with these extra arguments (a
    /// second ours-side figure beside the main one is a variant with its
    /// own arguments; the table compares only [`Variant::OURS`] with the
    /// kernel).
    Ours(&'static str),
    /// fio through the kernel's nvme driver, with these engine options.
    Kernel(&'static str),
    /// nvme-bench `--vhost-user` (libblkio's client, polled queues)
    /// against nvme-vhost on our driver, started for the run with these
    /// extra arguments.
    Vhost(&'static str),
    /// nvme-bench `--vhost-user` against qemu-storage-daemon's
    /// vhost-user-blk export of the namespace's block device under the
    /// kernel's nvme driver ([`QSD_BLOCKDEV`]), its iothread with these
    /// extra options.
    QsdVhost(&'static str),
    /// fio with these engine options on `/dev/ublkbN`, served by nvme-ublk
    /// on our driver, started for the run: with a ublk queue per vCPU
    /// (fio's requests are served on the CPU that submits them), or split
    /// ([`UblkPlacement::Split`]).
    /// The last field: nvme-ublk's own extra arguments.
    Ublk(&'static str, UblkPlacement, &'static str),
}

/// Where nvme-ublk's queue threads run against fio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UblkPlacement {
    /// A ublk queue per vCPU, each thread on its CPU (libublk's affinity):
    /// fio's requests are served on the CPU that submitted them.
    PerCpu,
    /// One ublk queue, its thread moved to CPU 0 after the start, fio on
    /// CPU 1 (as the vhost-user rows place server and client).
    Split,
}

/// qemu-storage-daemon's options besides the block device and the socket:
/// io_uring, O_DIRECT, the export served by an iothread of its own.
pub(crate) const QSD_BLOCKDEV: &str = "aio=io_uring,cache.direct=on";

/// fio's io_uring with registered buffers and files.
const IO_URING: &str = "--ioengine=io_uring --fixedbufs=1 --registerfiles=1";
/// The same, polled (`--hipri`: the nvme driver's poll queues).
const IO_URING_POLLED: &str = "--ioengine=io_uring --hipri=1 --fixedbufs=1 --registerfiles=1";

/// One way of running jobs: ours (nvme-bench) or a kernel configuration
/// under fio.
#[derive(Debug)]
pub(crate) struct VariantDef {
    /// Column heading and label in the results.
    pub name: &'static str,
    pub side: Side,
    /// The boot it runs in.
    pub boot: Boot,
    /// The job kinds it runs.
    pub kinds: &'static [Kind],
    /// Batched submission and completion (`iodepth_batch_submit`,
    /// `iodepth_batch_complete_min/max`, sized from the job's queue
    /// depth): only on jobs deeper than 1, where it differs from unbatched.
    pub batched: bool,
    /// Runs on every job of its kinds; otherwise only on the jobs marked
    /// [`Job::all_variants`] (the kernel's best variants run everywhere,
    /// the others where the full comparison is shown).
    pub always: bool,
    /// In the default run; otherwise only when `--variants` names it (a
    /// configuration that has never been the kernel's best here, kept to
    /// check that it still is not).
    pub by_default: bool,
    /// Only these jobs (by name); empty: every job of its kinds.
    pub only: &'static [&'static str],
}

/// The jobs the vhost-user variants run.
const VHOST_JOBS: &[&str] = &["randread-4k-qd1", "randread-4k-qd32"];
/// The jobs of the ublk rows and their kernel peer (issue 12's targets:
/// 4K random reads at QD32, 128K sequential reads; QD1 latency).
const UBLK_JOBS: &[&str] = &["randread-4k-qd1", "randread-4k-qd32", "read-128k-qd8"];
/// QD1 only: the latency floors of the front-end boot.
const QD1_ONLY: &[&str] = &["randread-4k-qd1"];

/// A variant of the main boot on the device jobs.
const fn main_device(
    name: &'static str,
    side: Side,
    batched: bool,
    always: bool,
    by_default: bool,
) -> VariantDef {
    VariantDef {
        name,
        side,
        boot: Boot::Main,
        kinds: DEVICE_KINDS,
        batched,
        always,
        by_default,
        only: &[],
    }
}

/// A variant of the front-end boot on `only`.
const fn frontend(
    name: &'static str,
    side: Side,
    batched: bool,
    by_default: bool,
    only: &'static [&'static str],
) -> VariantDef {
    VariantDef {
        name,
        side,
        boot: Boot::Frontend,
        kinds: DEVICE_KINDS,
        batched,
        always: true,
        by_default,
        only,
    }
}

/// Every variant, in table order; ours first.
pub(crate) const VARIANTS: &[VariantDef] = &[
    VariantDef {
        name: "ours",
        side: Side::Ours(""),
        boot: Boot::Main,
        kinds: ALL_KINDS,
        batched: false,
        always: true,
        by_default: true,
        only: &[],
    },
    // The floor loop (nvme-bench --floor): what the device and the guest
    // allow any driver, beside every raw job.
    main_device("floor", Side::Ours("--floor"), false, true, true),
    // The raw 128K read through as many registered buffers as the page
    // cache's budget, handed out round robin: the cold page-cache reads
    // stream through that much memory, the plain raw job through eight
    // buffers (1 MiB), and on null-co QEMU zero-fills every read's buffers.
    VariantDef {
        only: &["read-128k-qd8"],
        ..main_device(
            "ours-footprint",
            Side::Ours(concat!("--buffer-pool ", cache_budget!())),
            false,
            true,
            true,
        )
    },
    // The full path with ownership-passing buffers (`IoQPair::submit`
    // with a `DmaBuffer`) instead of registered ones: what a caller that
    // cannot register its buffers gets. Only when `--variants` names it.
    main_device(
        "ours-owned",
        Side::Ours("--owned-buffers"),
        false,
        true,
        false,
    ),
    main_device("io_uring", Side::Kernel(IO_URING), false, false, true),
    main_device("io_uring-batch", Side::Kernel(IO_URING), true, false, true),
    main_device(
        "io_uring-polled",
        Side::Kernel(IO_URING_POLLED),
        false,
        true,
        true,
    ),
    main_device(
        "io_uring-polled-batch",
        Side::Kernel(IO_URING_POLLED),
        true,
        true,
        true,
    ),
    main_device(
        "libaio",
        Side::Kernel("--ioengine=libaio"),
        false,
        false,
        false,
    ),
    VariantDef {
        name: "kernel-cache",
        side: Side::Kernel("--ioengine=psync"),
        boot: Boot::Main,
        kinds: &[Kind::CacheCold, Kind::CacheWarm],
        batched: false,
        always: true,
        by_default: true,
        only: &[],
    },
    VariantDef {
        name: "kernel-cache-mmap",
        side: Side::Kernel("--ioengine=mmap"),
        boot: Boot::Main,
        kinds: &[Kind::CacheWarm],
        batched: false,
        always: true,
        by_default: true,
        only: &[],
    },
    // The front-end boot (6.12). Our raw driver at QD1, polled and on its
    // interrupt: the reference the vhost-user and ublk latencies are read
    // against.
    frontend("fe-ours", Side::Ours(""), false, true, QD1_ONLY),
    frontend(
        "fe-ours-irq",
        Side::Ours("--interrupts"),
        false,
        false,
        QD1_ONLY,
    ),
    // Issue 12: fio on /dev/ublkb0 (nvme-ublk) against fio on the kernel
    // nvme driver's /dev/nvme0n1 at its best (poll queues, io_uring
    // polled, batched or not), same jobs, same boot. ublk itself is
    // interrupt-driven in the kernel (no polled I/O): io_uring, batched
    // where the depth allows. The daemon's one queue thread on a vCPU of
    // its own, fio on the other (split): on a quiet host the per-CPU
    // layout, whose polling thread shares fio's CPU, made about half of
    // what split does (docs/UBLK.md), so split is the default and per-CPU
    // runs on request.
    frontend(
        "ublk",
        Side::Ublk(IO_URING, UblkPlacement::Split, ""),
        false,
        true,
        QD1_ONLY,
    ),
    frontend(
        "ublk-batch",
        Side::Ublk(IO_URING, UblkPlacement::Split, ""),
        true,
        true,
        UBLK_JOBS,
    ),
    frontend(
        "ublk-percpu",
        Side::Ublk(IO_URING, UblkPlacement::PerCpu, ""),
        false,
        false,
        QD1_ONLY,
    ),
    frontend(
        "ublk-percpu-batch",
        Side::Ublk(IO_URING, UblkPlacement::PerCpu, ""),
        true,
        false,
        UBLK_JOBS,
    ),
    // The floor of the ublk crossing: nvme-ublk completing every request
    // at once without the device (`--null-io`), same jobs, same fio: what
    // fio -> ublk_drv -> the daemon's thread -> commit -> completion costs
    // with no NVMe command (the kernel's copies included).
    frontend(
        "ublk-null",
        Side::Ublk(IO_URING, UblkPlacement::Split, "--null-io"),
        false,
        true,
        QD1_ONLY,
    ),
    frontend(
        "ublk-null-batch",
        Side::Ublk(IO_URING, UblkPlacement::Split, "--null-io"),
        true,
        true,
        UBLK_JOBS,
    ),
    // nvme-ublk's wait for NVMe completions, on request: asleep on the
    // queue's interrupt, or polling for 500 µs before sleeping on it (the
    // rows above poll, entering the kernel every turn for new requests).
    frontend(
        "ublk-irq",
        Side::Ublk(IO_URING, UblkPlacement::Split, "--interrupts"),
        false,
        false,
        QD1_ONLY,
    ),
    frontend(
        "ublk-irq-batch",
        Side::Ublk(IO_URING, UblkPlacement::Split, "--interrupts"),
        true,
        false,
        UBLK_JOBS,
    ),
    frontend(
        "ublk-spin",
        Side::Ublk(IO_URING, UblkPlacement::Split, "--interrupts --spin-us 500"),
        false,
        false,
        QD1_ONLY,
    ),
    frontend(
        "ublk-spin-batch",
        Side::Ublk(IO_URING, UblkPlacement::Split, "--interrupts --spin-us 500"),
        true,
        false,
        UBLK_JOBS,
    ),
    frontend(
        "fe-io_uring-polled",
        Side::Kernel(IO_URING_POLLED),
        false,
        true,
        UBLK_JOBS,
    ),
    frontend(
        "fe-io_uring-polled-batch",
        Side::Kernel(IO_URING_POLLED),
        true,
        true,
        UBLK_JOBS,
    ),
    // Issue 11: the same client (nvme-bench --vhost-user, libblkio, polled
    // queues) against our vhost-user-blk target, polling (`--poll`), in
    // its default interrupt mode, and with hybrid polling (`--spin-us`),
    // and against qemu-storage-daemon over the kernel's nvme driver, its
    // iothread with QEMU's default adaptive polling (up to 32 µs) or a
    // longer window. A daemon is started for each run.
    frontend("vhost", Side::Vhost("--poll"), false, true, VHOST_JOBS),
    frontend("vhost-irq", Side::Vhost(""), false, true, VHOST_JOBS),
    frontend(
        "vhost-spin",
        Side::Vhost("--spin-us 50"),
        false,
        false,
        VHOST_JOBS,
    ),
    frontend(
        "vhost-spin200",
        Side::Vhost("--spin-us 200"),
        false,
        false,
        VHOST_JOBS,
    ),
    // The floor of the vhost-user crossing: nvme-vhost answering every
    // read at once without the device (`--null-io`), in interrupt mode
    // and polling.
    frontend(
        "vhost-null",
        Side::Vhost("--null-io"),
        false,
        true,
        QD1_ONLY,
    ),
    frontend(
        "vhost-null-poll",
        Side::Vhost("--null-io --poll"),
        false,
        false,
        QD1_ONLY,
    ),
    frontend("qsd-vhost", Side::QsdVhost(""), false, true, VHOST_JOBS),
    frontend(
        "qsd-vhost-poll",
        Side::QsdVhost(",poll-max-ns=200000"),
        false,
        false,
        VHOST_JOBS,
    ),
];

/// A variant: an entry of [`VARIANTS`] (serialized by its name).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Variant(usize);

impl std::fmt::Debug for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Variant {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl Variant {
    /// Our side.
    pub(crate) const OURS: Variant = Variant(0);
    /// The floor loop (ours, `--floor`).
    pub(crate) const FLOOR: Variant = Variant(1);
    /// Ours over a buffer footprint as large as the page cache's.
    pub(crate) const FOOTPRINT: Variant = Variant(2);

    /// Every variant, in table order.
    pub(crate) fn all() -> impl Iterator<Item = Variant> {
        (0..VARIANTS.len()).map(Variant)
    }

    /// The variants of the default run.
    pub(crate) fn defaults() -> impl Iterator<Item = Variant> {
        Variant::all().filter(|v| v.def().by_default)
    }

    pub(crate) fn def(self) -> &'static VariantDef {
        &VARIANTS[self.0]
    }

    /// Column heading and label in the results.
    pub(crate) fn name(self) -> &'static str {
        self.def().name
    }

    pub(crate) fn from_name(s: &str) -> Option<Variant> {
        Variant::all().find(|v| v.name() == s)
    }

    /// The kernel side of the main boot (fio on the nvme driver), which
    /// the table compares ours with.
    pub(crate) fn is_kernel(self) -> bool {
        matches!(self.def().side, Side::Kernel(_)) && self.boot() == Boot::Main
    }

    /// fio on the kernel's nvme driver, in either boot.
    pub(crate) fn is_fio_on_nvme(self) -> bool {
        matches!(self.def().side, Side::Kernel(_))
    }

    /// The boot it runs in.
    pub(crate) fn boot(self) -> Boot {
        self.def().boot
    }

    /// Runs with the controller on the kernel's nvme driver.
    pub(crate) fn on_kernel_driver(self) -> bool {
        matches!(self.def().side, Side::Kernel(_) | Side::QsdVhost(_))
    }

    /// A vhost-user client run (nvme-bench `--vhost-user`).
    pub(crate) fn is_vhost(self) -> bool {
        matches!(self.def().side, Side::Vhost(_) | Side::QsdVhost(_))
    }

    /// fio on nvme-ublk's block device.
    pub(crate) fn is_ublk(self) -> bool {
        matches!(self.def().side, Side::Ublk(..))
    }

    /// nvme-ublk's no-device floor (`--null-io`): not a ublk row to judge
    /// the targets by.
    pub(crate) fn is_ublk_null(self) -> bool {
        matches!(self.def().side, Side::Ublk(_, _, daemon) if daemon.contains("--null-io"))
    }

    /// Whether this variant runs `job`.
    pub(crate) fn runs(self, job: &Job) -> bool {
        let d = self.def();
        d.kinds.contains(&job.kind)
            && (d.always || job.all_variants)
            && (!d.batched || job.qd > 1)
            && (d.only.is_empty() || d.only.contains(&job.name))
    }
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
    /// Queue depth per thread (1 for the buffered jobs: one synchronous
    /// call at a time).
    pub qd: u32,
    /// Threads, each with its own queue pair on its own vCPU (ours:
    /// nvme-bench's core mask; fio: numjobs pinned one per CPU, reported
    /// as a group).
    pub threads: u32,
    /// LBA size of the namespace it runs on (one of [`NAMESPACE_LBAS`]).
    pub lba: u32,
    /// With several threads: each works on its own equal share of the
    /// range (ours: a file per thread, `--files per-thread`; fio: a job
    /// per share), instead of all on the whole range.
    pub disjoint: bool,
    pub metric: Metric,
    /// Run by every variant of its kind, not only those marked
    /// [`VariantDef::always`].
    pub all_variants: bool,
}

impl Job {
    /// A device job on namespace 1 (512-byte LBAs), one thread, every variant.
    const fn device(name: &'static str, rw: &'static str, bs: u64, qd: u32, metric: Metric) -> Job {
        Job {
            name,
            kind: Kind::Device,
            rw,
            bs,
            qd,
            threads: 1,
            lba: NAMESPACE_LBAS[0],
            disjoint: false,
            metric,
            all_variants: true,
        }
    }

    /// A buffered job on namespace 1 through the page cache.
    const fn cache(
        name: &'static str,
        kind: Kind,
        rw: &'static str,
        bs: u64,
        metric: Metric,
    ) -> Job {
        Job {
            kind,
            ..Job::device(name, rw, bs, 1, metric)
        }
    }

    /// The same job at `lba`-byte LBAs (its own namespace), with the
    /// kernel's best variants only.
    const fn at_lba(self, name: &'static str, lba: u32) -> Job {
        Job {
            name,
            lba,
            all_variants: false,
            ..self
        }
    }

    /// The same job with each thread on its own share of the range.
    const fn disjoint(self, name: &'static str) -> Job {
        Job {
            name,
            disjoint: true,
            ..self
        }
    }

    /// The same job under another name.
    const fn renamed(self, name: &'static str) -> Job {
        Job { name, ..self }
    }

    /// The same job on `threads` threads, with the kernel's best variants only.
    const fn on_threads(self, name: &'static str, threads: u32) -> Job {
        Job {
            name,
            threads,
            all_variants: false,
            ..self
        }
    }
}

const RANDREAD_4K_QD1: Job =
    Job::device("randread-4k-qd1", "randread", 4096, 1, Metric::MeanLatency);
const RANDREAD_4K_QD32: Job = Job::device("randread-4k-qd32", "randread", 4096, 32, Metric::Iops);
const READ_128K_QD8: Job = Job::device("read-128k-qd8", "read", 128 << 10, 8, Metric::Mbps);

/// The standard suite.
pub(crate) const JOBS: &[Job] = &[
    RANDREAD_4K_QD1,
    RANDREAD_4K_QD32,
    Job::device("randwrite-4k-qd32", "randwrite", 4096, 32, Metric::Iops),
    READ_128K_QD8,
    Job::device("write-128k-qd8", "write", 128 << 10, 8, Metric::Mbps),
    // Deeper than any guest CPU needs on the image backend; on null-co,
    // where the device is not the limit.
    Job {
        qd: 128,
        all_variants: false,
        ..RANDREAD_4K_QD32
    }
    .renamed("randread-4k-qd128"),
    RANDREAD_4K_QD32.on_threads("randread-4k-qd32-2t", 2),
    RANDREAD_4K_QD1.at_lba("randread-4k-qd1-lba4k", 4096),
    RANDREAD_4K_QD32.at_lba("randread-4k-qd32-lba4k", 4096),
    READ_128K_QD8.at_lba("read-128k-qd8-lba4k", 4096),
    Job::cache(
        "cache-read-128k-cold",
        Kind::CacheCold,
        "read",
        128 << 10,
        Metric::Mbps,
    ),
    Job::cache(
        "cache-read-128k-cold-zc",
        Kind::CacheColdViews,
        "read",
        128 << 10,
        Metric::Mbps,
    ),
    CACHE_RANDREAD_4K_WARM,
    // Two threads, each its own file handle: on one file, and on a file of
    // its own each (the kernel: two fio jobs on the whole range, or each on
    // its half).
    CACHE_RANDREAD_4K_WARM.on_threads("cache-randread-4k-warm-2t", 2),
    CACHE_RANDREAD_4K_WARM
        .on_threads("cache-randread-4k-warm-2t", 2)
        .disjoint("cache-randread-4k-warm-2t-files"),
];

const CACHE_RANDREAD_4K_WARM: Job = Job::cache(
    "cache-randread-4k-warm",
    Kind::CacheWarm,
    "randread",
    4096,
    Metric::Iops,
);

impl Job {
    pub(crate) fn by_name(name: &str) -> Option<Job> {
        JOBS.iter().copied().find(|j| j.name == name)
    }

    /// The variants that run this job.
    pub(crate) fn variants(&self) -> Vec<Variant> {
        Variant::all().filter(|v| v.runs(self)).collect()
    }

    /// The namespace it runs on.
    pub(crate) fn nsid(&self) -> u32 {
        nsid_of(self.lba)
    }

    /// The guest block device of its namespace under the kernel driver.
    fn block_device(&self) -> String {
        block_device(self.nsid())
    }
}

/// The namespace with `lba`-byte LBAs (namespace 1 for an unknown size).
fn nsid_of(lba: u32) -> u32 {
    NAMESPACE_LBAS
        .iter()
        .position(|&l| l == lba)
        .map_or(1, |i| i as u32 + 1)
}

fn block_device(nsid: u32) -> String {
    format!("/dev/nvme0n{nsid}")
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

/// nvme-bench's arguments for `variant` (an ours-side one) of `job`.
fn ours_args(job: &Job, variant: Variant, t: Timing) -> String {
    let mut a = match job.kind {
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
    };
    // A vhost-user device is one disk: the daemon picks the namespace.
    if job.nsid() != 1 && !variant.is_vhost() {
        let _ = write!(a, " --nsid {}", job.nsid());
    }
    if variant.is_vhost() && job.threads == 1 {
        // The client on CPU 1, its server on CPU 0 (the script's
        // `taskset`): a polling client would otherwise hold the CPU that
        // the scheduler wakes the server on, until the next tick.
        a.push_str(" -c 0x2");
    }
    if job.threads > 1 {
        // One thread per vCPU, pinned (spdk_nvme_perf's -c).
        let _ = write!(a, " -c {:#x}", core_mask(job.threads));
        if job.disjoint {
            a.push_str(" --files per-thread");
        }
    }
    if let Side::Ours(extra) = variant.def().side
        && !extra.is_empty()
    {
        let _ = write!(a, " {extra}");
    }
    a
}

/// The mask of CPUs 0 to `threads` − 1.
fn core_mask(threads: u32) -> u64 {
    u64::MAX >> (64 - threads.clamp(1, 64))
}

/// fio's batching options for queue depth `qd`: submit and reap in
/// batches of a quarter of the queue, taking up to the whole queue at
/// once, so the queue never drains below three quarters between system
/// calls.
fn batch_args(qd: u32) -> String {
    let batch = (qd / 4).max(1);
    format!(
        "--iodepth_batch_submit={batch} --iodepth_batch_complete_min={batch} \
         --iodepth_batch_complete_max={qd}"
    )
}

/// fio's arguments for a kernel variant of `job` (None: it does not run it).
fn fio_args(job: &Job, variant: Variant, t: Timing) -> Option<String> {
    if !variant.runs(job) {
        return None;
    }
    let (engine, filename) = match variant.def().side {
        Side::Kernel(engine) => (engine, job.block_device()),
        // The script's ublk function asks nvme-ublk for device id 0.
        Side::Ublk(engine, ..) => (engine, UBLK_DEVICE.to_string()),
        _ => return None,
    };
    // fio takes whole units: milliseconds keep fractional seconds.
    let ms = |s: f64| (s * 1000.0).round() as u64;
    let timed = format!(
        "--time_based --runtime={}ms --ramp_time={}ms",
        ms(t.runtime),
        ms(t.warmup)
    );
    let mut a = format!(
        "--filename={} --rw={} --bs={} --randrepeat=0 --norandommap --lat_percentiles=1 \
         --eta=never --output-format=json {engine}",
        filename, job.rw, job.bs
    );
    if variant.def().batched {
        let _ = write!(a, " {}", batch_args(job.qd));
    }
    if job.threads > 1 {
        // One job per vCPU, pinned as ours are, reported as one.
        let _ = write!(
            a,
            " --numjobs={} --group_reporting --cpus_allowed=0-{} --cpus_allowed_policy=split",
            job.threads,
            job.threads - 1
        );
    }
    let _ = match job.kind {
        Kind::Device => write!(a, " --direct=1 --iodepth={} --size={RANGE} {timed}", job.qd),
        // One pass over the range; fio drops the range from the page cache
        // first (invalidate=1, BLKFLSBUF on a block device).
        Kind::CacheCold => write!(a, " --direct=0 --invalidate=1 --size={RANGE}"),
        // The script reads the range in first (dd); fio must not drop it.
        Kind::CacheWarm if job.disjoint && job.threads > 1 => {
            let share = WARM_RANGE / u64::from(job.threads);
            write!(
                a,
                " --direct=0 --invalidate=0 --size={share} --offset_increment={share} {timed}"
            )
        }
        Kind::CacheWarm => write!(a, " --direct=0 --invalidate=0 --size={WARM_RANGE} {timed}"),
        Kind::CacheColdViews => return None,
    };
    Some(a)
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
    /// The boot this plan is the script of: only the chosen variants of
    /// that boot run.
    pub boot: Boot,
}

impl Plan {
    /// Runs of one side per round.
    fn runs(&self, kernel: bool) -> impl Iterator<Item = (Job, Variant)> + '_ {
        self.jobs.iter().flat_map(move |job| {
            job.variants()
                .into_iter()
                .filter(move |v| {
                    v.on_kernel_driver() == kernel
                        && v.boot() == self.boot
                        && self.variants.contains(v)
                })
                .map(move |v| (*job, v))
        })
    }

    /// Number of runs in the whole plan.
    pub(crate) fn run_count(&self) -> usize {
        (self.runs(false).count() + self.runs(true).count()) * self.rounds as usize
    }

    /// Whether any fio run (on the nvme driver or on ublk) is planned
    /// (fio is needed in the guest).
    pub(crate) fn has_kernel_side(&self) -> bool {
        self.runs(false)
            .chain(self.runs(true))
            .any(|(_, v)| v.is_fio_on_nvme() || v.is_ublk())
    }

    /// Whether qemu-storage-daemon runs (it is needed in the guest).
    pub(crate) fn has_qsd(&self) -> bool {
        self.runs(true)
            .any(|(_, v)| matches!(v.def().side, Side::QsdVhost(_)))
    }

    /// Whether nvme-ublk runs (the ublk modules are loaded first).
    pub(crate) fn has_ublk(&self) -> bool {
        self.runs(false).any(|(_, v)| v.is_ublk())
    }

    /// Whether the kernel's page cache runs (its readahead is then set to
    /// ours).
    fn has_kernel_cache(&self) -> bool {
        self.runs(true).any(|(j, _)| j.kind != Kind::Device)
    }

    /// Namespaces the guest needs: up to the highest one a job that runs
    /// uses.
    pub(crate) fn namespaces(&self) -> u32 {
        self.used_namespaces().last().copied().unwrap_or(1)
    }

    /// Namespaces the jobs that run read or write, in order.
    fn used_namespaces(&self) -> Vec<u32> {
        let mut ns: Vec<u32> = self
            .runs(false)
            .chain(self.runs(true))
            .map(|(j, _)| j.nsid())
            .collect();
        ns.sort_unstable();
        ns.dedup();
        ns
    }

    /// Rough guest run time in seconds, for the VM's time limit (about
    /// 0.6 s per run besides its measured and warm-up time, measured over
    /// the default suite; 15 s to write each namespace's range).
    pub(crate) fn estimate_seconds(&self) -> f64 {
        let per_run = self.timing.runtime + self.timing.warmup + 0.6;
        // A daemon started for the run: about 2 s more.
        let daemons = self
            .runs(false)
            .chain(self.runs(true))
            .filter(|(_, v)| v.is_vhost() || v.is_ublk())
            .count()
            * self.rounds as usize;
        self.run_count() as f64 * per_run
            + 2.0 * daemons as f64
            + 30.0
            + 15.0 * self.used_namespaces().len() as f64
    }

    /// The guest shell script. Results go to stdout, one JSON document
    /// per line (nvme-bench's `--json` line, fio's JSON joined into one
    /// line) or `@@failed LABEL: why`; progress goes to stderr.
    pub(crate) fn script(&self) -> String {
        let devs: Vec<String> = (1..=self.namespaces()).map(block_device).collect();
        let mut s = format!(
            "DEV={DEVICE}\nNS_DEVS='{}'\nCACHE_DEV={}\n",
            devs.join(" "),
            block_device(CACHE_NS)
        );
        s.push_str(&SCRIPT_PRELUDE.replace("QSD_BLOCKDEV", QSD_BLOCKDEV));
        // Identify needs the controller on vfio-pci.
        if self.has_ublk() {
            // Only the 6.12 kernel has ublk_drv (VmConfig::ship_modules).
            s.push_str(LOAD_UBLK);
        }
        let _ = writeln!(s, "to_vfio\nconditions");
        if self.has_kernel_cache() {
            let _ = writeln!(s, "readahead_probe");
        }
        if self.precondition {
            for nsid in self.used_namespaces() {
                let _ = writeln!(
                    s,
                    "say 'precondition: writing the {} MiB range of namespace {nsid} once'\n\
                     nvme-bench --nsid {nsid} -w write -o 1M -q 8 -n {} --warmup 0 --range-size {RANGE} > /dev/null 2> /tmp/run.err \
                     || {{ echo \"@@failed precondition: $(tr '\\n' ' ' < /tmp/run.err)\"; exit 1; }}",
                    RANGE >> 20,
                    RANGE >> 20
                );
            }
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
                let what = format!("[{n}/{total}] round {round} {} {}", v.name(), job.name);
                if let Side::Ublk(_, placement, daemon) = v.def().side {
                    let Some(mut args) = fio_args(&job, v, self.timing) else {
                        continue;
                    };
                    let queues = match placement {
                        UblkPlacement::PerCpu => "percpu",
                        UblkPlacement::Split => {
                            args.push_str(" --cpus_allowed=1");
                            "split"
                        }
                    };
                    let _ = writeln!(
                        s,
                        "ublk '{}' '{what}' {queues} '{daemon}' {args}",
                        label(v, &job, round)
                    );
                    continue;
                }
                let args = ours_args(&job, v, self.timing);
                let _ = match v.def().side {
                    Side::Vhost(daemon) => writeln!(
                        s,
                        "vhost '{}' '{what}' '--nsid {}{}{daemon}' {args}",
                        label(v, &job, round),
                        job.nsid(),
                        if daemon.is_empty() { "" } else { " " },
                    ),
                    _ => writeln!(s, "ours '{}' '{what}' {args}", label(v, &job, round)),
                };
            }
            let kernel: Vec<_> = self.runs(true).collect();
            if !kernel.is_empty() {
                let _ = writeln!(s, "to_nvme");
            }
            for (job, v) in kernel {
                if let Side::QsdVhost(iothread) = v.def().side {
                    n += 1;
                    let _ = writeln!(
                        s,
                        "qsd_vhost '{}' '[{n}/{total}] round {round} {} {}' {} '{iothread}' {}",
                        label(v, &job, round),
                        v.name(),
                        job.name,
                        job.block_device(),
                        ours_args(&job, v, self.timing)
                    );
                    continue;
                }
                let Some(args) = fio_args(&job, v, self.timing) else {
                    continue;
                };
                n += 1;
                let warm = job.kind == Kind::CacheWarm;
                if warm {
                    // The last close of a block device drops its page
                    // cache: fd 3 keeps it open from the preload through
                    // the measured run.
                    let dev = job.block_device();
                    let _ = writeln!(
                        s,
                        "exec 3< {dev}\n\
                         dd if={dev} of=/dev/null bs=1M count={} 2> /dev/null",
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

/// Loads ublk_drv and what it needs (the harness's `ship_modules` puts
/// them in /lib/modules with their order; `modload` loads them).
const LOAD_UBLK: &str =
    "modload ublk_drv || { echo \"@@failed ublk modules: modload ublk_drv\"; exit 1; }\n";

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
    echo "@@cpu_model $(grep -m1 '^model name' /proc/cpuinfo | sed 's/.*: //')"
    echo "@@cpu_flags $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -xE 'sse4_2|avx|avx2|avx512f|erms|fsrm|la57' | tr '\n' ' ')"
    echo "@@iommu_domain $(dmesg | grep -m1 'Default domain type' | sed 's/.*type: //; s/ *$//')"
    echo "@@iommu_invalidation $(dmesg | grep -m1 'TLB invalidation policy' | sed 's/.*policy: //; s/ *$//')"
    for v in meltdown spectre_v2 retbleed; do
        f=/sys/devices/system/cpu/vulnerabilities/$v
        [ -r $f ] && echo "@@mitigation_$v $(cat $f)"
    done
}
# Our readahead maximum: a short cold read through our page cache reports
# the window it used (sized from the device); the kernel's page cache of
# the cache jobs' namespace gets the same (read_ahead_kb in to_nvme).
readahead_probe() {
    RA_PAGES=$(nvme-bench --mode cache --cold -w read -o 128k -n 64 --warmup 0 --range-size 8M --json 2> /tmp/run.err \
        | grep -o '"readahead_max_pages":[0-9]*' | cut -d: -f2 | sort -n | tail -1)
    if [ -n "$RA_PAGES" ]; then
        echo "@@readahead_max_pages $RA_PAGES"
        RA_KB=$((RA_PAGES * 4))
    else
        echo "@@failed readahead probe: $(tr '\n' ' ' < /tmp/run.err)"
    fi
}
to_vfio() {
    [ -e /sys/bus/pci/drivers/vfio-pci/$DEV ] && return 0
    nvmectl bind $DEV > /dev/null || { echo "@@failed bind: nvmectl bind $DEV"; exit 1; }
}
to_nvme() {
    [ -e /sys/bus/pci/drivers/nvme/$DEV ] && return 0
    # A poll queue per vCPU: polled fio jobs on two CPUs do not share one.
    grep -c ^processor /proc/cpuinfo > /sys/module/nvme/parameters/poll_queues
    nvmectl unbind $DEV > /dev/null || { echo "@@failed bind: nvmectl unbind $DEV"; exit 1; }
    for b in $NS_DEVS; do
        i=0
        while [ ! -b $b ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
        [ -b $b ] || { echo "@@failed bind: no $b"; exit 1; }
    done
    ra=/sys/block/${CACHE_DEV#/dev/}/queue/read_ahead_kb
    if [ -n "$RA_KB" ]; then echo $RA_KB > $ra || echo "@@failed read_ahead_kb: cannot set $RA_KB"; fi
    [ -n "$QUEUES_SHOWN" ] || {
        echo "@@queues $(dmesg | grep 'poll queues' | tail -1 | sed 's/.*: //')"
        echo "@@read_ahead_kb $(cat $ra)"
        for b in $NS_DEVS; do echo "@@lba_$(basename $b) $(cat /sys/block/$(basename $b)/queue/logical_block_size)"; done
        QUEUES_SHOWN=1
    }
}
# nvme-bench with the rest of the arguments, its JSON labelled $1: the
# JSON line, or "@@failed LABEL: ERROR" (and a failed status).
bench_json() {
    label=$1; shift
    if nvme-bench "$@" --json --label "$label" > /tmp/run.out 2> /tmp/run.err; then
        grep '^{' /tmp/run.out
    else
        echo "@@failed $label: $(tr '\n' ' ' < /tmp/run.err)"
        return 1
    fi
}
ours() {
    label=$1; what=$2; shift 2
    say "$what"
    bench_json "$label" "$@"
}
# Waits up to 30 s for the unix socket $1.
wait_socket() {
    i=0
    while [ ! -S "$1" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i + 1)); done
    [ -S "$1" ]
}
# nvme-bench --vhost-user against nvme-vhost (its arguments in $3), started
# for this run; the daemon's request counts after the client left go to
# "@@vhost_requests LABEL direct N, bounced N, failed N, unsupported N".
vhost() {
    label=$1; what=$2; daemon=$3; shift 3
    say "$what"
    rm -f /tmp/vhost.sock
    taskset 1 nvme-vhost $DEV --socket /tmp/vhost.sock --once $daemon 2> /tmp/vhost.log &
    vpid=$!
    if ! wait_socket /tmp/vhost.sock; then
        kill $vpid 2> /dev/null; wait $vpid
        echo "@@failed $label: nvme-vhost: $(tr '\n' ' ' < /tmp/vhost.log)"
        return
    fi
    bench_json "$label" "$@" --vhost-user /tmp/vhost.sock || kill $vpid 2> /dev/null
    wait $vpid
    echo "@@vhost_requests $label $(grep -o 'requests direct.*' /tmp/vhost.log | tail -1 | sed 's/^requests //')"
}
# nvme-bench --vhost-user against qemu-storage-daemon exporting block
# device $3 (the kernel's nvme driver), its iothread with the options $4
# (",poll-max-ns=N"), started for this run.
qsd_vhost() {
    label=$1; what=$2; bdev=$3; iothread=$4; shift 4
    say "$what"
    rm -f /tmp/qsd.sock
    taskset 1 qemu-storage-daemon --object iothread,id=io0$iothread \
        --blockdev driver=host_device,node-name=ns,filename=$bdev,QSD_BLOCKDEV \
        --export type=vhost-user-blk,id=exp,node-name=ns,writable=on,iothread=io0,addr.type=unix,addr.path=/tmp/qsd.sock \
        2> /tmp/qsd.log &
    qpid=$!
    if ! wait_socket /tmp/qsd.sock; then
        kill $qpid 2> /dev/null; wait $qpid
        echo "@@failed $label: qemu-storage-daemon: $(tr '\n' ' ' < /tmp/qsd.log)"
        return
    fi
    bench_json "$label" "$@" --vhost-user /tmp/qsd.sock
    kill $qpid; wait $qpid
}
# fio (the arguments after the label, the progress line and the
# placement, nvme-ublk's extra arguments) on /dev/ublkb0, served by
# nvme-ublk started for this run: "percpu", a ublk queue per vCPU;
# "split", one queue whose threads move to CPU 0 once it serves (fio runs
# on CPU 1).
ublk() {
    label=$1; what=$2; placement=$3; daemon=$4; shift 4
    set -- "$label" "$what" "$@"
    queues=1
    cpus=$(grep -c ^processor /proc/cpuinfo)
    [ $placement = percpu ] && queues=$cpus
    if [ $placement = split ] && [ $cpus -lt 2 ]; then
        say "$what"
        echo "@@failed $label: the split placement needs 2 vCPUs (--smp 2 or more)"
        return
    fi
    rm -f /tmp/ublk.out
    nvme-ublk $DEV --id 0 --queues $queues --depth 64 $daemon > /tmp/ublk.out 2> /tmp/ublk.log &
    upid=$!
    i=0
    until grep -q '^serving ' /tmp/ublk.out 2> /dev/null; do
        i=$((i + 1))
        if [ $i -ge 600 ] || ! kill -0 $upid 2> /dev/null; then
            kill $upid 2> /dev/null; wait $upid
            say "$what"
            echo "@@failed $label: nvme-ublk did not start: $(tr '\n' ' ' < /tmp/ublk.log)"
            return
        fi
        sleep 0.05
    done
    if [ $placement = split ]; then
        for t in /proc/$upid/task/*; do taskset -p 1 ${t##*/} > /dev/null || say "taskset failed"; done
    fi
    kern "$@"
    kill -TERM $upid; wait $upid
    rc=$?
    [ $rc -eq 0 ] || echo "@@failed $label: nvme-ublk exited with status $rc: $(tail -3 /tmp/ublk.log | tr '\n' ' ')"
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
            variants: Variant::defaults().collect(),
            rounds: 3,
            timing: Timing {
                runtime: 3.0,
                warmup: 1.0,
            },
            precondition: true,
            boot: Boot::Main,
        }
    }

    fn v(name: &str) -> Variant {
        Variant::from_name(name).expect(name)
    }

    fn job(name: &str) -> Job {
        Job::by_name(name).expect(name)
    }

    #[test]
    fn names_are_unique_and_labels_round_trip() {
        for (i, a) in JOBS.iter().enumerate() {
            assert!(JOBS[..i].iter().all(|b| b.name != a.name), "{}", a.name);
            assert!(NAMESPACE_LBAS.contains(&a.lba), "{}", a.name);
        }
        for (i, a) in VARIANTS.iter().enumerate() {
            assert!(VARIANTS[..i].iter().all(|b| b.name != a.name), "{}", a.name);
        }
        assert_eq!(Variant::OURS.name(), "ours");
        assert!(!Variant::OURS.is_kernel());
        for job in JOBS {
            for v in job.variants() {
                assert_eq!(
                    parse_label(&label(v, job, 2)).map(|(v, j, r)| (v, j.name, r)),
                    Some((v, job.name, 2))
                );
            }
        }
        assert!(parse_label("ours|nope|1").is_none());
        assert!(parse_label("ours|randread-4k-qd1|x").is_none());
        assert!(parse_label("ours|randread-4k-qd1|1|2").is_none());
    }

    #[test]
    fn variants_cover_the_jobs_they_are_meant_for() {
        let names = |j: &str| -> Vec<&str> { job(j).variants().iter().map(|v| v.name()).collect() };
        // QD1: batching changes nothing, so the batched variant does not run.
        assert_eq!(
            names("randread-4k-qd1"),
            [
                "ours",
                "floor",
                "ours-owned",
                "io_uring",
                "io_uring-polled",
                "libaio",
                "fe-ours",
                "fe-ours-irq",
                "ublk",
                "ublk-percpu",
                "ublk-null",
                "ublk-irq",
                "ublk-spin",
                "fe-io_uring-polled",
                "vhost",
                "vhost-irq",
                "vhost-spin",
                "vhost-spin200",
                "vhost-null",
                "vhost-null-poll",
                "qsd-vhost",
                "qsd-vhost-poll"
            ]
        );
        assert_eq!(
            names("randread-4k-qd32"),
            [
                "ours",
                "floor",
                "ours-owned",
                "io_uring",
                "io_uring-batch",
                "io_uring-polled",
                "io_uring-polled-batch",
                "libaio",
                "ublk-batch",
                "ublk-percpu-batch",
                "ublk-null-batch",
                "ublk-irq-batch",
                "ublk-spin-batch",
                "fe-io_uring-polled",
                "fe-io_uring-polled-batch",
                "vhost",
                "vhost-irq",
                "vhost-spin",
                "vhost-spin200",
                "qsd-vhost",
                "qsd-vhost-poll"
            ]
        );
        assert_eq!(
            names("read-128k-qd8"),
            [
                "ours",
                "floor",
                "ours-footprint",
                "ours-owned",
                "io_uring",
                "io_uring-batch",
                "io_uring-polled",
                "io_uring-polled-batch",
                "libaio",
                "ublk-batch",
                "ublk-percpu-batch",
                "ublk-null-batch",
                "ublk-irq-batch",
                "ublk-spin-batch",
                "fe-io_uring-polled",
                "fe-io_uring-polled-batch"
            ]
        );
        // The extra rows: the kernel's best variants only.
        for j in [
            "randread-4k-qd128",
            "randread-4k-qd32-2t",
            "randread-4k-qd32-lba4k",
            "read-128k-qd8-lba4k",
        ] {
            assert_eq!(
                names(j),
                [
                    "ours",
                    "floor",
                    "ours-owned",
                    "io_uring-polled",
                    "io_uring-polled-batch"
                ],
                "{j}"
            );
        }
        assert_eq!(
            names("randread-4k-qd1-lba4k"),
            ["ours", "floor", "ours-owned", "io_uring-polled"]
        );
        assert_eq!(
            names("cache-randread-4k-warm"),
            ["ours", "kernel-cache", "kernel-cache-mmap"]
        );
        assert_eq!(names("cache-read-128k-cold"), ["ours", "kernel-cache"]);
        assert_eq!(names("cache-read-128k-cold-zc"), ["ours"]);
        // The footprint variant runs beside the 128K read only.
        assert!(names("read-128k-qd8").contains(&"ours-footprint"));
        for j in ["write-128k-qd8", "read-128k-qd8-lba4k", "randread-4k-qd32"] {
            assert!(!names(j).contains(&"ours-footprint"), "{j}");
        }
    }

    #[test]
    fn two_thread_warm_rows_share_the_file_or_split_it() {
        let t = Timing {
            runtime: 3.0,
            warmup: 1.0,
        };
        let shared = job("cache-randread-4k-warm-2t");
        let split = job("cache-randread-4k-warm-2t-files");
        let ours_shared = ours_args(&shared, Variant::OURS, t);
        let ours_split = ours_args(&split, Variant::OURS, t);
        assert!(ours_shared.contains("-c 0x3") && !ours_shared.contains("--files"));
        assert!(
            ours_split.contains("-c 0x3 --files per-thread"),
            "{ours_split}"
        );
        let kernel = v("kernel-cache-mmap");
        let fio_shared = fio_args(&shared, kernel, t).unwrap();
        let fio_split = fio_args(&split, kernel, t).unwrap();
        assert!(fio_shared.contains("--numjobs=2") && fio_shared.contains("--size=134217728"));
        assert!(
            fio_split.contains("--size=67108864 --offset_increment=67108864"),
            "{fio_split}"
        );
    }

    #[test]
    fn command_lines_carry_batching_threads_namespaces_and_engines() {
        let t = Timing {
            runtime: 3.0,
            warmup: 1.0,
        };
        let batch = fio_args(&job("randread-4k-qd32"), v("io_uring-polled-batch"), t).unwrap();
        for opt in [
            "--ioengine=io_uring --hipri=1",
            "--iodepth=32",
            "--iodepth_batch_submit=8",
            "--iodepth_batch_complete_min=8",
            "--iodepth_batch_complete_max=32",
            "--filename=/dev/nvme0n1",
            "--direct=1",
        ] {
            assert!(batch.contains(opt), "{opt} missing in {batch}");
        }
        let plain = fio_args(&job("randread-4k-qd32"), v("io_uring-polled"), t).unwrap();
        assert!(!plain.contains("iodepth_batch"), "{plain}");
        assert_eq!(
            fio_args(&job("randread-4k-qd1"), v("io_uring-polled-batch"), t),
            None
        );
        let two = fio_args(&job("randread-4k-qd32-2t"), v("io_uring-polled"), t).unwrap();
        for opt in [
            "--numjobs=2",
            "--group_reporting",
            "--cpus_allowed=0-1",
            "--cpus_allowed_policy=split",
            "--iodepth=32",
        ] {
            assert!(two.contains(opt), "{opt} missing in {two}");
        }
        assert!(ours_args(&job("randread-4k-qd32-2t"), Variant::OURS, t).ends_with(" -c 0x3"));
        assert!(!ours_args(&job("randread-4k-qd32"), Variant::OURS, t).contains(" -c "));
        let lba4k = job("randread-4k-qd32-lba4k");
        assert_eq!(lba4k.nsid(), 2);
        assert!(
            fio_args(&lba4k, v("io_uring-polled"), t)
                .unwrap()
                .contains("--filename=/dev/nvme0n2 ")
        );
        assert!(ours_args(&lba4k, Variant::OURS, t).ends_with(" --nsid 2"));
        let mmap = fio_args(&job("cache-randread-4k-warm"), v("kernel-cache-mmap"), t).unwrap();
        for opt in [
            "--ioengine=mmap",
            "--direct=0",
            "--invalidate=0",
            "--size=134217728",
        ] {
            assert!(mmap.contains(opt), "{opt} missing in {mmap}");
        }
        assert_eq!(core_mask(1), 1);
        assert_eq!(core_mask(2), 3);
        assert_eq!(core_mask(64), u64::MAX);
    }

    #[test]
    fn the_default_suite_runs_every_variant_each_round() {
        let p = plan();
        let per_round: usize = JOBS
            .iter()
            .map(|j| {
                j.variants()
                    .iter()
                    .filter(|v| v.def().by_default && v.boot() == Boot::Main)
                    .count()
            })
            .sum();
        // Ours on every job, the floor loop beside every raw one, and the
        // 128K read over the cache's footprint.
        let device_jobs = JOBS.iter().filter(|j| j.kind == Kind::Device).count();
        let ours = JOBS.len() + device_jobs + 1;
        assert_eq!(p.run_count(), per_round * 3);
        let s = p.script();
        assert_eq!(s.matches("\nours '").count(), ours * 3);
        assert_eq!(s.matches(" --zero-copy\n").count(), 3);
        assert_eq!(s.matches(" --buffer-pool 256M\n").count(), 3);
        assert_eq!(s.matches("\nkern '").count(), (per_round - ours) * 3);
        assert_eq!(s.matches("to_nvme\n").count(), 3);
        assert!(s.contains("--hipri=1"));
        // libaio runs only when asked for.
        assert!(!s.contains("'libaio|"));
        // So does our full path on owned buffers (beside every raw job).
        let with_all = Plan {
            variants: Variant::all().collect(),
            ..plan()
        };
        // The front ends run in their own boot.
        assert_eq!(with_all.run_count(), p.run_count() + (5 + device_jobs) * 3);
        assert!(!s.contains("\nvhost '") && !s.contains("\nqsd_vhost '"));
        assert!(!s.contains("\nublk '") && !s.contains("modload"));
        assert_eq!(
            with_all.script().matches(" --owned-buffers\n").count(),
            device_jobs * 3
        );
        assert!(s.contains("'ours|cache-read-128k-cold|1'"));
        assert!(s.contains("-n 8192 --warmup 0 --range-size 1073741824"));
        // Both namespaces are written once, the readahead is probed once.
        assert_eq!(p.namespaces(), 2);
        assert!(s.contains("NS_DEVS='/dev/nvme0n1 /dev/nvme0n2'"));
        assert!(s.contains("nvme-bench --nsid 1 -w write"));
        assert!(s.contains("nvme-bench --nsid 2 -w write"));
        assert_eq!(s.matches("\nreadahead_probe\n").count(), 1);
        assert_eq!(s.matches(" --floor\n").count(), device_jobs * 3);
        // The estimate keeps the default suite under a quarter of an hour.
        assert!(p.estimate_seconds() < 900.0, "{}", p.estimate_seconds());
        assert_eq!(p.run_count(), 180);
    }

    #[test]
    fn vhost_variants_start_their_daemon_on_the_right_driver() {
        let p = Plan {
            jobs: vec![job("randread-4k-qd1"), job("randread-4k-qd32")],
            variants: vec![v("vhost"), v("vhost-irq"), v("qsd-vhost")],
            rounds: 1,
            precondition: false,
            boot: Boot::Frontend,
            ..plan()
        };
        let main = Plan {
            boot: Boot::Main,
            ..p.clone()
        };
        assert_eq!(
            main.run_count(),
            0,
            "vhost-user runs in the front ends' boot"
        );
        assert_eq!(p.run_count(), 6);
        assert!(p.has_qsd() && !p.has_kernel_side(), "no fio needed");
        let s = p.script();
        // nvme-vhost while the controller is on vfio-pci, the storage
        // daemon after it moved to nvme.
        let (vfio, nvme) = s.split_once("\nto_nvme\n").expect("a kernel phase");
        assert!(vfio.contains(
            "\nvhost 'vhost|randread-4k-qd32|1' '[3/6] round 1 vhost randread-4k-qd32' '--nsid 1 --poll' -w randread -o 4096 -q 32 "
        ), "{s}");
        assert!(vfio.contains("\nvhost 'vhost-irq|randread-4k-qd1|1' '[2/6] round 1 vhost-irq randread-4k-qd1' '--nsid 1' -w randread -o 4096 -q 1 "), "{s}");
        assert!(nvme.starts_with(
            "qsd_vhost 'qsd-vhost|randread-4k-qd1|1' '[5/6] round 1 qsd-vhost randread-4k-qd1' /dev/nvme0n1 '' -w randread -o 4096 -q 1 "
        ), "{s}");
        assert!(!vfio.contains("\nqsd_vhost '") && !nvme.contains("\nvhost '"));
        assert!(
            s.contains("filename=$bdev,aio=io_uring,cache.direct=on"),
            "{s}"
        );
        assert!(s.contains("iothread=io0"), "{s}");
        // Server on CPU 0, client on CPU 1.
        assert!(
            s.contains("taskset 1 nvme-vhost ") && s.contains("taskset 1 qemu-storage-daemon ")
        );
        assert_eq!(
            s.matches(" --range-size 1073741824 -c 0x2\n").count(),
            6,
            "{s}"
        );
        // Vhost jobs need no --nsid on the client; the daemon takes it.
        assert!(!s.contains("--vhost-user /tmp/vhost.sock --nsid"));
    }

    #[test]
    fn the_front_ends_boot_runs_ublk_vhost_and_their_peers() {
        let p = Plan {
            boot: Boot::Frontend,
            ..plan()
        };
        // Per round: our raw driver at QD1; ublk and its no-device floor
        // at QD1 (unbatched) and QD32 and 128K (batched); the kernel nvme
        // driver polled on the three, batched on two; nvme-vhost polled
        // and on interrupts at QD1 and QD32, its no-device floor at QD1;
        // qemu-storage-daemon at QD1 and QD32.
        assert_eq!(p.run_count(), 19 * 3);
        assert_eq!(p.namespaces(), 1, "every front-end job is on namespace 1");
        assert!(p.has_ublk() && p.has_qsd() && p.has_kernel_side());
        assert!(!p.has_kernel_cache());
        let s = p.script();
        assert!(s.contains("\nmodload ublk_drv || "), "{s}");
        let (vfio, nvme) = s.split_once("\nto_nvme\n").expect("a kernel phase");
        // nvme-ublk while the controller is on vfio-pci, fio on its device.
        assert_eq!(s.matches("\nublk '").count(), 6 * 3);
        assert_eq!(vfio.matches("\nublk '").count(), 6, "round 1");
        assert!(vfio.contains(
            "\nublk 'ublk-batch|randread-4k-qd32|1' '[7/57] round 1 ublk-batch randread-4k-qd32' \
             split '' --filename=/dev/ublkb0 --rw=randread --bs=4096"
        ), "{s}");
        // The floor: the same fio job, nvme-ublk with --null-io.
        assert!(vfio.contains(
            "\nublk 'ublk-null-batch|randread-4k-qd32|1' '[8/57] round 1 ublk-null-batch randread-4k-qd32' \
             split '--null-io' --filename=/dev/ublkb0 --rw=randread --bs=4096"
        ), "{s}");
        assert!(s.contains("nvme-ublk $DEV --id 0 --queues"));
        assert!(
            vfio.contains("--iodepth_batch_submit=8"),
            "batched at QD32: {vfio}"
        );
        assert!(!vfio.contains("--hipri"), "ublk has no polled I/O");
        assert!(vfio.contains(" --null-io' "), "{vfio}");
        assert!(
            vfio.contains("\nours 'fe-ours|randread-4k-qd1|1' "),
            "{vfio}"
        );
        // The kernel nvme driver's best (polled) after the move.
        assert!(nvme.contains(
            "kern 'fe-io_uring-polled-batch|randread-4k-qd32|1' '[16/57] round 1 kernel fe-io_uring-polled-batch randread-4k-qd32' --filename=/dev/nvme0n1 "
        ), "{nvme}");
        assert!(nvme.contains("--hipri=1"));
        // A few minutes more than the main boot.
        assert!(p.estimate_seconds() < 420.0, "{}", p.estimate_seconds());
        // Only the front ends' variants run in it.
        assert!(!s.contains("'floor|") && !s.contains("'io_uring-polled|"));
    }

    #[test]
    fn a_subset_runs_only_what_was_chosen() {
        let p = Plan {
            jobs: vec![JOBS[0]],
            variants: vec![Variant::OURS],
            rounds: 1,
            precondition: false,
            ..plan()
        };
        assert_eq!(p.run_count(), 1);
        assert!(!p.has_kernel_side());
        assert_eq!(p.namespaces(), 1);
        let s = p.script();
        assert!(!s.contains("\nkern '") && !s.contains("to_nvme\n"));
        assert!(!s.contains("\nreadahead_probe\n"));
        // The CI's subset: one namespace, the probe for the kernel's cache.
        let ci = Plan {
            jobs: vec![job("randread-4k-qd1"), job("cache-randread-4k-warm")],
            rounds: 1,
            ..plan()
        };
        assert_eq!(ci.namespaces(), 1);
        assert_eq!(ci.run_count(), 4 + 3);
        assert!(ci.script().contains("\nreadahead_probe\n"));
    }
}

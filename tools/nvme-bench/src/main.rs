//! `nvme-bench`: load an NVMe namespace through the userspace driver and
//! measure IOPS, bandwidth and latency (HDR histograms), per thread and in
//! total. One I/O queue pair per thread; warm-up excluded; `--json` for
//! machines; `--verify` writes a checkable pattern and checks every read.
//! `--mode cache` runs the same workloads as buffered I/O through the page
//! cache (`pagecache` + `mpage`) instead: see [`cache_mode`].
//! `--vhost-user SOCK` runs the raw workloads through a vhost-user-blk
//! device (libblkio's client) instead of the NVMe driver: see
//! [`vhost_mode`].
// One block in `vhost_mode` reads libblkio's completions.
#![deny(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use nvme_bench::pattern;
use nvme_bench::stats::{LatencyRuns, Stats};
use nvme_bench::workload::{Generator, OffsetDist, Spec, Workload, parse_distribution};
use nvme_driver::{
    Controller, DmaBuffer, FixedCompletion, FixedIo, FloorJob, IoCompletion, IoQPair, IoRequest,
    Options, PathCounters, PciAddress, pci,
};
use tools_common::bench::Mode;
use tools_common::parse_bytes;

mod cache_mode;
mod error;
mod vhost_mode;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "nvme-bench",
    version,
    about = "Benchmark an NVMe namespace through the userspace driver"
)]
struct Args {
    /// PCI address; optional when exactly one controller is bound to vfio-pci.
    device: Option<PciAddress>,
    /// raw: the driver's queue pairs directly; cache: buffered I/O through
    /// the page cache (pagecache + mpage), see --cache-size, --cold, --warm.
    #[arg(long, value_enum, default_value_t = Mode::Raw)]
    mode: Mode,
    /// Queue depth per thread (I/Os kept in flight). Ignored in cache
    /// mode: each thread makes one synchronous read_at/write_at call at a
    /// time (the cache's readahead and writeback issue the device I/O).
    #[arg(short = 'q', long = "queue-depth", default_value_t = 32)]
    qd: usize,
    /// I/O size in bytes (K/M suffixes allowed); in cache mode the size of
    /// each read_at/write_at call (any size, page multiples are typical).
    #[arg(short = 'o', long = "io-size", default_value = "4096", value_parser = parse_bytes)]
    io_size: u64,
    /// Workload.
    #[arg(short = 'w', long, value_enum, default_value_t = Workload::Randread)]
    workload: Workload,
    /// Read percentage for rw and randrw.
    #[arg(short = 'M', long = "rwmixread", default_value_t = 50,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    mix: u8,
    /// Measured run time in seconds (after the warm-up).
    #[arg(short = 't', long = "time", default_value_t = 10.0)]
    time: f64,
    /// Stop each thread after this many measured I/Os instead.
    #[arg(short = 'n', long = "io-count")]
    io_count: Option<u64>,
    /// Warm-up seconds, excluded from the results (`-a`, as
    /// spdk_nvme_perf's warm-up time).
    #[arg(short = 'a', long, default_value_t = 1.0)]
    warmup: f64,
    /// Threads, each with its own queue pair (`-P`, as spdk_nvme_perf's
    /// queue pairs per namespace).
    #[arg(
        short = 'j',
        long = "threads",
        visible_short_alias = 'P',
        default_value_t = 1
    )]
    threads: usize,
    /// CPU mask (hex, e.g. 0x3): one thread per CPU in the mask, each
    /// pinned to its CPU (spdk_nvme_perf's -c); sets the thread count.
    #[arg(short = 'c', long = "core-mask", value_parser = parse_mask, conflicts_with = "threads")]
    core_mask: Option<u64>,
    /// Namespace id.
    #[arg(long, default_value_t = 1)]
    nsid: u32,
    /// First LBA of the range used.
    #[arg(long, default_value_t = 0)]
    range_start: u64,
    /// Bytes of the range used (default: to the end of the namespace).
    #[arg(long, value_parser = parse_bytes)]
    range_size: Option<u64>,
    /// Offset alignment in bytes for random I/O (default: the I/O size).
    #[arg(long, value_parser = parse_bytes)]
    align: Option<u64>,
    /// Offset distribution for random workloads: uniform or zipf:THETA.
    #[arg(long, default_value = "uniform", value_parser = parse_distribution)]
    dist: OffsetDist,
    /// Write a pattern checkable per block (the range is filled first) and
    /// check every block read.
    #[arg(long)]
    verify: bool,
    /// Count errors and go on instead of stopping at the first.
    #[arg(long)]
    continue_on_error: bool,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// I/O queue entries to ask for.
    #[arg(long, default_value_t = 1024)]
    entries: u16,
    /// Queue pairs in interrupt mode (sleep instead of spinning when idle).
    #[arg(long)]
    interrupts: bool,
    /// MMIO doorbells only.
    #[arg(long)]
    no_shadow: bool,
    /// SGL data pointers when the controller supports them.
    #[arg(long)]
    sgl: bool,
    /// Seed of the random offsets and of the verify pattern.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A label copied into the JSON.
    #[arg(long, default_value = "")]
    label: String,
    /// Cache mode: page cache budget in bytes (folio memory from the DMA
    /// pool).
    #[arg(long, default_value = "256M", value_parser = parse_bytes)]
    cache_size: u64,
    /// Cache mode: start the measured window with an empty cache (a fresh
    /// page cache and file after the warm-up). Default for workloads that
    /// write.
    #[arg(long, conflicts_with = "warm")]
    cold: bool,
    /// Cache mode: read the whole range into the cache before the warm-up,
    /// so the measured window starts with it cached (the range must fit
    /// --cache-size). Default for read and randread.
    #[arg(long)]
    warm: bool,
    /// Cache mode: readahead maximum per thread, in pages (0 disables
    /// readahead; default: the page cache's default).
    #[arg(long)]
    readahead: Option<u64>,
    /// Cache mode: no background flusher thread (writers then write back
    /// only when throttled, and at fsync).
    #[arg(long)]
    no_flusher: bool,
    /// Cache mode: reads look at the cached folios through views
    /// (`File::read_folios`) instead of copying into a buffer, as raw mode
    /// never touches the data either (--verify still copies to check).
    #[arg(long)]
    zero_copy: bool,
    /// Raw mode: run the floor loop instead of the full path: one queue pair
    /// per thread driven at the queue level (SQEs built once, only the LBA
    /// changes, no splitting, no latency record, a count only), to measure
    /// what the device and the machine allow any driver. The mean latency
    /// reported is Little's law's (depth / IOPS).
    #[arg(long)]
    floor: bool,
    /// Raw mode: pass each I/O's buffer to the driver and back
    /// (`IoQPair::submit` with an owned `DmaBuffer`) instead of naming one
    /// registered with the queue pair (`IoQPair::submit_fixed`, the
    /// default, as SPDK's perf and fio's `fixedbufs` do).
    #[arg(long)]
    owned_buffers: bool,
    /// Raw mode, registered buffers: register this many bytes of buffers
    /// (at least one per queue slot) and hand them to I/Os in turn (the
    /// free one given back longest ago first), so
    /// the device writes through a footprint that large, as a page cache
    /// of that size does (by default the buffers are one per slot).
    #[arg(long, value_parser = parse_bytes)]
    buffer_pool: Option<u64>,
    /// Cache mode: `shared`, one file over the range that every thread
    /// opens (its own description of it); `per-thread`, one file per
    /// thread over its own equal share of the range (disjoint files, each
    /// thread reading only its own).
    #[arg(long, value_enum, default_value = "shared")]
    files: cache_mode::Files,
    /// Run the raw workloads through the vhost-user-blk device at this
    /// socket (libblkio's virtio-blk-vhost-user client: a virtqueue per
    /// thread, polled unless --interrupts) instead of the NVMe driver.
    /// The range is in the device's blocks; no controller is opened.
    #[arg(long, value_name = "SOCK", conflicts_with = "device")]
    vhost_user: Option<String>,
}

fn parse_mask(s: &str) -> std::result::Result<u64, String> {
    let hex = s.trim().trim_start_matches("0x").trim_start_matches("0X");
    match u64::from_str_radix(hex, 16) {
        Ok(0) => Err("the core mask names no CPU".into()),
        Ok(m) => Ok(m),
        Err(_) => Err(format!("not a hex CPU mask: {s}")),
    }
}

/// The CPU thread `t` runs on under `--core-mask`: the mask's `t`-th set bit.
fn mask_cpu(mask: u64, t: usize) -> Option<usize> {
    (0..64).filter(|b| mask >> b & 1 == 1).nth(t)
}

/// Pins the calling thread (bench thread `t`) to its CPU of the core mask.
pub(crate) fn pin_thread(args: &Args, t: usize) -> Result<()> {
    let Some(mask) = args.core_mask else {
        return Ok(());
    };
    let cpu = mask_cpu(mask, t)
        .ok_or_else(|| Error::Usage(format!("thread {t} has no CPU in the mask")))?;
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)
        .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set))
        .map_err(|e| Error::os(format!("pinning thread {t} to CPU {cpu}"))(e.into()))
}

use error::{Error, Result};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(2),
        Err(e) => {
            eprintln!("nvme-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The shape of the job, resolved against the namespace.
#[derive(Debug, Clone)]
struct Job {
    args: Args,
    lba_size: u64,
    io_blocks: u64,
    first: u64,
    blocks: u64,
}

impl Job {
    /// Thread `t`'s (first block, blocks): sequential workloads give each
    /// thread its own part of the range; random ones share the whole range.
    fn thread_range(&self, t: usize) -> (u64, u64) {
        if self.args.workload.is_random() {
            (self.first, self.blocks)
        } else {
            let part = self.blocks / self.args.threads as u64;
            (self.first + part * t as u64, part)
        }
    }

    /// Thread `t`'s offsets over `first..first + blocks`.
    fn generator(&self, t: usize, first: u64, blocks: u64) -> Result<Generator> {
        let a = &self.args;
        let align = a
            .align
            .map_or(self.io_blocks, |b| (b / self.lba_size).max(1));
        let spec = Spec {
            workload: a.workload,
            mix: a.mix,
            dist: a.dist,
            first,
            blocks,
            io_blocks: self.io_blocks,
            align_blocks: align,
            seed: a.seed + t as u64,
        };
        Ok(Generator::new(&spec)?)
    }
}

fn run(mut args: Args) -> Result<u64> {
    if let Some(mask) = args.core_mask {
        args.threads = mask.count_ones() as usize;
    }
    if args.qd == 0 || args.threads == 0 {
        return Err(Error::Usage(
            "queue depth and threads must be at least 1".into(),
        ));
    }
    if args.mode == Mode::Raw
        && (args.cold
            || args.warm
            || args.readahead.is_some()
            || args.zero_copy
            || args.files != cache_mode::Files::Shared)
    {
        return Err(Error::Usage(
            "--cold, --warm, --readahead, --zero-copy and --files need --mode cache".into(),
        ));
    }
    if args.floor && (args.mode != Mode::Raw || args.verify || args.interrupts) {
        return Err(Error::Usage(
            "--floor runs in raw mode, without --verify and --interrupts".into(),
        ));
    }
    if args.floor
        && !matches!(
            args.workload,
            Workload::Randread | Workload::Randwrite | Workload::Read | Workload::Write
        )
    {
        return Err(Error::Usage(
            "--floor runs read, write, randread or randwrite, not a mix".into(),
        ));
    }
    if args.owned_buffers && (args.mode != Mode::Raw || args.floor) {
        return Err(Error::Usage(
            "--owned-buffers is a raw-mode option of the full path (not --floor)".into(),
        ));
    }
    if args.buffer_pool.is_some() && (args.mode != Mode::Raw || args.floor || args.owned_buffers) {
        return Err(Error::Usage("--buffer-pool is a raw-mode option of the registered-buffer path (not --floor or --owned-buffers)"
                .into()));
    }
    if args.floor && args.dist != OffsetDist::Uniform {
        return Err(Error::Usage("--floor draws uniform offsets only".into()));
    }
    if let Some(socket) = args.vhost_user.clone() {
        return run_vhost(args, &socket);
    }
    let address = match args.device {
        Some(a) => a,
        None => pci::single_vfio_function()?.address,
    };
    let options = Options {
        io_queue_entries: args.entries,
        use_sgl: args.sgl,
        shadow_doorbells: !args.no_shadow,
        ..Options::default()
    };
    let ctrl = Controller::open(address, options)?;
    let ns = ctrl.namespace(args.nsid)?;
    let lba_size = u64::from(ns.lba_size);
    if args.mode == Mode::Raw && !args.io_size.is_multiple_of(lba_size) {
        return Err(Error::Usage(format!(
            "I/O size {} is not a multiple of the {lba_size}-byte LBA size",
            args.io_size
        )));
    }
    let io_blocks = args.io_size / lba_size;
    let end = ns.blocks;
    if args.range_start >= end {
        return Err(Error::Usage(format!(
            "--range-start {} is past the end of namespace {} ({end} blocks)",
            args.range_start, args.nsid
        )));
    }
    let blocks = match args.range_size {
        Some(bytes) => bytes / lba_size,
        None => end.saturating_sub(args.range_start),
    };
    ns.check_range(args.range_start, blocks)?;
    let job = Job {
        args: args.clone(),
        lba_size,
        io_blocks,
        first: args.range_start,
        blocks,
    };
    // Checked before the prefill, which takes a while.
    let plan = match args.mode {
        Mode::Raw => None,
        Mode::Cache => Some(cache_mode::plan(&job)?),
    };
    if args.verify {
        prefill(&ctrl, &job)?;
    }

    let ((results, summary), wall, cpu) = measured(&args, |stop, progress| match &plan {
        None => run_raw(&ctrl, &job, stop, progress).map(|r| (r, None)),
        Some(plan) => cache_mode::run(&ctrl, &job, plan, stop, progress)
            .map(|(r, summary)| (r, Some(summary))),
    })?;
    let total = total(&results);
    let facts = DeviceFacts {
        device: ctrl.address().to_string(),
        shadow_doorbells: ctrl.uses_shadow_doorbells(),
        sgl: ctrl.uses_sgl(),
        max_transfer: ctrl.max_transfer(),
    };
    report(&facts, &job, &results, &total, summary.as_ref(), cpu, wall);
    Ok(total.errors)
}

/// `--vhost-user`: the raw workloads through a vhost-user-blk device.
fn run_vhost(args: Args, socket: &str) -> Result<u64> {
    if args.mode != Mode::Raw
        || args.floor
        || args.owned_buffers
        || args.buffer_pool.is_some()
        || args.sgl
        || args.no_shadow
        || args.nsid != 1
    {
        return Err(Error::Usage(
            "--vhost-user runs raw mode's full path: not with --mode cache, --floor, \
             --owned-buffers, --buffer-pool, --sgl, --no-shadow or --nsid"
                .into(),
        ));
    }
    let mut dev = vhost_mode::open(socket, args.threads, args.qd, args.io_size, args.interrupts)?;
    let lba_size = dev.block_size;
    if !args.io_size.is_multiple_of(lba_size) {
        return Err(Error::Usage(format!(
            "I/O size {} is not a multiple of the {lba_size}-byte block size",
            args.io_size
        )));
    }
    let end = dev.capacity / lba_size;
    if args.range_start >= end {
        return Err(Error::Usage(format!(
            "--range-start {} is past the end of the device ({end} blocks)",
            args.range_start
        )));
    }
    let blocks = match args.range_size {
        Some(bytes) => bytes / lba_size,
        None => end - args.range_start,
    };
    if blocks > end - args.range_start {
        return Err(Error::Usage(format!(
            "the range ({blocks} blocks from {}) is past the end of the device ({end} blocks)",
            args.range_start
        )));
    }
    let job = Job {
        args: args.clone(),
        lba_size,
        io_blocks: args.io_size / lba_size,
        first: args.range_start,
        blocks,
    };
    if args.verify {
        vhost_mode::prefill(&mut dev, &job)?;
    }
    let (results, wall, cpu) = measured(&args, |stop, progress| {
        vhost_mode::run(&mut dev, &job, stop, progress)
    })?;
    let total = total(&results);
    report(&dev.facts(socket), &job, &results, &total, None, cpu, wall);
    Ok(total.errors)
}

/// Runs the measured part, `run` (given the stop flag and one progress
/// counter per thread), with the live progress line beside it; returns
/// what it returned, and the wall-clock and CPU time it took.
fn measured<T>(
    args: &Args,
    run: impl FnOnce(&Arc<AtomicBool>, &[Arc<AtomicU64>]) -> Result<T>,
) -> Result<(T, Duration, Duration)> {
    let stop = Arc::new(AtomicBool::new(false));
    let progress: Vec<Arc<AtomicU64>> = (0..args.threads)
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let cpu_before = cpu_time();
    let start = Instant::now();
    let watcher = show_progress(args, &progress, &stop);
    let outcome = run(&stop, &progress);
    stop.store(true, Ordering::Relaxed);
    if let Some(w) = watcher {
        let _ = w.join();
    }
    let value = outcome?;
    let wall = start.elapsed();
    Ok((value, wall, cpu_time().saturating_sub(cpu_before)))
}

/// Every thread's figures together.
fn total(results: &[ThreadResult]) -> Stats {
    let mut total = Stats::new();
    for r in results {
        total.merge(&r.stats);
    }
    total
}

/// What the report says of the device.
struct DeviceFacts {
    /// The PCI address, or `vhost-user:SOCK`.
    device: String,
    shadow_doorbells: bool,
    sgl: bool,
    max_transfer: usize,
}

/// Raw mode: one queue pair per thread, `-q` I/Os in flight on each.
fn run_raw(
    ctrl: &Controller,
    job: &Job,
    stop: &Arc<AtomicBool>,
    progress: &[Arc<AtomicU64>],
) -> Result<Vec<ThreadResult>> {
    let args = &job.args;
    let handles: Vec<_> = (0..args.threads)
        .map(|t| {
            let (ctrl, job, stop, done) =
                (ctrl.clone(), job.clone(), stop.clone(), progress[t].clone());
            std::thread::spawn(move || thread_main(&ctrl, &job, t, &stop, &done))
        })
        .collect();
    collect_threads(handles.into_iter().map(|h| h.join()), stop)
}

/// The results of the bench threads, joined in order: the first failure
/// (an error, or a panic) is the outcome and stops the others.
pub(crate) fn collect_threads(
    joined: impl Iterator<Item = std::thread::Result<Result<ThreadResult>>>,
    stop: &AtomicBool,
) -> Result<Vec<ThreadResult>> {
    let mut results = Vec::new();
    let mut failure = None;
    for outcome in joined {
        match outcome {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(e)) => {
                stop.store(true, Ordering::Relaxed);
                failure.get_or_insert(e);
            }
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                failure.get_or_insert_with(|| Error::Failed("a bench thread panicked".into()));
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(results),
    }
}

/// What one thread measured.
struct ThreadResult {
    qid: u16,
    stats: Stats,
    /// Cache mode only.
    cache: Option<cache_mode::ThreadExtra>,
    /// Raw mode: the queue pair's doorbell and poll counters, and the
    /// steps the registered-buffer ring scanned to find free buffers.
    path: Option<(PathCounters, u64)>,
}

/// Empty polls between two clock reads while nothing completes.
const EMPTY_POLLS_PER_CLOCK: u32 = 256;

/// One in-flight I/O slot: its buffer and when it was submitted
/// (nanoseconds since the thread's clock base: one subtraction per
/// latency).
struct Slot {
    /// The buffer, between I/Os on the owned path (on the registered path
    /// the queue pair holds it: buffer `i` is slot `i`'s).
    buf: Option<DmaBuffer>,
    /// The registered buffer of the I/O in flight.
    buffer: u32,
    started: u64,
    read: bool,
    slba: u64,
}

/// Registered buffers handed to I/Os, never one to two I/Os at once. With
/// as many buffers as slots (the default), slot `i` always uses buffer
/// `i`, as the floor loop does: nothing to look up per I/O. With more (the
/// footprint jobs, `--buffer-pool`), a FIFO of the free ones, so that
/// every buffer is used in turn. Taking and giving back are O(1) whatever
/// order I/Os complete in: QEMU completes a batch of commands in no fixed
/// order (in reverse, on null-co), and a scan for the next free buffer
/// from a round-robin cursor walked most of the ring per I/O at depth
/// (about 100 steps per I/O at QD128).
struct BufferRing {
    /// The free buffers, oldest first; None: one buffer per slot.
    free: Option<VecDeque<u32>>,
    /// Buffers looked at by `take` (for the path counters): one per take
    /// from the FIFO, none with a buffer per slot.
    scanned: u64,
}

impl BufferRing {
    fn new(buffers: usize, slots: usize) -> Self {
        BufferRing {
            free: (buffers > slots).then(|| (0..buffers as u32).collect()),
            scanned: 0,
        }
    }

    /// A free buffer for slot `slot`'s next I/O: its own, or the one given
    /// back longest ago (there are at least as many buffers as slots).
    fn take(&mut self, slot: usize) -> Option<u32> {
        match &mut self.free {
            None => u32::try_from(slot).ok(),
            Some(free) => {
                self.scanned += 1;
                free.pop_front()
            }
        }
    }

    fn release(&mut self, i: u32) {
        if let Some(free) = &mut self.free {
            free.push_back(i);
        }
    }
}

fn thread_main(
    ctrl: &Controller,
    job: &Job,
    t: usize,
    stop: &AtomicBool,
    done: &AtomicU64,
) -> Result<ThreadResult> {
    let a = &job.args;
    pin_thread(a, t)?;
    let mut q = if a.interrupts {
        ctrl.io_qpair_with_interrupts()
    } else {
        ctrl.io_qpair()
    }
    .map_err(|e| Error::thread(t, e))?;
    let (first, blocks) = job.thread_range(t);
    if a.floor {
        return floor_thread(&mut q, job, t, first, blocks, done);
    }
    let mut generator = job.generator(t, first, blocks)?;
    let io_bytes = a.io_size as usize;
    let buffers = a
        .buffer_pool
        .map_or(a.qd, |bytes| (bytes / a.io_size.max(1)) as usize)
        .max(a.qd);
    let bufs = (0..buffers)
        .map(|_| ctrl.dma_pool().alloc(io_bytes).map_err(Error::from))
        .collect::<Result<Vec<_>>>()?;
    let registered = !a.owned_buffers;
    let mut ring = BufferRing::new(buffers, a.qd);
    let mut slots: Vec<Slot> = Vec::with_capacity(a.qd);
    if registered {
        q.register_buffers(bufs).map_err(|e| Error::thread(t, e))?;
        slots.resize_with(a.qd, || Slot {
            buf: None,
            buffer: 0,
            started: 0,
            read: true,
            slba: 0,
        });
    } else {
        slots.extend(bufs.into_iter().map(|b| Slot {
            buf: Some(b),
            buffer: 0,
            started: 0,
            read: true,
            slba: 0,
        }));
    }
    let mut stats = Stats::new();
    let mut runs = LatencyRuns::new(a.io_size);
    let mut scratch = vec![0u8; io_bytes];
    let mut completions: Vec<IoCompletion> = Vec::with_capacity(a.qd);
    let mut done_ios: Vec<FixedCompletion> = Vec::with_capacity(a.qd);
    let mut window = RunWindow::new(a);
    let mut in_flight = 0usize;
    let mut tally = Tally::new(Some(done));

    // Fill the queue. Times are nanoseconds since `base`.
    let base = Instant::now();
    let since_base = |t: Instant| u64::try_from((t - base).as_nanos()).unwrap_or(u64::MAX);
    for (i, slot) in slots.iter_mut().enumerate() {
        slot.started = 0;
        submit_one(
            &mut q,
            slot,
            i,
            &mut ring,
            &mut generator,
            job,
            &mut scratch,
        )?;
        in_flight += 1;
    }
    // The clock is read once per poll that completes something (that time
    // is every completion's end and every resubmission's start: latencies
    // include the batch's own processing, never less than the truth), and
    // every few empty polls to notice the end of the run.
    let mut empty_polls = 0u32;
    while in_flight > 0 {
        done_ios.clear();
        if registered {
            q.poll_fixed(&mut done_ios)
        } else {
            // The buffers go back to their slots; the rest of the loop is
            // the same for both paths.
            let n = q.poll(&mut completions);
            for c in completions.drain(..) {
                slots[c.tag as usize].buf = c.data;
                done_ios.push(FixedCompletion {
                    tag: c.tag,
                    result: c.result,
                });
            }
            n
        }
        .map_err(|e| Error::thread(t, e))?;
        if done_ios.is_empty() {
            empty_polls += 1;
            if empty_polls < EMPTY_POLLS_PER_CLOCK {
                continue;
            }
        }
        empty_polls = 0;
        let now = Instant::now();
        let now_ns = since_base(now);
        window.advance(now, stop, &mut stats);
        for c in done_ios.drain(..) {
            in_flight -= 1;
            let i = c.tag as usize;
            let slot = &mut slots[i];
            let latency = now_ns.saturating_sub(slot.started);
            match c.result {
                Ok(()) => {
                    if a.verify && slot.read {
                        let buf = slot
                            .buf
                            .as_ref()
                            .or_else(|| q.registered_buffer(slot.buffer))
                            .ok_or_else(|| {
                                Error::Failed("a read buffer did not come back".into())
                            })?;
                        buf.read(0, &mut scratch)?;
                        if let Some(bad) = pattern::first_mismatch(
                            a.seed,
                            slot.slba,
                            job.lba_size as usize,
                            &scratch,
                        ) {
                            return Err(Error::Failed(format!(
                                "verify: LBA {bad} (read at {}+{}) holds wrong data",
                                slot.slba, job.io_blocks
                            )));
                        }
                    }
                    if window.measuring {
                        runs.push(&mut stats, slot.read, latency);
                    }
                }
                Err(e) => count_error(&mut stats, a, t, Error::Driver(e))?,
            }
            tally.tick();
            if registered {
                ring.release(slot.buffer);
            }
            if !window.finishing && (registered || slot.buf.is_some()) {
                slot.started = now_ns;
                submit_one(
                    &mut q,
                    slot,
                    i,
                    &mut ring,
                    &mut generator,
                    job,
                    &mut scratch,
                )?;
                in_flight += 1;
            }
        }
        // Before the next poll's `window.advance` reads (or replaces) them.
        runs.flush(&mut stats);
    }
    tally.flush();
    stats.elapsed = Instant::now().saturating_duration_since(window.measure_start);
    Ok(ThreadResult {
        qid: q.qid(),
        stats,
        cache: None,
        path: Some((q.path_counters(), ring.scanned)),
    })
}

/// `--floor`: the driver's floor loop on this thread's queue pair.
fn floor_thread(
    q: &mut IoQPair,
    job: &Job,
    t: usize,
    first: u64,
    blocks: u64,
    done: &AtomicU64,
) -> Result<ThreadResult> {
    let a = &job.args;
    let write = matches!(a.workload, Workload::Write | Workload::Randwrite);
    let result = q
        .floor(&FloorJob {
            nsid: a.nsid,
            write,
            first_lba: first,
            blocks,
            io_blocks: u32::try_from(job.io_blocks)
                .map_err(|_| Error::Usage(format!("{} blocks per I/O", job.io_blocks)))?,
            depth: a.qd,
            random: a.workload.is_random(),
            seed: a.seed + t as u64,
            warmup: Duration::from_secs_f64(a.warmup.max(0.0)),
            time: Duration::from_secs_f64(a.time.max(0.0)),
            count: a.io_count,
        })
        .map_err(|e| Error::thread(t, e))?;
    done.fetch_add(result.ios + result.errors, Ordering::Relaxed);
    if let Some(status) = result.first_error {
        let e = format!(
            "floor loop: {} commands failed, the first with {status}",
            result.errors
        );
        if !a.continue_on_error {
            return Err(Error::thread(t, Error::Failed(e)));
        }
        log::warn!("thread {t}: {e}");
    }
    let mut stats = Stats::new();
    if write {
        stats.writes = result.ios;
    } else {
        stats.reads = result.ios;
    }
    stats.bytes = result.ios * a.io_size;
    stats.errors = result.errors;
    stats.elapsed = result.elapsed;
    stats.depth = Some(a.qd as u64);
    Ok(ThreadResult {
        qid: q.qid(),
        stats,
        cache: None,
        path: Some((q.path_counters(), 0)),
    })
}

/// Counts a failed I/O; the run stops at it unless `--continue-on-error`.
fn count_error(stats: &mut Stats, args: &Args, t: usize, e: Error) -> Result<()> {
    stats.errors += 1;
    if !args.continue_on_error {
        return Err(Error::thread(t, e));
    }
    log::warn!("thread {t}: {e}");
    Ok(())
}

/// A thread's run: a warm-up whose results are thrown away, the
/// measurement, then finishing (no new I/O; the last ones are reaped). The
/// loops that keep a queue depth (raw and vhost-user) share it.
struct RunWindow {
    warmup_end: Instant,
    run_for: Duration,
    io_count: Option<u64>,
    /// Results count from here on.
    measuring: bool,
    measure_start: Instant,
    /// No new I/O from here on.
    finishing: bool,
}

impl RunWindow {
    fn new(a: &Args) -> Self {
        let now = Instant::now();
        RunWindow {
            warmup_end: now + Duration::from_secs_f64(a.warmup.max(0.0)),
            run_for: Duration::from_secs_f64(a.time.max(0.0)),
            io_count: a.io_count,
            measuring: a.warmup <= 0.0,
            measure_start: now,
            finishing: false,
        }
    }

    /// Moves the run on at `now`: the end of the warm-up starts the
    /// measurement (with fresh `stats`); the run time, the I/O count or
    /// `stop` end it.
    fn advance(&mut self, now: Instant, stop: &AtomicBool, stats: &mut Stats) {
        if !self.measuring && now >= self.warmup_end {
            self.measuring = true;
            self.measure_start = now;
            *stats = Stats::new();
        }
        if !self.finishing
            && (stop.load(Ordering::Relaxed)
                || (self.measuring
                    && self.io_count.is_none()
                    && now - self.measure_start >= self.run_for)
                || self
                    .io_count
                    .is_some_and(|n| self.measuring && stats.ios() + stats.errors >= n))
        {
            self.finishing = true;
        }
    }
}

/// Feeds a thread's progress counter (the live line) every 64 I/Os, so the
/// I/O loop does not touch a shared atomic on every completion.
struct Tally<'a> {
    counter: Option<&'a AtomicU64>,
    pending: u64,
}

impl<'a> Tally<'a> {
    fn new(counter: Option<&'a AtomicU64>) -> Self {
        Tally {
            counter,
            pending: 0,
        }
    }

    fn tick(&mut self) {
        self.pending += 1;
        if self.pending == 64 {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if let Some(c) = self.counter {
            c.fetch_add(self.pending, Ordering::Relaxed);
        }
        self.pending = 0;
    }
}

/// Submits the generator's next I/O on `slot` (tag `tag`), whose
/// `started` the caller has set.
fn submit_one(
    q: &mut IoQPair,
    slot: &mut Slot,
    tag: usize,
    ring: &mut BufferRing,
    generator: &mut Generator,
    job: &Job,
    scratch: &mut [u8],
) -> Result<()> {
    let io = generator.next_io();
    let a = &job.args;
    slot.read = io.read;
    slot.slba = io.slba;
    let Some(buf) = slot.buf.take() else {
        // The registered path: the slot's own buffer, or the next free one.
        let buffer = ring
            .take(tag)
            .ok_or_else(|| Error::Failed("no free registered buffer".into()))?;
        slot.buffer = buffer;
        if !io.read && a.verify {
            pattern::fill(a.seed, io.slba, job.lba_size as usize, scratch);
            q.registered_buffer(buffer)
                .ok_or_else(|| Error::Failed("a registered buffer is missing".into()))?
                .write(0, scratch)?;
        }
        let blocks = u32::try_from(job.io_blocks)
            .map_err(|_| Error::Usage(format!("{} blocks per I/O", job.io_blocks)))?;
        let io = if io.read {
            FixedIo::read(a.nsid, io.slba, blocks, buffer)
        } else {
            FixedIo::write(a.nsid, io.slba, blocks, buffer)
        };
        return q.submit_fixed(io.with_tag(tag as u64)).map_err(Error::from);
    };
    if !io.read && a.verify {
        pattern::fill(a.seed, io.slba, job.lba_size as usize, scratch);
        buf.write(0, scratch)?;
    }
    let req = if io.read {
        IoRequest::read(a.nsid, io.slba, job.io_blocks, buf)
    } else {
        IoRequest::write(a.nsid, io.slba, job.io_blocks, buf)
    };
    q.submit(req.with_tag(tag as u64)).map_err(Error::from)
}

/// Writes the pattern over the whole range (sequential, queue depth 32) so
/// that every later read can be checked.
fn prefill(ctrl: &Controller, job: &Job) -> Result<()> {
    let a = &job.args;
    let mut q = ctrl.io_qpair()?;
    let chunk_blocks = (ctrl.max_transfer() as u64 / job.lba_size).clamp(1, 256);
    let mut lba = job.first;
    let end = job.first + job.blocks;
    let mut data = Vec::new();
    let mut done = Vec::new();
    let mut in_flight = 0;
    while lba < end || in_flight > 0 {
        while lba < end && in_flight < 32 {
            let n = chunk_blocks.min(end - lba);
            data.resize((n * job.lba_size) as usize, 0);
            pattern::fill(a.seed, lba, job.lba_size as usize, &mut data);
            let buf = ctrl.dma_pool().alloc(data.len())?;
            buf.write(0, &data)?;
            q.submit(IoRequest::write(a.nsid, lba, n, buf))?;
            lba += n;
            in_flight += 1;
        }
        done.clear();
        q.poll(&mut done)?;
        for c in done.drain(..) {
            in_flight -= 1;
            c.result.map_err(Error::Prefill)?;
        }
    }
    Ok(())
}

/// A live line on a terminal: I/Os so far and the current rate.
fn show_progress(
    args: &Args,
    progress: &[Arc<AtomicU64>],
    stop: &Arc<AtomicBool>,
) -> Option<std::thread::JoinHandle<()>> {
    if args.json || !std::io::stderr().is_terminal() {
        return None;
    }
    let counters: Vec<Arc<AtomicU64>> = progress.to_vec();
    let stop = stop.clone();
    Some(std::thread::spawn(move || {
        let bar = indicatif::ProgressBar::new_spinner();
        let mut last = 0u64;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs(1));
            let now: u64 = counters.iter().map(|c| c.load(Ordering::Relaxed)).sum();
            bar.set_message(format!("{now} I/Os, {} IOPS", now - last));
            bar.tick();
            last = now;
        }
        bar.finish_and_clear();
    }))
}

/// CPU time of this process so far, threads that ended included: user +
/// system time from /proc/self/stat (in USER_HZ ticks, 100 per second on
/// Linux).
fn cpu_time() -> Duration {
    const TICKS_PER_SECOND: u64 = 100;
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may contain spaces) end with ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; `fields` starts at
    // field 3 (state), so they are at 11 and 12.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND)
}

/// The `--json` document.
fn json_report(
    dev: &DeviceFacts,
    job: &Job,
    results: &[ThreadResult],
    total: &Stats,
    cache: Option<&cache_mode::Summary>,
    cpu: Duration,
    wall: Duration,
) -> tools_common::bench::Report {
    let a = &job.args;
    let threads = results
        .iter()
        .enumerate()
        .map(|(t, r)| tools_common::bench::ThreadReport {
            thread: t,
            qid: r.qid,
            figures: r.stats.figures(),
            cache: r.cache.as_ref().map(cache_mode::ThreadExtra::report),
            path: r
                .path
                .as_ref()
                .map(|(c, scanned)| tools_common::bench::PathReport {
                    polls: c.polls,
                    reaping_polls: c.reaping_polls,
                    cqes: c.cqes,
                    sqes: c.sqes,
                    sq_rings: c.sq_rings,
                    sq_mmio: c.sq_mmio,
                    cq_rings: c.cq_rings,
                    cq_mmio: c.cq_mmio,
                    buffer_scan: *scanned,
                }),
        })
        .collect();
    tools_common::bench::Report {
        label: a.label.clone(),
        mode: a.mode,
        job: tools_common::bench::JobReport {
            device: dev.device.clone(),
            vhost_user: a.vhost_user.is_some(),
            nsid: a.nsid,
            workload: a.workload,
            rwmixread: a.mix,
            io_size: a.io_size,
            // Queue depth means nothing in cache mode (one call at a time).
            queue_depth: (a.mode == Mode::Raw).then_some(a.qd),
            threads: a.threads,
            core_mask: a.core_mask.map(|m| format!("{m:#x}")),
            time: a.time,
            io_count: a.io_count,
            warmup: a.warmup,
            dist: format!("{:?}", a.dist),
            range_start: job.first,
            range_blocks: job.blocks,
            lba_size: job.lba_size,
            verify: a.verify,
            zero_copy: a.zero_copy,
            floor: a.floor,
            buffers: if a.owned_buffers {
                tools_common::bench::Buffers::Owned
            } else {
                tools_common::bench::Buffers::Registered
            },
            buffer_pool: a.buffer_pool,
            interrupts: a.interrupts,
            shadow_doorbells: dev.shadow_doorbells,
            sgl: dev.sgl,
            max_transfer: dev.max_transfer,
        },
        total: tools_common::bench::Total {
            figures: total.figures(),
            cpu_seconds: cpu.as_secs_f64(),
            wall_seconds: wall.as_secs_f64(),
        },
        threads,
        cache: cache.map(|c| c.report(results)),
    }
}

fn report(
    dev: &DeviceFacts,
    job: &Job,
    results: &[ThreadResult],
    total: &Stats,
    cache: Option<&cache_mode::Summary>,
    cpu: Duration,
    wall: Duration,
) {
    let a = &job.args;
    // Queue depth means nothing in cache mode (one call at a time).
    let qd = (a.mode == Mode::Raw).then_some(a.qd);
    if a.json {
        let doc = json_report(dev, job, results, total, cache, cpu, wall);
        match serde_json::to_string(&doc) {
            Ok(line) => println!("{line}"),
            Err(e) => log::error!("the report does not serialize: {e}"),
        }
        return;
    }
    println!(
        "{} nsid {} {:?} {}B {} x{} threads{}",
        dev.device,
        a.nsid,
        a.workload,
        a.io_size,
        match qd {
            Some(qd) => format!("qd {qd}"),
            None => "cache".to_string(),
        },
        a.threads,
        if a.verify {
            ", verified"
        } else if a.floor {
            ", floor loop (mean latency by Little's law)"
        } else {
            ""
        }
    );
    if let Some(c) = cache {
        println!("{}", c.describe());
    }
    println!(
        "{:<8}{:>12}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>8}",
        "", "IOPS", "MB/s", "min us", "mean us", "p50", "p99", "p99.9", "max us", "errors"
    );
    let row = |name: String, s: &Stats| {
        let l = s.latency();
        println!(
            "{name:<8}{:>12.0}{:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>8}",
            s.iops(),
            s.mbps(),
            l.min_us,
            l.mean_us,
            l.p50_us,
            l.p99_us,
            l.p999_us,
            l.max_us,
            s.errors
        );
    };
    for (t, r) in results.iter().enumerate() {
        row(format!("q{}#{t}", r.qid), &r.stats);
    }
    row("total".into(), total);
    if let Some(c) = cache {
        for line in c.traffic_lines(results) {
            println!("{line}");
        }
    }
    println!(
        "cpu {:.2} s over {:.2} s wall ({:.0}% of one core)",
        cpu.as_secs_f64(),
        wall.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_masks() {
        assert_eq!(parse_mask("0x5"), Ok(5));
        assert_eq!(parse_mask("f"), Ok(15));
        assert!(parse_mask("0").is_err() && parse_mask("0xg").is_err());
        assert_eq!(mask_cpu(0b1010, 0), Some(1));
        assert_eq!(mask_cpu(0b1010, 1), Some(3));
        assert_eq!(mask_cpu(0b1010, 2), None);
    }

    #[test]
    fn buffer_ring_hands_out_each_buffer_once_and_uses_all_in_turn() {
        // Four slots over six buffers, completing in reverse order (as
        // QEMU completes a batch on null-co).
        let mut ring = BufferRing::new(6, 4);
        let mut held: Vec<u32> = (0..4).map(|s| ring.take(s).expect("free")).collect();
        assert_eq!(held, [0, 1, 2, 3]);
        let mut used = std::collections::BTreeSet::new();
        for _ in 0..5 {
            for slot in (0..held.len()).rev() {
                ring.release(held[slot]);
                let b = ring.take(slot).expect("free");
                assert!(!held.contains(&b), "buffer {b} handed to two I/Os");
                held[slot] = b;
                used.insert(b);
            }
        }
        assert_eq!(used.len(), 6, "every buffer is used in turn: {used:?}");
        // One look per take, whatever the order.
        assert_eq!(ring.scanned, 4 + 5 * 4);
    }

    #[test]
    fn with_a_buffer_per_slot_each_slot_keeps_its_own() {
        let mut ring = BufferRing::new(4, 4);
        for round in 0..3 {
            for slot in (0..4).rev() {
                if round > 0 {
                    ring.release(slot as u32);
                }
                assert_eq!(ring.take(slot), Some(slot as u32));
            }
        }
        assert_eq!(ring.scanned, 0, "nothing looked up");
    }
}

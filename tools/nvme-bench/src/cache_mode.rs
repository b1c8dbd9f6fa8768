//! Cache mode (`--mode cache`): the workloads as buffered I/O through the
//! page cache, to measure what the cache costs (or saves) against the raw
//! driver.
//!
//! One [`PageCache`] (budget `--cache-size`, folios in DMA memory) holds
//! one [`File`] whose bytes are the benchmark range of the namespace
//! ([`IdentityMapper`]: file offset `o` is LBA `range_start + o /
//! lba_size`), or with `--files per-thread` one file per thread over its
//! own equal share of the range (disjoint files). Each thread has its own
//! [`NvmeDevice`] (its own queue pair) and its own open description of
//! its file (its own readahead window),
//! and makes one synchronous `read_at`/`write_at` call of `-o` bytes at a
//! time: `-q` does not apply; the device I/O is what readahead and
//! writeback make of the calls. A flusher thread (own queue pair) does
//! background writeback unless `--no-flusher`.
//!
//! Phases, each run by every thread:
//! 1. `--warm` (default for read and randread): preload, every thread
//!    reads its share of the range once, so the whole range is cached
//!    (it must fit the budget).
//! 2. Warm-up (`--warmup` seconds): the workload, not measured; ends with
//!    an fsync when the workload writes, so the measured window inherits
//!    no dirty data.
//! 3. `--cold` (default for workloads that write): the cache and the file
//!    are dropped and opened afresh, so the measured window starts empty
//!    and reads go to the device through readahead.
//! 4. Measured window (`-t` seconds or `-n` calls per thread): latency of
//!    every call; when the workload writes it ends with an fsync per
//!    thread, inside the window (and reported on its own too).

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mpage::nvme::{DmaFolioMemory, NvmeDevice};
use mpage::{Bio, BioOp, BlockDevice, Completion, DeviceError, File, Flusher, FlusherThread};
use mpage::{Geometry, IdentityMapper};
use nvme_bench::pattern;
use nvme_bench::stats::Stats;
use nvme_bench::workload::{Generator, Spec};
use nvme_driver::Controller;
use pagecache::{BlockSize, FolioMemory, PAGE_SIZE, PageCache};

use crate::error::{Error, Result};
use crate::{Args, Job, Tally, ThreadResult, count_error};

const PAGE: u64 = PAGE_SIZE as u64;
/// Size of the read_at calls that preload the range.
const PRELOAD_CHUNK: u64 = 1 << 20;
/// The flusher also looks at the cache this often when nobody wakes it.
const FLUSHER_INTERVAL: Duration = Duration::from_secs(1);
/// How long a thread waits for its readahead still in flight at the end
/// of a phase.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) use tools_common::bench::{CacheState, Files};

/// The cache-mode job, checked against the namespace.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    state: CacheState,
    /// Bytes of the benchmark range (all files together).
    file_size: u64,
    /// Shared file or one per thread.
    files: Files,
    /// Bytes of each file: the range, or a thread's share of it.
    per_file: u64,
    /// Random offsets are multiples of this many bytes.
    align: u64,
    /// Sequential shares of the threads start at multiples of this.
    granule: u64,
    /// Whether the workload writes (the measured window ends with fsync).
    writes: bool,
}

/// Checks the cache-mode options against the range; fails with a message
/// saying which option to change.
pub(crate) fn plan(job: &Job) -> Result<Plan> {
    plan_for(&job.args, job.lba_size, job.blocks)
}

fn plan_for(a: &Args, lba_size: u64, blocks: u64) -> Result<Plan> {
    if lba_size == 0 || lba_size > PAGE {
        return Err(Error::Usage(format!(
            "cache mode needs an LBA size of at most {PAGE} bytes (this namespace: {lba_size})"
        )));
    }
    let file_size = blocks
        .checked_mul(lba_size)
        .ok_or_else(|| Error::Usage("the range is too large".into()))?;
    let align = a.align.unwrap_or(a.io_size);
    if a.verify && !(a.io_size.is_multiple_of(lba_size) && align.is_multiple_of(lba_size)) {
        return Err(Error::Usage(format!(
            "--verify checks whole LBAs: the I/O size ({}) and the alignment ({align}) must be \
             multiples of the {lba_size}-byte LBA size",
            a.io_size
        )));
    }
    // PAGE is a multiple of every LBA size up to a page: thread shares are
    // then page- and LBA-aligned.
    let granule = PAGE;
    let per_file = match a.files {
        Files::Shared => file_size,
        Files::PerThread => share(file_size, a.threads, granule),
    };
    let span = if a.workload.is_random() || a.files == Files::PerThread {
        per_file
    } else {
        share(file_size, a.threads, granule)
    };
    if span < a.io_size {
        return Err(Error::Usage(format!(
            "a {}-byte call does not fit the {span} bytes each thread works on \
             (range {file_size} bytes, {} threads)",
            a.io_size, a.threads
        )));
    }
    let read_only = a.workload.read_percent(a.mix) == 100;
    let state = match (a.cold, a.warm) {
        (true, _) => CacheState::Cold,
        (_, true) => CacheState::Warm,
        _ if read_only => CacheState::Warm,
        _ => CacheState::Cold,
    };
    if state == CacheState::Warm && file_size > a.cache_size {
        return Err(Error::Usage(format!(
            "{}: the range ({file_size} bytes) does not fit the {}-byte page cache; give a \
             smaller --range-size, a larger --cache-size, or --cold",
            if a.warm {
                "--warm"
            } else {
                "a warm cache (the default for read workloads)"
            },
            a.cache_size
        )));
    }
    Ok(Plan {
        state,
        file_size,
        files: a.files,
        per_file,
        align,
        granule,
        writes: !read_only,
    })
}

/// Bytes of the range each thread of a sequential workload works on:
/// an equal share, rounded down to `granule`.
fn share(file_size: u64, threads: usize, granule: u64) -> u64 {
    let threads = (threads as u64).max(1);
    file_size / threads / granule * granule
}

/// The part of its file thread `t` works on: the whole file for random
/// workloads and for a file of its own, its share for sequential ones (as
/// in raw mode, what is left over after the shares is not used).
fn thread_span(plan: &Plan, threads: usize, t: usize, random: bool) -> Range<u64> {
    if random || plan.files == Files::PerThread {
        return 0..plan.per_file;
    }
    let part = share(plan.file_size, threads, plan.granule);
    let start = part * t as u64;
    start..start + part
}

/// The part of the file thread `t` preloads: its share, the last thread
/// taking what is left over, so the whole file gets read.
fn preload_span(file_size: u64, threads: usize, t: usize, granule: u64) -> Range<u64> {
    let part = share(file_size, threads, granule);
    let start = (part * t as u64).min(file_size);
    if t + 1 >= threads {
        start..file_size
    } else {
        start..(start + part).min(file_size)
    }
}

/// The part of its file thread `t` preloads: with a shared file its share
/// (see [`preload_span`]), else its whole own file.
fn thread_preload_span(plan: &Plan, threads: usize, t: usize) -> Range<u64> {
    match plan.files {
        Files::Shared => preload_span(plan.file_size, threads, t, plan.granule),
        Files::PerThread => 0..plan.per_file,
    }
}

/// Index of thread `t`'s file and the byte offset of its start in the
/// range.
fn file_of(plan: &Plan, t: usize) -> (usize, u64) {
    match plan.files {
        Files::Shared => (0, 0),
        Files::PerThread => (t, plan.per_file * t as u64),
    }
}

/// The namespace LBA holding file offset `offset`.
fn lba_of(range_start: u64, lba_size: u64, offset: u64) -> u64 {
    range_start + offset / lba_size
}

/// Commands and bytes a device was asked for, counted as they are
/// submitted (shared with the reporting side).
#[derive(Debug, Default)]
struct DevCounts {
    reads: AtomicU64,
    read_bytes: AtomicU64,
    writes: AtomicU64,
    write_bytes: AtomicU64,
    flushes: AtomicU64,
}

impl DevCounts {
    fn snapshot(&self) -> Traffic {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Traffic {
            reads: get(&self.reads),
            read_bytes: get(&self.read_bytes),
            writes: get(&self.writes),
            write_bytes: get(&self.write_bytes),
            flushes: get(&self.flushes),
        }
    }
}

/// Device traffic over some time: NVMe commands and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Traffic {
    reads: u64,
    read_bytes: u64,
    writes: u64,
    write_bytes: u64,
    flushes: u64,
}

impl Traffic {
    fn since(self, before: Traffic) -> Traffic {
        Traffic {
            reads: self.reads.saturating_sub(before.reads),
            read_bytes: self.read_bytes.saturating_sub(before.read_bytes),
            writes: self.writes.saturating_sub(before.writes),
            write_bytes: self.write_bytes.saturating_sub(before.write_bytes),
            flushes: self.flushes.saturating_sub(before.flushes),
        }
    }

    fn add(self, o: Traffic) -> Traffic {
        Traffic {
            reads: self.reads + o.reads,
            read_bytes: self.read_bytes + o.read_bytes,
            writes: self.writes + o.writes,
            write_bytes: self.write_bytes + o.write_bytes,
            flushes: self.flushes + o.flushes,
        }
    }

    fn report(self) -> tools_common::bench::Traffic {
        tools_common::bench::Traffic {
            read_commands: self.reads,
            read_bytes: self.read_bytes,
            write_commands: self.writes,
            write_bytes: self.write_bytes,
            flushes: self.flushes,
        }
    }

    fn describe(self) -> String {
        format!(
            "{} reads ({:.1} MB), {} writes ({:.1} MB), {} flushes",
            self.reads,
            self.read_bytes as f64 / 1e6,
            self.writes,
            self.write_bytes as f64 / 1e6,
            self.flushes
        )
    }
}

/// An [`NvmeDevice`] that counts what is submitted to it.
#[derive(Debug)]
struct CountingDevice {
    inner: NvmeDevice,
    lba_size: u64,
    counts: Arc<DevCounts>,
}

impl CountingDevice {
    /// Namespace `nsid` through a new queue pair of `ctrl`; returns the
    /// device and the queue id.
    fn open(ctrl: &Controller, a: &Args, counts: Arc<DevCounts>) -> Result<(Self, u16)> {
        let q = if a.interrupts {
            ctrl.io_qpair_with_interrupts()
        } else {
            ctrl.io_qpair()
        }?;
        let qid = q.qid();
        let inner = NvmeDevice::new(ctrl, q, a.nsid)?;
        let lba_size = u64::from(inner.geometry().lba_size);
        Ok((
            CountingDevice {
                inner,
                lba_size,
                counts,
            },
            qid,
        ))
    }
}

impl BlockDevice for CountingDevice {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }

    #[allow(clippy::result_large_err)]
    fn submit(&mut self, bio: Bio) -> std::result::Result<(), (Bio, DeviceError)> {
        let (op, bytes) = (bio.op(), bio.blocks() * self.lba_size);
        self.inner.submit(bio)?;
        let c = &self.counts;
        let (n, b) = match op {
            BioOp::Read => (&c.reads, Some(&c.read_bytes)),
            BioOp::Write => (&c.writes, Some(&c.write_bytes)),
            BioOp::Flush => (&c.flushes, None),
        };
        n.fetch_add(1, Ordering::Relaxed);
        if let Some(b) = b {
            b.fetch_add(bytes, Ordering::Relaxed);
        }
        Ok(())
    }

    fn commit(&mut self) -> std::result::Result<(), DeviceError> {
        self.inner.commit()
    }

    fn poll(&mut self, done: &mut Vec<Completion>) -> std::result::Result<usize, DeviceError> {
        self.inner.poll(done)
    }

    fn wait(
        &mut self,
        done: &mut Vec<Completion>,
        timeout: Duration,
    ) -> std::result::Result<usize, DeviceError> {
        self.inner.wait(done, timeout)
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
}

/// One bench thread's belongings, kept across the phases.
#[derive(Debug)]
struct Worker {
    t: usize,
    qid: u16,
    dev: CountingDevice,
    counts: Arc<DevCounts>,
    generator: Generator,
    buf: Vec<u8>,
}

impl Worker {
    fn new(ctrl: &Controller, job: &Job, plan: &Plan, t: usize) -> Result<Worker> {
        let a = &job.args;
        let counts = Arc::new(DevCounts::default());
        let (dev, qid) =
            CountingDevice::open(ctrl, a, counts.clone()).map_err(|e| Error::thread(t, e))?;
        // The generator counts in bytes of the file: "blocks" of one byte.
        let span = thread_span(plan, a.threads, t, a.workload.is_random());
        let generator = Generator::new(&Spec {
            workload: a.workload,
            mix: a.mix,
            dist: a.dist,
            first: span.start,
            blocks: span.end - span.start,
            io_blocks: a.io_size,
            align_blocks: plan.align,
            seed: a.seed + t as u64,
        })?;
        let len = usize::try_from(a.io_size)
            .map_err(|_| Error::Usage("the I/O size is too large".into()))?;
        Ok(Worker {
            t,
            qid,
            dev,
            counts,
            generator,
            buf: vec![0u8; len],
        })
    }

    /// Waits for this thread's readahead still in flight.
    fn drain(&mut self) -> Result<()> {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.dev.in_flight() > 0 {
            if Instant::now() >= deadline {
                let n = self.dev.in_flight();
                let e = Error::Failed(format!("{n} commands still in flight"));
                return Err(Error::thread(self.t, e));
            }
            mpage::io::reap(&mut self.dev, Some(Duration::from_millis(10)))
                .map_err(|e| Error::thread(self.t, Error::cache("reaping readahead")(e)))?;
        }
        Ok(())
    }
}

/// What the workers share in a phase.
#[derive(Debug, Clone, Copy)]
struct Ctx<'a> {
    job: &'a Job,
    plan: &'a Plan,
    stop: &'a AtomicBool,
    progress: &'a [Arc<AtomicU64>],
}

/// The cache and the file(s) over the range, with their flusher.
#[derive(Debug)]
struct Cached {
    // Dropped first: the flusher thread stops before the files go.
    flusher: Option<FlusherThread>,
    /// One file ([`Files::Shared`]) or one per thread.
    files: Vec<File>,
    cache: Arc<PageCache>,
}

impl Cached {
    fn open(
        ctrl: &Controller,
        job: &Job,
        plan: &Plan,
        memory: &Arc<dyn FolioMemory>,
        flusher_counts: &Arc<DevCounts>,
    ) -> Result<Cached> {
        let a = &job.args;
        // Map the budget's memory now, not on the measured I/O path (the
        // DMA pool keeps it across the cold start's fresh cache).
        memory.reserve(a.cache_size).map_err(Error::Reserve)?;
        let cache = Arc::new(PageCache::new(memory.clone(), a.cache_size)?);
        let lba_size =
            u32::try_from(job.lba_size).map_err(|_| Error::Usage("LBA size too large".into()))?;
        let n = match plan.files {
            Files::Shared => 1,
            Files::PerThread => a.threads,
        };
        let files = (0..n)
            .map(|t| {
                let (_, start) = file_of(plan, t);
                let first = lba_of(job.first, job.lba_size, start);
                let blocks = plan.per_file / job.lba_size;
                let mapper = Arc::new(IdentityMapper::new(first, blocks, lba_size));
                let file = File::open(cache.clone(), mapper, BlockSize::PAGE, plan.per_file)
                    .map_err(Error::cache("opening the range as a file"))?;
                if let Some(pages) = a.readahead {
                    // Descriptions opened from it (one per thread) take
                    // this too.
                    file.set_readahead(pages);
                }
                Ok(file)
            })
            .collect::<Result<Vec<_>>>()?;
        let flusher = if a.no_flusher {
            None
        } else {
            let f = Flusher::new(cache.clone());
            for file in &files {
                f.attach(file).map_err(Error::cache("flusher"))?;
            }
            let (dev, _) = CountingDevice::open(ctrl, a, flusher_counts.clone())
                .map_err(|e| Error::Flusher(Box::new(e)))?;
            Some(
                f.spawn(Box::new(dev), FLUSHER_INTERVAL)
                    .map_err(Error::cache("flusher"))?,
            )
        };
        Ok(Cached {
            flusher,
            files,
            cache,
        })
    }

    /// The file thread `t` works on.
    fn file(&self, plan: &Plan, t: usize) -> &File {
        &self.files[file_of(plan, t).0]
    }

    /// Bytes of the files in the cache (folios of any size).
    fn resident(&self) -> u64 {
        self.files
            .iter()
            .map(|file| {
                let ino = file.inode();
                ino.cache
                    .all_folios(ino.file)
                    .map_or(0, |f| f.iter().map(|f| f.size() as u64).sum())
            })
            .sum()
    }
}

/// Per-thread cache-mode numbers of the measured window.
#[derive(Debug, Clone)]
pub(crate) struct ThreadExtra {
    /// The closing fsync (workloads that write).
    fsync: Option<Duration>,
    /// What the thread's own queue pair carried.
    traffic: Traffic,
    /// Its readahead window at the end: (start, size, async size) pages.
    readahead_window: (u64, u64, u64),
    /// Its readahead maximum in pages (set, or sized from the device).
    readahead_max: u64,
}

impl ThreadExtra {
    pub(crate) fn report(&self) -> tools_common::bench::ThreadCache {
        let (start, pages, async_pages) = self.readahead_window;
        tools_common::bench::ThreadCache {
            fsync_seconds: self.fsync.map(|d| d.as_secs_f64()),
            device: self.traffic.report(),
            readahead_window: tools_common::bench::ReadaheadWindow {
                start,
                pages,
                async_pages,
            },
            readahead_max_pages: self.readahead_max,
        }
    }
}

/// Cache-mode numbers of the whole run.
#[derive(Debug, Clone)]
pub(crate) struct Summary {
    state: CacheState,
    budget: u64,
    file_size: u64,
    files: Files,
    per_file: u64,
    readahead_max: u64,
    flusher: bool,
    /// Preload (warm): seconds and the bytes of the file cached after it.
    preload: Option<(Duration, u64)>,
    /// What the flusher's queue pair carried in the measured window.
    flusher_traffic: Traffic,
    /// Cache memory in use at the end, and dirty.
    used_end: u64,
    dirty_end: u64,
}

fn extras(results: &[ThreadResult]) -> impl Iterator<Item = &ThreadExtra> {
    results.iter().filter_map(|r| r.cache.as_ref())
}

impl Summary {
    fn threads_traffic(results: &[ThreadResult]) -> Traffic {
        extras(results).fold(Traffic::default(), |t, e| t.add(e.traffic))
    }

    fn fsync_max(results: &[ThreadResult]) -> Option<Duration> {
        extras(results).filter_map(|e| e.fsync).max()
    }

    pub(crate) fn report(&self, results: &[ThreadResult]) -> tools_common::bench::CacheReport {
        let threads = Self::threads_traffic(results);
        tools_common::bench::CacheReport {
            state: self.state,
            cache_size: self.budget,
            file_size: self.file_size,
            files: self.files,
            bytes_per_file: self.per_file,
            readahead_max_pages: self.readahead_max,
            flusher: self.flusher,
            preload_seconds: self.preload.map(|(d, _)| d.as_secs_f64()),
            preload_resident_bytes: self.preload.map(|(_, b)| b),
            fsync_max_seconds: Self::fsync_max(results).map(|d| d.as_secs_f64()),
            device: threads.add(self.flusher_traffic).report(),
            device_threads: threads.report(),
            device_flusher: self.flusher_traffic.report(),
            used_bytes_end: self.used_end,
            dirty_bytes_end: self.dirty_end,
        }
    }

    pub(crate) fn describe(&self) -> String {
        let files = match self.files {
            Files::Shared => format!("file {} MiB", self.file_size >> 20),
            Files::PerThread => format!("one {} MiB file per thread", self.per_file >> 20),
        };
        let mut s = format!(
            "page cache {} MiB, {:?}, {files}, readahead max {} pages, flusher {}",
            self.budget >> 20,
            self.state,
            self.readahead_max,
            if self.flusher { "on" } else { "off" }
        );
        if let Some((d, bytes)) = self.preload {
            s += &format!(
                "; preloaded {} MiB in {:.2} s",
                bytes >> 20,
                d.as_secs_f64()
            );
        }
        s
    }

    pub(crate) fn traffic_lines(&self, results: &[ThreadResult]) -> Vec<String> {
        let mut lines = vec![format!(
            "device (measured window): {}",
            Self::threads_traffic(results)
                .add(self.flusher_traffic)
                .describe()
        )];
        if self.flusher {
            lines.push(format!(
                "  of which the flusher: {}",
                self.flusher_traffic.describe()
            ));
        }
        if let Some(max) = Self::fsync_max(results) {
            let each: Vec<String> = extras(results)
                .filter_map(|e| e.fsync)
                .map(|d| format!("{:.1}", d.as_secs_f64() * 1e3))
                .collect();
            lines.push(format!(
                "fsync at the end (in the window): {} ms per thread, max {:.1} ms",
                each.join(" / "),
                max.as_secs_f64() * 1e3
            ));
        }
        lines.push(format!(
            "cache at the end: {} MiB used, {} MiB dirty",
            self.used_end >> 20,
            self.dirty_end >> 20
        ));
        lines
    }
}

/// Runs the cache-mode job (see the module documentation).
pub(crate) fn run(
    ctrl: &Controller,
    job: &Job,
    plan: &Plan,
    stop: &AtomicBool,
    progress: &[Arc<AtomicU64>],
) -> Result<(Vec<ThreadResult>, Summary)> {
    let a = &job.args;
    let ctx = Ctx {
        job,
        plan,
        stop,
        progress,
    };
    let memory: Arc<dyn FolioMemory> = Arc::new(DmaFolioMemory::new(ctrl.dma_pool().clone()));
    let mut workers = (0..a.threads)
        .map(|t| Worker::new(ctrl, job, plan, t))
        .collect::<Result<Vec<_>>>()?;
    let flusher_counts = Arc::new(DevCounts::default());
    let mut cached = Cached::open(ctrl, job, plan, &memory, &flusher_counts)?;

    let mut preload_done = None;
    if plan.state == CacheState::Warm {
        let started = Instant::now();
        run_phase(&mut workers, stop, &job.args, |w| {
            preload(w, ctx, cached.file(plan, w.t))
        })?;
        let resident = cached.resident();
        let wanted = match plan.files {
            Files::Shared => plan.file_size,
            Files::PerThread => plan.per_file * a.threads as u64,
        };
        if resident < wanted {
            log::warn!("after the preload {resident} of {wanted} bytes are cached");
        }
        preload_done = Some((started.elapsed(), resident));
    }
    if a.warmup > 0.0 {
        run_phase(&mut workers, stop, &job.args, |w| {
            timed(w, ctx, cached.file(plan, w.t), false)
        })?;
    }
    if plan.state == CacheState::Cold && a.warmup > 0.0 {
        // The warm-up's data is on the device (fsync) and nothing is in
        // flight: drop everything cached. (Without a warm-up the cache
        // opened above is still empty.)
        drop(cached);
        cached = Cached::open(ctrl, job, plan, &memory, &flusher_counts)?;
    }
    let flusher_before = flusher_counts.snapshot();
    let results = run_phase(&mut workers, stop, &job.args, |w| {
        timed(w, ctx, cached.file(plan, w.t), true)
    })?;
    let summary = Summary {
        state: plan.state,
        budget: cached.cache.budget(),
        file_size: plan.file_size,
        files: plan.files,
        per_file: plan.per_file,
        // What the threads' handles used: set by --readahead, or sized
        // from the device.
        readahead_max: results
            .iter()
            .filter_map(|r| r.cache.as_ref().map(|c| c.readahead_max))
            .max()
            .unwrap_or_else(|| cached.files[0].readahead_max()),
        flusher: cached.flusher.is_some(),
        preload: preload_done,
        flusher_traffic: flusher_counts.snapshot().since(flusher_before),
        used_end: cached.cache.used(),
        dirty_end: cached.cache.dirty_bytes(),
    };
    Ok((results, summary))
}

/// Runs `f` on every worker, each on its own thread; the first failure
/// stops the others.
fn run_phase<F>(
    workers: &mut [Worker],
    stop: &AtomicBool,
    args: &Args,
    f: F,
) -> Result<Vec<ThreadResult>>
where
    F: Fn(&mut Worker) -> Result<ThreadResult> + Sync,
{
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = workers
            .iter_mut()
            .map(|w| {
                s.spawn(move || {
                    let r = crate::pin_thread(args, w.t).and_then(|()| f(w));
                    if r.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        crate::collect_threads(handles.into_iter().map(|h| h.join()), stop)
    })
}

/// Checks that `data`, read by thread `t` at offset `pos` of its file,
/// holds the pattern.
fn check(job: &Job, plan: &Plan, t: usize, pos: u64, data: &[u8]) -> Result<()> {
    let a = &job.args;
    let lba = lba_of(job.first, job.lba_size, file_of(plan, t).1 + pos);
    match pattern::first_mismatch(a.seed, lba, job.lba_size as usize, data) {
        None => Ok(()),
        Some(bad) => Err(Error::Failed(format!(
            "verify: LBA {bad} (read_at file offset {pos}, {} bytes) holds wrong data",
            data.len()
        ))),
    }
}

/// Reads the worker's share of the file once, in large calls.
fn preload(w: &mut Worker, ctx: Ctx<'_>, file: &File) -> Result<ThreadResult> {
    let (job, plan) = (ctx.job, ctx.plan);
    let a = &job.args;
    let desc = file.reopen().map_err(Error::cache("reopening the file"))?;
    let span = thread_preload_span(plan, a.threads, w.t);
    let mut buf = vec![0u8; PRELOAD_CHUNK.min(span.end - span.start) as usize];
    let mut stats = Stats::new();
    let started = Instant::now();
    let mut pos = span.start;
    while pos < span.end && !ctx.stop.load(Ordering::Relaxed) {
        let len = (span.end - pos).min(PRELOAD_CHUNK) as usize;
        let chunk = &mut buf[..len];
        let t0 = Instant::now();
        let n = desc
            .read_at(&mut w.dev, pos, chunk)
            .map_err(|e| Error::thread(w.t, Error::cache(format!("preload at {pos}"))(e)))?;
        if n != len {
            let e = Error::Failed(format!("preload at {pos}: read {n} of {len} bytes"));
            return Err(Error::thread(w.t, e));
        }
        stats.record(true, len as u64, t0.elapsed());
        if a.verify {
            check(job, plan, w.t, pos, chunk)?;
        }
        pos += len as u64;
    }
    w.drain()?;
    stats.elapsed = started.elapsed();
    Ok(ThreadResult {
        qid: w.qid,
        stats,
        cache: None,
        path: None,
    })
}

/// The workload on the worker's part of the file: the warm-up (not
/// `measured`: `--warmup` seconds) or the measured window (`-t` seconds or
/// `-n` calls), then an fsync when the workload writes.
fn timed(w: &mut Worker, ctx: Ctx<'_>, file: &File, measured: bool) -> Result<ThreadResult> {
    let (job, plan) = (ctx.job, ctx.plan);
    let a = &job.args;
    let t = w.t;
    let desc = file
        .reopen()
        .map_err(|e| Error::thread(t, Error::cache("reopening the file")(e)))?;
    let run_for = Duration::from_secs_f64(if measured { a.time } else { a.warmup }.max(0.0));
    let count = if measured { a.io_count } else { None };
    let mut tally = Tally::new(ctx.progress.get(t).map(|c| &**c));
    let mut stats = Stats::new();
    let before = w.counts.snapshot();
    let start = Instant::now();
    let mut now = start;
    loop {
        if ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        let finished = match count {
            Some(n) => stats.ios() + stats.errors >= n,
            None => now - start >= run_for,
        };
        if finished {
            break;
        }
        let io = w.generator.next_io();
        let pos = io.slba;
        let len = w.buf.len();
        if !io.read && a.verify {
            let lba = lba_of(job.first, job.lba_size, file_of(plan, t).1 + pos);
            pattern::fill(a.seed, lba, job.lba_size as usize, &mut w.buf);
        }
        let t0 = Instant::now();
        let r = if io.read && a.zero_copy {
            read_views(&desc, &mut w.dev, pos, &mut w.buf, a.verify)
        } else if io.read {
            desc.read_at(&mut w.dev, pos, &mut w.buf)
        } else {
            desc.write_at(&mut w.dev, pos, &w.buf)
        };
        now = Instant::now();
        let what = match (io.read, a.zero_copy) {
            (true, true) => "read_folios",
            (true, false) => "read_at",
            (false, _) => "write_at",
        };
        let outcome = match r {
            Ok(n) if n == len => {
                if io.read && a.verify {
                    check(job, plan, t, pos, &w.buf)?;
                }
                Ok(())
            }
            Ok(n) => Err(Error::Failed(format!(
                "{what} at {pos}: {n} of {len} bytes"
            ))),
            Err(e) => Err(Error::cache(format!("{what} at {pos}"))(e)),
        };
        match outcome {
            Ok(()) => stats.record(io.read, len as u64, now - t0),
            Err(e) => count_error(&mut stats, a, t, e)?,
        }
        tally.tick();
    }
    tally.flush();
    let mut fsync = None;
    if plan.writes {
        let t0 = Instant::now();
        if let Err(e) = desc.fsync(&mut w.dev) {
            count_error(&mut stats, a, t, Error::cache("fsync")(e))?;
        }
        fsync = Some(t0.elapsed());
    }
    stats.elapsed = start.elapsed();
    let traffic = w.counts.snapshot().since(before);
    let readahead_window = desc.readahead_window();
    let readahead_max = desc.readahead_max();
    // Readahead still in flight belongs to this phase (and, when cold,
    // to the cache about to be dropped).
    w.drain()?;
    Ok(ThreadResult {
        qid: w.qid,
        stats,
        path: None,
        cache: Some(ThreadExtra {
            fsync,
            traffic,
            readahead_window,
            readahead_max,
        }),
    })
}

/// A zero-copy read of `buf.len()` bytes at `pos`: views of the folios
/// (the device filled them; nothing is copied), dropped at once. With
/// `copy` (for --verify) the bytes are copied out of the views into `buf`.
/// Returns the bytes the views cover.
fn read_views(
    file: &File,
    dev: &mut dyn BlockDevice,
    pos: u64,
    buf: &mut [u8],
    copy: bool,
) -> mpage::Result<usize> {
    let end = pos + buf.len() as u64;
    let mut at = pos;
    for v in file.read_folios(dev, pos, buf.len())? {
        let to = end.min(v.pos() + v.len() as u64);
        if copy {
            let out = &mut buf[(at - pos) as usize..(to - pos) as usize];
            v.read((at - v.pos()) as usize, out)?;
        }
        at = to;
    }
    Ok((at - pos) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["nvme-bench", "--mode", "cache"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).expect("valid arguments")
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn cold_and_warm_defaults_and_flags() {
        let blocks = 64 * MIB / 512;
        let p = plan_for(&args(&["-w", "randread"]), 512, blocks).expect("fits");
        assert_eq!(p.state, CacheState::Warm, "reads default to warm");
        assert!(!p.writes);
        let p = plan_for(&args(&["-w", "write"]), 512, blocks).expect("ok");
        assert_eq!(p.state, CacheState::Cold, "writes default to cold");
        assert!(p.writes);
        let p = plan_for(&args(&["-w", "rw", "-M", "100"]), 512, blocks).expect("ok");
        assert_eq!(p.state, CacheState::Warm, "rw with 100% reads only reads");
        let p = plan_for(&args(&["-w", "randwrite", "--warm"]), 512, blocks).expect("ok");
        assert_eq!(p.state, CacheState::Warm);
        let p = plan_for(&args(&["-w", "read", "--cold"]), 512, blocks).expect("ok");
        assert_eq!(p.state, CacheState::Cold);
        assert_eq!(p.file_size, 64 * MIB);
        assert!(
            Args::try_parse_from(["nvme-bench", "--mode", "cache", "--cold", "--warm"]).is_err()
        );
    }

    #[test]
    fn warm_range_must_fit_the_cache() {
        let blocks = 512 * MIB / 4096;
        let e = plan_for(&args(&["--warm"]), 4096, blocks).expect_err("512M > 256M");
        assert!(e.to_string().contains("--cache-size"), "{e}");
        let e = plan_for(&args(&["-w", "read"]), 4096, blocks).expect_err("default warm");
        assert!(e.to_string().contains("default"), "{e}");
        assert!(plan_for(&args(&["--warm", "--cache-size", "512M"]), 4096, blocks).is_ok());
        assert!(plan_for(&args(&["-w", "read", "--cold"]), 4096, blocks).is_ok());
    }

    #[test]
    fn io_size_and_verify_checks() {
        // Any call size without --verify.
        assert!(plan_for(&args(&["-o", "1000", "--cold"]), 512, 1024).is_ok());
        let e = plan_for(&args(&["-o", "1000", "--verify"]), 512, 1024).expect_err("not LBAs");
        assert!(e.to_string().contains("multiples"), "{e}");
        let e = plan_for(
            &args(&["-o", "4096", "--align", "100", "--verify"]),
            512,
            1024,
        )
        .expect_err("alignment not LBAs");
        assert!(e.to_string().contains("alignment"), "{e}");
        assert!(plan_for(&args(&["-o", "4096", "--verify"]), 512, 1024).is_ok());
        // Sequential: each of 4 threads gets 128K of a 512K range.
        let e = plan_for(&args(&["-w", "read", "-j", "4", "-o", "256K"]), 512, 1024)
            .expect_err("share too small");
        assert!(e.to_string().contains("131072"), "{e}");
        assert!(
            plan_for(
                &args(&["-w", "randread", "-j", "4", "-o", "256K"]),
                512,
                1024
            )
            .is_ok()
        );
        assert!(
            plan_for(&args(&[]), 8192, 1024).is_err(),
            "LBA larger than a page"
        );
    }

    #[test]
    fn offset_math() {
        // File offset → LBA of the underlying namespace.
        assert_eq!(lba_of(1000, 512, 0), 1000);
        assert_eq!(lba_of(1000, 512, 511), 1000);
        assert_eq!(lba_of(1000, 512, 4096), 1008);
        assert_eq!(lba_of(7, 4096, 8192), 9);
        // Sequential shares: page-aligned, disjoint, as in raw mode.
        let p = plan_for(&args(&["-w", "read", "-j", "3", "--cold"]), 512, 100_000).expect("ok");
        assert_eq!(p.file_size, 51_200_000);
        let spans: Vec<_> = (0..3).map(|t| thread_span(&p, 3, t, false)).collect();
        let part = 51_200_000 / 3 / 4096 * 4096;
        assert_eq!(spans[0], 0..part);
        assert_eq!(spans[1], part..2 * part);
        assert_eq!(spans[2], 2 * part..3 * part);
        assert!(spans.iter().all(|s| s.start % 4096 == 0));
        assert_eq!(thread_span(&p, 3, 2, true), 0..51_200_000);
        // The preload covers the whole file, the last thread the rest.
        let pre: Vec<_> = (0..3)
            .map(|t| preload_span(51_200_000, 3, t, 4096))
            .collect();
        assert_eq!(pre[0], spans[0]);
        assert_eq!(pre[1], spans[1]);
        assert_eq!(pre[2], 2 * part..51_200_000);
        // A file smaller than a share per thread: the last thread reads it.
        assert_eq!(preload_span(6000, 2, 0, 4096), 0..0);
        assert_eq!(preload_span(6000, 2, 1, 4096), 0..6000);
    }

    #[test]
    fn per_thread_files_are_disjoint_shares() {
        let blocks = 64 * MIB / 512;
        let p = plan_for(
            &args(&["-w", "randread", "-j", "3", "--files", "per-thread"]),
            512,
            blocks,
        )
        .expect("fits");
        let part = 64 * MIB / 3 / 4096 * 4096;
        assert_eq!(p.per_file, part);
        assert_eq!(p.file_size, 64 * MIB);
        for t in 0..3 {
            // Random and sequential alike: the whole own file.
            assert_eq!(thread_span(&p, 3, t, true), 0..part);
            assert_eq!(thread_span(&p, 3, t, false), 0..part);
            assert_eq!(thread_preload_span(&p, 3, t), 0..part);
            assert_eq!(file_of(&p, t), (t, part * t as u64));
        }
        // The files' LBAs do not overlap: thread 1's file starts where
        // thread 0's ends.
        assert_eq!(lba_of(100, 512, file_of(&p, 1).1), 100 + part / 512);
        let shared = plan_for(&args(&["-w", "randread", "-j", "3"]), 512, blocks).expect("fits");
        assert_eq!(shared.files, Files::Shared);
        assert_eq!(shared.per_file, 64 * MIB);
        assert_eq!(file_of(&shared, 2), (0, 0));
        assert_eq!(thread_span(&shared, 3, 2, true), 0..64 * MIB);
        let e = plan_for(
            &args(&[
                "-w",
                "randread",
                "-j",
                "4",
                "-o",
                "256K",
                "--files",
                "per-thread",
            ]),
            512,
            1024,
        )
        .expect_err("a file smaller than a call");
        assert!(e.to_string().contains("131072"), "{e}");
    }

    #[test]
    fn byte_generator_stays_in_the_span() {
        let p = plan_for(
            &args(&["-w", "randrw", "-o", "6000", "--align", "1000"]),
            512,
            2048,
        )
        .expect("ok");
        let span = thread_span(&p, 1, 0, true);
        let mut g = Generator::new(&Spec {
            workload: nvme_bench::workload::Workload::Randrw,
            mix: 50,
            dist: nvme_bench::workload::OffsetDist::Uniform,
            first: span.start,
            blocks: span.end,
            io_blocks: 6000,
            align_blocks: p.align,
            seed: 1,
        })
        .expect("fits");
        for _ in 0..10_000 {
            let io = g.next_io();
            assert_eq!(io.slba % 1000, 0);
            assert!(io.slba + 6000 <= p.file_size);
        }
    }

    #[test]
    fn traffic_deltas() {
        let c = DevCounts::default();
        c.reads.fetch_add(3, Ordering::Relaxed);
        c.read_bytes.fetch_add(3 * 4096, Ordering::Relaxed);
        let before = c.snapshot();
        c.writes.fetch_add(2, Ordering::Relaxed);
        c.write_bytes.fetch_add(8192, Ordering::Relaxed);
        c.flushes.fetch_add(1, Ordering::Relaxed);
        let d = c.snapshot().since(before);
        assert_eq!(
            d,
            Traffic {
                reads: 0,
                read_bytes: 0,
                writes: 2,
                write_bytes: 8192,
                flushes: 1
            }
        );
        assert_eq!(d.add(before).reads, 3);
    }
}

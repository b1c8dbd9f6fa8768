//! `--vhost-user SOCK`: the raw workloads (the same generator, queue
//! depths, verification, statistics and JSON) through a vhost-user-blk
//! device instead of the NVMe driver. The client is libblkio's
//! `virtio-blk-vhost-user` driver (the `blkio` crate): one virtqueue per
//! thread, `-q` requests in flight on each, every request's data in one
//! shared memory region (a memfd that libblkio hands to the back end), one
//! page-aligned slot of `-o` bytes per request in flight. Queues are
//! polled (libblkio's poll queues: the client spins on the used ring)
//! unless `--interrupts` (the client sleeps on the back end's call
//! eventfd).
//!
//! The data in the region is reached through the memfd (`pread`/`pwrite`
//! at the slot's offset), never through a Rust reference to memory the
//! back end writes, and only when `--verify` asks for it.

use std::fs::File;
use std::mem::MaybeUninit;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};
use nvme_bench::pattern;
use nvme_bench::stats::Stats;

use crate::error::{Error, Result};
use crate::{DeviceFacts, Job, RunWindow, Tally, ThreadResult, count_error, pin_thread};

/// How long one wait for a completion may take before the run fails (a
/// back end that stopped answering).
const REAP_TIMEOUT: Duration = Duration::from_secs(60);

/// Bytes per request of the `--verify` prefill (at most the device's
/// maximum transfer).
const PREFILL_CHUNK: u64 = 128 << 10;

/// Requests in flight during the prefill.
const PREFILL_DEPTH: usize = 32;

/// A connected and started vhost-user-blk device.
pub(crate) struct Device {
    /// Kept for the region and the queues' lifetime.
    blkio: Blkio,
    /// Bytes.
    pub(crate) capacity: u64,
    /// The device's logical block size (libblkio's `request-alignment`).
    pub(crate) block_size: u64,
    /// Bytes per request at most (0: no limit given).
    pub(crate) max_transfer: u64,
    /// Whether the device asks for FLUSH (a volatile write cache).
    pub(crate) flush_needed: bool,
    queues: Vec<Blkioq>,
    region: MemoryRegion,
    file: File,
    /// Bytes of the region per thread (`-q` slots of `-o` bytes).
    share: usize,
}

/// Connects to `socket` and starts `threads` queues (poll queues unless
/// `interrupts`), with a region of `threads * qd` slots of `io_size`
/// bytes (and at least what the prefill needs).
pub(crate) fn open(
    socket: &str,
    threads: usize,
    qd: usize,
    io_size: u64,
    interrupts: bool,
) -> Result<Device> {
    let mut b = Blkio::new("virtio-blk-vhost-user").map_err(Error::blkio("blkio_new"))?;
    b.set_str("path", socket).map_err(Error::blkio("path"))?;
    b.connect().map_err(Error::blkio("connect"))?;
    let capacity = b.get_u64("capacity").map_err(Error::blkio("capacity"))?;
    let block_size = u64::try_from(
        b.get_i32("request-alignment")
            .map_err(Error::blkio("request-alignment"))?,
    )
    .ok()
    .filter(|&n| n > 0 && n.is_power_of_two())
    .ok_or_else(|| Error::Usage("vhost-user: the device reports no usable block size".into()))?;
    let max_transfer = u64::try_from(
        b.get_i32("max-transfer")
            .map_err(Error::blkio("max-transfer"))?,
    )
    .unwrap_or(0);
    let flush_needed = b
        .get_bool("flush-needed")
        .map_err(Error::blkio("flush-needed"))?;
    let max_queues = b
        .get_i32("max-queues")
        .map_err(Error::blkio("max-queues"))?;
    let n = i32::try_from(threads).map_err(|_| Error::Usage("too many threads".into()))?;
    if n > max_queues {
        return Err(Error::Usage(format!(
            "vhost-user: {threads} threads need {threads} virtqueues; the device offers {max_queues}"
        )));
    }
    let (irq, polled) = if interrupts { (n, 0) } else { (0, n) };
    b.set_i32("num-queues", irq)
        .map_err(Error::blkio("num-queues"))?;
    b.set_i32("num-poll-queues", polled)
        .map_err(Error::blkio("num-poll-queues"))?;
    let started = b.start().map_err(Error::blkio("start"))?;
    let queues = if interrupts {
        started.queues
    } else {
        started.poll_queues
    };
    if queues.len() != threads {
        return Err(Error::Usage(format!(
            "vhost-user: {} queues started, {threads} asked for",
            queues.len()
        )));
    }
    let align = usize::try_from(
        b.get_u64("mem-region-alignment")
            .map_err(Error::blkio("mem-region-alignment"))?,
    )
    .map_err(|_| Error::Usage("vhost-user: memory region alignment out of range".into()))?
    .max(4096);
    // Page-aligned slots: the requests' buffers are what a page-aligned
    // application's are.
    let slot = usize::try_from(io_size)
        .map_err(|_| Error::Usage("I/O size out of range".into()))?
        .next_multiple_of(4096);
    let share = qd
        .checked_mul(slot)
        .ok_or_else(|| Error::Usage("queue depth times I/O size out of range".into()))?;
    let size = share
        .checked_mul(threads)
        .ok_or_else(|| Error::Usage("region size out of range".into()))?
        .max(PREFILL_DEPTH * PREFILL_CHUNK as usize)
        .next_multiple_of(align);
    let region = b
        .alloc_mem_region(size)
        .map_err(Error::blkio("alloc_mem_region"))?;
    b.map_mem_region(&region)
        .map_err(Error::blkio("map_mem_region"))?;
    let file = File::options()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{}", region.fd))
        .map_err(Error::os("vhost-user: reopening the region's memfd"))?;
    Ok(Device {
        blkio: b,
        capacity,
        block_size,
        max_transfer,
        flush_needed,
        queues,
        region,
        file,
        share,
    })
}

impl Drop for Device {
    fn drop(&mut self) {
        // The queues go first (they hold the region's registration).
        self.queues.clear();
        self.blkio.unmap_mem_region(&self.region);
        self.blkio.free_mem_region(&self.region);
    }
}

/// The region's memfd and one thread's part of it.
#[derive(Clone, Copy)]
struct Mem<'a> {
    region: &'a MemoryRegion,
    file: &'a File,
}

impl Mem<'_> {
    fn check(&self, offset: usize, len: usize) -> Result<u64> {
        match offset.checked_add(len) {
            Some(end) if end <= self.region.len => Ok(self.region.fd_offset as u64 + offset as u64),
            _ => Err(Error::Failed(format!(
                "{len} bytes at {offset} outside the {}-byte region",
                self.region.len
            ))),
        }
    }

    fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        let at = self.check(offset, data.len())?;
        self.file
            .write_all_at(data, at)
            .map_err(Error::os("filling the region"))
    }

    fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        let at = self.check(offset, out.len())?;
        self.file
            .read_exact_at(out, at)
            .map_err(Error::os("reading the region"))
    }

    /// The address of `offset` in the region, for a request.
    fn addr(&self, offset: usize) -> usize {
        self.region.addr + offset
    }
}

/// Waits (up to [`REAP_TIMEOUT`]) for at least one completion; appends
/// `(user_data, ret)` of each to `out`.
fn reap(
    q: &mut Blkioq,
    buf: &mut [MaybeUninit<Completion>],
    out: &mut Vec<(usize, i32)>,
) -> Result<()> {
    let mut timeout = REAP_TIMEOUT;
    let n = q
        .do_io(buf, 1, Some(&mut timeout), None)
        .map_err(Error::blkio("waiting for completions"))?;
    for c in buf.iter().take(n) {
        // The blkio crate hands completions back in MaybeUninit slots.
        #[allow(unsafe_code)]
        // SAFETY: do_io returned n: it wrote entries 0..n of `buf`.
        let c = unsafe { c.assume_init_ref() };
        out.push((c.user_data, c.ret));
    }
    Ok(())
}

/// Writes the pattern over the job's range through queue 0 (sequential,
/// [`PREFILL_DEPTH`] in flight) and flushes, so every later read can be
/// checked.
pub(crate) fn prefill(dev: &mut Device, job: &Job) -> Result<()> {
    let a = &job.args;
    let lba = job.lba_size;
    let chunk_blocks = match dev.max_transfer {
        0 => PREFILL_CHUNK,
        m => m.min(PREFILL_CHUNK),
    } / lba;
    let chunk_blocks = chunk_blocks.max(1);
    let mem = Mem {
        region: &dev.region,
        file: &dev.file,
    };
    let q = dev
        .queues
        .first_mut()
        .ok_or_else(|| Error::Failed("no queue".into()))?;
    let mut buf: Vec<MaybeUninit<Completion>> =
        (0..PREFILL_DEPTH).map(|_| MaybeUninit::uninit()).collect();
    let mut done = Vec::with_capacity(PREFILL_DEPTH);
    let mut free: Vec<usize> = (0..PREFILL_DEPTH).collect();
    let mut data = Vec::new();
    let (mut next, end) = (job.first, job.first + job.blocks);
    let slot_bytes = (chunk_blocks * lba) as usize;
    let mut in_flight = 0;
    while next < end || in_flight > 0 {
        while next < end
            && let Some(slot) = free.pop()
        {
            let n = chunk_blocks.min(end - next);
            data.resize((n * lba) as usize, 0);
            pattern::fill(a.seed, next, lba as usize, &mut data);
            let at = slot * slot_bytes;
            mem.write(at, &data)?;
            q.write(
                next * lba,
                mem.addr(at) as *const u8,
                data.len(),
                slot,
                ReqFlags::empty(),
            );
            next += n;
            in_flight += 1;
        }
        done.clear();
        reap(q, &mut buf, &mut done)?;
        for &(slot, ret) in &done {
            if ret != 0 {
                return Err(Error::Failed(format!("prefill: a write failed with {ret}")));
            }
            free.push(slot);
            in_flight -= 1;
        }
    }
    if dev.flush_needed {
        q.flush(0, ReqFlags::empty());
        done.clear();
        reap(q, &mut buf, &mut done)?;
        if let Some(&(_, ret)) = done.iter().find(|(_, ret)| *ret != 0) {
            return Err(Error::Failed(format!(
                "prefill: the flush failed with {ret}"
            )));
        }
    }
    Ok(())
}

/// One request in flight.
#[derive(Clone, Copy, Default)]
struct Slot {
    started: u64,
    read: bool,
    slba: u64,
}

/// Runs the job's threads, each on its own virtqueue.
pub(crate) fn run(
    dev: &mut Device,
    job: &Job,
    stop: &AtomicBool,
    progress: &[std::sync::Arc<AtomicU64>],
) -> Result<Vec<ThreadResult>> {
    let share = dev.share;
    let mem = Mem {
        region: &dev.region,
        file: &dev.file,
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = dev
            .queues
            .iter_mut()
            .enumerate()
            .map(|(t, q)| {
                let done = &*progress[t];
                scope.spawn(move || thread_main(q, mem, t * share, job, t, stop, done))
            })
            .collect();
        crate::collect_threads(handles.into_iter().map(|h| h.join()), stop)
    })
}

fn thread_main(
    q: &mut Blkioq,
    mem: Mem<'_>,
    base_offset: usize,
    job: &Job,
    t: usize,
    stop: &AtomicBool,
    done: &AtomicU64,
) -> Result<ThreadResult> {
    let a = &job.args;
    pin_thread(a, t)?;
    let (first, blocks) = job.thread_range(t);
    let mut generator = job.generator(t, first, blocks)?;
    let io_bytes = a.io_size as usize;
    let slot_bytes = io_bytes.next_multiple_of(4096);
    let at = |i: usize| base_offset + i * slot_bytes;
    let mut slots = vec![Slot::default(); a.qd];
    let mut scratch = vec![0u8; io_bytes];
    let mut buf: Vec<MaybeUninit<Completion>> = (0..a.qd).map(|_| MaybeUninit::uninit()).collect();
    let mut completions = Vec::with_capacity(a.qd);
    let mut stats = Stats::new();
    let mut window = RunWindow::new(a);
    let mut tally = Tally::new(Some(done));
    let base = Instant::now();
    let since_base = |t: Instant| u64::try_from((t - base).as_nanos()).unwrap_or(u64::MAX);

    let mut submit = |q: &mut Blkioq, i: usize, slot: &mut Slot, now_ns: u64| -> Result<()> {
        let io = generator.next_io();
        *slot = Slot {
            started: now_ns,
            read: io.read,
            slba: io.slba,
        };
        let offset = io.slba * job.lba_size;
        if io.read {
            q.read(
                offset,
                mem.addr(at(i)) as *mut u8,
                io_bytes,
                i,
                ReqFlags::empty(),
            );
        } else {
            if a.verify {
                pattern::fill(a.seed, io.slba, job.lba_size as usize, &mut scratch);
                mem.write(at(i), &scratch)?;
            }
            q.write(
                offset,
                mem.addr(at(i)) as *const u8,
                io_bytes,
                i,
                ReqFlags::empty(),
            );
        }
        Ok(())
    };
    for (i, slot) in slots.iter_mut().enumerate() {
        submit(q, i, slot, 0)?;
    }
    let mut in_flight = a.qd;
    let mut check = vec![0u8; io_bytes];
    while in_flight > 0 {
        completions.clear();
        reap(q, &mut buf, &mut completions)?;
        let now = Instant::now();
        let now_ns = since_base(now);
        window.advance(now, stop, &mut stats);
        for &(i, ret) in &completions {
            in_flight -= 1;
            let slot = slots.get_mut(i).ok_or_else(|| {
                Error::thread(
                    t,
                    Error::Failed(format!("a completion for unknown request {i}")),
                )
            })?;
            if ret == 0 {
                if a.verify && slot.read {
                    mem.read(at(i), &mut check)?;
                    if let Some(bad) =
                        pattern::first_mismatch(a.seed, slot.slba, job.lba_size as usize, &check)
                    {
                        return Err(Error::Failed(format!(
                            "verify: LBA {bad} (read at {}+{}) holds wrong data",
                            slot.slba, job.io_blocks
                        )));
                    }
                }
                if window.measuring {
                    stats.record_ns(slot.read, a.io_size, now_ns.saturating_sub(slot.started));
                }
            } else {
                count_error(
                    &mut stats,
                    a,
                    t,
                    Error::Failed(format!(
                        "{} at LBA {} failed with {ret}",
                        if slot.read { "read" } else { "write" },
                        slot.slba
                    )),
                )?;
            }
            tally.tick();
            if !window.finishing {
                submit(q, i, slot, now_ns)?;
                in_flight += 1;
            }
        }
    }
    tally.flush();
    stats.elapsed = Instant::now().saturating_duration_since(window.measure_start);
    Ok(ThreadResult {
        qid: u16::try_from(t).unwrap_or(u16::MAX),
        stats,
        cache: None,
        // No NVMe queue pair on this side: the daemon's are not ours to count.
        path: None,
    })
}

impl Device {
    /// What the report shows of the device.
    pub(crate) fn facts(&self, socket: &str) -> DeviceFacts {
        DeviceFacts {
            device: format!("vhost-user:{socket}"),
            shadow_doorbells: false,
            sgl: false,
            max_transfer: usize::try_from(self.max_transfer).unwrap_or(usize::MAX),
        }
    }
}

//! `blkio-check`: a vhost-user-blk front end written by others (libblkio's
//! `virtio-blk-vhost-user` driver, the `blkio` crate) run against a
//! vhost-user-blk socket in the guest: pattern writes at a queue depth,
//! flush, read back and verify, a read through a scatter list that breaks
//! the PRP rules (the target must bounce it), write-zeroes and discard.
//! Other modes: `churn` maps and unmaps an extra memory region (ADD_MEM_REG,
//! REM_MEM_REG) while another queue keeps I/O going; `seq-write` writes
//! sequence-numbered chunks forever, printing every acknowledgement (to
//! be killed mid-I/O), and `seq-verify` checks the range against them
//! (`vm_tests::seqwrites`).
//! Prints one line per step and a summary; exits non-zero at the first
//! wrong byte or failed request. The host then checks the raw image with
//! the same pattern (`vm_tests::pattern`).
#![deny(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::mem::MaybeUninit;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};
use clap::{Parser, ValueEnum};
use vm_tests::pattern;
use vm_tests::seqwrites::Layout;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Write, flush, read back and verify `len` bytes, a scattered read,
    /// and with `--zeroes` write-zeroes and discard.
    Check,
    /// Queue 0 writes and verifies `len` bytes over and over from the
    /// first memory region while queue 1, `--cycles` times, maps a second
    /// region, writes 1 MiB after `len` from it, reads it back into it and
    /// unmaps it; then queue 1 reads that MiB through the first region.
    Churn,
    /// Writes chunk-sized, sequence-numbered writes (`vm_tests::seqwrites`)
    /// over `len` bytes from `offset`, `qd` in flight, until killed (or
    /// `--writes`), printing `acked N` for each acknowledged write.
    SeqWrite,
    /// Reads the `seq-write` range back and checks it against the
    /// `acked N` lines in `--acked` (same `len`, `offset`, `chunk`, `qd`).
    SeqVerify,
    /// The crash check: write `len` bytes of the pattern (seed `seed`) at
    /// `offset`, flush, write `len` bytes of seed `seed + 1` right after
    /// them without a flush, print `crash-check: A flushed, B written
    /// unflushed; waiting`, and wait (for the target to be killed, then
    /// for this process to be).
    CrashCheck,
}

#[derive(Parser, Debug)]
struct Cli {
    /// The vhost-user socket.
    #[arg(long)]
    socket: String,
    /// Bytes to write and verify from offset 0.
    #[arg(long, default_value_t = 64 << 20)]
    len: u64,
    /// Bytes per request.
    #[arg(long, default_value_t = 64 << 10)]
    chunk: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    qd: usize,
    /// Pattern seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write zeroes over, then discard, ranges after `len`.
    #[arg(long)]
    zeroes: bool,
    /// Virtqueues, each driven by its own thread over its share of the
    /// range (the scattered read and the zeroes use the first).
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// What to do.
    #[arg(long, value_enum, default_value_t = Mode::Check)]
    mode: Mode,
    /// Byte offset of the range (`seq-write`, `seq-verify`).
    #[arg(long, default_value_t = 0)]
    offset: u64,
    /// `seq-write`: stop after this many writes (default: until killed).
    #[arg(long)]
    writes: Option<u64>,
    /// `seq-verify`: the `seq-write` output with its `acked N` lines.
    #[arg(long)]
    acked: Option<PathBuf>,
    /// `churn`: how many times a region is mapped, used and unmapped.
    #[arg(long, default_value_t = 3)]
    cycles: u32,
}

/// A libblkio memory region, reached through its memfd (reopened by
/// path): copies in and out, never a Rust reference to memory the back
/// end writes by DMA.
mod region {
    use std::fs::File;
    use std::os::unix::fs::FileExt;

    use blkio::MemoryRegion;

    /// The region's memfd, opened again through /proc.
    pub(super) fn open(r: &MemoryRegion) -> Result<File, String> {
        File::options()
            .read(true)
            .write(true)
            .open(format!("/proc/self/fd/{}", r.fd))
            .map_err(|e| format!("reopening the region's memfd {}: {e}", r.fd))
    }

    /// Copies `data` into the region at `offset`.
    pub(super) fn write(
        f: &File,
        r: &MemoryRegion,
        offset: usize,
        data: &[u8],
    ) -> Result<(), String> {
        check(r, offset, data.len())?;
        f.write_all_at(data, r.fd_offset as u64 + offset as u64)
            .map_err(|e| format!("filling the region: {e}"))
    }

    /// Copies `out.len()` bytes at `offset` out of the region.
    pub(super) fn read(
        f: &File,
        r: &MemoryRegion,
        offset: usize,
        out: &mut [u8],
    ) -> Result<(), String> {
        check(r, offset, out.len())?;
        f.read_exact_at(out, r.fd_offset as u64 + offset as u64)
            .map_err(|e| format!("reading the region: {e}"))
    }

    fn check(r: &MemoryRegion, offset: usize, len: usize) -> Result<(), String> {
        match offset.checked_add(len) {
            Some(end) if end <= r.len => Ok(()),
            _ => Err(format!(
                "{len} bytes at {offset} outside a {}-byte region",
                r.len
            )),
        }
    }
}

/// Waits for at least one completion; returns them.
fn reap(q: &mut Blkioq, want: usize) -> Result<Vec<Completion>, String> {
    let mut buf: Vec<MaybeUninit<Completion>> =
        (0..want.max(1)).map(|_| MaybeUninit::uninit()).collect();
    let mut timeout = Duration::from_secs(60);
    let n = q
        .do_io(&mut buf, 1, Some(&mut timeout), None)
        .map_err(|e| format!("do_io: {e}"))?;
    let mut out = Vec::with_capacity(n);
    for c in buf.into_iter().take(n) {
        // The blkio crate hands completions back in MaybeUninit slots.
        #[allow(unsafe_code)]
        // SAFETY: do_io returned n, so it wrote entries 0..n.
        out.push(unsafe { c.assume_init() });
    }
    Ok(out)
}

/// The client's memory: the region and its memfd.
struct Mem {
    region: MemoryRegion,
    file: std::fs::File,
}

fn ok(c: &Completion, what: &str) -> Result<(), String> {
    if c.ret == 0 {
        Ok(())
    } else {
        Err(format!(
            "{what}: request {} failed with {}",
            c.user_data, c.ret
        ))
    }
}

/// One queue's share: chunks `first..first + count`, in the region's slots
/// from `slot_base`.
#[derive(Debug, Clone, Copy)]
struct Share {
    first: u64,
    count: u64,
    slot_base: usize,
}

/// Writes (or reads and verifies) the chunks of `share` in `chunk`-byte
/// requests, `qd` in flight, each slot of the region serving one request
/// at a time.
fn stream(
    q: &mut Blkioq,
    m: &Mem,
    cli: &Cli,
    lba: usize,
    write: bool,
    share: Share,
    progress: &AtomicU64,
) -> Result<(), String> {
    let mut next = 0u64;
    let mut in_flight = 0usize;
    let mut free: Vec<usize> = (0..cli.qd).collect();
    // slot -> chunk
    let mut owner = vec![0u64; cli.qd];
    let mut data = vec![0u8; cli.chunk];
    let mut done = 0u64;
    let span = |chunk: u64| {
        let offset = chunk * cli.chunk as u64;
        (offset, (cli.len - offset).min(cli.chunk as u64) as usize)
    };
    while done < share.count {
        while next < share.count
            && let Some(slot) = free.pop()
        {
            let (offset, len) = span(share.first + next);
            let at = (share.slot_base + slot) * cli.chunk;
            let ptr = m.region.addr + at;
            if write {
                pattern::fill(cli.seed, offset / lba as u64, lba, &mut data[..len]);
                region::write(&m.file, &m.region, at, &data[..len])?;
                q.write(offset, ptr as *const u8, len, slot, ReqFlags::empty());
            } else {
                q.read(offset, ptr as *mut u8, len, slot, ReqFlags::empty());
            }
            owner[slot] = share.first + next;
            next += 1;
            in_flight += 1;
        }
        for c in reap(q, in_flight)? {
            ok(&c, if write { "write" } else { "read" })?;
            let slot = c.user_data;
            let chunk = *owner
                .get(slot)
                .ok_or_else(|| format!("completion for unknown slot {slot}"))?;
            if !write {
                let (offset, len) = span(chunk);
                let at = (share.slot_base + slot) * cli.chunk;
                region::read(&m.file, &m.region, at, &mut data[..len])?;
                if let Some(bad) =
                    pattern::first_mismatch(cli.seed, offset / lba as u64, lba, &data[..len])
                {
                    return Err(format!("read back: block {bad} does not hold the pattern"));
                }
            }
            free.push(slot);
            in_flight -= 1;
            done += 1;
            progress.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// [`stream`] over the whole range: each queue takes its share in a
/// thread of its own. Returns the time taken.
fn stream_all(
    queues: &mut [Blkioq],
    m: &Mem,
    cli: &Cli,
    lba: usize,
    write: bool,
) -> Result<Duration, String> {
    let chunks = cli.len.div_ceil(cli.chunk as u64);
    let n = queues.len() as u64;
    let start = Instant::now();
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = queues
            .iter_mut()
            .enumerate()
            .map(|(k, q)| {
                let k64 = k as u64;
                let first = chunks * k64 / n;
                let share = Share {
                    first,
                    count: chunks * (k64 + 1) / n - first,
                    slot_base: k * cli.qd,
                };
                scope.spawn(move || stream(q, m, cli, lba, write, share, &AtomicU64::new(0)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a queue thread panicked".into()))
            })
            .collect()
    });
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    Ok(start.elapsed())
}

/// Reads 4 KiB at `offset` into two pieces whose boundary is not on a
/// page (512 bytes, then the rest 512 bytes into the next page): legal
/// for virtio, not for NVMe PRPs.
fn scattered_read(
    q: &mut Blkioq,
    m: &Mem,
    cli: &Cli,
    lba: usize,
    offset: u64,
) -> Result<(), String> {
    let base = m.region.len - 3 * 4096;
    region::write(&m.file, &m.region, base, &vec![0xa5u8; 3 * 4096])?;
    let iov = [
        libc::iovec {
            iov_base: (m.region.addr + base) as *mut libc::c_void,
            iov_len: 512,
        },
        libc::iovec {
            iov_base: (m.region.addr + base + 4096 + 512) as *mut libc::c_void,
            iov_len: 4096 - 512,
        },
    ];
    q.readv(offset, iov.as_ptr(), 2, 7, ReqFlags::empty());
    let c = reap(q, 1)?;
    ok(c.first().ok_or("no completion")?, "scattered read")?;
    let mut got = vec![0u8; 4096];
    region::read(&m.file, &m.region, base, &mut got[..512])?;
    region::read(&m.file, &m.region, base + 4096 + 512, &mut got[512..])?;
    match pattern::first_mismatch(cli.seed, offset / lba as u64, lba, &got) {
        None => Ok(()),
        Some(b) => Err(format!("scattered read: block {b} is wrong")),
    }
}

/// Writes zeroes over one range and discards another, after `len`.
fn zeroes_and_discard(q: &mut Blkioq, m: &Mem, cli: &Cli) -> Result<(), String> {
    let zero_at = cli.len;
    let span = 1u64 << 20;
    // Something non-zero first, so that the zeroes are seen.
    region::write(&m.file, &m.region, 0, &vec![0x5au8; span as usize])?;
    q.write(
        zero_at,
        m.region.addr as *const u8,
        span as usize,
        1,
        ReqFlags::empty(),
    );
    ok(reap(q, 1)?.first().ok_or("no completion")?, "write")?;
    q.write_zeroes(zero_at, span, 2, ReqFlags::empty());
    ok(reap(q, 1)?.first().ok_or("no completion")?, "write zeroes")?;
    q.read(
        zero_at,
        m.region.addr as *mut u8,
        span as usize,
        3,
        ReqFlags::empty(),
    );
    ok(reap(q, 1)?.first().ok_or("no completion")?, "read")?;
    let mut back = vec![1u8; span as usize];
    region::read(&m.file, &m.region, 0, &mut back)?;
    if back.iter().any(|&b| b != 0) {
        return Err("write zeroes: the range does not read back as zeroes".into());
    }
    q.discard(zero_at + span, span, 4, ReqFlags::empty());
    ok(reap(q, 1)?.first().ok_or("no completion")?, "discard")?;
    println!("zeroes: {span} bytes zeroed at {zero_at} and read back, {span} discarded");
    Ok(())
}

fn blkio_err(what: &'static str) -> impl Fn(blkio::Error) -> String {
    move |err| format!("{what}: {err}")
}

/// A started front end: its queues and the device's block size.
struct Conn {
    b: Blkio,
    queues: Vec<Blkioq>,
    lba: usize,
}

/// Connects to `cli.socket` and starts `cli.queues` queues; the device
/// must hold `need` bytes.
fn connect(cli: &Cli, need: u64) -> Result<Conn, String> {
    let e = blkio_err;
    let mut b = Blkio::new("virtio-blk-vhost-user").map_err(e("blkio_new"))?;
    b.set_str("path", &cli.socket).map_err(e("path"))?;
    b.connect().map_err(e("connect"))?;
    let capacity = b.get_u64("capacity").map_err(e("capacity"))?;
    let lba = b
        .get_i32("request-alignment")
        .map_err(e("request-alignment"))? as usize;
    let max_transfer = b.get_i32("max-transfer").map_err(e("max-transfer"))?;
    let flush_needed = b.get_bool("flush-needed").map_err(e("flush-needed"))?;
    println!(
        "connected: capacity {capacity}, block {lba}, max transfer {max_transfer}, \
         flush needed {flush_needed}"
    );
    if lba == 0 || cli.len == 0 || need > capacity {
        return Err(format!("{need} bytes do not fit {capacity}"));
    }
    let wanted = i32::try_from(cli.queues).map_err(|_| "too many queues")?;
    b.set_i32("num-queues", wanted).map_err(e("num-queues"))?;
    let mut started = b.start().map_err(e("start"))?;
    let queues = std::mem::take(&mut started.queues);
    if queues.len() != cli.queues || queues.is_empty() {
        return Err(format!(
            "{} queues started, {} asked for",
            queues.len(),
            cli.queues
        ));
    }
    Ok(Conn { b, queues, lba })
}

/// A new memory region of at least `size` bytes, mapped (sent to the
/// back end: SET_MEM_TABLE or ADD_MEM_REG).
fn new_region(b: &mut Blkio, size: usize) -> Result<Mem, String> {
    let e = blkio_err;
    let align = b.get_u64("mem-region-alignment").map_err(e("alignment"))? as usize;
    let size = size.next_multiple_of(align.max(4096));
    let r: MemoryRegion = b.alloc_mem_region(size).map_err(e("alloc_mem_region"))?;
    if let Err(err) = b.map_mem_region(&r) {
        b.free_mem_region(&r);
        return Err(e("map_mem_region")(err));
    }
    Ok(Mem {
        file: region::open(&r)?,
        region: r,
    })
}

/// Unmaps (REM_MEM_REG) and frees a region.
fn drop_region(b: &mut Blkio, m: Mem) {
    b.unmap_mem_region(&m.region);
    b.free_mem_region(&m.region);
}

fn run(cli: &Cli) -> Result<(), String> {
    let need = match cli.mode {
        Mode::Check | Mode::Churn => cli.len + (2 << 20),
        Mode::SeqWrite | Mode::SeqVerify => cli.offset + cli.len,
        Mode::CrashCheck => cli.offset + 2 * cli.len,
    };
    let mut c = connect(cli, need)?;
    match cli.mode {
        Mode::Check => check(&mut c, cli),
        Mode::Churn => churn(&mut c, cli),
        Mode::SeqWrite => seq_write(&mut c, cli),
        Mode::SeqVerify => seq_verify(&mut c, cli),
        Mode::CrashCheck => crash_check(&mut c, cli),
    }
}

/// The default mode: pattern, flush, verify, scattered read, zeroes.
fn check(c: &mut Conn, cli: &Cli) -> Result<(), String> {
    let lba = c.lba;
    let m = new_region(&mut c.b, (cli.queues * cli.qd * cli.chunk).max(2 << 20))?;
    let queues = &mut c.queues;
    let took = stream_all(queues, &m, cli, lba, true)?;
    println!(
        "write: {} bytes in {} requests of {} at QD{} on {} queues in {:.2} s",
        cli.len,
        cli.len.div_ceil(cli.chunk as u64),
        cli.chunk,
        cli.qd,
        cli.queues,
        took.as_secs_f64()
    );
    let q = &mut queues[0];
    q.flush(9, ReqFlags::empty());
    ok(reap(q, 1)?.first().ok_or("no completion")?, "flush")?;
    println!("flush: ok");
    let took = stream_all(queues, &m, cli, lba, false)?;
    let q = &mut queues[0];
    println!(
        "read: {} bytes at QD{} verified in {:.2} s",
        cli.len,
        cli.qd,
        took.as_secs_f64()
    );
    scattered_read(q, &m, cli, lba, 8192)?;
    println!("scattered read: ok");
    if cli.zeroes {
        zeroes_and_discard(q, &m, cli)?;
    }
    drop_region(&mut c.b, m);
    println!("blkio-check: all verified");
    Ok(())
}

/// Moves `len` bytes between the device at `offset` and the region at
/// `at`, in `n` requests all in flight at once.
fn transfer(
    q: &mut Blkioq,
    m: &Mem,
    write: bool,
    (offset, at, len): (u64, usize, usize),
    n: usize,
) -> Result<(), String> {
    if at + len > m.region.len || n == 0 || !len.is_multiple_of(n) {
        return Err(format!("{len} bytes at {at} in {n} requests do not fit"));
    }
    let piece = len / n;
    for i in 0..n {
        let ptr = m.region.addr + at + i * piece;
        let off = offset + (i * piece) as u64;
        if write {
            q.write(off, ptr as *const u8, piece, i, ReqFlags::empty());
        } else {
            q.read(off, ptr as *mut u8, piece, i, ReqFlags::empty());
        }
    }
    let mut left = n;
    while left > 0 {
        for c in reap(q, left)? {
            ok(&c, if write { "write" } else { "read" })?;
            left -= 1;
        }
    }
    Ok(())
}

/// Waits until `progress` passes `from` (requests of another queue
/// completing).
fn wait_for_progress(progress: &AtomicU64, from: u64) -> Result<u64, String> {
    let start = Instant::now();
    loop {
        let now = progress.load(Ordering::Relaxed);
        if now > from {
            return Ok(now);
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!("no request completed on queue 0 after {from}"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `--mode churn`: a memory region added, used and removed, `cycles`
/// times, while queue 0 keeps its own I/O going in the first region.
fn churn(c: &mut Conn, cli: &Cli) -> Result<(), String> {
    const SPAN: usize = 1 << 20;
    let lba = c.lba;
    if c.queues.len() != 2 {
        return Err("churn needs --queues 2".into());
    }
    let first = new_region(&mut c.b, (cli.qd * cli.chunk).max(SPAN))?;
    let mut q1 = c.queues.pop().ok_or("no queue 1")?;
    let mut q0 = c.queues.pop().ok_or("no queue 0")?;
    let b = &mut c.b;
    let stop = AtomicBool::new(false);
    let progress = AtomicU64::new(0);
    let at = cli.len;
    let whole = Share {
        first: 0,
        count: cli.len.div_ceil(cli.chunk as u64),
        slot_base: 0,
    };
    let passes = std::thread::scope(|scope| -> Result<u64, String> {
        let background = scope.spawn(|| -> Result<u64, String> {
            let mut passes = 0;
            loop {
                stream(&mut q0, &first, cli, lba, true, whole, &progress)?;
                stream(&mut q0, &first, cli, lba, false, whole, &progress)?;
                passes += 1;
                if stop.load(Ordering::Relaxed) {
                    return Ok(passes);
                }
            }
        });
        let cycles = (|| -> Result<(), String> {
            let mut data = vec![0u8; SPAN];
            for cycle in 0..cli.cycles {
                // Queue 0's requests are going.
                wait_for_progress(&progress, progress.load(Ordering::Relaxed))?;
                let seed = cli.seed + 1 + u64::from(cycle);
                let extra = new_region(b, SPAN)?;
                pattern::fill(seed, at / lba as u64, lba, &mut data);
                region::write(&extra.file, &extra.region, 0, &data)?;
                transfer(&mut q1, &extra, true, (at, 0, SPAN), 4)?;
                region::write(&extra.file, &extra.region, 0, &vec![0u8; SPAN])?;
                transfer(&mut q1, &extra, false, (at, 0, SPAN), 4)?;
                region::read(&extra.file, &extra.region, 0, &mut data)?;
                if let Some(bad) = pattern::first_mismatch(seed, at / lba as u64, lba, &data) {
                    return Err(format!(
                        "cycle {cycle}: block {bad} read into the added region is wrong"
                    ));
                }
                let before = progress.load(Ordering::Relaxed);
                drop_region(b, extra);
                let during = progress.load(Ordering::Relaxed) - before;
                // And queue 0 goes on after the removal.
                let after = wait_for_progress(&progress, progress.load(Ordering::Relaxed))?;
                println!(
                    "churn: cycle {cycle}: region added, {SPAN} bytes written and read back \
                     through it, removed ({during} requests of queue 0 completed during the \
                     removal, {} since it started)",
                    after - before
                );
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        let passes = background
            .join()
            .unwrap_or_else(|_| Err("queue 0's thread panicked".into()))?;
        cycles?;
        Ok(passes)
    })?;
    // The last cycle's MiB, read through the first region on queue 1.
    let seed = cli.seed + u64::from(cli.cycles);
    let mut data = vec![0u8; SPAN];
    transfer(&mut q1, &first, false, (at, 0, SPAN), 4)?;
    region::read(&first.file, &first.region, 0, &mut data)?;
    if cli.cycles > 0
        && let Some(bad) = pattern::first_mismatch(seed, at / lba as u64, lba, &data)
    {
        return Err(format!("block {bad} after the last cycle is wrong"));
    }
    println!(
        "churn: {passes} passes of {} bytes written and verified on queue 0 meanwhile",
        cli.len
    );
    drop_region(&mut c.b, first);
    println!("blkio-check: all verified");
    Ok(())
}

/// The sequence-numbered writes' layout from the command line.
fn seq_layout(cli: &Cli, lba: usize) -> Result<Layout, String> {
    let (chunk, l) = (cli.chunk as u64, lba as u64);
    if chunk == 0
        || !chunk.is_multiple_of(l)
        || !cli.len.is_multiple_of(chunk)
        || !cli.offset.is_multiple_of(l)
    {
        return Err(format!(
            "--len {} and --offset {} must be whole chunks of whole {lba}-byte blocks",
            cli.len, cli.offset
        ));
    }
    Ok(Layout {
        first_lba: cli.offset / l,
        chunks: cli.len / chunk,
        chunk_blocks: chunk / l,
        lba_size: lba,
    })
}

/// `--mode seq-write`: sequence-numbered writes, `qd` in flight, each
/// acknowledgement printed (line-buffered: a killed writer has printed
/// every acknowledgement it had handled).
/// Writes `cli.len` bytes of the pattern of `seed` at `offset`, one
/// `chunk`-byte request at a time, from the start of `m`.
fn write_range(
    q: &mut Blkioq,
    m: &Mem,
    cli: &Cli,
    lba: usize,
    offset: u64,
    seed: u64,
) -> Result<(), String> {
    let mut data = vec![0u8; cli.chunk];
    let mut at = offset;
    while at < offset + cli.len {
        let n = (offset + cli.len - at).min(cli.chunk as u64) as usize;
        pattern::fill(seed, at / lba as u64, lba, &mut data[..n]);
        region::write(&m.file, &m.region, 0, &data[..n])?;
        q.write(at, m.region.addr as *const u8, n, 1, ReqFlags::empty());
        ok(reap(q, 1)?.first().ok_or("no completion")?, "write")?;
        at += n as u64;
    }
    Ok(())
}

/// `--mode crash-check`: never returns Ok; it waits to be killed once
/// both writes are acknowledged.
fn crash_check(c: &mut Conn, cli: &Cli) -> Result<(), String> {
    let lba = c.lba;
    let m = new_region(&mut c.b, cli.chunk.max(2 << 20))?;
    let q = &mut c.queues[0];
    write_range(q, &m, cli, lba, cli.offset, cli.seed)?;
    q.flush(9, ReqFlags::empty());
    ok(reap(q, 1)?.first().ok_or("no completion")?, "flush")?;
    write_range(q, &m, cli, lba, cli.offset + cli.len, cli.seed + 1)?;
    println!("crash-check: A flushed, B written unflushed; waiting");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_secs(600));
    Err("crash check: not killed within 600 s".into())
}

fn seq_write(c: &mut Conn, cli: &Cli) -> Result<(), String> {
    let layout = seq_layout(cli, c.lba)?;
    let m = new_region(&mut c.b, cli.qd * cli.chunk)?;
    let q = &mut c.queues[0];
    let limit = cli.writes.unwrap_or(u64::MAX);
    let mut free: Vec<usize> = (0..cli.qd).collect();
    let mut owner = vec![0u64; cli.qd];
    let mut data = vec![0u8; cli.chunk];
    let (mut next, mut in_flight) = (0u64, 0usize);
    println!(
        "seq-write: {} chunks of {} bytes from byte {}, {} in flight",
        layout.chunks, cli.chunk, cli.offset, cli.qd
    );
    while next < limit || in_flight > 0 {
        while next < limit
            && let Some(slot) = free.pop()
        {
            layout.fill(next, &mut data);
            region::write(&m.file, &m.region, slot * cli.chunk, &data)?;
            let ptr = m.region.addr + slot * cli.chunk;
            let offset = layout.lba_of(next) * c.lba as u64;
            q.write(offset, ptr as *const u8, cli.chunk, slot, ReqFlags::empty());
            owner[slot] = next;
            next += 1;
            in_flight += 1;
        }
        for done in reap(q, in_flight)? {
            ok(&done, "write")?;
            let slot = done.user_data;
            let seq = owner
                .get(slot)
                .ok_or_else(|| format!("completion for unknown slot {slot}"))?;
            println!("acked {seq}");
            free.push(slot);
            in_flight -= 1;
        }
    }
    drop_region(&mut c.b, m);
    println!("seq-write: {next} writes acknowledged");
    Ok(())
}

/// Reads the whole `layout` range, `qd` chunks in flight.
fn read_range(q: &mut Blkioq, m: &Mem, cli: &Cli, layout: &Layout) -> Result<Vec<u8>, String> {
    let chunk = cli.chunk;
    let mut out = vec![0u8; layout.range_bytes()];
    let mut free: Vec<usize> = (0..cli.qd).collect();
    let mut owner = vec![0usize; cli.qd];
    let (mut next, mut in_flight) = (0usize, 0usize);
    let chunks = layout.chunks as usize;
    while next < chunks || in_flight > 0 {
        while next < chunks
            && let Some(slot) = free.pop()
        {
            let ptr = m.region.addr + slot * chunk;
            q.read(
                cli.offset + (next * chunk) as u64,
                ptr as *mut u8,
                chunk,
                slot,
                ReqFlags::empty(),
            );
            owner[slot] = next;
            next += 1;
            in_flight += 1;
        }
        for done in reap(q, in_flight)? {
            ok(&done, "read")?;
            let slot = done.user_data;
            let i = *owner
                .get(slot)
                .ok_or_else(|| format!("completion for unknown slot {slot}"))?;
            region::read(
                &m.file,
                &m.region,
                slot * chunk,
                &mut out[i * chunk..(i + 1) * chunk],
            )?;
            free.push(slot);
            in_flight -= 1;
        }
    }
    Ok(out)
}

/// `--mode seq-verify`: the range against the acknowledgements a killed
/// `seq-write` printed.
fn seq_verify(c: &mut Conn, cli: &Cli) -> Result<(), String> {
    let layout = seq_layout(cli, c.lba)?;
    let path = cli.acked.as_ref().ok_or("seq-verify needs --acked FILE")?;
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let acked = text
        .lines()
        .filter_map(|l| l.strip_prefix("acked "))
        .map(|n| n.trim().parse::<u64>().map_err(|e| format!("{n:?}: {e}")))
        .collect::<Result<Vec<u64>, String>>()?;
    let m = new_region(&mut c.b, cli.qd * cli.chunk)?;
    let data = read_range(&mut c.queues[0], &m, cli, &layout)?;
    drop_region(&mut c.b, m);
    let out = layout.check(&acked, cli.qd as u64, &data)?;
    println!(
        "seq-verify: {} writes acknowledged; blocks: {} hold their chunk's last acknowledged \
         write, {} a later one, {} untouched",
        acked.len(),
        out.acked,
        out.newer,
        out.untouched
    );
    println!("blkio-check: all verified");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blkio-check: {e}");
            ExitCode::FAILURE
        }
    }
}

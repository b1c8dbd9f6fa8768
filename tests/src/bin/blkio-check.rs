//! `blkio-check`: a vhost-user-blk front end written by others (libblkio's
//! `virtio-blk-vhost-user` driver, the `blkio` crate) run against a
//! vhost-user-blk socket in the guest: pattern writes at a queue depth,
//! flush, read back and verify, a read through a scatter list that breaks
//! the PRP rules (the target must bounce it), write-zeroes and discard.
//! Prints one line per step and a summary; exits non-zero at the first
//! wrong byte or failed request. The host then checks the raw image with
//! the same pattern (`vm_tests::pattern`).
#![deny(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::mem::MaybeUninit;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};
use clap::Parser;
use vm_tests::pattern;

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
                scope.spawn(move || stream(q, m, cli, lba, write, share))
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

fn run(cli: &Cli) -> Result<(), String> {
    let e = |what: &'static str| move |err: blkio::Error| format!("{what}: {err}");
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
    if lba == 0 || cli.len == 0 || cli.len + (2 << 20) > capacity {
        return Err(format!(
            "{} bytes do not fit {capacity}",
            cli.len + (2 << 20)
        ));
    }
    let wanted = i32::try_from(cli.queues).map_err(|_| "too many queues")?;
    b.set_i32("num-queues", wanted).map_err(e("num-queues"))?;
    let mut started = b.start().map_err(e("start"))?;
    let mut queues = std::mem::take(&mut started.queues);
    if queues.len() != cli.queues || queues.is_empty() {
        return Err(format!(
            "{} queues started, {} asked for",
            queues.len(),
            cli.queues
        ));
    }
    let align = b.get_u64("mem-region-alignment").map_err(e("alignment"))? as usize;
    let size = (cli.queues * cli.qd * cli.chunk)
        .max(2 << 20)
        .next_multiple_of(align.max(4096));
    let r: MemoryRegion = b.alloc_mem_region(size).map_err(e("alloc_mem_region"))?;
    b.map_mem_region(&r).map_err(e("map_mem_region"))?;
    let m = Mem {
        file: region::open(&r)?,
        region: r,
    };

    let took = stream_all(&mut queues, &m, cli, lba, true)?;
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
    let took = stream_all(&mut queues, &m, cli, lba, false)?;
    let q = &mut queues[0];
    println!(
        "read: {} bytes verified in {:.2} s",
        cli.len,
        took.as_secs_f64()
    );
    scattered_read(q, &m, cli, lba, 8192)?;
    println!("scattered read: ok");
    if cli.zeroes {
        zeroes_and_discard(q, &m, cli)?;
    }
    b.unmap_mem_region(&m.region);
    b.free_mem_region(&m.region);
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

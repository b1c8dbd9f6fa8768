//! The driver's own work per I/O, on the mock controller: run under
//! `valgrind --tool=callgrind` by `cargo xtask instructions`, which counts
//! the instructions spent inside [`IoQPair::submit`] and [`IoQPair::poll`]
//! (the full path) or [`IoQPair::floor`] (the floor loop), minus the mock
//! serving the doorbells, and divides by the I/Os.
//!
//! `io_cost full|fixed|floor IOS DEPTH BYTES [read|write]`; prints `ios N`
//! (`fixed`: the full path on registered buffers).

use std::process::ExitCode;

use nvme_driver::mock::{MockConfig, MockController};
use nvme_driver::{
    DmaPool, FixedCompletion, FixedIo, FloorJob, IoCompletion, IoQPair, IoRequest, Options,
};

const LBA: u32 = 512;
const BLOCKS: u64 = 1 << 17;

fn main() -> ExitCode {
    match run() {
        Ok(ios) => {
            println!("ios {ios}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("io_cost: {e}");
            ExitCode::FAILURE
        }
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T, String> {
    args.get(i)
        .ok_or_else(|| format!("missing {what}"))?
        .parse()
        .map_err(|_| format!("bad {what}: {}", args[i]))
}

fn run() -> Result<u64, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().map(String::as_str).unwrap_or("full");
    let ios: u64 = arg(&args, 1, "I/O count")?;
    let depth: usize = arg(&args, 2, "depth")?;
    let bytes: usize = arg(&args, 3, "bytes per I/O")?;
    let write = args.get(4).is_some_and(|w| w == "write");
    let config = MockConfig::new(&[(1, LBA, BLOCKS)])
        .max_transfer(1 << 20)
        .options(Options {
            io_queue_entries: 256,
            ..Options::default()
        });
    let (mock, ctrl) = MockController::new(config).map_err(|e| e.to_string())?;
    // The mock serves each doorbell inside the write, as a device beside
    // the driver would have by the next poll.
    mock.set_auto(true);
    let mut q = ctrl.io_qpair().map_err(|e| e.to_string())?;
    let io_blocks = (bytes / LBA as usize) as u64;
    let slots = BLOCKS / io_blocks;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next_lba = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % slots) * io_blocks
    };
    if path == "floor" {
        let r = q
            .floor(&FloorJob {
                nsid: 1,
                write,
                first_lba: 0,
                blocks: BLOCKS,
                io_blocks: io_blocks as u32,
                depth,
                random: true,
                seed: 7,
                warmup: std::time::Duration::ZERO,
                time: std::time::Duration::from_secs(3600),
                count: Some(ios),
            })
            .map_err(|e| e.to_string())?;
        if r.errors > 0 {
            return Err(format!("{} errors", r.errors));
        }
        return Ok(r.ios);
    }
    if path == "fixed" {
        return fixed(&mut q, ctrl.dma_pool(), ios, depth, bytes, write, next_lba);
    }
    let request = |lba: u64, buf, tag: u64| {
        if write {
            IoRequest::write(1, lba, io_blocks, buf).with_tag(tag)
        } else {
            IoRequest::read(1, lba, io_blocks, buf).with_tag(tag)
        }
    };
    let mut submitted = 0u64;
    for tag in 0..depth as u64 {
        let buf = ctrl.dma_pool().alloc(bytes).map_err(|e| e.to_string())?;
        q.submit(request(next_lba(), buf, tag))
            .map_err(|r| r.to_string())?;
        submitted += 1;
    }
    let mut done = 0u64;
    let mut out: Vec<IoCompletion> = Vec::with_capacity(depth);
    while done < submitted {
        q.poll(&mut out).map_err(|e| e.to_string())?;
        for c in out.drain(..) {
            c.result.map_err(|e| e.to_string())?;
            done += 1;
            let buf = c.data.ok_or("a buffer did not come back")?;
            if submitted < ios {
                q.submit(request(next_lba(), buf, c.tag))
                    .map_err(|r| r.to_string())?;
                submitted += 1;
            }
        }
    }
    Ok(done)
}

/// The full path on registered buffers ([`IoQPair::submit_fixed`]).
fn fixed(
    q: &mut IoQPair,
    pool: &DmaPool,
    ios: u64,
    depth: usize,
    bytes: usize,
    write: bool,
    mut next_lba: impl FnMut() -> u64,
) -> Result<u64, String> {
    let bufs = (0..depth)
        .map(|_| pool.alloc(bytes))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    q.register_buffers(bufs).map_err(|e| e.to_string())?;
    let blocks = (bytes / LBA as usize) as u32;
    let request = |lba: u64, i: u32| {
        if write {
            FixedIo::write(1, lba, blocks, i)
        } else {
            FixedIo::read(1, lba, blocks, i)
        }
        .with_tag(u64::from(i))
    };
    let mut submitted = 0u64;
    for i in 0..depth as u32 {
        submit_fixed(q, request(next_lba(), i)).map_err(|e| e.to_string())?;
        submitted += 1;
    }
    let mut done = 0u64;
    let mut out: Vec<FixedCompletion> = Vec::with_capacity(depth);
    while done < submitted {
        poll_fixed(q, &mut out).map_err(|e| e.to_string())?;
        for c in out.drain(..) {
            c.result.map_err(|e| e.to_string())?;
            done += 1;
            if submitted < ios {
                submit_fixed(q, request(next_lba(), c.tag as u32)).map_err(|e| e.to_string())?;
                submitted += 1;
            }
        }
    }
    Ok(done)
}

// The counted entry points of the registered-buffer path: kept out of line
// (link-time optimisation would inline the driver's functions into the
// loop, leaving callgrind no symbol to toggle on).

#[inline(never)]
fn submit_fixed(q: &mut IoQPair, io: FixedIo) -> nvme_driver::Result<()> {
    q.submit_fixed(io)
}

#[inline(never)]
fn poll_fixed(q: &mut IoQPair, out: &mut Vec<FixedCompletion>) -> nvme_driver::Result<usize> {
    q.poll_fixed(out)
}

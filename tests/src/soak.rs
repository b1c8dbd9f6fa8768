//! The soak: minutes of mixed multi-thread I/O on namespace 1 while the
//! controller is reset underneath and blkdebug fails every request that
//! touches a few chosen blocks; then the host checks every block of the
//! image against what the guest says it last wrote there.
//!
//! Guest side ([`run`], through `guest-check soak`): each thread owns a
//! queue pair and a range of blocks, split into one stripe per request
//! slot so requests in flight never overlap. Each request is a write of
//! the pattern of a fresh generation or a read checked against the
//! thread's model (the generation last written to each block; 0 for
//! never, which reads as zeroes). Even threads pass their buffers to the
//! driver and back (`IoQPair::submit`), odd ones use registered buffers
//! (`IoQPair::submit_fixed`). A request touching a bad block must fail,
//! and its blocks may then hold either generation; any other failure, a
//! read of a bad block that succeeds, or a wrong byte ends the soak with
//! an error. At the end every block whose content is still in doubt is
//! read to settle it, the namespace is flushed, and the model is written
//! to namespace `map_nsid` ([`MapHeader`]).
//!
//! Host side ([`verify`]): reads the map from that namespace's image and
//! checks every block of namespace 1's image.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nvme_driver::{Controller, DmaBuffer, FixedCompletion, FixedIo, IoQPair, IoRequest};
use rand::{Rng, SeedableRng, rngs::SmallRng};

use crate::pattern;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// What the soak runs.
#[derive(Debug, Clone)]
pub struct Params {
    /// Threads, each with its own queue pair and region.
    pub threads: u64,
    /// How long the threads run I/O.
    pub duration: Duration,
    /// Blocks of namespace 1 per thread.
    pub region: u64,
    /// Requests in flight per thread (one stripe each).
    pub qd: u64,
    /// Largest request in blocks.
    pub max_blocks: u64,
    /// Time between two controller resets (none if zero).
    pub reset_every: Duration,
    /// Blocks every request to which fails (blkdebug on the host).
    pub bad: Vec<u64>,
    /// Seed of the request sizes and the data patterns.
    pub seed: u64,
    /// Namespace that receives the model at the end.
    pub map_nsid: u32,
}

/// The pattern seed of generation `generation` of thread `thread`.
pub fn generation_seed(seed: u64, thread: u64, generation: u32) -> u64 {
    seed ^ (thread << 48) ^ (u64::from(generation) << 16)
}

/// What one thread did.
#[derive(Debug, Default, Clone)]
pub struct ThreadSummary {
    /// Reads completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Requests that touched a bad block and failed, as they must.
    pub injected_errors: u64,
    /// Blocks read back and checked.
    pub blocks_checked: u64,
    /// Blocks whose content was in doubt after a failed write, settled by
    /// a read.
    pub settled: u64,
}

/// One request in flight on a slot.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    write: bool,
    lba: u64,
    blocks: u64,
    generation: u32,
}

/// A thread's model of its range.
struct Model {
    /// Generation last written to each block (0: never).
    generation: Vec<u32>,
    /// The other generation a block may hold after a failed write.
    doubt: Vec<Option<u32>>,
}

/// Runs the soak in the guest; returns each thread's summary and prints
/// one line per reset.
pub fn run(ctrl: &Controller, p: &Params) -> Result<Vec<ThreadSummary>> {
    if p.qd == 0 || p.region < p.qd || p.max_blocks == 0 {
        return Err("soak: need qd >= 1, region >= qd and max_blocks >= 1".into());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..p.threads)
        .map(|t| {
            let (ctrl, p, stop) = (ctrl.clone(), p.clone(), stop.clone());
            std::thread::spawn(move || worker(&ctrl, &p, t, &stop))
        })
        .collect();
    let start = Instant::now();
    let mut resets = Vec::new();
    while start.elapsed() < p.duration {
        let nap = if p.reset_every.is_zero() {
            p.duration.saturating_sub(start.elapsed())
        } else {
            p.reset_every
                .min(p.duration.saturating_sub(start.elapsed()))
        };
        std::thread::sleep(nap);
        if !p.reset_every.is_zero() && start.elapsed() < p.duration {
            let t = Instant::now();
            ctrl.reset()?;
            resets.push(t.elapsed());
            println!(
                "soak: reset {} took {} ms",
                resets.len(),
                t.elapsed().as_millis()
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut summaries = Vec::new();
    let mut models = Vec::new();
    for (t, w) in workers.into_iter().enumerate() {
        let (s, m) = w
            .join()
            .map_err(|_| format!("soak thread {t} panicked"))??;
        summaries.push(s);
        models.push(m);
    }
    write_map(ctrl, p, &models)?;
    let longest = resets.iter().max().copied().unwrap_or_default();
    println!(
        "soak: {} resets, the longest {} ms",
        resets.len(),
        longest.as_millis()
    );
    Ok(summaries)
}

/// Per-slot data buffer: the slot's own (owned path) or the registered
/// buffer with the slot's index.
enum Buffers {
    Owned(Vec<Option<DmaBuffer>>),
    Registered,
}

fn worker(
    ctrl: &Controller,
    p: &Params,
    t: u64,
    stop: &AtomicBool,
) -> Result<(ThreadSummary, Vec<u32>)> {
    let mut q = ctrl.io_qpair()?;
    let lba = ctrl.namespace(1)?.lba_size as usize;
    let first = t * p.region;
    let stripe = p.region / p.qd;
    let mut rng = SmallRng::seed_from_u64(p.seed ^ t.wrapping_mul(0x9e37_79b9));
    let bufs = (0..p.qd)
        .map(|_| ctrl.dma_pool().alloc(p.max_blocks as usize * lba))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut buffers = if t % 2 == 1 {
        q.register_buffers(bufs)?;
        Buffers::Registered
    } else {
        Buffers::Owned(bufs.into_iter().map(Some).collect())
    };
    let mut model = Model {
        generation: vec![0; p.region as usize],
        doubt: vec![None; p.region as usize],
    };
    let mut sum = ThreadSummary::default();
    let mut slots: Vec<Option<InFlight>> = vec![None; p.qd as usize];
    let mut next_generation = 1u32;
    let mut scratch = vec![0u8; p.max_blocks as usize * lba];
    let mut done: Vec<FixedCompletion> = Vec::new();
    let mut owned_done = Vec::new();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.is_some() || stopping {
                continue;
            }
            let s_first = first + i as u64 * stripe;
            let lba0 = s_first + rng.random_range(0..stripe);
            let blocks = rng
                .random_range(1..=p.max_blocks)
                .min(s_first + stripe - lba0);
            let write = rng.random_bool(0.6);
            let generation = if write {
                next_generation += 1;
                next_generation
            } else {
                0
            };
            let len = blocks as usize * lba;
            if write {
                pattern::fill(
                    generation_seed(p.seed, t, generation),
                    lba0,
                    lba,
                    &mut scratch[..len],
                );
            }
            match &mut buffers {
                Buffers::Owned(own) => {
                    let buf = own[i].take().ok_or("soak: a slot lost its buffer")?;
                    if write {
                        buf.write(0, &scratch[..len])?;
                    }
                    let req = if write {
                        IoRequest::write(1, lba0, blocks, buf)
                    } else {
                        IoRequest::read(1, lba0, blocks, buf)
                    };
                    q.submit(req.with_tag(i as u64))?;
                }
                Buffers::Registered => {
                    if write {
                        q.registered_buffer(i as u32)
                            .ok_or("soak: a registered buffer is missing")?
                            .write(0, &scratch[..len])?;
                    }
                    let b = blocks as u32;
                    let io = if write {
                        FixedIo::write(1, lba0, b, i as u32)
                    } else {
                        FixedIo::read(1, lba0, b, i as u32)
                    };
                    q.submit_fixed(io.with_tag(i as u64))?;
                }
            }
            *slot = Some(InFlight {
                write,
                lba: lba0,
                blocks,
                generation,
            });
        }
        if slots.iter().all(Option::is_none) {
            break;
        }
        done.clear();
        match &mut buffers {
            Buffers::Owned(own) => {
                q.wait(&mut owned_done, Duration::from_millis(100))?;
                for c in owned_done.drain(..) {
                    let i = c.tag as usize;
                    *own.get_mut(i)
                        .ok_or("soak: a completion with a stray tag")? = c.data;
                    done.push(FixedCompletion {
                        tag: c.tag,
                        result: c.result,
                    });
                }
            }
            Buffers::Registered => {
                q.wait_fixed(&mut done, Duration::from_millis(100))?;
            }
        }
        for c in done.drain(..) {
            let i = c.tag as usize;
            let io = slots
                .get_mut(i)
                .and_then(Option::take)
                .ok_or("soak: a completion for an empty slot")?;
            let touches_bad = p
                .bad
                .iter()
                .any(|&b| (io.lba..io.lba + io.blocks).contains(&b));
            let at = |b: u64| (b - first) as usize;
            match (&c.result, touches_bad) {
                (Err(_), true) => {
                    sum.injected_errors += 1;
                    if io.write {
                        for b in io.lba..io.lba + io.blocks {
                            model.doubt[at(b)] = Some(io.generation);
                        }
                    }
                }
                (Err(e), false) => {
                    return Err(format!(
                        "soak thread {t}: {} lba {}+{} failed: {e}",
                        if io.write { "write" } else { "read" },
                        io.lba,
                        io.blocks
                    )
                    .into());
                }
                (Ok(()), true) => {
                    return Err(format!(
                        "soak thread {t}: lba {}+{} touches a bad block and succeeded",
                        io.lba, io.blocks
                    )
                    .into());
                }
                (Ok(()), false) if io.write => {
                    sum.writes += 1;
                    sum.bytes += io.blocks * lba as u64;
                    for b in io.lba..io.lba + io.blocks {
                        model.generation[at(b)] = io.generation;
                        model.doubt[at(b)] = None;
                    }
                }
                (Ok(()), false) => {
                    sum.reads += 1;
                    sum.bytes += io.blocks * lba as u64;
                    let len = io.blocks as usize * lba;
                    let buf = match &buffers {
                        Buffers::Owned(own) => own[i].as_ref(),
                        Buffers::Registered => q.registered_buffer(i as u32),
                    }
                    .ok_or("soak: a read's buffer is missing")?;
                    buf.read(0, &mut scratch[..len])?;
                    for (k, block) in scratch[..len].chunks(lba).enumerate() {
                        let b = io.lba + k as u64;
                        check_block(&mut model, &mut sum, p, t, at(b), b, block)?;
                    }
                }
            }
        }
    }
    // Settle what is still in doubt, then make it durable.
    for k in 0..p.region as usize {
        let b = first + k as u64;
        if model.doubt[k].is_some() && !p.bad.contains(&b) {
            let mut block = vec![0u8; lba];
            q.read(1, b, &mut block)?;
            check_block(&mut model, &mut sum, p, t, k, b, &block)?;
        }
    }
    q.flush(1)?;
    println!(
        "soak thread {t} ({} buffers, queue {}): {} writes, {} reads, {} MiB, \
         {} injected errors, {} blocks checked, {} settled",
        if t % 2 == 1 { "registered" } else { "owned" },
        q.qid(),
        sum.writes,
        sum.reads,
        sum.bytes >> 20,
        sum.injected_errors,
        sum.blocks_checked,
        sum.settled
    );
    Ok((sum, model.generation))
}

/// Checks block `b` (index `k` of the thread's range) against the model;
/// a block in doubt settles on whichever generation it holds.
fn check_block(
    model: &mut Model,
    sum: &mut ThreadSummary,
    p: &Params,
    t: u64,
    k: usize,
    b: u64,
    block: &[u8],
) -> Result<()> {
    let holds = |generation: u32| expected_matches(p.seed, t, generation, b, block);
    sum.blocks_checked += 1;
    if holds(model.generation[k]) {
        if model.doubt[k].take().is_some() {
            sum.settled += 1;
        }
        return Ok(());
    }
    if let Some(other) = model.doubt[k]
        && holds(other)
    {
        model.generation[k] = other;
        model.doubt[k] = None;
        sum.settled += 1;
        return Ok(());
    }
    Err(format!(
        "soak thread {t}: LBA {b} does not hold generation {}{}",
        model.generation[k],
        model.doubt[k].map_or(String::new(), |g| format!(" (nor {g})"))
    )
    .into())
}

/// Whether `block` (of LBA `b`) is generation `generation`'s content
/// (zeroes for 0).
pub fn expected_matches(seed: u64, t: u64, generation: u32, b: u64, block: &[u8]) -> bool {
    if generation == 0 {
        return block.iter().all(|&x| x == 0);
    }
    pattern::first_mismatch(generation_seed(seed, t, generation), b, block.len(), block).is_none()
}

/// The first block of the map namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapHeader {
    /// Threads of the run.
    pub threads: u64,
    /// Blocks of namespace 1 per thread.
    pub region: u64,
    /// The run's seed.
    pub seed: u64,
    /// Block size of namespace 1 in bytes.
    pub lba: u64,
}

impl MapHeader {
    const MAGIC: &'static str = "soak-map v1";

    fn text(&self) -> String {
        format!(
            "{} threads={} region={} seed={} lba={}\n",
            Self::MAGIC,
            self.threads,
            self.region,
            self.seed,
            self.lba
        )
    }

    /// Parses the header line at the start of `block`.
    pub fn parse(block: &[u8]) -> Result<MapHeader> {
        let line = block.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = std::str::from_utf8(line).map_err(|_| "soak map: header is not text")?;
        let rest = line
            .strip_prefix(Self::MAGIC)
            .ok_or_else(|| format!("soak map: no `{}` header: {line:?}", Self::MAGIC))?;
        let mut h = MapHeader {
            threads: 0,
            region: 0,
            seed: 0,
            lba: 0,
        };
        for kv in rest.split_whitespace() {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("soak map: bad field {kv:?}"))?;
            let v: u64 = v
                .parse()
                .map_err(|_| format!("soak map: bad number in {kv:?}"))?;
            match k {
                "threads" => h.threads = v,
                "region" => h.region = v,
                "seed" => h.seed = v,
                "lba" => h.lba = v,
                _ => return Err(format!("soak map: unknown field {k:?}").into()),
            }
        }
        if h.threads == 0 || h.region == 0 || !(512..=65536).contains(&h.lba) {
            return Err(format!("soak map: implausible header {line:?}").into());
        }
        Ok(h)
    }

    /// Byte offset of thread `t`'s generations in the map namespace.
    pub fn thread_offset(&self, t: u64) -> u64 {
        let per_thread = (self.region * 4).div_ceil(self.lba) * self.lba;
        self.lba + t * per_thread
    }
}

/// Writes the header and every thread's generations to `p.map_nsid`.
fn write_map(ctrl: &Controller, p: &Params, models: &[Vec<u32>]) -> Result<()> {
    let lba = u64::from(ctrl.namespace(p.map_nsid)?.lba_size);
    let header = MapHeader {
        threads: p.threads,
        region: p.region,
        seed: p.seed,
        lba: u64::from(ctrl.namespace(1)?.lba_size),
    };
    let mut q: IoQPair = ctrl.io_qpair()?;
    let mut block = vec![0u8; lba as usize];
    let text = header.text();
    block[..text.len()].copy_from_slice(text.as_bytes());
    q.write(p.map_nsid, 0, &block)?;
    let map = MapHeader { lba, ..header };
    for (t, gens) in models.iter().enumerate() {
        let mut bytes: Vec<u8> = gens.iter().flat_map(|g| g.to_le_bytes()).collect();
        bytes.resize(bytes.len().div_ceil(lba as usize) * lba as usize, 0);
        q.write(p.map_nsid, map.thread_offset(t as u64) / lba, &bytes)?;
    }
    q.flush(p.map_nsid)?;
    Ok(())
}

/// What the host found.
#[derive(Debug, Default)]
pub struct Verified {
    /// Blocks checked.
    pub blocks: u64,
    /// Of those, blocks the map says were written.
    pub written: u64,
    /// Bad blocks (blkdebug) left out of the check.
    pub skipped_bad: u64,
}

/// Checks namespace 1's image against the map in `map_image` (written by
/// the guest to a namespace with `map_lba`-byte blocks).
pub fn verify(
    image: &std::path::Path,
    map_image: &std::path::Path,
    map_lba: u64,
    bad: &[u64],
) -> Result<Verified> {
    let map = std::fs::read(map_image)?;
    let data = std::fs::read(image)?;
    let header = MapHeader::parse(&map)?;
    let layout = MapHeader {
        lba: map_lba,
        ..header.clone()
    };
    let lba = header.lba as usize;
    let mut v = Verified::default();
    for t in 0..header.threads {
        let at = layout.thread_offset(t) as usize;
        let gens = map
            .get(at..at + header.region as usize * 4)
            .ok_or("soak map: shorter than its header says")?;
        for (k, g) in gens.chunks_exact(4).enumerate() {
            let generation = u32::from_le_bytes([g[0], g[1], g[2], g[3]]);
            let b = t * header.region + k as u64;
            if bad.contains(&b) {
                v.skipped_bad += 1;
                continue;
            }
            let start = b as usize * lba;
            let block = data
                .get(start..start + lba)
                .ok_or("soak: the image is shorter than the soak's ranges")?;
            if !expected_matches(header.seed, t, generation, b, block) {
                return Err(format!(
                    "soak: LBA {b} in the image does not hold generation {generation} of thread {t}"
                )
                .into());
            }
            v.blocks += 1;
            v.written += u64::from(generation != 0);
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_headers_round_trip_and_bad_ones_are_refused() {
        let h = MapHeader {
            threads: 3,
            region: 4096,
            seed: 9,
            lba: 512,
        };
        let mut block = h.text().into_bytes();
        block.resize(512, 0);
        assert_eq!(MapHeader::parse(&block).expect("parses"), h);
        for bad in [
            &b"nonsense\n"[..],
            b"soak-map v1 threads=0 region=1 seed=1 lba=512\n",
            b"soak-map v1 threads=1 region=1 seed=x lba=512\n",
            b"soak-map v1 threads=1 region=1 seed=1 lba=7\n",
            b"soak-map v1 threads=1 color=1\n",
            b"\xff\xfe",
        ] {
            assert!(MapHeader::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(h.thread_offset(0), 512);
        assert_eq!(h.thread_offset(1), 512 + 4096 * 4);
    }

    #[test]
    fn generations_are_told_apart() {
        let mut block = vec![0u8; 512];
        assert!(expected_matches(1, 0, 0, 7, &block));
        pattern::fill(generation_seed(1, 0, 5), 7, 512, &mut block);
        assert!(expected_matches(1, 0, 5, 7, &block));
        assert!(!expected_matches(1, 0, 6, 7, &block));
        assert!(!expected_matches(1, 1, 5, 7, &block));
        assert!(!expected_matches(1, 0, 5, 8, &block));
        assert!(!expected_matches(1, 0, 0, 7, &block));
    }
}

//! `guest-check`: scenarios the VM tests run inside the guest against the
//! driver's API directly (threads, queue pairs, splitting). Each prints what
//! it did and exits non-zero on the first wrong byte or unexpected error;
//! the host side then checks the raw images with the same data pattern.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use clap::{Parser, Subcommand};
use nvme_driver::{Controller, Error, IoCompletion, IoOp, IoQPair, IoRequest, Options, pci};
use rand::{Rng, SeedableRng, rngs::StdRng};
use vm_tests::pattern;

#[derive(Parser, Debug)]
struct Cli {
    /// I/O queue entries to ask for.
    #[arg(long, default_value_t = 256)]
    entries: u16,
    /// Use SGLs for data when the controller supports them.
    #[arg(long)]
    sgl: bool,
    /// Use MMIO doorbells even if the controller has shadow doorbells.
    #[arg(long)]
    no_shadow: bool,
    /// Queue pairs in interrupt mode (MSI-X): threads sleep between
    /// completions instead of spinning.
    #[arg(long)]
    interrupts: bool,
    /// Deadline of one I/O command, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    io_timeout_ms: u64,
    /// Give up on a command that does not come back after Abort instead of
    /// resetting the controller.
    #[arg(long)]
    no_reset_on_timeout: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Each thread takes its own queue pair, writes the pattern over its
    /// own range in random-sized requests at a queue depth, flushes, and
    /// reads everything back, checking every block.
    Threads {
        #[arg(long, default_value_t = 4)]
        threads: usize,
        #[arg(long, default_value_t = 16)]
        qd: usize,
        /// Blocks per thread's range.
        #[arg(long, default_value_t = 8192)]
        region: u64,
        /// Largest request in blocks.
        #[arg(long, default_value_t = 256)]
        max_blocks: u64,
        #[arg(long, default_value_t = 1)]
        nsid: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// More threads than granted queue pairs ask for one at once.
    Queues {
        #[arg(long, default_value_t = 4)]
        threads: usize,
    },
    /// Many requests, each split into several commands, all submitted at
    /// once to a small queue.
    Split {
        #[arg(long, default_value_t = 24)]
        requests: u64,
        /// Blocks per request.
        #[arg(long, default_value_t = 512)]
        blocks: u64,
        #[arg(long, default_value_t = 3)]
        seed: u64,
    },
    /// The same LBAs on every namespace hold different data.
    Namespaces {
        #[arg(long, default_value_t = 64)]
        blocks: u64,
    },
    /// Write Zeroes and Deallocate read back as zeroes; the blocks around
    /// them are untouched.
    Ops,
    /// Through the page cache and mpage over the NVMe queue pair: dirty
    /// `pages` pages, fsync (writeback, then NVMe Flush), then read them
    /// into a cold cache by readahead and check every byte.
    Cache {
        #[arg(long, default_value_t = 1024)]
        pages: u64,
        #[arg(long, default_value_t = 121)]
        seed: u64,
    },
    /// Random write_at / read_at / set_len / fsync on a page-cache File over
    /// the NVMe device, with a small cache budget (so writeback and eviction
    /// run), every read checked against an in-memory model.
    FileModel {
        #[arg(long, default_value_t = 400)]
        ops: usize,
        #[arg(long, default_value_t = 8 << 20)]
        max_size: u64,
        #[arg(long, default_value_t = 1 << 20)]
        cache: u64,
        #[arg(long, default_value_t = 141)]
        seed: u64,
    },
    /// The power-cut workload (`vm_tests::powercut`), on namespace 1 with
    /// 512-byte LBAs, to run behind QEMU's blklogwrites: two threads run
    /// seeded write/overwrite/read/set_len/fsync sequences on their own
    /// page-cache files (one 2 MiB cache), a third writes raw blocks in
    /// generations with Flush after each; after every fsync and Flush
    /// that returned, the thread writes a mark block. Reads are checked
    /// against the File model.
    PowerCut {
        #[arg(long, default_value_t = 250)]
        ops: usize,
        #[arg(long, default_value_t = 2 << 20)]
        max_size: u64,
        #[arg(long, default_value_t = 40)]
        raw_gens: usize,
        #[arg(long, default_value_t = 2 << 20)]
        cache: u64,
        #[arg(long, default_value_t = 161)]
        seed: u64,
    },
    /// Command counts on the device (SMART host read/write commands) for a
    /// readahead of `pages` contiguous pages and the writeback of as many
    /// dirty pages: the largest legal commands, as T1 and T12 ask.
    Commands {
        #[arg(long, default_value_t = 64)]
        pages: u64,
    },
    /// Write errors on the raw path (run with blkdebug failing writes that
    /// touch 512-byte sector 2048 of namespace 1): `requests` writes of 8
    /// blocks from LBA 2000 are in flight at once on one queue; the one
    /// covering LBA 2048 fails with the status named, every other
    /// completes, reads back its data, and the queue keeps working.
    WriteErrors {
        #[arg(long, default_value_t = 16)]
        requests: u64,
        #[arg(long, default_value_t = 151)]
        seed: u64,
    },
    /// Device errors through the page cache (run with blkdebug failing
    /// writes at byte 1 MiB and, once, reads at byte 2 MiB): fsync reports
    /// a write error once per open file, the folio is not re-dirtied; a
    /// failed read is retried by the next read (T16, T11, X1).
    CacheErrors,
    /// The scenarios of docs/MPAGE.md (T1–T28, the mpage-conformance crate)
    /// on namespace 1 through the page cache, the same code and checks as
    /// the host tests run on the recording device: one line per scenario,
    /// `ok` or `FAILED` with the failed check; exits non-zero if any
    /// failed. Needs a transfer limit of at least 1 MiB (mdts=8).
    Conformance,
    /// Our side of the differential tests against the kernel
    /// (`vm_tests::oracle`, tests/tests/oracle.rs): runs the steps of
    /// `plan` through mpage's `File` over an extent mapper holding each
    /// file's block map (`/tmp/map.<file>`, `filefrag -v` output taken
    /// while the kernel had the file system mounted), with 512-byte..4 KiB
    /// blocks as the map says and the kernel's readahead maximum. Before
    /// each step it reads one block at the step's marker LBA. Reads copy
    /// what they read to `/tmp/ours.<file>`; writes write
    /// `/tmp/pat.<file>` over the file and fsync.
    Oracle {
        plan: std::path::PathBuf,
        /// The kernel's `read_ahead_kb` for the namespace.
        #[arg(long)]
        ra_kb: u64,
        /// The kernel's `max_sectors_kb` for the namespace: our commands
        /// are split there too (an `mpage::Tap` presenting that limit).
        #[arg(long)]
        max_kb: u32,
    },
    /// Shadow doorbells' EventIdx rule under wrap-around: queue pairs of
    /// `--entries` (small, so the ring indices wrap every few commands) kept
    /// full by the full path and by the floor loop, `lives` times in a row
    /// (each life drops the queue pair and takes a new one, with the same
    /// queue id, and starts with one command alone). Times every request
    /// and floor run; one slower than `stall-ms` is a stall. Prints per
    /// life the slowest request and floor run, and the stalls.
    ShadowStress {
        /// Requests per life on the full path, and as many floor commands.
        #[arg(long, default_value_t = 3000)]
        ios: u64,
        #[arg(long, default_value_t = 4)]
        lives: u32,
        #[arg(long, default_value_t = 3000)]
        stall_ms: u64,
        #[arg(long, default_value_t = 161)]
        seed: u64,
    },
    /// Set the temperature threshold below the current temperature: the
    /// controller reports a SMART/health asynchronous event.
    Events,
    /// Threads write and verify their ranges while the controller is reset
    /// underneath them: every request completes correctly (resubmitted
    /// after the reset) or fails with an error, and the data is right.
    /// Mixed multi-thread I/O with controller resets and blkdebug errors
    /// for `seconds` (`vm_tests::soak`); the model goes to namespace 2.
    Soak {
        #[arg(long, default_value_t = 4)]
        threads: u64,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        #[arg(long, default_value_t = 4096)]
        region: u64,
        #[arg(long, default_value_t = 16)]
        qd: u64,
        #[arg(long, default_value_t = 64)]
        max_blocks: u64,
        /// Milliseconds between controller resets (0: none).
        #[arg(long, default_value_t = 2000)]
        reset_ms: u64,
        /// Blocks blkdebug fails every request to (comma-separated).
        #[arg(long, value_delimiter = ',')]
        bad: Vec<u64>,
        #[arg(long, default_value_t = 161)]
        seed: u64,
    },
    Reset {
        #[arg(long, default_value_t = 3)]
        threads: usize,
        #[arg(long, default_value_t = 3)]
        resets: usize,
        #[arg(long, default_value_t = 8192)]
        region: u64,
        #[arg(long, default_value_t = 71)]
        seed: u64,
    },
    /// A command that hangs in the device (the host holds a write in QEMU:
    /// a blkdebug breakpoint or an I/O throttle; see
    /// tests/tests/recovery.rs). Prints `hang: writing` and writes the
    /// pattern over `region` blocks from LBA 0, round and round, at a queue
    /// depth, until the driver has dealt with a timed-out command, then one
    /// more round; every request must get an answer (success, or with
    /// `--no-reset-on-timeout` a command timeout), a command given up on
    /// must complete late, and the region must read back. Prints the
    /// driver's recovery record and times.
    Hang {
        #[arg(long, default_value_t = 8)]
        qd: usize,
        /// Blocks per write.
        #[arg(long, default_value_t = 8)]
        blocks: u64,
        #[arg(long, default_value_t = 1024)]
        region: u64,
        /// Longest wait for a command to hang and be dealt with, in seconds.
        #[arg(long, default_value_t = 150)]
        wait_s: u64,
        #[arg(long, default_value_t = 161)]
        seed: u64,
    },
    /// Writes 1 to `/sys/bus/pci/devices/<bdf>/remove` (which returns once
    /// the kernel removed the device) and prints when it started and
    /// returned, in ns since the epoch. Opens no controller.
    SysfsRemove { bdf: String },
    /// Hot removal: threads (odd ones in interrupt mode) write the pattern
    /// over their own ranges, round and round, until the device is taken
    /// away (`remove` in sysfs, hot-unplug, done by the caller once
    /// `--ready` exists). Each thread then checks that every request got
    /// an answer, that every error says the device was removed, and that
    /// new requests are refused with that error; it prints the writes
    /// acknowledged before (`acked t: a+n,...`) and, in ns since the
    /// epoch, when its last answer came.
    HotRemove {
        #[arg(long, default_value_t = 4)]
        threads: usize,
        #[arg(long, default_value_t = 8)]
        qd: usize,
        #[arg(long, default_value_t = 4096)]
        region: u64,
        /// Blocks per write.
        #[arg(long, default_value_t = 8)]
        blocks: u64,
        #[arg(long, default_value_t = 81)]
        seed: u64,
        /// Created once every thread has had writes acknowledged.
        #[arg(long, default_value = "/tmp/io-running")]
        ready: std::path::PathBuf,
        /// Give up if the device is not removed within this many seconds.
        #[arg(long, default_value_t = 120)]
        max_secs: u64,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guest-check: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn open(cli: &Cli) -> Result<Controller> {
    let f = pci::single_vfio_function()?;
    let options = Options {
        io_queue_entries: cli.entries,
        use_sgl: cli.sgl,
        shadow_doorbells: !cli.no_shadow,
        io_timeout: Duration::from_millis(cli.io_timeout_ms),
        reset_on_timeout: !cli.no_reset_on_timeout,
        ..Options::default()
    };
    let ctrl = Controller::open(f.address, options)?;
    println!(
        "controller {}: {} queue pairs granted, max transfer {} bytes, {}, {} doorbells",
        ctrl.address(),
        ctrl.io_queue_limit(),
        ctrl.max_transfer(),
        if ctrl.uses_sgl() { "SGL" } else { "PRP" },
        if ctrl.uses_shadow_doorbells() {
            "shadow"
        } else {
            "MMIO"
        }
    );
    Ok(ctrl)
}

fn run(cli: Cli) -> Result<()> {
    if let Scenario::SysfsRemove { bdf } = &cli.scenario {
        let path = format!("/sys/bus/pci/devices/{bdf}/remove");
        let start = epoch_ns();
        println!("remove requested at {start} ns");
        std::fs::write(&path, b"1").map_err(|e| format!("{path}: {e}"))?;
        let end = epoch_ns();
        println!(
            "remove returned at {end} ns, after {} us",
            (end - start) / 1000
        );
        return Ok(());
    }
    let ctrl = open(&cli)?;
    match cli.scenario {
        Scenario::Threads {
            threads,
            qd,
            region,
            max_blocks,
            nsid,
            seed,
        } => {
            let interrupts = cli.interrupts;
            let handles: Vec<_> = (0..threads as u64)
                .map(|t| {
                    let ctrl = ctrl.clone();
                    std::thread::spawn(move || -> Result<String> {
                        let mut q = if interrupts {
                            ctrl.io_qpair_with_interrupts()?
                        } else {
                            ctrl.io_qpair()?
                        };
                        let first = t * region;
                        let (w, r) = fill_and_verify(&ctrl, &mut q, nsid, first, region, qd, max_blocks, seed + t)?;
                        Ok(format!(
                            "thread {t}: queue {} of {} entries wrote {w} requests, read back {r}, LBAs {first}..{} verified, {} interrupt wake-ups",
                            q.qid(),
                            q.depth(),
                            first + region,
                            q.interrupts()
                        ))
                    })
                })
                .collect();
            for h in handles {
                let line = h.join().map_err(|_| "a thread panicked")??;
                println!("{line}");
            }
            let (chunks, huge) = ctrl.dma_pool().chunk_counts();
            println!("dma pool: {chunks} chunks of 2 MiB, {huge} on huge pages");
        }
        Scenario::Queues { threads } => {
            let barrier = Arc::new(Barrier::new(threads));
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let ctrl = ctrl.clone();
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        let got = ctrl.io_qpair();
                        // Hold the queue pair until every thread has asked.
                        barrier.wait();
                        let outcome = match &got {
                            Ok(q) => format!("ok qid {}", q.qid()),
                            Err(e @ Error::QueuesExhausted { .. }) => format!("exhausted: {e}"),
                            Err(e) => format!("error: {e}"),
                        };
                        let io = got.and_then(|mut q| {
                            let mut b = vec![0u8; 512];
                            q.read(1, 0, &mut b)
                        });
                        (outcome, io.is_ok())
                    })
                })
                .collect();
            let mut ok = 0;
            for h in handles {
                let (outcome, io_ok) = h.join().map_err(|_| "a thread panicked")?;
                println!("{outcome}");
                if outcome.starts_with("ok") {
                    if !io_ok {
                        return Err("I/O on a granted queue pair failed".into());
                    }
                    ok += 1;
                }
            }
            println!("granted {ok} of {threads}");
            let q = ctrl.io_qpair()?;
            println!("after release: ok qid {}", q.qid());
        }
        Scenario::Split {
            requests,
            blocks,
            seed,
        } => {
            let mut q = ctrl.io_qpair()?;
            let lba = ctrl.namespace(1)?.lba_size as usize;
            let len = blocks as usize * lba;
            for (op, name) in [(IoOp::Write, "written"), (IoOp::Read, "read")] {
                for i in 0..requests {
                    let buf = ctrl.dma_pool().alloc(len)?;
                    let slba = i * blocks;
                    let req = if op == IoOp::Write {
                        let mut data = vec![0u8; len];
                        pattern::fill(seed, slba, lba, &mut data);
                        buf.write(0, &data)?;
                        IoRequest::write(1, slba, blocks, buf)
                    } else {
                        IoRequest::read(1, slba, blocks, buf)
                    };
                    q.submit(req.with_tag(i))?;
                }
                println!(
                    "{requests} requests of {len} bytes outstanding on a {}-entry queue",
                    q.depth()
                );
                let done = drain(&mut q, requests as usize)?;
                for c in done {
                    c.result.as_ref().map_err(|e| e.to_string())?;
                    if op == IoOp::Read {
                        check(&c, seed, lba)?;
                    }
                }
                println!("all {requests} {name}");
            }
        }
        Scenario::WriteErrors { requests, seed } => {
            const FIRST: u64 = 2000;
            const BLOCKS: u64 = 8;
            const BAD: u64 = 2048;
            let mut q = ctrl.io_qpair()?;
            let lba = ctrl.namespace(1)?.lba_size as usize;
            let len = BLOCKS as usize * lba;
            for i in 0..requests {
                let slba = FIRST + i * BLOCKS;
                let buf = ctrl.dma_pool().alloc(len)?;
                let mut data = vec![0u8; len];
                pattern::fill(seed, slba, lba, &mut data);
                buf.write(0, &data)?;
                q.submit(IoRequest::write(1, slba, BLOCKS, buf).with_tag(i))?;
            }
            println!("{requests} writes of {BLOCKS} blocks in flight on one queue");
            let done = drain(&mut q, requests as usize)?;
            let mut failed = Vec::new();
            for c in &done {
                match &c.result {
                    Ok(()) => {}
                    Err(e) => {
                        println!("write at lba {} failed: {e}", c.slba);
                        failed.push(c.slba);
                    }
                }
            }
            let bad_request = FIRST + (BAD - FIRST) / BLOCKS * BLOCKS;
            if failed != [bad_request] {
                return Err(format!(
                    "expected exactly the write at lba {bad_request} to fail, got {failed:?}"
                )
                .into());
            }
            println!("{} of {requests} writes completed", requests - 1);
            // Every other range holds its data; the queue still works.
            for i in 0..requests {
                let slba = FIRST + i * BLOCKS;
                if slba == bad_request {
                    continue;
                }
                let mut back = vec![0u8; len];
                q.read(1, slba, &mut back)?;
                if let Some(bad) = pattern::first_mismatch(seed, slba, lba, &back) {
                    return Err(format!("LBA {bad} does not hold its data").into());
                }
            }
            println!("the other {} ranges read back", requests - 1);
        }
        Scenario::Namespaces { blocks } => {
            let mut q = ctrl.io_qpair()?;
            let nsids: Vec<(u32, usize)> = ctrl
                .namespaces()
                .iter()
                .map(|n| (n.nsid, n.lba_size as usize))
                .collect();
            for &(nsid, lba) in &nsids {
                let mut data = vec![0u8; blocks as usize * lba];
                pattern::fill(u64::from(nsid) * 1000, 0, lba, &mut data);
                q.write(nsid, 0, &data)?;
            }
            for &(nsid, lba) in &nsids {
                let mut back = vec![0u8; blocks as usize * lba];
                q.read(nsid, 0, &mut back)?;
                if let Some(bad) = pattern::first_mismatch(u64::from(nsid) * 1000, 0, lba, &back) {
                    return Err(
                        format!("namespace {nsid}: LBA {bad} does not hold its data").into(),
                    );
                }
                println!("namespace {nsid}: {blocks} blocks of {lba} bytes verified");
            }
        }
        Scenario::Reset {
            threads,
            resets,
            region,
            seed,
        } => {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let handles: Vec<_> = (0..threads as u64)
                .map(|t| {
                    let ctrl = ctrl.clone();
                    let stop = stop.clone();
                    std::thread::spawn(move || -> Result<String> {
                        let mut q = ctrl.io_qpair()?;
                        let first = t * region;
                        let mut rounds = 0;
                        // Keep the queue busy until the resets are over.
                        while rounds == 0 || !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            fill_and_verify(&ctrl, &mut q, 1, first, region, 16, 128, seed + t)?;
                            rounds += 1;
                        }
                        Ok(format!(
                            "thread {t}: {rounds} rounds on queue {} verified",
                            q.qid()
                        ))
                    })
                })
                .collect();
            for i in 0..resets {
                std::thread::sleep(Duration::from_millis(300));
                ctrl.reset()?;
                println!("reset {} done", i + 1);
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for h in handles {
                let line = h.join().map_err(|_| "a thread panicked")??;
                println!("{line}");
            }
        }
        Scenario::Soak {
            threads,
            seconds,
            region,
            qd,
            max_blocks,
            reset_ms,
            bad,
            seed,
        } => {
            let params = vm_tests::soak::Params {
                threads,
                duration: Duration::from_secs(seconds),
                region,
                qd,
                max_blocks,
                reset_every: Duration::from_millis(reset_ms),
                bad,
                seed,
                map_nsid: 2,
            };
            let start = std::time::Instant::now();
            let sums = vm_tests::soak::run(&ctrl, &params)?;
            let total =
                |f: fn(&vm_tests::soak::ThreadSummary) -> u64| sums.iter().map(f).sum::<u64>();
            println!(
                "soak: {} s, {threads} threads: {} writes, {} reads, {} MiB, {} injected errors, \
                 {} blocks checked, {} settled, no wrong byte",
                start.elapsed().as_secs(),
                total(|s| s.writes),
                total(|s| s.reads),
                total(|s| s.bytes) >> 20,
                total(|s| s.injected_errors),
                total(|s| s.blocks_checked),
                total(|s| s.settled),
            );
        }
        Scenario::ShadowStress {
            ios,
            lives,
            stall_ms,
            seed,
        } => shadow_stress(&ctrl, ios, lives, Duration::from_millis(stall_ms), seed)?,
        Scenario::Hang {
            qd,
            blocks,
            region,
            wait_s,
            seed,
        } => hang(
            &ctrl,
            cli.no_reset_on_timeout,
            qd,
            blocks,
            region,
            Duration::from_secs(wait_s),
            seed,
        )?,
        Scenario::SysfsRemove { .. } => return Err("sysfs-remove opens no controller".into()),
        Scenario::HotRemove {
            threads,
            qd,
            region,
            blocks,
            seed,
            ready,
            max_secs,
        } => hot_remove(
            &ctrl,
            HotRemove {
                threads,
                qd,
                region,
                blocks,
                seed,
                ready,
                max_secs,
            },
        )?,
        Scenario::Cache { pages, seed } => cache_roundtrip(&ctrl, pages, seed)?,
        Scenario::CacheErrors => cache_errors(&ctrl)?,
        Scenario::Conformance => conformance(&ctrl)?,
        Scenario::Oracle {
            plan,
            ra_kb,
            max_kb,
        } => oracle(&ctrl, &plan, ra_kb, max_kb)?,
        Scenario::Commands { pages } => command_counts(&ctrl, pages)?,
        Scenario::PowerCut {
            ops,
            max_size,
            raw_gens,
            cache,
            seed,
        } => power_cut(
            &ctrl,
            vm_tests::powercut::Params {
                seed,
                ops,
                max_size,
                raw_gens,
            },
            cache,
        )?,
        Scenario::FileModel {
            ops,
            max_size,
            cache,
            seed,
        } => file_model(&ctrl, ops, max_size, cache, seed)?,
        Scenario::Events => {
            println!("events before: {}", ctrl.async_events()?.len());
            // Temperature Threshold, over-temperature, composite: 273 K.
            ctrl.set_features(
                nvme_driver::nvme_spec::FeatureId::TemperatureThreshold as u8,
                273,
            )?;
            let start = std::time::Instant::now();
            let mut events = Vec::new();
            // QEMU posts the event at once; the bound only stops a hang
            // (generous: the host may be busy with other guests).
            while events.is_empty() && start.elapsed() < Duration::from_secs(30) {
                events = ctrl.async_events()?;
                std::thread::sleep(Duration::from_millis(10));
            }
            for e in &events {
                println!("event: {} (dw0 {:#010x})", e.description(), e.to_dw0());
            }
            if events.is_empty() {
                return Err("no asynchronous event within 30 s".into());
            }
            // Reading the SMART log clears the event (RAE = 0).
            let smart = ctrl.smart_log()?;
            println!("critical warning {:#x}", smart.critical_warning);
        }
        Scenario::Ops => {
            let mut q = ctrl.io_qpair()?;
            let ns = ctrl.namespace(1)?;
            let lba = ns.lba_size as usize;
            // DLFEAT bits 2:0 = 1: deallocated blocks read as zeroes.
            let dealloc_zeroes = ns.identify.dlfeat & 7 == 1;
            println!("dlfeat {:#x}", ns.identify.dlfeat);
            let mut data = vec![0u8; 64 * lba];
            pattern::fill(5, 0, lba, &mut data);
            q.write(1, 0, &data)?;
            q.write_zeroes(1, 8, 8)?;
            q.deallocate(1, 32, 16)?;
            q.flush(1)?;
            let mut back = vec![0u8; 64 * lba];
            q.read(1, 0, &mut back)?;
            for (b, block) in back.chunks(lba).enumerate() {
                let zero = (8..16).contains(&b) || (dealloc_zeroes && (32..48).contains(&b));
                let is_zero = block.iter().all(|&x| x == 0);
                let intact = pattern::first_mismatch(5, b as u64, lba, block).is_none();
                if (zero && !is_zero) || (!zero && !intact) {
                    return Err(format!(
                        "LBA {b}: expected {}",
                        if zero { "zeroes" } else { "the pattern" }
                    )
                    .into());
                }
            }
            println!(
                "write zeroes 8+8{} read back as zeroes; the rest intact",
                if dealloc_zeroes {
                    " and deallocate 32+16"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

/// Writes the pattern over `region` blocks from `first`, then reads them
/// back, both with random request sizes at queue depth `qd`. Returns the
/// number of write and read requests.
#[allow(clippy::too_many_arguments)]
fn fill_and_verify(
    ctrl: &Controller,
    q: &mut IoQPair,
    nsid: u32,
    first: u64,
    region: u64,
    qd: usize,
    max_blocks: u64,
    seed: u64,
) -> Result<(u64, u64)> {
    let lba = ctrl.namespace(nsid)?.lba_size as usize;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut counts = [0u64; 2];
    for (pass, op) in [IoOp::Write, IoOp::Read].into_iter().enumerate() {
        let mut next = first;
        let end = first + region;
        let mut in_flight = 0usize;
        let mut done = Vec::new();
        while next < end || in_flight > 0 {
            while next < end && in_flight < qd {
                let blocks = rng.random_range(1..=max_blocks).min(end - next);
                let buf = ctrl.dma_pool().alloc(blocks as usize * lba)?;
                let req = if op == IoOp::Write {
                    let mut data = vec![0u8; blocks as usize * lba];
                    pattern::fill(seed, next, lba, &mut data);
                    buf.write(0, &data)?;
                    IoRequest::write(nsid, next, blocks, buf)
                } else {
                    IoRequest::read(nsid, next, blocks, buf)
                };
                q.submit(req)?;
                counts[pass] += 1;
                next += blocks;
                in_flight += 1;
            }
            done.clear();
            // Spins in polled mode; sleeps on the interrupt in interrupt mode.
            q.wait(&mut done, Duration::from_secs(1))?;
            for c in done.drain(..) {
                in_flight -= 1;
                if let Err(e) = &c.result {
                    return Err(format!("{:?} lba {}+{}: {e}", c.op, c.slba, c.blocks).into());
                }
                if op == IoOp::Read {
                    check(&c, seed, lba)?;
                }
            }
        }
        if op == IoOp::Write {
            q.flush(nsid)?;
        }
    }
    Ok((counts[0], counts[1]))
}

/// The `hang` scenario (see [`Scenario::Hang`]).
#[allow(clippy::too_many_arguments)]
fn hang(
    ctrl: &Controller,
    give_up: bool,
    qd: usize,
    blocks: u64,
    region: u64,
    wait: Duration,
    seed: u64,
) -> Result<()> {
    use nvme_driver::RecoveryOutcome;
    use std::time::Instant;

    if blocks == 0 || region < blocks || qd == 0 {
        return Err("need 0 < blocks <= region and qd > 0".into());
    }
    let mut q = ctrl.io_qpair()?;
    let lba = ctrl.namespace(1)?.lba_size as usize;
    let rounds_lbas = region / blocks * blocks;
    println!(
        "hang: writing {blocks}-block requests over LBAs 0..{rounds_lbas} at queue depth {qd} on queue {}",
        q.qid()
    );
    let start = Instant::now();
    let (mut submitted, mut ok, mut failed) = (0u64, 0u64, 0u64);
    let mut next = 0u64;
    // Writes still to submit once the timeout was dealt with: one more round.
    let mut after: Option<u64> = None;
    // When the queue was usable again, and the first write that completed after it.
    let mut recovered_at: Option<Instant> = None;
    let mut first_after: Option<Duration> = None;
    let mut done = Vec::new();
    loop {
        let more = after.is_none_or(|n| n > 0);
        while more && (submitted - ok - failed) < qd as u64 && after.is_none_or(|n| n > 0) {
            let buf = ctrl.dma_pool().alloc(blocks as usize * lba)?;
            let mut data = vec![0u8; blocks as usize * lba];
            pattern::fill(seed, next, lba, &mut data);
            buf.write(0, &data)?;
            q.submit(IoRequest::write(1, next, blocks, buf))?;
            submitted += 1;
            next = (next + blocks) % rounds_lbas;
            if let Some(n) = after.as_mut() {
                *n -= 1;
            }
        }
        if submitted == ok + failed {
            break;
        }
        if start.elapsed() > wait {
            return Err(format!(
                "{} of {submitted} writes unanswered after {wait:?} (recovered: {})",
                submitted - ok - failed,
                recovered_at.is_some()
            )
            .into());
        }
        done.clear();
        q.poll(&mut done)?;
        for c in &done {
            match &c.result {
                Ok(()) => {
                    ok += 1;
                    if let Some(at) = recovered_at
                        && first_after.is_none()
                    {
                        first_after = Some(at.elapsed());
                    }
                }
                Err(e @ Error::CommandTimeout { .. }) if give_up => {
                    failed += 1;
                    println!("write at lba {}+{} failed: {e}", c.slba, c.blocks);
                }
                Err(e) => {
                    return Err(format!("write at lba {}+{}: {e}", c.slba, c.blocks).into());
                }
            }
        }
        if after.is_none()
            && let Some(r) = q.last_recovery()
            && r.outcome != RecoveryOutcome::CameBack
        {
            recovered_at = Some(r.detected + r.total);
            after = Some(rounds_lbas / blocks);
            let outcome = match r.outcome {
                RecoveryOutcome::Reset { resubmitted } => {
                    format!("controller reset, {resubmitted} commands resubmitted")
                }
                RecoveryOutcome::GaveUp => "given up".to_string(),
                RecoveryOutcome::Failed => "reset failed".to_string(),
                RecoveryOutcome::CameBack => unreachable!(),
            };
            println!(
                "recovery: command {} on queue {}: {outcome}; Abort answered dw0 {}",
                r.cid.map_or("?".to_string(), |c| c.to_string()),
                r.qid,
                r.abort_dw0
                    .map_or("none (failed)".to_string(), |d| format!("{d:#x}"))
            );
            println!(
                "recovery time: {:.1} ms from the timeout to the queue usable again \
                 (Abort {:.1} ms, waiting after it {:.1} ms, reset and resubmission {:.1} ms)",
                ms(r.total),
                ms(r.abort),
                ms(r.grace),
                ms(r.reset)
            );
        }
    }
    if recovered_at.is_none() {
        return Err(format!("no command timed out in {wait:?}: nothing hung").into());
    }
    println!(
        "hang: all {submitted} writes answered: {ok} completed, {failed} failed; \
         the first write completed {:.1} ms after the queue was usable again",
        first_after.map_or(f64::NAN, ms)
    );
    // A command given up on still belongs to the device: its completion
    // comes when the host lets it go (perhaps already).
    let t = Instant::now();
    while q.given_up_in_flight() > 0 {
        if t.elapsed() > wait {
            return Err("a command given up on never completed".into());
        }
        done.clear();
        q.poll(&mut done)?;
        if !done.is_empty() {
            return Err("a late completion was handed back as a request".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    println!("hang: commands given up on still in the device: 0");
    q.flush(1)?;
    let mut back = vec![0u8; rounds_lbas as usize * lba];
    for (i, chunk) in back.chunks_mut(256 * lba).enumerate() {
        q.read(1, i as u64 * 256, chunk)?;
    }
    if let Some(bad) = pattern::first_mismatch(seed, 0, lba, &back) {
        return Err(format!("LBA {bad} does not hold its data").into());
    }
    println!(
        "hang: LBAs 0..{rounds_lbas} read back; queue {} still works",
        q.qid()
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Checks a finished read against the pattern.
fn check(c: &IoCompletion, seed: u64, lba: usize) -> Result<()> {
    let buf = c
        .data
        .as_ref()
        .ok_or("a read came back without its buffer")?;
    let mut data = vec![0u8; c.blocks as usize * lba];
    buf.read(0, &mut data)?;
    match pattern::first_mismatch(seed, c.slba, lba, &data) {
        None => Ok(()),
        Some(bad) => Err(format!(
            "read lba {}+{}: LBA {bad} holds wrong data",
            c.slba, c.blocks
        )
        .into()),
    }
}

/// Polls until `n` requests have completed (or a minute has passed).
fn drain(q: &mut IoQPair, n: usize) -> Result<Vec<IoCompletion>> {
    let mut done = Vec::new();
    let start = std::time::Instant::now();
    while done.len() < n {
        q.poll(&mut done)?;
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!("only {} of {n} requests completed in 60 s", done.len()).into());
        }
    }
    Ok(done)
}

/// The `shadow-stress` scenario (see [`Scenario::ShadowStress`]).
fn shadow_stress(
    ctrl: &Controller,
    ios: u64,
    lives: u32,
    stall: Duration,
    seed: u64,
) -> Result<()> {
    let blocks = ctrl.namespace(1)?.blocks;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut total = Timed::default();
    for life in 0..lives {
        let mut q = ctrl.io_qpair()?;
        // Both paths get fresh queues (lives 0, 3, 4, 7, ...: the full path
        // first; 1, 2, 5, 6, ...: the floor loop), each right after a life
        // of the other kind, and start with one command alone: a queue's
        // first doorbell then moves its tail by one, which a stale EventIdx
        // (one left by an earlier queue with this id) anywhere but at 0
        // would swallow.
        let floor_first = matches!(life % 4, 1 | 2);
        let mut floor = Timed::default();
        if floor_first {
            floor = shadow_floors(&mut q, ios, blocks, stall, seed + u64::from(life))?;
        }
        let full = shadow_full(ctrl, &mut q, ios, blocks, stall, &mut rng)?;
        if !floor_first {
            floor = shadow_floors(&mut q, ios, blocks, stall, seed + u64::from(life))?;
        }
        println!(
            "life {life}: queue {} of {} entries; full path: {ios} requests at up to {} in flight, \
             the first alone in {} ms, slowest {} ms; floor ({}): {} ms; {} stalls",
            q.qid(),
            q.depth(),
            q.depth() - 1,
            full.first.as_millis(),
            full.slowest.as_millis(),
            if floor_first { "first" } else { "after" },
            floor.slowest.as_millis(),
            full.stalls + floor.stalls
        );
        total.add(&full);
        total.add(&floor);
    }
    println!(
        "shadow stress: {lives} lives of {ios} requests and two floor runs, slowest {} ms, \
         {} stalls, {} failed",
        total.slowest.as_millis(),
        total.stalls,
        total.failed
    );
    Ok(())
}

/// What [`shadow_stress`] measured on one path.
#[derive(Debug, Default)]
struct Timed {
    /// The first request (sent alone).
    first: Duration,
    slowest: Duration,
    /// Requests (or floor runs) slower than the stall bound.
    stalls: u64,
    /// Requests (or floor runs) that failed.
    failed: u64,
}

impl Timed {
    fn add(&mut self, other: &Timed) {
        self.slowest = self.slowest.max(other.slowest);
        self.stalls += other.stalls;
        self.failed += other.failed;
    }
}

/// The full path of [`shadow_stress`]: one request alone, then `ios - 1`
/// one-block reads at full depth for half of them and at a random depth
/// per batch after (so the tail stops at every position of the ring),
/// each timed from submit to completion.
fn shadow_full(
    ctrl: &Controller,
    q: &mut IoQPair,
    ios: u64,
    blocks: u64,
    stall: Duration,
    rng: &mut StdRng,
) -> Result<Timed> {
    let lba = ctrl.namespace(1)?.lba_size as usize;
    let depth = q.depth() - 1;
    let mut timed = Timed::default();
    let mut started = vec![None; ios as usize];
    let mut free: Vec<nvme_driver::DmaBuffer> = Vec::new();
    let (mut submitted, mut completed, mut in_flight) = (0u64, 0u64, 0usize);
    let mut done = Vec::new();
    while completed < ios {
        let target = if submitted == 0 {
            1
        } else if submitted < ios / 2 {
            depth
        } else {
            rng.random_range(1..=depth)
        };
        while in_flight < target && submitted < ios {
            let buf = match free.pop() {
                Some(b) => b,
                None => ctrl.dma_pool().alloc(lba)?,
            };
            let slba = rng.random_range(0..blocks);
            q.submit(IoRequest::read(1, slba, 1, buf).with_tag(submitted))?;
            started[submitted as usize] = Some(std::time::Instant::now());
            submitted += 1;
            in_flight += 1;
        }
        done.clear();
        q.poll(&mut done)?;
        for c in done.drain(..) {
            let took = started
                .get_mut(c.tag as usize)
                .and_then(Option::take)
                .ok_or_else(|| format!("completion for tag {} never submitted", c.tag))?
                .elapsed();
            if c.tag == 0 {
                timed.first = took;
            }
            timed.slowest = timed.slowest.max(took);
            if took > stall {
                timed.stalls += 1;
                println!("request {} took {} ms", c.tag, took.as_millis());
            }
            if let Err(e) = &c.result {
                timed.failed += 1;
                println!("request {} failed: {e}", c.tag);
            }
            in_flight -= 1;
            completed += 1;
            if let Some(b) = c.data {
                free.push(b);
            }
        }
    }
    Ok(timed)
}

/// The floor loop of [`shadow_stress`]: a run at depth 1 (its first
/// doorbell moves the tail by one), then `ios` one-block reads at full
/// depth; each run is timed whole. A run stuck past the I/O timeout fails.
fn shadow_floors(
    q: &mut IoQPair,
    ios: u64,
    blocks: u64,
    stall: Duration,
    seed: u64,
) -> Result<Timed> {
    let mut timed = Timed::default();
    for (run, (depth, count)) in [(1, 1), (q.depth() - 1, ios)].into_iter().enumerate() {
        let job = nvme_driver::FloorJob {
            nsid: 1,
            write: false,
            first_lba: 0,
            blocks,
            io_blocks: 1,
            depth,
            random: true,
            seed,
            warmup: Duration::ZERO,
            time: Duration::ZERO,
            count: Some(count),
        };
        let start = std::time::Instant::now();
        let result = q.floor(&job);
        let took = start.elapsed();
        if run == 0 {
            timed.first = took;
        }
        timed.slowest = timed.slowest.max(took);
        match result {
            Ok(r) if r.errors == 0 => {
                if took > stall {
                    timed.stalls += 1;
                    println!("floor at depth {depth} took {} ms", took.as_millis());
                }
            }
            Ok(r) => {
                timed.failed += 1;
                println!("floor at depth {depth}: {} commands failed", r.errors);
            }
            Err(e) => {
                timed.stalls += 1;
                timed.failed += 1;
                println!("floor at depth {depth} failed: {e}");
            }
        }
    }
    Ok(timed)
}

/// The `oracle` scenario.
fn oracle(ctrl: &Controller, plan: &std::path::Path, ra_kb: u64, max_kb: u32) -> Result<()> {
    use mpage::nvme::{DmaFolioMemory, NvmeDevice};
    use mpage::{BlockDevice, File, Tap};
    use pagecache::{BlockSize, PageCache};
    use vm_tests::oracle::{FileMap, Plan, Side, StepKind};

    let read = |p: &str| std::fs::read(p).map_err(|e| format!("{p}: {e}"));
    let plan = Plan::parse(&String::from_utf8_lossy(&read(
        &plan.display().to_string(),
    )?))?;
    let max = max_kb.checked_mul(1024).ok_or("--max-kb is too large")?;
    let mut dev = Tap::new(NvmeDevice::new(ctrl, ctrl.io_qpair()?, 1)?).limit_max_transfer(max);
    let lba = dev.geometry().lba_size;
    let memory = Arc::new(DmaFolioMemory::new(ctrl.dma_pool().clone()));
    let ra_pages = ra_kb / 4;
    let parse_map = |p: String| -> Result<FileMap> {
        Ok(FileMap::parse_filefrag(&String::from_utf8_lossy(&read(
            &p,
        )?))?)
    };
    for step in &plan.steps {
        let map = parse_map(format!("/tmp/map.{}", step.file))?;
        let block = BlockSize::new(usize::try_from(map.block)?)?;
        let cache = Arc::new(PageCache::new(memory.clone(), 64 << 20)?);
        // An append goes through the blocks the kernel allocated for
        // it (the map after the kernel's steps), from the size before;
        // the new blocks unwritten until written, as XFS has them.
        let mapper = match step.kind {
            StepKind::Append(_) => parse_map(format!("/tmp/after.{}", step.file))?
                .mapper_allocated_from(lba, map.size.div_ceil(map.block)),
            _ => map.mapper(lba),
        };
        let file = File::open(cache, Arc::new(mapper), block, map.size)?;
        file.set_readahead(ra_pages);
        // The marker: one block at an LBA no file system touches.
        let mark = plan.mark_base + step.mark(Side::Ours);
        let buf = ctrl.dma_pool().alloc(lba as usize)?;
        dev.inner_mut().execute(IoRequest::read(1, mark, 1, buf))?;
        let bs = usize::try_from(step.bs)?;
        match &step.kind {
            StepKind::Read => {
                let mut out = Vec::with_capacity(usize::try_from(map.size)?);
                let mut buf = vec![0u8; bs];
                loop {
                    let n = file.read_at(&mut dev, out.len() as u64, &mut buf)?;
                    if n == 0 {
                        break;
                    }
                    out.extend_from_slice(&buf[..n]);
                }
                let path = format!("/tmp/ours.{}", step.file);
                std::fs::write(&path, &out).map_err(|e| format!("{path}: {e}"))?;
                println!(
                    "oracle: step {} read {} bytes of {}",
                    step.index,
                    out.len(),
                    step.file
                );
            }
            StepKind::RandRead(offsets) => {
                let mut buf = vec![0u8; bs];
                for &off in offsets {
                    // Each read through a new open file, as each `dd`.
                    let f = file.reopen()?;
                    f.set_readahead(ra_pages);
                    let n = f.read_at(&mut dev, off * step.bs, &mut buf)?;
                    println!(
                        "oracle: step {} read {n} bytes at {}",
                        step.index,
                        off * step.bs
                    );
                }
            }
            StepKind::Write => {
                let data = read(&format!("/tmp/pat.{}", step.file))?;
                if data.len() as u64 != map.size {
                    return Err(format!("/tmp/pat.{} is not the file's size", step.file).into());
                }
                for (i, chunk) in data.chunks(bs).enumerate() {
                    let n = file.write_at(&mut dev, (i * bs) as u64, chunk)?;
                    if n != chunk.len() {
                        return Err(format!("short write at {}", i * bs).into());
                    }
                }
                file.fsync(&mut dev)?;
                println!(
                    "oracle: step {} wrote {} bytes of {}",
                    step.index,
                    data.len(),
                    step.file
                );
            }
            StepKind::PartialWrite(offsets) => {
                let data = read(&format!("/tmp/pat.{}", step.file))?;
                let mut page = vec![0u8; 4096];
                for &off in offsets {
                    let at = usize::try_from(off * step.bs)?;
                    let Some(chunk) = data.get(at..at + bs) else {
                        return Err(format!("offset {at} is past /tmp/pat.{}", step.file).into());
                    };
                    // Each `dd` opens the file anew; the cache stays.
                    let f = file.reopen()?;
                    f.set_readahead(ra_pages);
                    if f.write_at(&mut dev, at as u64, chunk)? != bs {
                        return Err(format!("short write at {at}").into());
                    }
                    f.fsync(&mut dev)?;
                    let f = file.reopen()?;
                    f.set_readahead(ra_pages);
                    let start = at / 4096 * 4096;
                    let n = f.read_at(&mut dev, start as u64, &mut page)?;
                    let want = data.get(start..start + n).unwrap_or_default();
                    if page[..n] != *want {
                        return Err(format!("page at {start} does not read back").into());
                    }
                    println!(
                        "oracle: step {} wrote {bs} bytes at {at}, read {n} at {start}",
                        step.index
                    );
                }
            }
            StepKind::CachedWrite { prefix, offsets } => {
                let data = read(&format!("/tmp/pat.{}", step.file))?;
                // The file holds the pattern (the kernel's steps wrote
                // it): what the reads return is checked against it.
                let check = |at: u64, got: &[u8]| -> Result<()> {
                    let at = usize::try_from(at)?;
                    if data.get(at..at + got.len()) != Some(got) {
                        return Err(format!("the read at {at} does not return the file").into());
                    }
                    Ok(())
                };
                if *prefix == 0 {
                    // Each offset's page alone, a new open file each.
                    let mut page = vec![0u8; 4096];
                    for &off in offsets {
                        let start = off * step.bs / 4096 * 4096;
                        let f = file.reopen()?;
                        f.set_readahead(ra_pages);
                        let n = f.read_at(&mut dev, start, &mut page)?;
                        check(start, &page[..n])?;
                    }
                } else {
                    // The first `prefix` bytes through one open file.
                    let f = file.reopen()?;
                    f.set_readahead(ra_pages);
                    let mut buf = vec![0u8; 16384];
                    let mut at = 0;
                    while at < *prefix {
                        let n = f.read_at(&mut dev, at, &mut buf)?;
                        if n == 0 {
                            return Err(format!("EOF at {at} before {prefix}").into());
                        }
                        check(at, &buf[..n])?;
                        at += n as u64;
                    }
                }
                for &off in offsets {
                    let at = usize::try_from(off * step.bs)?;
                    let Some(chunk) = data.get(at..at + bs) else {
                        return Err(format!("offset {at} is past /tmp/pat.{}", step.file).into());
                    };
                    let f = file.reopen()?;
                    if f.write_at(&mut dev, at as u64, chunk)? != bs {
                        return Err(format!("short write at {at}").into());
                    }
                }
                file.fsync(&mut dev)?;
                println!(
                    "oracle: step {} wrote {bs} bytes at {offsets:?} (x{bs}) into cached folios",
                    step.index
                );
            }
            StepKind::Append(len) => {
                let data = read(&format!("/tmp/app.{}", step.file))?;
                if data.len() as u64 != *len {
                    return Err(format!("/tmp/app.{} is not {len} bytes", step.file).into());
                }
                for (i, chunk) in data.chunks(bs).enumerate() {
                    let at = map.size + (i * bs) as u64;
                    if file.write_at(&mut dev, at, chunk)? != chunk.len() {
                        return Err(format!("short write at {at}").into());
                    }
                }
                file.fsync(&mut dev)?;
                println!(
                    "oracle: step {} appended {len} bytes to {}",
                    step.index, step.file
                );
            }
        }
    }
    // What we appended, read back through a fresh cache after a marker
    // of its own (the read-back is no step's): the file before and the
    // bytes appended, as the kernel's file.
    let appends: Vec<_> = plan
        .steps
        .iter()
        .filter(|s| matches!(s.kind, StepKind::Append(_)))
        .collect();
    if !appends.is_empty() {
        let buf = ctrl.dma_pool().alloc(lba as usize)?;
        dev.inner_mut()
            .execute(IoRequest::read(1, plan.mark_base + plan.end_mark(), 1, buf))?;
    }
    for step in appends {
        let after = parse_map(format!("/tmp/after.{}", step.file))?;
        let block = BlockSize::new(usize::try_from(after.block)?)?;
        let cache = Arc::new(PageCache::new(memory.clone(), 64 << 20)?);
        let file = File::open(cache, Arc::new(after.mapper(lba)), block, after.size)?;
        let mut want = read(&format!("/tmp/orig.{}", step.file))?;
        want.extend(read(&format!("/tmp/app.{}", step.file))?);
        let mut got = vec![0u8; want.len() + 1];
        let mut n = 0;
        while n < got.len() {
            let r = file.read_at(&mut dev, n as u64, &mut got[n..])?;
            if r == 0 {
                break;
            }
            n += r;
        }
        if got[..n] != want[..] {
            return Err(format!("{}: our append does not read back", step.file).into());
        }
        println!("oracle: appended bytes match: {}", step.file);
    }
    Ok(())
}

/// The `cache` scenario: write through one page cache, fsync, read back
/// through another (cold) by readahead.
fn cache_roundtrip(ctrl: &Controller, pages: u64, seed: u64) -> Result<()> {
    use mpage::nvme::{DmaFolioMemory, NvmeDevice};
    use mpage::{BlockDevice, IdentityMapper, Inode, OpenFile};
    use pagecache::{BlockSize, FolioOrder, Grab, PageCache};

    let lba = ctrl.namespace(1)?.lba_size as usize;
    let mut dev = NvmeDevice::new(ctrl, ctrl.io_qpair()?, 1)?;
    let mapper = Arc::new(IdentityMapper::namespace(&dev.geometry()));
    let memory = Arc::new(DmaFolioMemory::new(ctrl.dma_pool().clone()));
    let size = pages * 4096;
    let page_data = |i: u64| {
        let mut data = vec![0u8; 4096];
        pattern::fill(seed, i * 4096 / lba as u64, lba, &mut data);
        data
    };

    let cache = Arc::new(PageCache::new(memory.clone(), 64 << 20)?);
    let file = cache.add_file(BlockSize::PAGE);
    let ino = Inode::new(cache.clone(), file, mapper.clone(), size);
    let mut handle = OpenFile::open(&ino)?;
    for i in 0..pages {
        let locked = match cache.grab(file, i, FolioOrder::new(0)?)? {
            Grab::Created(l) => l,
            Grab::Cached(f) => f.lock(),
        };
        locked.write(0, &page_data(i))?;
    }
    mpage::fsync(&mut dev, &ino, &mut handle)?;
    println!("cache: wrote {pages} pages through the page cache; fsync ok");

    let cold = Arc::new(PageCache::new(memory, 64 << 20)?);
    let file2 = cold.add_file(BlockSize::PAGE);
    let ino2 = Inode::new(cold.clone(), file2, mapper, size);
    let report = mpage::readahead(&mut dev, &ino2, 0..pages, None)?;
    mpage::io::wait_until(&mut dev, "readahead", || {
        (0..pages).all(|i| {
            cold.lookup(file2, i)
                .ok()
                .flatten()
                .is_some_and(|f| f.is_uptodate() && !f.is_locked())
        })
    })?;
    let mut back = vec![0u8; 4096];
    for i in 0..pages {
        let folio = cold
            .lookup(file2, i)?
            .ok_or("a page missing after readahead")?;
        folio.read(0, &mut back)?;
        if back != page_data(i) {
            return Err(format!("page {i} read back wrong through the cache").into());
        }
    }
    println!(
        "cache: read {pages} pages back by readahead ({} folios started), all verified",
        report.started
    );
    Ok(())
}

/// The `file-model` scenario.
fn file_model(ctrl: &Controller, n: usize, max_size: u64, budget: u64, seed: u64) -> Result<()> {
    use mpage::nvme::{DmaFolioMemory, NvmeDevice};
    use mpage::{BlockDevice, File, IdentityMapper};
    use pagecache::{BlockSize, PageCache};
    use vm_tests::model::{FileOp, Model, data};

    let mut dev = NvmeDevice::new(ctrl, ctrl.io_qpair()?, 1)?;
    let mapper = Arc::new(IdentityMapper::namespace(&dev.geometry()));
    let memory = Arc::new(DmaFolioMemory::new(ctrl.dma_pool().clone()));
    let cache = Arc::new(PageCache::new(memory, budget)?);
    let file = File::open(cache.clone(), mapper, BlockSize::PAGE, 0)?;
    let ops = vm_tests::model::ops(seed, n, max_size);
    let mut model = Model::default();
    let (mut reads, mut bytes_checked) = (0usize, 0usize);
    for (i, op) in ops.iter().enumerate() {
        let want = model.apply(op);
        match *op {
            FileOp::Write { pos, len, seed } => {
                let written = file.write_at(&mut dev, pos, &data(seed, len))?;
                if written != len {
                    return Err(format!("op {i}: wrote {written} of {len} bytes").into());
                }
            }
            FileOp::Read { pos, len } => {
                let mut buf = vec![0u8; len];
                let got = file.read_at(&mut dev, pos, &mut buf)?;
                let want = want.unwrap_or_default();
                if buf[..got] != want[..] {
                    return Err(format!(
                        "op {i}: read {got} bytes at {pos}; the model has {} different ones",
                        want.len()
                    )
                    .into());
                }
                reads += 1;
                bytes_checked += got;
            }
            FileOp::SetLen(len) => file.set_len(&mut dev, len)?,
            FileOp::Fsync => file.fsync(&mut dev)?,
        }
        if file.size() != model.bytes.len() as u64 {
            return Err(format!(
                "op {i}: file size {} but the model has {}",
                file.size(),
                model.bytes.len()
            )
            .into());
        }
        if cache.used() > budget + 4096 {
            return Err(
                format!("op {i}: cache uses {} bytes, budget {budget}", cache.used()).into(),
            );
        }
    }
    println!(
        "file-model: {} ops, {reads} reads ({bytes_checked} bytes) checked, final size {}, cache peak within {budget} bytes",
        ops.len(),
        model.bytes.len()
    );
    Ok(())
}

/// The `power-cut` scenario.
fn power_cut(ctrl: &Controller, params: vm_tests::powercut::Params, budget: u64) -> Result<()> {
    use mpage::nvme::{DmaFolioMemory, NvmeDevice};
    use mpage::{File, IdentityMapper};
    use nvme_driver::nvme_spec::{FeatureId, FeatureSelect};
    use pagecache::{BlockSize, PageCache};
    use vm_tests::model::{FileOp, Model, data};
    use vm_tests::powercut::{self, FILE_REGION, LBA, Mark, RAW_THREAD};

    let ns = ctrl.namespace(1)?;
    if u64::from(ns.lba_size) != LBA || ns.blocks * LBA < powercut::DISK_SIZE {
        return Err(format!(
            "power-cut needs {LBA}-byte LBAs and {} bytes; namespace 1 has {} blocks of {}",
            powercut::DISK_SIZE,
            ns.blocks,
            ns.lba_size
        )
        .into());
    }
    if params.max_size > FILE_REGION {
        return Err(format!("--max-size is over the {FILE_REGION}-byte file region").into());
    }
    let vwc = ctrl.get_features(
        FeatureId::VolatileWriteCache as u8,
        FeatureSelect::Current,
        0,
    )?;
    println!(
        "power-cut: volatile write cache present {}, enabled {}",
        ctrl.identify().vwc_present(),
        vwc & 1 == 1
    );
    println!(
        "power-cut: seed {} ops {} max-size {} raw-gens {} cache {budget}",
        params.seed, params.ops, params.max_size, params.raw_gens
    );
    let memory = Arc::new(DmaFolioMemory::new(ctrl.dma_pool().clone()));
    let cache = Arc::new(PageCache::new(memory, budget)?);
    let nonce = params.nonce();
    let mark = move |q: &mut IoQPair, thread: u32, n: u64, seq: u64| -> Result<()> {
        q.write(1, Mark::lba(thread, n), &Mark { thread, seq }.encode(nonce))?;
        Ok(())
    };

    let mut handles = Vec::new();
    for t in 0..powercut::FILES {
        let ctrl = ctrl.clone();
        let cache = cache.clone();
        handles.push(std::thread::spawn(move || -> Result<String> {
            let mut dev = NvmeDevice::new(&ctrl, ctrl.io_qpair()?, 1)?;
            let mut marks = ctrl.io_qpair()?;
            let region = FILE_REGION / LBA;
            let mapper = Arc::new(IdentityMapper::new(t as u64 * region, region, LBA as u32));
            let file = File::open(cache, mapper, BlockSize::PAGE, 0)?;
            let ops = params.file_ops(t);
            let mut model = Model::default();
            let (mut fsyncs, mut reads) = (0u64, 0usize);
            for (i, op) in ops.iter().enumerate() {
                let want = model.apply(op);
                match *op {
                    FileOp::Write { pos, len, seed } => {
                        let n = file.write_at(&mut dev, pos, &data(seed, len))?;
                        if n != len {
                            return Err(format!("file {t} op {i}: wrote {n} of {len}").into());
                        }
                    }
                    FileOp::Read { pos, len } => {
                        let mut buf = vec![0u8; len];
                        let got = file.read_at(&mut dev, pos, &mut buf)?;
                        if buf[..got] != want.unwrap_or_default()[..] {
                            return Err(format!("file {t} op {i}: read at {pos} wrong").into());
                        }
                        reads += 1;
                    }
                    FileOp::SetLen(len) => file.set_len(&mut dev, len)?,
                    FileOp::Fsync => {
                        file.fsync(&mut dev)?;
                        mark(&mut marks, t as u32, fsyncs, i as u64)?;
                        fsyncs += 1;
                    }
                }
                if file.size() != model.bytes.len() as u64 {
                    return Err(format!("file {t} op {i}: size differs from the model").into());
                }
            }
            Ok(format!(
                "power-cut: file {t}: {} ops, {fsyncs} fsyncs marked, {reads} reads checked, final size {}",
                ops.len(),
                model.bytes.len()
            ))
        }));
    }
    {
        let ctrl = ctrl.clone();
        handles.push(std::thread::spawn(move || -> Result<String> {
            let mut q = ctrl.io_qpair()?;
            let mut marks = ctrl.io_qpair()?;
            let mut writes = 0;
            for (g, gen_writes) in params.raw_plan().iter().enumerate() {
                for (i, w) in gen_writes.iter().enumerate() {
                    let d = w.data();
                    let buf = ctrl.dma_pool().alloc(d.len())?;
                    buf.write(0, &d)?;
                    q.submit(IoRequest::write(1, w.lba, w.blocks, buf).with_tag(i as u64))?;
                }
                for c in drain(&mut q, gen_writes.len())? {
                    c.result
                        .map_err(|e| format!("raw write at lba {}: {e}", c.slba))?;
                }
                writes += gen_writes.len();
                q.flush(1)?;
                mark(&mut marks, RAW_THREAD, g as u64, g as u64)?;
            }
            Ok(format!(
                "power-cut: raw: {} generations, {writes} writes, each generation flushed and marked",
                params.raw_gens
            ))
        }));
    }
    for h in handles {
        let line = h.join().map_err(|_| "a thread panicked")??;
        println!("{line}");
    }
    // blklogwrites rewrites its superblock's entry count at a flush: one
    // more, so that the log counts the last marks too.
    ctrl.io_qpair()?.flush(1)?;
    println!("power-cut: done");
    Ok(())
}

/// The `commands` scenario.
fn command_counts(ctrl: &Controller, pages: u64) -> Result<()> {
    use mpage::nvme::{DmaFolioMemory, NvmeDevice};
    use mpage::{BlockDevice, IdentityMapper, Inode, SyncMode};
    use pagecache::{BlockSize, FolioOrder, Grab, PageCache};

    let counts = || -> Result<(u128, u128)> {
        let s = ctrl.smart_log()?;
        Ok((s.host_read_commands(), s.host_write_commands()))
    };
    let mut dev = NvmeDevice::new(ctrl, ctrl.io_qpair()?, 1)?;
    let mapper = Arc::new(IdentityMapper::namespace(&dev.geometry()));
    let memory = Arc::new(DmaFolioMemory::new(ctrl.dma_pool().clone()));
    let size = pages * 4096;
    let expect = size.div_ceil(ctrl.max_transfer() as u64);

    let cache = Arc::new(PageCache::new(memory.clone(), 64 << 20)?);
    let file = cache.add_file(BlockSize::PAGE);
    let ino = Inode::new(cache.clone(), file, mapper.clone(), size);
    let before = counts()?;
    mpage::readahead(&mut dev, &ino, 0..pages, None)?;
    mpage::io::wait_until(&mut dev, "readahead", || {
        dev_idle_and_uptodate(&cache, file, pages)
    })?;
    let after_read = counts()?;
    println!(
        "commands: readahead of {pages} pages: {} read commands (expected {expect} for max transfer {})",
        after_read.0 - before.0,
        ctrl.max_transfer()
    );

    for i in 0..pages {
        let locked = match cache.grab(file, i, FolioOrder::new(0)?)? {
            Grab::Created(l) => l,
            Grab::Cached(f) => f.lock(),
        };
        locked.write(0, &[0xa5; 4096])?;
    }
    let before_write = counts()?;
    mpage::writepages(&mut dev, &ino, 0..pages, SyncMode::All)?;
    mpage::io::wait_until(&mut dev, "writeback", || {
        (0..pages).all(|i| {
            cache
                .lookup(file, i)
                .ok()
                .flatten()
                .is_some_and(|f| !f.is_writeback() && !f.is_dirty())
        })
    })?;
    let after_write = counts()?;
    println!(
        "commands: writeback of {pages} dirty pages: {} write commands (expected {expect})",
        after_write.1 - before_write.1
    );
    let _ = dev.in_flight();
    Ok(())
}

fn dev_idle_and_uptodate(
    cache: &pagecache::PageCache,
    file: pagecache::FileId,
    pages: u64,
) -> bool {
    (0..pages).all(|i| {
        cache
            .lookup(file, i)
            .ok()
            .flatten()
            .is_some_and(|f| f.is_uptodate() && !f.is_locked())
    })
}

/// The `cache-errors` scenario.
fn cache_errors(ctrl: &Controller) -> Result<()> {
    use mpage::nvme::{DmaFolioMemory, NvmeDevice};
    use mpage::{BlockDevice, File, IdentityMapper};
    use pagecache::{BlockSize, PageCache};

    let mut dev = NvmeDevice::new(ctrl, ctrl.io_qpair()?, 1)?;
    let mapper = Arc::new(IdentityMapper::namespace(&dev.geometry()));
    let memory = Arc::new(DmaFolioMemory::new(ctrl.dma_pool().clone()));
    let cache = Arc::new(PageCache::new(memory, 64 << 20)?);
    // An existing 4 MiB file: opening it writes nothing.
    let a = File::open(cache.clone(), mapper, BlockSize::PAGE, 4 << 20)?;
    let b = a.reopen()?;
    let outcome = |r: std::result::Result<(), mpage::Error>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("error: {e}"),
    };

    // T16: pages 248..264 dirty; page 256 (byte 1 MiB) fails to write.
    a.write_at(&mut dev, 248 * 4096, &vec![0x5a; 16 * 4096])?;
    println!("fsync A: {}", outcome(a.fsync(&mut dev)));
    println!("fsync A again: {}", outcome(a.fsync(&mut dev)));
    println!("fsync B (opened before): {}", outcome(b.fsync(&mut dev)));
    println!("fsync B again: {}", outcome(b.fsync(&mut dev)));
    let c = a.reopen()?;
    println!("fsync C (opened after): {}", outcome(c.fsync(&mut dev)));
    let folio = cache
        .lookup(a.inode().file, 256)?
        .ok_or("page 256 left the cache")?;
    println!(
        "page 256: dirty {}, writeback {}, error {:?}, uptodate {}",
        folio.is_dirty(),
        folio.is_writeback(),
        folio.error(),
        folio.is_uptodate()
    );

    // T11: page 512 (byte 2 MiB) fails to read; a failed read is not cached
    // as failed: the next one goes to the device again.
    let mut tapped = mpage::Tap::new(dev);
    let log = tapped.log();
    let mut buf = vec![0u8; 4096];
    for attempt in ["read page 512", "read page 512 again"] {
        let before = log.count(mpage::BioOp::Read);
        let r = a.read_at(&mut tapped, 512 * 4096, &mut buf);
        let sent = log.count(mpage::BioOp::Read) - before;
        println!(
            "{attempt}: {} ({sent} read commands sent)",
            match &r {
                Ok(n) => format!("ok {n} bytes"),
                Err(e) => format!("error: {e}"),
            }
        );
    }
    // Elsewhere the file reads fine.
    let n = a.read_at(&mut tapped, 1024 * 1024 * 3, &mut buf)?;
    println!("read at 3 MiB: ok {n} bytes");
    Ok(())
}

/// The `conformance` scenario.
fn conformance(ctrl: &Controller) -> Result<()> {
    use mpage_conformance::{Rig, nvme::NvmeRig};

    let mut rig = NvmeRig::open(ctrl, 1).map_err(|e| e.to_string())?;
    println!("conformance: on {}", rig.name());
    let (passed, failed) = mpage_conformance::run_all(&mut rig, |s, outcome| match outcome {
        Ok(()) => println!("conformance: {}: ok", s.name),
        Err(e) => println!("conformance: {}: FAILED: {e}", s.name),
    });
    let lba = rig.lba_size();
    println!("conformance: {passed} passed, {failed} failed at {lba}-byte LBAs");
    if failed > 0 {
        return Err(format!("{failed} scenarios failed").into());
    }
    Ok(())
}

/// The parameters of `guest-check hot-remove`.
struct HotRemove {
    threads: usize,
    qd: usize,
    region: u64,
    blocks: u64,
    seed: u64,
    ready: std::path::PathBuf,
    max_secs: u64,
}

/// Nanoseconds since the epoch (the guest script stamps its sysfs write
/// with `date +%s%N`, the same clock).
fn epoch_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// What one hot-remove thread saw.
struct RemoveReport {
    submitted: u64,
    acked: Vec<(u64, u64)>,
    removed: u64,
    last_answer_ns: u128,
    qid: u16,
    interrupts: bool,
}

fn hot_remove(ctrl: &Controller, p: HotRemove) -> Result<()> {
    let lba = ctrl.namespace(1)?.lba_size as usize;
    let acked_some = Arc::new(Barrier::new(p.threads + 1));
    let deadline = std::time::Instant::now() + Duration::from_secs(p.max_secs);
    let handles: Vec<_> = (0..p.threads as u64)
        .map(|t| {
            let ctrl = ctrl.clone();
            let acked_some = acked_some.clone();
            let (qd, region, blocks, seed) = (p.qd, p.region, p.blocks, p.seed + t);
            std::thread::spawn(move || -> Result<RemoveReport> {
                let interrupts = t % 2 == 1;
                let mut q = if interrupts {
                    ctrl.io_qpair_with_interrupts()?
                } else {
                    ctrl.io_qpair()?
                };
                let first = t * region;
                let mut next = 0u64;
                let mut report = RemoveReport {
                    submitted: 0,
                    acked: Vec::new(),
                    removed: 0,
                    last_answer_ns: 0,
                    qid: q.qid(),
                    interrupts,
                };
                let mut refused = false;
                let mut told = false;
                let mut done = Vec::new();
                while !refused || q.outstanding() > 0 {
                    if std::time::Instant::now() > deadline {
                        return Err(format!(
                            "thread {t}: no removal within the limit ({} outstanding)",
                            q.outstanding()
                        )
                        .into());
                    }
                    while !refused && q.outstanding() < qd {
                        let slba = first + next % region;
                        next += blocks;
                        let mut data = vec![0u8; blocks as usize * lba];
                        pattern::fill(seed, slba, lba, &mut data);
                        let buf = ctrl.dma_pool().alloc(data.len())?;
                        buf.write(0, &data)?;
                        match q.submit(IoRequest::write(1, slba, blocks, buf)) {
                            Ok(()) => report.submitted += 1,
                            Err(r) if matches!(r.error, Error::DeviceRemoved { .. }) => {
                                println!("thread {t}: new request refused: {}", r.error);
                                refused = true;
                            }
                            Err(r) => return Err(format!("thread {t}: submit: {}", r.error).into()),
                        }
                    }
                    q.wait(&mut done, Duration::from_millis(100))?;
                    for c in done.drain(..) {
                        report.last_answer_ns = epoch_ns();
                        match &c.result {
                            Ok(()) => report.acked.push((c.slba, c.blocks)),
                            Err(e @ Error::DeviceRemoved { .. }) => {
                                if report.removed == 0 {
                                    println!("thread {t}: first error: {e}");
                                }
                                report.removed += 1;
                            }
                            Err(e) => {
                                return Err(format!(
                                    "thread {t}: write lba {}+{}: unexpected error: {e}",
                                    c.slba, c.blocks
                                )
                                .into());
                            }
                        }
                    }
                    if !told && report.acked.len() >= 16 {
                        told = true;
                        acked_some.wait();
                    }
                }
                if !told {
                    return Err(
                        format!("thread {t}: removed before 16 writes were acknowledged").into(),
                    );
                }
                Ok(report)
            })
        })
        .collect();
    acked_some.wait();
    std::fs::write(&p.ready, b"")?;
    println!("hot-remove: I/O running on {} threads", p.threads);
    // When the driver marked the controller removed (looked at every ms).
    let seen = {
        let ctrl = ctrl.clone();
        std::thread::spawn(move || {
            while !ctrl.is_removed() {
                if std::time::Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Some(epoch_ns())
        })
    };
    let mut failed = None;
    let mut last_ns = 0;
    for (t, h) in handles.into_iter().enumerate() {
        match h.join().map_err(|_| "a thread panicked")? {
            Ok(r) => {
                if r.submitted != r.acked.len() as u64 + r.removed {
                    return Err(format!("thread {t}: requests without an answer").into());
                }
                last_ns = last_ns.max(r.last_answer_ns);
                println!(
                    "thread {t}: queue {} ({}): {} submitted, {} acknowledged, {} failed with device removed, every one answered, last answer at {} ns",
                    r.qid,
                    if r.interrupts { "interrupts" } else { "polled" },
                    r.submitted,
                    r.acked.len(),
                    r.removed,
                    r.last_answer_ns
                );
                let mut acked = r.acked;
                acked.sort_unstable();
                acked.dedup();
                let runs = acked
                    .iter()
                    .fold(Vec::<(u64, u64)>::new(), |mut v, &(s, n)| {
                        match v.last_mut() {
                            Some((a, m)) if *a + *m >= s => *m = (*m).max(s + n - *a),
                            _ => v.push((s, n)),
                        }
                        v
                    });
                let list: Vec<String> = runs.iter().map(|(s, n)| format!("{s}+{n}")).collect();
                println!("acked {t}: {}", list.join(","));
            }
            Err(e) => failed = Some(e),
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let seen = seen
        .join()
        .map_err(|_| "the watching thread panicked")?
        .ok_or("the controller was never marked removed")?;
    println!("hot-remove: removal seen at {seen} ns");
    if !ctrl.is_removed() {
        return Err("the controller does not say it was removed".into());
    }
    // The kernel's removal completes while this process still holds the
    // controller: the driver released the device by itself.
    let node = format!("/sys/bus/pci/devices/{}", ctrl.address());
    while std::path::Path::new(&node).exists() {
        if std::time::Instant::now() > deadline {
            return Err(format!("{node} is still there").into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "hot-remove: {node} gone at {} ns, the controller still held",
        epoch_ns()
    );
    // Admin commands too fail at once.
    match ctrl.smart_log() {
        Err(e @ Error::DeviceRemoved { .. }) => println!("admin command refused: {e}"),
        other => return Err(format!("SMART log after removal: {other:?}").into()),
    }
    println!("hot-remove: last answer at {last_ns} ns");
    println!("hot-remove: done");
    Ok(())
}

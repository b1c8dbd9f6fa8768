//! `guest-fault`: a fatal controller in the guest, made by the driver's
//! fault-injection hook (built only with the `fault-injection` feature, for
//! this binary alone; see qemu/src/guest_build.rs).
//!
//! Threads, each on its own queue pair, write the pattern over their own
//! ranges round and round at a queue depth. Once thread 0 has had
//! `--fault-after` writes acknowledged, it posts more, takes the IOMMU
//! mapping of its SQ ring away (`IoQPair::inject_unmap_sq`) and rings the
//! doorbell: QEMU's fetch of the next entry fails in the vIOMMU, and the
//! controller sets CSTS.CFS. The driver's health check sees it, resets the
//! controller, maps the ring again, creates the queues again and resubmits
//! what was in flight; the other queue pairs notice the reset and do the
//! same. Every thread goes on until a recovery was recorded, writes one more
//! round, and then checks that every write got an answer (all must succeed),
//! flushes and reads its range back. Prints each queue pair's recovery
//! record and the times; the host then checks the image.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::process::ExitCode;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use clap::Parser;
use nvme_driver::{Controller, IoQPair, IoRequest, Options, Recovery, RecoveryCause, pci};
use vm_tests::pattern;

#[derive(Parser, Debug)]
struct Cli {
    /// Queue pairs, one per thread; thread 0 takes the fault.
    #[arg(long, default_value_t = 3)]
    threads: u64,
    #[arg(long, default_value_t = 8)]
    qd: usize,
    /// Blocks per write.
    #[arg(long, default_value_t = 8)]
    blocks: u64,
    /// Blocks of each thread's range (thread t: from t * region).
    #[arg(long, default_value_t = 1024)]
    region: u64,
    /// Writes thread 0 has acknowledged before the fault.
    #[arg(long, default_value_t = 64)]
    fault_after: u64,
    /// Longest run, in seconds.
    #[arg(long, default_value_t = 150)]
    wait_s: u64,
    #[arg(long, default_value_t = 191)]
    seed: u64,
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guest-fault: {e}");
            ExitCode::FAILURE
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What one thread saw.
struct Report {
    qid: u16,
    submitted: u64,
    ok: u64,
    recovery: Option<Recovery>,
    /// Thread 0: when the SQ ring was unmapped.
    injected: Option<Instant>,
    /// The first write that completed after the queue was usable again.
    first_after: Option<Duration>,
}

fn run(cli: Cli) -> Result<()> {
    if cli.blocks == 0 || cli.region < cli.blocks || cli.qd == 0 || cli.threads == 0 {
        return Err("need 0 < blocks <= region, qd > 0 and threads > 0".into());
    }
    let f = pci::single_vfio_function()?;
    let ctrl = Controller::open(f.address, Options::default())?;
    println!(
        "controller {}: {} queue pairs granted, {} doorbells",
        ctrl.address(),
        ctrl.io_queue_limit(),
        if ctrl.uses_shadow_doorbells() {
            "shadow"
        } else {
            "MMIO"
        }
    );
    let barrier = Barrier::new(cli.threads as usize);
    let reports: Vec<Result<Report>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..cli.threads)
            .map(|t| {
                let (ctrl, cli, barrier) = (&ctrl, &cli, &barrier);
                s.spawn(move || writer(ctrl, cli, t, barrier))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a thread panicked".into())))
            .collect()
    });
    // The first read of CSTS.CFS (queue, when), and the faulted queue's
    // (queue, when the ring was unmapped, when the queue was usable again).
    let mut first_fatal: Option<(u16, Instant)> = None;
    let mut faulted: Option<(u16, Instant, Instant)> = None;
    let mut failed = false;
    for (t, report) in reports.into_iter().enumerate() {
        let r = match report {
            Ok(r) => r,
            Err(e) => {
                println!("thread {t}: FAILED: {e}");
                failed = true;
                continue;
            }
        };
        println!(
            "thread {t}: queue {}: all {} writes answered, {} completed; LBAs {}..{} read back",
            r.qid,
            r.submitted,
            r.ok,
            t as u64 * cli.region,
            (t as u64 + 1) * cli.region
        );
        let Some(rec) = r.recovery else {
            println!("thread {t}: FAILED: no recovery recorded");
            failed = true;
            continue;
        };
        let cause = match rec.cause {
            RecoveryCause::ControllerFatal { csts } => {
                // CSTS.CFS is bit 1.
                if csts & 0x2 != 0 && first_fatal.is_none_or(|(_, at)| rec.detected < at) {
                    first_fatal = Some((rec.qid, rec.detected));
                }
                format!("controller fatal (CSTS {csts:#x})")
            }
            RecoveryCause::ResetElsewhere => "reset by another queue pair".to_string(),
            RecoveryCause::Timeout => "command timeout".to_string(),
        };
        let outcome = match rec.outcome {
            nvme_driver::RecoveryOutcome::Reset { resubmitted } => {
                format!("queues created again, {resubmitted} commands resubmitted")
            }
            other => format!("{other:?}"),
        };
        println!(
            "recovery: thread {t}: queue {}: {cause}: {outcome} in {:.1} ms; first write completed {:.1} ms after",
            rec.qid,
            ms(rec.total),
            r.first_after.map_or(f64::NAN, ms)
        );
        if let Some(at) = r.injected {
            faulted = Some((r.qid, at, rec.detected + rec.total));
        }
    }
    if failed {
        return Err("a thread failed".into());
    }
    let (Some((fatal_qid, fatal_at)), Some((qid, at, usable))) = (first_fatal, faulted) else {
        return Err("no queue pair read CSTS.CFS after the fault".into());
    };
    println!(
        "fault: SQ ring of queue {qid} unmapped; CSTS.CFS read {:.1} ms later, by queue {fatal_qid}'s health check",
        ms(fatal_at.saturating_duration_since(at))
    );
    println!(
        "recovery time: {:.1} ms from the fault to queue {qid} usable again ({:.1} ms from reading CFS)",
        ms(usable.saturating_duration_since(at)),
        ms(usable.saturating_duration_since(fatal_at))
    );
    println!("fault: every write answered and read back");
    Ok(())
}

/// One thread: see the module docs.
fn writer(ctrl: &Controller, cli: &Cli, t: u64, barrier: &Barrier) -> Result<Report> {
    let mut q = ctrl.io_qpair()?;
    let lba = ctrl.namespace(1)?.lba_size as usize;
    let seed = cli.seed + t;
    let first = t * cli.region;
    let per_round = cli.region / cli.blocks;
    let injector = t == 0;
    barrier.wait();
    let start = Instant::now();
    let wait = Duration::from_secs(cli.wait_s);
    let (mut submitted, mut ok) = (0u64, 0u64);
    let mut next = 0u64;
    // Writes left once a recovery was seen: one more round.
    let mut after: Option<u64> = None;
    let mut injected: Option<Instant> = None;
    let mut recovery: Option<Recovery> = None;
    let mut first_after: Option<Duration> = None;
    let mut done = Vec::new();
    let mut submit = |q: &mut IoQPair, submitted: &mut u64| -> Result<()> {
        let slba = first + next * cli.blocks;
        let buf = ctrl.dma_pool().alloc(cli.blocks as usize * lba)?;
        let mut data = vec![0u8; cli.blocks as usize * lba];
        pattern::fill(seed, slba, lba, &mut data);
        buf.write(0, &data)?;
        q.submit(IoRequest::write(1, slba, cli.blocks, buf))?;
        *submitted += 1;
        next = (next + 1) % per_round;
        Ok(())
    };
    loop {
        if injector && injected.is_none() && ok >= cli.fault_after {
            // Posted but not rung yet: the controller's next fetch is one
            // of these, from the ring about to lose its mapping.
            while submitted - ok < cli.qd as u64 {
                submit(&mut q, &mut submitted)?;
            }
            q.inject_unmap_sq()?;
            injected = Some(Instant::now());
        }
        while submitted - ok < cli.qd as u64 && after.is_none_or(|n| n > 0) {
            submit(&mut q, &mut submitted)?;
            if let Some(n) = after.as_mut() {
                *n -= 1;
            }
        }
        if submitted == ok {
            break;
        }
        if start.elapsed() > wait {
            return Err(format!(
                "queue {}: {} of {submitted} writes unanswered after {wait:?} (recovered: {})",
                q.qid(),
                submitted - ok,
                recovery.is_some()
            )
            .into());
        }
        done.clear();
        q.poll(&mut done)?;
        for c in &done {
            if let Err(e) = &c.result {
                return Err(format!("write at lba {}+{}: {e}", c.slba, c.blocks).into());
            }
            ok += 1;
            if let Some(r) = &recovery
                && first_after.is_none()
            {
                first_after = Some((r.detected + r.total).elapsed());
            }
        }
        // A queue pair recovers once the reset happened, whoever saw the
        // fault first (the others notice the new generation when their old
        // queues go quiet); it then writes one more round.
        if recovery.is_none()
            && let Some(r) = q.last_recovery()
        {
            recovery = Some(r);
            after = Some(per_round);
        }
    }
    q.flush(1)?;
    let mut back = vec![0u8; cli.region as usize * lba];
    for (i, chunk) in back.chunks_mut(256 * lba).enumerate() {
        q.read(1, first + i as u64 * 256, chunk)?;
    }
    if let Some(bad) = pattern::first_mismatch(seed, first, lba, &back) {
        return Err(format!("LBA {bad} does not hold its data").into());
    }
    Ok(Report {
        qid: q.qid(),
        submitted,
        ok,
        recovery,
        injected,
        first_after,
    })
}

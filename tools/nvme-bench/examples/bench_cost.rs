//! nvme-bench's own work per I/O, outside the driver: the offset
//! generator and the latency record, counted under callgrind with each
//! piece behind an out-of-line wrapper (see docs/PERFORMANCE.md):
//!
//! `valgrind --tool=callgrind --collect-atstart=no
//! --toggle-collect=bench_cost::WRAPPER bench_cost N`, where WRAPPER is
//! `next_io`, `record_each` (one histogram update per I/O) or `record_runs`
//! ([`LatencyRuns`], as the raw loop records), then divide by N.
//!
//! The latencies come in runs of 64 equal values, as a poll's completions
//! at QD128 on null-co do (they were submitted in a few batches and
//! completed in one).

use nvme_bench::stats::{LatencyRuns, Stats};
use nvme_bench::workload::{Generator, OffsetDist, Spec, Workload};

#[inline(never)]
fn next_io(g: &mut Generator) -> u64 {
    g.next_io().slba
}

#[inline(never)]
fn record_each(stats: &mut Stats, ns: u64) {
    stats.record_ns(true, 4096, ns);
}

#[inline(never)]
fn record_runs(runs: &mut LatencyRuns, stats: &mut Stats, ns: u64) {
    runs.push(stats, true, ns);
}

fn main() -> std::process::ExitCode {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let spec = Spec {
        workload: Workload::Randread,
        mix: 0,
        dist: OffsetDist::Uniform,
        first: 0,
        blocks: 1 << 24,
        io_blocks: 8,
        align_blocks: 8,
        seed: 1,
    };
    let mut g = match Generator::new(&spec) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("bench_cost: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let (mut each, mut in_runs) = (Stats::new(), Stats::new());
    let mut runs = LatencyRuns::new(4096);
    let mut sum = 0u64;
    for i in 0..n {
        sum = sum.wrapping_add(next_io(&mut g));
        let ns = 20_000 + (i / 64 * 7919) % 50_000;
        record_each(&mut each, ns);
        record_runs(&mut runs, &mut in_runs, ns);
    }
    runs.flush(&mut in_runs);
    println!("ios {} {} (offset sum {sum})", each.ios(), in_runs.ios());
    std::process::ExitCode::SUCCESS
}

//! What a run measured: counts and an HDR latency histogram per thread, and
//! their sum.

use std::time::Duration;

use hdrhistogram::Histogram;

pub use tools_common::bench::{IoFigures, Latency};

/// One thread's (or the total) measurements over the measured window.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Completion latencies in nanoseconds.
    pub latency: Histogram<u64>,
    /// Reads completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Failed I/Os.
    pub errors: u64,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// Commands kept in flight, for a run that records no latencies (the
    /// floor loop): the mean latency then follows from Little's law.
    pub depth: Option<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    /// Empty stats (latencies from 1 ns to 100 s, 3 significant digits).
    pub fn new() -> Self {
        Stats {
            latency: histogram(),
            reads: 0,
            writes: 0,
            bytes: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            depth: None,
        }
    }

    /// Records one completed I/O.
    pub fn record(&mut self, read: bool, bytes: u64, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.record_ns(read, bytes, ns);
    }

    /// [`Stats::record`] with the latency in nanoseconds.
    #[inline]
    pub fn record_ns(&mut self, read: bool, bytes: u64, ns: u64) {
        self.latency.saturating_record(ns.max(1));
        if read {
            self.reads += 1;
        } else {
            self.writes += 1;
        }
        self.bytes += bytes;
    }

    /// Records `count` completed I/Os of one kind, `bytes` each, that all
    /// took `ns` nanoseconds: one histogram update for all of them.
    pub fn record_n_ns(&mut self, read: bool, bytes: u64, ns: u64, count: u64) {
        self.latency.saturating_record_n(ns.max(1), count);
        if read {
            self.reads += count;
        } else {
            self.writes += count;
        }
        self.bytes += bytes * count;
    }

    /// Adds another thread's stats (their windows overlap: the longest
    /// counts).
    pub fn merge(&mut self, other: &Stats) {
        let _ = self.latency.add(&other.latency);
        self.reads += other.reads;
        self.writes += other.writes;
        self.bytes += other.bytes;
        self.errors += other.errors;
        self.elapsed = self.elapsed.max(other.elapsed);
        self.depth = match (self.depth, other.depth) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }

    /// I/Os completed.
    pub fn ios(&self) -> u64 {
        self.reads + self.writes
    }

    /// I/Os per second over the window.
    pub fn iops(&self) -> f64 {
        per_second(self.ios() as f64, self.elapsed)
    }

    /// Megabytes (10^6) per second over the window.
    pub fn mbps(&self) -> f64 {
        per_second(self.bytes as f64 / 1e6, self.elapsed)
    }

    /// The latency summary (zeros when nothing completed).
    pub fn latency(&self) -> Latency {
        let h = &self.latency;
        let us = |ns: u64| ns as f64 / 1000.0;
        if h.is_empty() {
            // Little's law: in flight = rate x time in flight.
            let mean_us = match self.depth {
                Some(depth) if self.iops() > 0.0 => depth as f64 / self.iops() * 1e6,
                _ => 0.0,
            };
            return Latency {
                min_us: 0.0,
                mean_us,
                p50_us: 0.0,
                p90_us: 0.0,
                p99_us: 0.0,
                p999_us: 0.0,
                max_us: 0.0,
            };
        }
        Latency {
            min_us: us(h.min()),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }

    /// The report's figures of these stats.
    pub fn figures(&self) -> IoFigures {
        IoFigures {
            ios: self.ios(),
            reads: self.reads,
            writes: self.writes,
            errors: self.errors,
            iops: self.iops(),
            mbps: self.mbps(),
            seconds: self.elapsed.as_secs_f64(),
            latency: self.latency(),
        }
    }
}

/// Completions of the same kind and latency, recorded as one histogram
/// update ([`Stats::record_n_ns`]) instead of one each. A queue-depth loop
/// reads the clock once per poll and resubmits a poll's completions at that
/// time, so the I/Os a poll reaps were submitted in a few batches, and
/// runs of equal latency are long (an update of the HDR histogram costs
/// about 60 instructions, a comparison here a few). The stats are the
/// same as with one [`Stats::record_ns`] per I/O once [`LatencyRuns::flush`]
/// has run.
#[derive(Debug, Clone)]
pub struct LatencyRuns {
    /// Bytes per I/O.
    bytes: u64,
    read: bool,
    ns: u64,
    /// I/Os in the current run (0: none).
    count: u64,
}

impl LatencyRuns {
    /// Runs of I/Os of `bytes` each.
    pub fn new(bytes: u64) -> Self {
        LatencyRuns {
            bytes,
            read: true,
            ns: 0,
            count: 0,
        }
    }

    /// Adds one completed I/O; a different kind or latency than the
    /// current run's records that run into `stats` first.
    #[inline]
    pub fn push(&mut self, stats: &mut Stats, read: bool, ns: u64) {
        if self.count > 0 && ns == self.ns && read == self.read {
            self.count += 1;
            return;
        }
        self.flush(stats);
        self.read = read;
        self.ns = ns;
        self.count = 1;
    }

    /// Records the current run into `stats` (before `stats` is read or
    /// replaced).
    pub fn flush(&mut self, stats: &mut Stats) {
        if self.count > 0 {
            stats.record_n_ns(self.read, self.bytes, self.ns, self.count);
            self.count = 0;
        }
    }
}

fn per_second(n: f64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 { n / s } else { 0.0 }
}

/// Latencies from 1 ns to 100 s at 3 significant digits.
fn histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 100_000_000_000, 3) {
        Ok(h) => h,
        // The bounds are constants the constructor accepts (low >= 1,
        // high >= 2 * low, sigfig <= 5).
        Err(e) => unreachable!("constant histogram bounds rejected: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_percentiles() {
        let mut s = Stats::new();
        for i in 1..=1000u64 {
            s.record(i % 2 == 0, 4096, Duration::from_micros(i));
        }
        s.elapsed = Duration::from_secs(2);
        assert_eq!(s.ios(), 1000);
        assert_eq!((s.reads, s.writes), (500, 500));
        assert!((s.iops() - 500.0).abs() < 1e-9);
        assert!((s.mbps() - 2.048).abs() < 1e-9);
        let l = s.latency();
        assert!((l.min_us - 1.0).abs() < 0.01);
        assert!((l.p50_us - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_us - 990.0).abs() < 1.0, "{l:?}");
        assert!((l.max_us - 1000.0).abs() < 1.0, "{l:?}");
        // The report's figures are these.
        let f = s.figures();
        assert_eq!((f.ios, f.reads, f.writes, f.errors), (1000, 500, 500, 0));
        assert_eq!((f.iops, f.mbps, f.seconds), (s.iops(), s.mbps(), 2.0));
        assert_eq!(f.latency, l);
        let mut t = Stats::new();
        t.merge(&s);
        t.merge(&s);
        assert_eq!(t.ios(), 2000);
        assert_eq!(t.latency.len(), 2000);
    }

    #[test]
    fn latency_runs_record_what_one_record_per_io_would() {
        // Latencies in runs (as a poll's completions come), kinds mixed.
        let ios: Vec<(bool, u64)> = (0..2000u64)
            .map(|i| (i % 7 != 3, 1000 + (i / 50) * 37 + u64::from(i % 97 == 0)))
            .collect();
        let mut one = Stats::new();
        let mut runs_stats = Stats::new();
        let mut runs = LatencyRuns::new(4096);
        for &(read, ns) in &ios {
            one.record_ns(read, 4096, ns);
            runs.push(&mut runs_stats, read, ns);
        }
        runs.flush(&mut runs_stats);
        runs.flush(&mut runs_stats);
        assert_eq!(
            (runs_stats.reads, runs_stats.writes, runs_stats.bytes),
            (one.reads, one.writes, one.bytes)
        );
        assert_eq!(runs_stats.latency, one.latency);
        assert_eq!(runs_stats.latency.len(), 2000);
    }

    #[test]
    fn mean_latency_without_a_histogram_follows_littles_law() {
        let mut s = Stats::new();
        s.reads = 50_000;
        s.elapsed = Duration::from_secs(1);
        assert_eq!(s.latency().mean_us, 0.0, "no depth, no figure");
        s.depth = Some(32);
        // 32 in flight at 50k/s: each spends 640 us.
        assert!((s.latency().mean_us - 640.0).abs() < 1e-6);
    }
}

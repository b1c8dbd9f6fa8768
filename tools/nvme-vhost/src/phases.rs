//! Where a request's time goes inside the daemon (`--timings`): a
//! monotonic clock read at each step of a request's path, summed per
//! step over every request, so that a benchmark can tell the device's
//! part from the daemon's and from the vhost-user crossing's. Off by
//! default; when on, it costs a clock read per step and a relaxed atomic
//! add per request and step.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One step of a request's path through a queue thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// From the queue thread taking the ring (woken by a kick, or looking
    /// again while it serves) to the request's chain parsed.
    Parse,
    /// From parsed to its NVMe command submitted (doorbell written).
    Submit,
    /// From submitted to the queue thread seeing its completion (the
    /// device's time plus the thread's wake-up on the interrupt, or its
    /// polling).
    Device,
    /// From the completion seen (or, for a request answered without the
    /// device, parsed) to the chain on the used ring.
    Used,
    /// From the used ring to the call eventfd signalled (requests whose
    /// queue asked for a signal).
    Call,
    /// From the last chain returned to the next kick's batch starting:
    /// what the front end and the crossing between threads take.
    Away,
}

impl Phase {
    /// Every phase, in path order.
    pub const ALL: [Phase; 6] = [
        Phase::Parse,
        Phase::Submit,
        Phase::Device,
        Phase::Used,
        Phase::Call,
        Phase::Away,
    ];

    /// The phase's name in the daemon's summary.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Parse => "taken->parsed",
            Phase::Submit => "parsed->submitted",
            Phase::Device => "submitted->completion",
            Phase::Used => "completion->used",
            Phase::Call => "used->call",
            Phase::Away => "returned->next kick",
        }
    }
}

/// Width of a histogram bucket.
const BUCKET_US: u64 = 5;

/// Buckets per phase: 0 to 2 ms in [`BUCKET_US`] steps, the last one
/// for everything longer.
const BUCKETS: usize = 401;

/// Sums, counts and a histogram per [`Phase`], shared by the queue
/// threads (the histogram gives a median that a loaded host's tail does
/// not move, as it moves the mean).
#[derive(Debug)]
pub struct Phases {
    nanos: [AtomicU64; 6],
    counts: [AtomicU64; 6],
    histogram: Vec<AtomicU64>,
}

impl Default for Phases {
    fn default() -> Phases {
        Phases {
            nanos: Default::default(),
            counts: Default::default(),
            histogram: (0..6 * BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Phases {
    /// Adds one request's time in `phase`.
    pub fn add(&self, phase: Phase, took: Duration) {
        let i = phase as usize;
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.nanos[i].fetch_add(ns, Ordering::Relaxed);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let bucket =
            usize::try_from(ns / 1000 / BUCKET_US).map_or(BUCKETS - 1, |b| b.min(BUCKETS - 1));
        self.histogram[i * BUCKETS + bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The upper end in µs of the bucket holding `phase`'s median
    /// (`None`: no request, or the median is past the histogram's 2 ms).
    pub fn median_us(&self, phase: Phase) -> Option<u64> {
        let i = phase as usize;
        let buckets = &self.histogram[i * BUCKETS..(i + 1) * BUCKETS];
        let total: u64 = buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum();
        let mut seen = 0;
        for (k, b) in buckets.iter().enumerate().take(BUCKETS - 1) {
            seen += b.load(Ordering::Relaxed);
            if total > 0 && seen * 2 >= total {
                return Some((k as u64 + 1) * BUCKET_US);
            }
        }
        None
    }

    /// Adds `later - earlier` (nothing when `later` is not later).
    pub fn add_between(&self, phase: Phase, earlier: Instant, later: Instant) {
        self.add(phase, later.saturating_duration_since(earlier));
    }

    /// (mean µs, count) of `phase`; `None` when no request went through it.
    pub fn mean_us(&self, phase: Phase) -> Option<(f64, u64)> {
        let i = phase as usize;
        let n = self.counts[i].load(Ordering::Relaxed);
        (n > 0).then(|| {
            let ns = self.nanos[i].load(Ordering::Relaxed);
            (ns as f64 / n as f64 / 1000.0, n)
        })
    }

    /// One line: each phase's mean in µs, its median (to the 5 µs
    /// bucket) and its request count.
    pub fn summary(&self) -> String {
        Phase::ALL
            .iter()
            .filter_map(|&p| {
                self.mean_us(p).map(|(us, n)| {
                    let median = self
                        .median_us(p)
                        .map_or_else(|| ">2000".to_string(), |m| format!("<={m}"));
                    format!("{} {us:.1} p50 {median} ({n})", p.name())
                })
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_per_phase() {
        let p = Phases::default();
        assert_eq!(p.mean_us(Phase::Device), None);
        p.add(Phase::Device, Duration::from_micros(10));
        p.add(Phase::Device, Duration::from_micros(30));
        p.add(Phase::Away, Duration::from_micros(5));
        assert_eq!(p.mean_us(Phase::Device), Some((20.0, 2)));
        assert_eq!(p.median_us(Phase::Device), Some(15));
        assert_eq!(p.median_us(Phase::Call), None);
        assert_eq!(p.mean_us(Phase::Parse), None);
        let t = Instant::now();
        p.add_between(Phase::Parse, t + Duration::from_micros(1), t);
        assert_eq!(p.mean_us(Phase::Parse), Some((0.0, 1)));
        assert_eq!(
            p.summary(),
            "taken->parsed 0.0 p50 <=5 (1), submitted->completion 20.0 p50 <=15 (2), \
             returned->next kick 5.0 p50 <=10 (1)"
        );
    }
}

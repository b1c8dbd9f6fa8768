//! What a bench thread does next: which operation, at which LBA.

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde::Serialize;

pub use tools_common::bench::Workload;

/// How random offsets are spread.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum OffsetDist {
    /// Every aligned offset equally likely.
    Uniform,
    /// Zipf with this exponent (hot spots).
    Zipf(f64),
}

/// Parses `uniform` or `zipf:THETA`.
pub fn parse_distribution(s: &str) -> Result<OffsetDist, String> {
    if s == "uniform" {
        return Ok(OffsetDist::Uniform);
    }
    let theta = s
        .strip_prefix("zipf:")
        .and_then(|t| t.parse::<f64>().ok())
        .filter(|t| *t > 0.0 && t.is_finite())
        .ok_or_else(|| format!("`{s}`: expected uniform or zipf:THETA (THETA > 0)"))?;
    Ok(OffsetDist::Zipf(theta))
}

/// One I/O to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Io {
    /// Read (else write).
    pub read: bool,
    /// First LBA.
    pub slba: u64,
}

/// What a generator produces.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The workload.
    pub workload: Workload,
    /// Read percentage for the mixed workloads.
    pub mix: u8,
    /// Spread of random offsets.
    pub dist: OffsetDist,
    /// First LBA of the range.
    pub first: u64,
    /// Blocks in the range.
    pub blocks: u64,
    /// Blocks per I/O.
    pub io_blocks: u64,
    /// Offsets are multiples of this many blocks (from `first`).
    pub align_blocks: u64,
    /// Seed of the random offsets.
    pub seed: u64,
}

/// Why a [`Spec`] generates no I/O.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// Not even one I/O fits the range.
    #[error("a range of {blocks} blocks cannot hold an I/O of {io_blocks} blocks")]
    RangeTooSmall {
        /// Blocks in the range.
        blocks: u64,
        /// Blocks per I/O.
        io_blocks: u64,
    },
    /// The zipf exponent is out of the distribution's domain.
    #[error("zipf: {0}")]
    Zipf(#[from] rand_distr::ZipfError),
}

/// Generates a thread's I/Os over its part of the LBA range.
#[derive(Debug)]
pub struct Generator {
    first: u64,
    slots: u64,
    step: u64,
    random: bool,
    read_percent: u8,
    next_slot: u64,
    zipf: Option<Zipf<f64>>,
    /// Xoshiro256++ (rand's `SmallRng`): a few instructions per number,
    /// where ChaCha costs a block refill every few draws (the bench's own
    /// per-I/O cost counts against the driver's).
    rng: SmallRng,
}

impl Generator {
    /// I/Os as `spec` describes. Fails if not even one fits.
    pub fn new(spec: &Spec) -> Result<Self, SpecError> {
        let Spec {
            workload,
            mix,
            dist,
            first,
            blocks,
            io_blocks,
            align_blocks,
            seed,
        } = *spec;
        let align = align_blocks.max(1);
        if io_blocks == 0 || blocks < io_blocks {
            return Err(SpecError::RangeTooSmall { blocks, io_blocks });
        }
        let slots = (blocks - io_blocks) / align + 1;
        let zipf = match dist {
            OffsetDist::Zipf(theta) if workload.is_random() => {
                Some(Zipf::new(slots as f64, theta)?)
            }
            _ => None,
        };
        Ok(Generator {
            first,
            slots,
            step: align,
            random: workload.is_random(),
            read_percent: workload.read_percent(mix),
            next_slot: 0,
            zipf,
            rng: SmallRng::seed_from_u64(seed),
        })
    }

    /// The next I/O.
    pub fn next_io(&mut self) -> Io {
        let slot = if !self.random {
            let s = self.next_slot;
            self.next_slot = (self.next_slot + 1) % self.slots;
            s
        } else if let Some(z) = &self.zipf {
            // Rank 1 is the hottest; scatter ranks over the range so the hot
            // spots are not all at its start.
            let rank = (z.sample(&mut self.rng) as u64).clamp(1, self.slots) - 1;
            rank.wrapping_mul(0x9e37_79b9_7f4a_7c15) % self.slots
        } else {
            // The high half of a 64-bit draw times the slot count (as the
            // floor loop does): uniform to within slots / 2^64, far below
            // anything a run can show, in one multiplication, where
            // `random_range`'s exact sampling cost 8 instructions more per
            // I/O (callgrind: 57 against 49 for a `next_io`), which count
            // against the driver.
            ((u128::from(self.rng.next_u64()) * u128::from(self.slots)) >> 64) as u64
        };
        let read = match self.read_percent {
            100 => true,
            0 => false,
            p => self.rng.random_range(0..100u8) < p,
        };
        Io {
            read,
            slba: self.first + slot * self.step,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_wraps_inside_the_range() {
        let mut g = Generator::new(&Spec {
            workload: Workload::Read,
            mix: 0,
            dist: OffsetDist::Uniform,
            first: 100,
            blocks: 32,
            io_blocks: 8,
            align_blocks: 8,
            seed: 1,
        })
        .expect("fits");
        let lbas: Vec<u64> = (0..6).map(|_| g.next_io().slba).collect();
        assert_eq!(lbas, [100, 108, 116, 124, 100, 108]);
    }

    #[test]
    fn random_stays_aligned_and_in_range() {
        for dist in [OffsetDist::Uniform, OffsetDist::Zipf(1.2)] {
            let mut g = Generator::new(&Spec {
                workload: Workload::Randrw,
                mix: 70,
                dist,
                first: 1000,
                blocks: 4096,
                io_blocks: 8,
                align_blocks: 8,
                seed: 7,
            })
            .expect("fits");
            let mut reads = 0;
            for _ in 0..10_000 {
                let io = g.next_io();
                assert!(io.slba >= 1000 && io.slba + 8 <= 1000 + 4096);
                assert_eq!((io.slba - 1000) % 8, 0);
                reads += u32::from(io.read);
            }
            assert!((6500..7500).contains(&reads), "about 70% reads: {reads}");
        }
    }

    #[test]
    fn zipf_has_hot_spots_and_uniform_does_not() {
        let count_top = |dist| {
            let mut g = Generator::new(&Spec {
                workload: Workload::Randread,
                mix: 0,
                dist,
                first: 0,
                blocks: 1 << 20,
                io_blocks: 8,
                align_blocks: 8,
                seed: 3,
            })
            .expect("fits");
            let mut hits = std::collections::HashMap::new();
            for _ in 0..20_000 {
                *hits.entry(g.next_io().slba).or_insert(0u32) += 1;
            }
            hits.values().copied().max().unwrap_or(0)
        };
        assert!(count_top(OffsetDist::Zipf(1.2)) > 1000);
        assert!(count_top(OffsetDist::Uniform) < 20);
    }

    #[test]
    fn bad_requests() {
        assert!(
            Generator::new(&Spec {
                workload: Workload::Read,
                mix: 0,
                dist: OffsetDist::Uniform,
                first: 0,
                blocks: 4,
                io_blocks: 8,
                align_blocks: 8,
                seed: 1
            })
            .is_err()
        );
        assert!(parse_distribution("zipf:0").is_err());
        assert!(parse_distribution("zipf:x").is_err());
        assert_eq!(parse_distribution("zipf:1.1"), Ok(OffsetDist::Zipf(1.1)));
    }
}

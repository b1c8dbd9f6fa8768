//! Dirty and writeback accounting, dirty thresholds and the writer throttle
//! decision (the policy half of mm/page-writeback.c; the flusher thread
//! that acts on it comes with the file API).
//!
//! * Background threshold (`dirty_background_ratio`): above it the flusher
//!   should start writing back ([`DirtyPressure::Background`]).
//! * Hard threshold (`dirty_ratio`): above it writers are throttled until
//!   writeback brings dirty + writeback memory back under it
//!   ([`DirtyPressure::Throttle`], [`crate::PageCache::wait_dirty_below_hard`]).
//!
//! As in `balance_dirty_pages`, the throttle compares dirty **plus under
//! writeback** memory: writeback completion, not the start of writeback,
//! is what makes room. K5: the kernel's rate-limited, proportional
//! pause is not reproduced; the decision is a plain three-way one.
//!
//! Rule ids (R.., X.., K.., T..): docs/MPAGE.md.

use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Dirty thresholds in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirtyLimits {
    /// Start background writeback above this many dirty bytes.
    pub background: u64,
    /// Throttle writers above this many dirty + writeback bytes.
    pub hard: u64,
}

impl DirtyLimits {
    /// Linux defaults: `dirty_background_ratio` = 10, `dirty_ratio` = 20.
    pub const DEFAULT_BACKGROUND_RATIO: u8 = 10;
    /// See [`Self::DEFAULT_BACKGROUND_RATIO`].
    pub const DEFAULT_RATIO: u8 = 20;

    /// Limits as percentages of `budget` bytes. As in the kernel, a
    /// background ratio at or above the hard ratio is lowered to half of it.
    pub fn from_ratios(budget: u64, background_ratio: u8, ratio: u8) -> Result<Self> {
        if ratio > 100 || background_ratio > 100 {
            return Err(Error::BadDirtyLimits("ratio above 100"));
        }
        let background_ratio = if background_ratio >= ratio {
            ratio / 2
        } else {
            background_ratio
        };
        Ok(DirtyLimits {
            background: budget / 100 * u64::from(background_ratio),
            hard: budget / 100 * u64::from(ratio),
        })
    }

    /// Explicit byte limits; `background` must not exceed `hard`.
    pub fn from_bytes(background: u64, hard: u64) -> Result<Self> {
        if background > hard {
            return Err(Error::BadDirtyLimits("background above hard"));
        }
        Ok(DirtyLimits { background, hard })
    }

    /// The decision for `dirty` and `writeback` bytes.
    pub fn pressure(&self, dirty: u64, writeback: u64) -> DirtyPressure {
        if dirty + writeback > self.hard {
            DirtyPressure::Throttle
        } else if dirty > self.background {
            DirtyPressure::Background
        } else {
            DirtyPressure::Below
        }
    }
}

/// What a writer (or the flusher) should do about dirty memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DirtyPressure {
    /// Nothing to do.
    Below,
    /// Wake the flusher; writers go on.
    Background,
    /// Writers wait for writeback to complete.
    Throttle,
}

/// Cache-wide byte counters, shared by the cache and every folio so that
/// each state transition keeps them exact.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Bytes of live folio memory (indexed or still referenced).
    pub(crate) used: AtomicU64,
    /// Bytes of folios with DIRTY set.
    pub(crate) dirty: AtomicU64,
    /// Bytes of folios with WRITEBACK set.
    pub(crate) writeback: AtomicU64,
    /// Woken whenever dirty or writeback bytes fall.
    progress: Mutex<()>,
    progress_cv: Condvar,
}

impl Counters {
    pub(crate) fn dirty(&self) -> u64 {
        self.dirty.load(Ordering::Acquire)
    }

    pub(crate) fn writeback(&self) -> u64 {
        self.writeback.load(Ordering::Acquire)
    }

    pub(crate) fn add_dirty(&self, bytes: u64) {
        self.dirty.fetch_add(bytes, Ordering::AcqRel);
    }

    pub(crate) fn sub_dirty(&self, bytes: u64) {
        self.dirty.fetch_sub(bytes, Ordering::AcqRel);
        self.notify();
    }

    pub(crate) fn add_writeback(&self, bytes: u64) {
        self.writeback.fetch_add(bytes, Ordering::AcqRel);
    }

    pub(crate) fn sub_writeback(&self, bytes: u64) {
        self.writeback.fetch_sub(bytes, Ordering::AcqRel);
        self.notify();
    }

    fn notify(&self) {
        let _guard = self.progress.lock();
        self.progress_cv.notify_all();
    }

    /// Waits until `dirty + writeback <= limit` or `timeout` passes;
    /// returns whether the condition holds.
    pub(crate) fn wait_below(&self, limit: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.progress.lock();
        loop {
            if self.dirty() + self.writeback() <= limit {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            self.progress_cv.wait_until(&mut guard, deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_follow_the_kernel_defaults() {
        let l = DirtyLimits::from_ratios(1000 * 100, 10, 20).unwrap();
        assert_eq!(
            l,
            DirtyLimits {
                background: 10_000,
                hard: 20_000
            }
        );
        let l = DirtyLimits::from_ratios(100 * 100, 30, 20).unwrap();
        assert_eq!(
            l.background, 1000,
            "background >= hard halves the hard ratio"
        );
        assert!(DirtyLimits::from_ratios(100, 10, 101).is_err());
        assert!(DirtyLimits::from_bytes(5, 4).is_err());
    }

    #[test]
    fn pressure_has_three_levels() {
        let l = DirtyLimits::from_bytes(100, 200).unwrap();
        assert_eq!(l.pressure(100, 0), DirtyPressure::Below);
        assert_eq!(l.pressure(101, 0), DirtyPressure::Background);
        assert_eq!(l.pressure(150, 50), DirtyPressure::Background);
        assert_eq!(l.pressure(150, 51), DirtyPressure::Throttle);
        // Writeback alone never asks for more background writeback.
        assert_eq!(l.pressure(0, 150), DirtyPressure::Below);
    }

    #[test]
    fn wait_below_wakes_on_writeback_completion() {
        let c = std::sync::Arc::new(Counters::default());
        c.add_writeback(300);
        assert!(!c.wait_below(200, Duration::from_millis(10)));
        let c2 = c.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            c2.sub_writeback(150);
        });
        assert!(c.wait_below(200, Duration::from_secs(10)));
        t.join().unwrap();
    }
}

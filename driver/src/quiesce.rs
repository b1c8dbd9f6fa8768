//! Quiescing the I/O queues around a controller reset: while the reset
//! runs, no queue pair writes a doorbell (MMIO or shadow), and the reset
//! starts only once no queue pair is inside a doorbell write.
//!
//! A reset deletes every queue; a doorbell written meanwhile names a queue
//! the controller is tearing down (or has none of). Linux's driver and
//! SPDK quiesce their queues before disabling the controller for the same
//! reason, and QEMU's emulated controller was seen to crash without it
//! (docs/ARCHITECTURE.md, "Controller reset").
//!
//! The gate is one atomic word: a "closed" bit and the count of queue
//! pairs inside a doorbell write. A queue pair passes it once per batch
//! (one SQ ring, one CQ head update), not per command. Beside it lives the
//! controller generation (bumped by every reset): a queue created in an
//! earlier generation is gone from the controller, so its doorbells are
//! not written either until its queue pair has created it again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The "closed" bit of [`Quiesce::state`].
const CLOSED: u64 = 1 << 63;

/// The doorbell gate and the controller generation, shared by the
/// controller and every I/O queue.
#[derive(Debug, Default)]
pub(crate) struct Quiesce {
    /// [`CLOSED`] while a reset runs; below it, the queue pairs inside a
    /// doorbell write.
    state: AtomicU64,
    /// Bumped by every controller reset.
    generation: AtomicU64,
}

/// A pass through the gate: the doorbell write may proceed while it lives.
#[derive(Debug)]
#[must_use]
pub(crate) struct Pass<'a>(&'a Quiesce);

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.0.state.fetch_sub(1, Ordering::Release);
    }
}

/// The gate closed by a reset: reopened when dropped (whether the reset
/// succeeded or not).
#[derive(Debug)]
#[must_use]
pub(crate) struct Closed<'a>(&'a Quiesce);

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        self.0.state.fetch_and(!CLOSED, Ordering::Release);
    }
}

impl Quiesce {
    /// The current controller generation.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Lets a queue created in `generation` write a doorbell: None while a
    /// reset runs or once a reset has deleted the queue.
    #[inline]
    pub(crate) fn enter(&self, generation: u64) -> Option<Pass<'_>> {
        // Counting first and then looking at the bit (one read-modify-write
        // on the same word as the reset's) means either the reset sees this
        // pass and waits for it, or this pass sees the reset.
        let before = self.state.fetch_add(1, Ordering::Acquire);
        let pass = Pass(self);
        if before & CLOSED != 0 || self.generation() != generation {
            return None;
        }
        Some(pass)
    }

    /// Closes the gate and waits (at most `limit`) until no queue pair is
    /// inside a doorbell write. Returns the closed gate and whether every
    /// write finished in time.
    pub(crate) fn close(&self, limit: Duration) -> (Closed<'_>, bool) {
        self.state.fetch_or(CLOSED, Ordering::AcqRel);
        let closed = Closed(self);
        let start = Instant::now();
        let mut spins = 0u32;
        while self.state.load(Ordering::Acquire) & !CLOSED != 0 {
            if start.elapsed() >= limit {
                return (closed, false);
            }
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
        (closed, true)
    }

    /// Whether a queue created in `generation` is being (or has been)
    /// torn down by a reset: the gate is closed or the generation moved on.
    pub(crate) fn tearing_down(&self, generation: u64) -> bool {
        self.state.load(Ordering::Acquire) & CLOSED != 0 || self.generation() != generation
    }

    /// Ends a generation: queues created before are gone from the
    /// controller. Called with the gate closed.
    pub(crate) fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Queue pairs inside a doorbell write right now.
    #[cfg(test)]
    fn inside(&self) -> u64 {
        self.state.load(Ordering::Acquire) & !CLOSED
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn passes_while_open_and_in_its_generation() {
        let q = Quiesce::default();
        let pass = q.enter(0).expect("open gate");
        assert_eq!(q.inside(), 1);
        drop(pass);
        assert_eq!(q.inside(), 0);
        assert!(!q.tearing_down(0));
        q.bump();
        assert!(q.tearing_down(0));
        assert!(q.enter(0).is_none(), "a queue of the last generation");
        assert_eq!(q.inside(), 0, "a refused pass is not counted");
        assert!(q.enter(1).is_some());
    }

    #[test]
    fn refuses_while_closed_and_reopens() {
        let q = Quiesce::default();
        {
            let (_closed, drained) = q.close(Duration::from_millis(10));
            assert!(drained);
            assert!(q.tearing_down(0));
            assert!(q.enter(0).is_none());
            assert_eq!(q.inside(), 0);
        }
        assert!(q.enter(0).is_some(), "reopened when the reset ends");
    }

    #[test]
    fn close_waits_for_a_doorbell_write_in_progress() {
        let q = Quiesce::default();
        let pass = q.enter(0).expect("open");
        // Bounded: the write does not end, the reset goes on after the limit.
        let (closed, drained) = q.close(Duration::from_millis(5));
        assert!(!drained);
        drop(closed);
        // The write ends while the reset waits.
        let released = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                released.store(true, Ordering::SeqCst);
                drop(pass);
            });
            let (_closed, drained) = q.close(Duration::from_secs(30));
            assert!(drained);
            assert!(
                released.load(Ordering::SeqCst),
                "returned before the write ended"
            );
        });
    }

    #[test]
    fn no_doorbell_write_overlaps_a_closed_gate() {
        // Writers hammer the gate; the reset thread closes it repeatedly
        // and checks that nobody is inside while it is closed and drained.
        let q = Arc::new(Quiesce::default());
        let inside_closed = Arc::new(AtomicU64::new(0));
        let writing = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..3)
            .map(|_| {
                let (q, writing, stop) = (q.clone(), writing.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut passed = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(_pass) = q.enter(0) {
                            writing.fetch_add(1, Ordering::SeqCst);
                            std::hint::spin_loop();
                            writing.fetch_sub(1, Ordering::SeqCst);
                            passed += 1;
                        }
                    }
                    passed
                })
            })
            .collect();
        for _ in 0..200 {
            let (closed, drained) = q.close(Duration::from_secs(30));
            assert!(drained);
            for _ in 0..50 {
                if writing.load(Ordering::SeqCst) != 0 {
                    inside_closed.fetch_add(1, Ordering::SeqCst);
                }
            }
            drop(closed);
            std::thread::yield_now();
        }
        stop.store(true, Ordering::Relaxed);
        let passed: u64 = writers.into_iter().map(|w| w.join().expect("writer")).sum();
        assert_eq!(inside_closed.load(Ordering::SeqCst), 0);
        assert!(
            passed > 0,
            "the writers got through while the gate was open"
        );
    }
}

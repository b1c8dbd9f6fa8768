//! Eviction order: a clock (second chance) over the cached folios, the
//! single-list simplification of the kernel's active/inactive LRU.
//!
//! The hand visits folios in insertion order. A folio used since the hand
//! last passed (referenced bit set by lookups) gets a second chance; one
//! that is dirty, locked, under writeback or pinned is skipped (kept);
//! the first one that is none of these is evicted.

use std::collections::VecDeque;

use crate::FileId;

/// One clock slot: which folio, and which incarnation of it (so a slot
/// left behind by a folio that was removed and replaced is recognised as
/// stale).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) file: FileId,
    pub(crate) index: u64,
    pub(crate) id: u64,
}

/// What the clock decided about a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The folio is gone: drop the slot.
    Stale,
    /// Referenced since last time: clear the bit, keep the slot.
    SecondChance,
    /// Dirty, locked, under writeback or pinned: keep the slot.
    Busy,
    /// Evicted by the caller: drop the slot.
    Evicted,
}

/// The clock.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    slots: VecDeque<Slot>,
}

impl Clock {
    /// Adds a new folio behind the hand.
    pub(crate) fn push(&mut self, slot: Slot) {
        self.slots.push_back(slot);
    }

    /// Number of slots (stale ones included).
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Advances the hand over at most two full turns, asking `judge` about
    /// each slot, until `judge` has evicted enough (`done` says so).
    /// Returns how many folios were evicted.
    pub(crate) fn sweep(
        &mut self,
        mut judge: impl FnMut(Slot) -> Verdict,
        mut done: impl FnMut() -> bool,
    ) -> usize {
        let mut evicted = 0;
        let mut budget = self.slots.len() * 2;
        while budget > 0 && !done() {
            budget -= 1;
            let Some(slot) = self.slots.pop_front() else {
                break;
            };
            match judge(slot) {
                Verdict::Stale => {}
                Verdict::Evicted => evicted += 1,
                Verdict::SecondChance | Verdict::Busy => self.slots.push_back(slot),
            }
        }
        evicted
    }

    /// Drops slots for which `keep` is false (compaction of stale slots).
    pub(crate) fn retain(&mut self, keep: impl FnMut(&Slot) -> bool) {
        self.slots.retain(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(index: u64) -> Slot {
        Slot {
            file: FileId(1),
            index,
            id: index,
        }
    }

    #[test]
    fn second_chance_then_evict_in_order() {
        let mut clock = Clock::default();
        for i in 0..4 {
            clock.push(slot(i));
        }
        let mut referenced = [false, true, false, false];
        let mut order = Vec::new();
        let n = clock.sweep(
            |s| {
                let i = s.index as usize;
                if referenced[i] {
                    referenced[i] = false;
                    return Verdict::SecondChance;
                }
                order.push(i);
                Verdict::Evicted
            },
            || false,
        );
        assert_eq!(n, 4);
        assert_eq!(order, vec![0, 2, 3, 1], "the referenced folio goes last");
        assert_eq!(clock.len(), 0);
    }

    #[test]
    fn busy_slots_are_kept_and_the_sweep_terminates() {
        let mut clock = Clock::default();
        for i in 0..3 {
            clock.push(slot(i));
        }
        let mut visits = 0;
        let n = clock.sweep(
            |_| {
                visits += 1;
                Verdict::Busy
            },
            || false,
        );
        assert_eq!(n, 0);
        assert_eq!(visits, 6, "two turns at most");
        assert_eq!(clock.len(), 3);
    }

    #[test]
    fn sweep_stops_when_done() {
        let mut clock = Clock::default();
        for i in 0..5 {
            clock.push(slot(i));
        }
        let evicted = std::cell::Cell::new(0);
        let n = clock.sweep(
            |_| {
                evicted.set(evicted.get() + 1);
                Verdict::Evicted
            },
            || evicted.get() >= 2,
        );
        assert_eq!(n, 2);
        assert_eq!(clock.len(), 3);
    }
}

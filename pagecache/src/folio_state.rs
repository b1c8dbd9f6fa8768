//! Per-block state of a folio whose blocks are smaller than the folio: the
//! userspace `iomap_folio_state` (v5.11's `struct iomap_page` plus the
//! dirty bitmap added upstream in 6.6).
//!
//! * R34: created lazily, and only when a folio holds more than one block;
//!   initialised all-uptodate if the folio already is, otherwise all-clear.
//!   Invariant: folio uptodate ⇔ every uptodate bit set.
//! * K1: "folio has buffers" becomes "folio has sub-folio state".
//!
//! Rule ids (R.., X.., K.., T..): docs/MPAGE.md.

use std::ops::Range;

/// A fixed-size bitmap, one bit per block of a folio (at most
/// 2 MiB / 512 B = 4096 bits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockBitmap {
    words: Vec<u64>,
    bits: usize,
}

impl BlockBitmap {
    /// `bits` bits, all clear (`set == false`) or all set.
    pub fn new(bits: usize, set: bool) -> Self {
        let mut map = BlockBitmap {
            words: vec![0; bits.div_ceil(64)],
            bits,
        };
        if set {
            map.set_range(0..bits);
        }
        map
    }

    /// Number of bits.
    pub fn len(&self) -> usize {
        self.bits
    }

    /// Whether the bitmap has no bits at all.
    pub fn is_empty(&self) -> bool {
        self.bits == 0
    }

    /// Bit `i`.
    pub fn get(&self, i: usize) -> bool {
        i < self.bits && self.words[i / 64] & (1 << (i % 64)) != 0
    }

    /// The words `range` (clamped to the bitmap) touches, each with the
    /// mask of its bits inside the range: whole words at a time, so a
    /// 2 MiB folio's 512 blocks cost 8 steps, not 512.
    fn word_masks(&self, range: Range<usize>) -> impl Iterator<Item = (usize, u64)> + use<> {
        let (start, end) = (range.start, range.end.min(self.bits));
        let words = if start < end {
            start / 64..(end - 1) / 64 + 1
        } else {
            0..0
        };
        words.map(move |w| {
            let lo = start.max(w * 64) - w * 64;
            let hi = end.min(w * 64 + 64) - w * 64;
            // Bits lo..hi of the word (hi - lo is 1..=64).
            let mask = (u64::MAX >> (64 - (hi - lo))) << lo;
            (w, mask)
        })
    }

    /// Sets bits `range` (clamped to the bitmap).
    pub fn set_range(&mut self, range: Range<usize>) {
        for (w, mask) in self.word_masks(range) {
            self.words[w] |= mask;
        }
    }

    /// Clears bits `range` (clamped to the bitmap).
    pub fn clear_range(&mut self, range: Range<usize>) {
        for (w, mask) in self.word_masks(range) {
            self.words[w] &= !mask;
        }
    }

    /// Whether every bit in `range` is set (true for an empty range).
    pub fn all_in(&self, range: Range<usize>) -> bool {
        range.end <= self.bits
            && self
                .word_masks(range)
                .all(|(w, mask)| self.words[w] & mask == mask)
    }

    /// Whether any bit in `range` is set.
    pub fn any_in(&self, range: Range<usize>) -> bool {
        self.word_masks(range)
            .any(|(w, mask)| self.words[w] & mask != 0)
    }

    /// Whether every bit is set.
    pub fn is_full(&self) -> bool {
        self.all_in(0..self.bits)
    }

    /// Whether no bit is set.
    pub fn is_clear(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// Maximal runs of set bits, ascending.
    pub fn runs(&self) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.bits {
            if self.get(i) {
                let start = i;
                while i < self.bits && self.get(i) {
                    i += 1;
                }
                out.push(start..i);
            } else {
                i += 1;
            }
        }
        out
    }
}

/// Uptodate and dirty bits per block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlockState {
    pub(crate) uptodate: BlockBitmap,
    pub(crate) dirty: BlockBitmap,
}

impl BlockState {
    /// R34: all-uptodate if the folio is uptodate, else all clear; never
    /// dirty blocks at creation (a dirty folio without block state is
    /// dirty as a whole, which the caller carries over).
    pub(crate) fn new(blocks: usize, uptodate: bool, dirty: bool) -> Self {
        BlockState {
            uptodate: BlockBitmap::new(blocks, uptodate),
            dirty: BlockBitmap::new(blocks, dirty),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_ranges_and_runs() {
        let mut map = BlockBitmap::new(130, false);
        assert!(map.is_clear());
        map.set_range(1..3);
        map.set_range(63..66);
        map.set_range(129..200);
        assert!(map.get(1) && map.get(2) && !map.get(3));
        assert!(map.all_in(63..66));
        assert!(!map.all_in(62..66));
        assert!(!map.all_in(129..131), "out of range bits are not set");
        assert_eq!(map.runs(), vec![1..3, 63..66, 129..130]);
        map.clear_range(64..65);
        assert_eq!(map.runs(), vec![1..3, 63..64, 65..66, 129..130]);
        assert!(!map.is_full());
        map.set_range(0..130);
        assert!(map.is_full());
        assert!(BlockBitmap::new(4096, true).is_full());
    }

    proptest::proptest! {
        /// The word-at-a-time operations against one bool per bit.
        #[test]
        fn bitmap_matches_a_bool_per_bit(
            bits in 1usize..300,
            ops in proptest::collection::vec((0u8..4, 0usize..320, 0usize..320), 0..40),
        ) {
            let mut map = BlockBitmap::new(bits, false);
            let mut model = vec![false; bits];
            for (op, a, b) in ops {
                let r = a.min(b)..a.max(b);
                let clamped = r.start.min(bits)..r.end.min(bits);
                match op {
                    0 => {
                        map.set_range(r);
                        model[clamped].iter_mut().for_each(|x| *x = true);
                    }
                    1 => {
                        map.clear_range(r);
                        model[clamped].iter_mut().for_each(|x| *x = false);
                    }
                    2 => {
                        let want = r.end <= bits && model[clamped].iter().all(|x| *x);
                        proptest::prop_assert_eq!(map.all_in(r), want);
                    }
                    _ => {
                        let want = model[clamped].iter().any(|x| *x);
                        proptest::prop_assert_eq!(map.any_in(r), want);
                    }
                }
                proptest::prop_assert_eq!(map.is_full(), model.iter().all(|x| *x));
                proptest::prop_assert_eq!(map.is_clear(), !model.iter().any(|x| *x));
                for (i, want) in model.iter().enumerate() {
                    proptest::prop_assert_eq!(map.get(i), *want);
                }
            }
        }
    }
}

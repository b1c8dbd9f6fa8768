//! The IOVA allocator: hands out device addresses from the ranges the
//! IOMMU reports as valid, first fit, and takes them back with coalescing.

use std::collections::BTreeMap;

/// IOVAs below this are never used: a zero or tiny IOVA would make a wild
/// device access to a small address look like a valid one.
pub const IOVA_FLOOR: u64 = 1 << 20;

/// A first-fit allocator over a set of free ranges.
#[derive(Debug, Clone, Default)]
pub struct IovaAllocator {
    /// start -> end (exclusive) of each free range.
    free: BTreeMap<u64, u64>,
}

impl IovaAllocator {
    /// An allocator over the inclusive `ranges` (as VFIO reports them),
    /// above [`IOVA_FLOOR`]. With no ranges reported, the 39-bit space every
    /// x86 IOMMU supports is assumed, minus the MSI window.
    pub fn new(ranges: &[(u64, u64)]) -> Self {
        let default = [(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)];
        let ranges = if ranges.is_empty() {
            &default[..]
        } else {
            ranges
        };
        let mut a = IovaAllocator::default();
        for &(start, last) in ranges {
            let start = start.max(IOVA_FLOOR);
            // An inclusive end of u64::MAX loses its last byte; no matter.
            let end = last.saturating_add(1);
            if start < end {
                a.free(start, end - start);
            }
        }
        a
    }

    /// Allocates `len` bytes aligned to `align` (a power of two).
    pub fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        if len == 0 || !align.is_power_of_two() {
            return None;
        }
        let (start, end, at) = self.free.iter().find_map(|(&s, &e)| {
            let at = s.checked_add(align - 1)? & !(align - 1);
            (at.checked_add(len)? <= e).then_some((s, e, at))
        })?;
        self.free.remove(&start);
        if start < at {
            self.free.insert(start, at);
        }
        if at + len < end {
            self.free.insert(at + len, end);
        }
        Some(at)
    }

    /// Returns `len` bytes at `start` to the free set, merging neighbours.
    pub fn free(&mut self, start: u64, len: u64) {
        let Some(mut end) = start.checked_add(len) else {
            return;
        };
        let mut start = start;
        if let Some((&ps, &pe)) = self.free.range(..=start).next_back()
            && pe >= start
        {
            start = ps;
            end = end.max(pe);
            self.free.remove(&ps);
        }
        while let Some((&ns, &ne)) = self.free.range(start..).next() {
            if ns > end {
                break;
            }
            end = end.max(ne);
            self.free.remove(&ns);
        }
        self.free.insert(start, end);
    }

    /// Total free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(|(s, e)| e - s).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn honours_ranges_and_floor() {
        let mut a = IovaAllocator::new(&[(0, 0x2f_ffff), (0x100_0000, 0x1ff_ffff)]);
        let x = a.alloc(0x10_0000, 0x1000).unwrap();
        assert_eq!(x, IOVA_FLOOR);
        let y = a.alloc(0x20_0000, 0x20_0000).unwrap();
        assert_eq!(y, 0x100_0000, "2 MiB-aligned block skips to the next range");
        assert!(a.alloc(0x200_0000, 0x1000).is_none());
    }

    #[test]
    fn frees_coalesce() {
        let mut a = IovaAllocator::new(&[(0, 0xff_ffff)]);
        let total = a.free_bytes();
        let v: Vec<u64> = (0..8).map(|_| a.alloc(0x1000, 0x1000).unwrap()).collect();
        for (i, x) in v.iter().enumerate() {
            if i % 2 == 0 {
                a.free(*x, 0x1000);
            }
        }
        for (i, x) in v.iter().enumerate() {
            if i % 2 == 1 {
                a.free(*x, 0x1000);
            }
        }
        assert_eq!(a.free_bytes(), total);
        assert_eq!(a.free.len(), 1);
    }

    #[test]
    fn avoids_the_msi_window_by_default() {
        let mut a = IovaAllocator::new(&[]);
        let mut last = 0;
        while let Some(x) = a.alloc(1 << 30, 1 << 30) {
            assert!(x + (1 << 30) <= 0xfee0_0000 || x >= 0xfef0_0000);
            last = x;
            if x > 1 << 35 {
                break;
            }
        }
        assert!(last > 0);
    }

    #[test]
    fn rejects_bad_requests() {
        let mut a = IovaAllocator::new(&[(0, u64::MAX)]);
        assert!(a.alloc(0, 4096).is_none());
        assert!(a.alloc(4096, 3).is_none());
        assert!(a.alloc(4096, 4096).is_some());
    }
}

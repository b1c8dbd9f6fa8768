//! Readahead policy: the per-file window of mm/readahead.c
//! (`file_ra_state`, `ondemand_readahead`), as a pure object. It decides
//! which pages to read and which one gets the async trigger mark
//! (PG_readahead); the caller allocates the folios that are missing
//! ([`crate::PageCache::gaps`]), sets the mark with
//! [`crate::LockedFolio::set_readahead_marker`] and issues the I/O.
//!
//! The mpage rules (docs/MPAGE.md) cover what readahead I/O looks like,
//! not the window: R9 (one mapping call may cover the rest of the window, capped at EOF),
//! R6 (readahead commands carry RAHEAD; failures are silent, X4), R11/R36
//! (nothing past EOF is read). The window rules here are the kernel's
//! (mm/readahead.c):
//!
//! * initial window ([`init_size`], `get_init_ra_size`): the request
//!   rounded up to a power of two, then ×4 when small (≤ max/32), ×2 when
//!   medium (≤ max/4), else the maximum; the async part is the window minus
//!   the request;
//! * ramp-up ([`next_size`], `get_next_ra_size`): ×4 while below max/16,
//!   ×2 up to max/2, then the maximum;
//! * the mark goes on page `start + size − async_size`; a reader reaching
//!   it (or missing exactly there, or just past the window) moves the
//!   window forward: `start += size`, `size = next`, `async_size = size`;
//! * a sequential miss (the page read last time, or the one after it) or
//!   a read at page 0 starts an initial window;
//! * anything else is a random read: only the requested pages are read,
//!   no mark is set and the window is left alone;
//! * nothing at or past EOF is ever planned, the window never exceeds the
//!   configured maximum, and a maximum of 0 disables readahead.
//!
//! * a mark on a large folio is hit by whichever page of the folio the
//!   reader reaches first ([`RaState::on_folio_marker`]): the expected
//!   mark is rounded down to the folio, as `page_cache_async_ra` does;
//! * folios for a window are as large as alignment and the window allow
//!   ([`folio_order`], the loop of `page_cache_ra_order`).
//!
//! Not reproduced: `try_context_readahead` (interleaved-stream detection
//! from cache history) and the bump of the maximum to the device's optimal
//! I/O size for oversized reads; the caller picks a maximum for its device
//! instead ([`device_max_pages`]).

use std::ops::Range;

use crate::units::{MAX_ORDER, PAGE_SHIFT};

/// Default maximum window: 128 KiB (`VM_READAHEAD_PAGES`).
pub const DEFAULT_MAX_PAGES: u64 = 32;

/// Largest window [`device_max_pages`] picks: 8 MiB.
pub const DEVICE_MAX_PAGES: u64 = 2048;

/// Commands of the largest size one window of [`device_max_pages`] holds.
pub const WINDOW_COMMANDS: u64 = 16;

/// A readahead maximum for a device whose largest command moves
/// `io_pages` pages (max_sectors / MDTS): [`WINDOW_COMMANDS`] such
/// commands, so that one window keeps the device's queue busy, at least
/// [`DEFAULT_MAX_PAGES`] and at most [`DEVICE_MAX_PAGES`]. (The kernel
/// raises `ra_pages` to twice the optimal I/O size and reads up to
/// `io_pages` per oversized request; a userspace stack that polls one
/// queue needs a deeper window to hide its per-call costs.)
pub fn device_max_pages(io_pages: u64) -> u64 {
    io_pages
        .saturating_mul(WINDOW_COMMANDS)
        .clamp(DEFAULT_MAX_PAGES, DEVICE_MAX_PAGES)
}

/// Order of the folio to allocate at page `index` for a window ending
/// (exclusive) at page `end`: the largest order up to `max_order` (and
/// [`MAX_ORDER`]) that `index` is aligned to and that does not reach
/// past `end` (`page_cache_ra_order`'s loop). 0 if `index >= end`.
pub fn folio_order(index: u64, end: u64, max_order: u8) -> u8 {
    let mut order = max_order.min(MAX_ORDER);
    if index != 0 {
        order = order.min(index.trailing_zeros().min(u32::from(MAX_ORDER)) as u8);
    }
    while order > 0 && index.saturating_add(1 << order) > end {
        order -= 1;
    }
    order
}

/// What to read now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaPlan {
    /// Pages to read (some may already be cached: skip those), never past
    /// EOF.
    pub pages: Range<u64>,
    /// Page to mark PG_readahead, if the caller allocates that folio.
    pub marker: Option<u64>,
}

/// The readahead window of one open file (`struct file_ra_state`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaState {
    start: u64,
    size: u64,
    async_size: u64,
    /// Byte just past the last read (`prev_pos`); `None` before any read.
    prev_pos: Option<u64>,
    max_pages: u64,
}

/// Initial window for a request of `req` pages (`get_init_ra_size`).
pub fn init_size(req: u64, max: u64) -> u64 {
    let size = req.max(1).next_power_of_two();
    if size <= max / 32 {
        size * 4
    } else if size <= max / 4 {
        size * 2
    } else {
        max
    }
}

/// The window after one of `cur` pages (`get_next_ra_size`).
pub fn next_size(cur: u64, max: u64) -> u64 {
    if cur < max / 16 {
        4 * cur
    } else if cur <= max / 2 {
        2 * cur
    } else {
        max
    }
}

/// Index of the last page holding file data, if any.
fn last_page(i_size: u64) -> Option<u64> {
    i_size.checked_sub(1).map(|b| b >> PAGE_SHIFT)
}

impl RaState {
    /// A window of at most `max_pages` pages (0 disables readahead).
    pub fn new(max_pages: u64) -> Self {
        RaState {
            start: 0,
            size: 0,
            async_size: 0,
            prev_pos: None,
            max_pages,
        }
    }

    /// The configured maximum.
    pub fn max_pages(&self) -> u64 {
        self.max_pages
    }

    /// Current window: (start, size, async_size).
    pub fn window(&self) -> (u64, u64, u64) {
        (self.start, self.size, self.async_size)
    }

    /// Records where a read ended (exclusive byte position), for
    /// sequential detection (`ra->prev_pos`).
    pub fn record_read(&mut self, end_pos: u64) {
        self.prev_pos = Some(end_pos);
    }

    /// A read of `req` pages at page `index` found page `index` missing
    /// (`page_cache_sync_ra`). `None` if nothing is to be read (at or
    /// past EOF).
    pub fn on_miss(&mut self, index: u64, req: u64, i_size: u64) -> Option<RaPlan> {
        self.ondemand(
            index,
            req.max(1),
            i_size,
            None::<fn(u64, u64) -> Option<u64>>,
        )
    }

    /// A read of `req` pages at page `index` reached a folio that carried
    /// PG_readahead (the caller cleared it with
    /// [`crate::Folio::test_clear_readahead`]; `page_cache_async_ra`).
    /// `next_miss(from, max)` finds the first uncached page in `[from,
    /// from+max)`, for a marker hit out of step with this window (another
    /// reader's stream).
    pub fn on_marker(
        &mut self,
        index: u64,
        req: u64,
        i_size: u64,
        next_miss: impl FnOnce(u64, u64) -> Option<u64>,
    ) -> Option<RaPlan> {
        self.ondemand(index, req.max(1), i_size, Some(next_miss))
    }

    /// [`RaState::on_marker`] for a marked folio covering `folio` pages
    /// that the reader entered at page `index` (any page of the folio),
    /// reading `req` pages from `index` on: the expected mark counts as
    /// hit if it lies in the folio (`page_cache_async_ra` rounds it down
    /// to the folio).
    pub fn on_folio_marker(
        &mut self,
        folio: Range<u64>,
        index: u64,
        req: u64,
        i_size: u64,
        next_miss: impl FnOnce(u64, u64) -> Option<u64>,
    ) -> Option<RaPlan> {
        let expected = self.start + self.size - self.async_size;
        let at = if folio.contains(&expected) {
            expected
        } else if folio.contains(&(self.start + self.size)) {
            self.start + self.size
        } else {
            index
        };
        let req = (index + req.max(1)).saturating_sub(at);
        self.on_marker(at, req, i_size, next_miss)
    }

    fn ondemand(
        &mut self,
        index: u64,
        req: u64,
        i_size: u64,
        marker_hit: Option<impl FnOnce(u64, u64) -> Option<u64>>,
    ) -> Option<RaPlan> {
        let last = last_page(i_size)?;
        if index > last {
            return None;
        }
        let max = self.max_pages;
        if max == 0 {
            // Readahead disabled: the demand pages only, no mark.
            return marker_hit.is_none().then(|| demand(index, req, last));
        }
        let is_marker = marker_hit.is_some();
        if index != 0 {
            let expected = self.start + self.size - self.async_size;
            if index == expected || index == self.start + self.size {
                // Sequential, at the mark or just past the window: ramp up.
                self.start += self.size;
                self.size = next_size(self.size, max);
                self.async_size = self.size;
                return self.submit(index, is_marker, last);
            }
            if let Some(next_miss) = marker_hit {
                // A mark from a window we are not tracking: continue after
                // the cached run that follows it, if it is close enough.
                let start = next_miss(index + 1, max)?;
                if start <= index || start - index > max {
                    return None;
                }
                self.start = start;
                self.size = next_size(start - index + req, max);
                self.async_size = self.size;
                return self.submit(index, true, last);
            }
            let sequential = self.prev_pos.is_some_and(|p| {
                let prev = p >> PAGE_SHIFT;
                index >= prev && index - prev <= 1
            });
            if req <= max && !sequential {
                // Random read: the requested pages only, no window.
                return Some(demand(index, req, last));
            }
        }
        // Initial window (start of file, sequential miss, oversized read).
        self.start = index;
        self.size = init_size(req, max);
        self.async_size = if self.size > req {
            self.size - req
        } else {
            self.size
        };
        self.submit(index, is_marker, last)
    }

    /// `readit:` + `ra_submit`; `None` if the window starts past EOF.
    fn submit(&mut self, index: u64, is_marker: bool, last: u64) -> Option<RaPlan> {
        let max = self.max_pages;
        if !is_marker && index == self.start && self.size == self.async_size {
            // A sync miss at the start of a fully-async window: read the
            // next window now as well, its mark becoming the trigger.
            let add = next_size(self.size, max);
            if self.size + add <= max {
                self.async_size = add;
                self.size += add;
            } else {
                self.size = max;
                self.async_size = max >> 1;
            }
        }
        if self.start > last {
            return None;
        }
        let end = (self.start + self.size).min(last + 1);
        let mark = self.start + self.size - self.async_size;
        Some(RaPlan {
            pages: self.start..end,
            marker: (self.async_size > 0 && mark < end).then_some(mark),
        })
    }
}

/// The demand pages of a read, capped at EOF.
fn demand(index: u64, req: u64, last: u64) -> RaPlan {
    RaPlan {
        pages: index..(index + req).min(last + 1),
        marker: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 4096;

    #[test]
    fn sizes_follow_get_init_and_get_next_ra_size() {
        assert_eq!(init_size(1, 32), 4);
        assert_eq!(init_size(3, 32), 8);
        assert_eq!(init_size(8, 32), 16);
        assert_eq!(init_size(9, 32), 32);
        assert_eq!(init_size(100, 32), 32);
        assert_eq!(next_size(1, 32), 4);
        assert_eq!(next_size(4, 32), 8);
        assert_eq!(next_size(16, 32), 32);
        assert_eq!(next_size(32, 32), 32);
    }

    /// A sequential single-page reader: the window ramps 4, 8, 16, 32, 32
    /// and each new window is triggered by its predecessor's mark.
    #[test]
    fn sequential_reader_ramps_up_to_the_maximum() {
        let mut ra = RaState::new(32);
        let i_size = 1 << 30;
        let plan = ra.on_miss(0, 1, i_size).unwrap();
        assert_eq!(
            plan,
            RaPlan {
                pages: 0..4,
                marker: Some(1)
            }
        );
        ra.record_read(P);
        let mut marker = plan.marker.unwrap();
        let mut sizes = vec![];
        for _ in 0..5 {
            let plan = ra.on_marker(marker, 1, i_size, |_, _| None).unwrap();
            sizes.push(plan.pages.end - plan.pages.start);
            // The whole window is async: the mark is its first page.
            assert_eq!(plan.marker, Some(plan.pages.start));
            marker = plan.marker.unwrap();
        }
        assert_eq!(sizes, vec![8, 16, 32, 32, 32]);
        assert_eq!(ra.window(), (4 + 8 + 16 + 32 + 32, 32, 32));
    }

    #[test]
    fn random_reads_read_only_what_was_asked() {
        let mut ra = RaState::new(32);
        ra.record_read(10 * P);
        let before = ra.clone();
        let plan = ra.on_miss(500, 2, 1 << 30).unwrap();
        assert_eq!(
            plan,
            RaPlan {
                pages: 500..502,
                marker: None
            }
        );
        assert_eq!(ra.window(), before.window(), "window untouched");
        // Never-read file, read in the middle: random as well.
        let mut ra = RaState::new(32);
        assert_eq!(ra.on_miss(77, 1, 1 << 30).unwrap().marker, None);
    }

    #[test]
    fn sequential_miss_starts_an_initial_window() {
        let mut ra = RaState::new(32);
        ra.record_read(100 * P);
        let plan = ra.on_miss(100, 1, 1 << 30).unwrap();
        assert_eq!(
            plan,
            RaPlan {
                pages: 100..104,
                marker: Some(101)
            }
        );
        // One page skipped still counts as sequential.
        let mut ra = RaState::new(32);
        ra.record_read(100 * P);
        assert_eq!(ra.on_miss(101, 1, 1 << 30).unwrap().pages, 101..105);
    }

    #[test]
    fn window_never_passes_eof() {
        let mut ra = RaState::new(32);
        // 2.5 pages of file.
        let plan = ra.on_miss(0, 1, 2 * P + 100).unwrap();
        assert_eq!(
            plan,
            RaPlan {
                pages: 0..3,
                marker: Some(1)
            }
        );
        // The next window lies wholly past EOF.
        assert_eq!(ra.on_marker(1, 1, 2 * P + 100, |_, _| None), None);
        assert_eq!(ra.on_miss(3, 1, 2 * P + 100), None);
        assert_eq!(ra.on_miss(0, 1, 0), None, "empty file");
    }

    #[test]
    fn window_is_bounded_by_the_configured_maximum() {
        for max in [1u64, 4, 16, 32, 64, 256] {
            let mut ra = RaState::new(max);
            let mut plan = ra.on_miss(0, 1, u64::MAX).unwrap();
            for _ in 0..20 {
                assert!(
                    plan.pages.end - plan.pages.start <= max,
                    "max {max}: {plan:?}"
                );
                let Some(m) = plan.marker else { break };
                plan = ra.on_marker(m, 1, u64::MAX, |_, _| None).unwrap();
            }
        }
        // Oversized read: the first window is the maximum.
        let mut ra = RaState::new(32);
        assert_eq!(ra.on_miss(0, 100, u64::MAX).unwrap().pages, 0..32);
    }

    #[test]
    fn max_zero_disables_readahead() {
        let mut ra = RaState::new(0);
        assert_eq!(
            ra.on_miss(0, 3, 1 << 20),
            Some(RaPlan {
                pages: 0..3,
                marker: None
            })
        );
        assert_eq!(ra.on_marker(5, 1, 1 << 20, |_, _| Some(9)), None);
    }

    #[test]
    fn miss_just_past_the_window_merges_two_windows() {
        let mut ra = RaState::new(32);
        let plan = ra.on_miss(0, 1, 1 << 30).unwrap(); // 0..4, mark 1
        assert_eq!(plan.pages, 0..4);
        // The reader skipped the mark (e.g. it was evicted) and misses at 4.
        let plan = ra.on_miss(4, 1, 1 << 30).unwrap();
        // Window 4..12 (size 8, all async) merged with the next (16).
        assert_eq!(
            plan,
            RaPlan {
                pages: 4..28,
                marker: Some(12)
            }
        );
    }

    #[test]
    fn foreign_marker_continues_after_the_cached_run() {
        let mut ra = RaState::new(32);
        ra.record_read(1000 * P);
        let plan = ra
            .on_marker(50, 1, 1 << 30, |from, max| {
                assert_eq!((from, max), (51, 32));
                Some(60)
            })
            .unwrap();
        // size = next(60 - 50 + 1 = 11) = 22, all async.
        assert_eq!(
            plan,
            RaPlan {
                pages: 60..82,
                marker: Some(60)
            }
        );
        // Too far ahead: nothing.
        let mut ra = RaState::new(32);
        assert_eq!(ra.on_marker(50, 1, 1 << 30, |_, _| Some(200)), None);
    }

    #[test]
    fn folio_orders_follow_alignment_and_the_window_end() {
        assert_eq!(folio_order(0, 4, 9), 2);
        assert_eq!(folio_order(0, 3, 9), 1);
        assert_eq!(folio_order(4, 12, 9), 2);
        assert_eq!(folio_order(384, 6016, 9), 7);
        assert_eq!(folio_order(512, 6016, 9), 9);
        assert_eq!(folio_order(1024, 1 << 20, 4), 4, "capped by the caller");
        assert_eq!(folio_order(0, 1 << 20, 30), MAX_ORDER);
        assert_eq!(folio_order(5, 4, 9), 0, "past the end");
    }

    #[test]
    fn device_maximum_is_sixteen_largest_commands_within_bounds() {
        assert_eq!(device_max_pages(128), 2048, "MDTS 512 KiB: 8 MiB");
        assert_eq!(device_max_pages(32), 512);
        assert_eq!(device_max_pages(1), DEFAULT_MAX_PAGES);
        assert_eq!(device_max_pages(1 << 20), DEVICE_MAX_PAGES);
    }

    /// A mark on a large folio counts when the reader enters the folio at
    /// any page; the window ramps up to the maximum as with small ones.
    #[test]
    fn marker_on_a_large_folio_is_hit_from_any_of_its_pages() {
        let mut ra = RaState::new(2048);
        let i_size = 1 << 40;
        let plan = ra.on_miss(0, 32, i_size).unwrap();
        assert_eq!(
            plan,
            RaPlan {
                pages: 0..128,
                marker: Some(32)
            }
        );
        let mut mark = plan.marker.unwrap();
        let mut sizes = vec![];
        for _ in 0..6 {
            // The mark's folio is 512 pages (aligned); the reader enters
            // it 8 pages in.
            let folio = (mark & !511)..(mark & !511) + 512;
            let entered = folio.start + 8;
            let plan = ra
                .on_folio_marker(folio, entered, 32, i_size, |_, _| panic!("not foreign"))
                .unwrap();
            sizes.push(plan.pages.end - plan.pages.start);
            mark = plan.marker.unwrap();
        }
        assert_eq!(sizes, vec![256, 512, 1024, 2048, 2048, 2048]);
        assert_eq!(ra.window().1, 2048, "the window reached the maximum");
    }
}

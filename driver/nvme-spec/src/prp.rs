//! PRP (Physical Region Page) arithmetic (NVMe over PCIe Transport 1.0 /
//! Base 2.0 "Physical Region Page Entry and List", Figures
//! "PRP Entry Layout" and "PRP List Layout").
//!
//! Rules implemented here (no memory is touched):
//!
//! * PRP1 addresses the first byte of the buffer; it may start at any
//!   **dword aligned** offset in its memory page. Every further page is
//!   described by a page-aligned entry.
//! * If the buffer spans one page, only PRP1 is used; if it spans two,
//!   PRP2 is the address of the second page.
//! * Otherwise PRP2 points to a PRP list: page-sized arrays of 8-byte
//!   entries. A list page holds `page_size / 8` entries; when more entries
//!   follow than fit, its **last** entry instead points to the next list
//!   page. Hence all list pages but the last carry `page_size / 8 - 1` data
//!   entries, and the last carries up to `page_size / 8`.
//!
//! The list arithmetic assumes the driver places each PRP list at the start
//! of a page (the spec allows an offset, which would shrink the first list
//! page).

use core::fmt;

/// Smallest memory page size NVMe supports (CAP.MPSMIN = 0).
pub const MIN_PAGE_SIZE: usize = 4096;
/// Largest memory page size NVMe supports (CAP.MPSMAX = 15, 2^27 bytes).
pub const MAX_PAGE_SIZE: usize = 1 << 27;
/// Size of one PRP entry in bytes.
pub const PRP_ENTRY_SIZE: usize = 8;

/// Why a PRP computation was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrpError {
    /// The page size is not a power of two in 4 KiB..=128 MiB.
    InvalidPageSize(usize),
    /// The buffer address is not dword (4-byte) aligned.
    Misaligned(u64),
    /// A zero-length transfer needs no PRPs (and is not describable).
    EmptyTransfer,
    /// The buffer extends past the end of the 64-bit address space.
    AddressOverflow,
}

impl fmt::Display for PrpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidPageSize(ps) => write!(
                f,
                "invalid memory page size {ps} (must be a power of two in 4096..=134217728)"
            ),
            Self::Misaligned(a) => write!(f, "data buffer address {a:#x} is not dword aligned"),
            Self::EmptyTransfer => f.write_str("zero-length data transfer"),
            Self::AddressOverflow => f.write_str("data buffer wraps the 64-bit address space"),
        }
    }
}

impl core::error::Error for PrpError {}

/// How the data pointer of a command must be filled for one buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrpLayout {
    /// The buffer lies within one page: PRP1 only (PRP2 = 0).
    OneEntry,
    /// The buffer spans exactly two pages: PRP1 and PRP2 = second page.
    TwoEntries,
    /// PRP1 = first page, PRP2 = address of a PRP list.
    List {
        /// Number of data entries in the list (pages spanned − 1).
        entries: usize,
        /// Number of list pages needed, including chained ones.
        list_pages: usize,
    },
}

/// A validated memory page size (CC.MPS) for PRP arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PrpGeometry {
    shift: u32,
}

impl PrpGeometry {
    /// Geometry for the 4 KiB page size.
    pub const PAGE_4K: PrpGeometry = PrpGeometry { shift: 12 };

    /// Validates `page_size` (a power of two in 4 KiB..=128 MiB).
    ///
    /// # Errors
    ///
    /// [`PrpError::InvalidPageSize`].
    pub const fn new(page_size: usize) -> Result<PrpGeometry, PrpError> {
        if page_size.is_power_of_two() && page_size >= MIN_PAGE_SIZE && page_size <= MAX_PAGE_SIZE {
            Ok(PrpGeometry {
                shift: page_size.trailing_zeros(),
            })
        } else {
            Err(PrpError::InvalidPageSize(page_size))
        }
    }

    /// The page size in bytes.
    #[must_use]
    pub const fn page_size(&self) -> usize {
        1 << self.shift
    }

    /// Offset of `iova` within its page.
    #[must_use]
    pub(crate) const fn page_offset(&self, iova: u64) -> usize {
        (iova & (self.page_size() as u64 - 1)) as usize
    }

    /// Number of memory pages touched by `len` bytes starting at `iova`
    /// (0 for `len == 0`). Computed in 128-bit arithmetic, so it never
    /// overflows.
    #[must_use]
    pub(crate) const fn pages_spanned(&self, iova: u64, len: usize) -> usize {
        if len == 0 {
            return 0;
        }
        let end = self.page_offset(iova) as u128 + len as u128;
        let ps = self.page_size() as u128;
        end.div_ceil(ps) as usize
    }

    /// PRP entries per list page (`page_size / 8`).
    #[must_use]
    pub(crate) const fn entries_per_list_page(&self) -> usize {
        self.page_size() / PRP_ENTRY_SIZE
    }

    /// Number of list pages needed for `entries` data entries, taking the
    /// chain entries into account: one page holds up to `page_size / 8`
    /// entries, every additional page adds `page_size / 8 - 1`.
    #[must_use]
    pub const fn list_pages_needed(&self, entries: usize) -> usize {
        let per = self.entries_per_list_page();
        if entries == 0 {
            0
        } else if entries <= per {
            1
        } else {
            (entries - 1).div_ceil(per - 1)
        }
    }

    /// Checks a buffer and returns its page count.
    const fn check(&self, iova: u64, len: usize) -> Result<usize, PrpError> {
        if len == 0 {
            return Err(PrpError::EmptyTransfer);
        }
        if iova & 0b11 != 0 {
            return Err(PrpError::Misaligned(iova));
        }
        if iova as u128 + len as u128 > u64::MAX as u128 + 1 {
            return Err(PrpError::AddressOverflow);
        }
        Ok(self.pages_spanned(iova, len))
    }

    /// How to describe `len` bytes at `iova` with PRPs.
    ///
    /// # Errors
    ///
    /// [`PrpError::EmptyTransfer`] for `len == 0`,
    /// [`PrpError::Misaligned`] if `iova` is not dword aligned and
    /// [`PrpError::AddressOverflow`] if the buffer wraps.
    pub const fn layout(&self, iova: u64, len: usize) -> Result<PrpLayout, PrpError> {
        let pages = match self.check(iova, len) {
            Ok(p) => p,
            Err(e) => return Err(e),
        };
        Ok(match pages {
            0 | 1 => PrpLayout::OneEntry,
            2 => PrpLayout::TwoEntries,
            n => PrpLayout::List {
                entries: n - 1,
                list_pages: self.list_pages_needed(n - 1),
            },
        })
    }

    /// The address each PRP entry must hold, in order: `iova` itself, then
    /// the start of every following page of the buffer.
    ///
    /// # Errors
    ///
    /// As for [`Self::layout`].
    pub const fn page_addresses(&self, iova: u64, len: usize) -> Result<PageAddresses, PrpError> {
        match self.check(iova, len) {
            Ok(pages) => Ok(PageAddresses {
                next: iova,
                remaining: pages,
                page_mask: self.page_size() as u64 - 1,
            }),
            Err(e) => Err(e),
        }
    }
}

/// Iterator over the PRP entry values of a buffer (see
/// [`PrpGeometry::page_addresses`]).
#[derive(Clone, Debug)]
pub struct PageAddresses {
    next: u64,
    remaining: usize,
    page_mask: u64,
}

impl Iterator for PageAddresses {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.remaining == 0 {
            return None;
        }
        let cur = self.next;
        self.remaining -= 1;
        // The last page may end exactly at 2^64; wrapping is harmless since
        // iteration stops there.
        self.next = (cur & !self.page_mask).wrapping_add(self.page_mask + 1);
        Some(cur)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for PageAddresses {}

/// List pages needed for `entries` data entries (see
/// [`PrpGeometry::list_pages_needed`]).
///
/// # Errors
///
/// [`PrpError::InvalidPageSize`].
pub const fn list_pages_needed(entries: usize, page_size: usize) -> Result<usize, PrpError> {
    match PrpGeometry::new(page_size) {
        Ok(g) => Ok(g.list_pages_needed(entries)),
        Err(e) => Err(e),
    }
}

/// Whether memory starting at `next` may follow memory ending at
/// `prev_end` in the data of one PRP-described command: it continues it
/// exactly, or both sit on a page boundary (every PRP entry after the first
/// names a whole page from its start, so a gap is only legal between
/// pages). This is the one rule both a driver checking a request's pieces
/// and a page cache building commands out of folios apply.
#[must_use]
pub const fn may_follow(prev_end: u64, next: u64, page_size: usize) -> bool {
    let mask = page_size as u64 - 1;
    next == prev_end || (prev_end & mask == 0 && next & mask == 0)
}

/// Why a list of memory pieces cannot be one command's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PieceError {
    /// No pieces at all.
    Empty,
    /// Piece `index` has no bytes.
    EmptyPiece {
        /// Position in the list.
        index: usize,
    },
    /// The first piece does not start on a dword.
    Misaligned {
        /// Its address.
        address: u64,
    },
    /// Piece `index` may not follow the one before it ([`may_follow`]).
    Gap {
        /// Position in the list.
        index: usize,
        /// Where the previous piece ends.
        prev_end: u64,
        /// Where this piece starts.
        start: u64,
    },
    /// The pieces wrap the address space or their total overflows.
    Overflow,
}

impl fmt::Display for PieceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("no data pieces"),
            Self::EmptyPiece { index } => write!(f, "data piece {index} is empty"),
            Self::Misaligned { address } => {
                write!(f, "data piece 0 at {address:#x} does not start on a dword")
            }
            Self::Gap {
                index,
                prev_end,
                start,
            } => write!(
                f,
                "data piece {index} at {start:#x} cannot follow the piece ending at \
                 {prev_end:#x} (a gap is only legal between page boundaries)"
            ),
            Self::Overflow => f.write_str("data pieces overflow the address space"),
        }
    }
}

impl core::error::Error for PieceError {}

/// Checks that `pieces` (address, length) can be one command's data
/// under PRPs of `page_size` (a power of two); returns their total length.
///
/// # Errors
///
/// The first rule broken, as a [`PieceError`].
pub fn check_pieces(pieces: &[(u64, usize)], page_size: usize) -> Result<usize, PieceError> {
    let Some(&(first, _)) = pieces.first() else {
        return Err(PieceError::Empty);
    };
    if first % 4 != 0 {
        return Err(PieceError::Misaligned { address: first });
    }
    let mut total = 0usize;
    let mut prev_end = None;
    for (index, &(start, len)) in pieces.iter().enumerate() {
        if len == 0 {
            return Err(PieceError::EmptyPiece { index });
        }
        if let Some(prev_end) = prev_end
            && !may_follow(prev_end, start, page_size)
        {
            return Err(PieceError::Gap {
                index,
                prev_end,
                start,
            });
        }
        let end = start.checked_add(len as u64).ok_or(PieceError::Overflow)?;
        prev_end = Some(end);
        total = total.checked_add(len).ok_or(PieceError::Overflow)?;
    }
    Ok(total)
}

/// Calls `entry` with the PRP entries of bytes `start..start + len` of
/// the data made of `pieces` (checked by [`check_pieces`]): the first
/// byte's address, then the start of every further page the bytes touch,
/// each page once even when pieces continue each other inside it.
pub fn piece_entries(
    pieces: &[(u64, usize)],
    start: usize,
    len: usize,
    page_size: usize,
    mut entry: impl FnMut(u64),
) {
    let page = page_size as u64;
    let end = start.saturating_add(len);
    let mut pos = 0usize;
    let mut last_page = None;
    for &(address, piece_len) in pieces {
        let (piece_start, piece_end) = (pos, pos.saturating_add(piece_len));
        pos = piece_end;
        if piece_end <= start {
            continue;
        }
        if piece_start >= end {
            break;
        }
        let from = address + (start.max(piece_start) - piece_start) as u64;
        let to = address + (end.min(piece_end) - piece_start) as u64;
        let mut at = from & !(page - 1);
        if last_page != Some(at) {
            entry(if last_page.is_none() { from } else { at });
        }
        last_page = Some(at);
        at += page;
        while at < to {
            entry(at);
            last_page = Some(at);
            at += page;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;
    use std::vec::Vec;

    const G: PrpGeometry = PrpGeometry::PAGE_4K;

    #[test]
    fn page_size_validation() {
        for ps in [0usize, 1, 512, 2048, 4095, 4097, 6144, 1 << 28, usize::MAX] {
            assert_eq!(PrpGeometry::new(ps), Err(PrpError::InvalidPageSize(ps)));
            assert!(list_pages_needed(1, ps).is_err());
        }
        for shift in 12..=27u32 {
            let g = PrpGeometry::new(1 << shift).expect("valid");
            assert_eq!(g.page_size(), 1 << shift);
        }
        assert_eq!(PrpGeometry::new(4096), Ok(G));
        assert!(
            PrpError::InvalidPageSize(3)
                .to_string()
                .starts_with("invalid memory page size 3")
        );
    }

    #[test]
    fn spec_examples_4k() {
        let l = |iova, len| G.layout(iova, len).expect("valid");
        assert_eq!(l(0, 512), PrpLayout::OneEntry);
        assert_eq!(l(0, 4096), PrpLayout::OneEntry);
        assert_eq!(l(3584, 512), PrpLayout::OneEntry);
        assert_eq!(l(0, 4097), PrpLayout::TwoEntries);
        assert_eq!(l(0, 8192), PrpLayout::TwoEntries);
        assert_eq!(l(512, 4096), PrpLayout::TwoEntries);
        assert_eq!(l(4092, 8), PrpLayout::TwoEntries);
        assert_eq!(
            l(0, 12288),
            PrpLayout::List {
                entries: 2,
                list_pages: 1
            }
        );
        assert_eq!(
            l(512, 8192),
            PrpLayout::List {
                entries: 2,
                list_pages: 1
            }
        );
        // 128 KiB page aligned: 32 pages, 31 list entries.
        assert_eq!(
            l(0x10_0000, 128 * 1024),
            PrpLayout::List {
                entries: 31,
                list_pages: 1
            }
        );
        // 513 pages: 512 list entries fit exactly in one list page.
        assert_eq!(
            l(0, 513 * 4096),
            PrpLayout::List {
                entries: 512,
                list_pages: 1
            }
        );
        // 514 pages: 513 entries need a chained second list page
        // (511 + chain pointer, then 2).
        assert_eq!(
            l(0, 514 * 4096),
            PrpLayout::List {
                entries: 513,
                list_pages: 2
            }
        );
    }

    #[test]
    fn errors() {
        assert_eq!(G.layout(0, 0), Err(PrpError::EmptyTransfer));
        assert_eq!(G.layout(2, 8), Err(PrpError::Misaligned(2)));
        assert_eq!(G.layout(4097, 8), Err(PrpError::Misaligned(4097)));
        assert_eq!(G.layout(u64::MAX - 3, 8), Err(PrpError::AddressOverflow));
        // Ending exactly at 2^64 is fine.
        assert_eq!(G.layout(u64::MAX - 3, 4), Ok(PrpLayout::OneEntry));
        assert_eq!(G.layout(u64::MAX - 4095, 4096), Ok(PrpLayout::OneEntry));
        assert_eq!(
            G.layout(u64::MAX - 4095, 4097),
            Err(PrpError::AddressOverflow)
        );
        assert!(G.page_addresses(1, 1).is_err());
        assert!(G.page_addresses(0, 0).is_err());
        // Huge lengths do not overflow.
        let big = G.layout(0, usize::MAX);
        assert_eq!(
            big,
            Ok(PrpLayout::List {
                entries: usize::MAX / 4096,
                list_pages: G.list_pages_needed(usize::MAX / 4096)
            })
        );
        assert_eq!(G.pages_spanned(4092, usize::MAX), usize::MAX / 4096 + 2);
    }

    #[test]
    fn list_pages() {
        assert_eq!(G.entries_per_list_page(), 512);
        let g64k = PrpGeometry::new(65536).expect("valid");
        assert_eq!(g64k.entries_per_list_page(), 8192);
        let cases = [
            (0usize, 0usize),
            (1, 1),
            (2, 1),
            (511, 1),
            (512, 1),
            (513, 2),
            (1022, 2),
            (1023, 2),
            (1024, 3),
            (1534, 3),
            (1535, 4),
        ];
        for (entries, pages) in cases {
            assert_eq!(G.list_pages_needed(entries), pages, "{entries} entries");
            assert_eq!(list_pages_needed(entries, 4096), Ok(pages));
        }
        assert_eq!(list_capacity(&G, 0), 0);
        assert_eq!(list_capacity(&G, 1), 512);
        assert_eq!(list_capacity(&G, 2), 1023);
        assert_eq!(list_capacity(&G, 3), 1534);
        assert_eq!(max_transfer_for_list_pages(&G, 0), 8192);
        assert_eq!(max_transfer_for_list_pages(&G, 1), 513 * 4096);
        assert_eq!(max_transfer_for_list_pages(&G, 2), 1024 * 4096);
        assert_eq!(max_transfer_for_list_pages(&G, usize::MAX), u64::MAX);
        assert_eq!(
            G.list_pages_needed(usize::MAX),
            (usize::MAX - 1).div_ceil(511)
        );
    }

    /// Oracle: the most data entries `list_pages` list pages carry (the
    /// first holds a full page of entries, each chained one one less).
    fn list_capacity(g: &PrpGeometry, list_pages: usize) -> usize {
        if list_pages == 0 {
            0
        } else {
            list_pages
                .saturating_mul(g.entries_per_list_page() - 1)
                .saturating_add(1)
        }
    }

    /// Oracle: the largest page-aligned transfer `n` list pages describe
    /// (`n == 0`: PRP1 + PRP2, two pages), saturating.
    fn max_transfer_for_list_pages(g: &PrpGeometry, n: usize) -> u64 {
        let pages = if n == 0 {
            2u64
        } else {
            (list_capacity(g, n) as u64).saturating_add(1)
        };
        pages.saturating_mul(g.page_size() as u64)
    }

    /// Simulates filling list pages entry by entry, chaining when a page is
    /// full and more entries remain.
    fn simulate_list_pages(entries: usize, per: usize) -> usize {
        let mut left = entries;
        let mut pages = 0;
        while left > 0 {
            pages += 1;
            if left <= per {
                left = 0;
            } else {
                left -= per - 1;
            }
        }
        pages
    }

    #[test]
    fn list_pages_match_simulation() {
        for ps in [4096usize, 8192, 65536] {
            let g = PrpGeometry::new(ps).expect("valid");
            let per = ps / 8;
            for entries in 0..(per * 5) {
                let pages = simulate_list_pages(entries, per);
                assert_eq!(
                    g.list_pages_needed(entries),
                    pages,
                    "ps {ps} entries {entries}"
                );
                assert!(list_capacity(&g, pages) >= entries);
                if pages > 0 {
                    assert!(list_capacity(&g, pages - 1) < entries);
                }
            }
        }
    }

    /// Brute force: the pages a buffer touches, byte range by byte range.
    fn brute_pages(iova: u64, len: usize, ps: u64) -> Vec<u64> {
        let first = iova / ps;
        let last = (iova + len as u64 - 1) / ps;
        (first..=last).collect()
    }

    #[test]
    fn exhaustive_small_ranges() {
        for ps in [4096usize, 16384] {
            let g = PrpGeometry::new(ps).expect("valid");
            let ps64 = ps as u64;
            for base in [0u64, 0x7fff_0000_0000] {
                for off in (0..2 * ps64).step_by(4 * 61) {
                    let iova = base + off;
                    for len in (1..5 * ps).step_by(509).chain([ps, 2 * ps, 3 * ps, 4]) {
                        let pages = brute_pages(iova, len, ps64);
                        assert_eq!(g.pages_spanned(iova, len), pages.len());
                        let layout = g.layout(iova, len).expect("valid");
                        match pages.len() {
                            1 => assert_eq!(layout, PrpLayout::OneEntry),
                            2 => assert_eq!(layout, PrpLayout::TwoEntries),
                            n => assert_eq!(
                                layout,
                                PrpLayout::List {
                                    entries: n - 1,
                                    list_pages: simulate_list_pages(n - 1, ps / 8),
                                }
                            ),
                        }
                        let addrs: Vec<u64> = g.page_addresses(iova, len).expect("valid").collect();
                        assert_eq!(addrs.len(), pages.len());
                        assert_eq!(addrs[0], iova);
                        for (a, p) in addrs.iter().zip(&pages).skip(1) {
                            assert_eq!(*a, p * ps64);
                        }
                        // Fits into what the computed list pages can carry.
                        if let PrpLayout::List { list_pages, .. } = layout {
                            assert!(
                                max_transfer_for_list_pages(&g, list_pages)
                                    >= (len + g.page_offset(iova)) as u64
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn page_addresses_at_top_of_address_space() {
        let iova = u64::MAX - 8191;
        let a: Vec<u64> = G.page_addresses(iova, 8192).expect("valid").collect();
        assert_eq!(a, [u64::MAX - 8191, u64::MAX - 4095]);
        let it = G.page_addresses(0x1000 + 8, 3 * 4096).expect("valid");
        assert_eq!(it.len(), 4);
        assert_eq!(it.collect::<Vec<_>>(), [0x1008, 0x2000, 0x3000, 0x4000]);
        assert_eq!(G.page_offset(0x1234), 0x234);
    }

    #[test]
    fn piece_rules() {
        const P: usize = 4096;
        assert_eq!(
            check_pieces(&[(0x1000, 4096), (0x9000, 8192)], P),
            Ok(12288)
        );
        assert!(
            check_pieces(&[(0x1200, 3584), (0x9000, 100)], P).is_ok(),
            "the first may start mid-page"
        );
        assert!(
            check_pieces(&[(0x1000, 0x200), (0x1200, 0x100)], P).is_ok(),
            "a piece continuing the previous one exactly"
        );
        assert_eq!(
            check_pieces(&[(0x1000, 512), (0x9000, 100)], P),
            Err(PieceError::Gap {
                index: 1,
                prev_end: 0x1200,
                start: 0x9000
            }),
            "the first ends mid-page and the next is elsewhere"
        );
        assert!(
            check_pieces(&[(0x1000, 4096), (0x9200, 100)], P).is_err(),
            "the second starts mid-page elsewhere"
        );
        assert_eq!(
            check_pieces(&[(0x1002, 4096)], P),
            Err(PieceError::Misaligned { address: 0x1002 })
        );
        assert_eq!(check_pieces(&[], P), Err(PieceError::Empty));
        assert_eq!(
            check_pieces(&[(0x1000, 0)], P),
            Err(PieceError::EmptyPiece { index: 0 })
        );
        assert_eq!(
            check_pieces(&[(u64::MAX - 3, 8)], P),
            Err(PieceError::Overflow)
        );
        assert!(may_follow(0x2000, 0x7000, P) && may_follow(0x2200, 0x2200, P));
        assert!(!may_follow(0x2200, 0x3000, P) && !may_follow(0x2000, 0x3200, P));
    }

    fn entries(pieces: &[(u64, usize)], start: usize, len: usize) -> Vec<u64> {
        let mut out = Vec::new();
        piece_entries(pieces, start, len, 4096, |e| out.push(e));
        out
    }

    #[test]
    fn piece_entries_cover_a_window() {
        let pieces = [
            (0x10_0000u64, 8192usize),
            (0x50_0000, 4096),
            (0x90_0000, 12288),
        ];
        assert_eq!(
            entries(&pieces, 0, 24576),
            [
                0x10_0000, 0x10_1000, 0x50_0000, 0x90_0000, 0x90_1000, 0x90_2000
            ]
        );
        // A window starting mid-page of the first piece, ending in the third.
        assert_eq!(
            entries(&pieces, 6144, 8192),
            [0x10_1800, 0x50_0000, 0x90_0000]
        );
        // Entirely inside the last piece.
        assert_eq!(entries(&pieces, 16384, 512), [0x90_1000]);
        // Pieces continuing each other inside a page name the page once.
        let joined = [
            (0x10_0200u64, 0x200usize),
            (0x10_0400, 0xc00),
            (0x10_1000, 0x1000),
        ];
        assert_eq!(entries(&joined, 0, 0x1e00), [0x10_0200, 0x10_1000]);
    }

    proptest::proptest! {
        /// The entries of checked pieces name the same pages as the bytes
        /// they hold, in order: the first byte's address, then each further
        /// page once.
        #[test]
        fn piece_entries_match_the_bytes(
            pages in proptest::collection::vec((0u64..64, 1usize..3), 1..6),
            head in 0usize..1024,
            cut in 0usize..4096,
        ) {
            const P: u64 = 4096;
            // Whole-page pieces at scattered pages; the first starts at a
            // dword offset, the last may end mid-page.
            let mut pieces: std::vec::Vec<(u64, usize)> = pages
                .iter()
                .enumerate()
                .map(|(i, &(page, n))| ((i as u64 * 128 + page) * P, n * P as usize))
                .collect();
            let head = head * 4;
            pieces[0].0 += head as u64;
            pieces[0].1 -= head;
            let last = pieces.len() - 1;
            pieces[last].1 = pieces[last].1.saturating_sub(cut).max(1);
            let total = check_pieces(&pieces, P as usize).expect("legal pieces");
            let mut want = std::vec::Vec::new();
            for &(a, l) in &pieces {
                for b in [a].into_iter().chain((a / P + 1..(a + l as u64).div_ceil(P)).map(|p| p * P)) {
                    if want.last().is_none_or(|&w: &u64| w / P != b / P) {
                        want.push(if want.is_empty() { b } else { b / P * P });
                    }
                }
            }
            proptest::prop_assert_eq!(entries(&pieces, 0, total), want);
        }
    }
}

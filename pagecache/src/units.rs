//! The units the page cache counts in: pages, folio orders, block sizes.
//! A leaf: it depends on nothing in the crate but the error type.

use crate::error::{Error, Result};

/// Bytes in a page: the unit of folio indices.
pub const PAGE_SIZE: usize = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
/// Largest folio order: 2^9 pages = 2 MiB.
pub const MAX_ORDER: u8 = 9;

/// A folio order: the folio holds 2^order pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FolioOrder(u8);

impl FolioOrder {
    /// A single page.
    pub const ZERO: FolioOrder = FolioOrder(0);

    /// Order `order`, which must be at most [`MAX_ORDER`].
    pub fn new(order: u8) -> Result<Self> {
        if order > MAX_ORDER {
            return Err(Error::BadOrder(order));
        }
        Ok(FolioOrder(order))
    }

    /// The order as a number.
    pub fn get(self) -> u8 {
        self.0
    }

    /// Pages in a folio of this order.
    pub fn pages(self) -> u64 {
        1 << self.0
    }

    /// Bytes in a folio of this order.
    pub fn size(self) -> usize {
        PAGE_SIZE << self.0
    }
}

/// A file system block size: a power of two in 512..=4096 (`bs` in
/// docs/MPAGE.md; R1 forbids blocks smaller than the LBA size, which the
/// I/O layer checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockSize(u32);

impl BlockSize {
    /// Block size equal to the page size.
    pub const PAGE: BlockSize = BlockSize(PAGE_SIZE as u32);

    /// `bytes`, which must be a power of two in 512..=4096.
    pub fn new(bytes: usize) -> Result<Self> {
        if !bytes.is_power_of_two() || !(512..=PAGE_SIZE).contains(&bytes) {
            return Err(Error::BadBlockSize(bytes));
        }
        Ok(BlockSize(bytes as u32))
    }

    /// The size in bytes.
    pub fn bytes(self) -> usize {
        self.0 as usize
    }
}

// `Error::BadOrder`'s message names the bound.
const _: () = assert!(MAX_ORDER == 9, "update Error::BadOrder's message");

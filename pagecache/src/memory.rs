//! Where folio memory comes from.
//!
//! The cache never touches memory directly: a [`FolioMemory`] hands out
//! [`FolioBacking`]s, runs of bytes the device can reach at [`FolioBacking::iova`]
//! and the CPU can only copy in and out of (DMA memory may change under a
//! reader while a command is in flight, so no reference to its bytes is
//! ever handed out). The driver's `DmaBuffer` fits this shape; the I/O
//! layer implements the traits over it. [`VecMemory`] serves tests.

use parking_lot::Mutex;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::units::FolioOrder;

/// The memory of one folio: `len()` bytes at device address `iova()`.
pub trait FolioBacking: Send + Sync + fmt::Debug {
    /// Length in bytes (the folio size).
    fn len(&self) -> usize;
    /// Whether the backing is empty (never, for folio memory).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Device address of byte 0, 4 KiB aligned; the I/O layer builds PRPs
    /// from it.
    fn iova(&self) -> u64;
    /// Copies `out.len()` bytes out from `offset`.
    fn read(&self, offset: usize, out: &mut [u8]) -> Result<()>;
    /// Copies `data` in at `offset`.
    fn write(&self, offset: usize, data: &[u8]) -> Result<()>;
    /// Sets `len` bytes from `offset` to `byte`.
    fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<()>;
}

/// A source of folio memory.
pub trait FolioMemory: Send + Sync + fmt::Debug {
    /// A backing of `order.size()` bytes, 4 KiB aligned in device address
    /// space. Its contents are unspecified (old data of the same process,
    /// like a kernel page): the cache exposes only bytes that were read
    /// from the device, written, or zeroed explicitly, so it never pays
    /// for zeroing memory the device is about to fill.
    fn alloc(&self, order: FolioOrder) -> Result<Box<dyn FolioBacking>>;

    /// Prepares `bytes` of folio memory ahead of use (maps and pins it, for
    /// device memory), so that allocations within it cost little: call it
    /// with the cache's budget before the I/O starts. A hint; the default
    /// does nothing.
    fn reserve(&self, bytes: u64) -> Result<()> {
        let _ = bytes;
        Ok(())
    }
}

/// Folio memory on the heap, for tests and for running without a device.
/// Device addresses are fake but unique and 4 KiB aligned. New folios are
/// filled with [`VecMemory::POISON`], so a test sees any byte the cache
/// exposes without having read, written or zeroed it.
#[derive(Debug)]
pub struct VecMemory {
    next_iova: AtomicU64,
}

impl VecMemory {
    /// The byte new folios are filled with.
    pub const POISON: u8 = 0xA5;

    /// A provider whose first folio sits at fake device address 1 MiB.
    pub fn new() -> Self {
        VecMemory {
            next_iova: AtomicU64::new(1 << 20),
        }
    }
}

impl Default for VecMemory {
    fn default() -> Self {
        Self::new()
    }
}

impl FolioMemory for VecMemory {
    fn alloc(&self, order: FolioOrder) -> Result<Box<dyn FolioBacking>> {
        let len = order.size();
        let iova = self.next_iova.fetch_add(len as u64, Ordering::Relaxed);
        Ok(Box::new(VecBacking {
            iova,
            bytes: Mutex::new(vec![Self::POISON; len]),
        }))
    }
}

/// One heap-backed folio.
#[derive(Debug)]
pub struct VecBacking {
    iova: u64,
    bytes: Mutex<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{len} bytes at offset {offset} do not fit a {size}-byte buffer")]
struct OutOfBounds {
    offset: usize,
    len: usize,
    size: usize,
}

impl VecBacking {
    fn span(&self, size: usize, offset: usize, len: usize) -> Result<std::ops::Range<usize>> {
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(offset..end),
            _ => Err(Error::Memory(Box::new(OutOfBounds { offset, len, size }))),
        }
    }
}

impl FolioBacking for VecBacking {
    fn len(&self) -> usize {
        self.bytes.lock().len()
    }

    fn iova(&self) -> u64 {
        self.iova
    }

    fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        let bytes = self.bytes.lock();
        let span = self.span(bytes.len(), offset, out.len())?;
        out.copy_from_slice(&bytes[span]);
        Ok(())
    }

    fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        let mut bytes = self.bytes.lock();
        let span = self.span(bytes.len(), offset, data.len())?;
        bytes[span].copy_from_slice(data);
        Ok(())
    }

    fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<()> {
        let mut bytes = self.bytes.lock();
        let span = self.span(bytes.len(), offset, len)?;
        bytes[span].fill(byte);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vec_memory_gives_unique_aligned_poisoned_folios() {
        let mem = VecMemory::new();
        let a = mem.alloc(FolioOrder::new(0).unwrap()).unwrap();
        let b = mem.alloc(FolioOrder::new(2).unwrap()).unwrap();
        assert_eq!(a.len(), 4096);
        assert_eq!(b.len(), 16384);
        assert_eq!(a.iova() % 4096, 0);
        assert_eq!(b.iova() % 4096, 0);
        assert!(b.iova() >= a.iova() + 4096, "ranges must not overlap");
        let mut out = [1u8; 16];
        b.read(16368, &mut out).unwrap();
        assert_eq!(out, [VecMemory::POISON; 16]);
    }

    #[test]
    fn vec_backing_copies_and_checks_bounds() {
        let mem = VecMemory::new();
        let a = mem.alloc(FolioOrder::new(0).unwrap()).unwrap();
        a.write(10, b"abc").unwrap();
        a.fill(13, 2, 0x55).unwrap();
        let mut out = [0u8; 6];
        a.read(9, &mut out).unwrap();
        assert_eq!(&out, b"\xA5abcUU");
        assert!(a.write(4095, b"xy").is_err());
        assert!(a.fill(usize::MAX, 2, 0).is_err());
        assert!(a.read(4097, &mut []).is_err());
    }
}

//! A memory-mapped BAR: volatile, bounds-checked register access.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// A BAR mapped from the VFIO device file.
#[derive(Debug)]
pub(crate) struct MmioBar {
    base: NonNull<u8>,
    len: usize,
    /// The device mapping was replaced by all-ones memory ([`MmioBar::retire`]).
    retired: AtomicBool,
}

// SAFETY: the mapping is plain MMIO owned by this value; accesses are
// volatile and the device serialises them, so it may move between threads
// and be shared (register writes from several threads are the caller's
// ordering problem, not a memory-safety one).
unsafe impl Send for MmioBar {}
// SAFETY: as for Send: every access is a single volatile load or store.
unsafe impl Sync for MmioBar {}

impl MmioBar {
    /// Maps `len` bytes at `offset` of the device file `fd`.
    pub(crate) fn map(fd: std::os::fd::RawFd, offset: u64, len: usize) -> Result<MmioBar> {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| Error::BadDevice(format!("BAR offset {offset:#x} out of range")))?;
        if len == 0 {
            return Err(Error::BadDevice("BAR0 has size 0".into()));
        }
        // SAFETY: a fresh shared mapping of the device file chosen by the
        // kernel (no fixed address), so it aliases no Rust memory.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                off,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::os(
                format!("mmap of BAR0 ({len} bytes)"),
                std::io::Error::last_os_error(),
            ));
        }
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| Error::BadDevice("mmap returned null".into()))?;
        Ok(MmioBar {
            base,
            len,
            retired: AtomicBool::new(false),
        })
    }

    /// Length of the mapping in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn check(&self, offset: usize, size: usize) -> Result<*mut u8> {
        if !offset.is_multiple_of(size) || offset.checked_add(size).is_none_or(|end| end > self.len)
        {
            return Err(Error::BadDevice(format!(
                "register access of {size} bytes at {offset:#x} outside BAR0 ({:#x} bytes)",
                self.len
            )));
        }
        // SAFETY: offset + size <= len, so the result stays inside the mapping.
        Ok(unsafe { self.base.as_ptr().add(offset) })
    }

    /// Reads a 32-bit register.
    #[inline]
    pub(crate) fn read32(&self, offset: usize) -> Result<u32> {
        let p = self.check(offset, 4)?;
        // SAFETY: p is inside the live mapping and 4-byte aligned (checked).
        Ok(u32::from_le(unsafe { p.cast::<u32>().read_volatile() }))
    }

    /// Reads a 64-bit register (one 8-byte access: QEMU accepts up to 8).
    #[inline]
    pub(crate) fn read64(&self, offset: usize) -> Result<u64> {
        let p = self.check(offset, 8)?;
        // SAFETY: p is inside the live mapping and 8-byte aligned (checked).
        Ok(u64::from_le(unsafe { p.cast::<u64>().read_volatile() }))
    }

    /// Writes a 32-bit register.
    #[inline]
    pub(crate) fn write32(&self, offset: usize, value: u32) -> Result<()> {
        let p = self.check(offset, 4)?;
        // SAFETY: p is inside the live mapping and 4-byte aligned (checked).
        unsafe { p.cast::<u32>().write_volatile(value.to_le()) };
        Ok(())
    }

    /// Writes a 64-bit register.
    #[inline]
    pub(crate) fn write64(&self, offset: usize, value: u64) -> Result<()> {
        let p = self.check(offset, 8)?;
        // SAFETY: p is inside the live mapping and 8-byte aligned (checked).
        unsafe { p.cast::<u64>().write_volatile(value.to_le()) };
        Ok(())
    }
}

impl MmioBar {
    /// Gives the device's pages back while the address range stays valid:
    /// the range is replaced, in one step, by private anonymous memory
    /// filled with all-ones. A thread reading a register meanwhile reads
    /// either the device or all-ones (what a PCI read of a vanished device
    /// returns); a write lands in the device or in that memory. The
    /// mapping of the device file is gone afterwards, so it no longer
    /// holds the VFIO device open. Idempotent.
    pub(crate) fn retire(&self) -> Result<()> {
        if self.retired.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // SAFETY: a fresh private anonymous mapping chosen by the kernel;
        // it aliases no Rust memory.
        let fill = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                self.len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if fill == libc::MAP_FAILED {
            self.retired.store(false, Ordering::Release);
            return Err(Error::os(
                "mmap of all-ones memory to stand in for BAR0",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: `fill` is the fresh mapping of `len` bytes made above,
        // writable, used by nothing else yet.
        unsafe { std::ptr::write_bytes(fill.cast::<u8>(), 0xff, self.len) };
        // SAFETY: moves `fill` onto [base, base + len), the range this
        // value owns (BAR sizes are powers of two of at least 8 KiB, so
        // page multiples). MREMAP_FIXED replaces the old mapping atomically:
        // the range is never unmapped, so a concurrent volatile access
        // through `base` (other threads may still hold `&self`) always
        // hits mapped memory. `Drop` later unmaps the same range.
        let moved = unsafe {
            libc::mremap(
                fill,
                self.len,
                self.len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                self.base.as_ptr().cast::<libc::c_void>(),
            )
        };
        if moved == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            // SAFETY: `fill` is still the mapping made above (mremap failed).
            unsafe { libc::munmap(fill, self.len) };
            self.retired.store(false, Ordering::Release);
            return Err(Error::os("mremap of all-ones memory over BAR0", e));
        }
        Ok(())
    }
}

impl Drop for MmioBar {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly the mapping made in `map`, and no
        // pointer into it outlives self.
        if unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) } != 0 {
            log::warn!("munmap of BAR0 failed: {}", std::io::Error::last_os_error());
        }
    }
}

//! A memory-mapped BAR: volatile, bounds-checked register access.

use std::ptr::NonNull;

use crate::error::{Error, Result};

/// A BAR mapped from the VFIO device file (or, for a mock controller, an
/// anonymous mapping standing in for one).
#[derive(Debug)]
pub(crate) struct Bar {
    base: NonNull<u8>,
    len: usize,
    /// Called after every register write (mock controllers only).
    #[cfg(any(test, feature = "test-utils"))]
    hook: std::sync::OnceLock<WriteHook>,
}

/// What a mock controller runs after each register write to an
/// [`Bar::anonymous`] BAR: `(bar, offset, value written)`.
#[cfg(any(test, feature = "test-utils"))]
pub(crate) type WriteHookFn = dyn Fn(&Bar, usize, u64) + Send + Sync;

#[cfg(any(test, feature = "test-utils"))]
pub(crate) struct WriteHook(Box<WriteHookFn>);

#[cfg(any(test, feature = "test-utils"))]
impl std::fmt::Debug for WriteHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteHook")
    }
}

// SAFETY: the mapping is plain MMIO owned by this value; accesses are
// volatile and the device serialises them, so it may move between threads
// and be shared (register writes from several threads are the caller's
// ordering problem, not a memory-safety one).
unsafe impl Send for Bar {}
// SAFETY: as for Send: every access is a single volatile load or store.
unsafe impl Sync for Bar {}

impl Bar {
    /// Maps `len` bytes at `offset` of the device file `fd`.
    pub(crate) fn map(fd: std::os::fd::RawFd, offset: u64, len: usize) -> Result<Bar> {
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
        Ok(Bar::from_mapping(base, len))
    }

    /// Takes ownership of a live mapping of `len` bytes at `base`.
    fn from_mapping(base: NonNull<u8>, len: usize) -> Bar {
        Bar {
            base,
            len,
            #[cfg(any(test, feature = "test-utils"))]
            hook: std::sync::OnceLock::new(),
        }
    }

    /// A stand-in for BAR0 in host memory: `len` zeroed bytes of a private
    /// anonymous mapping, so that register and doorbell writes land where
    /// a mock controller can read them back with [`Bar::read32`].
    #[cfg(any(test, feature = "test-utils"))]
    pub(crate) fn anonymous(len: usize) -> Result<Bar> {
        if len == 0 {
            return Err(Error::BadBuffer("anonymous BAR of 0 bytes".into()));
        }
        // The same zeroed private anonymous mapping DMA memory uses.
        let (base, len) = super::dma::anon_mmap(len, false)?;
        Ok(Bar::from_mapping(base, len))
    }

    /// Installs the function run after every register write (once; a mock
    /// controller uses it to act on doorbells synchronously).
    #[cfg(any(test, feature = "test-utils"))]
    pub(crate) fn set_write_hook(&self, hook: Box<WriteHookFn>) -> Result<()> {
        self.hook
            .set(WriteHook(hook))
            .map_err(|_| Error::BadDevice("BAR write hook already set".into()))
    }

    #[cfg(any(test, feature = "test-utils"))]
    fn after_write(&self, offset: usize, value: u64) {
        if let Some(hook) = self.hook.get() {
            (hook.0)(self, offset, value);
        }
    }

    #[cfg(not(any(test, feature = "test-utils")))]
    fn after_write(&self, _offset: usize, _value: u64) {}

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
    pub(crate) fn read32(&self, offset: usize) -> Result<u32> {
        let p = self.check(offset, 4)?;
        // SAFETY: p is inside the live mapping and 4-byte aligned (checked).
        Ok(u32::from_le(unsafe { p.cast::<u32>().read_volatile() }))
    }

    /// Reads a 64-bit register (one 8-byte access: QEMU accepts up to 8).
    pub(crate) fn read64(&self, offset: usize) -> Result<u64> {
        let p = self.check(offset, 8)?;
        // SAFETY: p is inside the live mapping and 8-byte aligned (checked).
        Ok(u64::from_le(unsafe { p.cast::<u64>().read_volatile() }))
    }

    /// Writes a 32-bit register.
    pub(crate) fn write32(&self, offset: usize, value: u32) -> Result<()> {
        let p = self.check(offset, 4)?;
        // SAFETY: p is inside the live mapping and 4-byte aligned (checked).
        unsafe { p.cast::<u32>().write_volatile(value.to_le()) };
        self.after_write(offset, u64::from(value));
        Ok(())
    }

    /// Writes a 64-bit register.
    pub(crate) fn write64(&self, offset: usize, value: u64) -> Result<()> {
        let p = self.check(offset, 8)?;
        // SAFETY: p is inside the live mapping and 8-byte aligned (checked).
        unsafe { p.cast::<u64>().write_volatile(value.to_le()) };
        self.after_write(offset, value);
        Ok(())
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly the mapping made in `map` (or
        // `anonymous`), and no pointer into it outlives self.
        if unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) } != 0 {
            log::warn!("munmap of BAR0 failed: {}", std::io::Error::last_os_error());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn anonymous_bar_keeps_what_is_written_and_runs_the_hook() {
        let bar = Bar::anonymous(0x2000).expect("mapping");
        assert_eq!(bar.len(), 0x2000);
        assert_eq!(bar.read64(0).expect("read"), 0, "starts zeroed");
        let seen = Arc::new(AtomicU64::new(0));
        let s = seen.clone();
        bar.set_write_hook(Box::new(move |bar: &Bar, offset, value| {
            assert_eq!(
                bar.read32(offset).ok().map(u64::from),
                Some(value & 0xffff_ffff)
            );
            s.store((offset as u64) << 32 | value, Ordering::SeqCst);
        }))
        .expect("first hook");
        assert!(bar.set_write_hook(Box::new(|_: &Bar, _, _| {})).is_err());
        bar.write32(0x1008, 7).expect("write");
        assert_eq!(bar.read32(0x1008).expect("read"), 7);
        assert_eq!(seen.load(Ordering::SeqCst), 0x1008 << 32 | 7);
        assert!(bar.write32(0x2000, 1).is_err(), "past the end");
        assert!(bar.read32(0x1002).is_err(), "misaligned");
        assert!(Bar::anonymous(0).is_err());
    }
}

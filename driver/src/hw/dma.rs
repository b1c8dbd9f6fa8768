//! Device-visible memory: anonymous mappings pinned and mapped into the
//! IOMMU, accessed only through raw pointers.

use std::ptr::NonNull;
use std::sync::Arc;

use crate::error::{Error, Result};

/// Size of a 2 MiB huge page.
pub(crate) const HUGE_PAGE: usize = 2 << 20;
/// The page size the driver uses for queues, PRPs and buffers.
pub(crate) const PAGE: usize = 4096;

/// Maps host memory for device access (the IOMMU), choosing the IOVA.
pub(crate) trait DmaMapper: Send + Sync + std::fmt::Debug {
    /// Maps `len` bytes at `va` and returns the IOVA the device must use.
    ///
    /// # Safety
    /// `va..va+len` must be a live, page-aligned mapping that stays mapped
    /// until [`DmaMapper::unmap`] is called for the returned IOVA.
    unsafe fn map(&self, va: *mut u8, len: usize) -> Result<u64>;
    /// Removes the mapping made by `map`.
    fn unmap(&self, iova: u64, len: usize) -> Result<()>;
    /// Fault injection: removes the device's access to the mapping made by
    /// `map` at `iova` but keeps the IOVA reserved (nothing else is mapped
    /// there, so a device still using it faults instead of reaching other
    /// memory) until [`DmaMapper::restore`].
    #[cfg(feature = "fault-injection")]
    fn revoke(&self, iova: u64, len: usize) -> Result<()>;
    /// Maps `va` at the `iova` that [`DmaMapper::revoke`] took away.
    ///
    /// # Safety
    /// As for [`DmaMapper::map`]; `iova`/`len` are those of a revoked
    /// mapping of `va`.
    #[cfg(feature = "fault-injection")]
    unsafe fn restore(&self, va: *mut u8, iova: u64, len: usize) -> Result<()>;
}

/// IOVA = VA, for a device emulated in this process (the mock controller),
/// with no IOMMU. It remembers every live mapping so the emulation can play
/// the device: it reads and writes
/// host memory by IOVA, and only inside a region that is mapped at the
/// time of the access (anything else is a DMA error, as an IOMMU would
/// make it).
#[derive(Debug, Default)]
pub(crate) struct HostMapper {
    /// Start IOVA (= VA) -> length of each live mapping.
    regions: std::sync::Mutex<std::collections::BTreeMap<u64, usize>>,
}

impl HostMapper {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, usize>> {
        self.regions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pointer for `len` bytes at `iova` if they lie inside one live
    /// mapping. Only valid while `regions` stays locked by the caller.
    fn resolve(
        regions: &std::collections::BTreeMap<u64, usize>,
        iova: u64,
        len: usize,
    ) -> Result<*mut u8> {
        let end = iova.checked_add(len as u64);
        match (regions.range(..=iova).next_back(), end) {
            (Some((&start, &size)), Some(end))
                if end <= start.saturating_add(size as u64) && len > 0 =>
            {
                // The address was exposed by `map` (IOVA = VA).
                Ok(std::ptr::with_exposed_provenance_mut(iova as usize))
            }
            _ => Err(Error::BadBuffer(format!(
                "device access of {len} bytes at IOVA {iova:#x} outside every DMA mapping"
            ))),
        }
    }

    /// Copies `out.len()` bytes of device-visible memory at `iova` into
    /// `out`, as a device's DMA read would.
    pub(crate) fn read(&self, iova: u64, out: &mut [u8]) -> Result<()> {
        let regions = self.lock();
        let p = Self::resolve(&regions, iova, out.len())?;
        // SAFETY: p..p+len lies inside a mapping registered through `map`,
        // whose contract keeps it live until `unmap`; `unmap` needs the
        // lock held here, so the mapping cannot go away during the copy.
        // `out` is ordinary Rust memory, never part of a DMA mapping.
        unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Copies `data` into device-visible memory at `iova`, as a device's
    /// DMA write would.
    pub(crate) fn write(&self, iova: u64, data: &[u8]) -> Result<()> {
        let regions = self.lock();
        let p = Self::resolve(&regions, iova, data.len())?;
        // SAFETY: as in `read`: inside a live registered mapping, kept
        // alive by the lock, and disjoint from `data`. No Rust reference
        // to DMA memory exists (the crate's invariant), so none is
        // invalidated by this write.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        Ok(())
    }
}

impl DmaMapper for HostMapper {
    unsafe fn map(&self, va: *mut u8, len: usize) -> Result<u64> {
        let iova = va.expose_provenance() as u64;
        self.lock().insert(iova, len);
        Ok(iova)
    }

    fn unmap(&self, iova: u64, _len: usize) -> Result<()> {
        match self.lock().remove(&iova) {
            Some(_) => Ok(()),
            None => Err(Error::BadBuffer(format!(
                "unmap of IOVA {iova:#x}, which is not mapped"
            ))),
        }
    }

    // IOVA = VA: the address stays reserved by the memory itself.
    #[cfg(feature = "fault-injection")]
    fn revoke(&self, iova: u64, len: usize) -> Result<()> {
        self.unmap(iova, len)
    }

    #[cfg(feature = "fault-injection")]
    unsafe fn restore(&self, va: *mut u8, iova: u64, len: usize) -> Result<()> {
        if va.expose_provenance() as u64 != iova {
            return Err(Error::BadBuffer(format!(
                "restore of IOVA {iova:#x} for memory at {va:p}"
            )));
        }
        self.lock().insert(iova, len);
        Ok(())
    }
}

/// A DMA-mapped region of host memory.
#[derive(Debug)]
pub(crate) struct DmaRegion {
    ptr: NonNull<u8>,
    len: usize,
    iova: u64,
    huge: bool,
    mapper: Arc<dyn DmaMapper>,
    /// The IOMMU mapping was taken away by fault injection
    /// ([`DmaRegion::revoke`]) and not yet given back.
    #[cfg(feature = "fault-injection")]
    revoked: std::sync::atomic::AtomicBool,
}

// SAFETY: the region is owned memory reached only through raw pointers with
// explicit copies; moving it between threads is fine.
unsafe impl Send for DmaRegion {}
// SAFETY: shared use only ever copies bytes in and out through raw
// pointers; concurrent writers to the same bytes are a logic error the
// queue code prevents (each slot has one owner), not a memory-safety issue.
unsafe impl Sync for DmaRegion {}

impl DmaRegion {
    /// Allocates `len` bytes (rounded up to 4 KiB, or to 2 MiB huge pages
    /// when `prefer_huge` and the system has them), zeroed, and maps them.
    pub(crate) fn new(
        mapper: Arc<dyn DmaMapper>,
        len: usize,
        prefer_huge: bool,
    ) -> Result<DmaRegion> {
        if len == 0 {
            return Err(Error::BadBuffer("DMA region of 0 bytes".into()));
        }
        let (ptr, len, huge) = match prefer_huge.then(|| anon_mmap(round_up(len, HUGE_PAGE), true))
        {
            Some(Ok((p, l))) => (p, l, true),
            _ => {
                let (p, l) = anon_mmap(round_up(len, PAGE), false)?;
                (p, l, false)
            }
        };
        // SAFETY: ptr..ptr+len is the fresh page-aligned mapping made just
        // above; it stays mapped until Drop, which unmaps the IOVA first.
        let iova = match unsafe { mapper.map(ptr.as_ptr(), len) } {
            Ok(iova) => iova,
            Err(e) => {
                // SAFETY: the mapping made above, not shared with anyone.
                unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
                return Err(e);
            }
        };
        Ok(DmaRegion {
            ptr,
            len,
            iova,
            huge,
            mapper,
            #[cfg(feature = "fault-injection")]
            revoked: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Fault injection: the device loses access to the region (its IOMMU
    /// mapping goes; the IOVA stays reserved for it). The CPU side is
    /// untouched. Undone by [`DmaRegion::restore`], or by Drop.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn revoke(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        if self.revoked.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Err(e) = self.mapper.revoke(self.iova, self.len) {
            self.revoked.store(false, Ordering::Release);
            return Err(e);
        }
        log::warn!(
            "fault injection: IOMMU mapping of {:#x}+{:#x} removed",
            self.iova,
            self.len
        );
        Ok(())
    }

    /// Maps a region taken away by [`DmaRegion::revoke`] again, at the
    /// same IOVA; nothing to do for a region that was not.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn restore(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        if !self.revoked.load(Ordering::Acquire) {
            return Ok(());
        }
        // SAFETY: ptr..ptr+len is this region's live mapping (it stays
        // until Drop, which unmaps the IOVA first), and iova/len are the
        // ones `revoke` took away from it.
        unsafe { self.mapper.restore(self.ptr.as_ptr(), self.iova, self.len) }?;
        self.revoked.store(false, Ordering::Release);
        log::info!(
            "fault injection: IOMMU mapping of {:#x}+{:#x} restored",
            self.iova,
            self.len
        );
        Ok(())
    }

    /// The device address of byte 0.
    pub(crate) fn iova(&self) -> u64 {
        self.iova
    }

    /// Whether the region is backed by huge pages.
    pub(crate) fn is_huge(&self) -> bool {
        self.huge
    }

    #[inline]
    fn at(&self, offset: usize, size: usize, align: usize) -> Result<*mut u8> {
        if !offset.is_multiple_of(align)
            || offset.checked_add(size).is_none_or(|end| end > self.len)
        {
            return Err(outside_region(offset, size, self.len));
        }
        // SAFETY: offset + size <= len keeps the pointer inside the mapping.
        Ok(unsafe { self.ptr.as_ptr().add(offset) })
    }

    /// Volatile 16-bit load (little-endian), e.g. a CQE status word.
    #[inline]
    pub(crate) fn read_u16(&self, offset: usize) -> Result<u16> {
        let p = self.at(offset, 2, 2)?;
        // SAFETY: in bounds and aligned (checked); volatile because the
        // device may be writing this word.
        Ok(u16::from_le(unsafe { p.cast::<u16>().read_volatile() }))
    }

    /// Volatile 64-bit load (little-endian), e.g. the second half of a CQE.
    #[inline]
    pub(crate) fn read_u64(&self, offset: usize) -> Result<u64> {
        let p = self.at(offset, 8, 8)?;
        // SAFETY: in bounds and aligned (checked); volatile because the
        // device may be writing these bytes.
        Ok(u64::from_le(unsafe { p.cast::<u64>().read_volatile() }))
    }

    /// Volatile 64-bit store (little-endian), e.g. a PRP list entry.
    #[inline]
    pub(crate) fn write_u64(&self, offset: usize, value: u64) -> Result<()> {
        let p = self.at(offset, 8, 8)?;
        // SAFETY: in bounds and aligned (checked).
        unsafe { p.cast::<u64>().write_volatile(value.to_le()) };
        Ok(())
    }

    /// Copies `data` into the region at `offset`.
    #[inline]
    pub(crate) fn write_bytes(&self, offset: usize, data: &[u8]) -> Result<()> {
        let p = self.at(offset, data.len(), 1)?;
        // SAFETY: the destination range is inside the mapping (checked) and
        // cannot overlap `data`, which is ordinary Rust memory.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        Ok(())
    }

    /// [`DmaRegion::write_bytes`] of a fixed-size block (e.g. an SQE):
    /// inlined moves instead of a call to `memcpy`.
    #[inline(always)]
    pub(crate) fn write_array<const N: usize>(&self, offset: usize, data: &[u8; N]) -> Result<()> {
        let p = self.at(offset, N, 1)?;
        // SAFETY: the destination range is inside the mapping (checked) and
        // cannot overlap `data`, which is ordinary Rust memory.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, N) };
        Ok(())
    }

    /// Volatile 32-bit load (little-endian), e.g. a shadow doorbell EventIdx.
    #[inline]
    pub(crate) fn read_u32(&self, offset: usize) -> Result<u32> {
        let p = self.at(offset, 4, 4)?;
        // SAFETY: in bounds and aligned (checked); volatile because the
        // device may be writing this word.
        Ok(u32::from_le(unsafe { p.cast::<u32>().read_volatile() }))
    }

    /// Volatile 32-bit store (little-endian), e.g. a shadow doorbell.
    #[inline]
    pub(crate) fn write_u32(&self, offset: usize, value: u32) -> Result<()> {
        let p = self.at(offset, 4, 4)?;
        // SAFETY: in bounds and aligned (checked); volatile because the
        // device may be reading this word.
        unsafe { p.cast::<u32>().write_volatile(value.to_le()) };
        Ok(())
    }

    /// Copies bytes out of the region at `offset` into `out`.
    #[inline]
    pub(crate) fn read_bytes(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        let p = self.at(offset, out.len(), 1)?;
        // SAFETY: the source range is inside the mapping (checked) and
        // cannot overlap `out`. The caller only reads after the device has
        // completed the command that wrote these bytes.
        unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Sets `len` bytes at `offset` to `byte`.
    pub(crate) fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<()> {
        let p = self.at(offset, len, 1)?;
        // SAFETY: the range is inside the mapping (checked).
        unsafe { std::ptr::write_bytes(p, byte, len) };
        Ok(())
    }
}

impl Drop for DmaRegion {
    fn drop(&mut self) {
        // A revoked region is mapped again first, so that the one unmap
        // below both removes the mapping and gives the IOVA back. If that
        // fails, the memory and the IOVA are leaked.
        #[cfg(feature = "fault-injection")]
        if let Err(e) = self.restore() {
            log::error!(
                "DMA restore of revoked {:#x}+{:#x} failed, leaking it: {e}",
                self.iova,
                self.len
            );
            return;
        }
        // The device must lose access before the memory goes back to the OS.
        if let Err(e) = self.mapper.unmap(self.iova, self.len) {
            // Leak the pages rather than let a still-mapped IOVA point at
            // memory the allocator may hand out again.
            log::error!(
                "DMA unmap of {:#x}+{:#x} failed, leaking it: {e}",
                self.iova,
                self.len
            );
            return;
        }
        // SAFETY: exactly the mapping made in `new`, no longer device-visible
        // and with no pointers into it left (they never escape this type).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to).saturating_mul(to)
}

/// A zeroed, populated, private anonymous mapping.
pub(super) fn anon_mmap(len: usize, huge: bool) -> Result<(NonNull<u8>, usize)> {
    let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
    if huge {
        flags |= libc::MAP_HUGETLB;
    }
    // SAFETY: a fresh anonymous mapping at an address of the kernel's
    // choosing; it aliases nothing.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(Error::os(
            format!(
                "mmap of {len} bytes of DMA memory{}",
                if huge { " (huge pages)" } else { "" }
            ),
            std::io::Error::last_os_error(),
        ));
    }
    let ptr = NonNull::new(ptr.cast::<u8>())
        .ok_or_else(|| Error::BadBuffer("mmap returned null".into()))?;
    Ok((ptr, len))
}

/// The error of an access outside a region (kept out of line: the
/// accessors are on the I/O path and inlined).
#[cold]
#[inline(never)]
fn outside_region(offset: usize, size: usize, len: usize) -> Error {
    Error::BadBuffer(format!(
        "DMA access of {size} bytes at {offset:#x} outside a {len:#x}-byte region"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_mapper_copies_only_inside_live_mappings() {
        let mapper = Arc::new(HostMapper::default());
        let region = DmaRegion::new(mapper.clone(), PAGE, false).expect("region");
        let base = region.iova();
        mapper.write(base + 8, &[1, 2, 3]).expect("inside");
        let mut back = [0u8; 4];
        region.read_bytes(7, &mut back).expect("read");
        assert_eq!(back, [0, 1, 2, 3], "the device's write is in the region");
        region.write_bytes(100, &[9; 4]).expect("write");
        mapper.read(base + 100, &mut back).expect("inside");
        assert_eq!(back, [9; 4]);
        assert!(
            mapper.read(base + PAGE as u64 - 2, &mut back).is_err(),
            "straddles the end"
        );
        assert!(
            mapper.read(base - 4, &mut back).is_err(),
            "before the start"
        );
        assert!(mapper.write(u64::MAX - 1, &[0; 4]).is_err(), "wraps");
        drop(region);
        assert!(
            mapper.read(base, &mut back).is_err(),
            "unmapped with the region"
        );
        assert!(mapper.unmap(base, PAGE).is_err(), "already unmapped");
    }

    #[cfg(feature = "fault-injection")]
    #[test]
    fn a_revoked_region_is_out_of_reach_until_restored_and_unmapped_once() {
        let mapper = Arc::new(HostMapper::default());
        let region = DmaRegion::new(mapper.clone(), PAGE, false).expect("region");
        let base = region.iova();
        let mut back = [0u8; 4];
        region.revoke().expect("revoke");
        region.revoke().expect("a second revoke does nothing");
        assert!(mapper.read(base, &mut back).is_err(), "revoked");
        region
            .write_bytes(0, &[7; 4])
            .expect("the CPU side is untouched");
        region.restore().expect("restore");
        region.restore().expect("a second restore does nothing");
        mapper
            .read(base, &mut back)
            .expect("mapped again, same IOVA");
        assert_eq!(back, [7; 4]);
        // Dropped while revoked: mapped again, then unmapped once.
        region.revoke().expect("revoke");
        drop(region);
        assert!(mapper.lock().is_empty(), "no mapping left");
    }
}

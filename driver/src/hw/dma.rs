//! Device-visible memory: anonymous mappings pinned and mapped into the
//! IOMMU, accessed only through raw pointers.

use std::ptr::NonNull;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::memory::DmaPool;

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
    regions: parking_lot::Mutex<std::collections::BTreeMap<u64, usize>>,
}

impl HostMapper {
    fn lock(&self) -> parking_lot::MutexGuard<'_, std::collections::BTreeMap<u64, usize>> {
        self.regions.lock()
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
        let mut regions = self.lock();
        let end = iova.checked_add(len as u64);
        let before = regions
            .range(..=iova)
            .next_back()
            .is_some_and(|(&s, &l)| s.saturating_add(l as u64) > iova);
        let after = end.is_none_or(|end| regions.range(iova..end).next().is_some());
        if len == 0 || before || after {
            // IOVA = VA: a second mapping of the same bytes would make one
            // IOVA name two mappings.
            return Err(Error::BadBuffer(format!(
                "DMA map of {len} bytes at {iova:#x}: empty, or overlapping a live mapping"
            )));
        }
        regions.insert(iova, len);
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

/// Memory the driver did not allocate, mapped for the device: for
/// example a vhost-user daemon's mapping of a guest's RAM, so that
/// commands can carry PRPs that point straight into it
/// ([`crate::IoSegments`] built from [`ExternalDma::iova_of`]).
///
/// Made by [`DmaPool::map_external`] (or, with the `vm-memory` feature,
/// [`DmaPool::map_mmap_region`]). The device reaches the memory from the
/// map until [`ExternalDma::unmap`] or the drop; the value keeps whatever
/// was handed over as the owner of the memory alive until then.
pub struct ExternalDma {
    /// The host address of byte 0 (kept as a number: only the device,
    /// through the IOMMU, touches this memory on the driver's behalf).
    va: usize,
    len: usize,
    iova: u64,
    mapper: Arc<dyn DmaMapper>,
    /// Still mapped (cleared by a successful [`ExternalDma::unmap`]).
    mapped: bool,
    /// Keeps the memory mapped in this process while the device may use it.
    _owner: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for ExternalDma {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalDma")
            .field("va", &format_args!("{:#x}", self.va))
            .field("len", &format_args!("{:#x}", self.len))
            .field("iova", &format_args!("{:#x}", self.iova))
            .finish()
    }
}

impl ExternalDma {
    /// The device address of byte 0.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: mapping rejects 0 bytes).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The host address of byte 0, as a number (to match a host pointer
    /// against the mapping; the driver never dereferences it).
    pub fn host_address(&self) -> usize {
        self.va
    }

    /// The device address of `len` bytes from byte `offset`, if they lie
    /// inside the mapping (`len` 0 is never inside).
    pub fn iova_of(&self, offset: u64, len: usize) -> Option<u64> {
        let end = offset.checked_add(len as u64)?;
        (len > 0 && end <= self.len as u64).then(|| self.iova + offset)
    }

    /// Takes the device's access away now, reporting a failure (the drop
    /// does the same and can only log it). Call it once no command that
    /// points into the memory is in flight.
    pub fn unmap(mut self) -> Result<()> {
        self.mapped = false;
        self.mapper.unmap(self.iova, self.len)
    }
}

impl Drop for ExternalDma {
    fn drop(&mut self) {
        if !self.mapped {
            return;
        }
        if let Err(e) = self.mapper.unmap(self.iova, self.len) {
            // The pages stay pinned by the IOMMU mapping; the IOVA range
            // stays taken, so it is never handed out again.
            log::error!(
                "DMA unmap of external memory {:#x}+{:#x} failed: {e}",
                self.iova,
                self.len
            );
        }
    }
}

impl DmaPool {
    /// Maps `len` bytes of this process's memory at `ptr`, which the
    /// driver did not allocate, into the controller's DMA space (the
    /// IOMMU through VFIO; the emulation for an in-process device) and
    /// returns the mapping, whose [`ExternalDma::iova_of`] gives the device
    /// addresses for commands. `owner` (whatever keeps the memory mapped,
    /// e.g. an `Arc` of the mmap) is kept until the mapping is dropped.
    /// `ptr` and `len` must be multiples of 4 KiB. Through VFIO the pages
    /// are pinned: RLIMIT_MEMLOCK must cover them
    /// ([`Error::Memlock`] otherwise).
    ///
    /// # Safety
    /// `ptr..ptr + len` must be a live, writable mapping of this process
    /// that stays mapped until the returned value is dropped (`owner` may
    /// be what guarantees it). While it is mapped the device may read and
    /// write those bytes at any time, so this process must not hold Rust
    /// references to them: it may only reach them through raw pointers or
    /// volatile accessors (as vm-memory's guest memory types do).
    pub unsafe fn map_external(
        &self,
        ptr: NonNull<u8>,
        len: usize,
        owner: Option<Box<dyn std::any::Any + Send + Sync>>,
    ) -> Result<ExternalDma> {
        let va = ptr.as_ptr().expose_provenance();
        if len == 0 || !va.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) {
            return Err(Error::BadBuffer(format!(
                "external memory {va:#x}+{len:#x}: address and length must be \
                 non-zero multiples of {PAGE}"
            )));
        }
        let mapper = self.mapper();
        // SAFETY: the caller's contract: a live mapping of len bytes that
        // stays mapped until the ExternalDma (which unmaps first) goes.
        let iova = unsafe { mapper.map(ptr.as_ptr(), len) }?;
        log::debug!("external memory {va:#x}+{len:#x} mapped at IOVA {iova:#x}");
        Ok(ExternalDma {
            va,
            len,
            iova,
            mapper,
            mapped: true,
            _owner: owner,
        })
    }

    /// [`DmaPool::map_external`] for a vm-memory mapping (a region of guest
    /// memory, as a vhost-user back end receives it), kept alive by the
    /// returned value. A size that is not whole pages is rounded up (the
    /// mmap owns the whole last page). Safe: the `Arc` keeps the region mapped, and
    /// vm-memory only accesses it through volatile slices, never Rust
    /// references (the guest writes it concurrently anyway).
    #[cfg(feature = "vm-memory")]
    pub fn map_mmap_region<B>(&self, region: Arc<vm_memory::MmapRegion<B>>) -> Result<ExternalDma>
    where
        B: vm_memory::bitmap::Bitmap + Send + Sync + 'static,
    {
        let ptr = NonNull::new(region.as_ptr())
            .ok_or_else(|| Error::BadBuffer("vm-memory region at address 0".into()))?;
        // mmap maps whole pages: a region whose size is not a multiple of
        // the page (a front end's small ring area) still owns its last
        // page whole, so the mapping covers it.
        let len = region.size().next_multiple_of(PAGE);
        // SAFETY: the region is an mmap (of whole pages, so up to `len`)
        // that lives as long as the Arc, which the ExternalDma keeps;
        // vm-memory reaches its bytes through volatile accessors only,
        // never references.
        unsafe { self.map_external(ptr, len, Some(Box::new(region))) }
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

    /// The host address of byte 0, as a number (exposing the mapping's
    /// provenance, so that a raw pointer rebuilt from it is valid).
    pub(crate) fn host_address(&self) -> usize {
        self.ptr.as_ptr().expose_provenance()
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

/// A queue's ring: `entries` entries of `SIZE` bytes in a DMA region,
/// whose bounds and alignment are checked once, when the ring is made. An
/// access then names an entry by index (one comparison with `entries`,
/// once for all the fields read through a [`RingEntry`]) and a field
/// inside it by a constant offset (checked at compile time),
/// instead of the two range checks (buffer, then region) of each
/// [`crate::memory::DmaBuffer`] access: the rings are touched for every
/// command and every completion.
#[derive(Debug)]
pub(crate) struct DmaRing<const SIZE: usize> {
    /// Entry 0.
    base: NonNull<u8>,
    entries: usize,
    /// Keeps the mapping `base` points into alive.
    _region: Arc<DmaRegion>,
}

// SAFETY: as for `DmaRegion`, which this holds alive: owned memory reached
// only through raw pointers with explicit copies.
unsafe impl<const SIZE: usize> Send for DmaRing<SIZE> {}
// SAFETY: as for `DmaRegion`: shared use only copies bytes in and out; each
// entry has one writer (the queue pair owning the ring, or the device).
unsafe impl<const SIZE: usize> Sync for DmaRing<SIZE> {}

impl<const SIZE: usize> DmaRing<SIZE> {
    /// The ring of `entries` entries from byte `offset` of `region`.
    pub(crate) fn new(region: Arc<DmaRegion>, offset: usize, entries: usize) -> Result<Self> {
        let bytes = entries.checked_mul(SIZE);
        if SIZE == 0
            || !SIZE.is_multiple_of(8)
            || !offset.is_multiple_of(8)
            || bytes
                .and_then(|b| b.checked_add(offset))
                .is_none_or(|end| end > region.len)
        {
            return Err(outside_region(
                offset,
                bytes.unwrap_or(usize::MAX),
                region.len,
            ));
        }
        // SAFETY: offset + entries * SIZE <= len keeps the pointer (and
        // every entry) inside the mapping; the mapping is page-aligned, so
        // entry 0 and (SIZE a multiple of 8) every entry are 8-aligned.
        let base = unsafe { region.ptr.add(offset) };
        Ok(DmaRing {
            base,
            entries,
            _region: region,
        })
    }

    /// The address of entry `index`.
    #[inline(always)]
    fn entry(&self, index: u16) -> Result<*mut u8> {
        let index = usize::from(index);
        if index >= self.entries {
            return Err(outside_ring(index, self.entries));
        }
        // SAFETY: index < entries keeps the entry inside the ring, which
        // `new` checked lies inside the mapping.
        Ok(unsafe { self.base.as_ptr().add(index * SIZE) })
    }

    /// Entry `index`, for several reads of its fields with one check of
    /// the index (a completion's phase, then the rest of it).
    #[inline(always)]
    pub(crate) fn at(&self, index: u16) -> Result<RingEntry<'_, SIZE>> {
        Ok(RingEntry {
            p: self.entry(index)?,
            _ring: std::marker::PhantomData,
        })
    }

    /// Copies `data` into entry `index` (inlined moves, no `memcpy` call).
    #[inline(always)]
    pub(crate) fn write_entry(&self, index: u16, data: &[u8; SIZE]) -> Result<()> {
        let p = self.entry(index)?;
        // SAFETY: the entry is inside the mapping (checked) and cannot
        // overlap `data`, which is ordinary Rust memory.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, SIZE) };
        Ok(())
    }

    /// Copies entry `index` out.
    #[inline(always)]
    pub(crate) fn read_entry(&self, index: u16) -> Result<[u8; SIZE]> {
        let p = self.entry(index)?;
        let mut out = [0u8; SIZE];
        // SAFETY: the entry is inside the mapping (checked) and cannot
        // overlap `out`.
        unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), SIZE) };
        Ok(out)
    }
}

/// One entry of a [`DmaRing`], its index checked ([`DmaRing::at`]): its
/// fields are read at compile-time-checked offsets with no further check.
/// It borrows the ring, which keeps the mapping alive.
#[derive(Debug)]
pub(crate) struct RingEntry<'a, const SIZE: usize> {
    /// The entry's first byte, inside the ring (checked when made).
    p: *mut u8,
    _ring: std::marker::PhantomData<&'a DmaRing<SIZE>>,
}

impl<const SIZE: usize> RingEntry<'_, SIZE> {
    /// Volatile little-endian load of the u16 at byte `FIELD` (the device
    /// may be writing it).
    #[inline(always)]
    pub(crate) fn read_u16<const FIELD: usize>(&self) -> u16 {
        const {
            assert!(
                FIELD + 2 <= SIZE && FIELD.is_multiple_of(2),
                "a u16 field inside the entry"
            )
        };
        // SAFETY: `p` is an entry inside the ring's mapping (`DmaRing::at`
        // checked the index; the borrow keeps the mapping alive); the field
        // is inside the entry (FIELD + 2 <= SIZE, checked at compile time)
        // and aligned (every entry is 8-aligned, FIELD even).
        u16::from_le(unsafe { self.p.add(FIELD).cast::<u16>().read_volatile() })
    }

    /// Volatile little-endian load of the u64 at byte `FIELD`.
    #[inline(always)]
    pub(crate) fn read_u64<const FIELD: usize>(&self) -> u64 {
        const {
            assert!(
                FIELD + 8 <= SIZE && FIELD.is_multiple_of(8),
                "a u64 field inside the entry"
            )
        };
        // SAFETY: as in `read_u16`: inside the entry (checked at compile
        // time) and aligned (every entry is 8-aligned, FIELD a multiple
        // of 8).
        u64::from_le(unsafe { self.p.add(FIELD).cast::<u64>().read_volatile() })
    }
}

/// The error of a ring index past its entries (a driver bug: the queue
/// keeps its head and tail inside the ring).
#[cold]
#[inline(never)]
fn outside_ring(index: usize, entries: usize) -> Error {
    Error::BadBuffer(format!("ring entry {index} of a {entries}-entry ring"))
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

    /// Anonymous memory standing in for a guest's RAM, unmapped on drop.
    struct Anon {
        ptr: NonNull<u8>,
        len: usize,
    }

    // SAFETY: owned memory, only reached through raw pointers.
    unsafe impl Send for Anon {}
    // SAFETY: as above; the tests do not write it from two threads.
    unsafe impl Sync for Anon {}

    impl Anon {
        fn new(len: usize) -> Anon {
            let (ptr, len) = anon_mmap(len, false).expect("mmap");
            Anon { ptr, len }
        }
        fn write(&self, offset: usize, data: &[u8]) {
            assert!(offset + data.len() <= self.len);
            // SAFETY: inside the mapping (asserted); disjoint from `data`.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    data.as_ptr(),
                    self.ptr.as_ptr().add(offset),
                    data.len(),
                )
            };
        }
        fn read(&self, offset: usize, len: usize) -> Vec<u8> {
            assert!(offset + len <= self.len);
            let mut out = vec![0u8; len];
            // SAFETY: inside the mapping (asserted); disjoint from `out`.
            unsafe {
                std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), out.as_mut_ptr(), len)
            };
            out
        }
    }

    impl Drop for Anon {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `new`, no longer mapped for DMA
            // (the tests drop every ExternalDma first).
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }

    #[test]
    fn external_memory_is_mapped_bounds_checked_and_unmapped() {
        let host = Arc::new(HostMapper::default());
        let pool = DmaPool::new(host.clone(), false);
        let mem = Arc::new(Anon::new(4 * PAGE));
        // SAFETY: `mem` lives in the mapping's owner; its bytes are only
        // reached through raw pointers.
        let map = unsafe { pool.map_external(mem.ptr, mem.len, Some(Box::new(mem.clone()))) }
            .expect("map");
        assert_eq!(map.len(), 4 * PAGE);
        assert_eq!(map.host_address(), mem.ptr.as_ptr() as usize);
        assert_eq!(map.iova_of(0, 4 * PAGE), Some(map.iova()));
        assert_eq!(map.iova_of(100, 8), Some(map.iova() + 100));
        assert_eq!(
            map.iova_of(4 * PAGE as u64 - 4, 8),
            None,
            "straddles the end"
        );
        assert_eq!(map.iova_of(u64::MAX, 8), None, "wraps");
        assert_eq!(map.iova_of(0, 0), None, "empty");
        // The device (the emulation) reaches it by IOVA.
        host.write(map.iova() + 4096, b"guest")
            .expect("device write");
        assert_eq!(mem.read(4096, 5), b"guest");
        // The same bytes cannot be mapped twice (IOVA = VA here), and a
        // range that is not whole pages is refused before any mapping.
        // SAFETY: as above; these fail before mapping anything.
        unsafe {
            assert!(pool.map_external(mem.ptr, PAGE, None).is_err(), "overlap");
            let odd = NonNull::new(mem.ptr.as_ptr().add(512)).expect("non-null");
            assert!(
                pool.map_external(odd, PAGE, None).is_err(),
                "unaligned start"
            );
            assert!(
                pool.map_external(mem.ptr, 100, None).is_err(),
                "partial page"
            );
            assert!(pool.map_external(mem.ptr, 0, None).is_err(), "empty");
        }
        let iova = map.iova();
        map.unmap().expect("unmap");
        assert!(
            host.read(iova, &mut [0u8; 4]).is_err(),
            "gone for the device"
        );
        assert_eq!(Arc::strong_count(&mem), 1, "the owner was dropped with it");
        // Mapped again, and this time taken away by the drop.
        // SAFETY: as above.
        let again = unsafe { pool.map_external(mem.ptr, mem.len, None) }.expect("map again");
        let iova = again.iova();
        drop(again);
        assert!(host.read(iova, &mut [0u8; 4]).is_err(), "unmapped by drop");
    }

    #[test]
    fn requests_move_data_straight_into_external_memory() {
        use crate::mock::{MockConfig, MockController};
        use crate::{IoRequest, IoSegments};
        const LBA: usize = 512;
        // MDTS 16 KiB: the 40 KiB requests are split across pieces.
        let config = MockConfig::new(&[(1, LBA as u32, 1024)]).max_transfer(16 << 10);
        let (mock, mut qp) = MockController::with_qpair(config).expect("mock");
        let a = Anon::new(16 * PAGE);
        let b = Anon::new(16 * PAGE);
        // SAFETY: `a` and `b` outlive the mappings (dropped at the end of
        // the test, after them) and are only reached through raw pointers.
        let (ma, mb) = unsafe {
            (
                mock.pool().map_external(a.ptr, a.len, None).expect("map a"),
                mock.pool().map_external(b.ptr, b.len, None).expect("map b"),
            )
        };
        let data: Vec<u8> = (0..40 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        // A guest's scatter list: 2 KiB at the end of a page of region a,
        // then 24 KiB from a page start in b, then 14 KiB in a again.
        let layout = [
            (&a, &ma, 2 * PAGE + 2048, 2048),
            (&b, &mb, 5 * PAGE, 24 << 10),
            (&a, &ma, 8 * PAGE, 14 << 10),
        ];
        let mut pieces = Vec::new();
        let mut at = 0;
        for (mem, map, offset, len) in layout {
            mem.write(offset, &data[at..at + len]);
            pieces.push((map.iova_of(offset as u64, len).expect("inside"), len));
            at += len;
        }
        assert_eq!(IoSegments::check(&pieces).expect("PRP-legal"), data.len());
        let blocks = (data.len() / LBA) as u64;
        qp.submit(IoRequest::write_segments(1, 10, blocks, IoSegments::new(pieces)).with_tag(1))
            .expect("write accepted");
        let mut done = Vec::new();
        while done.is_empty() {
            mock.process().expect("process");
            qp.poll(&mut done).expect("poll");
        }
        done[0].result.as_ref().expect("write succeeds");
        assert_eq!(mock.read_disk(1, 10, blocks).expect("disk"), data);
        assert!(mock.stats().writes >= 3, "split by MDTS");
        // Read it back into one run of region b.
        let pieces = vec![(mb.iova_of(0, data.len()).expect("inside"), data.len())];
        qp.submit(IoRequest::read_segments(
            1,
            10,
            blocks,
            IoSegments::new(pieces),
        ))
        .expect("read accepted");
        let mut done = Vec::new();
        while done.is_empty() {
            mock.process().expect("process");
            qp.poll(&mut done).expect("poll");
        }
        done[0].result.as_ref().expect("read succeeds");
        assert_eq!(b.read(0, data.len()), data);
        // A list that breaks the PRP rule is named before submission.
        let bad = [(ma.iova(), 512), (ma.iova() + 1024, 512)];
        assert!(IoSegments::check(&bad).is_err(), "gap inside a page");
        assert!(mock.violations().is_empty(), "{:?}", mock.violations());
        drop((ma, mb));
    }

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

//! The VFIO operations vfio-ioctls does not wrap: IOMMU info (valid IOVA
//! ranges), config space access with real error reporting, and the DMA
//! mapper that owns the IOVA space.

use parking_lot::Mutex;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{
    VFIO_BASE, VFIO_IOMMU_INFO_CAPS, VFIO_IOMMU_INFO_PGSIZES, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
    VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, VFIO_TYPE,
};
use vfio_ioctls::{VfioContainer, VfioError};
use vmm_sys_util::ioctl::ioctl_with_mut_ptr;
use vmm_sys_util::ioctl_io_nr;

use super::dma::DmaMapper;
use crate::error::{Error, Result};
use crate::iova::IovaAllocator;

ioctl_io_nr!(VFIO_IOMMU_GET_INFO, VFIO_TYPE as u32, VFIO_BASE + 12);

/// What the IOMMU behind a container accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IommuInfo {
    /// Bitmap of supported IOMMU page sizes.
    pub(crate) page_sizes: u64,
    /// Valid IOVA ranges, inclusive.
    pub(crate) iova_ranges: Vec<(u64, u64)>,
    /// How many more DMA mappings the kernel allows, if it says.
    pub(crate) dma_avail: Option<u32>,
}

/// VFIO_IOMMU_GET_INFO with its capability chain.
pub(crate) fn iommu_info(container: &VfioContainer) -> Result<IommuInfo> {
    const HEADER: usize = 24; // struct vfio_iommu_type1_info
    let mut argsz = HEADER;
    for _ in 0..4 {
        // u64 elements keep the buffer 8-byte aligned for the kernel.
        let mut buf = vec![0u64; argsz.div_ceil(8)];
        let bytes = buf.len() * 8;
        buf[0] = u64::try_from(bytes).unwrap_or(u64::MAX) & 0xffff_ffff; // argsz, flags = 0
        // SAFETY: the buffer is `bytes` long, 8-aligned and writable, and
        // argsz tells the kernel exactly that size; the container fd is live.
        let rc = unsafe {
            ioctl_with_mut_ptr(
                container,
                VFIO_IOMMU_GET_INFO(),
                buf.as_mut_ptr().cast::<u8>(),
            )
        };
        if rc < 0 {
            return Err(Error::os(
                "VFIO_IOMMU_GET_INFO",
                std::io::Error::last_os_error(),
            ));
        }
        let raw: Vec<u8> = buf.iter().flat_map(|w| w.to_le_bytes()).collect();
        let needed = le_u32(&raw, 0).unwrap_or(0) as usize;
        if needed > bytes {
            argsz = needed;
            continue;
        }
        return Ok(parse_iommu_info(&raw));
    }
    Err(Error::BadDevice(
        "VFIO_IOMMU_GET_INFO kept asking for a larger buffer".into(),
    ))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Decodes a filled `vfio_iommu_type1_info` buffer; tolerant of junk.
fn parse_iommu_info(raw: &[u8]) -> IommuInfo {
    let flags = le_u32(raw, 4).unwrap_or(0);
    let mut info = IommuInfo {
        page_sizes: if flags & VFIO_IOMMU_INFO_PGSIZES != 0 {
            le_u64(raw, 8).unwrap_or(0)
        } else {
            0
        },
        iova_ranges: Vec::new(),
        dma_avail: None,
    };
    let mut cap = if flags & VFIO_IOMMU_INFO_CAPS != 0 {
        le_u32(raw, 16).unwrap_or(0) as usize
    } else {
        0
    };
    let mut hops = 0;
    while cap != 0 && hops < 64 {
        hops += 1;
        let Some(head) = le_u32(raw, cap) else { break };
        let id = head & 0xffff;
        let next = le_u32(raw, cap + 4).unwrap_or(0) as usize;
        if id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE {
            let n = le_u32(raw, cap + 8).unwrap_or(0) as usize;
            for i in 0..n.min(1024) {
                let at = cap + 16 + i * 16;
                if let (Some(s), Some(e)) = (le_u64(raw, at), le_u64(raw, at + 8))
                    && s <= e
                {
                    info.iova_ranges.push((s, e));
                }
            }
        } else if id == VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL {
            info.dma_avail = le_u32(raw, cap + 8);
        }
        if next <= cap {
            break;
        }
        cap = next;
    }
    info
}

/// pread that fills `buf` or fails.
/// Drops a VFIO device with its file kept open until the drop is over
/// (by a duplicate descriptor, closed last). vfio-ioctls' `Drop` closes
/// the file and then reads `<sysfs>/iommu_group`, unwrapping the result:
/// were that close the last reference, the kernel's removal of the
/// device (which waits for it) could take the sysfs node away under that
/// read. Returns once the device file is closed.
pub(crate) fn drop_device_kept_open(device: vfio_ioctls::VfioDevice) {
    // SAFETY: dup of a descriptor the VfioDevice owns and keeps open for
    // the duration of the call; the copy is ours alone.
    let dup = unsafe { libc::dup(device.as_raw_fd()) };
    drop(device);
    if dup >= 0 {
        // SAFETY: `dup` came from the dup above and is closed once, here.
        unsafe { libc::close(dup) };
    } else {
        log::warn!(
            "dup of the VFIO device file failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

pub(crate) fn pread_exact(fd: RawFd, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let off = libc::off_t::try_from(offset).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: buf is a valid writable slice of buf.len() bytes.
    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), off) };
    match usize::try_from(n) {
        Ok(n) if n == buf.len() => Ok(()),
        Ok(_) => Err(std::io::ErrorKind::UnexpectedEof.into()),
        Err(_) => Err(std::io::Error::last_os_error()),
    }
}

/// pwrite that writes all of `buf` or fails.
pub(crate) fn pwrite_all(fd: RawFd, buf: &[u8], offset: u64) -> std::io::Result<()> {
    let off = libc::off_t::try_from(offset).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: buf is a valid readable slice of buf.len() bytes.
    let n = unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), off) };
    match usize::try_from(n) {
        Ok(n) if n == buf.len() => Ok(()),
        Ok(_) => Err(std::io::ErrorKind::WriteZero.into()),
        Err(_) => Err(std::io::Error::last_os_error()),
    }
}

/// Maps DMA memory through a VFIO container, allocating IOVAs from the
/// ranges the IOMMU reports.
pub(crate) struct VfioMapper {
    container: Arc<VfioContainer>,
    iova: Mutex<IovaAllocator>,
    /// Set once the device was given back after a removal request: it can
    /// no longer reach any mapping, and VFIO refuses unmaps (EINVAL) once
    /// the kernel has taken the device away.
    released: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for VfioMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioMapper")
            .field("container_fd", &self.container.as_raw_fd())
            .field("iova", &self.iova)
            .finish()
    }
}

impl VfioMapper {
    pub(crate) fn new(container: Arc<VfioContainer>, iova: IovaAllocator) -> Self {
        VfioMapper {
            container,
            iova: Mutex::new(iova),
            released: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Called after the device file was closed for a removal request
    /// (vfio-pci disabled bus mastering and reset the function then): from
    /// now on a failed unmap frees the memory anyway, since nothing can
    /// reach it.
    pub(crate) fn device_released(&self) {
        self.released
            .store(true, std::sync::atomic::Ordering::Release);
    }

    fn allocator(&self) -> parking_lot::MutexGuard<'_, IovaAllocator> {
        self.iova.lock()
    }
}

impl DmaMapper for VfioMapper {
    unsafe fn map(&self, va: *mut u8, len: usize) -> Result<u64> {
        let align = if len.is_multiple_of(super::dma::HUGE_PAGE) {
            super::dma::HUGE_PAGE
        } else {
            super::dma::PAGE
        };
        let iova = self
            .allocator()
            .alloc(len as u64, align as u64)
            .ok_or(Error::IovaExhausted(len))?;
        // SAFETY: the caller guarantees va..va+len is a live mapping that
        // stays mapped until unmap, and it is never turned into a reference.
        let mapped = unsafe { self.container.vfio_dma_map(iova, len, va) };
        if let Err(e) = mapped {
            self.allocator().free(iova, len as u64);
            return Err(match e {
                VfioError::IommuDmaMap(ref err)
                    if err.errno() == libc::ENOMEM || err.errno() == libc::EPERM =>
                {
                    Error::Memlock {
                        bytes: len,
                        limit: memlock_limit(),
                        source: std::io::Error::from_raw_os_error(err.errno()),
                    }
                }
                e => Error::vfio(format!("DMA map of {len} bytes at IOVA {iova:#x}"), e),
            });
        }
        Ok(iova)
    }

    fn unmap(&self, iova: u64, len: usize) -> Result<()> {
        if let Err(e) = self.container.vfio_dma_unmap(iova, len) {
            if !self.released.load(std::sync::atomic::Ordering::Acquire) {
                return Err(Error::vfio(
                    format!("DMA unmap of {len} bytes at IOVA {iova:#x}"),
                    e,
                ));
            }
            log::debug!("DMA unmap of {len} bytes at IOVA {iova:#x} after the removal: {e}");
        }
        self.allocator().free(iova, len as u64);
        Ok(())
    }

    #[cfg(feature = "fault-injection")]
    fn revoke(&self, iova: u64, len: usize) -> Result<()> {
        // VFIO_IOMMU_UNMAP_DMA; the IOVA is not given back to the allocator.
        self.container
            .vfio_dma_unmap(iova, len)
            .map_err(|e| Error::vfio(format!("DMA unmap of {len} bytes at IOVA {iova:#x}"), e))
    }

    #[cfg(feature = "fault-injection")]
    unsafe fn restore(&self, va: *mut u8, iova: u64, len: usize) -> Result<()> {
        // SAFETY: the caller guarantees va..va+len is a live mapping that
        // stays mapped until unmap; `iova` is still reserved for it in the
        // allocator (revoke kept it), so nothing else is mapped there.
        unsafe { self.container.vfio_dma_map(iova, len, va) }
            .map_err(|e| Error::vfio(format!("DMA map of {len} bytes at IOVA {iova:#x}"), e))
    }
}

/// The soft RLIMIT_MEMLOCK in bytes, from /proc/self/limits (None when
/// unknown or unlimited).
fn memlock_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_memlock(&limits)
}

fn parse_memlock(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max locked memory"))?;
    line["Max locked memory".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_memlock_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max locked memory         65536                65536                bytes\n";
        assert_eq!(super::parse_memlock(limits), Some(65536));
        let unlimited =
            "Max locked memory         unlimited            unlimited            bytes\n";
        assert_eq!(super::parse_memlock(unlimited), None);
    }

    use super::*;

    #[test]
    fn parses_iommu_info_with_ranges() {
        // header: argsz, flags (PGSIZES|CAPS), pgsizes, cap_offset=24
        let mut raw = Vec::new();
        raw.extend_from_slice(&72u32.to_le_bytes());
        raw.extend_from_slice(&3u32.to_le_bytes());
        raw.extend_from_slice(&0x4020_1000u64.to_le_bytes());
        raw.extend_from_slice(&24u32.to_le_bytes());
        raw.extend_from_slice(&0u32.to_le_bytes());
        // IOVA range cap: id 1, version 1, next 0, nr 2, reserved
        raw.extend_from_slice(&1u16.to_le_bytes());
        raw.extend_from_slice(&1u16.to_le_bytes());
        raw.extend_from_slice(&0u32.to_le_bytes());
        raw.extend_from_slice(&2u32.to_le_bytes());
        raw.extend_from_slice(&0u32.to_le_bytes());
        for (s, e) in [(0u64, 0xfedf_ffffu64), (0xfef0_0000, 0x7f_ffff_ffff)] {
            raw.extend_from_slice(&s.to_le_bytes());
            raw.extend_from_slice(&e.to_le_bytes());
        }
        let info = parse_iommu_info(&raw);
        assert_eq!(info.page_sizes, 0x4020_1000);
        assert_eq!(
            info.iova_ranges,
            vec![(0, 0xfedf_ffff), (0xfef0_0000, 0x7f_ffff_ffff)]
        );
    }

    #[test]
    fn junk_iommu_info_does_not_panic() {
        let mut raw = vec![0xffu8; 40];
        raw[16..20].copy_from_slice(&24u32.to_le_bytes());
        let _ = parse_iommu_info(&raw);
        let _ = parse_iommu_info(&[]);
    }
}

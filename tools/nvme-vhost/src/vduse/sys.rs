//! The VDUSE user API (`include/uapi/linux/vduse.h`, API version 0 as
//! Linux 6.12 has it): the structures, the ioctls on /dev/vduse/control
//! and /dev/vduse/NAME, and the request and response messages read and
//! written on the device file. No crate on crates.io provides these
//! (checked 2026-12-07), so they are written here from the header; this
//! is the only module of the crate with `unsafe` (the ioctls).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ptr, ioctl_with_ref};
use vmm_sys_util::{ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

const VDUSE_BASE: u32 = 0x81;
/// Longest device name, NUL included.
pub(super) const NAME_MAX: usize = 256;
/// The only API version used (Linux 6.12 knows no other).
const API_VERSION: u64 = 0;

/// Request types read from the device file.
pub(super) const REQ_GET_VQ_STATE: u32 = 0;
pub(super) const REQ_SET_STATUS: u32 = 1;
pub(super) const REQ_UPDATE_IOTLB: u32 = 2;
/// Response results.
pub(super) const RESULT_OK: u32 = 0;
pub(super) const RESULT_FAILED: u32 = 1;
/// IOTLB permissions.
pub(super) const ACCESS_RO: u8 = 1;
pub(super) const ACCESS_WO: u8 = 2;
pub(super) const ACCESS_RW: u8 = 3;
/// `vduse_iova_info.capability`: the region can be backed by user memory.
pub(super) const IOVA_CAP_UMEM: u64 = 1;
/// Size of `struct vduse_dev_request` and of `struct vduse_dev_response`.
pub(super) const MSG_SIZE: usize = 152;

/// `struct vduse_dev_config` without its trailing configuration space.
// Kernel ABI: fields the kernel reads need not be read here.
#[allow(dead_code)]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct DevConfig {
    name: [u8; NAME_MAX],
    vendor_id: u32,
    device_id: u32,
    features: u64,
    vq_num: u32,
    vq_align: u32,
    reserved: [u32; 13],
    config_size: u32,
}

/// `struct vduse_iotlb_entry`.
// Kernel ABI: fields the kernel reads need not be read here.
#[allow(dead_code)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct IotlbEntry {
    /// Offset of `start` in the returned file.
    pub(super) offset: u64,
    pub(super) start: u64,
    pub(super) last: u64,
    pub(super) perm: u8,
    pub(super) _pad: [u8; 7],
}

/// `struct vduse_vq_config`.
// Kernel ABI: fields the kernel reads need not be read here.
#[allow(dead_code)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct VqConfig {
    index: u32,
    max_size: u16,
    reserved: [u16; 13],
}

/// `struct vduse_vq_info` (split-ring state only).
// Kernel ABI: fields the kernel reads need not be read here.
#[allow(dead_code)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct VqInfo {
    pub(super) index: u32,
    pub(super) num: u32,
    pub(super) desc_addr: u64,
    pub(super) driver_addr: u64,
    pub(super) device_addr: u64,
    /// `split.avail_index` is the first; the packed state would use all.
    pub(super) state: [u16; 4],
    pub(super) ready: u8,
    _pad: [u8; 7],
}

/// `struct vduse_vq_eventfd`.
// Kernel ABI: fields the kernel reads need not be read here.
#[allow(dead_code)]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct VqEventfd {
    index: u32,
    fd: i32,
}

/// `struct vduse_iova_umem`.
// Kernel ABI: fields the kernel reads need not be read here.
#[allow(dead_code)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct IovaUmem {
    uaddr: u64,
    iova: u64,
    size: u64,
    reserved: [u32; 6],
}

/// `struct vduse_iova_info`.
// Kernel ABI: fields the kernel reads need not be read here.
#[allow(dead_code)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct IovaInfo {
    pub(super) start: u64,
    pub(super) last: u64,
    pub(super) capability: u64,
    reserved: [u32; 6],
}

ioctl_iow_nr!(VDUSE_SET_API_VERSION, VDUSE_BASE, 0x01, u64);
ioctl_iow_nr!(VDUSE_CREATE_DEV, VDUSE_BASE, 0x02, DevConfig);
ioctl_iow_nr!(VDUSE_DESTROY_DEV, VDUSE_BASE, 0x03, [u8; NAME_MAX]);
ioctl_iowr_nr!(VDUSE_IOTLB_GET_FD, VDUSE_BASE, 0x10, IotlbEntry);
ioctl_ior_nr!(VDUSE_DEV_GET_FEATURES, VDUSE_BASE, 0x11, u64);
ioctl_iow_nr!(VDUSE_VQ_SETUP, VDUSE_BASE, 0x14, VqConfig);
ioctl_iowr_nr!(VDUSE_VQ_GET_INFO, VDUSE_BASE, 0x15, VqInfo);
ioctl_iow_nr!(VDUSE_VQ_SETUP_KICKFD, VDUSE_BASE, 0x16, VqEventfd);
ioctl_iow_nr!(VDUSE_VQ_INJECT_IRQ, VDUSE_BASE, 0x17, u32);
ioctl_iow_nr!(VDUSE_IOTLB_REG_UMEM, VDUSE_BASE, 0x18, IovaUmem);
ioctl_iowr_nr!(VDUSE_IOTLB_GET_INFO, VDUSE_BASE, 0x1a, IovaInfo);

fn check(ret: i32) -> io::Result<i32> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn name_bytes(name: &str) -> io::Result<[u8; NAME_MAX]> {
    let mut out = [0u8; NAME_MAX];
    if name.is_empty() || name.len() >= NAME_MAX || name.bytes().any(|b| b == 0 || b == b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("device name {name:?}: 1 to 255 bytes, no NUL or '/'"),
        ));
    }
    out[..name.len()].copy_from_slice(name.as_bytes());
    Ok(out)
}

/// Sets the API version on the control file.
pub(super) fn set_api_version(control: &File) -> io::Result<()> {
    // SAFETY: the argument is a u64 the kernel only reads.
    check(unsafe { ioctl_with_ref(control, VDUSE_SET_API_VERSION(), &API_VERSION) }).map(drop)
}

/// VDUSE_CREATE_DEV: a device `name` with virtio device id `device_id`,
/// `features`, `vq_num` virtqueues and the configuration space `config`.
pub(super) fn create_dev(
    control: &File,
    name: &str,
    device_id: u32,
    features: u64,
    vq_num: u32,
    vq_align: u32,
    config: &[u8],
) -> io::Result<()> {
    let head = DevConfig {
        name: name_bytes(name)?,
        vendor_id: 0,
        device_id,
        features,
        vq_num,
        vq_align,
        reserved: [0; 13],
        config_size: u32::try_from(config.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "config space too big"))?,
    };
    // The kernel reads the header, then config_size bytes right after it:
    // one buffer, 8-byte aligned for the header.
    let words = (std::mem::size_of::<DevConfig>() + config.len()).div_ceil(8);
    let mut buf = vec![0u64; words];
    let base = buf.as_mut_ptr().cast::<u8>();
    // SAFETY: `buf` holds size_of::<DevConfig>() + config.len() bytes
    // (rounded up to whole u64s) and is aligned for DevConfig (align 8);
    // the header and the config bytes are written inside it, without
    // overlap with their sources.
    unsafe {
        base.cast::<DevConfig>().write(head);
        std::ptr::copy_nonoverlapping(
            config.as_ptr(),
            base.add(std::mem::size_of::<DevConfig>()),
            config.len(),
        );
    }
    // SAFETY: the kernel reads the header and config_size bytes after it,
    // all inside `buf`, which outlives the call.
    check(unsafe { ioctl_with_ptr(control, VDUSE_CREATE_DEV(), buf.as_ptr().cast::<u8>()) })
        .map(drop)
}

/// VDUSE_DESTROY_DEV.
pub(super) fn destroy_dev(control: &File, name: &str) -> io::Result<()> {
    let name = name_bytes(name)?;
    // SAFETY: the kernel reads NAME_MAX bytes from the array.
    check(unsafe { ioctl_with_ref(control, VDUSE_DESTROY_DEV(), &name) }).map(drop)
}

/// VDUSE_VQ_SETUP: virtqueue `index` holds at most `max_size` descriptors.
pub(super) fn vq_setup(dev: &File, index: u32, max_size: u16) -> io::Result<()> {
    let config = VqConfig {
        index,
        max_size,
        ..VqConfig::default()
    };
    // SAFETY: the kernel reads the structure.
    check(unsafe { ioctl_with_ref(dev, VDUSE_VQ_SETUP(), &config) }).map(drop)
}

/// VDUSE_VQ_GET_INFO for virtqueue `index`.
pub(super) fn vq_info(dev: &File, index: u32) -> io::Result<VqInfo> {
    let mut info = VqInfo {
        index,
        ..VqInfo::default()
    };
    // SAFETY: the kernel reads and writes the structure, which is as big
    // as the ioctl number says.
    check(unsafe { ioctl_with_mut_ref(dev, VDUSE_VQ_GET_INFO(), &mut info) })?;
    Ok(info)
}

/// VDUSE_VQ_SETUP_KICKFD: the kernel signals `fd` when the driver kicks
/// virtqueue `index`.
pub(super) fn vq_setup_kickfd(dev: &File, index: u32, fd: &impl AsRawFd) -> io::Result<()> {
    let e = VqEventfd {
        index,
        fd: fd.as_raw_fd(),
    };
    // SAFETY: the kernel reads the structure (and takes its own reference
    // to the eventfd).
    check(unsafe { ioctl_with_ref(dev, VDUSE_VQ_SETUP_KICKFD(), &e) }).map(drop)
}

/// VDUSE_VQ_INJECT_IRQ: the driver's interrupt for virtqueue `index`.
pub(super) fn vq_inject_irq(dev: &File, index: u32) -> io::Result<()> {
    // SAFETY: the kernel reads the u32.
    check(unsafe { ioctl_with_ref(dev, VDUSE_VQ_INJECT_IRQ(), &index) }).map(drop)
}

/// VDUSE_DEV_GET_FEATURES: the features the driver accepted.
pub(super) fn driver_features(dev: &File) -> io::Result<u64> {
    let mut f = 0u64;
    // SAFETY: the kernel writes the u64.
    check(unsafe { ioctl_with_mut_ref(dev, VDUSE_DEV_GET_FEATURES(), &mut f) })?;
    Ok(f)
}

/// VDUSE_IOTLB_GET_FD: the first IOTLB region overlapping
/// `[start, last]` and a file to mmap it from (None: no such region).
pub(super) fn iotlb_get_fd(
    dev: &File,
    start: u64,
    last: u64,
) -> io::Result<Option<(IotlbEntry, File)>> {
    let mut entry = IotlbEntry {
        start,
        last,
        ..IotlbEntry::default()
    };
    // SAFETY: the kernel reads and writes the structure.
    match check(unsafe { ioctl_with_mut_ref(dev, VDUSE_IOTLB_GET_FD(), &mut entry) }) {
        Ok(fd) => {
            // SAFETY: on success the ioctl returns a new file descriptor
            // that nothing else owns.
            let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            Ok(Some((entry, file)))
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
        Err(e) => Err(e),
    }
}

/// VDUSE_IOTLB_GET_INFO: the first IOVA region overlapping
/// `[start, last]` (None: none).
pub(super) fn iotlb_info(dev: &File, start: u64, last: u64) -> io::Result<Option<IovaInfo>> {
    let mut info = IovaInfo {
        start,
        last,
        ..IovaInfo::default()
    };
    // SAFETY: the kernel reads and writes the structure.
    match check(unsafe { ioctl_with_mut_ref(dev, VDUSE_IOTLB_GET_INFO(), &mut info) }) {
        Ok(_) => Ok(Some(info)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
        Err(e) => Err(e),
    }
}

/// VDUSE_IOTLB_REG_UMEM: `size` bytes of this process's memory at
/// `uaddr` become the bounce pages of IOVA 0.. (the kernel pins them
/// until the device file is closed).
pub(super) fn reg_umem(dev: &File, uaddr: u64, size: u64) -> io::Result<()> {
    let umem = IovaUmem {
        uaddr,
        iova: 0,
        size,
        reserved: [0; 6],
    };
    // SAFETY: the kernel reads the structure and pins the pages of the
    // range, which the caller keeps mapped while the device file is open.
    check(unsafe { ioctl_with_ref(dev, VDUSE_IOTLB_REG_UMEM(), &umem) }).map(drop)
}

/// Makes RLIMIT_MEMLOCK at least `bytes` (VDUSE_IOTLB_REG_UMEM counts
/// the pages it pins against it, even for root); returns the soft limit
/// now in force.
pub(super) fn raise_memlock(bytes: u64) -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the structure it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur >= bytes {
        return Ok(lim.rlim_cur);
    }
    let want = libc::rlimit {
        rlim_cur: bytes.max(lim.rlim_cur),
        rlim_max: bytes.max(lim.rlim_max),
    };
    // SAFETY: setrlimit reads the structure it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &want) } == 0 {
        return Ok(want.rlim_cur);
    }
    // Without CAP_SYS_RESOURCE: as far as the hard limit goes.
    let soft = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &soft) } == 0 {
        return Ok(soft.rlim_cur);
    }
    Err(io::Error::last_os_error())
}

/// A request read from the device file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Request {
    pub(super) kind: u32,
    pub(super) id: u32,
    /// The union, raw.
    pub(super) body: [u8; 128],
}

impl Request {
    /// Parses `struct vduse_dev_request`.
    pub(super) fn parse(bytes: &[u8; MSG_SIZE]) -> Request {
        let u32_at =
            |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let mut body = [0u8; 128];
        body.copy_from_slice(&bytes[24..]);
        Request {
            kind: u32_at(0),
            id: u32_at(4),
            body,
        }
    }

    pub(super) fn u32_at(&self, offset: usize) -> u32 {
        let b = &self.body[offset..offset + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    pub(super) fn u64_at(&self, offset: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.body[offset..offset + 8]);
        u64::from_le_bytes(b)
    }
}

/// `struct vduse_dev_response`: `result`, and for GET_VQ_STATE the
/// queue index and its split-ring available index.
pub(super) fn response(id: u32, result: u32, vq_state: Option<(u32, u16)>) -> [u8; MSG_SIZE] {
    let mut r = [0u8; MSG_SIZE];
    r[0..4].copy_from_slice(&id.to_le_bytes());
    r[4..8].copy_from_slice(&result.to_le_bytes());
    if let Some((index, avail)) = vq_state {
        r[24..28].copy_from_slice(&index.to_le_bytes());
        r[28..30].copy_from_slice(&avail.to_le_bytes());
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structures_have_the_kernel_sizes() {
        // linux/vduse.h: the ioctl numbers encode these sizes.
        assert_eq!(std::mem::size_of::<DevConfig>(), 336);
        assert_eq!(std::mem::size_of::<IotlbEntry>(), 32);
        assert_eq!(std::mem::size_of::<VqConfig>(), 32);
        assert_eq!(std::mem::size_of::<VqInfo>(), 48);
        assert_eq!(std::mem::offset_of!(VqInfo, state), 32);
        assert_eq!(std::mem::offset_of!(VqInfo, ready), 40);
        assert_eq!(std::mem::size_of::<VqEventfd>(), 8);
        assert_eq!(std::mem::size_of::<IovaUmem>(), 48);
        assert_eq!(std::mem::size_of::<IovaInfo>(), 48);
        // _IOW(0x81, 0x02, 336 bytes) and _IOWR(0x81, 0x10, 32 bytes).
        assert_eq!(VDUSE_CREATE_DEV(), 0x4150_8102);
        assert_eq!(VDUSE_IOTLB_GET_FD(), 0xc020_8110);
        assert_eq!(VDUSE_VQ_INJECT_IRQ(), 0x4004_8117);
    }

    #[test]
    fn messages_round_trip_their_fields() {
        let mut raw = [0u8; MSG_SIZE];
        raw[0..4].copy_from_slice(&REQ_UPDATE_IOTLB.to_le_bytes());
        raw[4..8].copy_from_slice(&77u32.to_le_bytes());
        raw[24..32].copy_from_slice(&0x1000u64.to_le_bytes());
        raw[32..40].copy_from_slice(&0x1fffu64.to_le_bytes());
        let r = Request::parse(&raw);
        assert_eq!((r.kind, r.id), (REQ_UPDATE_IOTLB, 77));
        assert_eq!((r.u64_at(0), r.u64_at(8)), (0x1000, 0x1fff));
        let resp = response(77, RESULT_OK, Some((1, 300)));
        assert_eq!(&resp[0..8], &[77, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&resp[24..30], &[1, 0, 0, 0, 44, 1]);
        assert!(name_bytes("").is_err());
        assert!(name_bytes("a/b").is_err());
        assert!(name_bytes(&"x".repeat(256)).is_err());
        assert_eq!(&name_bytes("vduse0").unwrap()[..7], b"vduse0\0");
    }
}

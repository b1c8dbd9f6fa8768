//! The ublk device's parameters, from what Identify Controller and
//! Identify Namespace say (pure: host-tested).
//!
//! - logical block: the namespace's LBA data size;
//! - physical block (and minimum/optimal I/O): the namespace's preferred
//!   write granularity (NPWG) when it reports one (NSFEAT.OPTPERF) and it
//!   is a power of two, else the logical block;
//! - largest request: the controller's transfer limit (MDTS), and no more
//!   than each tag's buffer;
//! - discard when the controller has Dataset Management, one range per
//!   request (a Deallocate carries one range here); write zeroes when it
//!   has Write Zeroes, up to what one command carries (2^16 blocks);
//! - a volatile write cache when Identify Controller says so (VWC), so
//!   the kernel sends flushes, and with it FUA (every NVMe Read and Write
//!   carries the FUA bit), so the kernel sends a FUA write instead of a
//!   write and a flush (without a volatile cache the kernel sends
//!   neither: every write is durable when it completes); `--no-fua`
//!   leaves FUA out.

use libublk::sys;
use nvme_driver::Namespace;
use nvme_driver::nvme_spec::identify::NsFeatures;
use nvme_driver::nvme_spec::{IdentifyController, Oncs};

/// Bytes per ublk sector (the kernel's unit).
pub const SECTOR: u64 = 512;
/// Most logical blocks one Write Zeroes command carries (NLB is 16 bits).
const MAX_WRITE_ZEROES_BLOCKS: u64 = 1 << 16;
/// Largest logical block ublk takes (logical_bs_shift <= PAGE_SHIFT).
const MAX_LOGICAL_BLOCK: u32 = 4096;

/// What the device looks like, taken from Identify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Namespace id.
    pub nsid: u32,
    /// Logical block size in bytes.
    pub lba_size: u32,
    /// Namespace size in logical blocks.
    pub blocks: u64,
    /// Preferred write granularity in logical blocks (NPWG + 1), if the
    /// namespace reports one.
    pub write_granularity: Option<u32>,
    /// The controller's transfer limit in bytes (from MDTS).
    pub max_transfer: usize,
    /// Dataset Management (Deallocate) supported.
    pub deallocate: bool,
    /// Write Zeroes supported.
    pub write_zeroes: bool,
    /// A volatile write cache is present.
    pub volatile_cache: bool,
    /// Offer FUA beside the volatile cache (NVMe's Read and Write always
    /// carry the bit; off for a device known not to honour it, e.g.
    /// QEMU's emulated NVMe: `--no-fua`).
    pub fua: bool,
}

/// Why the namespace cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamError {
    /// ublk takes logical blocks of 512 to 4096 bytes, powers of two.
    #[error(
        "namespace {nsid}: {lba_size}-byte logical blocks (ublk takes 512 to 4096, powers of two)"
    )]
    BlockSize {
        /// The namespace.
        nsid: u32,
        /// Its logical block size in bytes.
        lba_size: u32,
    },
    /// The transfer limit or the buffer is smaller than one block.
    #[error(
        "namespace {nsid}: largest request of {bytes} bytes is less than one {lba_size}-byte block"
    )]
    Transfer {
        /// The namespace.
        nsid: u32,
        /// The largest request in bytes.
        bytes: usize,
        /// Its logical block size in bytes.
        lba_size: u32,
    },
}

impl Geometry {
    /// The geometry of namespace `ns` of a controller identified by `id`
    /// whose transfer limit is `max_transfer` bytes.
    pub fn new(id: &IdentifyController, ns: &Namespace, max_transfer: usize) -> Self {
        let nsid = ns.nsid;
        let write_granularity = ns
            .identify
            .features()
            .contains(NsFeatures::OPTIMAL_PERFORMANCE)
            .then(|| u32::from(ns.identify.npwg.get()) + 1);
        let oncs = id.oncs();
        Geometry {
            nsid,
            lba_size: ns.lba_size,
            blocks: ns.blocks,
            write_granularity,
            max_transfer,
            deallocate: oncs.contains(Oncs::DSM),
            write_zeroes: oncs.contains(Oncs::WRITE_ZEROES),
            volatile_cache: id.vwc_present(),
            fua: true,
        }
    }

    /// 512-byte sectors per logical block.
    pub fn sectors_per_block(&self) -> u64 {
        u64::from(self.lba_size) / SECTOR
    }

    /// Size in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.blocks.saturating_mul(self.sectors_per_block())
    }

    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.sectors().saturating_mul(SECTOR)
    }

    /// Bytes of the largest read or write request, given tag buffers of
    /// at most `buf_limit` bytes: the smaller of the two, in whole blocks.
    pub fn max_io_bytes(&self, buf_limit: usize) -> Result<usize, ParamError> {
        self.check_block()?;
        let lba = self.lba_size as usize;
        let bytes = self.max_transfer.min(buf_limit) / lba * lba;
        if bytes == 0 {
            return Err(ParamError::Transfer {
                nsid: self.nsid,
                bytes: self.max_transfer.min(buf_limit),
                lba_size: self.lba_size,
            });
        }
        Ok(bytes)
    }

    fn check_block(&self) -> Result<(), ParamError> {
        if !self.lba_size.is_power_of_two()
            || !(SECTOR as u32..=MAX_LOGICAL_BLOCK).contains(&self.lba_size)
        {
            return Err(ParamError::BlockSize {
                nsid: self.nsid,
                lba_size: self.lba_size,
            });
        }
        Ok(())
    }

    /// The physical block in bytes: the preferred write granularity when
    /// it is a power of two of at most 64 KiB, else the logical block.
    fn physical_block(&self) -> u32 {
        self.write_granularity
            .and_then(|g| g.checked_mul(self.lba_size))
            .filter(|b| b.is_power_of_two() && *b <= 64 << 10)
            .unwrap_or(self.lba_size)
            .max(self.lba_size)
    }

    /// The ublk parameters for tag buffers of `buf_bytes` bytes (a result
    /// of [`Geometry::max_io_bytes`]).
    pub fn ublk_params(&self, buf_bytes: usize) -> Result<sys::ublk_params, ParamError> {
        self.check_block()?;
        let max_io = self.max_io_bytes(buf_bytes)?;
        let logical_shift = self.lba_size.trailing_zeros() as u8;
        let physical_shift = self.physical_block().trailing_zeros() as u8;
        let mut attrs = 0;
        if self.volatile_cache {
            attrs |= sys::UBLK_ATTR_VOLATILE_CACHE;
            // FUA is mandatory in NVMe's Read and Write; the kernel takes
            // it only beside a volatile cache.
            if self.fua {
                attrs |= sys::UBLK_ATTR_FUA;
            }
        }
        let mut params = sys::ublk_params {
            types: sys::UBLK_PARAM_TYPE_BASIC,
            basic: sys::ublk_param_basic {
                attrs,
                logical_bs_shift: logical_shift,
                physical_bs_shift: physical_shift,
                io_min_shift: physical_shift,
                io_opt_shift: physical_shift,
                max_sectors: u32::try_from(max_io as u64 / SECTOR).unwrap_or(u32::MAX),
                dev_sectors: self.sectors(),
                ..Default::default()
            },
            ..Default::default()
        };
        if self.deallocate || self.write_zeroes {
            let spb = self.sectors_per_block();
            // Whole blocks, in sectors, that fit a u32 of sectors.
            let cap = |sectors: u64| {
                u32::try_from(sectors.min(u64::from(u32::MAX)) / spb * spb).unwrap_or(0)
            };
            params.types |= sys::UBLK_PARAM_TYPE_DISCARD;
            params.discard = sys::ublk_param_discard {
                discard_alignment: 0,
                // The kernel wants a granularity even without discard.
                discard_granularity: self.physical_block(),
                max_discard_sectors: if self.deallocate {
                    // One range of up to 2^32 - 1 blocks per Deallocate.
                    cap(u64::from(u32::MAX).saturating_mul(spb))
                } else {
                    0
                },
                max_write_zeroes_sectors: if self.write_zeroes {
                    cap(MAX_WRITE_ZEROES_BLOCKS * spb)
                } else {
                    0
                },
                max_discard_segments: u16::from(self.deallocate),
                reserved0: 0,
            };
        }
        Ok(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> Geometry {
        Geometry {
            nsid: 1,
            lba_size: 512,
            blocks: 1 << 21,
            write_granularity: None,
            max_transfer: 512 << 10,
            deallocate: true,
            write_zeroes: true,
            volatile_cache: true,
            fua: true,
        }
    }

    #[test]
    fn basic_parameters_follow_the_namespace_and_mdts() {
        let g = geometry();
        let p = g.ublk_params(1 << 20).expect("params");
        assert_eq!(p.basic.logical_bs_shift, 9);
        assert_eq!(p.basic.physical_bs_shift, 9);
        assert_eq!(p.basic.dev_sectors, 1 << 21);
        // MDTS (512 KiB) is below the 1 MiB buffer.
        assert_eq!(p.basic.max_sectors, 1024);
        assert_eq!(
            p.basic.attrs,
            sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA
        );
        // The buffer is below MDTS.
        let p = g.ublk_params(128 << 10).expect("params");
        assert_eq!(p.basic.max_sectors, 256);
        // --no-fua: the cache alone (the kernel sends write + flush).
        let p = Geometry { fua: false, ..g }
            .ublk_params(1 << 20)
            .expect("params");
        assert_eq!(p.basic.attrs, sys::UBLK_ATTR_VOLATILE_CACHE);
    }

    #[test]
    fn four_k_blocks_and_granularity() {
        let g = Geometry {
            lba_size: 4096,
            blocks: 1000,
            write_granularity: Some(4),
            ..geometry()
        };
        let p = g.ublk_params(1 << 20).expect("params");
        assert_eq!(p.basic.logical_bs_shift, 12);
        assert_eq!(p.basic.physical_bs_shift, 14);
        assert_eq!(p.basic.dev_sectors, 8000);
        assert_eq!(p.discard.discard_granularity, 16384);
        // Whole 4 KiB blocks: a multiple of 8 sectors.
        assert_eq!(p.discard.max_discard_sectors % 8, 0);
        assert_eq!(p.discard.max_write_zeroes_sectors, (1 << 16) * 8);
        // A granularity that is no power of two is ignored.
        let g = Geometry {
            write_granularity: Some(3),
            ..g
        };
        assert_eq!(
            g.ublk_params(1 << 20).expect("p").basic.physical_bs_shift,
            12
        );
    }

    #[test]
    fn no_cache_no_discard_no_write_zeroes() {
        let g = Geometry {
            deallocate: false,
            write_zeroes: false,
            volatile_cache: false,
            ..geometry()
        };
        let p = g.ublk_params(1 << 20).expect("params");
        // No cache: neither flushes nor FUA (every write is durable).
        assert_eq!(p.basic.attrs, 0);
        assert_eq!(p.types & sys::UBLK_PARAM_TYPE_DISCARD, 0);
        let g = Geometry {
            write_zeroes: true,
            ..g
        };
        let p = g.ublk_params(1 << 20).expect("params");
        assert_ne!(p.types & sys::UBLK_PARAM_TYPE_DISCARD, 0);
        assert_eq!(p.discard.max_discard_sectors, 0);
        assert_eq!(p.discard.max_discard_segments, 0);
        assert_ne!(p.discard.discard_granularity, 0);
    }

    #[test]
    fn unusable_geometries_are_refused() {
        let g = Geometry {
            lba_size: 8192,
            ..geometry()
        };
        assert!(matches!(
            g.ublk_params(1 << 20),
            Err(ParamError::BlockSize { .. })
        ));
        let g = Geometry {
            max_transfer: 256,
            ..geometry()
        };
        assert!(matches!(
            g.ublk_params(1 << 20),
            Err(ParamError::Transfer { .. })
        ));
    }
}

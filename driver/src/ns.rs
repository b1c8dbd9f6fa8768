//! Namespaces: what Identify Namespace says, checked before use.

use nvme_spec::IdentifyNamespace;

use crate::error::{Error, Result};

/// Smallest and largest LBA data size the driver accepts.
const LBA_SIZE_RANGE: std::ops::RangeInclusive<u32> = 512..=(64 << 10);

/// An active namespace.
#[derive(Debug, Clone)]
pub struct Namespace {
    /// Namespace id.
    pub nsid: u32,
    /// Bytes per logical block.
    pub lba_size: u32,
    /// Size in logical blocks (NSZE).
    pub blocks: u64,
    /// Capacity in logical blocks (NCAP).
    pub capacity: u64,
    /// Blocks in use (NUSE).
    pub utilization: u64,
    /// Metadata bytes per block of the current format.
    pub metadata_size: u16,
    /// Index of the current LBA format.
    pub lba_format: u8,
    /// The raw Identify Namespace data.
    pub identify: Box<IdentifyNamespace>,
}

impl Namespace {
    /// Validates `id` (from the device) and keeps it.
    pub fn from_identify(nsid: u32, id: Box<IdentifyNamespace>) -> Result<Self> {
        let format = id.current_lba_format().ok_or_else(|| {
            Error::BadDevice(format!(
                "namespace {nsid}: current LBA format {} is not among its {} formats",
                id.current_lba_format_index(),
                id.lba_format_count()
            ))
        })?;
        let lba_size = format
            .lba_size()
            .filter(|s| LBA_SIZE_RANGE.contains(s))
            .ok_or_else(|| {
                Error::BadDevice(format!(
                    "namespace {nsid}: LBA data size 2^{} is not supported",
                    format.lbads
                ))
            })?;
        let blocks = id.nsze();
        if blocks == 0 || blocks.checked_mul(lba_size as u64).is_none() {
            return Err(Error::BadDevice(format!(
                "namespace {nsid}: size of {blocks} blocks"
            )));
        }
        Ok(Namespace {
            nsid,
            lba_size,
            blocks,
            capacity: id.ncap(),
            utilization: id.nuse(),
            metadata_size: format.metadata_size(),
            lba_format: id.current_lba_format_index(),
            identify: id,
        })
    }

    /// Size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.blocks * self.lba_size as u64
    }

    /// Checks that `blocks` blocks from `slba` lie inside the namespace.
    pub fn check_range(&self, slba: u64, blocks: u64) -> Result<()> {
        check_range(self.nsid, self.blocks, slba, blocks)
    }

    /// Number of blocks in `len` bytes, which must be a positive multiple of
    /// the LBA size.
    pub fn blocks_in(&self, len: usize) -> Result<u64> {
        if len == 0 || !len.is_multiple_of(self.lba_size as usize) {
            return Err(Error::BadBuffer(format!(
                "data length {len} is not a multiple of the {}-byte LBA size of namespace {}",
                self.lba_size, self.nsid
            )));
        }
        Ok((len / self.lba_size as usize) as u64)
    }
}

/// Checks that `blocks` blocks from `slba` lie inside namespace `nsid` of
/// `capacity` blocks (and are not zero).
pub(crate) fn check_range(nsid: u32, capacity: u64, slba: u64, blocks: u64) -> Result<()> {
    if blocks == 0 {
        return Err(no_blocks());
    }
    if slba.checked_add(blocks).is_none_or(|end| end > capacity) {
        return Err(Error::LbaOutOfRange {
            nsid,
            slba,
            blocks,
            capacity,
        });
    }
    Ok(())
}

/// Built out of line: the check is on every request's path.
#[cold]
#[inline(never)]
fn no_blocks() -> Error {
    Error::BadBuffer("a transfer of 0 blocks".into())
}

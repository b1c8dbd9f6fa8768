//! What the virtio-blk device tells its driver: feature bits and the
//! configuration space (`struct virtio_blk_config`, little-endian), all
//! derived from the namespace and the controller so that they are true.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// virtio-blk counts in 512-byte sectors, whatever the block size.
pub const SECTOR: u64 = 512;
/// Size of `struct virtio_blk_config` (through the zoned fields).
pub const CONFIG_SIZE: usize = 96;
/// Most ranges in one DISCARD or WRITE_ZEROES request.
pub const MAX_RANGE_SEGMENTS: u32 = 16;
/// Most blocks of one NVMe Write Zeroes command (NLB is 16 bits).
const MAX_WRITE_ZEROES_BLOCKS: u64 = 1 << 16;

/// The device as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Namespace size in bytes.
    pub capacity_bytes: u64,
    /// LBA size in bytes (blk_size).
    pub lba_size: u32,
    /// The controller's transfer limit in bytes (MDTS).
    pub max_transfer: u32,
    /// Most data segments of one request (seg_max).
    pub seg_max: u32,
    /// Virtqueues offered.
    pub queues: u16,
    /// Descriptors per virtqueue at most.
    pub queue_size: u16,
    /// The controller has a volatile write cache (FLUSH matters, wce = 1).
    pub write_cache: bool,
    /// Dataset Management (deallocate) is supported: DISCARD.
    pub discard: bool,
    /// Write Zeroes is supported: WRITE_ZEROES.
    pub write_zeroes: bool,
}

impl DeviceConfig {
    /// Sectors per LBA (blk_size / 512).
    pub fn sectors_per_block(&self) -> u64 {
        u64::from(self.lba_size) / SECTOR
    }

    /// The virtio feature bits offered (vhost-user's own bit is added by
    /// the back end).
    pub fn features(&self) -> u64 {
        let mut f = 1u64 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_BLK_F_SIZE_MAX
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_TOPOLOGY
            | 1 << VIRTIO_BLK_F_MQ;
        // FLUSH offered means a write-back cache: only when the controller
        // has a volatile write cache (a FLUSH sent anyway is still served).
        if self.write_cache {
            f |= 1 << VIRTIO_BLK_F_FLUSH;
        }
        if self.discard {
            f |= 1 << VIRTIO_BLK_F_DISCARD;
        }
        if self.write_zeroes {
            f |= 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }

    /// Largest discard or write-zeroes range, in sectors (u32, whole
    /// blocks). Write Zeroes commands are split by the driver, so the
    /// limit is one virtio range's field width.
    fn max_range_sectors(&self) -> u32 {
        let whole_blocks = u64::from(u32::MAX) / self.sectors_per_block();
        (whole_blocks * self.sectors_per_block()) as u32
    }

    /// `struct virtio_blk_config`, little-endian.
    pub fn bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut c = [0u8; CONFIG_SIZE];
        let mut put = |offset: usize, bytes: &[u8]| {
            c[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        put(0, &(self.capacity_bytes / SECTOR).to_le_bytes());
        // size_max: one segment is at most the transfer limit.
        put(8, &self.max_transfer.to_le_bytes());
        put(12, &self.seg_max.to_le_bytes());
        // geometry (16..20) stays zero: not offered.
        put(20, &self.lba_size.to_le_bytes());
        // Topology: physical block = logical block, no offset, minimum
        // I/O one block, optimal I/O the transfer limit (in blocks).
        put(24, &[0, 0]);
        put(26, &1u16.to_le_bytes());
        put(28, &(self.max_transfer / self.lba_size).to_le_bytes());
        put(32, &[u8::from(self.write_cache)]);
        put(34, &self.queues.to_le_bytes());
        if self.discard {
            put(36, &self.max_range_sectors().to_le_bytes());
            put(40, &MAX_RANGE_SEGMENTS.to_le_bytes());
            put(44, &(self.sectors_per_block() as u32).to_le_bytes());
        }
        if self.write_zeroes {
            let sectors = (MAX_WRITE_ZEROES_BLOCKS * self.sectors_per_block())
                .min(u64::from(self.max_range_sectors())) as u32;
            put(48, &sectors.to_le_bytes());
            put(52, &MAX_RANGE_SEGMENTS.to_le_bytes());
            // write_zeroes_may_unmap (56) stays 0: zeroes are written.
        }
        c
    }

    /// `size` bytes of the configuration space from `offset` (what a
    /// GET_CONFIG asks for); empty when the range is outside it.
    pub fn read(&self, offset: u32, size: u32) -> Vec<u8> {
        let bytes = self.bytes();
        let start = offset as usize;
        match start.checked_add(size as usize) {
            Some(end) if end <= bytes.len() => bytes[start..end].to_vec(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DeviceConfig {
        DeviceConfig {
            capacity_bytes: 1 << 30,
            lba_size: 4096,
            max_transfer: 512 << 10,
            seg_max: 126,
            queues: 2,
            queue_size: 256,
            write_cache: true,
            discard: true,
            write_zeroes: false,
        }
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
    }

    #[test]
    fn the_config_space_tells_the_namespace_and_limits() {
        let c = config();
        let b = c.bytes();
        assert_eq!(u64::from_le_bytes(b[0..8].try_into().expect("8")), 2 << 20);
        assert_eq!(u32_at(&b, 8), 512 << 10, "size_max = MDTS");
        assert_eq!(u32_at(&b, 12), 126);
        assert_eq!(u32_at(&b, 20), 4096, "blk_size = LBA size");
        assert_eq!(u32_at(&b, 28), 128, "opt_io_size in blocks");
        assert_eq!(b[32], 1, "write cache");
        assert_eq!(u16::from_le_bytes([b[34], b[35]]), 2);
        assert_eq!(u32_at(&b, 36) % 8, 0, "discard in whole blocks");
        assert_eq!(u32_at(&b, 40), MAX_RANGE_SEGMENTS);
        assert_eq!(u32_at(&b, 44), 8);
        assert_eq!(u32_at(&b, 48), 0, "no write zeroes offered");
        let f = c.features();
        assert_ne!(f & 1 << VIRTIO_BLK_F_DISCARD, 0);
        assert_eq!(f & 1 << VIRTIO_BLK_F_WRITE_ZEROES, 0);
        assert_ne!(f & 1 << VIRTIO_F_VERSION_1, 0);
        assert_ne!(f & 1 << VIRTIO_BLK_F_FLUSH, 0, "write cache: FLUSH offered");
        let through = DeviceConfig {
            write_cache: false,
            ..config()
        };
        assert_eq!(through.features() & 1 << VIRTIO_BLK_F_FLUSH, 0);
        assert_eq!(through.bytes()[32], 0, "wce 0");
    }

    #[test]
    fn write_zeroes_limits_fit_one_range() {
        let c = DeviceConfig {
            lba_size: 512,
            write_zeroes: true,
            discard: false,
            ..config()
        };
        let b = c.bytes();
        assert_eq!(u32_at(&b, 36), 0, "no discard offered");
        assert_eq!(u32_at(&b, 48), 1 << 16);
        assert_ne!(c.features() & 1 << VIRTIO_BLK_F_WRITE_ZEROES, 0);
    }

    #[test]
    fn config_reads_are_bounded() {
        let c = config();
        assert_eq!(c.read(20, 4), 4096u32.to_le_bytes().to_vec());
        assert_eq!(c.read(0, CONFIG_SIZE as u32).len(), CONFIG_SIZE);
        assert!(c.read(90, 8).is_empty());
        assert!(c.read(u32::MAX, 8).is_empty());
    }
}

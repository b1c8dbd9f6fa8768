//! A ublk request, checked and turned into an NVMe command (pure:
//! host-tested).
//!
//! The kernel fills each tag's I/O descriptor (operation, flags, first
//! sector, sector count) before it hands the tag to the daemon. Nothing in
//! it is used before [`plan`] has checked it: the operation is one this
//! target serves, the range is whole logical blocks inside the namespace,
//! and a read or write fits the tag's buffer and the device's transfer
//! limit.

use libublk::sys;

use crate::params::{Geometry, SECTOR};

/// The fields of a ublk I/O descriptor, copied out of the shared page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Operation (bits 0-7) and flags (bits 8-31).
    pub op_flags: u32,
    /// Sectors (512 bytes) the request covers.
    pub nr_sectors: u32,
    /// First sector.
    pub start_sector: u64,
}

impl From<&sys::ublksrv_io_desc> for Descriptor {
    fn from(iod: &sys::ublksrv_io_desc) -> Self {
        Descriptor {
            op_flags: iod.op_flags,
            nr_sectors: iod.nr_sectors,
            start_sector: iod.start_sector,
        }
    }
}

/// The NVMe operation a request maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Read into the tag's buffer.
    Read,
    /// Write from the tag's buffer.
    Write,
    /// Flush the volatile write cache.
    Flush,
    /// Deallocate (Dataset Management).
    Deallocate,
    /// Write Zeroes.
    WriteZeroes,
}

/// A checked request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// What to do.
    pub op: Op,
    /// First logical block.
    pub slba: u64,
    /// Logical blocks (0 for Flush).
    pub blocks: u64,
    /// What a success completes to the kernel: the bytes moved for a
    /// read or write, 0 otherwise.
    pub done_bytes: i32,
}

/// Why a request was refused (it completes with the error's errno).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    /// An operation this target does not serve.
    #[error("operation {0} is not supported")]
    Unsupported(u8),
    /// Discard or write zeroes on a controller without the command.
    #[error("{0} is not supported by the controller")]
    NoCommand(&'static str),
    /// A range that is not whole logical blocks.
    #[error("sectors {start}+{count} are not whole {lba_size}-byte blocks")]
    Misaligned {
        /// First 512-byte sector.
        start: u64,
        /// Sectors.
        count: u32,
        /// The namespace's logical block size in bytes.
        lba_size: u32,
    },
    /// A range outside the device.
    #[error("sectors {start}+{count} go past the device's {sectors} sectors")]
    OutOfRange {
        /// First 512-byte sector.
        start: u64,
        /// Sectors.
        count: u32,
        /// The device's size in sectors.
        sectors: u64,
    },
    /// A data transfer of no sectors.
    #[error("a {0} of 0 sectors")]
    Empty(&'static str),
    /// A read or write larger than the tag's buffer.
    #[error("{bytes} bytes do not fit the {buffer}-byte buffer")]
    TooLarge {
        /// The transfer's bytes.
        bytes: u64,
        /// The tag's buffer in bytes.
        buffer: usize,
    },
}

impl Refused {
    /// The (negative) errno the request completes with.
    pub fn errno(&self) -> i32 {
        match self {
            Refused::Unsupported(_) | Refused::NoCommand(_) => -libc::EOPNOTSUPP,
            Refused::Misaligned { .. } | Refused::Empty(_) | Refused::TooLarge { .. } => {
                -libc::EINVAL
            }
            Refused::OutOfRange { .. } => -libc::EIO,
        }
    }
}

/// Checks `d` against the device and a tag buffer of `buffer` bytes and
/// returns the NVMe command to send.
pub fn plan(d: Descriptor, g: &Geometry, buffer: usize) -> Result<Plan, Refused> {
    let op = match (d.op_flags & 0xff) as u8 {
        x if u32::from(x) == sys::UBLK_IO_OP_READ => Op::Read,
        x if u32::from(x) == sys::UBLK_IO_OP_WRITE => Op::Write,
        x if u32::from(x) == sys::UBLK_IO_OP_FLUSH => {
            return Ok(Plan {
                op: Op::Flush,
                slba: 0,
                blocks: 0,
                done_bytes: 0,
            });
        }
        x if u32::from(x) == sys::UBLK_IO_OP_DISCARD => {
            if !g.deallocate {
                return Err(Refused::NoCommand("discard"));
            }
            Op::Deallocate
        }
        x if u32::from(x) == sys::UBLK_IO_OP_WRITE_ZEROES => {
            if !g.write_zeroes {
                return Err(Refused::NoCommand("write zeroes"));
            }
            Op::WriteZeroes
        }
        other => return Err(Refused::Unsupported(other)),
    };
    let name = match op {
        Op::Read => "read",
        Op::Write => "write",
        Op::Deallocate => "discard",
        _ => "write zeroes",
    };
    if d.nr_sectors == 0 {
        return Err(Refused::Empty(name));
    }
    let spb = g.sectors_per_block();
    if !d.start_sector.is_multiple_of(spb) || !u64::from(d.nr_sectors).is_multiple_of(spb) {
        return Err(Refused::Misaligned {
            start: d.start_sector,
            count: d.nr_sectors,
            lba_size: g.lba_size,
        });
    }
    let sectors = g.sectors();
    if d.start_sector
        .checked_add(u64::from(d.nr_sectors))
        .is_none_or(|end| end > sectors)
    {
        return Err(Refused::OutOfRange {
            start: d.start_sector,
            count: d.nr_sectors,
            sectors,
        });
    }
    let bytes = u64::from(d.nr_sectors) * SECTOR;
    let mut done_bytes = 0;
    if matches!(op, Op::Read | Op::Write) {
        // A buffer never exceeds i32::MAX bytes (ublk's limit is far
        // below), so a size that fits it fits the completion.
        if bytes > buffer as u64 || bytes > i32::MAX as u64 {
            return Err(Refused::TooLarge { bytes, buffer });
        }
        done_bytes = bytes as i32;
    }
    Ok(Plan {
        op,
        slba: d.start_sector / spb,
        blocks: u64::from(d.nr_sectors) / spb,
        done_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(lba_size: u32) -> Geometry {
        Geometry {
            nsid: 1,
            lba_size,
            blocks: 1024,
            write_granularity: None,
            max_transfer: 128 << 10,
            deallocate: true,
            write_zeroes: false,
            volatile_cache: true,
        }
    }

    fn desc(op: u32, start: u64, count: u32) -> Descriptor {
        Descriptor {
            op_flags: op,
            nr_sectors: count,
            start_sector: start,
        }
    }

    #[test]
    fn reads_and_writes_map_to_blocks() {
        let g = geometry(4096);
        let p = plan(desc(sys::UBLK_IO_OP_READ, 16, 8), &g, 4096).expect("plan");
        assert_eq!(
            (p.op, p.slba, p.blocks, p.done_bytes),
            (Op::Read, 2, 1, 4096)
        );
        // Flags in the upper bits (FUA) leave the operation alone.
        let fua = sys::UBLK_IO_OP_WRITE | sys::UBLK_IO_F_FUA;
        let p = plan(desc(fua, 0, 16), &g, 8192).expect("plan");
        assert_eq!((p.op, p.slba, p.blocks), (Op::Write, 0, 2));
        // The last block of the device.
        let p = plan(desc(sys::UBLK_IO_OP_WRITE, 8 * 1023, 8), &g, 4096).expect("plan");
        assert_eq!(p.slba, 1023);
        let p = plan(desc(sys::UBLK_IO_OP_FLUSH, 0, 0), &g, 4096).expect("plan");
        assert_eq!(p.op, Op::Flush);
        let p = plan(desc(sys::UBLK_IO_OP_DISCARD, 0, 8 * 1024), &g, 4096).expect("plan");
        assert_eq!((p.op, p.blocks, p.done_bytes), (Op::Deallocate, 1024, 0));
    }

    #[test]
    fn bad_descriptors_are_refused() {
        let g = geometry(4096);
        let cases = [
            // Past the end, and wrapping around.
            desc(sys::UBLK_IO_OP_READ, 8 * 1023, 16),
            desc(sys::UBLK_IO_OP_READ, u64::MAX - 7, 8),
            // Not whole 4 KiB blocks.
            desc(sys::UBLK_IO_OP_READ, 1, 8),
            desc(sys::UBLK_IO_OP_WRITE, 0, 9),
            // Larger than the buffer.
            desc(sys::UBLK_IO_OP_READ, 0, 16),
            // Empty.
            desc(sys::UBLK_IO_OP_WRITE, 0, 0),
            desc(sys::UBLK_IO_OP_DISCARD, 0, 0),
            // Not served.
            desc(sys::UBLK_IO_OP_WRITE_SAME, 0, 8),
            desc(sys::UBLK_IO_OP_ZONE_APPEND, 0, 8),
            desc(sys::UBLK_IO_OP_REPORT_ZONES, 0, 8),
            desc(0xff, 0, 8),
            // No Write Zeroes on this controller.
            desc(sys::UBLK_IO_OP_WRITE_ZEROES, 0, 8),
        ];
        for d in cases {
            let r = plan(d, &g, 4096);
            assert!(r.is_err(), "{d:?} was accepted: {r:?}");
            assert!(r.unwrap_err().errno() < 0);
        }
        assert_eq!(
            plan(desc(sys::UBLK_IO_OP_ZONE_OPEN, 0, 8), &g, 4096)
                .unwrap_err()
                .errno(),
            -libc::EOPNOTSUPP
        );
    }
}

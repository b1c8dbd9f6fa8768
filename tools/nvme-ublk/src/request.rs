//! A ublk request, checked and turned into an NVMe command (pure:
//! host-tested).
//!
//! The kernel fills each tag's I/O descriptor (operation, flags, first
//! sector, sector count) before it hands the tag to the daemon. Nothing in
//! it is used before [`plan`] has checked it: the operation is one this
//! target serves, the range is whole logical blocks inside the namespace,
//! and a read or write fits the tag's buffer and the device's transfer
//! limit. The request's flags become the NVMe command's control bits as
//! Linux's `nvme_setup_rw` sets them: FUA the FUA bit, FAILFAST_DEV
//! Limited Retry (reads and writes only: the driver refuses hints on
//! other commands).

use libublk::sys;
use nvme_driver::{DmaBuffer, IoHints, IoRequest, nvme_spec::RwFlags};

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
    /// The command's control bits (read and write only): FUA from
    /// `UBLK_IO_F_FUA`, Limited Retry from `UBLK_IO_F_FAILFAST_DEV`.
    pub hints: IoHints,
}

impl Plan {
    /// Whether the request moves data through the tag's buffer.
    pub fn moves_data(&self) -> bool {
        matches!(self.op, Op::Read | Op::Write)
    }

    /// The NVMe request for namespace `nsid`. A read or write takes the
    /// tag's buffer from `buf` (called only for them); `None` if it has
    /// none.
    pub fn request(&self, nsid: u32, buf: impl FnOnce() -> Option<DmaBuffer>) -> Option<IoRequest> {
        let Plan {
            op, slba, blocks, ..
        } = *self;
        Some(match op {
            Op::Read => IoRequest::read(nsid, slba, blocks, buf()?).with_hints(self.hints),
            Op::Write => IoRequest::write(nsid, slba, blocks, buf()?).with_hints(self.hints),
            Op::Flush => IoRequest::flush(nsid),
            Op::Deallocate => IoRequest::deallocate(nsid, slba, blocks),
            Op::WriteZeroes => IoRequest::write_zeroes(nsid, slba, blocks),
        })
    }
}

/// The control bits of a read or write with ublk flags `op_flags`.
fn hints(op_flags: u32) -> IoHints {
    let mut h = IoHints::NONE;
    if op_flags & sys::UBLK_IO_F_FUA != 0 {
        h.flags |= RwFlags::FUA;
    }
    if op_flags & sys::UBLK_IO_F_FAILFAST_DEV != 0 {
        h.flags |= RwFlags::LIMITED_RETRY;
    }
    h
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
                hints: IoHints::NONE,
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
    let mut rw_hints = IoHints::NONE;
    if matches!(op, Op::Read | Op::Write) {
        rw_hints = hints(d.op_flags);
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
        hints: rw_hints,
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
            fua: true,
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
        assert!(p.hints.is_none());
        // Flags in the upper bits (FUA) leave the operation alone.
        let fua = sys::UBLK_IO_OP_WRITE | sys::UBLK_IO_F_FUA;
        let p = plan(desc(fua, 0, 16), &g, 8192).expect("plan");
        assert_eq!((p.op, p.slba, p.blocks), (Op::Write, 0, 2));
        assert_eq!(p.hints, IoHints::FUA);
        // The last block of the device.
        let p = plan(desc(sys::UBLK_IO_OP_WRITE, 8 * 1023, 8), &g, 4096).expect("plan");
        assert_eq!(p.slba, 1023);
        let p = plan(desc(sys::UBLK_IO_OP_FLUSH, 0, 0), &g, 4096).expect("plan");
        assert_eq!(p.op, Op::Flush);
        let p = plan(desc(sys::UBLK_IO_OP_DISCARD, 0, 8 * 1024), &g, 4096).expect("plan");
        assert_eq!((p.op, p.blocks, p.done_bytes), (Op::Deallocate, 1024, 0));
    }

    #[test]
    fn flags_become_control_bits_of_reads_and_writes_only() {
        let g = geometry(512);
        let flags = |op: u32| plan(desc(op, 0, 8), &g, 4096).expect("plan").hints.flags;
        let (rd, wr) = (sys::UBLK_IO_OP_READ, sys::UBLK_IO_OP_WRITE);
        assert_eq!(flags(wr | sys::UBLK_IO_F_FUA), RwFlags::FUA);
        // A FUA read (the kernel nvme driver sends the bit for reads too).
        assert_eq!(flags(rd | sys::UBLK_IO_F_FUA), RwFlags::FUA);
        assert_eq!(
            flags(wr | sys::UBLK_IO_F_FUA | sys::UBLK_IO_F_FAILFAST_DEV),
            RwFlags::FUA | RwFlags::LIMITED_RETRY
        );
        assert_eq!(
            flags(rd | sys::UBLK_IO_F_FAILFAST_DEV),
            RwFlags::LIMITED_RETRY
        );
        // Flags with no NVMe counterpart are dropped.
        let other = sys::UBLK_IO_F_FAILFAST_TRANSPORT
            | sys::UBLK_IO_F_FAILFAST_DRIVER
            | sys::UBLK_IO_F_META
            | sys::UBLK_IO_F_NOUNMAP;
        assert_eq!(flags(wr | other), RwFlags::empty());
        // Other operations never carry hints (the driver refuses them).
        let g = Geometry {
            write_zeroes: true,
            ..g
        };
        for op in [
            sys::UBLK_IO_OP_FLUSH,
            sys::UBLK_IO_OP_DISCARD,
            sys::UBLK_IO_OP_WRITE_ZEROES,
        ] {
            let p = plan(desc(op | sys::UBLK_IO_F_FUA, 0, 8), &g, 4096).expect("plan");
            assert!(p.hints.is_none(), "{p:?}");
        }
    }

    /// The mapped requests on a mock controller: a FUA write reaches the
    /// device with CDW12's FUA bit, a plain one without, and a flush
    /// whose descriptor carried FUA is accepted without it.
    #[test]
    fn fua_reaches_the_nvme_command() {
        use nvme_driver::mock::{MockConfig, MockController};
        use nvme_driver::nvme_spec::NvmOpcode;

        let (mock, mut qp) =
            MockController::with_qpair(MockConfig::new(&[(1, 512, 1024)])).expect("mock");
        let g = geometry(512);
        let (rd, wr, fua) = (
            sys::UBLK_IO_OP_READ,
            sys::UBLK_IO_OP_WRITE,
            sys::UBLK_IO_F_FUA,
        );
        let descs = [
            desc(wr | fua, 8, 8),
            desc(wr, 16, 8),
            desc(rd | fua, 8, 8),
            desc(sys::UBLK_IO_OP_FLUSH | fua, 0, 0),
            desc(wr | sys::UBLK_IO_F_FAILFAST_DEV, 24, 8),
        ];
        for (tag, d) in descs.into_iter().enumerate() {
            let p = plan(d, &g, 4096).expect("plan");
            let mut taken = false;
            let req = p
                .request(g.nsid, || {
                    taken = true;
                    mock.pool().alloc(4096).ok()
                })
                .expect("a request");
            assert_eq!(taken, p.moves_data(), "{p:?}");
            qp.submit(req.with_tag(tag as u64)).expect("accepted");
            let mut done = Vec::new();
            while done.is_empty() {
                mock.process().expect("process");
                qp.poll(&mut done).expect("poll");
            }
            assert!(done[0].result.is_ok(), "{d:?}: {:?}", done[0].result);
        }
        let cmds: Vec<(u8, u64, RwFlags)> = mock
            .commands()
            .iter()
            .map(|c| (c.opcode, c.slba, c.rw_flags))
            .collect();
        let (w, r, f) = (
            NvmOpcode::Write as u8,
            NvmOpcode::Read as u8,
            NvmOpcode::Flush as u8,
        );
        assert_eq!(
            cmds,
            [
                (w, 8, RwFlags::FUA),
                (w, 16, RwFlags::empty()),
                (r, 8, RwFlags::FUA),
                (f, 0, RwFlags::empty()),
                (w, 24, RwFlags::LIMITED_RETRY),
            ]
        );
        assert!(mock.violations().is_empty(), "{:?}", mock.violations());
    }

    #[test]
    fn a_data_request_without_a_buffer_is_none() {
        let g = geometry(512);
        let p = plan(desc(sys::UBLK_IO_OP_READ, 0, 8), &g, 4096).expect("plan");
        assert!(p.request(1, || None).is_none());
        let p = plan(desc(sys::UBLK_IO_OP_FLUSH, 0, 0), &g, 4096).expect("plan");
        assert!(p.request(1, || panic!("a flush takes no buffer")).is_some());
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

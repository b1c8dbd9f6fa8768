//! Parsing a virtio-blk request out of a descriptor chain: pure (it reads
//! guest memory, never the disk), so every rule about guest-controlled
//! values is checked here and tested on the host.
//!
//! A request is a header (16 bytes, device-readable), data descriptors,
//! and a status byte (the last descriptor, device-writable, 1 byte). The
//! chain, every address and length, the directions, the sector range and
//! the block alignment come from the guest; anything wrong makes the
//! request fail ([`Reject`]), never the daemon.

use std::ops::Deref;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use crate::config::{DeviceConfig, MAX_RANGE_SEGMENTS, SECTOR};

/// Size of `struct virtio_blk_outhdr`.
const HEADER_SIZE: u32 = 16;
/// Size of one `struct virtio_blk_discard_write_zeroes`.
const RANGE_SIZE: u32 = 16;
/// Bytes of a GET_ID answer.
pub const ID_BYTES: usize = 20;

/// Why a request is refused. `Unsupported` answers VIRTIO_BLK_S_UNSUPP,
/// everything else VIRTIO_BLK_S_IOERR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// A request type (or flag) this device does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A malformed chain or out-of-range value.
    #[error("invalid request: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> Reject {
    Reject::Invalid(msg.into())
}

/// What a valid request asks for, in blocks of the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Read `blocks` from `slba` into the guest's `data` pieces.
    Read {
        /// First block.
        slba: u64,
        /// Block count.
        blocks: u64,
        /// (guest address, length) of each data descriptor, in order.
        data: Vec<(GuestAddress, u32)>,
    },
    /// Write `blocks` at `slba` from the guest's `data` pieces.
    Write {
        /// First block.
        slba: u64,
        /// Block count.
        blocks: u64,
        /// (guest address, length) of each data descriptor, in order.
        data: Vec<(GuestAddress, u32)>,
    },
    /// Flush the volatile write cache.
    Flush,
    /// Write the device id (up to 20 bytes) into `data`.
    GetId {
        /// (guest address, length) of each data descriptor, in order.
        data: Vec<(GuestAddress, u32)>,
    },
    /// Deallocate these (slba, blocks) ranges.
    Discard(Vec<(u64, u64)>),
    /// Write zeroes over these (slba, blocks) ranges.
    WriteZeroes(Vec<(u64, u64)>),
}

impl Action {
    /// Bytes the device writes into the guest's data buffers on success.
    pub fn bytes_written(&self) -> u32 {
        let sum = |d: &[(GuestAddress, u32)]| d.iter().map(|&(_, l)| l).sum::<u32>();
        match self {
            Action::Read { data, .. } => sum(data),
            Action::GetId { data } => sum(data).min(ID_BYTES as u32),
            _ => 0,
        }
    }
}

/// A parsed descriptor chain: where its status goes (None when the chain
/// has no usable status byte: then nothing is written, the chain is only
/// returned) and what to do, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Index of the chain's head descriptor (for the used ring).
    pub head: u16,
    /// The guest address of the status byte.
    pub status: Option<GuestAddress>,
    /// The request, or why it is refused.
    pub action: Result<Action, Reject>,
}

/// One descriptor, as read from the chain.
#[derive(Debug, Clone, Copy)]
struct Desc {
    addr: GuestAddress,
    len: u32,
    writable: bool,
}

/// Parses the chain at `head` against the device `config`.
pub fn parse<M>(chain: DescriptorChain<M>, config: &DeviceConfig) -> Parsed
where
    M: Deref + Clone,
    M::Target: GuestMemory,
{
    let head = chain.head_index();
    let mem = chain.memory();
    // Header + seg_max data descriptors + status.
    let max_descs = config.seg_max as usize + 2;
    let mut descs = Vec::new();
    let mut truncated = false;
    let mut too_long = false;
    let mut iter = chain.clone();
    for d in iter.by_ref() {
        if descs.len() == max_descs {
            too_long = true;
            break;
        }
        descs.push(Desc {
            addr: d.addr(),
            len: d.len(),
            writable: d.is_write_only(),
        });
        // The chain iterator stops silently on a loop, a next index past
        // the table, an unreadable or nested indirect table: the last
        // descriptor it gave still says "next".
        truncated = d.has_next();
    }
    let status = descs.last().and_then(|d| {
        let at = GuestAddress(d.addr.0.checked_add(u64::from(d.len).checked_sub(1)?)?);
        (d.writable && !too_long && !truncated && mem.check_range(at, 1, Permissions::Write))
            .then_some(at)
    });
    let action = if too_long {
        Err(invalid(format!(
            "chain longer than {max_descs} descriptors"
        )))
    } else if truncated {
        Err(invalid(
            "chain ends early (loop, next index out of the table, or bad indirect table)",
        ))
    } else {
        check_chain(mem, &descs, config).and_then(|action| match status {
            Some(_) => Ok(action),
            None => Err(invalid("status byte outside guest memory")),
        })
    };
    Parsed {
        head,
        status,
        action,
    }
}

/// The checks after the chain was read whole.
fn check_chain<G: GuestMemory + ?Sized>(
    mem: &G,
    descs: &[Desc],
    config: &DeviceConfig,
) -> Result<Action, Reject> {
    let [header, data @ .., status] = descs else {
        return Err(invalid(format!("{} descriptors", descs.len())));
    };
    if !status.writable || status.len != 1 {
        return Err(invalid(format!(
            "status descriptor of {} bytes ({}), not 1 device-writable byte",
            status.len,
            if status.writable {
                "writable"
            } else {
                "read-only"
            }
        )));
    }
    if header.writable || header.len != HEADER_SIZE {
        return Err(invalid(format!(
            "header descriptor of {} bytes ({}), not {HEADER_SIZE} readable bytes",
            header.len,
            if header.writable {
                "writable"
            } else {
                "read-only"
            }
        )));
    }
    let mut raw = [0u8; HEADER_SIZE as usize];
    mem.read_slice(&mut raw, header.addr)
        .map_err(|e| invalid(format!("header at {:#x}: {e}", header.addr.0)))?;
    let kind = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let sector = u64::from_le_bytes([
        raw[8], raw[9], raw[10], raw[11], raw[12], raw[13], raw[14], raw[15],
    ]);
    let data: Vec<(GuestAddress, u32)> = data
        .iter()
        .filter(|d| d.len > 0)
        .map(|d| (d.addr, d.len))
        .collect();
    let writable = |want: bool| -> Result<(), Reject> {
        match descs[1..descs.len() - 1]
            .iter()
            .find(|d| d.len > 0 && d.writable != want)
        {
            Some(d) => Err(invalid(format!(
                "data descriptor at {:#x} is {} for this request",
                d.addr.0,
                if d.writable { "writable" } else { "read-only" }
            ))),
            None => Ok(()),
        }
    };
    for &(addr, len) in &data {
        if !mem.check_range(addr, len as usize, Permissions::ReadWrite) {
            return Err(invalid(format!(
                "data descriptor {:#x}+{len:#x} is outside guest memory",
                addr.0
            )));
        }
    }
    let total: u64 = data.iter().map(|&(_, l)| u64::from(l)).sum();
    match kind {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            let reading = kind == VIRTIO_BLK_T_IN;
            writable(reading)?;
            let (slba, blocks) = block_range(config, sector, total)?;
            Ok(if reading {
                Action::Read { slba, blocks, data }
            } else {
                Action::Write { slba, blocks, data }
            })
        }
        VIRTIO_BLK_T_FLUSH => Ok(Action::Flush),
        VIRTIO_BLK_T_GET_ID => {
            writable(true)?;
            if total == 0 {
                return Err(invalid("GET_ID without a buffer"));
            }
            Ok(Action::GetId { data })
        }
        VIRTIO_BLK_T_DISCARD if config.discard => {
            writable(false)?;
            ranges(mem, &data, total, config, false).map(Action::Discard)
        }
        VIRTIO_BLK_T_WRITE_ZEROES if config.write_zeroes => {
            writable(false)?;
            ranges(mem, &data, total, config, true).map(Action::WriteZeroes)
        }
        other => Err(Reject::Unsupported(format!("request type {other}"))),
    }
}

/// The blocks `len` bytes from `sector` cover, checked against the
/// namespace: whole blocks, inside it, not empty.
fn block_range(config: &DeviceConfig, sector: u64, len: u64) -> Result<(u64, u64), Reject> {
    let per = config.sectors_per_block();
    let lba = u64::from(config.lba_size);
    if len == 0 || !len.is_multiple_of(lba) || !sector.is_multiple_of(per) {
        return Err(invalid(format!(
            "{len} bytes at sector {sector}: not whole {lba}-byte blocks"
        )));
    }
    let end = sector
        .checked_mul(SECTOR)
        .and_then(|start| start.checked_add(len));
    if end.is_none_or(|end| end > config.capacity_bytes) {
        return Err(invalid(format!(
            "{len} bytes at sector {sector} go past the end ({} bytes)",
            config.capacity_bytes
        )));
    }
    Ok((sector / per, len / lba))
}

/// The ranges of a DISCARD or WRITE_ZEROES request, read from its data.
fn ranges<G: GuestMemory + ?Sized>(
    mem: &G,
    data: &[(GuestAddress, u32)],
    total: u64,
    config: &DeviceConfig,
    zeroes: bool,
) -> Result<Vec<(u64, u64)>, Reject> {
    let count = total / u64::from(RANGE_SIZE);
    if total == 0 || !total.is_multiple_of(u64::from(RANGE_SIZE)) {
        return Err(invalid(format!(
            "{total} bytes of ranges, not a multiple of {RANGE_SIZE}"
        )));
    }
    if count > u64::from(MAX_RANGE_SEGMENTS) {
        return Err(invalid(format!(
            "{count} ranges, more than {MAX_RANGE_SEGMENTS}"
        )));
    }
    let mut bytes = Vec::with_capacity(total as usize);
    for &(addr, len) in data {
        let at = bytes.len();
        bytes.resize(at + len as usize, 0);
        mem.read_slice(&mut bytes[at..], addr)
            .map_err(|e| invalid(format!("ranges at {:#x}: {e}", addr.0)))?;
    }
    let mut out = Vec::with_capacity(count as usize);
    for r in bytes.chunks_exact(RANGE_SIZE as usize) {
        let sector = u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]]);
        let sectors = u32::from_le_bytes([r[8], r[9], r[10], r[11]]);
        let flags = u32::from_le_bytes([r[12], r[13], r[14], r[15]]);
        let allowed = if zeroes {
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        } else {
            0
        };
        if flags & !allowed != 0 {
            return Err(Reject::Unsupported(format!("range flags {flags:#x}")));
        }
        out.push(block_range(config, sector, u64::from(sectors) * SECTOR)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestMemoryMmap;

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;
    const MEM: usize = 0x100_0000;

    fn config() -> DeviceConfig {
        DeviceConfig {
            capacity_bytes: 1 << 20,
            lba_size: 512,
            max_transfer: 128 << 10,
            seg_max: 8,
            queues: 1,
            queue_size: 16,
            write_cache: true,
            discard: true,
            write_zeroes: true,
        }
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).expect("guest memory")
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR)).expect("header");
    }

    /// Builds the chain `descs` (next flags filled in) and parses it.
    fn parse_chain(
        mem: &GuestMemoryMmap,
        descs: &[RawDescriptor],
        config: &DeviceConfig,
    ) -> Parsed {
        let q = MockSplitQueue::new(mem, 16);
        let chain = q.build_desc_chain(descs).expect("chain");
        parse(chain, config)
    }

    #[test]
    fn reads_and_writes_become_block_ranges() {
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_IN, 8);
        let descs = [
            desc(HDR, 16, 0),
            desc(DATA, 1024, W),
            desc(DATA + 4096, 512, W),
            desc(STATUS, 1, W),
        ];
        let p = parse_chain(&mem, &descs, &config());
        assert_eq!(p.status, Some(GuestAddress(STATUS)));
        let want = Action::Read {
            slba: 8,
            blocks: 3,
            data: vec![(GuestAddress(DATA), 1024), (GuestAddress(DATA + 4096), 512)],
        };
        assert_eq!(p.action, Ok(want.clone()));
        assert_eq!(want.bytes_written(), 1536);
        header(&mem, VIRTIO_BLK_T_OUT, 0);
        let descs = [desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, W)];
        assert!(matches!(
            parse_chain(&mem, &descs, &config()).action,
            Ok(Action::Write {
                slba: 0,
                blocks: 1,
                ..
            })
        ));
    }

    #[test]
    fn lba_size_alignment_and_capacity_are_enforced() {
        let mem = memory();
        let big = DeviceConfig {
            lba_size: 4096,
            ..config()
        };
        let cases: [(u32, u64, u32, &DeviceConfig, &str); 5] = [
            (VIRTIO_BLK_T_IN, 0, 1000, &config(), "whole"),
            (VIRTIO_BLK_T_IN, 1, 4096, &big, "whole"),
            (VIRTIO_BLK_T_IN, 0, 512, &big, "whole"),
            (VIRTIO_BLK_T_IN, 2047, 1024, &config(), "past the end"),
            (
                VIRTIO_BLK_T_OUT,
                u64::MAX / 4,
                512,
                &config(),
                "past the end",
            ),
        ];
        for (kind, sector, len, cfg, want) in cases {
            header(&mem, kind, sector);
            let w = if kind == VIRTIO_BLK_T_IN { W } else { 0 };
            let descs = [desc(HDR, 16, 0), desc(DATA, len, w), desc(STATUS, 1, W)];
            let p = parse_chain(&mem, &descs, cfg);
            match p.action {
                Err(Reject::Invalid(m)) => assert!(m.contains(want), "{m}"),
                other => panic!("sector {sector} len {len}: {other:?}"),
            }
            assert_eq!(
                p.status,
                Some(GuestAddress(STATUS)),
                "status still answered"
            );
        }
        header(&mem, VIRTIO_BLK_T_IN, 8);
        let descs = [desc(HDR, 16, 0), desc(DATA, 8192, W), desc(STATUS, 1, W)];
        assert!(matches!(
            parse_chain(&mem, &descs, &big).action,
            Ok(Action::Read {
                slba: 1,
                blocks: 2,
                ..
            })
        ));
    }

    #[test]
    fn hostile_descriptors_fail_the_request_only() {
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let outside = MEM as u64 - 256;
        let cases: Vec<(Vec<RawDescriptor>, bool, &str)> = vec![
            (
                vec![desc(HDR, 16, 0), desc(outside, 512, W), desc(STATUS, 1, W)],
                true,
                "outside guest memory",
            ),
            (
                vec![
                    desc(HDR, 16, 0),
                    desc(u64::MAX - 8, 512, W),
                    desc(STATUS, 1, W),
                ],
                true,
                "outside guest memory",
            ),
            (
                vec![desc(HDR, 12, 0), desc(DATA, 512, W), desc(STATUS, 1, W)],
                true,
                "header descriptor of 12",
            ),
            (
                vec![desc(HDR, 16, W), desc(DATA, 512, W), desc(STATUS, 1, W)],
                true,
                "header descriptor",
            ),
            (
                vec![desc(HDR, 16, 0), desc(DATA, 512, W), desc(STATUS, 4, W)],
                true,
                "status descriptor of 4",
            ),
            (
                vec![desc(HDR, 16, 0), desc(DATA, 512, W), desc(STATUS, 1, 0)],
                false,
                "status descriptor",
            ),
            (
                vec![desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, W)],
                true,
                "read-only for this request",
            ),
            (vec![desc(STATUS, 1, W)], true, "1 descriptors"),
            (
                vec![
                    desc(HDR, 16, 0),
                    desc(DATA, 512, W),
                    desc(MEM as u64 + 4, 1, W),
                ],
                false,
                "status byte outside guest memory",
            ),
        ];
        for (descs, answered, want) in cases {
            let p = parse_chain(&mem, &descs, &config());
            match &p.action {
                Err(Reject::Invalid(m)) => assert!(m.contains(want), "{want}: {m}"),
                other => panic!("{want}: {other:?}"),
            }
            assert_eq!(p.status.is_some(), answered, "{want}");
        }
        // Longer than seg_max + 2.
        let mut long = vec![desc(HDR, 16, 0)];
        long.extend((0..10).map(|i| desc(DATA + i * 512, 512, W)));
        long.push(desc(STATUS, 1, W));
        let p = parse_chain(&mem, &long, &config());
        assert!(
            matches!(&p.action, Err(Reject::Invalid(m)) if m.contains("longer than 10")),
            "{p:?}"
        );
        assert_eq!(p.status, None, "no trusted status in a chain cut short");
    }

    #[test]
    fn loops_and_bad_indirect_tables_are_caught() {
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let q = MockSplitQueue::new(&mem, 16);
        // 0 -> 1 -> 0 -> ...: a loop in the ring.
        let looped = [
            RawDescriptor::from(SplitDescriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1)),
            RawDescriptor::from(SplitDescriptor::new(
                DATA,
                512,
                (VRING_DESC_F_NEXT as u16) | W,
                0,
            )),
        ];
        let chain = q.build_multiple_desc_chains(&looped).expect("chain");
        let p = parse(
            chain,
            &DeviceConfig {
                seg_max: 100,
                ..config()
            },
        );
        assert!(
            matches!(&p.action, Err(Reject::Invalid(m)) if m.contains("ends early")),
            "{p:?}"
        );
        assert_eq!(p.status, None);
        // A next index past the table.
        let q = MockSplitQueue::new(&mem, 16);
        let past = [RawDescriptor::from(SplitDescriptor::new(
            HDR,
            16,
            VRING_DESC_F_NEXT as u16,
            40,
        ))];
        let p = parse(
            q.build_multiple_desc_chains(&past).expect("chain"),
            &config(),
        );
        assert!(
            matches!(&p.action, Err(Reject::Invalid(m)) if m.contains("ends early")),
            "{p:?}"
        );
        // An indirect table whose size is not a multiple of 16.
        let q = MockSplitQueue::new(&mem, 16);
        let bad = [RawDescriptor::from(SplitDescriptor::new(
            DATA,
            20,
            VRING_DESC_F_INDIRECT as u16,
            0,
        ))];
        let p = parse(
            q.build_multiple_desc_chains(&bad).expect("chain"),
            &config(),
        );
        assert!(p.action.is_err(), "{p:?}");
        assert_eq!(p.status, None);
        // A good indirect table parses like a direct chain.
        let table = [desc(HDR, 16, 0), desc(DATA, 512, W), desc(STATUS, 1, W)];
        for (i, d) in table.iter().enumerate() {
            let d = SplitDescriptor::from(*d);
            let flags = if i < 2 {
                d.flags() | VRING_DESC_F_NEXT as u16
            } else {
                d.flags()
            };
            let raw = RawDescriptor::from(SplitDescriptor::new(
                d.addr().0,
                d.len(),
                flags,
                i as u16 + 1,
            ));
            mem.write_obj(raw, GuestAddress(0x40_0000 + 16 * i as u64))
                .expect("table");
        }
        let q = MockSplitQueue::new(&mem, 16);
        let ind = [RawDescriptor::from(SplitDescriptor::new(
            0x40_0000,
            48,
            VRING_DESC_F_INDIRECT as u16,
            0,
        ))];
        let p = parse(
            q.build_multiple_desc_chains(&ind).expect("chain"),
            &config(),
        );
        assert!(
            matches!(p.action, Ok(Action::Read { blocks: 1, .. })),
            "{p:?}"
        );
        assert_eq!(p.status, Some(GuestAddress(STATUS)));
    }

    #[test]
    fn flush_get_id_and_unknown_types() {
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        let p = parse_chain(&mem, &[desc(HDR, 16, 0), desc(STATUS, 1, W)], &config());
        assert_eq!(p.action, Ok(Action::Flush));
        header(&mem, VIRTIO_BLK_T_GET_ID, 0);
        let p = parse_chain(
            &mem,
            &[desc(HDR, 16, 0), desc(DATA, 64, W), desc(STATUS, 1, W)],
            &config(),
        );
        let a = p.action.expect("get id");
        assert_eq!(a.bytes_written(), ID_BYTES as u32);
        header(&mem, 2, 0); // SCSI commands
        let p = parse_chain(&mem, &[desc(HDR, 16, 0), desc(STATUS, 1, W)], &config());
        assert!(matches!(p.action, Err(Reject::Unsupported(_))), "{p:?}");
        // DISCARD when the device offers none is unsupported too.
        header(&mem, VIRTIO_BLK_T_DISCARD, 0);
        let cfg = DeviceConfig {
            discard: false,
            ..config()
        };
        let p = parse_chain(
            &mem,
            &[desc(HDR, 16, 0), desc(DATA, 16, 0), desc(STATUS, 1, W)],
            &cfg,
        );
        assert!(matches!(p.action, Err(Reject::Unsupported(_))), "{p:?}");
    }

    fn range(sector: u64, sectors: u32, flags: u32) -> [u8; 16] {
        let mut r = [0u8; 16];
        r[0..8].copy_from_slice(&sector.to_le_bytes());
        r[8..12].copy_from_slice(&sectors.to_le_bytes());
        r[12..16].copy_from_slice(&flags.to_le_bytes());
        r
    }

    #[test]
    fn discard_and_write_zeroes_ranges() {
        let mem = memory();
        let mut two = range(8, 16, 0).to_vec();
        two.extend(range(100, 4, 0));
        mem.write_slice(&two, GuestAddress(DATA)).expect("ranges");
        header(&mem, VIRTIO_BLK_T_DISCARD, 0);
        let descs = [desc(HDR, 16, 0), desc(DATA, 32, 0), desc(STATUS, 1, W)];
        assert_eq!(
            parse_chain(&mem, &descs, &config()).action,
            Ok(Action::Discard(vec![(8, 16), (100, 4)]))
        );
        header(&mem, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        mem.write_slice(
            &range(0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP),
            GuestAddress(DATA),
        )
        .expect("range");
        let descs = [desc(HDR, 16, 0), desc(DATA, 16, 0), desc(STATUS, 1, W)];
        assert_eq!(
            parse_chain(&mem, &descs, &config()).action,
            Ok(Action::WriteZeroes(vec![(0, 8)]))
        );
        let bad: [(&[u8], u32, &str); 4] = [
            (&range(0, 8, 1), VIRTIO_BLK_T_DISCARD, "unsupported"),
            (&range(2040, 16, 0), VIRTIO_BLK_T_DISCARD, "past the end"),
            (&range(0, 0, 0), VIRTIO_BLK_T_WRITE_ZEROES, "not whole"),
            (
                &range(0, 8, 0)[..12],
                VIRTIO_BLK_T_DISCARD,
                "multiple of 16",
            ),
        ];
        for (bytes, kind, want) in bad {
            mem.write_slice(bytes, GuestAddress(DATA)).expect("range");
            header(&mem, kind, 0);
            let descs = [
                desc(HDR, 16, 0),
                desc(DATA, bytes.len() as u32, 0),
                desc(STATUS, 1, W),
            ];
            let got = parse_chain(&mem, &descs, &config()).action.expect_err(want);
            assert!(got.to_string().contains(want), "{want}: {got}");
        }
    }
}

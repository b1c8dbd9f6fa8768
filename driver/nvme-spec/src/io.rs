//! NVM command set I/O command builders (NVM Command Set Specification
//! 1.0 §3.2).
//!
//! As with the admin builders, the CID is set by the queue and the data
//! pointer by the driver. Block counts are **real counts**; the builders
//! encode the 0's based NLB and reject counts that cannot be encoded
//! (returning [`RangeError`]) so that a user-supplied length can never
//! panic or wrap into a different request.
//!
//! Common dwords of Read / Write / Compare / Verify / Write Zeroes /
//! Write Uncorrectable (NVM Command Set 1.0 Figures "Read – Command Dword
//! 10 and Command Dword 11" .. "Read – Command Dword 13"):
//!
//! * CDW10: SLBA bits 31:0, CDW11: SLBA bits 63:32;
//! * CDW12: bits 15:0 NLB (0's based), 29:26 PRINFO, 30 FUA, 31 LR
//!   (Write Zeroes adds bit 25 DEAC);
//! * CDW13: bits 7:0 DSM hints (Read/Write);
//! * CDW14/15: protection information tags.

use bitflags::bitflags;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::error::{RangeError, UnknownCode};
use crate::opcode::NvmOpcode;
use crate::sqe::Sqe;

/// Largest number of logical blocks a single command can address (NLB is a
/// 16-bit 0's based field).
pub const MAX_BLOCKS_PER_COMMAND: u32 = 65536;

/// Largest number of ranges in one Dataset Management command (NR is an
/// 8-bit 0's based field).
pub const MAX_DSM_RANGES: u16 = 256;

bitflags! {
    /// Optional CDW12 control bits of Read / Write / Compare / Verify /
    /// Write Zeroes (values are the bits' positions in CDW12).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct RwFlags: u32 {
        /// FUA, bit 30: Force Unit Access (the data is on non-volatile
        /// media when the command completes / is read from it).
        const FUA = 1 << 30;
        /// LR, bit 31: Limited Retry.
        const LIMITED_RETRY = 1 << 31;
    }
}

/// Access Frequency, bits 3:0 of the Read / Write Dataset Management
/// field (CDW13; NVM Command Set 1.0 Figure "Read – Command Dword 13").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum AccessFrequency {
    /// 0h: no frequency information.
    #[default]
    Unspecified = 0,
    /// 1h: typical number of reads and writes expected.
    Typical = 1,
    /// 2h: infrequent writes and infrequent reads.
    InfrequentWritesInfrequentReads = 2,
    /// 3h: infrequent writes, frequent reads.
    InfrequentWritesFrequentReads = 3,
    /// 4h: frequent writes, infrequent reads.
    FrequentWritesInfrequentReads = 4,
    /// 5h: frequent writes and frequent reads.
    FrequentWritesFrequentReads = 5,
    /// 6h: one time read (e.g. a scan or a backup).
    OneTimeRead = 6,
    /// 7h: speculative read: the command is part of a prefetch (what
    /// Linux sends for readahead, `NVME_RW_DSM_FREQ_PREFETCH`).
    Speculative = 7,
    /// 8h: the range is going to be overwritten soon.
    WillBeOverwritten = 8,
}

/// Access Latency, bits 5:4 of the Dataset Management field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum AccessLatency {
    /// 0h: no latency information.
    #[default]
    Unspecified = 0,
    /// 1h: idle, longer latency acceptable.
    Idle = 1,
    /// 2h: normal latency.
    Normal = 2,
    /// 3h: low latency.
    Low = 3,
}

/// The Dataset Management hints of one Read or Write (CDW13 bits 7:0):
/// access frequency (3:0), access latency (5:4), sequential request (6)
/// and incompressible (7). Hints only: a controller may ignore them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DsmHints {
    /// Bits 3:0.
    pub frequency: AccessFrequency,
    /// Bits 5:4.
    pub latency: AccessLatency,
    /// Bit 6: part of a sequential read or write.
    pub sequential: bool,
    /// Bit 7: the data is not compressible.
    pub incompressible: bool,
}

impl DsmHints {
    /// No hints (CDW13 = 0).
    pub const NONE: DsmHints = DsmHints {
        frequency: AccessFrequency::Unspecified,
        latency: AccessLatency::Unspecified,
        sequential: false,
        incompressible: false,
    };

    /// What Linux's NVMe driver sends for a readahead (REQ_RAHEAD):
    /// access frequency "speculative read (prefetch)".
    pub const PREFETCH: DsmHints = DsmHints {
        frequency: AccessFrequency::Speculative,
        ..DsmHints::NONE
    };

    /// The field's 8 bits.
    #[must_use]
    pub const fn bits(self) -> u8 {
        self.frequency as u8
            | (self.latency as u8) << 4
            | (self.sequential as u8) << 6
            | (self.incompressible as u8) << 7
    }

    /// Decodes the field (CDW13 bits 7:0).
    ///
    /// # Errors
    ///
    /// A reserved access frequency (9h–Fh).
    pub fn from_bits(bits: u8) -> Result<DsmHints, UnknownCode> {
        let frequency = match bits & 0xf {
            0 => AccessFrequency::Unspecified,
            1 => AccessFrequency::Typical,
            2 => AccessFrequency::InfrequentWritesInfrequentReads,
            3 => AccessFrequency::InfrequentWritesFrequentReads,
            4 => AccessFrequency::FrequentWritesInfrequentReads,
            5 => AccessFrequency::FrequentWritesFrequentReads,
            6 => AccessFrequency::OneTimeRead,
            7 => AccessFrequency::Speculative,
            8 => AccessFrequency::WillBeOverwritten,
            _ => {
                return Err(UnknownCode {
                    kind: "DSM access frequency",
                    value: bits & 0xf,
                });
            }
        };
        let latency = match (bits >> 4) & 3 {
            0 => AccessLatency::Unspecified,
            1 => AccessLatency::Idle,
            2 => AccessLatency::Normal,
            _ => AccessLatency::Low,
        };
        Ok(DsmHints {
            frequency,
            latency,
            sequential: bits & 1 << 6 != 0,
            incompressible: bits & 1 << 7 != 0,
        })
    }
}

/// Read with FUA / Limited Retry control bits (CDW12) and Dataset
/// Management hints (CDW13).
///
/// # Errors
///
/// `nlb` outside 1..=65536.
#[inline(always)]
pub fn read_hinted(
    nsid: u32,
    slba: u64,
    nlb: u32,
    flags: RwFlags,
    dsm: DsmHints,
) -> Result<Sqe, RangeError> {
    let mut s = block_command(NvmOpcode::Read, nsid, slba, nlb, flags.bits())?;
    s.cdw13 = U32::new(u32::from(dsm.bits()));
    Ok(s)
}

/// Write with FUA / Limited Retry control bits (CDW12) and Dataset
/// Management hints (CDW13).
///
/// # Errors
///
/// `nlb` outside 1..=65536.
#[inline(always)]
pub fn write_hinted(
    nsid: u32,
    slba: u64,
    nlb: u32,
    flags: RwFlags,
    dsm: DsmHints,
) -> Result<Sqe, RangeError> {
    let mut s = block_command(NvmOpcode::Write, nsid, slba, nlb, flags.bits())?;
    s.cdw13 = U32::new(u32::from(dsm.bits()));
    Ok(s)
}

/// The CDW12 control bits (FUA, LR) and the CDW13 Dataset Management
/// field of a Read or Write SQE, as sent.
#[must_use]
pub fn rw_hints_of(sqe: &Sqe) -> (RwFlags, u8) {
    (
        RwFlags::from_bits_truncate(sqe.cdw12.get()),
        (sqe.cdw13.get() & 0xff) as u8,
    )
}

/// Write Zeroes CDW12 bit 25: DEAC (deallocate).
pub const WRITE_ZEROES_DEAC: u32 = 1 << 25;

/// Builds the common SLBA / NLB command layout.
#[inline]
fn block_command(
    op: NvmOpcode,
    nsid: u32,
    slba: u64,
    nlb: u32,
    cdw12_extra: u32,
) -> Result<Sqe, RangeError> {
    RangeError::check(
        "number of logical blocks",
        u64::from(nlb),
        1,
        u64::from(MAX_BLOCKS_PER_COMMAND),
    )?;
    let mut s = Sqe::new(op as u8).with_nsid(nsid);
    s.cdw10 = U32::new(slba as u32);
    s.cdw11 = U32::new((slba >> 32) as u32);
    s.cdw12 = U32::new((nlb - 1) | cdw12_extra);
    Ok(s)
}

/// Read (opcode 02h) of `nlb` (1..=65536) blocks starting at `slba`.
///
/// # Errors
///
/// `nlb` outside 1..=65536.
#[inline]
pub fn read(nsid: u32, slba: u64, nlb: u32) -> Result<Sqe, RangeError> {
    block_command(NvmOpcode::Read, nsid, slba, nlb, 0)
}

/// Read with FUA / Limited Retry control bits.
///
/// # Errors
///
/// `nlb` outside 1..=65536.
#[inline]
pub fn read_with(nsid: u32, slba: u64, nlb: u32, flags: RwFlags) -> Result<Sqe, RangeError> {
    block_command(NvmOpcode::Read, nsid, slba, nlb, flags.bits())
}

/// Write (opcode 01h) of `nlb` (1..=65536) blocks starting at `slba`.
///
/// # Errors
///
/// `nlb` outside 1..=65536.
#[inline]
pub fn write(nsid: u32, slba: u64, nlb: u32) -> Result<Sqe, RangeError> {
    block_command(NvmOpcode::Write, nsid, slba, nlb, 0)
}

/// Write with FUA / Limited Retry control bits.
///
/// # Errors
///
/// `nlb` outside 1..=65536.
#[inline]
pub fn write_with(nsid: u32, slba: u64, nlb: u32, flags: RwFlags) -> Result<Sqe, RangeError> {
    block_command(NvmOpcode::Write, nsid, slba, nlb, flags.bits())
}

/// Flush (opcode 00h): commit volatile write cache contents of `nsid`
/// (0xffff_ffff: all namespaces, if the controller supports it, see
/// Identify Controller VWC bits 2:1).
#[must_use]
pub fn flush(nsid: u32) -> Sqe {
    Sqe::new(NvmOpcode::Flush as u8).with_nsid(nsid)
}

/// Write Zeroes (opcode 08h); `deallocate` sets DEAC (CDW12 bit 25), which
/// lets the controller deallocate the blocks instead of writing them. No
/// data transfer.
///
/// # Errors
///
/// `nlb` outside 1..=65536.
pub fn write_zeroes(nsid: u32, slba: u64, nlb: u32, deallocate: bool) -> Result<Sqe, RangeError> {
    let deac = if deallocate { WRITE_ZEROES_DEAC } else { 0 };
    block_command(NvmOpcode::WriteZeroes, nsid, slba, nlb, deac)
}

/// Write Uncorrectable (opcode 04h): mark blocks invalid (reads fail until
/// they are written). No data transfer.
///
/// # Errors
///
/// `nlb` outside 1..=65536.
pub fn write_uncorrectable(nsid: u32, slba: u64, nlb: u32) -> Result<Sqe, RangeError> {
    block_command(NvmOpcode::WriteUncorrectable, nsid, slba, nlb, 0)
}

/// Compare (opcode 05h): compare the data buffer (host to controller) with
/// the blocks; a mismatch completes with Compare Failure.
///
/// # Errors
///
/// `nlb` outside 1..=65536.
pub fn compare(nsid: u32, slba: u64, nlb: u32) -> Result<Sqe, RangeError> {
    block_command(NvmOpcode::Compare, nsid, slba, nlb, 0)
}

/// Verify (opcode 0Ch): check integrity of the blocks without transferring
/// data.
///
/// # Errors
///
/// `nlb` outside 1..=65536.
pub fn verify(nsid: u32, slba: u64, nlb: u32) -> Result<Sqe, RangeError> {
    block_command(NvmOpcode::Verify, nsid, slba, nlb, 0)
}

bitflags! {
    /// Dataset Management CDW11 attributes (NVM Command Set 1.0 Figure
    /// "Dataset Management – Command Dword 11").
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct DsmAttributes: u32 {
        /// IDR, bit 0: Integral Dataset for Read.
        const IDR = 1 << 0;
        /// IDW, bit 1: Integral Dataset for Write.
        const IDW = 1 << 1;
        /// AD, bit 2: Attribute – Deallocate (trim / discard).
        const AD = 1 << 2;
    }
}

/// Dataset Management (opcode 09h) over `nr_ranges` (1..=256) [`DsmRange`]
/// entries in the data buffer (host to controller, 16 bytes each).
///
/// * CDW10 bits 7:0 NR (0's based number of ranges);
/// * CDW11 attributes.
///
/// # Errors
///
/// `nr_ranges` outside 1..=256.
pub fn dataset_management(
    nsid: u32,
    nr_ranges: u16,
    attributes: DsmAttributes,
) -> Result<Sqe, RangeError> {
    RangeError::check(
        "number of DSM ranges",
        u64::from(nr_ranges),
        1,
        u64::from(MAX_DSM_RANGES),
    )?;
    let mut s = Sqe::new(NvmOpcode::DatasetManagement as u8).with_nsid(nsid);
    s.cdw10 = U32::new(u32::from(nr_ranges - 1));
    s.cdw11 = U32::new(attributes.bits());
    Ok(s)
}

/// One Dataset Management range (NVM Command Set 1.0 Figure "Dataset
/// Management – Range Definition"), 16 bytes.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct DsmRange {
    /// Context attributes (access hints; 0 for plain deallocation).
    pub context_attributes: U32,
    /// Length in logical blocks (a real count, not 0's based).
    pub length: U32,
    /// Starting LBA.
    pub slba: U64,
}

layout!(DsmRange, 16, context_attributes @ 0, length @ 4, slba @ 8);

impl DsmRange {
    /// A range of `length` blocks starting at `slba` with no context
    /// attributes.
    #[must_use]
    pub const fn new(slba: u64, length: u32) -> DsmRange {
        DsmRange {
            context_attributes: U32::ZERO,
            length: U32::new(length),
            slba: U64::new(slba),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_write() {
        let s = read(1, 0x1_0000_0002, 8).expect("valid");
        assert_eq!(s.opcode, 0x02);
        assert_eq!(s.nsid.get(), 1);
        assert_eq!(s.cdw10.get(), 2);
        assert_eq!(s.cdw11.get(), 1);
        assert_eq!(s.cdw12.get(), 7);
        assert_eq!(s.cdw13.get(), 0);
        assert_eq!(s.prp1.get(), 0);
        let s = write(1, 0, 1).expect("valid");
        assert_eq!((s.opcode, s.cdw12.get()), (0x01, 0));
        let s = write(1, u64::MAX, 65536).expect("valid");
        assert_eq!((s.cdw10.get(), s.cdw11.get()), (u32::MAX, u32::MAX));
        assert_eq!(s.cdw12.get(), 0xffff);
        let s = write_with(1, 0, 4, RwFlags::FUA).expect("valid");
        assert_eq!(s.cdw12.get(), 0x4000_0003);
        let s = read_with(1, 0, 4, RwFlags::FUA | RwFlags::LIMITED_RETRY).expect("valid");
        assert_eq!(s.cdw12.get(), 0xc000_0003);
    }

    #[test]
    fn hinted_read_write() {
        let s = read_hinted(1, 8, 4, RwFlags::LIMITED_RETRY, DsmHints::PREFETCH).expect("valid");
        assert_eq!(s.opcode, 0x02);
        assert_eq!(s.cdw12.get(), 0x8000_0003);
        assert_eq!(s.cdw13.get(), 7);
        assert_eq!(rw_hints_of(&s), (RwFlags::LIMITED_RETRY, 7));
        let all = DsmHints {
            frequency: AccessFrequency::WillBeOverwritten,
            latency: AccessLatency::Low,
            sequential: true,
            incompressible: true,
        };
        assert_eq!(all.bits(), 0xf8);
        let s = write_hinted(1, 0, 1, RwFlags::FUA, all).expect("valid");
        assert_eq!(
            (s.opcode, s.cdw12.get(), s.cdw13.get()),
            (0x01, 0x4000_0000, 0xf8)
        );
        assert_eq!(DsmHints::from_bits(0xf8), Ok(all));
        let seq = DsmHints {
            latency: AccessLatency::Idle,
            sequential: true,
            ..DsmHints::NONE
        };
        assert_eq!(seq.bits(), 0x50);
        assert_eq!(DsmHints::from_bits(0x50), Ok(seq));
        for bits in 0..=u8::MAX {
            match DsmHints::from_bits(bits) {
                Ok(h) => assert_eq!(h.bits(), bits),
                Err(e) => assert!(e.value >= 9, "{bits:#x}"),
            }
        }
        assert_eq!(
            read(1, 0, 1).map(|s| rw_hints_of(&s)),
            Ok((RwFlags::empty(), 0))
        );
    }

    #[test]
    fn nlb_range() {
        for nlb in [0u32, 65537, u32::MAX] {
            let e = read(1, 0, nlb).unwrap_err();
            assert_eq!(e.value, u64::from(nlb));
            assert_eq!((e.min, e.max), (1, 65536));
            assert!(write(1, 0, nlb).is_err());
            assert!(compare(1, 0, nlb).is_err());
            assert!(verify(1, 0, nlb).is_err());
            assert!(write_zeroes(1, 0, nlb, true).is_err());
            assert!(write_uncorrectable(1, 0, nlb).is_err());
        }
        for nlb in 1..=65536u32 {
            let s = read(1, 0, nlb).expect("valid");
            assert_eq!(s.cdw12.get() & 0xffff, nlb - 1);
            assert_eq!(s.cdw12.get() >> 16, 0);
        }
    }

    #[test]
    fn other_commands() {
        let s = flush(1);
        assert_eq!((s.opcode, s.nsid.get(), s.cdw10.get()), (0x00, 1, 0));
        let s = write_zeroes(1, 100, 16, true).expect("valid");
        assert_eq!(s.opcode, 0x08);
        assert_eq!(s.cdw10.get(), 100);
        assert_eq!(s.cdw12.get(), 0x0200_000f);
        let s = write_zeroes(1, 100, 16, false).expect("valid");
        assert_eq!(s.cdw12.get(), 15);
        assert_eq!(write_uncorrectable(1, 0, 1).expect("valid").opcode, 0x04);
        assert_eq!(compare(1, 0, 1).expect("valid").opcode, 0x05);
        assert_eq!(verify(1, 0, 1).expect("valid").opcode, 0x0c);
    }

    #[test]
    fn dsm() {
        let s = dataset_management(1, 1, DsmAttributes::AD).expect("valid");
        assert_eq!(s.opcode, 0x09);
        assert_eq!(s.cdw10.get(), 0);
        assert_eq!(s.cdw11.get(), 4);
        let s = dataset_management(1, 256, DsmAttributes::IDR | DsmAttributes::IDW).expect("valid");
        assert_eq!(s.cdw10.get(), 255);
        assert_eq!(s.cdw11.get(), 3);
        assert!(dataset_management(1, 0, DsmAttributes::AD).is_err());
        assert!(dataset_management(1, 257, DsmAttributes::AD).is_err());

        let r = DsmRange::new(0x1122_3344_5566_7788, 0x100);
        let b = r.as_bytes();
        assert_eq!(&b[0..4], &[0; 4]);
        assert_eq!(&b[4..8], &[0, 1, 0, 0]);
        assert_eq!(&b[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
    }
}

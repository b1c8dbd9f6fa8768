//! The NVM command set's Identify Namespace (CNS 00h) with its LBA
//! formats, and the Active Namespace ID list (CNS 02h).

use core::fmt;

use bitflags::bitflags;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::le128;

/// LBA Format data structure, 4 bytes (NVM Command Set 1.0 Figure "LBA
/// Format Data Structure, NVM Command Set Specific").
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct LbaFormat {
    /// MS: metadata size in bytes per block.
    pub ms: U16,
    /// LBADS: LBA data size as a power of two (0: format not supported).
    pub lbads: u8,
    /// Bits 1:0 RP: relative performance (0 best .. 3 degraded).
    pub rp: u8,
}

layout!(LbaFormat, 4, ms @ 0, lbads @ 2, rp @ 3);

impl LbaFormat {
    /// Smallest LBADS the spec allows (512-byte blocks).
    pub const MIN_LBADS: u8 = 9;
    /// Largest LBADS accepted by [`LbaFormat::lba_size`] (2 GiB blocks;
    /// anything larger cannot be a real format and does not fit in `u32`).
    pub const MAX_LBADS: u8 = 31;

    /// Logical block size in bytes, `None` unless 9 <= LBADS <= 31 (the
    /// device is untrusted; LBADS 0 marks an unsupported format).
    #[must_use]
    pub const fn lba_size(&self) -> Option<u32> {
        if self.lbads >= Self::MIN_LBADS && self.lbads <= Self::MAX_LBADS {
            Some(1u32 << self.lbads)
        } else {
            None
        }
    }

    /// Metadata bytes per logical block.
    #[must_use]
    pub const fn metadata_size(&self) -> u16 {
        self.ms.get()
    }
}

bitflags! {
    /// NSFEAT: Namespace Features (Identify Namespace byte 24).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct NsFeatures: u8 {
        /// THINP: thin provisioning (NCAP may be less than NSZE).
        const THIN_PROVISIONING = 1 << 0;
        /// NSABP: NAWUN / NAWUPF / NACWU are defined.
        const ATOMIC_PARAMETERS = 1 << 1;
        /// DAE: Deallocated or Unwritten Logical Block error supported.
        const DEALLOCATED_ERROR = 1 << 2;
        /// UIDREUSE: NGUID / EUI64 are never reused.
        const UID_REUSE = 1 << 3;
        /// OPTPERF: NPWG, NPWA, NPDG, NPDA and NOWS are defined.
        const OPTIMAL_PERFORMANCE = 1 << 4;
    }
}

/// Identify Namespace data structure for the NVM command set, 4096 bytes
/// (NVM Command Set 1.0 §4.1.5.1, Figure "Identify – Identify Namespace
/// Data Structure, NVM Command Set").
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct IdentifyNamespace {
    /// Namespace Size (blocks).
    pub nsze: U64,
    /// Namespace Capacity (blocks).
    pub ncap: U64,
    /// Namespace Utilization (blocks).
    pub nuse: U64,
    /// Namespace Features (see [`NsFeatures`]).
    pub nsfeat: u8,
    /// Number of LBA Formats (0's based).
    pub nlbaf: u8,
    /// Formatted LBA Size: bits 3:0 format index (low), bit 4 metadata
    /// extended, bits 6:5 format index (high).
    pub flbas: u8,
    /// Metadata Capabilities.
    pub mc: u8,
    /// End-to-end Data Protection Capabilities.
    pub dpc: u8,
    /// End-to-end Data Protection Type Settings.
    pub dps: u8,
    /// Namespace Multi-path I/O and Namespace Sharing Capabilities.
    pub nmic: u8,
    /// Reservation Capabilities.
    pub rescap: u8,
    /// Format Progress Indicator.
    pub fpi: u8,
    /// Deallocate Logical Block Features.
    pub dlfeat: u8,
    /// Namespace Atomic Write Unit Normal (0's based blocks).
    pub nawun: U16,
    /// Namespace Atomic Write Unit Power Fail (0's based blocks).
    pub nawupf: U16,
    /// Namespace Atomic Compare & Write Unit (0's based blocks).
    pub nacwu: U16,
    /// Namespace Atomic Boundary Size Normal.
    pub nabsn: U16,
    /// Namespace Atomic Boundary Offset.
    pub nabo: U16,
    /// Namespace Atomic Boundary Size Power Fail.
    pub nabspf: U16,
    /// Namespace Optimal I/O Boundary (blocks).
    pub noiob: U16,
    /// NVM Capacity (bytes, 128-bit).
    pub nvmcap: [u8; 16],
    /// Namespace Preferred Write Granularity (0's based blocks).
    pub npwg: U16,
    /// Namespace Preferred Write Alignment (0's based blocks).
    pub npwa: U16,
    /// Namespace Preferred Deallocate Granularity (0's based blocks).
    pub npdg: U16,
    /// Namespace Preferred Deallocate Alignment (0's based blocks).
    pub npda: U16,
    /// Namespace Optimal Write Size (0's based blocks).
    pub nows: U16,
    /// Maximum Single Source Range Length (Copy).
    pub mssrl: U16,
    /// Maximum Copy Length.
    pub mcl: U32,
    /// Maximum Source Range Count (0's based).
    pub msrc: u8,
    /// Reserved.
    pub rsvd81: u8,
    /// Number of Unique Capability LBA Formats (defined by NVM Command Set
    /// revisions after 1.0; reserved, i.e. 0, in 1.0).
    pub nulbaf: u8,
    /// Reserved.
    pub rsvd83: [u8; 9],
    /// ANA Group Identifier.
    pub anagrpid: U32,
    /// Reserved.
    pub rsvd96: [u8; 3],
    /// Namespace Attributes (bit 0: write protected).
    pub nsattr: u8,
    /// NVM Set Identifier.
    pub nvmsetid: U16,
    /// Endurance Group Identifier.
    pub endgid: U16,
    /// Namespace Globally Unique Identifier.
    pub nguid: [u8; 16],
    /// IEEE Extended Unique Identifier.
    pub eui64: [u8; 8],
    /// LBA Format 0..=63 support.
    pub lbaf: [LbaFormat; 64],
    /// Reserved.
    pub rsvd384: [u8; 3456],
    /// Vendor Specific.
    pub vs: [u8; 256],
}

layout!(IdentifyNamespace, 4096,
    nsze @ 0, ncap @ 8, nuse @ 16, nsfeat @ 24, nlbaf @ 25, flbas @ 26,
    mc @ 27, dpc @ 28, dps @ 29, nmic @ 30, rescap @ 31, fpi @ 32,
    dlfeat @ 33, nawun @ 34, nawupf @ 36, nacwu @ 38, nabsn @ 40, nabo @ 42,
    nabspf @ 44, noiob @ 46, nvmcap @ 48, npwg @ 64, npwa @ 66, npdg @ 68,
    npda @ 70, nows @ 72, mssrl @ 74, mcl @ 76, msrc @ 80, rsvd81 @ 81,
    nulbaf @ 82, rsvd83 @ 83, anagrpid @ 92, rsvd96 @ 96, nsattr @ 99, nvmsetid @ 100,
    endgid @ 102, nguid @ 104, eui64 @ 120, lbaf @ 128, rsvd384 @ 384,
    vs @ 3840,
);

impl IdentifyNamespace {
    /// Size of the data structure in bytes.
    pub const SIZE: usize = 4096;
    /// Number of LBA format slots in the structure.
    pub const MAX_LBA_FORMATS: usize = 64;

    /// Namespace size in logical blocks.
    #[must_use]
    pub const fn nsze(&self) -> u64 {
        self.nsze.get()
    }

    /// Namespace capacity in logical blocks.
    #[must_use]
    pub const fn ncap(&self) -> u64 {
        self.ncap.get()
    }

    /// Namespace utilization in logical blocks.
    #[must_use]
    pub const fn nuse(&self) -> u64 {
        self.nuse.get()
    }

    /// NVM capacity in bytes.
    #[must_use]
    pub const fn nvmcap(&self) -> u128 {
        le128(&self.nvmcap)
    }

    /// Namespace features.
    #[must_use]
    pub const fn features(&self) -> NsFeatures {
        NsFeatures::from_bits_retain(self.nsfeat)
    }

    /// Index of the formatted LBA format: FLBAS bits 3:0 | bits 6:5 << 4
    /// (0..=63). Not validated against NLBAF; see
    /// [`Self::current_lba_format`].
    #[must_use]
    pub const fn current_lba_format_index(&self) -> u8 {
        (self.flbas & 0xf) | ((self.flbas >> 5) & 0b11) << 4
    }

    /// Number of valid LBA formats (NLBAF + 1, clamped to 64).
    #[must_use]
    pub const fn lba_format_count(&self) -> usize {
        let n = self.nlbaf as usize + 1;
        if n > Self::MAX_LBA_FORMATS {
            Self::MAX_LBA_FORMATS
        } else {
            n
        }
    }

    /// The formatted LBA format; `None` if FLBAS selects an index beyond
    /// NLBAF (a broken or untrusted device).
    #[must_use]
    pub fn current_lba_format(&self) -> Option<LbaFormat> {
        let i = usize::from(self.current_lba_format_index());
        if i < self.lba_format_count() {
            self.lbaf.get(i).copied()
        } else {
            None
        }
    }

    /// The valid LBA formats (the first NLBAF + 1 entries, at most 64).
    #[must_use]
    pub fn lba_formats(&self) -> &[LbaFormat] {
        self.lbaf
            .get(..self.lba_format_count())
            .unwrap_or(&self.lbaf)
    }

    /// Logical block size of the formatted LBA format, if valid.
    #[must_use]
    pub fn lba_size(&self) -> Option<u32> {
        self.current_lba_format().and_then(|f| f.lba_size())
    }

    /// Namespace size in bytes (NSZE × block size, `None` if the format is
    /// invalid or the product overflows).
    #[must_use]
    pub fn size_bytes(&self) -> Option<u64> {
        self.nsze().checked_mul(u64::from(self.lba_size()?))
    }
}

impl fmt::Debug for IdentifyNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentifyNamespace")
            .field("nsze", &self.nsze())
            .field("ncap", &self.ncap())
            .field("nuse", &self.nuse())
            .field("nsfeat", &self.features())
            .field("nlbaf", &self.nlbaf)
            .field("flbas", &format_args!("{:#04x}", self.flbas))
            .field("lbaf", &self.lba_formats())
            .field("nguid", &self.nguid)
            .field("eui64", &self.eui64)
            .finish_non_exhaustive()
    }
}

/// Active Namespace ID list (CNS 02h, Base 2.0 Figure "Identify – Namespace
/// List"): up to 1024 NSIDs in increasing order, terminated by 0.
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ActiveNamespaceList {
    /// The namespace identifiers (unused entries are 0).
    pub ids: [U32; 1024],
}

layout!(ActiveNamespaceList, 4096, ids @ 0);

impl ActiveNamespaceList {
    /// Number of entries in one list.
    pub const CAPACITY: usize = 1024;

    /// The listed NSIDs, in order, up to (not including) the first 0.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.ids.iter().map(|id| id.get()).take_while(|&id| id != 0)
    }

    /// Number of listed NSIDs.
    #[must_use]
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether the list is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ids[0].get() == 0
    }

    /// Whether the list is full, in which case more namespaces may exist:
    /// issue another Identify with NSID = the last id.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.ids[Self::CAPACITY - 1].get() != 0
    }

    /// The last listed NSID (the starting point for the next page).
    #[must_use]
    pub fn last(&self) -> Option<u32> {
        self.iter().last()
    }
}

impl fmt::Debug for ActiveNamespaceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 16;
        let mut l = f.debug_list();
        l.entries(self.iter().take(SHOWN));
        if self.len() > SHOWN {
            l.entry(&format_args!("... ({} total)", self.len()));
        }
        l.finish()
    }
}

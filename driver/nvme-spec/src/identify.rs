//! Identify data structures (Base 2.0 §5.17.2): Identify Controller
//! (CNS 01h), the NVM command set Identify Namespace (CNS 00h, NVM Command
//! Set 1.0 §4.1.5.1) and the Active Namespace ID list (CNS 02h).
//!
//! All fields come straight from the device and are untrusted: the helper
//! methods validate and clamp instead of indexing blindly.

use core::fmt;

use bitflags::bitflags;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::regs::Vs;

/// A fixed-width ASCII text field from the device (serial number, model,
/// firmware revision, NQN).
///
/// `Display` trims trailing spaces and NULs and prints every byte that is
/// not printable ASCII (0x20..=0x7e) as `.`, so it is safe for any content.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AsciiField<'a>(&'a [u8]);

impl<'a> AsciiField<'a> {
    /// Wraps raw field bytes.
    #[must_use]
    pub const fn new(bytes: &'a [u8]) -> AsciiField<'a> {
        AsciiField(bytes)
    }

    /// The field with trailing spaces and NULs removed (other bytes
    /// unchanged).
    #[must_use]
    pub fn as_bytes(&self) -> &'a [u8] {
        let mut end = self.0.len();
        while end > 0 && matches!(self.0[end - 1], b' ' | 0) {
            end -= 1;
        }
        &self.0[..end]
    }

    /// The untrimmed raw bytes.
    #[must_use]
    pub const fn raw(&self) -> &'a [u8] {
        self.0
    }

    /// The trimmed text if it is entirely printable ASCII.
    #[must_use]
    pub fn as_str(&self) -> Option<&'a str> {
        let b = self.as_bytes();
        if b.iter().all(|c| (0x20..=0x7e).contains(c)) {
            core::str::from_utf8(b).ok()
        } else {
            None
        }
    }

    /// Whether the trimmed field is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }
}

impl fmt::Display for AsciiField<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for &b in self.as_bytes() {
            let c = if (0x20..=0x7e).contains(&b) {
                char::from(b)
            } else {
                '.'
            };
            f.write_char(c)?;
        }
        Ok(())
    }
}

impl fmt::Debug for AsciiField<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl PartialEq<str> for AsciiField<'_> {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for AsciiField<'_> {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

/// Reads a 128-bit little-endian counter.
pub(crate) const fn le128(b: &[u8; 16]) -> u128 {
    u128::from_le_bytes(*b)
}

// ---------------------------------------------------------------------------
// Power state descriptor
// ---------------------------------------------------------------------------

/// Power State Descriptor, 32 bytes (Base 2.0 Figure "Identify – Power
/// State Descriptor Data Structure").
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct PowerStateDescriptor {
    /// MP: maximum power (units per MXPS: 0.01 W or 0.0001 W).
    pub mp: U16,
    /// Reserved.
    pub rsvd2: u8,
    /// Bit 0 MXPS (max power scale), bit 1 NOPS (non-operational state).
    pub flags: u8,
    /// ENLAT: entry latency in microseconds.
    pub enlat: U32,
    /// EXLAT: exit latency in microseconds.
    pub exlat: U32,
    /// RRT: relative read throughput (bits 4:0).
    pub rrt: u8,
    /// RRL: relative read latency (bits 4:0).
    pub rrl: u8,
    /// RWT: relative write throughput (bits 4:0).
    pub rwt: u8,
    /// RWL: relative write latency (bits 4:0).
    pub rwl: u8,
    /// IDLP: idle power.
    pub idlp: U16,
    /// Bits 7:6 IPS: idle power scale.
    pub ips: u8,
    /// Reserved.
    pub rsvd19: u8,
    /// ACTP: active power.
    pub actp: U16,
    /// Bits 2:0 APW (active power workload), bits 7:6 APS (active power
    /// scale).
    pub apw_aps: u8,
    /// Reserved.
    pub rsvd23: [u8; 9],
}

layout!(PowerStateDescriptor, 32,
    mp @ 0, flags @ 3, enlat @ 4, exlat @ 8, rrt @ 12, rrl @ 13, rwt @ 14,
    rwl @ 15, idlp @ 16, ips @ 18, actp @ 20, apw_aps @ 22, rsvd23 @ 23,
);

impl PowerStateDescriptor {
    /// Maximum power in units of 0.0001 W (converting MP using MXPS).
    #[must_use]
    pub const fn max_power_100uw(&self) -> u32 {
        let mp = self.mp.get() as u32;
        if self.flags & 1 != 0 { mp } else { mp * 100 }
    }

    /// NOPS: this is a non-operational power state (no I/O processed).
    #[must_use]
    pub const fn non_operational(&self) -> bool {
        self.flags & 0b10 != 0
    }
}

// ---------------------------------------------------------------------------
// Identify Controller
// ---------------------------------------------------------------------------

bitflags! {
    /// OACS: Optional Admin Command Support (Identify Controller bytes
    /// 257:256).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Oacs: u16 {
        /// Security Send / Security Receive.
        const SECURITY = 1 << 0;
        /// Format NVM.
        const FORMAT = 1 << 1;
        /// Firmware Commit / Firmware Image Download.
        const FIRMWARE = 1 << 2;
        /// Namespace Management.
        const NS_MGMT = 1 << 3;
        /// Device Self-test.
        const SELF_TEST = 1 << 4;
        /// Directives.
        const DIRECTIVES = 1 << 5;
        /// NVMe-MI Send / Receive.
        const NVME_MI = 1 << 6;
        /// Virtualization Management.
        const VIRT_MGMT = 1 << 7;
        /// Doorbell Buffer Config.
        const DOORBELL_BUFFER_CONFIG = 1 << 8;
        /// Get LBA Status.
        const GET_LBA_STATUS = 1 << 9;
        /// Command and Feature Lockdown.
        const LOCKDOWN = 1 << 10;
    }
}

bitflags! {
    /// ONCS: Optional NVM Command Support (Identify Controller bytes
    /// 521:520).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Oncs: u16 {
        /// Compare.
        const COMPARE = 1 << 0;
        /// Write Uncorrectable.
        const WRITE_UNCORRECTABLE = 1 << 1;
        /// Dataset Management.
        const DSM = 1 << 2;
        /// Write Zeroes.
        const WRITE_ZEROES = 1 << 3;
        /// Save field in Set Features and Select field in Get Features.
        const SAVE_SELECT = 1 << 4;
        /// Reservations.
        const RESERVATIONS = 1 << 5;
        /// Timestamp feature.
        const TIMESTAMP = 1 << 6;
        /// Verify.
        const VERIFY = 1 << 7;
        /// Copy.
        const COPY = 1 << 8;
    }
}

/// SGL support level (Identify Controller SGLS bits 1:0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SglSupport {
    /// 00b: SGLs are not supported for the NVM command set.
    NotSupported,
    /// 01b: supported, no alignment or granularity requirement.
    ByteAligned,
    /// 10b: supported, data blocks must be dword aligned.
    DwordAligned,
    /// 11b: reserved.
    Reserved,
}

/// Controller type (Identify Controller CNTRLTYPE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ControllerType {
    /// 0: not reported (pre-1.4 controllers).
    NotReported,
    /// 1: I/O controller.
    Io,
    /// 2: discovery controller.
    Discovery,
    /// 3: administrative controller.
    Administrative,
    /// Reserved value.
    Reserved(u8),
}

/// Identify Controller data structure, 4096 bytes (Base 2.0 §5.17.2.1,
/// Figure "Identify – Identify Controller Data Structure, I/O Command Set
/// Independent").
///
/// Fields keep the spec's abbreviations; reserved ranges are named
/// `rsvd<offset>`. Text fields are best read through [`Self::serial`],
/// [`Self::model`], [`Self::firmware`] and [`Self::subnqn`].
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct IdentifyController {
    /// PCI Vendor ID.
    pub vid: U16,
    /// PCI Subsystem Vendor ID.
    pub ssvid: U16,
    /// Serial Number (ASCII, space padded).
    pub sn: [u8; 20],
    /// Model Number (ASCII, space padded).
    pub mn: [u8; 40],
    /// Firmware Revision (ASCII, space padded).
    pub fr: [u8; 8],
    /// Recommended Arbitration Burst (2^n commands).
    pub rab: u8,
    /// IEEE OUI Identifier (little endian).
    pub ieee: [u8; 3],
    /// Controller Multi-Path I/O and Namespace Sharing Capabilities.
    pub cmic: u8,
    /// Maximum Data Transfer Size (2^n units of CAP.MPSMIN; 0 = no limit).
    pub mdts: u8,
    /// Controller ID.
    pub cntlid: U16,
    /// Version (same format as the VS register).
    pub ver: U32,
    /// RTD3 Resume Latency (microseconds).
    pub rtd3r: U32,
    /// RTD3 Entry Latency (microseconds).
    pub rtd3e: U32,
    /// Optional Asynchronous Events Supported.
    pub oaes: U32,
    /// Controller Attributes.
    pub ctratt: U32,
    /// Read Recovery Levels Supported.
    pub rrls: U16,
    /// Reserved.
    pub rsvd102: [u8; 9],
    /// Controller Type.
    pub cntrltype: u8,
    /// FRU Globally Unique Identifier.
    pub fguid: [u8; 16],
    /// Command Retry Delay Time 1 (100 ms units).
    pub crdt1: U16,
    /// Command Retry Delay Time 2 (100 ms units).
    pub crdt2: U16,
    /// Command Retry Delay Time 3 (100 ms units).
    pub crdt3: U16,
    /// Reserved.
    pub rsvd134: [u8; 106],
    /// Reserved for the NVMe Management Interface.
    pub rsvd240: [u8; 13],
    /// NVM Subsystem Report (NVMe-MI).
    pub nvmsr: u8,
    /// VPD Write Cycle Information (NVMe-MI).
    pub vwci: u8,
    /// Management Endpoint Capabilities (NVMe-MI).
    pub mec: u8,
    /// Optional Admin Command Support (see [`Oacs`]).
    pub oacs: U16,
    /// Abort Command Limit (0's based).
    pub acl: u8,
    /// Asynchronous Event Request Limit (0's based).
    pub aerl: u8,
    /// Firmware Updates.
    pub frmw: u8,
    /// Log Page Attributes.
    pub lpa: u8,
    /// Error Log Page Entries (0's based).
    pub elpe: u8,
    /// Number of Power States Support (0's based).
    pub npss: u8,
    /// Admin Vendor Specific Command Configuration.
    pub avscc: u8,
    /// Autonomous Power State Transition Attributes.
    pub apsta: u8,
    /// Warning Composite Temperature Threshold (Kelvin).
    pub wctemp: U16,
    /// Critical Composite Temperature Threshold (Kelvin).
    pub cctemp: U16,
    /// Maximum Time for Firmware Activation (100 ms units).
    pub mtfa: U16,
    /// Host Memory Buffer Preferred Size (4 KiB units).
    pub hmpre: U32,
    /// Host Memory Buffer Minimum Size (4 KiB units).
    pub hmmin: U32,
    /// Total NVM Capacity (bytes, 128-bit).
    pub tnvmcap: [u8; 16],
    /// Unallocated NVM Capacity (bytes, 128-bit).
    pub unvmcap: [u8; 16],
    /// Replay Protected Memory Block Support.
    pub rpmbs: U32,
    /// Extended Device Self-test Time (minutes).
    pub edstt: U16,
    /// Device Self-test Options.
    pub dsto: u8,
    /// Firmware Update Granularity (4 KiB units; 0xff: no restriction).
    pub fwug: u8,
    /// Keep Alive Support (granularity, 100 ms units).
    pub kas: U16,
    /// Host Controlled Thermal Management Attributes.
    pub hctma: U16,
    /// Minimum Thermal Management Temperature (Kelvin).
    pub mntmt: U16,
    /// Maximum Thermal Management Temperature (Kelvin).
    pub mxtmt: U16,
    /// Sanitize Capabilities.
    pub sanicap: U32,
    /// Host Memory Buffer Minimum Descriptor Entry Size (4 KiB units).
    pub hmminds: U32,
    /// Host Memory Maximum Descriptors Entries.
    pub hmmaxd: U16,
    /// NVM Set Identifier Maximum.
    pub nsetidmax: U16,
    /// Endurance Group Identifier Maximum.
    pub endgidmax: U16,
    /// ANA Transition Time (seconds).
    pub anatt: u8,
    /// Asymmetric Namespace Access Capabilities.
    pub anacap: u8,
    /// ANA Group Identifier Maximum.
    pub anagrpmax: U32,
    /// Number of ANA Group Identifiers.
    pub nanagrpid: U32,
    /// Persistent Event Log Size (64 KiB units).
    pub pels: U32,
    /// Domain Identifier.
    pub domainid: U16,
    /// Reserved.
    pub rsvd358: [u8; 10],
    /// Max Endurance Group Capacity (bytes, 128-bit).
    pub megcap: [u8; 16],
    /// Reserved.
    pub rsvd384: [u8; 128],
    /// Submission Queue Entry Size (bits 3:0 required, 7:4 maximum; log2).
    pub sqes: u8,
    /// Completion Queue Entry Size (bits 3:0 required, 7:4 maximum; log2).
    pub cqes: u8,
    /// Maximum Outstanding Commands (fabrics).
    pub maxcmd: U16,
    /// Number of Namespaces (maximum valid NSID).
    pub nn: U32,
    /// Optional NVM Command Support (see [`Oncs`]).
    pub oncs: U16,
    /// Fused Operation Support.
    pub fuses: U16,
    /// Format NVM Attributes.
    pub fna: u8,
    /// Volatile Write Cache (bit 0 present, bits 2:1 flush behaviour).
    pub vwc: u8,
    /// Atomic Write Unit Normal (blocks, 0's based).
    pub awun: U16,
    /// Atomic Write Unit Power Fail (blocks, 0's based).
    pub awupf: U16,
    /// I/O Command Set Vendor Specific Command Configuration.
    pub icsvscc: u8,
    /// Namespace Write Protection Capabilities.
    pub nwpc: u8,
    /// Atomic Compare & Write Unit (blocks, 0's based).
    pub acwu: U16,
    /// Optional Copy Formats Supported.
    pub ocfs: U16,
    /// SGL Support.
    pub sgls: U32,
    /// Maximum Number of Allowed Namespaces.
    pub mnan: U32,
    /// Maximum Domain Namespace Attachments (128-bit).
    pub maxdna: [u8; 16],
    /// Maximum I/O Controller Namespace Attachments.
    pub maxcna: U32,
    /// Reserved.
    pub rsvd564: [u8; 204],
    /// NVM Subsystem NVMe Qualified Name (UTF-8, NUL terminated).
    pub subnqn: [u8; 256],
    /// Reserved.
    pub rsvd1024: [u8; 768],
    /// I/O Queue Command Capsule Supported Size (fabrics).
    pub ioccsz: U32,
    /// I/O Queue Response Capsule Supported Size (fabrics).
    pub iorcsz: U32,
    /// In Capsule Data Offset (fabrics).
    pub icdoff: U16,
    /// Fabrics Controller Attributes.
    pub fcatt: u8,
    /// Maximum SGL Data Block Descriptors (fabrics).
    pub msdbd: u8,
    /// Optional Fabric Commands Support.
    pub ofcs: U16,
    /// Reserved.
    pub rsvd1806: [u8; 242],
    /// Power State Descriptors 0..=31.
    pub psd: [PowerStateDescriptor; 32],
    /// Vendor Specific.
    pub vs: [u8; 1024],
}

layout!(IdentifyController, 4096,
    vid @ 0, ssvid @ 2, sn @ 4, mn @ 24, fr @ 64, rab @ 72, ieee @ 73,
    cmic @ 76, mdts @ 77, cntlid @ 78, ver @ 80, rtd3r @ 84, rtd3e @ 88,
    oaes @ 92, ctratt @ 96, rrls @ 100, rsvd102 @ 102, cntrltype @ 111,
    fguid @ 112, crdt1 @ 128, crdt2 @ 130, crdt3 @ 132, rsvd134 @ 134,
    rsvd240 @ 240, nvmsr @ 253, vwci @ 254, mec @ 255, oacs @ 256, acl @ 258,
    aerl @ 259, frmw @ 260, lpa @ 261, elpe @ 262, npss @ 263, avscc @ 264,
    apsta @ 265, wctemp @ 266, cctemp @ 268, mtfa @ 270, hmpre @ 272,
    hmmin @ 276, tnvmcap @ 280, unvmcap @ 296, rpmbs @ 312, edstt @ 316,
    dsto @ 318, fwug @ 319, kas @ 320, hctma @ 322, mntmt @ 324, mxtmt @ 326,
    sanicap @ 328, hmminds @ 332, hmmaxd @ 336, nsetidmax @ 338,
    endgidmax @ 340, anatt @ 342, anacap @ 343, anagrpmax @ 344,
    nanagrpid @ 348, pels @ 352, domainid @ 356, rsvd358 @ 358, megcap @ 368,
    rsvd384 @ 384, sqes @ 512, cqes @ 513, maxcmd @ 514, nn @ 516, oncs @ 520,
    fuses @ 522, fna @ 524, vwc @ 525, awun @ 526, awupf @ 528, icsvscc @ 530,
    nwpc @ 531, acwu @ 532, ocfs @ 534, sgls @ 536, mnan @ 540, maxdna @ 544,
    maxcna @ 560, rsvd564 @ 564, subnqn @ 768, rsvd1024 @ 1024, ioccsz @ 1792,
    iorcsz @ 1796, icdoff @ 1800, fcatt @ 1802, msdbd @ 1803, ofcs @ 1804,
    rsvd1806 @ 1806, psd @ 2048, vs @ 3072,
);

impl IdentifyController {
    /// Size of the data structure in bytes.
    pub const SIZE: usize = 4096;

    /// Serial number (SN).
    #[must_use]
    pub fn serial(&self) -> AsciiField<'_> {
        AsciiField(&self.sn)
    }

    /// Model number (MN).
    #[must_use]
    pub fn model(&self) -> AsciiField<'_> {
        AsciiField(&self.mn)
    }

    /// Firmware revision (FR).
    #[must_use]
    pub fn firmware(&self) -> AsciiField<'_> {
        AsciiField(&self.fr)
    }

    /// NVM subsystem NQN (SUBNQN).
    #[must_use]
    pub fn subnqn(&self) -> AsciiField<'_> {
        AsciiField(&self.subnqn)
    }

    /// VER as a [`Vs`] (0 for controllers older than NVMe 1.2).
    #[must_use]
    pub const fn version(&self) -> Vs {
        Vs(self.ver.get())
    }

    /// IEEE OUI as a 24-bit number.
    #[must_use]
    pub const fn ieee_oui(&self) -> u32 {
        self.ieee[0] as u32 | (self.ieee[1] as u32) << 8 | (self.ieee[2] as u32) << 16
    }

    /// Maximum data transfer size in bytes, given the CAP.MPSMIN page size
    /// in bytes: `min_page_size << MDTS`.
    ///
    /// `None` means no limit (MDTS = 0). The result saturates at
    /// `u64::MAX` for absurd MDTS values (up to 255) from an untrusted
    /// device, so the driver should still apply its own cap.
    #[must_use]
    pub const fn max_transfer_bytes(&self, min_page_size: usize) -> Option<u64> {
        if self.mdts == 0 {
            return None;
        }
        let page = min_page_size as u64;
        if self.mdts >= 64 {
            return Some(if page == 0 { 0 } else { u64::MAX });
        }
        Some(page.saturating_mul(1u64 << self.mdts))
    }

    /// Optional admin commands supported (unknown bits retained).
    #[must_use]
    pub const fn oacs(&self) -> Oacs {
        Oacs::from_bits_retain(self.oacs.get())
    }

    /// Optional NVM commands supported (unknown bits retained).
    #[must_use]
    pub const fn oncs(&self) -> Oncs {
        Oncs::from_bits_retain(self.oncs.get())
    }

    /// VWC bit 0: a volatile write cache is present (Flush is meaningful).
    #[must_use]
    pub const fn vwc_present(&self) -> bool {
        self.vwc & 1 != 0
    }

    /// VWC bits 2:1 = 11b: Flush with NSID 0xffff_ffff is supported.
    #[must_use]
    pub const fn flush_broadcast_supported(&self) -> bool {
        (self.vwc >> 1) & 0b11 == 0b11
    }

    /// SGLS bits 1:0: SGL support for the NVM command set.
    #[must_use]
    pub const fn sgl_support(&self) -> SglSupport {
        match self.sgls.get() & 0b11 {
            0 => SglSupport::NotSupported,
            1 => SglSupport::ByteAligned,
            2 => SglSupport::DwordAligned,
            _ => SglSupport::Reserved,
        }
    }

    /// SQES bits 3:0: required (minimum) SQ entry size, log2 bytes.
    #[must_use]
    pub const fn sqes_min(&self) -> u8 {
        self.sqes & 0xf
    }

    /// SQES bits 7:4: maximum SQ entry size, log2 bytes.
    #[must_use]
    pub const fn sqes_max(&self) -> u8 {
        self.sqes >> 4
    }

    /// CQES bits 3:0: required (minimum) CQ entry size, log2 bytes.
    #[must_use]
    pub const fn cqes_min(&self) -> u8 {
        self.cqes & 0xf
    }

    /// CQES bits 7:4: maximum CQ entry size, log2 bytes.
    #[must_use]
    pub const fn cqes_max(&self) -> u8 {
        self.cqes >> 4
    }

    /// Whether the 64-byte SQE / 16-byte CQE of the NVM command set lie
    /// within the SQES / CQES ranges.
    #[must_use]
    pub const fn supports_nvm_entry_sizes(&self) -> bool {
        self.sqes_min() <= 6 && 6 <= self.sqes_max() && self.cqes_min() <= 4 && 4 <= self.cqes_max()
    }

    /// Total NVM capacity in bytes.
    #[must_use]
    pub const fn tnvmcap(&self) -> u128 {
        le128(&self.tnvmcap)
    }

    /// Unallocated NVM capacity in bytes.
    #[must_use]
    pub const fn unvmcap(&self) -> u128 {
        le128(&self.unvmcap)
    }

    /// Max endurance group capacity in bytes.
    #[must_use]
    pub const fn megcap(&self) -> u128 {
        le128(&self.megcap)
    }

    /// Maximum domain namespace attachments.
    #[must_use]
    pub const fn maxdna(&self) -> u128 {
        le128(&self.maxdna)
    }

    /// Number of namespaces (NN): the largest valid NSID.
    #[must_use]
    pub const fn nn(&self) -> u32 {
        self.nn.get()
    }

    /// Controller type (CNTRLTYPE).
    #[must_use]
    pub const fn controller_type(&self) -> ControllerType {
        match self.cntrltype {
            0 => ControllerType::NotReported,
            1 => ControllerType::Io,
            2 => ControllerType::Discovery,
            3 => ControllerType::Administrative,
            r => ControllerType::Reserved(r),
        }
    }

    /// Command Retry Delay Time selected by a completion's CRD (1..=3), in
    /// milliseconds; 0 for CRD 0 or an out-of-range index.
    #[must_use]
    pub const fn crdt_ms(&self, crd: u8) -> u32 {
        let t = match crd {
            1 => self.crdt1.get(),
            2 => self.crdt2.get(),
            3 => self.crdt3.get(),
            _ => 0,
        };
        t as u32 * 100
    }

    /// Number of valid power state descriptors (NPSS + 1, clamped to 32).
    #[must_use]
    pub const fn power_state_count(&self) -> usize {
        let n = self.npss as usize + 1;
        if n > 32 { 32 } else { n }
    }

    /// The valid power state descriptors.
    #[must_use]
    pub fn power_states(&self) -> &[PowerStateDescriptor] {
        let n = self.power_state_count();
        self.psd.get(..n).unwrap_or(&self.psd)
    }

    /// Maximum number of concurrently outstanding Abort commands (ACL + 1).
    #[must_use]
    pub const fn abort_limit(&self) -> u16 {
        self.acl as u16 + 1
    }

    /// Maximum number of concurrently outstanding Asynchronous Event
    /// Requests (AERL + 1).
    #[must_use]
    pub const fn async_event_limit(&self) -> u16 {
        self.aerl as u16 + 1
    }

    /// Number of Error Information log entries (ELPE + 1).
    #[must_use]
    pub const fn error_log_entries(&self) -> u16 {
        self.elpe as u16 + 1
    }

    /// Keep alive granularity in milliseconds (KAS × 100; 0 = unsupported).
    #[must_use]
    pub const fn keep_alive_granularity_ms(&self) -> u32 {
        self.kas.get() as u32 * 100
    }
}

impl fmt::Debug for IdentifyController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentifyController")
            .field("vid", &format_args!("{:#06x}", self.vid.get()))
            .field("ssvid", &format_args!("{:#06x}", self.ssvid.get()))
            .field("sn", &self.serial())
            .field("mn", &self.model())
            .field("fr", &self.firmware())
            .field("ver", &format_args!("{}", self.version()))
            .field("cntlid", &self.cntlid.get())
            .field("mdts", &self.mdts)
            .field("oacs", &self.oacs())
            .field("oncs", &self.oncs())
            .field("sqes", &format_args!("{:#04x}", self.sqes))
            .field("cqes", &format_args!("{:#04x}", self.cqes))
            .field("nn", &self.nn.get())
            .field("vwc", &self.vwc)
            .field("sgls", &format_args!("{:#010x}", self.sgls.get()))
            .field("npss", &self.npss)
            .field("tnvmcap", &self.tnvmcap())
            .field("subnqn", &self.subnqn())
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------
// Identify Namespace (NVM)
// ---------------------------------------------------------------------------

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

    /// Relative performance, 0 (best) ..= 3 (degraded).
    #[must_use]
    pub const fn relative_performance(&self) -> u8 {
        self.rp & 0b11
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

    /// NSFEAT.THINP.
    #[must_use]
    pub const fn thin_provisioned(&self) -> bool {
        self.nsfeat & 1 != 0
    }

    /// FLBAS bit 4: metadata is transferred at the end of each block
    /// (extended LBA) rather than in a separate buffer.
    #[must_use]
    pub const fn metadata_extended(&self) -> bool {
        self.flbas & (1 << 4) != 0
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

// ---------------------------------------------------------------------------
// Active namespace list
// ---------------------------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;
    use std::string::ToString;
    use std::vec::Vec;
    use zerocopy::FromZeros;

    fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
        buf[off..off + bytes.len()].copy_from_slice(bytes);
    }

    #[test]
    fn ascii_field() {
        let f = AsciiField::new(b"QEMU NVMe Ctrl                          ");
        assert_eq!(f.to_string(), "QEMU NVMe Ctrl");
        assert_eq!(f.as_bytes(), b"QEMU NVMe Ctrl");
        assert_eq!(f.as_str(), Some("QEMU NVMe Ctrl"));
        assert!(f == "QEMU NVMe Ctrl");
        assert_eq!(f.raw().len(), 40);
        let f = AsciiField::new(b"ab\x01c\xff\0 \0");
        assert_eq!(f.to_string(), "ab.c.");
        assert_eq!(f.as_bytes(), b"ab\x01c\xff");
        assert_eq!(f.as_str(), None);
        assert_eq!(format!("{f:?}"), "\"ab.c.\"");
        let f = AsciiField::new(b"  \0\0");
        assert!(f.is_empty());
        assert_eq!(f.to_string(), "");
        assert_eq!(AsciiField::new(b"").to_string(), "");
        // Leading spaces are kept.
        assert_eq!(AsciiField::new(b" x ").to_string(), " x");
    }

    fn qemu_controller() -> IdentifyController {
        let mut b = [0u8; 4096];
        put(&mut b, 0, &0x1b36u16.to_le_bytes()); // VID Red Hat
        put(&mut b, 2, &0x1af4u16.to_le_bytes()); // SSVID
        put(&mut b, 4, b"deadbeef            ");
        put(&mut b, 24, b"QEMU NVMe Ctrl                          ");
        put(&mut b, 64, b"9.2.0   ");
        b[72] = 6; // RAB
        put(&mut b, 73, &[0x00, 0x54, 0x52]); // IEEE OUI 0x525400
        b[77] = 7; // MDTS
        put(&mut b, 78, &0u16.to_le_bytes());
        put(&mut b, 80, &0x0001_0400u32.to_le_bytes()); // 1.4.0
        b[111] = 1; // I/O controller
        put(&mut b, 128, &10u16.to_le_bytes()); // CRDT1 = 1 s
        put(&mut b, 256, &0x012au16.to_le_bytes()); // OACS
        b[258] = 3; // ACL
        b[259] = 3; // AERL
        b[262] = 63; // ELPE
        b[263] = 0; // NPSS
        put(&mut b, 266, &343u16.to_le_bytes()); // WCTEMP 70 C
        put(&mut b, 268, &373u16.to_le_bytes()); // CCTEMP 100 C
        put(&mut b, 280, &(1u128 << 40).to_le_bytes()); // TNVMCAP 1 TiB
        b[512] = 0x66;
        b[513] = 0x44;
        put(&mut b, 516, &256u32.to_le_bytes()); // NN
        put(&mut b, 520, &0x015du16.to_le_bytes()); // ONCS
        b[525] = 0x07; // VWC present, broadcast flush
        put(&mut b, 536, &0x0010_0001u32.to_le_bytes()); // SGLS
        put(&mut b, 768, b"nqn.2019-08.org.qemu:deadbeef");
        put(&mut b, 2048, &2500u16.to_le_bytes()); // PSD0 MP 25 W
        put(&mut b, 2052, &16u32.to_le_bytes()); // ENLAT
        put(&mut b, 2056, &4u32.to_le_bytes()); // EXLAT
        IdentifyController::read_from_bytes(&b).expect("4096 bytes")
    }

    #[test]
    fn identify_controller_fields() {
        let c = qemu_controller();
        assert_eq!(c.vid.get(), 0x1b36);
        assert_eq!(c.ssvid.get(), 0x1af4);
        assert_eq!(c.serial().to_string(), "deadbeef");
        assert_eq!(c.model().to_string(), "QEMU NVMe Ctrl");
        assert_eq!(c.firmware().to_string(), "9.2.0");
        assert_eq!(c.subnqn().to_string(), "nqn.2019-08.org.qemu:deadbeef");
        assert_eq!(c.ieee_oui(), 0x52_5400);
        assert_eq!(c.version().to_string(), "1.4.0");
        assert_eq!(c.controller_type(), ControllerType::Io);
        assert_eq!(c.max_transfer_bytes(4096), Some(512 * 1024));
        assert_eq!(
            c.oacs(),
            Oacs::FORMAT | Oacs::NS_MGMT | Oacs::DIRECTIVES | Oacs::DOORBELL_BUFFER_CONFIG
        );
        assert!(c.oacs().contains(Oacs::DOORBELL_BUFFER_CONFIG));
        assert_eq!(
            c.oncs(),
            Oncs::COMPARE
                | Oncs::DSM
                | Oncs::WRITE_ZEROES
                | Oncs::SAVE_SELECT
                | Oncs::TIMESTAMP
                | Oncs::COPY
        );
        assert!(c.vwc_present());
        assert!(c.flush_broadcast_supported());
        assert_eq!(c.sgl_support(), SglSupport::ByteAligned);
        assert_eq!((c.sqes_min(), c.sqes_max()), (6, 6));
        assert_eq!((c.cqes_min(), c.cqes_max()), (4, 4));
        assert!(c.supports_nvm_entry_sizes());
        assert_eq!(c.nn(), 256);
        assert_eq!(c.tnvmcap(), 1 << 40);
        assert_eq!(c.unvmcap(), 0);
        assert_eq!(c.crdt_ms(1), 1000);
        assert_eq!(c.crdt_ms(0), 0);
        assert_eq!(c.crdt_ms(9), 0);
        assert_eq!(c.abort_limit(), 4);
        assert_eq!(c.async_event_limit(), 4);
        assert_eq!(c.error_log_entries(), 64);
        assert_eq!(c.wctemp.get(), 343);
        assert_eq!(c.power_states().len(), 1);
        let ps = &c.power_states()[0];
        assert_eq!(ps.max_power_100uw(), 250_000);
        assert_eq!(ps.enlat.get(), 16);
        assert_eq!(ps.exlat.get(), 4);
        assert!(!ps.non_operational());
        let dbg = format!("{c:?}");
        assert!(dbg.contains("QEMU NVMe Ctrl"), "{dbg}");
        assert!(dbg.len() < 1000);
    }

    #[test]
    fn identify_controller_hostile() {
        let mut c = IdentifyController::new_zeroed();
        assert_eq!(c.max_transfer_bytes(4096), None);
        c.mdts = 1;
        assert_eq!(c.max_transfer_bytes(4096), Some(8192));
        c.mdts = 51;
        assert_eq!(c.max_transfer_bytes(4096), Some(1 << 63));
        c.mdts = 52;
        assert_eq!(c.max_transfer_bytes(4096), Some(u64::MAX));
        c.mdts = 255;
        assert_eq!(c.max_transfer_bytes(4096), Some(u64::MAX));
        assert_eq!(c.max_transfer_bytes(0), Some(0));
        c.npss = 255;
        assert_eq!(c.power_states().len(), 32);
        c.cntrltype = 9;
        assert_eq!(c.controller_type(), ControllerType::Reserved(9));
        c.sgls = U32::new(3);
        assert_eq!(c.sgl_support(), SglSupport::Reserved);
        c.sqes = 0x77;
        assert!(!c.supports_nvm_entry_sizes());
        c.oacs = U16::new(0xffff);
        assert!(c.oacs().contains(Oacs::all()));
        assert_eq!(c.oacs().bits(), 0xffff);
        c.sn = [0xff; 20];
        assert_eq!(c.serial().to_string(), ".".repeat(20));
        c.acl = 255;
        assert_eq!(c.abort_limit(), 256);
    }

    fn namespace(nlbaf: u8, flbas: u8) -> IdentifyNamespace {
        let mut ns = IdentifyNamespace::new_zeroed();
        ns.nsze = U64::new(0x20_0000);
        ns.ncap = U64::new(0x20_0000);
        ns.nuse = U64::new(0x1000);
        ns.nlbaf = nlbaf;
        ns.flbas = flbas;
        // QEMU's default LBA formats: 512/4096 bytes x 0/8/16/64 bytes metadata.
        let formats = [
            (0u16, 9u8),
            (8, 9),
            (16, 9),
            (64, 9),
            (0, 12),
            (8, 12),
            (16, 12),
            (64, 12),
        ];
        for (i, (ms, lbads)) in formats.into_iter().enumerate() {
            ns.lbaf[i] = LbaFormat {
                ms: U16::new(ms),
                lbads,
                rp: 0,
            };
        }
        ns
    }

    #[test]
    fn identify_namespace() {
        let ns = namespace(7, 0);
        assert_eq!(ns.nsze(), 0x20_0000);
        assert_eq!(ns.lba_format_count(), 8);
        assert_eq!(ns.lba_formats().len(), 8);
        assert_eq!(ns.current_lba_format_index(), 0);
        assert_eq!(ns.lba_size(), Some(512));
        assert_eq!(ns.size_bytes(), Some(0x20_0000 * 512));
        assert!(!ns.metadata_extended());
        assert!(!ns.thin_provisioned());

        let ns = namespace(7, 0x15); // format 5, metadata extended
        assert_eq!(ns.current_lba_format_index(), 5);
        let f = ns.current_lba_format().expect("valid");
        assert_eq!(f.lba_size(), Some(4096));
        assert_eq!(f.metadata_size(), 8);
        assert!(ns.metadata_extended());

        // FLBAS bits 6:5 extend the index beyond 15.
        let mut ns = namespace(63, 0x61);
        assert_eq!(ns.current_lba_format_index(), 0x31);
        ns.lbaf[0x31] = LbaFormat {
            ms: U16::ZERO,
            lbads: 13,
            rp: 0xfe,
        };
        assert_eq!(ns.lba_size(), Some(8192));
        assert_eq!(
            ns.current_lba_format()
                .expect("valid")
                .relative_performance(),
            2
        );

        // Index beyond NLBAF.
        let ns = namespace(3, 0x04);
        assert_eq!(ns.current_lba_format(), None);
        assert_eq!(ns.lba_size(), None);
        assert_eq!(ns.size_bytes(), None);
        // NLBAF beyond 63 is clamped.
        let ns = namespace(255, 0x7f);
        assert_eq!(ns.lba_formats().len(), 64);
        assert_eq!(ns.current_lba_format_index(), 63);
        assert_eq!(ns.current_lba_format(), Some(LbaFormat::default()));
        assert_eq!(ns.lba_size(), None);

        let mut ns = namespace(0, 0);
        ns.nsze = U64::new(u64::MAX);
        assert_eq!(ns.size_bytes(), None);
        ns.nsfeat = 0x1f;
        assert!(ns.thin_provisioned());
        assert!(ns.features().contains(NsFeatures::all()));
        ns.nvmcap = (0x1234u128 << 64 | 5).to_le_bytes();
        assert_eq!(ns.nvmcap(), 0x1234u128 << 64 | 5);
        let dbg = format!("{ns:?}");
        assert!(dbg.contains("nsze"), "{dbg}");
    }

    #[test]
    fn lba_format_validation() {
        for lbads in 0..=u8::MAX {
            let f = LbaFormat {
                ms: U16::ZERO,
                lbads,
                rp: 0,
            };
            match f.lba_size() {
                Some(sz) => {
                    assert!((9..=31).contains(&lbads));
                    assert_eq!(sz, 1 << lbads);
                }
                None => assert!(!(9..=31).contains(&lbads)),
            }
        }
        let b = [0x08, 0x00, 0x0c, 0x01];
        let f = LbaFormat::read_from_bytes(&b[..]).expect("4 bytes");
        assert_eq!(f.metadata_size(), 8);
        assert_eq!(f.lba_size(), Some(4096));
        assert_eq!(f.relative_performance(), 1);
    }

    #[test]
    fn namespace_list() {
        let mut l = ActiveNamespaceList::new_zeroed();
        assert!(l.is_empty());
        assert_eq!(l.len(), 0);
        assert_eq!(l.last(), None);
        for (i, id) in [1u32, 2, 5, 9].into_iter().enumerate() {
            l.ids[i] = U32::new(id);
        }
        l.ids[6] = U32::new(77); // after the terminator: ignored
        assert_eq!(l.iter().collect::<Vec<_>>(), [1, 2, 5, 9]);
        assert_eq!(l.len(), 4);
        assert_eq!(l.last(), Some(9));
        assert!(!l.is_full());
        assert_eq!(format!("{l:?}"), "[1, 2, 5, 9]");
        for (i, id) in l.ids.iter_mut().enumerate() {
            *id = U32::new(i as u32 + 1);
        }
        assert!(l.is_full());
        assert_eq!(l.len(), 1024);
        assert_eq!(l.last(), Some(1024));
        assert!(format!("{l:?}").contains("1024 total"));
    }
}

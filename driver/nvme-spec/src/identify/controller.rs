//! Identify Controller (CNS 01h) and its power state descriptors.

use core::fmt;

use bitflags::bitflags;
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{AsciiField, le128};
use crate::regs::Vs;

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

impl PowerStateDescriptor {}

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

//! Controller registers (NVMe Base 2.0 §3.1.4, Figure "Controller
//! Properties", and the NVMe over PCIe Transport 1.0 §3.1.2 memory-mapped
//! register layout including doorbells).
//!
//! Each register is a `Copy` newtype around its raw value with accessors
//! for every field, so that no other part of the driver needs to know bit
//! positions. Decoders accept any raw value (a removed device reads as all
//! ones) and never panic.

use core::fmt;

/// Byte offsets of the controller registers in BAR0 (Base 2.0 Figure
/// "Controller Properties", PCIe Transport 1.0 §3.1.2 register map).
pub mod offset {
    /// Controller Capabilities (64 bit).
    pub const CAP: usize = 0x00;
    /// Version (32 bit).
    pub const VS: usize = 0x08;
    /// Interrupt Mask Set (32 bit).
    pub const INTMS: usize = 0x0c;
    /// Interrupt Mask Clear (32 bit).
    pub const INTMC: usize = 0x10;
    /// Controller Configuration (32 bit).
    pub const CC: usize = 0x14;
    /// Controller Status (32 bit).
    pub const CSTS: usize = 0x1c;
    /// NVM Subsystem Reset (32 bit, optional).
    pub const NSSR: usize = 0x20;
    /// Admin Queue Attributes (32 bit).
    pub const AQA: usize = 0x24;
    /// Admin Submission Queue Base Address (64 bit).
    pub const ASQ: usize = 0x28;
    /// Admin Completion Queue Base Address (64 bit).
    pub const ACQ: usize = 0x30;
    /// Controller Memory Buffer Location (32 bit, optional).
    pub const CMBLOC: usize = 0x38;
    /// Controller Memory Buffer Size (32 bit, optional).
    pub const CMBSZ: usize = 0x3c;
    /// Boot Partition Information (32 bit, optional).
    pub const BPINFO: usize = 0x40;
    /// Boot Partition Read Select (32 bit, optional).
    pub const BPRSEL: usize = 0x44;
    /// Boot Partition Memory Buffer Location (64 bit, optional).
    pub const BPMBL: usize = 0x48;
    /// Controller Memory Buffer Memory Space Control (64 bit, optional).
    pub const CMBMSC: usize = 0x50;
    /// Controller Memory Buffer Status (32 bit, optional).
    pub const CMBSTS: usize = 0x58;
    /// Controller Memory Buffer Elasticity Buffer Size (32 bit, optional).
    pub const CMBEBS: usize = 0x5c;
    /// Controller Memory Buffer Sustained Write Throughput (32 bit, optional).
    pub const CMBSWTP: usize = 0x60;
    /// NVM Subsystem Shutdown (32 bit, optional, NVMe 2.0).
    pub const NSSD: usize = 0x64;
    /// Controller Ready Timeouts (32 bit, NVMe 2.0).
    pub const CRTO: usize = 0x68;
    /// Persistent Memory Region Capabilities (32 bit, optional).
    pub const PMRCAP: usize = 0xe00;
    /// Persistent Memory Region Control (32 bit, optional).
    pub const PMRCTL: usize = 0xe04;
    /// Persistent Memory Region Status (32 bit, optional).
    pub const PMRSTS: usize = 0xe08;
    /// Persistent Memory Region Elasticity Buffer Size (32 bit, optional).
    pub const PMREBS: usize = 0xe0c;
    /// Persistent Memory Region Sustained Write Throughput (32 bit, optional).
    pub const PMRSWTP: usize = 0xe10;
    /// Persistent Memory Region Controller Memory Space Control, lower (32 bit).
    pub const PMRMSCL: usize = 0xe14;
    /// Persistent Memory Region Controller Memory Space Control, upper (32 bit).
    pub const PMRMSCU: usize = 0xe18;
    /// Submission Queue 0 Tail Doorbell; all doorbells follow (see
    /// [`doorbell_offset`](super::doorbell_offset)).
    pub const DOORBELL_BASE: usize = 0x1000;
}

/// Value written to NSSR to initiate an NVM Subsystem Reset: ASCII "NVMe"
/// (Base 2.0 §3.1.4.6).
pub const NVME_SSR: u32 = 0x4E56_4D65;

/// Extracts `width` bits starting at `shift` from a 64-bit value.
const fn bits64(v: u64, shift: u32, width: u32) -> u64 {
    (v >> shift) & ((1u64 << width) - 1)
}

/// Extracts `width` bits starting at `shift` from a 32-bit value.
const fn bits32(v: u32, shift: u32, width: u32) -> u32 {
    (v >> shift) & ((1u32 << width) - 1)
}

/// Replaces `width` bits at `shift` in `v` by the low bits of `field`.
const fn set_bits32(v: u32, shift: u32, width: u32, field: u32) -> u32 {
    let mask = ((1u32 << width) - 1) << shift;
    (v & !mask) | ((field << shift) & mask)
}

// ---------------------------------------------------------------------------
// CAP
// ---------------------------------------------------------------------------

/// Controller Capabilities, offset 0x00 (Base 2.0 §3.1.4.1, Figure "Offset 0h: CAP – Controller
/// Capabilities").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Cap(pub u64);

impl Cap {
    /// CSS bit: the NVM Command Set is supported.
    pub const CSS_NVM: u8 = 1 << 0;
    /// CSS bit: one or more I/O command sets are supported (CC.CSS = 110b
    /// may be used).
    pub const CSS_IO_COMMAND_SETS: u8 = 1 << 6;
    /// CSS bit: only the Admin Command Set is supported (no I/O command set).
    pub const CSS_ADMIN_ONLY: u8 = 1 << 7;

    /// MQES, bits 15:0: Maximum Queue Entries Supported, **0's based**.
    #[must_use]
    pub const fn mqes_raw(self) -> u16 {
        bits64(self.0, 0, 16) as u16
    }

    /// Maximum number of entries in an individual I/O queue (MQES + 1,
    /// 1..=65536). The spec requires MQES >= 1 (two entries); a value of 0
    /// from a misbehaving device yields 1.
    #[must_use]
    pub const fn max_queue_entries(self) -> u32 {
        self.mqes_raw() as u32 + 1
    }

    /// CQR, bit 16: Contiguous Queues Required.
    #[must_use]
    pub const fn cqr(self) -> bool {
        bits64(self.0, 16, 1) != 0
    }

    /// AMS, bits 18:17: Arbitration Mechanism Supported (bit 0: weighted
    /// round robin with urgent, bit 1: vendor specific). Round robin is
    /// always supported and has no bit.
    #[must_use]
    pub const fn ams(self) -> u8 {
        bits64(self.0, 17, 2) as u8
    }

    /// TO, bits 31:24: worst-case time to wait for CSTS.RDY to change after
    /// CC.EN changes, in 500 ms units.
    #[must_use]
    pub const fn timeout_raw(self) -> u8 {
        bits64(self.0, 24, 8) as u8
    }

    /// CAP.TO converted to milliseconds (TO × 500, 0..=127 500 ms).
    ///
    /// This is exactly the spec value; the driver should add its own slack
    /// on top (and apply a floor, since some devices report 0). When
    /// CC.CRIME is used the CRTO register gives the timeouts instead.
    #[must_use]
    pub const fn timeout_ms(self) -> u64 {
        self.timeout_raw() as u64 * 500
    }

    /// DSTRD, bits 35:32: Doorbell Stride (stride is `4 << DSTRD` bytes).
    #[must_use]
    pub const fn dstrd(self) -> u8 {
        bits64(self.0, 32, 4) as u8
    }

    /// Distance in bytes between consecutive doorbell registers
    /// (`4 << DSTRD`, 4..=131072).
    #[must_use]
    pub const fn doorbell_stride_bytes(self) -> usize {
        4usize << self.dstrd()
    }

    /// NSSRS, bit 36: NVM Subsystem Reset Supported.
    #[must_use]
    pub const fn nssrs(self) -> bool {
        bits64(self.0, 36, 1) != 0
    }

    /// CSS, bits 44:37: Command Sets Supported (bit field, see the `CSS_*`
    /// constants).
    #[must_use]
    pub const fn css(self) -> u8 {
        bits64(self.0, 37, 8) as u8
    }

    /// CSS bit 0: the NVM Command Set is supported.
    #[must_use]
    pub const fn supports_nvm_command_set(self) -> bool {
        self.css() & Self::CSS_NVM != 0
    }

    /// CSS bit 6: the controller supports I/O command sets selected through
    /// the I/O Command Set Profile feature (CC.CSS = 110b).
    #[must_use]
    pub const fn supports_io_command_sets(self) -> bool {
        self.css() & Self::CSS_IO_COMMAND_SETS != 0
    }

    /// CSS bit 7: no I/O command set is supported (admin-only controller).
    #[must_use]
    pub const fn admin_only(self) -> bool {
        self.css() & Self::CSS_ADMIN_ONLY != 0
    }

    /// BPS, bit 45: Boot Partition Support.
    #[must_use]
    pub const fn bps(self) -> bool {
        bits64(self.0, 45, 1) != 0
    }

    /// CPS, bits 47:46: Controller Power Scope (0 not reported, 1 controller,
    /// 2 domain, 3 NVM subsystem). NVMe 2.0.
    #[must_use]
    pub const fn cps(self) -> u8 {
        bits64(self.0, 46, 2) as u8
    }

    /// MPSMIN, bits 51:48 (raw; page size is `2 ^ (12 + MPSMIN)`).
    #[must_use]
    pub const fn mpsmin(self) -> u8 {
        bits64(self.0, 48, 4) as u8
    }

    /// MPSMAX, bits 55:52 (raw; page size is `2 ^ (12 + MPSMAX)`).
    #[must_use]
    pub const fn mpsmax(self) -> u8 {
        bits64(self.0, 52, 4) as u8
    }

    /// log2 of the minimum memory page size (12 + MPSMIN, 12..=27).
    #[must_use]
    pub const fn mpsmin_shift(self) -> u32 {
        12 + self.mpsmin() as u32
    }

    /// log2 of the maximum memory page size (12 + MPSMAX, 12..=27).
    #[must_use]
    pub const fn mpsmax_shift(self) -> u32 {
        12 + self.mpsmax() as u32
    }

    /// Minimum memory page size in bytes (4 KiB..=128 MiB).
    #[must_use]
    pub const fn min_page_size(self) -> usize {
        1usize << self.mpsmin_shift()
    }

    /// Maximum memory page size in bytes (4 KiB..=128 MiB).
    #[must_use]
    pub const fn max_page_size(self) -> usize {
        1usize << self.mpsmax_shift()
    }

    /// Whether a page size of `1 << shift` bytes lies within
    /// MPSMIN..=MPSMAX.
    #[must_use]
    pub const fn supports_page_shift(self, shift: u32) -> bool {
        shift >= self.mpsmin_shift() && shift <= self.mpsmax_shift()
    }

    /// PMRS, bit 56: Persistent Memory Region Supported.
    #[must_use]
    pub const fn pmrs(self) -> bool {
        bits64(self.0, 56, 1) != 0
    }

    /// CMBS, bit 57: Controller Memory Buffer Supported (CMBMSC present).
    #[must_use]
    pub const fn cmbs(self) -> bool {
        bits64(self.0, 57, 1) != 0
    }

    /// NSSS, bit 58: NVM Subsystem Shutdown Supported (NVMe 2.0).
    #[must_use]
    pub const fn nsss(self) -> bool {
        bits64(self.0, 58, 1) != 0
    }

    /// CRMS, bits 60:59: Controller Ready Modes Supported (bit 0: CRWMS,
    /// bit 1: CRIMS). NVMe 2.0.
    #[must_use]
    pub const fn crms(self) -> u8 {
        bits64(self.0, 59, 2) as u8
    }

    /// CRMS.CRWMS: Controller Ready With Media Support.
    #[must_use]
    pub const fn crwms(self) -> bool {
        self.crms() & 0b01 != 0
    }

    /// CRMS.CRIMS: Controller Ready Independent of Media Support
    /// (CC.CRIME may be set).
    #[must_use]
    pub const fn crims(self) -> bool {
        self.crms() & 0b10 != 0
    }
}

// ---------------------------------------------------------------------------
// VS
// ---------------------------------------------------------------------------

/// Version, offset 0x08 (Base 2.0 §3.1.4.2, Figure "Offset 8h: VS – Version"). Also the format of
/// Identify Controller VER.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Vs(pub u32);

impl Vs {
    /// NVMe 1.0 (predates the tertiary field).
    pub const V1_0: Vs = Vs::new(1, 0, 0);
    /// NVMe 1.2.
    pub const V1_2: Vs = Vs::new(1, 2, 0);
    /// NVMe 1.3.
    pub const V1_3: Vs = Vs::new(1, 3, 0);
    /// NVMe 1.4.
    pub const V1_4: Vs = Vs::new(1, 4, 0);
    /// NVMe 2.0.
    pub const V2_0: Vs = Vs::new(2, 0, 0);

    /// Encodes a version.
    #[must_use]
    pub const fn new(major: u16, minor: u8, tertiary: u8) -> Vs {
        Vs(((major as u32) << 16) | ((minor as u32) << 8) | tertiary as u32)
    }

    /// MJR, bits 31:16.
    #[must_use]
    pub const fn major(self) -> u16 {
        bits32(self.0, 16, 16) as u16
    }

    /// MNR, bits 15:8.
    #[must_use]
    pub const fn minor(self) -> u8 {
        bits32(self.0, 8, 8) as u8
    }

    /// TER, bits 7:0.
    #[must_use]
    pub const fn tertiary(self) -> u8 {
        bits32(self.0, 0, 8) as u8
    }

    /// Whether this version is at least `other` (plain numeric comparison,
    /// the fields are ordered most significant first).
    #[must_use]
    pub const fn at_least(self, other: Vs) -> bool {
        self.0 >= other.0
    }
}

impl fmt::Display for Vs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major(), self.minor(), self.tertiary())
    }
}

// ---------------------------------------------------------------------------
// CC
// ---------------------------------------------------------------------------

/// CC.SHN: Shutdown Notification (Base 2.0 Figure "Offset 14h: CC –
/// Controller Configuration", bits 15:14).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum ShutdownNotification {
    /// 00b: no notification, no effect.
    #[default]
    None = 0,
    /// 01b: normal shutdown notification.
    Normal = 1,
    /// 10b: abrupt shutdown notification.
    Abrupt = 2,
}

/// Controller Configuration, offset 0x14 (Base 2.0 §3.1.4.5, Figure "Offset 14h: CC
/// – Controller Configuration").
///
/// Build with the `with_*` methods starting from `Cc(0)` (or the current
/// value), e.g.
/// `Cc(0).with_css(Cc::CSS_NVM).with_mps(0).with_iosqes(6).with_iocqes(4).with_enable(true)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Cc(pub u32);

impl Cc {
    /// CC.CSS = 000b: NVM Command Set.
    pub const CSS_NVM: u8 = 0b000;
    /// CC.CSS = 110b: all supported I/O command sets (requires CAP.CSS bit 6).
    pub const CSS_ALL_IO: u8 = 0b110;
    /// CC.CSS = 111b: admin command set only.
    pub const CSS_ADMIN_ONLY: u8 = 0b111;
    /// CC.AMS = 000b: round robin.
    pub const AMS_ROUND_ROBIN: u8 = 0b000;
    /// CC.AMS = 001b: weighted round robin with urgent priority class.
    pub const AMS_WRR_URGENT: u8 = 0b001;
    /// CC.AMS = 111b: vendor specific.
    pub const AMS_VENDOR: u8 = 0b111;
    /// log2 of the 64-byte submission queue entry of the NVM command set.
    pub const IOSQES_NVM: u8 = 6;
    /// log2 of the 16-byte completion queue entry of the NVM command set.
    pub const IOCQES_NVM: u8 = 4;

    /// EN, bit 0: Enable.
    #[must_use]
    pub const fn enabled(self) -> bool {
        bits32(self.0, 0, 1) != 0
    }

    /// CSS, bits 6:4: I/O Command Set Selected.
    #[must_use]
    pub const fn css(self) -> u8 {
        bits32(self.0, 4, 3) as u8
    }

    /// MPS, bits 10:7: Memory Page Size (page size = `2 ^ (12 + MPS)`).
    #[must_use]
    pub const fn mps(self) -> u8 {
        bits32(self.0, 7, 4) as u8
    }

    /// Memory page size selected by MPS, in bytes.
    #[must_use]
    pub const fn page_size(self) -> usize {
        1usize << (12 + self.mps() as u32)
    }

    /// AMS, bits 13:11: Arbitration Mechanism Selected.
    #[must_use]
    pub const fn ams(self) -> u8 {
        bits32(self.0, 11, 3) as u8
    }

    /// SHN, bits 15:14: Shutdown Notification. The reserved value 11b is
    /// reported as [`ShutdownNotification::Abrupt`] (the spec reserves it;
    /// this crate never writes it).
    #[must_use]
    pub const fn shn(self) -> ShutdownNotification {
        match bits32(self.0, 14, 2) {
            0 => ShutdownNotification::None,
            1 => ShutdownNotification::Normal,
            _ => ShutdownNotification::Abrupt,
        }
    }

    /// IOSQES, bits 19:16: I/O Submission Queue Entry Size (log2 bytes).
    #[must_use]
    pub const fn iosqes(self) -> u8 {
        bits32(self.0, 16, 4) as u8
    }

    /// IOCQES, bits 23:20: I/O Completion Queue Entry Size (log2 bytes).
    #[must_use]
    pub const fn iocqes(self) -> u8 {
        bits32(self.0, 20, 4) as u8
    }

    /// CRIME, bit 24: Controller Ready Independent of Media Enable (NVMe 2.0).
    #[must_use]
    pub const fn crime(self) -> bool {
        bits32(self.0, 24, 1) != 0
    }

    /// Sets EN.
    #[must_use]
    pub const fn with_enable(self, enable: bool) -> Cc {
        Cc(set_bits32(self.0, 0, 1, enable as u32))
    }

    /// Sets CSS (3 bits; higher bits of `css` are ignored).
    #[must_use]
    pub const fn with_css(self, css: u8) -> Cc {
        Cc(set_bits32(self.0, 4, 3, css as u32))
    }

    /// Sets MPS = page shift − 12 (4 bits; higher bits ignored). Use
    /// [`Cc::with_page_shift`] to pass the shift directly.
    #[must_use]
    pub const fn with_mps(self, mps: u8) -> Cc {
        Cc(set_bits32(self.0, 7, 4, mps as u32))
    }

    /// Sets MPS from a page shift (12..=27); `None` if out of range.
    #[must_use]
    pub const fn with_page_shift(self, shift: u32) -> Option<Cc> {
        if shift < 12 || shift > 27 {
            None
        } else {
            Some(self.with_mps((shift - 12) as u8))
        }
    }

    /// Sets AMS (3 bits).
    #[must_use]
    pub const fn with_ams(self, ams: u8) -> Cc {
        Cc(set_bits32(self.0, 11, 3, ams as u32))
    }

    /// Sets SHN.
    #[must_use]
    pub const fn with_shn(self, shn: ShutdownNotification) -> Cc {
        Cc(set_bits32(self.0, 14, 2, shn as u32))
    }

    /// Sets IOSQES (log2 of the SQ entry size: 6 for 64 bytes).
    #[must_use]
    pub const fn with_iosqes(self, iosqes: u8) -> Cc {
        Cc(set_bits32(self.0, 16, 4, iosqes as u32))
    }

    /// Sets IOCQES (log2 of the CQ entry size: 4 for 16 bytes).
    #[must_use]
    pub const fn with_iocqes(self, iocqes: u8) -> Cc {
        Cc(set_bits32(self.0, 20, 4, iocqes as u32))
    }

    /// Sets CRIME (only if CAP.CRMS.CRIMS).
    #[must_use]
    pub const fn with_crime(self, crime: bool) -> Cc {
        Cc(set_bits32(self.0, 24, 1, crime as u32))
    }
}

// ---------------------------------------------------------------------------
// CSTS
// ---------------------------------------------------------------------------

/// CSTS.SHST: Shutdown Status (Base 2.0 Figure "Offset 1Ch: CSTS –
/// Controller Status", bits 3:2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ShutdownStatus {
    /// 00b: normal operation, no shutdown requested.
    Normal = 0,
    /// 01b: shutdown processing occurring.
    Occurring = 1,
    /// 10b: shutdown processing complete.
    Complete = 2,
    /// 11b: reserved.
    Reserved = 3,
}

/// Controller Status, offset 0x1c (Base 2.0 §3.1.4.6, Figure "Offset 1Ch:
/// CSTS – Controller Status").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Csts(pub u32);

impl Csts {
    /// RDY, bit 0: Ready.
    #[must_use]
    pub const fn ready(self) -> bool {
        bits32(self.0, 0, 1) != 0
    }

    /// CFS, bit 1: Controller Fatal Status.
    #[must_use]
    pub const fn fatal(self) -> bool {
        bits32(self.0, 1, 1) != 0
    }

    /// SHST, bits 3:2: Shutdown Status.
    #[must_use]
    pub const fn shutdown_status(self) -> ShutdownStatus {
        match bits32(self.0, 2, 2) {
            0 => ShutdownStatus::Normal,
            1 => ShutdownStatus::Occurring,
            2 => ShutdownStatus::Complete,
            _ => ShutdownStatus::Reserved,
        }
    }

    /// NSSRO, bit 4: NVM Subsystem Reset Occurred (RW1C).
    #[must_use]
    pub const fn nssro(self) -> bool {
        bits32(self.0, 4, 1) != 0
    }

    /// PP, bit 5: Processing Paused.
    #[must_use]
    pub const fn processing_paused(self) -> bool {
        bits32(self.0, 5, 1) != 0
    }

    /// ST, bit 6: Shutdown Type (set: the shutdown reported in SHST is an NVM
    /// subsystem shutdown). NVMe 2.0.
    #[must_use]
    pub const fn shutdown_type(self) -> bool {
        bits32(self.0, 6, 1) != 0
    }

    /// All bits set: the read did not reach a device (surprise removal,
    /// PCIe link down). None of the other accessors is meaningful then.
    #[must_use]
    pub const fn is_all_ones(self) -> bool {
        self.0 == u32::MAX
    }
}

// ---------------------------------------------------------------------------
// AQA
// ---------------------------------------------------------------------------

/// Admin Queue Attributes, offset 0x24 (Base 2.0 §3.1.4.8, Figure "Offset 24h: AQA
/// – Admin Queue Attributes").
/// Both sizes are stored 0's based; an admin queue has 2..=4096 entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Aqa(pub u32);

impl Aqa {
    /// Smallest admin queue (entries).
    pub const MIN_ENTRIES: u16 = 2;
    /// Largest admin queue (entries).
    pub const MAX_ENTRIES: u16 = 4096;

    /// Encodes real entry counts (not 0's based). Counts outside
    /// [`Aqa::MIN_ENTRIES`]..=[`Aqa::MAX_ENTRIES`] are clamped into that
    /// range (never panics); use [`Aqa::try_new`] to reject them instead.
    #[must_use]
    pub const fn new(sq_entries: u16, cq_entries: u16) -> Aqa {
        const fn clamp(n: u16) -> u16 {
            if n < Aqa::MIN_ENTRIES {
                Aqa::MIN_ENTRIES
            } else if n > Aqa::MAX_ENTRIES {
                Aqa::MAX_ENTRIES
            } else {
                n
            }
        }
        let sq = clamp(sq_entries) as u32 - 1;
        let cq = clamp(cq_entries) as u32 - 1;
        Aqa(sq | (cq << 16))
    }

    /// Like [`Aqa::new`] but `None` if a count is outside 2..=4096.
    #[must_use]
    pub const fn try_new(sq_entries: u16, cq_entries: u16) -> Option<Aqa> {
        if sq_entries < Self::MIN_ENTRIES
            || sq_entries > Self::MAX_ENTRIES
            || cq_entries < Self::MIN_ENTRIES
            || cq_entries > Self::MAX_ENTRIES
        {
            None
        } else {
            Some(Self::new(sq_entries, cq_entries))
        }
    }

    /// ASQS, bits 11:0 (0's based).
    #[must_use]
    pub const fn asqs_raw(self) -> u16 {
        bits32(self.0, 0, 12) as u16
    }

    /// ACQS, bits 27:16 (0's based).
    #[must_use]
    pub const fn acqs_raw(self) -> u16 {
        bits32(self.0, 16, 12) as u16
    }

    /// Admin submission queue entries (real count).
    #[must_use]
    pub const fn sq_entries(self) -> u16 {
        self.asqs_raw() + 1
    }

    /// Admin completion queue entries (real count).
    #[must_use]
    pub const fn cq_entries(self) -> u16 {
        self.acqs_raw() + 1
    }
}

// ---------------------------------------------------------------------------
// CMB
// ---------------------------------------------------------------------------

/// Controller Memory Buffer Location, offset 0x38 (Base 2.0 §3.1.4.11,
/// Figure "Offset 38h: CMBLOC – Controller Memory Buffer Location").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Cmbloc(pub u32);

impl Cmbloc {
    /// BIR, bits 2:0: Base Indicator Register (which BAR holds the CMB).
    #[must_use]
    pub const fn bir(self) -> u8 {
        bits32(self.0, 0, 3) as u8
    }

    /// CQMMS, bit 3: CMB Queue Mixed Memory Support.
    #[must_use]
    pub const fn cqmms(self) -> bool {
        bits32(self.0, 3, 1) != 0
    }

    /// CQPDS, bit 4: CMB Queue Physically Discontiguous Support.
    #[must_use]
    pub const fn cqpds(self) -> bool {
        bits32(self.0, 4, 1) != 0
    }

    /// CDPMLS, bit 5: CMB Data Pointer Mixed Locations Support.
    #[must_use]
    pub const fn cdpmls(self) -> bool {
        bits32(self.0, 5, 1) != 0
    }

    /// CDPCILS, bit 6: CMB Data Pointer and Command Independent Locations
    /// Support.
    #[must_use]
    pub const fn cdpcils(self) -> bool {
        bits32(self.0, 6, 1) != 0
    }

    /// CDMMMS, bit 7: CMB Data Metadata Mixed Memory Support.
    #[must_use]
    pub const fn cdmmms(self) -> bool {
        bits32(self.0, 7, 1) != 0
    }

    /// CQDA, bit 8: CMB Queue Dword Alignment.
    #[must_use]
    pub const fn cqda(self) -> bool {
        bits32(self.0, 8, 1) != 0
    }

    /// OFST, bits 31:12: offset of the CMB within the BAR, in CMBSZ.SZU
    /// units.
    #[must_use]
    pub const fn offset_units(self) -> u32 {
        bits32(self.0, 12, 20)
    }

    /// Offset of the CMB within its BAR in bytes (`None` if `cmbsz` has a
    /// reserved size unit).
    #[must_use]
    pub const fn offset_bytes(self, cmbsz: Cmbsz) -> Option<u64> {
        match cmbsz.size_unit_bytes() {
            Some(u) => Some(self.offset_units() as u64 * u),
            None => None,
        }
    }
}

/// Controller Memory Buffer Size, offset 0x3c (Base 2.0 §3.1.4.12,
/// Figure "Offset 3Ch: CMBSZ – Controller Memory Buffer Size").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Cmbsz(pub u32);

impl Cmbsz {
    /// SQS, bit 0: Submission Queue Support.
    #[must_use]
    pub const fn sqs(self) -> bool {
        bits32(self.0, 0, 1) != 0
    }

    /// CQS, bit 1: Completion Queue Support.
    #[must_use]
    pub const fn cqs(self) -> bool {
        bits32(self.0, 1, 1) != 0
    }

    /// LISTS, bit 2: PRP SGL List Support.
    #[must_use]
    pub const fn lists(self) -> bool {
        bits32(self.0, 2, 1) != 0
    }

    /// RDS, bit 3: Read Data Support.
    #[must_use]
    pub const fn rds(self) -> bool {
        bits32(self.0, 3, 1) != 0
    }

    /// WDS, bit 4: Write Data Support.
    #[must_use]
    pub const fn wds(self) -> bool {
        bits32(self.0, 4, 1) != 0
    }

    /// SZU, bits 11:8: Size Units (0: 4 KiB, 1: 64 KiB, ..., 6: 64 GiB;
    /// 7..=15 reserved).
    #[must_use]
    pub const fn szu(self) -> u8 {
        bits32(self.0, 8, 4) as u8
    }

    /// The size unit in bytes (`4 KiB << (4 * SZU)`), `None` for reserved
    /// SZU values.
    #[must_use]
    pub const fn size_unit_bytes(self) -> Option<u64> {
        let szu = self.szu();
        if szu > 6 {
            None
        } else {
            Some(4096u64 << (4 * szu as u32))
        }
    }

    /// SZ, bits 31:12: size in SZU units.
    #[must_use]
    pub const fn size_units(self) -> u32 {
        bits32(self.0, 12, 20)
    }

    /// CMB size in bytes (at most 2^20 × 64 GiB, fits in `u64`); `None` for
    /// a reserved size unit.
    #[must_use]
    pub const fn size_bytes(self) -> Option<u64> {
        match self.size_unit_bytes() {
            Some(u) => Some(self.size_units() as u64 * u),
            None => None,
        }
    }
}

/// Controller Ready Timeouts, offset 0x68 (Base 2.0 §3.1.4.22). Both in
/// 500 ms units like CAP.TO.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Crto(pub u32);

impl Crto {
    /// CRWMT, bits 15:0: Controller Ready With Media Timeout (500 ms units).
    #[must_use]
    pub const fn crwmt(self) -> u16 {
        bits32(self.0, 0, 16) as u16
    }

    /// CRIMT, bits 31:16: Controller Ready Independent of Media Timeout
    /// (500 ms units).
    #[must_use]
    pub const fn crimt(self) -> u16 {
        bits32(self.0, 16, 16) as u16
    }

    /// CRWMT in milliseconds.
    #[must_use]
    pub const fn crwmt_ms(self) -> u64 {
        self.crwmt() as u64 * 500
    }

    /// CRIMT in milliseconds.
    #[must_use]
    pub const fn crimt_ms(self) -> u64 {
        self.crimt() as u64 * 500
    }
}

/// Boot Partition Information, offset 0x40 (Base 2.0 §3.1.4.13).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Bpinfo(pub u32);

impl Bpinfo {
    /// BPSZ, bits 14:0: boot partition size in 128 KiB units.
    #[must_use]
    pub const fn bpsz(self) -> u16 {
        bits32(self.0, 0, 15) as u16
    }

    /// Boot partition size in bytes.
    #[must_use]
    pub const fn size_bytes(self) -> u64 {
        self.bpsz() as u64 * 128 * 1024
    }

    /// BRS, bits 25:24: Boot Read Status (0 none, 1 in progress, 2 completed,
    /// 3 error).
    #[must_use]
    pub const fn brs(self) -> u8 {
        bits32(self.0, 24, 2) as u8
    }

    /// ABPID, bit 31: Active Boot Partition ID.
    #[must_use]
    pub const fn abpid(self) -> bool {
        bits32(self.0, 31, 1) != 0
    }
}

/// Persistent Memory Region Capabilities, offset 0xe00 (Base 2.0 §3.1.4.15).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Pmrcap(pub u32);

impl Pmrcap {
    /// RDS, bit 3: Read Data Support.
    #[must_use]
    pub const fn rds(self) -> bool {
        bits32(self.0, 3, 1) != 0
    }

    /// WDS, bit 4: Write Data Support.
    #[must_use]
    pub const fn wds(self) -> bool {
        bits32(self.0, 4, 1) != 0
    }

    /// BIR, bits 7:5: Base Indicator Register.
    #[must_use]
    pub const fn bir(self) -> u8 {
        bits32(self.0, 5, 3) as u8
    }

    /// PMRTU, bits 9:8: PMR Time Units (0: 500 ms, 1: minutes).
    #[must_use]
    pub const fn pmrtu(self) -> u8 {
        bits32(self.0, 8, 2) as u8
    }

    /// PMRWBM, bits 13:10: PMR Write Barrier Mechanisms.
    #[must_use]
    pub const fn pmrwbm(self) -> u8 {
        bits32(self.0, 10, 4) as u8
    }

    /// PMRTO, bits 23:16: PMR Timeout (in PMRTU units).
    #[must_use]
    pub const fn pmrto(self) -> u8 {
        bits32(self.0, 16, 8) as u8
    }

    /// CMSS, bit 24: Controller Memory Space Supported.
    #[must_use]
    pub const fn cmss(self) -> bool {
        bits32(self.0, 24, 1) != 0
    }
}

// ---------------------------------------------------------------------------
// Doorbells
// ---------------------------------------------------------------------------

/// Which of a queue pair's doorbells (PCIe Transport 1.0 §3.1.2:
/// SQyTDBL / CQyHDBL).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DoorbellKind {
    /// Submission Queue y Tail Doorbell.
    SqTail,
    /// Completion Queue y Head Doorbell.
    CqHead,
}

/// Byte offset in BAR0 of the doorbell of queue `qid`:
/// `0x1000 + ((2 * qid + (kind == CqHead)) << (2 + dstrd))`.
///
/// `dstrd` is CAP.DSTRD; only its low 4 bits are used (the field is 4 bits
/// wide), so the result is at most `0x1000 + 131071 * 131072` and the
/// arithmetic cannot overflow on 64-bit targets (it wraps instead of
/// panicking on narrower ones).
#[must_use]
pub const fn doorbell_offset(qid: u16, kind: DoorbellKind, dstrd: u8) -> usize {
    let index = 2 * qid as usize
        + match kind {
            DoorbellKind::SqTail => 0,
            DoorbellKind::CqHead => 1,
        };
    let shift = 2 + (dstrd & 0xf) as u32;
    offset::DOORBELL_BASE.wrapping_add(index.wrapping_shl(shift))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    /// CAP as reported by QEMU's emulated controller: MQES 0x7ff, CQR,
    /// TO 15, DSTRD 0, CSS NVM, MPSMIN 0, MPSMAX 4.
    const QEMU_CAP: u64 = 0x0040_0020_0f01_07ff;

    #[test]
    fn cap_qemu() {
        let cap = Cap(QEMU_CAP);
        assert_eq!(cap.mqes_raw(), 0x7ff);
        assert_eq!(cap.max_queue_entries(), 2048);
        assert!(cap.cqr());
        assert_eq!(cap.ams(), 0);
        assert_eq!(cap.timeout_raw(), 15);
        assert_eq!(cap.timeout_ms(), 7500);
        assert_eq!(cap.dstrd(), 0);
        assert_eq!(cap.doorbell_stride_bytes(), 4);
        assert!(!cap.nssrs());
        assert_eq!(cap.css(), Cap::CSS_NVM);
        assert!(cap.supports_nvm_command_set());
        assert!(!cap.supports_io_command_sets());
        assert!(!cap.admin_only());
        assert!(!cap.bps());
        assert_eq!(cap.cps(), 0);
        assert_eq!(cap.mpsmin(), 0);
        assert_eq!(cap.mpsmax(), 4);
        assert_eq!(cap.mpsmin_shift(), 12);
        assert_eq!(cap.mpsmax_shift(), 16);
        assert_eq!(cap.min_page_size(), 4096);
        assert_eq!(cap.max_page_size(), 65536);
        assert!(cap.supports_page_shift(12));
        assert!(cap.supports_page_shift(16));
        assert!(!cap.supports_page_shift(17));
        assert!(!cap.pmrs());
        assert!(!cap.cmbs());
        assert!(!cap.nsss());
        assert_eq!(cap.crms(), 0);
        assert!(!cap.crwms());
        assert!(!cap.crims());
    }

    #[test]
    fn cap_every_field() {
        let cap = Cap(1 << 17
            | 1 << 18
            | 3 << 32
            | 1 << 36
            | 0xc1 << 37
            | 1 << 45
            | 2 << 46
            | 1 << 48
            | 1 << 56
            | 1 << 57
            | 1 << 58
            | 3 << 59);
        assert_eq!(cap.mqes_raw(), 0);
        assert_eq!(cap.max_queue_entries(), 1);
        assert!(!cap.cqr());
        assert_eq!(cap.ams(), 3);
        assert_eq!(cap.dstrd(), 3);
        assert_eq!(cap.doorbell_stride_bytes(), 32);
        assert!(cap.nssrs());
        assert_eq!(cap.css(), 0xc1);
        assert!(cap.supports_nvm_command_set());
        assert!(cap.supports_io_command_sets());
        assert!(cap.admin_only());
        assert!(cap.bps());
        assert_eq!(cap.cps(), 2);
        assert_eq!(cap.min_page_size(), 8192);
        assert_eq!(cap.max_page_size(), 4096);
        assert!(cap.pmrs() && cap.cmbs() && cap.nsss());
        assert!(cap.crwms() && cap.crims());
    }

    #[test]
    fn cap_all_ones_no_panic() {
        let cap = Cap(u64::MAX);
        assert_eq!(cap.max_queue_entries(), 65536);
        assert_eq!(cap.timeout_ms(), 255 * 500);
        assert_eq!(cap.doorbell_stride_bytes(), 4 << 15);
        assert_eq!(cap.min_page_size(), 1 << 27);
        assert_eq!(cap.max_page_size(), 1 << 27);
    }

    #[test]
    fn vs() {
        let v = Vs(0x0001_0400);
        assert_eq!((v.major(), v.minor(), v.tertiary()), (1, 4, 0));
        assert_eq!(v.to_string(), "1.4.0");
        assert_eq!(Vs(0x0002_0001).to_string(), "2.0.1");
        assert_eq!(Vs::new(1, 4, 0), v);
        assert!(v.at_least(Vs::V1_3));
        assert!(!v.at_least(Vs::V2_0));
        assert_eq!(Vs(u32::MAX).to_string(), "65535.255.255");
    }

    #[test]
    fn cc_builder() {
        let cc = Cc(0)
            .with_css(Cc::CSS_NVM)
            .with_mps(0)
            .with_ams(Cc::AMS_ROUND_ROBIN)
            .with_shn(ShutdownNotification::None)
            .with_iosqes(Cc::IOSQES_NVM)
            .with_iocqes(Cc::IOCQES_NVM)
            .with_enable(true);
        // The value Linux and SPDK write for a 4 KiB page NVM controller.
        assert_eq!(cc.0, 0x0046_0001);
        assert!(cc.enabled());
        assert_eq!(cc.css(), 0);
        assert_eq!(cc.mps(), 0);
        assert_eq!(cc.page_size(), 4096);
        assert_eq!(cc.ams(), 0);
        assert_eq!(cc.shn(), ShutdownNotification::None);
        assert_eq!(cc.iosqes(), 6);
        assert_eq!(cc.iocqes(), 4);
        assert!(!cc.crime());

        let cc = cc.with_shn(ShutdownNotification::Normal);
        assert_eq!(cc.0, 0x0046_4001);
        assert_eq!(cc.shn(), ShutdownNotification::Normal);
        let cc = cc.with_shn(ShutdownNotification::Abrupt);
        assert_eq!(cc.shn(), ShutdownNotification::Abrupt);
        assert_eq!(cc.0 & 0xc000, 0x8000);
        let cc = cc
            .with_enable(false)
            .with_css(Cc::CSS_ALL_IO)
            .with_crime(true);
        assert!(!cc.enabled());
        assert_eq!(cc.css(), 6);
        assert!(cc.crime());
        assert_eq!(Cc(0).with_mps(4).page_size(), 65536);
        assert_eq!(Cc(0).with_page_shift(16), Some(Cc(0).with_mps(4)));
        assert_eq!(Cc(0).with_page_shift(11), None);
        assert_eq!(Cc(0).with_page_shift(28), None);
        // Oversized field values do not leak into neighbouring fields.
        assert_eq!(Cc(0).with_css(0xff).0, 0x70);
        assert_eq!(Cc(0).with_ams(0xff).ams(), 7);
        assert_eq!(Cc(0).with_ams(0xff).0, 0x3800);
        assert_eq!(Cc(u32::MAX).shn(), ShutdownNotification::Abrupt);
    }

    #[test]
    fn csts() {
        assert!(Csts(1).ready());
        assert!(!Csts(1).fatal());
        assert!(Csts(2).fatal());
        assert_eq!(Csts(0).shutdown_status(), ShutdownStatus::Normal);
        assert_eq!(Csts(0b0100).shutdown_status(), ShutdownStatus::Occurring);
        assert_eq!(Csts(0b1000).shutdown_status(), ShutdownStatus::Complete);
        assert_eq!(Csts(0b1100).shutdown_status(), ShutdownStatus::Reserved);
        assert!(Csts(0x10).nssro());
        assert!(Csts(0x20).processing_paused());
        assert!(Csts(0x40).shutdown_type());
        assert!(Csts(u32::MAX).is_all_ones());
        assert!(!Csts(0x7f).is_all_ones());
    }

    #[test]
    fn aqa() {
        let a = Aqa::new(32, 32);
        assert_eq!(a.0, 0x001f_001f);
        assert_eq!(a.sq_entries(), 32);
        assert_eq!(a.cq_entries(), 32);
        assert_eq!(a.asqs_raw(), 31);
        assert_eq!(a.acqs_raw(), 31);
        let a = Aqa::new(4096, 2);
        assert_eq!(a.0, 0x0001_0fff);
        assert_eq!(Aqa::new(0, 65535), Aqa::new(2, 4096));
        assert_eq!(Aqa::try_new(1, 32), None);
        assert_eq!(Aqa::try_new(32, 4097), None);
        assert_eq!(Aqa::try_new(64, 16), Some(Aqa(0x000f_003f)));
    }

    #[test]
    fn cmb() {
        // QEMU with cmb_size_mb=64: SZU 1 (64 KiB), SZ 1024, all support bits.
        let sz = Cmbsz(0x0040_011f);
        assert!(sz.sqs() && sz.cqs() && sz.lists() && sz.rds() && sz.wds());
        assert_eq!(sz.szu(), 1);
        assert_eq!(sz.size_unit_bytes(), Some(65536));
        assert_eq!(sz.size_units(), 1024);
        assert_eq!(sz.size_bytes(), Some(64 << 20));
        let loc = Cmbloc(0x0000_2002);
        assert_eq!(loc.bir(), 2);
        assert_eq!(loc.offset_units(), 2);
        assert_eq!(loc.offset_bytes(sz), Some(131072));
        assert!(!loc.cqmms() && !loc.cqda());
        let loc = Cmbloc(0x1f8);
        assert!(loc.cqmms() && loc.cqpds() && loc.cdpmls() && loc.cdpcils());
        assert!(loc.cdmmms() && loc.cqda());
        assert_eq!(Cmbsz(0x700).size_bytes(), None);
        assert_eq!(loc.offset_bytes(Cmbsz(0xf00)), None);
        assert_eq!(
            Cmbsz(0xffff_f6ff).size_bytes(),
            Some(0xf_ffff * (64u64 << 30))
        );
    }

    #[test]
    fn misc_registers() {
        let c = Crto(0x0010_0004);
        assert_eq!(c.crwmt(), 4);
        assert_eq!(c.crimt(), 16);
        assert_eq!(c.crwmt_ms(), 2000);
        assert_eq!(c.crimt_ms(), 8000);
        let b = Bpinfo(0x8100_0002);
        assert_eq!(b.bpsz(), 2);
        assert_eq!(b.size_bytes(), 256 * 1024);
        assert_eq!(b.brs(), 1);
        assert!(b.abpid());
        let p = Pmrcap(0x0105_0158);
        assert!(p.rds() && p.wds());
        assert_eq!(p.bir(), 2);
        assert_eq!(p.pmrtu(), 1);
        assert_eq!(p.pmrwbm(), 0);
        assert_eq!(p.pmrto(), 5);
        assert!(p.cmss());
        assert_eq!(NVME_SSR.to_be_bytes(), *b"NVMe");
    }

    #[test]
    fn doorbells() {
        assert_eq!(doorbell_offset(0, DoorbellKind::SqTail, 0), 0x1000);
        assert_eq!(doorbell_offset(0, DoorbellKind::CqHead, 0), 0x1004);
        assert_eq!(doorbell_offset(1, DoorbellKind::SqTail, 0), 0x1008);
        assert_eq!(doorbell_offset(1, DoorbellKind::CqHead, 0), 0x100c);
        assert_eq!(doorbell_offset(1, DoorbellKind::SqTail, 1), 0x1010);
        assert_eq!(doorbell_offset(1, DoorbellKind::CqHead, 1), 0x1018);
        assert_eq!(doorbell_offset(3, DoorbellKind::CqHead, 2), 0x1000 + 7 * 16);
        assert_eq!(
            doorbell_offset(u16::MAX, DoorbellKind::CqHead, 15),
            0x1000 + 131071 * 131072
        );
        // Only the 4 DSTRD bits count.
        assert_eq!(
            doorbell_offset(5, DoorbellKind::SqTail, 0xf1),
            doorbell_offset(5, DoorbellKind::SqTail, 1)
        );
        for dstrd in 0..16u8 {
            let stride = Cap(u64::from(dstrd) << 32).doorbell_stride_bytes();
            for qid in [0u16, 1, 2, 100, 65535] {
                let sq = doorbell_offset(qid, DoorbellKind::SqTail, dstrd);
                let cq = doorbell_offset(qid, DoorbellKind::CqHead, dstrd);
                assert_eq!(cq - sq, stride);
                assert_eq!(sq, 0x1000 + 2 * usize::from(qid) * stride);
            }
        }
    }
}

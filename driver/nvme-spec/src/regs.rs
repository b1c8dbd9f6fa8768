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

/// Declares a register: a `Copy` newtype over its raw value with one
/// `const` getter per field (`bool` for one bit, else the field's type)
/// and, for fields marked `set NAME`, a builder-style setter that ignores
/// bits beyond the field's width. A compile-time check refuses fields that
/// overlap or do not fit the register.
///
/// ```text
/// register! {
///     /// Doc.
///     #[derive(...)]
///     pub struct Name(u32) {
///         /// Field doc.
///         field: u8 @ SHIFT, WIDTH, set with_field;
///     }
/// }
/// ```
macro_rules! register {
    (
        $(#[$meta:meta])*
        pub struct $name:ident($raw:ty) {
            $(
                $(#[$fmeta:meta])*
                $field:ident : $fty:tt @ $shift:literal, $width:literal $(, set $setter:ident)? ;
            )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name(pub $raw);

        impl $name {
            $(
                $(#[$fmeta])*
                #[must_use]
                pub const fn $field(self) -> $fty {
                    register!(@get $fty, (self.0 >> $shift) & ((1 << $width) - 1))
                }
                $(
                    #[doc = concat!("Sets `", stringify!($field), "` (", stringify!($width),
                        " bits; higher bits of the value are ignored).")]
                    #[must_use]
                    pub const fn $setter(self, value: $fty) -> $name {
                        let mask: $raw = ((1 << $width) - 1) << $shift;
                        $name((self.0 & !mask) | (((value as $raw) << $shift) & mask))
                    }
                )?
            )*
        }

        // The fields fit the register and do not overlap.
        #[allow(clippy::int_plus_one)]
        const _: () = {
            let mut seen: u128 = 0;
            $(
                assert!($shift + $width <= <$raw>::BITS, "field past the register's width");
                let mask: u128 = ((1u128 << $width) - 1) << $shift;
                assert!(seen & mask == 0, "fields overlap");
                seen |= mask;
            )*
            let _ = seen;
        };
    };
    (@get bool, $bits:expr) => { $bits != 0 };
    (@get $fty:ty, $bits:expr) => { $bits as $fty };
}

register! {
    /// Controller Capabilities, offset 0x00 (Base 2.0 §3.1.4.1, Figure
    /// "Offset 0h: CAP – Controller Capabilities").
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Cap(u64) {
        /// MQES, bits 15:0: Maximum Queue Entries Supported, **0's based**.
        mqes_raw: u16 @ 0, 16;
        /// CQR, bit 16: Contiguous Queues Required.
        cqr: bool @ 16, 1;
        /// AMS, bits 18:17: Arbitration Mechanism Supported (bit 0: weighted
        /// round robin with urgent, bit 1: vendor specific). Round robin is
        /// always supported and has no bit.
        ams: u8 @ 17, 2;
        /// TO, bits 31:24: worst-case time to wait for CSTS.RDY to change
        /// after CC.EN changes, in 500 ms units.
        timeout_raw: u8 @ 24, 8;
        /// DSTRD, bits 35:32: Doorbell Stride (stride is `4 << DSTRD` bytes).
        dstrd: u8 @ 32, 4;
        /// NSSRS, bit 36: NVM Subsystem Reset Supported.
        nssrs: bool @ 36, 1;
        /// CSS, bits 44:37: Command Sets Supported (bit field, see the
        /// `CSS_*` constants).
        css: u8 @ 37, 8;
        /// BPS, bit 45: Boot Partition Support.
        bps: bool @ 45, 1;
        /// CPS, bits 47:46: Controller Power Scope (0 not reported, 1
        /// controller, 2 domain, 3 NVM subsystem). NVMe 2.0.
        cps: u8 @ 46, 2;
        /// MPSMIN, bits 51:48 (raw; page size is `2 ^ (12 + MPSMIN)`).
        mpsmin: u8 @ 48, 4;
        /// MPSMAX, bits 55:52 (raw; page size is `2 ^ (12 + MPSMAX)`).
        mpsmax: u8 @ 52, 4;
        /// PMRS, bit 56: Persistent Memory Region Supported.
        pmrs: bool @ 56, 1;
        /// CMBS, bit 57: Controller Memory Buffer Supported.
        cmbs: bool @ 57, 1;
        /// NSSS, bit 58: NVM Subsystem Shutdown Supported (NVMe 2.0).
        nsss: bool @ 58, 1;
        /// CRMS, bits 60:59: Controller Ready Modes Supported (bit 0:
        /// with media, bit 1: independent of media). NVMe 2.0.
        crms: u8 @ 59, 2;
    }
}

impl Cap {
    /// CSS bit: the NVM Command Set is supported.
    pub const CSS_NVM: u8 = 1 << 0;

    /// Maximum number of entries in an individual I/O queue (MQES + 1,
    /// 1..=65536). The spec requires MQES >= 1 (two entries); a value of 0
    /// from a misbehaving device yields 1.
    #[must_use]
    pub const fn max_queue_entries(self) -> u32 {
        self.mqes_raw() as u32 + 1
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

    /// CSS bit 0: the NVM Command Set is supported.
    #[must_use]
    pub const fn supports_nvm_command_set(self) -> bool {
        self.css() & Self::CSS_NVM != 0
    }

    /// Minimum memory page size in bytes (4 KiB..=128 MiB).
    #[must_use]
    pub const fn min_page_size(self) -> usize {
        1usize << (12 + self.mpsmin() as u32)
    }

    /// Maximum memory page size in bytes (4 KiB..=128 MiB).
    #[must_use]
    pub const fn max_page_size(self) -> usize {
        1usize << (12 + self.mpsmax() as u32)
    }

    /// Whether a page size of `1 << shift` bytes lies within
    /// MPSMIN..=MPSMAX.
    #[must_use]
    pub const fn supports_page_shift(self, shift: u32) -> bool {
        shift >= 12 + self.mpsmin() as u32 && shift <= 12 + self.mpsmax() as u32
    }
}

register! {
    /// Version, offset 0x08 (Base 2.0 §3.1.4.2, Figure "Offset 8h: VS –
    /// Version"). Also the format of Identify Controller VER.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
    pub struct Vs(u32) {
        /// TER, bits 7:0.
        tertiary: u8 @ 0, 8;
        /// MNR, bits 15:8.
        minor: u8 @ 8, 8;
        /// MJR, bits 31:16.
        major: u16 @ 16, 16;
    }
}

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

register! {
    /// Controller Configuration, offset 0x14 (Base 2.0 §3.1.4.5, Figure
    /// "Offset 14h: CC – Controller Configuration").
    ///
    /// Build with the `with_*` methods starting from `Cc(0)` (or the
    /// current value), e.g.
    /// `Cc(0).with_css(Cc::CSS_NVM).with_mps(0).with_iosqes(6).with_iocqes(4).with_enable(true)`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Cc(u32) {
        /// EN, bit 0: Enable.
        enabled: bool @ 0, 1, set with_enable;
        /// CSS, bits 6:4: I/O Command Set Selected.
        css: u8 @ 4, 3, set with_css;
        /// MPS, bits 10:7: Memory Page Size (page size = `2 ^ (12 + MPS)`).
        mps: u8 @ 7, 4, set with_mps;
        /// AMS, bits 13:11: Arbitration Mechanism Selected.
        ams: u8 @ 11, 3, set with_ams;
        /// SHN, bits 15:14, raw (see [`Cc::shn`]).
        shn_raw: u8 @ 14, 2;
        /// IOSQES, bits 19:16: I/O Submission Queue Entry Size (log2 bytes).
        iosqes: u8 @ 16, 4, set with_iosqes;
        /// IOCQES, bits 23:20: I/O Completion Queue Entry Size (log2 bytes).
        iocqes: u8 @ 20, 4, set with_iocqes;
        /// CRIME, bit 24: Controller Ready Independent of Media Enable
        /// (NVMe 2.0).
        crime: bool @ 24, 1, set with_crime;
    }
}

impl Cc {
    /// CC.CSS = 000b: NVM Command Set.
    pub const CSS_NVM: u8 = 0b000;
    /// CC.CSS = 110b: all supported I/O command sets (requires CAP.CSS bit 6).
    pub const CSS_ALL_IO: u8 = 0b110;
    /// CC.AMS = 000b: round robin.
    pub const AMS_ROUND_ROBIN: u8 = 0b000;
    /// log2 of the 64-byte submission queue entry of the NVM command set.
    pub const IOSQES_NVM: u8 = 6;
    /// log2 of the 16-byte completion queue entry of the NVM command set.
    pub const IOCQES_NVM: u8 = 4;

    /// Memory page size selected by MPS, in bytes.
    #[must_use]
    pub const fn page_size(self) -> usize {
        1usize << (12 + self.mps() as u32)
    }

    /// SHN, bits 15:14: Shutdown Notification. The reserved value 11b is
    /// reported as [`ShutdownNotification::Abrupt`] (the spec reserves it;
    /// this crate never writes it).
    #[must_use]
    pub const fn shn(self) -> ShutdownNotification {
        match self.shn_raw() {
            0 => ShutdownNotification::None,
            1 => ShutdownNotification::Normal,
            _ => ShutdownNotification::Abrupt,
        }
    }

    /// Sets SHN.
    #[must_use]
    pub const fn with_shn(self, shn: ShutdownNotification) -> Cc {
        Cc((self.0 & !(0b11 << 14)) | ((shn as u32) << 14))
    }
}

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

register! {
    /// Controller Status, offset 0x1c (Base 2.0 §3.1.4.6, Figure "Offset
    /// 1Ch: CSTS – Controller Status").
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Csts(u32) {
        /// RDY, bit 0: Ready.
        ready: bool @ 0, 1;
        /// CFS, bit 1: Controller Fatal Status.
        fatal: bool @ 1, 1;
        /// SHST, bits 3:2, raw (see [`Csts::shutdown_status`]).
        shst_raw: u8 @ 2, 2;
        /// NSSRO, bit 4: NVM Subsystem Reset Occurred (RW1C).
        nssro: bool @ 4, 1;
        /// PP, bit 5: Processing Paused.
        processing_paused: bool @ 5, 1;
        /// ST, bit 6: Shutdown Type (set: the shutdown reported in SHST is
        /// an NVM subsystem shutdown). NVMe 2.0.
        shutdown_type: bool @ 6, 1;
    }
}

impl Csts {
    /// SHST, bits 3:2: Shutdown Status.
    #[must_use]
    pub const fn shutdown_status(self) -> ShutdownStatus {
        match self.shst_raw() {
            0 => ShutdownStatus::Normal,
            1 => ShutdownStatus::Occurring,
            2 => ShutdownStatus::Complete,
            _ => ShutdownStatus::Reserved,
        }
    }

    /// All bits set: the read did not reach a device (surprise removal,
    /// PCIe link down). None of the other accessors is meaningful then.
    #[must_use]
    pub const fn is_all_ones(self) -> bool {
        self.0 == u32::MAX
    }
}

register! {
    /// Admin Queue Attributes, offset 0x24 (Base 2.0 §3.1.4.8, Figure
    /// "Offset 24h: AQA – Admin Queue Attributes"). Both sizes are stored
    /// 0's based; an admin queue has 2..=4096 entries.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Aqa(u32) {
        /// ASQS, bits 11:0 (0's based).
        asqs_raw: u16 @ 0, 12;
        /// ACQS, bits 27:16 (0's based).
        acqs_raw: u16 @ 16, 12;
    }
}

impl Aqa {
    /// Smallest admin queue (entries).
    pub const MIN_ENTRIES: u16 = 2;
    /// Largest admin queue (entries).
    pub const MAX_ENTRIES: u16 = 4096;

    /// Encodes real entry counts (not 0's based). Counts outside
    /// [`Aqa::MIN_ENTRIES`]..=[`Aqa::MAX_ENTRIES`] are clamped into that
    /// range (never panics).
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
        assert!(!cap.nssrs());
        assert_eq!(cap.css(), Cap::CSS_NVM);
        assert!(cap.supports_nvm_command_set());
        assert!(!cap.bps());
        assert_eq!(cap.cps(), 0);
        assert_eq!(cap.mpsmin(), 0);
        assert_eq!(cap.mpsmax(), 4);
        assert_eq!(cap.min_page_size(), 4096);
        assert_eq!(cap.max_page_size(), 65536);
        assert!(cap.supports_page_shift(12));
        assert!(cap.supports_page_shift(16));
        assert!(!cap.supports_page_shift(17));
        assert!(!cap.pmrs());
        assert!(!cap.cmbs());
        assert!(!cap.nsss());
        assert_eq!(cap.crms(), 0);
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
        assert!(cap.nssrs());
        assert_eq!(cap.css(), 0xc1);
        assert!(cap.supports_nvm_command_set());
        assert!(cap.bps());
        assert_eq!(cap.cps(), 2);
        assert_eq!(cap.min_page_size(), 8192);
        assert_eq!(cap.max_page_size(), 4096);
        assert!(cap.pmrs() && cap.cmbs() && cap.nsss());
        assert_eq!(cap.crms(), 3);
    }

    #[test]
    fn cap_all_ones_no_panic() {
        let cap = Cap(u64::MAX);
        assert_eq!(cap.max_queue_entries(), 65536);
        assert_eq!(cap.timeout_ms(), 255 * 500);
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
    }

    #[test]
    fn nssr_value_spells_nvme() {
        assert_eq!(NVME_SSR.to_be_bytes(), *b"NVMe");
    }

    /// Fields read back what their setters wrote, each within its width.
    #[test]
    fn setters_round_trip_and_stay_in_their_field() {
        let cc = Cc(u32::MAX).with_css(0).with_mps(0).with_enable(false);
        assert_eq!((cc.css(), cc.mps(), cc.enabled()), (0, 0, false));
        assert_eq!(cc.0, !((0b111 << 4) | (0b1111 << 7) | 1));
        for v in 0..16u8 {
            assert_eq!(Cc(0).with_iosqes(v).iosqes(), v);
            assert_eq!(Cc(0).with_iocqes(v).iocqes(), v);
        }
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
            assert_eq!(Cap(u64::from(dstrd) << 32).dstrd(), dstrd);
            let stride = 4usize << dstrd;
            for qid in [0u16, 1, 2, 100, 65535] {
                let sq = doorbell_offset(qid, DoorbellKind::SqTail, dstrd);
                let cq = doorbell_offset(qid, DoorbellKind::CqHead, dstrd);
                assert_eq!(cq - sq, stride);
                assert_eq!(sq, 0x1000 + 2 * usize::from(qid) * stride);
            }
        }
    }
}

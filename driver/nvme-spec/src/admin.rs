//! Admin command builders (Base 2.0 §5).
//!
//! Every builder returns a complete [`Sqe`] except for the parts the driver
//! owns: the command identifier (set by the queue) and the data pointer
//! (PRP1/PRP2, set by the driver after mapping the buffer). Builders whose
//! parameters have a limited encodable range return
//! `Result<Sqe, RangeError>` instead of truncating or panicking.

use zerocopy::little_endian::U32;

use crate::error::RangeError;
use crate::features::FeatureSelect;
use crate::opcode::AdminOpcode;
use crate::sqe::Sqe;

fn sqe(op: AdminOpcode) -> Sqe {
    Sqe::new(op as u8)
}

code_enum! {
    /// Identify Controller or Namespace Structure (CNS) values, CDW10 bits
    /// 7:0 of Identify (Base 2.0 §5.17, Figure "Identify – CNS Values").
    pub enum Cns ("CNS value") {
        Namespace = 0x00 => "Identify Namespace data structure (NVM command set)",
        Controller = 0x01 => "Identify Controller data structure",
        ActiveNamespaceList = 0x02 => "Active Namespace ID list",
        NamespaceIdDescriptorList = 0x03 => "Namespace Identification Descriptor list",
        NvmSetList = 0x04 => "NVM Set List",
        IoCommandSetNamespace = 0x05 => "I/O Command Set specific Identify Namespace data structure",
        IoCommandSetController = 0x06 => "I/O Command Set specific Identify Controller data structure",
        IoCommandSetActiveNamespaceList = 0x07 => "Active Namespace ID list associated with the specified I/O Command Set",
        IndependentNamespace = 0x08 => "I/O Command Set Independent Identify Namespace data structure",
        AllocatedNamespaceList = 0x10 => "Allocated Namespace ID list",
        AllocatedNamespace = 0x11 => "Identify Namespace data structure for an Allocated Namespace ID",
        NamespaceControllerList = 0x12 => "Controller List attached to the specified NSID",
        ControllerList = 0x13 => "Controller List of controllers in the NVM subsystem",
        PrimaryControllerCapabilities = 0x14 => "Primary Controller Capabilities data structure",
        SecondaryControllerList = 0x15 => "Secondary Controller list",
        NamespaceGranularityList = 0x16 => "Namespace Granularity List",
        UuidList = 0x17 => "UUID List",
        DomainList = 0x18 => "Domain List",
        EnduranceGroupList = 0x19 => "Endurance Group List",
        IoCommandSetAllocatedNamespaceList = 0x1a => "I/O Command Set specific Allocated Namespace ID list",
        IoCommandSetAllocatedNamespace = 0x1b => "I/O Command Set specific Identify Namespace data structure for an Allocated NSID",
        IoCommandSet = 0x1c => "Identify I/O Command Set data structure",
    }
}

/// Command Set Identifier (CSI) values (Base 2.0 Figure "Command Set
/// Identifiers").
pub mod csi {
    /// NVM Command Set.
    pub const NVM: u8 = 0x00;
    /// Key Value Command Set.
    pub const KEY_VALUE: u8 = 0x01;
    /// Zoned Namespace Command Set.
    pub const ZONED: u8 = 0x02;
}

/// Identify (opcode 06h, Base 2.0 §5.17). Transfers 4096 bytes to the
/// host.
///
/// * CDW10 bits 7:0 CNS, bits 31:16 CNTID (controller identifier, used by
///   the controller-list CNS values; 0 otherwise);
/// * NSID: namespace for namespace CNS values (for
///   [`Cns::ActiveNamespaceList`]: list ids greater than this one).
#[must_use]
pub fn identify(cns: Cns, nsid: u32, cntid: u16) -> Sqe {
    identify_csi(cns, nsid, cntid, csi::NVM)
}

/// Identify with a Command Set Identifier: CDW11 bits 31:24 CSI (for the
/// I/O Command Set specific CNS values 05h..07h, 1Ah, 1Bh).
#[must_use]
pub(crate) fn identify_csi(cns: Cns, nsid: u32, cntid: u16, csi: u8) -> Sqe {
    let mut s = sqe(AdminOpcode::Identify).with_nsid(nsid);
    s.cdw10 = U32::new(u32::from(cns as u8) | u32::from(cntid) << 16);
    s.cdw11 = U32::new(u32::from(csi) << 24);
    s
}

fn check_io_queue(qid: u16, entries: u16) -> Result<(), RangeError> {
    RangeError::check("I/O queue identifier", u64::from(qid), 1, 0xffff)?;
    RangeError::check("queue entries", u64::from(entries), 2, 0xffff)
}

/// Create I/O Completion Queue (opcode 05h, Base 2.0 §5.4). PRP1 (set by
/// the driver) is the queue base; PC (physically contiguous) is always set.
///
/// * CDW10 bits 15:0 QID, bits 31:16 QSIZE (0's based: `entries - 1`);
/// * CDW11 bit 0 PC, bit 1 IEN (interrupts enabled), bits 31:16 IV
///   (interrupt vector). `interrupts: None` leaves IEN clear (polled
///   queue).
///
/// # Errors
///
/// `qid` 0 (the admin queue) or fewer than 2 `entries` (the minimum queue
/// size). The caller is responsible for `entries <= CAP.MQES + 1`.
pub fn create_io_cq(qid: u16, entries: u16, interrupts: Option<u16>) -> Result<Sqe, RangeError> {
    check_io_queue(qid, entries)?;
    let mut s = sqe(AdminOpcode::CreateIoCq);
    s.cdw10 = U32::new(u32::from(qid) | u32::from(entries - 1) << 16);
    let mut cdw11 = 1; // PC
    if let Some(iv) = interrupts {
        cdw11 |= 1 << 1 | u32::from(iv) << 16;
    }
    s.cdw11 = U32::new(cdw11);
    Ok(s)
}

/// Queue priority for weighted round robin arbitration (CDW11 QPRIO of
/// Create I/O Submission Queue, Base 2.0 Figure "Create I/O Submission
/// Queue – Command Dword 11"). Ignored by the
/// controller under round robin arbitration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum QueuePriority {
    /// 00b: Urgent.
    Urgent = 0,
    /// 01b: High.
    High = 1,
    /// 10b: Medium.
    #[default]
    Medium = 2,
    /// 11b: Low.
    Low = 3,
}

/// Create I/O Submission Queue (opcode 01h, Base 2.0 §5.5). PRP1 (set by
/// the driver) is the queue base; PC is always set.
///
/// * CDW10 bits 15:0 QID, bits 31:16 QSIZE (0's based);
/// * CDW11 bit 0 PC, bits 2:1 QPRIO, bits 31:16 CQID;
/// * CDW12 bits 15:0 NVMSETID (0: no NVM set specified).
///
/// # Errors
///
/// `qid` 0, `cqid` 0 or fewer than 2 `entries`.
pub fn create_io_sq(
    qid: u16,
    entries: u16,
    cqid: u16,
    priority: QueuePriority,
) -> Result<Sqe, RangeError> {
    check_io_queue(qid, entries)?;
    RangeError::check("completion queue identifier", u64::from(cqid), 1, 0xffff)?;
    let mut s = sqe(AdminOpcode::CreateIoSq);
    s.cdw10 = U32::new(u32::from(qid) | u32::from(entries - 1) << 16);
    s.cdw11 = U32::new(1 | u32::from(priority as u8) << 1 | u32::from(cqid) << 16);
    Ok(s)
}

/// Delete I/O Submission Queue (opcode 00h, Base 2.0 §5.7): CDW10 bits
/// 15:0 QID.
#[must_use]
pub fn delete_io_sq(qid: u16) -> Sqe {
    let mut s = sqe(AdminOpcode::DeleteIoSq);
    s.cdw10 = U32::new(u32::from(qid));
    s
}

/// Delete I/O Completion Queue (opcode 04h, Base 2.0 §5.6): CDW10 bits
/// 15:0 QID. Delete the submission queues that use it first.
#[must_use]
pub fn delete_io_cq(qid: u16) -> Sqe {
    let mut s = sqe(AdminOpcode::DeleteIoCq);
    s.cdw10 = U32::new(u32::from(qid));
    s
}

/// All parameters of Get Log Page (Base 2.0 §5.16, Figures "Get Log Page –
/// Command Dword 10" .. "– Command Dword 14"). Use
/// [`get_log_page`] for the common case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LogPageRequest {
    /// LID: log page identifier (see [`crate::log::LogPageId`]).
    pub lid: u8,
    /// LSP: log specific field (7 bits).
    pub lsp: u8,
    /// LSI: log specific identifier.
    pub lsi: u16,
    /// CSI: command set identifier (for I/O command set specific pages).
    pub csi: u8,
    /// UUID index (7 bits, 0: none).
    pub uuid_index: u8,
    /// Namespace (0 or 0xffff_ffff for controller-wide pages).
    pub nsid: u32,
    /// Number of dwords to transfer (real count, 1..=2^32).
    pub num_dwords: u64,
    /// Byte offset into the log page (must be a multiple of 4).
    pub offset_bytes: u64,
    /// RAE: retain asynchronous event (do not clear the event that caused
    /// the host to read this page).
    pub rae: bool,
}

impl LogPageRequest {
    /// Encodes the request:
    ///
    /// * CDW10 bits 7:0 LID, 14:8 LSP, 15 RAE, 31:16 NUMDL;
    /// * CDW11 bits 15:0 NUMDU, 31:16 LSI;
    /// * CDW12 LPOL, CDW13 LPOU (byte offset, dword aligned);
    /// * CDW14 bits 6:0 UUID index, 31:24 CSI.
    ///
    /// NUMD (NUMDU:NUMDL) is the 0's based dword count.
    ///
    /// # Errors
    ///
    /// `num_dwords` outside 1..=2^32, or an offset that is not a multiple
    /// of 4.
    pub(crate) fn to_sqe(self) -> Result<Sqe, RangeError> {
        RangeError::check("log page dword count", self.num_dwords, 1, 1 << 32)?;
        if !self.offset_bytes.is_multiple_of(4) {
            return Err(RangeError {
                what: "log page offset (must be dword aligned)",
                value: self.offset_bytes,
                min: 0,
                max: u64::MAX - 3,
            });
        }
        // In range 0..=u32::MAX after the check above.
        let numd = (self.num_dwords - 1) as u32;
        let mut s = sqe(AdminOpcode::GetLogPage).with_nsid(self.nsid);
        s.cdw10 = U32::new(
            u32::from(self.lid)
                | u32::from(self.lsp & 0x7f) << 8
                | u32::from(self.rae) << 15
                | (numd & 0xffff) << 16,
        );
        s.cdw11 = U32::new(numd >> 16 | u32::from(self.lsi) << 16);
        s.cdw12 = U32::new(self.offset_bytes as u32);
        s.cdw13 = U32::new((self.offset_bytes >> 32) as u32);
        s.cdw14 = U32::new(u32::from(self.uuid_index & 0x7f) | u32::from(self.csi) << 24);
        Ok(s)
    }
}

/// Get Log Page (opcode 02h, Base 2.0 §5.16). Transfers `num_dwords * 4`
/// bytes to the host. Encoded by `LogPageRequest::to_sqe`
/// (NUMDL/NUMDU split, LPOL/LPOU).
///
/// # Errors
///
/// `num_dwords` 0 or an offset that is not dword aligned.
pub fn get_log_page(
    lid: u8,
    nsid: u32,
    num_dwords: u32,
    offset_bytes: u64,
    rae: bool,
) -> Result<Sqe, RangeError> {
    LogPageRequest {
        lid,
        nsid,
        num_dwords: u64::from(num_dwords),
        offset_bytes,
        rae,
        ..LogPageRequest::default()
    }
    .to_sqe()
}

/// Set Features (opcode 09h, Base 2.0 §5.27).
///
/// * CDW10 bits 7:0 FID, bit 31 SV (save across power cycles);
/// * CDW11: feature specific value (see [`crate::features`]).
///
/// Features with more parameters use CDW12..CDW15 or a data buffer; set
/// them on the returned entry.
#[must_use]
pub fn set_features(fid: u8, cdw11: u32, save: bool) -> Sqe {
    let mut s = sqe(AdminOpcode::SetFeatures);
    s.cdw10 = U32::new(u32::from(fid) | u32::from(save) << 31);
    s.cdw11 = U32::new(cdw11);
    s
}

/// Get Features (opcode 0Ah, Base 2.0 §5.15). The value is returned in
/// CQE DW0.
///
/// * CDW10 bits 7:0 FID, bits 10:8 SEL;
/// * CDW11: feature specific (e.g. the interrupt vector for Interrupt
///   Vector Configuration).
#[must_use]
pub fn get_features(fid: u8, sel: FeatureSelect, cdw11: u32) -> Sqe {
    let mut s = sqe(AdminOpcode::GetFeatures);
    s.cdw10 = U32::new(u32::from(fid) | u32::from(sel as u8) << 8);
    s.cdw11 = U32::new(cdw11);
    s
}

/// Abort (opcode 08h, Base 2.0 §5.1): CDW10 bits 15:0 SQID, bits 31:16
/// CID of the command to abort. CQE DW0 bit 0 clear means it was aborted.
#[must_use]
pub fn abort(sqid: u16, cid: u16) -> Sqe {
    let mut s = sqe(AdminOpcode::Abort);
    s.cdw10 = U32::new(u32::from(sqid) | u32::from(cid) << 16);
    s
}

/// Asynchronous Event Request (opcode 0Ch, Base 2.0 §5.2). No parameters;
/// completes when an event occurs (decode DW0 with
/// [`crate::log::AsyncEvent::from_dw0`]).
#[must_use]
pub fn async_event_request() -> Sqe {
    sqe(AdminOpcode::AsyncEventRequest)
}

/// Doorbell Buffer Config (opcode 7Ch, Base 2.0 §5.11). The driver sets
/// PRP1 = shadow doorbell buffer and PRP2 = EventIdx buffer (one page
/// each, page aligned). No command dwords.
#[must_use]
pub fn doorbell_buffer_config() -> Sqe {
    sqe(AdminOpcode::DoorbellBufferConfig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identify_controller() {
        let s = identify(Cns::Controller, 0, 0);
        assert_eq!(s.opcode, 0x06);
        assert_eq!(s.cdw10.get(), 1);
        assert_eq!(s.nsid.get(), 0);
        assert_eq!(s.cdw11.get(), 0);
        assert_eq!(s.prp1.get(), 0);
        let s = identify(Cns::Namespace, 1, 0);
        assert_eq!((s.cdw10.get(), s.nsid.get()), (0, 1));
        let s = identify(Cns::NamespaceControllerList, 7, 0x1234);
        assert_eq!(s.cdw10.get(), 0x1234_0012);
        let s = identify_csi(Cns::IoCommandSetController, 0, 0, csi::ZONED);
        assert_eq!(s.cdw10.get(), 0x06);
        assert_eq!(s.cdw11.get(), 0x0200_0000);
        assert_eq!(Cns::try_from(0x1c), Ok(Cns::IoCommandSet));
        assert!(Cns::try_from(0x09).is_err());
        for &c in Cns::ALL {
            assert_eq!(Cns::from_raw(c.raw()), Some(c));
        }
    }

    #[test]
    fn create_queues() {
        let s = create_io_cq(1, 1024, Some(3)).expect("valid");
        assert_eq!(s.opcode, 0x05);
        assert_eq!(s.cdw10.get(), 0x03ff_0001);
        assert_eq!(s.cdw11.get(), 0x0003_0003);
        let s = create_io_cq(2, 2, None).expect("valid");
        assert_eq!(s.cdw10.get(), 0x0001_0002);
        assert_eq!(s.cdw11.get(), 0x1);
        let s = create_io_cq(0xffff, 0xffff, Some(0xffff)).expect("valid");
        assert_eq!(s.cdw10.get(), 0xfffe_ffff);
        assert_eq!(s.cdw11.get(), 0xffff_0003);
        assert!(create_io_cq(0, 64, None).is_err());
        assert!(create_io_cq(1, 1, None).is_err());
        assert!(create_io_cq(1, 0, None).is_err());

        let s = create_io_sq(1, 1024, 1, QueuePriority::Medium).expect("valid");
        assert_eq!(s.opcode, 0x01);
        assert_eq!(s.cdw10.get(), 0x03ff_0001);
        assert_eq!(s.cdw11.get(), 0x0001_0005);
        let s = create_io_sq(3, 16, 2, QueuePriority::Urgent).expect("valid");
        assert_eq!(s.cdw11.get(), 0x0002_0001);
        let s = create_io_sq(3, 16, 2, QueuePriority::Low).expect("valid");
        assert_eq!(s.cdw11.get(), 0x0002_0007);
        assert!(create_io_sq(1, 16, 0, QueuePriority::Low).is_err());
        assert!(create_io_sq(0, 16, 1, QueuePriority::Low).is_err());
        assert!(create_io_sq(1, 1, 1, QueuePriority::Low).is_err());

        let s = delete_io_sq(7);
        assert_eq!((s.opcode, s.cdw10.get()), (0x00, 7));
        let s = delete_io_cq(7);
        assert_eq!((s.opcode, s.cdw10.get()), (0x04, 7));
    }

    #[test]
    fn log_page() {
        // SMART log: 512 bytes = 128 dwords, NUMD = 127.
        let s = get_log_page(0x02, 0xffff_ffff, 128, 0, false).expect("valid");
        assert_eq!(s.opcode, 0x02);
        assert_eq!(s.nsid.get(), 0xffff_ffff);
        assert_eq!(s.cdw10.get(), 0x007f_0002);
        assert_eq!(s.cdw11.get(), 0);
        assert_eq!((s.cdw12.get(), s.cdw13.get()), (0, 0));
        // Large transfer splits NUMD across NUMDL/NUMDU; offset across
        // LPOL/LPOU; RAE bit 15.
        let s = get_log_page(0x07, 0, 0x0003_0000, 0x1_0000_1000, true).expect("valid");
        assert_eq!(s.cdw10.get(), 0xffff_8007);
        assert_eq!(s.cdw11.get(), 0x0000_0002);
        assert_eq!(s.cdw12.get(), 0x1000);
        assert_eq!(s.cdw13.get(), 0x1);
        let s = get_log_page(0x01, 0, u32::MAX, 0, false).expect("valid");
        assert_eq!(s.cdw10.get() >> 16, 0xfffe);
        assert_eq!(s.cdw11.get(), 0xffff);
        assert!(get_log_page(0x02, 0, 0, 0, false).is_err());
        assert!(get_log_page(0x02, 0, 1, 2, false).is_err());

        let s = LogPageRequest {
            lid: 0x0d,
            lsp: 0xff,
            lsi: 0xabcd,
            csi: 2,
            uuid_index: 0xff,
            nsid: 0,
            num_dwords: 1 << 32,
            offset_bytes: 0,
            rae: false,
        }
        .to_sqe()
        .expect("valid");
        assert_eq!(s.cdw10.get(), 0xffff_7f0d);
        assert_eq!(s.cdw11.get(), 0xabcd_ffff);
        assert_eq!(s.cdw14.get(), 0x0200_007f);
        let too_big = LogPageRequest {
            num_dwords: (1 << 32) + 1,
            ..LogPageRequest::default()
        };
        assert!(too_big.to_sqe().is_err());
    }

    #[test]
    fn features() {
        let s = set_features(0x07, 0x0003_0003, false);
        assert_eq!(s.opcode, 0x09);
        assert_eq!(s.cdw10.get(), 0x07);
        assert_eq!(s.cdw11.get(), 0x0003_0003);
        let s = set_features(0x06, 1, true);
        assert_eq!(s.cdw10.get(), 0x8000_0006);
        let s = get_features(0x07, FeatureSelect::Current, 0);
        assert_eq!((s.opcode, s.cdw10.get()), (0x0a, 0x07));
        let s = get_features(0x09, FeatureSelect::SupportedCapabilities, 5);
        assert_eq!(s.cdw10.get(), 0x0309);
        assert_eq!(s.cdw11.get(), 5);
        let s = get_features(0x01, FeatureSelect::Saved, 0);
        assert_eq!(s.cdw10.get(), 0x0201);
    }

    #[test]
    fn misc_commands() {
        let s = abort(3, 0x55);
        assert_eq!((s.opcode, s.cdw10.get()), (0x08, 0x0055_0003));
        assert_eq!(async_event_request(), Sqe::new(0x0c));
        assert_eq!(doorbell_buffer_config(), Sqe::new(0x7c));
    }
}

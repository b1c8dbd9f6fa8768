//! Completion status (Base 2.0 Figure "Completion Queue Entry:
//! Status Field" and the "Status Code – ..." value figures that follow it,
//! plus the NVM Command Set 1.0 command set specific status values).

use core::fmt;

/// Status Code Type (SCT, status field bits 11:9; Base 2.0 Figure "Status
/// Code – Status Code Type Values").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusCodeType {
    /// 0h: Generic Command Status.
    Generic,
    /// 1h: Command Specific Status.
    CommandSpecific,
    /// 2h: Media and Data Integrity Errors.
    MediaAndDataIntegrity,
    /// 3h: Path Related Status.
    PathRelated,
    /// 4h..=6h: reserved (the raw value is kept).
    Reserved(u8),
    /// 7h: Vendor Specific.
    VendorSpecific,
}

impl StatusCodeType {
    /// Decodes the 3-bit SCT; only the low 3 bits of `raw` are used, so
    /// every input maps to a variant.
    #[must_use]
    pub const fn from_raw(raw: u8) -> StatusCodeType {
        match raw & 0x7 {
            0 => Self::Generic,
            1 => Self::CommandSpecific,
            2 => Self::MediaAndDataIntegrity,
            3 => Self::PathRelated,
            7 => Self::VendorSpecific,
            r => Self::Reserved(r),
        }
    }

    /// The raw 3-bit value.
    #[must_use]
    pub const fn raw(self) -> u8 {
        match self {
            Self::Generic => 0,
            Self::CommandSpecific => 1,
            Self::MediaAndDataIntegrity => 2,
            Self::PathRelated => 3,
            Self::Reserved(r) => r & 0x7,
            Self::VendorSpecific => 7,
        }
    }

    /// The spec name of the status code type.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Generic => "Generic Command Status",
            Self::CommandSpecific => "Command Specific Status",
            Self::MediaAndDataIntegrity => "Media and Data Integrity Errors",
            Self::PathRelated => "Path Related Status",
            Self::Reserved(_) => "Reserved",
            Self::VendorSpecific => "Vendor Specific",
        }
    }
}

/// Generic command status values (SCT 0), Base 2.0 Figure "Status Code –
/// Generic Command Status Values" and the NVM Command Set 1.0 additions.
pub mod generic {
    /// Successful Completion.
    pub const SUCCESS: u8 = 0x00;
    /// Invalid Command Opcode.
    pub const INVALID_OPCODE: u8 = 0x01;
    /// Invalid Field in Command.
    pub const INVALID_FIELD: u8 = 0x02;
    /// Command ID Conflict.
    pub const CID_CONFLICT: u8 = 0x03;
    /// Data Transfer Error.
    pub const DATA_TRANSFER_ERROR: u8 = 0x04;
    /// Commands Aborted due to Power Loss Notification.
    pub const ABORTED_POWER_LOSS: u8 = 0x05;
    /// Internal Error.
    pub const INTERNAL_ERROR: u8 = 0x06;
    /// Command Abort Requested.
    pub const ABORT_REQUESTED: u8 = 0x07;
    /// Command Aborted due to SQ Deletion.
    pub const ABORTED_SQ_DELETION: u8 = 0x08;
    /// Command Aborted due to Failed Fused Command.
    pub const ABORTED_FAILED_FUSED: u8 = 0x09;
    /// Command Aborted due to Missing Fused Command.
    pub const ABORTED_MISSING_FUSED: u8 = 0x0a;
    /// Invalid Namespace or Format.
    pub const INVALID_NAMESPACE_OR_FORMAT: u8 = 0x0b;
    /// Command Sequence Error.
    pub const COMMAND_SEQUENCE_ERROR: u8 = 0x0c;
    /// Invalid SGL Segment Descriptor.
    pub const INVALID_SGL_SEGMENT_DESCRIPTOR: u8 = 0x0d;
    /// Invalid Number of SGL Descriptors.
    pub const INVALID_NUMBER_OF_SGL_DESCRIPTORS: u8 = 0x0e;
    /// Data SGL Length Invalid.
    pub const DATA_SGL_LENGTH_INVALID: u8 = 0x0f;
    /// Metadata SGL Length Invalid.
    pub const METADATA_SGL_LENGTH_INVALID: u8 = 0x10;
    /// SGL Descriptor Type Invalid.
    pub const SGL_DESCRIPTOR_TYPE_INVALID: u8 = 0x11;
    /// Invalid Use of Controller Memory Buffer.
    pub const INVALID_USE_OF_CMB: u8 = 0x12;
    /// PRP Offset Invalid.
    pub const PRP_OFFSET_INVALID: u8 = 0x13;
    /// Atomic Write Unit Exceeded.
    pub const ATOMIC_WRITE_UNIT_EXCEEDED: u8 = 0x14;
    /// Operation Denied.
    pub const OPERATION_DENIED: u8 = 0x15;
    /// SGL Offset Invalid.
    pub const SGL_OFFSET_INVALID: u8 = 0x16;
    /// Host Identifier Inconsistent Format.
    pub const HOST_ID_INCONSISTENT_FORMAT: u8 = 0x18;
    /// Keep Alive Timer Expired.
    pub const KEEP_ALIVE_TIMER_EXPIRED: u8 = 0x19;
    /// Keep Alive Timeout Invalid.
    pub const KEEP_ALIVE_TIMEOUT_INVALID: u8 = 0x1a;
    /// Command Aborted due to Preempt and Abort.
    pub const ABORTED_PREEMPT_AND_ABORT: u8 = 0x1b;
    /// Sanitize Failed.
    pub const SANITIZE_FAILED: u8 = 0x1c;
    /// Sanitize In Progress.
    pub const SANITIZE_IN_PROGRESS: u8 = 0x1d;
    /// SGL Data Block Granularity Invalid.
    pub const SGL_DATA_BLOCK_GRANULARITY_INVALID: u8 = 0x1e;
    /// Command Not Supported for Queue in CMB.
    pub const COMMAND_NOT_SUPPORTED_FOR_CMB_QUEUE: u8 = 0x1f;
    /// Namespace is Write Protected.
    pub const NAMESPACE_WRITE_PROTECTED: u8 = 0x20;
    /// Command Interrupted.
    pub const COMMAND_INTERRUPTED: u8 = 0x21;
    /// Transient Transport Error.
    pub const TRANSIENT_TRANSPORT_ERROR: u8 = 0x22;
    /// Command Prohibited by Command and Feature Lockdown.
    pub const PROHIBITED_BY_LOCKDOWN: u8 = 0x23;
    /// Admin Command Media Not Ready.
    pub const ADMIN_COMMAND_MEDIA_NOT_READY: u8 = 0x24;
    /// LBA Out of Range (NVM command set).
    pub const LBA_OUT_OF_RANGE: u8 = 0x80;
    /// Capacity Exceeded (NVM command set).
    pub const CAPACITY_EXCEEDED: u8 = 0x81;
    /// Namespace Not Ready (NVM command set).
    pub const NAMESPACE_NOT_READY: u8 = 0x82;
    /// Reservation Conflict (NVM command set).
    pub const RESERVATION_CONFLICT: u8 = 0x83;
    /// Format In Progress (NVM command set).
    pub const FORMAT_IN_PROGRESS: u8 = 0x84;
}

/// Command specific status values (SCT 1), Base 2.0 Figure "Status Code –
/// Command Specific Status Values" and the NVM Command Set 1.0 additions.
pub mod command_specific {
    /// Completion Queue Invalid.
    pub const COMPLETION_QUEUE_INVALID: u8 = 0x00;
    /// Invalid Queue Identifier.
    pub const INVALID_QUEUE_IDENTIFIER: u8 = 0x01;
    /// Invalid Queue Size.
    pub const INVALID_QUEUE_SIZE: u8 = 0x02;
    /// Abort Command Limit Exceeded.
    pub const ABORT_COMMAND_LIMIT_EXCEEDED: u8 = 0x03;
    /// Asynchronous Event Request Limit Exceeded.
    pub const ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED: u8 = 0x05;
    /// Invalid Firmware Slot.
    pub const INVALID_FIRMWARE_SLOT: u8 = 0x06;
    /// Invalid Firmware Image.
    pub const INVALID_FIRMWARE_IMAGE: u8 = 0x07;
    /// Invalid Interrupt Vector.
    pub const INVALID_INTERRUPT_VECTOR: u8 = 0x08;
    /// Invalid Log Page.
    pub const INVALID_LOG_PAGE: u8 = 0x09;
    /// Invalid Format.
    pub const INVALID_FORMAT: u8 = 0x0a;
    /// Invalid Queue Deletion.
    pub const INVALID_QUEUE_DELETION: u8 = 0x0c;
    /// Feature Identifier Not Saveable.
    pub const FEATURE_NOT_SAVEABLE: u8 = 0x0d;
    /// Feature Not Changeable.
    pub const FEATURE_NOT_CHANGEABLE: u8 = 0x0e;
    /// Feature Not Namespace Specific.
    pub const FEATURE_NOT_NAMESPACE_SPECIFIC: u8 = 0x0f;
    /// Conflicting Attributes (NVM command set).
    pub const CONFLICTING_ATTRIBUTES: u8 = 0x80;
    /// Invalid Protection Information (NVM command set).
    pub const INVALID_PROTECTION_INFORMATION: u8 = 0x81;
    /// Attempted Write to Read Only Range (NVM command set).
    pub const WRITE_TO_READ_ONLY_RANGE: u8 = 0x82;
}

/// Media and data integrity error values (SCT 2), Base 2.0 Figure "Status
/// Code – Media and Data Integrity Error Values".
pub mod media {
    /// Write Fault.
    pub const WRITE_FAULT: u8 = 0x80;
    /// Unrecovered Read Error.
    pub const UNRECOVERED_READ_ERROR: u8 = 0x81;
    /// End-to-end Guard Check Error.
    pub const GUARD_CHECK_ERROR: u8 = 0x82;
    /// End-to-end Application Tag Check Error.
    pub const APPLICATION_TAG_CHECK_ERROR: u8 = 0x83;
    /// End-to-end Reference Tag Check Error.
    pub const REFERENCE_TAG_CHECK_ERROR: u8 = 0x84;
    /// Compare Failure.
    pub const COMPARE_FAILURE: u8 = 0x85;
    /// Access Denied.
    pub const ACCESS_DENIED: u8 = 0x86;
    /// Deallocated or Unwritten Logical Block.
    pub const DEALLOCATED_OR_UNWRITTEN: u8 = 0x87;
    /// End-to-End Storage Tag Check Error.
    pub const STORAGE_TAG_CHECK_ERROR: u8 = 0x88;
}

/// Path related status values (SCT 3), Base 2.0 Figure "Status Code – Path
/// Related Status Values".
pub mod path {
    /// Internal Path Error.
    pub const INTERNAL_PATH_ERROR: u8 = 0x00;
    /// Asymmetric Access Persistent Loss.
    pub const ANA_PERSISTENT_LOSS: u8 = 0x01;
    /// Asymmetric Access Inaccessible.
    pub const ANA_INACCESSIBLE: u8 = 0x02;
    /// Asymmetric Access Transition.
    pub const ANA_TRANSITION: u8 = 0x03;
    /// Controller Pathing Error.
    pub const CONTROLLER_PATHING_ERROR: u8 = 0x60;
    /// Host Pathing Error.
    pub const HOST_PATHING_ERROR: u8 = 0x70;
    /// Command Aborted By Host.
    pub const ABORTED_BY_HOST: u8 = 0x71;
}

/// Decoded completion status field (Base 2.0 Figure "Completion Queue Entry:
/// Status Field").
///
/// In the 16-bit word at CQE bytes 14..16 (DW3 bits 31:16): bit 0 is the
/// phase tag, SC is bits 8:1, SCT bits 11:9, CRD bits 13:12, M bit 14 and
/// DNR bit 15. Any 16-bit value decodes; unknown codes get the name
/// "Reserved" or "Vendor Specific".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Status {
    /// Status Code Type (3 bits, see [`StatusCodeType`]).
    pub sct: u8,
    /// Status Code.
    pub sc: u8,
    /// Command Retry Delay: 0 = retry immediately, 1..=3 = wait CRDT1..3 of
    /// Identify Controller (100 ms units) before retrying.
    pub crd: u8,
    /// More: further information is available in the Error Information log
    /// page.
    pub more: bool,
    /// Do Not Retry: the command is expected to fail again if resubmitted.
    pub dnr: bool,
}

impl Status {
    /// Successful Completion (SCT 0, SC 0).
    pub const SUCCESS: Status = Status {
        sct: 0,
        sc: 0,
        crd: 0,
        more: false,
        dnr: false,
    };

    /// Decodes the 16-bit CQE status word **including the phase tag in
    /// bit 0** (the phase tag is ignored).
    #[must_use]
    pub const fn from_cqe_status(raw: u16) -> Status {
        Status {
            sc: ((raw >> 1) & 0xff) as u8,
            sct: ((raw >> 9) & 0x7) as u8,
            crd: ((raw >> 12) & 0x3) as u8,
            more: raw & (1 << 14) != 0,
            dnr: raw & (1 << 15) != 0,
        }
    }

    /// A generic (SCT 0) status with the given code, CRD 0, M and DNR clear.
    #[must_use]
    pub const fn generic(sc: u8) -> Status {
        Status {
            sct: 0,
            sc,
            crd: 0,
            more: false,
            dnr: false,
        }
    }

    /// Encodes back into the 16-bit CQE status word with the given phase.
    #[must_use]
    pub const fn to_cqe_status(self, phase: bool) -> u16 {
        phase as u16
            | (self.sc as u16) << 1
            | ((self.sct & 0x7) as u16) << 9
            | ((self.crd & 0x3) as u16) << 12
            | (self.more as u16) << 14
            | (self.dnr as u16) << 15
    }

    /// The status code type.
    #[must_use]
    pub(crate) const fn sct_kind(self) -> StatusCodeType {
        StatusCodeType::from_raw(self.sct)
    }

    /// SCT 0 / SC 0 (CRD, M and DNR are not considered).
    #[must_use]
    pub const fn is_success(self) -> bool {
        self.sct == 0 && self.sc == 0
    }

    /// Whether `self` has the given SCT and SC (ignoring CRD/M/DNR).
    #[must_use]
    pub const fn is(self, sct: StatusCodeType, sc: u8) -> bool {
        self.sct == sct.raw() && self.sc == sc
    }

    /// Whether resubmitting the same command may succeed.
    ///
    /// Policy (conservative, documented so the driver's retry loop is
    /// predictable):
    ///
    /// * never when DNR is set, and never for success;
    /// * only for codes describing a *transient* condition:
    ///   * generic: Data Transfer Error (04h), Command Interrupted (21h),
    ///     Transient Transport Error (22h), Admin Command Media Not Ready
    ///     (24h), Namespace Not Ready (82h);
    ///   * path related: Internal Path Error (00h), Asymmetric Access
    ///     Transition (03h), Controller Pathing Error (60h), Host Pathing
    ///     Error (70h).
    ///
    /// Everything else is not retried even with DNR clear: invalid
    /// opcode/field/namespace, LBA Out of Range and other programming
    /// errors, aborts the host asked for (Command Abort Requested, SQ
    /// deletion, Command Aborted By Host), long-running states that a
    /// quick retry cannot outlast (Format In Progress, Sanitize In
    /// Progress), media errors (the device has already run its own
    /// recovery), Internal Error, and all reserved / vendor specific codes.
    /// A device that forgets DNR on a permanent error therefore cannot make
    /// the driver loop. Callers should wait [`Status::crd`] (via CRDT) before
    /// retrying.
    #[must_use]
    pub const fn is_retryable(self) -> bool {
        if self.dnr {
            return false;
        }
        match self.sct_kind() {
            StatusCodeType::Generic => matches!(
                self.sc,
                generic::DATA_TRANSFER_ERROR
                    | generic::COMMAND_INTERRUPTED
                    | generic::TRANSIENT_TRANSPORT_ERROR
                    | generic::ADMIN_COMMAND_MEDIA_NOT_READY
                    | generic::NAMESPACE_NOT_READY
            ),
            StatusCodeType::PathRelated => matches!(
                self.sc,
                path::INTERNAL_PATH_ERROR
                    | path::ANA_TRANSITION
                    | path::CONTROLLER_PATHING_ERROR
                    | path::HOST_PATHING_ERROR
            ),
            _ => false,
        }
    }

    /// The name the specification gives this status code (e.g. "Invalid
    /// Field in Command"); "Reserved" or "Vendor Specific" for codes without
    /// a definition.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self.sct_kind() {
            StatusCodeType::Generic => generic_name(self.sc),
            StatusCodeType::CommandSpecific => command_specific_name(self.sc),
            StatusCodeType::MediaAndDataIntegrity => media_name(self.sc),
            StatusCodeType::PathRelated => path_name(self.sc),
            StatusCodeType::Reserved(_) => "Reserved",
            StatusCodeType::VendorSpecific => "Vendor Specific",
        }
    }
}

/// Name of a generic command status value (SCT 0).
const fn generic_name(sc: u8) -> &'static str {
    match sc {
        0x00 => "Successful Completion",
        0x01 => "Invalid Command Opcode",
        0x02 => "Invalid Field in Command",
        0x03 => "Command ID Conflict",
        0x04 => "Data Transfer Error",
        0x05 => "Commands Aborted due to Power Loss Notification",
        0x06 => "Internal Error",
        0x07 => "Command Abort Requested",
        0x08 => "Command Aborted due to SQ Deletion",
        0x09 => "Command Aborted due to Failed Fused Command",
        0x0a => "Command Aborted due to Missing Fused Command",
        0x0b => "Invalid Namespace or Format",
        0x0c => "Command Sequence Error",
        0x0d => "Invalid SGL Segment Descriptor",
        0x0e => "Invalid Number of SGL Descriptors",
        0x0f => "Data SGL Length Invalid",
        0x10 => "Metadata SGL Length Invalid",
        0x11 => "SGL Descriptor Type Invalid",
        0x12 => "Invalid Use of Controller Memory Buffer",
        0x13 => "PRP Offset Invalid",
        0x14 => "Atomic Write Unit Exceeded",
        0x15 => "Operation Denied",
        0x16 => "SGL Offset Invalid",
        0x18 => "Host Identifier Inconsistent Format",
        0x19 => "Keep Alive Timer Expired",
        0x1a => "Keep Alive Timeout Invalid",
        0x1b => "Command Aborted due to Preempt and Abort",
        0x1c => "Sanitize Failed",
        0x1d => "Sanitize In Progress",
        0x1e => "SGL Data Block Granularity Invalid",
        0x1f => "Command Not Supported for Queue in CMB",
        0x20 => "Namespace is Write Protected",
        0x21 => "Command Interrupted",
        0x22 => "Transient Transport Error",
        0x23 => "Command Prohibited by Command and Feature Lockdown",
        0x24 => "Admin Command Media Not Ready",
        // Added after 2.0 (Base 2.1 / 2.2); reserved in 2.0.
        0x25 => "Invalid Key Tag",
        0x26 => "Host Dispersed Namespace Support Not Enabled",
        0x27 => "Host Identifier Not Initialized",
        0x28 => "Incorrect Key",
        0x29 => "FDP Disabled",
        0x2a => "Invalid Placement Handle List",
        // I/O command set specific (80h..BFh): NVM command set ...
        0x80 => "LBA Out of Range",
        0x81 => "Capacity Exceeded",
        0x82 => "Namespace Not Ready",
        0x83 => "Reservation Conflict",
        0x84 => "Format In Progress",
        // ... and Key Value command set.
        0x85 => "Invalid Value Size",
        0x86 => "Invalid Key Size",
        0x87 => "KV Key Does Not Exist",
        0x88 => "Unrecovered Error",
        0x89 => "Key Exists",
        0xc0..=0xff => "Vendor Specific",
        _ => "Reserved",
    }
}

/// Name of a command specific status value (SCT 1).
const fn command_specific_name(sc: u8) -> &'static str {
    match sc {
        0x00 => "Completion Queue Invalid",
        0x01 => "Invalid Queue Identifier",
        0x02 => "Invalid Queue Size",
        0x03 => "Abort Command Limit Exceeded",
        0x05 => "Asynchronous Event Request Limit Exceeded",
        0x06 => "Invalid Firmware Slot",
        0x07 => "Invalid Firmware Image",
        0x08 => "Invalid Interrupt Vector",
        0x09 => "Invalid Log Page",
        0x0a => "Invalid Format",
        0x0b => "Firmware Activation Requires Conventional Reset",
        0x0c => "Invalid Queue Deletion",
        0x0d => "Feature Identifier Not Saveable",
        0x0e => "Feature Not Changeable",
        0x0f => "Feature Not Namespace Specific",
        0x10 => "Firmware Activation Requires NVM Subsystem Reset",
        0x11 => "Firmware Activation Requires Controller Level Reset",
        0x12 => "Firmware Activation Requires Maximum Time Violation",
        0x13 => "Firmware Activation Prohibited",
        0x14 => "Overlapping Range",
        0x15 => "Namespace Insufficient Capacity",
        0x16 => "Namespace Identifier Unavailable",
        0x18 => "Namespace Already Attached",
        0x19 => "Namespace Is Private",
        0x1a => "Namespace Not Attached",
        0x1b => "Thin Provisioning Not Supported",
        0x1c => "Controller List Invalid",
        0x1d => "Device Self-test In Progress",
        0x1e => "Boot Partition Write Prohibited",
        0x1f => "Invalid Controller Identifier",
        0x20 => "Invalid Secondary Controller State",
        0x21 => "Invalid Number of Controller Resources",
        0x22 => "Invalid Resource Identifier",
        0x23 => "Sanitize Prohibited While Persistent Memory Region is Enabled",
        0x24 => "ANA Group Identifier Invalid",
        0x25 => "ANA Attach Failed",
        0x26 => "Insufficient Capacity",
        0x27 => "Namespace Attachment Limit Exceeded",
        0x28 => "Prohibition of Command Execution Not Supported",
        0x29 => "I/O Command Set Not Supported",
        0x2a => "I/O Command Set Not Enabled",
        0x2b => "I/O Command Set Combination Rejected",
        0x2c => "Invalid I/O Command Set",
        0x2d => "Identifier Unavailable",
        // Added after 2.0 (Base 2.1 / 2.2); reserved in 2.0.
        0x2e => "Namespace Is Dispersed",
        0x2f => "Invalid Discovery Information",
        0x30 => "Zoning Data Structure Locked",
        0x31 => "Zoning Data Structure Not Found",
        0x32 => "Insufficient Discovery Resources",
        0x33 => "Requested Function Disabled",
        0x34 => "ZoneGroup Originator Invalid",
        0x35 => "Invalid Host",
        0x36 => "Invalid NVM Subsystem",
        0x37 => "Invalid Controller Data Queue",
        0x38 => "Not Enough Resources",
        0x39 => "Controller Suspended",
        0x3a => "Controller Not Suspended",
        0x3b => "Controller Data Queue Full",
        0x70..=0x7f => "Directive Specific",
        // I/O command set specific (80h..BFh): NVM command set ...
        0x80 => "Conflicting Attributes",
        0x81 => "Invalid Protection Information",
        0x82 => "Attempted Write to Read Only Range",
        0x83 => "Command Size Limit Exceeded",
        // ... later I/O command set additions (Base 2.1 / 2.2) ...
        0x84 => "Invalid Command ID",
        0x85 => "Incompatible Namespace or Format",
        0x86 => "Fast Copy Not Possible",
        0x87 => "Overlapping I/O Range",
        0x88 => "Namespace Not Reachable",
        0x89 => "Insufficient Resources",
        0x8a => "Insufficient Program Resources",
        0x8b => "Invalid Memory Namespace",
        0x8c => "Invalid Memory Range Set",
        0x8d => "Invalid Memory Range Set Identifier",
        0x8e => "Invalid Program Data",
        0x8f => "Invalid Program Index",
        0x90 => "Invalid Program Type",
        0x91 => "Maximum Memory Ranges Exceeded",
        0x92 => "Maximum Memory Range Sets Exceeded",
        0x93 => "Maximum Programs Activated",
        0x94 => "Maximum Program Bytes Exceeded",
        0x95 => "Memory Range Set In Use",
        0x96 => "No Program",
        0x97 => "Overlapping Memory Ranges",
        0x98 => "Program Not Activated",
        0x99 => "Program In Use",
        0x9a => "Program Index Not Downloadable",
        0x9b => "Program Too Big",
        0x9c => "Successful Media Verification Read",
        // ... and Zoned Namespace command set.
        0xb8 => "Zoned Boundary Error",
        0xb9 => "Zone Is Full",
        0xba => "Zone Is Read Only",
        0xbb => "Zone Is Offline",
        0xbc => "Zone Invalid Write",
        0xbd => "Too Many Active Zones",
        0xbe => "Too Many Open Zones",
        0xbf => "Invalid Zone State Transition",
        0xc0..=0xff => "Vendor Specific",
        _ => "Reserved",
    }
}

/// Name of a media and data integrity error value (SCT 2).
const fn media_name(sc: u8) -> &'static str {
    match sc {
        0x80 => "Write Fault",
        0x81 => "Unrecovered Read Error",
        0x82 => "End-to-end Guard Check Error",
        0x83 => "End-to-end Application Tag Check Error",
        0x84 => "End-to-end Reference Tag Check Error",
        0x85 => "Compare Failure",
        0x86 => "Access Denied",
        0x87 => "Deallocated or Unwritten Logical Block",
        0x88 => "End-to-End Storage Tag Check Error",
        0xc0..=0xff => "Vendor Specific",
        _ => "Reserved",
    }
}

/// Name of a path related status value (SCT 3).
const fn path_name(sc: u8) -> &'static str {
    match sc {
        0x00 => "Internal Path Error",
        0x01 => "Asymmetric Access Persistent Loss",
        0x02 => "Asymmetric Access Inaccessible",
        0x03 => "Asymmetric Access Transition",
        0x60 => "Controller Pathing Error",
        0x70 => "Host Pathing Error",
        0x71 => "Command Aborted By Host",
        0xc0..=0xff => "Vendor Specific",
        _ => "Reserved",
    }
}

impl fmt::Display for Status {
    /// `Invalid Field in Command (sct 0x0, sc 0x02, dnr)`; "more" and
    /// "crd N" are appended when set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (sct {:#x}, sc {:#04x}",
            self.name(),
            self.sct,
            self.sc
        )?;
        if self.dnr {
            f.write_str(", dnr")?;
        }
        if self.more {
            f.write_str(", more")?;
        }
        if self.crd != 0 {
            write!(f, ", crd {}", self.crd)?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn decode_fields() {
        // 0x4002 as a raw CQE status word: phase 0, SC 01h, M set.
        let s = Status::from_cqe_status(0x4002);
        assert_eq!(s.sct, 0);
        assert_eq!(s.sc, 0x01);
        assert_eq!(s.crd, 0);
        assert!(s.more);
        assert!(!s.dnr);
        assert_eq!(s.name(), "Invalid Command Opcode");
        assert!(!s.is_success());

        // DNR + Invalid Field in Command (0x4002 in the status field,
        // as Linux reports it; 0x8004 with the phase bit).
        let s = Status::from_cqe_status(0x8004);
        assert_eq!((s.sct, s.sc, s.dnr, s.more), (0, 0x02, true, false));
        assert_eq!(s.name(), "Invalid Field in Command");
        assert_eq!(
            s.to_string(),
            "Invalid Field in Command (sct 0x0, sc 0x02, dnr)"
        );

        // Every field at once: DNR, M, CRD 2, SCT 2, SC 81h, phase 1.
        let raw = 1 << 15 | 1 << 14 | 2 << 12 | 2 << 9 | 0x81 << 1 | 1;
        let s = Status::from_cqe_status(raw);
        assert_eq!(s.sct_kind(), StatusCodeType::MediaAndDataIntegrity);
        assert_eq!(s.sc, 0x81);
        assert_eq!(s.crd, 2);
        assert!(s.more && s.dnr);
        assert_eq!(s.to_cqe_status(true), raw);
        assert_eq!(
            s.to_string(),
            "Unrecovered Read Error (sct 0x2, sc 0x81, dnr, more, crd 2)"
        );
    }

    #[test]
    fn success() {
        assert!(Status::from_cqe_status(0).is_success());
        assert!(Status::from_cqe_status(1).is_success());
        assert_eq!(Status::from_cqe_status(1), Status::SUCCESS);
        assert_eq!(Status::SUCCESS.name(), "Successful Completion");
        assert!(!Status::SUCCESS.is_retryable());
        assert_eq!(
            Status::SUCCESS.to_string(),
            "Successful Completion (sct 0x0, sc 0x00)"
        );
    }

    #[test]
    fn round_trip_every_word() {
        for raw in 0..=u16::MAX {
            let s = Status::from_cqe_status(raw);
            assert_eq!(s.to_cqe_status(raw & 1 != 0), raw);
            assert!(!s.name().is_empty());
            if s.dnr {
                assert!(!s.is_retryable());
            }
            assert_eq!(s.sct_kind().raw(), s.sct);
        }
    }

    #[test]
    fn sct_decoding() {
        assert_eq!(StatusCodeType::from_raw(0), StatusCodeType::Generic);
        assert_eq!(StatusCodeType::from_raw(1), StatusCodeType::CommandSpecific);
        assert_eq!(
            StatusCodeType::from_raw(2),
            StatusCodeType::MediaAndDataIntegrity
        );
        assert_eq!(StatusCodeType::from_raw(3), StatusCodeType::PathRelated);
        for r in 4..=6 {
            assert_eq!(StatusCodeType::from_raw(r), StatusCodeType::Reserved(r));
        }
        assert_eq!(StatusCodeType::from_raw(7), StatusCodeType::VendorSpecific);
        assert_eq!(
            StatusCodeType::from_raw(0xff),
            StatusCodeType::VendorSpecific
        );
        assert_eq!(StatusCodeType::Reserved(5).name(), "Reserved");
    }

    fn st(sct: u8, sc: u8) -> Status {
        Status {
            sct,
            sc,
            ..Status::SUCCESS
        }
    }

    #[test]
    fn names() {
        assert_eq!(st(0, 0x04).name(), "Data Transfer Error");
        assert_eq!(st(0, 0x17).name(), "Reserved");
        assert_eq!(st(0, 0x24).name(), "Admin Command Media Not Ready");
        assert_eq!(st(0, 0x25).name(), "Invalid Key Tag");
        assert_eq!(st(0, 0x2b).name(), "Reserved");
        assert_eq!(st(0, 0x7f).name(), "Reserved");
        assert_eq!(st(0, 0x80).name(), "LBA Out of Range");
        assert_eq!(st(0, 0x84).name(), "Format In Progress");
        assert_eq!(st(0, 0x86).name(), "Invalid Key Size");
        assert_eq!(st(0, 0x8a).name(), "Reserved");
        assert_eq!(st(0, 0xc0).name(), "Vendor Specific");
        assert_eq!(st(1, 0x00).name(), "Completion Queue Invalid");
        assert_eq!(st(1, 0x02).name(), "Invalid Queue Size");
        assert_eq!(st(1, 0x04).name(), "Reserved");
        assert_eq!(st(1, 0x2d).name(), "Identifier Unavailable");
        assert_eq!(st(1, 0x3b).name(), "Controller Data Queue Full");
        assert_eq!(st(1, 0x3c).name(), "Reserved");
        assert_eq!(st(1, 0x6f).name(), "Reserved");
        assert_eq!(st(1, 0x70).name(), "Directive Specific");
        assert_eq!(st(1, 0x7f).name(), "Directive Specific");
        assert_eq!(st(1, 0x9c).name(), "Successful Media Verification Read");
        assert_eq!(st(1, 0x9d).name(), "Reserved");
        assert_eq!(st(1, 0x80).name(), "Conflicting Attributes");
        assert_eq!(st(1, 0x82).name(), "Attempted Write to Read Only Range");
        assert_eq!(st(1, 0xbf).name(), "Invalid Zone State Transition");
        assert_eq!(st(2, 0x00).name(), "Reserved");
        assert_eq!(st(2, 0x80).name(), "Write Fault");
        assert_eq!(st(2, 0x87).name(), "Deallocated or Unwritten Logical Block");
        assert_eq!(st(2, 0xff).name(), "Vendor Specific");
        assert_eq!(st(3, 0x00).name(), "Internal Path Error");
        assert_eq!(st(3, 0x03).name(), "Asymmetric Access Transition");
        assert_eq!(st(3, 0x60).name(), "Controller Pathing Error");
        assert_eq!(st(3, 0x70).name(), "Host Pathing Error");
        assert_eq!(st(3, 0x71).name(), "Command Aborted By Host");
        assert_eq!(st(3, 0x72).name(), "Reserved");
        assert_eq!(st(4, 0x00).name(), "Reserved");
        assert_eq!(st(7, 0x01).name(), "Vendor Specific");
        // Every value in the defined generic range 00h..=24h except 17h
        // has a name.
        for sc in 0..=0x24u8 {
            assert_eq!(st(0, sc).name() == "Reserved", sc == 0x17, "sc {sc:#x}");
        }
        for sc in 0..=0x2du8 {
            assert_eq!(
                st(1, sc).name() == "Reserved",
                sc == 0x04 || sc == 0x17,
                "sc {sc:#x}"
            );
        }
        assert!(Status::generic(generic::NAMESPACE_NOT_READY).is(StatusCodeType::Generic, 0x82));
    }

    #[test]
    fn retry_policy() {
        for sc in [0x04, 0x21, 0x22, 0x24, 0x82] {
            assert!(st(0, sc).is_retryable(), "generic {sc:#x}");
            let mut dnr = st(0, sc);
            dnr.dnr = true;
            assert!(!dnr.is_retryable());
        }
        for sc in [0x00, 0x03, 0x60, 0x70] {
            assert!(st(3, sc).is_retryable(), "path {sc:#x}");
        }
        for (sct, sc) in [
            (0, 0x00),
            (0, 0x01),
            (0, 0x02),
            (0, 0x06),
            (0, 0x07),
            (0, 0x0b),
            (0, 0x80),
            (0, 0x83),
            (0, 0x84),
            (1, 0x01),
            (2, 0x81),
            (3, 0x01),
            (3, 0x02),
            (3, 0x71),
            (5, 0x04),
            (7, 0x04),
        ] {
            assert!(!st(sct, sc).is_retryable(), "{sct} {sc:#x}");
        }
    }
}

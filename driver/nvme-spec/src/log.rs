//! Log pages (Base 2.0 §5.16.1) and asynchronous event completions (Base
//! 2.0 §5.2.1).

use core::fmt;

use bitflags::bitflags;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::identify::{AsciiField, le128};
use crate::status::Status;

code_enum! {
    /// Log Page Identifiers (Base 2.0 Figure "Get Log Page – Log Page
    /// Identifiers" and NVM Command Set 1.0 / ZNS 1.1 I/O command set
    /// specific pages).
    pub enum LogPageId ("log page identifier") {
        SupportedLogPages = 0x00 => "Supported Log Pages",
        ErrorInformation = 0x01 => "Error Information",
        SmartHealth = 0x02 => "SMART / Health Information",
        FirmwareSlot = 0x03 => "Firmware Slot Information",
        ChangedNamespaceList = 0x04 => "Changed Namespace List",
        CommandsSupportedAndEffects = 0x05 => "Commands Supported and Effects",
        DeviceSelfTest = 0x06 => "Device Self-test",
        TelemetryHostInitiated = 0x07 => "Telemetry Host-Initiated",
        TelemetryControllerInitiated = 0x08 => "Telemetry Controller-Initiated",
        EnduranceGroupInformation = 0x09 => "Endurance Group Information",
        PredictableLatencyPerNvmSet = 0x0a => "Predictable Latency Per NVM Set",
        PredictableLatencyEventAggregate = 0x0b => "Predictable Latency Event Aggregate",
        AsymmetricNamespaceAccess = 0x0c => "Asymmetric Namespace Access",
        PersistentEventLog = 0x0d => "Persistent Event Log",
        LbaStatusInformation = 0x0e => "LBA Status Information",
        EnduranceGroupEventAggregate = 0x0f => "Endurance Group Event Aggregate",
        MediaUnitStatus = 0x10 => "Media Unit Status",
        SupportedCapacityConfigurationList = 0x11 => "Supported Capacity Configuration List",
        FeatureIdentifiersSupportedAndEffects = 0x12 => "Feature Identifiers Supported and Effects",
        NvmeMiCommandsSupportedAndEffects = 0x13 => "NVMe-MI Commands Supported and Effects",
        CommandAndFeatureLockdown = 0x14 => "Command and Feature Lockdown",
        BootPartition = 0x15 => "Boot Partition",
        RotationalMediaInformation = 0x16 => "Rotational Media Information",
        Discovery = 0x70 => "Discovery",
        ReservationNotification = 0x80 => "Reservation Notification",
        SanitizeStatus = 0x81 => "Sanitize Status",
        ChangedZoneList = 0xbf => "Changed Zone List",
    }
}

bitflags! {
    /// SMART critical warning bits (SMART / Health log byte 0).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct CriticalWarning: u8 {
        /// Available spare capacity fell below the threshold.
        const AVAILABLE_SPARE = 1 << 0;
        /// A temperature is above an over-temperature or below an
        /// under-temperature threshold.
        const TEMPERATURE = 1 << 1;
        /// NVM subsystem reliability degraded (media errors, internal
        /// errors).
        const RELIABILITY_DEGRADED = 1 << 2;
        /// All of the media has been placed in read only mode.
        const READ_ONLY = 1 << 3;
        /// The volatile memory backup device has failed.
        const VOLATILE_BACKUP_FAILED = 1 << 4;
        /// The persistent memory region has become read-only or unreliable.
        const PMR_READ_ONLY = 1 << 5;
    }
}

/// SMART / Health Information log page (LID 02h), 512 bytes (Base 2.0
/// §5.16.1.3, Figure "SMART / Health Information Log Page").
///
/// The 16-byte counters are little-endian 128-bit integers; read them with
/// the getters of the same name.
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SmartLog {
    /// Critical Warning (see [`CriticalWarning`]).
    pub critical_warning: u8,
    /// Composite Temperature (Kelvin).
    pub composite_temperature: U16,
    /// Available Spare (percent).
    pub available_spare: u8,
    /// Available Spare Threshold (percent).
    pub available_spare_threshold: u8,
    /// Percentage Used (may exceed 100).
    pub percentage_used: u8,
    /// Endurance Group Critical Warning Summary.
    pub endurance_group_critical_warning: u8,
    /// Reserved.
    pub rsvd7: [u8; 25],
    /// Data Units Read (thousands of 512-byte units).
    pub data_units_read: [u8; 16],
    /// Data Units Written (thousands of 512-byte units).
    pub data_units_written: [u8; 16],
    /// Host Read Commands.
    pub host_read_commands: [u8; 16],
    /// Host Write Commands.
    pub host_write_commands: [u8; 16],
    /// Controller Busy Time (minutes).
    pub controller_busy_time: [u8; 16],
    /// Power Cycles.
    pub power_cycles: [u8; 16],
    /// Power On Hours.
    pub power_on_hours: [u8; 16],
    /// Unsafe Shutdowns.
    pub unsafe_shutdowns: [u8; 16],
    /// Media and Data Integrity Errors.
    pub media_errors: [u8; 16],
    /// Number of Error Information Log Entries (over the life of the
    /// controller).
    pub num_err_log_entries: [u8; 16],
    /// Warning Composite Temperature Time (minutes).
    pub warning_temp_time: U32,
    /// Critical Composite Temperature Time (minutes).
    pub critical_comp_time: U32,
    /// Temperature Sensors 1..=8 (Kelvin, 0 = not implemented).
    pub temp_sensor: [U16; 8],
    /// Thermal Management Temperature 1 Transition Count.
    pub thm_temp1_trans_count: U32,
    /// Thermal Management Temperature 2 Transition Count.
    pub thm_temp2_trans_count: U32,
    /// Total Time For Thermal Management Temperature 1 (seconds).
    pub thm_temp1_total_time: U32,
    /// Total Time For Thermal Management Temperature 2 (seconds).
    pub thm_temp2_total_time: U32,
    /// Reserved.
    pub rsvd232: [u8; 280],
}

layout!(SmartLog, 512,
    critical_warning @ 0, composite_temperature @ 1, available_spare @ 3,
    available_spare_threshold @ 4, percentage_used @ 5,
    endurance_group_critical_warning @ 6, rsvd7 @ 7, data_units_read @ 32,
    data_units_written @ 48, host_read_commands @ 64, host_write_commands @ 80,
    controller_busy_time @ 96, power_cycles @ 112, power_on_hours @ 128,
    unsafe_shutdowns @ 144, media_errors @ 160, num_err_log_entries @ 176,
    warning_temp_time @ 192, critical_comp_time @ 196, temp_sensor @ 200,
    thm_temp1_trans_count @ 216, thm_temp2_trans_count @ 220,
    thm_temp1_total_time @ 224, thm_temp2_total_time @ 228, rsvd232 @ 232,
);

/// Kelvin to degrees Celsius (the spec's conversion: K − 273).
const fn kelvin_to_celsius(k: u16) -> i32 {
    k as i32 - 273
}

impl SmartLog {
    /// Size of the log page in bytes.
    pub const SIZE: usize = 512;
    /// Bytes per "data unit" (1000 × 512 bytes).
    pub const DATA_UNIT_BYTES: u128 = 512_000;

    /// Critical warning flags (unknown bits retained).
    #[must_use]
    pub const fn critical_warning(&self) -> CriticalWarning {
        CriticalWarning::from_bits_retain(self.critical_warning)
    }

    /// Composite temperature in degrees Celsius.
    #[must_use]
    pub const fn composite_temperature_celsius(&self) -> i32 {
        kelvin_to_celsius(self.composite_temperature.get())
    }

    /// Temperature sensor `n` (1..=8) in degrees Celsius; `None` if the
    /// index is out of range or the sensor is not implemented (reads 0).
    #[must_use]
    pub fn temp_sensor_celsius(&self, n: usize) -> Option<i32> {
        let k = self.temp_sensor.get(n.checked_sub(1)?)?.get();
        if k == 0 {
            None
        } else {
            Some(kelvin_to_celsius(k))
        }
    }

    /// Data units read (thousands of 512-byte units).
    #[must_use]
    pub const fn data_units_read(&self) -> u128 {
        le128(&self.data_units_read)
    }

    /// Data units written (thousands of 512-byte units).
    #[must_use]
    pub const fn data_units_written(&self) -> u128 {
        le128(&self.data_units_written)
    }

    /// Approximate bytes read (data units × 512 000, saturating).
    #[must_use]
    pub const fn bytes_read(&self) -> u128 {
        self.data_units_read().saturating_mul(Self::DATA_UNIT_BYTES)
    }

    /// Approximate bytes written (data units × 512 000, saturating).
    #[must_use]
    pub const fn bytes_written(&self) -> u128 {
        self.data_units_written()
            .saturating_mul(Self::DATA_UNIT_BYTES)
    }

    /// Host read commands completed.
    #[must_use]
    pub const fn host_read_commands(&self) -> u128 {
        le128(&self.host_read_commands)
    }

    /// Host write commands completed.
    #[must_use]
    pub const fn host_write_commands(&self) -> u128 {
        le128(&self.host_write_commands)
    }

    /// Controller busy time in minutes.
    #[must_use]
    pub const fn controller_busy_time(&self) -> u128 {
        le128(&self.controller_busy_time)
    }

    /// Power cycles.
    #[must_use]
    pub const fn power_cycles(&self) -> u128 {
        le128(&self.power_cycles)
    }

    /// Power on hours.
    #[must_use]
    pub const fn power_on_hours(&self) -> u128 {
        le128(&self.power_on_hours)
    }

    /// Unsafe shutdowns.
    #[must_use]
    pub const fn unsafe_shutdowns(&self) -> u128 {
        le128(&self.unsafe_shutdowns)
    }

    /// Media and data integrity errors.
    #[must_use]
    pub const fn media_errors(&self) -> u128 {
        le128(&self.media_errors)
    }

    /// Number of error information log entries over the controller's life.
    #[must_use]
    pub const fn num_err_log_entries(&self) -> u128 {
        le128(&self.num_err_log_entries)
    }
}

impl fmt::Debug for SmartLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmartLog")
            .field("critical_warning", &self.critical_warning())
            .field("temperature_c", &self.composite_temperature_celsius())
            .field("available_spare", &self.available_spare)
            .field("available_spare_threshold", &self.available_spare_threshold)
            .field("percentage_used", &self.percentage_used)
            .field("data_units_read", &self.data_units_read())
            .field("data_units_written", &self.data_units_written())
            .field("host_read_commands", &self.host_read_commands())
            .field("host_write_commands", &self.host_write_commands())
            .field("power_cycles", &self.power_cycles())
            .field("power_on_hours", &self.power_on_hours())
            .field("unsafe_shutdowns", &self.unsafe_shutdowns())
            .field("media_errors", &self.media_errors())
            .field("num_err_log_entries", &self.num_err_log_entries())
            .finish_non_exhaustive()
    }
}

/// One Error Information log entry (LID 01h), 64 bytes (Base 2.0
/// §5.16.1.2, Figure "Error Information Log Entry Data Structure").
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ErrorLogEntry {
    /// Error Count: unique, incrementing identifier (0 = invalid entry).
    pub error_count: U64,
    /// Submission Queue ID of the failed command (0xffff: not specific).
    pub sqid: U16,
    /// Command ID of the failed command (0xffff: not specific).
    pub cid: U16,
    /// Status field of the failed command, same layout as the CQE status
    /// word (bit 0 phase tag, bits 15:1 status).
    pub status_field: U16,
    /// Parameter Error Location: bits 7:0 byte, bits 10:8 bit within the
    /// command (0xffff: not specific).
    pub parameter_error_location: U16,
    /// First LBA that experienced the error.
    pub lba: U64,
    /// Namespace of the error (0xffff_ffff: not specific).
    pub nsid: U32,
    /// Vendor Specific Information Available (log page id, 0: none).
    pub vendor_specific: u8,
    /// Transport Type.
    pub trtype: u8,
    /// Reserved.
    pub rsvd30: [u8; 2],
    /// Command Specific Information.
    pub cmd_specific_info: U64,
    /// Transport Type Specific Information.
    pub trtype_specific: U16,
    /// Reserved.
    pub rsvd42: [u8; 22],
}

layout!(ErrorLogEntry, 64,
    error_count @ 0, sqid @ 8, cid @ 10, status_field @ 12,
    parameter_error_location @ 14, lba @ 16, nsid @ 24, vendor_specific @ 28,
    trtype @ 29, rsvd30 @ 30, cmd_specific_info @ 32, trtype_specific @ 40,
    rsvd42 @ 42,
);

impl ErrorLogEntry {
    /// Size of one entry in bytes.
    pub const SIZE: usize = 64;

    /// The decoded status of the failed command.
    #[must_use]
    pub const fn status(&self) -> Status {
        Status::from_cqe_status(self.status_field.get())
    }

    /// Whether this entry holds an error (error count non-zero).
    #[must_use]
    pub const fn is_valid(&self) -> bool {
        self.error_count.get() != 0
    }
}

/// Firmware Slot Information log page (LID 03h), 512 bytes (Base 2.0
/// §5.16.1.4, Figure "Firmware Slot Information Log Page").
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct FirmwareSlotLog {
    /// Active Firmware Info: bits 2:0 active slot, bits 6:4 slot activated
    /// at the next reset (0: not indicated).
    pub afi: u8,
    /// Reserved.
    pub rsvd1: [u8; 7],
    /// Firmware Revision for Slot 1..=7 (ASCII; all zero when empty).
    pub frs: [[u8; 8]; 7],
    /// Reserved.
    pub rsvd64: [u8; 448],
}

layout!(FirmwareSlotLog, 512, afi @ 0, rsvd1 @ 1, frs @ 8, rsvd64 @ 64);

impl FirmwareSlotLog {
    /// The slot (1..=7) the running firmware was loaded from; `None` for 0
    /// (invalid).
    #[must_use]
    pub(crate) const fn active_slot(&self) -> Option<u8> {
        match self.afi & 0x7 {
            0 => None,
            s => Some(s),
        }
    }

    /// The slot that will be activated at the next reset, if indicated.
    #[must_use]
    pub const fn next_slot(&self) -> Option<u8> {
        match (self.afi >> 4) & 0x7 {
            0 => None,
            s => Some(s),
        }
    }

    /// Firmware revision in `slot` (1..=7); `None` for an invalid slot
    /// number or an empty slot.
    #[must_use]
    pub(crate) fn slot_revision(&self, slot: u8) -> Option<AsciiField<'_>> {
        let i = usize::from(slot).checked_sub(1)?;
        let f = AsciiField::new(self.frs.get(i)?);
        if f.is_empty() { None } else { Some(f) }
    }
}

impl fmt::Debug for FirmwareSlotLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("FirmwareSlotLog");
        d.field("active_slot", &self.active_slot());
        d.field("next_slot", &self.next_slot());
        let slots = [1u8, 2, 3, 4, 5, 6, 7].map(|s| self.slot_revision(s));
        d.field("slots", &slots);
        d.finish()
    }
}

/// Asynchronous Event Type (AER completion DW0 bits 2:0; Base 2.0 Figure
/// "Asynchronous Event Request – Completion Queue Entry Dword 0").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AsyncEventType {
    /// 000b: Error status.
    Error,
    /// 001b: SMART / Health status.
    SmartHealth,
    /// 010b: Notice.
    Notice,
    /// 110b: I/O Command Set specific status.
    IoCommandSetSpecific,
    /// 111b: Vendor specific.
    VendorSpecific,
    /// 011b..101b: reserved.
    Reserved(u8),
}

impl AsyncEventType {
    /// Decodes the low 3 bits.
    #[must_use]
    pub const fn from_raw(raw: u8) -> AsyncEventType {
        match raw & 0x7 {
            0 => Self::Error,
            1 => Self::SmartHealth,
            2 => Self::Notice,
            6 => Self::IoCommandSetSpecific,
            7 => Self::VendorSpecific,
            r => Self::Reserved(r),
        }
    }

    /// The raw 3-bit value.
    #[must_use]
    pub const fn raw(self) -> u8 {
        match self {
            Self::Error => 0,
            Self::SmartHealth => 1,
            Self::Notice => 2,
            Self::IoCommandSetSpecific => 6,
            Self::VendorSpecific => 7,
            Self::Reserved(r) => r & 0x7,
        }
    }
}

/// A decoded Asynchronous Event Request completion (CQE DW0): type in bits
/// 2:0, event information in bits 15:8, associated log page in bits 23:16.
/// The host clears the event by reading that log page (without RAE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AsyncEvent {
    /// Event type.
    pub event_type: AsyncEventType,
    /// Event information (meaning depends on the type).
    pub info: u8,
    /// Log page to read to learn more / clear the event.
    pub log_page: u8,
}

impl AsyncEvent {
    /// Decodes CQE DW0 of an Asynchronous Event Request completion.
    #[must_use]
    pub const fn from_dw0(dw0: u32) -> AsyncEvent {
        AsyncEvent {
            event_type: AsyncEventType::from_raw((dw0 & 0x7) as u8),
            info: (dw0 >> 8) as u8,
            log_page: (dw0 >> 16) as u8,
        }
    }

    /// Encodes back into DW0.
    #[must_use]
    pub const fn to_dw0(self) -> u32 {
        self.event_type.raw() as u32 | (self.info as u32) << 8 | (self.log_page as u32) << 16
    }

    /// The spec's description of the event information value (Base 2.0
    /// Figures "Asynchronous Event Information – Error Status", "– SMART /
    /// Health Status", "– Notice", "– I/O Command Specific Status").
    #[must_use]
    pub const fn description(&self) -> &'static str {
        match self.event_type {
            AsyncEventType::Error => match self.info {
                0x00 => "Write to Invalid Doorbell Register",
                0x01 => "Invalid Doorbell Write Value",
                0x02 => "Diagnostic Failure",
                0x03 => "Persistent Internal Error",
                0x04 => "Transient Internal Error",
                0x05 => "Firmware Image Load Error",
                _ => "Reserved error event",
            },
            AsyncEventType::SmartHealth => match self.info {
                0x00 => "NVM subsystem Reliability",
                0x01 => "Temperature Threshold",
                0x02 => "Spare Below Threshold",
                _ => "Reserved SMART / Health event",
            },
            AsyncEventType::Notice => match self.info {
                0x00 => "Namespace Attribute Changed",
                0x01 => "Firmware Activation Starting",
                0x02 => "Telemetry Log Changed",
                0x03 => "Asymmetric Namespace Access Change",
                0x04 => "Predictable Latency Event Aggregate Log Change",
                0x05 => "LBA Status Information Alert",
                0x06 => "Endurance Group Event Aggregate Log Page Change",
                0x07 => "Normal NVM Subsystem Shutdown",
                0xf0 => "Discovery Log Page Change",
                _ => "Reserved notice",
            },
            AsyncEventType::IoCommandSetSpecific => match self.info {
                0x00 => "Reservation Log Page Available",
                0x01 => "Sanitize Operation Completed",
                0x02 => "Sanitize Operation Completed With Unexpected Deallocation",
                _ => "Reserved I/O command set event",
            },
            AsyncEventType::VendorSpecific => "Vendor specific event",
            AsyncEventType::Reserved(_) => "Reserved event type",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;
    use std::string::ToString;
    use zerocopy::FromZeros;

    #[test]
    fn log_page_ids() {
        assert_eq!(LogPageId::SmartHealth as u8, 0x02);
        assert_eq!(LogPageId::PersistentEventLog as u8, 0x0d);
        assert_eq!(LogPageId::try_from(0x81), Ok(LogPageId::SanitizeStatus));
        assert_eq!(
            LogPageId::try_from(0x80),
            Ok(LogPageId::ReservationNotification)
        );
        assert!(LogPageId::try_from(0x17).is_err());
        assert_eq!(
            LogPageId::SmartHealth.to_string(),
            "SMART / Health Information"
        );
        for &id in LogPageId::ALL {
            assert_eq!(LogPageId::from_raw(id.raw()), Some(id));
        }
    }

    #[test]
    fn smart_log() {
        let mut b = [0u8; 512];
        b[0] = 0x05;
        b[1..3].copy_from_slice(&310u16.to_le_bytes());
        b[3] = 100;
        b[4] = 10;
        b[5] = 3;
        b[32..48].copy_from_slice(&1234u128.to_le_bytes());
        b[48..64].copy_from_slice(&(u128::MAX).to_le_bytes());
        b[64..80].copy_from_slice(&(1u128 << 70).to_le_bytes());
        b[80..96].copy_from_slice(&7u128.to_le_bytes());
        b[96..112].copy_from_slice(&8u128.to_le_bytes());
        b[112..128].copy_from_slice(&9u128.to_le_bytes());
        b[128..144].copy_from_slice(&10u128.to_le_bytes());
        b[144..160].copy_from_slice(&11u128.to_le_bytes());
        b[160..176].copy_from_slice(&12u128.to_le_bytes());
        b[176..192].copy_from_slice(&13u128.to_le_bytes());
        b[192..196].copy_from_slice(&14u32.to_le_bytes());
        b[196..200].copy_from_slice(&15u32.to_le_bytes());
        b[200..202].copy_from_slice(&300u16.to_le_bytes());
        b[214..216].copy_from_slice(&250u16.to_le_bytes());
        b[216..220].copy_from_slice(&16u32.to_le_bytes());
        b[228..232].copy_from_slice(&17u32.to_le_bytes());
        let s = SmartLog::read_from_bytes(&b[..]).expect("512 bytes");
        assert_eq!(
            s.critical_warning(),
            CriticalWarning::AVAILABLE_SPARE | CriticalWarning::RELIABILITY_DEGRADED
        );
        assert_eq!(s.composite_temperature.get(), 310);
        assert_eq!(s.composite_temperature_celsius(), 37);
        assert_eq!(s.available_spare, 100);
        assert_eq!(s.available_spare_threshold, 10);
        assert_eq!(s.percentage_used, 3);
        assert_eq!(s.data_units_read(), 1234);
        assert_eq!(s.bytes_read(), 1234 * 512_000);
        assert_eq!(s.data_units_written(), u128::MAX);
        assert_eq!(s.bytes_written(), u128::MAX);
        assert_eq!(s.host_read_commands(), 1 << 70);
        assert_eq!(s.host_write_commands(), 7);
        assert_eq!(s.controller_busy_time(), 8);
        assert_eq!(s.power_cycles(), 9);
        assert_eq!(s.power_on_hours(), 10);
        assert_eq!(s.unsafe_shutdowns(), 11);
        assert_eq!(s.media_errors(), 12);
        assert_eq!(s.num_err_log_entries(), 13);
        assert_eq!(s.warning_temp_time.get(), 14);
        assert_eq!(s.critical_comp_time.get(), 15);
        assert_eq!(s.temp_sensor_celsius(1), Some(27));
        assert_eq!(s.temp_sensor_celsius(2), None);
        assert_eq!(s.temp_sensor_celsius(8), Some(-23));
        assert_eq!(s.temp_sensor_celsius(0), None);
        assert_eq!(s.temp_sensor_celsius(9), None);
        assert_eq!(s.thm_temp1_trans_count.get(), 16);
        assert_eq!(s.thm_temp2_total_time.get(), 17);
        assert!(format!("{s:?}").contains("temperature_c: 37"));

        let z = SmartLog::new_zeroed();
        assert_eq!(z.composite_temperature_celsius(), -273);
        let mut hot = z;
        hot.composite_temperature = U16::new(u16::MAX);
        assert_eq!(hot.composite_temperature_celsius(), 65535 - 273);
    }

    #[test]
    fn error_log_entry() {
        let mut b = [0u8; 64];
        b[0..8].copy_from_slice(&42u64.to_le_bytes());
        b[8..10].copy_from_slice(&1u16.to_le_bytes());
        b[10..12].copy_from_slice(&0x77u16.to_le_bytes());
        // DNR, SCT 0, SC 80h (LBA Out of Range), phase 1.
        b[12..14].copy_from_slice(&(0x8000u16 | 0x80 << 1 | 1).to_le_bytes());
        b[14..16].copy_from_slice(&0x0128u16.to_le_bytes());
        b[16..24].copy_from_slice(&0xdead_beefu64.to_le_bytes());
        b[24..28].copy_from_slice(&1u32.to_le_bytes());
        let e = ErrorLogEntry::read_from_bytes(&b[..]).expect("64 bytes");
        assert!(e.is_valid());
        assert_eq!(e.error_count.get(), 42);
        assert_eq!(e.sqid.get(), 1);
        assert_eq!(e.cid.get(), 0x77);
        let st = e.status();
        assert_eq!(st.name(), "LBA Out of Range");
        assert!(st.dnr);
        assert_eq!(e.parameter_error_location.get(), 0x0128);
        assert_eq!(e.lba.get(), 0xdead_beef);
        assert_eq!(e.nsid.get(), 1);
        assert!(!ErrorLogEntry::default().is_valid());
    }

    #[test]
    fn firmware_slot_log() {
        let mut l = FirmwareSlotLog::new_zeroed();
        assert_eq!(l.active_slot(), None);
        assert_eq!(l.next_slot(), None);
        l.afi = 0x21;
        l.frs[0] = *b"1.0.0   ";
        l.frs[1] = *b"2.0.0\0\0\0";
        assert_eq!(l.active_slot(), Some(1));
        assert_eq!(l.next_slot(), Some(2));
        assert_eq!(l.slot_revision(1).expect("slot 1").to_string(), "1.0.0");
        assert_eq!(l.slot_revision(2).expect("slot 2").to_string(), "2.0.0");
        assert_eq!(l.slot_revision(3), None);
        assert_eq!(l.slot_revision(0), None);
        assert_eq!(l.slot_revision(8), None);
        assert_eq!(l.slot_revision(255), None);
        l.afi = 0xff;
        assert_eq!(l.active_slot(), Some(7));
        assert_eq!(l.next_slot(), Some(7));
        assert!(format!("{l:?}").contains("1.0.0"));
    }

    #[test]
    fn async_events() {
        // Namespace Attribute Changed: type Notice, info 0, log page 04h.
        let e = AsyncEvent::from_dw0(0x0004_0002);
        assert_eq!(e.event_type, AsyncEventType::Notice);
        assert_eq!(e.info, 0);
        assert_eq!(e.log_page, LogPageId::ChangedNamespaceList as u8);
        assert_eq!(e.description(), "Namespace Attribute Changed");
        assert_eq!(e.to_dw0(), 0x0004_0002);
        // Temperature threshold: SMART, info 1, log page 02h.
        let e = AsyncEvent::from_dw0(0x0002_0101);
        assert_eq!(e.event_type, AsyncEventType::SmartHealth);
        assert_eq!(e.description(), "Temperature Threshold");
        let e = AsyncEvent::from_dw0(0x0081_0106);
        assert_eq!(e.event_type, AsyncEventType::IoCommandSetSpecific);
        assert_eq!(e.description(), "Sanitize Operation Completed");
        assert_eq!(
            AsyncEvent::from_dw0(0x0001_0100).description(),
            "Invalid Doorbell Write Value"
        );
        assert_eq!(
            AsyncEvent::from_dw0(3).event_type,
            AsyncEventType::Reserved(3)
        );
        for raw in 0..=u8::MAX {
            let t = AsyncEventType::from_raw(raw);
            assert_eq!(t.raw(), raw & 7);
        }
        let e = AsyncEvent::from_dw0(u32::MAX);
        assert_eq!(e.event_type, AsyncEventType::VendorSpecific);
        assert_eq!(e.to_dw0(), 0x00ff_ff07);
    }
}

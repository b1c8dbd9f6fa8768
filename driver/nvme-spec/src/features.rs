//! Feature identifiers and feature value encoders (Base 2.0 §5.27.1,
//! Figure "Feature Identifiers", and NVM Command Set 1.0 §4.1.3).

use bitflags::bitflags;

use crate::error::RangeError;

code_enum! {
    /// Feature Identifiers (Base 2.0 Figure "Set Features – Feature
    /// Identifiers" and NVM Command Set 1.0 "Feature Identifiers – NVM
    /// Command Set Specific").
    pub enum FeatureId ("feature identifier") {
        Arbitration = 0x01 => "Arbitration",
        PowerManagement = 0x02 => "Power Management",
        LbaRangeType = 0x03 => "LBA Range Type",
        TemperatureThreshold = 0x04 => "Temperature Threshold",
        ErrorRecovery = 0x05 => "Error Recovery",
        VolatileWriteCache = 0x06 => "Volatile Write Cache",
        NumberOfQueues = 0x07 => "Number of Queues",
        InterruptCoalescing = 0x08 => "Interrupt Coalescing",
        InterruptVectorConfiguration = 0x09 => "Interrupt Vector Configuration",
        WriteAtomicityNormal = 0x0a => "Write Atomicity Normal",
        AsyncEventConfiguration = 0x0b => "Asynchronous Event Configuration",
        AutonomousPowerStateTransition = 0x0c => "Autonomous Power State Transition",
        HostMemoryBuffer = 0x0d => "Host Memory Buffer",
        Timestamp = 0x0e => "Timestamp",
        KeepAliveTimer = 0x0f => "Keep Alive Timer",
        HostControlledThermalManagement = 0x10 => "Host Controlled Thermal Management",
        NonOperationalPowerStateConfig = 0x11 => "Non-Operational Power State Config",
        ReadRecoveryLevelConfig = 0x12 => "Read Recovery Level Config",
        PredictableLatencyModeConfig = 0x13 => "Predictable Latency Mode Config",
        PredictableLatencyModeWindow = 0x14 => "Predictable Latency Mode Window",
        LbaStatusInformationAttributes = 0x15 => "LBA Status Information Attributes",
        HostBehaviorSupport = 0x16 => "Host Behavior Support",
        SanitizeConfig = 0x17 => "Sanitize Config",
        EnduranceGroupEventConfiguration = 0x18 => "Endurance Group Event Configuration",
        IoCommandSetProfile = 0x19 => "I/O Command Set Profile",
        SpinupControl = 0x1a => "Spinup Control",
        EnhancedControllerMetadata = 0x7d => "Enhanced Controller Metadata",
        ControllerMetadata = 0x7e => "Controller Metadata",
        NamespaceMetadata = 0x7f => "Namespace Metadata",
        SoftwareProgressMarker = 0x80 => "Software Progress Marker",
        HostIdentifier = 0x81 => "Host Identifier",
        ReservationNotificationMask = 0x82 => "Reservation Notification Mask",
        ReservationPersistence = 0x83 => "Reservation Persistence",
        NamespaceWriteProtectionConfig = 0x84 => "Namespace Write Protection Config",
    }
}

/// Get Features SEL field (CDW10 bits 10:8; Base 2.0 Figure "Get Features
/// – Select").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum FeatureSelect {
    /// 000b: current value.
    #[default]
    Current = 0,
    /// 001b: default value.
    Default = 1,
    /// 010b: saved value.
    Saved = 2,
    /// 011b: supported capabilities (DW0 bit 0 saveable, bit 1 namespace
    /// specific, bit 2 changeable).
    SupportedCapabilities = 3,
}

/// Number of Queues feature (FID 07h, Base 2.0 §5.27.1.5), as real queue
/// counts. Both counts exclude the admin queue pair.
///
/// The counts are `u32` because a controller may grant 65536 queues
/// (0's based 0xffff), which does not fit in `u16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NumberOfQueues {
    /// I/O submission queues.
    pub sq: u32,
    /// I/O completion queues.
    pub cq: u32,
}

impl NumberOfQueues {
    /// Largest count that may be requested (the 0's based value 65535 is
    /// invalid in Set Features).
    pub const MAX_REQUEST: u32 = 65535;

    /// Set Features CDW11: NSQR bits 15:0, NCQR bits 31:16, both 0's based.
    ///
    /// # Errors
    ///
    /// A count of 0 or above 65535.
    pub const fn to_cdw11(&self) -> Result<u32, RangeError> {
        if let Err(e) = RangeError::check(
            "I/O submission queue count",
            self.sq as u64,
            1,
            Self::MAX_REQUEST as u64,
        ) {
            return Err(e);
        }
        if let Err(e) = RangeError::check(
            "I/O completion queue count",
            self.cq as u64,
            1,
            Self::MAX_REQUEST as u64,
        ) {
            return Err(e);
        }
        Ok((self.sq - 1) | (self.cq - 1) << 16)
    }

    /// Decodes the completion DW0 of Set/Get Features: NSQA bits 15:0,
    /// NCQA bits 31:16, both 0's based (so each count is 1..=65536).
    #[must_use]
    pub const fn from_dw0(dw0: u32) -> NumberOfQueues {
        NumberOfQueues {
            sq: (dw0 & 0xffff) + 1,
            cq: (dw0 >> 16) + 1,
        }
    }
}

/// Interrupt Coalescing feature (FID 08h, Base 2.0 §5.27.1.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct InterruptCoalescing {
    /// THR: aggregation threshold, 0's based number of completions.
    pub threshold: u8,
    /// TIME: aggregation time in 100 µs units (0: no delay).
    pub time_100us: u8,
}

impl InterruptCoalescing {
    /// CDW11: THR bits 7:0, TIME bits 15:8.
    #[must_use]
    pub const fn to_cdw11(&self) -> u32 {
        self.threshold as u32 | (self.time_100us as u32) << 8
    }

    /// Decodes CDW11 / completion DW0.
    #[must_use]
    pub const fn from_dw0(dw0: u32) -> InterruptCoalescing {
        InterruptCoalescing {
            threshold: dw0 as u8,
            time_100us: (dw0 >> 8) as u8,
        }
    }
}

/// Arbitration feature (FID 01h, Base 2.0 §5.27.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Arbitration {
    /// AB: arbitration burst, log2 of the number of commands (7: no limit).
    pub burst: u8,
    /// LPW: low priority weight (0's based).
    pub low_weight: u8,
    /// MPW: medium priority weight (0's based).
    pub medium_weight: u8,
    /// HPW: high priority weight (0's based).
    pub high_weight: u8,
}

impl Arbitration {
    /// CDW11: AB bits 2:0, LPW 15:8, MPW 23:16, HPW 31:24.
    #[must_use]
    pub const fn to_cdw11(&self) -> u32 {
        (self.burst & 0x7) as u32
            | (self.low_weight as u32) << 8
            | (self.medium_weight as u32) << 16
            | (self.high_weight as u32) << 24
    }

    /// Decodes CDW11 / completion DW0.
    #[must_use]
    pub const fn from_dw0(dw0: u32) -> Arbitration {
        Arbitration {
            burst: (dw0 & 0x7) as u8,
            low_weight: (dw0 >> 8) as u8,
            medium_weight: (dw0 >> 16) as u8,
            high_weight: (dw0 >> 24) as u8,
        }
    }
}

bitflags! {
    /// Asynchronous Event Configuration (FID 0Bh) CDW11 bits.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct AsyncEventConfig: u32 {
        /// SMART critical warning: available spare.
        const SMART_SPARE = 1 << 0;
        /// SMART critical warning: temperature.
        const SMART_TEMPERATURE = 1 << 1;
        /// SMART critical warning: reliability degraded.
        const SMART_RELIABILITY = 1 << 2;
        /// SMART critical warning: read only.
        const SMART_READ_ONLY = 1 << 3;
        /// SMART critical warning: volatile memory backup.
        const SMART_VOLATILE_BACKUP = 1 << 4;
        /// SMART critical warning: persistent memory region.
        const SMART_PMR = 1 << 5;
        /// Namespace Attribute notices.
        const NAMESPACE_ATTRIBUTE = 1 << 8;
        /// Firmware Activation notices.
        const FIRMWARE_ACTIVATION = 1 << 9;
        /// Telemetry Log notices.
        const TELEMETRY_LOG = 1 << 10;
        /// ANA Change notices.
        const ANA_CHANGE = 1 << 11;
        /// Predictable Latency Event Aggregate Log Change notices.
        const PLEA_CHANGE = 1 << 12;
        /// LBA Status Information notices.
        const LBA_STATUS_INFO = 1 << 13;
        /// Endurance Group Event Aggregate Log Change notices.
        const EGEA_CHANGE = 1 << 14;
        /// Normal NVM Subsystem Shutdown notices.
        const NORMAL_SUBSYSTEM_SHUTDOWN = 1 << 15;
        /// Zone Descriptor Changed notices (ZNS).
        const ZONE_DESCRIPTOR_CHANGED = 1 << 27;
        /// Discovery Log Page Change notices (fabrics).
        const DISCOVERY_LOG_CHANGE = 1 << 31;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn feature_ids() {
        assert_eq!(FeatureId::NumberOfQueues as u8, 0x07);
        assert_eq!(FeatureId::try_from(0x0f), Ok(FeatureId::KeepAliveTimer));
        assert_eq!(
            FeatureId::try_from(0x83),
            Ok(FeatureId::ReservationPersistence)
        );
        assert!(FeatureId::try_from(0x00).is_err());
        assert!(FeatureId::try_from(0x1b).is_err());
        assert!(FeatureId::try_from(0xc0).is_err());
        assert_eq!(FeatureId::NumberOfQueues.name(), "Number of Queues");
        assert_eq!(
            FeatureId::try_from(0xee).unwrap_err().to_string(),
            "unknown feature identifier 0xee"
        );
        for &f in FeatureId::ALL {
            assert_eq!(FeatureId::from_raw(u8::from(f)), Some(f));
        }
    }

    #[test]
    fn number_of_queues() {
        let q = NumberOfQueues { sq: 4, cq: 4 };
        assert_eq!(q.to_cdw11(), Ok(0x0003_0003));
        let q = NumberOfQueues { sq: 1, cq: 65535 };
        assert_eq!(q.to_cdw11(), Ok(0xfffe_0000));
        assert!(NumberOfQueues { sq: 0, cq: 1 }.to_cdw11().is_err());
        assert!(NumberOfQueues { sq: 1, cq: 0 }.to_cdw11().is_err());
        assert!(NumberOfQueues { sq: 65536, cq: 1 }.to_cdw11().is_err());
        assert!(
            NumberOfQueues {
                sq: 1,
                cq: u32::MAX
            }
            .to_cdw11()
            .is_err()
        );

        // QEMU with max_ioqpairs=64 answers NSQA = NCQA = 63.
        assert_eq!(
            NumberOfQueues::from_dw0(0x003f_003f),
            NumberOfQueues { sq: 64, cq: 64 }
        );
        assert_eq!(NumberOfQueues::from_dw0(0), NumberOfQueues { sq: 1, cq: 1 });
        assert_eq!(
            NumberOfQueues::from_dw0(u32::MAX),
            NumberOfQueues {
                sq: 65536,
                cq: 65536
            }
        );
        assert_eq!(
            NumberOfQueues::from_dw0(0x0001_0003),
            NumberOfQueues { sq: 4, cq: 2 }
        );
    }

    #[test]
    fn encoders() {
        let ic = InterruptCoalescing {
            threshold: 7,
            time_100us: 2,
        };
        assert_eq!(ic.to_cdw11(), 0x0207);
        assert_eq!(InterruptCoalescing::from_dw0(0x0207), ic);
        let a = Arbitration {
            burst: 0xff,
            low_weight: 1,
            medium_weight: 2,
            high_weight: 3,
        };
        assert_eq!(a.to_cdw11(), 0x0302_0107);
        assert_eq!(
            Arbitration::from_dw0(0x0302_0107),
            Arbitration { burst: 7, ..a }
        );
        let aec = AsyncEventConfig::SMART_SPARE
            | AsyncEventConfig::SMART_TEMPERATURE
            | AsyncEventConfig::NAMESPACE_ATTRIBUTE;
        assert_eq!(aec.bits(), 0x103);
        assert_eq!(FeatureSelect::SupportedCapabilities as u8, 3);
        assert_eq!(FeatureSelect::default(), FeatureSelect::Current);
    }
}

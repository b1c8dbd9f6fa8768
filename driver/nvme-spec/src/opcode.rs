//! Command opcodes: Admin Command Set (Base 2.0 §5, Figure "Opcodes for
//! Admin Commands") and NVM Command Set I/O commands (NVM Command Set 1.0
//! §3, Figure "Opcodes for NVM Commands").

code_enum! {
    /// Admin command opcodes (Base 2.0 Figure "Opcodes for Admin Commands").
    pub enum AdminOpcode ("admin opcode") {
        DeleteIoSq = 0x00 => "Delete I/O Submission Queue",
        CreateIoSq = 0x01 => "Create I/O Submission Queue",
        GetLogPage = 0x02 => "Get Log Page",
        DeleteIoCq = 0x04 => "Delete I/O Completion Queue",
        CreateIoCq = 0x05 => "Create I/O Completion Queue",
        Identify = 0x06 => "Identify",
        Abort = 0x08 => "Abort",
        SetFeatures = 0x09 => "Set Features",
        GetFeatures = 0x0a => "Get Features",
        AsyncEventRequest = 0x0c => "Asynchronous Event Request",
        NamespaceManagement = 0x0d => "Namespace Management",
        FirmwareCommit = 0x10 => "Firmware Commit",
        FirmwareImageDownload = 0x11 => "Firmware Image Download",
        DeviceSelfTest = 0x14 => "Device Self-test",
        NamespaceAttachment = 0x15 => "Namespace Attachment",
        KeepAlive = 0x18 => "Keep Alive",
        DirectiveSend = 0x19 => "Directive Send",
        DirectiveReceive = 0x1a => "Directive Receive",
        VirtualizationManagement = 0x1c => "Virtualization Management",
        NvmeMiSend = 0x1d => "NVMe-MI Send",
        NvmeMiReceive = 0x1e => "NVMe-MI Receive",
        CapacityManagement = 0x20 => "Capacity Management",
        Lockdown = 0x24 => "Lockdown",
        DoorbellBufferConfig = 0x7c => "Doorbell Buffer Config",
        FabricsCommands = 0x7f => "Fabrics Commands",
        FormatNvm = 0x80 => "Format NVM",
        SecuritySend = 0x81 => "Security Send",
        SecurityReceive = 0x82 => "Security Receive",
        Sanitize = 0x84 => "Sanitize",
        GetLbaStatus = 0x86 => "Get LBA Status",
    }
}

impl AdminOpcode {}

code_enum! {
    /// NVM command set I/O opcodes (NVM Command Set 1.0 Figure "Opcodes for
    /// NVM Commands").
    pub enum NvmOpcode ("NVM opcode") {
        Flush = 0x00 => "Flush",
        Write = 0x01 => "Write",
        Read = 0x02 => "Read",
        WriteUncorrectable = 0x04 => "Write Uncorrectable",
        Compare = 0x05 => "Compare",
        WriteZeroes = 0x08 => "Write Zeroes",
        DatasetManagement = 0x09 => "Dataset Management",
        Verify = 0x0c => "Verify",
        ReservationRegister = 0x0d => "Reservation Register",
        ReservationReport = 0x0e => "Reservation Report",
        ReservationAcquire = 0x11 => "Reservation Acquire",
        ReservationRelease = 0x15 => "Reservation Release",
        Copy = 0x19 => "Copy",
    }
}

impl NvmOpcode {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn admin_round_trip() {
        for &op in AdminOpcode::ALL {
            assert_eq!(AdminOpcode::try_from(op as u8), Ok(op));
            assert_eq!(u8::from(op), op.raw());
        }
        assert_eq!(AdminOpcode::ALL.len(), 30);
        let mut defined = 0;
        for raw in 0..=u8::MAX {
            match AdminOpcode::try_from(raw) {
                Ok(op) => {
                    defined += 1;
                    assert_eq!(op as u8, raw);
                }
                Err(e) => {
                    assert_eq!(e.value, raw);
                    assert_eq!(e.kind, "admin opcode");
                }
            }
        }
        assert_eq!(defined, AdminOpcode::ALL.len());
        assert_eq!(AdminOpcode::Identify as u8, 0x06);
        assert_eq!(AdminOpcode::DoorbellBufferConfig as u8, 0x7c);
        assert_eq!(AdminOpcode::GetLbaStatus as u8, 0x86);
        assert_eq!(AdminOpcode::Identify.name(), "Identify");
        assert_eq!(AdminOpcode::KeepAlive.to_string(), "Keep Alive");
        assert_eq!(
            AdminOpcode::try_from(0x03).unwrap_err().to_string(),
            "unknown admin opcode 0x03"
        );
        // ALL is sorted by code.
        assert!(AdminOpcode::ALL.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn nvm_round_trip() {
        for &op in NvmOpcode::ALL {
            assert_eq!(NvmOpcode::try_from(op as u8), Ok(op));
        }
        assert_eq!(NvmOpcode::ALL.len(), 13);
        assert_eq!(NvmOpcode::try_from(0x03).unwrap_err().value, 3);
        assert_eq!(NvmOpcode::Read.name(), "Read");
        assert_eq!(NvmOpcode::Copy as u8, 0x19);
    }
}

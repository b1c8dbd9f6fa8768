//! Completion queue entry (Base 2.0 Figure "Common Completion Queue
//! Entry Layout" and the per-dword figures that follow it).

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::status::Status;

/// A 16-byte completion queue entry (Base 2.0 Figure "Common Completion
/// Queue Entry Layout").
///
/// | bytes | field |
/// |---|---|
/// | 0-3 | DW0: command specific result |
/// | 4-7 | DW1: command specific |
/// | 8-9 | DW2 bits 15:0: SQHD, submission queue head pointer |
/// | 10-11 | DW2 bits 31:16: SQID, submission queue identifier |
/// | 12-13 | DW3 bits 15:0: CID, command identifier |
/// | 14-15 | DW3 bits 31:16: phase tag (bit 0) and status field (bits 15:1) |
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct Cqe {
    /// DW0: command specific result.
    pub dw0: U32,
    /// DW1: command specific.
    pub dw1: U32,
    /// SQ Head Pointer: the SQ head as of this completion.
    pub sq_head: U16,
    /// Identifier of the submission queue the command was submitted to.
    pub sq_id: U16,
    /// Command identifier from the SQE.
    pub cid: U16,
    /// Phase tag (bit 0) and status field (bits 15:1), see
    /// [`Status::from_cqe_status`].
    pub status: U16,
}

layout!(Cqe, 16, dw0 @ 0, dw1 @ 4, sq_head @ 8, sq_id @ 10, cid @ 12, status @ 14);

impl Cqe {
    /// Size of a completion queue entry in bytes (IOCQES = 4).
    pub const SIZE: usize = 16;

    /// The phase tag (DW3 bit 16). The controller inverts it on every pass
    /// through the queue; an entry is new when it differs from the value
    /// left by the previous pass.
    #[must_use]
    pub const fn phase(&self) -> bool {
        self.status.get() & 1 != 0
    }

    /// The decoded status field.
    #[must_use]
    pub const fn status(&self) -> Status {
        Status::from_cqe_status(self.status.get())
    }

    /// Command identifier.
    #[must_use]
    pub const fn cid(&self) -> u16 {
        self.cid.get()
    }

    /// Submission queue head pointer.
    #[must_use]
    pub const fn sq_head(&self) -> u16 {
        self.sq_head.get()
    }

    /// Submission queue identifier.
    #[must_use]
    pub const fn sq_id(&self) -> u16 {
        self.sq_id.get()
    }

    /// The command specific result (DW0).
    #[must_use]
    pub const fn result(&self) -> u32 {
        self.dw0.get()
    }

    /// DW1 (command specific).
    #[must_use]
    pub const fn dw1(&self) -> u32 {
        self.dw1.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::StatusCodeType;

    #[test]
    fn decode_bytes() {
        let raw: [u8; 16] = [
            0x78, 0x56, 0x34, 0x12, // dw0
            0, 0, 0, 0, // dw1
            0x05, 0x00, // sq head 5
            0x01, 0x00, // sqid 1
            0x2a, 0x00, // cid 42
            0x01, 0x00, // phase 1, success
        ];
        let c = Cqe::read_from_bytes(&raw[..]).expect("16 bytes");
        assert_eq!(c.result(), 0x1234_5678);
        assert_eq!(c.dw1(), 0);
        assert_eq!(c.sq_head(), 5);
        assert_eq!(c.sq_id(), 1);
        assert_eq!(c.cid(), 42);
        assert!(c.phase());
        assert!(c.status().is_success());
        assert_eq!(c.as_bytes(), &raw);
    }

    #[test]
    fn error_with_phase_zero() {
        let c = Cqe {
            status: U16::new(0x8004), // DNR, Invalid Field in Command, phase 0
            ..Cqe::default()
        };
        assert!(!c.phase());
        let s = c.status();
        assert_eq!(s.sct_kind(), StatusCodeType::Generic);
        assert_eq!(s.sc, 0x02);
        assert!(s.dnr);
        assert_eq!(s.name(), "Invalid Field in Command");
    }
}

//! Submission queue entry (Base 2.0 Figure "Common Command Format"
//! and Figure "Command Dword 0") and SGL descriptors (Base 2.0
//! Figures "SGL Descriptor Format" .. "SGL Descriptor Sub Type").

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A 64-byte submission queue entry (Base 2.0 Figure "Common Command
/// Format").
///
/// | bytes | field |
/// |---|---|
/// | 0 | CDW0.OPC opcode |
/// | 1 | CDW0 bits 15:8: FUSE (bits 1:0 of this byte), PSDT (bits 7:6) |
/// | 2-3 | CDW0.CID command identifier |
/// | 4-7 | NSID |
/// | 8-15 | CDW2, CDW3 (command specific) |
/// | 16-23 | MPTR metadata pointer |
/// | 24-39 | DPTR: PRP1 / PRP2 (or one SGL descriptor) |
/// | 40-63 | CDW10..CDW15 (command specific) |
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct Sqe {
    /// CDW0 bits 7:0: opcode.
    pub opcode: u8,
    /// CDW0 bits 15:8: FUSE in bits 1:0, PSDT in bits 7:6 (bits 5:2
    /// reserved).
    pub flags: u8,
    /// CDW0 bits 31:16: command identifier (set by the queue).
    pub cid: U16,
    /// Namespace identifier (0 if unused, 0xffff_ffff for all namespaces).
    pub nsid: U32,
    /// Command dword 2 (command specific).
    pub cdw2: U32,
    /// Command dword 3 (command specific).
    pub cdw3: U32,
    /// Metadata pointer.
    pub mptr: U64,
    /// Data pointer: PRP entry 1 (or bytes 0..8 of an SGL descriptor).
    pub prp1: U64,
    /// Data pointer: PRP entry 2 (or bytes 8..16 of an SGL descriptor).
    pub prp2: U64,
    /// Command dword 10.
    pub cdw10: U32,
    /// Command dword 11.
    pub cdw11: U32,
    /// Command dword 12.
    pub cdw12: U32,
    /// Command dword 13.
    pub cdw13: U32,
    /// Command dword 14.
    pub cdw14: U32,
    /// Command dword 15.
    pub cdw15: U32,
}

layout!(Sqe, 64,
    opcode @ 0, flags @ 1, cid @ 2, nsid @ 4, cdw2 @ 8, cdw3 @ 12, mptr @ 16,
    prp1 @ 24, prp2 @ 32, cdw10 @ 40, cdw11 @ 44, cdw12 @ 48, cdw13 @ 52,
    cdw14 @ 56, cdw15 @ 60,
);

impl Sqe {
    /// Size of a submission queue entry in bytes (IOSQES = 6).
    pub const SIZE: usize = 64;
    /// PSDT = 00b: PRPs are used for this transfer.
    pub const PSDT_PRP: u8 = 0b00;
    /// PSDT = 01b: SGLs are used; MPTR is the address of a contiguous
    /// physical buffer of metadata.
    pub const PSDT_SGL_MPTR_CONTIGUOUS: u8 = 0b01;
    /// PSDT = 10b: SGLs are used; MPTR is the address of an SGL segment
    /// containing exactly one SGL descriptor.
    pub const PSDT_SGL_MPTR_SGL: u8 = 0b10;
    /// Position of PSDT within [`Sqe::flags`].
    pub const PSDT_SHIFT: u32 = 6;
    /// Mask of PSDT within [`Sqe::flags`].
    pub const PSDT_MASK: u8 = 0b11 << 6;
    /// Mask of FUSE within [`Sqe::flags`].
    pub const FUSE_MASK: u8 = 0b11;
    /// NSID value addressing all namespaces (broadcast).
    pub const NSID_ALL: u32 = 0xffff_ffff;

    /// A zeroed entry with the given opcode (PSDT = PRP, FUSE = normal,
    /// CID = 0, NSID = 0).
    #[must_use]
    pub const fn new(opcode: u8) -> Sqe {
        Sqe {
            opcode,
            flags: 0,
            cid: U16::ZERO,
            nsid: U32::ZERO,
            cdw2: U32::ZERO,
            cdw3: U32::ZERO,
            mptr: U64::ZERO,
            prp1: U64::ZERO,
            prp2: U64::ZERO,
            cdw10: U32::ZERO,
            cdw11: U32::ZERO,
            cdw12: U32::ZERO,
            cdw13: U32::ZERO,
            cdw14: U32::ZERO,
            cdw15: U32::ZERO,
        }
    }

    /// Builder-style: sets NSID.
    #[must_use]
    pub(crate) const fn with_nsid(mut self, nsid: u32) -> Sqe {
        self.nsid = U32::new(nsid);
        self
    }

    /// Sets CID.
    pub fn set_cid(&mut self, cid: u16) {
        self.cid = U16::new(cid);
    }

    /// The command identifier.
    #[must_use]
    pub const fn cid(&self) -> u16 {
        self.cid.get()
    }

    /// Sets PRP entry 1 and PRP entry 2 (PRP2 is 0 when unused) and selects
    /// PRPs in PSDT.
    pub fn set_prps(&mut self, prp1: u64, prp2: u64) {
        self.prp1 = U64::new(prp1);
        self.prp2 = U64::new(prp2);
        self.set_psdt(Self::PSDT_PRP);
    }

    /// Stores a single SGL descriptor in DPTR (SGL1) and sets PSDT to
    /// [`Sqe::PSDT_SGL_MPTR_CONTIGUOUS`].
    pub fn set_sgl1(&mut self, sgl: SglDescriptor) {
        let bytes = sgl.as_bytes();
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&bytes[..8]);
        hi.copy_from_slice(&bytes[8..]);
        self.prp1 = U64::new(u64::from_le_bytes(lo));
        self.prp2 = U64::new(u64::from_le_bytes(hi));
        self.set_psdt(Self::PSDT_SGL_MPTR_CONTIGUOUS);
    }

    /// PSDT: PRP or SGL for Data Transfer (CDW0 bits 15:14), one of the
    /// `PSDT_*` constants (3 is reserved).
    #[must_use]
    pub const fn psdt(&self) -> u8 {
        (self.flags & Self::PSDT_MASK) >> Self::PSDT_SHIFT
    }

    /// Sets PSDT (only the low 2 bits of `psdt` are used).
    pub(crate) fn set_psdt(&mut self, psdt: u8) {
        self.flags =
            (self.flags & !Self::PSDT_MASK) | ((psdt << Self::PSDT_SHIFT) & Self::PSDT_MASK);
    }
}

/// SGL descriptor type (bits 7:4 of byte 15, Base 2.0 Figure "SGL
/// Descriptor Type").
pub mod sgl_type {
    /// SGL Data Block descriptor.
    pub const DATA_BLOCK: u8 = 0x0;
    /// SGL Bit Bucket descriptor.
    pub const BIT_BUCKET: u8 = 0x1;
    /// SGL Segment descriptor.
    pub const SEGMENT: u8 = 0x2;
    /// SGL Last Segment descriptor.
    pub const LAST_SEGMENT: u8 = 0x3;
    /// Keyed SGL Data Block descriptor (fabrics).
    pub const KEYED_DATA_BLOCK: u8 = 0x4;
    /// Transport SGL Data Block descriptor (fabrics).
    pub const TRANSPORT_DATA_BLOCK: u8 = 0x5;
    /// Vendor specific.
    pub const VENDOR_SPECIFIC: u8 = 0xf;
}

/// SGL descriptor sub type (bits 3:0 of byte 15, Base 2.0 Figure "SGL
/// Descriptor Sub Type").
pub mod sgl_subtype {
    /// The Address field is a memory address.
    pub const ADDRESS: u8 = 0x0;
    /// The Address field is an offset (fabrics in-capsule data).
    pub const OFFSET: u8 = 0x1;
    /// Transport specific.
    pub const TRANSPORT_SPECIFIC: u8 = 0xa;
}

/// A 16-byte SGL descriptor (Base 2.0 Figure "Generic SGL
/// Descriptor Format"): address, length, 3 reserved bytes and the SGL
/// identifier (type in bits 7:4, sub type in bits 3:0).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct SglDescriptor {
    /// Address (or offset, depending on the sub type).
    pub address: U64,
    /// Length in bytes (for segments: bytes of descriptors in the segment).
    pub length: U32,
    /// Reserved (type specific for keyed descriptors).
    pub reserved: [u8; 3],
    /// SGL identifier: type (7:4) and sub type (3:0).
    pub sgl_id: u8,
}

layout!(SglDescriptor, 16, address @ 0, length @ 8, reserved @ 12, sgl_id @ 15);

impl SglDescriptor {
    /// A descriptor of the given type and sub type (both 4 bits).
    #[must_use]
    pub const fn new(address: u64, length: u32, ty: u8, subtype: u8) -> SglDescriptor {
        SglDescriptor {
            address: U64::new(address),
            length: U32::new(length),
            reserved: [0; 3],
            sgl_id: ((ty & 0xf) << 4) | (subtype & 0xf),
        }
    }

    /// A Data Block descriptor (address sub type).
    #[must_use]
    pub const fn data_block(address: u64, length: u32) -> SglDescriptor {
        Self::new(address, length, sgl_type::DATA_BLOCK, sgl_subtype::ADDRESS)
    }

    /// A Segment descriptor pointing at `count` further descriptors.
    #[must_use]
    pub const fn segment(address: u64, count: u32) -> SglDescriptor {
        Self::new(
            address,
            count.saturating_mul(16),
            sgl_type::SEGMENT,
            sgl_subtype::ADDRESS,
        )
    }

    /// Descriptor type (bits 7:4 of the identifier).
    #[must_use]
    pub const fn descriptor_type(&self) -> u8 {
        self.sgl_id >> 4
    }

    /// Descriptor sub type (bits 3:0 of the identifier).
    #[must_use]
    pub const fn subtype(&self) -> u8 {
        self.sgl_id & 0xf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_is_zeroed_except_opcode() {
        let s = Sqe::new(0x06);
        let b = s.as_bytes();
        assert_eq!(b[0], 0x06);
        assert!(b[1..].iter().all(|&x| x == 0));
        assert_eq!(Sqe::default().as_bytes(), &[0u8; 64]);
        assert_eq!(Sqe::new(0), Sqe::default());
    }

    #[test]
    fn wire_layout() {
        let mut s = Sqe::new(0x02).with_nsid(1);
        s.set_cid(0xbeef);
        s.set_prps(0x1122_3344_5566_7000, 0x8000);
        s.cdw10 = U32::new(0x0a0b_0c0d);
        s.cdw15 = U32::new(0xf0f1_f2f3);
        let b = s.as_bytes();
        assert_eq!(&b[0..4], &[0x02, 0x00, 0xef, 0xbe]);
        assert_eq!(&b[4..8], &[1, 0, 0, 0]);
        assert_eq!(&b[24..32], &0x1122_3344_5566_7000u64.to_le_bytes());
        assert_eq!(&b[32..40], &0x8000u64.to_le_bytes());
        assert_eq!(&b[40..44], &[0x0d, 0x0c, 0x0b, 0x0a]);
        assert_eq!(&b[60..64], &[0xf3, 0xf2, 0xf1, 0xf0]);
        assert_eq!(s.cid(), 0xbeef);
        let back = Sqe::read_from_bytes(b).expect("64 bytes");
        assert_eq!(back, s);
    }

    #[test]
    fn psdt_keeps_the_fuse_bits() {
        let mut s = Sqe::new(1);
        assert_eq!(s.psdt(), Sqe::PSDT_PRP);
        assert_eq!(s.flags & 0x3, 0);
        s.set_psdt(Sqe::PSDT_SGL_MPTR_SGL);
        assert_eq!(s.flags, 0x80);
        assert_eq!(s.psdt(), Sqe::PSDT_SGL_MPTR_SGL);
        // FUSE (bits 1:0) = 10b, second command of a fused operation.
        s.flags |= 0x2;
        assert_eq!(s.psdt(), Sqe::PSDT_SGL_MPTR_SGL);
        s.set_psdt(0xff);
        assert_eq!(s.flags, 0xc2);
        s.flags = 0xff;
        s.set_prps(0x1000, 0);
        assert_eq!(s.psdt(), Sqe::PSDT_PRP);
        assert_eq!(s.flags, 0x3f);
    }

    #[test]
    fn sgl_descriptors() {
        let d = SglDescriptor::data_block(0xdead_b000, 4096);
        assert_eq!(d.descriptor_type(), sgl_type::DATA_BLOCK);
        assert_eq!(d.subtype(), sgl_subtype::ADDRESS);
        assert_eq!(d.sgl_id, 0x00);
        let b = d.as_bytes();
        assert_eq!(&b[0..8], &0xdead_b000u64.to_le_bytes());
        assert_eq!(&b[8..12], &4096u32.to_le_bytes());
        assert_eq!(SglDescriptor::segment(0x2000, 2).sgl_id, 0x20);
        assert_eq!(SglDescriptor::segment(0, u32::MAX).length.get(), u32::MAX);
        assert_eq!(SglDescriptor::new(0, 0, 0xff, 0xff).sgl_id, 0xff);

        let mut s = Sqe::new(2);
        s.set_sgl1(d);
        assert_eq!(s.psdt(), Sqe::PSDT_SGL_MPTR_CONTIGUOUS);
        assert_eq!(&s.as_bytes()[24..40], d.as_bytes());
    }
}

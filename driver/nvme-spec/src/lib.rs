//! NVMe specification definitions for a userspace NVMe driver.
//!
//! This crate is pure data and arithmetic: register layouts, queue entry
//! formats, opcodes, status codes, Identify / log page data structures,
//! feature identifiers and PRP arithmetic. It performs no I/O, contains no
//! `unsafe` code and never panics on any input value: every byte that comes
//! from the device is treated as untrusted and every decoder is total.
//!
//! # Spec revisions followed
//!
//! * **NVM Express Base Specification, Revision 2.0** (figure numbers in the
//!   doc comments refer to revision 2.0 unless noted; later 2.0 errata
//!   rename some figures but keep the layouts).
//! * **NVM Express NVM Command Set Specification, Revision 1.0** (the
//!   I/O command set companion of base 2.0): I/O opcodes, the NVM Identify
//!   Namespace data structure, NVM-specific status values.
//! * **NVM Express NVMe over PCIe Transport Specification, Revision 1.0**
//!   for the doorbell layout and PRP rules (which were part of the base
//!   specification up to 1.4).
//!
//! All on-wire structures are little endian; they use
//! [`zerocopy::little_endian`] integer types, are `#[repr(C)]` with alignment
//! 1 (no padding) and derive the zerocopy traits so that the driver can view
//! DMA memory as these types without `unsafe`.
//!
//! # Module map
//!
//! | module | contents |
//! |---|---|
//! | [`regs`] | controller registers (CAP, VS, CC, CSTS, AQA, declared field by field) and doorbell offsets |
//! | [`sqe`] | the 64-byte submission queue entry and SGL descriptors |
//! | [`cqe`] | the 16-byte completion queue entry |
//! | [`status`] | status code types, status codes with their spec names, retry policy |
//! | [`opcode`] | admin and NVM I/O opcodes |
//! | [`admin`] | builders for admin commands (Identify, queue creation, log pages, features, ...) |
//! | [`io`] | builders for NVM I/O commands (Read, Write, Flush, Write Zeroes, DSM, ...) |
//! | [`identify`] | Identify Controller / Namespace / namespace list data structures |
//! | [`log`] | log page identifiers, SMART, error log, firmware slot log, async events |
//! | [`features`] | feature identifiers and encoders for feature values |
//! | [`prp`] | PRP entry / PRP list arithmetic |
//! | [`error`] | the small error types used by fallible conversions and builders |
//!
//! # What is here
//!
//! What the driver, its mock controller, nvmectl, the tools or the fuzz
//! targets use, and no more: builders and accessors nothing called were
//! removed (issue 13), and helpers only this crate calls are `pub(crate)`.
//! Registers are the exception: each is declared whole (every field of
//! CAP, CC, CSTS, ...), because the declaration is the register's layout
//! and the compile-time check that its fields fit and do not overlap.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

/// Compile-time layout checks: total size and field offsets of an on-wire
/// structure.
macro_rules! layout {
    ($ty:ty, $size:expr $(, $field:ident @ $off:expr)* $(,)?) => {
        const _: () = assert!(core::mem::size_of::<$ty>() == $size);
        const _: () = assert!(core::mem::align_of::<$ty>() == 1);
        $(const _: () = assert!(core::mem::offset_of!($ty, $field) == $off);)*
    };
}

/// Defines a `#[repr(u8)]` enum of spec-defined codes together with
/// `name()`, `TryFrom<u8>`, `From<Enum> for u8`, `ALL` and `Display`.
macro_rules! code_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($kind:literal) {
            $( $variant:ident = $val:literal => $label:literal ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum $name {
            $( #[doc = $label] $variant = $val, )*
        }

        impl $name {
            /// Every defined value, in ascending order of its code.
            pub const ALL: &'static [Self] = &[$(Self::$variant),*];

            /// The name the specification gives this value.
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $label,)*
                }
            }

            /// Decodes a raw value; `None` for values this crate does not
            /// define.
            #[must_use]
            pub const fn from_raw(raw: u8) -> Option<Self> {
                match raw {
                    $($val => Some(Self::$variant),)*
                    _ => None,
                }
            }

            /// The raw encoded value.
            #[must_use]
            pub const fn raw(self) -> u8 {
                self as u8
            }
        }

        impl TryFrom<u8> for $name {
            type Error = $crate::error::UnknownCode;

            fn try_from(raw: u8) -> Result<Self, Self::Error> {
                Self::from_raw(raw).ok_or($crate::error::UnknownCode { kind: $kind, value: raw })
            }
        }

        impl From<$name> for u8 {
            fn from(v: $name) -> u8 {
                v as u8
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

pub mod admin;
pub mod cqe;
pub mod error;
pub mod features;
pub mod identify;
pub mod io;
pub mod log;
pub mod opcode;
pub mod prp;
pub mod regs;
pub mod sqe;
pub mod status;

pub use admin::{Cns, QueuePriority};
pub use cqe::Cqe;
pub use error::{RangeError, UnknownCode};
pub use features::{FeatureId, FeatureSelect, NumberOfQueues};
pub use identify::{
    ActiveNamespaceList, AsciiField, IdentifyController, IdentifyNamespace, LbaFormat, Oacs, Oncs,
    PowerStateDescriptor, SglSupport,
};
pub use io::{AccessFrequency, AccessLatency, DsmAttributes, DsmHints, DsmRange, RwFlags};
pub use log::{
    AsyncEvent, AsyncEventType, CriticalWarning, ErrorLogEntry, FirmwareSlotLog, LogPageId,
    SmartLog,
};
pub use opcode::{AdminOpcode, NvmOpcode};
pub use prp::{PrpError, PrpGeometry, PrpLayout};
pub use regs::{
    Aqa, Cap, Cc, Csts, DoorbellKind, NVME_SSR, ShutdownNotification, ShutdownStatus, Vs,
    doorbell_offset,
};
pub use sqe::{SglDescriptor, Sqe};
pub use status::{Status, StatusCodeType};

//! Small error types shared by the whole crate (no `std`, so hand-written
//! `Display` implementations instead of `thiserror`).

use core::fmt;

/// A raw value that does not correspond to any code this crate defines
/// (returned by the `TryFrom<u8>` implementations of the code enums).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnknownCode {
    /// What kind of code was being decoded, e.g. `"admin opcode"`.
    pub kind: &'static str,
    /// The raw value.
    pub value: u8,
}

impl fmt::Display for UnknownCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {} {:#04x}", self.kind, self.value)
    }
}

impl core::error::Error for UnknownCode {}

/// A command parameter outside the range the specification can encode
/// (returned by command builders instead of panicking or silently
/// truncating).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RangeError {
    /// The parameter, e.g. `"number of logical blocks"`.
    pub what: &'static str,
    /// The rejected value.
    pub value: u64,
    /// Smallest accepted value.
    pub min: u64,
    /// Largest accepted value.
    pub max: u64,
}

impl RangeError {
    /// Checks `min <= value <= max`.
    pub(crate) const fn check(
        what: &'static str,
        value: u64,
        min: u64,
        max: u64,
    ) -> Result<(), RangeError> {
        if value < min || value > max {
            Err(RangeError {
                what,
                value,
                min,
                max,
            })
        } else {
            Ok(())
        }
    }
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} out of range (valid: {}..={})",
            self.what, self.value, self.min, self.max
        )
    }
}

impl core::error::Error for RangeError {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn display() {
        let e = UnknownCode {
            kind: "admin opcode",
            value: 0x3,
        };
        assert_eq!(e.to_string(), "unknown admin opcode 0x03");
        let e = RangeError::check("number of logical blocks", 0, 1, 65536).unwrap_err();
        assert_eq!(
            e.to_string(),
            "number of logical blocks 0 out of range (valid: 1..=65536)"
        );
        assert!(RangeError::check("x", 5, 1, 5).is_ok());
        assert!(RangeError::check("x", 6, 1, 5).is_err());
    }
}

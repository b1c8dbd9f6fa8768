//! Identify data structures (Base 2.0 §5.17.2): Identify Controller
//! (CNS 01h), the NVM command set Identify Namespace (CNS 00h, NVM Command
//! Set 1.0 §4.1.5.1) and the Active Namespace ID list (CNS 02h).
//!
//! All fields come straight from the device and are untrusted: the helper
//! methods validate and clamp instead of indexing blindly.

use core::fmt;

mod controller;
mod namespace;
#[cfg(test)]
mod tests;

pub use controller::*;
pub use namespace::*;

/// A fixed-width ASCII text field from the device (serial number, model,
/// firmware revision, NQN).
///
/// `Display` trims trailing spaces and NULs and prints every byte that is
/// not printable ASCII (0x20..=0x7e) as `.`, so it is safe for any content.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AsciiField<'a>(&'a [u8]);

impl<'a> AsciiField<'a> {
    /// Wraps raw field bytes.
    #[must_use]
    pub const fn new(bytes: &'a [u8]) -> AsciiField<'a> {
        AsciiField(bytes)
    }

    /// The field with trailing spaces and NULs removed (other bytes
    /// unchanged).
    #[must_use]
    pub fn as_bytes(&self) -> &'a [u8] {
        let mut end = self.0.len();
        while end > 0 && matches!(self.0[end - 1], b' ' | 0) {
            end -= 1;
        }
        &self.0[..end]
    }

    /// The untrimmed raw bytes.
    #[must_use]
    pub const fn raw(&self) -> &'a [u8] {
        self.0
    }

    /// The trimmed text if it is entirely printable ASCII.
    #[must_use]
    pub fn as_str(&self) -> Option<&'a str> {
        let b = self.as_bytes();
        if b.iter().all(|c| (0x20..=0x7e).contains(c)) {
            core::str::from_utf8(b).ok()
        } else {
            None
        }
    }

    /// Whether the trimmed field is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }
}

impl fmt::Display for AsciiField<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for &b in self.as_bytes() {
            let c = if (0x20..=0x7e).contains(&b) {
                char::from(b)
            } else {
                '.'
            };
            f.write_char(c)?;
        }
        Ok(())
    }
}

impl fmt::Debug for AsciiField<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl PartialEq<str> for AsciiField<'_> {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for AsciiField<'_> {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

/// Reads a 128-bit little-endian counter.
pub(crate) const fn le128(b: &[u8; 16]) -> u128 {
    u128::from_le_bytes(*b)
}

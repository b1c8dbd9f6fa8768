//! Byte sizes on the command line: a decimal number with an optional
//! binary suffix.

/// Why a size did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Not a number (with an optional K, M, G or T suffix).
    #[error("not a size: {0}")]
    NotANumber(String),
    /// Zero, or too large for 64 bits with its suffix.
    #[error("bad size: {0}")]
    OutOfRange(String),
}

/// Parses a byte count: a decimal number, optionally followed by `k`/`K`
/// (KiB), `m`/`M` (MiB), `g`/`G` (GiB) or `t`/`T` (TiB). Zero and values
/// past `u64::MAX` are refused.
///
/// ```
/// assert_eq!(tools_common::parse_bytes("64k"), Ok(64 << 10));
/// assert_eq!(tools_common::parse_bytes(" 4096 "), Ok(4096));
/// assert!(tools_common::parse_bytes("0").is_err());
/// ```
pub fn parse_bytes(s: &str) -> Result<u64, SizeError> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 10),
        Some((i, 'm' | 'M')) => (&s[..i], 20),
        Some((i, 'g' | 'G')) => (&s[..i], 30),
        Some((i, 't' | 'T')) => (&s[..i], 40),
        _ => (s, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| SizeError::NotANumber(s.to_string()))?;
    n.checked_shl(shift)
        .filter(|v| v >> shift == n && *v > 0)
        .ok_or_else(|| SizeError::OutOfRange(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("4k"), Ok(4096));
        assert_eq!(parse_bytes("2M"), Ok(2 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert_eq!(parse_bytes("2T"), Ok(2 << 40));
        assert_eq!(
            parse_bytes("16777216t"),
            Err(SizeError::OutOfRange("16777216t".into()))
        );
        assert_eq!(parse_bytes("0"), Err(SizeError::OutOfRange("0".into())));
        assert_eq!(
            parse_bytes("17179869184G"),
            Err(SizeError::OutOfRange("17179869184G".into()))
        );
        assert_eq!(parse_bytes("x"), Err(SizeError::NotANumber("x".into())));
        assert_eq!(parse_bytes("k"), Err(SizeError::NotANumber("k".into())));
        assert_eq!(parse_bytes("-1"), Err(SizeError::NotANumber("-1".into())));
    }
}

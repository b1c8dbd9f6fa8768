//! How a scenario fails: a [`Failure`] with the place and the message,
//! returned (not panicked) so that a runner reports every scenario, and
//! the [`ensure!`](crate::ensure) and [`ensure_eq!`](crate::ensure_eq)
//! macros that build one.

use std::fmt;

/// Why a scenario failed. Any error converts into one (with the sources
/// its message does not already show), so `?` works on the engines'
/// results.
#[derive(Debug)]
pub struct Failure(String);

/// What a scenario returns.
pub type Outcome = Result<(), Failure>;

impl Failure {
    /// A failure with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Failure(message.into())
    }

    /// A failed check at `file:line`.
    pub fn at(file: &str, line: u32, message: impl fmt::Display) -> Self {
        Failure(format!("{file}:{line}: {message}"))
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Self {
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            let text = s.to_string();
            if !message.contains(&text) {
                message.push_str(&format!(": {text}"));
            }
            source = s.source();
        }
        Failure(message)
    }
}

/// Returns a [`Failure`] from the enclosing function unless the condition
/// holds: `ensure!(cond)` or `ensure!(cond, "format", args...)`.
#[macro_export]
macro_rules! ensure {
    ($cond:expr $(,)?) => {
        $crate::ensure!($cond, "{}", stringify!($cond))
    };
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err($crate::Failure::at(file!(), line!(), format!($($message)+)));
        }
    };
}

/// Returns a [`Failure`] showing both values from the enclosing function
/// unless they are equal: `ensure_eq!(got, want)` or
/// `ensure_eq!(got, want, "format", args...)`.
#[macro_export]
macro_rules! ensure_eq {
    ($left:expr, $right:expr $(,)?) => {
        $crate::ensure_eq!($left, $right, "{} == {}", stringify!($left), stringify!($right))
    };
    ($left:expr, $right:expr, $($message:tt)+) => {
        match (&$left, &$right) {
            (left, right) => {
                if !(*left == *right) {
                    return Err($crate::Failure::at(
                        file!(),
                        line!(),
                        format!(
                            "{}\n  left: {:?}\n right: {:?}",
                            format_args!($($message)+),
                            left,
                            right
                        ),
                    ));
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn equal(a: u32, b: u32) -> Outcome {
        ensure_eq!(a, b, "values {}", "differ");
        ensure!(a < 10);
        Ok(())
    }

    #[test]
    fn checks_report_the_place_and_both_values() {
        assert!(equal(3, 3).is_ok());
        let e = equal(3, 4).unwrap_err();
        assert!(
            e.message().starts_with("mpage/conformance/src/check.rs:"),
            "{e}"
        );
        assert!(
            e.message().ends_with("values differ\n  left: 3\n right: 4"),
            "{e}"
        );
        let e = equal(12, 12).unwrap_err();
        assert!(e.message().ends_with(": a < 10"), "{e}");
    }

    #[test]
    fn errors_convert_with_their_sources() {
        let e = Failure::from(mpage::Error::Timeout("a scenario"));
        assert!(!e.message().is_empty());
    }
}

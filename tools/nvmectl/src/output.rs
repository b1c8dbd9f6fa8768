//! Output formats: nvme-cli's `-o normal|json`. A report is built once
//! as named values and printed either way, so the text and the JSON can
//! never name or compute a field differently.

use std::io::{Result, Write};

use serde::Serialize;
use serde_json::{Map, Value};

/// `-o` / `--output-format`, as nvme-cli spells it.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Format {
    /// Text for people.
    #[default]
    Normal,
    /// JSON with nvme-cli's field names, for scripts.
    Json,
}

/// One value of a report.
#[derive(Debug, Clone)]
pub(crate) enum Val {
    /// A number shown in hexadecimal in text (a bit field or an id);
    /// JSON numbers are always decimal, as nvme-cli's are.
    Hex(u64),
    /// A number shown as this many hexadecimal digits, no prefix (the
    /// IEEE OUI).
    Digits(u64, usize),
    /// A number shown in decimal.
    Num(u128),
    /// Text.
    Str(String),
}

impl Val {
    fn json(&self) -> Value {
        match self {
            Val::Hex(v) | Val::Digits(v, _) => Value::from(*v),
            // serde_json's Value holds integers of at most 64 bits; a
            // larger counter (the logs' are 128-bit) becomes a float.
            Val::Num(v) => u64::try_from(*v).map_or(Value::from(*v as f64), Value::from),
            Val::Str(s) => Value::from(s.as_str()),
        }
    }

    fn text(&self) -> String {
        match self {
            Val::Hex(x) => format!("{x:#x}"),
            Val::Digits(x, w) => format!("{x:0w$x}"),
            Val::Num(x) => x.to_string(),
            Val::Str(s) => s.clone(),
        }
    }
}

/// Named values in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Record {
    pub fields: Vec<(&'static str, Val)>,
}

impl Record {
    pub(crate) fn new() -> Self {
        Record::default()
    }

    pub(crate) fn hex(mut self, name: &'static str, v: impl Into<u64>) -> Self {
        self.fields.push((name, Val::Hex(v.into())));
        self
    }

    pub(crate) fn digits(mut self, name: &'static str, v: u64, width: usize) -> Self {
        self.fields.push((name, Val::Digits(v, width)));
        self
    }

    pub(crate) fn num(mut self, name: &'static str, v: impl Into<u128>) -> Self {
        self.fields.push((name, Val::Num(v.into())));
        self
    }

    pub(crate) fn str(mut self, name: &'static str, v: impl Into<String>) -> Self {
        self.fields.push((name, Val::Str(v.into())));
        self
    }

    /// The record as a JSON object.
    pub(crate) fn json(&self) -> Map<String, Value> {
        let mut map = Map::new();
        for (name, v) in &self.fields {
            map.insert((*name).to_string(), v.json());
        }
        map
    }

    /// `name : value` lines, names padded to `width`.
    pub(crate) fn print_text(&self, out: &mut impl Write, width: usize) -> Result<()> {
        for (name, v) in &self.fields {
            writeln!(out, "{name:<width$}: {}", v.text())?;
        }
        Ok(())
    }
}

/// Writes `value` as pretty JSON and a newline.
pub(crate) fn write_json(out: &mut impl Write, value: &impl Serialize) -> Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::Record;

    #[test]
    fn text_and_json_show_the_same_values() {
        let r = Record::new()
            .hex("vid", 0x1b36u16)
            .digits("ieee", 0x525400, 6)
            .num("big", u128::from(u64::MAX) + 1)
            .str("sn", "x");
        let mut text = Vec::new();
        r.print_text(&mut text, 5).expect("text");
        assert_eq!(
            String::from_utf8_lossy(&text),
            "vid  : 0x1b36\nieee : 525400\nbig  : 18446744073709551616\nsn   : x\n"
        );
        let json = serde_json::Value::Object(r.json());
        assert_eq!(json["vid"], 6966);
        assert_eq!(json["ieee"], 0x525400);
        assert_eq!(json["sn"], "x");
        assert!(json["big"].as_f64().is_some_and(|v| v > 1.8e19));
    }
}

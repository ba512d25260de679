//! Object names: a pure function from (partition key, hour, id) to a relative path in the
//! Hive layout the seed uses, `capability=<c>/year=YYYY/month=MM/day=DD/hour=HH/<id>-<key>.parquet`.
//!
//! Partition values come from untrusted input, so every character that could change the
//! path (`/`, `\`, `.` runs, NUL, control characters, `%`, `:`, `=`...) is escaped as `%XX`
//! the way Hive, Spark and Athena escape partition values. Nothing can escape the root.

use crate::record::Hour;

/// What an object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// A Parquet file of records.
    Parquet,
    /// An NDJSON file of dead-letter entries, under the `dlq/` prefix.
    Dlq,
}

/// Escapes one path segment value (Hive rules plus anything non-printable or non-ASCII-safe).
pub fn escape_segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for ch in value.chars() {
        let needs = match ch {
            c if c.is_control() => true,
            '"' | '#' | '%' | '\'' | '*' | '/' | ':' | '=' | '?' | '\\' | '{' | '[' | ']' | '^'
            | '<' | '>' | '|' | ' ' | '+' | '&' | '$' | '@' | ',' | ';' | '`' | '}' | '~' => true,
            _ => false,
        };
        if needs {
            let mut buf = [0u8; 4];
            for b in ch.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(ch);
        }
    }
    if out.is_empty() || out.chars().all(|c| c == '.') {
        // Empty, "." and ".." would be special path segments.
        return out.replace('.', "%2E") + if out.is_empty() { "%00" } else { "" };
    }
    out
}

/// The relative object name for one file.
pub fn object_name(kind: ObjectKind, key: &str, hour: Hour, id: &str) -> String {
    let capability = key.split(':').next().unwrap_or("unknown");
    let (prefix, ext) = match kind {
        ObjectKind::Parquet => ("", "parquet"),
        ObjectKind::Dlq => ("dlq/", "ndjson"),
    };
    format!(
        "{prefix}capability={}/year={:04}/month={:02}/day={:02}/hour={:02}/{}-{}.{ext}",
        escape_segment(capability),
        hour.year,
        hour.month,
        hour.day,
        hour.hour,
        escape_segment(id),
        escape_segment(key),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Component, Path};

    fn hour() -> Hour {
        Hour {
            year: 2024,
            month: 5,
            day: 1,
            hour: 9,
        }
    }

    #[test]
    fn hive_layout() {
        let n = object_name(ObjectKind::Parquet, "pay:cards:api:web", hour(), "01ABC");
        assert_eq!(
            n,
            "capability=pay/year=2024/month=05/day=01/hour=09/01ABC-pay%3Acards%3Aapi%3Aweb.parquet"
        );
        let d = object_name(ObjectKind::Dlq, "x:y:z:w", hour(), "01ABC");
        assert!(d.starts_with("dlq/capability=x/") && d.ends_with(".ndjson"));
    }

    #[test]
    fn hostile_values_stay_inside() {
        for key in [
            "../../etc:passwd:x:y",
            "..:..:..:..",
            "/abs:b:c:d",
            "a\0b:c:d:e",
            "a\nb:\\win:c:d",
            ".:.:.:.",
            "::::",
            "ünï✓:d:s:a",
        ] {
            let name = object_name(ObjectKind::Parquet, key, hour(), "id");
            let p = Path::new(&name);
            assert!(
                p.components().all(|c| matches!(c, Component::Normal(_))),
                "{key:?} -> {name}"
            );
            assert_eq!(p.components().count(), 6, "{key:?} -> {name}");
            assert!(!name.contains('\0') && !name.contains('\n') && !name.contains('\\'));
        }
    }

    #[test]
    fn dots_and_empty_are_escaped() {
        assert_eq!(escape_segment(".."), "%2E%2E");
        assert_eq!(escape_segment("."), "%2E");
        assert_eq!(escape_segment(""), "%00");
        assert_eq!(escape_segment("a.b"), "a.b");
    }
}

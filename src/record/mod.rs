//! Records: the seed's `Log` schema, its partition key, and decoding from JSON objects and
//! msgpack maps with lenient, lossless coercion (see [`decode`]).

pub mod decode;
pub mod generator;

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use serde::Serialize;

pub use decode::{Loose, decode_json_bytes, decode_json_line, from_loose};

/// Key/value map columns (`args`, `extra_fields`). Sorted, so files are deterministic.
pub type StringMap = BTreeMap<String, String>;

/// One log record in the seed's fixed 32-column schema. Field names serialise as the
/// Parquet column names (snake_case). Non-`Option` fields are required columns.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Log {
    /// Event time as given by the source (RFC 3339 when produced by data2parquet).
    pub time: String,
    /// Severity.
    pub level: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub person_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The log message.
    pub message: String,
    /// First part of the partition key.
    pub business_capability: String,
    /// Second part of the partition key.
    pub business_domain: String,
    /// Third part of the partition key.
    pub business_service: String,
    /// Fourth part of the partition key.
    pub application_service: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_response: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack_trace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_ip: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub az: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<StringMap>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_message_reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_index: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logger_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_fields: Option<StringMap>,
}

impl Log {
    /// The partition key `capability:domain:service:application`; a missing capability
    /// becomes `default_capability`, any other missing part `unknown`.
    pub fn partition_key(&self, default_capability: &str) -> String {
        fn part<'a>(s: &'a str, default: &'a str) -> &'a str {
            if s.is_empty() { default } else { s }
        }
        let mut key = String::with_capacity(64);
        key.push_str(part(&self.business_capability, default_capability));
        key.push(':');
        key.push_str(part(&self.business_domain, "unknown"));
        key.push(':');
        key.push_str(part(&self.business_service, "unknown"));
        key.push(':');
        key.push_str(part(&self.application_service, "unknown"));
        key
    }

    /// Parses `time` as an instant: RFC 3339 (with `T` or a space), a naive
    /// `YYYY-MM-DD HH:MM:SS[.f]` taken as UTC, or epoch seconds / milliseconds /
    /// nanoseconds. `None` when it is none of these.
    pub fn parsed_time(&self) -> Option<DateTime<Utc>> {
        parse_time(&self.time)
    }

    /// Fills an empty `time` with `now` in RFC 3339 with nanoseconds.
    pub fn fill_time(&mut self, now: DateTime<Utc>) {
        if self.time.is_empty() {
            self.time = format_time(now);
        }
    }

    /// Inserts into `args`, creating the map when needed.
    pub fn set_arg(&mut self, key: &str, value: String) {
        self.args
            .get_or_insert_with(StringMap::new)
            .insert(key.to_string(), value);
    }
}

/// Formats an instant as RFC 3339 UTC with nanoseconds (`2024-05-01T10:00:00.123456789Z`).
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// See [`Log::parsed_time`].
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = s.parse().ok()?;
        return match s.len() {
            0..=11 => Utc.timestamp_opt(n, 0).single(),
            12..=14 => Utc.timestamp_millis_opt(n).single(),
            15..=17 => Some(Utc.timestamp_nanos(n.checked_mul(1000)?)),
            _ => Some(Utc.timestamp_nanos(n)),
        };
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(t) = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%:z") {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
    }
    None
}

/// The UTC hour a record is filed under: its own time, else `fallback` (arrival time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hour {
    /// Year.
    pub year: i32,
    /// Month 1-12.
    pub month: u32,
    /// Day 1-31.
    pub day: u32,
    /// Hour 0-23.
    pub hour: u32,
}

impl Hour {
    /// The hour of an instant.
    pub fn of(t: DateTime<Utc>) -> Hour {
        Hour {
            year: t.year(),
            month: t.month(),
            day: t.day(),
            hour: t.hour(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_key_uses_defaults() {
        let mut log = Log {
            business_capability: "pay".into(),
            business_service: "api".into(),
            ..Log::default()
        };
        assert_eq!(log.partition_key("unknown"), "pay:unknown:api:unknown");
        log.business_capability.clear();
        assert_eq!(log.partition_key("dflt"), "dflt:unknown:api:unknown");
    }

    #[test]
    fn time_formats() {
        let want = Utc.with_ymd_and_hms(2024, 5, 1, 10, 20, 30).single();
        for s in [
            "2024-05-01T10:20:30Z",
            "2024-05-01T12:20:30+02:00",
            "2024-05-01 10:20:30",
            "2024-05-01T10:20:30",
            "1714558830",
            "1714558830000",
        ] {
            assert_eq!(parse_time(s), want, "{s}");
        }
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time(""), None);
        let h = Hour::of(want.expect("valid"));
        assert_eq!((h.year, h.month, h.day, h.hour), (2024, 5, 1, 10));
    }
}

//! Records: the seed's `Log` schema, its partition key, and decoding from JSON objects and
//! msgpack maps with lenient, lossless coercion (see [`decode`]).

pub mod decode;
pub mod generator;

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use serde::Serialize;

pub use decode::{
    Loose, decode_json_as, decode_json_bytes, decode_json_line, decode_json_ref, from_loose,
};

/// Key/value map columns (`args`, `extra_fields`). Sorted, so files are deterministic.
pub type StringMap = BTreeMap<String, String>;

/// One log record that owns its text: what most of the engine passes around.
pub type Log = LogOf<String>;

/// One log record whose text borrows from the input it was decoded from where it can
/// (strings without escapes): decoding a batch this way and appending it to Arrow builders
/// allocates nothing per string. [`LogOf::into_owned`] makes a [`Log`] of it.
pub type LogRef<'a> = LogOf<Cow<'a, str>>;

/// One log record in the seed's fixed 32-column schema, generic over its text type (see
/// [`Log`] and [`LogRef`]). Field names serialise as the Parquet column names (snake_case).
/// Non-`Option` fields are required columns.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LogOf<S: Ord> {
    /// Event time as given by the source (RFC 3339 when produced by data2parquet).
    pub time: S,
    /// Severity.
    pub level: S,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub person_id: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<S>,
    /// The log message.
    pub message: S,
    /// First part of the partition key.
    pub business_capability: S,
    /// Second part of the partition key.
    pub business_domain: S,
    /// Third part of the partition key.
    pub business_service: S,
    /// Fourth part of the partition key.
    pub application_service: S,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_provider: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_id: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_response: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack_trace: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_ip: Option<Vec<S>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub az: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<S>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<BTreeMap<S, S>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_message_reference: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_index: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logger_name: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread_name: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_fields: Option<BTreeMap<S, S>>,
}

impl<S: AsRef<str> + Ord> LogOf<S> {
    /// The partition key `capability:domain:service:application`; a missing capability
    /// becomes `default_capability`, any other missing part `unknown`.
    pub fn partition_key(&self, default_capability: &str) -> String {
        let mut key = String::with_capacity(64);
        self.write_partition_key(default_capability, &mut key);
        key
    }

    /// Writes [`LogOf::partition_key`] into `key` (cleared first), reusing its allocation.
    pub fn write_partition_key(&self, default_capability: &str, key: &mut String) {
        fn part<'a>(s: &'a str, default: &'a str) -> &'a str {
            if s.is_empty() { default } else { s }
        }
        key.clear();
        key.push_str(part(self.business_capability.as_ref(), default_capability));
        key.push(':');
        key.push_str(part(self.business_domain.as_ref(), "unknown"));
        key.push(':');
        key.push_str(part(self.business_service.as_ref(), "unknown"));
        key.push(':');
        key.push_str(part(self.application_service.as_ref(), "unknown"));
    }

    /// Parses `time` as an instant: RFC 3339 (with `T` or a space), a naive
    /// `YYYY-MM-DD HH:MM:SS[.f]` taken as UTC, or epoch seconds / milliseconds /
    /// nanoseconds. `None` when it is none of these.
    pub fn parsed_time(&self) -> Option<DateTime<Utc>> {
        parse_time(self.time.as_ref())
    }

    /// The UTC hour of [`LogOf::parsed_time`], without a full parse for the usual
    /// `YYYY-MM-DDTHH:MM:SS[.f]Z` form (see [`hour_of`]).
    pub fn hour(&self) -> Option<Hour> {
        hour_of(self.time.as_ref())
    }
}

impl Log {
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

/// Builds a `LogOf` from `$src` field by field: `$one` maps a required text, `$opt` an
/// optional one, `$list` a list column and `$map` a map column; flags are copied.
macro_rules! map_fields {
    ([$($amp:tt)?] $src:expr, $one:expr, $opt:expr, $list:expr, $map:expr) => {{
        let l = $src;
        LogOf {
            time: $one($($amp)? l.time),
            level: $one($($amp)? l.level),
            correlation_id: $opt($($amp)? l.correlation_id),
            session_id: $opt($($amp)? l.session_id),
            message_id: $opt($($amp)? l.message_id),
            person_id: $opt($($amp)? l.person_id),
            user_id: $opt($($amp)? l.user_id),
            device_id: $opt($($amp)? l.device_id),
            message: $one($($amp)? l.message),
            business_capability: $one($($amp)? l.business_capability),
            business_domain: $one($($amp)? l.business_domain),
            business_service: $one($($amp)? l.business_service),
            application_service: $one($($amp)? l.application_service),
            audit: l.audit,
            resource_type: $opt($($amp)? l.resource_type),
            cloud_provider: $opt($($amp)? l.cloud_provider),
            source_id: $opt($($amp)? l.source_id),
            http_response: $opt($($amp)? l.http_response),
            error_code: $opt($($amp)? l.error_code),
            stack_trace: $opt($($amp)? l.stack_trace),
            duration: $opt($($amp)? l.duration),
            trace_ip: $list($($amp)? l.trace_ip),
            region: $opt($($amp)? l.region),
            az: $opt($($amp)? l.az),
            tags: $list($($amp)? l.tags),
            args: $map($($amp)? l.args),
            transaction_message_reference: $opt($($amp)? l.transaction_message_reference),
            ttl: $opt($($amp)? l.ttl),
            auto_index: l.auto_index,
            logger_name: $opt($($amp)? l.logger_name),
            thread_name: $opt($($amp)? l.thread_name),
            extra_fields: $map($($amp)? l.extra_fields),
        }
    }};
}

impl LogRef<'_> {
    /// The same record owning its text.
    pub fn into_owned(self) -> Log {
        map_fields!(
            [] self,
            Cow::into_owned,
            |s: Option<Cow<'_, str>>| s.map(Cow::into_owned),
            |l: Option<Vec<Cow<'_, str>>>| l.map(|v| v.into_iter().map(Cow::into_owned).collect()),
            |m: Option<BTreeMap<Cow<'_, str>, Cow<'_, str>>>| m.map(|m| {
                m.into_iter()
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
        )
    }
}

impl Log {
    /// The same record borrowing this one's text (no string is copied).
    pub fn borrowed(&self) -> LogRef<'_> {
        fn one(s: &str) -> Cow<'_, str> {
            Cow::Borrowed(s)
        }
        fn opt(s: &Option<String>) -> Option<Cow<'_, str>> {
            s.as_deref().map(Cow::Borrowed)
        }
        fn list(l: &Option<Vec<String>>) -> Option<Vec<Cow<'_, str>>> {
            l.as_ref().map(|v| v.iter().map(|s| one(s)).collect())
        }
        fn map(m: &Option<StringMap>) -> Option<BTreeMap<Cow<'_, str>, Cow<'_, str>>> {
            m.as_ref()
                .map(|m| m.iter().map(|(k, v)| (one(k), one(v))).collect())
        }
        map_fields!([&] self, one, opt, list, map)
    }
}

/// Formats an instant as RFC 3339 UTC with nanoseconds (`2024-05-01T10:00:00.123456789Z`).
/// Every event of a Fluent Bit chunk goes through this, so years 0 to 9999 are written
/// digit by digit (the same text as chrono's `to_rfc3339_opts(Nanos, true)`, a third of
/// its cost); other years are left to chrono.
pub fn format_time(t: DateTime<Utc>) -> String {
    let year = t.year();
    if !(0..=9999).contains(&year) {
        return t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    }
    // A leap second shows as second 59 with nanoseconds past 1e9 (chrono's convention).
    let (second, nanos) = match t.nanosecond() {
        n if n >= 1_000_000_000 => (60, n - 1_000_000_000),
        n => (t.second(), n),
    };
    let mut out = [0u8; 30];
    let mut put = |at: usize, value: u32, digits: usize| {
        let mut v = value;
        for i in (0..digits).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year as u32, 4);
    put(5, t.month(), 2);
    put(8, t.day(), 2);
    put(11, t.hour(), 2);
    put(14, t.minute(), 2);
    put(17, second, 2);
    put(20, nanos, 9);
    for (at, sep) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ] {
        out[at] = sep;
    }
    out[29] = b'Z';
    // Only ASCII digits and separators were written.
    out.iter().map(|&b| char::from(b)).collect()
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

/// `parse_time(s).map(Hour::of)`, with a fast path for the form almost every record has,
/// UTC RFC 3339 (`2024-05-01T10:20:30Z`, `2024-05-01T10:20:30.123456789Z`): its fields are
/// read and range-checked in place, with no general parse. Anything else (an offset,
/// epoch digits, a leap second, surrounding spaces...) takes the general path.
pub fn hour_of(s: &str) -> Option<Hour> {
    fast_utc_hour(s.as_bytes()).or_else(|| parse_time(s).map(Hour::of))
}

fn fast_utc_hour(b: &[u8]) -> Option<Hour> {
    if b.len() < 20 || b[b.len() - 1] != b'Z' {
        return None;
    }
    let num = |at: usize, len: usize| -> Option<u32> {
        let mut v = 0u32;
        for &d in b.get(at..at + len)? {
            if !d.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u32::from(d - b'0');
        }
        Some(v)
    };
    let seps = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if seps.iter().any(|&(at, c)| b[at] != c) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    // After the seconds: `Z` alone, or `.` and one or more digits then `Z`.
    match &b[19..b.len() - 1] {
        [] => {}
        [b'.', digits @ ..] if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => {}
        _ => return None,
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day == 0 || day > days || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    Some(Hour {
        year: year as i32,
        month,
        day,
        hour,
    })
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

    /// The states of a 64-bit linear congruential generator after `seed`: repeatable
    /// pseudo-random test input.
    fn lcg(seed: u64) -> impl Iterator<Item = u64> {
        std::iter::successors(Some(seed), |x| {
            Some(
                x.wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407),
            )
        })
        .skip(1)
    }

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
    fn formatting_matches_chrono() {
        let chrono = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let mut instants = vec![
            Utc.timestamp_opt(0, 0).single(),
            Utc.timestamp_opt(1_714_558_830, 123_456_789).single(),
            Utc.timestamp_opt(4_294_967_295, 999_999_999).single(),
            Utc.timestamp_opt(-62_167_219_200, 1).single(),
            Utc.timestamp_opt(253_402_300_799, 999_999_999).single(),
            Utc.timestamp_opt(253_402_300_800, 0).single(),
            Utc.timestamp_opt(-62_167_219_201, 0).single(),
            Utc.timestamp_opt(1_483_228_799, 1_500_000_000).single(),
        ];
        for x in lcg(12345).take(2000) {
            // Signed, so that instants before 1970 come up too.
            let sec = (x as i64 >> 20) % 300_000_000_000;
            instants.push(Utc.timestamp_opt(sec, (x % 1_000_000_000) as u32).single());
        }
        for t in instants.into_iter().flatten() {
            assert_eq!(format_time(t), chrono(t), "{t:?}");
        }
    }

    #[test]
    fn fast_hours_agree_with_the_general_parse() {
        let mut cases: Vec<String> = [
            "2024-05-01T10:20:30Z",
            "2024-05-01T10:20:30.1Z",
            "2024-05-01T10:20:30.123456789Z",
            "2024-05-01T10:20:30.1234567891234Z",
            "2024-02-29T23:59:59Z",
            "2023-02-29T10:00:00Z",
            "2100-02-29T10:00:00Z",
            "2000-02-29T10:00:00Z",
            "2024-04-31T10:00:00Z",
            "2024-13-01T10:00:00Z",
            "2024-00-01T10:00:00Z",
            "2024-05-00T10:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T23:60:00Z",
            "2024-06-30T23:59:60Z",
            "2024-05-01T10:20:30.Z",
            "2024-05-01T10:20:30,5Z",
            "2024-05-01t10:20:30z",
            "2024-05-01 10:20:30Z",
            "2024-05-01T10:20:30+02:00",
            "2024-05-01T00:20:30-02:00",
            " 2024-05-01T10:20:30Z ",
            "2024-05-01T10:20:30",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999Z",
            "2024-5-01T10:20:30Z",
            "2024-05-01T10:2a:30Z",
            "1714558830",
            "",
            "Z",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for x in lcg(7).take(3000) {
            let secs = (x >> 24) % 250_000_000_000;
            let t = Utc
                .timestamp_opt(secs as i64, (x % 1_000_000_000) as u32)
                .single();
            if let Some(t) = t {
                cases.push(format_time(t));
                cases.push(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                cases.push(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            }
        }
        for s in &cases {
            assert_eq!(hour_of(s), parse_time(s).map(Hour::of), "{s:?}");
        }
        assert!(fast_utc_hour(b"2024-05-01T10:20:30.5Z").is_some());
        assert!(fast_utc_hour(b"2024-05-01T10:20:30+00:00").is_none());
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

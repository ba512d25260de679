//! Lenient decoding of one record (a JSON object or a msgpack map) into a [`Log`].
//!
//! Rules, so that no value is silently lost:
//! * keys match case-insensitively with `_` and `-` ignored (`correlationId`,
//!   `Correlation-ID` and `correlation_id` are one column), plus the seed's aliases
//!   (`timestamp`/`when` -> time, `lvl`/`severity` -> level, `msg`/`log` -> message,
//!   `error`/`error_message` -> error_code, `elapsed` -> duration, `host`/`hostname` ->
//!   `args["host"]`);
//! * scalars are coerced losslessly to the column type (`200` -> `"200"`, `"true"` -> true);
//! * a value that cannot fit its column (an object in `message`, `"maybe"` in `audit`), a
//!   second value for a column already filled, and every unknown key go to `extra_fields`
//!   under their original key, nested values as compact JSON;
//! * only input that is not an object at all is an error (it goes to the DLQ).

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::{Log, StringMap};
use crate::error::{Error, Result};

/// A decoded value of any shape, borrowing strings from the input where it can.
#[derive(Debug, Clone, PartialEq)]
pub enum Loose<'a> {
    /// JSON null / msgpack nil.
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    I64(i64),
    /// An unsigned integer.
    U64(u64),
    /// A float.
    F64(f64),
    /// A string.
    Str(Cow<'a, str>),
    /// Binary data that is not UTF-8 (msgpack bin); rendered as hex.
    Bytes(Vec<u8>),
    /// An array.
    Array(Vec<Loose<'a>>),
    /// A map (keys as strings, order kept).
    Map(Vec<(Cow<'a, str>, Loose<'a>)>),
}

impl Loose<'_> {
    /// The value as text when it is a scalar: strings as they are, numbers and booleans in
    /// their canonical form. `None` for null, arrays and maps.
    fn scalar_text(&self) -> Option<String> {
        match self {
            Loose::Str(s) => Some(s.to_string()),
            Loose::Bool(b) => Some(b.to_string()),
            Loose::I64(n) => Some(n.to_string()),
            Loose::U64(n) => Some(n.to_string()),
            Loose::F64(f) => Some(f.to_string()),
            Loose::Bytes(b) => Some(hex(b)),
            Loose::Null | Loose::Array(_) | Loose::Map(_) => None,
        }
    }

    /// The value as text for a map entry or list element: scalars as text, null as an
    /// empty string, arrays and maps as compact JSON.
    fn any_text(&self) -> String {
        match self {
            Loose::Null => String::new(),
            Loose::Array(_) | Loose::Map(_) => compact_json(self),
            scalar => scalar.scalar_text().unwrap_or_default(),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn compact_json(v: &Loose<'_>) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

impl Serialize for Loose<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Loose::Null => s.serialize_unit(),
            Loose::Bool(b) => s.serialize_bool(*b),
            Loose::I64(n) => s.serialize_i64(*n),
            Loose::U64(n) => s.serialize_u64(*n),
            Loose::F64(f) if f.is_finite() => s.serialize_f64(*f),
            Loose::F64(f) => s.serialize_str(&f.to_string()),
            Loose::Str(v) => s.serialize_str(v),
            Loose::Bytes(b) => s.serialize_str(&hex(b)),
            Loose::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Loose::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k.as_ref(), v)?;
                }
                map.end()
            }
        }
    }
}

struct LooseVisitor;

impl<'de> Visitor<'de> for LooseVisitor {
    type Value = Loose<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any value")
    }
    fn visit_unit<E>(self) -> std::result::Result<Loose<'de>, E> {
        Ok(Loose::Null)
    }
    fn visit_none<E>(self) -> std::result::Result<Loose<'de>, E> {
        Ok(Loose::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Loose<'de>, D::Error> {
        d.deserialize_any(LooseVisitor)
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Loose<'de>, E> {
        Ok(Loose::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Loose<'de>, E> {
        Ok(Loose::I64(v))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Loose<'de>, E> {
        Ok(Loose::U64(v))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Loose<'de>, E> {
        Ok(Loose::F64(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Loose<'de>, E> {
        Ok(Loose::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Loose<'de>, E> {
        Ok(Loose::Str(Cow::Owned(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Loose<'de>, E> {
        Ok(Loose::Str(Cow::Owned(v)))
    }
    fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> std::result::Result<Loose<'de>, E> {
        Ok(match std::str::from_utf8(v) {
            Ok(s) => Loose::Str(Cow::Borrowed(s)),
            Err(_) => Loose::Bytes(v.to_vec()),
        })
    }
    fn visit_bytes<E>(self, v: &[u8]) -> std::result::Result<Loose<'de>, E> {
        Ok(match std::str::from_utf8(v) {
            Ok(s) => Loose::Str(Cow::Owned(s.to_string())),
            Err(_) => Loose::Bytes(v.to_vec()),
        })
    }
    fn visit_byte_buf<E>(self, v: Vec<u8>) -> std::result::Result<Loose<'de>, E> {
        Ok(match String::from_utf8(v) {
            Ok(s) => Loose::Str(Cow::Owned(s)),
            Err(e) => Loose::Bytes(e.into_bytes()),
        })
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Loose<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element::<Loose<'de>>()? {
            items.push(item);
        }
        Ok(Loose::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Loose<'de>, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1024));
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let value = map.next_value::<Loose<'de>>()?;
            entries.push((key.0, value));
        }
        Ok(Loose::Map(entries))
    }
}

impl<'de> Deserialize<'de> for Loose<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(LooseVisitor)
    }
}

/// A map key, borrowed from the input when possible; non-string keys become their text.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = d.deserialize_any(LooseVisitor)?;
        Ok(Key(match v {
            Loose::Str(s) => s,
            other => Cow::Owned(other.any_text()),
        }))
    }
}

/// The columns a key can land in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Time,
    Level,
    CorrelationId,
    SessionId,
    MessageId,
    PersonId,
    UserId,
    DeviceId,
    Message,
    BusinessCapability,
    BusinessDomain,
    BusinessService,
    ApplicationService,
    Audit,
    ResourceType,
    CloudProvider,
    SourceId,
    HttpResponse,
    ErrorCode,
    StackTrace,
    Duration,
    TraceIp,
    Region,
    Az,
    Tags,
    Args,
    TransactionMessageReference,
    Ttl,
    AutoIndex,
    LoggerName,
    ThreadName,
    ExtraFields,
    /// `host`/`hostname`: kept as `args["host"]`.
    Host,
}

fn lookup(key: &str) -> Option<Field> {
    // Fast path without allocation for keys up to 48 bytes.
    let mut buf = [0u8; 48];
    let mut n = 0;
    for b in key.bytes() {
        if b == b'_' || b == b'-' {
            continue;
        }
        if n == buf.len() {
            return None;
        }
        buf[n] = b.to_ascii_lowercase();
        n += 1;
    }
    let norm = std::str::from_utf8(&buf[..n]).ok()?;
    Some(match norm {
        "time" | "timestamp" | "when" | "@timestamp" => Field::Time,
        "level" | "lvl" | "severity" => Field::Level,
        "correlationid" => Field::CorrelationId,
        "sessionid" => Field::SessionId,
        "messageid" => Field::MessageId,
        "personid" => Field::PersonId,
        "userid" => Field::UserId,
        "deviceid" => Field::DeviceId,
        "message" | "msg" | "log" => Field::Message,
        "businesscapability" => Field::BusinessCapability,
        "businessdomain" => Field::BusinessDomain,
        "businessservice" => Field::BusinessService,
        "applicationservice" => Field::ApplicationService,
        "audit" => Field::Audit,
        "resourcetype" => Field::ResourceType,
        "cloudprovider" => Field::CloudProvider,
        "sourceid" => Field::SourceId,
        "httpresponse" => Field::HttpResponse,
        "errorcode" | "error" | "errormessage" => Field::ErrorCode,
        "stacktrace" => Field::StackTrace,
        "duration" | "elapsed" => Field::Duration,
        "traceip" => Field::TraceIp,
        "region" => Field::Region,
        "az" => Field::Az,
        "tags" => Field::Tags,
        "args" => Field::Args,
        "transactionmessagereference" => Field::TransactionMessageReference,
        "ttl" => Field::Ttl,
        "autoindex" => Field::AutoIndex,
        "loggername" => Field::LoggerName,
        "threadname" => Field::ThreadName,
        "extrafields" => Field::ExtraFields,
        "host" | "hostname" => Field::Host,
        _ => return None,
    })
}

fn to_bool(v: &Loose<'_>) -> Option<bool> {
    match v {
        Loose::Bool(b) => Some(*b),
        Loose::I64(0) | Loose::U64(0) => Some(false),
        Loose::I64(1) | Loose::U64(1) => Some(true),
        Loose::Str(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Loose::Str(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

fn to_list(v: &Loose<'_>) -> Option<Vec<String>> {
    match v {
        Loose::Array(items) => Some(items.iter().map(Loose::any_text).collect()),
        Loose::Map(_) => None,
        scalar => scalar.scalar_text().map(|s| vec![s]),
    }
}

fn to_map(v: &Loose<'_>) -> Option<StringMap> {
    match v {
        Loose::Map(entries) => Some(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.any_text()))
                .collect(),
        ),
        _ => None,
    }
}

fn insert_unique(map: &mut StringMap, key: &str, value: String) {
    if !map.contains_key(key) {
        map.insert(key.to_string(), value);
        return;
    }
    let mut n = 2;
    loop {
        let candidate = format!("{key}#{n}");
        if let std::collections::btree_map::Entry::Vacant(e) = map.entry(candidate) {
            e.insert(value);
            return;
        }
        n += 1;
    }
}

/// Accumulates one record; see the module rules.
#[derive(Default)]
struct Builder {
    log: Log,
    filled: u64,
}

impl Builder {
    fn extra(&mut self, key: &str, value: &Loose<'_>) {
        let text = value.any_text();
        insert_unique(
            self.log.extra_fields.get_or_insert_with(StringMap::new),
            key,
            text,
        );
    }

    fn set(&mut self, field: Field, key: &str, value: Loose<'_>) {
        if matches!(value, Loose::Null) {
            return;
        }
        let bit = 1u64 << (field as u32);
        let repeatable = matches!(field, Field::Args | Field::ExtraFields);
        if self.filled & bit != 0 && !repeatable {
            self.extra(key, &value);
            return;
        }
        if self.apply(field, key, &value) {
            self.filled |= bit;
        } else {
            self.extra(key, &value);
        }
    }

    /// Puts `value` into `field`; false when it does not fit (the caller keeps it as extra).
    fn apply(&mut self, field: Field, _key: &str, value: &Loose<'_>) -> bool {
        let l = &mut self.log;
        let text = || value.scalar_text();
        macro_rules! req {
            ($f:ident) => {
                match text() {
                    Some(s) => {
                        l.$f = s;
                        true
                    }
                    None => false,
                }
            };
        }
        macro_rules! opt {
            ($f:ident) => {
                match text() {
                    Some(s) => {
                        l.$f = Some(s);
                        true
                    }
                    None => false,
                }
            };
        }
        match field {
            Field::Time => req!(time),
            Field::Level => req!(level),
            Field::Message => req!(message),
            Field::BusinessCapability => req!(business_capability),
            Field::BusinessDomain => req!(business_domain),
            Field::BusinessService => req!(business_service),
            Field::ApplicationService => req!(application_service),
            Field::CorrelationId => opt!(correlation_id),
            Field::SessionId => opt!(session_id),
            Field::MessageId => opt!(message_id),
            Field::PersonId => opt!(person_id),
            Field::UserId => opt!(user_id),
            Field::DeviceId => opt!(device_id),
            Field::ResourceType => opt!(resource_type),
            Field::CloudProvider => opt!(cloud_provider),
            Field::SourceId => opt!(source_id),
            Field::HttpResponse => opt!(http_response),
            Field::ErrorCode => opt!(error_code),
            Field::StackTrace => opt!(stack_trace),
            Field::Duration => opt!(duration),
            Field::Region => opt!(region),
            Field::Az => opt!(az),
            Field::TransactionMessageReference => opt!(transaction_message_reference),
            Field::Ttl => opt!(ttl),
            Field::LoggerName => opt!(logger_name),
            Field::ThreadName => opt!(thread_name),
            Field::Audit => to_bool(value).map(|b| l.audit = Some(b)).is_some(),
            Field::AutoIndex => to_bool(value).map(|b| l.auto_index = Some(b)).is_some(),
            Field::TraceIp => to_list(value).map(|v| l.trace_ip = Some(v)).is_some(),
            Field::Tags => to_list(value).map(|v| l.tags = Some(v)).is_some(),
            Field::Args | Field::ExtraFields => {
                let Some(map) = to_map(value) else {
                    return false;
                };
                let target = if field == Field::Args {
                    &mut l.args
                } else {
                    &mut l.extra_fields
                };
                let target = target.get_or_insert_with(StringMap::new);
                for (k, v) in map {
                    insert_unique(target, &k, v);
                }
                true
            }
            Field::Host => match text() {
                Some(s) => {
                    insert_unique(l.args.get_or_insert_with(StringMap::new), "host", s);
                    true
                }
                None => false,
            },
        }
    }
}

struct LogVisitor;

impl<'de> Visitor<'de> for LogVisitor {
    type Value = Log;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object (one log record)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Log, A::Error> {
        let mut b = Builder::default();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let value = map.next_value::<Loose<'de>>()?;
            match lookup(&key) {
                Some(field) => b.set(field, &key, value),
                None => {
                    if !matches!(value, Loose::Null) {
                        b.extra(&key, &value);
                    }
                }
            }
        }
        Ok(b.log)
    }
}

impl<'de> Deserialize<'de> for Log {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_map(LogVisitor)
    }
}

/// A seed usable with any serde deserializer (for streaming arrays element by element).
pub struct LogSeed;

impl<'de> DeserializeSeed<'de> for LogSeed {
    type Value = Log;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Log, D::Error> {
        d.deserialize_map(LogVisitor)
    }
}

/// Decodes one JSON text (a line of JSON Lines, an HTTP body) into a record.
/// `what` names the input in the error (`line 12 of logs.jsonl`).
pub fn decode_json_line(text: &str, what: impl FnOnce() -> String) -> Result<Log> {
    serde_json::from_str::<Log>(text).map_err(|e| Error::Decode {
        what: what(),
        reason: describe_json_error(&e),
    })
}

fn describe_json_error(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Data => {
            format!("not a JSON object ({e}); each record must be an object")
        }
        _ => format!("broken JSON: {e}"),
    }
}

/// Builds a record from an already decoded map (the msgpack path). Anything other than a
/// map is an error naming `what`.
pub fn from_loose(value: Loose<'_>, what: impl FnOnce() -> String) -> Result<Log> {
    let Loose::Map(entries) = value else {
        return Err(Error::Decode {
            what: what(),
            reason: format!(
                "the record body is not a map: {}",
                truncate(&value.any_text(), 200)
            ),
        });
    };
    let mut b = Builder::default();
    for (key, value) in entries {
        match lookup(&key) {
            Some(field) => b.set(field, &key, value),
            None => {
                if !matches!(value, Loose::Null) {
                    b.extra(&key, &value);
                }
            }
        }
    }
    Ok(b.log)
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> Log {
        decode_json_line(s, || "test".into()).expect("valid record")
    }

    #[test]
    fn canonical_names_fill_every_column() {
        let log = decode(
            r#"{"time":"2024-05-01T10:00:00Z","level":"info","correlation_id":"c","session_id":"s",
            "message_id":"m","person_id":"p","user_id":"u","device_id":"d","message":"hello",
            "business_capability":"cap","business_domain":"dom","business_service":"svc",
            "application_service":"app","audit":true,"resource_type":"k8s","cloud_provider":"aws",
            "source_id":"src","http_response":"200","error_code":"E1","stack_trace":"a\nb",
            "duration":"1.5","trace_ip":["1.1.1.1","2.2.2.2"],"region":"us","az":"us-1a",
            "tags":["t1"],"args":{"k":"v"},"transaction_message_reference":"tmr","ttl":"30",
            "auto_index":false,"logger_name":"ln","thread_name":"tn","extra_fields":{"x":"y"}}"#,
        );
        assert_eq!(log.time, "2024-05-01T10:00:00Z");
        assert_eq!(log.message, "hello");
        assert_eq!(log.audit, Some(true));
        assert_eq!(log.auto_index, Some(false));
        assert_eq!(log.trace_ip.as_deref().map(<[String]>::len), Some(2));
        assert_eq!(
            log.args
                .as_ref()
                .and_then(|a| a.get("k"))
                .map(String::as_str),
            Some("v")
        );
        assert_eq!(
            log.extra_fields
                .as_ref()
                .and_then(|a| a.get("x"))
                .map(String::as_str),
            Some("y")
        );
        assert_eq!(log.stack_trace.as_deref(), Some("a\nb"));
        assert_eq!(log.thread_name.as_deref(), Some("tn"));
    }

    #[test]
    fn aliases_and_case_insensitive_keys() {
        let log = decode(
            r#"{"Timestamp":"t","LVL":"warn","msg":"m","Correlation-Id":"c","userId":"u",
            "error":"boom","elapsed":12,"hostname":"h1","BUSINESS_CAPABILITY":"cap"}"#,
        );
        assert_eq!(log.time, "t");
        assert_eq!(log.level, "warn");
        assert_eq!(log.message, "m");
        assert_eq!(log.correlation_id.as_deref(), Some("c"));
        assert_eq!(log.user_id.as_deref(), Some("u"));
        assert_eq!(log.error_code.as_deref(), Some("boom"));
        assert_eq!(log.duration.as_deref(), Some("12"));
        assert_eq!(
            log.args
                .as_ref()
                .and_then(|a| a.get("host"))
                .map(String::as_str),
            Some("h1")
        );
        assert_eq!(log.business_capability, "cap");
        assert!(log.extra_fields.is_none());
    }

    #[test]
    fn coercions_are_lossless() {
        let log = decode(
            r#"{"http_response":200,"audit":"TRUE","auto_index":0,"duration":1.25,
            "tags":"single","trace_ip":[1,"x",{"a":1}],"args":{"n":5,"o":{"p":[1,2]},"z":null}}"#,
        );
        assert_eq!(log.http_response.as_deref(), Some("200"));
        assert_eq!(log.audit, Some(true));
        assert_eq!(log.auto_index, Some(false));
        assert_eq!(log.duration.as_deref(), Some("1.25"));
        assert_eq!(log.tags, Some(vec!["single".to_string()]));
        assert_eq!(
            log.trace_ip,
            Some(vec![
                "1".to_string(),
                "x".to_string(),
                r#"{"a":1}"#.to_string()
            ])
        );
        let args = log.args.expect("args");
        assert_eq!(args["n"], "5");
        assert_eq!(args["o"], r#"{"p":[1,2]}"#);
        assert_eq!(args["z"], "");
    }

    #[test]
    fn misfits_and_duplicates_go_to_extra_fields() {
        let log = decode(
            r#"{"message":{"nested":true},"audit":"maybe","msg":"first","log":"second",
            "args":"not-a-map","customer":"acme","deep":{"a":{"b":[1,{"c":null}]}},"n":null}"#,
        );
        assert_eq!(log.message, "first");
        let extra = log.extra_fields.expect("extras");
        assert_eq!(extra["message"], r#"{"nested":true}"#);
        assert_eq!(extra["audit"], "maybe");
        assert_eq!(extra["log"], "second");
        assert_eq!(extra["args"], "not-a-map");
        assert_eq!(extra["customer"], "acme");
        assert_eq!(extra["deep"], r#"{"a":{"b":[1,{"c":null}]}}"#);
        assert!(!extra.contains_key("n"), "nulls carry no value");
        assert_eq!(log.audit, None);
    }

    #[test]
    fn unicode_and_escapes_survive() {
        let log = decode(r#"{"message":"héllo \"wörld\" ✓ \u00e9 😀","level":"info"}"#);
        assert_eq!(log.message, "héllo \"wörld\" ✓ é 😀");
    }

    #[test]
    fn non_objects_and_broken_json_are_errors() {
        for bad in ["[1,2]", "42", "\"str\"", "{\"a\":", "{\"a\" 1}", "", "null"] {
            let err = decode_json_line(bad, || "line 7 of x.jsonl".into()).expect_err(bad);
            let msg = err.to_string();
            assert!(msg.contains("line 7 of x.jsonl"), "{msg}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(5000), "]".repeat(5000));
        assert!(decode_json_line(&deep, || "deep".into()).is_err());
    }

    #[test]
    fn from_loose_requires_a_map() {
        assert!(from_loose(Loose::I64(3), || "record 1".into()).is_err());
        let log = from_loose(
            Loose::Map(vec![(
                Cow::Borrowed("message"),
                Loose::Str(Cow::Borrowed("x")),
            )]),
            || "r".into(),
        )
        .expect("map");
        assert_eq!(log.message, "x");
    }
}

//! The Fluent Bit chunk decoder: turns the msgpack buffer Fluent Bit hands to an output
//! plugin into [`LogRef`] records, without I/O and without `unsafe`.
//!
//! A chunk is a plain concatenation of msgpack objects, one per event, in either form, mixed:
//! * v2 `[[TIMESTAMP, METADATA_MAP], BODY_MAP]` (everything Fluent Bit >= 2.1 writes);
//! * v1 `[TIMESTAMP, BODY_MAP]` (forward clients, PackedForward payloads passed through).
//!
//! `TIMESTAMP` is an EventTime ext (type 0, 8 bytes: big-endian u32 seconds and u32
//! nanoseconds, as fixext8 or ext8), a non-negative integer (seconds) or a float. Group
//! markers (EventTime seconds `0xFFFFFFFF`/`0xFFFFFFFE`, or the integers -1/-2) are skipped.
//!
//! Each record keeps its own time field when it has one; otherwise Fluent Bit's timestamp
//! becomes `time` (RFC 3339 with nanoseconds). The tag and Fluent Bit's timestamp always go
//! to `args` as `fluent-tag` and `fluent-time`, like the original plugin; a non-empty v2
//! metadata map goes to `args["fluent-metadata"]` as compact JSON.
//!
//! An event of the wrong shape (body not a map, bad timestamp) is [`Rejected`] for the
//! dead-letter queue; the rest of the chunk still decodes. When the msgpack framing itself
//! breaks, the bytes from that point on are rejected as one entry (hex), since nothing after
//! them can be located; if that happens at the very first byte the whole chunk is an error.

use std::borrow::Cow;
use std::collections::BTreeMap;

mod msgpack;

use chrono::{TimeZone, Utc};
use rmpv::ValueRef;
use serde::de::DeserializeSeed;

use crate::config::RecordType;
use crate::error::{Error, Result};
use crate::record::decode::{Loose, RecordSeed, from_loose_as, insert_unique, truncate};
use crate::record::{LogRef, format_time};

/// Deepest nesting accepted inside one event (deeper input is rejected, not a stack overflow).
pub const MAX_DEPTH: usize = 64;
/// `args` key holding the Fluent Bit tag.
pub const ARG_TAG: &str = "fluent-tag";
/// `args` key holding Fluent Bit's event time (RFC 3339, nanoseconds).
pub const ARG_TIME: &str = "fluent-time";
/// `args` key holding a non-empty v2 metadata map as compact JSON.
pub const ARG_METADATA: &str = "fluent-metadata";

/// An event of a chunk that could not become a record, for the dead-letter queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Which event: `event 3 of chunk (tag app.log)`.
    pub what: String,
    /// Why it was rejected.
    pub reason: String,
    /// The event as compact JSON, or the undecodable bytes as hex.
    pub raw: String,
}

/// What one chunk decoded into.
#[derive(Debug, Default)]
pub struct Decoded<'a> {
    /// Records ready for the buffer, in chunk order, borrowing their text from the chunk
    /// where they can ([`LogRef::into_owned`] makes owned ones).
    pub records: Vec<LogRef<'a>>,
    /// Events that could not be records.
    pub rejected: Vec<Rejected>,
    /// Group start/end markers skipped.
    pub group_markers: usize,
}

/// Fluent Bit's timestamp of one event.
#[derive(Debug, Clone, Copy, PartialEq)]
enum EventTime {
    /// A real instant.
    At { sec: i64, nsec: u32 },
    /// A group start or end marker.
    GroupMarker,
}

impl<'a> Decoded<'a> {
    /// Counts the outcome of event `index` of the chunk.
    fn add(&mut self, outcome: EventOutcome<'a>, index: usize, tag: &str) {
        match outcome {
            Ok(Some(log)) => self.records.push(log),
            Ok(None) => self.group_markers += 1,
            Err((reason, raw)) => self.rejected.push(Rejected {
                what: format!("event {index} of chunk (tag {tag})"),
                reason,
                raw,
            }),
        }
    }
}

/// Decodes a whole chunk. Fails only when not even the first event can be framed.
pub fn decode_chunk<'a>(data: &'a [u8], tag: &'a str, kind: RecordType) -> Result<Decoded<'a>> {
    let mut decoder = ChunkDecoder::new(data, tag, kind);
    Ok(decoder.next_slice(usize::MAX)?.unwrap_or_default())
}

/// Decodes a chunk a slice of events at a time (the plugin pushes each slice while its
/// records are still in cache; [`decode_chunk`] takes all at once).
pub struct ChunkDecoder<'a> {
    data: &'a [u8],
    rd: &'a [u8],
    tag: &'a str,
    kind: RecordType,
    index: usize,
    done: bool,
}

impl<'a> ChunkDecoder<'a> {
    /// A decoder at the start of `data`.
    pub fn new(data: &'a [u8], tag: &'a str, kind: RecordType) -> Self {
        ChunkDecoder {
            data,
            rd: data,
            tag,
            kind,
            index: 0,
            done: false,
        }
    }

    /// Bytes of the chunk decoded so far.
    pub fn consumed(&self) -> usize {
        self.data.len() - self.rd.len()
    }

    /// Events (records, rejected events and group markers) decoded so far.
    pub fn events(&self) -> usize {
        self.index
    }

    /// Decodes the next `max` events (fewer at the end); `None` once the chunk is done.
    /// Fails only when not even the chunk's first event can be framed: broken framing
    /// later sends the rest of the chunk, as hex, to the dead-letter queue and ends it.
    pub fn next_slice(&mut self, max: usize) -> Result<Option<Decoded<'a>>> {
        if self.done || self.rd.is_empty() {
            return Ok(None);
        }
        let (data, tag, kind) = (self.data, self.tag, self.kind);
        let mut out = Decoded::default();
        let mut taken = 0usize;
        while !self.rd.is_empty() && taken < max {
            taken += 1;
            // The usual event decodes in one pass, which also tells where it ends; anything
            // else is framed first, then decoded (or explained) on its own.
            let mut rest = self.rd;
            if let Some(outcome) = fast_event(&mut rest, tag, kind) {
                if taken == 1 {
                    reserve_for(
                        &mut out.records,
                        self.rd.len(),
                        self.rd.len() - rest.len(),
                        max,
                    );
                }
                self.rd = rest;
                out.add(outcome, self.index, tag);
                self.index += 1;
                continue;
            }
            let rd = self.rd;
            let offset = data.len() - rd.len();
            let mut rest = rd;
            let broken = match msgpack::skip(&mut rest, MAX_DEPTH) {
                Ok(()) if msgpack::is_array(rd) => {
                    let event = &rd[..rd.len() - rest.len()];
                    self.rd = rest;
                    out.add(slow_event(event, tag, kind), self.index, tag);
                    self.index += 1;
                    continue;
                }
                // Every event is an array: anything else means the bytes are not (or no
                // longer) a sequence of events, and nothing after them can be trusted.
                Ok(()) => {
                    let mut one = rd;
                    let shown = rmpv::decode::read_value_ref_with_max_depth(&mut one, MAX_DEPTH)
                        .map(|v| truncate(&compact(&to_loose(&v)), 80))
                        .unwrap_or_default();
                    format!("an event must be an array, found {shown}")
                }
                Err(e) => e.to_string(),
            };
            if offset == 0 {
                return Err(Error::Decode {
                    what: format!("chunk of {} bytes (tag {tag})", data.len()),
                    reason: format!("not a msgpack event stream: {broken}"),
                });
            }
            let tail = &data[offset..];
            out.rejected.push(Rejected {
                what: format!("bytes {offset}..{} of chunk (tag {tag})", data.len()),
                reason: format!(
                    "msgpack framing broken after {} events ({broken}); the remaining {} bytes are kept as hex",
                    self.index,
                    tail.len()
                ),
                raw: hex(tail),
            });
            self.done = true;
            break;
        }
        Ok(Some(out))
    }
}

/// Reserves room for the events of a chunk of `chunk_len` bytes whose first event took
/// `first_len`: their events are alike, and a record is several hundred bytes, so
/// growing the list by doubling was 3% of the plugin bench's samples (perf, 1000-event
/// chunks); with the room reserved the decoder alone takes 2.2-2.4 µs per record instead
/// of 2.3-2.8. Capped at one record per 128 bytes of chunk (a tiny first event must not
/// reserve for more); room never written is never touched.
/// At most `max` (the slice's events).
fn reserve_for<T>(records: &mut Vec<T>, chunk_len: usize, first_len: usize, max: usize) {
    let events = chunk_len / first_len.max(128);
    records.reserve((events + events / 8 + 1).min(max));
}

/// The common case without intermediate values: `[[ts, meta], map]` or `[ts, map]` with a
/// valid timestamp, the body deserialized straight into a [`Log`], read from the start of
/// `input`, which is advanced past the event. `None` (with `input` untouched) sends the
/// event to [`slow_event`], which handles (and explains) everything else.
fn fast_event<'a>(
    input: &mut &'a [u8],
    tag: &'a str,
    kind: RecordType,
) -> Option<EventOutcome<'a>> {
    let mut rd = *input;
    if msgpack::array_len(&mut rd)? != 2 {
        return None;
    }
    let (ts, metadata) = if msgpack::is_array(rd) {
        if msgpack::array_len(&mut rd)? != 2 {
            return None;
        }
        let ts = rmpv::decode::read_value_ref_with_max_depth(&mut rd, MAX_DEPTH).ok()?;
        if !msgpack::is_map(rd) {
            return None;
        }
        let meta = rmpv::decode::read_value_ref_with_max_depth(&mut rd, MAX_DEPTH).ok()?;
        (ts, Some(meta))
    } else {
        (
            rmpv::decode::read_value_ref_with_max_depth(&mut rd, MAX_DEPTH).ok()?,
            None,
        )
    };
    let (sec, nsec) = match event_time(&ts)? {
        EventTime::GroupMarker => {
            // A marker's body is skipped, whatever it is.
            msgpack::skip(&mut rd, MAX_DEPTH).ok()?;
            *input = rd;
            return Some(Ok(None));
        }
        EventTime::At { sec, nsec } => (sec, nsec),
    };
    if !msgpack::is_map(rd) {
        return None;
    }
    let mut body = msgpack::Deser::new(rd, MAX_DEPTH);
    let log = RecordSeed::new(kind).deserialize(&mut body).ok()?;
    *input = body.rest();
    Some(Ok(Some(finish(
        log,
        kind,
        sec,
        nsec,
        metadata.as_ref(),
        tag,
    ))))
}

/// One event's outcome: a record, `None` for a group marker, or `(reason, raw json)`.
type EventOutcome<'a> = std::result::Result<Option<LogRef<'a>>, (String, String)>;

fn slow_event<'a>(event: &'a [u8], tag: &'a str, kind: RecordType) -> EventOutcome<'a> {
    let mut rd = event;
    match rmpv::decode::read_value_ref_with_max_depth(&mut rd, MAX_DEPTH) {
        Ok(value) => decode_event(value, tag, kind),
        Err(e) => Err((format!("undecodable event: {e}"), hex(event))),
    }
}

/// One event: `Ok(None)` for a group marker, `Err((reason, raw json))` for a bad shape.
fn decode_event<'a>(value: ValueRef<'a>, tag: &'a str, kind: RecordType) -> EventOutcome<'a> {
    let raw = |v: &ValueRef<'_>| compact(&to_loose(v));
    let ValueRef::Array(mut root) = value else {
        return Err(("the event is not a 2-element array".into(), raw(&value)));
    };
    if root.len() != 2 {
        let whole = ValueRef::Array(root);
        return Err(("the event is not a 2-element array".into(), raw(&whole)));
    }
    let body = root.pop().expect("length checked: 2 elements");
    let header = root.pop().expect("length checked: 2 elements");
    let (ts, metadata) = match header {
        ValueRef::Array(mut h) => {
            if h.len() != 2 {
                let whole = ValueRef::Array(vec![ValueRef::Array(h), body]);
                return Err((
                    "the v2 header is not [timestamp, metadata]".into(),
                    raw(&whole),
                ));
            }
            let meta = h.pop().expect("length checked: 2 elements");
            let ts = h.pop().expect("length checked: 2 elements");
            if !matches!(meta, ValueRef::Map(_)) {
                let whole = ValueRef::Array(vec![ValueRef::Array(vec![ts, meta]), body]);
                return Err(("the v2 metadata is not a map".into(), raw(&whole)));
            }
            (ts, Some(meta))
        }
        ts => (ts, None),
    };
    let time = match event_time(&ts) {
        Some(t) => t,
        None => {
            let reason = format!("unsupported timestamp {}", compact(&to_loose(&ts)));
            return Err((reason, raw(&ValueRef::Array(vec![ts, body]))));
        }
    };
    let (sec, nsec) = match time {
        EventTime::GroupMarker => return Ok(None),
        EventTime::At { sec, nsec } => (sec, nsec),
    };
    if !matches!(body, ValueRef::Map(_)) {
        let reason = "the record body is not a map".to_string();
        return Err((reason, raw(&ValueRef::Array(vec![ts, body]))));
    }
    let log = from_loose_as(to_loose(&body), kind, || "event".into())
        .map_err(|e| (e.to_string(), raw(&body)))?;
    Ok(Some(finish(log, kind, sec, nsec, metadata.as_ref(), tag)))
}

/// Fills `time` when the record has none and adds the Fluent Bit arguments. A value
/// already present under one of their keys is kept (ours goes to `key#2`, ...). A dynamic
/// record gets only the time (for its hour; it is not one of its fields): its columns are
/// its own fields.
fn finish<'a>(
    mut log: LogRef<'a>,
    kind: RecordType,
    sec: i64,
    nsec: u32,
    metadata: Option<&ValueRef<'_>>,
    tag: &'a str,
) -> LogRef<'a> {
    let fluent_time = Utc
        .timestamp_opt(sec, nsec)
        .single()
        .map(format_time)
        .unwrap_or_else(|| format!("{sec}.{nsec:09}"));
    if log.time.is_empty() {
        log.time = Cow::Owned(fluent_time.clone());
    }
    if kind == RecordType::Dynamic {
        return log;
    }
    let args = log.args.get_or_insert_with(BTreeMap::new);
    insert_unique(args, Cow::Borrowed(ARG_TAG), Cow::Borrowed(tag));
    insert_unique(args, Cow::Borrowed(ARG_TIME), Cow::Owned(fluent_time));
    if let Some(meta @ ValueRef::Map(entries)) = metadata
        && !entries.is_empty()
    {
        insert_unique(
            args,
            Cow::Borrowed(ARG_METADATA),
            Cow::Owned(compact(&to_loose(meta))),
        );
    }
    log
}

fn event_time(ts: &ValueRef<'_>) -> Option<EventTime> {
    match ts {
        ValueRef::Ext(0, payload) if payload.len() == 8 => {
            let sec = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
            let nsec = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
            if nsec == 0 && (sec == 0xFFFF_FFFF || sec == 0xFFFF_FFFE) {
                Some(EventTime::GroupMarker)
            } else if nsec >= 1_000_000_000 {
                None
            } else {
                Some(EventTime::At {
                    sec: i64::from(sec),
                    nsec,
                })
            }
        }
        ValueRef::Integer(n) => match (n.as_u64(), n.as_i64()) {
            (Some(sec), _) => Some(EventTime::At {
                sec: i64::try_from(sec).ok()?,
                nsec: 0,
            }),
            (None, Some(-1 | -2)) => Some(EventTime::GroupMarker),
            _ => None,
        },
        ValueRef::F32(f) => float_time(f64::from(*f)),
        ValueRef::F64(f) => float_time(*f),
        _ => None,
    }
}

fn float_time(f: f64) -> Option<EventTime> {
    if !f.is_finite() || f < 0.0 || f >= i64::MAX as f64 {
        return None;
    }
    let sec = f.trunc();
    let nsec = (((f - sec) * 1e9) as u32).min(999_999_999);
    Some(EventTime::At {
        sec: sec as i64,
        nsec,
    })
}

/// Converts a msgpack value to the lenient record value, borrowing strings.
fn to_loose<'a>(v: &ValueRef<'a>) -> Loose<'a> {
    match v {
        ValueRef::Nil => Loose::Null,
        ValueRef::Boolean(b) => Loose::Bool(*b),
        ValueRef::Integer(n) => match n.as_u64() {
            Some(u) => Loose::U64(u),
            None => Loose::I64(n.as_i64().unwrap_or_default()),
        },
        ValueRef::F32(f) => Loose::F64(f64::from(*f)),
        ValueRef::F64(f) => Loose::F64(*f),
        ValueRef::String(s) => match s.into_str() {
            Some(text) => Loose::Str(Cow::Borrowed(text)),
            None => Loose::Bytes(s.as_bytes().to_vec()),
        },
        ValueRef::Binary(b) => match std::str::from_utf8(b) {
            Ok(text) => Loose::Str(Cow::Borrowed(text)),
            Err(_) => Loose::Bytes(b.to_vec()),
        },
        ValueRef::Array(items) => Loose::Array(items.iter().map(to_loose).collect()),
        ValueRef::Map(entries) => Loose::Map(
            entries
                .iter()
                .map(|(k, v)| (key_text(k), to_loose(v)))
                .collect(),
        ),
        ValueRef::Ext(kind, payload) => match event_time(v) {
            Some(EventTime::At { sec, nsec }) => match Utc.timestamp_opt(sec, nsec).single() {
                Some(t) => Loose::Str(Cow::Owned(format_time(t))),
                None => Loose::Str(Cow::Owned(format!("ext{kind}:{}", hex(payload)))),
            },
            _ => Loose::Str(Cow::Owned(format!("ext{kind}:{}", hex(payload)))),
        },
    }
}

fn key_text<'a>(k: &ValueRef<'a>) -> Cow<'a, str> {
    match to_loose(k) {
        Loose::Str(s) => s,
        Loose::Null => Cow::Borrowed(""),
        Loose::Bool(b) => Cow::Owned(b.to_string()),
        Loose::I64(n) => Cow::Owned(n.to_string()),
        Loose::U64(n) => Cow::Owned(n.to_string()),
        Loose::F64(f) => Cow::Owned(f.to_string()),
        Loose::Bytes(b) => Cow::Owned(hex(&b)),
        other => Cow::Owned(compact(&other)),
    }
}

fn compact(v: &Loose<'_>) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("<unprintable: {e}>"))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A short description of a rejected event for log lines (the full text goes to the DLQ).
pub fn summary(r: &Rejected) -> String {
    format!("{}: {} ({})", r.what, r.reason, truncate(&r.raw, 120))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmp::encode;

    fn ext_time(out: &mut Vec<u8>, sec: u32, nsec: u32, ext8: bool) {
        if ext8 {
            out.extend_from_slice(&[0xc7, 8, 0]);
        } else {
            out.extend_from_slice(&[0xd7, 0]);
        }
        out.extend_from_slice(&sec.to_be_bytes());
        out.extend_from_slice(&nsec.to_be_bytes());
    }

    fn body(out: &mut Vec<u8>, pairs: &[(&str, &str)]) {
        encode::write_map_len(out, pairs.len() as u32).expect("vec write");
        for (k, v) in pairs {
            encode::write_str(out, k).expect("vec write");
            encode::write_str(out, v).expect("vec write");
        }
    }

    fn v2(out: &mut Vec<u8>, sec: u32, nsec: u32, pairs: &[(&str, &str)]) {
        out.extend_from_slice(&[0x92, 0x92]);
        ext_time(out, sec, nsec, false);
        out.push(0x80);
        body(out, pairs);
    }

    #[test]
    fn observed_dummy_bytes_decode() {
        // Bytes Fluent Bit 5.1.1's dummy input produced for {"message":"hello","n":1}.
        let bytes = [
            0x92, 0x92, 0xd7, 0x00, 0x6b, 0x05, 0x6c, 0x3b, 0x0a, 0x95, 0xaa, 0x12, 0x80, 0x82,
            0xa7, 0x6d, 0x65, 0x73, 0x73, 0x61, 0x67, 0x65, 0xa5, 0x68, 0x65, 0x6c, 0x6c, 0x6f,
            0xa1, 0x6e, 0x01,
        ];
        let d = decode_chunk(&bytes, "test.a", RecordType::Log).expect("decodes");
        assert_eq!(d.records.len(), 1);
        let log = &d.records[0];
        assert_eq!(log.message, "hello");
        let args = log.args.as_ref().expect("args");
        assert_eq!(args[ARG_TAG], "test.a");
        assert_eq!(log.time, args[ARG_TIME]);
        assert!(log.time.starts_with("2026-11-"), "{}", log.time);
        assert!(log.time.ends_with(&format!(".{:09}Z", 0x0a95aa12u32)));
        assert_eq!(log.extra_fields.as_ref().expect("n kept")["n"], "1");
    }

    #[test]
    fn v1_and_v2_mixed_with_every_timestamp_encoding() {
        let mut c = Vec::new();
        v2(&mut c, 1_700_000_000, 5, &[("message", "a")]);
        // v1 fixext8
        c.push(0x92);
        ext_time(&mut c, 1_700_000_001, 6, false);
        body(&mut c, &[("message", "b")]);
        // v1 ext8
        c.push(0x92);
        ext_time(&mut c, 1_700_000_002, 7, true);
        body(&mut c, &[("message", "c")]);
        // v1 positive int (uint32) and int64 holding a positive value
        c.push(0x92);
        encode::write_u32(&mut c, 1_700_000_003).expect("vec write");
        body(&mut c, &[("message", "d")]);
        c.push(0x92);
        encode::write_i64(&mut c, 1_700_000_004).expect("vec write");
        body(&mut c, &[("message", "e")]);
        // v1 float64 and float32
        c.push(0x92);
        encode::write_f64(&mut c, 1_700_000_005.25).expect("vec write");
        body(&mut c, &[("message", "f")]);
        c.push(0x92);
        encode::write_f32(&mut c, 1024.5).expect("vec write");
        body(&mut c, &[("message", "g")]);
        // v2 with ext8 time and a map32 empty metadata
        c.extend_from_slice(&[0x92, 0x92]);
        ext_time(&mut c, 1_700_000_006, 8, true);
        c.extend_from_slice(&[0xdf, 0, 0, 0, 0]);
        body(&mut c, &[("message", "h")]);
        let d = decode_chunk(&c, "t", RecordType::Log).expect("decodes");
        assert!(d.rejected.is_empty(), "{:?}", d.rejected);
        let got: Vec<(&str, &str)> = d.records.iter().map(|l| (&*l.message, &*l.time)).collect();
        assert_eq!(
            got,
            vec![
                ("a", "2023-11-14T22:13:20.000000005Z"),
                ("b", "2023-11-14T22:13:21.000000006Z"),
                ("c", "2023-11-14T22:13:22.000000007Z"),
                ("d", "2023-11-14T22:13:23.000000000Z"),
                ("e", "2023-11-14T22:13:24.000000000Z"),
                ("f", "2023-11-14T22:13:25.250000000Z"),
                ("g", "1970-01-01T00:17:04.500000000Z"),
                ("h", "2023-11-14T22:13:26.000000008Z"),
            ]
        );
    }

    #[test]
    fn map16_and_map32_bodies_and_metadata_are_kept() {
        let mut c = Vec::new();
        c.extend_from_slice(&[0x92, 0x92]);
        ext_time(&mut c, 10, 0, false);
        // metadata {"k":"v"} as map16
        c.extend_from_slice(&[0xde, 0, 1]);
        encode::write_str(&mut c, "k").expect("vec write");
        encode::write_str(&mut c, "v").expect("vec write");
        // body as map32 with 2 entries
        c.extend_from_slice(&[0xdf, 0, 0, 0, 2]);
        for (k, v) in [("level", "warn"), ("msg", "m32")] {
            encode::write_str(&mut c, k).expect("vec write");
            encode::write_str(&mut c, v).expect("vec write");
        }
        let d = decode_chunk(&c, "t", RecordType::Log).expect("decodes");
        let log = &d.records[0];
        assert_eq!((&*log.level, &*log.message), ("warn", "m32"));
        assert_eq!(
            log.args.as_ref().expect("args")[ARG_METADATA],
            r#"{"k":"v"}"#
        );
    }

    #[test]
    fn record_time_wins_over_fluent_time() {
        let mut c = Vec::new();
        v2(
            &mut c,
            10,
            0,
            &[("time", "2024-05-01T10:00:00Z"), ("message", "x")],
        );
        let d = decode_chunk(&c, "t", RecordType::Log).expect("decodes");
        assert_eq!(d.records[0].time, "2024-05-01T10:00:00Z");
        assert_eq!(
            d.records[0].args.as_ref().expect("args")[ARG_TIME],
            "1970-01-01T00:00:10.000000000Z"
        );
    }

    #[test]
    fn group_markers_are_skipped() {
        let mut c = Vec::new();
        v2(&mut c, 0xFFFF_FFFF, 0, &[("resource", "r")]);
        v2(&mut c, 20, 0, &[("message", "inside")]);
        v2(&mut c, 0xFFFF_FFFE, 0, &[]);
        c.push(0x92);
        encode::write_sint(&mut c, -1).expect("vec write");
        body(&mut c, &[]);
        c.push(0x92);
        encode::write_sint(&mut c, -2).expect("vec write");
        body(&mut c, &[]);
        let d = decode_chunk(&c, "t", RecordType::Log).expect("decodes");
        assert_eq!(d.group_markers, 4);
        assert_eq!(d.records.len(), 1);
        assert_eq!(d.records[0].message, "inside");
    }

    #[test]
    fn records_without_level_or_message_are_kept() {
        let mut c = Vec::new();
        v2(&mut c, 30, 0, &[("foo", "bar")]);
        let d = decode_chunk(&c, "t", RecordType::Log).expect("decodes");
        assert_eq!(d.records.len(), 1);
        assert_eq!(
            d.records[0].extra_fields.as_ref().expect("extra")["foo"],
            "bar"
        );
    }

    #[test]
    fn bad_events_are_rejected_and_the_rest_decodes() {
        let mut c = Vec::new();
        v2(&mut c, 1, 0, &[("message", "ok1")]);
        // body not a map
        c.extend_from_slice(&[0x92, 0x01]);
        encode::write_str(&mut c, "just text").expect("vec write");
        // string timestamp
        c.push(0x92);
        encode::write_str(&mut c, "yesterday").expect("vec write");
        body(&mut c, &[("message", "bad ts")]);
        // negative timestamp other than a marker
        c.push(0x92);
        encode::write_sint(&mut c, -5).expect("vec write");
        body(&mut c, &[("message", "neg")]);
        // 3-element root
        c.extend_from_slice(&[0x93, 0x01, 0x80, 0x80]);
        // header with 3 elements, metadata not a map
        c.extend_from_slice(&[0x92, 0x93, 0x01, 0x80, 0x80, 0x80]);
        c.extend_from_slice(&[0x92, 0x92, 0x01, 0x01, 0x80]);
        v2(&mut c, 2, 0, &[("message", "ok2")]);
        // not an array at all: the framing is lost from here on
        encode::write_u32(&mut c, 7).expect("vec write");
        v2(&mut c, 3, 0, &[("message", "after garbage")]);
        let d = decode_chunk(&c, "t", RecordType::Log).expect("decodes");
        let msgs: Vec<&str> = d.records.iter().map(|l| &*l.message).collect();
        assert_eq!(msgs, vec!["ok1", "ok2"]);
        assert_eq!(d.rejected.len(), 7, "{:?}", d.rejected);
        assert!(d.rejected[6].reason.contains("must be an array"));
        assert!(d.rejected[6].raw.starts_with("0xce00000007"));
        assert!(d.rejected[0].reason.contains("not a map"));
        assert!(d.rejected[0].raw.contains("just text"));
        assert!(d.rejected[1].reason.contains("timestamp"));
        assert!(d.rejected[1].raw.contains("bad ts"));
        assert!(d.rejected[2].raw.contains("neg"));
        assert!(d.rejected[0].what.contains("event 1"));
    }

    #[test]
    fn slices_decode_what_the_whole_chunk_decodes() {
        let mut c = Vec::new();
        for i in 0..9 {
            v2(&mut c, 1 + i, 0, &[("message", &format!("m{i}"))]);
            if i % 4 == 1 {
                c.extend_from_slice(&[0x92, 0x01]);
                encode::write_str(&mut c, "not a map").expect("vec write");
            }
        }
        // Broken framing, then an event nothing can trust any more.
        encode::write_u32(&mut c, 7).expect("vec write");
        v2(&mut c, 99, 0, &[("message", "after garbage")]);
        let whole = decode_chunk(&c, "t", RecordType::Log).expect("decodes");
        let shown = |d: &Decoded<'_>| -> (Vec<String>, Vec<(String, String)>, usize) {
            (
                d.records.iter().map(|l| l.message.to_string()).collect(),
                d.rejected
                    .iter()
                    .map(|r| (r.what.clone(), r.reason.clone()))
                    .collect(),
                d.group_markers,
            )
        };
        assert_eq!(whole.records.len(), 9);
        assert_eq!(
            whole.rejected.len(),
            3,
            "two bodies that are not maps, the framing"
        );
        for per in 1..=5 {
            let mut decoder = ChunkDecoder::new(&c, "t", RecordType::Log);
            let mut all = Decoded::default();
            let mut slices = 0;
            while let Some(d) = decoder.next_slice(per).expect("decodes") {
                assert!(d.records.len() + d.rejected.len() <= per);
                slices += 1;
                all.records.extend(d.records);
                all.rejected.extend(d.rejected);
                all.group_markers += d.group_markers;
            }
            assert_eq!(shown(&all), shown(&whole), "{per} per slice");
            assert!(slices >= 11 / per, "{per} per slice: {slices} slices");
            assert_eq!(decoder.events(), 11, "{per} per slice");
            assert!(decoder.consumed() < c.len(), "the garbage is not consumed");
        }
    }

    #[test]
    fn garbage_at_the_start_is_an_error() {
        for garbage in [
            &b"hello world"[..],
            &[0xc1, 0x00, 0x01],
            &[0xdf, 0xff, 0xff, 0xff],
        ] {
            let err = decode_chunk(garbage, "t", RecordType::Log).expect_err("not events");
            assert!(err.to_string().contains("msgpack"), "{err}");
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn every_truncation_is_handled_without_panic_or_overread() {
        let mut c = Vec::new();
        v2(&mut c, 1, 0, &[("message", "first"), ("level", "info")]);
        let first_len = c.len();
        v2(&mut c, 2, 0, &[("message", "second")]);
        for cut in 0..c.len() {
            let part = &c[..cut];
            match decode_chunk(part, "t", RecordType::Log) {
                Ok(d) => {
                    let expect_first = usize::from(cut >= first_len);
                    assert_eq!(d.records.len(), expect_first, "cut {cut}");
                    if cut > first_len {
                        assert_eq!(d.rejected.len(), 1, "cut {cut}");
                        assert!(d.rejected[0].raw.starts_with("0x"));
                        assert_eq!(d.rejected[0].raw.len(), 2 + 2 * (cut - first_len));
                    }
                }
                Err(e) => {
                    assert!(cut < first_len, "cut {cut}: {e}");
                }
            }
        }
        assert_eq!(
            decode_chunk(&c, "t", RecordType::Log)
                .expect("whole")
                .records
                .len(),
            2
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..400usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 24) as u8
                })
                .collect();
            let _ = decode_chunk(&bytes, "fuzz", RecordType::Log);
        }
    }

    fn write_json(out: &mut Vec<u8>, v: &serde_json::Value) {
        use serde_json::Value;
        match v {
            Value::Null => encode::write_nil(out).expect("vec write"),
            Value::Bool(b) => encode::write_bool(out, *b).expect("vec write"),
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => encode::write_uint(out, u).map(|_| ()).expect("vec write"),
                (None, Some(i)) => encode::write_sint(out, i).map(|_| ()).expect("vec write"),
                _ => encode::write_f64(out, n.as_f64().expect("float")).expect("vec write"),
            },
            Value::String(s) => encode::write_str(out, s).expect("vec write"),
            Value::Array(a) => {
                encode::write_array_len(out, a.len() as u32).expect("vec write");
                a.iter().for_each(|x| write_json(out, x));
            }
            Value::Object(m) => {
                encode::write_map_len(out, m.len() as u32).expect("vec write");
                for (k, x) in m {
                    encode::write_str(out, k).expect("vec write");
                    write_json(out, x);
                }
            }
        }
    }

    #[test]
    fn fast_path_equals_the_general_path() {
        let mut g = crate::record::generator::Generator::new(7);
        let mut events = Vec::new();
        for i in 0..2000u32 {
            let mut e = Vec::new();
            v2(&mut e, 1_700_000_000 + i, i, &[]);
            e.pop(); // the empty body map written by v2()
            let mut body = g.next_value();
            if i % 3 == 0 {
                body["nested"] = serde_json::json!({"a": [1, {"b": null}], "bin": "x"});
            }
            write_json(&mut e, &body);
            events.push(e);
        }
        // A body with non-UTF-8 bytes in a str, a bin value and an ext value.
        let mut odd = vec![
            0x92, 0x01, 0x83, 0xa1, b'a', 0xa2, 0xff, 0xfe, 0xa1, b'b', 0xc4, 2, 1, 2,
        ];
        odd.extend_from_slice(&[0xa1, b'c', 0xd6, 5, 1, 2, 3, 4]);
        events.push(odd);
        // Keys that are not UTF-8, or usual names in other spellings, beside usual ones.
        let mut keys = vec![0x92, 0x01, 0x84, 0xa2, 0xff, 0xfe, 0xa1, b'x'];
        keys.extend_from_slice(&[
            0xa5, b'L', b'e', b'v', b'e', b'l', 0xa4, b'w', b'a', b'r', b'n',
        ]);
        keys.extend_from_slice(&[0xa3, b'm', b's', b'g', 0xa2, b'h', b'i']);
        keys.extend_from_slice(&[
            0xa4, b't', b'a', b'g', b's', 0x91, 0xa4, b'l', b'v', b'l', b'2',
        ]);
        events.push(keys);
        for e in &events {
            let mut rest = &e[..];
            let fast = fast_event(&mut rest, "t", RecordType::Log)
                .unwrap_or_else(|| panic!("fast path not taken: {:02x?}", &e[..e.len().min(40)]));
            assert!(rest.is_empty(), "the fast path stopped inside the event");
            assert_eq!(fast, slow_event(e, "t", RecordType::Log));
        }
        // Followed by more events, the fast path stops exactly where the next one starts.
        let two = [events[0].clone(), events[1].clone()].concat();
        let mut rest = &two[..];
        assert!(fast_event(&mut rest, "t", RecordType::Log).is_some());
        assert_eq!(rest, &events[1][..]);
        let chunk: Vec<u8> = events.concat();
        assert_eq!(
            decode_chunk(&chunk, "t", RecordType::Log)
                .expect("decodes")
                .records
                .len(),
            events.len()
        );
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let mut c = vec![0x92, 0x01];
        c.extend(std::iter::repeat_n(0x91, 100_000));
        c.push(0x80);
        // The framing breaks at depth 64: an error, no stack overflow.
        assert!(decode_chunk(&c, "t", RecordType::Log).is_err());
    }

    #[test]
    fn existing_tag_arg_is_not_overwritten() {
        let mut c = vec![0x92, 0x01, 0x81];
        encode::write_str(&mut c, "args").expect("vec write");
        c.push(0x81);
        encode::write_str(&mut c, "fluent-tag").expect("vec write");
        encode::write_str(&mut c, "theirs").expect("vec write");
        let d = decode_chunk(&c, "ours", RecordType::Log).expect("decodes");
        let args = d.records[0].args.as_ref().expect("args");
        assert_eq!(args["fluent-tag"], "theirs");
        assert_eq!(args["fluent-tag#2"], "ours");
    }

    #[test]
    fn dynamic_events_are_their_own_fields_with_fluent_time_as_their_hour() {
        let mut c = Vec::new();
        v2(&mut c, 1_700_000_000, 5, &[("message", "a"), ("n", "1")]);
        // The slow path (a nested map) must give the same kind of record.
        c.extend_from_slice(&[0x92, 0x92]);
        ext_time(&mut c, 1_700_000_001, 0, false);
        c.push(0x80);
        c.push(0x82);
        encode::write_str(&mut c, "when").expect("vec write");
        encode::write_str(&mut c, "2026-12-01T10:00:00Z").expect("vec write");
        encode::write_str(&mut c, "o").expect("vec write");
        c.push(0x81);
        encode::write_str(&mut c, "k").expect("vec write");
        encode::write_u8(&mut c, 7).expect("vec write");
        let d = decode_chunk(&c, "t", RecordType::Dynamic).expect("decodes");
        assert!(d.rejected.is_empty(), "{:?}", d.rejected);
        assert_eq!(d.records.len(), 2);
        let fields = |i: usize| -> Vec<(String, String)> {
            d.records[i]
                .extra_fields
                .iter()
                .flatten()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            fields(0),
            [
                ("message".into(), r#""a""#.into()),
                ("n".into(), r#""1""#.into())
            ]
        );
        assert_eq!(d.records[0].time, "2023-11-14T22:13:20.000000005Z");
        assert!(d.records[0].args.is_none(), "no Fluent Bit arguments");
        assert_eq!(
            fields(1),
            [
                ("o".into(), r#"{"k":7}"#.into()),
                ("when".into(), r#""2026-12-01T10:00:00Z""#.into())
            ]
        );
        assert_eq!(d.records[1].time, "2026-12-01T10:00:00Z");
    }
}

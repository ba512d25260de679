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

use std::borrow::{Borrow, Cow};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::marker::PhantomData;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::{Log, LogOf, LogRef};
use crate::config::RecordType;
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

impl<'a> Loose<'a> {
    /// Like [`Loose::scalar_text`], consuming the value (a string is moved, borrowed or
    /// not, never copied); a non-scalar is handed back.
    fn into_scalar_text(self) -> std::result::Result<Cow<'a, str>, Self> {
        match self {
            Loose::Str(s) => Ok(s),
            Loose::Null | Loose::Array(_) | Loose::Map(_) => Err(self),
            other => Ok(Cow::Owned(other.scalar_text().unwrap_or_default())),
        }
    }

    /// Like [`Loose::any_text`], consuming the value.
    fn into_any_text(self) -> Cow<'a, str> {
        match self {
            Loose::Str(s) => s,
            other => Cow::Owned(other.any_text()),
        }
    }

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

/// Deepest nesting accepted inside one record; deeper input is an error (it could
/// otherwise exhaust the stack of a small thread).
pub const MAX_NESTING: u32 = 64;

/// Visits any value, `depth` levels below the record.
struct LooseVisitor(u32);

/// A [`DeserializeSeed`] for a value nested `0` levels deep.
#[derive(Clone, Copy)]
struct LooseSeed(u32);

impl<'de> DeserializeSeed<'de> for LooseSeed {
    type Value = Loose<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Loose<'de>, D::Error> {
        if self.0 > MAX_NESTING {
            return Err(serde::de::Error::custom(format!(
                "values nested deeper than {MAX_NESTING} levels"
            )));
        }
        d.deserialize_any(LooseVisitor(self.0))
    }
}

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
        d.deserialize_any(LooseVisitor(self.0))
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
        while let Some(item) = seq.next_element_seed(LooseSeed(self.0 + 1))? {
            items.push(item);
        }
        Ok(Loose::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Loose<'de>, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1024));
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let value = map.next_value_seed(LooseSeed(self.0 + 1))?;
            entries.push((key.0, value));
        }
        Ok(Loose::Map(entries))
    }
}

impl<'de> Deserialize<'de> for Loose<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        LooseSeed(0).deserialize(d)
    }
}

/// A map key, borrowed from the input when possible; non-string keys become their text.
struct Key<'a>(Cow<'a, str>);

/// Visits a map key: strings straight to text, with no [`Loose`] in between (keys are
/// nearly always strings); anything else as [`Loose::any_text`] of the value.
struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a map key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> std::result::Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed("")))
    }
    fn visit_none<E>(self) -> std::result::Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed("")))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Key<'de>, D::Error> {
        d.deserialize_any(KeyVisitor)
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(Loose::Bool(v).any_text())))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(Loose::I64(v).any_text())))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(Loose::U64(v).any_text())))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(Loose::F64(v).any_text())))
    }
    fn visit_borrowed_bytes<E: serde::de::Error>(
        self,
        v: &'de [u8],
    ) -> std::result::Result<Key<'de>, E> {
        LooseVisitor(0).visit_borrowed_bytes(v).map(Key::from_loose)
    }
    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> std::result::Result<Key<'de>, E> {
        LooseVisitor(0).visit_bytes(v).map(Key::from_loose)
    }
    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> std::result::Result<Key<'de>, E> {
        LooseVisitor(0).visit_byte_buf(v).map(Key::from_loose)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<Key<'de>, A::Error> {
        LooseVisitor(0).visit_seq(seq).map(Key::from_loose)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<Key<'de>, A::Error> {
        LooseVisitor(0).visit_map(map).map(Key::from_loose)
    }
}

impl<'a> Key<'a> {
    fn from_loose(v: Loose<'a>) -> Key<'a> {
        Key(match v {
            Loose::Str(s) => s,
            other => Cow::Owned(other.any_text()),
        })
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(KeyVisitor)
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

/// A name of [`USUAL`] normalised (ASCII lowercase, `_` and `-` dropped), zero-padded.
#[derive(Clone, Copy)]
struct Normalised {
    bytes: [u8; 32],
    len: usize,
}

const fn normalise(name: &[u8]) -> Normalised {
    let mut out = Normalised {
        bytes: [0; 32],
        len: 0,
    };
    let mut i = 0;
    while i < name.len() {
        let b = name[i];
        if b != b'_' && b != b'-' {
            out.bytes[out.len] = b.to_ascii_lowercase();
            out.len += 1;
        }
        i += 1;
    }
    out
}

/// [`USUAL`] normalised, in its order.
const NORMALISED: [Normalised; USUAL.len()] = {
    let mut out = [Normalised {
        bytes: [0; 32],
        len: 0,
    }; USUAL.len()];
    let mut i = 0;
    while i < USUAL.len() {
        if USUAL[i].0.len() > 32 {
            panic!("a usual name is longer than 32 bytes");
        }
        out[i] = normalise(USUAL[i].0.as_bytes());
        i += 1;
    }
    out
};

/// Slots of the open-addressing tables behind [`lookup`] (a power of two, over twice
/// [`USUAL`]).
const TABLE_SLOTS: usize = 128;

/// `sigs` by slot, built at compile time: each slot holds an index into `sigs` plus one, or
/// 0 when empty; collisions probe the next slot.
const fn table_of(sigs: &[Signature]) -> [u8; TABLE_SLOTS] {
    let mut table = [0u8; TABLE_SLOTS];
    let mut i = 0;
    while i < sigs.len() {
        let mut slot = sigs[i].slot();
        while table[slot] != 0 {
            slot = (slot + 1) & (TABLE_SLOTS - 1);
        }
        table[slot] = (i + 1) as u8;
        i += 1;
    }
    table
}

/// The index in `sigs` of `sig`, found through `table` (made by [`table_of`]).
#[inline]
fn probe(table: &[u8; TABLE_SLOTS], sigs: &[Signature], sig: Signature) -> Option<usize> {
    let mut slot = sig.slot();
    loop {
        let i = (table[slot] as usize).checked_sub(1)?;
        if sigs[i] == sig {
            return Some(i);
        }
        slot = (slot + 1) & (TABLE_SLOTS - 1);
    }
}

/// The signatures of `names` (each at most 32 bytes), in their order.
const fn signatures_of<const N: usize>(names: [&[u8]; N]) -> [Signature; N] {
    let mut sigs = [Signature {
        len: 0,
        words: [0; 4],
    }; N];
    let mut i = 0;
    while i < N {
        let Some(sig) = signature(names[i]) else {
            panic!("a column name is empty or longer than 32 bytes");
        };
        sigs[i] = sig;
        i += 1;
    }
    sigs
}

/// A key of at most 32 bytes as its length and four (overlapping) little-endian words,
/// which together cover every byte: two keys are equal exactly when their signatures are.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Signature {
    len: usize,
    words: [u64; 4],
}

/// The little-endian word of `b` at `at` (at most 8 bytes, zero-padded).
const fn word(b: &[u8], at: usize, len: usize) -> u64 {
    let mut w = 0u64;
    let mut i = 0;
    while i < len {
        w |= (b[at + i] as u64) << (8 * i);
        i += 1;
    }
    w
}

const fn signature(b: &[u8]) -> Option<Signature> {
    let len = b.len();
    if len == 0 || len > 32 {
        return None;
    }
    let words = if len < 8 {
        [word(b, 0, len), 0, 0, 0]
    } else if len <= 16 {
        [word(b, 0, 8), word(b, len - 8, 8), 0, 0]
    } else {
        [
            word(b, 0, 8),
            word(b, len - 8, 8),
            word(b, 8, 8),
            word(b, len - 16, 8),
        ]
    };
    Some(Signature { len, words })
}

impl Signature {
    /// The signature of `b` at run time: the same value as [`signature`], read with
    /// unaligned word loads instead of byte by byte.
    #[inline]
    fn of(b: &[u8]) -> Option<Signature> {
        let len = b.len();
        let load = |at: usize| -> u64 {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let words = match len {
            0 => return None,
            1..=7 => return signature(b),
            8..=16 => [load(0), load(len - 8), 0, 0],
            17..=32 => [load(0), load(len - 8), load(8), load(len - 16)],
            _ => return None,
        };
        Some(Signature { len, words })
    }

    const fn slot(&self) -> usize {
        let [a, b, c, d] = self.words;
        let h = (a ^ b.rotate_left(17) ^ c.rotate_left(31) ^ d.rotate_left(47) ^ self.len as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // The top bits, as many as index a slot.
        (h >> (64 - TABLE_SLOTS.trailing_zeros())) as usize
    }
}

/// Every name a column answers to, as keys are usually written (snake_case and the
/// aliases). [`lookup`] matches a key against them as it is, with no normalising; a key
/// written otherwise is normalised and compared with [`NORMALISED`].
const USUAL: &[(&str, Field)] = &[
    ("time", Field::Time),
    ("timestamp", Field::Time),
    ("when", Field::Time),
    ("@timestamp", Field::Time),
    ("level", Field::Level),
    ("lvl", Field::Level),
    ("severity", Field::Level),
    ("correlation_id", Field::CorrelationId),
    ("session_id", Field::SessionId),
    ("message_id", Field::MessageId),
    ("person_id", Field::PersonId),
    ("user_id", Field::UserId),
    ("device_id", Field::DeviceId),
    ("message", Field::Message),
    ("msg", Field::Message),
    ("log", Field::Message),
    ("business_capability", Field::BusinessCapability),
    ("business_domain", Field::BusinessDomain),
    ("business_service", Field::BusinessService),
    ("application_service", Field::ApplicationService),
    ("audit", Field::Audit),
    ("resource_type", Field::ResourceType),
    ("cloud_provider", Field::CloudProvider),
    ("source_id", Field::SourceId),
    ("http_response", Field::HttpResponse),
    ("error_code", Field::ErrorCode),
    ("error", Field::ErrorCode),
    ("error_message", Field::ErrorCode),
    ("stack_trace", Field::StackTrace),
    ("duration", Field::Duration),
    ("elapsed", Field::Duration),
    ("trace_ip", Field::TraceIp),
    ("region", Field::Region),
    ("az", Field::Az),
    ("tags", Field::Tags),
    ("args", Field::Args),
    (
        "transaction_message_reference",
        Field::TransactionMessageReference,
    ),
    ("ttl", Field::Ttl),
    ("auto_index", Field::AutoIndex),
    ("logger_name", Field::LoggerName),
    ("thread_name", Field::ThreadName),
    ("extra_fields", Field::ExtraFields),
    ("host", Field::Host),
    ("hostname", Field::Host),
];

/// The names of [`USUAL`] as written.
const USUAL_NAMES: [&[u8]; USUAL.len()] = {
    let mut names: [&[u8]; USUAL.len()] = [&[]; USUAL.len()];
    let mut i = 0;
    while i < USUAL.len() {
        names[i] = USUAL[i].0.as_bytes();
        i += 1;
    }
    names
};
/// The names of [`USUAL`] normalised ([`NORMALISED`]).
const NORMALISED_NAMES: [&[u8]; USUAL.len()] = {
    let mut names: [&[u8]; USUAL.len()] = [&[]; USUAL.len()];
    let mut i = 0;
    while i < USUAL.len() {
        let n = &NORMALISED[i];
        names[i] = n.bytes.split_at(n.len).0;
        i += 1;
    }
    names
};

/// Signatures and slot tables of [`USUAL`] as written and normalised.
const USUAL_SIGNATURES: [Signature; USUAL.len()] = signatures_of(USUAL_NAMES);
const USUAL_TABLE: [u8; TABLE_SLOTS] = table_of(&USUAL_SIGNATURES);
const NORMALISED_SIGNATURES: [Signature; USUAL.len()] = signatures_of(NORMALISED_NAMES);
const NORMALISED_TABLE: [u8; TABLE_SLOTS] = table_of(&NORMALISED_SIGNATURES);

/// The column a key lands in. A key written the usual way ([`USUAL`]) is found by its
/// signature (a few word loads and compares); any other is normalised (ASCII lowercase,
/// `_` and `-` dropped) and found by its signature among [`NORMALISED`].
fn lookup(key: &str) -> Option<Field> {
    Signature::of(key.as_bytes())
        .and_then(|sig| probe(&USUAL_TABLE, &USUAL_SIGNATURES, sig))
        .map_or_else(|| lookup_normalised(key), |i| Some(USUAL[i].1))
}

/// The usual name (see [`USUAL`]) that `key` is byte for byte, as static text: a key
/// found here needs no UTF-8 validation.
pub(crate) fn usual_name(key: &[u8]) -> Option<&'static str> {
    let sig = Signature::of(key)?;
    probe(&USUAL_TABLE, &USUAL_SIGNATURES, sig).map(|i| USUAL[i].0)
}

/// [`lookup`] for keys not written the usual way.
fn lookup_normalised(key: &str) -> Option<Field> {
    let mut buf = [0u8; 32];
    let mut n = 0;
    for b in key.bytes() {
        if b == b'_' || b == b'-' {
            continue;
        }
        // Longer than any name: not a column.
        if n == buf.len() {
            return None;
        }
        // Only ASCII bytes are dropped or lowercased, so bytes compare like the text.
        buf[n] = b.to_ascii_lowercase();
        n += 1;
    }
    let sig = Signature::of(&buf[..n])?;
    probe(&NORMALISED_TABLE, &NORMALISED_SIGNATURES, sig).map(|i| USUAL[i].1)
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

fn to_list<'a, S: Text<'a>>(v: Loose<'a>) -> std::result::Result<Vec<S>, Loose<'a>> {
    match v {
        Loose::Array(items) => Ok(items
            .into_iter()
            .map(|item| S::from(item.into_any_text()))
            .collect()),
        Loose::Map(_) => Err(v),
        scalar => scalar.into_scalar_text().map(|s| vec![S::from(s)]),
    }
}

/// The text type of a record being decoded: `String` for a [`Log`], `Cow<'a, str>` for a
/// [`super::LogRef`] borrowing the input.
pub trait Text<'a>: From<Cow<'a, str>> + Ord + Borrow<str> + Default {}

impl<'a, S: From<Cow<'a, str>> + Ord + Borrow<str> + Default> Text<'a> for S {}

/// Inserts `key` (or `key#2`, `key#3`... when taken) into a map column.
pub(crate) fn insert_unique<'a, S: Text<'a>>(
    map: &mut BTreeMap<S, S>,
    key: Cow<'a, str>,
    value: S,
) {
    use std::collections::btree_map::Entry;
    // One search in the usual case (the key is not taken).
    let key = match map.entry(S::from(key)) {
        Entry::Vacant(slot) => {
            slot.insert(value);
            return;
        }
        Entry::Occupied(taken) => taken.key().borrow().to_string(),
    };
    let mut n = 2;
    loop {
        let candidate = format!("{key}#{n}");
        if !map.contains_key(candidate.as_str()) {
            map.insert(S::from(Cow::Owned(candidate)), value);
            return;
        }
        n += 1;
    }
}

/// Accumulates one record; see the module rules.
struct Builder<S: Ord> {
    log: LogOf<S>,
    filled: u64,
    kind: RecordType,
}

impl<'a, S: Text<'a>> Builder<S> {
    fn new(kind: RecordType) -> Self {
        Builder {
            log: LogOf::default(),
            filled: 0,
            kind,
        }
    }

    /// One key/value of the input: into its column, or kept as an extra field.
    fn entry(&mut self, key: Cow<'a, str>, value: Loose<'a>) {
        if self.kind == RecordType::Dynamic {
            return self.dynamic_entry(key, value);
        }
        match lookup(&key) {
            Some(field) => self.set(field, key, value),
            None if matches!(value, Loose::Null) => {}
            None => self.extra(key, value),
        }
    }

    /// A dynamic record ([`RecordType::Dynamic`]) travels as a Log whose `extra_fields`
    /// hold every field under its own key with its value as compact JSON (strings quoted,
    /// so types survive the buffers). The partition-key fields and `time` are also copied
    /// into their Log columns, for the key and the hour, and are not written from there.
    // Kept out of line: the Log path's `entry` (and `apply`, inlined there) stay as small.
    #[inline(never)]
    fn dynamic_entry(&mut self, key: Cow<'a, str>, value: Loose<'a>) {
        if matches!(value, Loose::Null) {
            return;
        }
        if let Some(field) = lookup(&key) {
            let l = &mut self.log;
            let slot = match field {
                Field::Time => Some(&mut l.time),
                Field::BusinessCapability => Some(&mut l.business_capability),
                Field::BusinessDomain => Some(&mut l.business_domain),
                Field::BusinessService => Some(&mut l.business_service),
                Field::ApplicationService => Some(&mut l.application_service),
                _ => None,
            };
            let bit = 1u64 << (field as u32);
            if let Some(slot) = slot
                && self.filled & bit == 0
                && let Some(text) = value.scalar_text()
            {
                *slot = S::from(Cow::Owned(text));
                self.filled |= bit;
            }
        }
        let json = S::from(Cow::Owned(compact_json(&value)));
        insert_unique(
            self.log.extra_fields.get_or_insert_with(BTreeMap::new),
            key,
            json,
        );
    }

    fn extra(&mut self, key: Cow<'a, str>, value: Loose<'a>) {
        let text = S::from(value.into_any_text());
        insert_unique(
            self.log.extra_fields.get_or_insert_with(BTreeMap::new),
            key,
            text,
        );
    }

    fn set(&mut self, field: Field, key: Cow<'a, str>, value: Loose<'a>) {
        if matches!(value, Loose::Null) {
            return;
        }
        let bit = 1u64 << (field as u32);
        let repeatable = matches!(field, Field::Args | Field::ExtraFields);
        if self.filled & bit != 0 && !repeatable {
            self.extra(key, value);
            return;
        }
        match self.apply(field, value) {
            Ok(()) => self.filled |= bit,
            Err(misfit) => self.extra(key, misfit),
        }
    }

    /// Puts `value` into `field`, or hands it back when it does not fit (the caller keeps
    /// it as an extra field).
    fn apply(&mut self, field: Field, value: Loose<'a>) -> std::result::Result<(), Loose<'a>> {
        let l = &mut self.log;
        macro_rules! req {
            ($f:ident) => {{
                l.$f = S::from(value.into_scalar_text()?);
                Ok(())
            }};
        }
        macro_rules! opt {
            ($f:ident) => {{
                l.$f = Some(S::from(value.into_scalar_text()?));
                Ok(())
            }};
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
            Field::Audit => match to_bool(&value) {
                Some(b) => {
                    l.audit = Some(b);
                    Ok(())
                }
                None => Err(value),
            },
            Field::AutoIndex => match to_bool(&value) {
                Some(b) => {
                    l.auto_index = Some(b);
                    Ok(())
                }
                None => Err(value),
            },
            Field::TraceIp => {
                l.trace_ip = Some(to_list(value)?);
                Ok(())
            }
            Field::Tags => {
                l.tags = Some(to_list(value)?);
                Ok(())
            }
            Field::Args | Field::ExtraFields => {
                let Loose::Map(entries) = value else {
                    return Err(value);
                };
                let target = if field == Field::Args {
                    &mut l.args
                } else {
                    &mut l.extra_fields
                };
                let target = target.get_or_insert_with(BTreeMap::new);
                for (k, v) in entries {
                    insert_unique(target, k, S::from(v.into_any_text()));
                }
                Ok(())
            }
            Field::Host => {
                let host = S::from(value.into_scalar_text()?);
                insert_unique(
                    l.args.get_or_insert_with(BTreeMap::new),
                    Cow::Borrowed("host"),
                    host,
                );
                Ok(())
            }
        }
    }
}

struct LogVisitor<S>(RecordType, PhantomData<S>);

impl<'de, S: Text<'de>> Visitor<'de> for LogVisitor<S> {
    type Value = LogOf<S>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object (one log record)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<LogOf<S>, A::Error> {
        let mut b = Builder::new(self.0);
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let value = map.next_value_seed(LooseSeed(1))?;
            b.entry(key, value);
        }
        Ok(b.log)
    }
}

impl<'de, S: Text<'de>> Deserialize<'de> for LogOf<S> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_map(LogVisitor(RecordType::Log, PhantomData))
    }
}

/// Decodes one record as `RecordType` says, with any serde deserializer: the Log rules,
/// or a dynamic record carried in a Log (see `Builder::dynamic_entry`).
pub struct RecordSeed<S>(pub RecordType, pub PhantomData<S>);

impl<S> RecordSeed<S> {
    /// The seed for records of `kind`.
    pub fn new(kind: RecordType) -> Self {
        RecordSeed(kind, PhantomData)
    }
}

impl<'de, S: Text<'de>> DeserializeSeed<'de> for RecordSeed<S> {
    type Value = LogOf<S>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<LogOf<S>, D::Error> {
        d.deserialize_map(LogVisitor(self.0, PhantomData))
    }
}

/// Decodes one JSON text (a line of JSON Lines, an HTTP body) into a record.
/// `what` names the input in the error (`line 12 of logs.jsonl`).
pub fn decode_json_line(text: &str, what: impl FnOnce() -> String) -> Result<Log> {
    decode_json_bytes(text.as_bytes(), what)
}

/// Like [`decode_json_ref`] for records of `kind` (the Log rules, or a dynamic record).
pub fn decode_json_as<'a, S: Text<'a>>(
    bytes: &'a [u8],
    kind: RecordType,
    what: impl FnOnce() -> String,
) -> Result<LogOf<S>> {
    let parsed = match kind {
        RecordType::Log => sonic_rs::from_slice::<LogOf<S>>(bytes),
        RecordType::Dynamic => {
            // `from_slice` takes no seed, and a seeded Deserializer checks UTF-8 only
            // inside strings: check the whole text first.
            if let Err(e) = simdutf8::compat::from_utf8(bytes) {
                return Err(Error::Decode {
                    what: what(),
                    reason: format!("invalid UTF-8 at byte {}", e.valid_up_to()),
                });
            }
            let mut de = sonic_rs::Deserializer::from_slice(bytes);
            RecordSeed::new(kind)
                .deserialize(&mut de)
                .and_then(|log| de.end().map(|()| log))
        }
    };
    parsed.map_err(|e| Error::Decode {
        what: what(),
        reason: describe_json_error(&e),
    })
}

/// Like [`decode_json_line`] for raw bytes: UTF-8 is validated while parsing (no separate
/// pass), and invalid UTF-8 is reported as such.
///
/// Parsing uses `sonic-rs` (SIMD JSON with serde support): on the benchmark's records it
/// decodes ~30% faster than `serde_json` through the same lenient visitor.
pub fn decode_json_bytes(bytes: &[u8], what: impl FnOnce() -> String) -> Result<Log> {
    sonic_rs::from_slice::<Log>(bytes).map_err(|e| Error::Decode {
        what: what(),
        reason: describe_json_error(&e),
    })
}

/// Like [`decode_json_bytes`], borrowing the record's text from `bytes` where it can: no
/// allocation per string unless it has escapes.
pub fn decode_json_ref(bytes: &[u8], what: impl FnOnce() -> String) -> Result<LogRef<'_>> {
    sonic_rs::from_slice::<LogRef<'_>>(bytes).map_err(|e| Error::Decode {
        what: what(),
        reason: describe_json_error(&e),
    })
}

fn describe_json_error(e: &sonic_rs::Error) -> String {
    match e.classify() {
        sonic_rs::error::Category::TypeUnmatched => {
            format!("not a JSON object ({e}); each record must be an object")
        }
        _ => format!("broken JSON: {e}"),
    }
}

/// Builds a record from an already decoded map (the msgpack path). Anything other than a
/// map is an error naming `what`.
pub fn from_loose<'a, S: Text<'a>>(
    value: Loose<'a>,
    what: impl FnOnce() -> String,
) -> Result<LogOf<S>> {
    from_loose_as(value, RecordType::Log, what)
}

/// Like [`from_loose`] for records of `kind`.
pub fn from_loose_as<'a, S: Text<'a>>(
    value: Loose<'a>,
    kind: RecordType,
    what: impl FnOnce() -> String,
) -> Result<LogOf<S>> {
    let Loose::Map(entries) = value else {
        return Err(Error::Decode {
            what: what(),
            reason: format!(
                "the record body is not a map: {}",
                truncate(&value.any_text(), 200)
            ),
        });
    };
    let mut b = Builder::new(kind);
    for (key, value) in entries {
        b.entry(key, value);
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
    fn every_name_is_found_and_nothing_else() {
        for (n, (_, field)) in NORMALISED.iter().zip(USUAL) {
            let text = std::str::from_utf8(&n.bytes[..n.len]).expect("ascii");
            assert_eq!(lookup(text), Some(*field), "{text}");
            assert_eq!(lookup(&text.to_uppercase()), Some(*field), "{text}");
        }
        assert_eq!(
            lookup("Business_Capability"),
            Some(Field::BusinessCapability)
        );
        assert_eq!(lookup("correlation-id"), Some(Field::CorrelationId));
        assert_eq!(lookup("thread_name_"), Some(Field::ThreadName));
        for other in [
            "",
            "_",
            "times",
            "tim",
            "customer_tier",
            "argsx",
            "hosts",
            "ttl2",
        ] {
            assert_eq!(lookup(other), None, "{other}");
        }
        let long = "transaction_message_reference_and_then_some_more_text";
        assert_eq!(lookup(long), None);
        // The usual spellings are found by signature and agree with the normalised path.
        for (name, field) in USUAL {
            let text = *name;
            assert_eq!(lookup(text), Some(*field), "{text}");
            assert_eq!(lookup_normalised(text), Some(*field), "{text}");
            assert!(
                signature(name.as_bytes()) == Signature::of(name.as_bytes()),
                "{text}"
            );
            assert_eq!(usual_name(name.as_bytes()), Some(text));
        }
        for other in ["Time", "level_", "lv", "msgs", "", "x"] {
            assert_eq!(usual_name(other.as_bytes()), None, "{other}");
        }
        assert_eq!(usual_name(&[0xff, 0xfe]), None);
        // Near misses of every length fall through to the normalised path and agree.
        for (name, _) in USUAL {
            let text = *name;
            for variant in [
                format!("{text}x"),
                format!("x{text}"),
                text[..text.len() - 1].to_string(),
                text.replacen('_', "-", 1),
                text.to_uppercase(),
            ] {
                assert_eq!(lookup(&variant), lookup_normalised(&variant), "{variant}");
            }
        }
    }

    #[test]
    fn keys_of_every_kind_become_their_text() {
        let key = |json: &str| -> String {
            let mut d = serde_json::Deserializer::from_str(json);
            Key::deserialize(&mut d).expect("a key").0.into_owned()
        };
        assert_eq!(key(r#""plain""#), "plain");
        assert_eq!(key(r#""esc\"aped""#), "esc\"aped");
        assert_eq!(key("12"), "12");
        assert_eq!(key("-3"), "-3");
        assert_eq!(key("1.5"), "1.5");
        assert_eq!(key("true"), "true");
        assert_eq!(key("null"), "");
        assert_eq!(key(r#"[1,"a"]"#), r#"[1,"a"]"#);
        assert_eq!(key(r#"{"a":{"b":1}}"#), r#"{"a":{"b":1}}"#);
        let mut d = serde_json::Deserializer::from_str(r#""borrowed""#);
        assert!(matches!(
            Key::deserialize(&mut d).expect("key").0,
            Cow::Borrowed("borrowed")
        ));
    }

    #[test]
    fn from_loose_requires_a_map() {
        assert!(from_loose::<String>(Loose::I64(3), || "record 1".into()).is_err());
        let log: Log = from_loose(
            Loose::Map(vec![(
                Cow::Borrowed("message"),
                Loose::Str(Cow::Borrowed("x")),
            )]),
            || "r".into(),
        )
        .expect("map");
        assert_eq!(log.message, "x");
    }

    #[test]
    fn borrowed_decoding_borrows_plain_text_and_matches_owned() {
        let line = r#"{"message":"plain","level":"a\nb","tags":["x","y\u00e9"],"args":{"k":"v"},"extra":{"n":1},"n":5}"#;
        let r = decode_json_ref(line.as_bytes(), || "line 1".into()).expect("decodes");
        assert!(matches!(r.message, Cow::Borrowed("plain")));
        assert!(matches!(r.level, Cow::Owned(ref s) if s == "a\nb"));
        let tags = r.tags.as_ref().expect("tags");
        assert!(matches!(tags[0], Cow::Borrowed("x")));
        assert_eq!(tags[1], "yé");
        let owned = decode_json_bytes(line.as_bytes(), || "line 1".into()).expect("decodes");
        assert_eq!(r.clone().into_owned(), owned);
        assert_eq!(owned.borrowed(), r);
        let extra = owned.extra_fields.as_ref().expect("extra");
        assert_eq!(extra["extra"], r#"{"n":1}"#);
        assert_eq!(extra["n"], "5");
    }

    #[test]
    fn dynamic_records_keep_every_field_as_json_under_its_own_key() {
        let line = br#"{"Business-Capability":"pay","msg":"x","n":1,"f":"1","o":{"a":[1,null]},"z":null,"when":"2026-12-01T10:00:00Z"}"#;
        let log: Log =
            decode_json_as(line, RecordType::Dynamic, || "line 1".into()).expect("decodes");
        let extra = log.extra_fields.as_ref().expect("fields");
        let got: Vec<(&str, &str)> = extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("Business-Capability", r#""pay""#),
                ("f", r#""1""#),
                ("msg", r#""x""#),
                ("n", "1"),
                ("o", r#"{"a":[1,null]}"#),
                ("when", r#""2026-12-01T10:00:00Z""#),
            ]
        );
        // The key and the hour come from the record; nothing else is interpreted.
        assert_eq!(log.partition_key("unknown"), "pay:unknown:unknown:unknown");
        assert_eq!(log.time, "2026-12-01T10:00:00Z");
        assert_eq!(log.message, "");
        // The same rules from a msgpack-like map.
        let loose = Loose::Map(vec![
            (Cow::Borrowed("n"), Loose::I64(1)),
            (Cow::Borrowed("n"), Loose::Str(Cow::Borrowed("dup"))),
        ]);
        let log: Log = from_loose_as(loose, RecordType::Dynamic, || "event".into()).expect("map");
        let extra = log.extra_fields.expect("fields");
        assert_eq!(extra["n"], "1");
        assert_eq!(extra["n#2"], r#""dup""#);
        for bad in [&b"[1]"[..], b"{\"a\":1", b"{\"a\":\"\xff\"}", b"{} x"] {
            assert!(decode_json_as::<String>(bad, RecordType::Dynamic, || "x".into()).is_err());
        }
    }
}

//! A borrowing msgpack reader for the chunk decoder: [`skip`] finds where a value ends
//! without allocating (the framing check), and [`Deser`] feeds a value straight into a serde
//! visitor (a record body into [`crate::Log`]) with strings borrowed from the chunk. Both
//! bound the nesting depth and never read past the end of the input.

use std::fmt;

use chrono::{TimeZone, Utc};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use crate::record::decode::usual_name;
use crate::record::format_time;

/// Why the bytes are not a msgpack value.
#[derive(Debug)]
pub struct DeError(pub String);

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError(msg.to_string())
    }
}

#[inline]
fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], DeError> {
    if buf.len() < n {
        return Err(short(n, buf.len()));
    }
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Ok(head)
}

#[cold]
fn short(needed: usize, left: usize) -> DeError {
    DeError(format!(
        "unexpected end of data: {needed} bytes needed, {left} left"
    ))
}

/// The big-endian unsigned integer of the next `N` bytes.
#[inline]
fn be<const N: usize>(buf: &mut &[u8]) -> Result<u64, DeError> {
    let bytes = take(buf, N)?;
    let mut word = [0u8; 8];
    word[8 - N..].copy_from_slice(bytes);
    Ok(u64::from_be_bytes(word))
}

/// What a marker announces.
enum Item {
    Nil,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str(usize),
    Bin(usize),
    Array(usize),
    Map(usize),
    Ext(usize),
}

/// Reads one marker (and the length or scalar that follows it), by the marker byte's
/// ranges in the msgpack specification.
#[inline]
fn item(buf: &mut &[u8]) -> Result<Item, DeError> {
    let Some((&byte, rest)) = buf.split_first() else {
        return Err(short(1, 0));
    };
    *buf = rest;
    Ok(match byte {
        0x00..=0x7f => Item::U64(u64::from(byte)),
        0x80..=0x8f => Item::Map(usize::from(byte & 0x0f)),
        0x90..=0x9f => Item::Array(usize::from(byte & 0x0f)),
        0xa0..=0xbf => Item::Str(usize::from(byte & 0x1f)),
        0xc0 => Item::Nil,
        0xc1 => {
            return Err(DeError("reserved byte 0xc1 is never valid msgpack".into()));
        }
        0xc2 => Item::Bool(false),
        0xc3 => Item::Bool(true),
        0xc4 => Item::Bin(be::<1>(buf)? as usize),
        0xc5 => Item::Bin(be::<2>(buf)? as usize),
        0xc6 => Item::Bin(be::<4>(buf)? as usize),
        0xc7 => Item::Ext(be::<1>(buf)? as usize),
        0xc8 => Item::Ext(be::<2>(buf)? as usize),
        0xc9 => Item::Ext(be::<4>(buf)? as usize),
        0xca => Item::F64(f64::from(f32::from_bits(be::<4>(buf)? as u32))),
        0xcb => Item::F64(f64::from_bits(be::<8>(buf)?)),
        0xcc => Item::U64(be::<1>(buf)?),
        0xcd => Item::U64(be::<2>(buf)?),
        0xce => Item::U64(be::<4>(buf)?),
        0xcf => Item::U64(be::<8>(buf)?),
        0xd0 => Item::I64(i64::from(be::<1>(buf)? as u8 as i8)),
        0xd1 => Item::I64(i64::from(be::<2>(buf)? as u16 as i16)),
        0xd2 => Item::I64(i64::from(be::<4>(buf)? as u32 as i32)),
        0xd3 => Item::I64(be::<8>(buf)? as i64),
        0xd4 => Item::Ext(1),
        0xd5 => Item::Ext(2),
        0xd6 => Item::Ext(4),
        0xd7 => Item::Ext(8),
        0xd8 => Item::Ext(16),
        0xd9 => Item::Str(be::<1>(buf)? as usize),
        0xda => Item::Str(be::<2>(buf)? as usize),
        0xdb => Item::Str(be::<4>(buf)? as usize),
        0xdc => Item::Array(be::<2>(buf)? as usize),
        0xdd => Item::Array(be::<4>(buf)? as usize),
        0xde => Item::Map(be::<2>(buf)? as usize),
        0xdf => Item::Map(be::<4>(buf)? as usize),
        0xe0..=0xff => Item::I64(i64::from(byte as i8)),
    })
}

/// Advances `buf` past one complete value; fails on truncation, 0xc1, or nesting deeper
/// than `depth`. Never allocates per value and never recurses.
pub fn skip(buf: &mut &[u8], depth: usize) -> Result<(), DeError> {
    // Values still to skip at each open level.
    let mut pending: Vec<u64> = vec![1];
    while let Some(top) = pending.last_mut() {
        if *top == 0 {
            pending.pop();
            continue;
        }
        *top -= 1;
        let children = match item(buf)? {
            Item::Nil | Item::Bool(_) | Item::U64(_) | Item::I64(_) | Item::F64(_) => 0,
            Item::Str(n) | Item::Bin(n) => {
                take(buf, n)?;
                0
            }
            Item::Ext(n) => {
                take(buf, n + 1)?;
                0
            }
            Item::Array(n) => n as u64,
            Item::Map(n) => 2 * n as u64,
        };
        if children > 0 {
            if pending.len() > depth {
                return Err(DeError(format!("nesting deeper than {depth} levels")));
            }
            // Each value takes at least one byte, so a count beyond the data is truncation.
            if children > buf.len() as u64 {
                return Err(DeError(format!(
                    "unexpected end of data: {children} values announced, {} bytes left",
                    buf.len()
                )));
            }
            pending.push(children);
        }
    }
    Ok(())
}

/// True when the first byte of `buf` starts an array.
pub fn is_array(buf: &[u8]) -> bool {
    matches!(buf.first(), Some(0x90..=0x9f | 0xdc | 0xdd))
}

/// True when the first byte of `buf` starts a map.
pub fn is_map(buf: &[u8]) -> bool {
    matches!(buf.first(), Some(0x80..=0x8f | 0xde | 0xdf))
}

/// Reads an array header, `None` when `buf` does not start with one.
pub fn array_len(buf: &mut &[u8]) -> Option<usize> {
    if !is_array(buf) {
        return None;
    }
    match item(buf).ok()? {
        Item::Array(n) => Some(n),
        _ => None,
    }
}

/// A serde deserializer over one msgpack value (already framed by [`skip`]).
pub struct Deser<'de> {
    input: &'de [u8],
    depth: usize,
    /// The next string is a map key: a usual field name needs no UTF-8 check.
    key: bool,
}

impl<'de> Deser<'de> {
    /// Reads from `input`, allowing `depth` levels of nesting.
    pub fn new(input: &'de [u8], depth: usize) -> Self {
        Deser {
            input,
            depth,
            key: false,
        }
    }

    /// The input after what was deserialized.
    pub fn rest(&self) -> &'de [u8] {
        self.input
    }
}

fn ext_text(kind: i8, payload: &[u8]) -> String {
    if kind == 0 && payload.len() == 8 {
        let sec = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
        let nsec = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
        if let Some(t) = Utc.timestamp_opt(i64::from(sec), nsec).single() {
            return format_time(t);
        }
    }
    let mut s = format!("ext{kind}:0x");
    for b in payload {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl<'de> de::Deserializer<'de> for &mut Deser<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let key = std::mem::take(&mut self.key);
        match item(&mut self.input)? {
            Item::Nil => visitor.visit_unit(),
            Item::Bool(b) => visitor.visit_bool(b),
            Item::U64(n) => visitor.visit_u64(n),
            Item::I64(n) => visitor.visit_i64(n),
            Item::F64(f) => visitor.visit_f64(f),
            Item::Str(n) => {
                let bytes = take(&mut self.input, n)?;
                // A key written as a column is usually named is that name's static text
                // (the same bytes, so ASCII): no validation needed.
                if key && let Some(name) = usual_name(bytes) {
                    return visitor.visit_borrowed_str(name);
                }
                // SIMD validation: every other string of a chunk goes through here.
                match simdutf8::basic::from_utf8(bytes) {
                    Ok(s) => visitor.visit_borrowed_str(s),
                    Err(_) => visitor.visit_borrowed_bytes(bytes),
                }
            }
            Item::Bin(n) => visitor.visit_borrowed_bytes(take(&mut self.input, n)?),
            Item::Ext(n) => {
                let kind = take(&mut self.input, 1)?[0] as i8;
                let payload = take(&mut self.input, n)?;
                visitor.visit_string(ext_text(kind, payload))
            }
            // A visitor that stops early would leave the input inside the container:
            // that is an error, not a value ([`Deser::rest`] must be past it).
            container @ (Item::Array(n) | Item::Map(n)) => {
                let mut elements = Elements {
                    de: self.nest()?,
                    left: n,
                };
                let value = if matches!(container, Item::Map(_)) {
                    visitor.visit_map(&mut elements)?
                } else {
                    visitor.visit_seq(&mut elements)?
                };
                elements.finished()?;
                Ok(value)
            }
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

impl<'de> Deser<'de> {
    fn nest(&mut self) -> Result<&mut Deser<'de>, DeError> {
        if self.depth == 0 {
            return Err(DeError("nesting too deep".into()));
        }
        self.depth -= 1;
        Ok(self)
    }
}

/// The elements of an array or the entries of a map; restores the depth when dropped.
struct Elements<'a, 'de> {
    de: &'a mut Deser<'de>,
    left: usize,
}

impl Elements<'_, '_> {
    fn finished(&self) -> Result<(), DeError> {
        if self.left == 0 {
            Ok(())
        } else {
            Err(DeError(format!("{} values left unread", self.left)))
        }
    }
}

impl Drop for Elements<'_, '_> {
    fn drop(&mut self) {
        self.de.depth += 1;
    }
}

impl<'de> SeqAccess<'de> for Elements<'_, 'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left.min(self.de.input.len()))
    }
}

impl<'de> MapAccess<'de> for Elements<'_, 'de> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        self.de.key = true;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        seed.deserialize(&mut *self.de)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left.min(self.de.input.len() / 2))
    }
}

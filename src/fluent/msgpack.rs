//! A borrowing msgpack reader for the chunk decoder: [`skip`] finds where a value ends
//! without allocating (the framing check), and [`Deser`] feeds a value straight into a serde
//! visitor (a record body into [`crate::Log`]) with strings borrowed from the chunk. Both
//! bound the nesting depth and never read past the end of the input.

use std::fmt;

use chrono::{TimeZone, Utc};
use rmp::Marker;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

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

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], DeError> {
    if buf.len() < n {
        return Err(DeError(format!(
            "unexpected end of data: {n} bytes needed, {} left",
            buf.len()
        )));
    }
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Ok(head)
}

fn be(buf: &mut &[u8], n: usize) -> Result<u64, DeError> {
    Ok(take(buf, n)?
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
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

fn item(buf: &mut &[u8]) -> Result<Item, DeError> {
    let byte = take(buf, 1)?[0];
    Ok(match Marker::from_u8(byte) {
        Marker::FixPos(n) => Item::U64(u64::from(n)),
        Marker::FixNeg(n) => Item::I64(i64::from(n)),
        Marker::Null => Item::Nil,
        Marker::True => Item::Bool(true),
        Marker::False => Item::Bool(false),
        Marker::U8 => Item::U64(be(buf, 1)?),
        Marker::U16 => Item::U64(be(buf, 2)?),
        Marker::U32 => Item::U64(be(buf, 4)?),
        Marker::U64 => Item::U64(be(buf, 8)?),
        Marker::I8 => Item::I64(i64::from(be(buf, 1)? as u8 as i8)),
        Marker::I16 => Item::I64(i64::from(be(buf, 2)? as u16 as i16)),
        Marker::I32 => Item::I64(i64::from(be(buf, 4)? as u32 as i32)),
        Marker::I64 => Item::I64(be(buf, 8)? as i64),
        Marker::F32 => Item::F64(f64::from(f32::from_bits(be(buf, 4)? as u32))),
        Marker::F64 => Item::F64(f64::from_bits(be(buf, 8)?)),
        Marker::FixStr(n) => Item::Str(usize::from(n)),
        Marker::Str8 => Item::Str(be(buf, 1)? as usize),
        Marker::Str16 => Item::Str(be(buf, 2)? as usize),
        Marker::Str32 => Item::Str(be(buf, 4)? as usize),
        Marker::Bin8 => Item::Bin(be(buf, 1)? as usize),
        Marker::Bin16 => Item::Bin(be(buf, 2)? as usize),
        Marker::Bin32 => Item::Bin(be(buf, 4)? as usize),
        Marker::FixArray(n) => Item::Array(usize::from(n)),
        Marker::Array16 => Item::Array(be(buf, 2)? as usize),
        Marker::Array32 => Item::Array(be(buf, 4)? as usize),
        Marker::FixMap(n) => Item::Map(usize::from(n)),
        Marker::Map16 => Item::Map(be(buf, 2)? as usize),
        Marker::Map32 => Item::Map(be(buf, 4)? as usize),
        Marker::FixExt1 => Item::Ext(1),
        Marker::FixExt2 => Item::Ext(2),
        Marker::FixExt4 => Item::Ext(4),
        Marker::FixExt8 => Item::Ext(8),
        Marker::FixExt16 => Item::Ext(16),
        Marker::Ext8 => Item::Ext(be(buf, 1)? as usize),
        Marker::Ext16 => Item::Ext(be(buf, 2)? as usize),
        Marker::Ext32 => Item::Ext(be(buf, 4)? as usize),
        Marker::Reserved => {
            return Err(DeError("reserved byte 0xc1 is never valid msgpack".into()));
        }
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
}

impl<'de> Deser<'de> {
    /// Reads from `input`, allowing `depth` levels of nesting.
    pub fn new(input: &'de [u8], depth: usize) -> Self {
        Deser { input, depth }
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
        match item(&mut self.input)? {
            Item::Nil => visitor.visit_unit(),
            Item::Bool(b) => visitor.visit_bool(b),
            Item::U64(n) => visitor.visit_u64(n),
            Item::I64(n) => visitor.visit_i64(n),
            Item::F64(f) => visitor.visit_f64(f),
            Item::Str(n) => {
                let bytes = take(&mut self.input, n)?;
                // SIMD validation: every string of a chunk goes through here.
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
            Item::Array(n) => {
                let inner = self.nest()?;
                visitor.visit_seq(Elements { de: inner, left: n })
            }
            Item::Map(n) => {
                let inner = self.nest()?;
                visitor.visit_map(Elements { de: inner, left: n })
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
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        seed.deserialize(&mut *self.de)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left.min(self.de.input.len() / 2))
    }
}

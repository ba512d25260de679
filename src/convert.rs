//! Conversion of one batch of records into one Parquet file (sans I/O: bytes in memory).
//!
//! The Arrow schema is the seed's Log record: 32 columns, required UTF-8 strings for the
//! seed's non-pointer fields, nullable strings for the rest, booleans for `audit` and
//! `auto_index`, `list<string>` for `tags`/`trace_ip` and `map<string,string>` for
//! `args`/`extra_fields`, written with the standard Parquet LIST/MAP layouts so Athena,
//! Spark, Trino and DuckDB read them without casts.

use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, ListArray, ListBuilder, MapArray, MapBuilder,
    MapFieldNames, StringArray, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::basic::{GzipLevel, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::buffer::Record;
use crate::config::{Compression, Config};
use crate::error::{Error, Result};
use crate::record::{Log, LogOf, StringMap};

/// Columns whose values repeat a lot: dictionary-encoded when `WriterDictionary` is on.
const DICTIONARY_COLUMNS: &[&str] = &[
    "level",
    "business_capability",
    "business_domain",
    "business_service",
    "application_service",
    "resource_type",
    "cloud_provider",
    "source_id",
    "http_response",
    "error_code",
    "region",
    "az",
    "ttl",
    "logger_name",
    "thread_name",
    // Leaves of the nested columns: a handful of map keys and tags in every file.
    "args.key_value.key",
    "extra_fields.key_value.key",
    "tags.list.element",
];

/// Required (non-null) string columns: the seed's non-pointer fields.
const REQUIRED: &[&str] = &[
    "time",
    "level",
    "message",
    "business_capability",
    "business_domain",
    "business_service",
    "application_service",
];

/// The 32 column names, in the seed's order.
pub const COLUMNS: &[&str] = &[
    "time",
    "level",
    "correlation_id",
    "session_id",
    "message_id",
    "person_id",
    "user_id",
    "device_id",
    "message",
    "business_capability",
    "business_domain",
    "business_service",
    "application_service",
    "audit",
    "resource_type",
    "cloud_provider",
    "source_id",
    "http_response",
    "error_code",
    "stack_trace",
    "duration",
    "trace_ip",
    "region",
    "az",
    "tags",
    "args",
    "transaction_message_reference",
    "ttl",
    "auto_index",
    "logger_name",
    "thread_name",
    "extra_fields",
];

fn list_field() -> Arc<Field> {
    Arc::new(Field::new("element", DataType::Utf8, false))
}

fn map_names() -> MapFieldNames {
    MapFieldNames {
        entry: "key_value".into(),
        key: "key".into(),
        value: "value".into(),
    }
}

/// A builder of `list<string>` columns for `rows` rows holding `items` items of `bytes`
/// bytes in all.
fn list_builder(rows: usize, items: usize, bytes: usize) -> ListBuilder<StringBuilder> {
    ListBuilder::with_capacity(StringBuilder::with_capacity(items, bytes), rows)
        .with_field(list_field())
}

/// A builder of `map<string,string>` columns in the standard Parquet MAP layout (also the
/// map columns of dynamic records).
pub(crate) fn map_builder(capacity: usize) -> MapBuilder<StringBuilder, StringBuilder> {
    map_builder_sized(capacity, 0, 0, 0)
}

/// [`map_builder`] for `rows` rows holding `entries` entries whose keys take `key_bytes`
/// and values `value_bytes` in all.
fn map_builder_sized(
    rows: usize,
    entries: usize,
    key_bytes: usize,
    value_bytes: usize,
) -> MapBuilder<StringBuilder, StringBuilder> {
    MapBuilder::with_capacity(
        Some(map_names()),
        StringBuilder::with_capacity(entries, key_bytes),
        StringBuilder::with_capacity(entries, value_bytes),
        rows,
    )
    .with_values_field(Arc::new(Field::new("value", DataType::Utf8, true)))
}

/// The Arrow schema of the Log record (built once).
pub fn log_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let list_type = list_builder(0, 0, 0).finish().data_type().clone();
            let map_type = map_builder(0).finish().data_type().clone();
            let fields: Vec<Field> = COLUMNS
                .iter()
                .map(|name| {
                    let dt = match *name {
                        "audit" | "auto_index" => DataType::Boolean,
                        "trace_ip" | "tags" => list_type.clone(),
                        "args" | "extra_fields" => map_type.clone(),
                        _ => DataType::Utf8,
                    };
                    Field::new(*name, dt, !REQUIRED.contains(name))
                })
                .collect();
            Arc::new(Schema::new(fields))
        })
        .clone()
}

/// Reads a string field as `Option<&str>` (`required` fields are never null).
macro_rules! field_text {
    (required, $v:expr) => {
        Some($v.as_ref())
    };
    (optional, $v:expr) => {
        $v.as_ref().map(AsRef::as_ref)
    };
}

/// The 26 string columns, in [`COLUMNS`] order, listed once: [`text_of`] (column `i` of a
/// record), [`text_len`] (all their bytes) and [`each_text`] (every column of a record, in
/// order) are made from this list.
macro_rules! string_columns {
    ($($i:literal $kind:ident $field:ident),* $(,)?) => {
        /// String column `i` of a record (`None` = null). Called in loops over one column,
        /// where the match is one predictable branch; a 26-entry array per record was 3%
        /// of json2parquet's CPU.
        #[inline(always)]
        fn text_of<S: AsRef<str> + Ord>(l: &LogOf<S>, i: usize) -> Option<&str> {
            match i {
                $($i => field_text!($kind, l.$field),)*
                _ => None,
            }
        }

        /// Bytes of text in a record's string columns, field by field (a loop over
        /// [`text_of`] does not unroll: 2% of the CPU).
        #[inline]
        fn text_len<S: AsRef<str> + Ord>(l: &LogOf<S>) -> usize {
            0 $(+ field_text!($kind, l.$field).map_or(0, str::len))*
        }

        /// Calls `f(i, text)` for each string column of a record in column order, as
        /// straight-line code: a row-major writer ([`LogRows`]) then does no per-field
        /// dispatch on `i` (which is a constant in each call).
        #[inline(always)]
        fn each_text<'l, S: AsRef<str> + Ord>(
            l: &'l LogOf<S>,
            mut f: impl FnMut(usize, Option<&'l str>),
        ) {
            $(f($i, field_text!($kind, l.$field));)*
        }

        /// Number of string columns.
        const STRINGS: usize = [$($i),*].len();

        // The list is in column order, numbered from 0: `each_text` relies on it.
        const _: () = {
            let idx = [$($i),*];
            let mut k = 0;
            while k < idx.len() {
                assert!(idx[k] == k, "string columns must be listed in order");
                k += 1;
            }
        };
    };
}

string_columns! {
    0 required time,
    1 required level,
    2 optional correlation_id,
    3 optional session_id,
    4 optional message_id,
    5 optional person_id,
    6 optional user_id,
    7 optional device_id,
    8 required message,
    9 required business_capability,
    10 required business_domain,
    11 required business_service,
    12 required application_service,
    13 optional resource_type,
    14 optional cloud_provider,
    15 optional source_id,
    16 optional http_response,
    17 optional error_code,
    18 optional stack_trace,
    19 optional duration,
    20 optional region,
    21 optional az,
    22 optional transaction_message_reference,
    23 optional ttl,
    24 optional logger_name,
    25 optional thread_name,
}

/// Where each of the 32 columns lives in [`LogColumns`], in [`COLUMNS`] order.
#[derive(Clone, Copy)]
enum Slot {
    Str(usize),
    Bool(usize),
    List(usize),
    Map(usize),
}

const LAYOUT: [Slot; 32] = {
    use Slot::*;
    [
        Str(0),
        Str(1),
        Str(2),
        Str(3),
        Str(4),
        Str(5),
        Str(6),
        Str(7),
        Str(8),
        Str(9),
        Str(10),
        Str(11),
        Str(12),
        Bool(0),
        Str(13),
        Str(14),
        Str(15),
        Str(16),
        Str(17),
        Str(18),
        Str(19),
        List(0),
        Str(20),
        Str(21),
        List(1),
        Map(0),
        Str(22),
        Str(23),
        Bool(1),
        Str(24),
        Str(25),
        Map(1),
    ]
};

/// Records appended row by row into Arrow builders: the columnar form of a batch, used
/// both to convert a list of records and by the memory buffer, which keeps each key's
/// records this way (compact, and ready to encode without another copy).
pub struct LogColumns {
    strings: Vec<StringBuilder>,
    bools: [BooleanBuilder; 2],
    lists: [ListBuilder<StringBuilder>; 2],
    maps: [MapBuilder<StringBuilder, StringBuilder>; 2],
    rows: usize,
    /// Bytes appended since the last finish (see [`LogColumns::text_bytes`]).
    text: usize,
}

impl Default for LogColumns {
    fn default() -> Self {
        Self::new()
    }
}

impl LogColumns {
    /// Empty builders.
    pub fn new() -> Self {
        Self::with_capacities(0, &[0; STRINGS], &[0; 4], &[0; 6])
    }

    /// Empty builders sized for `rows` rows: `str_bytes` of text per string column,
    /// `items` items per list column then entries per map column, and `item_bytes` of
    /// text per list column then per map column's keys and values.
    fn with_capacities(
        rows: usize,
        str_bytes: &[usize; STRINGS],
        items: &[usize; 4],
        item_bytes: &[usize; 6],
    ) -> Self {
        LogColumns {
            strings: str_bytes
                .iter()
                .map(|b| StringBuilder::with_capacity(rows, *b))
                .collect(),
            bools: [
                BooleanBuilder::with_capacity(rows),
                BooleanBuilder::with_capacity(rows),
            ],
            lists: [0, 1].map(|j| list_builder(rows, items[j], item_bytes[j])),
            maps: [0, 1].map(|j| {
                map_builder_sized(
                    rows,
                    items[2 + j],
                    item_bytes[2 + 2 * j],
                    item_bytes[3 + 2 * j],
                )
            }),
            rows: 0,
            text: 0,
        }
    }

    /// Rows appended since the last [`LogColumns::finish`].
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no row was appended since the last [`LogColumns::finish`].
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The part of [`LogColumns::row_bytes`] every record takes, whatever its text: an
    /// offset per string column and the rest of its columns' entries.
    pub const FIXED_ROW_BYTES: usize = STRINGS * 4 + 32;

    /// The bytes a record takes in columnar form (its text plus offsets and validity):
    /// what the memory buffer counts against `BufferMaxBytes`.
    pub fn row_bytes<S: AsRef<str> + Ord>(l: &LogOf<S>) -> usize {
        let text = text_len(l);
        let lists: usize = [&l.trace_ip, &l.tags]
            .iter()
            .filter_map(|v| v.as_ref())
            .flatten()
            .map(|item| item.as_ref().len() + 4)
            .sum();
        let maps: usize = [&l.args, &l.extra_fields]
            .iter()
            .filter_map(|v| v.as_ref())
            .flatten()
            .map(|(k, v)| k.as_ref().len() + v.as_ref().len() + 8)
            .sum();
        Self::FIXED_ROW_BYTES + text + lists + maps
    }

    /// Appends one record; returns its size as [`LogColumns::row_bytes`] counts it.
    pub fn append<S: AsRef<str> + Ord>(&mut self, l: &LogOf<S>) -> usize {
        self.append_rows(std::slice::from_ref(&l))
    }

    /// Appends records in order, one column at a time (each builder's end stays in cache
    /// while a column is written); returns their total size as [`LogColumns::row_bytes`]
    /// counts it.
    pub fn append_rows<R, S>(&mut self, rows: &[R]) -> usize
    where
        R: std::ops::Deref<Target = LogOf<S>>,
        S: AsRef<str> + Ord,
    {
        let mut bytes = Self::FIXED_ROW_BYTES * rows.len();
        for (i, b) in self.strings.iter_mut().enumerate() {
            for r in rows {
                let v = text_of(r, i);
                bytes += v.map_or(0, str::len);
                b.append_option(v);
            }
        }
        for r in rows {
            self.bools[0].append_option(r.audit);
        }
        for r in rows {
            self.bools[1].append_option(r.auto_index);
        }
        for (j, b) in self.lists.iter_mut().enumerate() {
            for r in rows {
                match if j == 0 { &r.trace_ip } else { &r.tags } {
                    Some(items) => {
                        for item in items {
                            bytes += item.as_ref().len() + 4;
                            b.values().append_value(item.as_ref());
                        }
                        b.append(true);
                    }
                    None => b.append(false),
                }
            }
        }
        for (j, b) in self.maps.iter_mut().enumerate() {
            for r in rows {
                let m = if j == 0 { &r.args } else { &r.extra_fields };
                if let Some(m) = m {
                    for (k, v) in m {
                        bytes += k.as_ref().len() + v.as_ref().len() + 8;
                        b.keys().append_value(k.as_ref());
                        b.values().append_value(v.as_ref());
                    }
                }
                // Cannot fail: every key appended above has its value.
                let _ = b.append(m.is_some());
            }
        }
        self.rows += rows.len();
        self.text += bytes;
        bytes
    }

    /// Bytes of text appended since the last [`LogColumns::finish`], over all columns: a
    /// column's offsets overflow past `i32::MAX` bytes, so the memory buffer seals its
    /// builders well before this reaches it.
    pub fn text_bytes(&self) -> usize {
        self.text
    }

    /// The rows appended so far as one Arrow batch; the builders start over empty.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = LAYOUT
            .iter()
            .map(|slot| -> ArrayRef {
                match *slot {
                    Slot::Str(i) => Arc::new(self.strings[i].finish()),
                    Slot::Bool(i) => Arc::new(self.bools[i].finish()),
                    Slot::List(i) => Arc::new(self.lists[i].finish()),
                    Slot::Map(i) => Arc::new(self.maps[i].finish()),
                }
            })
            .collect();
        self.rows = 0;
        self.text = 0;
        RecordBatch::try_new(log_schema(), columns).map_err(|e| Error::Encode {
            key: String::new(),
            reason: e.to_string(),
        })
    }
}

/// Marks a null string, list or map in [`LogRows`]' lengths.
const NULL_LEN: u32 = u32::MAX;

/// Records appended row by row into two flat streams, for a key that waits in the memory
/// buffer: the text of every field one after another, and one `u32` per field (its
/// length, [`NULL_LEN`] for null; the item count of a list or map, then its items'
/// lengths; both flags in one word). A push then writes one record where its key's two
/// streams end, instead of into 30-odd column builders each with its own end somewhere
/// else in memory; [`LogRows::finish`] builds the Arrow columns at their exact sizes in
/// one go, right before they are encoded.
#[derive(Default)]
pub struct LogRows {
    text: TextBlocks,
    lens: Vec<u32>,
    rows: usize,
    /// The exact sizes of the Arrow columns the rows make, kept up while appending so
    /// that [`LogRows::finish`] reads the streams once (a sizing pass over them took
    /// about a third of building the batch); they also give the rows' counted bytes.
    sizes: ColumnSizes,
}

/// Text bytes per string column, item counts of the two lists and two maps, and text
/// bytes of their items (lists, then map keys and values), as [`LogRows`] appends them.
#[derive(Default)]
struct ColumnSizes {
    str_bytes: [usize; STRINGS],
    items: [usize; 4],
    item_bytes: [usize; 6],
}

impl ColumnSizes {
    /// What [`LogColumns::row_bytes`] counts for `rows` rows of these sizes: the fixed
    /// part of each row, the text, and 4 bytes a list item, 8 a map entry.
    fn counted(&self, rows: usize) -> usize {
        LogColumns::FIXED_ROW_BYTES * rows
            + self.str_bytes.iter().sum::<usize>()
            + self.item_bytes.iter().sum::<usize>()
            + 4 * (self.items[0] + self.items[1])
            + 8 * (self.items[2] + self.items[3])
    }
}

/// Appends `v` to the streams. A field longer than `u32::MAX - 1` bytes (which Arrow's
/// 32-bit offsets could not hold either) is cut at a character boundary, so the streams
/// never get out of step. Returns the bytes appended.
#[inline]
fn push_text(text: &mut TextBlocks, lens: &mut Vec<u32>, v: &str) -> usize {
    let mut end = v.len().min((NULL_LEN - 1) as usize);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    lens.push(end as u32);
    text.push(&v[..end]);
    end
}

/// The first text block of a key's rows; each next one is twice as big, up to
/// [`TEXT_BLOCK_MAX`]. Small, like a string's first allocation: with many keys of a few
/// records each, a big first block per key would be memory the bound does not count.
const TEXT_BLOCK_MIN: usize = 256;
const TEXT_BLOCK_MAX: usize = 1 << 20;

/// Append-only text in blocks that never move: a field goes where the last block ends,
/// or starts a new block when it does not fit there. One string grown by doubling
/// instead copied everything it held at each step, into freshly faulted-in pages: 10%
/// of the Fluent Bit plugin's decoding threads' time (perf, 100k generator records).
#[derive(Default)]
struct TextBlocks {
    blocks: Vec<String>,
}

impl TextBlocks {
    #[inline]
    fn push(&mut self, v: &str) {
        if let Some(last) = self.blocks.last_mut()
            && last.capacity() - last.len() >= v.len()
        {
            last.push_str(v);
            return;
        }
        self.grow(v);
    }

    #[cold]
    fn grow(&mut self, v: &str) {
        let size = self
            .blocks
            .last()
            .map_or(TEXT_BLOCK_MIN, |b| (b.capacity() * 2).min(TEXT_BLOCK_MAX));
        let mut block = String::with_capacity(size.max(v.len()));
        block.push_str(v);
        self.blocks.push(block);
    }
}

/// A count as stored in [`LogRows`] (lists and maps never hold `u32::MAX` items).
fn stored_count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(NULL_LEN - 1).min(NULL_LEN - 1)
}

fn flag_code(f: Option<bool>) -> u32 {
    match f {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    }
}

fn flag_of(code: u32) -> Option<bool> {
    match code {
        1 => Some(false),
        2 => Some(true),
        _ => None,
    }
}

/// Reads [`LogRows`]' streams in the order they were written.
struct RowReader<'a> {
    blocks: &'a [String],
    /// The block being read (`cur`, `""` past the last), and where in it.
    block: usize,
    cur: &'a str,
    at: usize,
    lens: &'a [u32],
    li: usize,
}

impl<'a> RowReader<'a> {
    fn word(&mut self) -> Result<u32> {
        let w = self
            .lens
            .get(self.li)
            .copied()
            .ok_or_else(|| Error::Encode {
                key: String::new(),
                reason: "buffered rows end early (internal error)".into(),
            })?;
        self.li += 1;
        Ok(w)
    }

    /// The next string, `None` for null. A string that does not fit in the rest of the
    /// block being read starts the next one ([`TextBlocks::push`] put it there; an empty
    /// string always fits, as it did when it was pushed).
    #[inline]
    fn text(&mut self) -> Result<Option<&'a str>> {
        let n = self.word()?;
        if n == NULL_LEN {
            return Ok(None);
        }
        let n = n as usize;
        if self.at + n > self.cur.len() {
            self.block += 1;
            self.cur = self.blocks.get(self.block).map_or("", String::as_str);
            self.at = 0;
        }
        let s = self
            .cur
            .get(self.at..self.at + n)
            .ok_or_else(|| Error::Encode {
                key: String::new(),
                reason: "buffered text out of step (internal error)".into(),
            })?;
        self.at += n;
        Ok(Some(s))
    }
}

impl LogRows {
    /// Rows appended since the last [`LogRows::finish`].
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no row was appended since the last [`LogRows::finish`].
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Bytes appended since the last finish, as [`LogColumns::text_bytes`] counts them.
    pub fn text_bytes(&self) -> usize {
        self.sizes.counted(self.rows)
    }

    /// Sizes the first text block for about `bytes` of text about to be appended (the
    /// first push of a key's rows), between [`TEXT_BLOCK_MIN`] and [`TEXT_BLOCK_MAX`]: a
    /// push of many records starts in one block, a key of one small record takes a small
    /// one. Does nothing once the rows hold text.
    pub fn expect_text(&mut self, bytes: usize) {
        if self.text.blocks.is_empty() {
            let size = bytes.clamp(TEXT_BLOCK_MIN, TEXT_BLOCK_MAX);
            self.text.blocks.push(String::with_capacity(size));
        }
    }

    /// Appends records in order; returns their total size as [`LogColumns::row_bytes`]
    /// counts it.
    pub fn append_rows<R, S>(&mut self, rows: &[R]) -> usize
    where
        R: std::ops::Deref<Target = LogOf<S>>,
        S: AsRef<str> + Ord,
    {
        let before = self.text_bytes();
        let sz = &mut self.sizes;
        for r in rows {
            let (text, lens) = (&mut self.text, &mut self.lens);
            each_text(r, |i, v| match v {
                Some(v) => sz.str_bytes[i] += push_text(text, lens, v),
                None => lens.push(NULL_LEN),
            });
            self.lens
                .push(flag_code(r.audit) | flag_code(r.auto_index) << 2);
            for (j, list) in [&r.trace_ip, &r.tags].into_iter().enumerate() {
                match list {
                    Some(items) => {
                        let n = stored_count(items.len());
                        self.lens.push(n);
                        sz.items[j] += n as usize;
                        for item in items.iter().take(n as usize) {
                            sz.item_bytes[j] +=
                                push_text(&mut self.text, &mut self.lens, item.as_ref());
                        }
                    }
                    None => self.lens.push(NULL_LEN),
                }
            }
            for (j, map) in [&r.args, &r.extra_fields].into_iter().enumerate() {
                match map {
                    Some(m) => {
                        let n = stored_count(m.len());
                        self.lens.push(n);
                        sz.items[2 + j] += n as usize;
                        for (k, v) in m.iter().take(n as usize) {
                            sz.item_bytes[2 + 2 * j] +=
                                push_text(&mut self.text, &mut self.lens, k.as_ref());
                            sz.item_bytes[3 + 2 * j] +=
                                push_text(&mut self.text, &mut self.lens, v.as_ref());
                        }
                    }
                    None => self.lens.push(NULL_LEN),
                }
            }
        }
        self.rows += rows.len();
        self.text_bytes() - before
    }

    fn reader(&self) -> RowReader<'_> {
        RowReader {
            blocks: &self.text.blocks,
            block: 0,
            cur: self.text.blocks.first().map_or("", String::as_str),
            at: 0,
            lens: &self.lens,
            li: 0,
        }
    }

    /// The rows appended so far as one Arrow batch (every builder made at its exact
    /// size first); the streams start over empty.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        let rows = self.rows;
        let sz = &self.sizes;
        let mut cols = LogColumns::with_capacities(rows, &sz.str_bytes, &sz.items, &sz.item_bytes);
        let mut rd = self.reader();
        for _ in 0..rows {
            for b in cols.strings.iter_mut() {
                b.append_option(rd.text()?);
            }
            let flags = rd.word()?;
            cols.bools[0].append_option(flag_of(flags & 3));
            cols.bools[1].append_option(flag_of(flags >> 2 & 3));
            for b in cols.lists.iter_mut() {
                let n = rd.word()?;
                if n != NULL_LEN {
                    for _ in 0..n {
                        b.values().append_option(rd.text()?);
                    }
                }
                b.append(n != NULL_LEN);
            }
            for b in cols.maps.iter_mut() {
                let n = rd.word()?;
                if n != NULL_LEN {
                    for _ in 0..n {
                        b.keys().append_option(rd.text()?);
                        b.values().append_option(rd.text()?);
                    }
                }
                // Cannot fail: every key appended above has its value.
                let _ = b.append(n != NULL_LEN);
            }
        }
        cols.rows = rows;
        cols.text = self.text_bytes();
        *self = LogRows::default();
        cols.finish()
    }
}

/// Builds the Arrow batch for `records`.
pub fn to_record_batch(records: &[Record]) -> Result<RecordBatch> {
    let mut columns = LogColumns::new();
    columns.append_rows(records);
    columns.finish()
}

/// The columns of a Log batch (as made by [`LogColumns`]), downcast once.
struct LogArrays<'b> {
    strs: Vec<&'b StringArray>,
    bools: Vec<&'b BooleanArray>,
    lists: Vec<&'b ListArray>,
    maps: Vec<&'b MapArray>,
    rows: usize,
}

impl<'b> LogArrays<'b> {
    /// Views `batch`; fails when it is not in the Log schema.
    fn new(batch: &'b RecordBatch) -> Result<Self> {
        let bad = |what: &str| Error::Encode {
            key: String::new(),
            reason: format!("not a Log batch: column {what}"),
        };
        if batch.num_columns() != LAYOUT.len() {
            return Err(bad("count"));
        }
        let mut a = LogArrays {
            strs: Vec::with_capacity(26),
            bools: Vec::with_capacity(2),
            lists: Vec::with_capacity(2),
            maps: Vec::with_capacity(2),
            rows: batch.num_rows(),
        };
        for (slot, (col, name)) in LAYOUT.iter().zip(batch.columns().iter().zip(COLUMNS)) {
            let any = col.as_any();
            match slot {
                Slot::Str(_) => a.strs.push(any.downcast_ref().ok_or_else(|| bad(name))?),
                Slot::Bool(_) => a.bools.push(any.downcast_ref().ok_or_else(|| bad(name))?),
                Slot::List(_) => a.lists.push(any.downcast_ref().ok_or_else(|| bad(name))?),
                Slot::Map(_) => a.maps.push(any.downcast_ref().ok_or_else(|| bad(name))?),
            }
        }
        // Lists and maps must hold strings (a batch built elsewhere might not).
        for l in &a.lists {
            l.values()
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| bad("list values"))?;
        }
        for m in &a.maps {
            for part in [m.keys(), m.values()] {
                part.as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| bad("map entries"))?;
            }
        }
        Ok(a)
    }

    fn text(&self, col: usize, i: usize) -> Option<&'b str> {
        let a = self.strs[col];
        a.is_valid(i).then(|| a.value(i))
    }

    fn flag(&self, col: usize, i: usize) -> Option<bool> {
        let a = self.bools[col];
        a.is_valid(i).then(|| a.value(i))
    }

    /// The items of list column `col` in row `i`.
    fn list(&self, col: usize, i: usize) -> Option<impl Iterator<Item = &'b str> + use<'b>> {
        let a = self.lists[col];
        if !a.is_valid(i) {
            return None;
        }
        let values = strings_of(a.values());
        let offsets = a.value_offsets();
        let range = offsets[i] as usize..offsets[i + 1] as usize;
        Some(range.map(move |j| values.value(j)))
    }

    /// The entries of map column `col` in row `i`.
    fn map(
        &self,
        col: usize,
        i: usize,
    ) -> Option<impl Iterator<Item = (&'b str, &'b str)> + use<'b>> {
        let a = self.maps[col];
        if !a.is_valid(i) {
            return None;
        }
        let (keys, values) = (strings_of(a.keys()), strings_of(a.values()));
        let offsets = a.value_offsets();
        let range = offsets[i] as usize..offsets[i + 1] as usize;
        Some(range.map(move |j| (keys.value(j), values.value(j))))
    }
}

/// The `extra_fields` entries of every row of a Log batch: how dynamic records travel
/// (see [`crate::dynamic`]).
pub fn extra_fields_rows(batch: &RecordBatch) -> Result<Vec<Vec<(&str, &str)>>> {
    let a = LogArrays::new(batch)?;
    Ok((0..a.rows)
        .map(|i| a.map(1, i).map(Iterator::collect).unwrap_or_default())
        .collect())
}

/// A string array checked by [`LogArrays::new`]; an empty one should that ever fail.
fn strings_of(a: &ArrayRef) -> &StringArray {
    static EMPTY: OnceLock<StringArray> = OnceLock::new();
    a.as_any()
        .downcast_ref::<StringArray>()
        .unwrap_or_else(|| EMPTY.get_or_init(|| StringArray::from(Vec::<&str>::new())))
}

/// Reads the rows of a Log batch (as made by [`LogColumns`]) back into records.
pub fn logs_from_batch(batch: &RecordBatch) -> Result<Vec<Log>> {
    let a = LogArrays::new(batch)?;
    let text = |c: usize, i: usize| a.text(c, i).map(str::to_string);
    let req = |c: usize, i: usize| text(c, i).unwrap_or_default();
    let list = |c: usize, i: usize| {
        a.list(c, i)
            .map(|items| items.map(str::to_string).collect())
    };
    let map = |c: usize, i: usize| -> Option<StringMap> {
        a.map(c, i).map(|entries| {
            entries
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
    };
    Ok((0..a.rows)
        .map(|i| Log {
            time: req(0, i),
            level: req(1, i),
            correlation_id: text(2, i),
            session_id: text(3, i),
            message_id: text(4, i),
            person_id: text(5, i),
            user_id: text(6, i),
            device_id: text(7, i),
            message: req(8, i),
            business_capability: req(9, i),
            business_domain: req(10, i),
            business_service: req(11, i),
            application_service: req(12, i),
            audit: a.flag(0, i),
            resource_type: text(13, i),
            cloud_provider: text(14, i),
            source_id: text(15, i),
            http_response: text(16, i),
            error_code: text(17, i),
            stack_trace: text(18, i),
            duration: text(19, i),
            trace_ip: list(0, i),
            region: text(20, i),
            az: text(21, i),
            tags: list(1, i),
            args: map(0, i),
            transaction_message_reference: text(22, i),
            ttl: text(23, i),
            auto_index: a.flag(1, i),
            logger_name: text(24, i),
            thread_name: text(25, i),
            extra_fields: map(1, i),
        })
        .collect())
}

/// Free-text leaf columns: no min/max statistics, even with `WriterStatistics` on. Their
/// bounds over a page or a file of log lines span nearly everything, so no engine can skip
/// data by them (a `LIKE '%x%'` never uses them), while computing them compares every
/// value: 1.6% of json2parquet's instructions (statistics of every column took 6%).
const NO_STATISTICS_COLUMNS: &[&str] = &[
    "message",
    "stack_trace",
    "args.key_value.value",
    "extra_fields.key_value.value",
];

/// The Parquet path of a leaf column written with dots (`args.key_value.key`).
fn leaf_path(col: &str) -> ColumnPath {
    ColumnPath::new(col.split('.').map(String::from).collect())
}

/// Parquet writer settings derived from the configuration.
#[derive(Debug, Clone)]
pub struct EncodeOptions {
    /// Codec and level.
    pub compression: Compression,
    /// Target row-group size in bytes.
    pub row_group_bytes: u64,
    /// Dictionary-encode the repetitive columns.
    pub dictionary: bool,
    /// Write statistics: per column chunk, and per page (with the page index) in files
    /// whose columns take more than one page.
    pub statistics: bool,
}

impl EncodeOptions {
    /// The options a configuration asks for.
    pub fn from_config(c: &Config) -> Self {
        EncodeOptions {
            compression: c.writer_compression,
            row_group_bytes: c.writer_row_group_size,
            dictionary: c.writer_dictionary,
            statistics: c.writer_statistics,
        }
    }

    /// Settings for the Log schema: dictionary encoding for its repetitive columns.
    fn properties(&self, one_page: bool) -> Result<WriterProperties> {
        let mut b = self.base(one_page)?.set_dictionary_enabled(false);
        for col in NO_STATISTICS_COLUMNS {
            b = b.set_column_statistics_enabled(leaf_path(col), EnabledStatistics::None);
        }
        if self.dictionary {
            for col in DICTIONARY_COLUMNS {
                b = b.set_column_dictionary_enabled(leaf_path(col), true);
            }
        }
        Ok(b.build())
    }

    /// Settings for any schema (dynamic records): dictionary encoding, when on, for every
    /// column (the writer falls back to plain pages when a column's dictionary grows big).
    fn any_properties(&self, one_page: bool) -> Result<WriterProperties> {
        Ok(self
            .base(one_page)?
            .set_dictionary_enabled(self.dictionary)
            .build())
    }

    /// `one_page`: every column chunk of the file fits in one data page (see
    /// [`fits_one_page`]). Its page statistics would then repeat the chunk's and its page
    /// index would point at the one page the chunk starts with, so the file gets chunk
    /// statistics and no page index: the same information, ~4% less encoding work and a
    /// smaller footer (most files of a busy key set are that small).
    fn base(&self, one_page: bool) -> Result<parquet::file::properties::WriterPropertiesBuilder> {
        use parquet::basic::Compression as C;
        let codec = match self.compression {
            Compression::None => C::UNCOMPRESSED,
            Compression::Snappy => C::SNAPPY,
            Compression::Gzip(level) => C::GZIP(GzipLevel::try_new(level).map_err(|e| {
                Error::config("WriterCompressionLevel", level.to_string(), e.to_string())
            })?),
            Compression::Zstd(level) => C::ZSTD(ZstdLevel::try_new(level).map_err(|e| {
                Error::config("WriterCompressionLevel", level.to_string(), e.to_string())
            })?),
        };
        Ok(WriterProperties::builder()
            .set_compression(codec)
            .set_created_by(format!("data2parquet {}", env!("CARGO_PKG_VERSION")))
            .set_max_row_group_row_count(None)
            .set_max_row_group_bytes(Some(self.row_group_bytes.max(1) as usize))
            .set_statistics_enabled(match (self.statistics, one_page) {
                (false, _) => EnabledStatistics::None,
                (true, true) => EnabledStatistics::Chunk,
                (true, false) => EnabledStatistics::Page,
            })
            .set_offset_index_disabled(one_page))
    }
}

/// True when `rows` rows of `arrow_bytes` in Arrow form surely make one data page per
/// column: at most half the writer's page size (a column's encoded values are no bigger
/// than its Arrow buffers; half leaves room for levels) and under its page row limit.
fn fits_one_page(rows: usize, arrow_bytes: usize) -> bool {
    use parquet::file::properties::{DEFAULT_DATA_PAGE_ROW_COUNT_LIMIT, DEFAULT_PAGE_SIZE};
    rows < DEFAULT_DATA_PAGE_ROW_COUNT_LIMIT && arrow_bytes <= DEFAULT_PAGE_SIZE / 2
}

/// Rows handed to the Parquet writer at a time (bounds the Arrow memory of a big batch).
const SLICE_ROWS: usize = 8192;

/// Encodes `records` (non-empty) as one Parquet file in memory.
pub fn encode(records: &[Record], opts: &EncodeOptions) -> Result<Vec<u8>> {
    let batches = records
        .chunks(SLICE_ROWS)
        .map(to_record_batch)
        .collect::<Result<Vec<_>>>()?;
    encode_batches(&batches, opts)
}

/// Encodes Log batches (together non-empty) as one Parquet file in memory. Big batches
/// are handed to the writer in slices, which bounds its working memory.
pub fn encode_batches(batches: &[RecordBatch], opts: &EncodeOptions) -> Result<Vec<u8>> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if rows == 0 {
        return Err(Error::Encode {
            key: String::new(),
            reason: "refusing to write an empty file".into(),
        });
    }
    // About a third of the Arrow size once compressed: reserve it so the output does not
    // regrow and copy.
    let arrow_bytes: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
    let out = Vec::with_capacity(arrow_bytes / 3 + 4096);
    let props = opts.properties(fits_one_page(rows, arrow_bytes))?;
    let options = ArrowWriterOptions::new()
        .with_properties(props)
        .with_skip_arrow_metadata(true);
    let writer = ArrowWriter::try_new_with_options(out, log_schema(), options).map_err(enc_err)?;
    write_slices(writer, batches)
}

/// Encodes one batch of any schema (dynamic records) as one Parquet file in memory.
pub fn encode_any(batch: &RecordBatch, opts: &EncodeOptions) -> Result<Vec<u8>> {
    let arrow_bytes = batch.get_array_memory_size();
    let out = Vec::with_capacity(arrow_bytes / 3 + 4096);
    let props = opts.any_properties(fits_one_page(batch.num_rows(), arrow_bytes))?;
    let writer = ArrowWriter::try_new(out, batch.schema(), Some(props)).map_err(enc_err)?;
    write_slices(writer, std::slice::from_ref(batch))
}

fn enc_err(e: parquet::errors::ParquetError) -> Error {
    Error::Encode {
        key: String::new(),
        reason: e.to_string(),
    }
}

/// Hands `batches` to the writer in slices of [`SLICE_ROWS`] and finishes the file.
fn write_slices(mut writer: ArrowWriter<Vec<u8>>, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    for batch in batches {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let len = SLICE_ROWS.min(batch.num_rows() - offset);
            writer.write(&batch.slice(offset, len)).map_err(enc_err)?;
            offset += len;
        }
    }
    writer.into_inner().map_err(enc_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Log, StringMap};
    use bytes::Bytes;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn opts() -> EncodeOptions {
        EncodeOptions::from_config(&Config::default())
    }

    #[test]
    fn schema_has_the_seed_columns() {
        let s = log_schema();
        assert_eq!(s.fields().len(), 32);
        assert!(!s.field_with_name("message").expect("message").is_nullable());
        assert!(s.field_with_name("user_id").expect("user_id").is_nullable());
        assert!(matches!(
            s.field_with_name("tags").expect("tags").data_type(),
            DataType::List(_)
        ));
        assert!(matches!(
            s.field_with_name("args").expect("args").data_type(),
            DataType::Map(_, _)
        ));
    }

    #[test]
    fn round_trip_through_parquet() {
        let mut args = StringMap::new();
        args.insert("k".into(), "v".into());
        let full = Log {
            time: "2024-01-01T00:00:00Z".into(),
            level: "error".into(),
            message: "ünï\ncode".into(),
            audit: Some(true),
            tags: Some(vec!["a".into(), "b".into()]),
            args: Some(args),
            ..Log::default()
        };
        let empty = Log::default();
        let records: Vec<Record> = vec![Arc::new(full), Arc::new(empty)];
        for compression in [
            Compression::Snappy,
            Compression::Zstd(3),
            Compression::Gzip(6),
            Compression::None,
        ] {
            let data = encode(
                &records,
                &EncodeOptions {
                    compression,
                    ..opts()
                },
            )
            .expect("encode");
            let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(data))
                .expect("reader")
                .build()
                .expect("build");
            let batches: Vec<RecordBatch> =
                reader.collect::<std::result::Result<_, _>>().expect("read");
            assert_eq!(batches.len(), 1);
            let back = &batches[0];
            assert_eq!(back.num_rows(), 2);
            assert_eq!(back.schema(), log_schema());
            assert_eq!(back, &to_record_batch(&records).expect("batch"));
        }
    }

    #[test]
    fn columns_read_back_as_the_same_records() {
        let mut args = StringMap::new();
        args.insert("host".into(), "h1".into());
        let mut extra = StringMap::new();
        extra.insert("nested".into(), "{\"a\":1}".into());
        extra.insert("empty".into(), String::new());
        let full = Log {
            time: "2024-01-01T00:00:00Z".into(),
            level: "warn".into(),
            correlation_id: Some("c".into()),
            session_id: Some("s".into()),
            message_id: Some("m".into()),
            person_id: Some("p".into()),
            user_id: Some("u".into()),
            device_id: Some("d".into()),
            message: "ünï\ncode".into(),
            business_capability: "cap".into(),
            business_domain: "dom".into(),
            business_service: "svc".into(),
            application_service: "app".into(),
            audit: Some(false),
            resource_type: Some("rt".into()),
            cloud_provider: Some("aws".into()),
            source_id: Some("src".into()),
            http_response: Some("200".into()),
            error_code: Some("E1".into()),
            stack_trace: Some("at x\nat y".into()),
            duration: Some("12ms".into()),
            trace_ip: Some(vec!["10.0.0.1".into(), "10.0.0.2".into()]),
            region: Some("eu-west-1".into()),
            az: Some("a".into()),
            tags: Some(Vec::new()),
            args: Some(args),
            transaction_message_reference: Some("t".into()),
            ttl: Some("30d".into()),
            auto_index: Some(true),
            logger_name: Some("l".into()),
            thread_name: Some("main".into()),
            extra_fields: Some(extra),
        };
        let records = vec![
            full,
            Log::default(),
            Log {
                message: "only".into(),
                ..Log::default()
            },
        ];
        let mut columns = LogColumns::new();
        for r in &records {
            columns.append(r);
        }
        assert_eq!(columns.len(), 3);
        let batch = columns.finish().expect("finish");
        assert!(columns.is_empty(), "finish starts over");
        assert_eq!(batch.schema(), log_schema());
        assert_eq!(logs_from_batch(&batch).expect("read back"), records);
        // A slice (as the memory buffer hands out) reads back its own rows.
        assert_eq!(
            logs_from_batch(&batch.slice(2, 1)).expect("slice"),
            records[2..]
        );
        assert!(LogColumns::row_bytes(&records[0]) > LogColumns::row_bytes(&records[1]) + 100);
    }

    #[test]
    fn empty_batches_are_refused() {
        assert!(encode(&[], &opts()).is_err());
    }

    #[test]
    fn row_group_size_is_honoured() {
        let records: Vec<Record> = (0..20_000)
            .map(|i| {
                Arc::new(Log {
                    message: format!("message number {i} {}", "x".repeat(100)),
                    ..Log::default()
                })
            })
            .collect();
        let small = encode(
            &records,
            &EncodeOptions {
                row_group_bytes: 64 * 1024,
                ..opts()
            },
        )
        .expect("encode");
        let meta = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(small))
            .expect("reader")
            .metadata()
            .clone();
        assert!(meta.num_row_groups() > 1, "{}", meta.num_row_groups());
        let total: i64 = meta.row_groups().iter().map(|g| g.num_rows()).sum();
        assert_eq!(total, 20_000);
    }

    /// Statistics of a file's `time` column chunks, and whether it has a page index.
    fn time_stats_and_page_index(file: Vec<u8>) -> (Vec<(String, String)>, bool) {
        use parquet::file::statistics::Statistics;
        let meta = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(file))
            .expect("reader")
            .metadata()
            .clone();
        let time = meta.file_metadata().schema_descr().column(0);
        assert_eq!(time.name(), "time");
        let stats = meta
            .row_groups()
            .iter()
            .map(|g| match g.column(0).statistics() {
                Some(Statistics::ByteArray(s)) => {
                    let text = |v: Option<&parquet::data_type::ByteArray>| {
                        String::from_utf8(v.expect("min and max").data().to_vec()).expect("utf8")
                    };
                    (text(s.min_opt()), text(s.max_opt()))
                }
                other => panic!("no byte-array statistics for time: {other:?}"),
            })
            .collect();
        // Every column has an offset index; the column index (page min/max) only those
        // with statistics, as `time` (free text has none).
        let page_index = meta.row_groups().iter().all(|g| {
            g.column(0).column_index_offset().is_some()
                && g.columns()
                    .iter()
                    .all(|c| c.offset_index_offset().is_some())
        });
        (stats, page_index)
    }

    #[test]
    fn small_files_get_chunk_statistics_and_big_ones_a_page_index_too() {
        // Small: every column is one page, so chunk statistics say it all.
        let small: Vec<Record> = varied(200).into_iter().map(Arc::new).collect();
        let (stats, page_index) =
            time_stats_and_page_index(encode(&small, &opts()).expect("encode"));
        assert_eq!(
            stats,
            vec![("2024-01-01T00:00:00Z".into(), "2024-01-01T00:00:59Z".into())]
        );
        assert!(!page_index, "a one-page file needs no page index");
        // Big (several pages per column): page statistics and the page index as well.
        let big: Vec<Record> = (0..30_000)
            .map(|i| {
                Arc::new(Log {
                    time: format!("2024-01-01T{:02}:00:00Z", i % 24),
                    message: format!("message number {i} {}", "x".repeat(100)),
                    ..Log::default()
                })
            })
            .collect();
        let (stats, page_index) = time_stats_and_page_index(encode(&big, &opts()).expect("encode"));
        assert_eq!(
            stats,
            vec![("2024-01-01T00:00:00Z".into(), "2024-01-01T23:00:00Z".into())]
        );
        assert!(page_index, "a multi-page file keeps its page index");
        // Statistics off: none at all.
        let off = EncodeOptions {
            statistics: false,
            ..opts()
        };
        let meta = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(
            encode(&small, &off).expect("encode"),
        ))
        .expect("reader")
        .metadata()
        .clone();
        assert!(meta.row_group(0).column(0).statistics().is_none());
    }

    #[test]
    fn log_files_have_no_embedded_arrow_schema_and_read_back_the_same() {
        let records: Vec<Record> = varied(50).into_iter().map(Arc::new).collect();
        let file = Bytes::from(encode(&records, &opts()).expect("encode"));
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).expect("reader");
        let keys: Vec<String> = builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .map(|kv| kv.iter().map(|k| k.key.clone()).collect())
            .unwrap_or_default();
        assert!(!keys.iter().any(|k| k == "ARROW:schema"), "{keys:?}");
        // The types inferred from the Parquet schema alone are the Log schema's.
        assert_eq!(builder.schema().fields(), log_schema().fields());
    }

    /// Varied records: nulls, empty and non-empty lists and maps, unicode.
    fn varied(n: usize) -> Vec<Log> {
        (0..n)
            .map(|i| {
                let mut args = StringMap::new();
                for j in 0..i % 3 {
                    args.insert(format!("k{j}"), format!("v{i}-{j}"));
                }
                Log {
                    time: format!("2024-01-01T00:00:{:02}Z", i % 60),
                    level: ["info", "warn"][i % 2].into(),
                    message: format!("m{i} ✓"),
                    user_id: (i % 4 == 0).then(|| format!("u{i}")),
                    audit: (i % 5 != 0).then_some(i % 2 == 0),
                    tags: (i % 3 != 1).then(|| (0..i % 4).map(|t| format!("t{t}")).collect()),
                    args: (i % 2 == 0).then_some(args),
                    ..Log::default()
                }
            })
            .collect()
    }

    /// 300 generator records (seed `seed`: every optional field present or absent, lists,
    /// maps, unicode) then the 40 hand-made ones of [`varied`].
    fn generated_and_varied(seed: u64) -> Vec<Log> {
        let mut g = crate::record::generator::Generator::new(seed);
        let mut logs: Vec<Log> = (0..300)
            .map(|i| {
                crate::record::decode_json_line(&g.next_line(), || format!("line {i}"))
                    .expect("generator line")
            })
            .collect();
        logs.extend(varied(40));
        logs
    }

    #[test]
    fn append_counts_what_row_bytes_counts() {
        let mut cols = LogColumns::new();
        for log in varied(20) {
            assert_eq!(cols.append(&log), LogColumns::row_bytes(&log));
            assert_eq!(cols.append(&log.borrowed()), LogColumns::row_bytes(&log));
        }
    }

    #[test]
    fn buffered_rows_build_the_batch_the_builders_build() {
        // Generator records, the hand-made ones (nulls, empty and absent lists and maps,
        // unicode) and edge cases: the row streams must give the very same batch, count the
        // same bytes, and start over empty after each finish.
        let mut logs = generated_and_varied(5);
        let mut edge = Log {
            message: String::new(),
            trace_ip: Some(Vec::new()),
            tags: Some(vec![String::new(), "é\u{0}x".into()]),
            args: Some(StringMap::new()),
            audit: Some(false),
            auto_index: Some(true),
            ..Log::default()
        };
        edge.extra_fields = Some(StringMap::from([("".into(), "".into())]));
        logs.push(edge);
        let refs: Vec<&Log> = logs.iter().collect();
        let mut rows = LogRows::default();
        for round in 0..2 {
            let mut bytes = 0;
            for group in refs.chunks(13) {
                bytes += rows.append_rows(group);
            }
            assert_eq!(bytes, logs.iter().map(LogColumns::row_bytes).sum::<usize>());
            assert_eq!((rows.len(), rows.text_bytes()), (logs.len(), bytes));
            let mut cols = LogColumns::new();
            cols.append_rows(&refs);
            let expected = cols.finish().expect("batch");
            let got = rows.finish().expect("batch");
            assert_eq!(got, expected, "round {round}");
            assert_eq!(logs_from_batch(&got).expect("logs"), logs);
            assert!(rows.is_empty() && rows.text_bytes() == 0);
        }
        // Borrowed records go in the same way.
        let borrowed: Vec<_> = logs.iter().map(Log::borrowed).collect();
        let brefs: Vec<_> = borrowed.iter().collect();
        rows.append_rows(&brefs);
        let got = rows.finish().expect("batch");
        assert_eq!(logs_from_batch(&got).expect("logs"), logs);
        // Nothing appended: an empty batch in the schema.
        assert_eq!(rows.finish().expect("empty").num_rows(), 0);
    }

    #[test]
    fn row_text_fills_its_blocks_exactly_and_big_fields_get_their_own() {
        // Only `message` has text here (the other required fields are empty), so these
        // sizes fill the first block exactly, start the next with one byte and fill it
        // exactly, put a field bigger than any block in a block of its own, then go on in
        // a fresh block, with empty strings between.
        let sizes = [
            TEXT_BLOCK_MIN - 100,
            100,
            0,
            1,
            2 * TEXT_BLOCK_MIN - 1,
            0,
            3 * TEXT_BLOCK_MAX + 5,
            0,
            10,
            TEXT_BLOCK_MAX,
        ];
        let logs: Vec<Log> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| Log {
                // Distinct text in each, so a read from the wrong place shows.
                message: char::from(b'a' + i as u8).to_string().repeat(*n),
                ..Log::default()
            })
            .collect();
        let refs: Vec<&Log> = logs.iter().collect();
        let mut rows = LogRows::default();
        for r in refs.chunks(3) {
            rows.append_rows(r);
        }
        let caps: Vec<(usize, usize)> = rows
            .text
            .blocks
            .iter()
            .map(|b| (b.len(), b.capacity()))
            .collect();
        assert_eq!(
            caps,
            [
                (TEXT_BLOCK_MIN, TEXT_BLOCK_MIN),
                (2 * TEXT_BLOCK_MIN, 2 * TEXT_BLOCK_MIN),
                (3 * TEXT_BLOCK_MAX + 5, 3 * TEXT_BLOCK_MAX + 5),
                (10, TEXT_BLOCK_MAX),
                (TEXT_BLOCK_MAX, TEXT_BLOCK_MAX),
            ]
        );
        let got = rows.finish().expect("batch");
        let mut cols = LogColumns::new();
        cols.append_rows(&refs);
        assert_eq!(got, cols.finish().expect("batch"));
        assert_eq!(logs_from_batch(&got).expect("logs"), logs);
        // A key of one small record takes a small block: thousands of such keys must not
        // hold far more memory than the bound counts for them (~1.5x their data).
        let small = Log {
            message: "x".repeat(100),
            ..Log::default()
        };
        rows.append_rows(&[&small]);
        let held: usize = rows.text.blocks.iter().map(String::capacity).sum();
        assert!(held <= 512, "{held} bytes of blocks for 100 bytes of text");
        // A push that says how much text comes gets one block for it, once.
        rows.finish().expect("batch");
        rows.expect_text(10_000);
        rows.expect_text(50);
        rows.append_rows(&[&small]);
        let caps: Vec<usize> = rows.text.blocks.iter().map(String::capacity).collect();
        assert_eq!(caps, [10_000]);
    }

    #[test]
    fn rows_appended_together_equal_rows_appended_one_by_one() {
        // Generator records (every optional field present or absent, lists, maps, unicode)
        // and the hand-made ones: column-major appends must build the same batch.
        let logs = generated_and_varied(11);
        let expected_bytes: usize = logs.iter().map(LogColumns::row_bytes).sum();
        let mut one = LogColumns::new();
        for log in &logs {
            one.append(log);
        }
        let mut together = LogColumns::new();
        let refs: Vec<&Log> = logs.iter().collect();
        // In uneven groups, as pushes arrive.
        let mut got_bytes = 0;
        for group in refs.chunks(7) {
            got_bytes += together.append_rows(group);
        }
        assert_eq!(got_bytes, expected_bytes);
        assert_eq!(together.len(), logs.len());
        let (a, b) = (
            one.finish().expect("batch"),
            together.finish().expect("batch"),
        );
        assert_eq!(a, b);
        assert_eq!(logs_from_batch(&b).expect("logs"), logs);
    }
}

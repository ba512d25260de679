//! `RecordType dynamic`: records of any shape, written with the columns of a JSON Schema
//! (`JsonSchemaPath`) or, without one, with columns inferred from each file's records.
//!
//! A dynamic record travels through the buffers inside a Log: its `extra_fields` hold
//! every field under its own key with its value as compact JSON (see
//! `record::decode::Builder::dynamic_entry`), so both buffers carry it unchanged. At flush
//! time the entries of a batch are turned back into JSON objects and decoded into Arrow
//! with `arrow-json`, then written by the same Parquet writer as Log files.
//!
//! Nothing is silently lost:
//! * with a schema, a field the schema does not name goes to a `map<string,string>`
//!   column `extra_fields` (or, when the schema says `"additionalProperties": false`, the
//!   record goes to the DLQ naming the field); a value that does not fit its column, a
//!   missing required field, or an unknown field inside a nested object sends the record to
//!   the DLQ with the reason, and the rest of the batch is written;
//! * without a schema, a field whose values cannot share one Arrow type within a file (an
//!   object here, a number there) is written as JSON text, so every record fits.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use arrow_json::ReaderBuilder;
use arrow_json::reader::infer_json_schema_from_iterator;
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};

use crate::config::{Config, RecordType};
use crate::convert::{EncodeOptions, map_builder};
use crate::error::{Error, Result};

/// Column that keeps the fields a schema does not name.
pub const EXTRA_COLUMN: &str = "extra_fields";

/// One record as the buffers carry it: `(field, value as compact JSON)` pairs.
pub type Entries<'a> = [(&'a str, &'a str)];

/// Where a dynamic file's columns come from.
#[derive(Debug, Clone)]
pub enum Columns {
    /// The JSON Schema of `JsonSchemaPath`.
    Fixed(Arc<FixedSchema>),
    /// Inferred from the records of each file.
    Inferred,
}

impl Columns {
    /// The columns a configuration asks for: `None` for `RecordType log`. A schema that
    /// cannot be read or used fails here, naming the file and the property.
    pub fn from_config(c: &Config) -> Result<Option<Columns>> {
        if c.record_type != RecordType::Dynamic {
            if !c.json_schema_path.is_empty() {
                log::warn!(
                    "JsonSchemaPath `{}` is ignored: it applies to RecordType dynamic only",
                    c.json_schema_path
                );
            }
            return Ok(None);
        }
        if c.json_schema_path.is_empty() {
            return Ok(Some(Columns::Inferred));
        }
        let path = &c.json_schema_path;
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(
                "JsonSchemaPath",
                path.as_str(),
                format!("a readable JSON Schema file ({e})"),
            )
        })?;
        FixedSchema::from_json(&text)
            .map(|s| Some(Columns::Fixed(Arc::new(s))))
            .map_err(|reason| {
                Error::config(
                    "JsonSchemaPath",
                    path.as_str(),
                    format!("a JSON Schema of an object this converter supports: {reason}"),
                )
            })
    }
}

/// A JSON Schema turned into Arrow columns.
#[derive(Debug)]
pub struct FixedSchema {
    /// The columns decoded from the records (without [`EXTRA_COLUMN`]).
    decoded: SchemaRef,
    /// The file's columns: `decoded`, plus [`EXTRA_COLUMN`] when other fields are kept.
    file: SchemaRef,
    /// Top-level property index by name as written, and by normalised name.
    names: HashMap<String, usize>,
    normalised: HashMap<String, usize>,
    /// Whether fields the schema does not name are kept (else the record is rejected).
    keeps_others: bool,
}

/// The keywords of one JSON Schema node that the converter reads. Others (`title`,
/// `description`, `examples`, ...) are ignored; the composition keywords it cannot map
/// are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Node {
    #[serde(rename = "type")]
    ty: Option<TypeSpec>,
    properties: Option<Properties>,
    items: Option<Box<Node>>,
    required: Vec<String>,
    format: Option<String>,
    #[serde(rename = "additionalProperties")]
    additional_properties: Option<serde_json::Value>,
    #[serde(rename = "$ref")]
    reference: Option<String>,
    #[serde(rename = "oneOf")]
    one_of: Option<serde_json::Value>,
    #[serde(rename = "anyOf")]
    any_of: Option<serde_json::Value>,
    #[serde(rename = "allOf")]
    all_of: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TypeSpec {
    One(String),
    Many(Vec<String>),
}

/// `properties`, in the order the file lists them (the column order).
#[derive(Debug, Default)]
struct Properties(Vec<(String, Node)>);

impl<'de> Deserialize<'de> for Properties {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Ordered;
        impl<'de> Visitor<'de> for Ordered {
            type Value = Properties;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of property schemas")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Properties, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Node>()? {
                    out.push((k, v));
                }
                Ok(Properties(out))
            }
        }
        d.deserialize_map(Ordered)
    }
}

/// Lowercase, `_` and `-` dropped: how Log keys match too.
fn normalise(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// `map<string,string>`, as the Log's `args` and `extra_fields`.
fn map_type() -> DataType {
    map_builder(0).finish().data_type().clone()
}

/// The Arrow type of the node at `at` (a JSON pointer, for errors) and whether it
/// admits null.
fn arrow_type(node: &Node, at: &str) -> std::result::Result<(DataType, bool), String> {
    for (present, keyword) in [
        (node.reference.is_some(), "$ref"),
        (node.one_of.is_some(), "oneOf"),
        (node.any_of.is_some(), "anyOf"),
        (node.all_of.is_some(), "allOf"),
    ] {
        if present {
            return Err(format!(
                "`{at}` uses `{keyword}`, which is not supported; give it a `type`"
            ));
        }
    }
    let mut types: Vec<&str> = match &node.ty {
        Some(TypeSpec::One(t)) => vec![t.as_str()],
        Some(TypeSpec::Many(ts)) => ts.iter().map(String::as_str).collect(),
        None if node.properties.is_some() => vec!["object"],
        None if node.items.is_some() => vec!["array"],
        None => return Err(format!("`{at}` has no `type`")),
    };
    let nullable = types.contains(&"null");
    types.retain(|t| *t != "null");
    let ty = match types.as_slice() {
        [] => return Err(format!("`{at}` allows only null")),
        ["string"] => match node.format.as_deref() {
            Some("date-time") => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            Some("date") => DataType::Date32,
            _ => DataType::Utf8,
        },
        ["integer"] => DataType::Int64,
        ["number"] | ["integer", "number"] | ["number", "integer"] => DataType::Float64,
        ["boolean"] => DataType::Boolean,
        ["array"] => {
            let (item, item_null) = match &node.items {
                Some(items) => arrow_type(items, &format!("{at}/items"))?,
                None => (DataType::Utf8, true),
            };
            DataType::List(Arc::new(Field::new("element", item, item_null)))
        }
        ["object"] => match &node.properties {
            Some(props) if !props.0.is_empty() => DataType::Struct(fields_of(node, props, at)?),
            _ => map_type(),
        },
        several => {
            let scalar = |t: &&str| matches!(*t, "string" | "integer" | "number" | "boolean");
            if several.iter().all(scalar) {
                // Numbers and booleans are kept as their text.
                DataType::Utf8
            } else {
                return Err(format!(
                    "`{at}` mixes the types {several:?}; only scalar types can be mixed (as text)"
                ));
            }
        }
    };
    Ok((ty, nullable))
}

fn fields_of(node: &Node, props: &Properties, at: &str) -> std::result::Result<Fields, String> {
    for name in &node.required {
        if !props.0.iter().any(|(p, _)| p == name) {
            return Err(format!(
                "`{at}` requires `{name}`, which is not one of its properties"
            ));
        }
    }
    props
        .0
        .iter()
        .map(|(name, child)| {
            let (ty, null) = arrow_type(child, &format!("{at}/properties/{name}"))?;
            let required = node.required.iter().any(|r| r == name) && !null;
            Ok(Field::new(name, ty, !required))
        })
        .collect()
}

impl FixedSchema {
    /// Reads a JSON Schema document: an object with `properties`. Errors name the
    /// property (as a JSON pointer) and what is wrong with it.
    pub fn from_json(text: &str) -> std::result::Result<FixedSchema, String> {
        let root: Node = serde_json::from_str(text).map_err(|e| format!("not readable: {e}"))?;
        let props = match (&root.ty, &root.properties) {
            (Some(TypeSpec::One(t)), _) if t != "object" => {
                return Err(format!("the root must be an object, not `{t}`"));
            }
            (_, Some(p)) if !p.0.is_empty() => p,
            _ => return Err("the root object has no `properties`".into()),
        };
        let decoded = Schema::new(fields_of(&root, props, "#")?);
        let keeps_others = !matches!(
            root.additional_properties,
            Some(serde_json::Value::Bool(false))
        );
        let mut file_fields: Vec<Arc<Field>> = decoded.fields().iter().cloned().collect();
        if keeps_others {
            if decoded.field_with_name(EXTRA_COLUMN).is_ok() {
                return Err(format!(
                    "`#/properties/{EXTRA_COLUMN}` is the column that keeps fields the schema \
                     does not name; rename the property, or set \"additionalProperties\": false"
                ));
            }
            file_fields.push(Arc::new(Field::new(EXTRA_COLUMN, map_type(), true)));
        }
        let mut names = HashMap::new();
        let mut normalised = HashMap::new();
        for (i, f) in decoded.fields().iter().enumerate() {
            names.insert(f.name().clone(), i);
            normalised.entry(normalise(f.name())).or_insert(i);
        }
        Ok(FixedSchema {
            decoded: Arc::new(decoded),
            file: Arc::new(Schema::new(file_fields)),
            names,
            normalised,
            keeps_others,
        })
    }

    /// The columns of the files written with this schema.
    pub fn file_schema(&self) -> SchemaRef {
        self.file.clone()
    }

    /// The property a record's field fills: by its name, else by its normalised name
    /// (`userId` fills `user_id`).
    fn index(&self, name: &str) -> Option<usize> {
        self.names
            .get(name)
            .or_else(|| self.normalised.get(&normalise(name)))
            .copied()
    }
}

/// What [`encode`] made of a batch.
#[derive(Debug, Default)]
pub struct Encoded {
    /// The Parquet file, `None` when no record could be written.
    pub data: Option<Vec<u8>>,
    /// Records in the file.
    pub rows: usize,
    /// Records that could not be written: their index in the batch and why.
    pub rejected: Vec<(usize, String)>,
}

/// A record's entries as one JSON object, for the DLQ (the input as it came, but for key
/// order and duplicate keys, which were renamed `key#2`).
pub fn object_text(entries: &Entries<'_>) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in entries.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        push_key(&mut s, k);
        s.push_str(v);
    }
    s.push('}');
    s
}

fn push_key(s: &mut String, k: &str) {
    // Serialising a string cannot fail.
    let _ = write!(s, "{}:", serde_json::Value::from(k));
}

/// A value as map text: a JSON string unquoted, anything else as its compact JSON (as the
/// Log record keeps extra fields).
fn map_text(json: &str) -> String {
    if json.starts_with('"') {
        serde_json::from_str::<String>(json).unwrap_or_else(|_| json.to_string())
    } else {
        json.to_string()
    }
}

fn encode_error(e: impl std::fmt::Display) -> Error {
    Error::Encode {
        key: String::new(),
        reason: e.to_string(),
    }
}

/// Decodes newline-separated JSON objects into one batch of `schema`.
fn decode(schema: &SchemaRef, text: &str, rows: usize) -> std::result::Result<RecordBatch, String> {
    let mut decoder = ReaderBuilder::new(schema.clone())
        .with_coerce_primitive(true)
        .with_strict_mode(true)
        .with_batch_size(rows.max(1))
        .build_decoder()
        .map_err(|e| e.to_string())?;
    decoder.decode(text.as_bytes()).map_err(|e| e.to_string())?;
    match decoder.flush().map_err(|e| e.to_string())? {
        Some(batch) => Ok(batch),
        None => Ok(RecordBatch::new_empty(schema.clone())),
    }
}

/// Converts the records of one file. Records that cannot be written are returned as
/// rejected (the caller dead-letters them); an error means nothing could be encoded.
pub fn encode(
    rows: &[Vec<(&str, &str)>],
    columns: &Columns,
    opts: &EncodeOptions,
) -> Result<Encoded> {
    let (batch, rejected) = match columns {
        Columns::Fixed(schema) => fixed_batch(rows, schema)?,
        // Parquet cannot store rows without columns: empty records alone are rejected.
        Columns::Inferred if rows.iter().all(|r| r.is_empty()) => {
            let reason = "the record has no fields (or only nulls): nothing to write as columns";
            let rejected = (0..rows.len()).map(|i| (i, reason.to_string())).collect();
            return Ok(Encoded {
                data: None,
                rows: 0,
                rejected,
            });
        }
        Columns::Inferred => (inferred_batch(rows)?, Vec::new()),
    };
    let mut out = Encoded {
        rows: batch.num_rows(),
        rejected,
        data: None,
    };
    if batch.num_rows() > 0 {
        out.data = Some(crate::convert::encode_any(&batch, opts)?);
    }
    Ok(out)
}

/// A record of a fixed-schema batch: its object text for the decoder, its other fields.
struct Prepared {
    object: String,
    others: Vec<(String, String)>,
}

/// Splits a record into the schema's fields (renamed to the schema's spelling) and the
/// others; `Err` names why it cannot be written.
fn prepare(entries: &Entries<'_>, schema: &FixedSchema) -> std::result::Result<Prepared, String> {
    let fields = schema.decoded.fields();
    let mut seen = vec![false; fields.len()];
    let mut object = String::from("{");
    let mut others = Vec::new();
    for (k, v) in entries {
        match schema.index(k) {
            Some(i) if !seen[i] => {
                seen[i] = true;
                if object.len() > 1 {
                    object.push(',');
                }
                push_key(&mut object, fields[i].name());
                object.push_str(&lenient_value(fields[i].data_type(), v));
            }
            _ if schema.keeps_others => others.push((k.to_string(), map_text(v))),
            _ => {
                return Err(format!(
                    "field `{k}` is not in the schema, which allows no other fields \
                     (\"additionalProperties\": false)"
                ));
            }
        }
    }
    object.push('}');
    if let Some(missing) = fields
        .iter()
        .zip(&seen)
        .find(|(f, seen)| !f.is_nullable() && !**seen)
    {
        return Err(format!("required field `{}` is missing", missing.0.name()));
    }
    Ok(Prepared { object, others })
}

/// A value as the decoder should see it: a boolean written as text (`"true"`) becomes a
/// boolean for a boolean column; anything else is unchanged (the decoder coerces numbers
/// to text and numeric text to numbers itself).
fn lenient_value(ty: &DataType, json: &str) -> String {
    if *ty == DataType::Boolean {
        match json.to_ascii_lowercase().as_str() {
            "\"true\"" => return "true".into(),
            "\"false\"" => return "false".into(),
            _ => {}
        }
    }
    json.to_string()
}

/// Why one prepared record does not decode, naming the field when one alone fails.
fn row_error(object: &str, schema: &FixedSchema, whole: String) -> String {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(object)
    else {
        return whole;
    };
    for (name, value) in &map {
        let Ok(field) = schema.decoded.field_with_name(name) else {
            continue;
        };
        let one = Arc::new(Schema::new(vec![field.clone().with_nullable(true)]));
        let text = serde_json::json!({ name.as_str(): value }).to_string();
        if let Err(e) = decode(&one, &text, 1) {
            return format!("field `{name}`: {e}");
        }
    }
    whole
}

fn fixed_batch(
    rows: &[Vec<(&str, &str)>],
    schema: &FixedSchema,
) -> Result<(RecordBatch, Vec<(usize, String)>)> {
    let mut rejected = Vec::new();
    let mut good: Vec<Prepared> = Vec::with_capacity(rows.len());
    let mut good_index = Vec::with_capacity(rows.len());
    for (i, entries) in rows.iter().enumerate() {
        match prepare(entries, schema) {
            Ok(p) => {
                good.push(p);
                good_index.push(i);
            }
            Err(reason) => rejected.push((i, reason)),
        }
    }
    let joined = |rows: &[&Prepared]| {
        let mut text = String::new();
        for p in rows {
            text.push_str(&p.object);
            text.push('\n');
        }
        text
    };
    let all: Vec<&Prepared> = good.iter().collect();
    let decoded = match decode(&schema.decoded, &joined(&all), all.len()) {
        Ok(batch) => (batch, all),
        Err(_) => {
            // Find the records that do not fit, one by one; decode the others together.
            let mut fit = Vec::with_capacity(good.len());
            for (p, i) in good.iter().zip(&good_index) {
                match decode(&schema.decoded, &p.object, 1) {
                    Ok(_) => fit.push(p),
                    Err(e) => rejected.push((*i, row_error(&p.object, schema, e))),
                }
            }
            let batch = decode(&schema.decoded, &joined(&fit), fit.len()).map_err(encode_error)?;
            (batch, fit)
        }
    };
    rejected.sort_by_key(|(i, _)| *i);
    let (batch, kept) = decoded;
    if !schema.keeps_others {
        return Ok((batch, rejected));
    }
    let mut extra = map_builder(kept.len());
    for p in &kept {
        if p.others.is_empty() {
            extra.append(false).map_err(encode_error)?;
            continue;
        }
        for (k, v) in &p.others {
            extra.keys().append_value(k);
            extra.values().append_value(v);
        }
        extra.append(true).map_err(encode_error)?;
    }
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns.push(Arc::new(extra.finish()));
    let batch = RecordBatch::try_new(schema.file.clone(), columns).map_err(encode_error)?;
    Ok((batch, rejected))
}

/// A column for every field of the records, in order of first appearance. Each field's
/// type is inferred from its values; a field whose values cannot share a type (or that
/// has no Parquet form, like an always-empty object) is written as JSON text.
fn inferred_batch(rows: &[Vec<(&str, &str)>]) -> Result<RecordBatch> {
    let mut order: Vec<&str> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut values: Vec<Vec<Option<&str>>> = Vec::new();
    for (r, entries) in rows.iter().enumerate() {
        for (k, v) in entries {
            let i = *index.entry(k).or_insert_with(|| {
                order.push(k);
                values.push(vec![None; rows.len()]);
                order.len() - 1
            });
            values[i][r] = Some(v);
        }
    }
    let mut fields = Vec::with_capacity(order.len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(order.len());
    for (name, column) in order.iter().zip(&values) {
        let (field, array) = match infer_column(name, column) {
            Some(typed) => typed,
            None => text_column(name, column),
        };
        fields.push(field);
        columns.push(array);
    }
    RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len())),
    )
    .map_err(encode_error)
}

/// One field's values as an inferred column, or `None` when they need to be text.
fn infer_column(name: &str, column: &[Option<&str>]) -> Option<(Arc<Field>, ArrayRef)> {
    let field = match scalar_type(column) {
        Some(ty) => Arc::new(Field::new(name, ty, true)),
        None => nested_field(name, column)?,
    };
    let schema = Arc::new(Schema::new(vec![field.clone()]));
    let mut text = String::new();
    let mut key = String::new();
    push_key(&mut key, name);
    for v in column {
        match v {
            Some(v) => {
                text.push('{');
                text.push_str(&key);
                text.push_str(v);
                text.push_str("}\n");
            }
            None => text.push_str("{}\n"),
        }
    }
    let batch = decode(&schema, &text, column.len()).ok()?;
    Some((field, batch.column(0).clone()))
}

/// The type of a column of scalars, read off the first byte of each value's JSON with
/// arrow-json's inference rules (integers with floats are floats; any other mix is
/// text), without parsing the values. `None` when a value is an array or an object.
fn scalar_type(column: &[Option<&str>]) -> Option<DataType> {
    let (mut int, mut float, mut boolean, mut string) = (false, false, false, false);
    for v in column.iter().flatten() {
        match v.as_bytes().first() {
            Some(b'"') => string = true,
            Some(b't' | b'f') => boolean = true,
            Some(b'-' | b'0'..=b'9') if v.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) => {
                float = true
            }
            Some(b'-' | b'0'..=b'9') => int = true,
            _ => return None,
        }
    }
    Some(match (int, float, boolean, string) {
        (_, true, false, false) => DataType::Float64,
        (true, false, false, false) => DataType::Int64,
        (false, false, true, false) => DataType::Boolean,
        _ => DataType::Utf8,
    })
}

/// The field of a column holding arrays or objects, inferred by arrow-json; `None` when
/// its values cannot share a type or it has no Parquet form (an always-empty object).
fn nested_field(name: &str, column: &[Option<&str>]) -> Option<Arc<Field>> {
    let parsed: Vec<serde_json::Value> = column
        .iter()
        .flatten()
        .map(|v| {
            serde_json::from_str::<serde_json::Value>(v).map(|v| serde_json::json!({ name: v }))
        })
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    let schema = infer_json_schema_from_iterator(parsed.iter().map(Ok)).ok()?;
    let field = schema.fields().first()?.clone();
    match field.data_type() {
        DataType::Null => Some(Arc::new(Field::new(name, DataType::Utf8, true))),
        ty if has_empty_struct(ty) => None,
        _ => Some(field),
    }
}

fn has_empty_struct(ty: &DataType) -> bool {
    match ty {
        DataType::Struct(fields) => {
            fields.is_empty() || fields.iter().any(|f| has_empty_struct(f.data_type()))
        }
        DataType::List(f) => has_empty_struct(f.data_type()),
        _ => false,
    }
}

/// One field's values as text: strings as they are, anything else as compact JSON.
fn text_column(name: &str, column: &[Option<&str>]) -> (Arc<Field>, ArrayRef) {
    let mut b = StringBuilder::with_capacity(column.len(), 0);
    for v in column {
        match v {
            Some(v) => b.append_value(map_text(v)),
            None => b.append_null(),
        }
    }
    let array: ArrayRef = Arc::new(b.finish());
    (Arc::new(Field::new(name, DataType::Utf8, true)), array)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray, BooleanArray, Int64Array, StringArray};
    use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    const SCHEMA: &str = r#"{
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "orders",
        "type": "object",
        "required": ["order_id", "amount"],
        "properties": {
            "order_id": {"type": "integer"},
            "amount": {"type": "number"},
            "customer": {"type": ["string", "null"], "description": "who"},
            "paid": {"type": "boolean"},
            "at": {"type": "string", "format": "date-time"},
            "items": {"type": "array", "items": {"type": "string"}},
            "address": {
                "type": "object",
                "required": ["city"],
                "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}
            },
            "labels": {"type": "object"}
        }
    }"#;

    fn opts() -> EncodeOptions {
        EncodeOptions::from_config(&Config::default())
    }

    fn fixed(text: &str) -> Columns {
        Columns::Fixed(Arc::new(FixedSchema::from_json(text).expect("schema")))
    }

    /// Carrier entries of a JSON object, as the decoder makes them (nulls dropped).
    fn entries(json: &str) -> Vec<(String, String)> {
        let v: serde_json::Value = serde_json::from_str(json).expect("test JSON");
        let mut out: Vec<(String, String)> = v
            .as_object()
            .expect("object")
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        out.sort();
        out
    }

    fn encode_json(records: &[&str], columns: &Columns) -> (Vec<RecordBatch>, Encoded) {
        let owned: Vec<Vec<(String, String)>> = records.iter().map(|r| entries(r)).collect();
        let rows: Vec<Vec<(&str, &str)>> = owned
            .iter()
            .map(|e| e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
            .collect();
        let encoded = encode(&rows, columns, &opts()).expect("encodes");
        let batches = match &encoded.data {
            Some(data) => {
                ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(data.clone()))
                    .expect("footer")
                    .build()
                    .expect("reader")
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .expect("batches")
            }
            None => Vec::new(),
        };
        (batches, encoded)
    }

    #[test]
    fn json_schema_becomes_typed_columns_in_file_order() {
        let s = FixedSchema::from_json(SCHEMA).expect("schema");
        let f = s.file_schema();
        let names: Vec<&str> = f.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "order_id",
                "amount",
                "customer",
                "paid",
                "at",
                "items",
                "address",
                "labels",
                EXTRA_COLUMN
            ]
        );
        let field = |n: &str| f.field_with_name(n).expect(n).clone();
        assert_eq!(field("order_id").data_type(), &DataType::Int64);
        assert!(!field("order_id").is_nullable());
        assert_eq!(field("amount").data_type(), &DataType::Float64);
        assert!(field("customer").is_nullable());
        assert_eq!(field("paid").data_type(), &DataType::Boolean);
        assert_eq!(
            field("at").data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
        );
        assert!(matches!(field("items").data_type(), DataType::List(_)));
        let DataType::Struct(address) = field("address").data_type().clone() else {
            panic!("address is a struct");
        };
        assert!(!address.find("city").expect("city").1.is_nullable());
        assert!(address.find("zip").expect("zip").1.is_nullable());
        assert!(matches!(field("labels").data_type(), DataType::Map(_, _)));
    }

    #[test]
    fn unusable_schemas_are_refused_naming_the_property() {
        let cases = [
            (r#"{"type": "array"}"#, "root must be an object"),
            (r#"{"type": "object"}"#, "no `properties`"),
            (
                r#"{"properties": {"a": {}}}"#,
                "`#/properties/a` has no `type`",
            ),
            (
                r##"{"properties": {"a": {"$ref": "#/defs/x"}}}"##,
                "`#/properties/a` uses `$ref`",
            ),
            (
                r#"{"properties": {"a": {"type": "string"}}, "required": ["b"]}"#,
                "requires `b`",
            ),
            (
                r#"{"properties": {"a": {"type": ["object", "string"]}}}"#,
                "mixes the types",
            ),
            (
                r#"{"properties": {"extra_fields": {"type": "object"}}}"#,
                "additionalProperties",
            ),
            ("not json", "not readable"),
        ];
        for (text, expected) in cases {
            let err = FixedSchema::from_json(text).expect_err(text);
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn fitting_records_are_written_and_the_others_rejected_with_the_field_named() {
        let columns = fixed(SCHEMA);
        let (batches, encoded) = encode_json(
            &[
                r#"{"order_id": 1, "amount": 9.5, "customer": "ann", "paid": true,
                    "at": "2026-12-01T10:00:00Z", "items": ["a", "b"],
                    "address": {"city": "Porto"}, "labels": {"x": "1", "n": 2}, "note": "kept"}"#,
                r#"{"order_id": "2", "amount": 3, "paid": "TRUE", "customer": 42}"#,
                r#"{"order_id": "two", "amount": 1}"#,
                r#"{"amount": 1}"#,
                r#"{"order_id": 5, "amount": 1, "address": {"city": "Lyon", "street": "x"}}"#,
                r#"{"OrderId": 6, "amount": 2.25}"#,
            ],
            &columns,
        );
        assert_eq!(encoded.rows, 3);
        let reasons: Vec<(usize, &str)> = encoded
            .rejected
            .iter()
            .map(|(i, r)| (*i, r.as_str()))
            .collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert_eq!(reasons[0].0, 2);
        assert!(
            reasons[0].1.contains("field `order_id`"),
            "{}",
            reasons[0].1
        );
        assert!(reasons[0].1.contains("two"), "{}", reasons[0].1);
        assert_eq!(reasons[1], (3, "required field `order_id` is missing"));
        assert_eq!(reasons[2].0, 4);
        assert!(reasons[2].1.contains("street"), "{}", reasons[2].1);

        assert_eq!(batches.len(), 1);
        let b = &batches[0];
        let ids = b
            .column_by_name("order_id")
            .expect("id")
            .as_primitive::<Int64Type>();
        assert_eq!(ids, &Int64Array::from(vec![1, 2, 6]));
        let customer = b.column_by_name("customer").expect("c").as_string::<i32>();
        assert_eq!(
            customer,
            &StringArray::from(vec![Some("ann"), Some("42"), None])
        );
        let paid = b.column_by_name("paid").expect("paid").as_boolean();
        assert_eq!(
            paid,
            &BooleanArray::from(vec![Some(true), Some(true), None])
        );
        let col = |name: &str| b.column_by_name(name).expect(name);
        let at = col("at").as_primitive::<TimestampMicrosecondType>();
        assert_eq!(at.value(0), 1_796_119_200_000_000);
        let address = col("address").as_struct();
        assert_eq!(address.column(0).as_string::<i32>().value(0), "Porto");
        let extra = col(EXTRA_COLUMN).as_map();
        assert!(extra.is_valid(0) && extra.is_null(1) && extra.is_null(2));
        assert_eq!(extra.value(0).column(0).as_string::<i32>().value(0), "note");
        assert_eq!(extra.value(0).column(1).as_string::<i32>().value(0), "kept");
        let labels = col("labels").as_map();
        let keys = labels.value(0).column(0).as_string::<i32>().clone();
        let values = labels.value(0).column(1).as_string::<i32>().clone();
        let got: Vec<(&str, &str)> = keys.iter().flatten().zip(values.iter().flatten()).collect();
        assert_eq!(got, [("n", "2"), ("x", "1")]);
    }

    #[test]
    fn a_closed_schema_rejects_other_fields() {
        let columns = fixed(
            r#"{"type": "object", "additionalProperties": false,
                "properties": {"a": {"type": "string"}}}"#,
        );
        let (batches, encoded) = encode_json(&[r#"{"a": "x"}"#, r#"{"a": "y", "b": 1}"#], &columns);
        assert_eq!(encoded.rows, 1);
        assert_eq!(encoded.rejected.len(), 1);
        assert!(
            encoded.rejected[0]
                .1
                .contains("field `b` is not in the schema")
        );
        assert_eq!(batches[0].num_columns(), 1);
    }

    #[test]
    fn a_batch_where_nothing_fits_makes_no_file() {
        let columns = fixed(r#"{"properties": {"a": {"type": "integer"}}, "required": ["a"]}"#);
        let (batches, encoded) = encode_json(&[r#"{"b": 1}"#, r#"{"a": "x"}"#], &columns);
        assert!(encoded.data.is_none());
        assert!(batches.is_empty());
        assert_eq!(encoded.rejected.len(), 2);
    }

    #[test]
    fn inferred_columns_keep_every_value() {
        let (batches, encoded) = encode_json(
            &[
                r#"{"id": 1, "tags": ["a"], "user": {"name": "ann", "age": 30}, "odd": {"k": 1}, "empty": {}}"#,
                r#"{"id": 2.5, "tags": ["b", "c"], "user": {"name": "bob"}, "odd": 7, "flag": true}"#,
                r#"{"id": 3, "note": "only here"}"#,
            ],
            &Columns::Inferred,
        );
        assert!(encoded.rejected.is_empty());
        assert_eq!(encoded.rows, 3);
        let b = &batches[0];
        let s = b.schema();
        let ty = |n: &str| s.field_with_name(n).expect(n).data_type().clone();
        assert_eq!(ty("id"), DataType::Float64);
        assert!(matches!(ty("tags"), DataType::List(_)));
        assert!(matches!(ty("user"), DataType::Struct(_)));
        assert_eq!(ty("flag"), DataType::Boolean);
        // An object in one record and a number in another, and an always-empty object,
        // are written as JSON text.
        assert_eq!(ty("odd"), DataType::Utf8);
        assert_eq!(ty("empty"), DataType::Utf8);
        let odd = b.column_by_name("odd").expect("odd").as_string::<i32>();
        assert_eq!(
            odd,
            &StringArray::from(vec![Some(r#"{"k":1}"#), Some("7"), None])
        );
        let note = b.column_by_name("note").expect("note").as_string::<i32>();
        assert_eq!(
            note,
            &StringArray::from(vec![None, None, Some("only here")])
        );
    }

    #[test]
    fn empty_records_are_rows_of_nulls_or_rejected_when_alone() {
        let (batches, encoded) = encode_json(&[r#"{}"#, r#"{"a": 1}"#], &Columns::Inferred);
        assert_eq!(encoded.rows, 2);
        assert_eq!(batches[0].column(0).null_count(), 1);
        let (batches, encoded) = encode_json(&[r#"{}"#, r#"{"a": null}"#], &Columns::Inferred);
        assert!(batches.is_empty() && encoded.data.is_none());
        assert_eq!(encoded.rejected.len(), 2);
        assert!(encoded.rejected[0].1.contains("no fields"));
    }

    #[test]
    fn scalar_types_are_what_arrow_json_infers() {
        let columns: [&[&str]; 9] = [
            &["1", "-2"],
            &["1", "2.5"],
            &["1e3", "4"],
            &["true", "false"],
            &["true", "1"],
            &["\"a\"", "1"],
            &["\"a\""],
            &["[1]", "2"],
            &["{\"k\":1}"],
        ];
        for column in columns {
            let values: Vec<Option<&str>> = column.iter().map(|v| Some(*v)).collect();
            let arrow = nested_field("c", &values).map(|f| f.data_type().clone());
            match scalar_type(&values) {
                Some(ty) => assert_eq!(Some(ty), arrow, "{column:?}"),
                None => assert!(column.iter().any(|v| v.starts_with(['[', '{']))),
            }
        }
    }

    #[test]
    fn object_text_rebuilds_the_record() {
        let text = object_text(&[("a", "1"), ("b\"", "\"x\""), ("c", "[true]")]);
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v, serde_json::json!({"a": 1, "b\"": "x", "c": [true]}));
    }
}

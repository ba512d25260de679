//! Conversion of one batch of records into one Parquet file (sans I/O: bytes in memory).
//!
//! The Arrow schema is the seed's Log record: 32 columns, required UTF-8 strings for the
//! seed's non-pointer fields, nullable strings for the rest, booleans for `audit` and
//! `auto_index`, `list<string>` for `tags`/`trace_ip` and `map<string,string>` for
//! `args`/`extra_fields`, written with the standard Parquet LIST/MAP layouts so Athena,
//! Spark, Trino and DuckDB read them without casts.

use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, ArrayRef, BooleanArray, ListBuilder, MapBuilder, MapFieldNames, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{GzipLevel, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::buffer::Record;
use crate::config::{Compression, Config};
use crate::error::{Error, Result};

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
    "duration",
    "region",
    "az",
    "ttl",
    "logger_name",
    "thread_name",
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

fn list_builder(capacity: usize) -> ListBuilder<StringBuilder> {
    ListBuilder::with_capacity(StringBuilder::new(), capacity).with_field(list_field())
}

fn map_builder(capacity: usize) -> MapBuilder<StringBuilder, StringBuilder> {
    MapBuilder::with_capacity(
        Some(map_names()),
        StringBuilder::new(),
        StringBuilder::new(),
        capacity,
    )
    .with_values_field(Arc::new(Field::new("value", DataType::Utf8, true)))
}

/// The Arrow schema of the Log record (built once).
pub fn log_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let list_type = list_builder(0).finish().data_type().clone();
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

// String columns are built with their exact byte size reserved up front (one cheap pass
// over the lengths), so the value buffer never regrows and copies.

fn required(records: &[Record], f: impl Fn(&crate::record::Log) -> &str) -> ArrayRef {
    let bytes = records.iter().map(|r| f(r).len()).sum();
    let mut b = StringBuilder::with_capacity(records.len(), bytes);
    for r in records {
        b.append_value(f(r));
    }
    Arc::new(b.finish())
}

fn optional(records: &[Record], f: impl Fn(&crate::record::Log) -> Option<&str>) -> ArrayRef {
    let bytes = records.iter().map(|r| f(r).map_or(0, str::len)).sum();
    let mut b = StringBuilder::with_capacity(records.len(), bytes);
    for r in records {
        b.append_option(f(r));
    }
    Arc::new(b.finish())
}

fn boolean(records: &[Record], f: impl Fn(&crate::record::Log) -> Option<bool>) -> ArrayRef {
    Arc::new(BooleanArray::from_iter(records.iter().map(|r| f(r))))
}

fn list(records: &[Record], f: impl Fn(&crate::record::Log) -> Option<&Vec<String>>) -> ArrayRef {
    let mut b = list_builder(records.len());
    for r in records {
        match f(r) {
            Some(items) => {
                for item in items {
                    b.values().append_value(item);
                }
                b.append(true);
            }
            None => b.append(false),
        }
    }
    Arc::new(b.finish())
}

fn map(
    records: &[Record],
    f: impl Fn(&crate::record::Log) -> Option<&crate::record::StringMap>,
) -> Result<ArrayRef> {
    let mut b = map_builder(records.len());
    for r in records {
        match f(r) {
            Some(m) => {
                for (k, v) in m {
                    b.keys().append_value(k);
                    b.values().append_value(v);
                }
                b.append(true)
            }
            None => b.append(false),
        }
        .map_err(|e| Error::Encode {
            key: String::new(),
            reason: e.to_string(),
        })?;
    }
    Ok(Arc::new(b.finish()))
}

/// Builds the Arrow batch for `records`.
pub fn to_record_batch(records: &[Record]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        required(records, |r| &r.time),
        required(records, |r| &r.level),
        optional(records, |r| r.correlation_id.as_deref()),
        optional(records, |r| r.session_id.as_deref()),
        optional(records, |r| r.message_id.as_deref()),
        optional(records, |r| r.person_id.as_deref()),
        optional(records, |r| r.user_id.as_deref()),
        optional(records, |r| r.device_id.as_deref()),
        required(records, |r| &r.message),
        required(records, |r| &r.business_capability),
        required(records, |r| &r.business_domain),
        required(records, |r| &r.business_service),
        required(records, |r| &r.application_service),
        boolean(records, |r| r.audit),
        optional(records, |r| r.resource_type.as_deref()),
        optional(records, |r| r.cloud_provider.as_deref()),
        optional(records, |r| r.source_id.as_deref()),
        optional(records, |r| r.http_response.as_deref()),
        optional(records, |r| r.error_code.as_deref()),
        optional(records, |r| r.stack_trace.as_deref()),
        optional(records, |r| r.duration.as_deref()),
        list(records, |r| r.trace_ip.as_ref()),
        optional(records, |r| r.region.as_deref()),
        optional(records, |r| r.az.as_deref()),
        list(records, |r| r.tags.as_ref()),
        map(records, |r| r.args.as_ref())?,
        optional(records, |r| r.transaction_message_reference.as_deref()),
        optional(records, |r| r.ttl.as_deref()),
        boolean(records, |r| r.auto_index),
        optional(records, |r| r.logger_name.as_deref()),
        optional(records, |r| r.thread_name.as_deref()),
        map(records, |r| r.extra_fields.as_ref())?,
    ];
    RecordBatch::try_new(log_schema(), columns).map_err(|e| Error::Encode {
        key: String::new(),
        reason: e.to_string(),
    })
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
    /// Write page statistics.
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

    fn properties(&self) -> Result<WriterProperties> {
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
        let mut b = WriterProperties::builder()
            .set_compression(codec)
            .set_created_by(format!("data2parquet {}", env!("CARGO_PKG_VERSION")))
            .set_dictionary_enabled(false)
            .set_max_row_group_row_count(None)
            .set_max_row_group_bytes(Some(self.row_group_bytes.max(1) as usize))
            .set_statistics_enabled(if self.statistics {
                EnabledStatistics::Page
            } else {
                EnabledStatistics::None
            });
        if self.dictionary {
            for col in DICTIONARY_COLUMNS {
                b = b.set_column_dictionary_enabled(ColumnPath::from(*col), true);
            }
        }
        Ok(b.build())
    }
}

/// Rows handed to the Parquet writer at a time (bounds the Arrow memory of a big batch).
const SLICE_ROWS: usize = 8192;

/// Encodes `records` (non-empty) as one Parquet file in memory.
pub fn encode(records: &[Record], opts: &EncodeOptions) -> Result<Vec<u8>> {
    let enc_err = |e: parquet::errors::ParquetError| Error::Encode {
        key: String::new(),
        reason: e.to_string(),
    };
    if records.is_empty() {
        return Err(Error::Encode {
            key: String::new(),
            reason: "refusing to write an empty file".into(),
        });
    }
    let mut writer = ArrowWriter::try_new(Vec::new(), log_schema(), Some(opts.properties()?))
        .map_err(enc_err)?;
    for slice in records.chunks(SLICE_ROWS) {
        let batch = to_record_batch(slice)?;
        writer.write(&batch).map_err(enc_err)?;
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
}

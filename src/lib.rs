//! # data2parquet
//!
//! Receives JSON log records one by one, buffers them per partition key (in memory or in
//! Redis), and writes structured Apache Parquet files to local disk or S3. The same engine
//! serves the Fluent Bit output plugin (`out_parquet`), the HTTP server and the
//! `json2parquet` command.
//!
//! The crate is built in three rings:
//! * a pure core: [`config`], [`record`] (the Log schema and lenient decoding),
//!   [`convert`] (records to Parquet bytes), [`naming`] (object names);
//! * adapters behind small traits: [`buffer::Buffer`] (memory, Redis) and
//!   [`writer::Writer`] (file, S3);
//! * the engine, [`receiver::Receiver`], that the entry points (`src/bin`, the plugin
//!   crate) call.

pub mod buffer;
pub mod clock;
pub mod config;
pub mod convert;
pub mod dynamic;
pub mod error;
pub mod fluent;
pub mod input;
pub mod naming;
pub mod receiver;
pub mod record;
pub mod server;
pub mod writer;

use std::sync::Arc;

pub use config::Config;
pub use error::{Error, Result};
pub use receiver::Receiver;
pub use record::{Log, LogRef};

use buffer::Buffer;
use config::{BufferType, WriterType};
use writer::Writer;

/// A hash map for the engine's hot per-key maps (keys of a push, key shards, first-seen
/// times). The standard map's SipHash took ~0.8% of json2parquet's CPU on these short
/// keys; foldhash is several times faster and still seeded per map, so keys taken from
/// untrusted input cannot be chosen to collide in advance.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The set counterpart of [`FastMap`].
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Builds the buffer a configuration names.
pub fn build_buffer(config: &Config) -> Result<Arc<dyn Buffer>> {
    match config.buffer_type {
        BufferType::Mem => Ok(Arc::new(buffer::mem::MemBuffer::new(
            config.buffer_max_bytes,
        ))),
        BufferType::Redis => Ok(Arc::new(buffer::redis::RedisBuffer::connect(config)?)),
    }
}

/// Builds the writer a configuration names.
pub fn build_writer(config: &Config) -> Result<Arc<dyn Writer>> {
    match config.writer_type {
        WriterType::File => {
            let w = writer::file::FileWriter::new(&config.writer_file_path)
                .with_sync(config.writer_file_sync);
            if !config.writer_file_sync {
                log::info!(
                    "file writer {}: files are not fsync'd (WriterFileSync false); the kernel writes them back",
                    w.target()
                );
            }
            Ok(Arc::new(w))
        }
        WriterType::AwsS3 => Ok(Arc::new(writer::s3::S3Writer::new(config)?)),
    }
}

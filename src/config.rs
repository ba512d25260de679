//! Configuration: every key of Data2Parquet-go with its default, read from JSON files
//! (`buffer_size`), Fluent Bit properties (`BufferSize`) or flags, all through one parser.
//!
//! Keys are matched case-insensitively with `_` and `-` ignored, so `BufferSize`,
//! `buffer_size` and `buffer-size` are the same key. Unknown keys produce a warning naming
//! them; bad values produce an [`Error::Config`] naming the key, the value and what is accepted.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::error::{Error, Result};

/// Default `BufferSize`: records per key that trigger a flush.
pub const DEFAULT_BUFFER_SIZE: usize = 100;
/// Default `FlushInterval` in seconds.
pub const DEFAULT_FLUSH_INTERVAL: u64 = 5;
/// Default `WriterFilePath`.
pub const DEFAULT_WRITER_FILE_PATH: &str = "./out";
/// Default `WriterRowGroupSize` in bytes (128 MiB).
pub const DEFAULT_ROW_GROUP_SIZE: u64 = 134_217_728;
/// Default `BufferMaxBytes`: memory bound of the memory buffer (64 MiB).
pub const DEFAULT_BUFFER_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Default `FlushWorkers`: background threads converting and writing keys in parallel.
pub const DEFAULT_FLUSH_WORKERS: usize = 2;
/// Default `S3PartSize`: multipart threshold and part size (8 MiB; S3's minimum is 5 MiB).
pub const DEFAULT_S3_PART_SIZE: usize = 8 * 1024 * 1024;
/// Default HTTP `Port`.
pub const DEFAULT_PORT: u16 = 8080;
/// Default `RecoveryPath`: where data that could not be written is kept on local disk.
pub const DEFAULT_RECOVERY_PATH: &str = "./recovery";
/// Default zstd level when `WriterCompressionLevel` is not set.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// Default gzip level when `WriterCompressionLevel` is not set.
pub const DEFAULT_GZIP_LEVEL: u32 = 6;
/// Default `BufferFullWait` in milliseconds: how long a push into a full buffer waits for
/// the flusher to make room before it reports backpressure (`FLB_RETRY`).
pub const DEFAULT_BUFFER_FULL_WAIT_MS: u64 = 1000;
/// Default `MaxBodyBytes` of the HTTP server (16 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Where records wait before they are flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferType {
    /// In-process memory (fast, lost if the process dies).
    Mem,
    /// A Redis server shared by instances (durable, coordinated by locks).
    Redis,
}

/// Where Parquet files go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterType {
    /// Local directory `WriterFilePath`.
    File,
    /// AWS S3 or an S3-compatible store.
    AwsS3,
}

/// Parquet compression codec with its level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// No compression.
    None,
    /// Snappy (the default, recommended by the seed).
    Snappy,
    /// Gzip with level 0-9.
    Gzip(u32),
    /// Zstandard with level 1-22.
    Zstd(i32),
}

/// Which record schema incoming data is decoded into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    /// The seed's fixed 32-column `Log` schema.
    Log,
    /// Any JSON object: columns from `JsonSchemaPath`, or inferred per file when it is
    /// empty ([`crate::dynamic`]).
    Dynamic,
}

/// The complete configuration. Build it with [`Config::from_json`], [`Config::from_pairs`]
/// or [`Config::default`] followed by [`Config::set`] and [`Config::validate`].
#[derive(Clone)]
pub struct Config {
    /// HTTP server listen address (HTTP server only; empty = 127.0.0.1).
    pub address: String,
    /// Records per key that trigger a flush.
    pub buffer_size: usize,
    /// Memory buffer or Redis.
    pub buffer_type: BufferType,
    /// Memory bound of the memory buffer in bytes; pushes beyond it fail with a retryable error.
    pub buffer_max_bytes: usize,
    /// Milliseconds a push into a full buffer may wait for room before failing (plugin).
    pub buffer_full_wait_ms: u64,
    /// Verbose logging.
    pub debug: bool,
    /// Seconds after which a key's oldest record forces a flush (0 = only size triggers).
    pub flush_interval: u64,
    /// Background threads that convert and write (different keys in parallel).
    pub flush_workers: usize,
    /// Path of a JSON schema file (accepted for compatibility; not used by the Log record).
    pub json_schema_path: String,
    /// Accepted for compatibility with the seed's example files; logs go to stderr.
    pub log_path: String,
    /// HTTP server port.
    pub port: u16,
    /// Maximum request body accepted by the HTTP server, in bytes.
    pub max_body_bytes: usize,
    /// Record schema.
    pub record_type: RecordType,
    /// Re-send attempts for data whose write failed (0 = keep trying on every tick).
    pub recovery_attempts: u32,
    /// Local directory where unwritable data is kept at close.
    pub recovery_path: String,
    /// Redis key prefix of record lists.
    pub redis_data_prefix: String,
    /// Redis database number.
    pub redis_db: i64,
    /// Redis key prefix of dead-letter lists.
    pub redis_dlq_prefix: String,
    /// Redis `host:port` (or a `redis://` URL).
    pub redis_host: String,
    /// Redis key of the set of buffered keys.
    pub redis_keys: String,
    /// Redis key prefix of per-key flush locks.
    pub redis_lock_prefix: String,
    /// Lock time-to-live in seconds (default 1.5 x FlushInterval, at least 1).
    pub redis_lock_ttl: u64,
    /// This instance's lock owner name (default: host name + process id).
    pub redis_lock_instance_name: String,
    /// Redis password (never logged).
    pub redis_password: String,
    /// Redis key of the recovery bucket.
    pub redis_recovery_key: String,
    /// Redis connect/read timeout in seconds (0 = client default).
    pub redis_timeout: u64,
    /// Receive only: never flush (another instance flushes).
    pub redis_skip_flush: bool,
    /// S3 bucket.
    pub s3_bucket_name: String,
    /// S3 endpoint for S3-compatible stores (path-style addressing).
    pub s3_endpoint: String,
    /// S3 region.
    pub s3_region: String,
    /// Role to assume through STS.
    pub s3_role_arn: String,
    /// STS endpoint for the assume-role call.
    pub s3_sts_endpoint: String,
    /// Objects of at least this many bytes go up as multipart uploads of this part size.
    pub s3_part_size: usize,
    /// Capability used in partition keys when a record has none (else `unknown`).
    pub s3_default_capability: String,
    /// Re-send recovery data automatically.
    pub try_auto_recover: bool,
    /// Parquet codec.
    pub writer_compression: Compression,
    /// Local output directory of the file writer.
    pub writer_file_path: String,
    /// Target row-group size in bytes of uncompressed data.
    pub writer_row_group_size: u64,
    /// Dictionary-encode the repetitive string columns.
    pub writer_dictionary: bool,
    /// Write column statistics (min/max/null count).
    pub writer_statistics: bool,
    /// File writer: `fsync` each file before renaming it into place, and its directory
    /// after, so a file reported written survives a power loss.
    pub writer_file_sync: bool,
    /// File writer or S3.
    pub writer_type: WriterType,
    /// Unknown keys seen while parsing (each also logged as a warning).
    pub unknown_keys: Vec<String>,
    lock_ttl_set: bool,
    compression_name: &'static str,
    compression_level: Option<i64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            address: String::new(),
            buffer_size: DEFAULT_BUFFER_SIZE,
            buffer_type: BufferType::Mem,
            buffer_max_bytes: DEFAULT_BUFFER_MAX_BYTES,
            buffer_full_wait_ms: DEFAULT_BUFFER_FULL_WAIT_MS,
            debug: false,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            flush_workers: DEFAULT_FLUSH_WORKERS,
            json_schema_path: String::new(),
            log_path: String::new(),
            port: DEFAULT_PORT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            record_type: RecordType::Log,
            recovery_attempts: 0,
            recovery_path: DEFAULT_RECOVERY_PATH.to_string(),
            redis_data_prefix: "data".into(),
            redis_db: 0,
            redis_dlq_prefix: "dlq".into(),
            redis_host: String::new(),
            redis_keys: "keys".into(),
            redis_lock_prefix: "lock".into(),
            redis_lock_ttl: lock_ttl_for(DEFAULT_FLUSH_INTERVAL),
            redis_lock_instance_name: String::new(),
            redis_password: String::new(),
            redis_recovery_key: "recovery".into(),
            redis_timeout: 0,
            redis_skip_flush: false,
            s3_bucket_name: String::new(),
            s3_endpoint: String::new(),
            s3_region: String::new(),
            s3_role_arn: String::new(),
            s3_sts_endpoint: String::new(),
            s3_part_size: DEFAULT_S3_PART_SIZE,
            s3_default_capability: String::new(),
            try_auto_recover: false,
            writer_compression: Compression::Snappy,
            writer_file_path: DEFAULT_WRITER_FILE_PATH.into(),
            writer_row_group_size: DEFAULT_ROW_GROUP_SIZE,
            writer_dictionary: true,
            writer_statistics: true,
            writer_file_sync: true,
            writer_type: WriterType::File,
            unknown_keys: Vec::new(),
            lock_ttl_set: false,
            compression_name: "snappy",
            compression_level: None,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = if self.redis_password.is_empty() {
            ""
        } else {
            "<redacted>"
        };
        f.debug_struct("Config")
            .field("buffer_type", &self.buffer_type)
            .field("buffer_size", &self.buffer_size)
            .field("buffer_max_bytes", &self.buffer_max_bytes)
            .field("flush_interval", &self.flush_interval)
            .field("writer_type", &self.writer_type)
            .field("writer_file_path", &self.writer_file_path)
            .field("writer_compression", &self.writer_compression)
            .field("writer_row_group_size", &self.writer_row_group_size)
            .field("redis_host", &self.redis_host)
            .field("redis_db", &self.redis_db)
            .field("redis_password", &redacted)
            .field("redis_lock_instance_name", &self.redis_lock_instance_name)
            .field("redis_skip_flush", &self.redis_skip_flush)
            .field("s3_bucket_name", &self.s3_bucket_name)
            .field("s3_region", &self.s3_region)
            .field("s3_endpoint", &self.s3_endpoint)
            .field("try_auto_recover", &self.try_auto_recover)
            .field("recovery_attempts", &self.recovery_attempts)
            .finish_non_exhaustive()
    }
}

/// The Fluent Bit property names (CamelCase, as in the seed), read by the plugin at Init.
pub const FLUENT_BIT_KEYS: &[&str] = &[
    "BufferSize",
    "BufferType",
    "BufferMaxBytes",
    "BufferFullWait",
    "Debug",
    "FlushInterval",
    "FlushWorkers",
    "JsonSchemaPath",
    "RecordType",
    "RecoveryAttempts",
    "RecoveryPath",
    "RedisDataPrefix",
    "RedisDB",
    "RedisDLQPrefix",
    "RedisHost",
    "RedisKeys",
    "RedisLockPrefix",
    "RedisLockTTL",
    "RedisLockInstanceName",
    "RedisPassword",
    "RedisRecoveryKey",
    "RedisSQLPrefix",
    "RedisSkipFlush",
    "RedisTimeout",
    "S3BucketName",
    "S3Region",
    "S3RoleARN",
    "S3STSEndpoint",
    "S3Endpoint",
    "S3DefaultCapability",
    "S3PartSize",
    "TryAutoRecover",
    "WriterCompressionType",
    "WriterCompressionLevel",
    "WriterDictionary",
    "WriterFilePath",
    "WriterFileSync",
    "WriterRowGroupSize",
    "WriterStatistics",
    "WriterType",
];

fn lock_ttl_for(flush_interval: u64) -> u64 {
    (flush_interval * 3).div_ceil(2).max(1)
}

/// Normalises a key for matching: lower case, `_` and `-` removed.
pub fn normalize_key(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn as_string(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        other => value_text(other),
    }
}

fn as_u64(key: &str, value: &Value, min: u64, max: u64) -> Result<u64> {
    let parsed = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match parsed {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(Error::config(
            key,
            value_text(value),
            format!("an integer from {min} to {max}"),
        )),
    }
}

fn as_i64(key: &str, value: &Value) -> Result<i64> {
    let parsed = match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| Error::config(key, value_text(value), "an integer"))
}

fn as_bool(key: &str, value: &Value) -> Result<bool> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) if n.as_u64() == Some(0) => Ok(false),
        Value::Number(n) if n.as_u64() == Some(1) => Ok(true),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" | "1" => Ok(true),
            "false" | "off" | "no" | "0" | "" => Ok(false),
            _ => Err(Error::config(
                key,
                s.clone(),
                "true or false (on/off, yes/no, 1/0)",
            )),
        },
        other => Err(Error::config(key, value_text(other), "true or false")),
    }
}

fn size_text(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            let s = s.trim();
            let lower = s.to_ascii_lowercase();
            let (digits, mult) = if let Some(d) = lower.strip_suffix('k') {
                (d, 1024)
            } else if let Some(d) = lower.strip_suffix('m') {
                (d, 1024 * 1024)
            } else if let Some(d) = lower.strip_suffix('g') {
                (d, 1024 * 1024 * 1024)
            } else {
                (lower.as_str(), 1)
            };
            digits
                .trim()
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(mult))
        }
        _ => None,
    }
}

impl Config {
    /// Parses a JSON configuration document (the seed's format) and validates it.
    pub fn from_json(text: &str) -> Result<Config> {
        let value: Value = serde_json::from_str(text).map_err(|e| Error::Decode {
            what: "configuration JSON".into(),
            reason: e.to_string(),
        })?;
        let Value::Object(map) = value else {
            return Err(Error::Decode {
                what: "configuration JSON".into(),
                reason: "the document must be a JSON object".into(),
            });
        };
        let mut config = Config::default();
        for (key, value) in &map {
            config.set(key, value)?;
        }
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a JSON configuration file.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io("reading config", path, e))?;
        Config::from_json(&text).map_err(|e| match e {
            Error::Decode { reason, .. } => Error::Decode {
                what: format!("configuration file {}", path.display()),
                reason,
            },
            other => other,
        })
    }

    /// Builds a configuration from string pairs (Fluent Bit properties, environment,
    /// command-line `key=value`), then validates it.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Config> {
        let mut config = Config::default();
        for (key, value) in pairs {
            config.set(key, &Value::String(value.to_string()))?;
        }
        config.validate()?;
        Ok(config)
    }

    /// The command-line form shared by the binaries: an optional JSON file, then
    /// `KEY=VALUE` overrides (an unknown key is an error here: a typo on a command line
    /// must not pass), then validation.
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Config> {
        let mut config = match file {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        for pair in overrides {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(Error::config(pair, "", "KEY=VALUE"));
            };
            if !config.set(k.trim(), &Value::String(v.trim().to_string()))? {
                return Err(Error::config(
                    k,
                    v,
                    "a known configuration key (see the README)",
                ));
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Sets one key. Returns `Ok(false)` (and records a warning) for an unknown key.
    pub fn set(&mut self, key: &str, value: &Value) -> Result<bool> {
        let norm = normalize_key(key);
        match norm.as_str() {
            "address" => self.address = as_string(value),
            "buffersize" => self.buffer_size = as_u64(key, value, 1, 100_000_000)? as usize,
            "buffertype" => {
                self.buffer_type = match as_string(value).to_ascii_lowercase().as_str() {
                    "mem" | "memory" => BufferType::Mem,
                    "redis" => BufferType::Redis,
                    _ => return Err(Error::config(key, value_text(value), "`mem` or `redis`")),
                }
            }
            "buffermaxbytes" => {
                self.buffer_max_bytes = match size_text(value) {
                    Some(n) if n >= 1024 * 1024 => n as usize,
                    _ => {
                        return Err(Error::config(
                            key,
                            value_text(value),
                            "a size of at least 1M (bytes, or with a K/M/G suffix)",
                        ));
                    }
                }
            }
            "bufferfullwait" => self.buffer_full_wait_ms = as_u64(key, value, 0, 60_000)?,
            "debug" => self.debug = as_bool(key, value)?,
            "flushinterval" => self.flush_interval = as_u64(key, value, 0, 86_400)?,
            "flushworkers" => self.flush_workers = as_u64(key, value, 1, 64)? as usize,
            "jsonschemapath" => self.json_schema_path = as_string(value),
            "logpath" => self.log_path = as_string(value),
            "port" => self.port = as_u64(key, value, 1, 65_535)? as u16,
            "maxbodybytes" => {
                self.max_body_bytes = match size_text(value) {
                    Some(n) if n >= 1024 => n as usize,
                    _ => {
                        return Err(Error::config(
                            key,
                            value_text(value),
                            "a size of at least 1K (bytes, or with a K/M/G suffix)",
                        ));
                    }
                }
            }
            "recordtype" => {
                self.record_type = match as_string(value).to_ascii_lowercase().as_str() {
                    "log" | "" => RecordType::Log,
                    "dynamic" => RecordType::Dynamic,
                    _ => {
                        return Err(Error::config(
                            key,
                            value_text(value),
                            "`log` (the seed's Log schema) or `dynamic` (any JSON object; columns from JsonSchemaPath, or inferred)",
                        ));
                    }
                }
            }
            "recoveryattempts" => self.recovery_attempts = as_u64(key, value, 0, 1_000_000)? as u32,
            "recoverypath" => self.recovery_path = as_string(value),
            "redisdataprefix" => self.redis_data_prefix = as_string(value),
            "redisdb" => self.redis_db = as_i64(key, value)?,
            "redisdlqprefix" | "redissqlprefix" => self.redis_dlq_prefix = as_string(value),
            "redishost" => self.redis_host = as_string(value),
            "rediskeys" => self.redis_keys = as_string(value),
            "redislockprefix" => self.redis_lock_prefix = as_string(value),
            "redislockttl" => {
                self.redis_lock_ttl = as_u64(key, value, 1, 86_400)?;
                self.lock_ttl_set = true;
            }
            "redislockinstancename" => self.redis_lock_instance_name = as_string(value),
            "redispassword" => self.redis_password = as_string(value),
            "redisrecoverykey" => self.redis_recovery_key = as_string(value),
            "redistimeout" => self.redis_timeout = as_u64(key, value, 0, 3_600)?,
            "redisskipflush" => self.redis_skip_flush = as_bool(key, value)?,
            "s3bucketname" | "s3buketname" => self.s3_bucket_name = as_string(value),
            "s3endpoint" => self.s3_endpoint = as_string(value),
            "s3region" => self.s3_region = as_string(value),
            "s3rolearn" => self.s3_role_arn = as_string(value),
            "s3stsendpoint" => self.s3_sts_endpoint = as_string(value),
            "s3defaultcapability" => self.s3_default_capability = as_string(value),
            "s3partsize" => {
                self.s3_part_size = match size_text(value) {
                    Some(n) if n >= 5 * 1024 * 1024 => n as usize,
                    _ => {
                        return Err(Error::config(
                            key,
                            value_text(value),
                            "a size of at least 5M (S3's minimum part size)",
                        ));
                    }
                }
            }
            "tryautorecover" => self.try_auto_recover = as_bool(key, value)?,
            "writercompressiontype" => {
                self.compression_name = match as_string(value).to_ascii_lowercase().as_str() {
                    "snappy" | "" => "snappy",
                    "gzip" => "gzip",
                    "zstd" => "zstd",
                    "none" | "uncompressed" => "none",
                    _ => {
                        return Err(Error::config(
                            key,
                            value_text(value),
                            "`snappy`, `gzip`, `zstd` or `none`",
                        ));
                    }
                }
            }
            "writercompressionlevel" => {
                self.compression_level = Some(as_i64(key, value)?);
            }
            "writerdictionary" => self.writer_dictionary = as_bool(key, value)?,
            "writerstatistics" => self.writer_statistics = as_bool(key, value)?,
            "writerfilepath" => self.writer_file_path = as_string(value),
            "writerfilesync" => self.writer_file_sync = as_bool(key, value)?,
            "writerrowgroupsize" => {
                self.writer_row_group_size = match size_text(value) {
                    Some(n) if n >= 1024 => n,
                    _ => {
                        return Err(Error::config(
                            key,
                            value_text(value),
                            "a size in bytes of at least 1024 (K/M/G suffixes accepted)",
                        ));
                    }
                }
            }
            "writertype" => {
                self.writer_type = match as_string(value).to_ascii_lowercase().as_str() {
                    "file" | "" => WriterType::File,
                    "aws-s3" | "awss3" | "s3" => WriterType::AwsS3,
                    _ => return Err(Error::config(key, value_text(value), "`file` or `aws-s3`")),
                }
            }
            _ => {
                log::warn!(
                    "config: unknown key `{key}` ignored (check its spelling; see the README for the keys)"
                );
                self.unknown_keys.push(key.to_string());
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Checks cross-key rules and fills the derived defaults. Called by every constructor.
    pub fn validate(&mut self) -> Result<()> {
        if !self.lock_ttl_set {
            self.redis_lock_ttl = lock_ttl_for(self.flush_interval);
        }
        if self.redis_lock_instance_name.is_empty() {
            let host = hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into());
            self.redis_lock_instance_name = format!("{host}-{}", std::process::id());
        }
        self.writer_compression = match (self.compression_name, self.compression_level) {
            ("none", _) => Compression::None,
            ("snappy", _) => Compression::Snappy,
            ("gzip", None) => Compression::Gzip(DEFAULT_GZIP_LEVEL),
            ("gzip", Some(l)) if (0..=9).contains(&l) => Compression::Gzip(l as u32),
            ("zstd", None) => Compression::Zstd(DEFAULT_ZSTD_LEVEL),
            ("zstd", Some(l)) if (1..=22).contains(&l) => Compression::Zstd(l as i32),
            (name, Some(l)) => {
                let range = if name == "gzip" { "0 to 9" } else { "1 to 22" };
                return Err(Error::config(
                    "WriterCompressionLevel",
                    l.to_string(),
                    format!("a level from {range} for {name}"),
                ));
            }
            (_, None) => Compression::Snappy,
        };
        if self.buffer_type == BufferType::Redis && self.redis_host.trim().is_empty() {
            return Err(Error::config(
                "RedisHost",
                "",
                "a `host:port` (required when BufferType is redis)",
            ));
        }
        if self.writer_type == WriterType::AwsS3 && self.s3_bucket_name.trim().is_empty() {
            return Err(Error::config(
                "S3BucketName",
                "",
                "a bucket name (required when WriterType is aws-s3)",
            ));
        }
        if self.writer_type == WriterType::File && self.writer_file_path.trim().is_empty() {
            return Err(Error::config("WriterFilePath", "", "a directory path"));
        }
        Ok(())
    }

    /// The flush interval as a duration (`None` when interval flushing is off).
    pub fn flush_interval_duration(&self) -> Option<Duration> {
        (self.flush_interval > 0).then(|| Duration::from_secs(self.flush_interval))
    }

    /// The capability used for records without one.
    pub fn default_capability(&self) -> &str {
        if self.s3_default_capability.is_empty() {
            "unknown"
        } else {
            &self.s3_default_capability
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_seed() {
        let c = Config::from_json("{}").expect("empty config is valid");
        assert_eq!(c.buffer_size, 100);
        assert_eq!(c.buffer_type, BufferType::Mem);
        assert_eq!(c.flush_interval, 5);
        assert_eq!(c.record_type, RecordType::Log);
        assert_eq!(c.writer_type, WriterType::File);
        assert_eq!(c.writer_file_path, "./out");
        assert_eq!(c.writer_compression, Compression::Snappy);
        assert_eq!(c.writer_row_group_size, 134_217_728);
        assert!(c.writer_file_sync, "files are synced unless told otherwise");
        assert_eq!(
            (
                c.redis_data_prefix.as_str(),
                c.redis_keys.as_str(),
                c.redis_lock_prefix.as_str(),
                c.redis_recovery_key.as_str(),
                c.redis_dlq_prefix.as_str()
            ),
            ("data", "keys", "lock", "recovery", "dlq")
        );
        assert_eq!(c.redis_lock_ttl, 8, "1.5 x 5 s, rounded up");
        assert!(!c.redis_lock_instance_name.is_empty());
        assert_eq!(c.port, 8080);
    }

    #[test]
    fn seed_example_files_load() {
        let redis = r#"{
            "buffer_size": 1000, "buffer_type": "redis", "debug": false, "flush_interval": 60,
            "log_path": "./logs", "redis_data_prefix": "data", "redis_db": 0,
            "redis_host": "0.0.0.0:6379", "redis_keys": "keys", "redis_password": "",
            "redis_skip_flush": false, "writer_compression_type": "snappy",
            "writer_file_path": "./data", "writer_row_group_size": 134217728, "writer_type": "file"
        }"#;
        let c = Config::from_json(redis).expect("seed redis example");
        assert_eq!(c.buffer_type, BufferType::Redis);
        assert_eq!(c.buffer_size, 1000);
        assert_eq!(c.redis_lock_ttl, 90);
        assert!(c.unknown_keys.is_empty(), "{:?}", c.unknown_keys);
        let mem = r#"{"buffer_type": "mem", "flush_interval": 60, "writer_compression_type": "snappy",
            "writer_file_path": "./data", "writer_row_group_size": 134217728, "writer_type": "file"}"#;
        let c = Config::from_json(mem).expect("seed mem example");
        assert_eq!(c.writer_file_path, "./data");
    }

    #[test]
    fn fluent_bit_names_are_case_insensitive() {
        let c = Config::from_pairs([
            ("BUFFERSIZE", "7"),
            ("writertype", "aws-s3"),
            ("S3BucketName", "b"),
            ("WriterCompressionType", "ZSTD"),
            ("WriterCompressionLevel", "9"),
            ("redis-lock-ttl", "3"),
            ("writer-file-sync", "OFF"),
        ])
        .expect("valid");
        assert!(!c.writer_file_sync);
        assert_eq!(c.buffer_size, 7);
        assert_eq!(c.writer_type, WriterType::AwsS3);
        assert_eq!(c.writer_compression, Compression::Zstd(9));
        assert_eq!(c.redis_lock_ttl, 3);
    }

    #[test]
    fn every_fluent_bit_key_is_known() {
        for key in FLUENT_BIT_KEYS {
            let mut c = Config::default();
            let sample = match *key {
                "BufferSize" | "FlushInterval" | "FlushWorkers" | "RecoveryAttempts"
                | "RedisDB" | "RedisLockTTL" | "RedisTimeout" | "BufferFullWait" => "3",
                "BufferMaxBytes" | "S3PartSize" => "8M",
                "WriterRowGroupSize" => "1048576",
                "WriterCompressionLevel" => "3",
                "Debug" | "TryAutoRecover" | "RedisSkipFlush" | "WriterDictionary"
                | "WriterStatistics" | "WriterFileSync" => "true",
                "BufferType" => "mem",
                "WriterType" => "file",
                "RecordType" => "log",
                "WriterCompressionType" => "gzip",
                _ => "x",
            };
            assert!(
                c.set(key, &Value::String(sample.into())).expect(key),
                "{key} unknown"
            );
        }
    }

    #[test]
    fn bad_values_name_key_value_and_expectation() {
        let err = Config::from_pairs([("BufferSize", "lots")]).expect_err("not a number");
        let msg = err.to_string();
        assert!(msg.contains("BufferSize") && msg.contains("lots") && msg.contains("integer"));
        let err = Config::from_pairs([("WriterCompressionType", "lz4")]).expect_err("codec");
        assert!(err.to_string().contains("lz4") && err.to_string().contains("zstd"));
        let err = Config::from_pairs([("BufferType", "redis")]).expect_err("needs host");
        assert!(err.to_string().contains("RedisHost"));
        let err = Config::from_pairs([
            ("WriterCompressionType", "gzip"),
            ("WriterCompressionLevel", "12"),
        ])
        .expect_err("gzip level");
        assert!(err.to_string().contains("0 to 9"));
        let err = Config::from_pairs([("BufferSize", "0")]).expect_err("zero");
        assert!(err.to_string().contains("BufferSize"));
    }

    #[test]
    fn unknown_keys_are_reported() {
        let c = Config::from_json(r#"{"bufer_size": 5}"#).expect("unknown is a warning");
        assert_eq!(c.unknown_keys, vec!["bufer_size".to_string()]);
        assert_eq!(c.buffer_size, 100);
    }

    #[test]
    fn password_is_redacted_in_debug() {
        let c = Config::from_pairs([("RedisPassword", "hunter2")]).expect("valid");
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("redacted"));
    }
}

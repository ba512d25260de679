//! The crate's one error type, with the context a user needs to act on it, and the single
//! place that decides whether an error is worth retrying.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in data2parquet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration key has a value that cannot be accepted.
    #[error("config key `{key}`: invalid value `{value}`: expected {expected}")]
    Config {
        /// The key as the user spelled it.
        key: String,
        /// The rejected value (secrets are never put here).
        value: String,
        /// What would have been accepted.
        expected: String,
    },
    /// Input that cannot be a record at all (broken JSON, not an object, bad msgpack).
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// Which input: `line 12 of logs.jsonl`, `record 3 of chunk`, ...
        what: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The buffer holds as much as it may; the caller should retry later (backpressure).
    #[error("buffer full: {used} of {limit} bytes in use{}; retry later", recovery_note(*.recovery))]
    BufferFull {
        /// Bytes currently held.
        used: usize,
        /// The configured bound (`BufferMaxBytes`).
        limit: usize,
        /// Of `used`, files whose write failed, waiting in the recovery bucket.
        recovery: usize,
    },
    /// The buffer backend cannot be reached right now (for example Redis is down).
    #[error("buffer unavailable: {0}")]
    BufferUnavailable(String),
    /// A buffer operation failed for a reason that retrying will not fix.
    #[error("buffer error: {0}")]
    Buffer(String),
    /// Converting records to Parquet failed.
    #[error("parquet encoding failed for key `{key}`: {reason}")]
    Encode {
        /// Partition key of the batch.
        key: String,
        /// The encoder's message.
        reason: String,
    },
    /// Storing an object failed; the data is kept for recovery.
    #[error("writing `{name}` to {target} failed: {reason}")]
    Write {
        /// Object name (relative path) that was being written.
        name: String,
        /// Where it was going (`file:///...`, `s3://bucket`).
        target: String,
        /// The underlying message.
        reason: String,
        /// Whether a later attempt may succeed.
        retryable: bool,
    },
    /// Local I/O failure outside the writer (reading input, spilling recovery data).
    #[error("{action} `{path}`: {source}")]
    Io {
        /// What was being done (`reading`, `creating directory`, ...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The engine has been closed and takes no more records.
    #[error("the receiver is closed")]
    Closed,
}

/// The part of a [`Error::BufferFull`] message that says how much of the buffer failed
/// writes hold (nothing when they hold none).
fn recovery_note(recovery: usize) -> String {
    if recovery == 0 {
        String::new()
    } else {
        format!(
            " ({recovery} of them files whose write failed, waiting in the recovery bucket to be re-sent)"
        )
    }
}

impl Error {
    /// True when the same operation may succeed later without any change by the user:
    /// this decides `FLB_RETRY` vs `FLB_ERROR` in the plugin and 503 vs 400 over HTTP.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::BufferFull { .. } | Error::BufferUnavailable(_) => true,
            Error::Write { retryable, .. } => *retryable,
            Error::Io { .. } => true,
            Error::Config { .. }
            | Error::Decode { .. }
            | Error::Buffer(_)
            | Error::Encode { .. }
            | Error::Closed => false,
        }
    }

    /// Shorthand for a configuration error.
    pub fn config(key: &str, value: impl Into<String>, expected: impl Into<String>) -> Self {
        Error::Config {
            key: key.to_string(),
            value: value.into(),
            expected: expected.into(),
        }
    }

    /// Shorthand for an I/O error with its path.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classification() {
        let full = Error::BufferFull {
            used: 2,
            limit: 1,
            recovery: 0,
        };
        assert!(full.is_retryable());
        assert_eq!(
            full.to_string(),
            "buffer full: 2 of 1 bytes in use; retry later"
        );
        let held_back = Error::BufferFull {
            used: 900,
            limit: 1000,
            recovery: 700,
        };
        assert_eq!(
            held_back.to_string(),
            "buffer full: 900 of 1000 bytes in use (700 of them files whose write failed, \
             waiting in the recovery bucket to be re-sent); retry later"
        );
        assert!(Error::BufferUnavailable("down".into()).is_retryable());
        assert!(!Error::config("BufferSize", "x", "a number").is_retryable());
        assert!(!Error::Closed.is_retryable());
        let msg = Error::config("BufferSize", "abc", "a positive integer").to_string();
        assert!(msg.contains("BufferSize") && msg.contains("abc") && msg.contains("positive"));
    }
}

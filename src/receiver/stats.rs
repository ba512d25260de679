//! What the engine counts: counters, their snapshot ([`Stats`]) and what a flush did
//! ([`FlushReport`]).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::Inner;

/// Counters of what the engine did, for summaries and metrics.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) records_in: AtomicU64,
    pub(super) records_written: AtomicU64,
    pub(super) records_dlq: AtomicU64,
    pub(super) files_written: AtomicU64,
    pub(super) bytes_written: AtomicU64,
    pub(super) dlq_files_written: AtomicU64,
    pub(super) write_failures: AtomicU64,
    pub(super) recovered: AtomicU64,
    pub(super) recovery_spilled: AtomicU64,
    pub(super) flushes: AtomicU64,
    pub(super) flush_micros: AtomicU64,
    pub(super) lock_contention: AtomicU64,
    pub(super) push_refused: AtomicU64,
}

/// A snapshot of the engine's counters.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Stats {
    /// Records accepted into the buffer.
    pub records_in: u64,
    /// Records written to Parquet files (re-sent recovery files included).
    pub records_written: u64,
    /// Records and inputs sent to the dead-letter queue.
    pub records_dlq: u64,
    /// Parquet files written (re-sent recovery files included).
    pub files_written: u64,
    /// Bytes of Parquet and DLQ files written.
    pub bytes_written: u64,
    /// DLQ files written.
    pub dlq_files_written: u64,
    /// Writes that failed (their data went to the recovery bucket).
    pub write_failures: u64,
    /// Recovery items written on a later attempt (also counted in the files written).
    pub recovered: u64,
    /// Recovery items kept on local disk because they could not be written.
    pub recovery_spilled: u64,
    /// Flushes of a key that wrote at least one batch.
    pub flushes: u64,
    /// The flushes' times added up, in microseconds: each from the start of its batch's
    /// conversion until its records were cleared. The batches of a flush round overlap
    /// (their files are written together), so this can exceed the wall time spent.
    pub flush_micros: u64,
    /// Flushes skipped because another instance held the key's lock.
    pub lock_contention: u64,
    /// Pushes refused because the buffer was full or unavailable.
    pub push_refused: u64,
    /// Bytes the buffer holds now.
    pub buffer_bytes: u64,
    /// Records buffered now, over all keys.
    pub buffered_records: u64,
    /// Recovery items waiting now.
    pub recovery_backlog: u64,
}

impl std::fmt::Display for Stats {
    /// One line for logs: `records_in=.. written=.. dlq=.. files=.. write_failures=.. spilled=..`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "records_in={} written={} dlq={} files={} write_failures={} spilled={}",
            self.records_in,
            self.records_written,
            self.records_dlq,
            self.files_written,
            self.write_failures,
            self.recovery_spilled
        )
    }
}

/// What a flush did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct FlushReport {
    /// Records written to Parquet.
    pub records: u64,
    /// Files written.
    pub files: u64,
    /// Records whose file failed and is kept in the recovery bucket.
    pub records_to_recovery: u64,
    /// Keys skipped because another instance holds their lock.
    pub keys_locked_elsewhere: Vec<String>,
    /// Object names written.
    pub names: Vec<String>,
}

impl FlushReport {
    pub(super) fn merge(&mut self, other: FlushReport) {
        self.records += other.records;
        self.files += other.files;
        self.records_to_recovery += other.records_to_recovery;
        self.keys_locked_elsewhere
            .extend(other.keys_locked_elsewhere);
        self.names.extend(other.names);
    }
}

impl Inner {
    pub(super) fn stats(&self) -> Stats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let buffered = self.buffer.total_len().unwrap_or(0) as u64;
        let backlog = self.buffer.recovery_len().unwrap_or(0) as u64;
        Stats {
            records_in: get(&c.records_in),
            records_written: get(&c.records_written),
            records_dlq: get(&c.records_dlq),
            files_written: get(&c.files_written),
            bytes_written: get(&c.bytes_written),
            dlq_files_written: get(&c.dlq_files_written),
            write_failures: get(&c.write_failures),
            recovered: get(&c.recovered),
            recovery_spilled: get(&c.recovery_spilled),
            flushes: get(&c.flushes),
            flush_micros: get(&c.flush_micros),
            lock_contention: get(&c.lock_contention),
            push_refused: get(&c.push_refused),
            buffer_bytes: self.buffer.bytes_used() as u64,
            buffered_records: buffered,
            recovery_backlog: backlog,
        }
    }
}

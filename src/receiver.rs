//! The engine every entry point shares: push records per partition key, flush a key when
//! it holds `BufferSize` records or its oldest record is `FlushInterval` seconds old (a
//! background thread), on demand, and on close; convert to Parquet; write; dead-letter what
//! cannot be converted; keep what could not be written in the recovery bucket and re-send it.
//!
//! Records leave the buffer only after their file was written or their data was put in
//! the recovery bucket, so a failure at any step loses nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use parking_lot::{Condvar, Mutex};
use serde::Serialize;

use crate::buffer::{Buffer, DlqEntry, PushBatch, Record, RecoveryItem};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::convert::{self, EncodeOptions};
use crate::error::{Error, Result};
use crate::naming::{ObjectKind, object_name};
use crate::record::{Hour, Log, format_time};
use crate::writer::Writer;

/// How often the background thread looks at keys' ages and the recovery bucket.
const TICK: Duration = Duration::from_millis(250);
/// Dead-letter entries written per DLQ file.
const DLQ_BATCH: usize = 10_000;
/// Partition key of input that could not be decoded at all.
pub const UNDECODABLE_KEY: &str = "unknown:unknown:unknown:unknown";

/// Counters of what the engine did, for summaries and metrics.
#[derive(Debug, Default)]
struct Counters {
    records_in: AtomicU64,
    records_written: AtomicU64,
    records_dlq: AtomicU64,
    files_written: AtomicU64,
    bytes_written: AtomicU64,
    dlq_files_written: AtomicU64,
    write_failures: AtomicU64,
    recovered: AtomicU64,
    recovery_spilled: AtomicU64,
    flushes: AtomicU64,
    flush_micros: AtomicU64,
    lock_contention: AtomicU64,
    push_refused: AtomicU64,
}

/// A snapshot of the engine's counters.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Stats {
    /// Records accepted into the buffer.
    pub records_in: u64,
    /// Records written to Parquet files.
    pub records_written: u64,
    /// Records and inputs sent to the dead-letter queue.
    pub records_dlq: u64,
    /// Parquet files written.
    pub files_written: u64,
    /// Bytes of Parquet and DLQ files written.
    pub bytes_written: u64,
    /// DLQ files written.
    pub dlq_files_written: u64,
    /// Writes that failed (their data went to the recovery bucket).
    pub write_failures: u64,
    /// Recovery items written on a later attempt.
    pub recovered: u64,
    /// Recovery items kept on local disk because they could not be written.
    pub recovery_spilled: u64,
    /// Flushes of a key that wrote at least one batch.
    pub flushes: u64,
    /// Total time spent in those flushes, in microseconds.
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
    fn merge(&mut self, other: FlushReport) {
        self.records += other.records;
        self.files += other.files;
        self.records_to_recovery += other.records_to_recovery;
        self.keys_locked_elsewhere
            .extend(other.keys_locked_elsewhere);
        self.names.extend(other.names);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Only batches of exactly `BufferSize` (the size trigger).
    FullBatches,
    /// Everything the key holds (interval, on demand, close).
    All,
}

struct Inner {
    config: Config,
    buffer: Arc<dyn Buffer>,
    writer: Arc<dyn Writer>,
    clock: Arc<dyn Clock>,
    encode: EncodeOptions,
    counters: Counters,
    first_seen: Mutex<HashMap<String, DateTime<Utc>>>,
    due: Mutex<Vec<String>>,
    pressure: AtomicBool,
    flush_lock: Mutex<()>,
    signal: Mutex<bool>,
    wake: Condvar,
    flushed: Condvar,
    flushed_lock: Mutex<u64>,
    closed: AtomicBool,
}

/// The engine. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Receiver {
    inner: Arc<Inner>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

/// Whether the receiver runs its own background flusher thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Background {
    /// Start the flusher thread (normal use).
    Thread,
    /// No thread: the caller drives [`Receiver::tick`] (tests with a fake clock).
    Manual,
}

impl Receiver {
    /// Builds the buffer and writer the configuration names and starts the engine.
    pub fn from_config(config: Config) -> Result<Receiver> {
        let buffer = crate::build_buffer(&config)?;
        let writer = crate::build_writer(&config)?;
        Receiver::new(
            config,
            buffer,
            writer,
            Arc::new(SystemClock),
            Background::Thread,
        )
    }

    /// Starts an engine over the given parts. Initialises the writer first, so a bad
    /// target fails here with a clear error.
    pub fn new(
        config: Config,
        buffer: Arc<dyn Buffer>,
        writer: Arc<dyn Writer>,
        clock: Arc<dyn Clock>,
        background: Background,
    ) -> Result<Receiver> {
        writer.init()?;
        let inner = Arc::new(Inner {
            encode: EncodeOptions::from_config(&config),
            config,
            buffer,
            writer,
            clock,
            counters: Counters::default(),
            first_seen: Mutex::new(HashMap::new()),
            due: Mutex::new(Vec::new()),
            pressure: AtomicBool::new(false),
            flush_lock: Mutex::new(()),
            signal: Mutex::new(false),
            wake: Condvar::new(),
            flushed: Condvar::new(),
            flushed_lock: Mutex::new(0),
            closed: AtomicBool::new(false),
        });
        log::info!(
            "receiver started: buffer={} writer={} buffer_size={} flush_interval={}s compression={:?}",
            inner.buffer.describe(),
            inner.writer.target(),
            inner.config.buffer_size,
            inner.config.flush_interval,
            inner.config.writer_compression
        );
        let flusher = match background {
            Background::Thread => {
                let worker = inner.clone();
                let handle = std::thread::Builder::new()
                    .name("d2p-flusher".into())
                    .spawn(move || worker.run_flusher())
                    .map_err(|e| Error::io("starting flusher thread", "", e))?;
                Some(handle)
            }
            Background::Manual => None,
        };
        Ok(Receiver {
            inner,
            flusher: Mutex::new(flusher),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The current time of the engine's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// A dead-letter entry for input that could not become a record.
    pub fn dlq_entry(&self, key: Option<String>, reason: String, raw: String) -> DlqEntry {
        DlqEntry {
            key: key.unwrap_or_else(|| UNDECODABLE_KEY.to_string()),
            reason,
            raw,
            time: format_time(self.now()),
        }
    }

    /// Accepts records (and dead-letter entries) all or nothing. An empty `time` is filled
    /// with the arrival time. On a retryable error nothing was accepted and the same call
    /// may be repeated. Returns the number of records accepted.
    pub fn push(&self, records: Vec<Log>, dlq: Vec<DlqEntry>) -> Result<usize> {
        let batch = self.prepare(records, dlq)?;
        self.push_prepared(batch)
    }

    /// Like [`Receiver::push`], but when the buffer is full waits (up to `timeout`) for the
    /// flusher to make room instead of failing. Used by batch tools such as json2parquet.
    pub fn push_wait(
        &self,
        records: Vec<Log>,
        dlq: Vec<DlqEntry>,
        timeout: Duration,
    ) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        let batch = self.prepare(records, dlq)?;
        loop {
            // Records are shared (`Arc`), so keeping a copy for a retry is cheap.
            match self.push_prepared(batch.clone()) {
                Ok(n) => return Ok(n),
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    if self.flusher.lock().is_none() {
                        // No background thread to make room: flush here.
                        self.inner.relieve_pressure()?;
                    } else {
                        self.inner.wait_flushed(Duration::from_millis(50));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn prepare(&self, records: Vec<Log>, dlq: Vec<DlqEntry>) -> Result<PushBatch> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let now = self.inner.clock.now();
        let default_cap = self.inner.config.default_capability();
        let mut groups: BTreeMap<String, Vec<Record>> = BTreeMap::new();
        for mut log in records {
            log.fill_time(now);
            groups
                .entry(log.partition_key(default_cap))
                .or_default()
                .push(Arc::new(log));
        }
        Ok(PushBatch {
            groups: groups.into_iter().collect(),
            dlq,
        })
    }

    fn push_prepared(&self, batch: PushBatch) -> Result<usize> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let now = inner.clock.now();
        let count = batch.record_count();
        let dlq_count = batch.dlq.len() as u64;
        let keys: Vec<String> = batch.groups.iter().map(|(k, _)| k.clone()).collect();
        let lens = match inner.buffer.push(batch) {
            Ok(lens) => lens,
            Err(e) => {
                inner.counters.push_refused.fetch_add(1, Ordering::Relaxed);
                if matches!(e, Error::BufferFull { .. }) {
                    inner.pressure.store(true, Ordering::Release);
                    inner.notify();
                }
                return Err(e);
            }
        };
        inner
            .counters
            .records_in
            .fetch_add(count as u64, Ordering::Relaxed);
        inner
            .counters
            .records_dlq
            .fetch_add(dlq_count, Ordering::Relaxed);
        let mut any_due = false;
        {
            let mut first = inner.first_seen.lock();
            for key in &keys {
                first.entry(key.clone()).or_insert(now);
            }
            let mut due = inner.due.lock();
            for (key, len) in keys.into_iter().zip(lens) {
                if len >= inner.config.buffer_size && !due.contains(&key) {
                    due.push(key);
                    any_due = true;
                }
            }
        }
        if any_due {
            inner.notify();
        }
        Ok(count)
    }

    /// Flushes every key now (the seed's Flush), then writes pending DLQ entries and, with
    /// `TryAutoRecover`, re-sends recovery data.
    pub fn flush(&self) -> Result<FlushReport> {
        let report = self.inner.flush_all(Mode::All)?;
        self.inner.drain_dlq()?;
        if self.inner.config.try_auto_recover {
            self.inner.resend_recovery(false)?;
        }
        Ok(report)
    }

    /// Flushes one key now (the seed's FlushKey).
    pub fn flush_key(&self, key: &str) -> Result<FlushReport> {
        self.inner.flush_key(key, Mode::All)
    }

    /// One round of the background work: size-due keys, keys older than `FlushInterval`,
    /// the DLQ, and recovery re-sends. The flusher thread calls this; tests call it with a
    /// fake clock.
    pub fn tick(&self) -> Result<FlushReport> {
        self.inner.tick()
    }

    /// Re-sends what is in the recovery bucket (the seed's TryResendData). Returns how many
    /// items were written.
    pub fn try_resend(&self) -> Result<usize> {
        self.inner.resend_recovery(false)
    }

    /// Ready when both the buffer and the writer are.
    pub fn health_check(&self) -> Result<()> {
        if !self.inner.buffer.is_ready() {
            return Err(Error::BufferUnavailable(format!(
                "{} is not ready",
                self.inner.buffer.describe()
            )));
        }
        if !self.inner.writer.is_ready() {
            return Err(Error::Write {
                name: String::new(),
                target: self.inner.writer.target(),
                reason: "writer is not ready".into(),
                retryable: true,
            });
        }
        Ok(())
    }

    /// Whether the buffer is ready.
    pub fn buffer_ready(&self) -> bool {
        self.inner.buffer.is_ready()
    }

    /// Whether the writer is ready.
    pub fn writer_ready(&self) -> bool {
        self.inner.writer.is_ready()
    }

    /// Where files go.
    pub fn target(&self) -> String {
        self.inner.writer.target()
    }

    /// A snapshot of the counters and buffer state.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// Stops the background thread, flushes everything, writes the DLQ, re-sends recovery
    /// data once, and keeps whatever still cannot be written on local disk
    /// (`RecoveryPath`, logged). Further pushes fail with [`Error::Closed`].
    pub fn close(&self) -> Result<FlushReport> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(FlushReport::default());
        }
        {
            let mut stop = self.inner.signal.lock();
            *stop = true;
            self.inner.wake.notify_all();
        }
        if let Some(handle) = self.flusher.lock().take()
            && handle.join().is_err()
        {
            log::error!("flusher thread panicked; flushing from close");
        }
        let inner = &self.inner;
        let mut result = inner.flush_all(Mode::All);
        if let Err(e) = inner.drain_dlq() {
            log::error!("close: writing the DLQ failed: {e}");
        }
        if let Err(e) = inner.resend_recovery(true) {
            log::error!("close: re-sending recovery data failed: {e}");
        }
        if !inner.buffer.durable()
            && let Err(e) = inner.spill_leftovers()
        {
            log::error!("close: keeping leftovers on local disk failed: {e}");
            if result.is_ok() {
                result = Err(e);
            }
        }
        if let Err(e) = inner.writer.close() {
            log::warn!("close: writer close failed: {e}");
        }
        if let Err(e) = inner.buffer.close() {
            log::warn!("close: buffer close failed: {e}");
        }
        let stats = inner.stats();
        log::info!(
            "receiver closed: records_in={} written={} dlq={} files={} write_failures={} spilled={}",
            stats.records_in,
            stats.records_written,
            stats.records_dlq,
            stats.files_written,
            stats.write_failures,
            stats.recovery_spilled
        );
        result
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if !self.inner.closed.load(Ordering::Acquire)
            && let Err(e) = self.close()
        {
            log::error!("receiver dropped without close; closing failed: {e}");
        }
    }
}

impl Inner {
    fn notify(&self) {
        let _guard = self.signal.lock();
        self.wake.notify_all();
    }

    fn wait_flushed(&self, timeout: Duration) {
        let mut n = self.flushed_lock.lock();
        let _ = self.flushed.wait_for(&mut n, timeout);
    }

    fn announce_flushed(&self) {
        let mut n = self.flushed_lock.lock();
        *n += 1;
        self.flushed.notify_all();
    }

    fn run_flusher(self: Arc<Self>) {
        let mut last_tick = Instant::now();
        loop {
            {
                let mut stop = self.signal.lock();
                if *stop {
                    return;
                }
                let idle = self.due.lock().is_empty() && !self.pressure.load(Ordering::Acquire);
                if idle {
                    let _ = self.wake.wait_for(&mut stop, TICK);
                }
                if *stop {
                    return;
                }
            }
            if let Err(e) = self.flush_due() {
                log::warn!(
                    "background flush failed: {e}; the records stay buffered and will be retried"
                );
            }
            if self.pressure.swap(false, Ordering::AcqRel)
                && let Err(e) = self.relieve_pressure()
            {
                log::warn!("flush under memory pressure failed: {e}; will retry");
            }
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                if let Err(e) = self.tick() {
                    log::warn!("background tick failed: {e}; will retry");
                }
            }
            self.announce_flushed();
        }
    }

    fn flush_due(&self) -> Result<()> {
        let due: Vec<String> = std::mem::take(&mut *self.due.lock());
        for key in due {
            self.flush_key(&key, Mode::FullBatches)?;
        }
        Ok(())
    }

    /// The buffer refused a push: flush the biggest keys until it is at most half full.
    fn relieve_pressure(&self) -> Result<()> {
        let limit = self.config.buffer_max_bytes / 2;
        let mut sizes = Vec::new();
        for key in self.buffer.keys()? {
            sizes.push((self.buffer.len(&key)?, key));
        }
        sizes.sort_by_key(|s| std::cmp::Reverse(s.0));
        for (_, key) in sizes {
            if self.buffer.bytes_used() <= limit {
                break;
            }
            self.flush_key(&key, Mode::All)?;
        }
        self.drain_dlq()?;
        Ok(())
    }

    fn tick(&self) -> Result<FlushReport> {
        let mut report = FlushReport::default();
        self.flush_due()?;
        if let Some(interval) = self.config.flush_interval_duration() {
            let now = self.clock.now();
            let interval = chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::MAX);
            let keys = self.buffer.keys()?;
            let mut old = Vec::new();
            {
                let mut first = self.first_seen.lock();
                for key in keys {
                    let seen = *first.entry(key.clone()).or_insert(now);
                    if now - seen >= interval {
                        old.push(key);
                    }
                }
            }
            for key in old {
                report.merge(self.flush_key(&key, Mode::All)?);
            }
            self.drain_dlq()?;
        }
        if self.config.try_auto_recover {
            self.resend_recovery(false)?;
        }
        Ok(report)
    }

    fn flush_all(&self, mode: Mode) -> Result<FlushReport> {
        let mut report = FlushReport::default();
        let mut first_error = None;
        for key in self.buffer.keys()? {
            match self.flush_key(&key, mode) {
                Ok(r) => report.merge(r),
                Err(e) => {
                    log::error!("flush of key `{key}` failed: {e}; its records stay buffered");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    fn flush_key(&self, key: &str, mode: Mode) -> Result<FlushReport> {
        let mut report = FlushReport::default();
        if self.config.redis_skip_flush {
            return Ok(report);
        }
        let _serial = self.flush_lock.lock();
        if !self.buffer.try_lock(key)? {
            self.counters
                .lock_contention
                .fetch_add(1, Ordering::Relaxed);
            log::debug!("flush of `{key}` skipped: another instance holds its lock");
            report.keys_locked_elsewhere.push(key.to_string());
            return Ok(report);
        }
        let result = self.flush_locked(key, mode, &mut report);
        if let Err(e) = self.buffer.unlock(key) {
            log::warn!("releasing the lock of `{key}` failed: {e}; it will expire by itself");
        }
        result.map(|()| report)
    }

    fn flush_locked(&self, key: &str, mode: Mode, report: &mut FlushReport) -> Result<()> {
        let size = self.config.buffer_size;
        loop {
            let records = self.buffer.get(key, size)?;
            let n = records.len();
            if n == 0 || (mode == Mode::FullBatches && n < size) {
                break;
            }
            let started = Instant::now();
            let id = self
                .buffer
                .batch_id(key, &records)
                .unwrap_or_else(|| ulid::Ulid::from_datetime(self.clock.now().into()).to_string());
            self.write_batch(key, &id, records, report)?;
            self.buffer.clear(key, n)?;
            self.counters.flushes.fetch_add(1, Ordering::Relaxed);
            self.counters
                .flush_micros
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            if n < size {
                break;
            }
        }
        let remaining = self.buffer.len(key)?;
        let mut first = self.first_seen.lock();
        if remaining == 0 {
            first.remove(key);
        } else if mode == Mode::All {
            first.insert(key.to_string(), self.clock.now());
        }
        Ok(())
    }

    /// Converts and writes one batch of a key: one file per hour of the records' own time.
    /// A failed write puts the file in the recovery bucket; records that cannot be encoded
    /// go to the DLQ. Returns an error only when the data could be kept nowhere (then the
    /// caller leaves the records in the buffer).
    fn write_batch(
        &self,
        key: &str,
        id: &str,
        records: Vec<Record>,
        report: &mut FlushReport,
    ) -> Result<()> {
        let now = self.clock.now();
        let mut by_hour: BTreeMap<Hour, Vec<Record>> = BTreeMap::new();
        for r in records {
            let hour = Hour::of(r.parsed_time().unwrap_or(now));
            by_hour.entry(hour).or_default().push(r);
        }
        for (hour, group) in by_hour {
            let name = object_name(ObjectKind::Parquet, key, hour, id);
            let (data, good) = match convert::encode(&group, &self.encode) {
                Ok(data) => (data, group.len()),
                Err(e) => {
                    log::warn!(
                        "encoding {} records of `{key}` failed: {e}; isolating the bad ones",
                        group.len()
                    );
                    let (good, bad): (Vec<Record>, Vec<Record>) =
                        group.into_iter().partition(|r| {
                            convert::encode(std::slice::from_ref(r), &self.encode).is_ok()
                        });
                    let entries: Vec<DlqEntry> = bad
                        .iter()
                        .map(|r| DlqEntry {
                            key: key.to_string(),
                            reason: format!("parquet conversion failed: {e}"),
                            raw: serde_json::to_string(&**r).unwrap_or_default(),
                            time: format_time(now),
                        })
                        .collect();
                    self.counters
                        .records_dlq
                        .fetch_add(entries.len() as u64, Ordering::Relaxed);
                    self.buffer.push(PushBatch {
                        groups: Vec::new(),
                        dlq: entries,
                    })?;
                    if good.is_empty() {
                        continue;
                    }
                    (convert::encode(&good, &self.encode)?, good.len())
                }
            };
            self.store(key, &name, data, good as u64, report)?;
        }
        Ok(())
    }

    /// Writes one file, or keeps it in the recovery bucket when the write fails.
    fn store(
        &self,
        key: &str,
        name: &str,
        data: Vec<u8>,
        records: u64,
        report: &mut FlushReport,
    ) -> Result<()> {
        match self.writer.write(name, &data) {
            Ok(()) => {
                self.counters
                    .records_written
                    .fetch_add(records, Ordering::Relaxed);
                self.counters.files_written.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .bytes_written
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                report.records += records;
                report.files += 1;
                report.names.push(name.to_string());
                log::debug!("wrote {name}: {records} records, {} bytes", data.len());
                Ok(())
            }
            Err(e) => {
                self.counters.write_failures.fetch_add(1, Ordering::Relaxed);
                let item = RecoveryItem {
                    id: ulid::Ulid::generate().to_string(),
                    key: key.to_string(),
                    name: name.to_string(),
                    data,
                    attempts: 1,
                    last_error: e.to_string(),
                };
                self.buffer.push_recovery(item)?;
                report.records_to_recovery += records;
                log::warn!(
                    "{e}; {records} records kept in the recovery bucket{}",
                    if self.config.try_auto_recover {
                        ", will re-send"
                    } else {
                        " (TryAutoRecover is off: they are kept until close, then on local disk)"
                    }
                );
                Ok(())
            }
        }
    }

    /// Writes pending dead-letter entries as NDJSON files under `dlq/`.
    fn drain_dlq(&self) -> Result<()> {
        if self.config.redis_skip_flush {
            return Ok(());
        }
        let _serial = self.flush_lock.lock();
        loop {
            let entries = self.buffer.get_dlq(DLQ_BATCH)?;
            if entries.is_empty() {
                return Ok(());
            }
            let n = entries.len();
            let hour = Hour::of(self.clock.now());
            let id = ulid::Ulid::from_datetime(self.clock.now().into()).to_string();
            let mut by_key: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
            for e in &entries {
                let out = by_key.entry(e.key.as_str()).or_default();
                serde_json::to_writer(&mut *out, e)
                    .map_err(|err| Error::Buffer(err.to_string()))?;
                out.push(b'\n');
            }
            for (key, data) in by_key {
                let name = object_name(ObjectKind::Dlq, key, hour, &id);
                let len = data.len();
                let mut report = FlushReport::default();
                self.store(key, &name, data, 0, &mut report)?;
                if report.files == 1 {
                    self.counters
                        .dlq_files_written
                        .fetch_add(1, Ordering::Relaxed);
                    // store() counted it as a Parquet file; DLQ files are counted apart.
                    self.counters.files_written.fetch_sub(1, Ordering::Relaxed);
                    log::info!("wrote dead-letter file {name} ({len} bytes)");
                }
            }
            self.buffer.clear_dlq(n)?;
            if n < DLQ_BATCH {
                return Ok(());
            }
        }
    }

    /// Re-sends recovery items. With `closing`, items that still fail are kept on local
    /// disk when the buffer is not durable. Returns the number written.
    fn resend_recovery(&self, closing: bool) -> Result<usize> {
        let items = self.buffer.get_recovery()?;
        let mut written = 0;
        for mut item in items {
            match self.writer.write(&item.name, &item.data) {
                Ok(()) => {
                    self.buffer.remove_recovery(&item.id)?;
                    self.counters.recovered.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .bytes_written
                        .fetch_add(item.data.len() as u64, Ordering::Relaxed);
                    written += 1;
                    log::info!(
                        "re-sent {} after {} failed attempt(s)",
                        item.name,
                        item.attempts
                    );
                }
                Err(e) => {
                    item.attempts += 1;
                    item.last_error = e.to_string();
                    let exhausted = self.config.recovery_attempts > 0
                        && item.attempts > self.config.recovery_attempts;
                    if exhausted || (closing && !self.buffer.durable()) {
                        self.spill(&item)?;
                        self.buffer.remove_recovery(&item.id)?;
                    } else {
                        self.buffer.remove_recovery(&item.id)?;
                        self.buffer.push_recovery(item)?;
                    }
                }
            }
        }
        Ok(written)
    }

    fn spill(&self, item: &RecoveryItem) -> Result<PathBuf> {
        let root = Path::new(&self.config.recovery_path);
        let path = root.join(&item.name);
        let dir = path.parent().unwrap_or(root);
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io("creating recovery directory", dir, e))?;
        std::fs::write(&path, &item.data)
            .map_err(|e| Error::io("writing recovery file", &path, e))?;
        self.counters
            .recovery_spilled
            .fetch_add(1, Ordering::Relaxed);
        log::error!(
            "could not write {} after {} attempt(s) ({}); kept on local disk at {}",
            item.name,
            item.attempts,
            item.last_error,
            path.display()
        );
        Ok(path)
    }

    /// At close of a non-durable buffer: records still buffered (their flush failed in a
    /// way that kept them) are kept on local disk as NDJSON.
    fn spill_leftovers(&self) -> Result<()> {
        for item in self.buffer.get_recovery()? {
            self.spill(&item)?;
            self.buffer.remove_recovery(&item.id)?;
        }
        for key in self.buffer.keys()? {
            let n = self.buffer.len(&key)?;
            let records = self.buffer.get(&key, n)?;
            let mut data = Vec::new();
            for r in &records {
                serde_json::to_writer(&mut data, &**r).map_err(|e| Error::Buffer(e.to_string()))?;
                data.push(b'\n');
            }
            let item = RecoveryItem {
                id: ulid::Ulid::generate().to_string(),
                key: key.clone(),
                name: format!(
                    "unflushed/{}-{}.ndjson",
                    ulid::Ulid::generate(),
                    crate::naming::escape_segment(&key)
                ),
                data,
                attempts: 0,
                last_error: "not flushed before close".into(),
            };
            self.spill(&item)?;
            self.buffer.clear(&key, n)?;
        }
        Ok(())
    }

    fn stats(&self) -> Stats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (buffered, backlog) = match (self.buffer.keys(), self.buffer.get_recovery()) {
            (Ok(keys), Ok(rec)) => (
                keys.iter()
                    .map(|k| self.buffer.len(k).unwrap_or(0) as u64)
                    .sum(),
                rec.len() as u64,
            ),
            _ => (0, 0),
        };
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

//! The engine every entry point shares: push records per partition key, flush a key when
//! it holds `BufferSize` records or its oldest record is `FlushInterval` seconds old (a
//! background thread), on demand, and on close; convert to Parquet; write; dead-letter what
//! cannot be converted; keep what could not be written in the recovery bucket and re-send it.
//!
//! Records leave the buffer only after their file was written or their data was put in
//! the recovery bucket, so a failure at any step loses nothing.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use parking_lot::{Condvar, Mutex};

use crate::buffer::mem::{counted_bytes, counted_size};
use crate::buffer::{Buffer, DlqEntry, PushBatch, Record, RefGroup};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::convert::{EncodeOptions, LogColumns};
use crate::error::{Error, Result};
use crate::record::{Hour, Log, LogRef, format_time};
use crate::writer::Writer;
use crate::{FastMap, FastSet};

/// How often the background thread looks at keys' ages and the recovery bucket.
const TICK: Duration = Duration::from_millis(250);
/// Dead-letter entries written per DLQ file.
const DLQ_BATCH: usize = 10_000;
/// Partition key of input that could not be decoded at all.
pub const UNDECODABLE_KEY: &str = "unknown:unknown:unknown:unknown";

mod flush;
mod stats;

use stats::Counters;
pub use stats::{FlushReport, Stats};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// The columns of dynamic records; `None` for `RecordType log`.
    dynamic: Option<crate::dynamic::Columns>,
    counters: Counters,
    first_seen: Mutex<FastMap<String, DateTime<Utc>>>,
    /// Keys waiting for a flush worker, with how much to flush.
    due: Mutex<VecDeque<(String, Mode)>>,
    pressure: AtomicBool,
    /// Keys being flushed right now (a key is flushed by one thread at a time).
    in_flight: Mutex<FastSet<String>>,
    in_flight_done: Condvar,
    dlq_lock: Mutex<()>,
    recovery_lock: Mutex<()>,
    signal: Mutex<bool>,
    wake: Condvar,
    flushed: Condvar,
    flushed_lock: Mutex<u64>,
    closed: AtomicBool,
}

/// The engine. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Receiver {
    inner: Arc<Inner>,
    flushers: Mutex<Vec<JoinHandle<()>>>,
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
        let dynamic = crate::dynamic::Columns::from_config(&config)?;
        writer.init()?;
        let inner = Arc::new(Inner {
            encode: EncodeOptions::from_config(&config),
            dynamic,
            config,
            buffer,
            writer,
            clock,
            counters: Counters::default(),
            first_seen: Mutex::new(FastMap::default()),
            due: Mutex::new(VecDeque::new()),
            pressure: AtomicBool::new(false),
            in_flight: Mutex::new(FastSet::default()),
            in_flight_done: Condvar::new(),
            dlq_lock: Mutex::new(()),
            recovery_lock: Mutex::new(()),
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
        let mut flushers = Vec::new();
        if background == Background::Thread {
            for index in 0..inner.config.flush_workers.max(1) {
                let worker = inner.clone();
                let handle = std::thread::Builder::new()
                    .name(format!("d2p-flusher-{index}"))
                    .spawn(move || worker.run_flusher(index))
                    .map_err(|e| Error::io("starting flusher thread", "", e));
                match handle {
                    Ok(h) => flushers.push(h),
                    Err(e) => {
                        inner.stop_workers(flushers);
                        return Err(e);
                    }
                }
            }
        }
        Ok(Receiver {
            inner,
            flushers: Mutex::new(flushers),
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
        let batch = self.prepare(records, dlq)?;
        self.push_prepared_wait(batch, timeout)
    }

    /// Pushes a batch made by [`Receiver::prepare`], waiting as [`Receiver::push_wait`] does.
    pub fn push_prepared_wait(&self, batch: PushBatch, timeout: Duration) -> Result<usize> {
        // Records and their encoding are shared (`Arc`): a copy for a retry is cheap.
        self.retry_until(timeout, || self.push_prepared(batch.clone()))
    }

    /// Repeats `attempt` while it fails with a retryable error, up to `timeout`, making
    /// room meanwhile (the flusher, or a flush here when there is no flusher thread).
    fn retry_until(
        &self,
        timeout: Duration,
        mut attempt: impl FnMut() -> Result<usize>,
    ) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            match attempt() {
                Ok(n) => return Ok(n),
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    if self.flushers.lock().is_empty() {
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

    /// The CPU-heavy half of a push, safe to run on any thread: fills empty `time`s with the
    /// arrival time, groups records by partition key and encodes them for the buffer
    /// ([`crate::buffer::Buffer::encode`]). Push the result with
    /// [`Receiver::push_prepared_wait`]. (Records decoded borrowing their input take
    /// [`Receiver::prepare_borrowed`] instead.)
    pub fn prepare(&self, records: Vec<Log>, dlq: Vec<DlqEntry>) -> Result<PushBatch> {
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
        let mut batch = PushBatch {
            groups: groups.into_iter().collect(),
            dlq,
            encoded: None,
        };
        self.inner.buffer.encode(&mut batch)?;
        Ok(batch)
    }

    /// [`Receiver::prepare`] for records that borrow their text, for a buffer that does not
    /// take them as they are: Redis serialises them straight into its encoding (no owned
    /// record is made); any other buffer gets owned records.
    fn prepare_refs(&self, records: Vec<LogRef<'_>>, dlq: Vec<DlqEntry>) -> Result<PushBatch> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let buffer = &self.inner.buffer;
        let now_text = format_time(self.inner.clock.now());
        let mut records = records;
        let Grouping { keys, members, .. } = self.group_refs(&mut records, &now_text);
        let grouped: Vec<Vec<&LogRef<'_>>> = members
            .iter()
            .map(|rows| rows.iter().map(|&i| &records[i as usize]).collect())
            .collect();
        if let Some(encoded) = buffer.encode_refs(&grouped)? {
            return Ok(PushBatch {
                groups: keys.into_iter().map(|k| (k, Vec::new())).collect(),
                dlq,
                encoded: Some(encoded),
            });
        }
        drop(grouped);
        let groups = members
            .iter()
            .map(|rows| {
                rows.iter()
                    .map(|&i| Arc::new(std::mem::take(&mut records[i as usize]).into_owned()))
                    .collect()
            })
            .collect::<Vec<Vec<Record>>>();
        let mut batch = PushBatch {
            groups: keys.into_iter().zip(groups).collect(),
            dlq,
            encoded: None,
        };
        buffer.encode(&mut batch)?;
        Ok(batch)
    }

    /// Fills empty times with `now_text` and groups records by partition key, keeping each
    /// group's arrival order (records are not moved).
    fn group_refs<'t>(&self, records: &mut [LogRef<'t>], now_text: &str) -> Grouping {
        let default_cap = self.inner.config.default_capability();
        let mut index: FastMap<String, usize> = FastMap::default();
        let mut g = Grouping {
            keys: Vec::new(),
            members: Vec::new(),
            filled: vec![false; records.len()],
        };
        let mut key = String::with_capacity(64);
        for (i, log) in records.iter_mut().enumerate() {
            if log.time.is_empty() {
                log.time = Cow::Owned(now_text.to_string());
                g.filled[i] = true;
            }
            log.write_partition_key(default_cap, &mut key);
            let at = match index.get(key.as_str()) {
                Some(&at) => at,
                None => {
                    index.insert(key.clone(), g.keys.len());
                    g.keys.push(key.clone());
                    g.members.push(Vec::new());
                    g.keys.len() - 1
                }
            };
            g.members[at].push(i as u32);
        }
        g
    }

    /// [`Receiver::push`] for records that borrow their text ([`crate::LogRef`]). With the
    /// memory buffer they are appended to their keys' columns straight from the input (one
    /// copy in all); Redis gets them serialised without an owned record in between.
    pub fn push_refs(&self, records: Vec<LogRef<'_>>, dlq: Vec<DlqEntry>) -> Result<usize> {
        self.push_refs_within(records, dlq, None)
    }

    /// [`Receiver::push_wait`] for records that borrow their text.
    pub fn push_refs_wait(
        &self,
        records: Vec<LogRef<'_>>,
        dlq: Vec<DlqEntry>,
        timeout: Duration,
    ) -> Result<usize> {
        self.push_refs_within(records, dlq, Some(timeout))
    }

    fn push_refs_within(
        &self,
        mut records: Vec<LogRef<'_>>,
        dlq: Vec<DlqEntry>,
        timeout: Option<Duration>,
    ) -> Result<usize> {
        let prepared = self.prepare_borrowed(&mut records, dlq)?;
        self.push_borrowed(&prepared, timeout)
    }

    /// Pushes one unit of input whose records borrow their text (an HTTP batch, a Fluent
    /// Bit chunk) slice by slice, yet admitted or refused as a whole: `estimate` counted
    /// bytes (see [`estimate_counted_bytes`]) are reserved first, or the unit is refused
    /// (retryable) as [`Receiver::push_refs`] would refuse it; then `next` decodes one
    /// slice at a time and each is grouped, sized and appended while its decoded records
    /// (~700 bytes each) are still in the core's cache, and the reservation is settled
    /// to the slices' real sizes at the end. With `timeout`, waits for room as
    /// [`Receiver::push_refs_wait`]. A buffer that cannot take borrowed records (Redis)
    /// gets all slices in one push. Past the reservation only a closing receiver fails a
    /// slice; the slices before it stay buffered and are flushed by the close.
    pub fn push_refs_sliced<'a>(
        &self,
        estimate: usize,
        timeout: Option<Duration>,
        mut next: impl FnMut() -> Option<(Vec<LogRef<'a>>, Vec<DlqEntry>)>,
    ) -> Result<usize> {
        if !self.inner.buffer.takes_refs() {
            let (mut records, mut dlq) = (Vec::new(), Vec::new());
            while let Some((r, d)) = next() {
                records.extend(r);
                dlq.extend(d);
            }
            return self.push_refs_within(records, dlq, timeout);
        }
        let buffer = &self.inner.buffer;
        let reserve =
            || self.push_attempt(&[], 0, 0, || buffer.reserve(estimate).map(|()| Vec::new()));
        match timeout {
            Some(t) => self.retry_until(t, reserve)?,
            None => reserve()?,
        };
        let (mut used, mut pushed) = (0usize, 0usize);
        let outcome = loop {
            let Some((mut records, dlq)) = next() else {
                break Ok(pushed);
            };
            let pushed_slice = match self.prepare_borrowed(&mut records, dlq) {
                Ok(PreparedRefs::Direct {
                    keys,
                    groups,
                    count,
                    dlq,
                }) => {
                    let bytes: usize = groups.iter().map(RefGroup::counted_bytes).sum();
                    self.push_attempt(&keys, count, dlq.len(), || {
                        buffer.push_refs_reserved(&keys, &groups, dlq)
                    })
                    .map(|n| (n, bytes))
                }
                // Not for a buffer that takes borrowed records; pushed as it is if it comes.
                Ok(PreparedRefs::Batch(batch)) => self.push_prepared(batch).map(|n| (n, 0)),
                Err(e) => Err(e),
            };
            match pushed_slice {
                Ok((n, bytes)) => {
                    pushed += n;
                    used += bytes;
                }
                Err(e) => break Err(e),
            }
        };
        buffer.settle(estimate, used);
        outcome
    }

    /// The CPU-heavy half of [`Receiver::push_refs`], safe to run on any thread: fills empty
    /// times, groups `records` by key and works out each one's hour and size (memory
    /// buffer) or encodes them (Redis). Push the result with [`Receiver::push_borrowed`];
    /// json2parquet prepares on its decoding threads, then pushes in input order.
    pub fn prepare_borrowed<'r, 'a>(
        &self,
        records: &'r mut Vec<LogRef<'a>>,
        dlq: Vec<DlqEntry>,
    ) -> Result<PreparedRefs<'r, 'a>> {
        if !self.inner.buffer.takes_refs() {
            let batch = self.prepare_refs(std::mem::take(records), dlq)?;
            return Ok(PreparedRefs::Batch(batch));
        }
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let now = self.inner.clock.now();
        let now_hour = Hour::of(now);
        let grouping = self.group_refs(records, &format_time(now));
        let records: &'r [LogRef<'a>] = records;
        let groups: Vec<RefGroup<'r, 'a>> = grouping
            .members
            .iter()
            .map(|rows| {
                let mut g = RefGroup {
                    records: Vec::with_capacity(rows.len()),
                    hours: Vec::with_capacity(rows.len()),
                    sizes: Vec::with_capacity(rows.len()),
                };
                for &i in rows {
                    let log = &records[i as usize];
                    g.hours.push(if grouping.filled[i as usize] {
                        Some(now_hour)
                    } else {
                        log.hour()
                    });
                    g.sizes.push(counted_bytes(LogColumns::row_bytes(log)));
                    g.records.push(log);
                }
                g
            })
            .collect();
        Ok(PreparedRefs::Direct {
            keys: grouping.keys,
            groups,
            count: records.len(),
            dlq,
        })
    }

    /// Pushes what [`Receiver::prepare_borrowed`] made; with a `timeout`, waits for room
    /// as [`Receiver::push_wait`] does.
    pub fn push_borrowed(
        &self,
        prepared: &PreparedRefs<'_, '_>,
        timeout: Option<Duration>,
    ) -> Result<usize> {
        let attempt = || match prepared {
            PreparedRefs::Batch(batch) => self.push_prepared(batch.clone()),
            PreparedRefs::Direct {
                keys,
                groups,
                count,
                dlq,
            } => self.push_attempt(keys, *count, dlq.len(), || {
                self.inner.buffer.push_refs(keys, groups, dlq.clone())
            }),
        };
        match timeout {
            Some(t) => self.retry_until(t, attempt),
            None => attempt(),
        }
    }

    fn push_prepared(&self, batch: PushBatch) -> Result<usize> {
        let keys: Vec<String> = batch.groups.iter().map(|(k, _)| k.clone()).collect();
        let (count, dlq_count) = (batch.record_count(), batch.dlq.len());
        self.push_attempt(&keys, count, dlq_count, || self.inner.buffer.push(batch))
    }

    /// One push to the buffer (`push`, which returns each of `keys`' length afterwards)
    /// and its bookkeeping: counters, first-seen times, keys due for a flush.
    fn push_attempt(
        &self,
        keys: &[String],
        count: usize,
        dlq_count: usize,
        push: impl FnOnce() -> Result<Vec<usize>>,
    ) -> Result<usize> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let now = inner.clock.now();
        let dlq_count = dlq_count as u64;
        let lens = match push() {
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
        // Past three quarters of the memory bound, start flushing the biggest keys in the
        // background so that reading and writing overlap instead of taking turns at the
        // bound. Not earlier: every key flushed under pressure is a file, and the fuller the
        // buffer when they are picked, the bigger (and fewer) those files are.
        let mut any_due =
            inner.past_pressure_mark() && !inner.pressure.swap(true, Ordering::AcqRel);
        {
            let mut first = inner.first_seen.lock();
            for key in keys {
                if !first.contains_key(key) {
                    first.insert(key.clone(), now);
                }
            }
            let mut due = inner.due.lock();
            for (key, len) in keys.iter().zip(lens) {
                if len >= inner.config.buffer_size
                    && !due.iter().any(|(k, m)| k == key && *m == Mode::FullBatches)
                {
                    due.push_back((key.clone(), Mode::FullBatches));
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

    /// Whether the buffer lives in this process (memory), so a push never waits on I/O.
    pub fn buffer_is_local(&self) -> bool {
        !self.inner.buffer.durable()
    }

    /// Whether the buffer can serve requests now.
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
        let workers = std::mem::take(&mut *self.flushers.lock());
        self.inner.stop_workers(workers);
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
        log::info!("receiver closed: {}", inner.stats());
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

/// Records that borrow their text, made ready for the buffer by
/// [`Receiver::prepare_borrowed`].
#[derive(Debug)]
pub enum PreparedRefs<'r, 'a> {
    /// For the memory buffer: the records grouped by key, appended at the push.
    Direct {
        /// The keys, in order of first appearance.
        keys: Vec<String>,
        /// Each key's records with their hours and sizes.
        groups: Vec<RefGroup<'r, 'a>>,
        /// Number of records.
        count: usize,
        /// Dead-letter entries pushed with them.
        dlq: Vec<DlqEntry>,
    },
    /// For other buffers: a batch as [`Receiver::prepare`] makes.
    Batch(PushBatch),
}

/// What [`Receiver::push_refs_sliced`] reserves for `input_bytes` of JSON or msgpack
/// holding about `records` records: their bytes plus each record's fixed columnar part,
/// counted as the memory buffer counts a record. A record's text is at most its encoded
/// form (quotes, key names and escapes only add), so this is rarely short; when it is, the
/// settlement counts the difference.
pub fn estimate_counted_bytes(input_bytes: usize, records: usize) -> usize {
    counted_size(input_bytes.saturating_add(records.saturating_mul(LogColumns::FIXED_ROW_BYTES)))
}

/// Records grouped by partition key by [`Receiver::group_refs`].
struct Grouping {
    /// The keys, in order of first appearance.
    keys: Vec<String>,
    /// Each key's records (indexes), in arrival order.
    members: Vec<Vec<u32>>,
    /// Which records had no time and got the arrival time.
    filled: Vec<bool>,
}

/// Marks a key as being flushed by this thread; released on drop.
struct KeyClaim<'a> {
    inner: &'a Inner,
    key: String,
}

impl Drop for KeyClaim<'_> {
    fn drop(&mut self) {
        self.inner.in_flight.lock().remove(&self.key);
        self.inner.in_flight_done.notify_all();
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

    fn stop_workers(&self, workers: Vec<JoinHandle<()>>) {
        {
            let mut stop = self.signal.lock();
            *stop = true;
            self.wake.notify_all();
        }
        for handle in workers {
            if handle.join().is_err() {
                log::error!("a flusher thread panicked; close flushes what it left");
            }
        }
    }

    /// A flush worker: takes due keys off the queue; worker 0 also runs the periodic tick
    /// (interval flushes, DLQ, recovery) and reacts to memory pressure.
    fn run_flusher(self: Arc<Self>, index: usize) {
        let mut last_tick = Instant::now();
        loop {
            {
                let mut stop = self.signal.lock();
                if *stop {
                    return;
                }
                let idle = self.due.lock().is_empty()
                    && (index != 0 || !self.pressure.load(Ordering::Acquire));
                if idle {
                    let _ = self.wake.wait_for(&mut stop, TICK);
                }
                if *stop {
                    return;
                }
            }
            if index == 0
                && self.pressure.swap(false, Ordering::AcqRel)
                && let Err(e) = self.queue_pressure_flushes()
            {
                log::warn!("flush under memory pressure failed: {e}; will retry");
            }
            if let Err(e) = self.flush_due() {
                log::warn!(
                    "background flush failed: {e}; the records stay buffered and will be retried"
                );
            }
            if index == 0 && last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                if let Err(e) = self.tick() {
                    log::warn!("background tick failed: {e}; will retry");
                }
            }
            self.announce_flushed();
        }
    }

    /// Flushes queued keys until the queue is empty. Several workers share the queue:
    /// each takes its share of the keys queued with the same mode and flushes them
    /// together (their files written at once, see [`Inner::flush_keys`]).
    fn flush_due(&self) -> Result<()> {
        let mut first_error = None;
        loop {
            let (keys, mode) = {
                let mut due = self.due.lock();
                let Some(&(_, mode)) = due.front() else {
                    break;
                };
                let share = due
                    .len()
                    .div_ceil(self.config.flush_workers.max(1))
                    .min(flush::KEYS_PER_ROUND);
                let mut keys = Vec::with_capacity(share);
                while keys.len() < share
                    && let Some((key, _)) = due.pop_front_if(|(_, m)| *m == mode)
                {
                    keys.push(key);
                }
                (keys, mode)
            };
            let mut report = FlushReport::default();
            self.flush_keys_logged(&keys, mode, &mut report, &mut first_error);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Queues the biggest keys for a full flush until what stays is about half the memory
    /// bound, and wakes every worker. Keys already on their way out (queued for a full
    /// flush, or being flushed by a worker) count as gone and are not queued again: pressure
    /// can come back while they are written (their bytes are released only once the write
    /// succeeds), and queueing them again made a second, small file of whatever reached
    /// them meanwhile, while counting them as staying picked more keys than the bound
    /// needed.
    fn queue_pressure_flushes(&self) -> Result<()> {
        let used = self.buffer.bytes_used();
        let target = self.config.buffer_max_bytes / 2;
        if used <= target {
            return Ok(());
        }
        let mut leaving: FastSet<String> = self.in_flight.lock().iter().cloned().collect();
        leaving.extend(
            self.due
                .lock()
                .iter()
                .filter(|(_, mode)| *mode == Mode::All)
                .map(|(key, _)| key.clone()),
        );
        let mut sizes = Vec::new();
        let mut total = 0usize;
        let mut leaving_len = 0usize;
        for key in self.buffer.keys()? {
            let len = self.buffer.len(&key)?;
            total += len;
            if leaving.contains(&key) {
                leaving_len += len;
            } else {
                sizes.push((len, key));
            }
        }
        if total == 0 {
            return Ok(());
        }
        sizes.sort_by_key(|s| std::cmp::Reverse(s.0));
        let per_record = used / total;
        let mut projected = used.saturating_sub(leaving_len * per_record);
        {
            let mut due = self.due.lock();
            for (len, key) in sizes {
                if projected <= target {
                    break;
                }
                projected = projected.saturating_sub(len * per_record);
                due.push_back((key, Mode::All));
            }
        }
        self.notify();
        Ok(())
    }

    /// Without background threads: make room in the caller's thread.
    fn relieve_pressure(&self) -> Result<()> {
        self.queue_pressure_flushes()?;
        self.flush_due()?;
        self.drain_dlq()
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
            let mut first_error = None;
            for share in old.chunks(flush::KEYS_PER_ROUND) {
                self.flush_keys_logged(share, Mode::All, &mut report, &mut first_error);
            }
            if let Some(e) = first_error {
                return Err(e);
            }
            self.drain_dlq()?;
        }
        if self.config.try_auto_recover || self.recovery_holds_input_back() {
            self.resend_recovery(false)?;
        }
        Ok(report)
    }

    /// The memory buffer is three quarters full and part of it is files whose write
    /// failed: flushing records cannot make room for them, and without a re-send the
    /// buffer could refuse every push until close (Fluent Bit would retry, then drop its
    /// chunks), so they are re-sent even when `TryAutoRecover` is off.
    fn recovery_holds_input_back(&self) -> bool {
        self.buffer.recovery_bytes() > 0 && self.past_pressure_mark()
    }

    /// The buffer holds more than three quarters of `BufferMaxBytes`: where flushing under
    /// pressure starts.
    fn past_pressure_mark(&self) -> bool {
        self.buffer.bytes_used() > self.config.buffer_max_bytes / 4 * 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::mem::MemBuffer;
    use crate::writer::file::FileWriter;

    const LIMIT: usize = 1 << 20;

    /// A receiver without background threads, bound to 1 MiB, whose keys hold 24%, 22%,
    /// 18% and 16% of the bound (80% in all).
    fn receiver_at_80_percent(dir: &std::path::Path) -> Receiver {
        let mut c = Config::default();
        c.writer_file_path = dir.join("out").display().to_string();
        c.recovery_path = dir.join("recovery").display().to_string();
        c.buffer_size = 1_000_000;
        c.buffer_max_bytes = LIMIT;
        c.flush_interval = 0;
        let buffer = Arc::new(MemBuffer::new(LIMIT));
        let writer = Arc::new(FileWriter::new(&c.writer_file_path));
        let r = Receiver::new(c, buffer, writer, Arc::new(SystemClock), Background::Manual)
            .expect("engine");
        let mut fill = 0.0;
        for (key, share) in [("k1", 0.24), ("k2", 0.22), ("k3", 0.18), ("k4", 0.16)] {
            fill += share;
            while (r.stats().buffer_bytes as f64) < LIMIT as f64 * fill {
                let log = Log {
                    time: "2024-05-01T10:00:00Z".into(),
                    level: "info".into(),
                    message: "x".repeat(2000),
                    business_capability: key.into(),
                    ..Log::default()
                };
                r.push(vec![log], Vec::new()).expect("below the bound");
            }
        }
        r
    }

    fn due_keys(r: &Receiver) -> Vec<String> {
        r.inner
            .due
            .lock()
            .iter()
            .map(|(k, _)| k.split(':').next().unwrap_or_default().to_string())
            .collect()
    }

    fn key_of(r: &Receiver, name: &str) -> String {
        r.inner
            .buffer
            .keys()
            .expect("keys")
            .into_iter()
            .find(|k| k.starts_with(&format!("{name}:")))
            .expect("key")
    }

    /// The keys queued under pressure (first parts only, in queue order) once `before` has
    /// set the scene on a buffer at 80%. Keys `before` marks as in flight are released
    /// afterwards: closing the receiver flushes them and would wait for their claims.
    fn queued_after(before: impl FnOnce(&Receiver)) -> Vec<String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = receiver_at_80_percent(dir.path());
        before(&r);
        r.inner.queue_pressure_flushes().expect("queue");
        r.inner.in_flight.lock().clear();
        due_keys(&r)
    }

    #[test]
    fn pressure_queues_the_biggest_keys_down_to_half() {
        assert_eq!(
            queued_after(|_| {}),
            ["k1", "k2"],
            "80% - 24% - 22% is under half the bound"
        );
    }

    #[test]
    fn pressure_does_not_queue_again_a_key_being_flushed() {
        let queued = queued_after(|r| {
            r.inner.in_flight.lock().insert(key_of(r, "k1"));
        });
        assert_eq!(
            queued,
            ["k2"],
            "k1 is being written: not queued again, and counted as gone"
        );
    }

    #[test]
    fn pressure_counts_keys_already_queued_as_gone() {
        // k3 is already queued for a full flush: 80% - 18% leaves 62%, so k1 goes too, and
        // not k2 as well (as when k3 counted as staying).
        let queued = queued_after(|r| {
            r.inner.due.lock().push_back((key_of(r, "k3"), Mode::All));
        });
        assert_eq!(queued, ["k3", "k1"]);
    }
}

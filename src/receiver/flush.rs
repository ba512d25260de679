//! The flush machinery: convert a key's oldest records, write them (one file per hour),
//! keep failed writes in the recovery bucket, write the DLQ, re-send and spill recovery data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use arrow::array::BooleanArray;
use arrow::compute::filter_record_batch;
use arrow::record_batch::RecordBatch;

use super::{DLQ_BATCH, FlushReport, Inner, KeyClaim, Mode};
use crate::buffer::{Columnar, DLQ_LOCK, DlqEntry, PushBatch, Record, RecoveryItem};
use crate::convert;
use crate::error::{Error, Result};
use crate::naming::{ObjectKind, object_name};
use crate::record::{Hour, Log, format_time};

/// One flush's worth of a key's records, as the buffer keeps them.
enum Batch {
    Rows(Vec<Record>),
    Columns(Vec<Columnar>),
}

impl Batch {
    fn len(&self) -> usize {
        match self {
            Batch::Rows(records) => records.len(),
            Batch::Columns(parts) => parts.iter().map(|p| p.batch.num_rows()).sum(),
        }
    }
}

/// The maximal runs of equal hours in `hours`: (hour, first row, rows).
fn runs_of(hours: &[Hour]) -> Vec<(Hour, usize, usize)> {
    let mut runs: Vec<(Hour, usize, usize)> = Vec::new();
    for (i, h) in hours.iter().enumerate() {
        match runs.last_mut() {
            Some((hour, _, len)) if hour == h => *len += 1,
            _ => runs.push((*h, i, 1)),
        }
    }
    runs
}

/// The most files a flush round converts before handing them to the writer at once.
const ROUND_FILES: usize = 64;
/// The most keys one flush worker takes at once.
pub(super) const KEYS_PER_ROUND: usize = 64;

/// A file converted and waiting to be written with the rest of its round.
pub(super) struct Staged {
    /// Which of the round's keys it belongs to (where its outcome is reported).
    slot: usize,
    key: String,
    name: String,
    data: Vec<u8>,
    records: u64,
    /// A dead-letter file (counted apart from the Parquet files).
    dead_letters: bool,
}

/// The files one batch of a key converts into.
pub(super) struct Files {
    slot: usize,
    items: Vec<Staged>,
}

impl Files {
    fn new(slot: usize) -> Self {
        Files {
            slot,
            items: Vec::new(),
        }
    }

    fn add(&mut self, key: &str, name: &str, data: Vec<u8>, records: u64, dead_letters: bool) {
        self.items.push(Staged {
            slot: self.slot,
            key: key.to_string(),
            name: name.to_string(),
            data,
            records,
            dead_letters,
        });
    }
}

/// One key of a flush: how it went, and what this thread holds of it until it is done
/// (dropping them lets other threads and instances at the key, also on a panic).
#[derive(Default)]
struct Outcome<'a> {
    report: FlushReport,
    error: Option<Error>,
    claim: Option<KeyClaim<'a>>,
    lock: Option<BufferLock<'a>>,
}

/// A key's buffer lock ([`crate::buffer::Buffer::try_lock`]), released when dropped.
struct BufferLock<'a> {
    inner: &'a Inner,
    key: String,
}

impl Drop for BufferLock<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.inner.buffer.unlock(&self.key) {
            log::warn!(
                "releasing the lock of `{}` failed: {e}; it will expire by itself",
                self.key
            );
        }
    }
}

/// The batches of a flush round: their files, written together, and the records to clear
/// once they are.
#[derive(Default)]
struct Round {
    files: Vec<Staged>,
    bytes: usize,
    /// (key slot, records of the batch, when its conversion started)
    batches: Vec<(usize, usize, Instant)>,
}

impl Inner {
    /// Flushes every key, `FlushWorkers` threads at a time (each short-lived, so a close
    /// or `/flush/` with many keys uses every core); each thread takes a share of the keys
    /// and writes their files in rounds (see [`Inner::flush_keys`]).
    pub(super) fn flush_all(&self, mode: Mode) -> Result<FlushReport> {
        let keys = self.buffer.keys()?;
        let workers = self.config.flush_workers.max(1).min(keys.len());
        // Two shares per worker keep both busy to the end; one worker takes them whole.
        let share = match workers {
            0 | 1 => keys.len(),
            n => keys.len().div_ceil(n * 2),
        }
        .clamp(1, KEYS_PER_ROUND);
        let shares: Vec<&[String]> = keys.chunks(share).collect();
        let results: Vec<Result<FlushReport>> = if workers <= 1 {
            shares
                .iter()
                .flat_map(|share| self.flush_keys(share, mode))
                .collect()
        } else {
            let next = AtomicUsize::new(0);
            let slots: Vec<parking_lot::Mutex<Option<Vec<Result<FlushReport>>>>> = shares
                .iter()
                .map(|_| parking_lot::Mutex::new(None))
                .collect();
            std::thread::scope(|scope| {
                for _ in 0..workers {
                    scope.spawn(|| {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(share) = shares.get(i) else { break };
                            *slots[i].lock() = Some(self.flush_keys(share, mode));
                        }
                    });
                }
            });
            slots
                .into_iter()
                .zip(&shares)
                .flat_map(|(slot, share)| {
                    slot.into_inner().unwrap_or_else(|| {
                        share
                            .iter()
                            .map(|_| Err(Error::Buffer("a flush thread stopped early".into())))
                            .collect()
                    })
                })
                .collect()
        };
        let mut report = FlushReport::default();
        let mut first_error = None;
        for (key, result) in keys.iter().zip(results) {
            match result {
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

    /// Flushes one key, after any other thread of this process flushing it.
    pub(super) fn flush_key(&self, key: &str, mode: Mode) -> Result<FlushReport> {
        if self.config.redis_skip_flush {
            return Ok(FlushReport::default());
        }
        let claim = self.claim(key);
        self.flush_claimed(&[key], vec![claim], mode)
            .pop()
            .unwrap_or_else(|| Ok(FlushReport::default()))
    }

    /// Flushes `keys` together: their files are written in rounds, each handed to the
    /// writer at once when it gains from it (the file writer then shares its syncs among
    /// them). Keys that another thread of this process is flushing are done after, one by
    /// one, so a round never waits for a key while holding others. One result per key,
    /// in order.
    pub(super) fn flush_keys(&self, keys: &[String], mode: Mode) -> Vec<Result<FlushReport>> {
        if self.config.redis_skip_flush {
            return keys.iter().map(|_| Ok(FlushReport::default())).collect();
        }
        let mut claims = Vec::new();
        let mut mine = Vec::new();
        let mut busy = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match self.try_claim(key) {
                Some(claim) => {
                    claims.push(claim);
                    mine.push(i);
                }
                None => busy.push(i),
            }
        }
        let names: Vec<&str> = mine.iter().map(|&i| keys[i].as_str()).collect();
        let mut results: Vec<Option<Result<FlushReport>>> = keys.iter().map(|_| None).collect();
        for (&i, result) in mine.iter().zip(self.flush_claimed(&names, claims, mode)) {
            results[i] = Some(result);
        }
        for i in busy {
            results[i] = Some(self.flush_key(&keys[i], mode));
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Buffer("a key was not flushed".into()))))
            .collect()
    }

    /// [`Inner::flush_keys`] for the background work (the due queue, the interval): each
    /// key's report goes into `report`, each failure is logged with its key, and the first
    /// is kept in `first_error` (its records stay buffered, for a later try).
    pub(super) fn flush_keys_logged(
        &self,
        keys: &[String],
        mode: Mode,
        report: &mut FlushReport,
        first_error: &mut Option<Error>,
    ) {
        for (key, result) in keys.iter().zip(self.flush_keys(keys, mode)) {
            match result {
                Ok(r) => report.merge(r),
                Err(e) => {
                    log::warn!("flush of `{key}` failed: {e}; its records stay buffered");
                    first_error.get_or_insert(e);
                }
            }
        }
    }

    /// [`Inner::flush_keys`] for keys this thread has claimed (`claims`, one per key), in
    /// rounds: each round takes one batch of every key that has one, converts it, and
    /// writes the files; a key whose batch was full goes on to the next round. A key's
    /// buffer lock is taken at its first batch (a key locked by another instance is
    /// skipped and reported); its lock and claim are let go as soon as it is done.
    /// When the writer gains from batches ([`crate::writer::Writer::prefers_batches`]), a
    /// round's files are handed over together, at [`ROUND_FILES`] files or a 64th of
    /// `BufferMaxBytes` (at least 256 KiB) of them, since their records stay buffered
    /// until then; otherwise each key's files are handed over as soon as they are made.
    fn flush_claimed<'a>(
        &'a self,
        keys: &[&str],
        claims: Vec<KeyClaim<'a>>,
        mode: Mode,
    ) -> Vec<Result<FlushReport>> {
        let max_bytes = (self.config.buffer_max_bytes / 64).max(256 << 10);
        let batching = self.writer.prefers_batches();
        let mut outcomes: Vec<Outcome<'a>> = claims
            .into_iter()
            .map(|claim| Outcome {
                claim: Some(claim),
                ..Outcome::default()
            })
            .collect();
        let mut pending: Vec<usize> = (0..keys.len()).collect();
        while !pending.is_empty() {
            let mut round = Round::default();
            for &slot in &pending {
                let key = keys[slot];
                if outcomes[slot].lock.is_none() {
                    match self.buffer.try_lock(key) {
                        Ok(true) => {
                            outcomes[slot].lock = Some(BufferLock {
                                inner: self,
                                key: key.to_string(),
                            });
                        }
                        Ok(false) => {
                            self.counters
                                .lock_contention
                                .fetch_add(1, Ordering::Relaxed);
                            log::debug!(
                                "flush of `{key}` skipped: another instance holds its lock"
                            );
                            let outcome = &mut outcomes[slot];
                            outcome.report.keys_locked_elsewhere.push(key.to_string());
                            outcome.claim = None;
                            continue;
                        }
                        Err(e) => {
                            outcomes[slot].error = Some(e);
                            outcomes[slot].claim = None;
                            continue;
                        }
                    }
                }
                let started = Instant::now();
                match self.stage_batch(key, slot, mode) {
                    Ok(None) => self.release(key, mode, &mut outcomes[slot]),
                    Ok(Some((n, files))) => {
                        round.bytes += files.iter().map(|f| f.data.len()).sum::<usize>();
                        round.files.extend(files);
                        round.batches.push((slot, n, started));
                    }
                    Err(e) => {
                        outcomes[slot].error = Some(e);
                        self.release(key, mode, &mut outcomes[slot]);
                    }
                }
                if !batching || round.files.len() >= ROUND_FILES || round.bytes >= max_bytes {
                    self.finish_round(keys, std::mem::take(&mut round), mode, &mut outcomes);
                }
            }
            self.finish_round(keys, round, mode, &mut outcomes);
            // Keys whose batch was full and went well still hold their lock: the next round.
            pending.retain(|&slot| outcomes[slot].lock.is_some());
        }
        outcomes
            .into_iter()
            .map(|o| match o.error {
                Some(e) => Err(e),
                None => Ok(o.report),
            })
            .collect()
    }

    /// After a key's last batch: forget when it started filling if it is empty, or start
    /// its interval again if records stay; then let go of its lock and claim.
    fn release(&self, key: &str, mode: Mode, outcome: &mut Outcome<'_>) {
        if outcome.error.is_none() {
            let remaining = self.buffer.len(key);
            let mut first = self.first_seen.lock();
            match remaining {
                Ok(0) => {
                    first.remove(key);
                }
                Ok(_) => {
                    if mode == Mode::All {
                        first.insert(key.to_string(), self.clock.now());
                    }
                }
                Err(e) => outcome.error = Some(e),
            }
        }
        outcome.lock = None;
        outcome.claim = None;
    }

    /// Reads the next batch of `key` and converts it into files (records that cannot be
    /// converted go to the DLQ now). `None` when there is nothing (more) to flush.
    fn stage_batch(
        &self,
        key: &str,
        slot: usize,
        mode: Mode,
    ) -> Result<Option<(usize, Vec<Staged>)>> {
        let size = self.config.buffer_size;
        let batch = match self.buffer.get_columnar(key, size)? {
            Some(parts) => Batch::Columns(parts),
            None => Batch::Rows(self.buffer.get(key, size)?),
        };
        let n = batch.len();
        if n == 0 || (mode == Mode::FullBatches && n < size) {
            return Ok(None);
        }
        let id = self
            .buffer
            .batch_id(key)
            .unwrap_or_else(|| ulid::Ulid::from_datetime(self.clock.now().into()).to_string());
        let mut files = Files::new(slot);
        match batch {
            Batch::Rows(records) => self.write_batch(key, &id, records, &mut files)?,
            Batch::Columns(parts) => self.write_columnar(key, &id, parts, &mut files)?,
        }
        Ok(Some((n, files.items)))
    }

    /// Writes a round's files at once, then clears the flushed records of every key whose
    /// files are all written or kept in the recovery bucket, and lets the key go unless
    /// its batch was full (more may wait: the next round).
    fn finish_round(&self, keys: &[&str], round: Round, mode: Mode, outcomes: &mut [Outcome<'_>]) {
        self.publish(round.files, outcomes);
        let size = self.config.buffer_size;
        for (slot, n, started) in round.batches {
            let outcome = &mut outcomes[slot];
            if outcome.error.is_none() {
                match self.buffer.clear(keys[slot], n) {
                    Ok(()) => {
                        self.counters.flushes.fetch_add(1, Ordering::Relaxed);
                        self.counters
                            .flush_micros
                            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                    }
                    Err(e) => outcome.error = Some(e),
                }
            }
            if outcome.error.is_some() || n < size {
                self.release(keys[slot], mode, outcome);
            }
        }
    }

    /// Converts and writes one batch of a key: one file per hour of the records' own time.
    /// A failed write puts the file in the recovery bucket; records that cannot be encoded
    /// go to the DLQ. Returns an error only when the data could be kept nowhere (then the
    /// caller leaves the records in the buffer).
    pub(super) fn write_batch(
        &self,
        key: &str,
        id: &str,
        records: Vec<Record>,
        files: &mut Files,
    ) -> Result<()> {
        let now = self.clock.now();
        let mut by_hour: BTreeMap<Hour, Vec<Record>> = BTreeMap::new();
        for r in records {
            let hour = r.hour().unwrap_or_else(|| Hour::of(now));
            by_hour.entry(hour).or_default().push(r);
        }
        for (hour, group) in by_hour {
            self.write_hour(
                key,
                &object_name(ObjectKind::Parquet, key, hour, id),
                group,
                files,
            )?;
        }
        Ok(())
    }

    /// Like [`Inner::write_batch`] for rows read columnar (both buffers): each hour's
    /// rows are encoded as they are; only if that fails are they read back as records to
    /// isolate the bad ones.
    pub(super) fn write_columnar(
        &self,
        key: &str,
        id: &str,
        parts: Vec<Columnar>,
        files: &mut Files,
    ) -> Result<()> {
        let fallback = Hour::of(self.clock.now());
        let mut by_hour: BTreeMap<Hour, Vec<RecordBatch>> = BTreeMap::new();
        for part in parts {
            let hours: Vec<Hour> = part.hours.iter().map(|h| h.unwrap_or(fallback)).collect();
            let Some(first) = hours.first().copied() else {
                continue;
            };
            if hours.iter().all(|h| *h == first) {
                by_hour.entry(first).or_default().push(part.batch);
                continue;
            }
            // Records mostly arrive in time order, so each hour is usually one run of
            // rows: a run is a slice of the batch (no copy). Hours that come back and
            // forth are gathered with a filter instead.
            let runs = runs_of(&hours);
            let distinct: std::collections::BTreeSet<Hour> = hours.iter().copied().collect();
            if runs.len() <= 2 * distinct.len() {
                for (hour, start, len) in runs {
                    by_hour
                        .entry(hour)
                        .or_default()
                        .push(part.batch.slice(start, len));
                }
                continue;
            }
            for hour in distinct {
                let mask: BooleanArray = hours.iter().map(|h| Some(*h == hour)).collect();
                let rows = filter_record_batch(&part.batch, &mask).map_err(|e| Error::Encode {
                    key: key.to_string(),
                    reason: e.to_string(),
                })?;
                by_hour.entry(hour).or_default().push(rows);
            }
        }
        for (hour, batches) in by_hour {
            let name = object_name(ObjectKind::Parquet, key, hour, id);
            if let Some(columns) = &self.dynamic {
                let mut rows: Vec<Vec<(&str, &str)>> = Vec::new();
                for b in &batches {
                    rows.extend(convert::extra_fields_rows(b)?);
                }
                self.write_dynamic(key, &name, columns, &rows, files)?;
                continue;
            }
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            match convert::encode_batches(&batches, &self.encode) {
                Ok(data) => files.add(key, &name, data, rows as u64, false),
                Err(e) => {
                    log::warn!(
                        "encoding {rows} rows of `{key}` failed: {e}; checking them one by one"
                    );
                    let mut records = Vec::with_capacity(rows);
                    for b in &batches {
                        records.extend(convert::logs_from_batch(b)?.into_iter().map(Arc::new));
                    }
                    self.write_hour(key, &name, records, files)?;
                }
            }
        }
        Ok(())
    }

    /// Converts and writes the records of one hour as the file `name`; records that cannot
    /// be encoded go to the DLQ.
    fn write_hour(
        &self,
        key: &str,
        name: &str,
        group: Vec<Record>,
        files: &mut Files,
    ) -> Result<()> {
        if let Some(columns) = &self.dynamic {
            let rows: Vec<Vec<(&str, &str)>> = group.iter().map(|r| carried_fields(r)).collect();
            return self.write_dynamic(key, name, columns, &rows, files);
        }
        let now = self.clock.now();
        let (data, good) = match convert::encode(&group, &self.encode) {
            Ok(data) => (data, group.len()),
            Err(e) => {
                log::warn!(
                    "encoding {} records of `{key}` failed: {e}; isolating the bad ones",
                    group.len()
                );
                let (good, bad): (Vec<Record>, Vec<Record>) = group
                    .into_iter()
                    .partition(|r| convert::encode(std::slice::from_ref(r), &self.encode).is_ok());
                let entries: Vec<DlqEntry> = bad
                    .iter()
                    .map(|r| DlqEntry {
                        key: key.to_string(),
                        reason: format!("parquet conversion failed: {e}"),
                        raw: serde_json::to_string(&**r).unwrap_or_default(),
                        time: format_time(now),
                    })
                    .collect();
                self.dead_letter(entries)?;
                if good.is_empty() {
                    return Ok(());
                }
                (convert::encode(&good, &self.encode)?, good.len())
            }
        };
        files.add(key, name, data, good as u64, false);
        Ok(())
    }

    /// Converts and writes dynamic records (their fields as `(key, JSON)` entries) as the
    /// file `name`; records that do not fit the schema go to the DLQ with the reason.
    fn write_dynamic(
        &self,
        key: &str,
        name: &str,
        columns: &crate::dynamic::Columns,
        rows: &[Vec<(&str, &str)>],
        files: &mut Files,
    ) -> Result<()> {
        let encoded = crate::dynamic::encode(rows, columns, &self.encode).map_err(|e| match e {
            Error::Encode { reason, .. } => Error::Encode {
                key: key.to_string(),
                reason,
            },
            other => other,
        })?;
        if !encoded.rejected.is_empty() {
            let now = format_time(self.clock.now());
            let entries: Vec<DlqEntry> = encoded
                .rejected
                .iter()
                .map(|(i, reason)| DlqEntry {
                    key: key.to_string(),
                    reason: format!("record {} of a dynamic batch: {reason}", i + 1),
                    raw: crate::dynamic::object_text(&rows[*i]),
                    time: now.clone(),
                })
                .collect();
            log::warn!(
                "{} records of `{key}` do not fit the dynamic schema; they go to the DLQ \
                 (first: {})",
                entries.len(),
                entries[0].reason
            );
            self.dead_letter(entries)?;
        }
        match encoded.data {
            Some(data) => {
                files.add(key, name, data, encoded.rows as u64, false);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Puts records that could not be converted in the DLQ (counted as dead-lettered).
    fn dead_letter(&self, entries: Vec<DlqEntry>) -> Result<()> {
        self.counters
            .records_dlq
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        self.buffer
            .push(PushBatch {
                groups: Vec::new(),
                dlq: entries,
                encoded: None,
            })
            .map(|_| ())
    }

    /// Writes staged files in one [`crate::writer::Writer::write_many`]; a file whose
    /// write fails is kept in the recovery bucket. A file that could be kept nowhere marks
    /// its key as failed (its records stay buffered).
    fn publish(&self, files: Vec<Staged>, outcomes: &mut [Outcome<'_>]) {
        if files.is_empty() {
            return;
        }
        let objects: Vec<(&str, &[u8])> = files
            .iter()
            .map(|f| (f.name.as_str(), f.data.as_slice()))
            .collect();
        let mut results = self.writer.write_many(&objects).into_iter();
        drop(objects);
        for file in files {
            let result = results.next().unwrap_or_else(|| {
                Err(Error::Write {
                    name: file.name.clone(),
                    target: self.writer.target(),
                    reason: "the writer returned no result for it".into(),
                    retryable: true,
                })
            });
            let outcome = &mut outcomes[file.slot];
            let len = file.data.len() as u64;
            match result {
                Ok(()) => {
                    self.counters
                        .bytes_written
                        .fetch_add(len, Ordering::Relaxed);
                    if file.dead_letters {
                        self.counters
                            .dlq_files_written
                            .fetch_add(1, Ordering::Relaxed);
                        log::info!("wrote dead-letter file {} ({len} bytes)", file.name);
                        continue;
                    }
                    self.counters
                        .records_written
                        .fetch_add(file.records, Ordering::Relaxed);
                    self.counters.files_written.fetch_add(1, Ordering::Relaxed);
                    outcome.report.records += file.records;
                    outcome.report.files += 1;
                    log::debug!("wrote {}: {} records, {len} bytes", file.name, file.records);
                    outcome.report.names.push(file.name);
                }
                Err(e) => {
                    self.counters.write_failures.fetch_add(1, Ordering::Relaxed);
                    let records = file.records;
                    let item = RecoveryItem {
                        id: ulid::Ulid::generate().to_string(),
                        key: file.key,
                        name: file.name,
                        data: file.data.into(),
                        records,
                        attempts: 1,
                        last_error: e.to_string(),
                    };
                    if let Err(kept_nowhere) = self.buffer.push_recovery(item) {
                        outcome.error.get_or_insert(kept_nowhere);
                        continue;
                    }
                    outcome.report.records_to_recovery += records;
                    log::warn!(
                        "{e}; {records} records kept in the recovery bucket{}",
                        if self.config.try_auto_recover {
                            ", will re-send"
                        } else if self.buffer.durable() {
                            " (TryAutoRecover is off: re-sent at close, by an instance that has it on, \
                             or by `d2p-admin recovery replay`)"
                        } else {
                            " (TryAutoRecover is off: re-sent at close, or when the buffer is three \
                             quarters full; what still fails at close is kept on local disk)"
                        }
                    );
                }
            }
        }
    }

    /// Waits until no other thread of this process flushes `key`, then marks it as ours
    /// until the returned guard is dropped.
    /// Like [`Inner::claim`] without waiting: `None` when another thread flushes `key`.
    pub(super) fn try_claim<'a>(&'a self, key: &str) -> Option<KeyClaim<'a>> {
        let mut set = self.in_flight.lock();
        if set.contains(key) {
            return None;
        }
        set.insert(key.to_string());
        Some(KeyClaim {
            inner: self,
            key: key.to_string(),
        })
    }

    pub(super) fn claim<'a>(&'a self, key: &str) -> KeyClaim<'a> {
        let mut set = self.in_flight.lock();
        while set.contains(key) {
            self.in_flight_done.wait(&mut set);
        }
        set.insert(key.to_string());
        KeyClaim {
            inner: self,
            key: key.to_string(),
        }
    }

    /// Writes pending dead-letter entries as NDJSON files under `dlq/`.
    pub(super) fn drain_dlq(&self) -> Result<()> {
        if self.config.redis_skip_flush {
            return Ok(());
        }
        let _serial = self.dlq_lock.lock();
        // Instances sharing a Redis buffer take turns: the holder of the DLQ lock drains.
        if !self.buffer.try_lock(DLQ_LOCK)? {
            log::debug!("another instance is writing the DLQ; leaving it to that instance");
            return Ok(());
        }
        let result = self.drain_dlq_locked();
        if let Err(e) = self.buffer.unlock(DLQ_LOCK) {
            log::warn!("releasing the DLQ lock failed: {e}; it will expire by itself");
        }
        result
    }

    fn drain_dlq_locked(&self) -> Result<()> {
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
            let mut files = Files::new(0);
            for (key, data) in by_key {
                files.add(
                    key,
                    &object_name(ObjectKind::Dlq, key, hour, &id),
                    data,
                    0,
                    true,
                );
            }
            let mut outcome = [Outcome::default()];
            self.publish(files.items, &mut outcome);
            if let Some(e) = outcome[0].error.take() {
                return Err(e);
            }
            self.buffer.clear_dlq(n)?;
            if n < DLQ_BATCH {
                return Ok(());
            }
        }
    }

    /// Re-sends recovery items, oldest first. A retryable failure (the target is down)
    /// ends the round: that item goes to the back of the bucket and the others are not
    /// tried until the next round, so a dead target costs one attempt a round, not one per
    /// item (each can take a network timeout). With `closing`, the items that are not
    /// written are kept on local disk when the buffer is not durable. Returns the number
    /// written.
    pub(super) fn resend_recovery(&self, closing: bool) -> Result<usize> {
        let _serial = self.recovery_lock.lock();
        let mut items = self.buffer.get_recovery()?;
        // Fewest attempts first, then oldest (ids are ULIDs): an item that failed waits
        // behind the others, whatever order the store returns them in.
        items.sort_by(|a, b| (a.attempts, &a.id).cmp(&(b.attempts, &b.id)));
        let mut written = 0;
        let mut target_down = false;
        for mut item in items {
            if target_down {
                if !closing {
                    break;
                }
                if !self.buffer.durable() {
                    self.spill(&item)?;
                    self.buffer.remove_recovery(&item.id)?;
                }
                continue;
            }
            match self.writer.write(&item.name, &item.data) {
                Ok(()) => {
                    self.buffer.remove_recovery(&item.id)?;
                    self.counters.recovered.fetch_add(1, Ordering::Relaxed);
                    // Counted like a file written at the first attempt.
                    let files = if item.name.ends_with(".parquet") {
                        &self.counters.files_written
                    } else {
                        &self.counters.dlq_files_written
                    };
                    files.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .records_written
                        .fetch_add(item.records, Ordering::Relaxed);
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
                    target_down = e.is_retryable();
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

    pub(super) fn spill(&self, item: &RecoveryItem) -> Result<PathBuf> {
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
    pub(super) fn spill_leftovers(&self) -> Result<()> {
        for item in self.buffer.get_recovery()? {
            self.spill(&item)?;
            self.buffer.remove_recovery(&item.id)?;
        }
        for key in self.buffer.keys()? {
            let n = self.buffer.len(&key)?;
            let records = self.buffer.get(&key, n)?;
            let data = leftover_lines(&records, self.dynamic.is_some())?;
            let item = RecoveryItem {
                id: ulid::Ulid::generate().to_string(),
                key: key.clone(),
                name: format!(
                    "unflushed/{}-{}.ndjson",
                    ulid::Ulid::generate(),
                    crate::naming::escape_segment(&key)
                ),
                data: data.into(),
                records: records.len() as u64,
                attempts: 0,
                last_error: "not flushed before close".into(),
            };
            self.spill(&item)?;
            self.buffer.clear(&key, n)?;
        }
        Ok(())
    }
}

/// The fields of a dynamic record, as its carrier Log holds them (key, JSON value).
fn carried_fields(r: &Log) -> Vec<(&str, &str)> {
    r.extra_fields
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Records kept on local disk at close, one JSON object a line, as `d2p-admin recovery
/// replay` reads them back with the same `RecordType`: a Log record as its columns, a
/// dynamic record as the object it came as (not the Log that carries it in the buffer).
fn leftover_lines(records: &[Record], dynamic: bool) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    for r in records {
        if dynamic {
            data.extend_from_slice(crate::dynamic::object_text(&carried_fields(r)).as_bytes());
        } else {
            serde_json::to_writer(&mut data, &**r).map_err(|e| Error::Buffer(e.to_string()))?;
        }
        data.push(b'\n');
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_kept_as_records_of_their_type() {
        use crate::config::RecordType;
        use crate::record::decode_json_as;
        let log: Log = decode_json_as(
            br#"{"message":"m","business_capability":"c","user":"u"}"#,
            RecordType::Log,
            String::new,
        )
        .expect("log");
        let text =
            String::from_utf8(leftover_lines(&[Arc::new(log.clone())], false).expect("lines"))
                .expect("utf8");
        let back: Log =
            decode_json_as(text.trim_end().as_bytes(), RecordType::Log, String::new).expect("back");
        assert_eq!(back, log);
        let original = r#"{"order_id":42,"note":"a \"quoted\" word","tags":["x"],"paid":true}"#;
        let carrier: Log =
            decode_json_as(original.as_bytes(), RecordType::Dynamic, String::new).expect("dynamic");
        let text =
            String::from_utf8(leftover_lines(&[Arc::new(carrier.clone())], true).expect("lines"))
                .expect("utf8");
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "{text}"
        );
        let kept: serde_json::Value = serde_json::from_str(text.trim_end()).expect("json");
        let want: serde_json::Value = serde_json::from_str(original).expect("json");
        assert_eq!(kept, want, "the record as it came, not its carrier");
        let again: Log =
            decode_json_as(text.trim_end().as_bytes(), RecordType::Dynamic, String::new)
                .expect("replayed");
        assert_eq!(again.extra_fields, carrier.extra_fields);
    }

    #[test]
    fn runs_are_maximal_and_in_order() {
        let h = |hour| Hour {
            year: 2024,
            month: 5,
            day: 1,
            hour,
        };
        assert!(runs_of(&[]).is_empty());
        let hours = [h(1), h(1), h(2), h(2), h(2), h(1), h(3)];
        assert_eq!(
            runs_of(&hours),
            vec![(h(1), 0, 2), (h(2), 2, 3), (h(1), 5, 1), (h(3), 6, 1)]
        );
        let total: usize = runs_of(&hours).iter().map(|r| r.2).sum();
        assert_eq!(total, hours.len());
    }
}

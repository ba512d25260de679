//! The memory buffer (`BufferType = mem`): per-key records in this process, bounded by
//! `BufferMaxBytes`. Fast; lost if the process dies (use Redis for durability).
//!
//! Records are kept compactly per key: a push appends each record to its key's two row
//! streams (its text, and one length per field; see [`LogRows`]) in one sequential write
//! (owned records are freed on the pushing thread; records that borrow their text, see
//! [`Buffer::push_refs`], are copied from the input straight in). Every 8 MiB, and when
//! the key is flushed, the rows are built into an Arrow batch with every column at its
//! exact size, which a flush encodes as it is. That is about half the memory of keeping
//! the records themselves (no per-string allocations). Writing each record into 30-odd
//! column builders per key instead (each builder's end in another cache line, and every
//! builder regrowing by copying) took 29% of json2parquet's CPU, against 18% for the
//! streams plus 5% for building the batches (perf, 200k generator records), and 11% more
//! CPU in all (medians of 8 alternating runs, 1.49 s vs 1.33 s).

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::record_batch::RecordBatch;
use parking_lot::Mutex;

use super::{Buffer, Columnar, DlqEntry, PushBatch, Record, RecoveryItem, RefGroup};
use crate::FastMap;
use crate::convert::{LogColumns, LogRows, logs_from_batch};
use crate::error::{Error, Result};
use crate::record::{Hour, LogOf, LogRef};

/// What a record counts against the bound: its columnar size, plus half for the row
/// streams' spare capacity (the lengths grow by doubling, so on average about 1.4x what
/// they hold is allocated; the text's last block is partly empty, and blocks double up to
/// 1 MiB): the bound then limits the memory really used, not just the data.
pub(crate) fn counted_bytes(row_bytes: usize) -> u32 {
    counted_size(row_bytes).min(u32::MAX as usize) as u32
}

/// [`counted_bytes`] of any size (a whole input's, for a reservation).
pub(crate) fn counted_size(row_bytes: usize) -> usize {
    row_bytes.saturating_mul(3) / 2
}

/// Bytes (as [`LogColumns::row_bytes`] counts them) after which a key's buffered rows
/// are turned into a sealed Arrow batch. Building the batch copies the rows under the
/// key's shard lock, so this bounds how long a push to that shard can wait (a few
/// milliseconds); it also stays far below the `i32::MAX` bytes where a string column's
/// offsets would overflow.
const SEAL_BYTES: usize = 8 << 20;

/// Sealed rows of a key: a batch, each row's hour and counted size.
struct Sealed {
    batch: RecordBatch,
    hours: Vec<Option<Hour>>,
    sizes: Vec<u32>,
}

/// One key's rows: sealed batches (oldest first), then rows still in the builders.
#[derive(Default)]
struct KeyData {
    sealed: VecDeque<Sealed>,
    active: LogRows,
    active_hours: Vec<Option<Hour>>,
    active_sizes: Vec<u32>,
    rows: usize,
}

impl KeyData {
    /// Moves the rows in the builders into a sealed batch.
    fn seal(&mut self) -> Result<()> {
        if self.active.is_empty() {
            return Ok(());
        }
        let batch = self.active.finish()?;
        self.sealed.push_back(Sealed {
            batch,
            hours: std::mem::take(&mut self.active_hours),
            sizes: std::mem::take(&mut self.active_sizes),
        });
        Ok(())
    }

    /// Appends records of this key with their counted sizes and hours (same lengths);
    /// returns the key's length afterwards.
    fn append<R, S>(
        &mut self,
        records: &[R],
        sizes: &[u32],
        hours: &[Option<Hour>],
    ) -> Result<usize>
    where
        R: std::ops::Deref<Target = LogOf<S>>,
        S: AsRef<str> + Ord,
    {
        self.rows += records.len();
        if self.active.is_empty() {
            // The counted sizes are 1.5x each row's columnar size, which is its text plus
            // a fixed part: the first block then holds this push's text.
            let counted: usize = sizes.iter().map(|s| *s as usize).sum();
            self.active.expect_text(
                (counted * 2 / 3).saturating_sub(records.len() * LogColumns::FIXED_ROW_BYTES),
            );
        }
        self.active.append_rows(records);
        self.active_sizes.extend_from_slice(sizes);
        self.active_hours.extend_from_slice(hours);
        if self.active.text_bytes() >= SEAL_BYTES {
            self.seal()?;
        }
        Ok(self.rows)
    }
}

/// Key shards of a [`MemBuffer`]: a power of two, well above the threads that push at
/// once, so that two pushes (or a push and a flush) rarely wait for each other.
const SHARDS: usize = 32;

/// Dead letters and recovery items (rare; one lock for both).
#[derive(Default)]
struct Side {
    dlq: VecDeque<DlqEntry>,
    recovery: Vec<RecoveryItem>,
}

/// In-process buffer with a total memory bound.
///
/// Keys live in [`SHARDS`] maps, each behind its own lock and chosen by the key's hash: a
/// push copies each key's rows into its builders holding only that key's shard, so
/// decoding threads pushing at once, and flushes sealing or clearing keys, proceed side
/// by side (with one lock, a push's copy serialised them: ~12% of two cores sat idle in
/// the HTTP batch benchmark). The bound is one atomic counter, admitted before any row
/// goes in.
pub struct MemBuffer {
    shards: Box<[Mutex<FastMap<String, KeyData>>]>,
    hasher: foldhash::fast::RandomState,
    side: Mutex<Side>,
    bytes: AtomicUsize,
    max_bytes: usize,
}

impl MemBuffer {
    /// A buffer that refuses pushes beyond `max_bytes` of counted record size.
    pub fn new(max_bytes: usize) -> Self {
        MemBuffer {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(FastMap::default()))
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
            side: Mutex::new(Side::default()),
            bytes: AtomicUsize::new(0),
            max_bytes,
        }
    }

    /// The shard that holds `key`.
    fn shard(&self, key: &str) -> &Mutex<FastMap<String, KeyData>> {
        let h = self.hasher.hash_one(key) as usize;
        &self.shards[h & (SHARDS - 1)]
    }

    /// Counts `added` bytes in, or refuses them (retryable) when the buffer is full.
    fn admit(&self, added: usize) -> Result<()> {
        // A batch larger than half the bound is taken once the buffer is at most half full
        // (where flushing under pressure brings it), and an empty buffer takes any batch:
        // otherwise a large chunk would be refused forever while small keys stay buffered.
        let max = self.max_bytes;
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let fits = used.saturating_add(added) <= max;
                let large_and_room = added > max / 2 && used <= max / 2;
                (used == 0 || fits || large_and_room).then(|| used.saturating_add(added))
            })
            .map(|_| ())
            .map_err(|used| Error::BufferFull {
                used,
                limit: max,
                recovery: Buffer::recovery_bytes(self),
            })
    }

    /// Admits a push's `records_bytes` together with its dead letters, and queues those.
    fn admit_with_dlq(&self, records_bytes: usize, dlq: Vec<DlqEntry>) -> Result<()> {
        self.admit(records_bytes + dlq_bytes(&dlq))?;
        self.queue_dlq(dlq);
        Ok(())
    }

    /// Queues dead letters whose bytes are counted already.
    fn queue_dlq(&self, dlq: Vec<DlqEntry>) {
        if !dlq.is_empty() {
            self.side.lock().dlq.extend(dlq);
        }
    }

    /// Gives back `n` counted bytes.
    fn release(&self, n: usize) {
        // The closure always answers Some: the update cannot fail.
        let _ = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            });
    }

    /// [`MemBuffer::append_groups`] of borrowed records grouped by `keys`.
    fn append_refs(
        &self,
        keys: &[String],
        groups: &[RefGroup<'_, '_>],
        added: usize,
    ) -> Result<Vec<usize>> {
        let parts: Vec<Group<'_, &LogRef<'_>>> = keys
            .iter()
            .zip(groups)
            .map(|(key, g)| Group {
                key,
                records: &g.records,
                sizes: &g.sizes,
                hours: &g.hours,
            })
            .collect();
        self.append_groups(&parts, added)
    }

    /// Appends each key's rows under its shard's lock; returns each key's length
    /// afterwards, in the groups' order. `added` bytes were admitted for them: on an
    /// error, what was not appended is given back.
    ///
    /// Shards are taken with `try_lock` first and a busy one is left for a second pass:
    /// two pushes walking keys in the same order would otherwise wait on each other at
    /// every key. Each group is one key, so deferring a group keeps every key's order.
    fn append_groups<'r, R, S>(&self, groups: &[Group<'r, R>], added: usize) -> Result<Vec<usize>>
    where
        R: std::ops::Deref<Target = LogOf<S>>,
        S: AsRef<str> + Ord,
    {
        let mut lens = vec![0; groups.len()];
        let mut appended = 0usize;
        let mut busy = Vec::new();
        let mut append = |i: usize, shard: &mut FastMap<String, KeyData>| -> Result<()> {
            let g = &groups[i];
            let data = match shard.get_mut(g.key) {
                Some(data) => data,
                None => shard.entry(g.key.to_string()).or_default(),
            };
            lens[i] = data.append(g.records, g.sizes, g.hours)?;
            appended += g.sizes.iter().map(|s| *s as usize).sum::<usize>();
            Ok(())
        };
        let mut result = Ok(());
        for (i, g) in groups.iter().enumerate() {
            match self.shard(g.key).try_lock() {
                Some(mut shard) => result = append(i, &mut shard),
                None => {
                    busy.push(i);
                    continue;
                }
            }
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            for i in busy {
                result = append(i, &mut self.shard(groups[i].key).lock());
                if result.is_err() {
                    break;
                }
            }
        }
        match result {
            Ok(()) => Ok(lens),
            Err(e) => {
                self.release(added.saturating_sub(appended));
                Err(e)
            }
        }
    }
}

/// What dead letters count against the bound.
fn dlq_bytes(dlq: &[DlqEntry]) -> usize {
    dlq.iter().map(DlqEntry::estimated_size).sum()
}

/// One key's rows for [`MemBuffer::append_groups`].
struct Group<'r, R> {
    key: &'r str,
    records: &'r [R],
    sizes: &'r [u32],
    hours: &'r [Option<Hour>],
}

impl Buffer for MemBuffer {
    fn push(&self, batch: PushBatch) -> Result<Vec<usize>> {
        // Sizes and hours are worked out before taking any lock.
        let rows: Vec<(Vec<u32>, Vec<Option<Hour>>)> = batch
            .groups
            .iter()
            .map(|(_, records)| {
                records
                    .iter()
                    .map(|r| {
                        let size = counted_bytes(LogColumns::row_bytes(r.as_ref()));
                        (size, r.hour())
                    })
                    .unzip()
            })
            .collect();
        let records_bytes: usize = rows
            .iter()
            .flat_map(|(sizes, _)| sizes.iter().map(|s| *s as usize))
            .sum();
        let PushBatch { groups, dlq, .. } = batch;
        self.admit_with_dlq(records_bytes, dlq)?;
        let parts: Vec<Group<'_, Record>> = groups
            .iter()
            .zip(&rows)
            .map(|((key, records), (sizes, hours))| Group {
                key,
                records,
                sizes,
                hours,
            })
            .collect();
        let lens = self.append_groups(&parts, records_bytes)?;
        drop(parts);
        // The records themselves are freed here, on the pushing thread, after the locks.
        drop(groups);
        Ok(lens)
    }

    fn get_columnar(&self, key: &str, max: usize) -> Result<Option<Vec<Columnar>>> {
        let mut shard = self.shard(key).lock();
        let Some(data) = shard.get_mut(key) else {
            return Ok(Some(Vec::new()));
        };
        data.seal()?;
        let mut out = Vec::new();
        let mut left = max;
        for s in &data.sealed {
            if left == 0 {
                break;
            }
            let n = s.batch.num_rows().min(left);
            out.push(Columnar {
                batch: s.batch.slice(0, n),
                hours: s.hours[..n].to_vec(),
            });
            left -= n;
        }
        Ok(Some(out))
    }

    fn get(&self, key: &str, max: usize) -> Result<Vec<Record>> {
        let mut records = Vec::new();
        for part in self.get_columnar(key, max)?.unwrap_or_default() {
            records.extend(logs_from_batch(&part.batch)?.into_iter().map(Arc::new));
        }
        Ok(records)
    }

    fn clear(&self, key: &str, count: usize) -> Result<()> {
        // Take the data out under the lock, free it after: freeing must not block pushes.
        let mut freed = Vec::new();
        let mut released = 0usize;
        {
            let mut shard = self.shard(key).lock();
            let mut now_empty = false;
            if let Some(data) = shard.get_mut(key) {
                data.seal()?;
                let mut left = count.min(data.rows);
                data.rows -= left;
                while left > 0 {
                    let Some(front) = data.sealed.front_mut() else {
                        break;
                    };
                    let n = front.batch.num_rows();
                    if n <= left {
                        released += front.sizes.iter().map(|s| *s as usize).sum::<usize>();
                        left -= n;
                        freed.extend(data.sealed.pop_front());
                    } else {
                        released += front.sizes.drain(..left).map(|s| s as usize).sum::<usize>();
                        front.hours.drain(..left);
                        front.batch = front.batch.slice(left, n - left);
                        left = 0;
                    }
                }
                now_empty = data.rows == 0;
            }
            if now_empty {
                shard.remove(key);
            }
        }
        self.release(released);
        drop(freed);
        Ok(())
    }

    fn len(&self, key: &str) -> Result<usize> {
        Ok(self.shard(key).lock().get(key).map_or(0, |d| d.rows))
    }

    fn keys(&self) -> Result<Vec<String>> {
        let mut keys: Vec<String> = Vec::new();
        for shard in self.shards.iter() {
            keys.extend(shard.lock().keys().cloned());
        }
        keys.sort();
        Ok(keys)
    }

    fn get_dlq(&self, max: usize) -> Result<Vec<DlqEntry>> {
        Ok(self.side.lock().dlq.iter().take(max).cloned().collect())
    }

    fn clear_dlq(&self, count: usize) -> Result<()> {
        let freed: usize = {
            let mut side = self.side.lock();
            let n = count.min(side.dlq.len());
            side.dlq.drain(..n).map(|e| e.estimated_size()).sum()
        };
        self.release(freed);
        Ok(())
    }

    fn push_recovery(&self, item: RecoveryItem) -> Result<()> {
        // Recovery data is already held elsewhere until here: it is counted, never refused.
        self.bytes.fetch_add(item.data.len(), Ordering::AcqRel);
        self.side.lock().recovery.push(item);
        Ok(())
    }

    fn get_recovery(&self) -> Result<Vec<RecoveryItem>> {
        Ok(self.side.lock().recovery.clone())
    }

    fn remove_recovery(&self, id: &str) -> Result<()> {
        let removed = {
            let mut side = self.side.lock();
            side.recovery
                .iter()
                .position(|i| i.id == id)
                .map(|pos| side.recovery.remove(pos))
        };
        if let Some(item) = removed {
            self.release(item.data.len());
        }
        Ok(())
    }

    fn recovery_len(&self) -> Result<usize> {
        Ok(self.side.lock().recovery.len())
    }

    fn total_len(&self) -> Result<usize> {
        Ok(self
            .shards
            .iter()
            .map(|shard| shard.lock().values().map(|d| d.rows).sum::<usize>())
            .sum())
    }

    fn try_lock(&self, _key: &str) -> Result<bool> {
        // One process owns a memory buffer; the receiver serialises its own flushes.
        Ok(true)
    }

    fn unlock(&self, _key: &str) -> Result<()> {
        Ok(())
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn bytes_used(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    fn recovery_bytes(&self) -> usize {
        self.side.lock().recovery.iter().map(|i| i.data.len()).sum()
    }

    fn close(&self) -> Result<()> {
        Ok(())
    }

    fn describe(&self) -> String {
        format!("mem (max {} bytes)", self.max_bytes)
    }

    fn takes_refs(&self) -> bool {
        true
    }

    fn push_refs(
        &self,
        keys: &[String],
        groups: &[RefGroup<'_, '_>],
        dlq: Vec<DlqEntry>,
    ) -> Result<Vec<usize>> {
        let records_bytes = groups.iter().map(RefGroup::counted_bytes).sum();
        self.admit_with_dlq(records_bytes, dlq)?;
        self.append_refs(keys, groups, records_bytes)
    }

    fn reserve(&self, bytes: usize) -> Result<()> {
        self.admit(bytes)
    }

    fn push_refs_reserved(
        &self,
        keys: &[String],
        groups: &[RefGroup<'_, '_>],
        dlq: Vec<DlqEntry>,
    ) -> Result<Vec<usize>> {
        self.bytes.fetch_add(dlq_bytes(&dlq), Ordering::AcqRel);
        self.queue_dlq(dlq);
        // The reservation holds these bytes: nothing to give back on an error (the caller
        // settles for the slices that went in).
        self.append_refs(keys, groups, 0)
    }

    fn settle(&self, reserved: usize, used: usize) {
        if used > reserved {
            self.bytes.fetch_add(used - reserved, Ordering::AcqRel);
        } else {
            self.release(reserved - used);
        }
    }

    fn durable(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Log;
    use std::sync::Arc;

    fn one(key: &str, records: Vec<Record>) -> PushBatch {
        PushBatch {
            groups: vec![(key.to_string(), records)],
            dlq: Vec::new(),
            encoded: None,
        }
    }

    fn rec(msg: &str) -> Record {
        Arc::new(Log {
            message: msg.into(),
            ..Log::default()
        })
    }

    #[test]
    fn push_get_clear_keep_order() {
        let b = MemBuffer::new(1 << 30);
        assert_eq!(
            b.push(one("k", vec![rec("a"), rec("b")])).expect("push"),
            vec![2]
        );
        assert_eq!(b.push(one("k", vec![rec("c")])).expect("push"), vec![3]);
        let got = b.get("k", 2).expect("get");
        assert_eq!(
            got.iter().map(|r| r.message.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        b.clear("k", 2).expect("clear");
        assert_eq!(b.len("k").expect("len"), 1);
        assert_eq!(b.get("k", 10).expect("get")[0].message, "c");
        b.clear("k", 1).expect("clear");
        assert!(b.keys().expect("keys").is_empty());
        assert_eq!(b.bytes_used(), 0);
    }

    #[test]
    fn clearing_part_of_a_sealed_batch_keeps_the_rest_in_order() {
        let b = MemBuffer::new(1 << 30);
        let names = |rs: Vec<Record>| rs.iter().map(|r| r.message.clone()).collect::<Vec<_>>();
        b.push(one("k", ["a", "b", "c", "d", "e"].map(rec).to_vec()))
            .expect("push");
        // A flush reads three (sealing the five), more arrive, then it clears its three.
        let parts = b.get_columnar("k", 3).expect("get").expect("columnar");
        assert_eq!(parts.iter().map(|p| p.batch.num_rows()).sum::<usize>(), 3);
        assert_eq!(parts[0].hours.len(), 3);
        b.push(one("k", ["f", "g"].map(rec).to_vec()))
            .expect("push");
        let before = b.bytes_used();
        b.clear("k", 3).expect("clear");
        assert!(b.bytes_used() < before);
        assert_eq!(b.len("k").expect("len"), 4);
        assert_eq!(names(b.get("k", 10).expect("get")), ["d", "e", "f", "g"]);
        b.clear("k", 4).expect("clear");
        assert_eq!(b.bytes_used(), 0);
        assert!(b.keys().expect("keys").is_empty());
        assert!(
            b.get_columnar("gone", 10)
                .expect("get")
                .expect("columnar")
                .is_empty()
        );
    }

    #[test]
    fn a_big_key_is_sealed_as_it_grows_and_reads_back_whole_in_order() {
        let b = MemBuffer::new(1 << 30);
        // 64 KiB messages: about 20 MiB in 320 pushes, so several seals happen on the way.
        let body = "x".repeat(64 << 10);
        let total = 320;
        for i in 0..total {
            b.push(one("k", vec![rec(&format!("{i} {body}"))]))
                .expect("push");
        }
        let shard = b.shard("k").lock();
        let data = shard.get("k").expect("key");
        assert!(data.sealed.len() >= 2, "sealed {} times", data.sealed.len());
        assert!(
            data.sealed
                .iter()
                .all(|s| s.sizes.len() == s.batch.num_rows())
        );
        drop(shard);
        let parts = b
            .get_columnar("k", usize::MAX)
            .expect("get")
            .expect("columnar");
        let mut n = 0;
        for p in &parts {
            for m in logs_from_batch(&p.batch).expect("logs") {
                assert_eq!(m.message, format!("{n} {body}"));
                n += 1;
            }
        }
        assert_eq!(n, total);
        b.clear("k", total).expect("clear");
        assert_eq!(b.bytes_used(), 0);
    }

    #[test]
    fn memory_bound_refuses_with_retryable_error() {
        let size = counted_bytes(LogColumns::row_bytes(rec("x").as_ref())) as usize;
        let b = MemBuffer::new(size * 3);
        b.push(one("k", vec![rec("x"), rec("x")])).expect("fits");
        let err = b
            .push(one("k", vec![rec("x"), rec("x")]))
            .expect_err("over the bound");
        assert!(err.is_retryable());
        assert_eq!(b.len("k").expect("len"), 2, "a refused push adds nothing");
        b.clear("k", 2).expect("clear");
        b.push(one("k", vec![rec("x"), rec("x")]))
            .expect("fits again after a flush");
    }

    #[test]
    fn a_batch_larger_than_the_bound_is_taken_once_half_is_free() {
        let size = counted_bytes(LogColumns::row_bytes(rec("x").as_ref())) as usize;
        let b = MemBuffer::new(size * 4);
        b.push(one("small", vec![rec("x")])).expect("fits");
        // Six records never fit a bound of four; they must not wait for a fully empty
        // buffer (flushing under pressure only brings it down to half).
        b.push(one("big", vec![rec("x"); 6]))
            .expect("taken at most half full");
        let err = b
            .push(one("small", vec![rec("x")]))
            .expect_err("now over the bound");
        assert!(err.is_retryable());
    }

    #[test]
    fn dlq_and_recovery_round_trip() {
        let b = MemBuffer::new(1 << 30);
        let e = DlqEntry {
            key: "k".into(),
            reason: "r".into(),
            raw: "{".into(),
            time: "t".into(),
        };
        b.push(PushBatch {
            groups: Vec::new(),
            dlq: vec![e.clone(), e.clone()],
            encoded: None,
        })
        .expect("dlq");
        assert_eq!(b.get_dlq(10).expect("get").len(), 2);
        b.clear_dlq(1).expect("clear");
        assert_eq!(b.get_dlq(10).expect("get"), vec![e]);
        let item = RecoveryItem {
            id: "1".into(),
            key: "k".into(),
            name: "n".into(),
            data: vec![1, 2, 3].into(),
            records: 3,
            attempts: 1,
            last_error: "e".into(),
        };
        b.push_recovery(item.clone()).expect("push");
        assert_eq!(b.get_recovery().expect("get"), vec![item]);
        b.remove_recovery("1").expect("remove");
        assert!(b.get_recovery().expect("get").is_empty());
    }

    #[test]
    fn concurrent_pushes_and_flushes_lose_and_repeat_nothing() {
        // Four threads push batches over six keys (every key from several threads, so
        // shards are contended) while a flusher reads and clears keys as it goes.
        const THREADS: usize = 4;
        const BATCHES: usize = 150;
        let b = Arc::new(MemBuffer::new(1 << 30));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let drain = |b: &MemBuffer, seen: &mut Vec<String>| {
            for key in b.keys().expect("keys") {
                let got = b.get(&key, 97).expect("get");
                seen.extend(got.iter().map(|r| format!("{key}|{}", r.message)));
                b.clear(&key, got.len()).expect("clear");
            }
        };
        let flusher = {
            let (b, done) = (Arc::clone(&b), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !done.load(Ordering::Acquire) {
                    drain(&b, &mut seen);
                }
                seen
            })
        };
        let pushers: Vec<_> = (0..THREADS)
            .map(|t| {
                let b = Arc::clone(&b);
                std::thread::spawn(move || {
                    for i in 0..BATCHES {
                        let groups = (0..3)
                            .map(|g| {
                                let key = format!("k{}", (t + g + i) % 6);
                                let recs = (0..5).map(|r| rec(&format!("{t}-{i}-{r}"))).collect();
                                (key, recs)
                            })
                            .collect();
                        b.push(PushBatch {
                            groups,
                            dlq: Vec::new(),
                            encoded: None,
                        })
                        .expect("push");
                    }
                })
            })
            .collect();
        for p in pushers {
            p.join().expect("pusher");
        }
        done.store(true, Ordering::Release);
        let mut seen = flusher.join().expect("flusher");
        while b.total_len().expect("len") > 0 {
            drain(&b, &mut seen);
        }
        assert_eq!(b.total_len().expect("len"), 0);
        assert_eq!(b.bytes_used(), 0, "every counted byte given back");
        let mut want: Vec<String> = (0..THREADS)
            .flat_map(|t| {
                (0..BATCHES).flat_map(move |i| {
                    (0..3).flat_map(move |g| {
                        (0..5).map(move |r| format!("k{}|{t}-{i}-{r}", (t + g + i) % 6))
                    })
                })
            })
            .collect();
        // Per key and thread, records come out in the order they were pushed.
        for t in 0..THREADS {
            for k in 0..6 {
                let prefix = format!("k{k}|{t}-");
                let order = |v: &[String]| -> Vec<String> {
                    v.iter()
                        .filter(|s| s.starts_with(&prefix))
                        .cloned()
                        .collect()
                };
                assert_eq!(order(&seen), order(&want), "order of key k{k}, thread {t}");
            }
        }
        seen.sort();
        want.sort();
        assert_eq!(seen.len(), want.len());
        assert_eq!(seen, want, "nothing lost, nothing repeated");
    }

    #[test]
    fn recovery_item_json_round_trip() {
        let item = RecoveryItem {
            id: "1".into(),
            key: "k".into(),
            name: "n".into(),
            data: vec![0, 255, 16].into(),
            records: 1,
            attempts: 2,
            last_error: "e".into(),
        };
        let text = serde_json::to_string(&item).expect("serialise");
        assert!(text.contains("00ff10"));
        let back: RecoveryItem = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, item);
        // Items kept (in Redis) before the record count was stored still load.
        let old = r#"{"id":"2","key":"k","name":"n","data":"0a","attempts":1,"last_error":"e"}"#;
        let back: RecoveryItem = serde_json::from_str(old).expect("parse an older item");
        assert_eq!((back.records, &back.data[..]), (0, &[10u8][..]));
    }
}

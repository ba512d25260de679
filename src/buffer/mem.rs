//! The memory buffer (`BufferType = mem`): per-key records in this process, bounded by
//! `BufferMaxBytes`. Fast; lost if the process dies (use Redis for durability).
//!
//! Records are kept columnar: a push appends each record to its key's Arrow builders (owned
//! records are freed on the pushing thread; records that borrow their text, see
//! [`Buffer::push_refs`], are copied from the input straight in); a flush seals the builders
//! into a batch and encodes it as it is. That is about half the memory of keeping the
//! records themselves (no per-string allocations) and saves the flush a copy.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use parking_lot::Mutex;

use super::{Buffer, Columnar, DlqEntry, PushBatch, Record, RecoveryItem, RefGroup};
use crate::convert::{LogColumns, logs_from_batch};
use crate::error::{Error, Result};
use crate::record::{Hour, LogOf};

/// What a record counts against the bound: its columnar size, plus half for the builders'
/// spare capacity (they grow by doubling, so on average about 1.4x what they hold is
/// allocated): the bound then limits the memory really used, not just the data.
pub(crate) fn counted_bytes(row_bytes: usize) -> u32 {
    let bytes = row_bytes.saturating_mul(3) / 2;
    bytes.min(u32::MAX as usize) as u32
}

/// Text bytes after which a key's builders are sealed before more rows go in: far below
/// the `i32::MAX` bytes where a string column's offsets would overflow.
const SEAL_BYTES: usize = 1 << 30;

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
    active: LogColumns,
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
        let incoming: usize = sizes.iter().map(|s| *s as usize).sum();
        if self.active.text_bytes() + incoming > SEAL_BYTES {
            self.seal()?;
        }
        self.rows += records.len();
        self.active.append_rows(records);
        self.active_sizes.extend_from_slice(sizes);
        self.active_hours.extend_from_slice(hours);
        Ok(self.rows)
    }
}

#[derive(Default)]
struct State {
    keys: HashMap<String, KeyData>,
    dlq: VecDeque<DlqEntry>,
    recovery: Vec<RecoveryItem>,
    bytes: usize,
}

/// In-process buffer with a total memory bound.
pub struct MemBuffer {
    state: Mutex<State>,
    max_bytes: usize,
}

impl MemBuffer {
    /// A buffer that refuses pushes beyond `max_bytes` of counted record size.
    pub fn new(max_bytes: usize) -> Self {
        MemBuffer {
            state: Mutex::new(State::default()),
            max_bytes,
        }
    }

    /// Counts `added` bytes in, or refuses them (retryable) when the buffer is full.
    fn admit(&self, st: &mut State, added: usize) -> Result<()> {
        // A batch larger than half the bound is taken once the buffer is at most half full
        // (where flushing under pressure brings it), and an empty buffer takes any batch:
        // otherwise a large chunk would be refused forever while small keys stay buffered.
        let fits = st.bytes + added <= self.max_bytes;
        let large_and_room = added > self.max_bytes / 2 && st.bytes <= self.max_bytes / 2;
        if st.bytes > 0 && !fits && !large_and_room {
            return Err(Error::BufferFull {
                used: st.bytes,
                limit: self.max_bytes,
            });
        }
        st.bytes += added;
        Ok(())
    }
}

impl Buffer for MemBuffer {
    fn push(&self, batch: PushBatch) -> Result<Vec<usize>> {
        // Sizes and hours are worked out before taking the lock.
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
        let added: usize = rows
            .iter()
            .flat_map(|(sizes, _)| sizes.iter().map(|s| *s as usize))
            .sum::<usize>()
            + batch
                .dlq
                .iter()
                .map(DlqEntry::estimated_size)
                .sum::<usize>();
        let PushBatch { groups, dlq, .. } = batch;
        let mut st = self.state.lock();
        self.admit(&mut st, added)?;
        st.dlq.extend(dlq);
        let mut lens = Vec::with_capacity(groups.len());
        for ((key, records), (sizes, hours)) in groups.iter().zip(rows) {
            let data = st.keys.entry(key.clone()).or_default();
            lens.push(data.append(records, &sizes, &hours)?);
        }
        drop(st);
        // The records themselves are freed here, on the pushing thread, after the lock.
        drop(groups);
        Ok(lens)
    }

    fn get_columnar(&self, key: &str, max: usize) -> Result<Option<Vec<Columnar>>> {
        let mut st = self.state.lock();
        let Some(data) = st.keys.get_mut(key) else {
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
        {
            let mut st = self.state.lock();
            let mut released = 0usize;
            let mut now_empty = false;
            if let Some(data) = st.keys.get_mut(key) {
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
                st.keys.remove(key);
            }
            st.bytes -= released.min(st.bytes);
        }
        drop(freed);
        Ok(())
    }

    fn len(&self, key: &str) -> Result<usize> {
        Ok(self.state.lock().keys.get(key).map_or(0, |d| d.rows))
    }

    fn keys(&self) -> Result<Vec<String>> {
        let mut keys: Vec<String> = self.state.lock().keys.keys().cloned().collect();
        keys.sort();
        Ok(keys)
    }

    fn get_dlq(&self, max: usize) -> Result<Vec<DlqEntry>> {
        Ok(self.state.lock().dlq.iter().take(max).cloned().collect())
    }

    fn clear_dlq(&self, count: usize) -> Result<()> {
        let mut st = self.state.lock();
        let n = count.min(st.dlq.len());
        let freed: usize = st.dlq.drain(..n).map(|e| e.estimated_size()).sum();
        st.bytes -= freed;
        Ok(())
    }

    fn push_recovery(&self, item: RecoveryItem) -> Result<()> {
        let mut st = self.state.lock();
        st.bytes += item.data.len();
        st.recovery.push(item);
        Ok(())
    }

    fn get_recovery(&self) -> Result<Vec<RecoveryItem>> {
        Ok(self.state.lock().recovery.clone())
    }

    fn remove_recovery(&self, id: &str) -> Result<()> {
        let mut st = self.state.lock();
        if let Some(pos) = st.recovery.iter().position(|i| i.id == id) {
            let item = st.recovery.remove(pos);
            st.bytes -= item.data.len();
        }
        Ok(())
    }

    fn recovery_len(&self) -> Result<usize> {
        Ok(self.state.lock().recovery.len())
    }

    fn total_len(&self) -> Result<usize> {
        Ok(self.state.lock().keys.values().map(|d| d.rows).sum())
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
        self.state.lock().bytes
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
        let added: usize = groups
            .iter()
            .flat_map(|g| g.sizes.iter().map(|s| *s as usize))
            .sum::<usize>()
            + dlq.iter().map(DlqEntry::estimated_size).sum::<usize>();
        let mut st = self.state.lock();
        self.admit(&mut st, added)?;
        st.dlq.extend(dlq);
        let mut lens = Vec::with_capacity(groups.len());
        for (key, g) in keys.iter().zip(groups) {
            let data = st.keys.entry(key.clone()).or_default();
            lens.push(data.append(&g.records, &g.sizes, &g.hours)?);
        }
        Ok(lens)
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
            data: vec![1, 2, 3],
            attempts: 1,
            last_error: "e".into(),
        };
        b.push_recovery(item.clone()).expect("push");
        assert_eq!(b.get_recovery().expect("get"), vec![item]);
        b.remove_recovery("1").expect("remove");
        assert!(b.get_recovery().expect("get").is_empty());
    }

    #[test]
    fn recovery_item_json_round_trip() {
        let item = RecoveryItem {
            id: "1".into(),
            key: "k".into(),
            name: "n".into(),
            data: vec![0, 255, 16],
            attempts: 2,
            last_error: "e".into(),
        };
        let text = serde_json::to_string(&item).expect("serialise");
        assert!(text.contains("00ff10"));
        let back: RecoveryItem = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, item);
    }
}

//! The memory buffer (`BufferType = mem`): per-key queues in this process, bounded by
//! `BufferMaxBytes`. Fast; lost if the process dies (use Redis for durability).

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;

use super::{Buffer, DlqEntry, PushBatch, Record, RecoveryItem};
use crate::error::{Error, Result};

#[derive(Default)]
struct State {
    keys: HashMap<String, VecDeque<(Record, usize)>>,
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
    /// A buffer that refuses pushes beyond `max_bytes` of estimated record size.
    pub fn new(max_bytes: usize) -> Self {
        MemBuffer {
            state: Mutex::new(State::default()),
            max_bytes,
        }
    }
}

impl Buffer for MemBuffer {
    fn push(&self, batch: PushBatch) -> Result<Vec<usize>> {
        let sized: Vec<(String, Vec<(Record, usize)>)> = batch
            .groups
            .into_iter()
            .map(|(key, records)| {
                let with_sizes = records
                    .into_iter()
                    .map(|r| {
                        let size = r.estimated_size();
                        (r, size)
                    })
                    .collect();
                (key, with_sizes)
            })
            .collect();
        let added: usize = sized
            .iter()
            .flat_map(|(_, rs)| rs.iter().map(|(_, s)| *s))
            .sum::<usize>()
            + batch
                .dlq
                .iter()
                .map(DlqEntry::estimated_size)
                .sum::<usize>();
        let mut st = self.state.lock();
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
        st.dlq.extend(batch.dlq);
        let mut lens = Vec::with_capacity(sized.len());
        for (key, records) in sized {
            let queue = st.keys.entry(key).or_default();
            queue.extend(records);
            lens.push(queue.len());
        }
        Ok(lens)
    }

    fn get(&self, key: &str, max: usize) -> Result<Vec<Record>> {
        let st = self.state.lock();
        Ok(st
            .keys
            .get(key)
            .map(|q| q.iter().take(max).map(|(r, _)| r.clone()).collect())
            .unwrap_or_default())
    }

    fn clear(&self, key: &str, count: usize) -> Result<()> {
        // Take the records out under the lock, free them after it: freeing thousands of
        // records is slow and must not block pushes.
        let drained: Vec<(Record, usize)> = {
            let mut st = self.state.lock();
            let mut drained = Vec::new();
            let mut now_empty = false;
            if let Some(q) = st.keys.get_mut(key) {
                let n = count.min(q.len());
                drained.extend(q.drain(..n));
                now_empty = q.is_empty();
            }
            if now_empty {
                st.keys.remove(key);
            }
            st.bytes -= drained.iter().map(|(_, size)| size).sum::<usize>();
            drained
        };
        drop(drained);
        Ok(())
    }

    fn len(&self, key: &str) -> Result<usize> {
        Ok(self.state.lock().keys.get(key).map_or(0, VecDeque::len))
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
        Ok(self.state.lock().keys.values().map(VecDeque::len).sum())
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
    fn memory_bound_refuses_with_retryable_error() {
        let size = rec("x").estimated_size();
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
        let size = rec("x").estimated_size();
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

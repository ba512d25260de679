//! Buffers: where records wait, per partition key, until a flush converts them. The
//! [`Buffer`] trait is the seed's interface; [`mem::MemBuffer`] and the Redis buffer
//! implement it, and the receiver works with either.

pub mod mem;
pub mod redis;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::record::Log;

/// The lock name ([`Buffer::try_lock`]) that serialises draining the dead-letter queue
/// across instances sharing a buffer: whoever holds it reads, writes and trims the DLQ
/// head, so two drainers never trim each other's entries. Partition keys always contain
/// `:`, so it cannot clash with one.
pub const DLQ_LOCK: &str = "__dlq__";

/// A buffered record. Shared, so a flush can read records without copying them.
pub type Record = Arc<Log>;

/// A record that could not be decoded or converted, kept with the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DlqEntry {
    /// Partition key it belongs to (`unknown:unknown:unknown:unknown` when undecodable).
    pub key: String,
    /// Why it was rejected, naming the input (`line 12 of logs.jsonl: broken JSON ...`).
    pub reason: String,
    /// The original input, as text.
    pub raw: String,
    /// When it was rejected (RFC 3339).
    pub time: String,
}

impl DlqEntry {
    /// Heap bytes held, for the memory bound.
    pub fn estimated_size(&self) -> usize {
        self.key.len() + self.reason.len() + self.raw.len() + self.time.len() + 128
    }
}

/// Converted data whose write failed: kept to be re-sent, never dropped silently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryItem {
    /// Unique id of this item within the buffer.
    pub id: String,
    /// Partition key of the data.
    pub key: String,
    /// Object name (relative path) the data must be written under.
    pub name: String,
    /// The encoded file (Parquet, or NDJSON for DLQ files). Shared, not copied, when the
    /// bucket is read for a re-send.
    #[serde(with = "serde_bytes_hex")]
    pub data: bytes::Bytes,
    /// Records in the file (0 for DLQ files, and for items stored before this was kept).
    #[serde(default)]
    pub records: u64,
    /// Write attempts made so far.
    pub attempts: u32,
    /// The last error.
    pub last_error: String,
}

mod serde_bytes_hex {
    //! Hex encoding of recovery payloads so they stay valid UTF-8 JSON in any store.
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(data.len() * 2);
        for b in data {
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bytes::Bytes, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = text.as_bytes();
        if bytes.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd-length hex payload"));
        }
        let nibble = |c: u8| -> Result<u8, D::Error> {
            match c {
                b'0'..=b'9' => Ok(c - b'0'),
                b'a'..=b'f' => Ok(c - b'a' + 10),
                b'A'..=b'F' => Ok(c - b'A' + 10),
                _ => Err(serde::de::Error::custom("invalid hex digit in payload")),
            }
        };
        bytes
            .chunks(2)
            .map(|p| Ok((nibble(p[0])? << 4) | nibble(p[1])?))
            .collect::<Result<Vec<u8>, D::Error>>()
            .map(bytes::Bytes::from)
    }
}

/// What a buffer must do. All methods are synchronous and safe to call from many threads.
///
/// Records of a key are kept in arrival order; a flush reads the oldest `n` with
/// [`Buffer::get`], writes them, and only then removes exactly those with [`Buffer::clear`],
/// so a failure at any point loses nothing.
pub trait Buffer: Send + Sync {
    /// Appends every group of `batch` to its key and its dead-letter entries to the DLQ,
    /// all or nothing (one round trip for a remote store). Returns each group's key length
    /// afterwards, in the order given. Fails with a retryable error
    /// ([`crate::Error::BufferFull`], [`crate::Error::BufferUnavailable`]) when it cannot take
    /// them now; then nothing was added, so the caller may retry the whole batch.
    fn push(&self, batch: PushBatch) -> Result<Vec<usize>>;
    /// The oldest `max` records of `key` (fewer if it holds fewer), without removing them.
    fn get(&self, key: &str, max: usize) -> Result<Vec<Record>>;
    /// Removes the oldest `count` records of `key` (after they were written).
    fn clear(&self, key: &str, count: usize) -> Result<()>;
    /// Number of records buffered for `key`.
    fn len(&self, key: &str) -> Result<usize>;
    /// Keys that hold records.
    fn keys(&self) -> Result<Vec<String>>;
    /// The oldest `max` dead-letter entries, without removing them.
    fn get_dlq(&self, max: usize) -> Result<Vec<DlqEntry>>;
    /// Removes the oldest `count` dead-letter entries (after they were written). Refused
    /// when another instance holds [`DLQ_LOCK`] (it is draining the same entries).
    fn clear_dlq(&self, count: usize) -> Result<()>;
    /// Keeps data whose write failed.
    fn push_recovery(&self, item: RecoveryItem) -> Result<()>;
    /// Every recovery item.
    fn get_recovery(&self) -> Result<Vec<RecoveryItem>>;
    /// Removes a recovery item (after it was written or spilled to disk).
    fn remove_recovery(&self, id: &str) -> Result<()>;
    /// Number of recovery items (for metrics; override when cheaper than `get_recovery`).
    fn recovery_len(&self) -> Result<usize> {
        self.get_recovery().map(|items| items.len())
    }
    /// Records buffered over all keys (for metrics; override when cheaper).
    fn total_len(&self) -> Result<usize> {
        let mut total = 0;
        for key in self.keys()? {
            total += self.len(&key)?;
        }
        Ok(total)
    }
    /// Tries to take the flush lock of `key` for this instance (the seed's CheckLock).
    /// `true` when this instance holds it now; `false` when another instance does.
    fn try_lock(&self, key: &str) -> Result<bool>;
    /// Releases the flush lock of `key` if this instance holds it.
    fn unlock(&self, key: &str) -> Result<()>;
    /// Whether the buffer can serve requests now.
    fn is_ready(&self) -> bool;
    /// Approximate bytes held (records, DLQ and recovery data), for metrics and bounds.
    fn bytes_used(&self) -> usize;
    /// Bytes of [`Buffer::bytes_used`] that are recovery data (files whose write failed),
    /// for a buffer that counts them against its bound; 0 for one that does not.
    fn recovery_bytes(&self) -> usize {
        0
    }
    /// Releases resources. Buffered data stays where it is (memory data is flushed by the
    /// receiver before this is called).
    fn close(&self) -> Result<()>;
    /// Short description for logs (`mem`, `redis://host:6379/0`).
    fn describe(&self) -> String;
    /// Whether buffered data survives this process (Redis) or not (memory). At close a
    /// non-durable buffer's leftovers are spilled to local disk.
    fn durable(&self) -> bool;
    /// A deterministic id for the file made of the oldest records of `key` (what `get` or
    /// `get_columnar` just returned), so a batch re-flushed after a crash replaces its
    /// earlier file instead of duplicating it. `None` lets the receiver use a fresh ULID.
    fn batch_id(&self, _key: &str) -> Option<String> {
        None
    }
    /// The oldest `max` records of `key` in columnar form, without removing them, when
    /// the buffer keeps them that way (the memory buffer): the flush encodes them without
    /// rebuilding them. `None` (the default): use [`Buffer::get`].
    fn get_columnar(&self, _key: &str, _max: usize) -> Result<Option<Vec<Columnar>>> {
        Ok(None)
    }
    /// Encodes `batch` in this buffer's storage format ahead of [`Buffer::push`] (fills
    /// [`PushBatch::encoded`]). It is the CPU-heavy half of a push and needs no lock or
    /// connection, so callers may run it on other threads than the push itself. The
    /// default (a buffer that stores records as they are) does nothing. A buffer that
    /// pushes only the encoding may empty the groups' record lists (keeping the keys).
    fn encode(&self, _batch: &mut PushBatch) -> Result<()> {
        Ok(())
    }
    /// Whether [`Buffer::push_refs`] is supported: records that borrow their text are
    /// appended as they are (the memory buffer, which copies them into Arrow columns).
    fn takes_refs(&self) -> bool {
        false
    }
    /// Appends records that borrow their text, grouped by key (`keys[i]` for `groups[i]`),
    /// and `dlq`, all or nothing, like [`Buffer::push`]. Called only when
    /// [`Buffer::takes_refs`] is true; the default refuses.
    fn push_refs(
        &self,
        _keys: &[String],
        _groups: &[RefGroup<'_, '_>],
        _dlq: Vec<DlqEntry>,
    ) -> Result<Vec<usize>> {
        Err(crate::Error::Buffer(format!(
            "the {} buffer cannot take borrowed records",
            self.describe()
        )))
    }
    /// Counts `bytes` against the memory bound ahead of pushes that follow with
    /// [`Buffer::push_refs_reserved`], or refuses them (retryable) as [`Buffer::push_refs`]
    /// would: one unit of input (an HTTP batch, a Fluent Bit chunk) is then admitted or
    /// refused as a whole, yet decoded and pushed in slices that stay in cache. End the
    /// reservation with [`Buffer::settle`]. Only called when [`Buffer::takes_refs`].
    fn reserve(&self, _bytes: usize) -> Result<()> {
        Ok(())
    }
    /// [`Buffer::push_refs`] of records whose counted sizes a [`Buffer::reserve`] already
    /// admitted: never refused for room (dead letters are counted as they come).
    fn push_refs_reserved(
        &self,
        keys: &[String],
        groups: &[RefGroup<'_, '_>],
        dlq: Vec<DlqEntry>,
    ) -> Result<Vec<usize>> {
        self.push_refs(keys, groups, dlq)
    }
    /// Ends a reservation of `reserved` bytes of which pushes used `used` (the counted
    /// sizes of the records pushed): the rest is given back, an excess is counted.
    fn settle(&self, _reserved: usize, _used: usize) {}
    /// Like [`Buffer::encode`] for records that borrow their text, grouped (one list per
    /// group): the encoding for [`PushBatch::encoded`], or `None` (the default) when this
    /// buffer needs the records themselves (the caller then makes owned records).
    fn encode_refs(
        &self,
        _groups: &[Vec<&crate::record::LogRef<'_>>],
    ) -> Result<Option<Arc<Vec<EncodedGroup>>>> {
        Ok(None)
    }
}

/// The records of one key in a push of records that borrow their text
/// ([`Buffer::push_refs`]), with each one's hour (as in [`Columnar::hours`]) and size as
/// the memory buffer counts it against `BufferMaxBytes`.
#[derive(Debug, Default)]
pub struct RefGroup<'r, 'a> {
    /// The records, in arrival order.
    pub records: Vec<&'r crate::record::LogRef<'a>>,
    /// Each record's hour.
    pub hours: Vec<Option<crate::record::Hour>>,
    /// Each record's counted size.
    pub sizes: Vec<u32>,
}

impl RefGroup<'_, '_> {
    /// The counted sizes of the group's records, together.
    pub fn counted_bytes(&self) -> usize {
        self.sizes.iter().map(|s| *s as usize).sum()
    }
}

/// Records of one key in columnar form: Log rows as an Arrow batch, and each row's hour.
#[derive(Debug, Clone)]
pub struct Columnar {
    /// The rows, in the Log schema ([`crate::convert::log_schema`]).
    pub batch: arrow::record_batch::RecordBatch,
    /// Each row's hour from its own `time`; `None` when that does not parse (the flush files
    /// it under the arrival hour, as for records).
    pub hours: Vec<Option<crate::record::Hour>>,
}

/// What one push adds: records grouped by partition key, plus dead-letter entries.
#[derive(Debug, Default, Clone)]
pub struct PushBatch {
    /// `(partition key, records)` groups.
    pub groups: Vec<(String, Vec<Record>)>,
    /// Entries for the dead-letter queue.
    pub dlq: Vec<DlqEntry>,
    /// The records already encoded by [`Buffer::encode`] (one list per group, in order), or
    /// `None`: then `push` encodes them itself. Shared, so a retried push does not copy it.
    pub encoded: Option<Arc<Vec<EncodedGroup>>>,
}

/// The records of one group encoded back to back in one allocation.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EncodedGroup {
    /// Every record's bytes, one after another.
    pub data: Vec<u8>,
    /// Where each record ends in `data`.
    pub ends: Vec<usize>,
}

impl EncodedGroup {
    /// Appends one record with `write`, which adds its bytes to the buffer.
    pub fn push_with<E>(
        &mut self,
        write: impl FnOnce(&mut Vec<u8>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        write(&mut self.data)?;
        self.ends.push(self.data.len());
        Ok(())
    }

    /// The records, in order.
    pub fn records(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(start, end)| &self.data[start..end])
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

impl PushBatch {
    /// Number of records (not counting DLQ entries).
    pub fn record_count(&self) -> usize {
        match &self.encoded {
            Some(encoded) => encoded.iter().map(EncodedGroup::len).sum(),
            None => self.groups.iter().map(|(_, r)| r.len()).sum(),
        }
    }
}

//! The Redis buffer (`BufferType = redis`): durable buffering shared by many instances.
//!
//! Layout (all names configurable, defaults shown):
//!
//! | Redis key | type | holds |
//! |---|---|---|
//! | `data:<partition key>` | list | records of a key, oldest first, compact JSON of the Log |
//! | `keys` | set | partition keys that hold records |
//! | `data:offset:<partition key>` | string | records of the key written so far (names files) |
//! | `data:epoch:<partition key>` | string | id of this list's lifetime (names files) |
//! | `lock:<partition key>` | string | flush lock: the owner's instance name, with a TTL |
//! | `dlq` | list | dead-letter entries, JSON `{key, reason, raw, time}` |
//! | `recovery` | hash | id -> JSON of a file whose write failed (payload hex) |
//!
//! A push is one `MULTI/EXEC` round trip; a flush reads the oldest `BufferSize` records,
//! and only after they are written removes exactly those (`LTRIM`) and advances the key's
//! offset in the same script, so a crash at any point loses nothing and a re-flush after a
//! crash writes the same file name (it replaces instead of duplicating).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use redis::{Client, Connection, RedisError, Script};

use super::{Buffer, Columnar, DlqEntry, EncodedGroup, PushBatch, Record, RecoveryItem};
use crate::config::Config;
use crate::convert::LogColumns;
use crate::error::{Error, Result};
use crate::record::LogRef;

const CLEAR_SCRIPT: &str = r"
if redis.call('GET', KEYS[4]) ~= ARGV[3] then return 0 end
redis.call('LTRIM', KEYS[1], ARGV[1], -1)
redis.call('INCRBY', KEYS[3], ARGV[1])
if redis.call('LLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
return 1";

const CLEAR_DLQ_SCRIPT: &str = r"
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[2] then return 0 end
redis.call('LTRIM', KEYS[1], ARGV[1], -1)
return 1";

const UNLOCK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

const RENEW_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0";

/// Connections kept open at most: the pushing thread, the flush workers and the lock
/// renewal each get one when they run at the same time (so a big `LRANGE` being parsed on
/// one does not stall a push on another). Opened on demand.
const POOL: usize = 4;

struct Shared {
    client: Client,
    conns: Vec<Mutex<Option<Connection>>>,
    /// Round-robin start when every connection is busy.
    next: std::sync::atomic::AtomicUsize,
    timeout: Duration,
    describe: String,
}

impl Shared {
    /// Runs `f` on a free connection of the pool (waiting for one when all are busy),
    /// connecting first when needed; an I/O failure drops the connection so the next call
    /// reconnects.
    fn with_conn<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        // Prefer a free open connection, then a free slot, then wait in turn.
        let mut guard = self
            .conns
            .iter()
            .filter_map(|c| c.try_lock())
            .min_by_key(|g| g.is_none())
            .unwrap_or_else(|| {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
                self.conns[i].lock()
            });
        if guard.is_none() {
            let conn = self
                .client
                .get_connection_with_timeout(self.timeout)
                .map_err(|e| classify(&self.describe, "connecting", &e))?;
            *guard = Some(conn);
        }
        let conn = guard
            .as_mut()
            .ok_or_else(|| Error::BufferUnavailable("no connection".into()))?;
        match f(conn) {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                {
                    *guard = None;
                }
                Err(classify(&self.describe, what, &e))
            }
        }
    }
}

fn classify(target: &str, what: &str, e: &RedisError) -> Error {
    let text = e.to_string();
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || text.contains("WRONGPASS")
        || text.contains("NOAUTH")
        || text.contains("invalid password")
    {
        return Error::config(
            "RedisPassword",
            "<redacted>",
            format!("the password of {target} (Redis said: {})", e.category()),
        );
    }
    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_connection_refusal() {
        return Error::BufferUnavailable(format!("{what} {target}: {e}"));
    }
    if text.contains("OOM") || text.contains("LOADING") || text.contains("BUSY") {
        // Redis is out of memory (maxmemory), still loading its data, or busy: back off.
        return Error::BufferUnavailable(format!("{what} {target}: {e}"));
    }
    Error::Buffer(format!("{what} {target}: {e}"))
}

/// The Redis buffer; see the module documentation for its layout.
pub struct RedisBuffer {
    shared: Arc<Shared>,
    data_prefix: String,
    keys_key: String,
    lock_prefix: String,
    dlq_key: String,
    recovery_key: String,
    instance: String,
    lock_ttl: Duration,
    held: Arc<Mutex<HashSet<String>>>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    renewer: Mutex<Option<JoinHandle<()>>>,
    ready: AtomicBool,
    clear_script: Script,
    clear_dlq_script: Script,
    unlock_script: Script,
}

/// Builds the connection URL without ever printing the password.
fn connection_info(config: &Config) -> Result<(Client, String)> {
    let host = config.redis_host.trim();
    let (url, shown) = if host.starts_with("redis://") || host.starts_with("rediss://") {
        (host.to_string(), "the configured Redis URL".to_string())
    } else {
        let pw = if config.redis_password.is_empty() {
            String::new()
        } else {
            let encoded: String = config
                .redis_password
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            format!(":{encoded}@")
        };
        (
            format!("redis://{pw}{host}/{}", config.redis_db),
            format!("redis://{host}/{}", config.redis_db),
        )
    };
    let client = Client::open(url.as_str()).map_err(|e| {
        Error::config(
            "RedisHost",
            host,
            format!("a `host:port` or redis:// URL ({e})"),
        )
    })?;
    Ok((client, shown))
}

impl RedisBuffer {
    /// Connects (failing clearly for an unreachable host or a wrong password) and starts
    /// the lock renewal thread.
    pub fn connect(config: &Config) -> Result<RedisBuffer> {
        let (client, describe) = connection_info(config)?;
        let timeout = Duration::from_secs(if config.redis_timeout == 0 {
            5
        } else {
            config.redis_timeout
        });
        let shared = Arc::new(Shared {
            client,
            conns: (0..POOL).map(|_| Mutex::new(None)).collect(),
            next: std::sync::atomic::AtomicUsize::new(0),
            timeout,
            describe: describe.clone(),
        });
        shared
            .with_conn("connecting to", |c| redis::cmd("PING").query::<String>(c))
            .map_err(|e| match e {
                Error::BufferUnavailable(msg) => Error::config(
                    "RedisHost",
                    config.redis_host.clone(),
                    format!("a reachable Redis server ({msg})"),
                ),
                other => other,
            })?;
        let p = &config.redis_data_prefix;
        let buffer = RedisBuffer {
            shared,
            data_prefix: p.clone(),
            keys_key: config.redis_keys.clone(),
            lock_prefix: config.redis_lock_prefix.clone(),
            dlq_key: config.redis_dlq_prefix.clone(),
            recovery_key: config.redis_recovery_key.clone(),
            instance: config.redis_lock_instance_name.clone(),
            lock_ttl: Duration::from_secs(config.redis_lock_ttl.max(1)),
            held: Arc::new(Mutex::new(HashSet::new())),
            stop: Arc::new((Mutex::new(false), Condvar::new())),
            renewer: Mutex::new(None),
            ready: AtomicBool::new(true),
            clear_script: Script::new(CLEAR_SCRIPT),
            clear_dlq_script: Script::new(CLEAR_DLQ_SCRIPT),
            unlock_script: Script::new(UNLOCK_SCRIPT),
        };
        buffer.start_renewer()?;
        log::info!(
            "redis buffer connected to {describe} as `{}`",
            buffer.instance
        );
        Ok(buffer)
    }

    fn data_key(&self, key: &str) -> String {
        format!("{}:{key}", self.data_prefix)
    }
    fn offset_key(&self, key: &str) -> String {
        format!("{}:offset:{key}", self.data_prefix)
    }
    fn epoch_key(&self, key: &str) -> String {
        format!("{}:epoch:{key}", self.data_prefix)
    }
    fn lock_key(&self, key: &str) -> String {
        format!("{}:{key}", self.lock_prefix)
    }

    /// Renews every lock this instance holds at a third of the TTL, so a long flush keeps
    /// its lock and a crashed instance's lock expires.
    fn start_renewer(&self) -> Result<()> {
        let shared = self.shared.clone();
        let held = self.held.clone();
        let stop = self.stop.clone();
        let prefix = self.lock_prefix.clone();
        let instance = self.instance.clone();
        let ttl = self.lock_ttl;
        let script = Script::new(RENEW_SCRIPT);
        let handle = std::thread::Builder::new()
            .name("d2p-redis-lock".into())
            .spawn(move || {
                let period = (ttl / 3).max(Duration::from_millis(100));
                loop {
                    {
                        let mut stopped = stop.0.lock();
                        if *stopped {
                            return;
                        }
                        let _ = stop.1.wait_for(&mut stopped, period);
                        if *stopped {
                            return;
                        }
                    }
                    let keys: Vec<String> = held.lock().iter().cloned().collect();
                    for key in keys {
                        let lock = format!("{prefix}:{key}");
                        let renewed = shared.with_conn("renewing a lock on", |c| {
                            script
                                .key(&lock)
                                .arg(&instance)
                                .arg(ttl.as_millis() as u64)
                                .invoke::<i64>(c)
                        });
                        match renewed {
                            Ok(1) => {}
                            Ok(_) => log::warn!("lock `{lock}` is no longer ours (expired?); the flush of `{key}` may overlap another instance"),
                            Err(e) => log::warn!("renewing lock `{lock}` failed: {e}"),
                        }
                    }
                }
            })
            .map_err(|e| Error::io("starting the lock renewal thread", "", e))?;
        *self.renewer.lock() = Some(handle);
        Ok(())
    }

    fn decode_records(&self, key: &str, items: Vec<Vec<u8>>) -> Vec<Record> {
        items
            .iter()
            .enumerate()
            .map(|(i, raw)| Arc::new(decode_stored(key, i, raw).into_owned()))
            .collect()
    }

    /// The oldest `max` records of `key`, read as they are stored: `None` when there are
    /// none.
    fn range(&self, key: &str, max: usize) -> Result<Option<Vec<Vec<u8>>>> {
        if max == 0 {
            return Ok(None);
        }
        let items: Vec<Vec<u8>> = self.shared.with_conn("reading from", |c| {
            redis::cmd("LRANGE")
                .arg(self.data_key(key))
                .arg(0)
                .arg(range_end(max))
                .query(c)
        })?;
        Ok((!items.is_empty()).then_some(items))
    }
}

/// One stored record, its text borrowed from `raw`. An entry not written by data2parquet
/// keeps its text as the message rather than being lost.
fn decode_stored<'a>(key: &str, i: usize, raw: &'a [u8]) -> LogRef<'a> {
    sonic_rs::from_slice::<LogRef<'a>>(raw).unwrap_or_else(|e| {
        log::warn!("record {i} of `{key}` in Redis is not a record ({e}); kept as its message");
        LogRef {
            message: String::from_utf8_lossy(raw),
            ..LogRef::default()
        }
    })
}

impl Drop for RedisBuffer {
    fn drop(&mut self) {
        {
            let mut stopped = self.stop.0.lock();
            *stopped = true;
            self.stop.1.notify_all();
        }
        if let Some(h) = self.renewer.lock().take() {
            let _ = h.join();
        }
    }
}

/// The last index of an `LRANGE 0 <end>` reading `max` items (`-1` = all).
fn range_end(max: usize) -> i64 {
    i64::try_from(max).map_or(-1, |m| m - 1)
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Buffer(format!("serialising for Redis: {e}")))
}

/// The answer of a script that trims only for the lock owner: `1` done, else refused.
fn owner_checked(done: i64, refusal: impl FnOnce() -> String) -> Result<()> {
    if done == 1 {
        Ok(())
    } else {
        Err(Error::Buffer(refusal()))
    }
}

/// Records are serialised with sonic-rs (SIMD string escaping): on the benchmark's records
/// it is about three times faster than serde_json, and the output is the same JSON. A
/// group's records go into one buffer (one allocation per group, not per record).
fn encode_groups(groups: &[(String, Vec<Record>)]) -> Result<Arc<Vec<EncodedGroup>>> {
    let encoded = groups
        .iter()
        .map(|(_, records)| encode_group(records.iter().map(|r| &**r)))
        .collect::<Result<Vec<EncodedGroup>>>()?;
    Ok(Arc::new(encoded))
}

/// One group's records (owned or borrowing their text: both serialise alike).
fn encode_group<'r, L: serde::Serialize + 'r>(
    records: impl ExactSizeIterator<Item = &'r L>,
) -> Result<EncodedGroup> {
    let mut group = EncodedGroup {
        data: Vec::with_capacity(records.len() * 1536),
        ends: Vec::with_capacity(records.len()),
    };
    for r in records {
        group
            .push_with(|out| sonic_rs::to_writer(out, r))
            .map_err(|e| Error::Buffer(format!("serialising for Redis: {e}")))?;
    }
    Ok(group)
}

impl Buffer for RedisBuffer {
    fn encode(&self, batch: &mut PushBatch) -> Result<()> {
        batch.encoded = Some(encode_groups(&batch.groups)?);
        // Only the encoding is pushed: free the records here, on the thread that made them.
        for (_, records) in &mut batch.groups {
            records.clear();
        }
        Ok(())
    }

    fn encode_refs(&self, groups: &[Vec<&LogRef<'_>>]) -> Result<Option<Arc<Vec<EncodedGroup>>>> {
        let encoded = groups
            .iter()
            .map(|records| encode_group(records.iter().copied()))
            .collect::<Result<Vec<EncodedGroup>>>()?;
        Ok(Some(Arc::new(encoded)))
    }

    fn push(&self, batch: PushBatch) -> Result<Vec<usize>> {
        let encoded = match &batch.encoded {
            Some(encoded) if encoded.len() == batch.groups.len() => Arc::clone(encoded),
            _ => encode_groups(&batch.groups)?,
        };
        let mut pipe = redis::pipe();
        pipe.atomic();
        for ((key, _), group) in batch.groups.iter().zip(encoded.iter()) {
            pipe.rpush(self.data_key(key), group.records().collect::<Vec<&[u8]>>());
            pipe.sadd(&self.keys_key, key).ignore();
            pipe.cmd("SET")
                .arg(self.epoch_key(key))
                .arg(ulid::Ulid::generate().to_string())
                .arg("NX")
                .ignore();
        }
        if !batch.dlq.is_empty() {
            let mut encoded = Vec::with_capacity(batch.dlq.len());
            for e in &batch.dlq {
                encoded.push(to_json(e)?);
            }
            pipe.rpush(&self.dlq_key, encoded).ignore();
        }
        if batch.groups.is_empty() && batch.dlq.is_empty() {
            return Ok(Vec::new());
        }
        let lens: Vec<usize> = self.shared.with_conn("pushing to", |c| pipe.query(c))?;
        self.ready.store(true, Ordering::Relaxed);
        Ok(lens)
    }

    fn get(&self, key: &str, max: usize) -> Result<Vec<Record>> {
        Ok(match self.range(key, max)? {
            Some(items) => self.decode_records(key, items),
            None => Vec::new(),
        })
    }

    fn get_columnar(&self, key: &str, max: usize) -> Result<Option<Vec<Columnar>>> {
        // Decoded borrowing the reply's bytes, straight into Arrow columns.
        let Some(items) = self.range(key, max)? else {
            return Ok(Some(Vec::new()));
        };
        let mut columns = LogColumns::new();
        let mut hours = Vec::with_capacity(items.len());
        for (i, raw) in items.iter().enumerate() {
            let log = decode_stored(key, i, raw);
            hours.push(log.hour());
            columns.append(&log);
        }
        Ok(Some(vec![Columnar {
            batch: columns.finish()?,
            hours,
        }]))
    }

    fn clear(&self, key: &str, count: usize) -> Result<()> {
        // Only the lock owner may remove records: an instance that stalled past its lock's
        // TTL must not trim records that the new owner is flushing.
        let cleared = self.shared.with_conn("clearing in", |c| {
            self.clear_script
                .key(self.data_key(key))
                .key(&self.keys_key)
                .key(self.offset_key(key))
                .key(self.lock_key(key))
                .arg(count)
                .arg(key)
                .arg(&self.instance)
                .invoke::<i64>(c)
        })?;
        owner_checked(cleared, || {
            format!(
                "the flush lock of `{key}` expired and another instance took it; its records stay for that instance (the file just written will be replaced, not duplicated)"
            )
        })
    }

    fn len(&self, key: &str) -> Result<usize> {
        self.shared.with_conn("reading from", |c| {
            redis::cmd("LLEN").arg(self.data_key(key)).query(c)
        })
    }

    fn keys(&self) -> Result<Vec<String>> {
        let mut keys: Vec<String> = self.shared.with_conn("reading from", |c| {
            redis::cmd("SMEMBERS").arg(&self.keys_key).query(c)
        })?;
        keys.sort();
        Ok(keys)
    }

    fn get_dlq(&self, max: usize) -> Result<Vec<DlqEntry>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let items: Vec<String> = self.shared.with_conn("reading the DLQ from", |c| {
            redis::cmd("LRANGE")
                .arg(&self.dlq_key)
                .arg(0)
                .arg(range_end(max))
                .query(c)
        })?;
        Ok(items
            .into_iter()
            .map(|text| {
                serde_json::from_str::<DlqEntry>(&text).unwrap_or_else(|e| DlqEntry {
                    key: crate::receiver::UNDECODABLE_KEY.to_string(),
                    reason: format!("DLQ entry in Redis is not JSON: {e}"),
                    raw: text,
                    time: String::new(),
                })
            })
            .collect())
    }

    fn clear_dlq(&self, count: usize) -> Result<()> {
        let cleared = self.shared.with_conn("clearing the DLQ in", |c| {
            self.clear_dlq_script
                .key(&self.dlq_key)
                .key(self.lock_key(super::DLQ_LOCK))
                .arg(count)
                .arg(&self.instance)
                .invoke::<i64>(c)
        })?;
        owner_checked(cleared, || {
            format!(
                "another instance holds the DLQ lock `{}` and is draining the same entries; the DLQ was left as it is",
                self.lock_key(super::DLQ_LOCK)
            )
        })
    }

    fn push_recovery(&self, item: RecoveryItem) -> Result<()> {
        let text = to_json(&item)?;
        self.shared.with_conn("keeping recovery data in", |c| {
            redis::cmd("HSET")
                .arg(&self.recovery_key)
                .arg(&item.id)
                .arg(text)
                .query::<()>(c)
        })
    }

    fn get_recovery(&self) -> Result<Vec<RecoveryItem>> {
        let values: Vec<String> = self.shared.with_conn("reading recovery data from", |c| {
            redis::cmd("HVALS").arg(&self.recovery_key).query(c)
        })?;
        let mut items = Vec::with_capacity(values.len());
        for v in values {
            match serde_json::from_str::<RecoveryItem>(&v) {
                Ok(item) => items.push(item),
                Err(e) => log::warn!("a recovery item in Redis is unreadable ({e}); left in place"),
            }
        }
        items.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(items)
    }

    fn remove_recovery(&self, id: &str) -> Result<()> {
        self.shared.with_conn("removing recovery data from", |c| {
            redis::cmd("HDEL")
                .arg(&self.recovery_key)
                .arg(id)
                .query::<()>(c)
        })
    }

    fn recovery_len(&self) -> Result<usize> {
        self.shared.with_conn("reading recovery data from", |c| {
            redis::cmd("HLEN").arg(&self.recovery_key).query(c)
        })
    }

    fn try_lock(&self, key: &str) -> Result<bool> {
        let lock = self.lock_key(key);
        let ttl = self.lock_ttl.as_millis() as u64;
        let got: Option<String> = self.shared.with_conn("locking in", |c| {
            redis::cmd("SET")
                .arg(&lock)
                .arg(&self.instance)
                .arg("NX")
                .arg("PX")
                .arg(ttl)
                .query(c)
        })?;
        let mine = if got.is_some() {
            true
        } else {
            // The seed's "lock is mine" case (for example after a restart with the same name).
            let owner: Option<String> = self
                .shared
                .with_conn("locking in", |c| redis::cmd("GET").arg(&lock).query(c))?;
            owner.as_deref() == Some(self.instance.as_str())
        };
        if mine {
            self.held.lock().insert(key.to_string());
        }
        Ok(mine)
    }

    fn unlock(&self, key: &str) -> Result<()> {
        self.held.lock().remove(key);
        self.shared.with_conn("unlocking in", |c| {
            self.unlock_script
                .key(self.lock_key(key))
                .arg(&self.instance)
                .invoke::<i64>(c)
        })?;
        Ok(())
    }

    fn is_ready(&self) -> bool {
        let ok = self
            .shared
            .with_conn("checking", |c| redis::cmd("PING").query::<String>(c))
            .is_ok();
        self.ready.store(ok, Ordering::Relaxed);
        ok
    }

    fn bytes_used(&self) -> usize {
        // Redis holds the data; the memory bound applies to the memory buffer only.
        0
    }

    fn close(&self) -> Result<()> {
        {
            let mut stopped = self.stop.0.lock();
            *stopped = true;
            self.stop.1.notify_all();
        }
        if let Some(h) = self.renewer.lock().take() {
            let _ = h.join();
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.shared.describe.clone()
    }

    fn durable(&self) -> bool {
        true
    }

    fn batch_id(&self, key: &str) -> Option<String> {
        // Same list lifetime and same offset -> same name: a batch re-flushed after a crash
        // replaces its file. A list recreated after Redis lost its data gets a new epoch.
        let got: Result<(Option<String>, Option<u64>)> =
            self.shared.with_conn("naming a batch in", |c| {
                redis::pipe()
                    .cmd("GET")
                    .arg(self.epoch_key(key))
                    .cmd("GET")
                    .arg(self.offset_key(key))
                    .query(c)
            });
        match got {
            Ok((Some(epoch), offset)) => Some(format!("{epoch}-{:012}", offset.unwrap_or(0))),
            Ok((None, _)) => None,
            Err(e) => {
                log::warn!("cannot read the batch offset of `{key}`: {e}; using a fresh name");
                None
            }
        }
    }
}

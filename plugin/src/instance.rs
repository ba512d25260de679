//! One `[OUTPUT]` section: its configuration, its engine ([`Receiver`]: buffer, writer and
//! flusher thread) and its decode threads. Safe code only; `lib.rs` owns the pointers.
//!
//! A flush hands the copied chunk to the decode threads over a channel and waits for their
//! answer, so the Fluent Bit coroutine (64 KiB of stack, no guard page) only copies bytes
//! and blocks; decoding, grouping and buffering run on threads with normal stacks.

use std::ffi::c_int;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use data2parquet::receiver::estimate_counted_bytes;
use data2parquet::{Config, Receiver, fluent};

use crate::ffi::{
    FLB_ERROR, FLB_LOG_DEBUG, FLB_LOG_ERROR, FLB_LOG_INFO, FLB_LOG_WARN, FLB_OK, FLB_RETRY, LogSink,
};

/// Threads decoding chunks for one instance (flushes from `workers N` run in parallel).
const DECODE_THREADS: usize = 2;
/// Stack of a decode thread (decoding recurses up to `fluent::MAX_DEPTH`).
const DECODE_STACK: usize = 8 * 1024 * 1024;

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Log lines of one instance, prefixed with its name, through Fluent Bit's logger.
#[derive(Clone)]
pub struct Logger {
    name: String,
    sink: LogSink,
    debug: bool,
}

impl Logger {
    /// A logger for instance `name`; `debug` enables debug lines.
    pub fn new(name: String, sink: LogSink, debug: bool) -> Self {
        Logger { name, sink, debug }
    }

    fn line(&self, level: c_int, msg: &str) {
        self.sink.print(level, &format!("[{}] {msg}", self.name));
    }
    /// An error line.
    pub fn error(&self, msg: &str) {
        self.line(FLB_LOG_ERROR, msg);
    }
    /// A warning line.
    pub fn warn(&self, msg: &str) {
        self.line(FLB_LOG_WARN, msg);
    }
    /// An info line.
    pub fn info(&self, msg: &str) {
        self.line(FLB_LOG_INFO, msg);
    }
    /// A debug line, only when debug is on.
    pub fn debug(&self, msg: impl FnOnce() -> String) {
        if self.debug {
            self.line(FLB_LOG_DEBUG, &msg());
        }
    }
}

/// A name for the next instance: `out_parquet#0`, `out_parquet#1`, ...
pub fn next_name() -> String {
    format!("out_parquet#{}", NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

struct Job {
    data: Vec<u8>,
    tag: String,
    reply: mpsc::SyncSender<c_int>,
}

/// One plugin instance. Shared (`Arc`) between Fluent Bit's flush threads; every method
/// takes `&self`.
pub struct Instance {
    log: Logger,
    receiver: Arc<Receiver>,
    jobs: RwLock<Option<mpsc::Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Instance {
    /// Validates the properties (`(key, value)` as read from Fluent Bit) with the same
    /// parser as the JSON config, starts the engine and the decode threads.
    pub fn start(
        name: String,
        sink: LogSink,
        fb_debug: bool,
        props: &[(String, String)],
    ) -> Result<Instance, String> {
        let config = Config::from_pairs(props.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| format!("invalid configuration: {e}"))?;
        let log = Logger::new(name, sink, config.debug || fb_debug);
        if config.debug {
            log::set_max_level(log::LevelFilter::Debug);
        }
        let summary = format!("{config:?}");
        let receiver =
            Arc::new(Receiver::from_config(config).map_err(|e| format!("cannot start: {e}"))?);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::with_capacity(DECODE_THREADS);
        for i in 0..DECODE_THREADS {
            let rx = rx.clone();
            let engine = receiver.clone();
            let log = log.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("d2p-decode-{i}"))
                .stack_size(DECODE_STACK)
                .spawn(move || decode_loop(&rx, &engine, &log));
            match spawned {
                Ok(h) => threads.push(h),
                Err(e) => {
                    drop(tx);
                    for h in threads {
                        let _ = h.join();
                    }
                    let _ = receiver.close();
                    return Err(format!("cannot start decode thread: {e}"));
                }
            }
        }
        log.info(&format!("started: {summary}"));
        Ok(Instance {
            log,
            receiver,
            jobs: RwLock::new(Some(tx)),
            threads: Mutex::new(threads),
        })
    }

    /// The instance's logger.
    pub fn logger(&self) -> &Logger {
        &self.log
    }

    /// Handles one chunk: copies it, lets a decode thread push it, returns its verdict.
    /// Runs on Fluent Bit's coroutine stack, so it does nothing heavy itself.
    pub fn flush(&self, data: &[u8], tag: &str) -> c_int {
        let (reply, answer) = mpsc::sync_channel(1);
        let job = Job {
            data: data.to_vec(),
            tag: tag.to_owned(),
            reply,
        };
        {
            let jobs = self.jobs.read().unwrap_or_else(PoisonError::into_inner);
            let Some(tx) = jobs.as_ref() else {
                self.log
                    .error("flush after exit: the instance is closed; chunk not taken");
                return FLB_ERROR;
            };
            if tx.send(job).is_err() {
                self.log
                    .error("decode threads are gone; returning FLB_RETRY");
                return FLB_RETRY;
            }
        }
        answer.recv().unwrap_or_else(|_| {
            self.log
                .error("decode thread stopped before answering; returning FLB_RETRY");
            FLB_RETRY
        })
    }

    /// Stops taking chunks, joins the decode threads, flushes everything the engine holds
    /// and stops it. Idempotent.
    pub fn shutdown(&self) {
        let tx = self
            .jobs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if tx.is_none() {
            return;
        }
        drop(tx);
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for h in threads {
            if h.join().is_err() {
                self.log.error("a decode thread panicked");
            }
        }
        match self.receiver.close() {
            Ok(report) => {
                let stats = self.receiver.stats();
                self.log.info(&format!(
                    "stopped: flushed {} records into {} files at exit; total {stats}",
                    report.records, report.files,
                ));
            }
            Err(e) => self.log.error(&format!(
                "closing failed: {e}; see RecoveryPath for kept data"
            )),
        }
    }
}

fn decode_loop(rx: &Mutex<mpsc::Receiver<Job>>, receiver: &Receiver, log: &Logger) {
    loop {
        let job = {
            let guard = rx.lock().unwrap_or_else(PoisonError::into_inner);
            guard.recv()
        };
        let Ok(job) = job else { return };
        let code = catch_unwind(AssertUnwindSafe(|| {
            handle(&job.data, &job.tag, receiver, log)
        }))
        .unwrap_or_else(|_| {
            log.error(&format!(
                "internal error (panic) while handling a chunk of {} bytes (tag {}); chunk dropped",
                job.data.len(),
                job.tag
            ));
            FLB_ERROR
        });
        // The flusher waits for this answer; if it is gone there is nobody to tell.
        let _ = job.reply.send(code);
    }
}

/// Events of a chunk decoded and pushed at a time: their decoded records stay in cache
/// until they are appended to the columns (inside Fluent Bit, 9.9 µs of CPU per record
/// above `null` against 11.2 when whole chunks were decoded first; medians of 4 runs).
const SLICE_EVENTS: usize = 256;

/// Decodes a chunk and pushes it; the return code tells Fluent Bit the truth. The chunk is
/// admitted or refused as a whole, then decoded and pushed a slice at a time (see
/// `Receiver::push_refs_sliced`).
fn handle(data: &[u8], tag: &str, receiver: &Receiver, log: &Logger) -> c_int {
    let mut decoder = fluent::ChunkDecoder::new(data, tag, receiver.config().record_type);
    let first = match decoder.next_slice(SLICE_EVENTS) {
        Ok(first) => first,
        Err(e) => {
            log.error(&format!(
                "dropping a chunk of {} bytes (tag {tag}) that cannot be decoded: {e}",
                data.len()
            ));
            return FLB_ERROR;
        }
    };
    // Events of the chunk, judged by the first slice's.
    let events = (data.len() as u128 * decoder.events() as u128 / decoder.consumed().max(1) as u128)
        as usize;
    let estimate = estimate_counted_bytes(data.len(), events);
    let (mut records, mut rejected, mut markers) = (0usize, 0usize, 0usize);
    let mut first_rejected: Option<String> = None;
    let mut slice = first;
    let next = || {
        // Only the chunk's first event can fail to frame, and it did not.
        let d = slice
            .take()
            .or_else(|| decoder.next_slice(SLICE_EVENTS).ok().flatten())?;
        records += d.records.len();
        rejected += d.rejected.len();
        markers += d.group_markers;
        if first_rejected.is_none() {
            first_rejected = d.rejected.first().map(fluent::summary);
        }
        let dlq = d
            .rejected
            .into_iter()
            .map(|r| receiver.dlq_entry(None, format!("{}: {}", r.what, r.reason), r.raw))
            .collect();
        Some((d.records, dlq))
    };
    // A full buffer first gets `BufferFullWait` to make room (the flusher runs meanwhile):
    // Fluent Bit's own retry comes seconds later and, by default, only once.
    let wait = Duration::from_millis(receiver.config().buffer_full_wait_ms);
    let pushed = receiver.push_refs_sliced(estimate, Some(wait), next);
    if let Some(first) = &first_rejected {
        log.warn(&format!(
            "{rejected} event(s) of a chunk (tag {tag}) go to the dead-letter queue; first: {first}"
        ));
    }
    match pushed {
        Ok(_) => {
            log.debug(|| {
                format!(
                    "chunk (tag {tag}, {} bytes): {records} records buffered, {rejected} to the DLQ, {markers} group markers skipped",
                    data.len(),
                )
            });
            FLB_OK
        }
        Err(e) if e.is_retryable() => {
            log.warn(&format!(
                "cannot take a chunk of {} bytes (~{events} events, tag {tag}) within {}ms: {e}; returning FLB_RETRY so Fluent Bit keeps the chunk",
                data.len(),
                wait.as_millis()
            ));
            FLB_RETRY
        }
        Err(e) => {
            log.error(&format!(
                "dropping the rest of a chunk of {} bytes (tag {tag}; {records} records decoded, the slices pushed before this error stay buffered): {e}",
                data.len()
            ));
            FLB_ERROR
        }
    }
}

//! Engine tests with a fake clock: size trigger, interval trigger, flush, close, a failing
//! writer -> recovery -> re-send, the memory bound; every record accounted for exactly once
//! by reading the files back.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use data2parquet::buffer::mem::MemBuffer;
use data2parquet::clock::ManualClock;
use data2parquet::receiver::Background;
use data2parquet::writer::Writer;
use data2parquet::writer::file::FileWriter;
use data2parquet::{Config, Log, Receiver};

fn config(dir: &Path, extra: &[(&str, &str)]) -> Config {
    let out = dir.join("out").display().to_string();
    let rec = dir.join("recovery").display().to_string();
    let mut pairs = vec![
        ("WriterFilePath", out.as_str()),
        ("RecoveryPath", rec.as_str()),
        ("BufferSize", "10"),
        ("FlushInterval", "5"),
    ];
    pairs.extend_from_slice(extra);
    Config::from_pairs(pairs).expect("valid config")
}

fn engine(dir: &Path, extra: &[(&str, &str)]) -> (Receiver, Arc<ManualClock>) {
    engine_with(dir, extra, Background::Manual)
}

fn engine_with(
    dir: &Path,
    extra: &[(&str, &str)],
    background: Background,
) -> (Receiver, Arc<ManualClock>) {
    let (r, clock, _buffer) = engine_parts(dir, extra, background);
    (r, clock)
}

/// The engine, its clock and its buffer (to look inside it).
fn engine_parts(
    dir: &Path,
    extra: &[(&str, &str)],
    background: Background,
) -> (Receiver, Arc<ManualClock>, Arc<MemBuffer>) {
    let c = config(dir, extra);
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0)
            .single()
            .expect("date"),
    ));
    let buffer = Arc::new(MemBuffer::new(c.buffer_max_bytes));
    let writer = Arc::new(FileWriter::new(&c.writer_file_path));
    let r = Receiver::new(c, buffer.clone(), writer, clock.clone(), background).expect("engine");
    (r, clock, buffer)
}

fn log(key: &str, i: usize) -> Log {
    let parts: Vec<&str> = key.split(':').collect();
    Log {
        time: format!("2024-05-01T10:{:02}:00Z", i % 60),
        level: "info".into(),
        message: format!("{key} #{i}"),
        business_capability: parts[0].into(),
        business_domain: parts[1].into(),
        business_service: parts[2].into(),
        application_service: parts[3].into(),
        ..Log::default()
    }
}

/// Every message in the Parquet files below `dir`, with how often it appears.
fn messages(dir: &Path) -> HashMap<String, usize> {
    let files = common::parquet_files(dir);
    let mut seen = HashMap::new();
    for row in common::rows_with_parquet_crate(&files) {
        let m = row["message"].as_str().expect("message").to_string();
        *seen.entry(m).or_default() += 1;
    }
    seen
}

#[test]
fn size_trigger_flushes_full_batches_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (r, _clock) = engine(dir.path(), &[]);
    let key = "pay:cards:api:web";
    r.push((0..25).map(|i| log(key, i)).collect(), Vec::new())
        .expect("push");
    let report = r.tick().expect("tick");
    assert_eq!(report.records, 0, "the interval has not passed");
    let stats = r.stats();
    assert_eq!(
        stats.records_written, 20,
        "two full batches of BufferSize=10"
    );
    assert_eq!(stats.buffered_records, 5);
    assert_eq!(stats.files_written, 2);
    let seen = messages(&dir.path().join("out"));
    assert_eq!(seen.len(), 20);
    assert!(seen.values().all(|n| *n == 1));
    r.close().expect("close");
    let seen = messages(&dir.path().join("out"));
    assert_eq!(seen.len(), 25, "close flushes the rest");
    assert!(seen.values().all(|n| *n == 1));
}

#[test]
fn interval_trigger_uses_the_oldest_record_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (r, clock) = engine(dir.path(), &[]);
    r.push(vec![log("a:b:c:d", 1)], Vec::new()).expect("push");
    clock.advance(chrono::Duration::seconds(3));
    r.push(vec![log("a:b:c:d", 2), log("x:y:z:w", 3)], Vec::new())
        .expect("push");
    assert_eq!(
        r.tick().expect("tick").records,
        0,
        "3 s < FlushInterval 5 s"
    );
    clock.advance(chrono::Duration::seconds(2));
    let report = r.tick().expect("tick");
    assert_eq!(report.records, 2, "a:b:c:d is 5 s old; x:y:z:w only 2 s");
    assert_eq!(report.files, 1);
    clock.advance(chrono::Duration::seconds(3));
    assert_eq!(r.tick().expect("tick").records, 1);
    assert_eq!(r.stats().buffered_records, 0);
    r.close().expect("close");
    assert_eq!(messages(&dir.path().join("out")).len(), 3);
}

#[test]
fn flush_on_demand_and_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (r, _clock) = engine(dir.path(), &[("BufferSize", "1000")]);
    let keys = ["a:b:c:d", "e:f:g:h", "i:j:k:l"];
    let records: Vec<Log> = (0..30).map(|i| log(keys[i % 3], i)).collect();
    r.push(records, Vec::new()).expect("push");
    let report = r.flush().expect("flush");
    assert_eq!(report.records, 30);
    assert_eq!(report.files, 3);
    assert_eq!(report.names.len(), 3);
    for name in &report.names {
        assert!(dir.path().join("out").join(name).is_file(), "{name}");
        assert!(name.starts_with("capability="), "{name}");
        assert!(
            name.contains("/year=2024/month=05/day=01/hour=10/"),
            "{name}"
        );
    }
    assert_eq!(r.flush().expect("again").records, 0, "nothing twice");
}

#[test]
fn batches_spanning_hours_become_one_file_per_hour() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (r, _clock) = engine(dir.path(), &[("BufferSize", "1000")]);
    let mut a = log("a:b:c:d", 1);
    a.time = "2024-05-01T09:59:59Z".into();
    let mut b = log("a:b:c:d", 2);
    b.time = "2024-05-01T10:00:00Z".into();
    let mut c = log("a:b:c:d", 3);
    c.time = "not a time".into();
    r.push(vec![a, b, c], Vec::new()).expect("push");
    let report = r.flush().expect("flush");
    assert_eq!(report.records, 3);
    let hours: Vec<&str> = report
        .names
        .iter()
        .map(|n| n.split('/').nth(4).expect("hour segment"))
        .collect();
    assert_eq!(
        hours,
        vec!["hour=09", "hour=10"],
        "unparseable time files under arrival hour 10"
    );
    let rows = common::rows_with_parquet_crate(&common::parquet_files(&dir.path().join("out")));
    assert!(
        rows.iter().any(|r| r["time"] == "not a time"),
        "original time text kept"
    );
}

#[test]
fn runs_and_interleaved_hours_keep_every_row_in_order() {
    // Hours in runs (sliced) for one key, back and forth (filtered) for another.
    let dir = tempfile::tempdir().expect("tempdir");
    let (r, _clock) = engine(dir.path(), &[("BufferSize", "1000")]);
    let mut records = Vec::new();
    for i in 0..60 {
        let mut l = log("runs:b:c:d", i);
        l.time = format!("2024-05-01T{:02}:30:00.5Z", 7 + i / 20);
        records.push(l);
        let mut l = log("mixed:b:c:d", i);
        l.time = format!("2024-05-01T{:02}:00:00Z", 7 + i % 3);
        records.push(l);
    }
    r.push(records, Vec::new()).expect("push");
    let report = r.flush().expect("flush");
    assert_eq!(report.records, 120);
    assert_eq!(report.names.len(), 6, "{:?}", report.names);
    for file in common::parquet_files(&dir.path().join("out")) {
        let rows = common::rows_with_parquet_crate(std::slice::from_ref(&file));
        assert_eq!(rows.len(), 20, "{}", file.display());
        let hour = file
            .to_string_lossy()
            .split("hour=")
            .nth(1)
            .and_then(|h| h.get(..2))
            .expect("hour segment")
            .to_string();
        let numbers: Vec<usize> = rows
            .iter()
            .map(|row| {
                let time = row["time"].as_str().expect("time");
                assert_eq!(&time[11..13], hour, "row filed under its own hour");
                let message = row["message"].as_str().expect("message");
                message
                    .rsplit('#')
                    .next()
                    .expect("n")
                    .parse()
                    .expect("number")
            })
            .collect();
        let mut sorted = numbers.clone();
        sorted.sort_unstable();
        assert_eq!(numbers, sorted, "input order kept in {}", file.display());
    }
}

#[test]
fn failing_writer_keeps_data_in_recovery_and_resends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let (r, _clock) = engine(
        dir.path(),
        &[("BufferSize", "1000"), ("TryAutoRecover", "true")],
    );
    r.push((0..12).map(|i| log("a:b:c:d", i)).collect(), Vec::new())
        .expect("push");
    // Break the target: a plain file where the capability directory must go.
    std::fs::write(out.join("capability=a"), b"blocker").expect("blocker");
    let report = r.flush().expect("a failed write is not a failed flush");
    assert_eq!(report.records, 0);
    assert_eq!(report.records_to_recovery, 12);
    let stats = r.stats();
    assert_eq!(stats.write_failures, 1);
    assert_eq!(stats.recovery_backlog, 1);
    assert_eq!(
        stats.buffered_records, 0,
        "records left the buffer only into recovery"
    );
    // Still broken: the tick retries and keeps it.
    r.tick().expect("tick");
    assert_eq!(r.stats().recovery_backlog, 1);
    // Repair the target: the next tick re-sends.
    std::fs::remove_file(out.join("capability=a")).expect("unblock");
    r.tick().expect("tick");
    let stats = r.stats();
    assert_eq!(stats.recovery_backlog, 0);
    assert_eq!(stats.recovered, 1);
    let seen = messages(&out);
    assert_eq!(seen.len(), 12);
    assert!(seen.values().all(|n| *n == 1), "no duplicates");
    r.close().expect("close");
    assert!(common::parquet_files(&dir.path().join("recovery")).is_empty());
}

/// The file writer, counting how many objects each call hands it, saying whether it
/// wants batches (the file writer's own answer depends on the file system under it), and
/// optionally holding the write of an object whose name contains a given text until the
/// test opens a gate (or 10 s pass).
struct SpyWriter {
    inner: FileWriter,
    batches: bool,
    calls: parking_lot::Mutex<Vec<usize>>,
    gate: Option<Gate>,
}

struct Gate {
    gated: &'static str,
    reached: std::sync::mpsc::SyncSender<()>,
    open: parking_lot::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl SpyWriter {
    fn new(inner: FileWriter, batches: bool, gate: Option<Gate>) -> Self {
        SpyWriter {
            inner,
            batches,
            calls: parking_lot::Mutex::new(Vec::new()),
            gate,
        }
    }
}

impl Writer for SpyWriter {
    fn init(&self) -> data2parquet::Result<()> {
        self.inner.init()
    }
    fn write(&self, name: &str, data: &[u8]) -> data2parquet::Result<()> {
        self.write_many(&[(name, data)]).remove(0)
    }
    fn write_many(&self, objects: &[(&str, &[u8])]) -> Vec<data2parquet::Result<()>> {
        self.calls.lock().push(objects.len());
        if let Some(gate) = &self.gate
            && objects.iter().any(|(name, _)| name.contains(gate.gated))
        {
            let _ = gate.reached.send(());
            let _ = gate
                .open
                .lock()
                .recv_timeout(std::time::Duration::from_secs(10));
        }
        self.inner.write_many(objects)
    }
    fn prefers_batches(&self) -> bool {
        self.batches
    }
    fn close(&self) -> data2parquet::Result<()> {
        self.inner.close()
    }
    fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }
    fn target(&self) -> String {
        self.inner.target()
    }
}

/// An engine whose writer counts its calls, with the given answer to `prefers_batches`.
fn counted_engine(dir: &Path, batches: bool) -> (Receiver, Arc<ManualClock>, Arc<SpyWriter>) {
    let c = config(dir, &[("BufferSize", "1000"), ("FlushWorkers", "1")]);
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0)
            .single()
            .expect("date"),
    ));
    let writer = Arc::new(SpyWriter::new(
        FileWriter::new(&c.writer_file_path),
        batches,
        None,
    ));
    let buffer = Arc::new(MemBuffer::new(c.buffer_max_bytes));
    let r = Receiver::new(c, buffer, writer.clone(), clock.clone(), Background::Manual)
        .expect("engine");
    (r, clock, writer)
}

#[test]
fn a_flush_round_hands_every_keys_files_over_at_once_and_a_failure_stays_its_own() {
    let key = |k: usize| {
        let capability = if k == 7 { "blocked" } else { "cap" };
        format!("{capability}:d:s:app{k}")
    };
    for batches in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let (r, clock, writer) = counted_engine(dir.path(), batches);
        // 20 keys; the capability directory of one of them cannot be made.
        std::fs::write(out.join("capability=blocked"), b"blocker").expect("blocker");
        for k in 0..20 {
            r.push((0..10).map(|i| log(&key(k), i)).collect(), Vec::new())
                .expect("push");
        }
        let report = r.flush().expect("a failed write is not a failed flush");
        let per_call = if batches { vec![20] } else { vec![1; 20] };
        assert_eq!(*writer.calls.lock(), per_call, "batches {batches}");
        assert_eq!(report.files, 19);
        assert_eq!(report.records, 190);
        assert_eq!(report.records_to_recovery, 10);
        let stats = r.stats();
        assert_eq!(stats.buffered_records, 0);
        assert_eq!(stats.recovery_backlog, 1);
        assert_eq!(messages(&out).len(), 190);

        // Keys due by interval are flushed the same way, and the failed file is re-sent.
        std::fs::remove_file(out.join("capability=blocked")).expect("unblock");
        for k in 20..25 {
            r.push((0..10).map(|i| log(&key(k), i)).collect(), Vec::new())
                .expect("push");
        }
        r.tick().expect("first sight of the new keys");
        clock.advance(chrono::Duration::seconds(6));
        writer.calls.lock().clear();
        assert_eq!(r.tick().expect("tick").files, 5);
        let per_call = if batches { vec![5] } else { vec![1; 5] };
        assert_eq!(writer.calls.lock()[..per_call.len()], per_call[..]);
        assert_eq!(r.try_resend().expect("resend"), 1);
        r.close().expect("close");
        let seen = messages(&out);
        assert_eq!(seen.len(), 250, "batches {batches}");
        assert!(seen.values().all(|n| *n == 1), "no duplicates");
    }
}

#[test]
fn a_key_is_let_go_as_soon_as_it_is_written_not_when_its_share_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(dir.path(), &[("BufferSize", "1000"), ("FlushWorkers", "1")]);
    let out = dir.path().join("out");
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0)
            .single()
            .expect("date"),
    ));
    let (reached_tx, reached) = std::sync::mpsc::sync_channel(4);
    let (open_gate, gate) = std::sync::mpsc::channel();
    let writer = Arc::new(SpyWriter::new(
        FileWriter::new(&c.writer_file_path),
        false,
        Some(Gate {
            gated: "app2",
            reached: reached_tx,
            open: parking_lot::Mutex::new(gate),
        }),
    ));
    let buffer = Arc::new(MemBuffer::new(c.buffer_max_bytes));
    let r = Receiver::new(c, buffer, writer, clock, Background::Manual).expect("engine");
    // Keys are flushed in order: app1 first, then app2, whose write waits at the gate.
    for key in ["cap:d:s:app1", "cap:d:s:app2"] {
        r.push((0..10).map(|i| log(key, i)).collect(), Vec::new())
            .expect("push");
    }
    std::thread::scope(|scope| {
        let flushing = scope.spawn(|| r.flush().expect("flush"));
        reached
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the flush reaches app2's write");
        // app1 is written and let go: another thread can flush it while app2 waits.
        r.push(
            (10..20).map(|i| log("cap:d:s:app1", i)).collect(),
            Vec::new(),
        )
        .expect("push");
        let (done_tx, done) = std::sync::mpsc::channel();
        let r = &r;
        scope.spawn(move || {
            let report = r.flush_key("cap:d:s:app1").expect("flush app1");
            let _ = done_tx.send(report.records);
        });
        let again = done.recv_timeout(std::time::Duration::from_secs(5));
        open_gate.send(()).expect("open the gate");
        assert_eq!(
            again,
            Ok(10),
            "app1 was flushed again while app2's write was held"
        );
        assert_eq!(flushing.join().expect("flush thread").records, 20);
    });
    r.close().expect("close");
    let seen = messages(&out);
    assert_eq!(seen.len(), 30);
    assert!(seen.values().all(|n| *n == 1), "no duplicates");
}

#[test]
fn unwritable_data_is_kept_on_local_disk_at_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let (r, _clock) = engine(dir.path(), &[("BufferSize", "1000")]);
    r.push((0..7).map(|i| log("a:b:c:d", i)).collect(), Vec::new())
        .expect("push");
    std::fs::write(out.join("capability=a"), b"blocker").expect("blocker");
    let report = r.close().expect("close keeps data");
    assert_eq!(report.records_to_recovery, 7);
    assert_eq!(r.stats().recovery_spilled, 1);
    let kept = common::parquet_files(&dir.path().join("recovery"));
    assert_eq!(kept.len(), 1, "the encoded file is on local disk");
    let rows = common::rows_with_parquet_crate(&kept);
    assert_eq!(rows.len(), 7);
    let (py_rows, _) = common::rows_with_pyarrow(&kept);
    assert_eq!(py_rows.len(), 7);
}

#[test]
fn recovery_attempts_bound_the_retries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let (r, _clock) = engine(
        dir.path(),
        &[
            ("BufferSize", "1000"),
            ("TryAutoRecover", "true"),
            ("RecoveryAttempts", "2"),
        ],
    );
    r.push(vec![log("a:b:c:d", 1)], Vec::new()).expect("push");
    std::fs::write(out.join("capability=a"), b"blocker").expect("blocker");
    r.flush().expect("flush");
    for _ in 0..3 {
        r.tick().expect("tick");
    }
    let stats = r.stats();
    assert_eq!(stats.recovery_backlog, 0, "given up after RecoveryAttempts");
    assert_eq!(
        stats.recovery_spilled, 1,
        "...but kept on local disk, not dropped"
    );
    assert_eq!(common::parquet_files(&dir.path().join("recovery")).len(), 1);
}

/// A message that snappy cannot shrink much (hex of a simple generator), so that the
/// encoded file of a batch holds about what its records did.
fn incompressible(i: usize, len: usize) -> String {
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut out = format!("{i} ");
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(&format!("{x:016x}"));
    }
    out
}

/// With the memory buffer and `TryAutoRecover` off (the default), files whose write
/// failed stay counted against the bound; once they keep the buffer three quarters full,
/// the background tick re-sends them anyway, so a target that was down for a while does
/// not leave the buffer refusing every push until close.
#[test]
fn failed_writes_filling_the_buffer_are_resent_without_try_auto_recover() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let (r, _clock) = engine(
        dir.path(),
        &[("BufferSize", "100000"), ("BufferMaxBytes", "1M")],
    );
    let big = |i: usize| {
        let mut l = log("a:b:c:d", i);
        l.message = incompressible(i, 1000);
        l
    };
    // Pushes records numbered from `from` until the buffer refuses one; how many went in.
    let fill = |from: usize| {
        (from..)
            .take_while(|&i| r.push(vec![big(i)], Vec::new()).is_ok())
            .count()
    };
    let mut accepted = fill(0);
    assert!(accepted > 300, "{accepted}");
    std::fs::write(out.join("capability=a"), b"blocker").expect("blocker");
    let report = r.flush().expect("flush");
    assert_eq!(report.records_to_recovery, accepted as u64);
    // The failed file holds most of the bound; new records fill the rest.
    let held = r.stats().buffer_bytes;
    assert!(held > 512 << 10, "the failed file is counted: {held}");
    accepted += fill(100_000);
    let late = big(999_999);
    let refused = r
        .push(vec![late.clone()], Vec::new())
        .expect_err("the failed file keeps the buffer full");
    assert!(refused.is_retryable());
    assert!(
        refused
            .to_string()
            .contains("of them files whose write failed, waiting in the recovery bucket"),
        "{refused}"
    );
    // Still down: the tick tries, keeps the file, and the buffer stays full.
    r.tick().expect("tick");
    assert_eq!(r.stats().recovery_backlog, 1);
    assert_eq!(r.stats().recovered, 0);
    // Back up: the next tick re-sends although TryAutoRecover is off, and pushes go in.
    std::fs::remove_file(out.join("capability=a")).expect("unblock");
    r.tick().expect("tick");
    let stats = r.stats();
    assert_eq!((stats.recovery_backlog, stats.recovered), (0, 1));
    assert_eq!(stats.files_written, 1, "the re-sent file counts as written");
    assert!(
        stats.records_written > 300,
        "re-sent records count as written: {}",
        stats.records_written
    );
    r.push(vec![late], Vec::new()).expect("room again");
    r.close().expect("close");
    let seen = messages(&out);
    assert_eq!(seen.len(), accepted + 1, "every accepted record written");
    assert!(seen.values().all(|n| *n == 1), "each once");
    assert_eq!(r.stats().records_written, accepted as u64 + 1);
}

/// A target that is down costs one write attempt per re-send round, not one per file
/// waiting (each can take a network timeout), the file that failed waits behind the
/// others, and at close with the target still down every file is kept on local disk.
#[test]
fn a_down_target_costs_one_attempt_per_round_and_close_keeps_every_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let (r, _clock, buffer) = engine_parts(
        dir.path(),
        &[("BufferSize", "1000"), ("TryAutoRecover", "true")],
        Background::Manual,
    );
    for (k, key) in ["a:b:c:d", "a:x:c:d", "a:y:c:d"].iter().enumerate() {
        r.push((0..5).map(|i| log(key, k * 10 + i)).collect(), Vec::new())
            .expect("push");
    }
    std::fs::write(out.join("capability=a"), b"blocker").expect("blocker");
    assert_eq!(r.flush().expect("flush").records_to_recovery, 15);
    use data2parquet::buffer::Buffer;
    let attempts = || {
        let mut a: Vec<u32> = buffer
            .get_recovery()
            .expect("recovery")
            .iter()
            .map(|i| i.attempts)
            .collect();
        a.sort();
        a
    };
    // `flush` re-sends too (TryAutoRecover): one attempt in that round.
    assert_eq!(attempts(), vec![1, 1, 2]);
    r.tick().expect("tick");
    assert_eq!(
        attempts(),
        vec![1, 2, 2],
        "the next round tried another file"
    );
    r.tick().expect("tick");
    assert_eq!(attempts(), vec![2, 2, 2]);
    let report = r.close().expect("close keeps the files");
    assert_eq!(report.records_to_recovery, 0);
    assert_eq!(r.stats().recovery_spilled, 3);
    let kept = common::parquet_files(&dir.path().join("recovery"));
    assert_eq!(kept.len(), 3);
    assert_eq!(common::rows_with_parquet_crate(&kept).len(), 15);
    assert_eq!(common::rows_with_pyarrow(&kept).0.len(), 15);
}

#[test]
fn memory_bound_gives_backpressure_then_accepts_after_flush() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (r, _clock) = engine(
        dir.path(),
        &[("BufferSize", "100000"), ("BufferMaxBytes", "1M")],
    );
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..10_000 {
        let mut l = log("a:b:c:d", i);
        l.message = format!("{i} {}", "x".repeat(1000));
        match r.push(vec![l], Vec::new()) {
            Ok(n) => accepted += n,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let err = refused.expect("the bound is reached");
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("buffer full"), "{err}");
    assert!(accepted > 100);
    r.flush().expect("flush");
    let mut l = log("a:b:c:d", 999_999);
    l.message = "after".into();
    r.push(vec![l], Vec::new())
        .expect("room again after a flush");
    r.close().expect("close");
    let seen = messages(&dir.path().join("out"));
    assert_eq!(
        seen.len(),
        accepted + 1,
        "every accepted record written once"
    );
}

/// Under the memory bound, background flushing starts once the buffer is three quarters
/// full (not at half), takes the biggest keys first, and brings it down to about half.
#[test]
fn pressure_flushes_start_at_three_quarters_and_take_the_biggest_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (r, _clock) = engine_with(
        dir.path(),
        &[
            ("BufferSize", "100000"),
            ("BufferMaxBytes", "1M"),
            ("FlushInterval", "0"),
        ],
        Background::Thread,
    );
    let limit = 1u64 << 20; // BufferMaxBytes=1M
    let out = dir.path().join("out");
    let mut i = 0;
    let mut push_until = |r: &Receiver, key: &str, fraction: f64| {
        while (r.stats().buffer_bytes as f64) < limit as f64 * fraction {
            let mut l = log(key, i);
            l.message = format!("{i} {}", "x".repeat(2000));
            r.push(vec![l], Vec::new()).expect("below the bound");
            i += 1;
        }
    };
    // Three small keys, then one big one: 70% full in all.
    push_until(&r, "a:b:c:small1", 0.05);
    push_until(&r, "a:b:c:small2", 0.10);
    push_until(&r, "a:b:c:small3", 0.15);
    push_until(&r, "a:b:c:big", 0.70);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        common::parquet_files(&out).is_empty(),
        "nothing flushed below three quarters"
    );
    assert_eq!(r.stats().files_written, 0);
    push_until(&r, "a:b:c:big", 0.80);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // `flushes` counts a key's batch once it is written and cleared from the buffer.
    while r.stats().flushes == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let stats = r.stats();
    assert!(stats.flushes > 0, "flushed past three quarters");
    assert!(stats.files_written > 0);
    assert!(
        stats.buffer_bytes <= limit / 2 + limit / 10,
        "brought down to about half: {} of {limit}",
        stats.buffer_bytes
    );
    let files = common::parquet_files(&out);
    assert!(
        files.iter().all(|f| f.to_string_lossy().contains("big")),
        "the biggest key goes first and alone is enough: {files:?}"
    );
    let written = stats.records_written as usize;
    r.close().expect("close");
    let seen = messages(&out);
    assert_eq!(seen.len(), i, "every record written once in the end");
    assert!(written > 0 && written < i);
}

#[test]
fn dead_letters_are_written_as_ndjson() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (r, _clock) = engine(dir.path(), &[]);
    let entry = r.dlq_entry(None, "line 3 of x: broken JSON".into(), "{oops".into());
    r.push(vec![log("a:b:c:d", 1)], vec![entry]).expect("push");
    r.close().expect("close");
    let files = common::files_with_ext(&dir.path().join("out/dlq"), "ndjson");
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(&files[0]).expect("read");
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("json line");
    assert_eq!(v["raw"], "{oops");
    assert_eq!(v["reason"], "line 3 of x: broken JSON");
    assert_eq!(r.stats().records_dlq, 1);
}

#[test]
fn closed_engine_refuses_pushes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (r, _clock) = engine(dir.path(), &[]);
    r.close().expect("close");
    let err = r
        .push(vec![log("a:b:c:d", 1)], Vec::new())
        .expect_err("closed");
    assert!(!err.is_retryable());
}

#[test]
fn background_thread_flushes_by_size_and_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(dir.path(), &[("FlushInterval", "1")]);
    let r = Receiver::from_config(c).expect("engine");
    r.push((0..10).map(|i| log("a:b:c:d", i)).collect(), Vec::new())
        .expect("push");
    r.push(vec![log("e:f:g:h", 1)], Vec::new()).expect("push");
    // Wait (bounded) for the background thread; this checks behaviour, not speed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while r.stats().records_written < 11 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(r.stats().records_written, 11);
    r.close().expect("close");
}

/// The rows of every file below `dir`, grouped by directory (capability and hour) and
/// partition key, in file and row order.
fn rows_by_partition(dir: &Path) -> std::collections::BTreeMap<String, Vec<serde_json::Value>> {
    let mut out: std::collections::BTreeMap<String, Vec<serde_json::Value>> = Default::default();
    for f in common::parquet_files(dir) {
        let part = f
            .parent()
            .expect("in a directory")
            .strip_prefix(dir)
            .expect("below the root")
            .display()
            .to_string();
        for row in common::rows_with_parquet_crate(&[f]) {
            let key: Vec<&str> = [
                "business_capability",
                "business_domain",
                "business_service",
                "application_service",
            ]
            .iter()
            .map(|c| row[*c].as_str().expect("key column"))
            .collect();
            let group = format!("{part} {}", key.join(":"));
            out.entry(group).or_default().push(row);
        }
    }
    out
}

#[test]
fn borrowed_pushes_write_exactly_what_owned_pushes_write() {
    use data2parquet::input::decode_json_lines;
    use data2parquet::record::generator::Generator;
    // Realistic records (lists, maps, unicode, escapes, absent fields), a few without a
    // time (filled with the arrival time), in many keys.
    let mut generator = Generator::new(11);
    let mut text = String::new();
    for i in 0..3000 {
        let line = generator.next_line();
        if i % 97 == 0 {
            let mut v: serde_json::Value = serde_json::from_str(&line).expect("json");
            v.as_object_mut().expect("object").remove("time");
            text.push_str(&v.to_string());
        } else {
            text.push_str(&line);
        }
        text.push('\n');
    }
    let extra = [("BufferSize", "100000"), ("FlushInterval", "0")];
    let written = |push: &dyn Fn(&Receiver, &[u8])| {
        let dir = tempfile::tempdir().expect("tempdir");
        let (r, _clock) = engine(dir.path(), &extra);
        // In slices of 500 lines, as the entry points push.
        let lines: Vec<&str> = text.lines().collect();
        for part in lines.chunks(500) {
            push(&r, part.join("\n").as_bytes());
        }
        assert_eq!(r.stats().records_in, 3000);
        r.close().expect("close");
        assert_eq!(r.stats().records_written, 3000);
        rows_by_partition(&dir.path().join("out"))
    };
    let owned = written(&|r, data| {
        let (logs, bad) = decode_json_lines(data, 1, "t", data2parquet::config::RecordType::Log);
        assert!(bad.is_empty());
        let logs = logs
            .into_iter()
            .map(data2parquet::LogRef::into_owned)
            .collect();
        r.push(logs, Vec::new()).expect("push");
    });
    let direct = written(&|r, data| {
        let (logs, _) = decode_json_lines(data, 1, "t", data2parquet::config::RecordType::Log);
        r.push_refs(logs, Vec::new()).expect("push_refs");
    });
    let in_two_halves = written(&|r, data| {
        let (mut logs, _) = decode_json_lines(data, 1, "t", data2parquet::config::RecordType::Log);
        let prepared = r.prepare_borrowed(&mut logs, Vec::new()).expect("prepare");
        assert!(matches!(
            prepared,
            data2parquet::receiver::PreparedRefs::Direct { .. }
        ));
        r.push_borrowed(&prepared, Some(std::time::Duration::from_secs(5)))
            .expect("push");
    });
    let sliced = written(&|r, data| {
        let (slices, lines) = data2parquet::input::line_slices(data, 64);
        let estimate = data2parquet::receiver::estimate_counted_bytes(data.len(), lines);
        let mut slices = slices.into_iter();
        r.push_refs_sliced(estimate, None, || {
            let (part, first) = slices.next()?;
            let (logs, bad) =
                decode_json_lines(part, first, "t", data2parquet::config::RecordType::Log);
            assert!(bad.is_empty());
            Some((logs, Vec::new()))
        })
        .expect("push_refs_sliced");
    });
    let count = |m: &std::collections::BTreeMap<String, Vec<serde_json::Value>>| -> usize {
        m.values().map(Vec::len).sum()
    };
    assert_eq!(count(&owned), 3000);
    assert!(owned.len() > 5, "{} partitions", owned.len());
    assert_eq!(direct, owned);
    assert_eq!(in_two_halves, owned);
    assert_eq!(sliced, owned);
}

#[test]
fn sliced_pushes_are_admitted_whole_and_counted_at_their_real_size() {
    use data2parquet::LogRef;
    use data2parquet::receiver::estimate_counted_bytes;
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = [
        ("BufferSize", "100000"),
        ("FlushInterval", "0"),
        ("BufferMaxBytes", "1M"),
    ];
    let (r, _clock) = engine(dir.path(), &extra);
    let keys = ["a:b:c:d", "e:f:g:h", "i:j:k:l"];
    // ~950 counted bytes each: 600 of them fill more than half of the bound.
    let logs: Vec<Log> = (0..600)
        .map(|i| {
            let mut l = log(keys[i % 3], i);
            l.message = format!("{} {}", l.message, "x".repeat(500));
            l
        })
        .collect();
    let slices = |from: usize, to: usize| -> Vec<Vec<LogRef<'_>>> {
        logs[from..to]
            .chunks(256)
            .map(|c| c.iter().map(Log::borrowed).collect())
            .collect()
    };
    // The same records pushed at once count what they count in slices.
    let (other_dir, (whole, _)) = {
        let d = tempfile::tempdir().expect("tempdir");
        let e = engine(d.path(), &extra);
        (d, e)
    };
    whole
        .push_refs(logs.iter().map(Log::borrowed).collect(), Vec::new())
        .expect("push_refs");
    let counted = whole.stats().buffer_bytes;
    assert!(counted > 512 << 10, "{counted}");
    // A generous estimate and a short one (0) both settle to the real size.
    for (estimate, range) in [
        (estimate_counted_bytes(1 << 18, 300), (0, 300)),
        (0, (300, 600)),
    ] {
        let mut parts = slices(range.0, range.1).into_iter();
        let mut calls = 0;
        let n = r
            .push_refs_sliced(estimate, None, || {
                calls += 1;
                parts.next().map(|p| (p, Vec::new()))
            })
            .expect("sliced push");
        assert_eq!(n, 300);
        assert_eq!(calls, 3, "two slices of at most 256, then the end");
    }
    assert_eq!(r.stats().buffered_records, 600);
    assert_eq!(r.stats().buffer_bytes, counted, "counted as pushed at once");
    // A reservation that cannot fit refuses the whole input before any of it is decoded.
    let mut called = false;
    let refused = r.push_refs_sliced(600 << 10, None, || {
        called = true;
        None
    });
    assert!(
        matches!(refused, Err(data2parquet::Error::BufferFull { .. })),
        "{refused:?}"
    );
    assert!(!called, "nothing was decoded");
    assert_eq!(r.stats().buffered_records, 600);
    assert_eq!(
        r.stats().buffer_bytes,
        counted,
        "the refused reservation is not kept"
    );
    assert_eq!(r.stats().push_refused, 1);
    r.close().expect("close");
    let seen = messages(&dir.path().join("out"));
    assert_eq!(seen.len(), 600);
    assert!(seen.values().all(|n| *n == 1), "each record once");
    assert_eq!(r.stats().buffer_bytes, 0, "everything given back");
    whole.close().expect("close");
    drop(other_dir);
}

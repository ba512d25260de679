//! The Redis buffer against a real `redis-server` started on a free loopback port:
//! every Buffer operation, locks, two instances sharing keys, a Redis restart during
//! ingestion, a process killed mid-run, clear errors for a bad password or host.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use data2parquet::buffer::redis::RedisBuffer;
use data2parquet::buffer::{Buffer, DLQ_LOCK, DlqEntry, PushBatch, Record, RecoveryItem};
use data2parquet::clock::SystemClock;
use data2parquet::receiver::{Background, PreparedRefs};
use data2parquet::writer::file::FileWriter;
use data2parquet::{Config, Log, Receiver};

fn config(redis: &str, out: &Path, extra: &[(&str, &str)]) -> Config {
    let out = out.display().to_string();
    let mut pairs = vec![
        ("BufferType", "redis"),
        ("RedisHost", redis),
        ("WriterFilePath", out.as_str()),
        ("BufferSize", "50"),
        ("RedisTimeout", "2"),
    ];
    pairs.extend_from_slice(extra);
    Config::from_pairs(pairs).expect("config")
}

/// A Redis buffer named `instance` (its lock identity), with `extra` settings.
fn named(redis: &str, out: &Path, instance: &str, extra: &[(&str, &str)]) -> RedisBuffer {
    let mut pairs = vec![("RedisLockInstanceName", instance)];
    pairs.extend_from_slice(extra);
    RedisBuffer::connect(&config(redis, out, &pairs)).expect(instance)
}

fn log(i: usize, key: usize) -> Log {
    Log {
        time: "2024-05-01T10:00:00Z".into(),
        level: "info".into(),
        message: format!("m-{i}"),
        business_capability: format!("cap{key}"),
        business_domain: "d".into(),
        business_service: "s".into(),
        application_service: "a".into(),
        ..Log::default()
    }
}

fn receiver(cfg: Config) -> Receiver {
    let buffer: Arc<dyn Buffer> = Arc::new(RedisBuffer::connect(&cfg).expect("connect"));
    let writer = Arc::new(FileWriter::new(&cfg.writer_file_path));
    Receiver::new(
        cfg,
        buffer,
        writer,
        Arc::new(SystemClock),
        Background::Manual,
    )
    .expect("receiver")
}

fn messages(out: &Path) -> HashMap<String, usize> {
    let files = common::parquet_files(out);
    let mut seen = HashMap::new();
    for row in common::rows_with_parquet_crate(&files) {
        *seen
            .entry(row["message"].as_str().expect("message").to_string())
            .or_default() += 1;
    }
    let (py, _) = common::rows_with_pyarrow(&files);
    assert_eq!(py.len(), seen.values().sum::<usize>(), "pyarrow agrees");
    seen
}

#[test]
fn every_buffer_operation() {
    let redis = common::start_redis(&common::RedisOptions::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let a = named(&redis.addr(), dir.path(), "a", &[]);
    let b = named(&redis.addr(), dir.path(), "b", &[]);
    let recs: Vec<Record> = (0..5).map(|i| Arc::new(log(i, 1))).collect();
    let entry = DlqEntry {
        key: "k".into(),
        reason: "r".into(),
        raw: "{bad".into(),
        time: "t".into(),
    };
    let lens = a
        .push(PushBatch {
            groups: vec![
                ("k1".into(), recs.clone()),
                ("k2".into(), recs[..2].to_vec()),
            ],
            dlq: vec![entry.clone()],
            encoded: None,
        })
        .expect("push");
    assert_eq!(lens, vec![5, 2]);
    assert_eq!(
        b.keys().expect("keys"),
        vec!["k1", "k2"],
        "shared between instances"
    );
    assert_eq!(b.len("k1").expect("len"), 5);
    let got = b.get("k1", 3).expect("get");
    assert_eq!(
        got.iter().map(|r| r.message.as_str()).collect::<Vec<_>>(),
        ["m-0", "m-1", "m-2"]
    );
    assert_eq!(*got[0], *recs[0], "records round-trip through Redis");
    let id_before = a.batch_id("k1").expect("id");
    assert_eq!(
        a.batch_id("k1"),
        Some(id_before.clone()),
        "same batch, same name"
    );
    // Only the lock owner may clear.
    assert!(b.clear("k1", 3).is_err(), "b does not hold the lock of k1");
    assert_eq!(b.len("k1").expect("len"), 5, "nothing removed");
    assert!(b.try_lock("k1").expect("lock"));
    b.clear("k1", 3).expect("clear");
    b.unlock("k1").expect("unlock");
    assert_ne!(a.batch_id("k1"), Some(id_before), "next batch, next name");
    assert_eq!(a.get("k1", 10).expect("get").len(), 2);
    assert!(a.try_lock("k2").expect("lock"));
    a.clear("k2", 2).expect("clear");
    a.unlock("k2").expect("unlock");
    assert_eq!(
        a.keys().expect("keys"),
        vec!["k1"],
        "an emptied key leaves the set"
    );
    assert_eq!(a.get_dlq(10).expect("dlq"), vec![entry]);
    a.clear_dlq(1).expect("clear dlq");
    assert!(a.get_dlq(10).expect("dlq").is_empty());
    let item = RecoveryItem {
        id: "r1".into(),
        key: "k1".into(),
        name: "n".into(),
        data: vec![1, 2, 255].into(),
        records: 2,
        attempts: 1,
        last_error: "e".into(),
    };
    a.push_recovery(item.clone()).expect("recovery");
    assert_eq!(b.get_recovery().expect("get"), vec![item]);
    assert_eq!(b.recovery_len().expect("len"), 1);
    b.remove_recovery("r1").expect("remove");
    assert_eq!(a.recovery_len().expect("len"), 0);
    // Locks: exclusive, re-entrant for the owner, released by compare-and-delete.
    assert!(a.try_lock("k1").expect("lock"));
    assert!(!b.try_lock("k1").expect("lock"), "b must not take a's lock");
    assert!(a.try_lock("k1").expect("lock"), "the owner keeps it");
    b.unlock("k1").expect("unlock by non-owner is a no-op");
    assert!(!b.try_lock("k1").expect("lock"));
    a.unlock("k1").expect("unlock");
    assert!(b.try_lock("k1").expect("lock"));
    assert!(a.is_ready() && a.durable());
}

#[test]
fn a_crashed_owners_lock_expires_and_a_held_lock_is_renewed() {
    let redis = common::start_redis(&common::RedisOptions::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let ttl = [("RedisLockTTL", "1")];
    let a = named(&redis.addr(), dir.path(), "a", &ttl);
    let b = named(&redis.addr(), dir.path(), "b", &ttl);
    assert!(a.try_lock("k").expect("lock"));
    // While a lives, its renewal thread keeps the 1 s lock alive well past the TTL.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!b.try_lock("k").expect("lock"), "renewed while held");
    // a crashes: no unlock, no more renewals.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.try_lock("k").expect("lock") {
        assert!(Instant::now() < deadline, "the lock never expired");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn instances_take_turns_draining_the_dlq() {
    let redis = common::start_redis(&common::RedisOptions::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let a = named(&redis.addr(), dir.path(), "a", &[]);
    let other = named(&redis.addr(), dir.path(), "b", &[]);
    let b = receiver(config(
        &redis.addr(),
        dir.path(),
        &[("RedisLockInstanceName", "b")],
    ));
    let entries: Vec<DlqEntry> = (0..3)
        .map(|i| DlqEntry {
            key: "cap:d:s:a".into(),
            reason: format!("broken {i}"),
            raw: format!("{{bad {i}"),
            time: "2024-05-01T10:00:00Z".into(),
        })
        .collect();
    a.push(PushBatch {
        groups: Vec::new(),
        dlq: entries.clone(),
        encoded: None,
    })
    .expect("push");
    // a is draining the DLQ: b neither writes nor trims those entries meanwhile.
    assert!(a.try_lock(DLQ_LOCK).expect("lock"));
    b.flush().expect("flush");
    assert!(common::files_with_ext(dir.path(), "ndjson").is_empty());
    let refused = other
        .clear_dlq(3)
        .expect_err("another instance holds the DLQ lock");
    assert!(refused.to_string().contains("DLQ lock"), "{refused}");
    assert_eq!(a.get_dlq(10).expect("get"), entries);
    // The holder may trim; once it lets go, b drains what is left.
    a.clear_dlq(1).expect("holder clears");
    a.unlock(DLQ_LOCK).expect("unlock");
    b.flush().expect("flush");
    assert!(a.get_dlq(10).expect("get").is_empty());
    let files = common::files_with_ext(dir.path(), "ndjson");
    let written: Vec<String> = files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .expect("read")
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(written.len(), 2, "{written:?}");
    assert!(written[0].contains("broken 1") && written[1].contains("broken 2"));
    b.close().expect("close");
}

#[test]
fn two_receivers_share_keys_and_write_every_record_once() {
    let redis = common::start_redis(&common::RedisOptions::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let r1 = Arc::new(receiver(config(
        &redis.addr(),
        &out,
        &[("RedisLockInstanceName", "one")],
    )));
    let r2 = Arc::new(receiver(config(
        &redis.addr(),
        &out,
        &[("RedisLockInstanceName", "two")],
    )));
    let total = 2000;
    let workers: Vec<_> = [r1.clone(), r2.clone()]
        .into_iter()
        .enumerate()
        .map(|(w, r)| {
            std::thread::spawn(move || {
                for chunk in 0..10 {
                    let records: Vec<Log> = (0..100)
                        .map(|i| {
                            let n = w * 1000 + chunk * 100 + i;
                            log(n, n % 3)
                        })
                        .collect();
                    r.push(records, Vec::new()).expect("push");
                    r.tick().expect("tick flushes full batches");
                }
                r.flush().expect("flush")
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    r1.flush().expect("final flush");
    r1.close().expect("close");
    r2.close().expect("close");
    let seen = messages(&out);
    assert_eq!(seen.len(), total);
    assert!(seen.values().all(|n| *n == 1), "every record exactly once");
}

#[test]
fn redis_restart_during_ingestion_loses_nothing() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let opts = common::RedisOptions {
        appendonly: true,
        dir: Some(data_dir.path().to_path_buf()),
        ..Default::default()
    };
    let mut redis = common::start_redis(&opts);
    let port = redis.port;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let r = receiver(config(&redis.addr(), &out, &[("BufferSize", "100000")]));
    r.push((0..100).map(|i| log(i, 0)).collect(), Vec::new())
        .expect("push");
    // Redis goes away: pushes fail with a retryable error and nothing is taken.
    let _ = redis.child.kill();
    let _ = redis.child.wait();
    let err = r
        .push((100..200).map(|i| log(i, 0)).collect(), Vec::new())
        .expect_err("redis is down");
    assert!(err.is_retryable(), "{err}");
    assert!(!r.buffer_ready());
    // It comes back (same port, same AOF): the same push succeeds by itself.
    let _redis2 = common::start_redis(&common::RedisOptions {
        port: Some(port),
        ..opts
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match r.push((100..200).map(|i| log(i, 0)).collect(), Vec::new()) {
            Ok(_) => break,
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                assert!(Instant::now() < deadline, "never reconnected: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    r.close().expect("close");
    let seen = messages(&out);
    assert_eq!(
        seen.len(),
        200,
        "the records pushed before the restart survived (AOF)"
    );
    assert!(seen.values().all(|n| *n == 1));
}

#[test]
fn wrong_password_and_unreachable_host_are_clear_errors() {
    let redis = common::start_redis(&common::RedisOptions {
        password: Some("s3cret-pw".into()),
        ..Default::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let err = RedisBuffer::connect(&config(
        &redis.addr(),
        dir.path(),
        &[("RedisPassword", "wrong-pw")],
    ))
    .err()
    .expect("wrong password");
    let msg = err.to_string();
    assert!(msg.contains("RedisPassword"), "{msg}");
    assert!(
        !msg.contains("wrong-pw"),
        "the password must not be printed: {msg}"
    );
    RedisBuffer::connect(&config(
        &redis.addr(),
        dir.path(),
        &[("RedisPassword", "s3cret-pw")],
    ))
    .expect("right password");
    let closed_port = common::free_port();
    let err = RedisBuffer::connect(&config(
        &format!("127.0.0.1:{closed_port}"),
        dir.path(),
        &[],
    ))
    .err()
    .expect("nothing listens there");
    let msg = err.to_string();
    assert!(
        msg.contains("RedisHost") && msg.contains(&closed_port.to_string()),
        "{msg}"
    );
}

#[test]
fn a_process_killed_mid_run_loses_nothing() {
    let redis = common::start_redis(&common::RedisOptions::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let input = dir.path().join("in.jsonl");
    let lines: String = (0..60_000)
        .map(|i| {
            format!(
                "{{\"time\":\"2024-05-01T10:00:00Z\",\"message\":\"m-{i}\",\"business_capability\":\"cap{}\",\"stack_trace\":\"{}\"}}\n",
                i % 4,
                "x".repeat(200)
            )
        })
        .collect();
    std::fs::write(&input, lines).expect("input");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_json2parquet"))
        .args(["--set", "BufferType=redis", "--set"])
        .arg(format!("RedisHost={}", redis.addr()))
        .args([
            "--set",
            "BufferSize=500",
            "--set",
            "RedisLockInstanceName=victim",
            "--set",
        ])
        .arg(format!("WriterFilePath={}", out.display()))
        .arg(&input)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("json2parquet");
    // Kill it -9 once it has written some files but not finished.
    let deadline = Instant::now() + Duration::from_secs(60);
    while common::parquet_files(&out).len() < 3 {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "finished before it could be killed"
        );
        assert!(Instant::now() < deadline, "no file written");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("kill -9");
    let _ = child.wait();
    // Another instance takes over once the victim's locks expire (its RedisLockTTL: the
    // default 1.5 x FlushInterval = 8 s), finishing the work the victim left.
    let r = receiver(config(
        &redis.addr(),
        &out,
        &[
            ("BufferSize", "500"),
            ("RedisLockInstanceName", "rescuer"),
            ("RedisLockTTL", "2"),
        ],
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = r.flush().expect("flush");
        if report.keys_locked_elsewhere.is_empty() && r.stats().buffered_records == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "locks never expired");
        std::thread::sleep(Duration::from_millis(200));
    }
    r.close().expect("close");
    // What was pushed is a prefix of the input (pushes are all-or-nothing, in order), and
    // every pushed record is in exactly one row.
    let seen = messages(&out);
    assert!(seen.values().all(|n| *n == 1), "no duplicates");
    let n = seen.len();
    assert!(n > 0);
    for i in 0..n {
        assert!(
            seen.contains_key(&format!("m-{i}")),
            "m-{i} lost (have {n})"
        );
    }
}

#[test]
fn borrowed_pushes_store_what_owned_pushes_store() {
    use data2parquet::input::decode_json_lines;
    use data2parquet::record::generator::Generator;
    let redis = common::start_redis(&common::RedisOptions::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        &redis.addr(),
        &dir.path().join("out"),
        &[("BufferSize", "100000")],
    );
    let buffer = Arc::new(RedisBuffer::connect(&cfg).expect("connect"));
    let r = Receiver::new(
        cfg.clone(),
        buffer.clone(),
        Arc::new(FileWriter::new(&cfg.writer_file_path)),
        Arc::new(SystemClock),
        Background::Manual,
    )
    .expect("receiver");
    let mut generator = Generator::new(5);
    let text: String = (0..400).map(|_| generator.next_line() + "\n").collect();
    // Everything buffered, key by key in order; then emptied for the next way of pushing.
    let take_all = || -> Vec<(String, Vec<Log>)> {
        let mut keys = buffer.keys().expect("keys");
        keys.sort();
        keys.into_iter()
            .map(|k| {
                let records: Vec<Log> = buffer
                    .get(&k, 100_000)
                    .expect("get")
                    .into_iter()
                    .map(|r| (*r).clone())
                    .collect();
                // Clearing is for the holder of the key's flush lock.
                assert!(buffer.try_lock(&k).expect("lock"));
                buffer.clear(&k, records.len()).expect("clear");
                buffer.unlock(&k).expect("unlock");
                (k, records)
            })
            .collect()
    };
    let (logs, _) = decode_json_lines(
        text.as_bytes(),
        1,
        "t",
        data2parquet::config::RecordType::Log,
    );
    r.push(
        logs.into_iter().map(|l| l.into_owned()).collect(),
        Vec::new(),
    )
    .expect("owned push");
    let owned = take_all();
    assert_eq!(owned.iter().map(|(_, r)| r.len()).sum::<usize>(), 400);
    let (logs, _) = decode_json_lines(
        text.as_bytes(),
        1,
        "t",
        data2parquet::config::RecordType::Log,
    );
    r.push_refs(logs, Vec::new()).expect("push_refs");
    assert_eq!(take_all(), owned);
    let (mut logs, _) = decode_json_lines(
        text.as_bytes(),
        1,
        "t",
        data2parquet::config::RecordType::Log,
    );
    let prepared = r.prepare_borrowed(&mut logs, Vec::new()).expect("prepare");
    match &prepared {
        PreparedRefs::Batch(batch) => assert!(batch.encoded.is_some(), "encoded when prepared"),
        other => panic!("Redis takes an encoded batch, not {other:?}"),
    }
    r.push_borrowed(&prepared, Some(Duration::from_secs(5)))
        .expect("push");
    assert_eq!(take_all(), owned);
    assert_eq!(r.stats().records_in, 1200);
}

#[test]
fn a_foreign_entry_in_a_list_is_written_as_its_message_not_lost() {
    let redis = common::start_redis(&common::RedisOptions::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let r = receiver(config(&redis.addr(), &out, &[]));
    r.push((0..3).map(|i| log(i, 0)).collect(), Vec::new())
        .expect("push");
    // Something else appended to the key's list: not JSON, not UTF-8 either.
    let client = redis::Client::open(format!("redis://{}", redis.addr())).expect("client");
    let mut c = client.get_connection().expect("connect");
    redis::cmd("RPUSH")
        .arg("data:cap0:d:s:a")
        .arg(b"not json {\xff".as_slice())
        .query::<i64>(&mut c)
        .expect("rpush");
    r.flush().expect("flush");
    let seen = messages(&out);
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen.contains_key("not json {\u{fffd}"), "{seen:?}");
    assert_eq!(r.stats().records_written, 4);
    r.close().expect("close");
}

/// The harness starts the server it talks to: a port that merely accepts connections (here
/// one this test holds) is not taken for its redis-server, and a server that cannot bind
/// its port fails loudly instead of letting the test talk to whoever holds it.
#[test]
fn harness_tells_its_own_server_from_another_listener() {
    let redis = common::start_redis(&Default::default());
    assert!(common::pid_listens(redis.child.id(), redis.port));
    let other = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = other.local_addr().expect("addr").port();
    assert!(common::pid_listens(std::process::id(), taken));
    assert!(!common::pid_listens(redis.child.id(), taken));
    // A server asked for a port that is taken exits, and the harness says so.
    let outcome = std::panic::catch_unwind(|| {
        common::start_redis(&common::RedisOptions {
            port: Some(taken),
            ..Default::default()
        })
    });
    let message = outcome
        .err()
        .expect("a redis-server on a taken port must not pass");
    let text = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(text.contains("exited without listening"), "{text}");
}

//! The HTTP server end to end: the built `http-server` binary on a free loopback port, a
//! real HTTP client, every endpoint and status code, concurrent clients, graceful shutdown;
//! files read back with the `parquet` crate and pyarrow.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct ServerProc {
    child: Option<Child>,
    base: String,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServerProc {
    /// Starts the server on a free port; it counts as up once this very process listens
    /// there ([`common::start_listening`], which starts it again on another port if it
    /// exits because the port was taken meanwhile).
    fn start(sets: &[(&str, &str)]) -> ServerProc {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let log = dir.path().join("server.log");
        let describe = || {
            format!(
                "http-server (its log: {})",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        };
        let (child, port) =
            common::start_listening(&describe, None, Duration::from_secs(20), |port| {
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_http-server"));
                cmd.arg("--port")
                    .arg(port.to_string())
                    .arg("--set")
                    .arg(format!("WriterFilePath={}", out.display()))
                    .arg("--set")
                    .arg(format!(
                        "RecoveryPath={}",
                        dir.path().join("recovery").display()
                    ))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log).expect("server log"));
                for (k, v) in sets {
                    cmd.arg("--set").arg(format!("{k}={v}"));
                }
                cmd.spawn().expect("start http-server")
            });
        ServerProc {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            out,
            _dir: dir,
        }
    }

    /// SIGTERM, then wait for a clean exit; returns the exit code.
    fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                return s.code();
            }
            assert!(
                Instant::now() < deadline,
                "server did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// (status, body, Retry-After header)
fn post(base: &str, path: &str, body: &str) -> (u16, String, Option<String>) {
    let mut resp = agent()
        .post(&format!("{base}{path}"))
        .header("Content-Type", "application/json")
        .send(body)
        .expect("request");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, text, retry)
}

fn get(base: &str, path: &str) -> (u16, String) {
    let mut resp = agent()
        .get(&format!("{base}{path}"))
        .call()
        .expect("request");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, text)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Every message in the Parquet files under `out`, with its count; checked with both readers.
fn messages(out: &Path) -> HashMap<String, usize> {
    let files = common::parquet_files(out);
    let mut seen = HashMap::new();
    for row in common::rows_with_parquet_crate(&files) {
        *seen
            .entry(row["message"].as_str().expect("message").to_string())
            .or_default() += 1;
    }
    let (py_rows, _) = common::rows_with_pyarrow(&files);
    assert_eq!(
        py_rows.len(),
        seen.values().sum::<usize>(),
        "pyarrow reads as many rows"
    );
    seen
}

#[test]
fn every_endpoint_and_status_code() {
    let mut s = ServerProc::start(&[
        ("BufferSize", "100000"),
        ("FlushInterval", "0"),
        ("MaxBodyBytes", "64K"),
    ]);
    let (code, body) = get(&s.base, "/healthcheck/");
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["status"], "ok");

    let (code, body, _) = post(&s.base, "/record/", r#"{"message":"one","level":"info"}"#);
    assert_eq!(code, 201, "{body}");
    assert_eq!(json(&body)["accepted"], 1);

    let (code, body, _) = post(&s.base, "/record/", r#"{"message": "broken"#);
    assert_eq!(code, 400);
    assert!(
        json(&body)["error"]
            .as_str()
            .expect("error")
            .contains("broken JSON"),
        "{body}"
    );
    let (code, body, _) = post(&s.base, "/record/", "[1,2]");
    assert_eq!(code, 400);
    assert!(body.contains("not a JSON object"), "{body}");

    let lines = "{\"message\":\"b1\"}\n{\"message\":\"b2\"}\nnot json\n{\"msg\":\"b3\",\"http_response\":500}\n";
    let (code, body, _) = post(&s.base, "/records/", lines);
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["accepted"], 3);
    assert_eq!(v["rejected"], 1);
    assert_eq!(v["rejects"][0]["what"], "line 3 of request");

    let (code, body, _) = post(
        &s.base,
        "/records/",
        r#"[{"message":"a1"},{"message":"a2"}]"#,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["accepted"], 2);
    let (code, body, _) = post(&s.base, "/records/", r#"{"logs":[{"message":"l1"}]}"#);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["accepted"], 1);
    let (code, _, _) = post(&s.base, "/records/", "  \n");
    assert_eq!(code, 400, "empty batch");

    let big = format!("{{\"message\":\"{}\"}}", "x".repeat(100 * 1024));
    let (code, _, _) = post(&s.base, "/record/", &big);
    assert_eq!(code, 413, "over MaxBodyBytes");

    let (code, body, _) = post(&s.base, "/flush/", "");
    assert_eq!(code, 200, "{body}");
    let report = json(&body);
    assert_eq!(report["records"], 7, "{body}");
    assert!(report["files"].as_u64().expect("files") >= 1);

    let (code, text) = get(&s.base, "/metrics");
    assert_eq!(code, 200);
    assert!(
        text.contains("# TYPE data2parquet_records_received_total counter"),
        "{text}"
    );
    assert!(
        text.contains("data2parquet_records_received_total 7"),
        "{text}"
    );
    assert!(
        text.contains("data2parquet_records_written_total 7"),
        "{text}"
    );
    assert!(
        text.contains("data2parquet_records_dead_lettered_total 1"),
        "{text}"
    );
    assert!(
        text.contains("data2parquet_flush_duration_seconds_count"),
        "{text}"
    );

    // The writer's directory disappears: not ready -> 503; back -> 200.
    std::fs::rename(&s.out, s.out.with_extension("moved")).expect("move out");
    let (code, body) = get(&s.base, "/healthcheck/");
    assert_eq!(code, 503, "{body}");
    assert_eq!(json(&body)["writer"]["ready"], false);
    std::fs::rename(s.out.with_extension("moved"), &s.out).expect("move back");
    assert_eq!(get(&s.base, "/healthcheck/").0, 200);

    assert_eq!(s.terminate(), Some(0));
    let seen = messages(&s.out);
    let mut got: Vec<&str> = seen.keys().map(String::as_str).collect();
    got.sort();
    assert_eq!(got, ["a1", "a2", "b1", "b2", "b3", "l1", "one"]);
    assert!(seen.values().all(|n| *n == 1));
    let dlq = common::files_with_ext(&s.out.join("dlq"), "ndjson");
    assert_eq!(dlq.len(), 1, "the rejected line is in the DLQ");
}

/// Hex noise so the Parquet file is as large as the input (see the plugin test).
fn noise(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b"0123456789abcdef"[(x & 15) as usize])
        })
        .collect()
}

#[test]
fn full_buffer_answers_503_with_retry_after_and_loses_nothing() {
    let mut s = ServerProc::start(&[
        ("BufferMaxBytes", "1M"),
        ("BufferSize", "1000000"),
        ("FlushInterval", "0"),
        ("TryAutoRecover", "true"),
        ("MaxBodyBytes", "4M"),
    ]);
    // A broken target keeps flushed data in memory as recovery data, so the bound is
    // reached whatever the timing of the background flush.
    std::fs::create_dir_all(&s.out).expect("out");
    let blocker = s.out.join("capability=unknown");
    std::fs::write(&blocker, b"not a directory").expect("blocker");
    let batch = |prefix: &str| -> String {
        (0..300)
            .map(|i| {
                format!(
                    "{{\"message\":\"{prefix}-{i}\",\"stack_trace\":\"{}\"}}\n",
                    noise(i, 2500)
                )
            })
            .collect()
    };
    let (code, body, _) = post(&s.base, "/records/", &batch("first"));
    assert_eq!(code, 200, "{body}");
    let second = batch("second");
    let (code, body, retry) = post(&s.base, "/records/", &second);
    assert_eq!(code, 503, "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(body.contains("buffer full"), "{body}");
    std::fs::remove_file(&blocker).expect("unblock");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body, _) = post(&s.base, "/records/", &second);
        if code == 200 {
            assert_eq!(json(&body)["accepted"], 300);
            break;
        }
        assert_eq!(code, 503, "{body}");
        assert!(
            Instant::now() < deadline,
            "never accepted after the target came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(s.terminate(), Some(0));
    let seen = messages(&s.out);
    assert_eq!(seen.len(), 600);
    assert!(seen.values().all(|n| *n == 1), "nothing twice");
}

#[test]
fn concurrent_clients_and_graceful_shutdown_flush_everything() {
    let mut s = ServerProc::start(&[("BufferSize", "100000"), ("FlushInterval", "3600")]);
    let base = s.base.clone();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let base = base.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let (code, body, _) = post(
                        &base,
                        "/record/",
                        &format!("{{\"message\":\"t{t}-{i}\",\"business_capability\":\"c{t}\"}}"),
                    );
                    assert_eq!(code, 201, "{body}");
                }
                let lines: String = (0..100)
                    .map(|i| format!("{{\"message\":\"t{t}-batch-{i}\"}}\n"))
                    .collect();
                let (code, body, _) = post(&base, "/records/", &lines);
                assert_eq!(code, 200, "{body}");
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    // Nothing has been flushed yet (FlushInterval 1 h): SIGTERM must write it all.
    assert!(common::parquet_files(&s.out).is_empty());
    assert_eq!(s.terminate(), Some(0));
    let seen = messages(&s.out);
    assert_eq!(seen.len(), 4 * 150);
    assert!(seen.values().all(|n| *n == 1));
}

#[test]
fn redis_buffer_takes_single_and_batch_posts() {
    let redis = common::start_redis(&common::RedisOptions::default());
    let addr = redis.addr();
    let mut s = ServerProc::start(&[
        ("BufferType", "redis"),
        ("RedisHost", addr.as_str()),
        ("BufferSize", "100000"),
        ("FlushInterval", "3600"),
    ]);
    for i in 0..20 {
        let (code, body, _) = post(
            &s.base,
            "/record/",
            &format!("{{\"message\":\"single-{i}\",\"tags\":[\"a\",\"b\\u00e9\"]}}"),
        );
        assert_eq!(code, 201, "{body}");
    }
    let lines: String = (0..300)
        .map(|i| format!("{{\"message\":\"batch-{i}\",\"args\":{{\"k\":\"v{i}\"}}}}\n"))
        .collect();
    let (code, body, _) = post(&s.base, "/records/", &lines);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["accepted"], 300);
    let (code, body, _) = post(&s.base, "/flush/", "");
    assert_eq!(code, 200, "{body}");
    let seen = messages(&s.out);
    assert_eq!(seen.len(), 320);
    assert!(seen.values().all(|n| *n == 1));
    assert_eq!(s.terminate(), Some(0));
}

#[test]
fn dynamic_records_over_http() {
    let mut s = ServerProc::start(&[("RecordType", "dynamic"), ("FlushInterval", "0")]);
    let (code, body, _) = post(
        &s.base,
        "/record/",
        r#"{"sku": "A-1", "qty": 2, "dims": {"w": 1.5}}"#,
    );
    assert_eq!(code, 201, "{body}");
    let batch = "{\"sku\": \"B-2\", \"qty\": 5}\n[1, 2]\n{\"sku\": \"C-3\", \"tags\": [\"x\"]}\n";
    let (code, body, _) = post(&s.base, "/records/", batch);
    assert!(code < 300, "{code} {body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("JSON report");
    assert_eq!(report["accepted"], 2, "{body}");
    let (code, body, _) = post(&s.base, "/flush/", "");
    assert_eq!(code, 200, "{body}");
    assert_eq!(s.terminate(), Some(0));
    let files = common::parquet_files(&s.out);
    let (rows, schema) = common::rows_with_pyarrow(&files);
    let mut skus: Vec<&str> = rows
        .iter()
        .map(|r| r["sku"].as_str().expect("sku"))
        .collect();
    skus.sort();
    assert_eq!(skus, ["A-1", "B-2", "C-3"]);
    assert!(schema.contains("qty: int64"), "{schema}");
    assert!(rows.iter().any(|r| r["dims"]["w"] == 1.5), "{rows:?}");
    assert_eq!(common::rows_with_parquet_crate(&files).len(), 3);
}

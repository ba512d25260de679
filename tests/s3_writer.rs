//! The S3 writer against moto's S3/STS server (started on a free loopback port), end to
//! end through the built binaries (credentials are given to the child processes as
//! environment variables, as the standard chain reads them). Objects are listed and
//! downloaded with boto3 and read back with the `parquet` crate and pyarrow.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn creds(cmd: &mut Command) -> &mut Command {
    cmd.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .env("AWS_EC2_METADATA_DISABLED", "true")
}

fn s3py(endpoint: &str, bucket: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(common::python())
        .arg(common::root().join("tests/py/s3.py"))
        .args([endpoint, bucket])
        .args(args)
        .output()
        .expect("boto3 helper");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn json2parquet(input: &Path, sets: &[String]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_json2parquet"));
    creds(&mut cmd).arg("--json");
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    cmd.arg(input)
        .stdin(Stdio::null())
        .output()
        .expect("json2parquet")
}

fn generate(dir: &Path, n: u64) -> PathBuf {
    let path = dir.join(format!("in-{n}.jsonl"));
    let st = Command::new(env!("CARGO_BIN_EXE_data-generator"))
        .arg(n.to_string())
        .args(["--format", "jsonl", "--out"])
        .arg(&path)
        .status()
        .expect("generator");
    assert!(st.success());
    path
}

fn s3_sets(endpoint: &str, bucket: &str, dir: &Path) -> Vec<String> {
    vec![
        "WriterType=aws-s3".into(),
        format!("S3BucketName={bucket}"),
        "S3Region=us-east-1".into(),
        format!("S3Endpoint={endpoint}"),
        format!("RecoveryPath={}", dir.join("recovery").display()),
    ]
}

/// Downloads the bucket and returns (keys, message -> count), reading with both readers.
fn download(endpoint: &str, bucket: &str, dest: &Path) -> (Vec<String>, HashMap<String, usize>) {
    let keys: Vec<String> = serde_json::from_value(s3py(
        endpoint,
        bucket,
        &["download", dest.to_str().expect("utf8")],
    ))
    .expect("keys");
    let files = common::parquet_files(dest);
    let mut seen = HashMap::new();
    for row in common::rows_with_parquet_crate(&files) {
        *seen
            .entry(row["message"].as_str().expect("message").to_string())
            .or_default() += 1;
    }
    let (py, _) = common::rows_with_pyarrow(&files);
    assert_eq!(py.len(), seen.values().sum::<usize>());
    (keys, seen)
}

fn input_messages(path: &Path) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for line in std::fs::read_to_string(path).expect("input").lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("line");
        *m.entry(v["message"].as_str().expect("message").to_string())
            .or_default() += 1;
    }
    m
}

fn hive_key(key: &str) -> bool {
    let parts: Vec<&str> = key.split('/').collect();
    parts.len() == 6
        && parts[0].starts_with("capability=")
        && parts[1].starts_with("year=")
        && parts[2].starts_with("month=")
        && parts[3].starts_with("day=")
        && parts[4].starts_with("hour=")
        && parts[5].ends_with(".parquet")
}

#[test]
fn objects_land_in_a_created_bucket_and_read_back() {
    let moto = common::start_moto();
    let endpoint = format!("http://{}", moto.addr());
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generate(dir.path(), 2000);
    let mut sets = s3_sets(&endpoint, "fresh-bucket", dir.path());
    sets.push("BufferSize=500".into());
    let out = json2parquet(&input, &sets);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (keys, seen) = download(&endpoint, "fresh-bucket", &dir.path().join("dl"));
    assert!(
        !keys.is_empty() && keys.iter().all(|k| hive_key(k)),
        "{keys:?}"
    );
    assert_eq!(seen, input_messages(&input), "every record exactly once");
}

#[test]
fn assume_role_through_sts() {
    let moto = common::start_moto();
    let endpoint = format!("http://{}", moto.addr());
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generate(dir.path(), 300);
    let mut sets = s3_sets(&endpoint, "role-bucket", dir.path());
    sets.push("S3RoleARN=arn:aws:iam::123456789012:role/data2parquet-writer".into());
    sets.push(format!("S3STSEndpoint={endpoint}"));
    let out = json2parquet(&input, &sets);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, seen) = download(&endpoint, "role-bucket", &dir.path().join("dl"));
    assert_eq!(seen.values().sum::<usize>(), 300);
}

#[test]
fn bad_credentials_are_a_clear_error() {
    // This moto checks signatures against its IAM users: the keys below do not exist.
    let moto = common::start_moto_with_auth();
    let endpoint = format!("http://{}", moto.addr());
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generate(dir.path(), 10);
    let out = json2parquet(&input, &s3_sets(&endpoint, "auth-bucket", dir.path()));
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("S3BucketName") && err.contains("credentials"),
        "{err}"
    );
    assert!(
        !err.contains("AWS_SECRET") && !err.contains("testing"),
        "no secret: {err}"
    );
}

#[test]
fn large_files_go_up_as_multipart_uploads() {
    let moto = common::start_moto();
    let endpoint = format!("http://{}", moto.addr());
    let dir = tempfile::tempdir().expect("tempdir");
    // One partition key, incompressible payload: one file well over the 5 MiB part size.
    let input = dir.path().join("big.jsonl");
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let lines: String = (0..4000)
        .map(|i| {
            let noise: String = (0..2000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(b"0123456789abcdef"[(x & 15) as usize])
                })
                .collect();
            format!("{{\"time\":\"2024-05-01T10:00:00Z\",\"message\":\"big-{i}\",\"stack_trace\":\"{noise}\"}}\n")
        })
        .collect();
    std::fs::write(&input, lines).expect("input");
    let mut sets = s3_sets(&endpoint, "big-bucket", dir.path());
    sets.extend([
        "BufferSize=100000".into(),
        "S3PartSize=5M".into(),
        "BufferMaxBytes=256M".into(),
    ]);
    let out = json2parquet(&input, &sets);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (keys, seen) = download(&endpoint, "big-bucket", &dir.path().join("dl"));
    assert_eq!(keys.len(), 1);
    let size = std::fs::metadata(dir.path().join("dl").join(&keys[0]))
        .expect("file")
        .len();
    assert!(size > 5 * 1024 * 1024, "{size} bytes: not multipart-sized");
    assert_eq!(seen.len(), 4000);
    assert_eq!(
        s3py(&endpoint, "big-bucket", &["uploads"]),
        serde_json::json!([]),
        "no upload left open"
    );
}

#[test]
fn store_down_mid_run_data_recovered_and_resent() {
    let moto = common::start_moto();
    let port = moto.port;
    let endpoint = format!("http://{}", moto.addr());
    let dir = tempfile::tempdir().expect("tempdir");
    let http_port = common::free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_http-server"));
    creds(&mut cmd).arg("--port").arg(http_port.to_string());
    for s in s3_sets(&endpoint, "live-bucket", dir.path()) {
        cmd.arg("--set").arg(s);
    }
    cmd.args([
        "--set",
        "TryAutoRecover=true",
        "--set",
        "BufferSize=100000",
        "--set",
        "FlushInterval=0",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut server = cmd.spawn().expect("http-server");
    assert!(common::wait_for_port(http_port, Duration::from_secs(30)));
    let base = format!("http://127.0.0.1:{http_port}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let post = |path: &str, body: &str| -> (u16, serde_json::Value) {
        let mut r = agent
            .post(&format!("{base}{path}"))
            .send(body)
            .expect("request");
        let code = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (
            code,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    };
    // The store goes down.
    drop(moto);
    let batch: String = (0..50)
        .map(|i| format!("{{\"message\":\"during-outage-{i}\"}}\n"))
        .collect();
    assert_eq!(
        post("/records/", &batch).0,
        200,
        "ingestion does not depend on the store"
    );
    let (code, report) = post("/flush/", "");
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["records"], 0);
    assert_eq!(report["records_to_recovery"], 50, "{report}");
    // It comes back empty (moto keeps nothing): the bucket is created again and the
    // recovery data re-sent by the background tick.
    let _moto2 = common::start_moto_on(port);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut r = agent
            .get(&format!("{base}/metrics"))
            .call()
            .expect("metrics");
        let text = r.body_mut().read_to_string().unwrap_or_default();
        if text.contains("data2parquet_recovery_backlog 0")
            && text.contains("data2parquet_recovered_total 1")
        {
            break;
        }
        assert!(Instant::now() < deadline, "never re-sent:\n{text}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();
    let (keys, seen) = download(&endpoint, "live-bucket", &dir.path().join("dl"));
    assert!(keys.iter().all(|k| hive_key(k)));
    assert_eq!(seen.len(), 50);
    assert!(seen.values().all(|n| *n == 1));
}

#[test]
fn unreachable_store_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generate(dir.path(), 10);
    let endpoint = format!("http://127.0.0.1:{}", common::free_port());
    let out = json2parquet(&input, &s3_sets(&endpoint, "nowhere", dir.path()));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("S3BucketName") && err.contains("nowhere") && err.contains(&endpoint),
        "{err}"
    );
    assert!(!err.contains("testing"), "no secret in the message: {err}");
}

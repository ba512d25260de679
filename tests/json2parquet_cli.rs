//! json2parquet end to end: the built binary on generated and hostile input; every file
//! read back with the `parquet` crate and with pyarrow/DuckDB.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_json2parquet"))
}

fn generator() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_data-generator"))
}

fn run(dir: &Path, extra: &[&str], inputs: &[&Path]) -> (Output, serde_json::Value) {
    let out_dir = dir.join("out");
    let rec_dir = dir.join("recovery");
    let mut cmd = Command::new(bin());
    cmd.arg("--json")
        .arg("--set")
        .arg(format!("WriterFilePath={}", out_dir.display()))
        .arg("--set")
        .arg(format!("RecoveryPath={}", rec_dir.display()))
        .args(extra)
        .args(inputs)
        .stdin(Stdio::null());
    let output = cmd.output().expect("run json2parquet");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null);
    (output, summary)
}

fn generate(dir: &Path, n: u64, format: &str, seed: u64) -> PathBuf {
    let path = dir.join(format!("in-{format}-{seed}.json"));
    let status = Command::new(generator())
        .arg(n.to_string())
        .args(["--format", format, "--seed", &seed.to_string(), "--out"])
        .arg(&path)
        .status()
        .expect("run data-generator");
    assert!(status.success());
    path
}

#[test]
fn generated_data_round_trips_in_every_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let jsonl = generate(dir.path(), 3000, "jsonl", 1);
    let logs = generate(dir.path(), 2000, "logs", 2);
    let (output, summary) = run(dir.path(), &["--set", "BufferSize=500"], &[&jsonl, &logs]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(summary["records_read"], 5000);
    assert_eq!(summary["records_written"], 5000);
    assert_eq!(summary["records_dead_lettered"], 0);
    let out = dir.path().join("out");
    let files = common::parquet_files(&out);
    assert_eq!(summary["files"].as_u64(), Some(files.len() as u64));
    // Each input record is in exactly one row: compare messages+time with the input.
    let mut expected: HashMap<(String, String), usize> = HashMap::new();
    let jsonl_text = std::fs::read_to_string(&jsonl).expect("read");
    let logs_doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&logs).expect("read")).expect("doc");
    let inputs = jsonl_text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("line"))
        .chain(logs_doc["logs"].as_array().expect("logs").iter().cloned());
    for v in inputs {
        let key = (
            v["time"].as_str().expect("time").to_string(),
            v["message"].as_str().expect("message").to_string(),
        );
        *expected.entry(key).or_default() += 1;
    }
    let rows = common::rows_with_parquet_crate(&files);
    assert_eq!(rows.len(), 5000);
    let mut got: HashMap<(String, String), usize> = HashMap::new();
    for r in &rows {
        let key = (
            r["time"].as_str().expect("time").to_string(),
            r["message"].as_str().expect("message").to_string(),
        );
        *got.entry(key).or_default() += 1;
    }
    assert_eq!(got, expected);
    // Every file holds one partition key, under its capability directory.
    for f in &files {
        let rel = f
            .strip_prefix(&out)
            .expect("under out")
            .to_string_lossy()
            .to_string();
        let cap = rel.split('/').next().expect("segment");
        let file_rows = common::rows_with_parquet_crate(std::slice::from_ref(f));
        assert!(file_rows.len() <= 500, "BufferSize bounds a file");
        for r in file_rows {
            assert_eq!(
                format!(
                    "capability={}",
                    r["business_capability"].as_str().expect("cap")
                ),
                cap
            );
        }
    }
    // The independent readers agree.
    let (py_rows, schema) = common::rows_with_pyarrow(&files);
    assert_eq!(py_rows.len(), 5000);
    assert!(schema.contains("args: map<string, string"), "{schema}");
    assert!(schema.contains("tags: list<element: string"), "{schema}");
    assert!(schema.contains("message: string not null"), "{schema}");
    assert_eq!(
        common::count_with_duckdb(&format!("{}/**/*.parquet", out.display())),
        5000
    );
}

#[test]
fn hostile_input_is_dead_lettered_with_line_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("hostile.jsonl");
    let huge = "x".repeat(3_000_000);
    let deep = format!(
        "{{\"message\":\"deep\",\"n\":{}1{}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    let nested_ok = format!(
        "{{\"message\":\"nested\",\"n\":{}1{}}}",
        "[".repeat(20),
        "]".repeat(20)
    );
    let lines = [
        r#"{"message":"ok 1","business_capability":"../../etc","business_domain":"/abs","business_service":"a\u0000b","application_service":".."}"#.to_string(),
        "this is not json".to_string(),
        "[1,2,3]".to_string(),
        format!("{{\"message\":\"{huge}\"}}"),
        "{\"message\": \"unterminated".to_string(),
        deep,
        nested_ok,
        "\"just a string\"".to_string(),
        r#"{"message":"ok 2","http_response":404,"audit":"true","tags":"one"}"#.to_string(),
    ];
    std::fs::write(&input, lines.join("\n")).expect("write");
    let (output, summary) = run(dir.path(), &[], &[&input]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(summary["records_written"], 4, "{summary}");
    assert_eq!(summary["rejected_inputs"], 5, "{summary}");
    let out = dir.path().join("out");
    // Nothing outside the root: every file is below out/ and the escaped names hold.
    let all_files: Vec<PathBuf> = walk(dir.path());
    for f in &all_files {
        assert!(
            f.starts_with(&out) || f.starts_with(&input) || f == &input,
            "unexpected file {}",
            f.display()
        );
    }
    let files = common::parquet_files(&out);
    assert!(
        files
            .iter()
            .any(|f| f.to_string_lossy().contains("capability=..%2F..%2Fetc"))
    );
    let rows = common::rows_with_parquet_crate(&files);
    let by_msg: HashMap<&str, &serde_json::Value> = rows
        .iter()
        .map(|r| (r["message"].as_str().unwrap_or_default(), r))
        .collect();
    assert_eq!(
        by_msg["ok 1"]["business_capability"], "../../etc",
        "value kept as is"
    );
    assert_eq!(by_msg["ok 2"]["http_response"], "404");
    assert_eq!(by_msg["ok 2"]["audit"], true);
    assert!(by_msg.contains_key(huge.as_str()), "a 3 MB string survives");
    assert!(by_msg.contains_key("nested"));
    let (py_rows, _) = common::rows_with_pyarrow(&files);
    assert_eq!(py_rows.len(), 4);
    // The DLQ holds the five rejected lines with their line numbers and reasons.
    let entries = common::dlq_entries(&out);
    let mut reasons: Vec<String> = entries
        .iter()
        .map(|e| e["reason"].as_str().expect("reason").to_string())
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    for n in [2, 3, 5, 6, 8] {
        assert!(
            reasons
                .iter()
                .any(|r| r.starts_with(&format!("line {n} of "))),
            "line {n} missing from {reasons:?}"
        );
    }
    assert!(entries.iter().any(|e| e["raw"] == "this is not json"));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("ls").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn seed_command_form_and_stdin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"buffer_type":"mem","flush_interval":60,"writer_compression_type":"zstd","writer_file_path":"{}","writer_row_group_size":134217728,"writer_type":"file"}}"#,
            dir.path().join("seedout").display()
        ),
    )
    .expect("config");
    let input = generate(dir.path(), 300, "logs", 3);
    let output = Command::new(bin())
        .arg(&config)
        .arg(&input)
        .output()
        .expect("run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("records written:   300"), "{text}");
    let files = common::parquet_files(&dir.path().join("seedout"));
    assert_eq!(common::rows_with_parquet_crate(&files).len(), 300);
    let meta = common::read_parquet_metadata(&files[0]);
    assert!(meta.contains("ZSTD"), "{meta}");

    let mut child = Command::new(bin())
        .args(["--json", "--set"])
        .arg(format!(
            "WriterFilePath={}",
            dir.path().join("stdin-out").display()
        ))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        for i in 0..50 {
            writeln!(stdin, "{{\"message\":\"stdin {i}\",\"lvl\":\"info\"}}").expect("write");
        }
    }
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success());
    let files = common::parquet_files(&dir.path().join("stdin-out"));
    let rows = common::rows_with_parquet_crate(&files);
    assert_eq!(rows.len(), 50);
    assert!(rows.iter().all(|r| r["level"] == "info"));
    assert!(rows.iter().all(|r| r["business_capability"] == ""));
    assert!(files[0].to_string_lossy().contains("capability=unknown"));
}

#[test]
fn exit_codes_tell_what_happened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "nope\nstill nope\n").expect("write");
    let (output, summary) = run(dir.path(), &[], &[&bad]);
    assert_eq!(output.status.code(), Some(1), "nothing could be written");
    assert_eq!(summary["rejected_inputs"], 2);
    let (output, _) = run(dir.path(), &["--set", "BufferSize=zero"], &[&bad]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("BufferSize"));
    let (output, _) = run(dir.path(), &[], &[&dir.path().join("missing.jsonl")]);
    assert_eq!(output.status.code(), Some(1));
}

//! `RecordType dynamic` end to end: json2parquet with a JSON Schema through the memory
//! and the Redis buffer, and with inferred columns on generated data; every file read back
//! with the `parquet` crate and with pyarrow (and counted by DuckDB).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const SCHEMA: &str = r#"{
  "title": "orders",
  "type": "object",
  "required": ["order_id", "amount", "business_capability"],
  "properties": {
    "order_id": {"type": "integer"},
    "amount": {"type": "number"},
    "business_capability": {"type": "string"},
    "customer": {"type": ["string", "null"]},
    "paid": {"type": "boolean"},
    "time": {"type": "string", "format": "date-time"},
    "items": {"type": "array", "items": {"type": "integer"}},
    "address": {"type": "object", "properties": {"city": {"type": "string"}}}
  }
}"#;

fn json2parquet(dir: &Path, sets: &[String], input: &Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_json2parquet"))
        .arg("--json")
        .args(sets.iter().flat_map(|s| ["--set", s.as_str()]))
        .arg("--set")
        .arg(format!("WriterFilePath={}", dir.join("out").display()))
        .arg("--set")
        .arg(format!("RecoveryPath={}", dir.join("recovery").display()))
        .arg(input)
        .stdin(Stdio::null())
        .output()
        .expect("run json2parquet");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "json2parquet failed: {stderr}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary; stderr: {stderr}"))
}

/// The input: 300 fitting orders over three capabilities and two hours, one with a field
/// the schema does not name, one with text for a number, one without a required field,
/// and one broken line.
fn orders(dir: &Path) -> (PathBuf, usize) {
    let mut lines = Vec::new();
    for i in 0..300 {
        let cap = ["pay", "ship", "bill"][i % 3];
        let hour = 10 + (i / 150);
        let mut order = serde_json::json!({
            "order_id": i,
            "amount": i as f64 / 4.0,
            "business_capability": cap,
            "customer": if i % 5 == 0 { serde_json::Value::Null } else { format!("cliente-{i}-ação").into() },
            "paid": i % 2 == 0,
            "time": format!("2026-12-01T{hour}:{:02}:00Z", i % 60),
            "items": [i, i + 1],
            "address": {"city": "Porto"},
        });
        if i == 7 {
            order["coupon"] = serde_json::json!({"code": "X1", "pct": 10});
        }
        if i == 8 {
            // Lossless coercions: numeric text for the integer, text for the boolean.
            order["order_id"] = "8".into();
            order["paid"] = "TRUE".into();
        }
        lines.push(order.to_string());
    }
    lines.push(r#"{"order_id": "nine hundred", "amount": 1, "business_capability": "pay"}"#.into());
    lines.push(r#"{"amount": 2, "business_capability": "pay"}"#.into());
    lines.push(r#"{"order_id": 3"#.into());
    let path = dir.join("orders.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").expect("write input");
    (path, 300)
}

fn check_orders(dir: &Path, summary: &serde_json::Value, good: usize) {
    assert_eq!(summary["records_read"], 302, "{summary}");
    assert_eq!(summary["records_written"], good as u64, "{summary}");
    assert_eq!(summary["records_dead_lettered"], 3, "{summary}");
    let out = dir.join("out");
    let files = common::parquet_files(&out);
    // Three capabilities, two hours each (a file per flushed batch and hour).
    let partitions: std::collections::BTreeSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    assert_eq!(partitions.len(), 6, "{partitions:?}");
    assert!(files.iter().all(|f| {
        let s = f.to_string_lossy();
        s.contains("/year=2026/month=12/day=01/hour=1") && s.contains("capability=")
    }));

    let rows = common::rows_with_parquet_crate(&files);
    let (py_rows, py_schema) = common::rows_with_pyarrow(&files);
    assert_eq!(rows.len(), good);
    assert_eq!(py_rows.len(), good);
    for needed in [
        "order_id: int64 not null",
        "amount: double not null",
        "customer: string",
        "paid: bool",
        "time: timestamp[us, tz=+00:00]",
        "items: list<element: int64 not null>",
        "address: struct<city: string>",
        "extra_fields: map<string, string",
    ] {
        assert!(py_schema.contains(needed), "{needed} not in {py_schema}");
    }
    let by_id: BTreeMap<i64, &serde_json::Value> = py_rows
        .iter()
        .map(|r| (r["order_id"].as_i64().expect("order_id"), r))
        .collect();
    assert_eq!(by_id.len(), good, "every order once");
    assert_eq!(
        by_id.keys().copied().collect::<Vec<_>>(),
        (0..300).collect::<Vec<_>>()
    );
    let r1 = by_id[&1];
    assert_eq!(r1["amount"], 0.25);
    assert_eq!(r1["customer"], "cliente-1-ação");
    assert_eq!(r1["paid"], false);
    assert_eq!(r1["items"], serde_json::json!([1, 2]));
    assert_eq!(r1["address"]["city"], "Porto");
    assert!(r1["extra_fields"].is_null());
    assert!(by_id[&0]["customer"].is_null());
    assert_eq!(by_id[&8]["paid"], true);
    assert_eq!(
        by_id[&7]["extra_fields"]["coupon"], r#"{"code":"X1","pct":10}"#,
        "a field the schema does not name is kept"
    );
    // The parquet crate reads the same values.
    let ids: Vec<i64> = rows
        .iter()
        .map(|r| r["order_id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids.len(), good);
    assert!(rows.iter().any(|r| r["customer"] == "cliente-299-ação"));

    let dlq = common::dlq_entries(&out);
    let mut reasons: Vec<&str> = dlq
        .iter()
        .map(|e| e["reason"].as_str().expect("reason"))
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("field `order_id`") && r.contains("nine hundred")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("required field `order_id` is missing")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with("line 303 of ")),
        "{reasons:?}"
    );
    let misfit = dlq
        .iter()
        .find(|e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("nine hundred"))
        })
        .expect("misfit entry");
    let raw: serde_json::Value =
        serde_json::from_str(misfit["raw"].as_str().expect("raw")).expect("raw is the record");
    assert_eq!(raw["order_id"], "nine hundred");
    assert_eq!(misfit["key"], "pay:unknown:unknown:unknown");
}

/// Converts the orders with the schema, plus `sets`, and checks everything.
fn orders_with_schema(sets: &[String]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = dir.path().join("orders.schema.json");
    std::fs::write(&schema, SCHEMA).expect("write schema");
    let (input, good) = orders(dir.path());
    let mut all = vec![
        "RecordType=dynamic".to_string(),
        format!("JsonSchemaPath={}", schema.display()),
    ];
    all.extend_from_slice(sets);
    let summary = json2parquet(dir.path(), &all, &input);
    check_orders(dir.path(), &summary, good);
}

#[test]
fn schema_columns_through_the_memory_buffer() {
    orders_with_schema(&["BufferSize=40".into()]);
}

#[test]
fn schema_columns_through_the_redis_buffer() {
    let redis = common::start_redis(&common::RedisOptions::default());
    orders_with_schema(&[
        "BufferType=redis".into(),
        format!("RedisHost={}", redis.addr()),
        "BufferSize=1000".into(),
    ]);
}

#[test]
fn a_bad_schema_stops_the_start_naming_the_property() {
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = dir.path().join("bad.schema.json");
    std::fs::write(
        &schema,
        r#"{"properties": {"ok": {"type": "string"}, "n": {"type": "decimal"}}}"#,
    )
    .expect("write schema");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"ok\": \"x\"}\n").expect("write input");
    let out = Command::new(env!("CARGO_BIN_EXE_json2parquet"))
        .args(["--set", "RecordType=dynamic", "--set"])
        .arg(format!("JsonSchemaPath={}", schema.display()))
        .arg("--set")
        .arg(format!(
            "WriterFilePath={}",
            dir.path().join("out").display()
        ))
        .arg(&input)
        .stdin(Stdio::null())
        .output()
        .expect("run json2parquet");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("JsonSchemaPath"), "{stderr}");
    assert!(stderr.contains("#/properties/n"), "{stderr}");
    assert!(stderr.contains("decimal"), "{stderr}");
    assert!(common::parquet_files(&dir.path().join("out")).is_empty());
}

#[test]
fn inferred_columns_keep_every_generated_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("gen.jsonl");
    let status = Command::new(env!("CARGO_BIN_EXE_data-generator"))
        .args(["2000", "--format", "jsonl", "--seed", "11", "--out"])
        .arg(&input)
        .status()
        .expect("run data-generator");
    assert!(status.success());
    let summary = json2parquet(dir.path(), &["RecordType=dynamic".into()], &input);
    assert_eq!(summary["records_read"], 2000, "{summary}");
    assert_eq!(summary["records_written"], 2000, "{summary}");
    assert_eq!(summary["records_dead_lettered"], 0, "{summary}");
    let out = dir.path().join("out");
    let files = common::parquet_files(&out);
    assert!(
        files.len() > 10,
        "one file per key and hour: {}",
        files.len()
    );
    assert_eq!(
        common::count_with_duckdb(&format!("{}/**/*.parquet", out.display())),
        2000
    );
    // Every input record's text fields come back unchanged (as columns of their own name).
    let mut want: Vec<(String, String)> = std::fs::read_to_string(&input)
        .expect("read input")
        .lines()
        .map(|l| id_and_message(&serde_json::from_str(l).expect("generated JSON")))
        .collect();
    want.sort();
    for rows in [
        common::rows_with_parquet_crate(&files),
        common::rows_with_pyarrow(&files).0,
    ] {
        let mut got: Vec<(String, String)> = rows.iter().map(id_and_message).collect();
        got.sort();
        assert_eq!(got, want);
    }
}

/// A record's `correlation_id` and `message` (empty when absent or not text).
fn id_and_message(v: &serde_json::Value) -> (String, String) {
    let text = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_string()
    };
    (text("correlation_id"), text("message"))
}

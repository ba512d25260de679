//! Round trip of every column through the engine to Parquet and back, with both readers:
//! nulls, lists, maps, aliases, coercions, unicode.

mod common;

use std::sync::Arc;

use data2parquet::buffer::mem::MemBuffer;
use data2parquet::clock::SystemClock;
use data2parquet::receiver::Background;
use data2parquet::record::decode_json_line;
use data2parquet::writer::file::FileWriter;
use data2parquet::{Config, Receiver};
use serde_json::{Value, json};

const FULL: &str = r#"{"time":"2024-05-01T10:00:00.123Z","level":"error","correlation_id":"c-1",
 "session_id":"s-1","message_id":"m-1","person_id":"p-1","user_id":"u-1","device_id":"d-1",
 "message":"héllo wörld ✓ 😀 \"quoted\"\nsecond line","business_capability":"payments",
 "business_domain":"cards","business_service":"api","application_service":"web","audit":true,
 "resource_type":"k8s","cloud_provider":"aws","source_id":"src","http_response":500,
 "error_code":"E42","stack_trace":"boom\n\tat a.b(C.java:1)","duration":12.5,
 "trace_ip":["10.0.0.1","10.0.0.2"],"region":"us-east-1","az":"us-east-1a","tags":["x","ü"],
 "args":{"k":"v","n":3,"o":{"deep":[1,2]}},"transaction_message_reference":"tmr","ttl":30,
 "auto_index":"false","logger_name":"L","thread_name":"T","extra_fields":{"e":"f"},
 "customer":"acme","nested":{"a":[true,null]}}"#;

const SPARSE: &str = r#"{"msg":"only a message","lvl":"warn","timestamp":"2024-05-01T10:30:00Z",
 "Business-Capability":"payments","businessDomain":"cards","BUSINESS_SERVICE":"api",
 "application_service":"web","hostname":"node-7","error":"E1","elapsed":"3ms"}"#;

fn expected_full() -> Value {
    json!({
        "time": "2024-05-01T10:00:00.123Z", "level": "error", "correlation_id": "c-1",
        "session_id": "s-1", "message_id": "m-1", "person_id": "p-1", "user_id": "u-1",
        "device_id": "d-1", "message": "héllo wörld ✓ 😀 \"quoted\"\nsecond line",
        "business_capability": "payments", "business_domain": "cards",
        "business_service": "api", "application_service": "web", "audit": true,
        "resource_type": "k8s", "cloud_provider": "aws", "source_id": "src",
        "http_response": "500", "error_code": "E42", "stack_trace": "boom\n\tat a.b(C.java:1)",
        "duration": "12.5", "trace_ip": ["10.0.0.1", "10.0.0.2"], "region": "us-east-1",
        "az": "us-east-1a", "tags": ["x", "ü"],
        "args": {"k": "v", "n": "3", "o": "{\"deep\":[1,2]}"},
        "transaction_message_reference": "tmr", "ttl": "30", "auto_index": false,
        "logger_name": "L", "thread_name": "T",
        "extra_fields": {"e": "f", "customer": "acme", "nested": "{\"a\":[true,null]}"},
    })
}

fn expected_sparse() -> Value {
    json!({
        "time": "2024-05-01T10:30:00Z", "level": "warn", "correlation_id": null,
        "session_id": null, "message_id": null, "person_id": null, "user_id": null,
        "device_id": null, "message": "only a message", "business_capability": "payments",
        "business_domain": "cards", "business_service": "api", "application_service": "web",
        "audit": null, "resource_type": null, "cloud_provider": null, "source_id": null,
        "http_response": null, "error_code": "E1", "stack_trace": null, "duration": "3ms",
        "trace_ip": null, "region": null, "az": null, "tags": null,
        "args": {"host": "node-7"}, "transaction_message_reference": null, "ttl": null,
        "auto_index": null, "logger_name": null, "thread_name": null, "extra_fields": null,
    })
}

/// Drops null members, so the arrow JSON writer (which omits nulls) and pyarrow (which
/// returns None) compare equal to the same expectation.
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// arrow's JSON writer renders a map as a list of {key, value} objects; turn it back.
fn arrow_maps_to_objects(v: &Value) -> Value {
    let mut v = v.clone();
    for col in ["args", "extra_fields"] {
        if let Some(Value::Array(entries)) = v.get(col) {
            let obj: serde_json::Map<String, Value> = entries
                .iter()
                .map(|e| {
                    (
                        e["key"].as_str().unwrap_or_default().to_string(),
                        e["value"].clone(),
                    )
                })
                .collect();
            v[col] = Value::Object(obj);
        }
    }
    v
}

#[test]
fn every_column_round_trips_through_both_readers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let config = Config::from_pairs([
        ("WriterFilePath", out.to_str().expect("utf8 path")),
        ("BufferSize", "10"),
    ])
    .expect("config");
    let receiver = Receiver::new(
        config,
        Arc::new(MemBuffer::new(1 << 26)),
        Arc::new(FileWriter::new(&out)),
        Arc::new(SystemClock),
        Background::Manual,
    )
    .expect("engine");
    let records = [FULL, SPARSE]
        .iter()
        .map(|t| decode_json_line(&t.replace('\n', ""), || "fixture".into()).expect("decode"))
        .collect();
    receiver.push(records, Vec::new()).expect("push");
    let report = receiver.close().expect("close");
    assert_eq!(report.records, 2);
    assert_eq!(report.files, 1, "same key, same hour");
    let files = common::parquet_files(&out);
    assert_eq!(files.len(), 1);
    let name = files[0].to_string_lossy().to_string();
    assert!(
        name.contains("capability=payments/year=2024/month=05/day=01/hour=10/"),
        "{name}"
    );
    assert!(
        name.ends_with("-payments%3Acards%3Aapi%3Aweb.parquet"),
        "{name}"
    );

    let mut rust_rows = common::rows_with_parquet_crate(&files);
    rust_rows.sort_by_key(|r| r["time"].as_str().unwrap_or_default().to_string());
    assert_eq!(rust_rows.len(), 2);
    assert_eq!(
        arrow_maps_to_objects(&rust_rows[0]),
        without_nulls(&expected_full())
    );
    assert_eq!(
        arrow_maps_to_objects(&rust_rows[1]),
        without_nulls(&expected_sparse())
    );

    let (mut py_rows, schema) = common::rows_with_pyarrow(&files);
    py_rows.sort_by_key(|r| r["time"].as_str().unwrap_or_default().to_string());
    assert_eq!(py_rows[0], expected_full());
    assert_eq!(py_rows[1], expected_sparse());
    for col in [
        "time",
        "level",
        "message",
        "business_capability",
        "application_service",
    ] {
        assert!(
            schema.contains(&format!("{col}: string not null")),
            "{col} required: {schema}"
        );
    }
    assert!(schema.contains("audit: bool"), "{schema}");
    assert!(
        schema.contains("trace_ip: list<element: string not null>"),
        "{schema}"
    );

    // Writer settings as an independent reader sees them.
    let out = std::process::Command::new(common::python())
        .args([
            "-c",
            "import pyarrow.parquet as pq,sys,json\n\
             rg=pq.ParquetFile(sys.argv[1]).metadata.row_group(0)\n\
             cols={rg.column(i).path_in_schema: rg.column(i) for i in range(rg.num_columns)}\n\
             print(json.dumps({k: [c.compression, list(c.encodings), bool(c.statistics and c.statistics.has_min_max)] for k, c in cols.items()}))",
        ])
        .arg(&files[0])
        .output()
        .expect("pyarrow metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cols: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(cols["level"][0], "SNAPPY");
    let level_enc = cols["level"][1].to_string();
    assert!(
        level_enc.contains("DICTIONARY"),
        "level is dictionary-encoded: {level_enc}"
    );
    let msg_enc = cols["message"][1].to_string();
    assert!(!msg_enc.contains("DICTIONARY"), "message is not: {msg_enc}");
    // The leaves of nested columns with a handful of values are too.
    for col in [
        "args.key_value.key",
        "extra_fields.key_value.key",
        "tags.list.element",
    ] {
        let enc = cols[col][1].to_string();
        assert!(enc.contains("DICTIONARY"), "{col} is: {enc}");
    }
    let enc = cols["args.key_value.value"][1].to_string();
    assert!(!enc.contains("DICTIONARY"), "map values are not: {enc}");
    assert_eq!(cols["level"][2], true, "statistics written");
    assert_eq!(cols["correlation_id"][2], true, "statistics written");
    // Free text gets none: its bounds would never let a reader skip anything.
    for col in ["message", "stack_trace", "args.key_value.value"] {
        assert_eq!(cols[col][2], false, "no min/max for {col}: {cols}");
    }
    assert_eq!(cols["args.key_value.key"][2], true, "map keys keep theirs");
}

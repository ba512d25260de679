//! d2p-admin: DLQ and recovery inspection and replay, end to end with the built binaries.

mod common;

use std::path::PathBuf;
use std::process::Command;

fn admin(out: &std::path::Path, rec: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_d2p-admin"))
        .arg("--set")
        .arg(format!("WriterFilePath={}", out.display()))
        .arg("--set")
        .arg(format!("RecoveryPath={}", rec.display()))
        .args(args)
        .output()
        .expect("run d2p-admin")
}

#[test]
fn dlq_replay_pushes_what_decodes_and_keeps_what_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let rec = dir.path().join("recovery");
    let dlq = dir.path().join("old-dlq.ndjson");
    std::fs::write(
        &dlq,
        concat!(
            r#"{"key":"a:b:c:d","reason":"parquet conversion failed: x","raw":"{\"message\":\"saved\",\"business_capability\":\"a\"}","time":"t"}"#,
            "\n",
            r#"{"key":"unknown:unknown:unknown:unknown","reason":"line 3 of x: broken JSON","raw":"{oops","time":"t"}"#,
            "\n"
        ),
    )
    .expect("dlq file");
    let o = admin(&out, &rec, &["dlq", "replay", dlq.to_str().expect("path")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("replayed 2 entries: 1 records written, 1 still failing"),
        "{text}"
    );
    let rows = common::rows_with_parquet_crate(&common::parquet_files(&out));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["message"], "saved");
    let still: Vec<PathBuf> = common::files_with_ext(&out.join("dlq"), "ndjson");
    let again = std::fs::read_to_string(&still[0]).expect("new dlq file");
    assert!(
        again.contains("{oops") && again.contains("replay:"),
        "{again}"
    );
}

#[test]
fn recovery_replay_writes_kept_files_and_reingests_unflushed_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let rec = dir.path().join("recovery");
    // A kept Parquet file (made by the engine: json2parquet into the recovery layout).
    let made = dir.path().join("made");
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"message\":\"kept\",\"business_capability\":\"k\"}\n",
    )
    .expect("input");
    let status = Command::new(env!("CARGO_BIN_EXE_json2parquet"))
        .arg("--set")
        .arg(format!("WriterFilePath={}", made.display()))
        .arg(&input)
        .output()
        .expect("json2parquet");
    assert!(status.status.success());
    let file = common::parquet_files(&made).pop().expect("a file");
    let rel = file.strip_prefix(&made).expect("relative").to_path_buf();
    std::fs::create_dir_all(rec.join(&rel).parent().expect("dir")).expect("mkdir");
    std::fs::rename(&file, rec.join(&rel)).expect("move into recovery");
    std::fs::create_dir_all(rec.join("unflushed")).expect("mkdir");
    std::fs::write(
        rec.join("unflushed/x.ndjson"),
        "{\"message\":\"unflushed-1\"}\n{\"message\":\"unflushed-2\"}\n",
    )
    .expect("unflushed");
    let o = admin(&out, &rec, &["recovery", "list"]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 2);
    let o = admin(&out, &rec, &["recovery", "replay"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.join(&rel).is_file(),
        "kept file written under the same name"
    );
    let mut msgs: Vec<String> = common::rows_with_parquet_crate(&common::parquet_files(&out))
        .iter()
        .map(|r| r["message"].as_str().expect("m").to_string())
        .collect();
    msgs.sort();
    assert_eq!(msgs, ["kept", "unflushed-1", "unflushed-2"]);
    assert!(common::files_with_ext(&rec, "parquet").is_empty());
    assert!(common::files_with_ext(&rec, "ndjson").is_empty());
}

#[test]
fn recovery_replay_reingests_unflushed_dynamic_records_as_they_came() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let rec = dir.path().join("recovery");
    std::fs::create_dir_all(rec.join("unflushed")).expect("mkdir");
    // What the engine keeps at close for RecordType dynamic: the records as they came.
    std::fs::write(
        rec.join("unflushed/orders.ndjson"),
        concat!(
            r#"{"order_id":7,"note":"first","paid":true}"#,
            "\n",
            r#"{"order_id":8,"note":"second \"quoted\"","paid":false}"#,
            "\n"
        ),
    )
    .expect("unflushed");
    let o = admin(
        &out,
        &rec,
        &["--set", "RecordType=dynamic", "recovery", "replay"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("re-ingested 2 unflushed records"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let files = common::parquet_files(&out);
    let (by_pyarrow, schema) = common::rows_with_pyarrow(&files);
    for rows in [common::rows_with_parquet_crate(&files), by_pyarrow] {
        let mut got: Vec<(i64, String, bool)> = rows
            .iter()
            .map(|r| {
                (
                    r["order_id"].as_i64().expect("order_id is a number column"),
                    r["note"].as_str().expect("note").to_string(),
                    r["paid"].as_bool().expect("paid is a boolean column"),
                )
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                (7, "first".to_string(), true),
                (8, "second \"quoted\"".to_string(), false)
            ]
        );
    }
    assert!(
        !schema.contains("extra_fields"),
        "inferred columns: {schema}"
    );
    assert!(common::files_with_ext(&rec, "ndjson").is_empty());
}

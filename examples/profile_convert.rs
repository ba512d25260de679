//! Profiling aid: times decoding (JSON Lines -> Log) and Parquet encoding separately.
//! `cargo run --release --example profile_convert -- bench-out/logs-200000.jsonl`
//! (`ROWS_PER_FILE=N`: files of up to N rows per key, default 300; `FILE_OVERHEAD=1`: the
//! fixed cost of one file, from `FILES` 1-row files, default 3000; `VARIANT=i`: only the
//! i-th encoder variant, once, for callgrind)
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: profile_convert FILE.jsonl");
    let data = std::fs::read(&path).expect("read");
    let start = std::time::Instant::now();
    let mut n = 0usize;
    let mut columnar = 0usize;
    let mut logs = Vec::with_capacity(1024);
    if std::env::var("FILE_OVERHEAD").is_ok() {
        let one: Vec<data2parquet::buffer::Record> = data
            .split(|b| *b == b'\n')
            .take(1)
            .map(|l| {
                std::sync::Arc::new(
                    data2parquet::record::decode_json_bytes(l, String::new).expect("d"),
                )
            })
            .collect();
        let opts =
            data2parquet::convert::EncodeOptions::from_config(&data2parquet::Config::default());
        let files: usize = std::env::var("FILES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3000);
        let start = std::time::Instant::now();
        for _ in 0..files {
            std::hint::black_box(data2parquet::convert::encode(&one, &opts).expect("e"));
        }
        println!(
            "{:.1} us per 1-row file",
            start.elapsed().as_secs_f64() * 1e6 / files as f64
        );
        return;
    }
    for line in data.split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let log = data2parquet::record::decode_json_bytes(line, String::new).expect("decode");
        columnar += data2parquet::convert::LogColumns::row_bytes(&log);
        logs.push(log);
        if logs.len() == 1024 {
            n += logs.len();
            logs.clear();
        }
    }
    n += logs.len();
    let t = start.elapsed();
    println!(
        "{n} records in {:.3} s ({:.0} MB/s), {} MB in columnar form",
        t.as_secs_f64(),
        data.len() as f64 / 1e6 / t.as_secs_f64(),
        columnar / 1_000_000
    );
    let records: Vec<data2parquet::buffer::Record> = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .take(50_000)
        .map(|l| {
            std::sync::Arc::new(
                data2parquet::record::decode_json_line(
                    std::str::from_utf8(l).expect("utf8"),
                    String::new,
                )
                .expect("d"),
            )
        })
        .collect();
    // Per key, in files of about the size json2parquet writes under its default memory bound.
    let rows_per_file: usize = std::env::var("ROWS_PER_FILE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut by_key: std::collections::BTreeMap<String, Vec<data2parquet::buffer::Record>> =
        Default::default();
    for r in records {
        by_key
            .entry(r.partition_key("unknown"))
            .or_default()
            .push(r);
    }
    let files: Vec<&[data2parquet::buffer::Record]> = by_key
        .values()
        .flat_map(|v| v.chunks(rows_per_file))
        .collect();
    println!(
        "{} keys, {} files of up to {rows_per_file} rows",
        by_key.len(),
        files.len()
    );
    let rows: usize = files.iter().map(|f| f.len()).sum();
    let base = data2parquet::convert::EncodeOptions::from_config(&data2parquet::Config::default());
    let variants = [
        (
            "default (snappy, dictionary, page statistics)",
            base.clone(),
        ),
        (
            "no statistics",
            data2parquet::convert::EncodeOptions {
                statistics: false,
                ..base.clone()
            },
        ),
        (
            "no dictionary",
            data2parquet::convert::EncodeOptions {
                dictionary: false,
                ..base.clone()
            },
        ),
        (
            "uncompressed",
            data2parquet::convert::EncodeOptions {
                compression: data2parquet::config::Compression::None,
                ..base.clone()
            },
        ),
    ];
    // `VARIANT=i`: only that variant, once (for callgrind).
    let only: Option<usize> = std::env::var("VARIANT").ok().and_then(|v| v.parse().ok());
    let rounds = if only.is_some() { 1 } else { 2 };
    for round in 0..rounds {
        for (i, (name, opts)) in variants.iter().enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            let start = std::time::Instant::now();
            let mut out = 0;
            for chunk in &files {
                out += data2parquet::convert::encode(chunk, opts)
                    .expect("encode")
                    .len();
            }
            let t = start.elapsed();
            println!(
                "round {round} {name}: {:.2} us/record, {} bytes",
                t.as_secs_f64() * 1e6 / rows as f64,
                out
            );
        }
    }
}

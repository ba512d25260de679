//! Profiling aid: times decoding (JSON Lines -> Log) and Parquet encoding separately.
//! `cargo run --release --example profile_convert -- bench-out/logs-200000.jsonl`
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
    for round in 0..2 {
        for (name, opts) in &variants {
            let start = std::time::Instant::now();
            let mut out = 0;
            for chunk in records.chunks(1400) {
                out += data2parquet::convert::encode(chunk, opts)
                    .expect("encode")
                    .len();
            }
            let t = start.elapsed();
            println!(
                "round {round} {name}: {:.2} us/record, {} bytes",
                t.as_secs_f64() * 1e6 / records.len() as f64,
                out
            );
        }
    }
}

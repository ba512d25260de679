//! `json2parquet`: converts JSON Lines, JSON arrays or the seed's `{"logs": [...]}`
//! documents into partitioned Parquet files, streaming, through the shared engine.

/// jemalloc: cheaper than glibc malloc when records are allocated on the reading
/// thread and freed on the flusher threads, and it returns memory promptly (low peak RSS).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use data2parquet::input::{Rejected, Turn, read_input_parallel};
use data2parquet::receiver::Stats;
use data2parquet::{Config, Error, Receiver};
use serde_json::Value;

/// Converts JSON log records into partitioned Parquet files.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    after_help = "The seed's form `json2parquet <config.json> <input>` also works."
)]
struct Args {
    /// JSON configuration file (the seed's format; every key is optional).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Override a configuration key: `--set BufferSize=5000` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print the summary as one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Input files (JSON Lines, JSON array or {"logs": [...]}); `-` reads standard input.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

/// Lines per block: decoded, grouped and pushed by one thread in one go. Small enough that
/// a block's decoded records (~700 bytes each, before their text is copied into the
/// columns) are still in the core's cache when they are grouped, sized and appended:
/// 200k generator records took 7% less CPU with 256 than with 1024 (medians of 12
/// alternating runs, 1.48 s vs 1.61 s) and 12 MiB less peak RSS; 128 was no better,
/// and 32 worse (more turns between the decoding threads).
const PUSH_BATCH: usize = 256;
const PUSH_TIMEOUT: Duration = Duration::from_secs(600);

/// The seed's `json2parquet <config> <input>`: the first argument is a config file when it
/// is a JSON object made of configuration keys.
/// Threads decoding JSON Lines: one per core, at most 4 (the flush workers need CPU too).
fn decode_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

fn looks_like_config(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if meta.len() > 1 << 20 {
        return false;
    }
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&text) else {
        return false;
    };
    let mut probe = Config::default();
    !map.is_empty()
        && !map.contains_key("logs")
        && map.iter().all(|(k, v)| probe.set(k, v).unwrap_or(true))
}

fn load_config(args: &mut Args) -> data2parquet::Result<Config> {
    if args.config.is_none() && args.inputs.len() >= 2 && looks_like_config(&args.inputs[0]) {
        args.config = Some(args.inputs.remove(0));
    }
    Config::load(args.config.as_deref(), &args.set)
}

struct Totals {
    read: u64,
    rejected: u64,
    input_bytes: u64,
    failed_inputs: Vec<String>,
}

fn convert_input(
    receiver: &Receiver,
    path: &Path,
    totals: &mut Totals,
) -> data2parquet::Result<()> {
    let name = path.display().to_string();
    let reader: Box<dyn BufRead + Send> = if name == "-" {
        Box::new(BufReader::with_capacity(1 << 20, std::io::stdin()))
    } else {
        let file = File::open(path).map_err(|e| Error::io("opening input", path, e))?;
        Box::new(BufReader::with_capacity(1 << 20, file))
    };
    // Decoding threads group (and for Redis encode) records for the buffer, then push
    // them in input order, taking turns; this thread reads.
    let process =
        |records: Vec<data2parquet::LogRef<'_>>, rejected: Vec<Rejected>, turn: &Turn<'_>| {
            let dlq = rejected
                .into_iter()
                .map(|r| receiver.dlq_entry(None, format!("{}: {}", r.what, r.reason), r.raw))
                .collect();
            let mut records = records;
            let prepared = receiver.prepare_borrowed(&mut records, dlq)?;
            turn.push(&mut || {
                receiver
                    .push_borrowed(&prepared, Some(PUSH_TIMEOUT))
                    .map(|_| ())
            })
        };
    let kind = receiver.config().record_type;
    let stats = read_input_parallel(reader, &name, kind, PUSH_BATCH, decode_threads(), &process)?;
    totals.read += stats.records;
    totals.rejected += stats.rejected;
    totals.input_bytes += stats.bytes;
    if stats.rejected > 0 {
        log::warn!(
            "{name}: {} inputs could not be decoded; they are in the DLQ with their line numbers",
            stats.rejected
        );
    }
    Ok(())
}

fn print_summary(
    args: &Args,
    totals: &Totals,
    stats: &Stats,
    elapsed: Duration,
    target: &str,
    recovery_path: &str,
) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    if args.json {
        let v = serde_json::json!({
            "inputs": args.inputs,
            "records_read": totals.read,
            "rejected_inputs": totals.rejected,
            "records_written": stats.records_written,
            "records_dead_lettered": stats.records_dlq,
            "files": stats.files_written,
            "dlq_files": stats.dlq_files_written,
            "bytes_written": stats.bytes_written,
            "input_bytes": totals.input_bytes,
            "write_failures": stats.write_failures,
            "kept_on_local_disk": stats.recovery_spilled,
            "failed_inputs": totals.failed_inputs,
            "elapsed_seconds": secs,
            "records_per_second": totals.read as f64 / secs,
            "output": target,
        });
        println!("{v}");
        return;
    }
    println!("json2parquet summary");
    println!(
        "  inputs:            {}",
        args.inputs
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("  records read:      {}", totals.read);
    println!("  records written:   {}", stats.records_written);
    println!(
        "  dead-lettered:     {} ({} undecodable inputs)",
        stats.records_dlq, totals.rejected
    );
    println!(
        "  files:             {} parquet, {} dlq",
        stats.files_written, stats.dlq_files_written
    );
    println!(
        "  bytes written:     {} ({:.1} MB; input {:.1} MB)",
        stats.bytes_written,
        stats.bytes_written as f64 / 1e6,
        totals.input_bytes as f64 / 1e6
    );
    println!("  elapsed:           {secs:.2} s");
    println!(
        "  throughput:        {:.0} records/s ({:.1} MB/s of input)",
        totals.read as f64 / secs,
        totals.input_bytes as f64 / 1e6 / secs
    );
    println!("  output:            {target}");
    if stats.write_failures > 0 || stats.recovery_spilled > 0 {
        println!(
            "  write failures:    {} (kept on local disk: {} files under {recovery_path})",
            stats.write_failures, stats.recovery_spilled
        );
    }
    for f in &totals.failed_inputs {
        println!("  input failed:      {f}");
    }
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    let config = match load_config(&mut args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("json2parquet: {e}");
            return ExitCode::from(2);
        }
    };
    let level = if config.debug { "debug" } else { "info" };
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .try_init();
    let recovery_path = config.recovery_path.clone();
    // Receive-only (RedisSkipFlush): success is every record safely in Redis.
    let receive_only = config.redis_skip_flush;
    let started = Instant::now();
    let receiver = match Receiver::from_config(config) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            eprintln!("json2parquet: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    let mut totals = Totals {
        read: 0,
        rejected: 0,
        input_bytes: 0,
        failed_inputs: Vec::new(),
    };
    for path in args.inputs.clone() {
        if let Err(e) = convert_input(&receiver, &path, &mut totals) {
            log::error!("{e}");
            totals.failed_inputs.push(e.to_string());
        }
    }
    let closed = receiver.close();
    let stats = receiver.stats();
    print_summary(
        &args,
        &totals,
        &stats,
        started.elapsed(),
        &receiver.target(),
        &recovery_path,
    );
    if let Err(e) = closed {
        eprintln!("json2parquet: {e}");
        return ExitCode::FAILURE;
    }
    let nothing_written = !receive_only
        && stats.records_written == 0
        && (totals.read > 0 || totals.rejected > 0 || !totals.failed_inputs.is_empty());
    let lost_to_disk = stats.recovery_spilled > 0;
    if nothing_written || lost_to_disk || !totals.failed_inputs.is_empty() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

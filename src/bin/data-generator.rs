//! `data-generator`: realistic, deterministic test load for json2parquet, the plugin and
//! the HTTP server: many partition keys, optional fields present or absent, lists, maps,
//! multi-line stack traces, unicode, and the mixed types real logs have
//! (`"http_response": 200` in one record, `"200"` in the next).

/// jemalloc: cheaper than glibc malloc when records are allocated on the reading
/// thread and freed on the flusher threads, and it returns memory promptly (low peak RSS).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use data2parquet::record::generator::Generator;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// The seed's `{"logs": [...]}` document.
    Logs,
    /// One JSON object per line.
    Jsonl,
}

/// Generates realistic log records as JSON.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Number of records.
    #[arg(default_value_t = 500_000)]
    count: u64,
    /// Output file (`-` for stdout).
    #[arg(long, short, default_value = "data/logs.json")]
    out: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Logs)]
    format: Format,
    /// Random seed: the same seed gives the same records.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn run(args: &Args) -> std::io::Result<u64> {
    let sink: Box<dyn Write> = if args.out.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        Box::new(File::create(&args.out)?)
    };
    let mut out = BufWriter::with_capacity(1 << 20, sink);
    let mut generator = Generator::new(args.seed);
    let mut bytes = 0u64;
    let mut line = Vec::with_capacity(4096);
    if matches!(args.format, Format::Logs) {
        out.write_all(b"{\"logs\": [\n")?;
    }
    for i in 0..args.count {
        line.clear();
        generator.write_record(&mut line)?;
        if matches!(args.format, Format::Logs) && i + 1 < args.count {
            line.push(b',');
        }
        line.push(b'\n');
        bytes += line.len() as u64;
        out.write_all(&line)?;
    }
    if matches!(args.format, Format::Logs) {
        out.write_all(b"]}\n")?;
    }
    out.flush()?;
    Ok(bytes)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(bytes) => {
            eprintln!(
                "data-generator: wrote {} records ({:.1} MB) to {} ({:?}, seed {})",
                args.count,
                bytes as f64 / 1e6,
                args.out.display(),
                args.format,
                args.seed
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("data-generator: cannot write {}: {e}", args.out.display());
            ExitCode::FAILURE
        }
    }
}

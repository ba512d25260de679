//! `d2p-admin`: inspect and replay the dead-letter queue and the recovery bucket, for both
//! buffers.
//!
//! * `dlq list` prints the entries still waiting in the buffer (Redis), one JSON per line.
//! * `dlq replay [FILE...]` decodes each entry's `raw` text again and pushes the records
//!   that now decode; entries that still fail go back to the DLQ. With no file it replays
//!   the buffer's DLQ (Redis); with files it replays DLQ NDJSON files (what the writer wrote
//!   under `dlq/`, for any buffer).
//! * `recovery list` prints the recovery items in the buffer (Redis) and the files kept
//!   under `RecoveryPath`.
//! * `recovery replay` re-sends the buffer's recovery items, writes the files kept under
//!   `RecoveryPath` through the configured writer (deleting each once written), and
//!   re-ingests `unflushed/*.ndjson` records.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use data2parquet::buffer::{Buffer, DLQ_LOCK, DlqEntry};
use data2parquet::record::decode_json_as;
use data2parquet::{Config, Error, Receiver};

/// Inspect and replay the DLQ and the recovery bucket.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// JSON configuration file (the same as for json2parquet or http-server).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Override a configuration key: `--set BufferType=redis` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Debug)]
enum What {
    /// The dead-letter queue.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// The recovery bucket.
    Recovery {
        #[command(subcommand)]
        action: RecoveryAction,
    },
}

#[derive(Subcommand, Debug)]
enum DlqAction {
    /// Print the entries waiting in the buffer, one JSON object per line.
    List,
    /// Decode entries again; push what decodes, keep what still fails.
    Replay {
        /// DLQ NDJSON files (written under `dlq/`); none = the buffer's DLQ.
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum RecoveryAction {
    /// Print the recovery items and the files kept under RecoveryPath.
    List,
    /// Re-send everything that can be written now.
    Replay,
}

fn load_config(args: &Args) -> data2parquet::Result<Config> {
    Config::load(args.config.as_deref(), &args.set)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Waits (up to a minute) for the DLQ lock, which a running instance holds only while it
/// writes DLQ files, so replay and that instance never trim each other's entries.
fn take_dlq_lock(buffer: &dyn Buffer) -> data2parquet::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !buffer.try_lock(DLQ_LOCK)? {
        if std::time::Instant::now() >= deadline {
            return Err(Error::Buffer(
                "another instance has held the DLQ lock for a minute; try again later".into(),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    Ok(())
}

/// Decodes entries again: (records that now decode, entries that still fail).
fn redecode(
    receiver: &Receiver,
    entries: Vec<DlqEntry>,
) -> (Vec<data2parquet::Log>, Vec<DlqEntry>) {
    let mut records = Vec::new();
    let mut failing = Vec::new();
    for e in entries {
        // A DLQ entry holds the input as it came: decode it as this configuration's
        // record type (a dynamic record's entry is the record itself).
        let kind = receiver.config().record_type;
        match decode_json_as(e.raw.as_bytes(), kind, || {
            format!("DLQ entry ({})", e.reason)
        }) {
            Ok(log) => records.push(log),
            Err(err) => failing.push(receiver.dlq_entry(
                Some(e.key.clone()),
                format!("{}; replay: {err}", e.reason),
                e.raw,
            )),
        }
    }
    (records, failing)
}

fn run(args: &Args) -> data2parquet::Result<()> {
    let config = load_config(args)?;
    let recovery_path = PathBuf::from(&config.recovery_path);
    match &args.what {
        What::Dlq {
            action: DlqAction::List,
        } => {
            let buffer = data2parquet::build_buffer(&config)?;
            for e in buffer.get_dlq(usize::MAX)? {
                println!(
                    "{}",
                    serde_json::to_string(&e).map_err(|e| Error::Buffer(e.to_string()))?
                );
            }
        }
        What::Dlq {
            action: DlqAction::Replay { files },
        } => {
            // Its own lock identity, so a service on this host is not mistaken for us.
            let mut config = config;
            config.redis_lock_instance_name = format!(
                "{}-d2p-admin-{}",
                config.redis_lock_instance_name,
                std::process::id()
            );
            let buffer = data2parquet::build_buffer(&config)?;
            let receiver = Receiver::from_config(config)?;
            let (entries, from_buffer) = if files.is_empty() {
                take_dlq_lock(&*buffer)?;
                let entries = buffer.get_dlq(usize::MAX)?;
                let n = entries.len();
                (entries, Some(n))
            } else {
                let mut entries = Vec::new();
                for f in files {
                    let text =
                        std::fs::read_to_string(f).map_err(|e| Error::io("reading", f, e))?;
                    for (i, line) in text
                        .lines()
                        .enumerate()
                        .filter(|(_, l)| !l.trim().is_empty())
                    {
                        let e: DlqEntry =
                            serde_json::from_str(line).map_err(|e| Error::Decode {
                                what: format!("line {} of {}", i + 1, f.display()),
                                reason: format!("not a DLQ entry: {e}"),
                            })?;
                        entries.push(e);
                    }
                }
                (entries, None)
            };
            let total = entries.len();
            let (records, failing) = redecode(&receiver, entries);
            let (ok, still) = (records.len(), failing.len());
            receiver.push(records, failing)?;
            if let Some(n) = from_buffer {
                let cleared = buffer.clear_dlq(n);
                if let Err(e) = buffer.unlock(DLQ_LOCK) {
                    log::warn!("releasing the DLQ lock failed: {e}; it will expire by itself");
                }
                cleared?;
            }
            receiver.close()?;
            println!(
                "replayed {total} entries: {ok} records written, {still} still failing (back in the DLQ)"
            );
        }
        What::Recovery {
            action: RecoveryAction::List,
        } => {
            let buffer = data2parquet::build_buffer(&config)?;
            for item in buffer.get_recovery()? {
                println!(
                    "{}",
                    serde_json::json!({"id": item.id, "name": item.name, "key": item.key, "bytes": item.data.len(), "records": item.records, "attempts": item.attempts, "last_error": item.last_error})
                );
            }
            for f in files_under(&recovery_path) {
                println!("{}", serde_json::json!({"file": f}));
            }
        }
        What::Recovery {
            action: RecoveryAction::Replay,
        } => {
            let writer = data2parquet::build_writer(&config)?;
            writer.init()?;
            let receiver = Receiver::from_config(config)?;
            let resent = receiver.try_resend()?;
            let mut written = 0;
            let mut reingested = 0;
            for f in files_under(&recovery_path) {
                let rel = f
                    .strip_prefix(&recovery_path)
                    .map(|p| p.to_string_lossy().to_string())
                    .unwrap_or_default();
                if rel.starts_with("unflushed/") {
                    let text =
                        std::fs::read_to_string(&f).map_err(|e| Error::io("reading", &f, e))?;
                    // Kept as records of the configured type (dynamic ones as they came).
                    let kind = receiver.config().record_type;
                    let mut records = Vec::new();
                    for (i, line) in text
                        .lines()
                        .enumerate()
                        .filter(|(_, l)| !l.trim().is_empty())
                    {
                        records.push(decode_json_as(line.trim().as_bytes(), kind, || {
                            format!("line {} of {}", i + 1, f.display())
                        })?);
                    }
                    reingested += records.len();
                    receiver.push(records, Vec::new())?;
                } else {
                    let data = std::fs::read(&f).map_err(|e| Error::io("reading", &f, e))?;
                    writer.write(&rel, &data)?;
                    written += 1;
                }
                std::fs::remove_file(&f).map_err(|e| Error::io("removing", &f, e))?;
            }
            receiver.close()?;
            println!(
                "re-sent {resent} recovery items from the buffer, wrote {written} kept files, re-ingested {reingested} unflushed records"
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .try_init();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("d2p-admin: {e}");
            ExitCode::FAILURE
        }
    }
}

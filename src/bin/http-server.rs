//! `http-server`: REST ingestion (`POST /record/`, `POST /records/`, `POST /flush/`,
//! `GET /healthcheck/`, `GET /metrics`) on the shared engine. SIGINT/SIGTERM stop
//! accepting, flush everything, then exit.

/// jemalloc, as in json2parquet: records are freed on the flusher threads.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use data2parquet::{Config, Receiver};

/// Receives JSON log records over HTTP and writes partitioned Parquet files.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// JSON configuration file (the seed's format).
    #[arg(long, short, env = "D2P_CONFIG")]
    config: Option<PathBuf>,
    /// Override a configuration key: `--set BufferSize=5000` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Listen address (overrides `Address`; default 127.0.0.1).
    #[arg(long, env = "D2P_ADDRESS")]
    address: Option<String>,
    /// Listen port (overrides `Port`; default 8080).
    #[arg(long, env = "D2P_PORT")]
    port: Option<u16>,
}

fn load_config(args: &Args) -> data2parquet::Result<Config> {
    let mut config = Config::load(args.config.as_deref(), &args.set)?;
    if let Some(a) = &args.address {
        config.address = a.clone();
    }
    if let Some(p) = args.port {
        config.port = p;
    }
    config.validate()?;
    Ok(config)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    log::info!("shutdown requested: no new requests; flushing everything");
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("http-server: {e}");
            return ExitCode::from(2);
        }
    };
    let level = if config.debug { "debug" } else { "info" };
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .try_init();
    let address = if config.address.is_empty() {
        "127.0.0.1".to_string()
    } else {
        config.address.clone()
    };
    let bind = format!("{address}:{}", config.port);
    let max_body = config.max_body_bytes;
    let receiver = match Receiver::from_config(config) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            eprintln!("http-server: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("d2p-http")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("http-server: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let app = data2parquet::server::router(receiver.clone(), max_body);
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&bind)
            .await
            .map_err(|e| format!("cannot listen on {bind}: {e}"))?;
        log::info!("http-server listening on http://{bind}");
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(|e| format!("server error: {e}"))
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    let closed = receiver.close();
    let stats = receiver.stats();
    log::info!(
        "http-server stopped: received={} written={} dead-lettered={} files={}",
        stats.records_in,
        stats.records_written,
        stats.records_dlq,
        stats.files_written
    );
    if let Err(e) = served {
        eprintln!("http-server: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = closed {
        eprintln!("http-server: closing: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

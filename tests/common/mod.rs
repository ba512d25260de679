//! Test harness shared by the end-to-end tests: real `redis-server` and moto S3 servers
//! started on free loopback ports, the project's Python (pyarrow, DuckDB) as the
//! independent Parquet reader, and helpers to read Parquet back with the `parquet` crate.
//!
//! Nothing here skips: a missing component fails the test with a message saying how to
//! install it (`make test-deps`).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// Waits until `127.0.0.1:port` accepts connections.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Inodes of the sockets listening on TCP `port` (from `/proc/net/tcp` and `tcp6`).
fn listening_inodes(port: u16) -> Vec<String> {
    let want = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... uid timeout inode
            if cols.len() > 9 && cols[1].ends_with(&want) && cols[3] == "0A" {
                inodes.push(cols[9].to_string());
            }
        }
    }
    inodes
}

/// Whether process `pid` itself holds a socket listening on `port`: a port that merely
/// accepts connections may belong to another test's server, taken between
/// [`free_port`] and our server's bind.
pub fn pid_listens(pid: u32, port: u16) -> bool {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let t = target.to_string_lossy();
            inodes.iter().any(|i| t == format!("socket:[{i}]"))
        })
    })
}

/// How a started server came up.
enum Listen {
    /// It listens on the port.
    Up,
    /// It exited (could not bind: the port was taken).
    Exited,
    /// Neither within the timeout.
    TimedOut,
}

/// Waits until `child` itself listens on `port`, or exits.
fn wait_for_child(child: &mut Child, port: u16, timeout: Duration) -> Listen {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if pid_listens(child.id(), port) {
            return Listen::Up;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return Listen::Exited;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Listen::TimedOut
}

/// Starts a server with `spawn(port)` and waits until that very process listens. On a
/// port of our choosing (`fixed` = `None`), a server that exits (the port was taken in
/// the meantime) is started again on another free port. `what` names the server in a
/// failure (it may read the server's log).
pub fn start_listening(
    what: &dyn Fn() -> String,
    fixed: Option<u16>,
    timeout: Duration,
    mut spawn: impl FnMut(u16) -> Child,
) -> (Child, u16) {
    for _ in 0..5 {
        let port = fixed.unwrap_or_else(free_port);
        let mut child = spawn(port);
        match wait_for_child(&mut child, port, timeout) {
            Listen::Up => return (child, port),
            Listen::Exited if fixed.is_none() => continue,
            Listen::Exited => panic!("{} exited without listening on {port}", what()),
            Listen::TimedOut => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not listen on {port} within {timeout:?}", what());
            }
        }
    }
    panic!(
        "{} could not bind a free loopback port in 5 attempts",
        what()
    )
}

/// The Python interpreter with pyarrow, duckdb and moto (`D2P_PYTHON`, else `.venv`).
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("D2P_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = root().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run `make test-deps` (or `make test`) to install pyarrow, duckdb and moto",
        venv.display()
    );
    venv
}

/// A child process killed when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Extra `redis-server` options (password, AOF...).
#[derive(Default, Clone)]
pub struct RedisOptions {
    pub password: Option<String>,
    pub appendonly: bool,
    /// Reuse this data directory (for restart tests).
    pub dir: Option<PathBuf>,
    /// Use this port instead of a fresh one (for restart tests).
    pub port: Option<u16>,
}

/// Starts a real `redis-server` on a free loopback port.
pub fn start_redis(opts: &RedisOptions) -> Server {
    let bin = which("redis-server").unwrap_or_else(|| {
        panic!("redis-server is not installed: run `make test-deps` (Debian package redis-server)")
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = opts.dir.clone().unwrap_or_else(|| dir.path().to_path_buf());
    let (child, port) = start_listening(
        &|| "redis-server".into(),
        opts.port,
        Duration::from_secs(10),
        |port| {
            let mut cmd = Command::new(&bin);
            cmd.arg("--port")
                .arg(port.to_string())
                .arg("--bind")
                .arg("127.0.0.1")
                .arg("--save")
                .arg("")
                .arg("--dir")
                .arg(&data_dir)
                .arg("--appendonly")
                .arg(if opts.appendonly { "yes" } else { "no" })
                .arg("--appendfsync")
                .arg("always")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some(pw) = &opts.password {
                cmd.arg("--requirepass").arg(pw);
            }
            cmd.spawn().expect("starting redis-server")
        },
    );
    Server { child, port, dir }
}

/// Starts moto's S3/STS server (`moto_server` from the project's Python) on a free port.
pub fn start_moto() -> Server {
    start_moto_with(None, &[])
}

/// Starts moto's server on `port` (to restart one on the same address).
pub fn start_moto_on(port: u16) -> Server {
    start_moto_with(Some(port), &[])
}

/// Starts moto's server that checks credentials (IAM authentication on from the first
/// request), so bad keys are refused as AWS would.
pub fn start_moto_with_auth() -> Server {
    start_moto_with(None, &[("INITIAL_NO_AUTH_ACTION_COUNT", "0")])
}

fn start_moto_with(port: Option<u16>, env: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let py = python();
    let (child, port) = start_listening(
        &|| "moto server (is `moto[server]` installed? make test-deps)".into(),
        port,
        Duration::from_secs(30),
        |port| {
            Command::new(&py)
                .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
                .arg(port.to_string())
                .env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing")
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting moto server with {}: {e}", py.display()))
        },
    );
    Server { child, port, dir }
}

/// Finds an executable on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Every `*.parquet` file below `dir`, sorted.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    files_with_ext(dir, "parquet")
}

/// Every file with extension `ext` below `dir`, sorted.
pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
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
            } else if p.extension().and_then(|x| x.to_str()) == Some(ext) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Every entry of the NDJSON DLQ files under `out/dlq`.
pub fn dlq_entries(out: &Path) -> Vec<serde_json::Value> {
    files_with_ext(&out.join("dlq"), "ndjson")
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .expect("read dlq")
                .lines()
                .map(|l| serde_json::from_str(l).expect("ndjson"))
                .collect::<Vec<serde_json::Value>>()
        })
        .collect()
}

/// Reads a Parquet file with the `parquet` crate.
pub fn read_parquet(bytes: Vec<u8>) -> Vec<RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .expect("valid parquet footer")
        .build()
        .expect("reader")
        .collect::<Result<Vec<_>, _>>()
        .expect("readable batches")
}

/// Reads Parquet files with the `parquet` crate and returns every row as JSON objects
/// (column name -> value), via arrow's JSON writer.
pub fn rows_with_parquet_crate(files: &[PathBuf]) -> Vec<serde_json::Value> {
    let mut rows = Vec::new();
    for f in files {
        let batches = read_parquet(std::fs::read(f).expect("read file"));
        let mut buf = Vec::new();
        {
            let mut w = arrow_json_writer(&mut buf);
            for b in &batches {
                w.write(b).expect("to json");
            }
            w.finish().expect("finish");
        }
        for line in String::from_utf8(buf).expect("utf8").lines() {
            if !line.trim().is_empty() {
                rows.push(serde_json::from_str(line).expect("json row"));
            }
        }
    }
    rows
}

fn arrow_json_writer(buf: &mut Vec<u8>) -> arrow_json::LineDelimitedWriter<&mut Vec<u8>> {
    arrow_json::LineDelimitedWriter::new(buf)
}

/// Reads Parquet files with pyarrow (the independent reader) and returns every row as a
/// JSON object, plus the schema pyarrow sees.
pub fn rows_with_pyarrow(files: &[PathBuf]) -> (Vec<serde_json::Value>, String) {
    let script = root().join("tests/py/read_parquet.py");
    let out = Command::new(python())
        .arg(&script)
        .args(files)
        .output()
        .expect("running the pyarrow reader");
    assert!(
        out.status.success(),
        "pyarrow could not read the files: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("reader output is JSON");
    let rows = v["rows"].as_array().cloned().unwrap_or_default();
    (rows, v["schema"].as_str().unwrap_or_default().to_string())
}

/// Counts rows of Parquet files with DuckDB (a second independent reader).
pub fn count_with_duckdb(glob: &str) -> u64 {
    let out = Command::new(python())
        .args([
            "-c",
            "import duckdb,sys; print(duckdb.sql(f\"select count(*) from read_parquet('{sys.argv[1]}', hive_partitioning=false)\").fetchall()[0][0])",
            glob,
        ])
        .output()
        .expect("running duckdb");
    assert!(
        out.status.success(),
        "duckdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a count")
}

/// A debug rendering of a Parquet file's metadata (codecs, row groups, statistics).
pub fn read_parquet_metadata(path: &Path) -> String {
    let bytes = bytes::Bytes::from(std::fs::read(path).expect("read parquet"));
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).expect("footer");
    format!("{:?}", builder.metadata())
}

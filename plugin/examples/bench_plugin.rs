//! Benchmark driver: loads `libout_parquet.so` the way Fluent Bit does and pushes JSON
//! Lines records through `FLBPluginFlushCtx` as v2 msgpack chunks, then `FLBPluginExitCtx`
//! (which writes the last files). Prints one JSON line: records, wall seconds, CPU seconds
//! (user + system of the whole process, so the plugin's own threads count) and peak RSS.
//!
//! `bench_plugin SO INPUT.jsonl OUT_DIR [CHUNK_RECORDS] [FLUSH_THREADS]`

use std::ffi::{CString, c_char, c_int, c_void};
use std::io::BufRead;
use std::time::Instant;

#[repr(C)]
struct Def {
    type_: c_int,
    proxy: c_int,
    flags: c_int,
    name: *const c_char,
    description: *const c_char,
    event_type: c_int,
    config_map: *mut c_void,
}

#[repr(C)]
struct ProxyContext {
    remote_context: *mut c_void,
    proxy: *mut c_void,
}

#[repr(C)]
struct Api {
    output_get_property: extern "C" fn(*const c_char, *mut c_void) -> *const c_char,
    unused: [usize; 3],
    log_print: usize,
    input_log_check: usize,
    output_log_check: usize,
    custom: [usize; 2],
}

#[repr(C)]
struct GoPlugin {
    name: *mut c_char,
    api: *mut Api,
    o_ins: *mut c_void,
    context: *mut ProxyContext,
    callbacks: [usize; 5],
}

struct Props(Vec<(String, CString)>);

extern "C" fn get_property(key: *const c_char, ins: *mut c_void) -> *const c_char {
    // SAFETY: a NUL-terminated key and the Props this program passed as o_ins.
    let key = unsafe { std::ffi::CStr::from_ptr(key) }
        .to_string_lossy()
        .to_ascii_lowercase();
    let props = unsafe { &*(ins as *const Props) };
    props
        .0
        .iter()
        .find(|(k, _)| *k == key)
        .map_or(std::ptr::null(), |(_, v)| v.as_ptr())
}

fn write_value(out: &mut Vec<u8>, v: &serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Null => rmp::encode::write_nil(out).expect("vec"),
        Value::Bool(b) => rmp::encode::write_bool(out, *b).expect("vec"),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                rmp::encode::write_uint(out, u).expect("vec");
            } else if let Some(i) = n.as_i64() {
                rmp::encode::write_sint(out, i).expect("vec");
            } else {
                rmp::encode::write_f64(out, n.as_f64().unwrap_or_default()).expect("vec");
            }
        }
        Value::String(s) => rmp::encode::write_str(out, s).expect("vec"),
        Value::Array(a) => {
            rmp::encode::write_array_len(out, a.len() as u32).expect("vec");
            a.iter().for_each(|x| write_value(out, x));
        }
        Value::Object(m) => {
            rmp::encode::write_map_len(out, m.len() as u32).expect("vec");
            for (k, x) in m {
                rmp::encode::write_str(out, k).expect("vec");
                write_value(out, x);
            }
        }
    }
}

fn proc_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after = &stat[stat.rfind(')').expect("comm end") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert!(
        args.len() >= 4,
        "usage: bench_plugin SO INPUT.jsonl OUT_DIR [CHUNK] [THREADS]"
    );
    let chunk_records: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let threads: usize = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(1);

    // Encode every record as a v2 event, `chunk_records` per chunk (not timed).
    let file = std::fs::File::open(&args[2]).expect("input file");
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut current = Vec::new();
    let mut in_chunk = 0;
    let mut records = 0u64;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.expect("read line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json line");
        current.extend_from_slice(&[0x92, 0x92, 0xd7, 0x00]);
        current.extend_from_slice(&(1_700_000_000u32 + i as u32).to_be_bytes());
        current.extend_from_slice(&(i as u32 % 1_000_000_000).to_be_bytes());
        current.push(0x80);
        write_value(&mut current, &v);
        records += 1;
        in_chunk += 1;
        if in_chunk == chunk_records {
            chunks.push(std::mem::take(&mut current));
            in_chunk = 0;
        }
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    let rss_before_kb = status_kb("VmRSS:");

    // The decoder alone (chunk -> records), single-threaded, for the cost breakdown.
    let d0 = proc_cpu_seconds();
    let mut decoded = 0usize;
    for c in &chunks {
        decoded += data2parquet::fluent::decode_chunk(
            c,
            "bench.app",
            data2parquet::config::RecordType::Log,
        )
        .expect("decodes")
        .records
        .len();
    }
    let decode_cpu = proc_cpu_seconds() - d0;
    assert_eq!(decoded as u64, records);

    // SAFETY: loading the plugin under test; the symbols have the documented signatures.
    let lib = unsafe { libloading::Library::new(&args[1]) }.expect("dlopen");
    type Reg = unsafe extern "C" fn(*mut Def) -> c_int;
    type Init = unsafe extern "C" fn(*mut GoPlugin) -> c_int;
    type Flush = unsafe extern "C" fn(*mut c_void, *const c_void, usize, *mut c_char) -> c_int;
    type Exit = unsafe extern "C" fn(*mut c_void) -> c_int;
    let (reg, init, flush, exit) = unsafe {
        (
            *lib.get::<Reg>(b"FLBPluginRegister").expect("sym"),
            *lib.get::<Init>(b"FLBPluginInit").expect("sym"),
            *lib.get::<Flush>(b"FLBPluginFlushCtx").expect("sym"),
            *lib.get::<Exit>(b"FLBPluginExitCtx").expect("sym"),
        )
    };
    let mut def = Def {
        type_: 0,
        proxy: 0,
        flags: 0,
        name: std::ptr::null(),
        description: std::ptr::null(),
        event_type: 0,
        config_map: std::ptr::null_mut(),
    };
    // SAFETY: a writable zeroed def.
    assert_eq!(unsafe { reg(&mut def) }, 0);
    let mut api = Api {
        output_get_property: get_property,
        unused: [0; 3],
        log_print: 0,
        input_log_check: 0,
        output_log_check: 0,
        custom: [0; 2],
    };
    let mut props = Props(
        [
            ("writerfilepath", args[3].clone()),
            ("recoverypath", format!("{}/recovery", args[3])),
            ("buffersize", "10000".into()),
            ("buffermaxbytes", "256M".into()),
            ("writercompressiontype", "snappy".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), CString::new(v).expect("no NUL")))
        .collect(),
    );
    let mut ctx = ProxyContext {
        remote_context: std::ptr::null_mut(),
        proxy: std::ptr::null_mut(),
    };
    let mut plugin = GoPlugin {
        name: std::ptr::null_mut(),
        api: &mut api,
        o_ins: (&mut props as *mut Props).cast(),
        context: &mut ctx,
        callbacks: [0; 5],
    };
    // SAFETY: valid plugin object for this instance.
    assert_eq!(unsafe { init(&mut plugin) }, 1, "FLBPluginInit failed");
    let remote = ctx.remote_context as usize;
    let tag = CString::new("bench.app").expect("no NUL");

    let cpu0 = proc_cpu_seconds();
    let t0 = Instant::now();
    let mut retries = 0u64;
    std::thread::scope(|s| {
        let per = chunks.len().div_ceil(threads.max(1));
        let mut handles = Vec::new();
        for part in chunks.chunks(per.max(1)) {
            let tag = &tag;
            handles.push(s.spawn(move || {
                let mut retries = 0u64;
                for c in part {
                    loop {
                        // SAFETY: the live context, a borrowed chunk and a NUL-terminated tag.
                        let rc = unsafe {
                            flush(
                                remote as *mut c_void,
                                c.as_ptr().cast(),
                                c.len(),
                                tag.as_ptr().cast_mut(),
                            )
                        };
                        match rc {
                            1 => break,
                            2 => {
                                retries += 1;
                                std::thread::sleep(std::time::Duration::from_millis(20));
                            }
                            other => panic!("flush returned {other}"),
                        }
                    }
                }
                retries
            }));
        }
        for h in handles {
            retries += h.join().expect("flush thread");
        }
    });
    let flush_wall = t0.elapsed().as_secs_f64();
    // SAFETY: the live context, once.
    unsafe { exit(remote as *mut c_void) };
    let wall = t0.elapsed().as_secs_f64();
    let cpu = proc_cpu_seconds() - cpu0;
    println!(
        "{}",
        serde_json::json!({
            "records": records,
            "chunks": chunks.len(),
            "chunk_records": chunk_records,
            "flush_threads": threads,
            "wall_s": wall,
            "flush_wall_s": flush_wall,
            "cpu_s": cpu,
            "decode_only_cpu_s": decode_cpu,
            "retries": retries,
            "rss_before_kb": rss_before_kb,
            "peak_rss_kb": status_kb("VmHWM:"),
        })
    );
}

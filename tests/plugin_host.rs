//! A Fluent Bit stand-in: loads the built `libout_parquet.so` exactly as Fluent Bit's Go
//! proxy does (dlopen, Register on a zeroed def, Init with an `flb_api` whose
//! `output_get_property` serves this test's keys, FlushCtx with msgpack chunks, ExitCtx,
//! Unregister) and reads the Parquet files back with the parquet crate and pyarrow.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use rmp::encode;

const FLB_ERROR: c_int = 0;
const FLB_OK: c_int = 1;
const FLB_RETRY: c_int = 2;

/// `struct flb_plugin_proxy_def` as Fluent Bit 5.1 allocates it (calloc, 48 bytes).
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

/// `struct flb_api` (72 bytes). `log_print` is a C variadic in Fluent Bit; the plugin always
/// calls it as `(level, NULL, 0, "%s", msg)`, and on x86-64 SysV a non-variadic callee with
/// those five integer-class arguments reads them from the same registers.
#[repr(C)]
struct Api {
    output_get_property: extern "C" fn(*const c_char, *mut c_void) -> *const c_char,
    input_get_property: usize,
    output_get_cmt_instance: usize,
    input_get_cmt_instance: usize,
    log_print: extern "C" fn(c_int, *const c_char, c_int, *const c_char, *const c_char),
    input_log_check: usize,
    output_log_check: extern "C" fn(*mut c_void, c_int) -> c_int,
    custom_get_property: usize,
    custom_log_check: usize,
}

/// `struct flbgo_output_plugin` (72 bytes): one per loaded library, reused for every Init.
#[repr(C)]
struct GoPlugin {
    name: *mut c_char,
    api: *mut Api,
    o_ins: *mut c_void,
    context: *mut ProxyContext,
    callbacks: [usize; 5],
}

/// What `o_ins` points to in this host: the instance's properties, keys lower-cased
/// (Fluent Bit's lookup is case-insensitive).
struct Props {
    map: HashMap<String, CString>,
}

extern "C" fn get_property(key: *const c_char, ins: *mut c_void) -> *const c_char {
    // SAFETY: the plugin passes a NUL-terminated key and the o_ins this host set.
    let key = unsafe { CStr::from_ptr(key) }
        .to_string_lossy()
        .to_ascii_lowercase();
    let props = unsafe { &*(ins as *const Props) };
    props.map.get(&key).map_or(std::ptr::null(), |v| v.as_ptr())
}

fn log_lines() -> &'static Mutex<Vec<(c_int, String)>> {
    static LINES: OnceLock<Mutex<Vec<(c_int, String)>>> = OnceLock::new();
    LINES.get_or_init(|| Mutex::new(Vec::new()))
}

extern "C" fn log_print(
    level: c_int,
    _file: *const c_char,
    _line: c_int,
    fmt: *const c_char,
    arg: *const c_char,
) {
    // SAFETY: the plugin passes "%s" and one NUL-terminated string.
    let fmt = unsafe { CStr::from_ptr(fmt) }
        .to_string_lossy()
        .into_owned();
    assert_eq!(
        fmt, "%s",
        "the plugin must never pass its text as the format"
    );
    let text = unsafe { CStr::from_ptr(arg) }
        .to_string_lossy()
        .into_owned();
    eprintln!("[flb log {level}] {text}");
    log_lines().lock().expect("log lock").push((level, text));
}

extern "C" fn log_check(_ins: *mut c_void, level: c_int) -> c_int {
    c_int::from(level <= 3)
}

fn logged(needle: &[&str]) -> bool {
    log_lines()
        .lock()
        .expect("log lock")
        .iter()
        .any(|(_, l)| needle.iter().all(|n| l.contains(n)))
}

type RegisterFn = unsafe extern "C" fn(*mut Def) -> c_int;
type InitFn = unsafe extern "C" fn(*mut GoPlugin) -> c_int;
type FlushCtxFn = unsafe extern "C" fn(*mut c_void, *const c_void, usize, *mut c_char) -> c_int;
type ExitCtxFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type UnregisterFn = unsafe extern "C" fn(*mut Def);

fn plugin_path() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            // D2P_PLUGIN_SO: test an already built library (for example a release build).
            if let Some(so) = std::env::var_os("D2P_PLUGIN_SO") {
                let so = PathBuf::from(so);
                assert!(
                    so.is_file(),
                    "D2P_PLUGIN_SO={} does not exist",
                    so.display()
                );
                return so;
            }
            let root = common::root();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(&root)
                .args(["build", "-p", "out_parquet"])
                .status()
                .expect("running cargo build -p out_parquet");
            assert!(status.success(), "building the plugin failed");
            let so = root.join("target/debug/libout_parquet.so");
            assert!(so.is_file(), "{} was not built", so.display());
            so
        })
        .clone()
}

/// One "Fluent Bit": the loaded library plus the structures Fluent Bit owns.
struct Host {
    _lib: libloading::Library,
    register: RegisterFn,
    init: InitFn,
    flush: FlushCtxFn,
    exit: ExitCtxFn,
    unregister: UnregisterFn,
    plugin: Mutex<Box<GoPlugin>>,
    _api: Box<Api>,
}

/// One `[OUTPUT]` instance as Fluent Bit holds it.
struct Instance {
    ctx: Box<ProxyContext>,
    _props: Box<Props>,
    dir: PathBuf,
}

// SAFETY (test): the context pointer is only used through the plugin's thread-safe ABI.
unsafe impl Send for Instance {}
unsafe impl Sync for Instance {}
unsafe impl Send for Host {}
unsafe impl Sync for Host {}

impl Host {
    fn load() -> Host {
        // SAFETY: loading our own plugin; its initialisers are plain Rust statics.
        let lib =
            unsafe { libloading::Library::new(plugin_path()) }.expect("dlopen libout_parquet.so");
        // SAFETY: the symbols have these C signatures (include/out_parquet.h).
        let (register, init, flush, exit, unregister) = unsafe {
            (
                *lib.get::<RegisterFn>(b"FLBPluginRegister")
                    .expect("FLBPluginRegister"),
                *lib.get::<InitFn>(b"FLBPluginInit").expect("FLBPluginInit"),
                *lib.get::<FlushCtxFn>(b"FLBPluginFlushCtx")
                    .expect("FLBPluginFlushCtx"),
                *lib.get::<ExitCtxFn>(b"FLBPluginExitCtx")
                    .expect("FLBPluginExitCtx"),
                *lib.get::<UnregisterFn>(b"FLBPluginUnregister")
                    .expect("FLBPluginUnregister"),
            )
        };
        for optional in [
            &b"FLBPluginFlush"[..],
            b"FLBPluginExit",
            b"FLBPluginPreRegister",
        ] {
            // SAFETY: only checking that the symbol exists.
            assert!(unsafe { lib.get::<*const c_void>(optional) }.is_ok());
        }
        let mut api = Box::new(Api {
            output_get_property: get_property,
            input_get_property: 0,
            output_get_cmt_instance: 0,
            input_get_cmt_instance: 0,
            log_print,
            input_log_check: 0,
            output_log_check: log_check,
            custom_get_property: 0,
            custom_log_check: 0,
        });
        let plugin = Box::new(GoPlugin {
            name: std::ptr::null_mut(),
            api: &mut *api,
            o_ins: std::ptr::null_mut(),
            context: std::ptr::null_mut(),
            callbacks: [0; 5],
        });
        Host {
            _lib: lib,
            register,
            init,
            flush,
            exit,
            unregister,
            plugin: Mutex::new(plugin),
            _api: api,
        }
    }

    /// Register on a zeroed def (as Fluent Bit 5.x does) and check what the plugin wrote.
    fn register(&self) -> Box<Def> {
        let mut def = Box::new(Def {
            type_: 0,
            proxy: 0,
            flags: 0,
            name: std::ptr::null(),
            description: std::ptr::null(),
            event_type: 0x7777,
            config_map: 0x1234 as *mut c_void,
        });
        // SAFETY: a valid, writable def.
        assert_eq!(unsafe { (self.register)(&mut *def) }, 0);
        assert_eq!((def.type_, def.proxy, def.flags), (2, 11, 0));
        // SAFETY: the plugin set static NUL-terminated strings.
        assert_eq!(
            unsafe { CStr::from_ptr(def.name) }.to_str().expect("utf8"),
            "out_parquet"
        );
        assert!(
            !unsafe { CStr::from_ptr(def.description) }
                .to_bytes()
                .is_empty()
        );
        assert_eq!(
            def.event_type, 0x7777,
            "Register must not write past the 5-field prefix"
        );
        assert_eq!(def.config_map as usize, 0x1234);
        def
    }

    fn unregister(&self, def: &mut Def) {
        // SAFETY: the def this host registered.
        unsafe { (self.unregister)(def) };
    }

    /// Init with these properties; `Err(code)` when the plugin refuses.
    fn init(&self, dir: &Path, props: &[(&str, &str)]) -> Result<Instance, c_int> {
        let mut map: HashMap<String, CString> = props
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), CString::new(*v).expect("no NUL")))
            .collect();
        map.entry("writerfilepath".into())
            .or_insert_with(|| CString::new(dir.to_str().expect("utf8 path")).expect("no NUL"));
        map.entry("recoverypath".into()).or_insert_with(|| {
            CString::new(dir.join("recovery").to_str().expect("utf8 path")).expect("no NUL")
        });
        let mut props = Box::new(Props { map });
        let mut ctx = Box::new(ProxyContext {
            remote_context: std::ptr::null_mut(),
            proxy: std::ptr::null_mut(),
        });
        let mut plugin = self.plugin.lock().expect("plugin lock");
        plugin.o_ins = (&mut *props as *mut Props).cast();
        plugin.context = &mut *ctx;
        // SAFETY: the plugin object is valid; Fluent Bit serialises Init calls the same way.
        let rc = unsafe { (self.init)(&mut **plugin) };
        if rc <= 0 {
            assert!(
                ctx.remote_context.is_null(),
                "failed Init must not leave a context"
            );
            return Err(rc);
        }
        assert!(!ctx.remote_context.is_null());
        Ok(Instance {
            ctx,
            _props: props,
            dir: dir.to_path_buf(),
        })
    }

    fn flush(&self, inst: &Instance, chunk: &[u8], tag: &str) -> c_int {
        // Fluent Bit passes a temporary malloc'ed copy of the tag and a borrowed buffer.
        let tag = CString::new(tag).expect("no NUL");
        let data = chunk.to_vec();
        // SAFETY: a live context, `data.len()` readable bytes, a NUL-terminated tag.
        unsafe {
            (self.flush)(
                inst.ctx.remote_context,
                data.as_ptr().cast(),
                data.len(),
                tag.as_ptr().cast_mut(),
            )
        }
    }

    fn exit(&self, inst: Instance) -> PathBuf {
        // SAFETY: the live context, passed once.
        unsafe { (self.exit)(inst.ctx.remote_context) };
        inst.dir
    }
}

/// Encoding of one event.
#[derive(Clone, Copy, Debug)]
enum Form {
    V2Fixext,
    V2Ext8Map32Meta,
    V1Fixext,
    V1Ext8,
    V1Int,
    V1Float,
    V2IntHeader,
}

const FORMS: [Form; 7] = [
    Form::V2Fixext,
    Form::V2Ext8Map32Meta,
    Form::V1Fixext,
    Form::V1Ext8,
    Form::V1Int,
    Form::V1Float,
    Form::V2IntHeader,
];

fn ext_time(out: &mut Vec<u8>, sec: u32, nsec: u32, ext8: bool) {
    if ext8 {
        out.extend_from_slice(&[0xc7, 8, 0]);
    } else {
        out.extend_from_slice(&[0xd7, 0]);
    }
    out.extend_from_slice(&sec.to_be_bytes());
    out.extend_from_slice(&nsec.to_be_bytes());
}

fn write_body(out: &mut Vec<u8>, msg: &str, pad: usize) {
    let mut fields: Vec<(&str, String)> = vec![
        ("message", msg.to_string()),
        ("level", "info".into()),
        ("business_capability", "cap".into()),
        ("business_domain", "dom".into()),
        ("business_service", "svc".into()),
        ("application_service", "app".into()),
    ];
    if pad > 0 {
        // Incompressible padding (hex of a xorshift stream seeded by the message), so the
        // encoded Parquet is about as large as the input.
        let mut x: u64 = msg.bytes().fold(0x9E37_79B9_7F4A_7C15, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
        });
        let padding: String = (0..pad)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b"0123456789abcdef"[(x & 15) as usize])
            })
            .collect();
        fields.push(("stack_trace", padding));
    }
    // map16 header on purpose (any width must be accepted)
    out.push(0xde);
    out.extend_from_slice(&(fields.len() as u16).to_be_bytes());
    for (k, v) in fields {
        encode::write_str(out, k).expect("vec write");
        encode::write_str(out, &v).expect("vec write");
    }
}

/// One event with message `msg` at second `sec` in the given form.
fn event(out: &mut Vec<u8>, form: Form, msg: &str, sec: u32, pad: usize) {
    match form {
        Form::V2Fixext => {
            out.extend_from_slice(&[0x92, 0x92]);
            ext_time(out, sec, 123, false);
            out.push(0x80);
        }
        Form::V2Ext8Map32Meta => {
            out.extend_from_slice(&[0x92, 0x92]);
            ext_time(out, sec, 456, true);
            out.extend_from_slice(&[0xdf, 0, 0, 0, 1]);
            encode::write_str(out, "k").expect("vec write");
            encode::write_str(out, "v").expect("vec write");
        }
        Form::V1Fixext => {
            out.push(0x92);
            ext_time(out, sec, 789, false);
        }
        Form::V1Ext8 => {
            out.push(0x92);
            ext_time(out, sec, 1, true);
        }
        Form::V1Int => {
            out.push(0x92);
            encode::write_u64(out, u64::from(sec)).expect("vec write");
        }
        Form::V1Float => {
            out.push(0x92);
            encode::write_f64(out, f64::from(sec) + 0.5).expect("vec write");
        }
        Form::V2IntHeader => {
            out.extend_from_slice(&[0x92, 0x92]);
            encode::write_u32(out, sec).expect("vec write");
            out.push(0x80);
        }
    }
    write_body(out, msg, pad);
}

fn group_marker(out: &mut Vec<u8>, start: bool) {
    out.extend_from_slice(&[0x92, 0x92]);
    ext_time(out, if start { 0xFFFF_FFFF } else { 0xFFFF_FFFE }, 0, false);
    out.push(0x80);
    out.push(0x80);
}

/// A chunk of `n` events named `{prefix}-{i}` cycling through every form, wrapped in a
/// group start/end pair.
fn chunk(prefix: &str, n: usize, pad: usize) -> (Vec<u8>, Vec<String>) {
    let mut out = Vec::new();
    let mut names = Vec::with_capacity(n);
    group_marker(&mut out, true);
    for i in 0..n {
        let msg = format!("{prefix}-{i}");
        event(
            &mut out,
            FORMS[i % FORMS.len()],
            &msg,
            1_700_000_000 + i as u32,
            pad,
        );
        names.push(msg);
    }
    group_marker(&mut out, false);
    (out, names)
}

fn messages_in(dir: &Path) -> Vec<String> {
    let files = common::parquet_files(dir);
    let rows = common::rows_with_parquet_crate(&files);
    let mut got: Vec<String> = rows
        .iter()
        .map(|r| r["message"].as_str().expect("message column").to_string())
        .collect();
    got.sort();
    let (py_rows, _) = common::rows_with_pyarrow(&files);
    let mut py: Vec<String> = py_rows
        .iter()
        .map(|r| r["message"].as_str().expect("message column").to_string())
        .collect();
    py.sort();
    assert_eq!(got, py, "parquet crate and pyarrow disagree");
    got
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn host() -> Arc<Host> {
    static HOST: OnceLock<Arc<Host>> = OnceLock::new();
    HOST.get_or_init(|| {
        let h = Arc::new(Host::load());
        // Fluent Bit keeps this def until Unregister at shutdown; the tests never get there.
        std::mem::forget(h.register());
        h
    })
    .clone()
}

#[test]
fn two_instances_every_encoding_read_back_exactly() {
    let h = host();
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = h
        .init(
            &tmp.path().join("a"),
            &[("WriterCompressionType", "zstd"), ("BufferSize", "50")],
        )
        .expect("init a");
    let b = h
        .init(
            &tmp.path().join("b"),
            &[
                ("writercompressiontype", "gzip"),
                ("FLUSHINTERVAL", "1"),
                // Files left to the kernel's writeback: still complete and all there.
                ("WriterFileSync", "off"),
            ],
        )
        .expect("init b");
    let mut want_a = Vec::new();
    let mut want_b = Vec::new();
    for round in 0..5 {
        let (ca, na) = chunk(&format!("a{round}"), 70, 0);
        let (cb, nb) = chunk(&format!("b{round}"), 33, 0);
        assert_eq!(h.flush(&a, &ca, "app.a"), FLB_OK);
        assert_eq!(h.flush(&b, &cb, "app.b"), FLB_OK);
        want_a.extend(na);
        want_b.extend(nb);
    }
    let dir_a = h.exit(a);
    let dir_b = h.exit(b);
    // The key reached b's writer (and only b's).
    let (path_a, path_b) = (dir_a.display().to_string(), dir_b.display().to_string());
    assert!(logged(&["WriterFileSync false", &format!("{path_b}: ")]));
    assert!(!logged(&["WriterFileSync false", &format!("{path_a}: ")]));
    assert_eq!(messages_in(&dir_a), sorted(want_a));
    assert_eq!(messages_in(&dir_b), sorted(want_b));

    // Times and args: the first events of a chunk in each form.
    let (rows, _) = common::rows_with_pyarrow(&common::parquet_files(&dir_a));
    let by_msg: BTreeMap<String, &serde_json::Value> = rows
        .iter()
        .map(|r| (r["message"].as_str().expect("message").to_string(), r))
        .collect();
    let expect = [
        ("a0-0", "2023-11-14T22:13:20.000000123Z"),
        ("a0-1", "2023-11-14T22:13:21.000000456Z"),
        ("a0-2", "2023-11-14T22:13:22.000000789Z"),
        ("a0-3", "2023-11-14T22:13:23.000000001Z"),
        ("a0-4", "2023-11-14T22:13:24.000000000Z"),
        ("a0-5", "2023-11-14T22:13:25.500000000Z"),
        ("a0-6", "2023-11-14T22:13:26.000000000Z"),
    ];
    for (msg, time) in expect {
        let row = by_msg[msg];
        assert_eq!(row["time"], time, "{msg}");
        assert_eq!(row["args"]["fluent-tag"], "app.a", "{msg}");
        assert_eq!(row["args"]["fluent-time"], time, "{msg}");
    }
    assert_eq!(by_msg["a0-1"]["args"]["fluent-metadata"], r#"{"k":"v"}"#);
    assert!(
        !rows
            .iter()
            .any(|r| r["time"].as_str().is_some_and(|t| t.starts_with("2106")))
    );
}

#[test]
fn several_threads_flush_one_instance() {
    let h = host();
    let tmp = tempfile::tempdir().expect("tempdir");
    let inst = Arc::new(h.init(tmp.path(), &[("BufferSize", "500")]).expect("init"));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let h = h.clone();
            let inst = inst.clone();
            std::thread::spawn(move || {
                let mut names = Vec::new();
                for c in 0..20 {
                    let (data, n) = chunk(&format!("t{t}c{c}"), 50, 0);
                    assert_eq!(h.flush(&inst, &data, &format!("thread.{t}")), FLB_OK);
                    names.extend(n);
                }
                names
            })
        })
        .collect();
    let mut want = Vec::new();
    for t in threads {
        want.extend(t.join().expect("flush thread"));
    }
    let inst = Arc::into_inner(inst).expect("threads are done");
    let dir = h.exit(inst);
    assert_eq!(want.len(), 4000);
    assert_eq!(messages_in(&dir), sorted(want));
    assert_eq!(
        common::count_with_duckdb(&format!("{}/**/*.parquet", dir.display())),
        4000
    );
}

#[test]
fn garbage_and_truncated_chunks() {
    let h = host();
    let tmp = tempfile::tempdir().expect("tempdir");
    let inst = h.init(tmp.path(), &[]).expect("init");
    // Pure garbage: nothing can be decoded, Fluent Bit must drop it, and we say why.
    assert_eq!(
        h.flush(&inst, b"\xc1this is not msgpack", "bad.garbage"),
        FLB_ERROR
    );
    assert!(logged(&["bad.garbage", "cannot be decoded"]));
    // Truncated inside the first event: nothing to keep either.
    let (full, names) = chunk("tr", 10, 0);
    assert_eq!(h.flush(&inst, &full[..7], "bad.trunc-first"), FLB_ERROR);
    assert!(logged(&["bad.trunc-first", "cannot be decoded"]));
    // Truncated in the middle: the complete events are kept, the tail goes to the DLQ.
    // 14 bytes of group-end marker, then 5 bytes into the last event.
    let cut = full.len() - 14 - 5;
    assert_eq!(h.flush(&inst, &full[..cut], "bad.trunc-mid"), FLB_OK);
    assert!(logged(&["bad.trunc-mid", "dead-letter"]));
    // A good chunk with garbage appended, and an event whose body is not a map.
    let (good, good_names) = chunk("good", 5, 0);
    let mut with_garbage = good.clone();
    with_garbage.extend_from_slice(b"\x07\x08garbage");
    assert_eq!(h.flush(&inst, &with_garbage, "bad.tail"), FLB_OK);
    let mut not_map = Vec::new();
    not_map.extend_from_slice(&[0x92, 0x01]);
    encode::write_str(&mut not_map, "body is a string").expect("vec write");
    event(&mut not_map, Form::V2Fixext, "after-bad-body", 5, 0);
    assert_eq!(h.flush(&inst, &not_map, "bad.body"), FLB_OK);
    // An empty chunk (Fluent Bit never sends one, but it must not fail).
    assert_eq!(h.flush(&inst, &[], "empty"), FLB_OK);
    let dir = h.exit(inst);
    let mut want: Vec<String> = names[..9].to_vec();
    want.extend(good_names);
    want.push("after-bad-body".into());
    assert_eq!(messages_in(&dir), sorted(want));
    let dlq_files = common::files_with_ext(&dir, "ndjson");
    let dlq: String = dlq_files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("dlq file"))
        .collect();
    assert_eq!(dlq.lines().count(), 3, "{dlq}");
    assert!(dlq.contains("body is a string"), "{dlq}");
    assert!(dlq.contains("framing broken"), "{dlq}");
}

#[test]
fn bad_config_value_fails_init_with_a_log_line() {
    let h = host();
    let tmp = tempfile::tempdir().expect("tempdir");
    for (key, value) in [
        ("BufferSize", "lots"),
        ("WriterCompressionType", "lz4"),
        ("BufferMaxBytes", "12"),
    ] {
        let rc = h
            .init(tmp.path(), &[(key, value)])
            .map(|_| ())
            .expect_err("must refuse");
        assert_eq!(rc, 0);
        assert!(
            logged(&[key, value, "invalid configuration"]),
            "no log line for {key}={value}"
        );
    }
    let rc = h
        .init(tmp.path(), &[("BufferType", "redis")])
        .map(|_| ())
        .expect_err("no host");
    assert_eq!(rc, 0);
    assert!(logged(&["RedisHost"]));
}

#[test]
fn full_buffer_returns_retry_then_the_retry_succeeds() {
    let h = host();
    let tmp = tempfile::tempdir().expect("tempdir");
    // The target is broken at first (a file where the capability directory must go), so
    // what the flusher takes out of the buffer stays in memory as recovery data: the bound
    // is reached deterministically, whatever the timing of the background flush.
    let impatient_dir = tmp.path().join("impatient");
    std::fs::create_dir_all(&impatient_dir).expect("dir");
    let blocker = impatient_dir.join("capability=cap");
    std::fs::write(&blocker, b"not a directory").expect("blocker");
    let inst = h
        .init(
            &impatient_dir,
            &[
                ("BufferMaxBytes", "1M"),
                ("BufferSize", "1000000"),
                ("FlushInterval", "0"),
                ("BufferFullWait", "0"),
                ("TryAutoRecover", "true"),
            ],
        )
        .expect("init");
    // Each chunk holds well over half of the 1 MiB bound, and its Parquet file too.
    let (first, mut want) = chunk("r1", 300, 2500);
    let (second, names2) = chunk("r2", 300, 2500);
    assert_eq!(
        h.flush(&inst, &first, "retry"),
        FLB_OK,
        "an empty buffer takes one chunk"
    );
    assert_eq!(
        h.flush(&inst, &second, "retry"),
        FLB_RETRY,
        "the bound must give backpressure"
    );
    assert!(logged(&["FLB_RETRY", "buffer full"]));
    // The target is repaired; Fluent Bit calls again later with the same records, the
    // recovery data is re-sent and frees the room.
    std::fs::remove_file(&blocker).expect("unblock");
    let mut attempts = 0;
    loop {
        attempts += 1;
        match h.flush(&inst, &second, "retry") {
            FLB_OK => break,
            FLB_RETRY if attempts < 600 => std::thread::sleep(std::time::Duration::from_millis(50)),
            other => panic!("retry {attempts} returned {other}"),
        }
    }
    want.extend(names2);
    let dir = h.exit(inst);
    assert_eq!(messages_in(&dir), sorted(want), "every record exactly once");

    // With the default BufferFullWait the flush waits for the flusher to make room instead.
    let patient = h
        .init(
            &tmp.path().join("patient"),
            &[
                ("BufferMaxBytes", "1M"),
                ("BufferSize", "1000000"),
                ("FlushInterval", "0"),
            ],
        )
        .expect("init");
    assert_eq!(h.flush(&patient, &first, "wait"), FLB_OK);
    assert_eq!(
        h.flush(&patient, &second, "wait"),
        FLB_OK,
        "waited for room"
    );
    let dir = h.exit(patient);
    assert_eq!(messages_in(&dir).len(), 600);
}

#[test]
fn hot_reload_overlapping_instances() {
    let h = host();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut def1 = h.register();
    let old = h.init(&tmp.path().join("old"), &[]).expect("old init");
    let (c1, n1) = chunk("old", 40, 0);
    assert_eq!(h.flush(&old, &c1, "reload"), FLB_OK);
    // Reload: Register again while the old instance still runs, start the new one.
    let mut def2 = h.register();
    let new = h.init(&tmp.path().join("new"), &[]).expect("new init");
    let (c2, n2) = chunk("old-late", 10, 0);
    assert_eq!(h.flush(&old, &c2, "reload"), FLB_OK);
    let (c3, n3) = chunk("new", 25, 0);
    assert_eq!(h.flush(&new, &c3, "reload"), FLB_OK);
    let old_dir = h.exit(old);
    h.unregister(&mut def1);
    let (c4, n4) = chunk("new-after", 5, 0);
    assert_eq!(h.flush(&new, &c4, "reload"), FLB_OK);
    let new_dir = h.exit(new);
    h.unregister(&mut def2);
    assert_eq!(
        messages_in(&old_dir),
        sorted(n1.into_iter().chain(n2).collect())
    );
    assert_eq!(
        messages_in(&new_dir),
        sorted(n3.into_iter().chain(n4).collect())
    );
}

#[test]
fn dynamic_records_with_inferred_and_schema_columns() {
    let h = host();
    let tmp = tempfile::tempdir().expect("tempdir");
    let schema = tmp.path().join("schema.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "required": ["message"],
            "properties": {"message": {"type": "string"}, "level": {"type": "string"}}}"#,
    )
    .expect("write schema");
    let schema = schema.to_str().expect("utf8 path");
    let inferred = h
        .init(&tmp.path().join("inferred"), &[("RecordType", "dynamic")])
        .expect("init inferred");
    let fixed = h
        .init(
            &tmp.path().join("fixed"),
            &[("RecordType", "Dynamic"), ("JsonSchemaPath", schema)],
        )
        .expect("init fixed");
    let (c, names) = chunk("dyn", 120, 0);
    assert_eq!(h.flush(&inferred, &c, "app.d"), FLB_OK);
    assert_eq!(h.flush(&fixed, &c, "app.d"), FLB_OK);
    let dir_inferred = h.exit(inferred);
    let dir_fixed = h.exit(fixed);
    assert_eq!(messages_in(&dir_inferred), sorted(names.clone()));
    assert_eq!(messages_in(&dir_fixed), sorted(names));

    // Inferred: the records' own fields, no Fluent Bit arguments, the usual partitions.
    let files = common::parquet_files(&dir_inferred);
    assert!(
        files
            .iter()
            .all(|f| f.to_string_lossy().contains("capability=cap/"))
    );
    let (rows, py_schema) = common::rows_with_pyarrow(&files);
    assert!(!py_schema.contains("args"), "{py_schema}");
    assert_eq!(rows[0]["business_service"], "svc");
    assert_eq!(rows[0]["level"], "info");
    // Schema: its columns, the other fields kept in extra_fields.
    let (rows, py_schema) = common::rows_with_pyarrow(&common::parquet_files(&dir_fixed));
    assert!(
        py_schema.contains("message: string not null"),
        "{py_schema}"
    );
    assert_eq!(rows[0]["extra_fields"]["business_domain"], "dom");

    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, r#"{"properties": {"a": {"oneOf": []}}}"#).expect("write");
    let bad = bad.to_str().expect("utf8 path");
    let rc = h
        .init(
            tmp.path(),
            &[("RecordType", "dynamic"), ("JsonSchemaPath", bad)],
        )
        .map(|_| ())
        .expect_err("a schema it cannot use");
    assert_eq!(rc, 0);
    assert!(
        logged(&["JsonSchemaPath", "oneOf"]),
        "no log line for the bad schema"
    );
}

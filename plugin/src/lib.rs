//! `out_parquet`: a Fluent Bit output plugin, loaded by an unmodified Fluent Bit through its
//! Go-proxy ABI (`-e libout_parquet.so` or a plugins file), writing Parquet through the
//! shared data2parquet engine. The C declarations are in `include/out_parquet.h`.
//!
//! Each `[OUTPUT]` section is an independent [`instance::Instance`] boxed at Init (an `Arc`
//! stored in `remote_context`), borrowed by every flush (from any number of Fluent Bit
//! worker threads) and freed at ExitCtx after everything it accepted was written. Every
//! export runs inside `catch_unwind`, so a panic never crosses into Fluent Bit.

/// jemalloc, built without initial-exec TLS so it works inside a `dlopen`ed library:
/// records are decoded on the decode threads and freed on the flusher threads, where
/// glibc malloc spends much of the time.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub mod ffi;
pub mod instance;

use std::ffi::{c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use data2parquet::config::FLUENT_BIT_KEYS;

use ffi::{
    FLB_ERROR, FLB_LOG_DEBUG, FLB_LOG_ERROR, FLB_LOG_INFO, FLB_LOG_WARN, FLB_OK, FLB_PROXY_GOLANG,
    FLB_PROXY_OUTPUT_PLUGIN, LogSink, OutputPlugin, ProxyDefPrefix, c_string,
};
use instance::Instance;

/// The `[OUTPUT] Name`.
pub const PLUGIN_NAME: &std::ffi::CStr = c"out_parquet";
/// What `fluent-bit -h` shows.
pub const PLUGIN_DESCRIPTION: &std::ffi::CStr = c"Parquet files (local or S3) via data2parquet";

/// Live instances, only for the context-less fallbacks `FLBPluginFlush`/`FLBPluginExit`.
static LIVE: Mutex<Vec<Arc<Instance>>> = Mutex::new(Vec::new());
/// Where the engine's own `log` lines go (Fluent Bit's logger once an instance exists).
static ENGINE_SINK: RwLock<LogSink> = RwLock::new(LogSink(None));

/// Forwards the engine's `log` records to Fluent Bit's logger.
struct EngineLog;

impl log::Log for EngineLog {
    fn enabled(&self, meta: &log::Metadata) -> bool {
        meta.level() <= log::max_level()
    }
    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Error => FLB_LOG_ERROR,
            log::Level::Warn => FLB_LOG_WARN,
            log::Level::Info => FLB_LOG_INFO,
            log::Level::Debug | log::Level::Trace => FLB_LOG_DEBUG,
        };
        let sink = *ENGINE_SINK.read().unwrap_or_else(PoisonError::into_inner);
        sink.print(level, &format!("[out_parquet] {}", record.args()));
    }
    fn flush(&self) {}
}

static ENGINE_LOG: EngineLog = EngineLog;

fn guard<T>(what: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        eprintln!("[out_parquet] internal error (panic) in {what}; returning a failure code");
        fallback
    })
}

/// Optional hook before Register; always lets the registration go on.
#[unsafe(no_mangle)]
pub extern "C" fn FLBPluginPreRegister(_hot_reloading: c_int) -> c_int {
    0
}

/// Fills the plugin definition. Idempotent (hot reload calls it again while older
/// instances still run) and writes only the five fields every Fluent Bit release has.
///
/// # Safety
/// `def` is NULL or points to a writable `struct flb_plugin_proxy_def`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FLBPluginRegister(def: *mut c_void) -> c_int {
    guard("FLBPluginRegister", -1, || {
        if def.is_null() {
            eprintln!("[out_parquet] FLBPluginRegister got a NULL definition");
            return -1;
        }
        let def = def.cast::<ProxyDefPrefix>();
        // SAFETY: non-NULL and, per the ABI, at least the 32-byte prefix is writable. The
        // strings are 'static.
        unsafe {
            (*def).type_ = FLB_PROXY_OUTPUT_PLUGIN;
            (*def).proxy = FLB_PROXY_GOLANG;
            (*def).flags = 0;
            (*def).name = PLUGIN_NAME.as_ptr();
            (*def).description = PLUGIN_DESCRIPTION.as_ptr();
        }
        let _ = log::set_logger(&ENGINE_LOG);
        if log::max_level() == log::LevelFilter::Off {
            log::set_max_level(log::LevelFilter::Info);
        }
        0
    })
}

/// Starts one instance: reads every key with `output_get_property`, validates it like a
/// JSON config, starts the engine. Returns 1, or 0 (Fluent Bit then stops) after a log line
/// naming the bad key and value.
///
/// # Safety
/// `p` is NULL or points to Fluent Bit's `struct flbgo_output_plugin` for this instance.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FLBPluginInit(p: *mut c_void) -> c_int {
    guard("FLBPluginInit", FLB_ERROR, || {
        let name = instance::next_name();
        if p.is_null() {
            eprintln!("[{name}] FLBPluginInit got a NULL plugin");
            return FLB_ERROR;
        }
        // SAFETY: non-NULL; Fluent Bit passes a valid object for the duration of Init.
        let plugin = unsafe { &*p.cast::<OutputPlugin>() };
        if plugin.api.is_null() || plugin.context.is_null() {
            eprintln!("[{name}] FLBPluginInit: Fluent Bit passed no API table or no context");
            return FLB_ERROR;
        }
        // SAFETY: api is non-NULL and valid for the life of the loaded plugin.
        let api = unsafe { &*plugin.api };
        let sink = LogSink(api.log_print);
        *ENGINE_SINK.write().unwrap_or_else(PoisonError::into_inner) = sink;
        let Some(get) = api.output_get_property else {
            sink.print(
                FLB_LOG_ERROR,
                &format!("[{name}] Fluent Bit gave no output_get_property"),
            );
            return FLB_ERROR;
        };
        let mut props = Vec::new();
        for key in FLUENT_BIT_KEYS {
            let ckey = std::ffi::CString::new(*key).expect("key names have no NUL byte");
            // SAFETY: `get` is Fluent Bit's getter; both pointers are valid for the call and
            // the returned string (or NULL) stays valid until we copy it right here.
            let value = unsafe { c_string(get(ckey.as_ptr(), plugin.o_ins)) };
            if let Some(value) = value {
                props.push((key.to_string(), value));
            }
        }
        let fb_debug = match api.output_log_check {
            // SAFETY: o_ins is the instance being initialised, valid during Init.
            Some(check) => (unsafe { check(plugin.o_ins, FLB_LOG_DEBUG) }) == 1,
            None => false,
        };
        let inst = match Instance::start(name.clone(), sink, fb_debug, &props) {
            Ok(i) => Arc::new(i),
            Err(e) => {
                sink.print(
                    FLB_LOG_ERROR,
                    &format!("[{name}] {e}; Fluent Bit will not start this output"),
                );
                return FLB_ERROR;
            }
        };
        LIVE.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(inst.clone());
        // SAFETY: context is non-NULL and belongs to this instance; Fluent Bit hands the
        // pointer back to FlushCtx/ExitCtx and never frees it itself.
        unsafe { (*plugin.context).remote_context = Arc::into_raw(inst).cast_mut().cast() };
        FLB_OK
    })
}

fn tag_text(tag: *const c_char) -> String {
    // SAFETY: Fluent Bit passes a NUL-terminated tag (or NULL) valid during the flush.
    unsafe { c_string(tag) }.unwrap_or_default()
}

/// Flushes one chunk into the instance's buffer: 1 when every record is safely buffered
/// (or dead-lettered), 2 when the buffer cannot take them now, 0 for a chunk that can never
/// be decoded (with a log line saying why).
///
/// # Safety
/// `ctx` is a `remote_context` set by FLBPluginInit and not yet exited; `data` points to
/// `size` readable bytes; `tag` is NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FLBPluginFlushCtx(
    ctx: *mut c_void,
    data: *const c_void,
    size: usize,
    tag: *const c_char,
) -> c_int {
    guard("FLBPluginFlushCtx", FLB_ERROR, || {
        if ctx.is_null() {
            eprintln!("[out_parquet] flush without an instance (Init failed?); chunk dropped");
            return FLB_ERROR;
        }
        // SAFETY: ctx came from Arc::into_raw in Init and stays alive until ExitCtx, which
        // Fluent Bit calls only after every flush of the instance returned.
        let inst = unsafe { &*ctx.cast::<Instance>() };
        flush_into(inst, data, size, tag)
    })
}

fn flush_into(inst: &Instance, data: *const c_void, size: usize, tag: *const c_char) -> c_int {
    let bytes: &[u8] = if size == 0 {
        &[]
    } else if data.is_null() {
        inst.logger().error(&format!(
            "flush with a NULL buffer of {size} bytes; chunk dropped"
        ));
        return FLB_ERROR;
    } else {
        // SAFETY: Fluent Bit guarantees `size` readable bytes at `data` during the call;
        // they are copied before the call returns.
        unsafe { std::slice::from_raw_parts(data.cast::<u8>(), size) }
    };
    inst.flush(bytes, &tag_text(tag))
}

/// Context-less flush, used by Fluent Bit only when FlushCtx is missing (it never is);
/// works when exactly one instance is live.
///
/// # Safety
/// As for [`FLBPluginFlushCtx`], without the context.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FLBPluginFlush(
    data: *const c_void,
    size: usize,
    tag: *const c_char,
) -> c_int {
    guard("FLBPluginFlush", FLB_ERROR, || {
        let live = LIVE.lock().unwrap_or_else(PoisonError::into_inner).clone();
        match live.as_slice() {
            [only] => flush_into(only, data, size, tag),
            other => {
                eprintln!(
                    "[out_parquet] FLBPluginFlush without a context is ambiguous with {} live instances; chunk dropped",
                    other.len()
                );
                FLB_ERROR
            }
        }
    })
}

/// Stops one instance: flushes everything it holds, joins its threads, frees it.
///
/// # Safety
/// `ctx` is a `remote_context` set by FLBPluginInit, passed once, with no flush running.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FLBPluginExitCtx(ctx: *mut c_void) -> c_int {
    guard("FLBPluginExitCtx", FLB_ERROR, || {
        if ctx.is_null() {
            return FLB_OK;
        }
        // SAFETY: ctx came from Arc::into_raw in Init; ExitCtx is called once per instance,
        // so this takes back that reference exactly once.
        let inst = unsafe { Arc::from_raw(ctx.cast_const().cast::<Instance>()) };
        LIVE.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|i| !Arc::ptr_eq(i, &inst));
        inst.shutdown();
        FLB_OK
    })
}

/// Context-less exit, used by Fluent Bit only when ExitCtx is missing: stops every live
/// instance (their small control blocks are then left allocated).
#[unsafe(no_mangle)]
pub extern "C" fn FLBPluginExit() -> c_int {
    guard("FLBPluginExit", FLB_ERROR, || {
        let live = std::mem::take(&mut *LIVE.lock().unwrap_or_else(PoisonError::into_inner));
        for inst in live {
            inst.shutdown();
        }
        FLB_OK
    })
}

/// Called once per Register when the plugin is destroyed. Instances are stopped by their
/// own ExitCtx (with hot reload, newer instances may exist), so nothing is freed here.
#[unsafe(no_mangle)]
pub extern "C" fn FLBPluginUnregister(_def: *mut c_void) {}

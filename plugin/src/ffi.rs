//! The C side of the Fluent Bit proxy ABI: constants, `#[repr(C)]` structures (the prefixes
//! the plugin reads or writes, see `include/out_parquet.h`), and the few helpers that cross
//! raw pointers. Every `unsafe` block of the plugin is here or in `lib.rs`.

use std::ffi::{CStr, CString, c_char, c_int, c_void};

/// Chunk accepted (every record is in the buffer or the dead-letter queue).
pub const FLB_ERROR: c_int = 0;
/// Chunk handled.
pub const FLB_OK: c_int = 1;
/// Chunk not taken now; Fluent Bit keeps it and calls again later.
pub const FLB_RETRY: c_int = 2;
/// `def->type` of an output plugin.
pub const FLB_PROXY_OUTPUT_PLUGIN: c_int = 2;
/// `def->proxy`: the "golang" proxy, the only one Fluent Bit has.
pub const FLB_PROXY_GOLANG: c_int = 11;
/// Log levels of `log_print` / `output_log_check`.
pub const FLB_LOG_ERROR: c_int = 1;
/// Warning level.
pub const FLB_LOG_WARN: c_int = 2;
/// Info level.
pub const FLB_LOG_INFO: c_int = 3;
/// Debug level.
pub const FLB_LOG_DEBUG: c_int = 4;

/// The first five fields of `struct flb_plugin_proxy_def`, the part every Fluent Bit
/// release has (older ones allocate only these 32 bytes, so nothing past them is written).
#[repr(C)]
pub struct ProxyDefPrefix {
    /// `FLB_PROXY_OUTPUT_PLUGIN`.
    pub type_: c_int,
    /// `FLB_PROXY_GOLANG`.
    pub proxy: c_int,
    /// Output plugin flags (0).
    pub flags: c_int,
    /// Plugin name, the `[OUTPUT] Name`.
    pub name: *const c_char,
    /// Shown by `fluent-bit -h`; must stay valid until Unregister (a static string).
    pub description: *const c_char,
}

/// `struct flb_plugin_proxy_context`: the plugin stores its instance pointer here.
#[repr(C)]
pub struct ProxyContext {
    /// The plugin's per-instance pointer.
    pub remote_context: *mut c_void,
    /// Fluent Bit's own; never touched.
    pub proxy: *mut c_void,
}

/// `flb_api->output_get_property`.
pub type GetPropertyFn = unsafe extern "C" fn(*const c_char, *mut c_void) -> *const c_char;
/// `flb_api->log_print` (`flb_log_print`, a C variadic).
pub type LogPrintFn = unsafe extern "C" fn(c_int, *const c_char, c_int, *const c_char, ...);
/// `flb_api->output_log_check`.
pub type LogCheckFn = unsafe extern "C" fn(*mut c_void, c_int) -> c_int;

/// The prefix of `struct flb_api` the plugin uses.
#[repr(C)]
pub struct FlbApi {
    /// Reads one `[OUTPUT]` property (case-insensitive); NULL when absent.
    pub output_get_property: Option<GetPropertyFn>,
    /// Unused.
    pub input_get_property: *const c_void,
    /// Unused.
    pub output_get_cmt_instance: *const c_void,
    /// Unused.
    pub input_get_cmt_instance: *const c_void,
    /// Fluent Bit's logger.
    pub log_print: Option<LogPrintFn>,
    /// Unused.
    pub input_log_check: *const c_void,
    /// True (1) when `level` is enabled for the instance.
    pub output_log_check: Option<LogCheckFn>,
}

/// The prefix of `struct flbgo_output_plugin` (what `FLBPluginInit` receives).
#[repr(C)]
pub struct OutputPlugin {
    /// Plugin name.
    pub name: *mut c_char,
    /// Fluent Bit's API table.
    pub api: *mut FlbApi,
    /// The output instance being initialised (opaque).
    pub o_ins: *mut c_void,
    /// The instance's proxy context.
    pub context: *mut ProxyContext,
}

/// Fluent Bit's logger, callable from any thread; `None` means stderr.
#[derive(Clone, Copy)]
pub struct LogSink(pub Option<LogPrintFn>);

// SAFETY: the pointer is a plain function of the Fluent Bit binary (`flb_log_print`),
// documented as safe to call from any thread, and it lives as long as the process.
unsafe impl Send for LogSink {}
// SAFETY: as above; the value is immutable.
unsafe impl Sync for LogSink {}

impl LogSink {
    /// Writes one line at `level`.
    pub fn print(&self, level: c_int, line: &str) {
        match self.0 {
            Some(print) => {
                let text = CString::new(line.replace('\0', "\\0"))
                    .expect("NUL bytes were replaced just above");
                // SAFETY: `print` is flb_log_print; the format is a literal "%s" with one
                // NUL-terminated string argument that outlives the call, and file = NULL,
                // line = 0 are accepted by Fluent Bit.
                unsafe { print(level, std::ptr::null(), 0, c"%s".as_ptr(), text.as_ptr()) };
            }
            None => {
                let tag = match level {
                    FLB_LOG_ERROR => "error",
                    FLB_LOG_WARN => "warn",
                    FLB_LOG_INFO => "info",
                    _ => "debug",
                };
                eprintln!("[{tag}] {line}");
            }
        }
    }
}

/// Copies a NUL-terminated C string; `None` for NULL.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string valid for the call.
pub unsafe fn c_string(ptr: *const c_char) -> Option<String> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    Some(
        unsafe { CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned(),
    )
}

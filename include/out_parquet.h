/*
 * out_parquet.h - the C ABI of libout_parquet.so, a Fluent Bit output plugin loaded
 * through Fluent Bit's Go-proxy interface (no Go toolchain involved).
 *
 * Load it with `fluent-bit -e /abs/path/libout_parquet.so ...`, a classic plugins file
 * ([PLUGINS] Path /abs/path/libout_parquet.so) or YAML (`plugins: [/abs/path/...]`), then
 * use `Name out_parquet` in an [OUTPUT] section.
 *
 * This header documents what the library exports and which part of Fluent Bit's
 * structures it touches. Fluent Bit owns every structure; the plugin only reads the
 * prefixes declared here (and writes the five def fields and remote_context).
 *
 * Call order (one loaded library, any number of [OUTPUT] sections):
 *   FLBPluginPreRegister(hot_reloading)           main thread, optional
 *   FLBPluginRegister(def)                        main thread; again on hot reload
 *   FLBPluginInit(p)          per instance        engine thread; 1 = ok, 0 = bad config
 *   FLBPluginFlushCtx(ctx, data, size, tag)       engine or worker threads, concurrently
 *                                                 for one ctx with `workers N`
 *   FLBPluginExitCtx(ctx)     per instance        engine thread, after its last flush
 *   FLBPluginUnregister(def)                      main thread, before dlclose
 *
 * Thread safety: FlushCtx may run on several threads at once for one instance; different
 * instances share nothing. It runs on a 64 KiB coroutine stack and only copies the chunk
 * and waits for the instance's own decode thread.
 */
#ifndef OUT_PARQUET_H
#define OUT_PARQUET_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Return codes of FLBPluginFlushCtx / FLBPluginInit. */
#define FLB_ERROR 0 /* chunk can never be decoded (logged); Fluent Bit drops it     */
#define FLB_OK    1 /* every record is in the buffer (or the dead-letter queue)     */
#define FLB_RETRY 2 /* buffer full / unavailable: Fluent Bit keeps the chunk, retries */

#define FLB_PROXY_OUTPUT_PLUGIN 2
#define FLB_PROXY_GOLANG        11

/* Log levels passed to flb_api.log_print. */
#define FLB_LOG_ERROR 1
#define FLB_LOG_WARN  2
#define FLB_LOG_INFO  3
#define FLB_LOG_DEBUG 4

/* Filled by FLBPluginRegister. Only these five fields are written (every Fluent Bit
 * release has them; 5.x appends `int event_type; void *config_map;`, left zero). */
struct flb_plugin_proxy_def {
    int   type;        /* = FLB_PROXY_OUTPUT_PLUGIN                    */
    int   proxy;       /* = FLB_PROXY_GOLANG                           */
    int   flags;       /* = 0                                          */
    char *name;        /* = "out_parquet" (static)                     */
    char *description; /* static                                       */
};

/* Per-instance context; the plugin stores its instance pointer in remote_context. */
struct flb_plugin_proxy_context {
    void *remote_context;
    void *proxy; /* Fluent Bit's */
};

/* Prefix of Fluent Bit's struct flb_api used by the plugin. log_print is called as
 * log_print(level, NULL, 0, "%s", message). output_get_property is case-insensitive and
 * returns NULL for an absent key. */
struct flb_api {
    const char *(*output_get_property)(const char *key, void *o_ins);
    const char *(*input_get_property)(const char *key, void *i_ins);
    void *(*output_get_cmt_instance)(void *o_ins);
    void *(*input_get_cmt_instance)(void *i_ins);
    void (*log_print)(int level, const char *file, int line, const char *fmt, ...);
    int (*input_log_check)(void *i_ins, int level);
    int (*output_log_check)(void *o_ins, int level);
};

/* Prefix of Fluent Bit's struct flbgo_output_plugin, passed to FLBPluginInit. One object
 * per loaded library: o_ins and context are rewritten before each Init. */
struct flbgo_output_plugin {
    char *name;
    struct flb_api *api;
    void *o_ins;
    struct flb_plugin_proxy_context *context;
    /* five callback pointers owned by Fluent Bit follow */
};

/* Always 0: registration goes on. */
int FLBPluginPreRegister(int hot_reloading);

/* Fills def (idempotent; safe to call again on hot reload). Returns 0, or -1 for NULL. */
int FLBPluginRegister(struct flb_plugin_proxy_def *def);

/* Reads every key with output_get_property, validates it, starts the instance (its own
 * buffer, writer, flusher and decode threads) and sets context->remote_context.
 * Returns 1, or 0 after a log line naming the bad key and value. */
int FLBPluginInit(struct flbgo_output_plugin *p);

/* Decodes a chunk (concatenated msgpack events, v1 [ts, map] and v2 [[ts, meta], map]
 * mixed; ts = EventTime ext, integer or float; group markers skipped) and buffers its
 * records. data and tag are borrowed for the call only. */
int FLBPluginFlushCtx(void *remote_context, const void *data, size_t size, char *tag);

/* Fallback used only when FlushCtx is missing: works with exactly one live instance. */
int FLBPluginFlush(const void *data, size_t size, const char *tag);

/* Flushes everything the instance holds to Parquet, joins its threads, frees it. */
int FLBPluginExitCtx(void *remote_context);

/* Fallback used only when ExitCtx is missing: stops every live instance. */
int FLBPluginExit(void);

/* Nothing to free: instances are stopped by their own ExitCtx. */
void FLBPluginUnregister(struct flb_plugin_proxy_def *def);

#ifdef __cplusplus
}
#endif

#endif /* OUT_PARQUET_H */

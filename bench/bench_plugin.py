"""Benchmark of the Fluent Bit plugin (`make bench` runs it; `.venv/bin/python bench/bench_plugin.py`).

1. Through the plugin entry point: `plugin/examples/bench_plugin.rs` loads the release
   `libout_parquet.so` the way Fluent Bit does and sends the generator's records as v2
   msgpack chunks of 1000 records to FLBPluginFlushCtx, then FLBPluginExitCtx. CPU is
   user + system of the whole process (the plugin's own threads included), from the
   first flush to the end of ExitCtx (the last Parquet file written).
2. Inside Fluent Bit, when a `fluent-bit` binary is found (env FLUENT_BIT or PATH): the
   same records in a JSON Lines file are tailed (parser json) to `null`, to `file`
   (`Format plain`: JSON lines, Fluent Bit's own out_file) and to `out_parquet`, with its
   defaults (every file and directory fsync'd) and with `WriterFileSync false` (the
   durability of out_file, which never syncs). The output's cost per record is the run's
   CPU minus the `null` run's CPU, divided by the records; the ratio out_parquet /
   out_file is the figure of merit. The same is also measured machine-wide (/proc/stat,
   every process and kernel thread, with a `sync` before and after each run), which
   counts the kernel's later writeback of files that were not synced. The runs are
   repeated `BENCH_PLUGIN_ROUNDS` times (default: one round per configuration); each round
   starts one configuration later than the one before (round 1: null, file, parquet,
   nosync; round 2: file, parquet, nosync, null; ...), so that over 4 rounds every
   configuration runs once in every position and after every other one. A run's CPU
   depends on the run before it: out_file took 8 to 16% more CPU right after an
   out_parquet run than right after a `null` run, and a fixed order measured it only after
   `null`. Each round is printed, and the figures are
   the medians (ratios: the median of the rounds' own ratios). When the profile-guided
   build of `make release-pgo` is there (target/pgo/release, or D2P_PGO_RELEASE), its
   `libout_parquet.so` is a fifth configuration (out_parquet with the defaults), so 5 rounds.

Prints a summary and ends with one line `RESULT {json}`.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from common import PGO_RELEASE, RELEASE  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-out" / "plugin"
RECORDS = int(os.environ.get("BENCH_PLUGIN_RECORDS", "100000"))
# Rounds of the Fluent Bit runs (null, file, parquet, parquet without syncs, and the PGO
# build's parquet when there is one), in an order rotated by one each round (see the
# docstring): identical runs differ by 20% and more on the development VMs, so the figures
# are the medians over the rounds (each round's own figures are printed too). A multiple
# of the configurations' number gives every configuration every position; 0 (the default)
# means one round per configuration (4, or 5 with the PGO build).
ROUNDS = max(0, int(os.environ.get("BENCH_PLUGIN_ROUNDS", "0")))
CARGO = os.environ.get("CARGO", "cargo")


def ratio(a, b):
    return a / b if b > 0 else float("inf")


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def build():
    run([CARGO, "build", "--release", "-p", "out_parquet", "--lib", "--example", "bench_plugin"], cwd=ROOT)
    run([CARGO, "build", "--release", "--bin", "data-generator"], cwd=ROOT)


def host_run(data, chunk, threads):
    out = OUT / f"host-{threads}"
    shutil.rmtree(out, ignore_errors=True)
    p = run(
        [str(RELEASE / "examples/bench_plugin"), str(RELEASE / "libout_parquet.so"),
         str(data), str(out), str(chunk), str(threads)],
        capture_output=True, text=True)
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["us_per_record"] = r["cpu_s"] / r["records"] * 1e6
    r["decode_us_per_record"] = r["decode_only_cpu_s"] / r["records"] * 1e6
    r["records_per_s"] = r["records"] / r["wall_s"]
    r["plugin_rss_mb"] = (r["peak_rss_kb"] - r["rss_before_kb"]) / 1024
    return r


def find_fluent_bit():
    env = os.environ.get("FLUENT_BIT")
    if env and Path(env).is_file():
        return env
    return shutil.which("fluent-bit")


def fb_run(fb, data, output_lines, so, name, round_no):
    # A fresh directory per run, none deleted until every round is done: on ext4 without a
    # journal, a new inode skips the inodes deleted in the last 60-360 s one by one, so
    # deleting the last round's ~500 Parquet files right before this run made each file
    # this run creates pay for the benchmark's own clean-up (3-4% of the run's samples in
    # ext4's recently_deleted/find_inode_bit). An output directory in use only grows.
    work = OUT / f"fb-{name}-{round_no}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "out").mkdir(parents=True)
    (work / "parsers.conf").write_text("[PARSER]\n    Name json\n    Format json\n")
    (work / "plugins.conf").write_text(f"[PLUGINS]\n    Path {so}\n")
    conf = f"""[SERVICE]
    Flush        1
    Grace        30
    Log_Level    warn
    Parsers_File {work / 'parsers.conf'}
    Plugins_File {work / 'plugins.conf'}

[INPUT]
    Name            tail
    Tag             bench
    Path            {data}
    Parser          json
    Read_From_Head  On
    Exit_On_Eof     On
    Buffer_Max_Size 4M

[OUTPUT]
    Match bench
{output_lines.format(work=work)}
"""
    (work / "fb.conf").write_text(conf)
    os.sync()
    busy_before = machine_busy_s()
    start = time.monotonic()
    proc = subprocess.Popen([fb, "-c", str(work / "fb.conf")], stdout=subprocess.DEVNULL,
                            stderr=open(work / "fb.log", "w"))
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    # The kernel writes unsynced files back later, on its own threads: sync now so that
    # the machine-wide figure counts every output's writeback, synced or not.
    os.sync()
    machine_cpu = machine_busy_s() - busy_before
    if status != 0:
        raise SystemExit(f"fluent-bit ({name}) failed: {(work / 'fb.log').read_text()[-2000:]}")
    return {"cpu_s": ru.ru_utime + ru.ru_stime, "wall_s": wall, "peak_rss_mb": ru.ru_maxrss / 1024,
            "machine_cpu_s": machine_cpu, "dir": str(work)}


def machine_busy_s():
    """CPU seconds every core has been busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def count_parquet_rows(path):
    import pyarrow.dataset as ds
    return ds.dataset(path, format="parquet").count_rows()


def main():
    build()
    OUT.mkdir(parents=True, exist_ok=True)
    # Outputs of an earlier run go first, long before the Fluent Bit runs (see fb_run).
    for old in OUT.glob("fb-*"):
        shutil.rmtree(old, ignore_errors=True)
    data = OUT / "records.jsonl"
    if not data.exists() or sum(1 for _ in open(data)) != RECORDS:
        run([str(RELEASE / "data-generator"), str(RECORDS), "--format", "jsonl", "--out", str(data)],
            capture_output=True)
    size_mb = data.stat().st_size / 1e6
    print(f"records: {RECORDS} from data-generator ({size_mb:.1f} MB of JSON, {size_mb * 1e6 / RECORDS:.0f} B/record)")

    host1 = host_run(data, 1000, 1)
    host2 = host_run(data, 1000, 2)
    for h in (host1, host2):
        assert count_parquet_rows(OUT / f"host-{h['flush_threads']}") == RECORDS, "rows lost"
    print("through FLBPluginFlushCtx (chunks of 1000 v2 records, snappy, BufferSize 10000):")
    for h in (host1, host2):
        print(f"  {h['flush_threads']} flush thread(s): {h['records_per_s']:,.0f} records/s, "
              f"{h['us_per_record']:.1f} us CPU/record (decoder alone {h['decode_us_per_record']:.1f} us), "
              f"plugin peak RSS +{h['plugin_rss_mb']:.0f} MB, FLB_RETRY {h['retries']}")

    result = {
        "records": RECORDS,
        "host_records_per_s": round(host1["records_per_s"]),
        "host_us_cpu_per_record": round(host1["us_per_record"], 2),
        "host_decode_us_per_record": round(host1["decode_us_per_record"], 2),
        "host_2threads_records_per_s": round(host2["records_per_s"]),
        "host_plugin_peak_rss_mb": round(host1["plugin_rss_mb"], 1),
    }

    fb = find_fluent_bit()
    if fb is None:
        print("fluent-bit not found (set FLUENT_BIT=/path/to/fluent-bit): no comparison with out_file")
    else:
        version = subprocess.run([fb, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        print(f"inside {version}: tail (parser json) -> output, CPU of the whole Fluent Bit process:")
        parquet_lines = ("    Name           out_parquet\n    WriterFilePath {work}/out\n"
                         "    RecoveryPath   {work}/recovery\n    BufferSize     10000")
        plain_so = RELEASE / "libout_parquet.so"
        # name -> (the [OUTPUT] lines, the plugin .so loaded)
        outputs = {
            "null": ("    Name null", plain_so),
            "file": ("    Name   file\n    Path   {work}/out\n    File   out.jsonl\n    Format plain", plain_so),
            "parquet": (parquet_lines, plain_so),
            # out_file never syncs; the same durability for out_parquet is WriterFileSync false.
            "parquet-nosync": (parquet_lines + "\n    WriterFileSync false", plain_so),
        }
        if (PGO_RELEASE / "libout_parquet.so").exists():
            # The profile-guided build of `make release-pgo`, with the defaults.
            outputs["parquet-pgo"] = (parquet_lines, PGO_RELEASE / "libout_parquet.so")
        parquets = [k for k in outputs if k.startswith("parquet")]
        rounds_n = ROUNDS or len(outputs)
        rounds = []
        for i in range(rounds_n):
            order = list(outputs)[i % len(outputs):] + list(outputs)[:i % len(outputs)]
            runs = {name: fb_run(fb, data, *outputs[name], name, i + 1) for name in order}
            written = sum(1 for _ in open(Path(runs["file"]["dir"]) / "out" / "out.jsonl"))
            assert written == RECORDS, f"out_file wrote {written} lines"
            for name in parquets:
                rows = count_parquet_rows(Path(runs[name]["dir"]) / "out")
                assert rows == RECORDS, f"out_parquet ({name}) wrote {rows} rows"
            null = runs["null"]
            r = {"null": null["cpu_s"] / RECORDS * 1e6,
                 "rss_file": runs["file"]["peak_rss_mb"], "rss_parquet": runs["parquet"]["peak_rss_mb"]}
            for k in ["file", *parquets]:
                r[k] = (runs[k]["cpu_s"] - null["cpu_s"]) / RECORDS * 1e6
                r["machine_" + k] = (runs[k]["machine_cpu_s"] - null["machine_cpu_s"]) / RECORDS * 1e6
            for k in parquets:
                r[k + "_ratio"] = ratio(r[k], r["file"])
                r["machine_" + k + "_ratio"] = ratio(r["machine_" + k], r["machine_file"])
            rounds.append(r)
            pgo = (f"; the PGO build {r['parquet-pgo']:.1f} (ratio {r['parquet-pgo_ratio']:.2f})"
                   if "parquet-pgo" in r else "")
            print(f"  round {i + 1}/{rounds_n} ({', '.join(order)}): null {r['null']:.1f} us/record; above null: out_file {r['file']:.1f}, "
                  f"out_parquet {r['parquet']:.1f} (ratio {r['parquet_ratio']:.2f}; files and directories fsync'd), "
                  f"with WriterFileSync false {r['parquet-nosync']:.1f} (ratio {r['parquet-nosync_ratio']:.2f}; out_file's durability){pgo}; "
                  f"machine-wide (kernel writeback included) ratios {r['machine_parquet_ratio']:.2f} and "
                  f"{r['machine_parquet-nosync_ratio']:.2f}", flush=True)
        # The last round's outputs stay for a look; the others go now that all are measured.
        for old in OUT.glob("fb-*-*"):
            if not old.name.endswith(f"-{rounds_n}"):
                shutil.rmtree(old, ignore_errors=True)
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        # Ratios are the medians of the rounds' own ratios (each from runs minutes apart).
        pgo = (f"; the PGO build {med['parquet-pgo']:.1f} (ratio {med['parquet-pgo_ratio']:.2f}, machine-wide "
               f"{med['machine_parquet-pgo_ratio']:.2f})" if "parquet-pgo" in med else "")
        print(f"  medians of {rounds_n} round(s): out_file {med['file']:.1f} us/record, out_parquet {med['parquet']:.1f} "
              f"(ratio {med['parquet_ratio']:.2f}), with WriterFileSync false {med['parquet-nosync']:.1f} (ratio "
              f"{med['parquet-nosync_ratio']:.2f}){pgo}; machine-wide ratios {med['machine_parquet_ratio']:.2f} and "
              f"{med['machine_parquet-nosync_ratio']:.2f}; peak RSS out_file {med['rss_file']:.0f} MB, "
              f"out_parquet {med['rss_parquet']:.0f} MB")
        result.update({
            "fluent_bit": version,
            "rounds": rounds_n,
            "fb_null_us_per_record": round(med["null"], 2),
            "fb_out_file_us_per_record": round(med["file"], 2),
            "fb_out_parquet_us_per_record": round(med["parquet"], 2),
            "fb_out_parquet_nosync_us_per_record": round(med["parquet-nosync"], 2),
            "parquet_vs_out_file_cpu_ratio": round(med["parquet_ratio"], 2),
            "parquet_nosync_vs_out_file_cpu_ratio": round(med["parquet-nosync_ratio"], 2),
            "machine_out_file_us_per_record": round(med["machine_file"], 2),
            "machine_out_parquet_us_per_record": round(med["machine_parquet"], 2),
            "machine_out_parquet_nosync_us_per_record": round(med["machine_parquet-nosync"], 2),
            "fb_out_file_peak_rss_mb": round(med["rss_file"]),
            "fb_out_parquet_peak_rss_mb": round(med["rss_parquet"]),
        })
        if "parquet-pgo" in med:
            result.update({
                "fb_out_parquet_pgo_us_per_record": round(med["parquet-pgo"], 2),
                "parquet_pgo_vs_out_file_cpu_ratio": round(med["parquet-pgo_ratio"], 2),
            })
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())

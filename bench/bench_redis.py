"""Redis buffer throughput: generator records pushed through the engine into a local
redis-server (json2parquet with RedisSkipFlush: receive only), then flushed out of Redis to
Parquet by a second instance. Peer: redis-benchmark LPUSH (pipelined) on the same server.

Target (issue 4): at least 150,000 records/s per instance on loopback."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import RELEASE, WORK, peak_rss_of  # noqa: E402

RECORDS = int(os.environ.get("BENCH_REDIS_RECORDS", "100000"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WORK.mkdir(exist_ok=True)
data = WORK / f"redis-{RECORDS}.jsonl"
if not data.exists():
    subprocess.run([str(RELEASE / "data-generator"), str(RECORDS), "--format", "jsonl", "--out", str(data), "--seed", "5"],
                   check=True, stderr=subprocess.DEVNULL)
tmp = tempfile.mkdtemp(prefix="d2p-redis-bench-")
# Parquet files go to tmpfs when there is one, as in bench_json2parquet.py: on this machine
# class ext4 needs ~0.7 ms to create an inode, which would measure the disk, not Redis.
out_dir = tempfile.mkdtemp(prefix="d2p-redis-bench-out-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
port = free_port()
redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                          "--dir", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    common_args = ["--json", "--set", "BufferType=redis", "--set", f"RedisHost=127.0.0.1:{port}",
                   "--set", "BufferSize=10000", "--set", "FlushInterval=0", "--set", f"WriterFilePath={out_dir}/out"]
    push_wall, push_cpu, push_rss, out = peak_rss_of([str(RELEASE / "json2parquet"), *common_args,
                                                     "--set", "RedisSkipFlush=true", str(data)])
    assert json.loads(out.strip().splitlines()[-1])["records_read"] == RECORDS
    empty = os.path.join(tmp, "empty.jsonl")
    open(empty, "w").close()
    flush_wall, flush_cpu, flush_rss, out = peak_rss_of([str(RELEASE / "json2parquet"), *common_args, empty])
    written = json.loads(out.strip().splitlines()[-1])["records_written"]
    assert written == RECORDS, out
    bench = subprocess.run(["redis-benchmark", "-p", str(port), "-t", "lpush", "-n", "200000", "-P", "16", "-q"],
                           stdout=subprocess.PIPE, text=True, check=True).stdout
    m = re.search(r"LPUSH.*?([\d.]+) requests per second", bench)
    lpush = float(m.group(1)) if m else 0.0
finally:
    redis.terminate()
    redis.wait(timeout=30)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(out_dir, ignore_errors=True)

push_rate = RECORDS / push_wall
flush_rate = RECORDS / flush_wall
print(f"{RECORDS} generator records (~1.1 KB each), redis-server on loopback")
print(f"push into Redis:  {push_rate:,.0f} records/s ({push_cpu / RECORDS * 1e6:.1f} us CPU/record), peak RSS {push_rss:.0f} MiB")
print(f"flush to Parquet: {flush_rate:,.0f} records/s ({flush_cpu / RECORDS * 1e6:.1f} us CPU/record), peak RSS {flush_rss:.0f} MiB")
print(f"redis-benchmark LPUSH -P 16: {lpush:,.0f} requests/s; push/LPUSH ratio {push_rate / lpush if lpush else 0:.2f}")
print("RESULT " + json.dumps({"bench": "redis", "records": RECORDS, "push_records_per_s": round(push_rate),
                              "flush_records_per_s": round(flush_rate), "push_rss_mib": round(push_rss, 1),
                              "flush_rss_mib": round(flush_rss, 1), "redis_benchmark_lpush_per_s": round(lpush)}))

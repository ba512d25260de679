"""HTTP server throughput with wrk on loopback: single-record posts (POST /record/) and
batch posts of 1000 JSON Lines (POST /records/), generator records, release build.

Targets (issue 6), 2 cores shared by server and load generator: 30,000 records/s single,
300,000 records/s batched. Peer figure: wrk against GET /healthcheck/ (the server's
request ceiling without ingestion)."""
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
from common import RELEASE, WORK  # noqa: E402

DURATION = os.environ.get("BENCH_HTTP_DURATION", "10s")
BATCH = 1000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wrk(url, script=None, connections=32, threads=1):
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", DURATION, "--latency"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rps, int(non2xx.group(1)) if non2xx else 0


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


if not shutil.which("wrk"):
    raise SystemExit("wrk is missing: apt-get install -y wrk")
WORK.mkdir(exist_ok=True)
# The server writes to tmpfs when there is one, as in the json2parquet bench: on ext4 a
# run that creates thousands of files spends ~10% of its CPU in the kernel's inode
# allocator (recently_deleted, find_inode_bit), which measures the disk, not the server.
# BENCH_OUT=/some/dir measures a disk of your choosing.
OUT_BASE = os.environ.get("BENCH_OUT", "/dev/shm" if os.path.isdir("/dev/shm") else None)
tmp = tempfile.mkdtemp(prefix="d2p-http-bench-", dir=OUT_BASE)
data = WORK / "http-records.jsonl"
subprocess.run([str(RELEASE / "data-generator"), str(BATCH), "--format", "jsonl", "--out", str(data), "--seed", "9"], check=True,
               stderr=subprocess.DEVNULL)
lines = data.read_text().splitlines()
single_body = lines[0]
batch_body = "\n".join(lines) + "\n"

scripts = {}
for name, path, body in [("single", "/record/", single_body), ("batch", "/records/", batch_body)]:
    body_file = os.path.join(tmp, f"{name}.body")
    with open(body_file, "w") as f:
        f.write(body)
    lua = os.path.join(tmp, f"{name}.lua")
    with open(lua, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.path = "{path}"\nwrk.headers["Content-Type"] = "application/json"\n')
        f.write(f'local f = io.open("{body_file}", "rb")\nwrk.body = f:read("*a")\nf:close()\n')
    scripts[name] = lua

port = free_port()
server = subprocess.Popen(
    [str(RELEASE / "http-server"), "--port", str(port), "--set", f"WriterFilePath={tmp}/out",
     "--set", "BufferSize=10000", "--set", "BufferMaxBytes=256M", "--set", "RecoveryPath=" + tmp + "/rec"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    health_rps, _ = wrk(base + "/healthcheck/")
    single_rps, single_bad = wrk(base + "/record/", scripts["single"])
    batch_rps, batch_bad = wrk(base + "/records/", scripts["batch"], connections=4)
    rss = peak_rss_mib(server.pid)
finally:
    server.terminate()
    server.wait(timeout=60)
    shutil.rmtree(tmp, ignore_errors=True)

print(f"wrk {DURATION} on loopback, server and wrk share the machine's cores; files written under {tmp}")
print(f"GET /healthcheck/ (peer ceiling): {health_rps:,.0f} requests/s")
print(f"POST /record/:  {single_rps:,.0f} records/s ({single_bad} non-2xx) - target 30,000; {single_rps / health_rps:.2f}x the healthcheck ceiling")
print(f"POST /records/: {batch_rps * BATCH:,.0f} records/s ({batch_rps:,.0f} requests of {BATCH}; {batch_bad} non-2xx) - target 300,000")
print(f"server peak RSS {rss:.0f} MiB")
print("RESULT " + json.dumps({
    "bench": "http", "single_records_per_s": round(single_rps), "single_non2xx": single_bad,
    "batch_records_per_s": round(batch_rps * BATCH), "batch_non2xx": batch_bad,
    "healthcheck_requests_per_s": round(health_rps), "server_peak_rss_mib": round(rss, 1),
}))

"""Helpers shared by the benchmarks: paths, running a command with its peak RSS and CPU."""
import os
import pathlib
import resource
import subprocess
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
RELEASE = pathlib.Path(os.environ["D2P_RELEASE"]) if os.environ.get("D2P_RELEASE") else ROOT / "target" / "release"
# The profile-guided build of `make release-pgo` (bench/pgo.sh), measured beside the plain
# one when it is there.
PGO_RELEASE = pathlib.Path(os.environ["D2P_PGO_RELEASE"]) if os.environ.get("D2P_PGO_RELEASE") \
    else ROOT / "target" / "pgo" / "release"
WORK = ROOT / "bench-out"


def run_measured(cmd, **kwargs):
    """Runs cmd to completion; returns (wall seconds, user+sys CPU seconds, peak RSS MiB, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # ru_maxrss of RUSAGE_CHILDREN is the largest child so far: run each peer in its own
    # wrapper so the figure is its own (see peak_rss_of).
    return wall, cpu, proc.stdout


def peak_rss_of(cmd, **kwargs):
    """Runs cmd under /usr/bin/time -v (GNU time) and returns (wall, cpu, peak RSS MiB, stdout)."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **kwargs)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    rss_kb = 0
    user = sys_ = 0.0
    for line in proc.stderr.splitlines():
        line = line.strip()
        if line.startswith("Maximum resident set size"):
            rss_kb = int(line.split(":")[1])
        elif line.startswith("User time"):
            user = float(line.split(":")[1])
        elif line.startswith("System time"):
            sys_ = float(line.split(":")[1])
    return wall, user + sys_, rss_kb / 1024.0, proc.stdout


def ensure_time():
    if not os.path.exists("/usr/bin/time"):
        raise SystemExit("GNU time is missing: apt-get install -y time")

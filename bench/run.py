"""`make bench`: runs every bench/bench_*.py in turn and collects their RESULT lines.

Each benchmark prints a human-readable summary and ends with one line
`RESULT {json}`; this runner prints them all again at the end."""
import json
import pathlib
import subprocess
import sys

here = pathlib.Path(__file__).resolve().parent
results = []
failed = []
for script in sorted(here.glob("bench_*.py")):
    print(f"\n=== {script.name} ===", flush=True)
    proc = subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        failed.append(script.name)
        continue
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            results.append(json.loads(line[len("RESULT "):]))

print("\n=== summary ===")
for r in results:
    print(json.dumps(r))
if failed:
    print("failed:", ", ".join(failed))
    sys.exit(1)

"""Independent Parquet reader for the tests: reads files with pyarrow and prints
{"schema": "...", "rows": [...]} as JSON (maps become objects, lists stay lists)."""
import json
import sys

import pyarrow.parquet as pq


def plain(value):
    if isinstance(value, list) and value and all(isinstance(x, tuple) and len(x) == 2 for x in value):
        return {k: v for k, v in value}
    return value


rows = []
schema = ""
for path in sys.argv[1:]:
    table = pq.read_table(path)
    schema = str(table.schema)
    for row in table.to_pylist():
        rows.append({k: plain(v) for k, v in row.items()})
json.dump({"schema": schema, "rows": rows}, sys.stdout, ensure_ascii=False, default=str)

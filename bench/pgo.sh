#!/usr/bin/env bash
# `make release-pgo`: the release build of json2parquet, data-generator and the Fluent Bit
# plugin, optimised with a profile of their own training run (profile-guided optimisation,
# rustc's -Cprofile-generate / -Cprofile-use). Same code, same flags as `make release`
# otherwise; they land in target/pgo/release. (Only what the training runs: code the
# profile never saw is optimised as cold, for size, so http-server is not built this way.)
#
# 1. an instrumented build (target/pgo-gen) of json2parquet, data-generator, the plugin and
#    the plugin's bench host;
# 2. training: data-generator writes 60,000 records (seed 1, not the benchmarks' seed 7),
#    json2parquet converts them with the benchmark's settings and with the seed's defaults
#    (BufferSize 100), and the bench host sends them through the plugin's FLBPluginFlushCtx
#    with one and with two flush threads;
# 3. llvm-profdata (rustup's llvm-tools component, added when missing) merges the profiles;
# 4. the optimised build (target/pgo) reads them.
#
# rustc lists the profile among every crate's inputs, so a new profile rebuilds the whole
# optimised build (about 14 minutes on 2 cores). The training therefore runs again only when
# an instrumented program is newer than the profile (the code changed); otherwise the
# profile, and the optimised build made from it, are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CARGO=${CARGO:-cargo}
GEN=$ROOT/target/pgo-gen
OUT=$ROOT/target/pgo
RAW=$GEN/profraw
PROFILE=$OUT/merged.profdata

host=$(rustc -vV | sed -n 's/^host: //p')
profdata=$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata
if [ ! -x "$profdata" ]; then
  echo "pgo: adding rustup's llvm-tools component (for llvm-profdata)"
  rustup component add llvm-tools </dev/null || true
fi
if [ ! -x "$profdata" ]; then
  echo "pgo: $profdata not found and rustup could not add llvm-tools: use 'make release' (no PGO)" >&2
  exit 1
fi

mkdir -p "$OUT"
echo "pgo: 1/4 instrumented build in $GEN"
export RUSTFLAGS="-Cprofile-generate=$RAW"
"$CARGO" build --release --target-dir "$GEN" -p data2parquet --bin json2parquet --bin data-generator
"$CARGO" build --release --target-dir "$GEN" -p out_parquet --lib --example bench_plugin
unset RUSTFLAGS

trained=("$GEN/release/json2parquet" "$GEN/release/data-generator" "$GEN/release/libout_parquet.so"
  "$GEN/release/examples/bench_plugin")
stale=0
[ -f "$PROFILE" ] || stale=1
for program in "${trained[@]}"; do
  [ "$program" -nt "$PROFILE" ] && stale=1
done
if [ "$stale" = 0 ]; then
  echo "pgo: 2-3/4 $PROFILE is newer than the instrumented programs: kept"
else
  echo "pgo: 2/4 training run"
  # Only the training's profiles (build scripts, instrumented too, wrote theirs here as well).
  rm -rf "$RAW"
  # Where the instrumented programs write their profiles (one file per program, merged online).
  export LLVM_PROFILE_FILE="$RAW/%m.profraw"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$GEN/release/data-generator" 60000 --format jsonl --seed 1 --out "$work/train.jsonl"
  printf '{"buffer_size":100000,"flush_interval":0,"writer_compression_type":"snappy","writer_file_path":"%s"}\n' \
    "$work/bench-like" >"$work/bench-like.json"
  printf '{"writer_file_path":"%s"}\n' "$work/defaults" >"$work/defaults.json"
  "$GEN/release/json2parquet" --config "$work/bench-like.json" "$work/train.jsonl" >/dev/null
  "$GEN/release/json2parquet" --config "$work/defaults.json" "$work/train.jsonl" >/dev/null
  for threads in 1 2; do
    "$GEN/release/examples/bench_plugin" "$GEN/release/libout_parquet.so" "$work/train.jsonl" \
      "$work/plugin-$threads" 1000 "$threads" >/dev/null
  done

  unset LLVM_PROFILE_FILE
  echo "pgo: 3/4 merging $(find "$RAW" -name '*.profraw' | wc -l) profiles into $PROFILE"
  "$profdata" merge -o "$PROFILE" "$RAW"
fi

echo "pgo: 4/4 optimised build in $OUT"
export RUSTFLAGS="-Cprofile-use=$PROFILE"
"$CARGO" build --release --target-dir "$OUT" -p data2parquet --bin json2parquet --bin data-generator
"$CARGO" build --release --target-dir "$OUT" -p out_parquet --lib --example bench_plugin
echo "pgo: done: $OUT/release/json2parquet, data-generator and libout_parquet.so"

# data2parquet: the two commands a user needs are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
VENV := .venv
PY := $(VENV)/bin/python
SAMPLE := data/sample.jsonl
SAMPLE_RECORDS ?= 20000
export D2P_PYTHON := $(abspath $(PY))

.PHONY: all build release release-pgo run test test-deps lint plugin bench fluent-bit-demo clean

all: build

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release --workspace

## make release-pgo: the release build optimised with a profile of a training run, in target/pgo/release
release-pgo:
	CARGO=$(CARGO) bash bench/pgo.sh

## make run: build, generate sample data, convert it on the embedded default (memory buffer, file writer)
run: release
	@mkdir -p data
	@test -s $(SAMPLE) || ./target/release/data-generator $(SAMPLE_RECORDS) --format jsonl --out $(SAMPLE)
	rm -rf out
	./target/release/json2parquet --config examples/json2parquet.json $(SAMPLE)
	@echo
	@echo "Parquet files (first 10 of $$(find out -name '*.parquet' | wc -l)):"
	@find out -name '*.parquet' | sort | head -10

## make test-deps: what the tests need (redis-server from Debian; pyarrow, duckdb, moto in .venv)
test-deps:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server (Debian package)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) </dev/null \
	  || { echo "could not install redis-server: run as root or install it by hand"; exit 1; }; }
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -c 'import pyarrow, duckdb, moto' 2>/dev/null || \
	  $(PY) -m pip install -q --disable-pip-version-check -r tests/requirements.txt </dev/null

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

plugin:
	$(CARGO) build -p out_parquet

## make test: install what the tests need, then fmt, clippy and every test
test: test-deps lint plugin
	D2P_PLUGIN_SO=$(abspath target/debug/libout_parquet.so) $(CARGO) test --workspace --no-fail-fast

bench: test-deps
	@{ command -v wrk >/dev/null && test -x /usr/bin/time; } || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk time) </dev/null \
	    || { echo "could not install wrk and GNU time: run as root or install them by hand"; exit 1; }; }
	$(CARGO) build --release --workspace
	CARGO=$(CARGO) bash bench/pgo.sh || { rm -f target/pgo/release/json2parquet target/pgo/release/libout_parquet.so; \
	  echo "no profile-guided build (see above): the benchmarks measure the plain release build only"; }
	$(PY) bench/run.py

## make fluent-bit-demo: Fluent Bit tails a generated JSON log into Parquet (fluent-bit/*.conf)
FLUENT_BIT ?= fluent-bit
DEMO_LOG := data/fluent-bit-demo.jsonl
DEMO_OUT := out/fluent-bit
fluent-bit-demo:
	@command -v $(FLUENT_BIT) >/dev/null || { echo "fluent-bit is not on the PATH (set FLUENT_BIT=/path/to/fluent-bit; see README: Fluent Bit plugin)"; exit 1; }
	$(CARGO) build --release -p out_parquet
	$(CARGO) build --release --bin data-generator
	@mkdir -p data
	@test -s $(DEMO_LOG) || ./target/release/data-generator 20000 --format jsonl --out $(DEMO_LOG)
	rm -rf $(DEMO_OUT)
	D2P_DEMO_LOG=$(abspath $(DEMO_LOG)) D2P_DEMO_OUT=$(abspath $(DEMO_OUT)) $(FLUENT_BIT) -c fluent-bit/fluent-bit.conf
	@echo
	@echo "Parquet files written by Fluent Bit: $$(find $(DEMO_OUT) -name '*.parquet' | wc -l) in $(DEMO_OUT)"
	@test -x $(PY) && $(PY) -c "import sys, pyarrow.dataset as ds; print('rows read back with pyarrow:', ds.dataset(sys.argv[1], format='parquet').count_rows(), 'of', sum(1 for _ in open(sys.argv[2])), 'lines')" $(DEMO_OUT) $(DEMO_LOG) || true

clean:
	$(CARGO) clean
	rm -rf out data recovery bench-out

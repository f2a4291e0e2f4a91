# sluice — every target installs what it needs from the package registries.
#   make demo        run the main job end to end on the local stack
#   make test        everything: cargo test + unit + integration + e2e (what CI runs)
#   make test-quick  unit tests only (seconds, no JVM)
#   make test-fast   make test without the slowest e2e tests (marked slow)
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3.11
VENV        := .venv
PY          := $(VENV)/bin/python
DEPS        := .deps
MVN         := mvn -q -B
APICURIO    := io.apicurio:apicurio-registry-app:3.3.3:tar.gz:all
RUST_SRC    := $(shell find udfs_rs/src -name '*.rs') udfs_rs/Cargo.toml udfs_rs/Cargo.lock
PYTEST      := $(PY) -m pytest -p no:cacheprovider

.PHONY: help setup deps system-deps chromium build demo test test-quick schemas-check cargo-test \
        test-fast bench stack-up stack-down stack-status lint clean distclean

help: ## show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-18s %s\n", $$1, $$2}'

# --- set-up -----------------------------------------------------------------------------
$(VENV)/.installed: pyproject.toml $(RUST_SRC)
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Builds the Rust module (release profile) and installs the pinned Python deps.
	$(PY) -m pip install -q -e ".[dev,eval]"
	@touch $@

$(DEPS)/kafka/.done: sluice/stack/kafka-pom.xml
	rm -rf $(DEPS)/kafka
	$(MVN) -f sluice/stack/kafka-pom.xml dependency:copy-dependencies \
	    -DoutputDirectory=$(CURDIR)/$(DEPS)/kafka -DincludeScope=runtime
	@touch $@

$(DEPS)/flink-jars/.done: flink-conf/pom.xml
	rm -rf $(DEPS)/flink-jars
	$(MVN) -f flink-conf/pom.xml dependency:copy-dependencies \
	    -DoutputDirectory=$(CURDIR)/$(DEPS)/flink-jars -DincludeScope=runtime -DexcludeTransitive=true
	@touch $@

$(DEPS)/apicurio/.done:
	rm -rf $(DEPS)/apicurio && mkdir -p $(DEPS)/apicurio
	$(MVN) dependency:copy -Dartifact=$(APICURIO) -DoutputDirectory=$(CURDIR)/$(DEPS)/apicurio
	tar -xzf $(DEPS)/apicurio/apicurio-registry-app-*-all.tar.gz -C $(DEPS)/apicurio
	rm -f $(DEPS)/apicurio/apicurio-registry-app-*-all.tar.gz
	@touch $@

deps: $(DEPS)/kafka/.done $(DEPS)/flink-jars/.done $(DEPS)/apicurio/.done ## download the Kafka broker, Flink connector and Apicurio jars (Maven Central)

# Debian packages the stack runs (Redis: the online feature store, docs/feature-store.md).
system-deps: ## install redis-server with apt-get when it is missing (needs root)
	@command -v redis-server >/dev/null || { \
	    if [ "$$(id -u)" != 0 ]; then echo "redis-server is missing: run 'apt-get install -y redis-server' as root" >&2; exit 1; fi; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server \
	    || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server; }; }

# Headless Chromium: the report test opens `sluice report`'s page in a real browser.
chromium: ## install Debian's chromium when missing (apt-get; needs root)
	@command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; }

setup: $(VENV)/.installed deps system-deps chromium ## venv + Python deps + Rust build + jars + redis-server + chromium

build: $(VENV)/.installed ## (re)build the Rust module into the venv
	$(VENV)/bin/maturin develop --release --skip-install -q

# --- run ----------------------------------------------------------------------------------
demo: setup ## run the main job end to end on the local stack and print its summary
	$(VENV)/bin/sluice demo

stack-up: setup ## start Kafka + registry + Flink standalone cluster in the background
	$(VENV)/bin/sluice stack up --flink

stack-down: ## stop everything `stack-up` started
	@if [ -x $(VENV)/bin/sluice ]; then $(VENV)/bin/sluice stack down; fi

stack-status: ## show what runs, where, and its health
	$(VENV)/bin/sluice stack status

# --- tests --------------------------------------------------------------------------------
cargo-test: $(VENV)/.installed ## Rust unit tests
	cd udfs_rs && PYO3_PYTHON=$(CURDIR)/$(PY) cargo test --quiet

test-quick: $(VENV)/.installed ## unit tests only (no JVM, seconds)
	$(PYTEST) tests/unit -q

test-fast: setup cargo-test schemas-check ## make test without the tests marked slow (load/burst, secured mode)
	$(PYTEST) tests/unit tests/integration tests/e2e -m "not bench and not slow" -q -rfEs

schemas-check: $(VENV)/.installed ## every schema version against its predecessors (Avro resolution rules)
	$(VENV)/bin/sluice schemas check

test: setup cargo-test schemas-check ## cargo test + schema checks + unit + integration + e2e on the real local stack
	@mkdir -p out/test && rm -f out/test/junit.xml
	@# pytest's exit code is kept (5, no tests, fails too); the failure summary comes last
	@# so a log cut to its tail still names each failure and its reason.
	$(PYTEST) tests/unit tests/integration tests/e2e -m "not bench" -q -rfEs \
	    --junitxml=out/test/junit.xml; rc=$$?; \
	    $(PY) -m tests.failure_summary out/test/junit.xml; exit $$rc

bench: setup ## benchmarks (never part of `make test`): micro (pytest, criterion) + `sluice bench`
	$(PYTEST) tests/bench -m bench -q -s
	$(PY) -m sluice.bench_micro model out/bench/micro-model.json
	cd udfs_rs && PYO3_PYTHON=$(CURDIR)/$(PY) SLUICE_BENCH_MODEL=$(CURDIR)/out/bench/micro-model.json \
	    cargo bench --quiet --bench hot_path -- --warm-up-time 0.5 --measurement-time 1
	$(VENV)/bin/sluice bench

lint: $(VENV)/.installed ## ruff + mypy stubtest of the native module
	$(VENV)/bin/ruff check sluice jobs tests
	$(PY) -m mypy.stubtest sluice._native

clean: ## remove build outputs and run data (keeps venv and downloaded jars)
	rm -rf out .run udfs_rs/target sluice/_native*.so

distclean: clean ## also remove the venv and the downloaded jars
	rm -rf $(VENV) $(DEPS)

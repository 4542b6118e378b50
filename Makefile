# Set-up and everyday tasks. `make demo` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= test
# Prefect and Ray defaults for scripts run through make (bench/): the values of flows/prefect_env.py,
# which the commands and tests apply themselves; tests/cli/test_ops_cli.py checks the two agree.
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export RAY_USAGE_STATS_ENABLED ?= 0
# llama-cpp-python (the `llm` extra) builds from source: a portable x86-64 build, since the native
# one may use AMX instructions that some virtual machines fault on.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF

.PHONY: demo test test-fast setup system-deps bench server clean

demo: setup
	$(BIN)/dataflux demo

test: EXTRAS = test,llm,ops
test: setup
	$(BIN)/pytest

test-fast: setup
	$(BIN)/pytest -m "not slow"

# Debian packages: espeak-ng (demo speech), sox, ffmpeg (audio decoding in `datasets`),
# libsndfile1, chromium (report screenshots). Installed when missing and we may.
system-deps:
	@missing=""; \
	for c in espeak-ng:espeak-ng sox:sox ffmpeg:ffmpeg chromium:chromium; do \
	  cmd=$${c%%:*}; pkg=$${c##*:}; command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing libsndfile1 >/dev/null; \
	  elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then \
	    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing libsndfile1 >/dev/null; \
	  else echo "note: install these Debian packages for the full feature set:$$missing"; fi; \
	fi

# The CPU build of torch goes in first: a bare `torch` requirement would pull a multi-GB CUDA build.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: system-deps $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"

bench: EXTRAS = test,llm,ops,bench
bench: setup
	for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

server: setup
	$(BIN)/dataflux server

clean:
	rm -rf .dataflux

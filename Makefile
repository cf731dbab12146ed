# `make run` serves the default model; `make test` runs every test. Both build .venv when it is missing or stale.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 0.0.0.0
PORT ?= 9090

# glibc malloc keeps the encoder's large buffers instead of returning them to the kernel after every
# image (measured 1.7x faster encoding), in one arena for all threads (with one per thread, each thread that
# ran the encoder kept its own copy of those buffers: resident memory grew for hundreds of images). The
# Docker image sets the same.
export MALLOC_MMAP_THRESHOLD_ = 4294967296
export MALLOC_TRIM_THRESHOLD_ = 68719476736
export MALLOC_ARENA_MAX = 1

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test test-fast lint bench bench-onnx bench-ui screenshots bench-memory load check redis-server chromium clean-venv

run: $(VENV)/.runtime
	@if [ -z "$${SAM_CHOICE:-}" ] || [ "$${SAM_CHOICE}" = "MobileSAM" ]; then \
	  if [ -z "$${MOBILESAM_CHECKPOINT:-}" ] && [ ! -f models/mobile_sam.pt ]; then \
	    ./download_models.sh mobile_sam || exit 1; \
	  fi; \
	fi
	$(BIN)/python _wsgi.py --host $(HOST) --port $(PORT)

test: lint redis-server chromium
	$(BIN)/python -m pytest tests

# The unit tests alone (tests/unit): the fast loop while changing code.
test-fast: $(VENV)/.tests
	$(BIN)/python -m pytest -m unit -q

lint: $(VENV)/.tests
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(VENV)/.tests
	$(BIN)/python -m bench.bench_server
	$(BIN)/python -m bench.bench_rle
	$(BIN)/python -m bench.bench_polygons
	$(BIN)/python -m bench.bench_hf
	$(BIN)/python -m bench.bench_video

# Every runtime variant of the encoder and decoder (torch, ONNX Runtime settings, int8), in one run.
bench-onnx: $(VENV)/.tests
	$(BIN)/python -m bench.bench_onnx

bench-ui: $(VENV)/.tests chromium
	$(BIN)/python -m bench.bench_ui

screenshots: $(VENV)/.tests chromium
	$(BIN)/python -m bench.screenshots

bench-memory: $(VENV)/.tests
	$(BIN)/python -m bench.bench_memory

# 8 clients for 60 s against the real server on loopback (DURATION=S to change); see README, Hardening.
load: $(VENV)/.tests
	$(BIN)/python -m bench.load --duration $(or $(DURATION),60)

check: $(VENV)/.runtime
	$(BIN)/python _wsgi.py --check

# The stamps record which requirements the venv was built from; editing a requirements file rebuilds.
$(VENV)/.runtime: requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

$(VENV)/.tests: $(VENV)/.runtime requirements-test.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
	@touch $@

# The shared-cache tests start their own redis-server (Debian's package) on loopback.
redis-server:
	@command -v redis-server >/dev/null || { \
	  echo "installing Debian's redis-server package for the tests"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server >/dev/null; }

# The browser tests (tests/e2e/test_browser.py) drive Debian's chromium through Playwright, never a downloaded browser.
chromium:
	@test -x /usr/bin/chromium || { \
	  echo "installing Debian's chromium package for the browser tests"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }

clean-venv:
	rm -rf $(VENV)

# Two commands do all the set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: serve test soak services browser bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel

# llama-cpp-python compiles from source on the first install (about 4 minutes on 2 cores); pip caches the wheel.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(BIN)/pip install -e '.[dev]'
	touch $@

serve: $(VENV)/.installed
	$(BIN)/aiplus serve $(ARGS)

services:
	@bash scripts/services.sh

test: $(VENV)/.dev-installed services browser
	$(BIN)/pytest

# The web UI's tests drive Debian's Chromium: Playwright's own browser download needs the internet.
browser:
	@test -x /usr/bin/chromium || { S=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$S apt-get update -qq && $$S apt-get install -y -qq chromium chromium-driver; }

# The adversarial suite at length (docs/reliability.md): schemathesis with many cases per operation, and the
# fault matrix with many requests per fault. `make test` runs the same tests, short.
SOAK_EXAMPLES ?= 300
SOAK_REQUESTS ?= 200
soak: $(VENV)/.dev-installed services
	AIPLUS_SOAK_EXAMPLES=$(SOAK_EXAMPLES) AIPLUS_SOAK_REQUESTS=$(SOAK_REQUESTS) $(BIN)/pytest tests/faults -s -p no:cacheprovider --timeout 3600

bench: $(VENV)/.dev-installed
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/fairness.py
	$(BIN)/python bench/adoption.py
	$(BIN)/python bench/overhead.py --rss-check
	$(BIN)/python bench/responses.py

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache

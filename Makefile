# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both are idempotent: a second run only re-checks what is installed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-installs when pyproject.toml changes.
INSTALLED := $(VENV)/.installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
SHARED_DATA ?= ../shared/data
DEMO_OUT ?= reports/demo

.PHONY: setup system-deps demo test test-slow bench clean

setup: system-deps $(INSTALLED)

system-deps:
	@bash scripts/install-system-deps.sh

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: the project must not pull another torch release.
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e '.[dev]' $(TORCH_PINS)
	touch $@

# The full audit on the embedded phantom: reports/demo/report.pdf (inputs cached in reports/.demo-inputs).
demo: setup
	$(BIN)/cxr-audit demo --out $(DEMO_OUT)

# pytest exits 5 when it collects no test; that is a failure here too (a suite that ran nothing).
test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

bench: setup
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

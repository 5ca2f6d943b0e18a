# Two commands on a fresh machine:  make demo  |  make test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

CHROMIUM := /usr/bin/chromium
# apt needs root: plain as root (CI, containers), through sudo otherwise.
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint install browser clean

install: $(STAMP)

# torch/torchvision first, pinned to the wheels this machine serves from disk; then
# segbatch itself (editable) with its test extras, at the versions in constraints.txt.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf demo-output
	$(BIN)/segbatch demo --output demo-output

# The report test opens report.html in a real headless Chromium (Debian's package).
browser: $(CHROMIUM)
$(CHROMIUM):
	$(SUDO) env DEBIAN_FRONTEND=noninteractive sh -c "apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)"

# Lint, format and types first (seconds), then the suite.
lint: $(STAMP)
	$(BIN)/ruff check segbatch tests bench jobs scripts
	$(BIN)/ruff format --check segbatch tests bench jobs scripts
	$(BIN)/mypy

test: lint $(CHROMIUM)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) demo-output .pytest_cache

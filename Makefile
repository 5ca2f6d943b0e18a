# Two commands on a fresh machine:  make demo  |  make test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

CHROMIUM := /usr/bin/chromium
# apt needs root: plain as root (CI, containers), through sudo otherwise.
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

LS_VENV := .venv-label-studio
DM_VENV := .venv-datumaro

.PHONY: demo test lint install browser clean tool-venvs label-studio-venv datumaro-venv

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

# The real annotation tools the export tests import segbatch's files into, each in its own
# virtualenv (their numpy / pyarrow / pillow pins clash with segbatch's).
tool-venvs: label-studio-venv datumaro-venv
label-studio-venv: $(LS_VENV)/.installed
datumaro-venv: $(DM_VENV)/.installed

# Label Studio + its SDK (tests/outputs/test_label_studio.py), and an empty migrated SQLite
# database the test copies: migrating at each server start takes ~1 min.
$(LS_VENV)/.installed: Makefile
	rm -rf $(LS_VENV)
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install -q 'label-studio==1.23.2' 'label-studio-sdk==2.1.2'
	LABEL_STUDIO_BASE_DATA_DIR=$(CURDIR)/$(LS_VENV)/template LABEL_STUDIO_LATEST_VERSION_CHECK=false \
		$(LS_VENV)/bin/label-studio version > /dev/null
	rm -f $(LS_VENV)/template/.env
	touch $@

# Datumaro, the dataset library behind CVAT's import/export (tests/outputs/test_cvat.py).
$(DM_VENV)/.installed: Makefile
	rm -rf $(DM_VENV)
	$(PYTHON) -m venv $(DM_VENV)
	$(DM_VENV)/bin/pip install -q 'datumaro==1.13.12'
	touch $@

test: lint $(CHROMIUM) tool-venvs
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(LS_VENV) $(DM_VENV) demo-output .pytest_cache

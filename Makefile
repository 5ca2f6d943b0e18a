# Two commands on a fresh machine:  make demo  |  make test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean

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

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) demo-output .pytest_cache

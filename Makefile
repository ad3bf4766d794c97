# Two commands on a fresh machine: `make demo` and `make test`. Everything they
# need is installed from here (a virtualenv in .venv; Debian packages for tests).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/templ demo --output demo_poses.sdf

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run --output bench_report.json

clean:
	rm -rf $(VENV) demo_poses.sdf bench_report.json .pytest_cache

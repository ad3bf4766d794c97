# Two commands on a fresh machine: `make demo` and `make test`. Everything they
# need is installed from here (a virtualenv in .venv; Debian packages for tests).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

# Debian packages the tests use: promtool and a real Prometheus server, a real Pushgateway,
# a real node_exporter.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-fast lint bench bench-upstream bytecode install system-deps dashboards docs dist clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	$(MAKE) --no-print-directory bytecode
	touch $@

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(STAMP)

# The package's bytecode, as pip writes it when it installs a wheel. An editable install leaves it to the
# first run, and where PYTHONDONTWRITEBYTECODE is set (CI images, containers) no run writes it: every
# command compiles the sources again, 75 ms of `templ screen`'s start and 20 ms of each worker's here.
# A source edited since is compiled in memory, as before; `make bench` brings it up to date first.
bytecode:
	$(BIN)/python -m compileall -q templ_pipeline telemetry dashboards >/dev/null

demo: $(STAMP)
	$(BIN)/templ demo --output demo_poses.sdf

system-deps:
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null \
	    || ! command -v prometheus-pushgateway >/dev/null || ! command -v prometheus-node-exporter >/dev/null; then \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    prometheus prometheus-pushgateway prometheus-node-exporter >/dev/null; \
	fi

# Test files run on PYTEST_WORKERS processes, each file's tests in one of them (its module fixtures
# made once, its tests in order), the files in the order tests/conftest.py gives them (slow ones first).
# `make test PYTEST_WORKERS=0` runs everything in one process.
PYTEST_WORKERS ?= 2

# The linters first (a minute's edit loop: make lint, make test-fast), then every test.
test: lint system-deps
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

# ruff over the whole tree, then mypy over the package as it installs (see [tool.mypy] in pyproject.toml):
# build/mypy/templ_pipeline links to templ_pipeline/'s entries and to telemetry/ and dashboards/.
MYPY_TREE := build/mypy

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	mkdir -p $(MYPY_TREE)/templ_pipeline
	find $(MYPY_TREE)/templ_pipeline -maxdepth 1 -type l -delete
	ln -s $(CURDIR)/templ_pipeline/* $(CURDIR)/telemetry $(CURDIR)/dashboards $(MYPY_TREE)/templ_pipeline/
	cd $(MYPY_TREE) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p templ_pipeline

# The edit loop's tier, under a minute: the tests marked `fast` (a file's `pytestmark`, or one test), less
# those marked `slow` in such a file. Fast means about a second or less each (measured with
# `pytest --durations=0`) and no external server (Prometheus, Pushgateway, node_exporter), so it needs no
# `system-deps`; a test that wants a writable cgroup or promtool skips without one. It leaves out the
# end-to-end runs (campaigns, signals, servers) that make up most of `make test`'s five minutes.
# `exec`: pytest's parent is make, as in `make test`, not a /bin/sh that `templ --show-completion` would detect.
test-fast: $(TEST_STAMP)
	exec $(BIN)/python -m pytest -q -m "fast and not slow"

docs: $(TEST_STAMP)
	$(BIN)/python -m templ_pipeline.telemetry.docs

# The dashboard JSON, alerts.yml and the README's alert table. They are committed for the
# pools' default start method, so a TEMPL_MP_START_METHOD in the caller's shell is left out.
dashboards: $(TEST_STAMP)
	env -u TEMPL_MP_START_METHOD $(BIN)/python -m templ_pipeline.dashboards.generate

# The wheel a user installs (`pip install dist/templ_pipeline-*.whl`); tests/test_packaging.py
# builds the same wheel and runs it from a fresh venv.
dist: $(STAMP)
	$(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir dist .

# Every benchmark, ending with one table of goals (also in bench_report.json). TEMPL_BENCH_QUICK=1 make bench
# runs them at tiny sizes to check the code paths; see docs/development.md#benchmarks.
bench: $(TEST_STAMP) bytecode
	$(BIN)/python -m benchmarks.run --output bench_report.json

# Our defaults against upstream TEMPL's own code on the same leave-one-out ligands (benchmarks/bench_upstream.py).
# UPSTREAM is a checkout of github.com/fulopjoz/templ-pipeline; its environment gets the RDKit it pins.
# LIGANDS=all predicts every distinct Polaris molecule (567; about 45 minutes here), not the 80 of the subset.
UPSTREAM_VENV := .venv-upstream
bench-upstream: $(TEST_STAMP) bytecode
	@test -n "$(UPSTREAM)" || { echo "usage: make bench-upstream UPSTREAM=/path/to/templ-pipeline" >&2; exit 2; }
	test -x $(UPSTREAM_VENV)/bin/python || $(PYTHON) -m venv $(UPSTREAM_VENV)
	$(UPSTREAM_VENV)/bin/python -m pip install --quiet 'rdkit==2024.09.6' numpy spyrmsd
	TEMPL_UPSTREAM="$(UPSTREAM)" TEMPL_UPSTREAM_PYTHON="$(CURDIR)/$(UPSTREAM_VENV)/bin/python" TEMPL_BENCH_LIGANDS="$(LIGANDS)" \
		$(BIN)/python -m benchmarks.run --only bench_upstream --output bench_upstream.json

clean:
	rm -rf $(VENV) $(UPSTREAM_VENV) demo_poses.sdf bench_report.json bench_upstream.json .pytest_cache dist build

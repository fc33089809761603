# pyflannel: run as root on a Debian 12 machine. Every target sets the machine up first (idempotent, fast
# when nothing is missing): Debian packages + a .venv with pyflannel installed editable.

VENV   := .venv
PYTHON := $(VENV)/bin/python
# Per-test timeout (s): a hung test fails instead of hanging CI; the lab cleans up on timeout.
PYTEST_TIMEOUT ?= 300
PYTEST_ARGS ?=

.PHONY: all setup demo test unit lint bench clean

all: test

setup:
	@bash scripts/setup.sh

# A flannel vxlan overlay across 3 namespace hosts with etcd, ping matrix, teardown.
demo: setup
	$(PYTHON) -m pyflannel.lab.demo

# The whole suite; root/etcd tests skip themselves with a reason when their needs are not met.
test: setup
	$(PYTHON) -m pytest -q --timeout=$(PYTEST_TIMEOUT) $(PYTEST_ARGS) tests

unit: setup
	$(PYTHON) -m pytest -q --timeout=$(PYTEST_TIMEOUT) $(PYTEST_ARGS) tests/unit

lint: setup
	$(VENV)/bin/ruff check pyflannel tests
	$(VENV)/bin/mypy --strict pyflannel

bench: setup
	$(PYTHON) bench/netlink_batch.py
	$(PYTHON) bench/cni_startup.py
	$(PYTHON) bench/converge.py
	$(PYTHON) bench/throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

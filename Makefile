# tqpatch developer targets. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install test test-fast render-check clean

install:
	$(PIP) install -q -e '.[test]'

# Everything: unit tests, then the slow integration tests that fetch the
# pinned llama.cpp, build it for the CPU, verify the turbo kernels and run
# the real model.
test: install
	$(PYTHON) -m tqpatch.cli codebook --check
	$(PYTHON) -m tqpatch.cli render --check
	$(PYTHON) -m pytest -q -m "not slow"
	$(PYTHON) -m tqpatch.cli build --backend cpu
	$(PYTHON) -m tqpatch.cli model
	$(PYTHON) -m pytest -q -m "slow and not gpu" --durations=15

test-fast: install
	$(PYTHON) -m pytest -q -m "not slow"

render-check:
	$(PYTHON) -m tqpatch.cli codebook --check
	$(PYTHON) -m tqpatch.cli render --check

clean:
	rm -rf build dist *.egg-info .pytest_cache

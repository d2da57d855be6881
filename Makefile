# tqpatch developer targets. `make test` is what CI runs (.ci/run, with BUILD=vulkan).
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# The one llama.cpp build the slow tests use. Every build holds the CPU backend,
# so BUILD=vulkan serves both the CPU tests (their tools get --device none) and
# the Vulkan tests (on lavapipe, Mesa's CPU Vulkan driver, where no GPU is):
# one ~20-minute build instead of two. Needs the Vulkan packages (ci-deps-vulkan).
BUILD ?= cpu

.PHONY: install test test-fast render-check ci-deps-vulkan clean

install:
	$(PIP) install -q -e '.[test]'

# Everything: unit tests, then the slow integration tests that fetch the
# pinned llama.cpp, build it (for $(BUILD)), verify the turbo kernels and run
# the real model. Tests marked `gpu` (CUDA) need the GPU machine and are left out.
test: install
	$(PYTHON) -m tqpatch.cli codebook --check
	$(PYTHON) -m tqpatch.cli render --check
	$(PYTHON) -m pytest -q -m "not slow"
	$(PYTHON) -m tqpatch.cli build --backend $(BUILD)
	$(PYTHON) -m tqpatch.cli model
	TQPATCH_TEST_CPU_BUILD=$(BUILD) $(PYTHON) -m pytest -q -m "slow and not gpu" --durations=15

test-fast: install
	$(PYTHON) -m pytest -q -m "not slow"

render-check:
	$(PYTHON) -m tqpatch.cli codebook --check
	$(PYTHON) -m tqpatch.cli render --check

# Debian / Ubuntu packages of a Vulkan build and of lavapipe (run as root, or SUDO=sudo).
ci-deps-vulkan:
	$(SUDO) apt-get update -q
	$(SUDO) apt-get install -y -q --no-install-recommends glslc libvulkan-dev spirv-headers \
		mesa-vulkan-drivers vulkan-tools

clean:
	rm -rf build dist *.egg-info .pytest_cache

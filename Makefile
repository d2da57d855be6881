# tqpatch developer targets. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# The one llama.cpp build the slow tests use. Every build holds the CPU backend,
# so a Vulkan build serves both the CPU tests (on its CPU device, tests/cpu_build.py)
# and the Vulkan tests (on lavapipe, Mesa's CPU Vulkan driver, where no GPU is):
# one build instead of two. Vulkan where its build packages are installed
# (ci-deps-vulkan; CI installs them), else the CPU; BUILD=cpu overrides.
BUILD ?= $(shell command -v glslc >/dev/null 2>&1 && test -e /usr/include/vulkan/vulkan.h \
	&& test -e /usr/include/spirv/unified1/spirv.hpp && echo vulkan || echo cpu)
DIST ?= build/dist
# Fresh virtual environments for the installed-package checks (wheel, sdist).
WHEEL_VENV ?= build/venv-wheel
SDIST_VENV ?= build/venv-sdist

.PHONY: install test test-fast render-check package-check ci-deps-vulkan clean

install:
	$(PIP) install -q -e '.[test]'

# Everything: unit tests; the package built as users get it (wheel and sdist,
# each installed non-editable into a fresh venv) fetching, applying and
# building the pinned llama.cpp for $(BUILD) and verifying its CPU backend;
# then the slow integration tests on that build and the real model.
test: install render-check
	$(PYTHON) -m pytest -q -m "not slow"
	$(MAKE) package-check
	$(PYTHON) -m tqpatch.cli model
	TQPATCH_TEST_CPU_BUILD=$(BUILD) $(PYTHON) -m pytest -q -m "slow and not gpu" --durations=15

test-fast: install
	$(PYTHON) -m pytest -q -m "not slow"

render-check:
	$(PYTHON) -m tqpatch.cli codebook --check
	$(PYTHON) -m tqpatch.cli render --check

# The installed package, not the checkout: build wheel + sdist, install each
# into its own fresh venv, run the pipeline from there (cwd outside the repo,
# so nothing can import the checkout by accident).
package-check:
	rm -rf $(DIST) $(WHEEL_VENV) $(SDIST_VENV)
	$(PYTHON) -m build --outdir $(DIST) .
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/pip install -q $(DIST)/*.whl
	$(PYTHON) -m venv $(SDIST_VENV)
	$(SDIST_VENV)/bin/pip install -q $(DIST)/*.tar.gz
	cd / && $(CURDIR)/$(SDIST_VENV)/bin/tqpatch render --check
	cd / && $(CURDIR)/$(WHEEL_VENV)/bin/tqpatch render --check
	cd / && $(CURDIR)/$(WHEEL_VENV)/bin/tqpatch fetch
	cd / && $(CURDIR)/$(WHEEL_VENV)/bin/tqpatch apply
	cd / && $(CURDIR)/$(WHEEL_VENV)/bin/tqpatch status
	cd / && $(CURDIR)/$(WHEEL_VENV)/bin/tqpatch build --backend $(BUILD)
	cd / && $(CURDIR)/$(WHEEL_VENV)/bin/tqpatch verify --backend cpu --of-build $(BUILD)

# Debian / Ubuntu packages of a Vulkan build and of lavapipe (run as root, or SUDO=sudo).
ci-deps-vulkan:
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq --no-install-recommends glslc libvulkan-dev spirv-headers \
		mesa-vulkan-drivers vulkan-tools >/dev/null

clean:
	rm -rf build dist *.egg-info .pytest_cache

# Quick start:  make demo   (set up, train + test + score the embedded sample)
#               make test   (set up, run the whole test suite)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# The machine's extra package indexes warn about every package they lack.
QUIET := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec

.PHONY: demo test install install-test env env-ready env-ready-test gpu-check

# ENV_PYTHON=python3 (any interpreter): demo, test and gpu-check run in that
# environment instead of .venv and install nothing: one that keeps its own
# PyTorch, or a machine without internet (README "Install"). It must hold
# requirements/stack.txt (+ tests.txt for test and gpu-check) and this
# checkout (pip install --no-deps -e .); else one line says what is missing.
ENV_PYTHON ?=
RUN_PY := $(or $(ENV_PYTHON),$(PY))
SETUP := $(if $(ENV_PYTHON),env-ready,install)
SETUP_TEST := $(if $(ENV_PYTHON),env-ready-test,install-test)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Runtime install; redone when the requirements or the package metadata change.
# pip compiles the ~13,000 installed modules to bytecode one at a time (about
# a minute on 2 cores); compileall does it on every core, leaving out the
# packages' own test suites, which nothing here imports. (It exits 1 where a
# file is not Python 3, as a few in some packages are; pip skips those too.)
$(VENV)/.runtime-installed: requirements/runtime.txt requirements/stack.txt setup.cfg setup.py pyproject.toml _bdd100k_ins_seg_hook.py | $(PY)
	$(PIP) install -q --no-compile -r requirements/runtime.txt $(QUIET)
	site=$$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"); \
	$(PY) -m compileall -qq -j 0 -x "^$$site/(.*/)?tests/" "$$site" || true
	$(PIP) install -q --no-deps --no-build-isolation -e . $(QUIET)
	$(PY) -c "import bdd100k_ins_seg, mmdet, bdd100k"
	touch $@

$(VENV)/.test-installed: requirements/tests.txt $(VENV)/.runtime-installed
	$(PIP) install -q -r requirements/tests.txt $(QUIET)
	touch $@

install: $(VENV)/.runtime-installed
install-test: $(VENV)/.test-installed

env: install
	$(PY) tools/collect_env.py

env-ready:
	$(ENV_PYTHON) tools/collect_env.py --check requirements/stack.txt
env-ready-test:
	$(ENV_PYTHON) tools/collect_env.py --check requirements/stack.txt requirements/tests.txt

demo: $(SETUP)
	$(RUN_PY) tools/demo.py

# The suite in TEST_PROCESSES pytest-xdist workers (auto: the cores, at most
# 4, tests/conftest.py), a test file per worker at a time, so that a file's
# shared fixtures are built once; TEST_PROCESSES=0 runs it in this process.
TEST_PROCESSES ?= auto
test: $(SETUP_TEST)
	$(RUN_PY) -m pytest tests -n $(TEST_PROCESSES) --dist loadfile

# On a CUDA machine (about 4 min; the budget: docs/speed.md): one line on
# the CUDA set-up first (device, driver, the wheel's CUDA, TF32), or why
# PyTorch cannot use CUDA there, and nothing else; then the CUDA-only tests
# (they fail, saying so, without CUDA) and the benchmark on CUDA (R-50 Mask
# R-CNN, 1280x720; stage c with GPU_TEST_RUNS test.py processes), each
# part's elapsed time printed as it ends. The benchmark runs even when a
# test fails (one run says all); either failing fails the target.
GPU_STAGES ?= a,b,c,d,e,g
GPU_TEST_RUNS ?= 2
gpu-check: $(SETUP_TEST)
	@start=$$SECONDS; $(RUN_PY) tools/collect_env.py --cuda; \
	echo "gpu-check: CUDA set-up checked in $$((SECONDS - start)) s"
	status=0; start=$$SECONDS; \
	$(RUN_PY) -m pytest -m cuda tests -q --durations=10 || status=1; \
	echo "gpu-check: CUDA tests $$((SECONDS - start)) s"; start=$$SECONDS; \
	$(RUN_PY) tools/benchmark.py configs/ins_seg/mask_rcnn_r50_fpn_1x_ins_seg_bdd100k.py \
		--device cuda --repeats 10 --test-runs $(GPU_TEST_RUNS) \
		--stages $(GPU_STAGES) \
		--json work_dirs/benchmark/gpu_check.json || status=1; \
	echo "gpu-check: benchmark $$((SECONDS - start)) s"; \
	exit $$status

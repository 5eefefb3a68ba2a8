# Newcomer commands:  make test  |  make bench
# Both create .venv (torch 2.14.1 + the project, built in place) on first use.
#
# The tested torch range is 2.11 (what the lent GPU machines run: torch 2.11.0 + CUDA 13.0,
# Triton 3.6.0) to 2.14.1 (Triton 3.8). `make test-gpu-stack` runs the GPU machines' versions:
# the same `test` and `compile-check` recipes in a mirror of this tree under
# build/torch-$(GPU_STACK_TORCH)/ with its own .venv, so that its in-place extension never
# overwrites this tree's.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.14.1
BENCH_ARGS ?=

export CUDA_HOME ?= /usr/local/cuda
export MAX_JOBS ?= 2

.PHONY: all install build test test-cuda compile-check test-gpu-stack bench bench-quick \
	bench-cpu-compare self-test gpu-check clean

all: test

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION) "setuptools>=70" wheel ninja \
		pytest "numpy<2.4" expecttest rich matplotlib pytest-benchmark scikit-learn \
		onnx onnxruntime onnxscript
	touch $@

# pip builds fused_rnn._C for the editable install; the stamp tells `build` that it is current.
BUILT := build/.built
SOURCES := $(shell find csrc -type f) setup.py

$(VENV)/.installed: $(VENV)/.deps setup.py
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	mkdir -p build && touch $@ && touch $(BUILT)

install: $(VENV)/.installed

# Rebuild fused_rnn._C after a change in csrc/ (ninja recompiles what changed).
$(BUILT): $(VENV)/.installed $(SOURCES)
	$(PY) setup.py --quiet build_ext --inplace
	touch $@

build: $(BUILT)

test: build
	$(PY) -m pytest tests -q

test-cuda: build
	$(PY) -m pytest tests -q -m cuda

# Compiles every Triton kernel for sm_90 with this environment's Triton (no GPU needed).
COMPILE_CHECK_ARGS ?=
compile-check: build
	env -u TRITON_INTERPRET $(PY) -m fused_rnn.triton_kernels.compile_check $(COMPILE_CHECK_ARGS)

GPU_STACK_TORCH ?= 2.11.0
GPU_STACK_DIR ?= build/torch-$(GPU_STACK_TORCH)
test-gpu-stack:
	python3 .ci/mirror_tree.py $(GPU_STACK_DIR)
	$(MAKE) -C $(GPU_STACK_DIR) test compile-check TORCH_VERSION=$(GPU_STACK_TORCH) \
		COMPILE_CHECK_ARGS="$(COMPILE_CHECK_ARGS)"

bench: build
	$(PY) -m fused_rnn.bench $(BENCH_ARGS)

bench-quick: build
	$(PY) -m fused_rnn.bench --quick $(BENCH_ARGS)

bench-cpu-compare: build
	$(PY) bench/cpu_vs_torch.py

# The self-test: every backend against torch.nn on every device present (fused_rnn/check).
CHECK_ARGS ?=
self-test: build
	$(PY) -m fused_rnn.check $(CHECK_ARGS)

# On a lent GPU machine (its system python3, no venv, no network): build, pytest -m cuda,
# compute-sanitizer, self-test, benchmark and dispatch tables in at most 8 minutes, all in
# $(OUT). GPU_CHECK_ARGS=--dry-run shows the commands and the layout anywhere.
OUT ?= build/gpu-check
GPU_CHECK_ARGS ?=
gpu-check:
	$(PYTHON) tools/gpu_check.py $(OUT) $(GPU_CHECK_ARGS)

clean:
	rm -rf build fused_rnn/_C*.so *.egg-info

# Newcomer commands:  make test  |  make bench
# Both create .venv (torch 2.14.1 + the project, built in place) on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.14.1
BENCH_ARGS ?=

export CUDA_HOME ?= /usr/local/cuda
export MAX_JOBS ?= 2

.PHONY: all install build test test-cuda bench bench-quick bench-cpu-compare clean

all: test

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION) "setuptools>=70" wheel ninja \
		pytest numpy expecttest rich matplotlib pytest-benchmark scikit-learn \
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

bench: build
	$(PY) -m fused_rnn.bench $(BENCH_ARGS)

bench-quick: build
	$(PY) -m fused_rnn.bench --quick $(BENCH_ARGS)

bench-cpu-compare: build
	$(PY) bench/cpu_vs_torch.py

clean:
	rm -rf build fused_rnn/_C*.so *.egg-info

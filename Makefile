# Every pip call passes constraints.txt: it pins torch==2.13.0 (the CPU build on local disk).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PIP     := $(BIN)/pip install -c constraints.txt
STAMP   := $(VENV)/.installed
BUDGET  ?= 600

.PHONY: venv demo test test-slow bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) -q --upgrade pip
	$(PIP) -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/diffusionlab demo --out runs/demo --time-budget $(BUDGET)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Peer libraries need torchvision, which does not import beside torch 2.13.0+cpu: a separate
# venv with torch 2.14.1 + torchvision 0.29.1 (both on local disk) runs all three libraries.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: pyproject.toml
	test -x $(BENCH_VENV)/bin/python || $(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BENCH_VENV)/bin/pip install -q -c bench/constraints-bench.txt -e . diffusers denoising-diffusion-pytorch
	touch $@

bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/train_throughput.py --out bench/RESULTS.md

clean:
	rm -rf $(VENV) $(BENCH_VENV) runs

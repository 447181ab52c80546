# Every pip call passes constraints.txt: it pins torch==2.13.0 (the CPU build on local disk).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PIP     := $(BIN)/pip install -c constraints.txt
STAMP   := $(VENV)/.installed
BUDGET  ?= 600

.PHONY: venv demo test test-slow test-ddp test-reliability test-e2e test-install test-interop bench bench-venv bench-throughput bench-samplers bench-metrics bench-quality bench-likelihood bench-report clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) -q --upgrade pip
	$(PIP) -q -e '.[text,test,app,finetune,interop,onnx,tensorboard]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/diffusionlab demo --out runs/demo --time-budget $(BUDGET)

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

# the page's whole browser tour (screenshots under runs/e2e/) and its load test
test-e2e: $(STAMP)
	$(BIN)/python -m pytest -q -m e2e -s

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# reliability in full: 20+ kill trials, every checkpoint fault point, every command, fuzzing
test-reliability: $(STAMP)
	HYPOTHESIS_PROFILE=reliability $(BIN)/python -m pytest -q -s tests/test_fuzz.py
	$(BIN)/python -m pytest -q -m "reliability or not reliability" --durations=10 tests/test_reliability.py

# multi-process training in full: 2 gloo processes per case, torchrun and accelerate, lost ranks
test-ddp: $(STAMP)
	$(BIN)/python -m pytest -q -m ddp tests/test_distributed.py

# The wheel as a user installs it (about 3 minutes, 6.7 GB of disk while it runs; outside `make test`,
# .ci/run calls it after it): built from the checkout into dist/, installed into a fresh venv
# (.venv-install, removed first) that already holds torch 2.14.1 (the CUDA build on local disk),
# first without extras, then with all of them; install/check.py checks that torch was kept, that
# the base install brought no extra's package, the package data, `diffusionlab --help` and a tiny
# train + sample run. Every pip call there passes install/constraints-install.txt (torch==2.14.1).
# The venv is removed on success (KEEP=1 keeps it). See install/TORCH_AUDIT.md for the torch range.
# diffusers equalities: our samplers on loaded diffusers models vs diffusers' own loops, and diffusers'
# DDIM loop / DDPMPipeline on exported folders (the dev venv has diffusers through the interop extra)
test-interop: $(STAMP)
	$(BIN)/python -m pytest -q -m interop tests/test_diffusers_interop.py tests/test_export.py

INSTALL_VENV := .venv-install
test-install:
	PY=$(PY) INSTALL_VENV=$(INSTALL_VENV) bash install/test-install.sh

# Peer libraries need torchvision, which does not import beside torch 2.13.0+cpu: a separate
# venv with torch 2.14.1 + torchvision 0.29.1 (both on local disk) runs all three libraries.
# Our package goes in with --no-deps (constraints.txt pins torch 2.13.0 for the project venv); its other
# dependencies are listed here. See bench/README.md.
BENCH_VENV := .venv-bench
BPIP := $(BENCH_VENV)/bin/pip install -c bench/constraints-bench.txt
$(BENCH_VENV)/.installed: pyproject.toml bench/constraints-bench.txt
	test -x $(BENCH_VENV)/bin/python || $(PY) -m venv $(BENCH_VENV)
	$(BPIP) -q torch==2.14.1 torchvision==0.29.1
	$(BPIP) -q diffusers denoising-diffusion-pytorch numpy 'einops>=0.7' 'safetensors>=0.4' 'pillow>=9' \
		'imageio>=2.30' 'matplotlib>=3.7' 'tqdm>=4.60' 'mlxtend>=0.23' 'scikit-learn>=1.3' 'scipy>=1.10' pytest \
		pytorch-fid torchmetrics
	$(BENCH_VENV)/bin/pip install -q --no-deps -e .
	touch $@

bench-venv: $(BENCH_VENV)/.installed

# The whole benchmark suite (issue 5; never part of `make test`): over an hour on 2 cores. Each
# stage writes its own bench/RESULTS_*.md (+ plot); bench/report.py assembles bench/RESULTS.md.
# Interrupted stages resume (throughput and quality keep finished measurements under runs/).
# In the background: nohup make bench > runs/bench.log 2>&1 &
bench: $(STAMP) $(BENCH_VENV)/.installed bench-throughput bench-samplers bench-metrics bench-quality
	$(BENCH_VENV)/bin/python bench/report.py

# training img/s, FLOPs, MFU, peak RSS: ours vs diffusers vs denoising-diffusion-pytorch, then ours
# again in the project venv (torch 2.13.0+cpu)
bench-throughput: $(STAMP) $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/train_throughput.py --out bench/RESULTS_throughput.md
	$(BIN)/python bench/train_throughput.py --only ours --plot none --out bench/RESULTS_throughput_project_venv.md

# sampler accuracy vs NFE against diffusers' schedulers; first the exact-match tests (pytest -m bench)
bench-samplers: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python -m pytest -q -m bench tests/test_diffusers_match.py
	$(BENCH_VENV)/bin/python bench/samplers.py --n 20000 --nfe 5,10,20,50

# quality at a fixed training budget vs the peers (BUDGET_Q seconds of training per library, plus a
# learning-rate sweep at a third of it; cached and resumable in runs/bench_quality)
BUDGET_Q ?= 300
bench-quality: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/quality.py --budget $(BUDGET_Q)

# metric equivalence against the reference implementations (pytorch-fid's Inception, torchmetrics)
bench-metrics: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/metrics_check.py

# issue 4's likelihood table: two 10-minute trainings, VLB / ODE bits/dim, FD (about 45 minutes; cached)
bench-likelihood: $(STAMP)
	$(BIN)/python bench/likelihood.py

# RESULTS.md from the stage reports as they are (no measuring)
bench-report:
	$(BENCH_VENV)/bin/python bench/report.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(INSTALL_VENV) runs

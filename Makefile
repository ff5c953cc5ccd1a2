# vaegan: `make demo` and `make test` each create .venv when missing and install the project into it.
# Every target is a command of the README; what each one measured is in docs/.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Fashion-MNIST: $VAEGAN_DATA if set, else ../shared/data beside the checkout when it exists (CI's layout);
# otherwise the data-root resolution in train/data.py takes over (Debian package, then --download).
ifeq ($(origin VAEGAN_DATA), undefined)
  ifneq ($(wildcard ../shared/data/FashionMNIST),)
    export VAEGAN_DATA := $(abspath ../shared/data)
  endif
endif

.PHONY: demo test venv export eval bench serve adaptive train clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[train,test,video,openvino,serve]'
	touch $(STAMP)

# The main job on the shipped weights: export (validated against PyTorch), purify + classify the sample frames
# with the torch-free runtime, and a small evaluation that writes a purification grid.
demo: $(STAMP)
	$(BIN)/vaegan-export --out artifacts
	$(BIN)/vaegan-run --input samples/frames --artifacts artifacts --out out/demo --quiet
	@echo "--- summary (out/demo/summary.json)"; cat out/demo/summary.json; echo
	@echo "purified frames: out/demo/purified/   predictions: out/demo/predictions.jsonl"
	$(BIN)/vaegan-eval --quick --out reports/demo
	@echo "purification grid: reports/demo/grid.png"

test: $(STAMP)
	$(BIN)/python -m pytest -q

export: $(STAMP)
	$(BIN)/vaegan-export --out artifacts

artifacts/manifest.json: | $(STAMP)
	$(BIN)/vaegan-export --out artifacts

# Table 1 (docs/results.md): the oblivious attacker, first 2,000 test images.
eval: $(STAMP)
	$(BIN)/vaegan-eval --out reports --defense-gan-n 50

# Latency of every backend (docs/benchmarks.md has the command of its table).
bench: $(STAMP)
	$(BIN)/python bench/latency.py

# The shipped defense as an HTTP service on 127.0.0.1:8000 (Ray Serve; docs/serving.md), until Ctrl-C.
serve: artifacts/manifest.json
	$(BIN)/vaegan-serve --artifacts artifacts

# The adaptive-attack suite of configs/adaptive.toml (docs/results.md): the runs not done yet, ADV_JOBS at once,
# then the per-image merge into reports/adaptive/ and docs/adaptive.png. ADV_TIERS adds `long` (hours per run on
# the CPU), `gpu` (a CUDA GPU) or `extra`; ADV_ARGS goes to every run (e.g. "--checkpoint FILE --lam 30");
# ADV_ARTIFACTS is the exported runtime that Square queries (another folder is exported with ADV_ARGS).
ADV_JOBS ?= 1
ADV_TIERS ?= cpu
ADV_ARGS ?=
ADV_ARTIFACTS ?= artifacts
ifneq ($(ADV_ARTIFACTS),artifacts)
$(ADV_ARTIFACTS)/manifest.json: | $(STAMP)
	$(BIN)/vaegan-export $(ADV_ARGS) --out $(@D)
endif
adaptive: $(ADV_ARTIFACTS)/manifest.json
	$(BIN)/python scripts/adaptive_suite.py --jobs $(ADV_JOBS) $(addprefix --tier ,$(ADV_TIERS)) \
	    --artifacts $(ADV_ARTIFACTS) --extra "$(ADV_ARGS)"
	cp reports/adaptive/adaptive.png docs/adaptive.png

# The shipped VAE-GAN from scratch (docs/training.md: about 90 minutes on 2 cores): configs/vaegan.toml,
# purifier.toml, purifier_c50.toml in turn; each runs only when its model.pt is missing. Then
# `cp runs/shipped/c50/model.pt models/vaegan.pt`.
runs/shipped/vaegan/model.pt: | $(STAMP)
	$(BIN)/vaegan-train vaegan --config configs/vaegan.toml
runs/shipped/purifier/model.pt: runs/shipped/vaegan/model.pt
	$(BIN)/vaegan-train purifier --config configs/purifier.toml
runs/shipped/c50/model.pt: runs/shipped/purifier/model.pt
	$(BIN)/vaegan-train purifier --config configs/purifier_c50.toml
train: runs/shipped/c50/model.pt

clean:
	rm -rf artifacts out reports build dist *.egg-info

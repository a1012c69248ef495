# Two commands on a fresh machine: `make repro` (venv, install, run the pipeline) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: repro test lint install clean-venv reference seeds

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when requirements.txt changes: a second `make` is instant.
$(STAMP): requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Stages run `python …`: the venv's bin goes first on PATH so DVC's shell finds the venv's python.
repro: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(BIN)/python -m lawshift.runinfo

test: $(STAMP)
	$(BIN)/ruff check .
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

# The spread over seeds (README, Results): seeds 1-4 as DVC experiments beside the workspace's (run `make repro`
# first), their figures in metrics/seeds.json, then the README table with mean and min-max. About 11 min on 2 cores.
seeds: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m lawshift.seeds
	$(BIN)/python -m lawshift.results

# The reference profile (Qwen2.5-0.5B-Instruct, full LawShift, original hyperparameters) on a GPU machine:
#   make reference LAWSHIFT=/path/to/LawShift
# It replaces params.yaml with profiles/reference.yaml and runs the pipeline as a DVC experiment.
reference: $(STAMP)
	@test -n "$(LAWSHIFT)" || { echo "usage: make reference LAWSHIFT=/path/to/LawShift"; exit 2; }
	cp profiles/reference.yaml params.yaml
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc exp run -S 'data.root=$(LAWSHIFT)' \
		-S 'data.train_articles=$(LAWSHIFT)/criminal_law_articles.json'
	$(BIN)/python -m lawshift.runinfo

lint: $(STAMP)
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)

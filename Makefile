# Two commands on a fresh machine: `make repro` (venv, install, run the pipeline) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: repro test lint install clean-venv reference seeds compare
.PHONY: gpu-venv compat-venv gpu-resolve compat-test gpu-set-check gpu-smoke clean-gpu-venvs

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
	$(BIN)/python -m lawshift.core.runinfo

test: $(STAMP)
	$(BIN)/ruff check .
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

# The spread over seeds (README, Results; docs/experiments.md): seeds 1-4 as DVC experiments beside the
# workspace's (run `make repro` first), their figures in metrics/seeds.json, then the README table with mean and
# min-max, then `make compare`. About 12 min on 2 cores.
seeds: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m lawshift.experiments.seeds
	$(BIN)/python -m lawshift.experiments.results
	@$(MAKE) --no-print-directory compare

# The workspace, HEAD and HEAD's experiments (make seeds, make reference) side by side in at most 15 columns: the
# params that differ, each round's acceptance and coverage, each model's train exact and LawShift figures.
# Other `dvc exp show` options: python -m lawshift.experiments.compare -A (lawshift/experiments/compare.py).
compare: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m lawshift.experiments.compare

# The reference profile (Qwen2.5-0.5B-Instruct, full LawShift, original hyperparameters) on a GPU machine:
#   make reference LAWSHIFT=/path/to/LawShift [ARGS="-S train.num_train_epochs=1 …"]
# It says in one line which stack it chose and why: with an NVIDIA GPU (or LAWSHIFT_STACK=gpu) the GPU stack, i.e.
# make gpu-venv, then the run in .venv-gpu with sample and eval on vLLM; otherwise .venv and the profile's backends.
# ARGS' -S options go on to dvc exp run. It runs profiles/reference.yaml as the DVC experiment `reference` and puts
# params.yaml back as it was, also after a failure or Ctrl-C (lawshift/experiments/reference.py).
reference: $(STAMP)
	@test -n "$(LAWSHIFT)" || { echo "usage: make reference LAWSHIFT=/path/to/LawShift [ARGS='-S key=value …']"; exit 2; }
	@stack=$$($(BIN)/python -m lawshift.experiments.reference --which-stack) || exit $$?; bin="$(BIN)"; \
	if [ "$$stack" = gpu ]; then $(MAKE) --no-print-directory gpu-venv || exit $$?; bin="$(GPU_VENV)/bin"; fi; \
	PATH="$(CURDIR)/$$bin:$$PATH" "$$bin/python" -m lawshift.experiments.reference --stack "$$stack" '$(LAWSHIFT)' $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)

# ---- the GPU set (requirements-gpu.txt) -------------------------------------------------------------------------
# requirements-gpu.txt is a complete set of exact pins of its own: vLLM 0.33.0 with the CUDA torch it requires and
# the transformers it accepts. Each venv below writes a `*` .gitignore into itself, so git and ruff skip it.
GPU_VENV := .venv-gpu
COMPAT_VENV := .venv-compat
# The files whose slow tests exercise transformers most (compat-test runs them after every test not marked slow).
COMPAT_TESTS := tests/engines/test_hf_backend.py tests/train/test_tiny.py tests/train/test_training.py tests/core/test_models.py \
	tests/train/test_objective.py tests/train/test_sftdata.py tests/train/test_examples.py

# On a GPU machine: the GPU environment in .venv-gpu. Run the pipeline there with
#   PATH="$$PWD/.venv-gpu/bin:$$PATH" .venv-gpu/bin/dvc repro
gpu-venv: $(GPU_VENV)/.installed

$(GPU_VENV)/.installed: requirements-gpu.txt pyproject.toml
	rm -rf $(GPU_VENV)
	$(PY) -m venv $(GPU_VENV)
	echo '*' > $(GPU_VENV)/.gitignore
	$(GPU_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(GPU_VENV)/bin/pip install --quiet -r requirements-gpu.txt
	$(GPU_VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

# Without a GPU: the GPU set less vLLM, on requirements.txt's torch pin (the CPU wheel here) in place of vLLM's CUDA
# torch. It runs the code under the GPU set's transformers, peft, accelerate and numpy. Every version is read from
# the two requirements files; none is written here.
compat-venv: $(COMPAT_VENV)/.installed

$(COMPAT_VENV)/.installed: requirements.txt requirements-gpu.txt pyproject.toml
	rm -rf $(COMPAT_VENV)
	$(PY) -m venv $(COMPAT_VENV)
	echo '*' > $(COMPAT_VENV)/.gitignore
	$(COMPAT_VENV)/bin/python -m pip install --quiet --upgrade pip
	{ grep -E '^torch==' requirements.txt && grep -vE '^(vllm|torch)==' requirements-gpu.txt; } \
		> $(COMPAT_VENV)/requirements.txt
	$(COMPAT_VENV)/bin/pip install --quiet -r $(COMPAT_VENV)/requirements.txt
	$(COMPAT_VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

# pip resolves the whole of requirements-gpu.txt (vLLM, CUDA torch and their dependencies) for this Python and
# platform, in a throwaway venv, installing nothing: no GPU needed. It prints the resolved versions of the pins.
gpu-resolve:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PY) -m venv "$$tmp/venv" && "$$tmp/venv/bin/python" -m pip install --quiet --upgrade pip && \
	"$$tmp/venv/bin/pip" install --quiet --dry-run --ignore-installed --report "$$tmp/report.json" \
		-r requirements-gpu.txt && \
	"$$tmp/venv/bin/python" -c 'import json, re, sys; \
	got = {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"] \
	       for i in json.load(open(sys.argv[1]))["install"]}; \
	pins = [ln.split("#")[0].strip().split("==") for ln in open("requirements-gpu.txt")]; \
	pins = {re.sub(r"[-_.]+", "-", p[0]).lower(): p[1] for p in pins if len(p) == 2}; \
	bad = {n: (v, got.get(n)) for n, v in pins.items() if got.get(n) != v}; \
	print(f"requirements-gpu.txt resolves: {len(got)} packages;", \
	      ", ".join(f"{n}=={got[n]}" for n in pins if n in got)); \
	sys.exit(f"pinned != resolved: {bad}" if bad else 0)' "$$tmp/report.json"

# The unit tests, then the slow tests of the modules that use transformers most, in the compat venv.
compat-test: $(COMPAT_VENV)/.installed
	PATH="$(CURDIR)/$(COMPAT_VENV)/bin:$$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
		$(COMPAT_VENV)/bin/python -m pytest -m "not slow"
	PATH="$(CURDIR)/$(COMPAT_VENV)/bin:$$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
		$(COMPAT_VENV)/bin/python -m pytest -m slow $(COMPAT_TESTS)

# On a CUDA machine with no network: the tiny base through sample (vLLM and hf), QLoRA train with the paged optimizer
# and eval (vLLM) on 16 cases, printing tokens/s per backend and peak GPU memory (benchmarks/gpu_smoke.py).
gpu-smoke: $(GPU_VENV)/.installed
	$(GPU_VENV)/bin/python -m benchmarks gpu_smoke --out logs/gpu_smoke.json

# CI (after `make test`): the GPU set resolves, and the code passes its tests under the GPU set's versions.
gpu-set-check: gpu-resolve compat-test

clean-gpu-venvs:
	rm -rf $(GPU_VENV) $(COMPAT_VENV)

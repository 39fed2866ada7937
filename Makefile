# Two commands on a fresh machine: `make repro` runs the pipeline, `make test` runs the tests.
# Both first install what they need: uv (if missing), the locked environment, the dataset.

SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DATASET := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: help setup dataset browser services repro quick test lint exps queue search dashboard report lesson ablation bench

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

setup: ## install uv if missing, the locked environment (.venv) and the dataset
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 \
		|| python3 -m pip install --quiet uv
	@# .pyc at install, once: with PYTHONDONTWRITEBYTECODE set (as on these machines) every stage
	@# would otherwise recompile torch's sources on import, several seconds per stage
	$(UV) sync --locked --compile-bytecode
	@$(MAKE) --no-print-directory dataset

dataset: ## install Debian's FashionMNIST (offline source); elsewhere the mirrors are used
	@if [ -f $(DATASET) ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else echo "no apt-get: the download stage will fetch from the mirrors in params.yaml"; fi

browser: ## install Debian's chromium, which the tests open the offline plots page in
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 \
		&& $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; } \
		|| echo "no chromium: the offline plots tests are skipped"

services: ## install Debian's PostgreSQL and OpenSSH server, which the team tests start on loopback
	@command -v /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v /usr/sbin/sshd >/dev/null 2>&1 \
		|| { command -v apt-get >/dev/null 2>&1 && $(SUDO) apt-get update -qq \
		&& $(SUDO) apt-get install -y -qq postgresql openssh-server >/dev/null; } \
		|| echo "no apt-get: the PostgreSQL and SSH tests are skipped"

repro: setup ## run the default pipeline: download → split → train → swa → evaluate → export
	$(UV) run --no-sync dvc repro

# Accepted by validate: swa.anneal_epochs at most swa.epochs, split.val_size below split.subset
# (tests/test_quick.py runs this very command line through the params validator)
QUICK := -S split.subset=5000 -S split.val_size=1000 -S train.epochs=3 -S swa.epochs=2 -S swa.anneal_epochs=1
# this commit's 'quick', as DVC stores it: refs/exps/<commit's first 2 hex>/<the rest>/quick
QUICK_REF = refs/exps/$$(git rev-parse HEAD | sed 's|^..|&/|')/quick
quick: setup ## the whole pipeline on 4,000 training images, 3 + 2 epochs (40-60 s; a rerun restores unchanged stages): experiment 'quick', in a temporary copy (ARGS: more -S ...)
	@# DVC refuses a name this commit has: a rerun removes the last 'quick' of this commit first
	@# (`dvc exp remove quick` alone fails where there is none, and would take another commit's).
	@# Not `-f`, which would skip the run-cache too: unchanged stages are restored, not rerun
	@if git show-ref --verify --quiet $(QUICK_REF); then $(UV) run --no-sync dvc exp remove quick; fi
	$(UV) run --no-sync dvc exp run --temp -n quick $(QUICK) $(ARGS)

test: setup browser services ## run the test suite (unit and end-to-end)
	$(UV) run --no-sync pytest

lint: setup ## ruff lint and format check
	$(UV) run --no-sync ruff check .
	$(UV) run --no-sync ruff format --check .

exps: ## compare experiments: their scores and the params that differ, to fit the terminal (ARGS: dvc exp show's -A, -n N ...)
	@$(UV) run --no-sync python -m fashion_mnist_mlp.tools.exps $(ARGS)

JOBS ?= 2
queue: ## run the queued experiments, JOBS workers (default 2); OMP_NUM_THREADS shares the cores under numerics.threads: auto
	OMP_NUM_THREADS=$$(( $$(nproc) / $(JOBS) > 0 ? $$(nproc) / $(JOBS) : 1 )) \
		$(UV) run --no-sync dvc queue start --jobs $(JOBS)

TRIALS ?= 20
WORKERS ?= 1
search: ## Optuna search over search/space.yaml: TRIALS trials (20) shared by WORKERS processes (1)
	@pids=; for w in $$(seq 0 $$(( $(WORKERS) - 1 ))); do \
		$(UV) run --no-sync python -m fashion_mnist_mlp.tools.search --trials $(TRIALS) --worker $$w & pids="$$pids $$!"; \
	done; status=0; for p in $$pids; do wait $$p || status=$$?; done; exit $$status

STORAGE ?= sqlite:///search/study.db
PORT ?= 8080
dashboard: ## serve optuna-dashboard on the search's study at http://127.0.0.1:PORT (STORAGE: its URL)
	$(UV) run --no-sync optuna-dashboard --host 127.0.0.1 --port $(PORT) "$(STORAGE)"

REV ?= main
report: ## report.md for a pull request: params, metrics and changed plots vs REV (main), best search trials
	$(UV) run --no-sync python -m fashion_mnist_mlp.tools.report --rev $(REV)

lesson: setup ## the lesson's exact setup (SGD lr 1e-3, batch 64, 10 epochs ...) as experiment 'lesson' (--temp)
	$(UV) run --no-sync python -m fashion_mnist_mlp.tools.lesson $(ARGS)

ablation: setup ## from the lesson's setup to the default one change at a time, queued on full data: docs/benchmarks.md's table (~40 min)
	$(UV) run --no-sync python bench/ablation.py

bench: setup ## epoch time side by side: the lesson's loop, the train stage under portable and native, the fp32 bound (~5 min; ARGS: --repeats N)
	$(UV) run --group bench python bench/epoch_time.py $(ARGS)
	$(UV) sync --locked --quiet  # drop torchvision again (see pyproject.toml)

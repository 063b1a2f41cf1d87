# The two commands of the README. Both are idempotent: the venv is (re)built only when
# pyproject.toml or requirements.lock changes; every package, transitive ones too, is installed at
# the version in requirements.lock (the tested set).
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup run test test-slow lint format clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade "pip>=24"
	$(VENV)/bin/pip install --quiet -e '.[test]' -c requirements.lock
	$(VENV)/bin/pip check
	touch $(STAMP)

setup: $(STAMP)

## make run: set up, then run the whole pipeline on the embedded default (offline, CPU).
run: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/dvc repro

## make test: set up, then run the test suite (what .ci/run calls).
test: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/python -m pytest -q

## make lint: ruff's lint rules and format check (pyproject.toml [tool.ruff]); CI runs it before the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test-slow: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/python -m pytest -q -m slow

clean:
	rm -rf artifacts metrics data mlflow.db

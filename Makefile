# `make run` sets everything up and serves the API; `make test` sets everything up and runs every check.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# On Linux, TORCH_INDEX=https://download.pytorch.org/whl/cpu installs the small CPU-only torch build.
TORCH_INDEX ?=
PIP_INSTALL := $(BIN)/python -m pip install --disable-pip-version-check -q $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup setup-dev kernels run test lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(PIP_INSTALL) -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(PIP_INSTALL) -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

setup: $(VENV)/.runtime kernels

setup-dev: $(VENV)/.dev kernels

# The native decoder step (handler/native: kernels.c with srm.h and dots_*.h), one library per
# instruction set; needs a C compiler. Which libraries depends on the machine, so a stamp stands
# for them: rebuilt only when a source changes (delete the stamp to force a build).
KERNEL_SOURCES := handler/native/kernels.c $(wildcard handler/native/*.h) handler/native/build.py
kernels: handler/native/.built

handler/native/.built: $(KERNEL_SOURCES) | $(VENV)/.runtime
	$(BIN)/python -m handler.native.build
	touch $@

run: setup
	$(BIN)/uvicorn handler.app:app --host $(HOST) --port $(PORT)

lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/cfn-lint template.yaml --append-rules cfn_lint_serverless.rules

test: lint
	$(BIN)/python -m pytest

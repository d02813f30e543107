# `make run` sets everything up and serves the API; `make test` sets everything up and runs every check.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Packages come from the lock files (`make lock` writes them), every one at its version and hashes.
# torch is PyTorch's CPU-only build (infra/torch-cpu.toml), from its own index: its entry is
# installed first and alone (with the whole lock pip would ask that index for every package), then
# the lock from PyPI finds it installed.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
PIP_INSTALL := $(BIN)/python -m pip install --disable-pip-version-check -q --require-hashes
define install-lock
sed -n '/^torch==/,/[^\\]$$/p' $(1) > $(VENV)/torch.lock
$(PIP_INSTALL) --no-deps --index-url $(TORCH_INDEX) -r $(VENV)/torch.lock
$(PIP_INSTALL) -r $(1)
endef
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup setup-dev kernels run test lint lock arm64-tools browser-tools test-tools api-key

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# A stamp per lock: a lock that changes is installed again. The dev lock holds the runtime one.
$(VENV)/.runtime: requirements.lock | $(BIN)/python
	$(call install-lock,requirements.lock)
	touch $@

$(VENV)/.dev: requirements.lock requirements-dev.lock | $(BIN)/python
	$(call install-lock,requirements-dev.lock)
	touch $@ $(VENV)/.runtime

# After editing requirements.txt or requirements-dev.txt: both locks again, other pins kept
# (LOCK_FLAGS=--upgrade takes the newest versions the requirements allow). Commit them together.
lock: $(VENV)/.dev
	$(BIN)/python -m infra.lock $(LOCK_FLAGS)

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

# A new API key for clients and the SHA-256 digest to put in API_KEYS (or the stack's ApiKeyDigests).
api-key: $(VENV)/.runtime
	@$(BIN)/python -m handler.security new

run: setup
	$(BIN)/uvicorn handler.app:app --host $(HOST) --port $(PORT)

lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/cfn-lint template.yaml --append-rules cfn_lint_serverless.rules

# $(call apt-install,PACKAGES,WHAT NEEDS THEM): apt-get install as root, or through sudo; where
# neither works, says what to install.
define apt-install
if ! command -v apt-get >/dev/null; then \
  echo "no apt-get: install $(1) (or their equivalents) for $(2)"; \
elif [ "$$(id -u)" -eq 0 ]; then \
  apt-get update -qq && apt-get install -y -qq $(1); \
elif command -v sudo >/dev/null; then \
  sudo apt-get update -qq && sudo apt-get install -y -qq $(1); \
else \
  echo "not root and no sudo: install $(1) for $(2)"; \
fi
endef

# The arm64 kernels' test (tests/native/test_arm64.py) cross-compiles them and runs them under qemu:
# the tools are installed with apt-get where they are missing.
ARM64_TOOLS := gcc-aarch64-linux-gnu qemu-user-static
arm64-tools:
	@if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then \
	  $(call apt-install,$(ARM64_TOOLS),tests/native/test_arm64.py); \
	fi

# The studio's browser tests (tests/studio) drive the system's Chromium through Playwright (its own
# browser download is not used): Debian's `chromium` is installed with apt-get where it is missing.
# CHROMIUM=/path/to/chromium names another binary.
browser-tools:
	@if [ -z "$$CHROMIUM" ] && ! command -v chromium >/dev/null; then \
	  $(call apt-install,chromium,the browser tests in tests/studio); \
	fi

# What the tests need from the system, in one apt-get (one package index update) for whatever is missing.
test-tools:
	@missing=""; \
	if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then \
	  missing="$(ARM64_TOOLS)"; \
	fi; \
	if [ -z "$$CHROMIUM" ] && ! command -v chromium >/dev/null; then missing="$$missing chromium"; fi; \
	if [ -n "$$missing" ]; then \
	  $(call apt-install,$$missing,tests/native/test_arm64.py and tests/studio); \
	fi

test: lint test-tools
	$(BIN)/python -m pytest

# The two commands of the README, each self-sufficient: `make demo` and `make test` create
# .venv and install into it on first use (torch: the build this machine can use, see
# scripts/install-torch.sh), and only check a stamp after that: pyproject.toml or the torch
# script changing reinstalls. PYTHON picks the interpreter (>= 3.10) the venv is made with.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kronos-rt-installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test install venv

demo: install
	$(BIN)/kronos-rt demo $(ARGS)

# ALLOW_NO_TESTS=1: "no tests collected" (pytest exit 5, e.g. a marker that selects none) passes.
test: install
	@bash scripts/ensure-redis.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ] && [ "$(ALLOW_NO_TESTS)" = 1 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

install: $(STAMP)
venv: $(BIN)/python

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml scripts/install-torch.sh | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip || true
	PYTHON=$(BIN)/python bash scripts/install-torch.sh
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

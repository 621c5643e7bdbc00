# Set-up and entry points. Everything installs into ./.venv from nothing but python3.
# CPU machines get the pinned CPU build of torch; GPU users pass their own TORCH spec, e.g.
#   make setup TORCH="torch --index-url <your CUDA wheel index>"
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
ARGS   ?=

.PHONY: setup run test bench
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: setup
	RAY_AUTH_MODE=$${RAY_AUTH_MODE:-disabled} $(BIN)/mixgrpo-ray train $(ARGS)

test: setup
	RAY_AUTH_MODE=$${RAY_AUTH_MODE:-disabled} $(BIN)/python -m pytest -q --durations=30 tests

bench: setup
	$(BIN)/mixgrpo-ray bench $(ARGS)
	$(BIN)/mixgrpo-ray bench phases

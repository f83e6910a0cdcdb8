# Two commands do all set-up on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= configs/cnn.yaml
ARGS   ?=

.PHONY: setup train test test-fast lint bench clean help

help:
	@echo "make train   train the default recipe ($(CONFIG)); extra overrides: make train ARGS='train.max_steps=50'"
	@echo "make test    run the whole CPU test suite"
	@echo "make lint    ruff + shellcheck + hadolint"
	@echo "make setup   create .venv and install pinned dependencies (done by train/test)"

setup: $(STAMP)

# The stamp makes `setup` a no-op once the pinned requirements are installed.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

train: setup
	$(BIN)/python -m trainer train -c $(CONFIG) $(ARGS)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check trainer launch tests bench
	$(BIN)/shellcheck launch/*.sh docker/*.sh .ci/run
	$(BIN)/hadolint Dockerfile

clean:
	rm -rf runs .pytest_cache

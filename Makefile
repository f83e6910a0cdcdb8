# Two commands do all set-up on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= configs/cnn.yaml
ARGS   ?=

.PHONY: setup train test test-quick lint bench docs clean help

help:
	@echo "make train   train the default recipe ($(CONFIG)); extra overrides: make train ARGS='train.max_steps=50'"
	@echo "make test    run the whole CPU test suite on two workers: unit, distributed, integration (~12-13 min; PYTEST_ARGS='-k x', TEST_WORKERS=0 for one process)"
	@echo "make test-quick  the unit tests not marked slow: no training run, no server, no process group (~1 min)"
	@echo "make lint    what the tests' lint enforces: ruff check, ruff format --check, shellcheck, hadolint"
	@echo "make docs    build the docs site into site/ (mkdocs --strict: broken links and missing pages fail)"
	@echo "make bench   CPU benchmarks against a raw PyTorch loop (~8 minutes)"
	@echo "make setup   create .venv and install pinned dependencies (done by train/test)"
	@echo "make image-test  build the CPU image with buildah and run checks inside it (root, Linux; ~6-18 minutes)"

setup: $(STAMP)

# The stamp makes `setup` a no-op once the pinned requirements are installed.
$(STAMP): requirements.txt requirements-hf.txt requirements-dev.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

train: setup
	$(BIN)/python -m trainer train -c $(CONFIG) $(ARGS)

# Two pytest-xdist workers (a 2-core machine; TEST_WORKERS=0 runs the tests in this process, one by one).
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS) --dist loadfile)

test: setup
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

# Tiers (docs/design.md "Tests"): tests/unit needs no process group and trains nothing through the CLI; tests marked
# slow (several processes) and tests/distributed, tests/integration run only in `make test`.
test-quick: setup
	$(BIN)/python -m pytest $(XDIST) tests/unit -m "not slow" $(PYTEST_ARGS)

# The same commands as tests/unit/test_lint.py and test_docker.py; ruff's files are listed in pyproject.toml.
lint: setup
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/shellcheck launch/*.sh launch/slurm.sbatch docker/*.sh .ci/run
	$(BIN)/hadolint Dockerfile

# The docs site (docs/, mkdocs.yml) into site/; --strict turns a broken link or a missing page into a failure.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# CPU benchmarks (docs/performance.md): each prints a table and writes bench/results/NAME-DATE.json.
bench: setup
	for b in overhead datapipe startup checkpoint; do $(BIN)/python -m bench.$$b || exit 1; done

clean:
	rm -rf runs site .pytest_cache

# --- Docker (docs/docker.md). VARIANT=cu128 (default) or cpu; both from the one Dockerfile.
VARIANT  ?= cu128
VERSION  ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE    ?= torchrunner:$(VERSION)-$(VARIANT)
APP_UID  ?= 1000
RUN_NAME ?= $(basename $(notdir $(CONFIG)))
CPU_BUILD_ARGS := --build-arg BASE_IMAGE=ubuntu:24.04 --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
GPU_BUILD_ARGS := --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/$(VARIANT)

.PHONY: docker-build docker-run image-test

docker-build:
	docker build $(if $(filter cpu,$(VARIANT)),$(CPU_BUILD_ARGS),$(GPU_BUILD_ARGS)) \
		--build-arg VERSION=$(VERSION) --build-arg APP_UID=$(APP_UID) \
		--build-arg VCS_REF=$$(git rev-parse --short HEAD 2>/dev/null || echo unknown) -t $(IMAGE) .

# --gpus all                  the NVIDIA container toolkit exposes every GPU to the container
# --ipc=host                  DataLoader workers and NCCL pass tensors through /dev/shm; Docker's default is
#                             64 MB, which kills workers with "bus error" (CPU variant: --shm-size=2g instead)
# --ulimit memlock=-1         NCCL pins (page-locks) host memory for GPUDirect/InfiniBand; the default limit
#                             of a few MB makes registration fail
# --ulimit stack=67108864     a 64 MiB stack, NVIDIA's recommendation for PyTorch containers (deep recursion
#                             in compilers and some CUDA libraries overflows the 8 MiB default)
# --stop-timeout 120          docker stop sends SIGTERM, then SIGKILL after this (default 10 s): time for the
#                             workers to save a checkpoint and exit 75
# -v runs:/runs, RUN_DIR      checkpoints and logs land in ./runs/$(RUN_NAME) on the host (written as uid
#                             $(APP_UID); build with APP_UID=$$(id -u) if that is not you)
docker-run:
	mkdir -p runs
	docker run --rm $(if $(filter cpu,$(VARIANT)),--shm-size=2g,--gpus all --ipc=host) \
		--ulimit memlock=-1 --ulimit stack=67108864 --stop-timeout 120 \
		-v $(CURDIR)/runs:/runs -e RUN_DIR=/runs/$(RUN_NAME) $(IMAGE) -c $(CONFIG) $(ARGS)

# Build the CPU variant for real with buildah (no Docker engine needed) on a debootstrap-made Debian 12 base,
# from a pip-downloaded wheelhouse, and run the checks inside the image. Root and Linux; not part of
# `make test` (.ci/run calls it where buildah and debootstrap are installed). See docker/image-test.sh.
image-test: setup
	PYTHON=$(BIN)/python bash docker/image-test.sh

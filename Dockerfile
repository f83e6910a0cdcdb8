# syntax=docker/dockerfile:1
# torchrunner image: the trainer and the launcher on a pinned CUDA base with a pinned CUDA build of torch.
#
#   make docker-build                      # CUDA image, torchrunner:<version>-cu128
#   make docker-build VARIANT=cpu          # CPU image,  torchrunner:<version>-cpu (same Dockerfile)
#   docker run --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 IMAGE -c configs/gpt.yaml
#
# Why nvidia/cuda + the official wheel rather than an NGC PyTorch base (nvcr.io/nvidia/pytorch):
# - The same torch release as CI: requirements.txt pins torch==2.13.0 and the tests run on it; NGC images
#   carry NVIDIA's own pre-release build (2.x.0a0+git...), which pip cannot match to that pin, so either the
#   pin breaks or pip replaces NGC's torch with a second copy.
# - The CUDA wheel already bundles the CUDA runtime, cuBLAS, cuDNN and NCCL versions torch was tested
#   with (as nvidia-* wheels), so the base only needs the driver glue: the small `-base-` flavour of
#   nvidia/cuda (about 0.3 GB against 10-20 GB for NGC) and one image per CUDA minor, chosen by build args.
# - The cost: NGC's extras (Transformer Engine, Apex, DALI, tuned NCCL plugins for specific fabrics) are not
#   here; a job that needs them should build FROM an NGC tag instead and drop torch from the install.
#
# The CPU variant swaps two build arguments: BASE_IMAGE=ubuntu:24.04 (the OS nvidia/cuda:*-ubuntu24.04
# is built on, so the same apt steps apply) and TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu.
# BASE_IMAGE may also be Debian (tested: a debootstrap-made Debian 12 bookworm, `make image-test`): the apt
# package names used here are the same on both; what differs (Ubuntu's `ubuntu` user on uid 1000) is handled.
#
# Behind a mirror or air-gapped (docs/docker.md): pip reads PIP_INDEX_URL, PIP_EXTRA_INDEX_URL,
# PIP_FIND_LINKS, PIP_NO_INDEX and PIP_TRUSTED_HOST from build arguments of those names, and a local
# wheelhouse comes in as a named build context, bind-mounted into the builder stage only (never a layer);
# for the CUDA variant, download torch from the PyTorch index into it first (docs/docker.md shows both commands):
#   pip download -r requirements.txt --python-version 3.11 --only-binary=:all: -d wheels/   # 3.12: Ubuntu 24.04
#   docker build --build-context wheels=wheels/ --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels .
# apt uses the base image's own sources: point BASE_IMAGE at a base that names your apt mirror, or pass the
# predefined http_proxy/https_proxy build arguments.

# Pinned tags; never `latest`. CUDA 12.8 matches the cu128 wheel below.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04

# ---------------------------------------------------------------------------------------------------------
# wheels: an empty wheelhouse, unless `--build-context wheels=DIR` replaces it (a named build context
# overrides the stage of the same name, in BuildKit and in buildah).
FROM scratch AS wheels

# ---------------------------------------------------------------------------------------------------------
# builder: a virtual environment with the pinned dependencies; nothing from here but /opt/venv is kept.
FROM ${BASE_IMAGE} AS builder

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# pip's own settings for mirrors and wheelhouses; unset unless given (pip then uses its defaults).
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ARG PIP_TRUSTED_HOST

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# DL3008 (pin apt versions) is ignored: the base tag is pinned; Ubuntu replaces package versions with
# security updates and removes the old ones from the archive, so an apt pin would break every rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH

# torch first, from the PyTorch index for the chosen CUDA (or CPU) build; then the rest from PyPI with the
# same pins as CI. `torch==2.13.0` in requirements.txt is already satisfied by 2.13.0+cu128 (PEP 440 ignores
# the local label), so the second step does not replace it. With PIP_NO_INDEX=1 both come from the
# wheelhouse. One RUN, and the requirements (the [hf] extra's too) and the wheels bind-mounted rather than copied: every layer of
# the builder is another copy of the venv on a copy-on-write-less storage driver (buildah's vfs).
RUN --mount=type=bind,from=wheels,target=/wheels \
    --mount=type=bind,source=requirements.txt,target=/tmp/requirements.txt \
    --mount=type=bind,source=requirements-hf.txt,target=/tmp/requirements-hf.txt \
    pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && pip install --no-cache-dir -r /tmp/requirements.txt -r /tmp/requirements-hf.txt \
 && python -c "import torch; assert torch.__version__.split('+')[0] == '${TORCH_VERSION}', torch.__version__"

# ---------------------------------------------------------------------------------------------------------
# runtime: python, tini and the venv; no pip cache, no compilers, no apt lists.
FROM ${BASE_IMAGE} AS runtime

ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG BASE_IMAGE
ARG APP_UID=1000

LABEL org.opencontainers.image.title="torchrunner" \
      org.opencontainers.image.description="Containerized distributed training runner for PyTorch (torchrun, DDP, FSDP2, accelerate)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# tini is PID 1: it forwards SIGTERM to the launcher (which forwards it to the workers, which checkpoint and
# exit 75) and reaps zombies; a Python PID 1 would do neither reliably.
# DL3008 ignored for the reason given in the builder stage: the pinned base tag is the pin.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 tini \
 && rm -rf /var/lib/apt/lists/* \
 && (userdel --remove ubuntu 2>/dev/null || true) \
 && (groupdel ubuntu 2>/dev/null || true) \
 && groupadd --gid "${APP_UID}" app \
 && useradd --uid "${APP_UID}" --gid "${APP_UID}" --create-home --shell /usr/sbin/nologin app \
 && mkdir -p /runs \
 && chown "${APP_UID}:${APP_UID}" /runs

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
COPY pyproject.toml ./
COPY configs/ configs/
COPY launch/ launch/
COPY trainer/ trainer/
# --chmod: the script must be executable even from a checkout that lost the mode bit (Windows, zip).
COPY --chmod=0755 docker/entrypoint.sh docker/entrypoint.sh

# PYTHONPATH rather than `pip install .`: `python -m trainer` / `-m launch` work from any working directory
# and a code change rebuilds only these last layers.
# NCCL/c10d defaults, all overridable with `docker run -e` or the pod's env:
#   NCCL_DEBUG=WARN                        NCCL's warnings and errors, not its INFO flood
#   TORCH_NCCL_ASYNC_ERROR_HANDLING=3      on a NCCL error or timeout, tear the process down (torchrun then
#                                          restarts or fails the job) instead of hanging; 3 is torch's default,
#                                          stated here so that a base image cannot change it
#   TORCH_NCCL_TRACE_BUFFER_SIZE=2000      keep the last 2000 collectives (the Flight Recorder) ...
#   TORCH_NCCL_DUMP_ON_TIMEOUT=1           ... and dump them on a collective timeout, to find the stalled rank
#                                          (files at TORCH_NCCL_DEBUG_INFO_TEMP_FILE, default /tmp/nccl_trace_rank_;
#                                          the Kubernetes manifests point it into the run directory)
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NCCL_DEBUG=WARN \
    TORCH_NCCL_ASYNC_ERROR_HANDLING=3 \
    TORCH_NCCL_TRACE_BUFFER_SIZE=2000 \
    TORCH_NCCL_DUMP_ON_TIMEOUT=1 \
    LAUNCH_MODE=ddp

# Numeric, so that Kubernetes can check runAsNonRoot without looking the name up.
USER ${APP_UID}:${APP_UID}

# No HEALTHCHECK: this is a batch job; its exit code is the health signal (see docs/resume.md "Exit codes").
ENTRYPOINT ["/usr/bin/tini", "--", "/app/docker/entrypoint.sh"]
CMD ["-c", "configs/cnn.yaml"]

"""The checkpoint format's names and records: file names, the error, the progress counters, versions.

Shared by the writer (transaction.py) and the reader (read.py); imports neither.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Optional

import torch

from . import stores

STATE = "state.pt"
DCP = "dcp"  # sharded model + optimizer state (FSDP), written by torch.distributed.checkpoint
MANIFEST = "manifest.json"
LATEST = "latest"
FORMAT = 1


class CheckpointError(RuntimeError):
    pass


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    samples_in_epoch: int = 0  # global samples consumed in the current epoch
    samples_total: int = 0  # global samples consumed since the start
    bad_steps: int = 0  # steps skipped for a non-finite loss since the start (metrics.jsonl's bad_steps)


def checkpoint_root(configured: Optional[str], run_dir: str) -> str:
    """``checkpoint.dir`` if set (a directory or a URL), else ``<run.dir>/checkpoints``."""
    return configured or os.path.join(run_dir, "checkpoints")


def data_file(rank: int) -> str:
    """A rank's stream loader state (torchdata StatefulDataLoader state_dict), for streamed data only."""
    return f"data-rank{rank:05d}.pt"


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def sha256_file(path: str) -> str:
    """sha256 of a file: what a manifest without a ``checksum`` key (written before xxh3) records."""
    return stores.for_path(path).digest(path, "sha256")


def file_checksum(path: str, algo: str) -> str:
    """A file's checksum by the algorithm a manifest names (``manifest.get("checksum", "sha256")``)."""
    return stores.for_path(path).digest(path, algo)


def versions() -> dict:
    return {"torch": torch.__version__, "python": platform.python_version(), "format": FORMAT}

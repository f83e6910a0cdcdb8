"""CUDA out-of-memory diagnostics: the allocator's state written where the user can find it."""

from __future__ import annotations

import logging
import os
import pickle

import torch

log = logging.getLogger("trainer")


def write_memory_dump(run_dir: str, rank: int, step: int) -> None:
    """Write the CUDA allocator's state before the error ends the run, and say where it is."""
    path = os.path.join(run_dir, f"cuda_oom_snapshot-rank{rank}.pickle")
    try:
        with open(path, "wb") as fh:
            pickle.dump(torch.cuda.memory._snapshot(), fh)
        log.error(
            "CUDA out of memory at step %d: allocator snapshot written to %s (drag it into "
            "https://pytorch.org/memory_viz); lower train.batch_size, raise train.grad_accum, or set "
            "train.activation_checkpointing=true",
            step,
            path,
        )
    except Exception as e:  # the dump is a courtesy; the OOM is the error to report
        log.error("CUDA out of memory at step %d (snapshot failed: %s)", step, e)

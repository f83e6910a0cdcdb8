"""``profile.steps=[start, end]``: torch.profiler over those steps on rank 0, for TensorBoard/Chrome."""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger("trainer")


class Profiler:
    def __init__(self, steps: list[int], run_dir: str):
        self.start, self.end = steps
        self.dir = os.path.join(run_dir, "profile")
        self.prof = None

    def step(self, step: int) -> None:
        if step == self.start and self.prof is None:
            acts = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(
                activities=acts,
                record_shapes=True,
                on_trace_ready=torch.profiler.tensorboard_trace_handler(self.dir),
            )
            self.prof.__enter__()
        elif step == self.end:
            self.close()

    def close(self) -> None:
        if self.prof is not None:
            self.prof.__exit__(None, None, None)
            self.prof = None
            log.info("profiler trace written to %s", self.dir)

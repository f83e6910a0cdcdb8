"""Fault-injecting user model and dataset for the fault-tolerance tests (issue 4).

They are ordinary user code given by import path, so the trainer carries no test hooks of its own::

    model.name=tests.faultmodels:FaultMLP 'model.kwargs={nan_at: [5, 6]}'
    data.name=tests.faultmodels:IndexLogged 'data.kwargs={log_dir: /tmp/x}'

FaultMLP counts its training forwards in a buffer (`calls`), which is part of the state dict and therefore of
every checkpoint: "step K" names the same optimizer step (counted from 1, grad_accum=1) before and after a
resume. Each fault fires on the ranks listed (`RANK` from torchrun; 0 in a single process):

    nan_at=[K, ...]       the output (hence the loss and the gradients) is NaN at these steps
    sigterm_at=K          SIGTERM to itself at step K (a preemption at a known step)
    crash_at=K            SIGKILL itself at step K, only in the first attempt (TORCHELASTIC_RESTART_COUNT 0)
    sleep_at=K            at step K write `ready_file` and sleep `sleep_s` (signals arrive while it is busy)

IndexLogged is a (train, eval) pair of gaussian-blob datasets whose train half appends every index it serves
(with the epoch) to ``<log_dir>/served-rank<R>-pid<P>.txt``: what each process really read, per epoch.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import torch
from torch import nn


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


class FaultMLP(nn.Module):
    def __init__(
        self,
        in_features: int = 8,
        hidden: int = 32,
        num_classes: int = 4,
        ranks=(0,),
        nan_at=(),
        sigterm_at: int | None = None,
        crash_at: int | None = None,
        sleep_at: int | None = None,
        sleep_s: float = 60.0,
        ready_file: str | None = None,
    ):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        self.ranks = {int(r) for r in ranks}
        self.nan_at = {int(s) for s in nan_at}
        self.sigterm_at, self.crash_at, self.sleep_at = sigterm_at, crash_at, sleep_at
        self.sleep_s, self.ready_file = sleep_s, ready_file

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if not self.training:
            return out
        self.calls += 1
        step = int(self.calls)
        if _rank() not in self.ranks:
            return out
        if step == self.crash_at and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
            os.kill(os.getpid(), signal.SIGKILL)
        if step == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next bytecode
        if step == self.sleep_at:
            if self.ready_file:
                with open(self.ready_file, "w") as fh:
                    fh.write(str(os.getpid()))
            time.sleep(self.sleep_s)
        if step in self.nan_at:
            out = out * float("nan")
        return out


class _Blobs:
    def __init__(self, x: np.ndarray, y: np.ndarray, log_dir: str | None):
        self.x, self.y, self.log_dir = torch.from_numpy(x), torch.from_numpy(y), log_dir
        self.targets = self.y
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def get_batch(self, idx):
        idx = torch.as_tensor(idx, dtype=torch.long)
        if self.log_dir:
            path = os.path.join(self.log_dir, f"served-rank{_rank()}-pid{os.getpid()}.txt")
            with open(path, "a") as fh:
                fh.write(f"{self.epoch} {' '.join(map(str, idx.tolist()))}\n")
        return self.x[idx], self.y[idx]


def IndexLogged(
    n: int = 512, n_eval: int = 64, num_features: int = 8, num_classes: int = 4, log_dir: str | None = None
):
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((num_classes, num_features))
    y = rng.integers(0, num_classes, n + n_eval)
    x = (centres[y] + rng.standard_normal((n + n_eval, num_features))).astype(np.float32)
    y = y.astype(np.int64)
    return _Blobs(x[:n], y[:n], log_dir), _Blobs(x[n:], y[n:], None)


def read_served(log_dir) -> dict[int, list[int]]:
    """{epoch: every index served in that epoch, by every process, in file order}."""
    out: dict[int, list[int]] = {}
    for name in sorted(os.listdir(log_dir)):
        if not name.startswith("served-"):
            continue
        with open(os.path.join(log_dir, name)) as fh:
            for line in fh:
                epoch, *idx = line.split()
                out.setdefault(int(epoch), []).extend(map(int, idx))
    return out

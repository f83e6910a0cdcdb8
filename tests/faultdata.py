"""A user Dataset that misbehaves on purpose, at a chosen point (``data.name=tests.faultdata:Faulty``).

Samples are ``(x, y)``: x 8 floats, y one of 4 classes, a function of the index alone. Each fault is a
``data.kwargs`` entry:

- ``signal_at_epoch`` + ``signal`` + ``pids_env``: when the loop starts that epoch (``set_epoch``), send the
  signal to the pids listed (comma-separated) in that environment variable: SIGSTOP a server at a
  deterministic point of a run;
- ``raise_at``: ``__getitem__`` of that index raises ValueError (a corrupt record in user code);
- ``nan_every``: x of every index divisible by it is NaN (a bad sample);
- ``shape_at``: that index returns x of 9 floats (a sample of another shape);
- ``sleep_s``: each sample takes this long (a step of measurable length).
"""

from __future__ import annotations

import os
import signal as signals
import time

import torch
from torch.utils.data import Dataset


class Faulty(Dataset):
    task = "classification"
    num_classes = 4

    def __init__(
        self,
        n: int = 512,
        signal_at_epoch: int | None = None,
        signal: str = "SIGSTOP",
        pids_env: str = "FAULT_PIDS",
        raise_at: int | None = None,
        nan_every: int = 0,
        shape_at: int | None = None,
        sleep_s: float = 0.0,
    ):
        self.n, self.signal_at_epoch, self.signal, self.pids_env = n, signal_at_epoch, signal, pids_env
        self.raise_at, self.nan_every, self.shape_at, self.sleep_s = raise_at, nan_every, shape_at, sleep_s
        self.targets = [i % 4 for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        i = int(i)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if i == self.raise_at:
            raise ValueError(f"corrupt record at offset {i * 100}")
        g = torch.Generator().manual_seed(i)
        y = i % 4
        x = torch.randn(8, generator=g) * 0.1
        x[y] += 1.0
        if self.nan_every and i % self.nan_every == 0:
            x[0] = float("nan")
        if i == self.shape_at:
            x = torch.zeros(9)
        return x, y

    def set_epoch(self, epoch: int) -> None:
        if self.signal_at_epoch is not None and epoch == self.signal_at_epoch:
            for pid in filter(None, os.environ.get(self.pids_env, "").split(",")):
                os.kill(int(pid), getattr(signals, self.signal))

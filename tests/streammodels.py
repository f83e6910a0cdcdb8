"""Streams and a sample-recording model for the streaming tests (issue 22), given by import path like user
code::

    data.name=tests.streammodels:Counting 'data.kwargs={n: 200}'
    model.name=tests.streammodels:RecordingMLP 'model.kwargs={log_dir: /tmp/x}'

Sample ``i`` of a Counting stream carries its own number in its first feature (``i / 1000``), so the model
can say which samples it trained on: RecordingMLP appends ``<step> <ids...>`` per training forward to
``<log_dir>/seen-rank<R>.txt`` (the step is FaultMLP's ``calls`` buffer, part of every checkpoint, so a
resumed run numbers its steps like an uninterrupted one). FaultMLP's ``sigterm_at``/``crash_at`` preempt
or SIGKILL it at a known step.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import torch
from torch.utils.data import IterableDataset

from tests.faultmodels import FaultMLP, _rank

SCALE = 1000.0


def sample(i: int, features: int = 8, classes: int = 4) -> tuple[torch.Tensor, int]:
    g = np.random.default_rng(i)
    x = g.normal(size=features).astype(np.float32)
    y = i % classes
    x[1:] += y  # learnable
    x[0] = i / SCALE
    return torch.from_numpy(x), y


class Counting(IterableDataset):
    """A plain generator: samples 0..n-1 (n=None: no end); no state_dict, so a resume skips ahead."""

    num_classes = 4

    def __init__(self, n: int | None = None, features: int = 8):
        self.n, self.features = n, features

    def __iter__(self):
        i = 0
        while self.n is None or i < self.n:
            yield sample(i, self.features)
            i += 1


class StatefulCounting(Counting):
    """The same samples, with torchdata's Stateful protocol: load_state_dict, then iter continues."""

    def __init__(self, n: int | None = None, features: int = 8):
        super().__init__(n, features)
        self.pos, self._resume = 0, None

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, sd: dict) -> None:
        self._resume = int(sd["pos"])

    def __iter__(self):
        self.pos, self._resume = self._resume or 0, None
        return self._gen()

    def _gen(self):
        while self.n is None or self.pos < self.n:
            i = self.pos
            self.pos += 1
            yield sample(i, self.features)


class BadAt(Counting):
    """Sample ``bad`` is a malformed record: the ConfigError a user's reader raises."""

    def __init__(self, n: int = 100, bad: int = 30):
        super().__init__(n)
        self.bad = bad

    def __iter__(self):
        for i, s in enumerate(super().__iter__()):
            if i == self.bad:
                raise self.error(i)
            yield s

    def error(self, i: int) -> Exception:
        from trainer.config import ConfigError

        return ConfigError(f"data.path='shard-0' line {i + 1}: not valid JSON")


class SelfSharded(IterableDataset):
    """Shards itself (``shards_itself = True``): rank r reads samples r, r+W, ... up to its own length
    ``lengths[r]``, so the ranks run out at different steps."""

    num_classes = 4
    shards_itself = True

    def __init__(self, lengths=(40, 12)):
        self.lengths = list(lengths)

    def __iter__(self):
        r = _rank()
        w = len(self.lengths)
        for j in range(self.lengths[r]):
            yield sample(r + j * w)


class RecordingMLP(FaultMLP):
    """FaultMLP that records the samples of every training forward; ``kill_at=K`` SIGKILLs rank 0 at step K
    once (the marker file ``<log_dir>/killed`` makes the rerun of the same command go past it). The
    environment variable SEEN_DIR, when set, replaces ``log_dir`` (two resumes of one checkpoint, recorded
    apart, with the same config)."""

    def __init__(self, log_dir: str, kill_at: int | None = None, **kw):
        super().__init__(**kw)
        self.log_dir, self.kill_at = os.environ.get("SEEN_DIR") or log_dir, kill_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            step = int(self.calls) + 1
            ids = torch.round(x[:, 0] * SCALE).long().tolist()
            with open(os.path.join(self.log_dir, f"seen-rank{_rank()}.txt"), "a", encoding="utf-8") as fh:
                fh.write(f"{step} {' '.join(map(str, ids))}\n")
            marker = os.path.join(self.log_dir, "killed")
            if step == self.kill_at and _rank() == 0 and not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(x)


def read_seen(log_dir, rank: int = 0) -> dict[int, list[int]]:
    """step -> sample ids trained at that step on that rank (the last record of a step wins: a resumed
    run repeats the steps after its checkpoint)."""
    out: dict[int, list[int]] = {}
    path = os.path.join(log_dir, f"seen-rank{rank}.txt")
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            step, *ids = map(int, line.split())
            out[step] = ids  # grad_accum=1: one training forward a step
    return out


def hf_json(path: str):
    """A Hugging Face streaming dataset over a local JSON-lines file, in torch format."""
    from datasets import load_dataset

    return load_dataset("json", data_files=path, split="train", streaming=True).with_format("torch")


def hf_parquet(path: str):
    """The same over Parquet, with a ``.map`` that runs while streaming (as a tokenizing map would)."""
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files=path, split="train", streaming=True)
    return ds.map(lambda r: {"x": [v * 2.0 for v in r["x"]]}).with_format("torch")


class KeywordMLP(torch.nn.Module):
    """forward(x=...) for dict samples ({"x": ..., "label": ...} with data.target_key=label)."""

    def __init__(self, in_features: int = 8, num_classes: int = 4):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(in_features, 16), torch.nn.ReLU(), torch.nn.Linear(16, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float())


class RaisesAt(BadAt):
    """A user's stream with a bug: sample ``bad`` raises a plain RuntimeError (not a ConfigError)."""

    def error(self, i: int) -> Exception:
        return RuntimeError(f"boom at {i}")

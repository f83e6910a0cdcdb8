"""A user Dataset given as ``data.name=package.module:Name``, called with ``**data.kwargs``.

The factory may return one map-style dataset (split here by eval_fraction with split_seed) or a
``(train, eval)`` pair. The task comes from attributes on the dataset when present (``task``,
``num_classes``, ``num_outputs``, ``vocab_size``), else from the first sample:
  * y an integer scalar -> classification; num_classes = max label + 1 over ``targets``/``labels`` if the
    dataset has them, else over the first 10000 samples;
  * x and y integer sequences of the same shape -> lm (vocab from ``vocab_size`` or model.vocab_size);
  * y floating -> regression with num_outputs = y.numel().
Samples are converted to the tensor types the loop expects; ``get_batch`` uses the dataset's own when it
has one, else stacks ``__getitem__``; ``set_epoch`` is forwarded when the dataset defines it.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import Config, ConfigError
from ..objects import build_object
from .base import DataInfo, Indices, as_index, fingerprint, split_indices

LABEL_SCAN = 10_000  # samples scanned for the largest label when the dataset does not say num_classes
FINGERPRINT_SAMPLES = 64  # a user dataset may be huge or lazy: fingerprint its length and first samples


class UserDataset(Dataset):
    """Adapts any map-style dataset (optionally a subset of it) to get_batch/set_epoch and fixed dtypes."""

    def __init__(self, base: Any, indices: Optional[np.ndarray] = None, task: Optional[str] = None):
        self.base, self.indices, self.task = base, indices, task

    def __len__(self) -> int:
        return len(self.base) if self.indices is None else len(self.indices)

    def _map(self, idx: torch.Tensor) -> torch.Tensor:
        return idx if self.indices is None else torch.from_numpy(self.indices)[idx]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def _convert(self, x: Any, y: Any, batched: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if self.task == "lm":
            return x.long(), y.long()
        if x.is_floating_point() or x.dtype == torch.bool:
            x = x.float()
        if self.task == "classification":
            y = y.long()
        elif self.task == "regression":
            y = y.float().reshape((y.shape[0], -1) if batched else (-1,))
        return x, y

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = int(self._map(as_index([i + len(self) if i < 0 else i], len(self)))[0])
        sample = self.base[j]
        if not isinstance(sample, (tuple, list)) or len(sample) != 2:
            raise TypeError(f"user dataset samples must be (x, y) pairs, got {type(sample).__name__}")
        return self._convert(*sample, batched=False)

    def get_batch(self, indices: Indices) -> tuple[torch.Tensor, torch.Tensor]:
        idx = as_index(indices, len(self))
        if hasattr(self.base, "get_batch"):
            x, y = self.base.get_batch(self._map(idx))
            return self._convert(x, y, batched=True)
        pairs = [self[int(i)] for i in idx]
        if not pairs:
            x0, y0 = self[0] if len(self) else (torch.empty(0), torch.empty(0))
            return x0.new_empty((0, *x0.shape)), y0.new_empty((0, *y0.shape))
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def _num_classes(base: Any, ds: UserDataset) -> int:
    for attr in ("targets", "labels"):
        labels = getattr(base, attr, None)
        if labels is not None:
            try:
                return int(torch.as_tensor(labels).max()) + 1
            except (TypeError, ValueError, RuntimeError):
                pass  # not a flat label array: scan samples instead
    n = min(len(ds), LABEL_SCAN)
    return max(int(ds[i][1]) for i in range(n)) + 1


def _infer(cfg: Config, base: Any, train: UserDataset) -> DataInfo:
    key = f"data.name={cfg.data.name!r}"
    if len(train) == 0:
        raise ConfigError(f"{key}: the training dataset is empty")
    try:
        x0, y0 = train[0]
    except Exception as e:
        raise ConfigError(f"{key}: cannot read sample 0: {type(e).__name__}: {e}") from None
    task = getattr(base, "task", None)
    if task is None:
        if not y0.is_floating_point() and y0.ndim == 0:
            task = "classification"
        elif (
            not x0.is_floating_point()
            and not y0.is_floating_point()
            and x0.ndim == 1
            and x0.shape == y0.shape
        ):
            task = "lm"
        elif y0.is_floating_point():
            task = "regression"
        else:
            raise ConfigError(
                f"{key}: cannot infer the task from sample 0 (x {tuple(x0.shape)} {x0.dtype}, "
                f"y {tuple(y0.shape)} {y0.dtype}); set a `task` attribute on the dataset"
            )
    if task not in ("classification", "regression", "lm"):
        raise ConfigError(
            f"{key}: dataset attribute task={task!r}: expected classification, regression or lm"
        )
    train.task = task
    x0, y0 = train[0]
    nc = no = vocab = seq = None
    if task == "classification":
        nc = getattr(base, "num_classes", None) or _num_classes(base, train)
    elif task == "regression":
        no = getattr(base, "num_outputs", None) or y0.numel()
    else:
        vocab = getattr(base, "vocab_size", None) or cfg.model.vocab_size
        seq = x0.shape[0]
    return DataInfo(task, tuple(x0.shape), nc, no, vocab, seq, "", "")


def build(cfg: Config):
    d = cfg.data
    made = build_object("data.name", d.name, d.kwargs)
    if isinstance(made, tuple) and len(made) == 2:
        base = made[0]
        train, evald = UserDataset(made[0]), UserDataset(made[1])
    elif hasattr(made, "__getitem__") and hasattr(made, "__len__"):
        base = made
        tr, ev = split_indices(len(made), d.eval_fraction, d.split_seed)
        train, evald = UserDataset(made, tr), UserDataset(made, ev)
    else:
        raise ConfigError(
            f"data.name={d.name!r}: returned {type(made).__name__}; expected a map-style Dataset "
            f"or a (train, eval) pair"
        )
    info = _infer(cfg, base, train)
    evald.task = info.task
    n_fp = min(len(train), FINGERPRINT_SAMPLES)
    parts = [str(len(train)), str(len(evald))]
    for i in range(n_fp):
        x, y = train[i]
        parts += [t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy() for t in (x, y)]
    info.fingerprint = fingerprint(*parts)
    info.description = (
        f"{d.name}: {len(train)} train / {len(evald)} eval, input {info.input_shape}, {info.task} "
        f"(user dataset)"
    )
    return train, evald, info

"""Batches as the loop sees them: ``(x, y)`` where ``x`` is a tensor, a tuple of tensors (positional
arguments: a sample ``(x1, ..., xn, y)`` reaches ``forward(x1, ..., xn)``) or a dict of tensors (keyword
arguments for the model's forward) and ``y`` the target tensor.

A dict sample (``input_ids``, ``attention_mask``, ``labels``, as Hugging Face datasets in torch format
return) is collated per key with ``torch.utils.data.default_collate``; the target is the ``data.target_key``
entry (default ``labels``), every other key is an input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import default_collate

from ..config import ConfigError


def split_target(sample: Mapping, target_key: str) -> tuple[dict, Any]:
    """(inputs, target) of one dict sample or one collated dict batch."""
    if target_key not in sample:
        raise ConfigError(
            f"data.target_key={target_key!r}: not a key of the dataset's samples "
            f"(keys: {', '.join(map(str, sample))})"
        )
    inputs = {k: v for k, v in sample.items() if k != target_key}
    return inputs, sample[target_key]


def collate(samples: list) -> Any:
    """Samples (tensors, numbers, or dicts of them) stacked into one batch, per key for dicts; the
    inputs of ``(x1, ..., xn)`` samples stay a tuple (default_collate makes tuples lists)."""
    out = default_collate(samples)
    if samples and isinstance(samples[0], (tuple, list)) and isinstance(samples[0][0], tuple):
        return tuple(out[0]), *out[1:]
    return out


def to_device(batch: tuple, device: torch.device, non_blocking: bool) -> tuple:
    """``(x, y)`` on ``device``; ``x`` may be a dict of tensors."""
    x, y = batch
    if type(x) is dict:
        x = {
            k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
            for k, v in x.items()
        }
    elif type(x) is tuple:
        x = tuple(v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v for v in x)
    else:
        x = x.to(device, non_blocking=non_blocking)
    return x, y.to(device, non_blocking=non_blocking)


def first_tensor(x: Any) -> torch.Tensor:
    """The tensor that stands for a (possibly dict) input in shapes and task inference: ``input_ids`` or
    the first tensor entry."""
    if isinstance(x, Mapping):
        if isinstance(x.get("input_ids"), torch.Tensor):
            return x["input_ids"]
        return next(v for v in x.values() if isinstance(v, torch.Tensor))
    if isinstance(x, tuple):
        return next(v for v in x if isinstance(v, torch.Tensor))
    return x


def batch_size_of(x: Any) -> int:
    return int(first_tensor(x).shape[0])

"""What a model returned, read the same way everywhere: a tensor, a tuple/list (its first element), a dict or
a transformers ``ModelOutput`` (its ``logits``).
"""

from __future__ import annotations

import torch


def logits_of(out) -> torch.Tensor:
    """The prediction tensor inside a model's output."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)  # transformers ModelOutput (also a dict)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, dict):
        for k in ("logits", "out", "output", "pred"):
            if isinstance(out.get(k), torch.Tensor):
                return out[k]
        raise TypeError(f"model output dict has no 'logits' tensor (keys: {sorted(out)})")
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"cannot read predictions from a model output of type {type(out).__name__}")


def call_model(model, x):
    """``model(**x)`` for a dict batch (named inputs), else ``model(x)``; returns the prediction tensor."""
    return logits_of(model(**x) if isinstance(x, dict) else model(x))

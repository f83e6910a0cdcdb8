"""Tasks: the training loss and the eval metrics of each task, in one place.

``regression`` (MSE; eval reports ``mse``), ``classification`` (cross-entropy; ``accuracy``) and ``lm``
(token cross-entropy; ``perplexity``). The loop's distributed eval and the offline ``eval`` command both
accumulate :func:`eval_sums` per batch and finish with :func:`eval_result`, so a metric means the same
thing wherever it is printed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

METRIC = {"classification": "accuracy", "regression": "mse", "lm": "perplexity"}


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 else t.float()  # losses in fp32 under autocast too


def task_loss(task: str, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The training loss; ``reduction="none"`` gives one value per sample (LM: mean over its tokens)."""
    if task == "regression":
        if reduction == "mean":
            return F.mse_loss(_f32(out), _f32(y))
        return F.mse_loss(_f32(out), _f32(y), reduction="none").flatten(1).mean(1)
    if task == "lm":
        if reduction == "mean":
            return F.cross_entropy(_f32(out.flatten(0, 1)), y.flatten())
        return F.cross_entropy(_f32(out.flatten(0, 1)), y.flatten(), reduction="none").view(y.shape).mean(1)
    return F.cross_entropy(_f32(out), y, reduction=reduction)


def eval_sums(task: str, out: torch.Tensor, y: torch.Tensor, valid: int) -> torch.Tensor:
    """(loss sum, sample count, correct predictions) over the first ``valid`` samples, float64."""
    per = task_loss(task, out, y, reduction="none")[:valid]
    correct = (
        (out[:valid].argmax(-1) == y[:valid]).sum().double()
        if task == "classification"
        else torch.zeros((), dtype=torch.float64, device=per.device)
    )
    return torch.stack(
        [per.double().sum(), torch.tensor(float(valid), dtype=torch.float64, device=per.device), correct]
    )


def eval_result(task: str, loss_sum: float, count: float, correct: float) -> dict:
    """The eval record: loss, samples and the task's metric."""
    res = {"loss": loss_sum / max(count, 1), "samples": int(count)}
    if task == "classification":
        res["accuracy"] = correct / max(count, 1)
    elif task == "regression":
        res["mse"] = res["loss"]
    else:
        res["perplexity"] = math.exp(min(res["loss"], 700.0))
    return res


def metric_name(task: str) -> str:
    return METRIC.get(task, "perplexity")

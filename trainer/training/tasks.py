"""Tasks: the training loss and the eval metrics of each task, in one place.

``regression`` (MSE; eval reports ``mse``), ``classification`` (cross-entropy; ``accuracy``) and ``lm``
(token cross-entropy; ``perplexity``). LM labels of -100 (``IGNORE``: prompt tokens, padding, document
boundaries of packed rows) carry no loss, and the LM loss and perplexity are means over the tokens that do:
summed and counted, never a mean of per-row means. The loop's distributed eval and the offline ``eval``
command both accumulate :func:`eval_sums` per batch and finish with :func:`eval_result`, so a metric means
the same thing wherever it is printed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

METRIC = {"classification": "accuracy", "regression": "mse", "lm": "perplexity"}
IGNORE = -100  # an LM label that carries no loss (torch's cross_entropy default ignore_index)


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
            return F.cross_entropy(_f32(out.flatten(0, 1)), y.flatten(), ignore_index=IGNORE)
        per = F.cross_entropy(_f32(out.flatten(0, 1)), y.flatten(), reduction="none", ignore_index=IGNORE)
        return per.view(y.shape).sum(1) / (y != IGNORE).sum(1).clamp(min=1)
    return F.cross_entropy(_f32(out), y, reduction=reduction)


def lm_loss_sum(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token losses, number of tokens with a label): the parts of a token-weighted mean."""
    s = F.cross_entropy(_f32(out.flatten(0, 1)), y.flatten(), reduction="sum", ignore_index=IGNORE)
    return s, (y != IGNORE).sum()


def eval_sums(task: str, out: torch.Tensor, y: torch.Tensor, valid: int) -> torch.Tensor:
    """(loss sum, weight, correct predictions, samples) over the first ``valid`` samples, float64.

    The weight is the sample count, or for an LM the number of labelled tokens (the loss is per token).
    """
    dev = out.device
    n = torch.tensor(float(valid), dtype=torch.float64, device=dev)
    if task == "lm":
        s, c = lm_loss_sum(out[:valid], y[:valid])
        return torch.stack([s.double(), c.double(), torch.zeros((), dtype=torch.float64, device=dev), n])
    per = task_loss(task, out, y, reduction="none")[:valid]
    correct = (
        (out[:valid].argmax(-1) == y[:valid]).sum().double()
        if task == "classification"
        else torch.zeros((), dtype=torch.float64, device=dev)
    )
    return torch.stack([per.double().sum(), n, correct, n])


def eval_result(task: str, loss_sum: float, count: float, correct: float, samples: float = -1) -> dict:
    """The eval record: loss, samples and the task's metric (LM: ``tokens`` scored too)."""
    samples = count if samples < 0 else samples
    res = {"loss": loss_sum / max(count, 1), "samples": int(samples)}
    if task == "lm":
        res["tokens"] = int(count)
    if task == "classification":
        res["accuracy"] = correct / max(count, 1)
    elif task == "regression":
        res["mse"] = res["loss"]
    else:
        res["perplexity"] = math.exp(min(res["loss"], 700.0))
    return res


def metric_name(task: str) -> str:
    return METRIC.get(task, "perplexity")

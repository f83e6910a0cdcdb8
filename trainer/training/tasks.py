"""Tasks: the training loss and the eval metrics of each task, in one place.

``regression`` (MSE; eval reports ``mse``), ``classification`` (cross-entropy; ``accuracy``) and ``lm``
(token cross-entropy; ``perplexity``). LM labels of -100 (``IGNORE``: prompt tokens, padding, document
boundaries of packed rows) carry no loss, and the task's LM loss and perplexity are means over the tokens
that do: summed and counted, never a mean of per-row means. The loop's distributed eval and the offline
``eval`` command both accumulate :func:`eval_sums` per batch and finish with :func:`eval_result`, so a
metric means the same thing wherever it is printed.

:class:`Objective` is what a run trains on: the user's ``train.loss`` when given, else the model's own loss
when its output carries one (``trainer.models.outputs.split_output``: ``model.loss_key``, ``loss``, or the
only 0-dim tensor), else the task loss on the model's predictions. Eval uses the same choice, so eval loss
and training loss mean the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..config import Config, ConfigError
from ..models.outputs import loss_key_of, split_output
from ..objects import import_object

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


def eval_sums(
    task: str, out: Optional[torch.Tensor], y: torch.Tensor, valid: int, loss: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """(loss sum, weight, correct predictions, samples) over the first ``valid`` samples, float64.

    The weight is the sample count, or for the task's LM loss the number of labelled tokens (the loss is
    per token). ``loss``: the batch's mean loss when it comes from the model or ``train.loss`` instead of
    the task (eval batches hold exactly ``valid`` samples, or are a weight-0 filler when ``valid`` is 0).
    Accuracy is counted whenever the predictions are (N, C) and the targets class ids (N,).
    """
    if loss is None and task == "lm":
        s, c = lm_loss_sum(out[:valid], y[:valid])
        z = torch.zeros((), dtype=torch.float64, device=s.device)
        return torch.stack([s.double(), c.double(), z, z + float(valid)])
    if loss is None:
        per = task_loss(task, out, y, reduction="none")[:valid]
        loss_sum = per.double().sum()
    else:
        loss_sum = loss.detach().double().reshape(()) * valid
    zero = torch.zeros((), dtype=torch.float64, device=loss_sum.device)
    if task == "classification" and out is not None and out.ndim == 2 and y.ndim == 1:
        correct = (out[:valid].argmax(-1) == y[:valid]).sum().double().to(loss_sum.device)
    else:
        correct = zero
    return torch.stack([loss_sum, zero + float(valid), correct, zero + float(valid)])


class Objective:
    """The loss a run trains on and the eval sums, from the model's raw output (see the module docstring).

    ``loss_fn``: the user's ``train.loss``, called as ``loss_fn(outputs, targets)`` with the model's raw
    output. Built-in models return a tensor and take the first branch of :meth:`loss`: no extra cost.
    """

    def __init__(
        self,
        task: str,
        loss_fn: Optional[Callable[[Any, torch.Tensor], torch.Tensor]] = None,
        loss_key: Optional[str] = None,
    ):
        self.task, self.loss_fn, self.loss_key = task, loss_fn, loss_key

    @classmethod
    def for_run(cls, cfg: Config, task: str, loss_fn: Optional[Callable] = None) -> Objective:
        """``loss_fn`` (passed to ``trainer.fit``), else ``train.loss`` imported, else the task's."""
        fn = loss_fn or (import_object("train.loss", cfg.train.loss) if cfg.train.loss else None)
        if fn is not None and not callable(fn):
            raise ConfigError(f"train.loss={cfg.train.loss!r}: {type(fn).__name__} is not callable")
        return cls(task, fn, cfg.model.loss_key)

    def loss(self, out: Any, y: torch.Tensor) -> torch.Tensor:
        if self.loss_fn is None and type(out) is torch.Tensor:
            return task_loss(self.task, out, y)
        return self.parts(out, y)[1]

    def parts(self, out: Any, y: torch.Tensor) -> tuple[Optional[torch.Tensor], torch.Tensor, bool]:
        """(predictions, loss, whether the loss is a batch mean from the model or train.loss)."""
        preds, own = split_output(out, self.loss_key)
        if self.loss_fn is not None:
            return preds, self.loss_fn(out, y), True
        if own is not None:
            return preds, own, True
        if preds is None:
            raise TypeError(f"the model returned {type(out).__name__} with no tensor to take as predictions")
        return preds, task_loss(self.task, preds, y), False

    def check_trains(self, out: Any, loss: torch.Tensor) -> None:
        """First step, before backward: a loss with no gradient (a detached metric read as the model's only
        0-dim tensor, a ``.item()``-built loss) is a ConfigError naming where it came from, not torch's
        backward traceback (exit 1)."""
        if loss.requires_grad or not torch.is_grad_enabled():
            return
        if self.loss_fn is not None:
            src = "train.loss's result"
        elif split_output(out, self.loss_key)[1] is not None:
            key = loss_key_of(out, self.loss_key) if isinstance(out, Mapping) else None
            src = f"the model's loss ({key!r})" if key is not None else "the model's 0-dim output"
        else:
            src = "the task loss on the model's predictions"
        raise ConfigError(
            f"{src} has no gradient, so nothing can train on it: return the loss computed from the "
            "parameters (not detached), set model.loss_key=NAME to pick another output, or set "
            "train.loss=package.module:fn to compute it from the predictions (or check that some parameter "
            "trains: train.freeze, lora.targets)"
        )

    def eval_sums(self, out: Any, y: torch.Tensor, valid: int) -> torch.Tensor:
        if self.loss_fn is None and type(out) is torch.Tensor:
            return eval_sums(self.task, out, y, valid)
        preds, own = split_output(out, self.loss_key)
        if self.loss_fn is not None:
            own = self.loss_fn(out, y)
        return eval_sums(self.task, preds, y, valid, own)


def eval_result(task: str, loss_sum: float, count: float, correct: float, samples: float = -1) -> dict:
    """The eval record: loss, samples and the task's metric (LM: ``tokens`` scored too)."""
    samples = count if samples < 0 else samples
    res = {"loss": loss_sum / max(count, 1), "samples": int(samples)}
    if task == "lm" and int(count) != int(samples):  # token-weighted: the labelled tokens scored
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

"""Read any model's output and feed any model its batch: tensors, tuples, dicts and ``ModelOutput``.

Output rules (``split_output``), the contract docs/byo-model.md documents:

* a tensor is the predictions;
* a tuple or list: a 0-dim tensor element is the model's loss (nanoGPT returns ``(logits, loss)``,
  transformers with ``return_dict=False`` returns ``(loss, logits)``), the first other tensor is the
  predictions;
* a dict or ``ModelOutput`` (a dict subclass that omits ``None`` entries): ``loss`` when present, and
  ``logits`` (else the first tensor that is not the loss) as the predictions.

Inputs (``ModelIO.forward``): a tensor batch is the one positional argument; a dict batch (collated per key
by ``trainer.data``) is passed as keyword arguments. With ``model.target_arg=NAME`` the target is passed as
that keyword too, so the model computes its own loss. transformers' causal LMs shift ``labels`` themselves,
while the trainer's ``(x, y)`` language-model pairs are already shifted: for a transformers model on tensor
LM batches the trainer also passes ``shift_labels=y``, which transformers 5.x uses as given instead of
shifting ``labels`` a second time.

Nothing here imports transformers: a transformers model is recognised by its class hierarchy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import nn

from ..config import Config


def split_output(out: Any) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(predictions, the model's own loss) of one forward; either may be None."""
    if isinstance(out, torch.Tensor):
        return out, None
    if isinstance(out, Mapping):
        loss = out.get("loss")
        preds = out.get("logits")
        if preds is None:
            preds = next((v for k, v in out.items() if k != "loss" and isinstance(v, torch.Tensor)), None)
        return preds, loss if isinstance(loss, torch.Tensor) else None
    if isinstance(out, (tuple, list)):
        loss = preds = None
        for v in out:
            if not isinstance(v, torch.Tensor):
                continue
            if v.ndim == 0 and loss is None:
                loss = v
            elif preds is None and v.ndim > 0:
                preds = v
        return preds, loss
    return None, None


def describe_output(out: Any) -> str:
    """A short description of an output for error messages: ``tuple(Tensor (16, 4), NoneType)``."""
    if isinstance(out, torch.Tensor):
        return f"tensor {tuple(out.shape)}"
    if isinstance(out, Mapping):
        inner = ", ".join(f"{k}: {describe_output(v)}" for k, v in list(out.items())[:4])
        return f"{type(out).__name__}({inner})"
    if isinstance(out, (tuple, list)):
        return f"{type(out).__name__}({', '.join(describe_output(v) for v in list(out)[:4])})"
    return type(out).__name__


def is_transformers_model(model: nn.Module) -> bool:
    """A transformers ``PreTrainedModel`` (also inside a peft ``PeftModel``), recognised without importing
    transformers."""
    if hasattr(model, "get_base_model"):  # peft: the PreTrainedModel it wraps decides how labels are read
        model = model.get_base_model()
    return any(
        c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers.")
        for c in type(model).__mro__
    )


class ModelIO:
    """How the loop calls a model on a batch ``(x, y)``: built once per run, the same in train and eval.

    ``target_arg``: pass ``y`` as this keyword; ``shift_labels``: also pass ``shift_labels=y`` (see the
    module docstring). ``forward(model, x, y)`` returns the model's raw output.
    """

    def __init__(self, target_arg: Optional[str] = None, shift_labels: bool = False):
        self.target_arg = target_arg
        self.shift_labels = shift_labels and target_arg is not None
        self.plain = target_arg is None  # model(x) or model(**x): the built-in models' path

    def forward(self, model, x, y):
        if self.plain:
            return model(**x) if type(x) is dict else model(x)
        kw = {self.target_arg: y}
        if self.shift_labels:
            kw["shift_labels"] = y.contiguous()
        if type(x) is dict:
            return model(**x, **kw)
        return model(x, **kw)


def model_io(cfg: Config, module: nn.Module, dataset, task: str) -> ModelIO:
    """The run's ModelIO: ``model.target_arg``, and ``shift_labels`` for a transformers model on the
    trainer's already-shifted tensor LM pairs (dict batches follow the dataset's own convention)."""
    target_arg = cfg.model.target_arg
    shift = (
        target_arg is not None
        and task == "lm"
        and is_transformers_model(module)
        and len(dataset) > 0
        and not isinstance(dataset[0][0], Mapping)
    )
    return ModelIO(target_arg, shift_labels=shift)

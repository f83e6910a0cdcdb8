"""Read any model's output and feed any model its batch: tensors, tuples, dicts and ``ModelOutput``.

Output rules (``split_output``), the contract docs/byo-model.md documents:

* a tensor is the predictions;
* a tuple or list: a 0-dim tensor element is the model's loss (nanoGPT returns ``(logits, loss)``,
  transformers with ``return_dict=False`` returns ``(loss, logits)``), the first other tensor is the
  predictions;
* a dict or ``ModelOutput`` (a dict subclass that omits ``None`` entries): the loss is the entry named by
  ``model.loss_key``, else ``loss``, else (not for a transformers ``ModelOutput``, whose loss is always
  ``loss``) the only 0-dim tensor (``{"logits", "total_loss"}``); several 0-dim tensors and no ``loss`` are
  an error naming ``model.loss_key`` (:func:`loss_candidates`, checked by the probe). The predictions are
  ``logits``, else the first other tensor.

Inputs (``ModelIO.forward``): a tensor batch is the one positional argument, a tuple batch the positional
arguments (``forward(x1, ..., xn)``); a dict batch (collated per key by ``trainer.data``) is passed as
keyword arguments. With ``model.target_arg=NAME`` the target is passed as that keyword too, so the model
computes its own loss. transformers' causal LMs shift ``labels`` themselves, while the trainer's language-
model labels are usually already shifted (token windows, jsonl, user labels found shifted): for a
transformers model on those the trainer also passes ``shift_labels=y``, which transformers 5.x uses as
given instead of shifting ``labels`` a second time. Seq2seq dicts (labels of another length than the
inputs, T5) pass their labels to the model as ``data.target_key`` when ``model.target_arg`` is not set:
only the model can score them. A transformers causal LM given labels that are neither its inputs nor its
inputs shifted (``data.user.label_convention``) is refused naming ``model.target_arg``.

Nothing here imports transformers: a transformers model is recognised by its class hierarchy.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import nn

from ..config import Config, ConfigError
from ..data.base import DataInfo

log = logging.getLogger("trainer")


def _is_transformers_output(out: Any) -> bool:
    return type(out).__module__.startswith("transformers.")


def loss_candidates(out: Mapping) -> list[str]:
    """The keys of a dict output that may hold the model's loss when it has no ``loss``: its 0-dim tensors
    (none for a transformers ModelOutput, whose loss is ``loss`` or absent)."""
    if _is_transformers_output(out):
        return []
    return [k for k, v in out.items() if isinstance(v, torch.Tensor) and v.ndim == 0]


def loss_key_of(out: Mapping, loss_key: Optional[str] = None) -> Optional[str]:
    """The key whose value is the model's loss (see the module docstring), or None."""
    if loss_key is not None:
        return loss_key
    if "loss" in out:
        return "loss"
    cands = loss_candidates(out)
    return cands[0] if len(cands) == 1 else None


def split_output(
    out: Any, loss_key: Optional[str] = None
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(predictions, the model's own loss) of one forward; either may be None. ``loss_key``:
    ``model.loss_key``."""
    if isinstance(out, torch.Tensor):
        return out, None
    if isinstance(out, Mapping):
        key = loss_key_of(out, loss_key)
        loss = out.get(key) if key is not None else None
        preds = out.get("logits")
        if preds is None:
            preds = next(
                (v for k, v in out.items() if k != key and isinstance(v, torch.Tensor) and v.ndim > 0), None
            )
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
            if type(x) is dict:
                return model(**x)
            return model(*x) if type(x) is tuple else model(x)
        kw = {self.target_arg: y}
        if self.shift_labels:
            kw["shift_labels"] = y.contiguous()
        if type(x) is dict:
            return model(**x, **kw)
        if type(x) is tuple:
            return model(*x, **kw)
        return model(x, **kw)


def _accepts(module: nn.Module, name: str) -> bool:
    """Whether ``module.forward`` takes a keyword ``name`` (or any keyword)."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def _is_causal_lm(module: nn.Module) -> bool:
    if hasattr(module, "get_base_model"):
        module = module.get_base_model()
    return is_transformers_model(module) and type(module).__name__.endswith("ForCausalLM")


def model_io(cfg: Config, module: nn.Module, info: DataInfo) -> ModelIO:
    """The run's ModelIO (see the module docstring): ``model.target_arg`` (or ``data.target_key`` for
    seq2seq labels), and ``shift_labels`` for a transformers model given labels that are already shifted."""
    target_arg = cfg.model.target_arg
    conv = info.extra.get("labels")
    if info.extra.get("seq2seq") and target_arg is None:
        key = cfg.data.target_key
        if not _accepts(module, key):
            raise ConfigError(
                f"data.target_key={key!r}: labels of another length than the inputs (seq2seq) can only be "
                f"scored by the model, and its forward takes no {key!r}; set model.target_arg=NAME (the "
                "forward parameter that takes them)"
            )
        log.info("data: seq2seq labels (another length than the inputs) go to forward as %r", key)
        target_arg = key
    if conv == "per_token" and target_arg is None and _is_causal_lm(module):
        raise ConfigError(
            f"model {type(module).__name__}: the LM labels are neither the inputs nor the inputs shifted by "
            "one, so the trainer cannot tell how this causal LM should be scored; set "
            "model.target_arg=labels (the model shifts and scores them) or give shifted labels"
        )
    shifted = info.extra.get("labels_shifted", info.task == "lm" and conv is None)
    shift = target_arg is not None and info.task == "lm" and bool(shifted) and is_transformers_model(module)
    return ModelIO(target_arg, shift_labels=shift)

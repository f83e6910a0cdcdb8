"""The probe: one forward and loss on a real micro-batch before the run directory exists.

The micro-batch is the training set's first samples, read one by one (``__getitem__``) and collated as the
loop's batches are. A model whose output does not fit the data (4 outputs on 10 classes, last-position
logits against per-token targets, a loss that is not a scalar) is a config error (exit 2) with one line
naming both shapes, and nothing is left behind. The probe runs on the target device, on the whole (not yet
sharded, not yet wrapped) model, in eval mode under ``no_grad``, and restores every RNG state and the
training mode afterwards, so a run with the probe trains bit for bit like one without. Every rank probes the
same samples and all ranks agree on one verdict (``runtime.dist.first_error``).
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ..config import Config, ConfigError
from ..data.base import DataInfo
from ..data.collate import batch_size_of, collate, to_device
from ..models.outputs import ModelIO, describe_output, loss_candidates, loss_key_of, split_output
from ..runtime import dist
from .tasks import Objective

log = logging.getLogger("trainer")

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else ""


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def check_fit(task: str, info: DataInfo, preds: Optional[torch.Tensor], y: torch.Tensor, out: Any) -> None:
    """Raise ConfigError when the predictions cannot be scored against the targets by the task loss."""
    if preds is None:
        raise ConfigError(f"model output {describe_output(out)} holds no tensor to take as predictions")
    n = y.shape[0]
    p = _shape(preds)
    if task == "classification":
        if preds.ndim != 2 or preds.shape[0] != n:
            raise ConfigError(
                f"model output {p} does not fit class targets {_shape(y)}: expected ({n}, classes)"
            )
        if preds.shape[1] < (info.num_classes or 0):
            raise ConfigError(f"model output {p} does not fit {info.num_classes} classes")
    elif task == "lm":
        if preds.ndim != 3 or tuple(preds.shape[:2]) != tuple(y.shape):
            hint = (
                " (a model that returns only the last position without targets needs model.target_arg)"
                if preds.ndim == 3 and preds.shape[1] == 1
                else ""
            )
            raise ConfigError(
                f"model output {p} does not fit token targets {_shape(y)}: expected "
                f"({', '.join(map(str, y.shape))}, vocab){hint}"
            )
        top = int(y.max()) + 1 if y.numel() else 0
        if preds.shape[-1] < top:
            raise ConfigError(
                f"model output {p} does not fit a vocabulary of {info.vocab_size} tokens "
                f"(largest target id {top - 1})"
            )
    elif tuple(preds.shape) != tuple(y.shape):
        raise ConfigError(f"model output {p} does not fit regression targets {_shape(y)}")


def _check_loss_key(out: Mapping, objective: Objective) -> Optional[str]:
    """The key of the model's loss in a dict output; a missing model.loss_key, or several 0-dim tensors
    and no ``loss``, is a ConfigError (never a loss silently replaced by the task's)."""
    if objective.loss_key is not None:
        v = out.get(objective.loss_key)
        if not isinstance(v, torch.Tensor):
            raise ConfigError(
                f"model.loss_key={objective.loss_key!r}: not a tensor of the model's output "
                f"{describe_output(out)} (keys: {', '.join(map(str, out))})"
            )
        return objective.loss_key
    cands = loss_candidates(out)
    if "loss" not in out and len(cands) > 1 and objective.loss_fn is None:
        raise ConfigError(
            f"model output {describe_output(out)} holds several 0-dim tensors ({', '.join(cands)}) and no "
            "'loss': set model.loss_key=NAME to say which one trains"
        )
    return loss_key_of(out)


def _probe_local(
    cfg: Config,
    module: nn.Module,
    train_ds,
    info: DataInfo,
    io: ModelIO,
    objective: Objective,
    device: torch.device,
    micro: int,
) -> str:
    n = min(micro, len(train_ds))
    try:  # sample by sample, not get_batch: a dataset that counts what the loop reads sees no extra batch
        batch = collate([train_ds[i] for i in range(n)])
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(
            f"data.name={cfg.data.name!r}: reading a micro-batch of {n} failed: "
            f"{type(e).__name__}: {_first_line(e)}"
        ) from None
    x, y = to_device(batch, device, False)
    dtype = _DTYPES.get(cfg.train.precision)
    amp = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    try:
        with amp:
            out = io.forward(module, x, y)
    except Exception as e:
        raise ConfigError(
            f"model.name={cfg.model.name!r}: forward on a micro-batch of {n} from "
            f"data.name={cfg.data.name!r} failed: {type(e).__name__}: {_first_line(e)}"
        ) from None
    key = _check_loss_key(out, objective) if isinstance(out, Mapping) else None
    preds, own = split_output(out, objective.loss_key)
    if objective.loss_fn is None and own is None:
        try:
            check_fit(info.task, info, preds, y, out)
        except ConfigError as e:
            raise ConfigError(f"model.name={cfg.model.name!r} on data.name={cfg.data.name!r}: {e}") from None
    elif own is not None and objective.loss_fn is None and own.numel() != 1:
        raise ConfigError(
            f"model output {describe_output(out)}: its loss has shape {_shape(own)}, expected a scalar"
        )
    who = f"train.loss={cfg.train.loss!r}" if objective.loss_fn is not None else "the loss"
    try:
        loss = objective.loss(out, y)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(
            f"{who} on model output {describe_output(out)} and targets {_shape(y)} failed: "
            f"{type(e).__name__}: {_first_line(e)}"
        ) from None
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        got = _shape(loss) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ConfigError(f"{who} returned {got}, expected a scalar tensor")
    source = (
        "train.loss"
        if objective.loss_fn is not None
        else f"the model's loss ({key})"
        if own is not None and key not in (None, "loss")
        else "the model's loss"
        if own is not None
        else "task loss"
    )
    return (
        f"probe: forward + loss on {batch_size_of(x)} samples on {device}, before wrapping: output "
        f"{describe_output(out)}, {source} {float(loss):.4f}"
    )


def probe(
    cfg: Config,
    state: dist.DistState,
    module: nn.Module,
    train_ds,
    info: DataInfo,
    io: ModelIO,
    objective: Objective,
    micro: int,
) -> str | None:
    """Raise ConfigError (the same on every rank) when the model does not fit the data; see the module doc.

    Returns the line that says what was probed (for the log once the run dir exists, so that an error
    found between the probe and the first step is still the only line on the console), None on ranks that
    took rank 0's verdict."""
    was_training = module.training
    if any(p.is_meta for p in module.parameters()):
        # model.name=hf on ranks > 0: weights arrive from rank 0 after wrapping; rank 0's verdict is theirs
        err = dist.first_error(state, None)
        if err:
            raise ConfigError(err)
        return None
    module.to(state.device)  # first, so that the CUDA generator it may create is saved below too
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    cuda = (
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    )
    module.eval()
    err = line = None
    try:
        with torch.no_grad():
            line = _probe_local(cfg, module, train_ds, info, io, objective, state.device, micro)
    except ConfigError as e:
        err = str(e)
    except SystemExit as e:  # sys.exit in the user's forward or loss: not a success, and never a hang
        err = f"probe: the model's forward or the loss called sys.exit({e.code!r})"
    except Exception as e:  # never leave the other ranks waiting in first_error
        err = f"probe: {type(e).__name__}: {_first_line(e)}"
    finally:
        module.train(was_training)
        torch.set_rng_state(rng[0])
        random.setstate(rng[1])
        np.random.set_state(rng[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
    err = dist.first_error(state, err)
    if err:
        raise ConfigError(err)
    return line

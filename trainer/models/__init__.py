"""Models: ``build_model(cfg, info)`` and ``flops_per_sample(model, info)`` (for throughput and MFU).

Built-in ``model.name``: linreg, cnn, mlp, gpt, hf (a local Hugging Face causal LM from ``model.path``,
``hf.py``: it keeps ``model.dtype``); or ``package.module:Callable`` (also
``module:Class.classmethod``, e.g. ``transformers:AutoModelForCausalLM.from_config``) for a user nn.Module,
called with ``**model.kwargs``, or with ``model.config=package.module:ConfigClass`` called with
``ConfigClass(**model.kwargs)`` as its one argument. A user model built in another floating dtype (a
transformers config's ``dtype``) is cast to float32: every ``train.precision`` keeps fp32 master weights
(autocast, GradScaler and FSDP's mixed-precision policy cast from them). Construction draws only from
torch's global RNG, so the loop's ``torch.manual_seed`` before ``build_model`` makes initialisation
deterministic. Every model gets ``task = info.task`` so the
loop picks the loss (MSE for regression, cross-entropy for classification and lm); a user model keeps its
own ``task`` attribute if it has one.
"""

from __future__ import annotations

import inspect
import logging
import math
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..config import MODEL_NAMES, Config, ConfigError
from ..data.base import DataInfo
from ..objects import import_object
from .cnn import CNN
from .gpt import GPT
from .hf import build_hf
from .linreg import LinReg
from .mlp import MLP
from .outputs import ModelIO

__all__ = ["CNN", "GPT", "LinReg", "MLP", "build_model", "flops_per_sample", "prepare_user_model", "unwrap"]

log = logging.getLogger("trainer")


def _out_features(name: str, info: DataInfo) -> int:
    if info.task == "classification":
        return int(info.num_classes)
    if info.task == "regression":
        return int(info.num_outputs)
    raise ConfigError(
        f"model.name={name!r}: does not fit task {info.task!r} (use model.name=gpt for language data)"
    )


def _build_gpt(cfg: Config, info: DataInfo) -> GPT:
    m = cfg.model
    if info.task != "lm":
        raise ConfigError(
            f"model.name='gpt': needs language-model data (text, tokens), got task {info.task!r} "
            f"from data.name={cfg.data.name!r}"
        )
    if info.seq_len and info.seq_len > m.block_size:
        raise ConfigError(
            f"model.block_size={m.block_size}: shorter than the data's sequence length {info.seq_len}"
        )
    vocab = info.vocab_size or m.vocab_size  # the data decides when it knows (text is bytes: 256)
    return GPT(
        vocab,
        m.block_size,
        m.n_layer,
        m.n_head,
        m.n_embd,
        m.dropout,
        activation_checkpointing=cfg.train.activation_checkpointing,
    )


def _takes(obj: Any) -> str:
    """The parameters a callable takes, for error messages."""
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return "?"
    return (
        ", ".join(
            ("**" if p.kind is p.VAR_KEYWORD else "*" if p.kind is p.VAR_POSITIONAL else "") + p.name
            for p in params
        )
        or "no parameters"
    )


def _call(key: str, spec: str, fn: Any, args: tuple, kwargs: dict, given: str) -> Any:
    try:
        return fn(*args, **kwargs)
    except SystemExit as e:  # user code must not end the run as if it had succeeded
        raise ConfigError(f"{key}={spec!r}: calling it with {given} called sys.exit({e.code!r})") from None
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        raise ConfigError(
            f"{key}={spec!r}: calling {getattr(fn, '__qualname__', type(fn).__name__)} with {given} failed: "
            f"{type(e).__name__}: {msg} (it takes: {_takes(fn)})"
        ) from None


def _check_config_keys(spec: str, conf_cls: Any, kwargs: dict) -> None:
    """transformers' config classes keep unknown keys silently (whatever their signature says), so a
    typo (or YAML's ``{a:1}``, one key "a:1") would build a default-sized model: refuse keys that are
    neither a parameter nor an attribute of a default instance. Any other class that takes ``**kwargs``
    (minGPT's ``CfgNode(**kwargs)``) receives every key: they are its fields."""
    try:
        params = inspect.signature(conf_cls).parameters
    except (TypeError, ValueError):
        return
    transformers_config = any(
        c.__module__.startswith("transformers.") for c in getattr(conf_cls, "__mro__", ())
    )
    if not transformers_config and any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    try:
        default = conf_cls()
    except Exception:
        return
    for key in kwargs:
        if key not in params and not hasattr(default, key):
            hint = " (in YAML write {key: value}, with a space after the colon)" if ":" in str(key) else ""
            raise ConfigError(
                f"model.kwargs: {key!r} is not a field of {getattr(conf_cls, '__name__', spec)} "
                f"(model.config={spec!r}){hint}; it takes: {_takes(conf_cls)}"
            )


def _build_user(cfg: Config) -> nn.Module:
    m = cfg.model
    factory = import_object("model.name", m.name)
    if m.config:
        conf_cls = import_object("model.config", m.config)
        _check_config_keys(m.config, conf_cls, m.kwargs)
        conf = _call("model.config", m.config, conf_cls, (), m.kwargs, f"model.kwargs={m.kwargs!r}")
        model = _call("model.name", m.name, factory, (conf,), {}, f"a {type(conf).__name__}")
    else:
        model = _call("model.name", m.name, factory, (), m.kwargs, f"model.kwargs={m.kwargs!r}")
    return prepare_user_model(model, f"model.name={m.name!r}", cfg)


def prepare_user_model(model: Any, key: str, cfg: Config) -> nn.Module:
    """A user model checked and cast to float32 master weights (see the module docstring)."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{key}: returned {type(model).__name__}, expected an nn.Module")
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if dtypes - {torch.float32}:
        log.info(
            "model: built in %s; cast to float32 master weights (train.precision=%s computes in %s)",
            ", ".join(sorted(str(d).replace("torch.", "") for d in dtypes)),
            cfg.train.precision,
            {"fp32": "float32", "bf16": "bfloat16 under autocast", "fp16": "float16 under autocast"}[
                cfg.train.precision
            ],
        )
        model = model.float()
    return model


def _build_linreg(cfg: Config, info: DataInfo) -> LinReg:
    return LinReg(math.prod(info.input_shape), _out_features("linreg", info))


def _build_cnn(cfg: Config, info: DataInfo) -> CNN:
    if tuple(info.input_shape) != (1, 28, 28):
        raise ConfigError(
            f"model.name='cnn': needs 1x28x28 images, data.name={cfg.data.name!r} gives inputs "
            f"of shape {tuple(info.input_shape)}"
        )
    return CNN(_out_features("cnn", info))


def _build_mlp(cfg: Config, info: DataInfo) -> MLP:
    return MLP(tuple(info.input_shape), list(cfg.model.hidden), _out_features("mlp", info), cfg.model.dropout)


BUILDERS = {
    "linreg": _build_linreg,
    "cnn": _build_cnn,
    "mlp": _build_mlp,
    "gpt": _build_gpt,
    "hf": build_hf,
}  # config.MODEL_NAMES


def build_model(cfg: Config, info: DataInfo) -> nn.Module:
    """The model named by ``cfg.model`` sized for the data described by ``info``."""
    name = cfg.model.name
    if name in BUILDERS:
        model: nn.Module = BUILDERS[name](cfg, info)
        model.task = info.task
    elif ":" in name:
        model = _build_user(cfg)
        if not hasattr(model, "task"):  # never overwrite a user model's own attribute
            model.task = info.task
    else:
        raise ConfigError(
            f"model.name={name!r}: expected one of {', '.join(MODEL_NAMES)} or package.module:Name"
        )
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside torch.compile (``_orig_mod``) and DDP/DataParallel (``module``) wrappers."""
    while True:
        kind = type(model).__name__
        if kind == "OptimizedModule":
            model = model._orig_mod
        elif kind in ("DistributedDataParallel", "DataParallel"):
            model = model.module
        elif kind.startswith("Peft") and hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model


def flops_per_sample(model: nn.Module, info: DataInfo) -> Optional[float]:
    """Training FLOPs (forward + backward) per sample, or None when they cannot be estimated.

    GPT: the analytic 6*N*T + 12*L*d*T^2 (see :meth:`GPT.flops_per_sample`; N = all parameters with the
    tied embedding once, minus the position table). Others: 3x the forward FLOPs counted by
    ``torch.utils.flop_counter`` on one sample (backward ~ 2x forward), which is exact for matmuls and
    convolutions where 6*params would undercount a CNN ~20x (its conv weights are reused at every pixel);
    falls back to 6*params if counting fails. Sharded (DTensor) or meta-device parameters go straight to
    the fallback: a forward there would all-gather, a collective that must not run on one rank only.
    Cheap (one forward of one sample) and free of side effects: call it once, before or after wrapping.
    """
    inner = unwrap(model)
    if isinstance(inner, GPT):
        return inner.flops_per_sample(info.seq_len or inner.block_size)
    params = sum(p.numel() for p in inner.parameters())
    if any(type(p).__name__ == "DTensor" or p.is_meta for p in inner.parameters()):
        return 6.0 * params if params else None
    try:
        p0 = next(inner.parameters(), None)
        device = p0.device if p0 is not None else torch.device("cpu")
        dtype = torch.long if info.task == "lm" else torch.float32
        x = torch.zeros((1, *info.input_shape), dtype=dtype, device=device)
        was_training = inner.training
        inner.eval()  # no dropout draws, no BatchNorm running-stat updates
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                ModelIO().forward(inner, {"input_ids": x} if info.extra.get("loss_mask") else x, None)
        finally:
            inner.train(was_training)
        fwd = counter.get_total_flops()
        if fwd > 0:
            return 3.0 * float(fwd)
    except Exception:  # a user model with unusual inputs: fall back to the parameter estimate
        pass
    return 6.0 * params if params else None

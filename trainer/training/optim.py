"""Optimizer and LR schedule from the config: SGD(momentum)/Adam/AdamW, freezing, per-group LRs."""

from __future__ import annotations

import fnmatch
import logging
import math
import re

import torch
from torch import nn

from ..config import Config, ConfigError

log = logging.getLogger("trainer")


_PEFT_PREFIX = "base_model.model."


def plain_name(name: str) -> str:
    """A parameter's name as the model without peft's wrappers calls it: ``base_model.model.fc1.base_layer.
    weight`` -> ``fc1.weight``, ``head.modules_to_save.default.bias`` -> ``head.bias`` (adapter weights
    keep their ``lora_A.default`` part, so patterns can still pick them)."""
    if name.startswith(_PEFT_PREFIX):
        name = name[len(_PEFT_PREFIX) :]
    return (
        name.replace(".base_layer.", ".")
        .replace(".modules_to_save.default.", ".")
        .replace(".original_module.", ".")
    )


def name_matches(name: str, pattern: str) -> bool:
    """Glob on the parameter name, or a regular expression when written as ``re:EXPR``; a peft-wrapped
    name also matches through its plain name (see :func:`plain_name`)."""
    names = (name, plain_name(name)) if "." in name else (name,)
    if pattern.startswith("re:"):
        return any(re.search(pattern[3:], n) is not None for n in names)
    return any(fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n, pattern + ".*") for n in names)


def apply_freeze(module: nn.Module, patterns: list[str]) -> tuple[int, int]:
    """Freeze matching parameters; returns (trainable, total) parameter counts."""
    for name, p in module.named_parameters():
        if any(name_matches(name, pat) for pat in patterns):
            p.requires_grad_(False)
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainable, total


def param_groups(module: nn.Module, cfg: Config) -> list[dict]:
    specs = cfg.optim.param_groups
    groups: list[dict] = [{"params": [], "names": []} for _ in specs] + [{"params": [], "names": []}]
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        i = next((i for i, g in enumerate(specs) if name_matches(name, g["pattern"])), len(specs))
        groups[i]["params"].append(p)
        groups[i]["names"].append(name)
    out = []
    for spec, g in zip(specs + [{}], groups):
        if not g["params"]:
            if spec:
                log.warning("optim.param_groups pattern %r matches no trainable parameter", spec["pattern"])
            continue
        group = {"params": g["params"]}
        for k in ("lr", "weight_decay"):
            if k in spec:
                group[k] = float(spec[k])
        out.append(group)
    return out


def build_optimizer(module: nn.Module, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    o = cfg.optim
    groups = param_groups(module, cfg)
    if not groups:
        raise ConfigError(f"train.freeze={cfg.train.freeze!r}: every parameter is frozen; nothing to train")
    # Fused kernels on CUDA: fewer launches, and they can skip a step on device (found_inf) without a sync.
    fused = {"fused": True} if device.type == "cuda" else {}
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, **fused)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay, **fused)


def lr_lambda(cfg: Config, total_steps: int):
    o = cfg.optim
    warm = o.warmup_steps

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if o.schedule == "constant":
            return 1.0
        span = max(1, total_steps - warm)
        progress = min(1.0, (step - warm) / span)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def build_scheduler(optimizer, cfg: Config, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(
        getattr(optimizer, "optimizer", optimizer), lr_lambda(cfg, total_steps)
    )

"""What a resume may change: the config-change policy and the LR schedule rebuilt from the new config.

A checkpoint restores the optimizer's and the scheduler's state, which carry the *old* ``lr``, ``initial_lr``
and ``base_lrs``; a changed ``train.epochs`` / ``train.max_steps`` silently re-stretches a moving schedule.
With ``run.resume_config_change=allow`` every changed key either takes effect (optimizer hyperparameters and
the LR schedule are rebuilt from the new config at the resumed step) or is refused because it cannot (the
model's shape, the data, the optimizer type, the seed that orders the data), and the log says which.
"""

from __future__ import annotations

import logging

from torch import nn

from ..config import Config, ConfigError, flat
from .optim import build_scheduler, lr_lambda, param_groups

log = logging.getLogger("trainer")

# Keys a resumed run cannot change: the weights, the optimizer state or the data order depend on them.
REFUSED = (
    "seed",
    "model.",
    "lora.",
    "optim.name",
    "data.name",
    "data.path",
    "data.kwargs",
    "data.num_samples",
    "data.num_features",
    "data.num_classes",
    "data.classes",
    "data.eval_fraction",
    "data.split_seed",
    "data.token_dtype",
    "data.target",
    "data.max_bytes",
    "train.freeze",
)
# ... except these, which only change what happens from now on
ALLOWED_ANYWAY = ("model.dropout", "model.init_from", "model.init_strict", "model.init_skip")
# Keys that shape the optimizer's hyperparameters or the LR schedule.
SCHEDULE = ("optim.", "train.max_steps", "train.epochs")


def changes(old: Config, new: Config) -> list[tuple[str, object, object]]:
    fo, fn = flat(old), flat(new)
    return [(k, fo.get(k), fn.get(k)) for k in sorted(fo.keys() | fn.keys()) if fo.get(k) != fn.get(k)]


def refused(changed: list[tuple[str, object, object]]) -> list[str]:
    return [
        k
        for k, _, _ in changed
        if k.startswith(REFUSED) and k not in ALLOWED_ANYWAY and not k.startswith("run.")
    ]


def check_allowed(changed, path: str) -> None:
    bad = refused(changed)
    if bad:
        what = ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changed if k in bad)
        raise ConfigError(
            f"run.resume_config_change=allow: {what} cannot change on resume from {path} (the weights, "
            "optimizer state or data order depend on it); resume with the old value or start a new run.dir"
        )


def rebuild_schedule(optimizer, module: nn.Module, cfg: Config, total_steps: int, step: int):
    """Optimizer hyperparameters from `cfg`, and a new LR scheduler positioned at `step`."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
    o = cfg.optim
    for group, spec in zip(inner.param_groups, param_groups(module, cfg)):
        group["lr"] = group["initial_lr"] = spec.get("lr", o.lr)
        group["weight_decay"] = spec.get("weight_decay", o.weight_decay)
        if "momentum" in group:
            group["momentum"] = o.momentum
        if "betas" in group:
            group["betas"] = tuple(o.betas)
        if "eps" in group:
            group["eps"] = o.eps
    scheduler = build_scheduler(optimizer, cfg, total_steps)  # sets lr = base * f(0)
    f = lr_lambda(cfg, total_steps)
    moves = o.schedule != "constant" or o.warmup_steps > 0
    scheduler.last_epoch = step if moves else 0  # the loop steps the scheduler only when it moves
    for group, base in zip(inner.param_groups, scheduler.base_lrs):
        group["lr"] = base * f(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in inner.param_groups]
    return scheduler


def apply(changed, scheduler, optimizer, module: nn.Module, cfg: Config, total_steps: int, step: int):
    """Allowed config changes take effect: hyperparameters and the LR schedule from the new config (rebuilt
    when an ``optim.*`` key or, for a moving schedule, the run's length changed). Returns the scheduler."""
    keys = {k for k, _, _ in changed}
    moves = cfg.optim.schedule != "constant" or cfg.optim.warmup_steps > 0
    rebuilt = any(k.startswith("optim.") for k in keys) or (
        bool(keys & {"train.max_steps", "train.epochs"}) and moves
    )
    lr_before = scheduler.get_last_lr()[0]
    if rebuilt:
        scheduler = rebuild_schedule(optimizer, module, cfg, total_steps, step)
    report(changed, lr_before, scheduler.get_last_lr()[0], rebuilt)
    return scheduler


def report(changed, lr_before: float, lr_after: float, schedule_rebuilt: bool) -> None:
    for k, a, b in changed:
        if k.startswith("run."):
            continue
        if k.startswith(SCHEDULE) and schedule_rebuilt:
            effect = "takes effect: optimizer hyperparameters and LR schedule rebuilt from the new config"
        else:
            effect = "takes effect from the resumed step"
        log.warning("config change on resume: %s %r -> %r (%s)", k, a, b, effect)
    if schedule_rebuilt:
        log.warning(
            "learning rate at the resumed step: %.6g under the checkpoint's config, now %.6g",
            lr_before,
            lr_after,
        )

"""What a resume may change: the config-change policy and the LR schedule rebuilt from the new config.

A checkpoint restores the optimizer's and the scheduler's state, which carry the *old* ``lr``, ``initial_lr``
and ``base_lrs``; a changed ``train.epochs`` / ``train.max_steps`` silently re-stretches a moving schedule.
With ``run.resume_config_change=allow`` every changed key either takes effect (optimizer hyperparameters and
the LR schedule are rebuilt from the new config at the resumed step) or is refused because it cannot (the
model's shape, the data, the optimizer type, the seed that orders the data), and the log says which.

A refused resume names every way out once, each one step: put the old values back, allow the change
(when it can take effect), a new run (the exact command, with a new run dir), or start over in this run
dir (``run.resume=restart``, which keeps the old outputs).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

from torch import nn

from ..config import Config, ConfigError, flat, from_dict, math_diff
from ..runtime.command import rerun_command
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
    "data.shuffle_buffer",
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


def check(saved: Optional[dict], cfg: Config, path: str, run_dir: str, remote: bool) -> list:
    """The config changes of a resume from ``path`` (whose manifest recorded ``saved``), or a ConfigError
    that names every way out. ``remote``: the checkpoints live on an object store (nothing can be moved
    aside there, so restarting in place is not one of the ways)."""
    if saved is None:
        return []
    allow = cfg.run.resume_config_change == "allow"
    ways = _other_ways(cfg, run_dir, remote)
    try:
        old = from_dict(saved)
    except ConfigError as e:
        if allow:
            return []
        raise ConfigError(
            f"run.resume: checkpoint {path} records a config this version no longer accepts ({e}); choose "
            f"one: resume it with the current config (add run.resume_config_change=allow) | {ways}"
        ) from None
    changed, diff = changes(old, cfg), math_diff(old, cfg)
    bad = refused(changed)
    if bad:
        back = _old_values(changed, bad)
        can = [k for k in diff if k not in bad]
        if can and not allow:  # the other changes can stay, with allow: one step, not two refusals
            back += f" and add run.resume_config_change=allow ({', '.join(can)} can change: it takes effect)"
        raise ConfigError(
            f"run.resume: {_items(changed, bad)} cannot change on resume from {path} (the weights, optimizer "
            f"state or data order depend on it); choose one: put back {back} | {ways}"
        )
    if diff and not allow:
        raise ConfigError(
            f"run.resume: checkpoint {path} was trained with a different config: {_items(changed, diff)}; "
            "choose one: continue it with the change (add run.resume_config_change=allow; it takes effect "
            f"from the resumed step) | put back {_old_values(changed, diff)} | {ways}"
        )
    return changed


def _items(changed, keys) -> str:
    return ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changed if k in keys)


def _override(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)  # YAML reads JSON's null, true, [1, 2]


def _old_values(changed, keys) -> str:
    return " ".join(f"{k}={_override(a)}" for k, a, _ in changed if k in keys)


def new_run_dir(run_dir: str) -> str:
    """``D-2`` (or the first ``D-N`` that does not exist yet)."""
    base, i = os.path.normpath(run_dir), 2
    while os.path.exists(f"{base}-{i}"):
        i += 1
    return f"{base}-{i}"


def _other_ways(cfg: Config, run_dir: str, remote: bool) -> str:
    """The ways out that do not touch the config keys: a new run, or starting over here."""
    fresh = {"run.dir": new_run_dir(run_dir)}
    if cfg.run.resume not in ("auto", "never", "restart"):  # resuming an explicit checkpoint: not that one
        fresh["run.resume"] = "auto"
    if remote:
        return f"a new run: {rerun_command(fresh)} with a new checkpoint.dir"
    kept = os.path.join(run_dir, "previous-<time>")
    return (
        f"a new run: {rerun_command(fresh)} | start over in {run_dir}: add run.resume=restart (the old "
        f"outputs are kept in {kept})"
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

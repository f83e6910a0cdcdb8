"""Typed configuration: dataclasses with defaults, YAML, dotted overrides, one validation pass.

Precedence is CLI override > YAML file > defaults in code. Every field carries its help text in
``metadata["help"]``; ``python -m trainer config`` prints them. Errors are :class:`ConfigError`, whose
message names the key, the value and what was expected; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import types
import typing
from typing import Any, Literal, Optional, Union

import yaml

from .schema import (  # noqa: F401  (re-exported: trainer.config is where callers find the schema)
    MONITOR_MODES,
    RESUME_SAFE_PREFIXES,
    TRACKERS,
    CheckpointConfig,
    Config,
    DataConfig,
    DistConfig,
    LogConfig,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    ProfileConfig,
    RunConfig,
    TrainConfig,
    describe,
    field_types,
    is_section,
    iter_fields,
    type_name,
)


class ConfigError(ValueError):
    """A bad key, value or file in the configuration (exit code 2)."""


# ----------------------------------------------------------------------------- coercion


def _coerce(key: str, value: Any, tp: Any, meta: dict) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        return _coerce(key, value, args[0], meta)
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool):  # YAML 1.1 reads on/off/yes/no as booleans
            value = next(
                (c for c in choices if c in (("on", "true", "yes") if value else ("off", "false", "no"))),
                value,
            )
        if value not in choices:
            raise ConfigError(f"{key}={value!r}: expected one of {', '.join(map(str, choices))}")
        return value
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = (
                yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
            )
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r}: expected a list")
        return [_coerce(key, v, inner, {}) if inner is not Any else v for v in value]
    if tp is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r}: expected a mapping")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        if isinstance(value, int):
            out = value
        elif isinstance(value, float) and value.is_integer():
            out = int(value)
        else:
            try:
                out = int(str(value).replace("_", ""))
            except ValueError:
                raise ConfigError(f"{key}={value!r}: expected an integer") from None
    elif tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected a number")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r}: expected a number") from None
    elif tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return str(value)
    else:
        return value
    if "min" in meta and out < meta["min"]:
        raise ConfigError(f"{key}={value!r}: must be >= {meta['min']}")
    if "max" in meta and out > meta["max"]:
        raise ConfigError(f"{key}={value!r}: must be <= {meta['max']}")
    return out


def _build(cls: type, data: dict, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}={data!r}: expected a mapping")
    hints = field_types(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        known = ", ".join(sorted(names))
        raise ConfigError(f"unknown key {prefix}{unknown[0]!s} (known in this section: {known})")
    kwargs = {}
    for name, f in names.items():
        if name not in data:
            continue
        tp = hints[name]
        if is_section(tp):
            kwargs[name] = _build(tp, data[name] or {}, prefix + name + ".")
        else:
            kwargs[name] = _coerce(prefix + name, data[name], tp, dict(f.metadata))
    return cls(**kwargs)


def set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            node[p] = nxt
        node = nxt
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.max_steps=50")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r}: empty key")
        # YAML scalars give ints, floats, bools and lists; strings stay strings.
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        out.append((key, value))
    return out


def load(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    """Load defaults <- YAML file <- dotted overrides, then validate. Raises ConfigError."""
    tree: dict = {}
    if path:
        if not os.path.isfile(path):
            raise ConfigError(f"config file {path!r} not found")
        try:
            with open(path, encoding="utf-8") as fh:
                tree = yaml.safe_load(fh) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config file {path!r}{where}: invalid YAML") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path!r}: top level must be a mapping, got {type(tree).__name__}")
    for key, value in parse_overrides(overrides or []):
        set_dotted(tree, key, value)
    cfg = _build(Config, tree, "")
    validate(cfg)
    return cfg


def from_dict(tree: dict) -> Config:
    cfg = _build(Config, tree, "")
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flat(cfg: Config) -> dict[str, Any]:
    out = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict) and k not in ("kwargs",):
                walk(v, prefix + k + ".")
            else:
                out[prefix + k] = v

    walk(to_dict(cfg), "")
    return out


def math_diff(a: Config, b: Config) -> list[str]:
    """Keys that differ between two configs and change the math of training."""
    fa, fb = flat(a), flat(b)
    return sorted(
        k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k) and not k.startswith(RESUME_SAFE_PREFIXES)
    )


# ----------------------------------------------------------------------------- validation

# The one list of built-in names (config must not import torch, so the builders in trainer/models and
# trainer/data are keyed by these; tests/unit/test_layers.py checks they agree).
MODEL_NAMES = ("linreg", "cnn", "mlp", "gpt")
DATA_NAMES = (
    "synthetic_regression",
    "synthetic_classification",
    "digits",
    "diabetes",
    "text",
    "tokens",
    "tensors",
    "csv",
)
_NEEDS_PATH = ("tokens", "tensors", "csv")


def _is_import_path(name: str) -> bool:
    mod, sep, attr = name.partition(":")
    return bool(sep and mod and attr)


def validate(cfg: Config) -> None:
    m, d, t, o = cfg.model, cfg.data, cfg.train, cfg.optim
    if m.name not in MODEL_NAMES and not _is_import_path(m.name):
        raise ConfigError(
            f"model.name={m.name!r}: expected one of {', '.join(MODEL_NAMES)} or package.module:Name"
        )
    if d.name not in DATA_NAMES and not _is_import_path(d.name):
        raise ConfigError(
            f"data.name={d.name!r}: expected one of {', '.join(DATA_NAMES)} or package.module:Name"
        )
    if d.name in _NEEDS_PATH and not d.path:
        raise ConfigError(f"data.path=None: data.name={d.name} needs a file (data.path=...)")
    for key, p in (("data.path", d.path), ("model.init_from", m.init_from)):
        if p and not os.path.exists(p):
            raise ConfigError(f"{key}={p!r}: no such file or directory")
    if m.name == "gpt" and m.n_embd % m.n_head:
        raise ConfigError(f"model.n_embd={m.n_embd}: must be divisible by model.n_head={m.n_head}")
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        raise ConfigError(f"optim.betas={o.betas!r}: expected two numbers in [0, 1)")
    for i, g in enumerate(o.param_groups):
        if not isinstance(g, dict) or "pattern" not in g or set(g) - {"pattern", "lr", "weight_decay"}:
            raise ConfigError(f"optim.param_groups[{i}]={g!r}: expected {{pattern: GLOB, lr: NUMBER}}")
    if t.batch_size % t.grad_accum:
        raise ConfigError(
            f"train.batch_size={t.batch_size}: not divisible by train.grad_accum={t.grad_accum}"
        )
    if cfg.profile.steps and (
        len(cfg.profile.steps) != 2 or not 0 <= cfg.profile.steps[0] < cfg.profile.steps[1]
    ):
        raise ConfigError(f"profile.steps={cfg.profile.steps!r}: expected [start, end] with start < end")
    r = cfg.run.resume
    if r not in ("auto", "never") and not os.path.exists(r):
        raise ConfigError(f"run.resume={r!r}: expected auto, never or an existing checkpoint path")
    _validate_monitor(cfg)
    _validate_trackers(cfg.log.trackers)


def _validate_monitor(cfg: Config) -> None:
    c, t = cfg.checkpoint, cfg.train
    if c.monitor is not None and c.monitor not in MONITOR_MODES:
        raise ConfigError(f"checkpoint.monitor={c.monitor!r}: expected one of {', '.join(MONITOR_MODES)}")
    for key, value in (
        ("checkpoint.keep_best", c.keep_best),
        ("train.early_stop_patience", t.early_stop_patience),
    ):
        if value and c.monitor is None:
            raise ConfigError(
                f"{key}={value}: needs checkpoint.monitor (e.g. checkpoint.monitor=eval/accuracy)"
            )
    if t.early_stop_patience and not t.eval_every_steps:
        raise ConfigError(
            f"train.early_stop_patience={t.early_stop_patience}: needs train.eval_every_steps > 0 "
            "(evaluations to compare)"
        )


def _validate_trackers(trackers: list) -> None:
    for name in trackers:
        if name not in TRACKERS:
            raise ConfigError(
                f"log.trackers={trackers!r}: unknown tracker {name!r} (expected {', '.join(TRACKERS)})"
            )
        # find_spec looks the package up without importing it (import mlflow alone costs ~1 s)
        if name != "tensorboard" and importlib.util.find_spec(name) is None:
            raise ConfigError(f"log.trackers={trackers!r}: {name} is not installed (pip install .[{name}])")
    if len(set(trackers)) != len(trackers):
        raise ConfigError(f"log.trackers={trackers!r}: a tracker is listed twice")


def active_trackers(cfg: Config) -> list[str]:
    """log.trackers with the log.tensorboard alias applied (false drops tensorboard)."""
    return [n for n in cfg.log.trackers if n != "tensorboard" or cfg.log.tensorboard]


def check_world(cfg: Config, world_size: int) -> int:
    """Per-process micro-batch; a batch that does not divide is a config error."""
    t = cfg.train
    denom = world_size * t.grad_accum
    if t.batch_size % denom:
        raise ConfigError(
            f"train.batch_size={t.batch_size}: not divisible by world_size({world_size}) x "
            f"train.grad_accum({t.grad_accum}) = {denom}"
        )
    return t.batch_size // denom


def config_hash(cfg: Config) -> str:
    """First 16 hex chars of a sha256 over the flattened config (recorded in each checkpoint manifest)."""
    return hashlib.sha256(json.dumps(flat(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]

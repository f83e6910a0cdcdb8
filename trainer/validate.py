"""One validation pass over a loaded Config: every value in range and consistent, or a one-line
:class:`ConfigError` naming the key, the value and what was expected. Also the one list of built-in names."""

from __future__ import annotations

import importlib.util
import math
import os
import types
import typing
from typing import Any, Literal, Union

from .errors import ConfigError, did_you_mean
from .schema import MONITOR_MODES, TRACKERS, Config
from .strict_yaml import load_yaml


def coerce(key: str, value: Any, tp: Any, meta: dict) -> Any:
    """One value read from YAML or an override, as the field's type, within its metadata's bounds."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        return coerce(key, value, args[0], meta)
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool):  # YAML 1.1 reads on/off/yes/no as booleans
            value = next(
                (c for c in choices if c in (("on", "true", "yes") if value else ("off", "false", "no"))),
                value,
            )
        if value not in choices:
            hint = did_you_mean(value, choices)
            raise ConfigError(f"{key}={value!r}: expected one of {', '.join(map(str, choices))}{hint}")
        return value
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = load_yaml(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r}: expected a list")
        # min/max of a list field bound each element (model.hidden=[0] is a zero-width layer)
        return [coerce(f"{key}[{i}]", v, inner, meta) if inner is not Any else v for i, v in enumerate(value)]
    if tp is dict:
        if isinstance(value, str):
            value = load_yaml(value)
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
        if not math.isfinite(out):
            raise ConfigError(f"{key}={value!r}: expected a finite number")
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


# The one list of built-in names (config must not import torch, so the builders in trainer/models and
# trainer/data are keyed by these; tests/unit/test_layers.py checks they agree).
MODEL_NAMES = ("linreg", "cnn", "mlp", "gpt", "hf")
DATA_NAMES = (
    "synthetic_regression",
    "synthetic_classification",
    "digits",
    "diabetes",
    "text",
    "tokens",
    "tensors",
    "csv",
    "jsonl",
)
_NEEDS_PATH = ("tokens", "tensors", "csv", "jsonl")
RESUME_MODES = ("auto", "never", "restart")


_SHARD_KEYS = ("data.path", "data.eval_path")  # streamed shards: a glob or URL, listed when the run starts


def _is_shard_spec(path: str) -> bool:
    return _is_url(path) or any(c in path for c in "*?[")


def _is_import_path(name: str) -> bool:
    mod, sep, attr = name.partition(":")
    return bool(sep and mod and attr)


def validate(cfg: Config) -> None:
    m, d, t, o = cfg.model, cfg.data, cfg.train, cfg.optim
    if m.name not in MODEL_NAMES and not _is_import_path(m.name):
        raise ConfigError(
            f"model.name={m.name!r}: expected one of {', '.join(MODEL_NAMES)} or package.module:Name"
            + did_you_mean(m.name, MODEL_NAMES)
        )
    if d.name not in DATA_NAMES and not _is_import_path(d.name):
        raise ConfigError(
            f"data.name={d.name!r}: expected one of {', '.join(DATA_NAMES)} or package.module:Name"
            + did_you_mean(d.name, DATA_NAMES)
        )
    if d.name in _NEEDS_PATH and not d.path:
        raise ConfigError(f"data.path=None: data.name={d.name} needs a file (data.path=...)")
    for key, p in (
        ("data.path", d.path),
        ("data.eval_path", d.eval_path),
        ("data.tokenizer", d.tokenizer),
        ("model.init_from", m.init_from),
        ("model.path", m.path),
    ):
        if p and not os.path.exists(p) and not (key in _SHARD_KEYS and _is_shard_spec(p)):
            raise ConfigError(f"{key}={p!r}: no such file or directory")
    for key, spec in (("model.config", m.config), ("train.loss", t.loss)):
        if spec is not None and not _is_import_path(spec):
            raise ConfigError(f"{key}={spec!r}: expected package.module:Name")
    if m.config and m.name in MODEL_NAMES:
        raise ConfigError(
            f"model.config={m.config!r}: only for a user model (model.name=package.module:Name)"
        )
    if m.name == "hf":
        if not m.path:
            raise ConfigError("model.path=None: model.name=hf needs a local model directory (model.path=DIR)")
        if not os.path.isfile(os.path.join(m.path, "config.json")):
            raise ConfigError(
                f"model.path={m.path!r}: no config.json there (expected a Hugging Face model dir)"
            )
    if d.name == "jsonl":
        if m.name in MODEL_NAMES and m.name != "hf":
            raise ConfigError(
                f"model.name={m.name!r}: data.name=jsonl feeds named inputs (input_ids, position_ids); "
                "use model.name=hf or a user model (package.module:Name)"
            )
        if m.name != "hf" and not d.tokenizer:
            raise ConfigError(
                f"data.tokenizer=None: data.name=jsonl with model.name={m.name!r} needs a tokenizer directory"
            )
        if d.path and os.path.lexists(d.path) and not (os.path.isfile(d.path) or os.path.isdir(d.path)):
            raise ConfigError(f"data.path={d.path!r}: data.name=jsonl needs a file, a directory or a glob")
    if m.name == "gpt" and m.n_embd % m.n_head:
        raise ConfigError(f"model.n_embd={m.n_embd}: must be divisible by model.n_head={m.n_head}")
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        raise ConfigError(f"optim.betas={o.betas!r}: expected two numbers in [0, 1)")
    for i, g in enumerate(o.param_groups):
        if not isinstance(g, dict) or "pattern" not in g or set(g) - {"pattern", "lr", "weight_decay"}:
            raise ConfigError(f"optim.param_groups[{i}]={g!r}: expected {{pattern: GLOB, lr: NUMBER}}")
        for k in ("lr", "weight_decay"):
            if k in g:
                coerce(f"optim.param_groups[{i}].{k}", g[k], float, {"min": 0.0})
    for key, name, kwargs, builtin in (
        ("model", m.name, m.kwargs, MODEL_NAMES),
        ("data", d.name, d.kwargs, DATA_NAMES),
    ):
        if kwargs and name in builtin:
            raise ConfigError(
                f"{key}.kwargs={kwargs!r}: {key}.name={name} is built in and takes no kwargs "
                f"(set its own keys, see `python -m trainer config`)"
            )
    if t.batch_size % t.grad_accum:
        raise ConfigError(
            f"train.batch_size={t.batch_size}: not divisible by train.grad_accum={t.grad_accum}"
        )
    if cfg.profile.steps and (
        len(cfg.profile.steps) != 2 or not 0 <= cfg.profile.steps[0] < cfg.profile.steps[1]
    ):
        raise ConfigError(f"profile.steps={cfg.profile.steps!r}: expected [start, end] with start < end")
    r = cfg.run.resume
    if r not in RESUME_MODES and not _is_url(r) and not os.path.exists(r):
        raise ConfigError(
            f"run.resume={r!r}: expected {', '.join(RESUME_MODES)} or an existing checkpoint path"
            + did_you_mean(r, RESUME_MODES)
        )
    for key, url in (
        ("checkpoint.dir", cfg.checkpoint.dir),
        ("run.resume", r),
        ("data.path", d.path),
        ("data.eval_path", d.eval_path),
    ):
        if url and _is_url(url):
            _check_url(key, url)
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


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _check_url(key: str, url: str) -> None:
    """A storage URL names a known fsspec protocol whose package is installed (nothing is contacted here:
    reachability is checked when the run starts, and by the doctor)."""
    from fsspec.registry import known_implementations  # ~58 ms to import: only for URLs

    protocol, _, rest = url.partition("://")
    impl = known_implementations.get(protocol)
    if impl is None:
        raise ConfigError(
            f"{key}={url!r}: unknown storage protocol {protocol!r} (expected e.g. s3://bucket/prefix)"
        )
    if not rest.split("/", 1)[0]:
        raise ConfigError(f"{key}={url!r}: no bucket (expected {protocol}://bucket/prefix)")
    module = impl["class"].split(".", 1)[0]
    if importlib.util.find_spec(module) is None:
        extra = " (pip install '.[s3]', or make setup)" if protocol in ("s3", "s3a") else ""
        raise ConfigError(f"{key}={url!r}: {protocol}:// needs the {module} package{extra}")


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

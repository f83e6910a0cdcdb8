"""One validation pass over a loaded Config: every value in range and consistent, or a one-line
:class:`ConfigError` naming the key, the value and what was expected.

What one key allows is read from its field in ``trainer/schema.py`` (its ``Literal`` type, its bounds and its
``kind``): :func:`coerce` checks type, allowed values and range as each value is read, ``_check_kinds`` the
strings that must name a path or an import. Written by hand here: ``_check_shapes`` (one key, what a type
cannot say) and ``_check_across``, the one place for every check that reads several keys."""

from __future__ import annotations

import importlib.util
import math
import os
import tempfile
import types
import typing
from typing import Any, Literal, Union

from .errors import ConfigError, did_you_mean, run_dirs_hint
from .schema import (
    BOUNDS,
    DATA_NAMES,
    KINDS,
    MODEL_NAMES,
    Config,
    choices,
    iter_leaves,
)
from .strict_yaml import load_yaml

# The tensor-parallel styles parallel.tp_plan may name (trainer/models/tp_plans.py applies them).
TP_STYLES = ("colwise", "rowwise", "replicate")


def coerce(key: str, value: Any, tp: Any, meta: dict) -> Any:
    """One value read from YAML or an override, as the field's type, within its metadata's bounds."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if type(None) in typing.get_args(tp) and (
            value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~"))
        ):
            return None
        # Union[Literal[...], str]: a built-in name or a string of the field's kind (checked in _check_kinds)
        if str in args:
            return coerce(key, value, str, meta)
        # Union[Literal[...], int | bool]: a named value (parallel.dp_replicate=auto, train.compile=blocks)
        # or one of the other type
        named = choices(tp)
        if isinstance(value, str) and value in named:
            return value
        other = [a for a in args if typing.get_origin(a) is not Literal]
        if not other or not named:
            return coerce(key, value, (other or args)[0], meta)
        try:
            return coerce(key, value, other[0], meta)
        except ConfigError as e:
            if "must be" in str(e):  # out of bounds: that message is the better one
                raise
            kind = {int: "an integer", bool: "true or false"}.get(other[0], other[0].__name__)
            raise ConfigError(
                f"{key}={value!r}: expected {kind} or one of {', '.join(map(str, named))}"
            ) from None
    if origin is Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, bool):  # YAML 1.1 reads on/off/yes/no as booleans
            value = next(
                (c for c in allowed if c in (("on", "true", "yes") if value else ("off", "false", "no"))),
                value,
            )
        if value not in allowed:
            hint = did_you_mean(value, allowed)
            # an element of a list field, named for what it is (log.trackers: a tracker)
            if "item" in meta and "list_key" in meta:
                raise ConfigError(
                    f"{meta['list_key']}={meta['list_value']!r}: unknown {meta['item']} {value!r} "
                    f"(expected {', '.join(map(str, allowed))})"
                )
            raise ConfigError(f"{key}={value!r}: expected one of {', '.join(map(str, allowed))}{hint}")
        return value
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = load_yaml(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r}: expected a list")
        # the bounds of a list field bound each element (model.hidden=[0] is a zero-width layer)
        each = {**meta, "list_key": key, "list_value": value}
        return [coerce(f"{key}[{i}]", v, inner, each) if inner is not Any else v for i, v in enumerate(value)]
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
    for bound, op in BOUNDS.items():
        limit = meta.get(bound)
        if limit is not None and not {"ge": out >= limit, "gt": out > limit, "le": out <= limit}[bound]:
            raise ConfigError(f"{key}={value!r}: must be {op} {limit}")
    return out


_NEEDS_PATH = ("tokens", "tensors", "csv", "jsonl")


def _is_import_path(name: str) -> bool:
    mod, sep, attr = name.partition(":")
    return bool(sep and mod and attr)


def _check_kinds(cfg: Config) -> None:
    """Each string field with a ``kind`` in the schema is what its kind says: an existing path, an import path
    package.module:Name, or a checkpoint (an existing path or a storage URL), unless it is one of the field's
    built-in names."""
    for key, tp, _default, meta in iter_leaves():
        kind = meta.get("kind")
        if kind is None:
            continue
        value = _get(cfg, key)
        builtin = choices(tp)
        if value is None or value in builtin or (kind == "path" and not value):
            continue
        if _KIND_CHECKS[kind](value):
            continue
        if kind in ("path", "data"):
            raise ConfigError(f"{key}={value!r}: no such file or directory")
        if builtin:
            near = did_you_mean(value, builtin)
            if not near and kind == "checkpoint":  # run.resume=runs/cnn: the run dirs that do exist
                near = run_dirs_hint(value)
            near = near or _colon_hint(kind, value)
            raise ConfigError(f"{key}={value!r}: expected one of {', '.join(builtin)} or {KINDS[kind]}{near}")
        raise ConfigError(f"{key}={value!r}: expected {KINDS[kind]}{_colon_hint(kind, value)}")


def _colon_hint(kind: str, value: str) -> str:
    """mypkg.models.Net for an import path: the usual dot where the colon goes."""
    if kind != "import" or ":" in value or "." not in value.strip("."):
        return ""
    mod, _, attr = value.rpartition(".")
    return f" (did you mean {mod}:{attr}?)"


_KIND_CHECKS = {
    "path": os.path.exists,
    "import": lambda v: _is_import_path(v),
    "checkpoint": lambda v: _is_url(v) or os.path.exists(v),
    # streamed shards (trainer/data/shards.py): a glob or URL is listed when the run starts
    "data": lambda v: os.path.exists(v) or _is_url(v) or any(c in v for c in "*?["),
}


def _get(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def validate(cfg: Config) -> None:
    """The checks :func:`coerce` cannot make as each value is read, after the whole config is built."""
    _check_kinds(cfg)
    _check_shapes(cfg)
    _check_across(cfg)


def _check_shapes(cfg: Config) -> None:
    """One key each, what a type and bounds cannot say: the shape of a list or mapping, a URL's protocol, an
    installed tracker package."""
    o, steps = cfg.optim, cfg.profile.steps
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        raise ConfigError(f"optim.betas={o.betas!r}: expected two numbers in [0, 1)")
    for i, g in enumerate(o.param_groups):
        if not isinstance(g, dict) or "pattern" not in g or set(g) - {"pattern", "lr", "weight_decay"}:
            raise ConfigError(f"optim.param_groups[{i}]={g!r}: expected {{pattern: GLOB, lr: NUMBER}}")
        for k in ("lr", "weight_decay"):
            if k in g:
                coerce(f"optim.param_groups[{i}].{k}", g[k], float, {"ge": 0.0})
    if steps and (len(steps) != 2 or not 0 <= steps[0] < steps[1]):
        raise ConfigError(f"profile.steps={steps!r}: expected [start, end] with start < end")
    for key, url in (
        ("checkpoint.dir", cfg.checkpoint.dir),
        ("run.resume", cfg.run.resume),
        ("data.path", cfg.data.path),
        ("data.eval_path", cfg.data.eval_path),
    ):
        if url and _is_url(url):
            _check_url(key, url)
    _validate_trackers(cfg.log.trackers)
    if cfg.data.num_workers:
        _check_worker_socket_dir(cfg.data.num_workers)


# DataLoader workers hand each batch's shared memory to the main process over a Unix socket that
# multiprocessing makes at TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX; a socket path has at most 107 bytes
# (sun_path). Past that, the worker's bind fails inside the hand-over and the main process waits for the
# batch forever (measured: a 113-byte path hung a run until it was killed).
SOCKET_PATH_MAX = 107
_SOCKET_SUFFIX = len("/pymp-XXXXXXXX/listener-XXXXXXXX")


def _check_worker_socket_dir(num_workers: int) -> None:
    tmp = tempfile.gettempdir()
    size, most = len(os.fsencode(tmp)), SOCKET_PATH_MAX - _SOCKET_SUFFIX
    if size > most:
        raise ConfigError(
            f"data.num_workers={num_workers}: the temporary directory {tmp!r} is too long for the Unix "
            f"sockets DataLoader workers use ({size} bytes; at most {most}): set TMPDIR to a shorter "
            "directory, or data.num_workers=0"
        )


def _check_across(cfg: Config) -> None:
    """Keys that depend on each other: every check that reads more than one key is here."""
    m, d, t = cfg.model, cfg.data, cfg.train
    if d.name in _NEEDS_PATH and not d.path:
        raise ConfigError(f"data.path=None: data.name={d.name} needs a file (data.path=...)")
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
        if d.path and os.path.isfile(d.path) and d.eval_path and not os.path.isfile(d.eval_path):
            raise ConfigError(
                f"data.eval_path={d.eval_path!r}: data.path is one file (read into memory), so the eval set "
                "is one file too (shard globs, directories and URLs stream: give data.path as one)"
            )
    if m.name == "gpt" and m.n_embd % m.n_head:
        raise ConfigError(f"model.n_embd={m.n_embd}: must be divisible by model.n_head={m.n_head}")
    for key, name, kwargs, builtin in (
        ("model", m.name, m.kwargs, MODEL_NAMES),
        ("data", d.name, d.kwargs, DATA_NAMES),
    ):
        if kwargs and name in builtin:
            raise ConfigError(
                f"{key}.kwargs={kwargs!r}: {key}.name={name} is built in and takes no kwargs "
                f"(set its own keys, see `python -m trainer config`)"
            )
    if t.micro_batch_size and t.grad_accum != 1:
        raise ConfigError(
            f"train.grad_accum={t.grad_accum}: train.micro_batch_size={t.micro_batch_size} derives the "
            "accumulation; set one of them"
        )
    if t.micro_batch_size and t.batch_size % t.micro_batch_size:
        raise ConfigError(
            f"train.micro_batch_size={t.micro_batch_size}: does not divide train.batch_size={t.batch_size}"
        )
    if t.precision == "fp8" and t.strategy in ("accelerate", "dp"):
        raise ConfigError(
            f"train.precision=fp8: not with train.strategy={t.strategy} (use single, ddp or fsdp)"
        )
    p = cfg.parallel
    if p.dp_shard == 0:
        raise ConfigError("parallel.dp_shard=0: expected a positive number or -1 (the rest)")
    for pattern, style in p.tp_plan.items():
        if style not in TP_STYLES:
            raise ConfigError(
                f"parallel.tp_plan[{pattern!r}]={style!r}: expected one of {', '.join(TP_STYLES)}"
            )
    if p.tp > 1 and cfg.lora.targets:
        raise ConfigError(f"parallel.tp={p.tp}: not with LoRA (lora.targets); use fsdp for adapters")
    if t.batch_size % t.grad_accum:
        raise ConfigError(
            f"train.batch_size={t.batch_size}: not divisible by train.grad_accum={t.grad_accum}"
        )
    for key, value in (
        ("checkpoint.keep_best", cfg.checkpoint.keep_best),
        ("train.early_stop_patience", t.early_stop_patience),
    ):
        if value and cfg.checkpoint.monitor is None:
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


def batch_plan(cfg: Config, world_size: int) -> dict:
    """How the global batch splits: ``{"global", "micro", "accum", "world"}`` with global = world x micro x
    accum, ``world`` the data-parallel processes (tensor-parallel peers share a micro-batch). With
    train.micro_batch_size the accumulation is derived, else the micro-batch. A batch that does not divide
    is a config error."""
    t = cfg.train
    if t.micro_batch_size:
        per_step = world_size * t.micro_batch_size
        if t.batch_size % per_step:
            raise ConfigError(
                f"train.micro_batch_size={t.micro_batch_size}: train.batch_size={t.batch_size} is not a "
                f"multiple of {world_size} data-parallel process(es) x {t.micro_batch_size} = {per_step}; "
                "change train.micro_batch_size or the number of processes"
            )
        return {
            "global": t.batch_size,
            "micro": t.micro_batch_size,
            "accum": t.batch_size // per_step,
            "world": world_size,
        }
    denom = world_size * t.grad_accum
    if t.batch_size % denom:
        raise ConfigError(
            f"train.batch_size={t.batch_size}: not divisible by world_size({world_size}) x "
            f"train.grad_accum({t.grad_accum}) = {denom}"
        )
    return {
        "global": t.batch_size,
        "micro": t.batch_size // denom,
        "accum": t.grad_accum,
        "world": world_size,
    }


def check_world(cfg: Config, world_size: int) -> int:
    """Per-process micro-batch; a batch that does not divide is a config error."""
    return batch_plan(cfg, world_size)["micro"]

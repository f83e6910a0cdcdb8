"""Typed configuration: dataclasses with defaults, YAML, dotted overrides, one validation pass.

Precedence is CLI override > YAML file > defaults in code. Every field carries its help text in
``metadata["help"]``; ``python -m trainer config`` prints them. Errors are :class:`ConfigError`, whose
message names the key, the value and what was expected; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import json
import math
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


def _edits(a: str, b: str) -> int:
    """Levenshtein distance (tiny inputs: command, mode and key names)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def did_you_mean(word: str, choices) -> str:
    """' (did you mean X?)' for the closest of `choices`, or ''. One typo away wins, a same-length name
    first (a typed letter wrong: dpp -> ddp, not dp); otherwise difflib's closest."""
    word, choices = str(word), [str(c) for c in choices]
    near = sorted((_edits(word, c), len(c) != len(word), c) for c in choices)
    if near and near[0][0] <= max(1, len(word) // 4):
        return f" (did you mean {near[0][2]}?)"
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def option_hint(arg: str, following: Optional[str] = None) -> str:
    """For `--max_steps 10` (an option the CLI does not have): the KEY=VALUE override it probably meant."""
    name, _, value = arg.lstrip("-").partition("=")
    name = name.replace("-", "_")
    value = value or (following if following and not following.startswith("-") else "VALUE")
    keys = [k for k, *_ in iter_fields()]
    match = [k for k in keys if k == name or k.endswith("." + name)]
    if match:
        return f"{arg}: config keys are not options; use {match[0]}={value}"
    return f"unrecognized argument {arg}" + did_you_mean(name, [k.rsplit(".", 1)[-1] for k in keys])


# ----------------------------------------------------------------------------- strict YAML

MAX_YAML_VALUES = 100_000  # a config expands to at most this many values (caps YAML alias bombs)


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (safe_load silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(
                    f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                    f"(first at line {seen[key] + 1})"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _count_values(tree: Any, budget: int = MAX_YAML_VALUES) -> None:
    """Walk the tree as it would expand (aliases are shared objects); refuse more than `budget` values."""
    stack, n = [tree], 0
    while stack:
        node = stack.pop()
        n += 1
        if n > budget:
            raise ConfigError(f"expands to more than {budget} values (YAML aliases nested too deep?)")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


def load_yaml(text: str) -> Any:
    """Strict YAML: safe types only, no duplicate keys, bounded alias expansion. Raises ConfigError."""
    tree = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    _count_values(tree)
    return tree


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
        return [
            _coerce(f"{key}[{i}]", v, inner, meta) if inner is not Any else v for i, v in enumerate(value)
        ]
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


def _build(cls: type, data: dict, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}={data!r}: expected a mapping")
    hints = field_types(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names), key=str)
    if unknown:
        hint = did_you_mean(unknown[0], names)
        if hint:
            hint = hint.replace("mean ", "mean " + prefix)
        else:
            hint = f" (known in this section: {', '.join(sorted(names))})"
        raise ConfigError(f"unknown key {prefix}{unknown[0]!s}{hint}")
    kwargs = {}
    for name, f in names.items():
        if name not in data:
            continue
        tp = hints[name]
        if is_section(tp):
            # `model:` alone (None) is an empty section; `model: []` or `train: 0` is a mistake
            kwargs[name] = _build(tp, {} if data[name] is None else data[name], prefix + name + ".")
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
            if item.endswith((".yaml", ".yml")) or os.path.isfile(item):
                raise ConfigError(f"override {item!r}: a config file is given with -c: -c {item}")
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.max_steps=50")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r}: empty key")
        # YAML scalars give ints, floats, bools and lists; strings stay strings.
        try:
            value = load_yaml(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        except ConfigError as e:
            raise ConfigError(f"override {item!r}: {e}") from None
        out.append((key, value))
    return out


def load(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    """Load defaults <- YAML file <- dotted overrides, then validate. Raises ConfigError."""
    tree: dict = {}
    if path:
        if os.path.isdir(path):
            raise ConfigError(f"config file {path!r}: is a directory, expected a YAML file")
        if not os.path.exists(path):
            raise ConfigError(f"config file {path!r} not found")
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path!r}: not UTF-8 text (a binary file?)") from None
        except OSError as e:
            raise ConfigError(f"config file {path!r}: cannot read: {e.strerror or e}") from None
        try:
            tree = load_yaml(text)
        except ConfigError as e:
            raise ConfigError(f"config file {path!r}: {e}") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config file {path!r}{where}: invalid YAML") from None
        tree = {} if tree is None else tree
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path!r}: top level must be a mapping, got {type(tree).__name__}")
    for key, value in parse_overrides(overrides or []):
        set_dotted(tree, key, value)
    cfg = _build(Config, tree, "")
    validate(cfg)
    return cfg


def load_config(config: Any = None, overrides: Any = ()) -> Config:
    """A validated Config from a YAML path, a (nested) dict, a Config or None (the defaults), with dotted
    ``KEY=VALUE`` overrides on top (``trainer.load_config``; ``trainer.fit`` takes the same arguments)."""
    overrides = [overrides] if isinstance(overrides, str) else list(overrides)
    if config is None or isinstance(config, (str, os.PathLike)):
        return load(os.fspath(config) if config is not None else None, overrides)
    if isinstance(config, Config):
        tree = to_dict(config)
    elif isinstance(config, dict):
        tree = json.loads(json.dumps(config, default=str))  # a deep copy of plain data
    else:
        raise ConfigError(f"config={type(config).__name__}: expected a YAML path, a dict or a Config")
    for key, value in parse_overrides(overrides):
        set_dotted(tree, key, value)
    return from_dict(tree)


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
        if p and not os.path.exists(p):
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
        if d.path and not os.path.isfile(d.path):
            raise ConfigError(f"data.path={d.path!r}: data.name=jsonl needs a file")
    if m.name == "gpt" and m.n_embd % m.n_head:
        raise ConfigError(f"model.n_embd={m.n_embd}: must be divisible by model.n_head={m.n_head}")
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        raise ConfigError(f"optim.betas={o.betas!r}: expected two numbers in [0, 1)")
    for i, g in enumerate(o.param_groups):
        if not isinstance(g, dict) or "pattern" not in g or set(g) - {"pattern", "lr", "weight_decay"}:
            raise ConfigError(f"optim.param_groups[{i}]={g!r}: expected {{pattern: GLOB, lr: NUMBER}}")
        for k in ("lr", "weight_decay"):
            if k in g:
                _coerce(f"optim.param_groups[{i}].{k}", g[k], float, {"min": 0.0})
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
    for key, url in (("checkpoint.dir", cfg.checkpoint.dir), ("run.resume", r)):
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


def run_key(cfg: Config) -> str:
    """12 hex chars naming a config by what changes its result: the default run directory's suffix, so the
    same command (same recipe and overrides) finds the same run again."""
    # keys that do not change the math (logging, checkpoint cadence, timeouts, workers) do not make a new run;
    # the length of the run does
    ignored = tuple(p for p in RESUME_SAFE_PREFIXES if p not in ("train.max_steps", "train.epochs"))
    keyed = {k: v for k, v in flat(cfg).items() if not k.startswith(ignored)}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:12]


def config_hash(cfg: Config) -> str:
    """First 16 hex chars of a sha256 over the flattened config (recorded in each checkpoint manifest)."""
    return hashlib.sha256(json.dumps(flat(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]

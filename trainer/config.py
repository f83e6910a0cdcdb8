"""Typed configuration: dataclasses with defaults, YAML, dotted overrides, one validation pass.

Precedence is CLI override > YAML file > defaults in code. Every field carries its help text in
``metadata["help"]``; ``python -m trainer config`` prints them. Errors are :class:`ConfigError`, whose
message names the key, the value and what was expected; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Optional

import yaml

from .errors import ConfigError, did_you_mean, option_hint, unknown_key_hint  # noqa: F401  (re-exported)
from .schema import (  # noqa: F401  (re-exported: trainer.config is where callers find the schema)
    DATA_NAMES,
    MODEL_NAMES,
    MONITOR_MODES,
    RESUME_MODES,
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
    ParallelConfig,
    ProfileConfig,
    RunConfig,
    TrainConfig,
    choices,
    describe,
    field_types,
    is_section,
    iter_fields,
    iter_leaves,
    reference,
    type_name,
)
from .strict_yaml import load_yaml  # noqa: F401  (re-exported)
from .validate import (  # noqa: F401  (re-exported)
    active_trackers,
    batch_plan,
    check_world,
    coerce,
    validate,
)

# ----------------------------------------------------------------------------- coercion


def _build(cls: type, data: dict, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}={data!r}: expected a mapping")
    hints = field_types(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names), key=str)
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]!s}{unknown_key_hint(prefix, unknown[0], names)}")
    kwargs = {}
    for name, f in names.items():
        if name not in data:
            continue
        tp = hints[name]
        if is_section(tp):
            # `model:` alone (None) is an empty section; `model: []` or `train: 0` is a mistake
            kwargs[name] = _build(tp, {} if data[name] is None else data[name], prefix + name + ".")
        else:
            kwargs[name] = coerce(prefix + name, data[name], tp, dict(f.metadata))
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

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
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import yaml


class ConfigError(ValueError):
    """A bad key, value or file in the configuration (exit code 2)."""


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with help text; mutable defaults go through default_factory."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class RunConfig:
    dir: Optional[str] = _f(
        None, "Run directory for every output. Default: a new runs/<timestamp>-<model> directory."
    )
    resume: str = _f(
        "auto",
        "auto: continue from the latest checkpoint in run.dir if any; never: refuse a non-empty run.dir; "
        "or a checkpoint PATH.",
    )
    resume_config_change: Literal["refuse", "allow"] = _f(
        "refuse", "On resume, refuse (default) or allow a config that differs in keys that change the math."
    )


@dataclass
class ModelConfig:
    name: str = _f("cnn", "linreg | cnn | mlp | gpt, or a user nn.Module as package.module:Name.")
    kwargs: dict = _f({}, "Keyword arguments passed to a user model given by import path.")
    hidden: list[int] = _f([256, 128], "MLP hidden layer widths.", min=1)
    dropout: float = _f(0.0, "Dropout probability (mlp, gpt).", min=0.0, max=0.999)
    n_layer: int = _f(4, "GPT: number of transformer blocks.", min=1)
    n_head: int = _f(4, "GPT: attention heads per block.", min=1)
    n_embd: int = _f(128, "GPT: embedding width (divisible by n_head).", min=1)
    block_size: int = _f(128, "GPT: context length in tokens.", min=2)
    vocab_size: int = _f(
        256, "GPT: vocabulary size (256 = bytes; set to your tokenizer's size for token files).", min=2
    )
    init_from: Optional[str] = _f(
        None, "Initialise weights from a checkpoint dir, run dir, .safetensors or state-dict file.", path=True
    )
    init_strict: bool = _f(True, "Require every key to match when loading model.init_from.")
    init_skip: list[str] = _f(
        [],
        "Parameters (glob or re:REGEX) NOT loaded from model.init_from: they keep their fresh "
        "initialisation, e.g. [fc2] to re-initialise a head.",
    )


@dataclass
class DataConfig:
    name: str = _f(
        "digits",
        "synthetic_regression | synthetic_classification | digits | diabetes | text | tokens | tensors | "
        "csv, or a user Dataset as package.module:Name.",
    )
    path: Optional[str] = _f(
        None, "File or directory for text, tokens (.bin), tensors (.npy/.npz/.pt) and csv data.", path=True
    )
    kwargs: dict = _f({}, "Keyword arguments passed to a user Dataset given by import path.")
    eval_fraction: float = _f(
        0.1, "Fraction of samples held out for evaluation (fixed split seed).", min=0.0, max=0.9
    )
    split_seed: int = _f(1234, "Seed of the train/eval split; independent of `seed` so runs stay comparable.")
    num_samples: int = _f(4096, "Synthetic datasets: number of samples.", min=1)
    num_features: int = _f(16, "Synthetic datasets: input features.", min=1)
    num_classes: int = _f(4, "Synthetic classification: classes.", min=2)
    max_bytes: int = _f(
        2_000_000,
        "Text corpus: cap in bytes (the default corpus is the stdlib's top-level .py files).",
        min=1,
    )
    token_dtype: Literal["uint16", "uint32"] = _f("uint16", "Token files (.bin): element type.")
    target: str = _f("-1", "CSV: target column name or index (default: last column).")
    classes: list[int] = _f(
        [], "Digits: keep only these classes (empty = all); used to build a pretraining task."
    )
    augment: bool = _f(False, "Digits: random ±2 pixel shifts, seeded per sample from (seed, epoch, index).")
    num_workers: int = _f(
        0, "DataLoader worker processes (0 = load in the main process; right for in-memory data).", min=0
    )
    pin_memory: bool = _f(True, "Pin host memory when training on CUDA.")
    prefetch_factor: int = _f(2, "Batches prefetched per worker (num_workers > 0).", min=1)


@dataclass
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"] = _f(
        "sgd", "Optimizer. Fused kernels are used on CUDA for adam/adamw."
    )
    lr: float = _f(0.05, "Peak learning rate.", min=0.0)
    momentum: float = _f(0.9, "SGD momentum.", min=0.0, max=1.0)
    weight_decay: float = _f(0.0, "Weight decay (decoupled for adamw).", min=0.0)
    betas: list[float] = _f([0.9, 0.999], "Adam/AdamW betas.")
    eps: float = _f(1e-8, "Adam/AdamW epsilon.", min=0.0)
    schedule: Literal["constant", "cosine"] = _f("constant", "LR schedule after warmup.")
    warmup_steps: int = _f(0, "Linear warmup steps.", min=0)
    min_lr_ratio: float = _f(0.1, "Cosine: final lr as a fraction of optim.lr.", min=0.0, max=1.0)
    param_groups: list[dict] = _f(
        [], "Per-group learning rates: [{pattern: 'fc2.*', lr: 0.01}, ...]; first match wins."
    )


@dataclass
class TrainConfig:
    max_steps: int = _f(0, "Optimizer steps to run; 0 = run train.epochs epochs.", min=0)
    epochs: int = _f(1, "Epochs when train.max_steps is 0.", min=1)
    batch_size: int = _f(
        64, "GLOBAL samples per optimizer step, across all processes and micro-steps.", min=1
    )
    eval_batch_size: int = _f(512, "Global batch size for evaluation.", min=1)
    eval_every_steps: int = _f(0, "Evaluate every N steps (0 = only at the end).", min=0)
    precision: Literal["fp32", "fp16", "bf16"] = _f(
        "fp32", "fp32, fp16 (autocast + GradScaler) or bf16 (autocast)."
    )
    compile: bool = _f(False, "Wrap the model in torch.compile (compile time is logged apart).")
    compile_backend: str = _f("inductor", "torch.compile backend (aot_eager needs no C compiler).")
    compile_mode: Optional[str] = _f(None, "torch.compile mode: default, reduce-overhead, max-autotune.")
    grad_accum: int = _f(1, "Micro-steps per optimizer step; gradients all-reduce only on the last.", min=1)
    grad_clip: float = _f(0.0, "Clip the global gradient norm to this value (0 = off).", min=0.0)
    deterministic: bool = _f(False, "torch.use_deterministic_algorithms and fixed cuDNN/cuBLAS settings.")
    freeze: list[str] = _f([], "Freeze parameters whose name matches any glob (or re:REGEX) pattern.")
    activation_checkpointing: bool = _f(False, "Recompute GPT blocks in backward to save memory.")
    max_bad_steps: int = _f(
        3, "Consecutive non-finite-loss steps skipped before the run stops (exit 3).", min=0
    )
    strategy: Literal["auto", "single", "dp", "ddp", "fsdp", "accelerate"] = _f(
        "auto",
        "How the model is wrapped: auto = ddp under torchrun with >1 process, else single. "
        "Set by `python -m launch`.",
    )
    find_unused_parameters: bool = _f(False, "DDP: allow parameters that get no gradient (slower).")


@dataclass
class CheckpointConfig:
    every_steps: int = _f(0, "Save a checkpoint every N optimizer steps (0 = only at the end).", min=0)
    keep: int = _f(3, "Keep the last K checkpoints.", min=1)
    async_save: bool = _f(False, "Write checkpoints in a background thread while training continues.")


@dataclass
class LogConfig:
    every_steps: int = _f(10, "Pull loss to the host and write metrics every N steps.", min=1)
    tensorboard: bool = _f(True, "Write TensorBoard event files (if tensorboard is installed).")
    progress: Literal["auto", "on", "off"] = _f(
        "auto", "Progress bar: auto = only on an interactive terminal."
    )
    plot: bool = _f(True, "Write loss.png at the end of the run.")


@dataclass
class LoraConfig:
    targets: list[str] = _f([], "Wrap nn.Linear layers whose name matches these patterns with LoRA adapters.")
    rank: int = _f(8, "LoRA rank.", min=1)
    alpha: float = _f(16.0, "LoRA scaling numerator (scale = alpha / rank).", min=0.0)
    dropout: float = _f(0.0, "Dropout on the LoRA input.", min=0.0, max=0.999)
    trainable: list[str] = _f(
        [],
        "With LoRA on, base parameters that stay trainable (glob or re:REGEX, e.g. a new head 'fc2'); "
        "all others are frozen.",
    )


@dataclass
class DistConfig:
    init_timeout_s: float = _f(300.0, "Timeout for process-group initialisation / rendezvous.", min=1.0)
    collective_timeout_s: float = _f(
        600.0, "Timeout for a collective during training; on expiry the stalled rank is named.", min=0.1
    )


@dataclass
class ProfileConfig:
    steps: list[int] = _f([], "[start, end]: record a torch.profiler trace for these steps on rank 0.")


@dataclass
class Config:
    seed: int = _f(0, "Seed for model init, data order and augmentation.")
    device: Literal["auto", "cpu", "cuda"] = _f("auto", "auto picks CUDA when present.")
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)


# Keys whose change does not alter the math of a resumed run (see checkpoint resume check).
RESUME_SAFE_PREFIXES = (
    "run.",
    "log.",
    "checkpoint.",
    "dist.",
    "profile.",
    "train.max_steps",
    "train.epochs",
    "train.eval_every_steps",
    "train.eval_batch_size",
    "train.compile",
    "train.strategy",
    "data.num_workers",
    "data.pin_memory",
    "data.prefetch_factor",
    "device",
    "model.init_from",
    "model.init_strict",
    "model.init_skip",
    "train.compile_backend",
    "train.compile_mode",
)


# ----------------------------------------------------------------------------- introspection


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _type_name(args[0]) + "?"
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return f"list[{_type_name(inner)}]"
    return getattr(tp, "__name__", str(tp))


def iter_fields(cls: type = Config, prefix: str = ""):
    """Yield (dotted key, type, default, help) for every leaf field."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_section(tp):
            yield from iter_fields(tp, prefix + f.name + ".")
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        yield prefix + f.name, tp, default, f.metadata.get("help", "")


def describe() -> str:
    """Every key with its type, default and help: the text of `python -m trainer config`."""
    lines = []
    for key, tp, default, help_ in iter_fields():
        lines.append(f"  {key:<34} {_type_name(tp):<22} default={default!r}\n      {help_}")
    return "\n".join(lines)


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
    hints = _hints(cls)
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
        if _is_section(tp):
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

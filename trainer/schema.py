"""The config schema: one dataclass per section, every field with its type, default, help text and bounds.

A key lives here whole: its type says its allowed values (``Literal[...]``; a built-in name or a string of
another kind is ``Union[Literal[...], str]`` with ``kind=`` saying which), its metadata says its range
(``ge=``, ``gt=``, ``le=``; on a list they bound each element) and what else a value must be (``kind=``: an
existing ``"path"``, an ``"import"`` path ``package.module:Name``, a ``"checkpoint"`` path or URL).
``trainer/validate.py`` derives those checks from here; only the checks that need several keys are written
there. ``reference()`` is every key as data (type, default, allowed values, range, help), the one source of
``python -m trainer config`` (``describe()``) and of any generated key reference. No torch, no I/O.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

# Metadata a field may carry besides its help: bounds (on a list, of each element) and the kind of string.
BOUNDS = {"ge": ">=", "gt": ">", "le": "<="}
KINDS = {
    "path": "an existing file or directory",
    "import": "package.module:Name",
    "checkpoint": "an existing checkpoint path",
    "data": "an existing file or directory, a glob or a storage URL",
}


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with help text; mutable defaults go through default_factory."""
    unknown = set(kw) - set(BOUNDS) - {"kind", "item"}
    assert not unknown and kw.get("kind", "path") in KINDS, kw  # a typo here would silently check nothing
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


# The built-in names (config must not import torch, so the builders in trainer/models and trainer/data are
# keyed by these; tests/unit/test_layers.py checks they agree), and the other named choices fields share.
ModelName = Literal["linreg", "cnn", "mlp", "gpt", "hf"]
DataName = Literal[
    "synthetic_regression",
    "synthetic_classification",
    "digits",
    "diabetes",
    "text",
    "tokens",
    "tensors",
    "csv",
    "jsonl",
]
ResumeMode = Literal["auto", "never", "restart"]
Tracker = Literal["tensorboard", "mlflow", "wandb"]
Monitor = Literal["eval/accuracy", "eval/loss", "eval/perplexity", "eval/mse"]

MODEL_NAMES: tuple[str, ...] = typing.get_args(ModelName)
DATA_NAMES: tuple[str, ...] = typing.get_args(DataName)
RESUME_MODES: tuple[str, ...] = typing.get_args(ResumeMode)
TRACKERS: tuple[str, ...] = typing.get_args(Tracker)
# Which way is better for each metric checkpoint.monitor accepts.
MONITOR_MODES = {"eval/accuracy": "max", "eval/loss": "min", "eval/perplexity": "min", "eval/mse": "min"}
assert tuple(MONITOR_MODES) == typing.get_args(Monitor)


@dataclass
class RunConfig:
    dir: Optional[str] = _f(
        None,
        "Run directory for every output. Default: runs/<model>-<key>, the key a hash of every other key but "
        "run.*: the same command resumes its run, a changed config (trackers and eval cadence included) "
        "starts a new one.",
    )
    resume: Union[ResumeMode, str] = _f(
        "auto",
        "auto: continue from the latest checkpoint in run.dir if any (exit 2 if none is usable); never: "
        "refuse a non-empty run.dir; restart: start at step 0 in run.dir, moving its old checkpoints "
        "aside; or a checkpoint PATH.",
        kind="checkpoint",
    )
    resume_config_change: Literal["refuse", "allow"] = _f(
        "refuse", "On resume, refuse (default) or allow a config that differs in keys that change the math."
    )


@dataclass
class ModelConfig:
    name: Union[ModelName, str] = _f(
        "cnn",
        "linreg | cnn | mlp | gpt | hf (a Hugging Face causal LM from model.path), or a user nn.Module as "
        "package.module:Name.",
        kind="import",
    )
    path: Optional[str] = _f(
        None,
        "hf: a local model directory (config.json, *.safetensors possibly sharded with an index, tokenizer "
        "files). Nothing is downloaded.",
        kind="path",
    )
    dtype: Literal["auto", "fp32", "bf16"] = _f(
        "auto",
        "hf: the dtype the weights are held in (auto = the checkpoint's own); train.precision is autocast.",
    )
    trust_remote_code: bool = _f(
        False,
        "hf: run the Python code a model or tokenizer directory names in its auto_map. RISK: that code runs "
        "with this process's rights (files, credentials, network); set true only for a directory you trust. "
        "Off, such a directory is exit 2 instead of a prompt.",
    )
    kwargs: dict = _f(
        {},
        "Keyword arguments for a user model given by import path (or for model.config when that is set).",
    )
    config: Optional[str] = _f(
        None,
        "package.module:ConfigClass: the user model is called with ConfigClass(**model.kwargs) as its one "
        "argument (nanoGPT's GPTConfig, transformers' LlamaConfig).",
        kind="import",
    )
    target_arg: Optional[str] = _f(
        None,
        "Pass the target to the model's forward as this keyword (nanoGPT: targets, transformers: labels) "
        "so the model computes its own loss, in training and eval.",
    )
    loss_key: Optional[str] = _f(
        None,
        "The key of the model's loss in a dict or ModelOutput it returns (default: loss, else the only "
        "0-dim tensor; several are an error naming this key).",
    )
    hidden: list[int] = _f([256, 128], "MLP hidden layer widths.", ge=1)
    dropout: float = _f(0.0, "Dropout probability (mlp, gpt).", ge=0.0, le=0.999)
    n_layer: int = _f(4, "GPT: number of transformer blocks.", ge=1)
    n_head: int = _f(4, "GPT: attention heads per block.", ge=1)
    n_embd: int = _f(128, "GPT: embedding width (divisible by n_head).", ge=1)
    block_size: int = _f(128, "GPT: context length in tokens.", ge=2)
    vocab_size: int = _f(
        256, "GPT: vocabulary size (256 = bytes; set to your tokenizer's size for token files).", ge=2
    )
    init_from: Optional[str] = _f(
        None,
        "Initialise weights from a checkpoint dir, run dir, .safetensors or state-dict file.",
        kind="path",
    )
    init_strict: bool = _f(True, "Require every key to match when loading model.init_from.")
    init_skip: list[str] = _f(
        [],
        "Parameters (glob or re:REGEX) NOT loaded from model.init_from: they keep their fresh "
        "initialisation, e.g. [fc2] to re-initialise a head.",
    )


@dataclass
class DataConfig:
    name: Union[DataName, str] = _f(
        "digits",
        "synthetic_regression | synthetic_classification | digits | diabetes | text | tokens | tensors | "
        "csv | jsonl, or a user Dataset as package.module:Name.",
        kind="import",
    )
    path: Optional[str] = _f(
        None,
        "File or directory for text, tokens (.bin), tensors (.npy/.npz/.pt), csv and jsonl data. For "
        "jsonl, text and tokens also a glob (data/train-*.jsonl), a directory of shards or an s3:// URL: "
        "streamed, read lazily (docs/data.md, Streaming data).",
        kind="data",
    )
    eval_path: Optional[str] = _f(
        None,
        "jsonl: a held-out file for evaluation (default: a data.eval_fraction split). Streamed shards "
        "(jsonl, text, tokens): a file, glob or URL read into memory as the eval set (default: none).",
        kind="data",
    )
    tokenizer: Optional[str] = _f(
        None, "jsonl: a local tokenizer directory (default: model.path).", kind="path"
    )
    seq_len: int = _f(
        0, "jsonl: tokens per packed row (0 = the model's maximum positions, capped at 2048).", ge=0
    )
    format: Literal["auto", "text", "prompt_response", "messages", "sharegpt", "alpaca"] = _f(
        "auto",
        "jsonl: the record layout; auto = by each record's keys (messages, conversations, "
        "instruction/output, prompt/response, text; the counts are logged); `python -m trainer data` "
        "shows it.",
    )
    train_on: Literal["assistant", "all"] = _f(
        "assistant",
        "jsonl: assistant = learn only the responses (assistant turns with weight != 0, Alpaca output, "
        "response); all = every token.",
    )
    truncation: Literal["left", "right", "drop"] = _f(
        "left",
        "jsonl: a document longer than data.seq_len: left = cut the prompt from the left, keeping the end "
        "(the learned response); right = keep the start; drop = leave it out. Counts are in summary.json.",
    )
    kwargs: dict = _f({}, "Keyword arguments passed to a user Dataset given by import path.")
    target_key: str = _f(
        "labels", "Dict samples: the key holding the target; every other key goes to forward as a keyword."
    )
    eval_fraction: float = _f(
        0.1, "Fraction of samples held out for evaluation (fixed split seed).", ge=0.0, le=0.9
    )
    split_seed: int = _f(
        1234,
        "Seed of the train/eval split; independent of `seed` so runs stay comparable.",
        ge=0,
        le=2**32 - 1,
    )
    num_samples: int = _f(4096, "Synthetic datasets: number of samples.", ge=1)
    num_features: int = _f(16, "Synthetic datasets: input features.", ge=1)
    num_classes: int = _f(4, "Synthetic classification: classes.", ge=2)
    max_bytes: int = _f(
        2_000_000,
        "Text corpus: cap in bytes (the default corpus is the stdlib's top-level .py files).",
        ge=1,
    )
    token_dtype: Literal["uint16", "uint32"] = _f("uint16", "Token files (.bin): element type.")
    target: str = _f("-1", "CSV: target column name or index (default: last column).")
    classes: list[int] = _f(
        [], "Digits: keep only these classes (empty = all); used to build a pretraining task."
    )
    augment: bool = _f(False, "Digits: random ±2 pixel shifts, seeded per sample from (seed, epoch, index).")
    num_workers: int = _f(
        0,
        "DataLoader worker processes (0 = load in the main process; right for in-memory data). Workers "
        "pass batches over Unix sockets under TMPDIR, which may then be at most 75 bytes long.",
        ge=0,
    )
    pin_memory: bool = _f(True, "Pin host memory when training on CUDA.")
    prefetch_factor: int = _f(2, "Batches prefetched per worker (num_workers > 0).", ge=1)
    shuffle_buffer: int = _f(
        0,
        "Streams (an IterableDataset, or data.path a glob/directory of shards/URL): shuffle within "
        "consecutive windows of N samples, seeded by (seed, epoch, window); memory N samples per reader. "
        "0 = stream order.",
        ge=0,
    )


@dataclass
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"] = _f(
        "sgd", "Optimizer. Fused kernels are used on CUDA for adam/adamw."
    )
    lr: float = _f(0.05, "Peak learning rate.", ge=0.0)
    momentum: float = _f(0.9, "SGD momentum.", ge=0.0, le=1.0)
    weight_decay: float = _f(0.0, "Weight decay (decoupled for adamw).", ge=0.0)
    betas: list[float] = _f([0.9, 0.999], "Adam/AdamW betas.")
    eps: float = _f(1e-8, "Adam/AdamW epsilon.", ge=0.0)
    schedule: Literal["constant", "cosine"] = _f("constant", "LR schedule after warmup.")
    warmup_steps: int = _f(0, "Linear warmup steps.", ge=0)
    min_lr_ratio: float = _f(0.1, "Cosine: final lr as a fraction of optim.lr.", ge=0.0, le=1.0)
    param_groups: list[dict] = _f(
        [], "Per-group learning rates: [{pattern: 'fc2.*', lr: 0.01}, ...]; first match wins."
    )


@dataclass
class TrainConfig:
    max_steps: int = _f(0, "Optimizer steps to run; 0 = run train.epochs epochs.", ge=0)
    epochs: int = _f(1, "Epochs when train.max_steps is 0.", ge=1)
    batch_size: int = _f(64, "GLOBAL samples per optimizer step, across all processes and micro-steps.", ge=1)
    eval_batch_size: int = _f(512, "Global batch size for evaluation.", ge=1)
    eval_every_steps: int = _f(0, "Evaluate every N steps (0 = only at the end).", ge=0)
    eval_before: Optional[bool] = _f(
        None,
        "Evaluate before the first step too (summary.json: eval_before beside eval). "
        "Default: true for model.name=hf, else false.",
    )
    precision: Literal["fp32", "fp16", "bf16", "fp8"] = _f(
        "fp32",
        "fp32, fp16 (autocast + GradScaler), bf16 (autocast) or fp8 (torchao float8 training on the Linear "
        "layers whose sizes are multiples of 16, bf16 autocast elsewhere; needs torchao and a GPU of compute "
        "capability >= 8.9, or the CPU, where it is emulated: slow, for tests).",
    )
    compile: Union[bool, Literal["blocks"]] = _f(
        False,
        "true: torch.compile the whole model; blocks: compile each transformer block (the train.fsdp_wrap "
        "units, which FSDP shards one by one) and leave the rest eager. Compile time is logged apart.",
    )
    compile_backend: str = _f("inductor", "torch.compile backend (aot_eager needs no C compiler).")
    compile_mode: Optional[str] = _f(None, "torch.compile mode: default, reduce-overhead, max-autotune.")
    grad_accum: int = _f(1, "Micro-steps per optimizer step; gradients all-reduce only on the last.", ge=1)
    micro_batch_size: Optional[int] = _f(
        None,
        "Samples per process per micro-step. When set, the accumulation is derived: train.batch_size = "
        "data-parallel processes x micro x accumulation, so a resume on another number of processes keeps "
        "the micro-batch (and the memory) and changes the accumulation. Excludes train.grad_accum.",
        ge=1,
    )
    grad_clip: float = _f(0.0, "Clip the global gradient norm to this value (0 = off).", ge=0.0)
    deterministic: bool = _f(False, "torch.use_deterministic_algorithms and fixed cuDNN/cuBLAS settings.")
    freeze: list[str] = _f([], "Freeze parameters whose name matches any glob (or re:REGEX) pattern.")
    activation_checkpointing: bool = _f(
        False, "Recompute each block (the train.fsdp_wrap units: GPT blocks, hf decoder layers) in backward."
    )
    fsdp_wrap: list[str] = _f(
        [],
        "Class names of the modules FSDP shards one by one and activation checkpointing wraps; default: "
        "the model's _no_split_modules, else its .blocks, else the children of its largest nn.ModuleList.",
    )
    loss: Optional[str] = _f(
        None,
        "package.module:fn, called as fn(outputs, targets) -> scalar tensor; replaces the model's own loss "
        "and the task loss.",
        kind="import",
    )
    max_bad_steps: int = _f(
        3, "Consecutive non-finite-loss steps skipped before the run stops (exit 3).", ge=0
    )
    max_bad_fraction: float = _f(
        0.01,
        "Skipped (non-finite-loss) steps allowed as a fraction of the steps run; more than this, and more "
        "than train.max_bad_steps in all, stops the run (exit 3) keeping the last good checkpoint.",
        ge=0.0,
        le=1.0,
    )
    strategy: Literal["auto", "single", "dp", "ddp", "fsdp", "accelerate"] = _f(
        "auto",
        "How the model is wrapped: auto = ddp under torchrun with >1 process, else single. "
        "Set by `python -m launch`.",
    )
    find_unused_parameters: bool = _f(
        False,
        "DDP: allow parameters that get no gradient (slower). Without it such a model stops with exit 2 "
        "naming this key.",
    )
    sync_batchnorm: Literal["auto", "true", "false"] = _f(
        "auto",
        "BatchNorm layers become SyncBatchNorm under ddp, fsdp and accelerate with more than one process "
        "(auto, true), so N processes train the model one process does; false keeps per-process "
        "statistics. Logged.",
    )
    early_stop_patience: int = _f(
        0,
        "Stop (exit 0) after N evaluations in a row without improvement of checkpoint.monitor (0 = off).",
        ge=0,
    )


@dataclass
class CheckpointConfig:
    dir: Optional[str] = _f(
        None,
        "Where checkpoints live: a directory, or an fsspec URL such as s3://bucket/prefix (needs the .[s3] "
        "extra; credentials from AWS_* variables or an instance role). Default: run.dir/checkpoints.",
    )
    every_steps: int = _f(0, "Save a checkpoint every N optimizer steps (0 = only at the end).", ge=0)
    keep: int = _f(3, "Keep the last K checkpoints.", ge=1)
    async_save: bool = _f(False, "Write checkpoints in a background thread while training continues.")
    monitor: Optional[Monitor] = _f(
        None,
        "Eval metric that ranks checkpoints and drives early stopping: "
        + " | ".join(
            f"{k} ({'higher' if v == 'max' else 'lower'} is better)" for k, v in MONITOR_MODES.items()
        )
        + ".",
    )
    keep_best: int = _f(
        0, "Also keep the K best checkpoints by checkpoint.monitor, besides the last checkpoint.keep.", ge=0
    )
    checksum: Literal["xxh3_128", "sha256"] = _f(
        "xxh3_128",
        "Checksum the manifest records per file, against torn or corrupted files (not a signature). "
        "xxh3_128 costs ~1/5 of sha256's CPU; either verifies on resume, whichever the manifest names.",
    )
    timeout_s: float = _f(
        60.0,
        "Object stores: connect and read timeout of each request. A request that fails (timeout, refused "
        "connection, 5xx) is retried 4 times, 0.5-4 s apart; then the run stops with exit 74.",
        gt=0.0,
    )


@dataclass
class LogConfig:
    every_steps: int = _f(10, "Pull loss to the host and write metrics every N steps.", ge=1)
    trackers: list[Tracker] = _f(
        ["tensorboard"],
        "Experiment trackers, any of tensorboard | mlflow | wandb. MLflow reads MLFLOW_TRACKING_URI and "
        "MLFLOW_EXPERIMENT_NAME; W&B reads WANDB_MODE, WANDB_PROJECT, WANDB_DIR "
        "(pip install .[mlflow] / .[wandb]).",
        item="tracker",
    )
    tensorboard: bool = _f(True, "Alias kept for old recipes: false drops tensorboard from log.trackers.")
    progress: Literal["auto", "on", "off"] = _f(
        "auto", "Progress bar: auto = only on an interactive terminal."
    )
    plot: bool = _f(True, "Write loss.png at the end of the run.")
    tracker_timeout_s: float = _f(
        30.0,
        "Seconds one tracker call (MLflow, W&B, TensorBoard) may take; a tracker that does not answer in "
        "time is dropped with one warning (metrics.jsonl keeps every row). Tracker calls never run on the "
        "step loop.",
        gt=0.0,
    )


@dataclass
class LoraConfig:
    targets: list[str] = _f(
        [],
        "LoRA (peft) on nn.Linear layers whose name matches: exact names or suffixes (q_proj), globs "
        "(blocks.*.attn.c_attn) or re:REGEX. Empty = full fine-tuning.",
    )
    rank: int = _f(8, "LoRA rank.", ge=1)
    alpha: float = _f(16.0, "LoRA scaling numerator (scale = alpha / rank).", ge=0.0)
    dropout: float = _f(0.0, "Dropout on the LoRA input.", ge=0.0, le=0.999)
    trainable: list[str] = _f(
        [],
        "With LoRA on, base modules that stay trainable (glob or re:REGEX, e.g. a new head 'fc2'; "
        "peft's modules_to_save); all others are frozen.",
    )


@dataclass
class DistConfig:
    init_timeout_s: float = _f(300.0, "Timeout for process-group initialisation / rendezvous.", ge=1.0)
    collective_timeout_s: float = _f(
        600.0, "Timeout for a collective during training; on expiry the stalled rank is named.", ge=0.1
    )


@dataclass
class ParallelConfig:
    dp_replicate: Union[Literal["auto"], int] = _f(
        "auto",
        "Data-parallel replica groups. fsdp: >1 is HSDP (parameters sharded within a group, replicated "
        "across groups; auto = the number of nodes on several nodes, else 1). ddp: every data-parallel "
        "process is a replica (auto).",
        ge=1,
    )
    dp_shard: int = _f(
        -1, "Processes that shard the parameters within a replica group (fsdp); -1 = the rest.", ge=-1
    )
    tp: int = _f(
        1,
        "Tensor-parallel degree (within a node): each Linear of the plan is split over this many processes. "
        "Composes with fsdp (2-D/3-D mesh) and ddp (replicas of the TP group).",
        ge=1,
    )
    tp_plan: dict = _f(
        {},
        "Module-name glob -> colwise | rowwise | replicate; overrides the model's plan (built-in GPT: its "
        "MLP; model.name=hf: the config's base_model_tp_plan) for the names it matches.",
    )
    reshard_after_forward: bool = _f(
        True,
        "fsdp: free the gathered parameters after each block's forward and gather them again in backward "
        "(ZeRO-3, least memory); false keeps them until backward (one all-gather less per block, the full "
        "parameters of every block held between forward and backward).",
    )


@dataclass
class ProfileConfig:
    steps: list[int] = _f([], "[start, end]: record a torch.profiler trace for these steps on rank 0.")


@dataclass
class Config:
    seed: int = _f(0, "Seed for model init, data order and augmentation.", ge=0, le=2**32 - 1)
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
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)


# Keys whose change does not alter the math of a resumed run (see checkpoint resume check).
RESUME_SAFE_PREFIXES = (
    "run.",
    "log.",
    "checkpoint.",
    "dist.",
    "parallel.",
    "profile.",
    "train.max_steps",
    "train.epochs",
    "train.eval_every_steps",
    "train.eval_batch_size",
    "train.eval_before",
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
    "train.early_stop_patience",
    "train.fsdp_wrap",
    "train.micro_batch_size",
)


# ----------------------------------------------------------------------------- introspection


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        name = "|".join(type_name(a) for a in args)
        return name + "?" if len(args) < len(typing.get_args(tp)) else name
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return f"list[{type_name(inner)}]"
    return getattr(tp, "__name__", str(tp))


def choices(tp: Any) -> tuple:
    """The Literal values a field (or each element of a list field) may take; () when it is not an enum."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return typing.get_args(tp)
    if origin in (Union, types.UnionType, list):
        return tuple(c for a in typing.get_args(tp) for c in choices(a))
    return ()


def iter_fields(cls: type = Config, prefix: str = ""):
    """Yield (dotted key, type, default, help) for every leaf field."""
    for key, tp, default, meta in iter_leaves(cls, prefix):
        yield key, tp, default, meta.get("help", "")


def iter_leaves(cls: type = Config, prefix: str = ""):
    """Yield (dotted key, type, default, metadata) for every leaf field, in schema order."""
    hints = field_types(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if is_section(tp):
            yield from iter_leaves(tp, prefix + f.name + ".")
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        yield prefix + f.name, tp, default, dict(f.metadata)


def range_text(meta: dict) -> str:
    """A field's bounds as text, e.g. '>= 0, <= 0.9'; '' when it has none."""
    return ", ".join(f"{op} {meta[k]}" for k, op in BOUNDS.items() if k in meta)


def reference() -> list[dict]:
    """Every key as data: key, type, default, choices (allowed values; with `other`, what else a value may
    be), range and help. The one source of `python -m trainer config` and of a generated key reference."""
    rows = []
    for key, tp, default, meta in iter_leaves():
        kind = meta.get("kind")
        rows.append(
            {
                "key": key,
                "type": type_name(tp),
                "default": default,
                "choices": list(choices(tp)),
                "other": KINDS[kind] if kind and kind != "path" and choices(tp) else None,
                "range": range_text(meta),
                "help": meta.get("help", ""),
            }
        )
    return rows


def describe() -> str:
    """Every key with its type, default, allowed values, range and help: the text of `python -m trainer
    config`."""
    lines = []
    for r in reference():
        line = f"  {r['key']:<34} {r['type']:<22} default={r['default']!r}"
        if r["range"]:
            line += f"  ({r['range']})"
        lines.append(f"{line}\n      {r['help']}")
    return "\n".join(lines)


def _md(text: str) -> str:
    """Text for a Markdown table cell: backtick spans kept, and outside them what Markdown would read as
    markup (HTML, emphasis, links, the cell separator) escaped."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # outside code spans
        p = parts[i].replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;")
        for ch in "*_[]|":
            p = p.replace(ch, "\\" + ch)
        parts[i] = p
    return "`".join(parts)


def _code(value: Any) -> str:
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return f"`{text}`" if text else "`''`"


MARKDOWN_HEAD = """# Config keys

<!-- Generated from trainer/schema.py by `python -m trainer config --markdown > docs/config.md`; do not edit
     by hand: tests/unit/test_docs.py fails when this page differs from that command's output. -->

Every key a recipe may set, as a YAML section (`train:` then `max_steps: 50`) or a dotted override on the
command line (`train.max_steps=50`); precedence is override > recipe > the defaults below. How a run is
configured, and the checks a config passes before anything runs: [Configuration](configuration.md).
"""


def markdown() -> str:
    """Every key as Markdown tables, one per section: the text of `python -m trainer config --markdown`
    (docs/config.md)."""
    rows = reference()
    out = [MARKDOWN_HEAD, f"{len(rows)} keys."]
    section = None
    for r in rows:
        top = r["key"].split(".")[0] if "." in r["key"] else ""
        if top != section:
            section = top
            out.append(f"\n## {'`' + top + '.*`' if top else 'Top level'}\n")
            out.append("| key | type | default | allowed | what it does |")
            out.append("| --- | --- | --- | --- | --- |")
        kinds = [t for t in r["type"].rstrip("?").split("|") if t not in map(str, r["choices"])]
        tp = "|".join(kinds) or "choice"
        tp += "?" if r["type"].endswith("?") else ""
        allowed = [", ".join(_code(c) for c in r["choices"])] if r["choices"] else []
        allowed += [_md(f"or {r['other']}")] if r["other"] else []
        allowed += [_md(r["range"])] if r["range"] else []
        tp = _md(tp.replace("|", " or "))
        cells = [f"`{r['key']}`", tp, _code(r["default"]), "; ".join(allowed), _md(r["help"])]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"

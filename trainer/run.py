"""Build the parts of a run from a valid Config, then train them: ``build(cfg)`` and ``train(cfg)``.

``build`` does everything ``python -m trainer train`` does before the first step, in this order: numeric
flags (TF32 / deterministic), the process group, logging, data, model (seeded identically on every rank),
fine-tuning preparation and freezing, the probe (one forward + loss on a real micro-batch: a model that
does not fit the data is exit 2 before anything is written), the FLOP count, the run directory with its
resolved ``config.yaml`` and per-rank logs, per-rank reseeding, the strategy wrapping and the optimizer,
and the ``Trainer``. ``train`` resumes, fits and exports. Benchmarks drive the same ``build``
(``bench/common.py``).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from . import config as cfgmod
from .config import Config, ConfigError
from .data import build_datasets, wrap_datasets
from .exitcodes import OK
from .models import build_model, flops_per_sample, prepare_user_model
from .models.outputs import model_io
from .runtime import dist
from .runtime.logs import add_rank_log, setup_logging
from .training import checkpoint as ckpt
from .training.finetune import prepare_for_finetune
from .training.loop import Trainer
from .training.optim import apply_freeze, build_optimizer
from .training.probe import probe
from .training.strategy import Strategy, make_accelerator, resolve_mode
from .training.tasks import Objective
from .training.weights import merge_lora_state, write_safetensors

log = logging.getLogger("trainer")

# Freeing a DDP model after its gloo group can deadlock on the GIL (a gloo worker thread frees a finished
# all-reduce while the group's destructor waits for it); the process ends with os._exit, so the parts of
# every run stay referenced here until then instead of being returned to the GC.
_KEEPALIVE: list = []


@dataclass
class Given:
    """Objects handed to ``trainer.fit`` in place of the config's import paths (each may be None)."""

    model: Optional[nn.Module] = None
    train_data: Any = None
    eval_data: Any = None
    loss: Optional[Callable] = None


@dataclass
class Parts:
    """What ``build`` made: the trainer and what it was made of."""

    cfg: Config
    state: dist.DistState
    strategy: Strategy
    optimizer: torch.optim.Optimizer
    trainer: Trainer
    run_dir: str
    resume_path: Optional[str]
    created: list[str] = field(default_factory=list)  # dirs this run made (removed if it fails before work)

    def close(self) -> None:
        dist.teardown(self.state)


def _numerics(cfg: Config) -> None:
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _init_dist(cfg: Config):
    """The process group (or accelerate's), and the Accelerator when train.strategy=accelerate."""
    accelerator = None
    if cfg.train.strategy == "accelerate":  # Accelerator creates the process group itself
        accelerator = make_accelerator(
            cfg, dist.pick_device(cfg.device, int(os.environ.get("LOCAL_RANK", 0)))
        )
    state = dist.init(
        cfg.device,
        cfg.dist.init_timeout_s,
        cfg.dist.collective_timeout_s,
        want_group=accelerator is None,
        force_group=cfg.train.strategy in ("ddp", "fsdp"),
    )
    if accelerator is not None and torch.distributed.is_initialized():
        state.backend = torch.distributed.get_backend()
        dist.add_groups(state, cfg.dist.collective_timeout_s)
    return state, accelerator


def default_run_dir(cfg: Config) -> str:
    model = cfg.model.name.split(":")[-1].lower()
    base = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S") + f"-{model}")
    path, i = base, 1
    while os.path.exists(path):
        i += 1
        path = f"{base}-{i}"
    return path


def find_resume(cfg: Config, run_dir: str) -> Optional[str]:
    """The checkpoint to resume from, by ``run.resume`` (auto | never | PATH)."""
    r = cfg.run.resume
    if r == "never":
        if os.path.isdir(run_dir) and os.listdir(run_dir):
            raise ConfigError(
                f"run.dir={run_dir!r}: not empty and run.resume=never (choose another run.dir "
                "or run.resume=auto)"
            )
        return None
    if r == "auto":
        return ckpt.CheckpointDir(os.path.join(run_dir, "checkpoints")).find_resumable()
    try:
        return ckpt.resolve(r)
    except ckpt.CheckpointError as e:
        raise ConfigError(f"run.resume={r!r}: {e}") from None


def _make_run_dir(cfg: Config, state: dist.DistState, created: list[str]) -> tuple[str, Optional[str]]:
    run_dir = dist.broadcast_object(state, cfg.run.dir or default_run_dir(cfg))
    resume_path = find_resume(cfg, run_dir)
    if state.is_main and not os.path.isdir(run_dir):
        os.makedirs(run_dir)
        created.append(run_dir)
    dist.barrier(state)
    add_rank_log(run_dir, state.rank, state.world_size)
    if state.is_main:
        with open(os.path.join(run_dir, "config.yaml"), "w", encoding="utf-8") as fh:
            fh.write(cfgmod.dump(cfg))
    return run_dir, resume_path


def _data(cfg: Config, given: Given):
    if given.train_data is not None:
        return wrap_datasets(cfg, given.train_data, given.eval_data, key="fit(train_data=...)")
    if given.eval_data is not None:
        raise ConfigError("fit(eval_data=...): needs train_data too")
    return build_datasets(cfg)


def build(cfg: Config, trainer_cls: type[Trainer] = Trainer, given: Optional[Given] = None) -> Parts:
    """Everything before the first step. On failure, nothing this call created is left behind.

    ``given``: objects passed to ``trainer.fit`` (a model, datasets, a loss) used instead of building them.
    """
    given = given or Given()
    _numerics(cfg)
    state, accelerator = _init_dist(cfg)
    setup_logging(state.rank)
    created: list[str] = []
    try:
        mode = resolve_mode(cfg, state)
        micro = cfgmod.check_world(cfg, state.world_size)
        torch.manual_seed(cfg.seed)
        train_ds, eval_ds, info = _data(cfg, given)
        if given.model is not None:
            module = prepare_user_model(given.model, "fit(model=...)", cfg)
        else:
            module = build_model(cfg, info)  # identical init on every rank: seeded just above
        module = prepare_for_finetune(module, cfg)  # model.init_from, LoRA wrapping, trainable report
        trainable, total = apply_freeze(module, cfg.train.freeze)
        io = model_io(cfg, module, train_ds, info.task)
        objective = Objective.for_run(cfg, info.task, given.loss)
        # before the run dir exists: a model that does not fit the data is exit 2 with nothing written
        probe(cfg, state, module, train_ds, info, io, objective, micro)
        # MFU is reported on CUDA only; counting FLOPs runs a forward (and imports torch._dynamo, ~1.3 s).
        flops = flops_per_sample(module, info) if state.device.type == "cuda" else None  # before FSDP shards
        run_dir, resume_path = _make_run_dir(cfg, state, created)
        torch.manual_seed(cfg.seed + 1 + state.rank)  # dropout differs per rank; init did not
        strategy = Strategy(cfg, state, mode, accelerator)
        optimizer = strategy.wrap(module, lambda m: build_optimizer(m, cfg, state.device))
        log.info("data: %s (fingerprint %s)", info.description, info.fingerprint)
        log.info(
            "model: %s, %.3fM parameters (%.3fM trainable); %s on %d process(es), %s, device %s",
            cfg.model.name,
            total / 1e6,
            trainable / 1e6,
            mode,
            state.world_size,
            cfg.train.precision,
            state.device,
        )
        trainer = trainer_cls(
            cfg,
            state,
            strategy,
            optimizer,
            train_ds,
            eval_ds,
            info,
            run_dir,
            flops,
            io=io,
            objective=objective,
        )
        _KEEPALIVE.extend([strategy, module, optimizer, trainer])
    except BaseException:
        for d in created:
            shutil.rmtree(d, ignore_errors=True)
        dist.teardown(state)
        raise
    return Parts(cfg, state, strategy, optimizer, trainer, run_dir, resume_path, created)


def export_final(parts: Parts) -> None:
    """``run_dir/model.safetensors``: the full model state, LoRA adapters merged into plain weights."""
    msd, _ = parts.strategy.full_state(parts.optimizer)  # FSDP: a collective, so every rank calls it
    if parts.state.is_main:
        path = os.path.join(parts.run_dir, "model.safetensors")
        merged = merge_lora_state(msd)
        write_safetensors(merged, path, {"lora": "merged"} if merged is not msd else None)
        if merged is not msd:
            log.info("LoRA adapters merged into plain weights: %s", path)


def train(cfg: Config, trainer_cls: type[Trainer] = Trainer) -> int:
    """Build, resume (``run.resume``), fit and export. Returns the exit code.

    ``trainer_cls``: a ``Trainer`` subclass to build instead (the benchmarks time the loop's verbs this way).
    """
    return train_parts(cfg, trainer_cls)[0]


def train_parts(
    cfg: Config, trainer_cls: type[Trainer] = Trainer, given: Optional[Given] = None
) -> tuple[int, Parts]:
    """``train`` that also returns the parts it trained (``trainer.fit`` hands back the model)."""
    parts = build(cfg, trainer_cls, given)
    try:
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
        if restarts:
            log.warning(
                "elastic restart %d (of at most %s): resuming from the latest checkpoint",
                restarts,
                os.environ.get("TORCHELASTIC_MAX_RESTARTS", "?"),
            )
        if parts.resume_path:
            parts.trainer.resume_from(parts.resume_path)
        parts.created.clear()  # from here on the run dir holds real work
        code = parts.trainer.fit()
        if code == OK:
            export_final(parts)
        return code, parts
    except BaseException:
        for d in parts.created:
            shutil.rmtree(d, ignore_errors=True)
        raise
    finally:
        parts.close()

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

from . import checkpoint as ckpt
from . import config as cfgmod
from .checkpoint import mirror, stores
from .checkpoint.hf_export import write_adapter, write_hf_dir
from .checkpoint.weights import merge_lora_state, write_safetensors
from .config import Config, ConfigError
from .data import Stream, build_datasets, wrap_datasets
from .exitcodes import OK, PREEMPTED
from .models import build_model, flops_per_sample, prepare_user_model
from .models.outputs import model_io
from .objects import check_import_paths
from .runtime import dist, io_faults, workerenv
from .runtime.command import rerun_command, under_launcher
from .runtime.lease import LEASE, Lease
from .runtime.logs import add_rank_log, setup_logging
from .runtime.mesh import attach_mesh, plan_mesh
from .training.finetune import prepare_for_finetune
from .training.loop import Trainer
from .training.optim import apply_freeze, build_optimizer
from .training.probe import probe
from .training.strategy import Strategy, adopt_accelerate_launch, make_accelerator, resolve_mode
from .training.tasks import Objective

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

    def supplied(self) -> tuple[str, ...]:
        """The config keys these objects stand in for."""
        keys = (("model.name", "model.config"), ("data.name",), ("train.loss",))
        given = (self.model, self.train_data, self.loss)
        return tuple(k for obj, ks in zip(given, keys) if obj is not None for k in ks)


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
    lease: Optional[Lease] = None  # run.dir's lease (global rank 0)

    def close(self) -> None:
        if self.lease is not None:
            self.lease.release()
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
    env = workerenv.read(os.environ)  # a bad RANK/WORLD_SIZE/MASTER_PORT is exit 2 before anything waits
    if cfg.train.strategy == "accelerate":  # Accelerator creates the process group itself
        accelerator = make_accelerator(cfg, dist.pick_device(cfg.device, env.local_rank))
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
    """``runs/<model>-<run_key>``: the same recipe and overrides name the same directory, so rerunning the
    same command resumes (README "Resume")."""
    model = cfg.model.name.split(":")[-1].lower()
    return os.path.join("runs", f"{model}-{cfgmod.run_key(cfg)}")


# What makes a directory one of our runs (anything else non-empty is refused as run.dir).
RUN_MARKERS = ("config.yaml", "checkpoints", "metrics.jsonl", LEASE, "logs", "summary.json")
# What run.resume=restart moves aside (never deletes) before starting over at step 0.
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "summary.json", "model.safetensors", "loss.png", "tensorboard")


def _check_run_dir(cfg: Config, run_dir: str) -> None:
    """Refuse a run.dir that is a file, or a non-empty folder that is not a run of ours."""
    if os.path.lexists(run_dir) and not os.path.isdir(run_dir):
        raise ConfigError(f"run.dir={run_dir!r}: is a file, expected a directory")
    if not os.path.isdir(run_dir):
        return
    entries = os.listdir(run_dir)
    if entries and not any(m in entries for m in RUN_MARKERS):
        raise ConfigError(
            f"run.dir={run_dir!r}: not empty and not a run directory (no config.yaml or checkpoints/); "
            "choose a new or empty folder"
        )
    if cfg.run.resume == "never" and entries:
        raise ConfigError(
            f"run.dir={run_dir!r}: not empty and run.resume=never; choose one: another run.dir | "
            "run.resume=auto to continue it | run.resume=restart to start over in it (old outputs kept)"
        )


def _set_aside_outputs(run_dir: str) -> Optional[str]:
    """run.resume=restart: the previous run's outputs go to ``previous-<time>/`` (kept, not deleted)."""
    present = [n for n in RUN_OUTPUTS if os.path.lexists(os.path.join(run_dir, n))]
    if not present:
        return None
    base = dst = os.path.join(run_dir, "previous-" + time.strftime("%Y%m%d-%H%M%S"))
    i = 1
    while os.path.exists(dst):
        i += 1
        dst = f"{base}-{i}"
    os.makedirs(dst)
    for n in present:
        os.rename(os.path.join(run_dir, n), os.path.join(dst, n))
    log.warning(
        "run.resume=restart: the previous outputs of %s were moved to %s; starting at step 0", run_dir, dst
    )
    return dst


def check_storage(cfg: Config) -> None:
    """Before anything is written: a remote checkpoint.dir must be reachable and writable (exit 2 if not)."""
    if cfg.checkpoint.dir and stores.is_url(cfg.checkpoint.dir):
        try:
            stores.check_writable(cfg.checkpoint.dir)
        except stores.StoreError as e:
            raise ConfigError(f"checkpoint.dir={cfg.checkpoint.dir!r}: {str(e).split(': ', 1)[-1]}") from None


def find_resume(cfg: Config, run_dir: str) -> Optional[str]:
    """The checkpoint to resume from, by ``run.resume`` (auto | never | restart | PATH). Rank 0 only."""
    r = cfg.run.resume
    root = ckpt.checkpoint_root(cfg.checkpoint.dir, run_dir)
    if r == "never":
        if stores.is_url(root) and not ckpt.CheckpointDir(root).is_empty():
            raise ConfigError(
                f"checkpoint.dir={root!r}: not empty and run.resume=never (choose another "
                "checkpoint.dir or run.resume=auto)"
            )
        return None
    if r == "restart":
        if stores.is_url(root) and not ckpt.CheckpointDir(root).is_empty():  # objects cannot be moved aside
            raise ConfigError(
                f"run.resume=restart: checkpoint.dir={root!r} holds a run's checkpoints, which cannot be set "
                "aside on an object store; choose a new checkpoint.dir"
            )
        _set_aside_outputs(run_dir)
        return None
    if r == "auto":
        cdir = ckpt.CheckpointDir(root)
        try:
            found = cdir.find_resumable(preload=True)  # resume_from loads it next: read and hashed once
        except ckpt.CheckpointError as e:
            if stores.is_url(root):
                raise ConfigError(
                    f"checkpoint.dir={root!r}: {e}; choose a new checkpoint.dir to start over"
                ) from None
            raise ConfigError(
                f"run.dir={run_dir!r}: {e}; set run.resume=restart to start over (they are kept)"
            ) from None
        for moved in cdir.set_aside(cdir.unusable):  # a later save of the same step must not delete them
            log.warning("unusable checkpoint kept aside as %s", moved)
        return found
    try:
        return ckpt.resolve(r)
    except ckpt.CheckpointError as e:
        raise ConfigError(f"run.resume={r!r}: {e}") from None


def _restore_mirror(cfg: Config, run_dir: str, rank: int) -> None:
    """A node whose run.dir is empty, resuming from a bucket: the metrics and this rank's log so far, before
    logging appends to them (checkpoint/mirror.py)."""
    got = mirror.restore(run_dir, ckpt.checkpoint_root(cfg.checkpoint.dir, run_dir), rank)
    if got:
        log.info("history restored from %s: %s", cfg.checkpoint.dir, ", ".join(got))


def _claim_run_dir(
    cfg: Config, run_dir: str, created: list[str], world_size: int
) -> tuple[Lease, Optional[str]]:
    """Rank 0: check run.dir (and a remote checkpoint.dir), create it, bring back the run files mirrored
    beside remote checkpoints, take its lease before writing anything else, find the resume."""
    check_storage(cfg)
    _check_run_dir(cfg, run_dir)
    if not os.path.isdir(run_dir):
        os.makedirs(run_dir)
        created.append(run_dir)
    _restore_mirror(cfg, run_dir, 0)
    lease = Lease(run_dir)
    note = lease.acquire()
    try:
        add_rank_log(run_dir, 0, world_size)  # the lease and the resume search are in the run's own log
        if note:
            log.warning("%s", note)
        return lease, find_resume(cfg, run_dir)
    except BaseException:
        lease.release()
        raise


def _make_run_dir(
    cfg: Config, state: dist.DistState, created: list[str]
) -> tuple[str, Optional[str], Optional[Lease]]:
    run_dir = dist.broadcast_object(state, cfg.run.dir or default_run_dir(cfg))
    lease, outcome = None, ("ok", None)
    if state.is_main:
        try:
            lease, resume = _claim_run_dir(cfg, run_dir, created, state.world_size)
            outcome = ("ok", resume)
        except ConfigError as e:
            outcome = ("config", str(e))
        except OSError as e:
            outcome = ("storage", io_faults.describe(e) or f"storage error: {e}")
    kind, value = dist.broadcast_object(state, outcome)  # every rank fails the same way, or none
    if kind == "config":
        raise ConfigError(value)
    if kind == "storage":
        raise io_faults.StorageError(value)
    if not state.is_main:
        _restore_mirror(cfg, run_dir, state.rank)
        add_rank_log(run_dir, state.rank, state.world_size)
    if state.is_main:
        with open(os.path.join(run_dir, "config.yaml"), "w", encoding="utf-8") as fh:
            fh.write(cfgmod.dump(cfg))
    return run_dir, value, lease


def _data(cfg: Config, given: Given):
    if given.train_data is not None:
        made = wrap_datasets(cfg, given.train_data, given.eval_data, key="fit(train_data=...)")
    elif given.eval_data is not None:
        raise ConfigError("fit(eval_data=...): needs train_data too")
    else:
        made = build_datasets(cfg)
    train = made[0]
    if isinstance(train, Stream) and train.length is None and not cfg.train.max_steps:
        raise ConfigError(
            f"train.max_steps=0: data.name={cfg.data.name!r} is a stream with no length (it may never end), "
            "so train.epochs cannot say how many steps to run; set train.max_steps"
        )
    return made


def build(cfg: Config, trainer_cls: type[Trainer] = Trainer, given: Optional[Given] = None) -> Parts:
    """Everything before the first step. On failure, nothing this call created is left behind.

    ``given``: objects passed to ``trainer.fit`` (a model, datasets, a loss) used instead of building them.
    """
    given = given or Given()
    cfg, launched_by = adopt_accelerate_launch(cfg)  # under `accelerate launch`: its strategy and precision
    _numerics(cfg)
    stores.configure(cfg.checkpoint.timeout_s)  # every rank writes its own files to a remote checkpoint.dir
    state, accelerator = _init_dist(cfg)
    setup_logging(state.rank)
    if launched_by:
        log.info(launched_by)
    created: list[str] = []
    lease: Optional[Lease] = None
    try:
        mode = resolve_mode(cfg, state)
        attach_mesh(state, plan_mesh(cfg, mode, state.world_size, state.local_world_size), mode)
        batch = cfgmod.batch_plan(cfg, state.dp_size)
        micro = batch["micro"]
        check_import_paths(cfg, given.supplied())  # a typo fails now, not after the data is built
        torch.manual_seed(cfg.seed)
        train_ds, eval_ds, info = _data(cfg, given)
        if given.model is not None:
            module = prepare_user_model(given.model, "fit(model=...)", cfg)
        else:
            module = build_model(cfg, info)  # identical init on every rank: seeded just above
        module = prepare_for_finetune(module, cfg)  # model.init_from, LoRA wrapping, trainable report
        trainable, total = apply_freeze(module, cfg.train.freeze)
        io = model_io(cfg, module, info)
        samples = train_ds.head if isinstance(train_ds, Stream) else train_ds  # a stream's first samples
        objective = Objective.for_run(cfg, info.task, given.loss)
        # before the run dir exists: a model that does not fit the data is exit 2 with nothing written
        probed = probe(cfg, state, module, samples, info, io, objective, micro)
        # MFU is reported on CUDA only; counting FLOPs runs a forward (and imports torch._dynamo, ~1.3 s).
        flops = flops_per_sample(module, info) if state.device.type == "cuda" else None  # before FSDP shards
        run_dir, resume_path, lease = _make_run_dir(cfg, state, created)
        if cfg.train.precision == "fp16" and state.device.type == "cpu":
            log.warning(  # measured: seed CNN 151 ms/step in fp16 vs 21 fp32, 15 bf16 (PLATFORM.md)
                "train.precision=fp16 on CPU is emulated and ~7x slower than fp32 here; "
                "train.precision=bf16 is the CPU mixed precision"
            )
        torch.manual_seed(cfg.seed + 1 + state.rank)  # dropout differs per rank; init did not
        strategy = Strategy(cfg, state, mode, accelerator)
        optimizer = strategy.wrap(module, lambda m: build_optimizer(m, cfg, state.device))
        if probed:
            log.info("%s", probed)
        log.info("data: %s (fingerprint %s)", info.description, info.fingerprint)
        log.info(
            "batch: global %d = %d data-parallel process(es) x micro %d x accumulation %d; mesh %s",
            batch["global"],
            batch["world"],
            batch["micro"],
            batch["accum"],
            state.plan.describe(mode),
        )
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
        if lease is not None:
            lease.release()
        for d in created:
            shutil.rmtree(d, ignore_errors=True)
        dist.teardown(state)
        raise
    return Parts(cfg, state, strategy, optimizer, trainer, run_dir, resume_path, created, lease)


def export_final(parts: Parts) -> None:
    """``run_dir/model.safetensors``: the full model state, LoRA adapters merged into plain weights; for
    ``model.name=hf`` also ``hf/`` (merged model + tokenizer) and ``adapter/`` (the peft adapter)."""
    msd, _ = parts.strategy.full_state(parts.optimizer)  # FSDP: a collective, so every rank calls it
    if parts.state.is_main:
        cfg = parts.cfg
        path = os.path.join(parts.run_dir, "model.safetensors")
        merged = merge_lora_state(msd, cfgmod.to_dict(cfg))
        write_safetensors(merged, path, {"lora": "merged"} if merged is not msd else None)
        if merged is not msd:
            log.info("LoRA adapters merged into plain weights: %s", path)
        if cfg.model.name == "hf":
            write_hf_dir(merged, cfg, os.path.join(parts.run_dir, "hf"))
            if cfg.lora.targets:
                write_adapter(parts.strategy.module, msd, cfg, os.path.join(parts.run_dir, "adapter"))
    mirror.upload_final(
        parts.run_dir, ckpt.checkpoint_root(parts.cfg.checkpoint.dir, parts.run_dir), parts.state.rank
    )


def resume_command(run_dir: str) -> str:
    """The exact command that resumes this run (under torchrun: the launcher's command, rerun as is)."""
    if under_launcher():
        return f"the same launch command again (it resumes from {run_dir})"
    return rerun_command({"run.dir": run_dir})


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
        elif code == PREEMPTED and parts.state.is_main:
            log.warning("resume with: %s", resume_command(parts.run_dir))
        return code, parts
    except BaseException:
        for d in parts.created:
            shutil.rmtree(d, ignore_errors=True)
        raise
    finally:
        parts.close()

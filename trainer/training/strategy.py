"""How the model is wrapped: single, dp (nn.DataParallel), ddp, fsdp (FSDP2, HSDP on a 2-D mesh), tensor
parallel on top of ddp or fsdp, or accelerate; float8 Linears and per-block compile.

The order of the transformations follows torchtitan's ``parallelize``: float8 conversion, tensor parallel
(``trainer.models.tp_plans``), activation checkpointing, per-block compile, then FSDP2 over the data-parallel
mesh (``dp_replicate x dp_shard``; with ``train.strategy=ddp`` and tensor parallelism that mesh is
``dp x 1``: replicas that all-reduce gradients, FSDP2 being the data parallelism that composes with DTensor
parameters; without tensor parallelism ddp is plain DDP).

This is the only module that knows the mode. The loop asks it for: the forward callable, the autocast
context, a gradient-sync context per micro-step, backward, clip, optimizer step, and full (unsharded)
state dicts for checkpoints, so one checkpoint format serves every mode and world size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Optional

import torch
from torch import nn
from torch.distributed._composable import checkpoint

from ..config import Config, ConfigError
from ..models import GPT, tp_plans, unwrap
from ..runtime.dist import DistState
from ..runtime.mesh import MeshPlan
from . import syncbn
from .units import describe, find_units

log = logging.getLogger("trainer")

# fp8: float8 matmuls in the converted Linears, bf16 autocast (or FSDP2's bf16 parameters) everywhere else
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.bfloat16}


# What `accelerate launch` tells the processes it starts (accelerate/utils/launch.py, prepare_*_env): its
# --mixed_precision, --dynamo_backend, --use_fsdp and --use_deepspeed choices.
ACCELERATE_PRECISION = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}


def adopt_accelerate_launch(
    cfg: Config, env: Optional[Mapping[str, str]] = None
) -> tuple[Config, Optional[str]]:
    """Under ``accelerate launch``: train.strategy=auto becomes accelerate, and its --mixed_precision is
    honoured (train.precision=fp32, the default, takes it) or refused (another precision set, fp8); what the
    accelerate strategy does not configure (--use_fsdp, --use_deepspeed, --dynamo_backend) is refused.
    Returns the config and the line to log (None when nothing changed); without accelerate's variables,
    ``cfg`` as it is.
    """
    env = os.environ if env is None else env
    if "ACCELERATE_MIXED_PRECISION" not in env:
        return cfg, None
    mp = env["ACCELERATE_MIXED_PRECISION"].strip().lower()
    t = cfg.train
    for var, flag, fix in (
        ("ACCELERATE_USE_FSDP", "--use_fsdp", "train.strategy=fsdp (python -m launch fsdp)"),
        ("ACCELERATE_USE_DEEPSPEED", "--use_deepspeed", "ddp or fsdp"),
    ):
        if env.get(var, "").strip().lower() in ("true", "1"):
            raise ConfigError(
                f"accelerate launch {flag} ({var}): the trainer does not configure it; use {fix}"
            )
    dynamo = env.get("ACCELERATE_DYNAMO_BACKEND", "no").strip().lower()
    if dynamo not in ("", "no"):
        raise ConfigError(
            f"accelerate launch --dynamo_backend {dynamo} (ACCELERATE_DYNAMO_BACKEND): not used by "
            "the trainer; drop it and set train.compile=true"
        )
    if mp not in ACCELERATE_PRECISION:
        raise ConfigError(
            f"accelerate launch --mixed_precision {mp} (ACCELERATE_MIXED_PRECISION): the trainer "
            f"supports {', '.join(ACCELERATE_PRECISION)}"
        )
    precision = t.precision
    if ACCELERATE_PRECISION[mp] != t.precision:
        if mp != "no" and t.precision != "fp32":
            raise ConfigError(
                f"accelerate launch --mixed_precision {mp} contradicts train.precision={t.precision}; "
                "drop one of them"
            )
        if mp != "no":
            precision = ACCELERATE_PRECISION[mp]
    strategy = "accelerate" if t.strategy == "auto" else t.strategy
    if strategy == "accelerate" and precision == "fp8":
        raise ConfigError(
            "train.precision=fp8: not under accelerate launch (use python -m launch ddp or fsdp)"
        )
    note = None
    if strategy != "accelerate":
        note = (
            f"started by accelerate launch, but train.strategy={strategy} was asked for: accelerate's "
            f"Accelerator is not used (train.precision={precision})"
        )
    elif (strategy, precision) != (t.strategy, t.precision):
        note = f"started by accelerate launch: train.strategy=accelerate, train.precision={precision}"
    return dataclasses.replace(
        cfg, train=dataclasses.replace(t, strategy=strategy, precision=precision)
    ), note


def resolve_mode(cfg: Config, state: DistState) -> str:
    mode = cfg.train.strategy
    if mode == "auto":
        return "ddp" if state.world_size > 1 else "single"
    if mode in ("single", "dp") and state.world_size > 1:
        raise ConfigError(
            f"train.strategy={mode}: runs one process, but WORLD_SIZE={state.world_size} "
            "(use ddp or fsdp under torchrun)"
        )
    return mode


def make_accelerator(cfg: Config, device: torch.device):
    """Created before the process group: Accelerator initialises it itself."""
    # accelerate costs ~1.5 s to import cold (../shared/PLATFORM.md): only for train.strategy=accelerate.
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # accelerate keeps process-wide singletons; a second run in one process (tests, the GPU check) with
    # another precision must start from a clean state.
    AcceleratorState._reset_state(reset_partial_state=True)
    mp = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[cfg.train.precision]
    acc = Accelerator(cpu=device.type == "cpu", mixed_precision=mp, device_placement=False)
    if mp == "fp16" and device.type == "cpu" and acc.scaler is None:
        # accelerate gives fp16 on a CPU neither autocast nor a GradScaler (accelerator.py: "fp16 ... and
        # device.type != 'cpu'"), so the run would be fp32 under an fp16 label; torch has both for CPU, and
        # prepare() wraps forward in autocast and hands the scaler to the optimizer as it does on a GPU.
        acc.native_amp = True
        acc.scaler = torch.amp.GradScaler("cpu")
    return acc


class Strategy:
    def __init__(self, cfg: Config, state: DistState, mode: str, accelerator=None):
        self.cfg, self.state, self.mode = cfg, state, mode
        self.accelerator = accelerator
        self.precision = cfg.train.precision
        self.dtype = _DTYPES[self.precision]
        dev = state.device.type
        self.scaler: Optional[torch.amp.GradScaler] = None
        if self.precision == "fp16" and mode != "accelerate":
            self.scaler = torch.amp.GradScaler(dev)
        self.plan: MeshPlan = state.plan or MeshPlan()
        # FSDP2 wraps fsdp, and ddp with tensor parallelism (see the module docstring)
        self.fully_sharded = mode == "fsdp" or (mode == "ddp" and self.plan.tp > 1)
        # FSDP2 casts parameters itself through its MixedPrecisionPolicy; accelerate autocasts in prepare().
        self.use_autocast = self.precision != "fp32" and not self.fully_sharded and mode != "accelerate"
        self._ddp: Optional[nn.Module] = None
        self.module: Optional[nn.Module] = None  # the raw model (what state dicts describe)
        self.model: Optional[nn.Module] = None  # what forward calls (wrapped, maybe compiled)

    # ------------------------------------------------------------------ wrapping
    def wrap(self, module: nn.Module, optimizer_factory) -> torch.optim.Optimizer:
        """Wrap `module` for the mode and build the optimizer on the right parameters.

        A model marked ``broadcast_from_rank0`` (``model.name=hf`` in a multi-process job) holds real
        weights on rank 0 only (meta elsewhere): it is sharded (FSDP) or not, allocated on each rank's
        device, then filled from rank 0's full state dict by one broadcast.
        """
        bcast = bool(getattr(module, "broadcast_from_rank0", False)) and self.state.distributed
        full: dict = {}
        buffers: dict = {}
        if bcast:
            full = module.state_dict() if self.state.is_main else {}
            buffers = {n: b.detach().clone() for n, b in module.named_buffers()}  # real on every rank
            self.module = module
        else:
            self.module = module.to(self.state.device)
        self.module = self._sync_batchnorm(self.module)
        t = self.cfg.train
        own_ac = isinstance(unwrap(module), GPT)  # the built-in GPT recomputes its blocks itself
        if self.precision == "fp8":
            to_float8(self.module, self.state.device)
        if self.state.mesh is not None:
            # DTensor warns on every gather across two mesh dimensions (HSDP, FSDP x TP) that it takes two
            # collectives; true and expected here, and once per parameter it buries the log
            logging.getLogger("torch.distributed.tensor._redistribute").setLevel(logging.ERROR)
        if self.plan.tp > 1:
            plan, source = tp_plans.resolve(self.module, self.cfg.parallel.tp_plan)
            tp_plans.check_divisible(self.module, plan, self.plan.tp)
            tp_plans.apply(self.module, plan, self.state.mesh["tp"])
            log.info(
                "tensor parallel over %d processes: %d Linear layers split (%s)",
                self.plan.tp,
                len(plan),
                source,
            )
        units, rule = [], ""
        if (
            self.fully_sharded
            or t.fsdp_wrap
            or t.compile == "blocks"
            or (t.activation_checkpointing and not own_ac)
        ):
            units, rule = find_units(self.module, t.fsdp_wrap)
        said = describe(units)  # before fully_shard renames the classes (FSDPLlamaDecoderLayer)
        if t.activation_checkpointing and not own_ac:
            for unit in units:  # in place: parameter names, hence checkpoints, stay the same
                checkpoint(unit)
            log.info("activation checkpointing: %s (%s)", said, rule)
        if t.compile == "blocks":
            if not units:
                raise ConfigError(
                    f"train.compile=blocks: {type(unwrap(module)).__name__} has no blocks to compile "
                    "(name their class in train.fsdp_wrap, or set train.compile=true)"
                )
            for unit in units:  # in place (nn.Module.compile): names, hence checkpoints, stay the same
                unit.compile(backend=t.compile_backend, mode=t.compile_mode)
            log.info("compile: each of %s (%s), backend %s", said, rule, t.compile_backend)
        if self.fully_sharded:
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # ~2 s import: FSDP only

            policy = MixedPrecisionPolicy(
                param_dtype=self.dtype if self.precision != "fp32" else None, reduce_dtype=torch.float32
            )
            mesh = self.state.mesh
            dp_mesh = mesh["dp_replicate", "dp_shard"] if mesh is not None else None
            # ddp-style replicas keep their full parameters: nothing to gather again in backward
            reshard = self.cfg.parallel.reshard_after_forward if self.mode == "fsdp" else False
            for unit in units:
                fully_shard(unit, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=reshard)
            fully_shard(self.module, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=reshard)
            log.info(
                "%s: %s (%s); %s",
                "fsdp" if self.mode == "fsdp" else "ddp (FSDP2 replicas of the TP group)",
                f"{said} + root" if units else "root only",
                rule,
                self.plan.describe(self.mode),
            )
        if bcast:
            self._fill_from_rank0(full, buffers)
        if self.mode == "dp":
            ids = list(range(torch.cuda.device_count())) if self.state.device.type == "cuda" else None
            model = nn.DataParallel(self.module, device_ids=ids)  # on CPU: a pass-through to the module
        elif self.mode == "ddp" and not self.fully_sharded:
            ids = [self.state.device.index] if self.state.device.type == "cuda" else None
            model = self._ddp = nn.parallel.DistributedDataParallel(
                self.module, device_ids=ids, find_unused_parameters=self.cfg.train.find_unused_parameters
            )
        else:
            model = self.module
        optimizer = optimizer_factory(self.module)
        if self.mode == "accelerate":
            model, optimizer = self.accelerator.prepare(self.module, optimizer)
            self._ddp = model if isinstance(model, nn.parallel.DistributedDataParallel) else None
        if self.cfg.train.compile is True:
            model = torch.compile(
                model, backend=self.cfg.train.compile_backend, mode=self.cfg.train.compile_mode
            )
        self.model = model
        return optimizer

    def _sync_batchnorm(self, module: nn.Module) -> nn.Module:
        """train.sync_batchnorm: BatchNorm layers synchronised across processes (syncbn.py), logged."""
        n = syncbn.count_batchnorm(module)
        want = self.cfg.train.sync_batchnorm
        if not n:
            return module
        many = self.state.world_size > 1 and self.mode in ("ddp", "fsdp", "accelerate")
        if want == "false":
            if many:
                log.warning(
                    "train.sync_batchnorm=false: %d BatchNorm layer(s) keep per-process statistics, so %d "
                    "processes train a different model than one",
                    n,
                    self.state.world_size,
                )
            return module
        if not many:
            if want == "true":
                log.info("train.sync_batchnorm=true: one process (%s), nothing to synchronise", self.mode)
            return module
        log.info(
            "train.sync_batchnorm=%s: %d BatchNorm layer(s) -> SyncBatchNorm (statistics over the global "
            "batch, as one process computes them)",
            want,
            n,
        )
        return syncbn.convert(module, self.state.device)

    def _fill_from_rank0(self, full: dict, buffers: dict) -> None:
        # ~2 s import (see full_state): only for a model whose weights only rank 0 read
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        self.module.to_empty(device=self.state.device)
        with torch.no_grad():
            for name, b in buffers.items():  # non-persistent buffers (rotary tables) are in no state dict
                self.module.get_buffer(name).copy_(b)
        if hasattr(self.module, "tie_weights"):
            self.module.tie_weights()
        opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
        set_model_state_dict(self.module, full, options=opts)
        full.clear()

    # ------------------------------------------------------------------ per step
    def autocast(self):
        if not self.use_autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.state.device.type, dtype=self.dtype)

    def sync(self, last_micro_step: bool):
        """Skip the gradient all-reduce on all but the last micro-step of an accumulation."""
        if last_micro_step:
            return contextlib.nullcontext()
        if self.mode == "accelerate":
            return self.accelerator.no_sync(self.model)
        if self._ddp is not None:
            return self._ddp.no_sync()
        if self.fully_sharded:
            return _fsdp_no_sync(self.module)
        return contextlib.nullcontext()

    @property
    def state_scaler(self) -> Optional[torch.amp.GradScaler]:
        """The GradScaler whose state a checkpoint holds: ours, or under accelerate the one accelerate owns
        (it scales the loss and steps the optimizer itself), so a resumed fp16 run keeps its scale."""
        if self.scaler is not None:
            return self.scaler
        return getattr(self.accelerator, "scaler", None) if self.mode == "accelerate" else None

    def backward(self, loss: torch.Tensor) -> None:
        if self.mode == "accelerate":
            self.accelerator.backward(loss)
        elif self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def check_unused_parameters(self) -> None:
        """After the first backward: under DDP without train.find_unused_parameters, a trainable parameter
        that got no gradient is exit 2 naming the key (DDP itself would fail one step later with exit 1)."""
        if self._ddp is None or self._ddp.find_unused_parameters:
            return
        unused = [n for n, p in self.module.named_parameters() if p.requires_grad and p.grad is None]
        if unused:
            shown = ", ".join(unused[:4]) + (f" and {len(unused) - 4} more" if len(unused) > 4 else "")
            raise ConfigError(
                f"ddp: {len(unused)} parameter(s) got no gradient in the first step ({shown}): set "
                "train.find_unused_parameters=true (slower), or use every parameter in forward"
            )

    def grad_norm(self, optimizer, params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
        """Total gradient norm (unscaled), clipping when max_norm > 0; stays on device."""
        if self.mode == "accelerate":
            return self.accelerator.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if self.state.mesh is not None:  # DTensors on several meshes (TP, dp, both): one norm per mesh
            return _mesh_grad_norm(params, max_norm)
        if max_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        else:  # only the norm (for the non-finite check): no clip pass over the gradients (~half the cost)
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None], foreach=True)
        if hasattr(norm, "full_tensor"):  # FSDP2 returns a DTensor
            norm = norm.full_tensor()
        return norm

    def optimizer_step(self, optimizer, ok: torch.Tensor) -> None:
        """Step unless `ok` is False; on CUDA the skip happens on device (fused optimizers' found_inf)."""
        if self.scaler is not None:
            self.scaler.step(optimizer)  # skips itself on inf/nan gradients
            self.scaler.update()
            return
        if self.mode == "accelerate" and self.state_scaler is not None:
            optimizer.step()  # accelerate's scaler steps (or skips an overflow) and updates its scale itself
            return
        inner = self._inner_optimizer(optimizer)
        if self.state.device.type == "cuda" and inner.defaults.get("fused"):
            inner.found_inf = (~ok).float()  # the fused kernel skips the update on device: no host sync
            optimizer.step()
            return
        if bool(ok):  # CPU: no device to wait for, so this "sync" costs nothing
            optimizer.step()

    # ------------------------------------------------------------------ state
    def _inner_optimizer(self, optimizer):
        return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer

    def full_state(self, optimizer) -> tuple[dict, dict]:
        """Unsharded model and optimizer state (complete on rank 0; collective under FSDP)."""
        from torch.distributed.checkpoint.state_dict import (  # ~2 s import: at save/load time, not start-up
            StateDictOptions,
            get_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=self.state.distributed)
        msd, osd = get_state_dict(self.module, self._inner_optimizer(optimizer), options=opts)
        if not self.state.distributed:
            msd = {k: v.detach().cpu() for k, v in msd.items()}
        return msd, osd

    @property
    def sharded(self) -> bool:
        """FSDP and tensor-parallel state is saved shard by shard (DCP) instead of gathered onto rank 0."""
        return self.fully_sharded or self.plan.tp > 1

    def sharded_state(self, optimizer) -> dict:
        from torch.distributed.checkpoint.state_dict import (
            get_state_dict,  # ~2 s import: at save/load time, not start-up
        )

        msd, osd = get_state_dict(self.module, self._inner_optimizer(optimizer))
        return {"model": msd, "optim": osd}

    def load_sharded(self, optimizer, path: str) -> None:
        """Load a DCP checkpoint into this mode's layout (DCP reshards: any world size, FSDP or not)."""
        from torch.distributed.checkpoint.state_dict import set_state_dict  # ~2 s import, see full_state

        from ..checkpoint import dcp_io  # ~0.9 s import (torch.distributed.checkpoint)

        sd = self.sharded_state(optimizer)
        dcp_io.load(sd, path, process_group=self.state.ckpt_group)
        set_state_dict(
            self.module,
            self._inner_optimizer(optimizer),
            model_state_dict=sd["model"],
            optim_state_dict=sd["optim"],
        )

    def load_full_state(self, optimizer, msd: dict, osd: Optional[dict]) -> None:
        # ~2 s import (see full_state): only on resume
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=self.sharded, strict=True)
        if self.sharded and not self.state.is_main:
            msd, osd = {}, ({} if osd is not None else None)
        set_model_state_dict(self.module, msd, options=opts)
        if osd is not None:
            set_optimizer_state_dict(self.module, self._inner_optimizer(optimizer), osd, options=opts)


@contextlib.contextmanager
def _fsdp_no_sync(module: nn.Module):
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def _mesh_grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """The total gradient norm over DTensors of several meshes (tensor-parallel 2-D ones beside data-parallel
    1-D ones cannot be stacked together), clipping when max_norm > 0."""
    grads = [p.grad for p in params if p.grad is not None]
    by_mesh: dict = {}
    for g in grads:
        by_mesh.setdefault(getattr(g, "device_mesh", None), []).append(g)
    norms = []
    for group in by_mesh.values():
        n = torch.nn.utils.get_total_norm(group, foreach=True)
        norms.append(n.full_tensor() if hasattr(n, "full_tensor") else n)
    total = torch.linalg.vector_norm(torch.stack(norms))
    if max_norm > 0:
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        with torch.no_grad():
            for g in grads:  # scaling is elementwise: each local shard scales alone, whatever its placement
                getattr(g, "_local_tensor", g).mul_(coef)
    return total


def to_float8(module: nn.Module, device: torch.device) -> None:
    """train.precision=fp8: torchao's Float8Linear in place of every Linear whose sizes are multiples of 16
    (float8 matmuls need them), except the output head (torchtitan leaves it in high precision too)."""
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        if cap < (8, 9):
            raise ConfigError(
                f"train.precision=fp8: {torch.cuda.get_device_name(device)} has compute capability "
                f"{cap[0]}.{cap[1]}; float8 matmuls need 8.9 or newer (H100, H200, L4, ...); use bf16"
            )
    try:
        # ~1 s import (and a harmless "Failed to load ... .so" line on CPU builds): only for fp8
        from torchao.float8 import convert_to_float8_training
    except ImportError:
        raise ConfigError("train.precision=fp8: needs torchao (pip install torchao)") from None

    def qualifies(mod: nn.Module, fqn: str) -> bool:
        return (
            isinstance(mod, nn.Linear)
            and mod.in_features % 16 == 0
            and mod.out_features % 16 == 0
            and fqn.split(".")[-1] not in ("lm_head", "output")
        )

    names = [n for n, m in module.named_modules() if qualifies(m, n)]
    if not names:
        raise ConfigError(
            "train.precision=fp8: no Linear layer qualifies (in and out features multiples of 16, not the "
            "output head); use bf16"
        )
    convert_to_float8_training(module, module_filter_fn=qualifies)
    log.info(
        "fp8: %d Linear layers in float8 (torchao)%s",
        len(names),
        "; emulated on the CPU (slow: for tests)" if device.type == "cpu" else "",
    )

"""The device mesh: ``parallel.dp_replicate x parallel.dp_shard x parallel.tp`` processes, one DeviceMesh.

Dimensions, outermost first (ranks are laid out row-major, so a tensor-parallel group is consecutive ranks,
i.e. on one node): ``dp_replicate`` (replica groups: HSDP's outer dimension, DDP's only one), ``dp_shard``
(FSDP shards parameters within a replica group), ``tp`` (tensor parallel). Data-parallel processes are
``dp_replicate x dp_shard``; the ``tp`` peers of a data-parallel rank read the same micro-batch.

``plan_mesh`` is pure (no process group) so the doctor and ``--dry-run`` print the same mesh the workers
build; ``attach_mesh`` builds it and records the data-parallel rank and size on the ``DistState``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config, ConfigError

DIMS = ("dp_replicate", "dp_shard", "tp")


@dataclass(frozen=True)
class MeshPlan:
    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1

    @property
    def dp(self) -> int:
        """Data-parallel processes (what the global batch is split over)."""
        return self.dp_replicate * self.dp_shard

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.dp_replicate, self.dp_shard, self.tp)

    def needs_mesh(self, mode: str) -> bool:
        """Tensor parallelism or HSDP; plain DDP and 1-D FSDP use the default process group."""
        return self.tp > 1 or (mode == "fsdp" and self.dp_replicate > 1)

    def describe(self, mode: str = "") -> str:
        kind = {
            ("fsdp", True): "HSDP",
            ("fsdp", False): "FSDP",
        }.get((mode, self.dp_replicate > 1 and self.dp_shard > 1), mode.upper() or "mesh")
        if self.tp > 1:
            kind += f" + TP{self.tp}"
        return (
            f"{kind}: dp_replicate={self.dp_replicate} x dp_shard={self.dp_shard} x tp={self.tp} "
            f"({self.dp_replicate * self.dp_shard * self.tp} processes, {self.dp} data-parallel)"
        )


def mode_for(strategy: str, world_size: int) -> str:
    """train.strategy with auto resolved (ddp on several processes, else single)."""
    if strategy == "auto":
        return "ddp" if world_size > 1 else "single"
    return strategy


def plan_mesh(cfg: Config, mode: str, world_size: int, local_world_size: int) -> MeshPlan:
    """The mesh for ``mode`` (single | dp | ddp | fsdp | accelerate) on ``world_size`` processes, or a
    one-line ConfigError naming the keys whose product is not the world size."""
    p = cfg.parallel
    tp = p.tp
    nnodes = max(1, world_size // max(1, local_world_size))
    if mode not in ("ddp", "fsdp"):
        if tp > 1 or p.dp_replicate not in ("auto", 1) or p.dp_shard not in (-1, 1, world_size):
            raise ConfigError(
                f"parallel.tp={tp}, parallel.dp_replicate={p.dp_replicate}, parallel.dp_shard={p.dp_shard}: "
                f"a mesh needs train.strategy=ddp or fsdp on several processes (got {mode} on {world_size})"
            )
        return MeshPlan(1, world_size, 1) if mode == "accelerate" else MeshPlan(1, 1, 1)
    if world_size % tp:
        raise ConfigError(f"parallel.tp={tp}: does not divide the world size {world_size}")
    if tp > local_world_size and nnodes > 1:
        raise ConfigError(
            f"parallel.tp={tp}: more than the {local_world_size} processes on a node; tensor parallelism "
            "all-reduces inside every layer and must stay within a node"
        )
    dp = world_size // tp
    rep, shard = p.dp_replicate, p.dp_shard
    if mode == "ddp":
        if shard not in (-1, 1):
            raise ConfigError(
                f"parallel.dp_shard={shard}: sharding needs train.strategy=fsdp (ddp replicates)"
            )
        if rep not in ("auto", dp):
            raise ConfigError(
                f"parallel.dp_replicate={rep}: ddp replicates over every data-parallel process "
                f"({world_size} / parallel.tp={tp} = {dp}); leave it auto"
            )
        return MeshPlan(dp, 1, tp)
    if rep == "auto":
        rep = nnodes if nnodes > 1 and shard == -1 and dp % nnodes == 0 else 1
    if shard == -1:
        if dp % rep:
            raise ConfigError(
                f"parallel.dp_replicate={rep}: does not divide the {dp} data-parallel processes "
                f"(world size {world_size} / parallel.tp={tp})"
            )
        shard = dp // rep
    if rep * shard * tp != world_size:
        raise ConfigError(
            f"parallel: dp_replicate={rep} x dp_shard={shard} x tp={tp} = {rep * shard * tp}, but the world "
            f"size is {world_size}"
        )
    return MeshPlan(rep, shard, tp)


def attach_mesh(state, plan: MeshPlan, mode: str) -> None:
    """Build the DeviceMesh (when the plan needs one) and record the data-parallel rank and size."""
    state.plan = plan
    state.dp_size = plan.dp
    state.dp_rank = state.rank // plan.tp
    if not state.distributed or not plan.needs_mesh(mode):
        return
    from torch.distributed.device_mesh import init_device_mesh  # ~0.3 s import: only for a real mesh

    state.mesh = init_device_mesh(state.device.type, plan.shape, mesh_dim_names=DIMS)

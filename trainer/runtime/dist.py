"""Distributed state in one place: init/teardown, rank helpers, backend choice and a clean exit.

The trainer reads only what torchrun (or `accelerate launch`) gives every worker: RANK, LOCAL_RANK,
WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT. Cluster-specific variables (Slurm, Kubeflow, ...)
are the launcher's business. Without RANK the same code runs as one process.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from ..config import ConfigError
from . import workerenv

log = logging.getLogger("trainer")


@dataclass
class DistState:
    rank: int = 0  # global rank
    local_rank: int = 0  # rank on this node; picks the GPU
    world_size: int = 1
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None  # None when no process group was created
    side_group: Optional[object] = None  # gloo group for control traffic (signals, checkpoint barriers)
    ckpt_group: Optional[object] = None  # gloo group for DCP's own collectives (maybe in a writer thread)
    # the mesh (runtime.mesh.attach_mesh): data-parallel rank/size (what the data is split over), the plan,
    # and the DeviceMesh when HSDP or tensor parallelism needs one
    dp_rank: int = 0
    dp_size: int = 1
    plan: Optional[object] = None
    mesh: Optional[object] = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


class PeerLost(RuntimeError):
    """Another rank or node went away mid-collective (exit code PEER_LOST, 76: retrying resumes)."""


# What the backends say when the other end of a collective is gone: gloo's TCP pairs, NCCL's remote and
# system errors, a communicator aborted after a peer's failure.
_PEER_GONE = (
    "connection reset by peer",
    "connection closed by peer",
    "broken pipe",
    "ncclremoteerror",
    "ncclsystemerror",
    "remote process exited",
    "nccl communicator was aborted",
)


def is_peer_lost(e: BaseException) -> bool:
    """True for a collective that failed because a peer process or node went away."""
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(p in text for p in _PEER_GONE)


def backend_line(e: BaseException) -> str:
    """The backend's own words, one line: the last line of the message that says what happened."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if any(p in ln.lower() for p in _PEER_GONE):
            return ln[:200]
    return (lines[-1] if lines else type(e).__name__)[:200]


def pick_device(choice: str, local_rank: int) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device='cuda': no CUDA device is visible (use device=auto or device=cpu)")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init(
    device_choice: str = "auto",
    init_timeout_s: float = 300.0,
    collective_timeout_s: float = 600.0,
    want_group: bool = True,
    force_group: bool = False,
) -> DistState:
    """Create the process group when launched with WORLD_SIZE > 1 (torchrun/accelerate).

    `force_group` makes a group of one (ddp/fsdp asked for on a single process, e.g. the GPU check's
    "DDP with one NCCL process"); without torchrun's variables it rendezvous on a free loopback port.
    """
    env = workerenv.read(os.environ)  # the launcher's rules: a bad value is exit 2, not a hang or traceback
    rank, world, local_rank, local_world = env.rank, env.world_size, env.local_rank, env.local_world_size
    device = pick_device(device_choice, local_rank)
    state = DistState(rank, local_rank, world, local_world, device, dp_rank=rank, dp_size=world)
    if force_group and world == 1 and "MASTER_ADDR" not in os.environ:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(sock.getsockname()[1]))
    if (world > 1 or force_group) and want_group:
        backend = "nccl" if device.type == "cuda" else "gloo"
        # Rendezvous with its own (init) timeout; the group gets the collective timeout. torchrun's
        # env:// store is the agent's store, so this is the same rendezvous torchrun set up.
        store, rank, world = next(
            dist.rendezvous("env://", rank, world, timeout=datetime.timedelta(seconds=init_timeout_s))
        )
        store.set_timeout(datetime.timedelta(seconds=collective_timeout_s))
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        if device.type == "cuda":
            # NCCL Flight Recorder: a ring buffer of recent collectives, dumped per rank on a timeout.
            os.environ.setdefault("TORCH_NCCL_TRACE_BUFFER_SIZE", "2000")
            os.environ.setdefault("TORCH_NCCL_DUMP_ON_TIMEOUT", "1")
        backstop = datetime.timedelta(seconds=backstop_s(collective_timeout_s))
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=backstop, **kwargs)
        state.backend = backend
        # Control traffic (preemption flag, async checkpoint) must not queue behind training collectives.
        add_groups(state, collective_timeout_s)
    return state


def backstop_s(collective_timeout_s: float) -> float:
    """The timeout of every process group: later than the watchdog's, so the watchdog always fires first.

    The watchdog (runtime.watchdog) fires at collective_timeout_s and names the stalled rank and where; a
    group that timed out at the same moment would end the healthy rank first with gloo's rank-less error
    (seen with the side groups at collective_timeout_s: a rank stopped with SIGSTOP mid-run, 2 of 3 trials).
    """
    return 2 * collective_timeout_s + 10


def add_groups(state: DistState, collective_timeout_s: float) -> None:
    """The gloo side groups: control traffic (preemption flag, checkpoint barriers) and DCP's collectives."""
    timeout = datetime.timedelta(seconds=backstop_s(collective_timeout_s))
    state.side_group = dist.new_group(backend="gloo", timeout=timeout)
    state.ckpt_group = dist.new_group(backend="gloo", timeout=timeout)


def barrier(state: DistState) -> None:
    if state.distributed:
        dist.barrier(group=state.side_group)


def all_reduce_sum(state: DistState, t: torch.Tensor) -> torch.Tensor:
    if state.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(state: DistState, t: torch.Tensor) -> torch.Tensor:
    if state.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def broadcast_object(state: DistState, obj):
    if not state.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=state.side_group)
    return box[0]


def first_error(state: DistState, msg: Optional[str]) -> Optional[str]:
    """The same verdict on every rank: the lowest rank's error message (prefixed ``rank N:`` when it is not
    rank 0), or None when no rank has one. A collective over the side group."""
    if not state.distributed:
        return msg
    out: list = [None] * state.world_size
    dist.all_gather_object(out, msg, group=state.side_group)
    for rank, m in enumerate(out):
        if m:
            return m if rank == 0 else f"rank {rank}: {m}"
    return None


def teardown(state: Optional[DistState]) -> None:
    if state is not None and state.distributed and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as e:  # teardown must not mask the run's real exit code
            log.debug("destroy_process_group failed: %s", e)


def clean_exit(code: int) -> None:
    """Flush and leave without running interpreter finalizers.

    gloo threads owned by the DDP reducer outlive destroy_process_group() and abort the process at
    interpreter exit ("terminate called without an active exception"), which fails the torchrun job
    after the work is done (../shared/PLATFORM.md: 5/40 runs; 0/55 with destroy + flush + os._exit).
    See https://github.com/pytorch/pytorch/issues/75097 for the class of problem.
    """
    for h in logging.getLogger().handlers + log.handlers:
        try:
            h.flush()
        except Exception:
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def all_true(state: DistState, local: bool) -> bool:
    """Collective AND of a flag over the side group (control traffic, never the training group)."""
    if not state.distributed:
        return local
    t = torch.tensor([1 if local else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=state.side_group)
    return bool(t.item())


def all_gather_object(state: DistState, obj) -> list:
    """Every rank's ``obj`` in rank order (on the side group, so it never interleaves with training)."""
    if not state.distributed:
        return [obj]
    out = [None] * state.world_size
    dist.all_gather_object(out, obj, group=state.side_group)
    return out

"""Mode + cluster description -> the exact command that starts the workers, and the variables it adds.

Only this module knows how each mode starts its processes:

==========  ==========================================================================================
single      ``python -m trainer train ... train.strategy=single``: one process, no torchrun
dp          one process as well; nn.DataParallel inside the trainer spreads a batch over the local GPUs
ddp, fsdp   ``torchrun``: ``--standalone`` on one node (a free port, never a fixed one), c10d rendezvous
            (``--rdzv-backend=c10d --rdzv-endpoint=HOST:PORT --rdzv-id=ID``) across nodes
accelerate  ``accelerate launch --multi_gpu`` (gloo on a CPU; ``--cpu`` would silently start ONE process,
            ../shared/PLATFORM.md); ``--num_processes 1`` when one process is all there is
==========  ==========================================================================================

Inside torchrun already (the ``torchrun`` row of :mod:`launch.cluster`) every mode runs the trainer directly:
a second torchrun under the first would multiply the processes.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from launch.cluster import Cluster, split_endpoint
from launch.gpus import resolve_nproc

MODES = ("single", "dp", "ddp", "fsdp", "accelerate")

# With the rendezvous TCPStore shared between torchrun's agent and the workers (the default since torch 2.4,
# https://github.com/pytorch/pytorch/pull/128096), restarted workers reach a stale store address: measured here,
# 1 success in 7 restarts without this variable and 12 in 12 with it (../shared/PLATFORM.md;
# https://github.com/pytorch/pytorch/issues/135712).
NO_SHARED_STORE = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"

# Placeholders in the dry-run text for values created when the job starts.
FRESH_DIR = '"$(mktemp -d)"'


class UsageError(ValueError):
    """A mode, flag or override that contradicts itself; one line, exit code 2."""


@dataclass(frozen=True)
class Plan:
    """How to start the job: ``argv`` as a user would type it, plus the variables the launcher adds.

    kind: ``process`` runs argv as a child; ``torchrun`` and ``accelerate`` run that tool in-process
    (argv[0] is only its name) so that the workers' own exit codes are not collapsed into 1.
    """

    kind: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    fresh_dirs: tuple[str, ...] = ()  # env names to point at new temp dirs at launch (shown as mktemp -d)
    nnodes: int = 1
    nproc_per_node: int = 1
    summary: str = ""

    @property
    def tool_args(self) -> list[str]:
        """The arguments after the tool's name (``accelerate launch`` is a two-word name)."""
        return self.argv[2:] if self.kind == "accelerate" else self.argv[1:]

    def shell(self) -> str:
        """Copy-paste text: ``export`` lines for the added variables, then the command."""
        lines = [f"# {self.summary}"] if self.summary else []
        lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]
        lines += [f"export {k}={FRESH_DIR}" for k in self.fresh_dirs]
        lines.append(shlex.join(self.argv))
        return "\n".join(lines)


def usable_cpus() -> int:
    """CPUs this process may run on (a container's cpuset, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_args(entry: str, config: str | None, overrides: Sequence[str], mode: str) -> list[str]:
    """The trainer's own command line (after ``python``); the mode is passed as train.strategy, last.

    Without a config file the trainer starts from its defaults plus the overrides.
    """
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{item!r}: overrides are KEY=VALUE, e.g. train.max_steps=100")
        if key.strip() == "train.strategy" and value.strip() not in (mode, "auto"):
            raise UsageError(f"{item} contradicts the launch mode {mode!r}; drop the override")
    return ["-m", entry, "train", *(["-c", config] if config else []), *overrides, f"train.strategy={mode}"]


def build(mode: str, cluster: Cluster, config: str | None, overrides: Sequence[str] = (), *, entry: str = "trainer",
          local_addr: str | None = None, env: Mapping[str, str] | None = None,
          gpus: Callable[[], int] | None = None, cpus: int | None = None) -> Plan:
    """The plan for ``mode`` on ``cluster``; pure apart from GPU detection (injectable as ``gpus``)."""
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}: expected one of {', '.join(MODES)}")
    env = os.environ if env is None else env
    args = worker_args(entry, config, overrides, mode)
    add: dict[str, str] = {}
    fresh = ["TRAINER_EXIT_DIR"]
    if cluster.in_torchrun:  # a torchrun worker already: the trainer reads torchrun's variables itself
        return Plan("process", [sys.executable, *args], add, tuple(fresh), cluster.nnodes, 1,
                    f"{mode}: inside torchrun ({cluster.origin('nnodes')}), the trainer runs directly")
    one_process = mode in ("single", "dp")
    if one_process:
        if cluster.nnodes > 1:
            raise UsageError(f"mode {mode} runs one process but the cluster has {cluster.nnodes} nodes "
                             f"({cluster.origin('nnodes')}); use ddp or fsdp")
        if cluster.nproc_per_node not in ("auto", 1):
            raise UsageError(f"mode {mode} runs one process; --nproc-per-node {cluster.nproc_per_node} "
                             f"({cluster.origin('nproc_per_node')}) needs ddp, fsdp or accelerate")
        if cluster.max_restarts:
            raise UsageError(f"mode {mode} has no restarts (max restarts {cluster.max_restarts} from "
                             f"{cluster.origin('max_restarts')}); torchrun restarts: ddp --nproc-per-node 1")
        nproc = 1
    else:
        nproc = resolve_nproc(cluster.nproc_per_node, env, gpus)
    if "OMP_NUM_THREADS" not in env:
        # torchrun sets 1 with >1 process per node (idle cores on a big machine) and nothing with 1: give each
        # process its share. Several agents on one host (tests) must set OMP_NUM_THREADS themselves.
        add["OMP_NUM_THREADS"] = str(max(1, (cpus or usable_cpus()) // nproc))
    if cluster.max_restarts > 0:
        add[NO_SHARED_STORE] = "1"
    where = f"{cluster.nnodes} node(s) x {nproc} process(es), node rank {cluster.node_rank}, from {cluster.source}"
    if one_process:
        return Plan("process", [sys.executable, *args], add, tuple(fresh), 1, 1, f"{mode}: {where}")
    if mode == "accelerate":
        if "HF_HOME" not in env:  # a stray ~/.cache/huggingface/accelerate/default_config.yaml must not steer us
            fresh.append("HF_HOME")
        return Plan("accelerate", ["accelerate", "launch", *_accelerate_args(cluster, nproc), *args],
                    add, tuple(fresh), cluster.nnodes, nproc, f"{mode}: {where}")
    return Plan("torchrun", ["torchrun", *_torchrun_args(cluster, nproc, local_addr), *args],
                add, tuple(fresh), cluster.nnodes, nproc, f"{mode}: {where}")


def _torchrun_args(c: Cluster, nproc: int, local_addr: str | None) -> list[str]:
    nnodes = f"{c.min_nnodes}:{c.nnodes}" if c.min_nnodes != c.nnodes else str(c.nnodes)
    out = [f"--nnodes={nnodes}", f"--nproc-per-node={nproc}", f"--max-restarts={c.max_restarts}"]
    if c.nnodes == 1 and c.min_nnodes == 1:
        return ["--standalone", *out]  # c10d on localhost:0 = a free port chosen by torchrun
    out += [f"--rdzv-backend={c.rdzv_backend}", f"--rdzv-endpoint={c.rdzv_endpoint}", f"--rdzv-id={c.rdzv_id}"]
    if c.rdzv_backend == "static":
        out.append(f"--node-rank={c.node_rank}")  # c10d assigns ranks itself and ignores --node-rank
    if local_addr:
        # Hosts that cannot resolve each other's names (network namespaces, some CNIs) need the address each
        # agent advertises, and the rendezvous host must know it is the host (../shared/PLATFORM.md).
        host, _ = split_endpoint(c.rdzv_endpoint or "", "--rdzv-endpoint")
        out += [f"--local-addr={local_addr}", f"--rdzv-conf=is_host={int(host == local_addr)}"]
    return out


def _accelerate_args(c: Cluster, nproc: int) -> list[str]:
    common = ["--mixed_precision", "no", "--dynamo_backend", "no"]  # the trainer owns precision and compile
    total = nproc * c.nnodes
    if total == 1:
        return ["--num_processes", "1", "--num_machines", "1", *common]
    out = ["--multi_gpu", "--num_processes", str(total), "--num_machines", str(c.nnodes)]
    if c.nnodes > 1:
        host, port = split_endpoint(c.rdzv_endpoint or "", "--rdzv-endpoint")
        out += ["--machine_rank", str(c.node_rank), "--main_process_ip", host, "--main_process_port", str(port)]
    else:
        out += ["--main_process_port", "0"]  # 0 = a free port, picked by accelerate
    if c.max_restarts:
        out += ["--max_restarts", str(c.max_restarts)]
    return [*out, *common]

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

from launch import addrs
from launch.cluster import Cluster, ClusterError, split_endpoint
from launch.gpus import NoGPU, resolve_nproc, usable_cpus

MODES = ("single", "dp", "ddp", "fsdp", "accelerate")

# With the rendezvous TCPStore shared between torchrun's agent and the workers (the default since torch 2.4,
# https://github.com/pytorch/pytorch/pull/128096), restarted workers reach a stale store address: measured
# here, 1 success in 7 restarts without this variable and 12 in 12 with it (../shared/PLATFORM.md;
# https://github.com/pytorch/pytorch/issues/135712).
NO_SHARED_STORE = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"

# Placeholders in the dry-run text for values created when the job starts.
FRESH_DIR = '"$(mktemp -d)"'

# dist.init_timeout_s when the trainer cannot be asked (launch/__main__.py asks `trainer check --json`);
# tests/unit/test_launch_cli.py keeps it equal to the trainer's default. It bounds torchrun's rendezvous too:
# join_timeout (how long the rendezvous waits for the peers) and read_timeout (a store client's wait).
DEFAULT_INIT_TIMEOUT_S = 300

# torchrun reads PET_<FLAG> as the default of each flag. The launcher decides these flags itself, and
# torchrun's parser, which runs in this process, must not trip over a value it already replaced: an elastic
# PyTorchJob's PET_STANDALONE="" makes it fail with int('') (elastic.go sets it empty). PET_RDZV_CONF is
# merged into the one --rdzv-conf that is passed (torchrun keeps only the last --rdzv-conf).
OWNED_PET = (
    "PET_NNODES",
    "PET_NPROC_PER_NODE",
    "PET_NODE_RANK",
    "PET_MASTER_ADDR",
    "PET_MASTER_PORT",
    "PET_RDZV_ENDPOINT",
    "PET_RDZV_BACKEND",
    "PET_RDZV_ID",
    "PET_RDZV_CONF",
    "PET_MAX_RESTARTS",
    "PET_STANDALONE",
    "PET_LOCAL_ADDR",
)


class UsageError(ValueError):
    """A mode, flag or override that contradicts itself; one line, exit code 2."""


def env_mode(env: Mapping[str, str]) -> tuple[str, str]:
    """(mode, where it came from): LAUNCH_MODE, which the container entrypoint, the rendered manifests and
    launch/slurm.sbatch (from MODE) start; ddp when unset. ``python -m launch env`` shows it."""
    mode = env.get("LAUNCH_MODE", "").strip()
    if not mode:
        return "ddp", "default"
    if mode not in MODES:
        raise UsageError(f"LAUNCH_MODE={mode!r}: expected one of {', '.join(MODES)}")
    return mode, "LAUNCH_MODE"


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
    unset: tuple[str, ...] = ()  # variables removed before the tool starts (PET_* values passed as flags)
    rdzv_endpoint: str | None = None  # HOST:PORT of a multi-node rendezvous, for the timeout message
    rdzv_timeout_s: int | None = None  # the join/read timeout passed to that rendezvous
    rdzv_client: bool = (
        False  # this node does not host the store: wait for it (bounded) before torchrun starts
    )

    @property
    def tool_args(self) -> list[str]:
        """The arguments after the tool's name (``accelerate launch`` is a two-word name)."""
        return self.argv[2:] if self.kind == "accelerate" else self.argv[1:]

    def shell(self) -> str:
        """Copy-paste text: ``export`` lines for the added variables, then the command."""
        lines = [f"# {self.summary}"] if self.summary else []
        lines += [f"unset {k}" for k in self.unset]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]
        lines += [f"export {k}={FRESH_DIR}" for k in self.fresh_dirs]
        lines.append(shlex.join(self.argv))
        return "\n".join(lines)


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


def build(
    mode: str,
    cluster: Cluster,
    config: str | None,
    overrides: Sequence[str] = (),
    *,
    entry: str = "trainer",
    local_addr: str | None = None,
    env: Mapping[str, str] | None = None,
    gpus: Callable[[], int] | None = None,
    cpus: int | None = None,
    init_timeout_s: float | None = None,
    local_addrs: Callable[[], set[str]] | None = None,
    route: Callable[[str], str | None] | None = None,
) -> Plan:
    """The plan for ``mode`` on ``cluster``; pure apart from GPU detection (injectable as ``gpus``) and, for a
    multi-node rendezvous whose host the source does not fix, the local interface addresses (``local_addrs``).

    ``local_addr`` (``--local-addr``, else LAUNCH_LOCAL_ADDR, else this machine's source address on the route
    to the endpoint: ``route``) is the address this node advertises to its peers; ``init_timeout_s``
    (dist.init_timeout_s) bounds the rendezvous.
    """
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}: expected one of {', '.join(MODES)}")
    env = os.environ if env is None else env
    local_addr = local_addr or env.get("LAUNCH_LOCAL_ADDR") or None
    args = worker_args(entry, config, overrides, mode)
    add: dict[str, str] = {}
    fresh = ["TRAINER_EXIT_DIR"]
    if cluster.in_torchrun:  # a torchrun worker already: the trainer reads torchrun's variables itself
        return Plan(
            "process",
            [sys.executable, *args],
            add,
            tuple(fresh),
            cluster.nnodes,
            1,
            f"{mode}: inside torchrun ({cluster.origin('nnodes')}), the trainer runs directly",
        )
    one_process = mode in ("single", "dp")
    if one_process:
        if cluster.nnodes > 1:
            raise UsageError(
                f"mode {mode} runs one process but the cluster has {cluster.nnodes} nodes "
                f"({cluster.origin('nnodes')}); use ddp or fsdp"
            )
        if cluster.nproc_per_node not in ("auto", 1):
            raise UsageError(
                f"mode {mode} runs one process; --nproc-per-node {cluster.nproc_per_node} "
                f"({cluster.origin('nproc_per_node')}) needs ddp, fsdp or accelerate"
            )
        if cluster.max_restarts:
            raise UsageError(
                f"mode {mode} has no restarts (max restarts {cluster.max_restarts} from "
                f"{cluster.origin('max_restarts')}); torchrun restarts: ddp --nproc-per-node 1"
            )
        nproc = 1
    else:
        try:
            nproc = resolve_nproc(cluster.nproc_per_node, env, gpus)
        except NoGPU:
            raise ClusterError(
                f"{cluster.origin('nproc_per_node')}=gpu: one process per GPU, but no GPU is visible "
                "here; use auto (1 process without GPUs) or a number"
            ) from None
    if "OMP_NUM_THREADS" not in env:
        # torchrun sets 1 with >1 process per node (idle cores on a big machine) and nothing with 1: give each
        # process its share. Several agents on one host (tests) must set OMP_NUM_THREADS themselves.
        add["OMP_NUM_THREADS"] = str(max(1, (cpus or usable_cpus()) // nproc))
    if cluster.max_restarts > 0:
        add[NO_SHARED_STORE] = "1"
    where = (
        f"{cluster.nnodes} node(s) x {nproc} process(es), node rank {cluster.node_rank}, "
        f"from {cluster.source}"
    )
    if one_process:
        return Plan("process", [sys.executable, *args], add, tuple(fresh), 1, 1, f"{mode}: {where}")
    unset = tuple(k for k in OWNED_PET if k in env)
    multi = not (cluster.nnodes == 1 and cluster.min_nnodes == 1)
    timeout = int(-(-float(init_timeout_s or DEFAULT_INIT_TIMEOUT_S) // 1))  # torchrun wants whole seconds
    rdzv = {"rdzv_endpoint": cluster.rdzv_endpoint, "rdzv_timeout_s": timeout} if multi else {}
    if mode == "accelerate":
        if (
            "HF_HOME" not in env
        ):  # a stray ~/.cache/huggingface/accelerate/default_config.yaml must not steer us
            fresh.append("HF_HOME")
        return Plan(
            "accelerate",
            ["accelerate", "launch", *_accelerate_args(cluster, nproc), *args],
            add,
            tuple(fresh),
            cluster.nnodes,
            nproc,
            f"{mode}: {where}",
            unset,
            **rdzv,
        )
    if not multi:  # standalone: torchrun's own rendezvous on localhost; leave PET_RDZV_CONF to it
        unset = tuple(k for k in unset if k != "PET_RDZV_CONF")
    is_host = hosts_store(cluster, local_addr, local_addrs or addrs.local_addresses) if multi else None
    if multi and not local_addr and cluster.rdzv_endpoint:
        # torchrun advertises socket.getfqdn() otherwise, and the rendezvous's rank 0 serves the workers'
        # store on it: on a node whose name resolves to another network (a management NIC, a namespace's own
        # hosts file) the peers cannot reach it. The route towards the endpoint is on the network the nodes
        # share.
        local_addr = (route or addrs.route_source)(
            split_endpoint(cluster.rdzv_endpoint, "--rdzv-endpoint")[0]
        )
    tr = _torchrun_args(cluster, nproc, local_addr, timeout, env.get("PET_RDZV_CONF", ""), is_host)
    return Plan(
        "torchrun",
        ["torchrun", *tr, *args],
        add,
        tuple(fresh),
        cluster.nnodes,
        nproc,
        f"{mode}: {where}",
        unset,
        **rdzv,
        rdzv_client=is_host is False,
    )


def hosts_store(c: Cluster, local_addr: str | None, local_addrs: Callable[[], set[str]]) -> bool | None:
    """Whether this node must host the c10d store: True, False, or None = let torchrun decide by host name.

    A source that fixes the endpoint to node rank 0 (:attr:`Cluster.rdzv_fixed`) decides whatever DNS says.
    Otherwise this node hosts when the endpoint resolves to one of its interface addresses (or
    ``local_addr``); a loopback endpoint stays torchrun's to decide (several agents on one machine).
    """
    if c.rdzv_backend != "c10d" or not c.rdzv_endpoint:
        return None
    if c.rdzv_fixed:
        return c.node_rank == 0
    host, _ = split_endpoint(c.rdzv_endpoint, "--rdzv-endpoint")
    mine = set(local_addrs()) | ({local_addr} if local_addr else set())
    return addrs.endpoint_is_local(host, mine)


def _rdzv_conf(pet_conf: str, ours: dict[str, str]) -> str:
    """One --rdzv-conf: PET_RDZV_CONF's keys (the controller's or the user's word) win over ours."""
    merged = dict(ours)
    for item in filter(None, (x.strip() for x in pet_conf.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ClusterError(f"PET_RDZV_CONF={pet_conf!r}: expected KEY=VALUE[,KEY=VALUE...]")
        merged[key.strip()] = value.strip()
    return ",".join(f"{k}={v}" for k, v in merged.items())


def _torchrun_args(
    c: Cluster, nproc: int, local_addr: str | None, timeout_s: int, pet_conf: str, is_host: bool | None
) -> list[str]:
    nnodes = f"{c.min_nnodes}:{c.nnodes}" if c.min_nnodes != c.nnodes else str(c.nnodes)
    out = [f"--nnodes={nnodes}", f"--nproc-per-node={nproc}", f"--max-restarts={c.max_restarts}"]
    if c.nnodes == 1 and c.min_nnodes == 1:
        return ["--standalone", *out]  # c10d on localhost:0 = a free port chosen by torchrun
    out += [
        f"--rdzv-backend={c.rdzv_backend}",
        f"--rdzv-endpoint={c.rdzv_endpoint}",
        f"--rdzv-id={c.rdzv_id}",
    ]
    if c.rdzv_backend == "static":
        out.append(f"--node-rank={c.node_rank}")  # c10d assigns ranks itself and ignores --node-rank
    # A TCPStore client retries its connection past read_timeout (measured: 11 s for 5 s, 21 s for 8 s;
    # torchrun's default is 60 s); half the timeout keeps a client that torchrun leaves to find the store near
    # the timeout. Clients the launcher knows of (is_host=0) wait for the store's port themselves first
    # (launch/runner.py).
    ours = {"join_timeout": str(timeout_s), "read_timeout": str(max(1, -(-timeout_s // 2)))}
    if is_host is not None:
        ours["is_host"] = str(int(is_host))
    if local_addr:
        out.append(f"--local-addr={local_addr}")  # the address this agent advertises (see build)
    out.append(f"--rdzv-conf={_rdzv_conf(pet_conf, ours)}")
    return out


def _accelerate_args(c: Cluster, nproc: int) -> list[str]:
    common = ["--mixed_precision", "no", "--dynamo_backend", "no"]  # the trainer owns precision and compile
    total = nproc * c.nnodes
    if total == 1:
        return ["--num_processes", "1", "--num_machines", "1", *common]
    out = ["--multi_gpu", "--num_processes", str(total), "--num_machines", str(c.nnodes)]
    if c.nnodes > 1:
        host, port = split_endpoint(c.rdzv_endpoint or "", "--rdzv-endpoint")
        out += [
            "--machine_rank",
            str(c.node_rank),
            "--main_process_ip",
            host,
            "--main_process_port",
            str(port),
        ]
    else:
        out += ["--main_process_port", "0"]  # 0 = a free port, picked by accelerate
    if c.max_restarts:
        out += ["--max_restarts", str(c.max_restarts)]
    return [*out, *common]

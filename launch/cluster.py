"""The cluster environment, read through one table, as one normalized :class:`Cluster`.

Every scheduler names the same few facts differently, and some reuse a name for another fact: ``RANK`` is a
*process* rank under torchrun but a *node* rank in a Kubeflow PyTorchJob v1 pod. Each row of :data:`ROWS` says
how to recognise one environment and where its facts live; the first row that matches wins, CLI flags override
it, and :func:`resolve` validates the result once. A contradiction is a :class:`ClusterError` whose one line
names the variables involved (the launcher turns it into exit code 2).

Rows, most specific first:

=================  =========================================================================================
torchrun           already inside torchrun: LOCAL_RANK, LOCAL_WORLD_SIZE, RANK, WORLD_SIZE, GROUP_RANK,
                   MASTER_ADDR/PORT, TORCHELASTIC_RESTART_COUNT/MAX_RESTARTS/RUN_ID (the trainer runs
                   directly)
pytorchjob-v1      Kubeflow PyTorchJob v1 (and Volcano's pytorch plugin, which sets the same four):
                   MASTER_ADDR/PORT, RANK = node rank, WORLD_SIZE = replicas x nprocPerNode (replicas when
                   nprocPerNode is not an integer), PET_NPROC_PER_NODE, from operator v1.7
                   PET_NNODES/PET_NODE_RANK; elastic: PET_RDZV_ENDPOINT/BACKEND/CONF, PET_MAX_RESTARTS,
                   PET_STANDALONE. Told apart from torchrun by the absence of LOCAL_RANK.
trainer-v2         Kubeflow Trainer v2 (TrainJob): PET_NNODES, PET_NPROC_PER_NODE (an integer, auto, cpu or
                   gpu), PET_NODE_RANK, PET_MASTER_ADDR (``<job>-node-0-0.<job>``), PET_MASTER_PORT
torchrun-env       any other PET_* variable: torchrun's own environment defaults for its flags
jobset             JobSet, which injects nothing; expose its annotations with the downward API (below)
indexed-job        Kubernetes Indexed Job: JOB_COMPLETION_INDEX (set by Kubernetes) + LAUNCH_NNODES and
                   LAUNCH_MASTER_ADDR (or MASTER_ADDR), LAUNCH_MASTER_PORT (or MASTER_PORT, default 29500)
slurm              SLURM_STEP_NUM_NODES/SLURM_NNODES, SLURM_NODEID, SLURM_PROCID, SLURM_NTASKS, the master =
                   the first host of SLURM_STEP_NODELIST, else SLURM_NODELIST, else SLURM_JOB_NODELIST (a step
                   may run on part of the allocation), SLURM_JOB_ID (rendezvous id); one launcher per node
                   (launch/slurm.sbatch)
local              nothing found: one node on this machine
=================  =========================================================================================

**No silent single node.** A world that *looks* distributed but names no node count is refused (exit 2, naming
the missing variable) instead of training alone: an Indexed Job or JobSet pod without LAUNCH_NNODES (JobSet's
own PyTorch example sets MASTER_ADDR and RANK = completion index, and no WORLD_SIZE), MASTER_ADDR or
WORLD_SIZE > 1 with nothing else, and Open MPI / PMI / PMIx worlds (OMPI_COMM_WORLD_SIZE, PMI_SIZE,
PMIX_RANK), whose ranks are processes, not nodes. ``--nnodes`` on the command line settles it.

**Who hosts the c10d store.** torchrun decides by comparing the endpoint with this machine's host name and the
addresses *that name* resolves to, so on a multi-homed node with the endpoint on a second interface nobody
hosts it. Rows whose endpoint is node 0 by the controller's contract (PyTorchJob's master, Trainer v2, Indexed
Job, JobSet, Slurm's first host, PET_MASTER_ADDR) say so in :attr:`Cluster.rdzv_fixed`; :mod:`launch.modes`
then tells node 0 it hosts the store and the others that they do not.

JobSet downward-API snippet (the pod's hostname is ``<jobset>-<replicatedJob>-<jobIndex>-<podIndex>``,
resolvable as ``<hostname>.<subdomain>``; the subdomain defaults to the JobSet name)::

    env:
    - {name: JOBSET_NAME,
       valueFrom: {fieldRef: {fieldPath: "metadata.annotations['jobset.sigs.k8s.io/jobset-name']"}}}
    - {name: JOBSET_REPLICATED_JOB_NAME,
       valueFrom: {fieldRef: {fieldPath: "metadata.annotations['jobset.sigs.k8s.io/replicatedjob-name']"}}}
    - {name: JOBSET_JOB_INDEX,
       valueFrom: {fieldRef: {fieldPath: "metadata.annotations['jobset.sigs.k8s.io/job-index']"}}}
    - {name: JOB_COMPLETION_INDEX,
       valueFrom: {fieldRef: {fieldPath: "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}
    - {name: LAUNCH_NNODES, value: "4"}        # replicas x parallelism of the replicated job
    - {name: LAUNCH_PODS_PER_JOB, value: "1"}  # parallelism; node rank = job index x this + completion index

The master is then ``<jobset>-<replicatedJob>-0-0.<JOBSET_SUBDOMAIN or jobset>`` unless LAUNCH_MASTER_ADDR is
set.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from launch import nodelist

DEFAULT_MASTER_PORT = 29500  # torchrun's default for --master-port
DEFAULT_RDZV_PORT = 29400  # torchrun's default port when --rdzv-endpoint has none
NPROC_WORDS = ("auto", "gpu", "cpu")  # torchrun's words for --nproc-per-node (Trainer v2 sets any of them)


class ClusterError(ValueError):
    """A missing, malformed or contradictory cluster variable; the message is one line naming it."""


@dataclass(frozen=True)
class Cluster:
    """What the launcher needs to know about where it runs; produced only by :func:`resolve`."""

    source: str = "local"  # the table row that matched
    nnodes: int = 1  # nodes (the maximum for an elastic min:max range)
    min_nnodes: int = 1  # elastic lower bound; equals nnodes unless a range was given
    node_rank: int = 0  # this node's index, 0..nnodes-1
    nproc_per_node: int | str = "auto"  # an int; auto = one per visible GPU (1 without); gpu, cpu: torchrun's
    master_addr: str | None = None  # host of node 0 (rendezvous host unless rdzv_endpoint says otherwise)
    master_port: int | None = None
    rdzv_endpoint: str | None = None  # HOST:PORT of the c10d rendezvous; derived from master_* when unset
    rdzv_backend: str = "c10d"
    rdzv_id: str = "launch"  # must be equal on every node of one job
    max_restarts: int = 0  # torchrun --max-restarts
    restart_count: int = 0  # restarts so far (only known inside torchrun)
    in_torchrun: bool = False  # we are a torchrun worker already: start the trainer directly
    rdzv_fixed: bool = False  # the endpoint is node rank 0's by the source's contract: node 0 hosts the store
    origins: tuple = dataclasses.field(default=(), compare=False)  # (field, variable or flag) pairs

    def origin(self, name: str) -> str:
        """The variable or flag a field came from, for error messages."""
        return dict(self.origins).get(name, "default")

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["origins"] = dict(self.origins)
        return d


# ----------------------------------------------------------------------------- value parsing


class _Raw(dict):
    """field -> (text, variable); what a row read, before parsing."""

    def put(self, env: Mapping[str, str], name: str, *variables: str) -> None:
        for var in variables:
            if env.get(var, "") != "":
                self[name] = (env[var], var)
                return


def _int(text: str, var: str, lo: int = 0) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ClusterError(f"{var}={text!r}: expected an integer") from None
    if value < lo:
        raise ClusterError(f"{var}={text!r}: expected an integer >= {lo}")
    return value


def _port(text: str, var: str) -> int:
    value = _int(text, var, lo=1)
    if value > 65535:
        raise ClusterError(f"{var}={text!r}: a port is 1..65535")
    return value


def split_endpoint(text: str, var: str) -> tuple[str, int]:
    """'host:port' -> (host, port); a missing port is torchrun's default 29400."""
    host, sep, port = str(text).strip().rpartition(":")
    if not sep:
        host, port = port, str(DEFAULT_RDZV_PORT)
    if not host or "/" in host:
        raise ClusterError(f"{var}={text!r}: expected HOST:PORT")
    return host.strip("[]"), _port(port, var)


# ----------------------------------------------------------------------------- rows

PET_VARS = (
    "PET_NNODES",
    "PET_NPROC_PER_NODE",
    "PET_N_PROC_PER_NODE",
    "PET_NODE_RANK",
    "PET_MASTER_ADDR",
    "PET_MASTER_PORT",
    "PET_RDZV_ENDPOINT",
    "PET_RDZV_BACKEND",
    "PET_RDZV_ID",
    "PET_MAX_RESTARTS",
)


def _read_torchrun(env: Mapping[str, str]) -> _Raw:
    raw = _Raw()
    raw.put(env, "nproc_per_node", "LOCAL_WORLD_SIZE")
    raw.put(env, "master_addr", "MASTER_ADDR")
    raw.put(env, "master_port", "MASTER_PORT")
    raw.put(env, "rdzv_id", "TORCHELASTIC_RUN_ID")
    raw.put(env, "max_restarts", "TORCHELASTIC_MAX_RESTARTS")
    raw.put(env, "restart_count", "TORCHELASTIC_RESTART_COUNT")
    world = _int(env.get("WORLD_SIZE", "1"), "WORLD_SIZE", lo=1)
    local_world = _int(env.get("LOCAL_WORLD_SIZE", "1"), "LOCAL_WORLD_SIZE", lo=1)
    rank = _int(env.get("RANK", "0"), "RANK")
    local_rank = _int(env["LOCAL_RANK"], "LOCAL_RANK")
    if rank >= world:
        raise ClusterError(f"RANK={rank} is outside the world of WORLD_SIZE={world}")
    if local_rank >= local_world:
        raise ClusterError(f"LOCAL_RANK={local_rank} is outside LOCAL_WORLD_SIZE={local_world}")
    if world % local_world:
        raise ClusterError(f"WORLD_SIZE={world} is not a multiple of LOCAL_WORLD_SIZE={local_world}")
    raw["nnodes"] = (str(world // local_world), "WORLD_SIZE/LOCAL_WORLD_SIZE")
    raw["node_rank"] = (
        env.get("GROUP_RANK") or str(rank // local_world),
        "GROUP_RANK" if env.get("GROUP_RANK") else "RANK/LOCAL_WORLD_SIZE",
    )
    raw["in_torchrun"] = ("1", "LOCAL_RANK")
    return raw


def _read_pytorchjob(env: Mapping[str, str]) -> _Raw:
    raw = _read_pet(env)
    raw.put(env, "master_addr", "MASTER_ADDR")
    raw.put(env, "master_port", "MASTER_PORT")
    if "node_rank" not in raw:
        raw.put(env, "node_rank", "RANK")  # v1 RANK is the replica (node) index: master 0, worker i -> i+1
    if "nnodes" not in raw:
        world = _int(env["WORLD_SIZE"], "WORLD_SIZE", lo=1)
        nproc = env.get("PET_NPROC_PER_NODE", "")
        if nproc.isdigit() and int(nproc) > 0:
            if world % int(nproc):
                raise ClusterError(f"WORLD_SIZE={world} is not a multiple of PET_NPROC_PER_NODE={nproc}")
            raw["nnodes"] = (str(world // int(nproc)), "WORLD_SIZE/PET_NPROC_PER_NODE")
        else:
            raw["nnodes"] = (str(world), "WORLD_SIZE")
    # MASTER_ADDR is the master replica, RANK 0 (envvar.go); an elastic job's PET_RDZV_ENDPOINT is worker 0
    # and its ranks come from the rendezvous, so only the first case says who hosts.
    if "rdzv_endpoint" not in raw:
        raw["rdzv_fixed"] = ("1", "MASTER_ADDR")
    else:
        raw.pop("rdzv_fixed", None)
    return raw


def _read_pet(env: Mapping[str, str]) -> _Raw:
    raw = _Raw()
    for name in (
        "nnodes",
        "nproc_per_node",
        "node_rank",
        "master_addr",
        "master_port",
        "rdzv_endpoint",
        "rdzv_backend",
        "rdzv_id",
        "max_restarts",
    ):
        raw.put(env, name, "PET_" + name.upper())
    raw.put(env, "nproc_per_node", "PET_NPROC_PER_NODE", "PET_N_PROC_PER_NODE")  # elastic.go before v1.7
    if "master_addr" in raw and "rdzv_endpoint" not in raw:
        raw["rdzv_fixed"] = ("1", "PET_MASTER_ADDR")  # torchrun's --master-addr is node rank 0's address
    return raw


def _read_jobset(env: Mapping[str, str]) -> _Raw:
    raw = _Raw()
    name = env.get("JOBSET_NAME", "")
    rjob = env.get("JOBSET_REPLICATED_JOB_NAME", "")
    job_index = _int(env.get("JOBSET_JOB_INDEX", "0"), "JOBSET_JOB_INDEX")
    pod_index = _int(env.get("JOB_COMPLETION_INDEX", "0"), "JOB_COMPLETION_INDEX")
    per_job = _int(env.get("LAUNCH_PODS_PER_JOB", "1"), "LAUNCH_PODS_PER_JOB", lo=1)
    if pod_index >= per_job:
        raise ClusterError(f"JOB_COMPLETION_INDEX={pod_index} is outside LAUNCH_PODS_PER_JOB={per_job}")
    raw["node_rank"] = (
        str(job_index * per_job + pod_index),
        "JOBSET_JOB_INDEX*LAUNCH_PODS_PER_JOB+JOB_COMPLETION_INDEX",
    )
    raw.put(env, "nnodes", "LAUNCH_NNODES")
    raw.put(env, "master_port", "LAUNCH_MASTER_PORT", "MASTER_PORT")
    raw.put(env, "master_addr", "LAUNCH_MASTER_ADDR", "MASTER_ADDR")
    if "master_addr" not in raw and name and rjob:
        sub = env.get("JOBSET_SUBDOMAIN") or name
        raw["master_addr"] = (f"{name}-{rjob}-0-0.{sub}", "JOBSET_NAME/JOBSET_REPLICATED_JOB_NAME")
    if name:
        raw["rdzv_id"] = (name, "JOBSET_NAME")
    raw["rdzv_fixed"] = ("1", "JOBSET_JOB_INDEX")
    return raw


def _read_indexed_job(env: Mapping[str, str]) -> _Raw:
    raw = _Raw()
    raw.put(env, "node_rank", "JOB_COMPLETION_INDEX")
    raw.put(env, "nnodes", "LAUNCH_NNODES")
    raw.put(env, "master_addr", "LAUNCH_MASTER_ADDR", "MASTER_ADDR")
    raw.put(env, "master_port", "LAUNCH_MASTER_PORT", "MASTER_PORT")
    raw["rdzv_fixed"] = ("1", "JOB_COMPLETION_INDEX")  # the master is pod 0 (train-0.train when rendered)
    return raw


def expand_nodelist(text: str, var: str = "SLURM_JOB_NODELIST") -> list[str]:
    """Slurm's compressed host list as names (launch/nodelist.py); a malformed one names its variable."""
    try:
        return nodelist.expand(text)
    except ValueError as e:
        raise ClusterError(f"{var}={text!r}: {e}") from None


# Where a step's node list lives, most specific first: inside ``srun`` SLURM_STEP_NODELIST (and
# SLURM_NODELIST) are the step's nodes, SLURM_JOB_NODELIST the whole allocation (src/common/env.c);
# SLURM_NODEID counts the step's nodes.
SLURM_NODELISTS = ("SLURM_STEP_NODELIST", "SLURM_NODELIST", "SLURM_JOB_NODELIST")


def _read_slurm(env: Mapping[str, str]) -> _Raw:
    raw = _Raw()
    raw.put(env, "nnodes", "SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES")
    raw.put(env, "node_rank", "SLURM_NODEID")
    raw.put(env, "rdzv_id", "SLURM_JOB_ID", "SLURM_JOBID")
    raw.put(env, "master_port", "MASTER_PORT")
    raw.put(env, "master_addr", "LAUNCH_MASTER_ADDR", "MASTER_ADDR")
    if "master_addr" not in raw:
        var = next((v for v in SLURM_NODELISTS if env.get(v)), None)
        hosts = expand_nodelist(env[var], var) if var else []
        if hosts:
            raw["master_addr"] = (hosts[0], var)
            raw["rdzv_fixed"] = ("1", var)  # SLURM_NODEID 0 is the first host of the step's list
    nnodes = _int(raw["nnodes"][0], raw["nnodes"][1], lo=1) if "nnodes" in raw else 1
    if env.get("SLURM_NTASKS"):
        ntasks = _int(env["SLURM_NTASKS"], "SLURM_NTASKS", lo=1)
        if ntasks > nnodes:
            raise ClusterError(
                f"SLURM_NTASKS={ntasks} > {raw['nnodes'][1] if 'nnodes' in raw else 'SLURM_NNODES'}"
                f"={nnodes}: run one launcher per node (srun --ntasks-per-node=1); it starts the "
                "processes of its node itself"
            )
        if env.get("SLURM_PROCID") and _int(env["SLURM_PROCID"], "SLURM_PROCID") >= ntasks:
            raise ClusterError(f"SLURM_PROCID={env['SLURM_PROCID']} is outside SLURM_NTASKS={ntasks}")
    return raw


# Process worlds of MPI launchers: their ranks are processes, and nothing in them says how many nodes
# there are.
MPI_SIZES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
MPI_RANKS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")


def _no_silent_single_node(source: str, env: Mapping[str, str], raw: _Raw) -> None:
    """Refuse a world that looks distributed but names no node count (one line: the variable and the fix)."""
    fix = "or pass --nnodes N (--nnodes 1 to train alone)"
    if source == "indexed-job" and "nnodes" not in raw:
        extra = f", MASTER_ADDR={env['MASTER_ADDR']}" if env.get("MASTER_ADDR") else ""
        raise ClusterError(
            f"JOB_COMPLETION_INDEX={env['JOB_COMPLETION_INDEX']}{extra} (a Kubernetes Indexed Job or "
            f"JobSet pod) but no node count: set LAUNCH_NNODES to the Job's completions, {fix}"
        )
    if source == "jobset" and "nnodes" not in raw:
        raise ClusterError(
            f"JOBSET_NAME={env.get('JOBSET_NAME', '')!r} but no node count: set LAUNCH_NNODES to "
            f"replicas x parallelism, {fix}"
        )
    if source != "local":
        return
    for var in MPI_SIZES:
        if env.get(var, "").strip() not in ("", "1", "0"):
            raise ClusterError(
                f"{var}={env[var]}: an MPI world of processes, which the launcher does not read: start "
                "one launcher per node (e.g. mpirun --map-by ppr:1:node) with --nnodes N --node-rank R "
                "--rdzv-endpoint HOST:PORT"
            )
    if env.get("PMIX_RANK", "") != "" and env.get("OMPI_COMM_WORLD_SIZE", "").strip() != "1":
        raise ClusterError(
            f"PMIX_RANK={env['PMIX_RANK']}: a PMIx world of processes, which the launcher does not "
            "read: start one launcher per node with --nnodes N --node-rank R --rdzv-endpoint HOST:PORT"
        )
    if env.get("MASTER_ADDR", "").strip() not in (
        "",
        "localhost",
        "127.0.0.1",
        "::1",
    ):  # loopback: one machine
        raise ClusterError(
            f"MASTER_ADDR={env['MASTER_ADDR']} is set but no node count (WORLD_SIZE with RANK, "
            f"PET_NNODES or LAUNCH_NNODES): set one, {fix}, or unset MASTER_ADDR"
        )
    if env.get("WORLD_SIZE", "").strip() not in ("", "1"):
        raise ClusterError(
            f"WORLD_SIZE={env['WORLD_SIZE']} is set without MASTER_ADDR and RANK: set them, {fix}"
        )


@dataclass(frozen=True)
class Row:
    source: str
    detect: Callable[[Mapping[str, str]], bool]
    read: Callable[[Mapping[str, str]], _Raw]


ROWS: tuple[Row, ...] = (
    Row(
        "torchrun",
        lambda e: "LOCAL_RANK" in e and ("LOCAL_WORLD_SIZE" in e or "TORCHELASTIC_RUN_ID" in e),
        _read_torchrun,
    ),
    Row(
        "pytorchjob-v1",
        lambda e: all(k in e for k in ("MASTER_ADDR", "RANK", "WORLD_SIZE")) and "LOCAL_RANK" not in e,
        _read_pytorchjob,
    ),
    Row(
        "trainer-v2",
        lambda e: all(k in e for k in ("PET_NNODES", "PET_NODE_RANK", "PET_MASTER_ADDR")),
        _read_pet,
    ),
    Row("torchrun-env", lambda e: any(k in e for k in PET_VARS), _read_pet),
    Row("jobset", lambda e: "JOBSET_NAME" in e or "JOBSET_JOB_INDEX" in e, _read_jobset),
    Row("indexed-job", lambda e: "JOB_COMPLETION_INDEX" in e, _read_indexed_job),
    Row("slurm", lambda e: ("SLURM_JOB_ID" in e or "SLURM_JOBID" in e) and "SLURM_NODEID" in e, _read_slurm),
    Row("local", lambda e: True, lambda e: _Raw()),
)

# CLI flag for each overridable field (flags win over every row).
FLAGS = {
    "nnodes": "--nnodes",
    "node_rank": "--node-rank",
    "nproc_per_node": "--nproc-per-node",
    "rdzv_endpoint": "--rdzv-endpoint",
    "rdzv_id": "--rdzv-id",
    "max_restarts": "--max-restarts",
}


def detect(env: Mapping[str, str]) -> Row:
    return next(row for row in ROWS if row.detect(env))


def resolve(env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> Cluster:
    """Read ``env`` through the first matching row, apply non-None ``overrides`` (CLI flags), validate."""
    env = os.environ if env is None else env
    row = detect(env)
    raw = row.read(env)
    if (overrides or {}).get("nnodes") is None:
        _no_silent_single_node(row.source, env, raw)
    if (overrides or {}).get("rdzv_endpoint") is not None:  # a new endpoint also names a new node 0
        raw.pop("master_addr", None)
        raw.pop("master_port", None)
        raw.pop("rdzv_fixed", None)  # and nothing says that it is node rank 0's
    for name, value in (overrides or {}).items():
        if value is not None:
            raw[name] = (str(value), FLAGS.get(name, "--" + name.replace("_", "-")))
    return _build(row.source, raw)


def _build(source: str, raw: _Raw) -> Cluster:
    f: dict[str, Any] = {"source": source}
    var = {name: v for name, (_, v) in raw.items()}
    if "nnodes" in raw:
        text, v = raw["nnodes"]
        lo, _, hi = str(text).partition(":")
        f["min_nnodes"], f["nnodes"] = _int(lo, v, lo=1), _int(hi or lo, v, lo=1)
        if f["min_nnodes"] > f["nnodes"]:
            raise ClusterError(f"{v}={text!r}: minimum nodes above maximum")
    for name in ("node_rank", "max_restarts", "restart_count"):
        if name in raw:
            f[name] = _int(raw[name][0], raw[name][1])
    if "nproc_per_node" in raw:
        text, v = raw["nproc_per_node"]
        word = text.strip().lower()
        f["nproc_per_node"] = word if word in NPROC_WORDS else _int(text, v, lo=1)
    if "master_port" in raw:
        f["master_port"] = _port(*raw["master_port"])
    for name in ("master_addr", "rdzv_backend", "rdzv_id"):
        if name in raw:
            f[name] = raw[name][0].strip()
    f["in_torchrun"] = "in_torchrun" in raw
    f["rdzv_fixed"] = "rdzv_fixed" in raw
    if "rdzv_endpoint" in raw:
        host, port = split_endpoint(*raw["rdzv_endpoint"])
        f["rdzv_endpoint"] = f"{host}:{port}"
        if "master_addr" not in f:  # the endpoint names node 0 for the c10d backend
            f["master_addr"], f["master_port"] = host, port
            var.setdefault("master_addr", raw["rdzv_endpoint"][1])
    elif f.get("master_addr"):
        f.setdefault("master_port", DEFAULT_MASTER_PORT)
        f["rdzv_endpoint"] = f"{f['master_addr']}:{f['master_port']}"
    c = Cluster(**f, origins=tuple(sorted(var.items())))
    _validate(c)
    return c


def _validate(c: Cluster) -> None:
    if not 0 <= c.node_rank < c.nnodes:
        raise ClusterError(
            f"node rank {c.node_rank} ({c.origin('node_rank')}) is outside a world of "
            f"{c.nnodes} node(s) ({c.origin('nnodes')})"
        )
    if c.nnodes > 1 and not c.rdzv_endpoint and not c.in_torchrun:
        raise ClusterError(
            f"{c.nnodes} nodes ({c.origin('nnodes')}) but no master address: set MASTER_ADDR "
            "(or LAUNCH_MASTER_ADDR) or pass --rdzv-endpoint HOST:PORT"
        )
    if c.rdzv_backend not in ("c10d", "static", "etcd", "etcd-v2"):
        raise ClusterError(
            f"{c.origin('rdzv_backend')}={c.rdzv_backend!r}: expected c10d, static, etcd or etcd-v2"
        )

"""``python -m launch doctor``: find what would break a job before it starts, and say how to fix it.

Each check returns ``Check(name, status, message, fix)`` with status ``ok``, ``warn`` or ``fail``. The report
is human-readable by default and JSON with ``--json``. **Exit code: 0 when every check is ok or warn, 2 (the
"fix the config or the environment" code) when any fails.**

The *fast* subset (cluster variables, processes x threads against the usable cores (a warning: an
oversubscribed node runs, slowly), /dev/shm, run directory, shared storage, the interfaces named in
NCCL_SOCKET_IFNAME/GLOO_SOCKET_IFNAME) imports neither torch nor the trainer, takes well under a second, and
runs before every launch unless ``--no-preflight``. The full report adds that ``checkpoint.dir``, when it is
an ``s3://`` URL, is reachable and writable (launch/bucket.py), CPU/RAM, GPUs and their memory, CUDA and NCCL
versions (torch imported only for these), and a TCP connect to the rendezvous endpoint (nodes other than 0,
which hosts it).

/dev/shm. DataLoader workers hand batches to the trainer through shared memory, and NCCL moves data between
the processes of a node through it; Docker's default is 64 MiB. The need checked is::

    need = procs_per_node x num_workers x prefetch_factor x (batch_size / world_size) x sample_bytes x 2
           + 256 MiB when procs_per_node > 1 (NCCL's intra-node buffers)

(x 2: the batch being filled plus the one being consumed). ``sample_bytes`` comes from the data section
(digits 264 B, synthetic num_features x 4 + 8, text/tokens block_size x 16) or, for any other dataset, a
224x224x3 float32 image (602,112 B); ``--sample-bytes`` overrides it. Without a config the need is a 1 GiB
floor. Free space below the need fails; a total below 1 GiB warns.

Shared run directory (more than one node). Heuristic, not a handshake: the filesystem type of the mount
holding run.dir must be a network or cluster filesystem (nfs, cifs, ceph, lustre, gpfs, beegfs, glusterfs,
fuse.*, ...); a local one (ext4, xfs, overlay, tmpfs) warns, because node 1 would not see node 0's checkpoints
after a restart.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

from launch import bucket
from launch.cluster import Cluster, ClusterError, resolve, split_endpoint
from launch.gpus import NoGPU, resolve_nproc, usable_cpus, visible_gpus

GiB = 1 << 30
MiB = 1 << 20
SHM_FLOOR = 1 * GiB
NCCL_SHM = 256 * MiB
IMAGE_SAMPLE_BYTES = 224 * 224 * 3 * 4
NETWORK_FS = {
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ceph",
    "cephfs",
    "lustre",
    "gpfs",
    "beegfs",
    "glusterfs",
    "wekafs",
    "panfs",
    "ocfs2",
    "gfs2",
    "9p",
    "orangefs",
    "juicefs",
    "alluxio",
    "efs",
}


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    message: str
    fix: str = ""


# ----------------------------------------------------------------------------- config (read, not imported)


def resolve_config(
    path: str | None,
    overrides: Sequence[str] = (),
    world_size: int | None = None,
    nproc_per_node: int | None = None,
    mode: str | None = None,
) -> tuple[dict | None, str | None]:
    """(the resolved config, None) or (None, the trainer's error), asked across the process boundary.

    ``python -m trainer check --json`` loads the recipe with the overrides exactly as a run would (defaults
    included) and prints it; it does not import torch (~0.15 s). (None, None) when there is nothing to read.
    Given the world size, the same call plans the device mesh (``parallel.*``): a mesh that does not fit is
    the error, and the config carries the plan as ``cfg["_mesh"]`` (see ``mesh_line``).
    """
    if not path and not overrides:
        return None, None
    # --no-imports: the values are what is read here (the launcher's config check runs the full check)
    sized = ["--world-size", str(world_size), "--nproc-per-node", str(nproc_per_node)] if world_size else []
    argv = [sys.executable, "-m", "trainer", "check", "--json", "--no-imports", *sized]
    argv += [*(["-c", path] if path else []), *overrides, *([f"train.strategy={mode}"] if mode else [])]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None, "python -m trainer check did not answer (is the trainer installed beside the launcher?)"
    if not answer.get("ok"):
        return None, answer.get("error", "invalid config")
    cfg = answer["config"]
    if "mesh" in answer:
        cfg["_mesh"] = answer["mesh"]
    return cfg, None


def mesh_line(cfg: dict) -> str:
    """The mesh the workers will build and how the batch splits over it, from ``resolve_config``."""
    m = cfg["_mesh"]
    b = m["batch"]
    return f"{m['text']}; batch {b['global']} = {b['world']} x micro {b['micro']} x accum {b['accum']}"


def _get(cfg: dict, key: str):
    """A dotted key of the resolved config (complete: the trainer filled in its defaults), or None."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def sample_bytes(cfg: dict) -> int:
    """A per-sample size estimate from the data section (see the module docstring)."""
    name = str(_get(cfg, "data.name"))
    if name == "digits":
        return 8 * 8 * 4 + 8
    if name.startswith("synthetic"):
        return int(_get(cfg, "data.num_features") or 0) * 4 + 8
    if name in ("text", "tokens"):
        return int(_get(cfg, "model.block_size") or 0) * 16
    return IMAGE_SAMPLE_BYTES


def shm_need(cfg: dict | None, nproc: int, world: int, sample: int | None = None) -> tuple[int, str]:
    """Bytes of /dev/shm this job needs, with the formula filled in."""
    if cfg is None:
        return SHM_FLOOR, "no config: 1 GiB floor"
    workers = int(_get(cfg, "data.num_workers") or 0)
    prefetch = int(_get(cfg, "data.prefetch_factor") or 0)
    batch = max(1, int(_get(cfg, "train.batch_size") or 1) // max(1, world))
    sample = sample or sample_bytes(cfg)
    need = nproc * workers * prefetch * batch * sample * 2 + (NCCL_SHM if nproc > 1 else 0)
    return need, (
        f"{nproc} proc x {workers} workers x prefetch {prefetch} x batch {batch} x {sample} B x 2"
        + (" + 256 MiB NCCL" if nproc > 1 else "")
    )


# ----------------------------------------------------------------------------- checks


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def check_cluster(env: Mapping[str, str], overrides: Mapping | None = None) -> tuple[Check, Cluster | None]:
    try:
        c = resolve(env, overrides)
    except ClusterError as e:
        return Check(
            "cluster", "fail", str(e), "fix the variables named, or override them with launch flags"
        ), None
    where = f"{c.source}: {c.nnodes} node(s), node rank {c.node_rank}, {c.nproc_per_node} proc(s)/node"
    return Check("cluster", "ok", where + (f", rendezvous {c.rdzv_endpoint}" if c.nnodes > 1 else "")), c


def check_shm(need: int, formula: str, path: str = "/dev/shm", statvfs: Callable = os.statvfs) -> Check:
    try:
        st = statvfs(path)
    except OSError as e:
        return Check("shm", "fail", f"{path}: {e.strerror}", "mount a tmpfs on /dev/shm")
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    fix = "docker run --ipc=host (or --shm-size=8g); Kubernetes: an emptyDir {medium: Memory} on /dev/shm"
    text = f"{path}: {_size(free)} free of {_size(total)}; need {_size(need)} ({formula})"
    if free < need:
        return Check("shm", "fail", text, fix + "; or fewer data.num_workers")
    if total < SHM_FLOOR:
        return Check("shm", "warn", text + "; below the 1 GiB floor for GPU jobs", fix)
    return Check("shm", "ok", text)


def _existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def check_run_dir(run_dir: str, min_free: int = GiB) -> Check:
    """Writable (by really creating a file: root ignores permission bits) with at least ``min_free`` bytes
    free."""
    base = _existing(run_dir)
    if not os.path.isdir(base):
        return Check("run_dir", "fail", f"{run_dir}: {base} is not a directory", "choose another run.dir")
    try:
        fd, probe = tempfile.mkstemp(prefix=".launch-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return Check(
            "run_dir",
            "fail",
            f"{run_dir}: cannot create files in {base} ({e.strerror})",
            "mount the run directory read-write, or set run.dir=PATH to a writable place",
        )
    free = shutil.disk_usage(base).free
    text = f"{run_dir}: writable, {_size(free)} free"
    if free < min_free:
        return Check(
            "run_dir",
            "fail",
            f"{text}; need {_size(min_free)}",
            "free disk space or point run.dir at a larger volume (threshold: --min-free-gb)",
        )
    return Check("run_dir", "ok", text)


def check_shared(run_dir: str, nnodes: int, partitions: Callable | None = None) -> Check:
    if nnodes <= 1:
        return Check("shared_dir", "ok", "one node: no shared storage needed")
    import psutil

    base = _existing(run_dir)
    parts = (partitions or (lambda: psutil.disk_partitions(all=True)))()
    mounts = [p for p in parts if base == p.mountpoint or base.startswith(p.mountpoint.rstrip("/") + "/")]
    fstype = max(mounts, key=lambda p: len(p.mountpoint)).fstype if mounts else "unknown"
    if fstype in NETWORK_FS or fstype.startswith("fuse") or fstype.startswith("nfs"):
        return Check("shared_dir", "ok", f"{run_dir} is on {fstype}")
    return Check(
        "shared_dir",
        "warn",
        f"{run_dir} is on {fstype}, which looks local to this node",
        "put run.dir on storage every node mounts (NFS, a ReadWriteMany volume) so all resume alike",
    )


def check_cpus(nproc: int, env: Mapping[str, str], cpus: int | None = None) -> Check:
    """Processes x threads per process against the CPUs this node may use. Threads: OMP_NUM_THREADS, or
    what the launcher gives each process without it (its share of the CPUs, at least 1)."""
    cpus = cpus or usable_cpus()
    threads = int(env.get("OMP_NUM_THREADS", "0") or 0) or max(1, cpus // nproc)
    text = f"{nproc} process(es) x {threads} thread(s) = {nproc * threads} on {cpus} usable CPU core(s)"
    if nproc * threads <= cpus:
        return Check("cpus", "ok", text)
    if nproc > cpus:
        fix = f"--nproc-per-node {cpus} (one process per core) or fewer; on CPUs more processes add no speed"
    else:
        fix = f"OMP_NUM_THREADS={max(1, cpus // nproc)}"
    return Check("cpus", "warn", f"{text}: oversubscribed, each step waits for a core", fix)


def check_cpu_ram(nproc: int, env: Mapping[str, str]) -> Check:
    import psutil

    cpus = usable_cpus()
    avail = psutil.virtual_memory().available
    text = f"{cpus} usable CPU(s), {_size(avail)} RAM available, {nproc} proc(s)/node"
    if avail < nproc * GiB:
        return Check("cpu_ram", "warn", text + "; under 1 GiB per process", "fewer processes or more memory")
    return Check("cpu_ram", "ok", text)


def check_ifnames(env: Mapping[str, str], if_addrs: Callable | None = None) -> list[Check]:
    """NCCL_SOCKET_IFNAME: prefixes, '=' exact names, '^' exclusions; GLOO_SOCKET_IFNAME: exact names."""
    import psutil

    names = set((if_addrs or psutil.net_if_addrs)())
    out = []
    for var in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"):
        value = env.get(var, "").strip()
        if not value or value.startswith("^"):
            continue
        exact = var.startswith("GLOO") or value.startswith("=")
        wanted = [w.strip() for w in value.lstrip("=").split(",") if w.strip()]
        missing = [w for w in wanted if not any(n == w if exact else n.startswith(w) for n in names)]
        if missing:
            out.append(
                Check(
                    var,
                    "fail",
                    f"{var}={value}: no interface {', '.join(missing)} here "
                    f"(have {', '.join(sorted(names))})",
                    f"set {var} to one of the interfaces listed",
                )
            )
        else:
            out.append(Check(var, "ok", f"{var}={value} exists"))
    return out


def check_endpoint(c: Cluster | None, timeout: float = 3.0) -> Check | None:
    if c is None or c.nnodes <= 1 or c.node_rank == 0 or not c.rdzv_endpoint:
        return None  # node 0 hosts the rendezvous; nothing listens before it starts
    host, port = split_endpoint(c.rdzv_endpoint, "rdzv endpoint")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        return Check(
            "rendezvous",
            "fail",
            f"{host}:{port} does not answer ({e.strerror or e}) after {timeout:g} s",
            "start node 0 first; check the address, the port and firewalls/NetworkPolicy",
        )
    return Check("rendezvous", "ok", f"{host}:{port} answers")


def check_gpus(nproc_wanted: int | str, env: Mapping[str, str]) -> list[Check]:
    """GPUs, CUDA and NCCL as torch sees them (the only checks that import torch)."""
    try:
        import torch
    except Exception as e:  # a broken install is exactly what doctor is for
        return [Check("torch", "fail", f"import torch failed: {e}", "reinstall the pinned requirements")]
    out = [Check("torch", "ok", f"torch {torch.__version__}")]
    if not torch.cuda.is_available():
        seen = visible_gpus(env)
        if seen:
            return out + [
                Check(
                    "gpus",
                    "warn",
                    f"the driver lists {seen} GPU(s) but torch cannot use them "
                    f"(CUDA build: {torch.version.cuda})",
                    "install a CUDA build of torch",
                )
            ]
        return out + [Check("gpus", "ok", "no GPU: CPU processes on gloo")]
    n = torch.cuda.device_count()
    props = [torch.cuda.get_device_properties(i) for i in range(n)]
    out.append(
        Check(
            "gpus",
            "ok",
            "; ".join(f"{i}: {p.name} {p.total_memory / GiB:.0f} GiB" for i, p in enumerate(props)),
        )
    )
    if isinstance(nproc_wanted, int) and nproc_wanted > n:
        out[-1] = Check(
            "gpus",
            "fail",
            f"{nproc_wanted} processes per node but {n} GPU(s)",
            "--nproc-per-node auto (one per GPU)",
        )
    try:
        nccl = torch.cuda.nccl.version()
    except Exception as e:  # a build without NCCL: multi-GPU jobs cannot use the nccl backend
        return out + [
            Check(
                "cuda",
                "warn",
                f"CUDA {torch.version.cuda}, NCCL unavailable ({e})",
                "install a torch build with NCCL",
            )
        ]
    nccl = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl
    return out + [Check("cuda", "ok", f"CUDA {torch.version.cuda}, NCCL {nccl}")]


# ----------------------------------------------------------------------------- report


def run_checks(
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping | None = None,
    config: str | None = None,
    config_overrides: Sequence[str] = (),
    fast: bool = False,
    shm_path: str = "/dev/shm",
    run_dir: str | None = None,
    min_free: int = GiB,
    timeout: float = 3.0,
    sample: int | None = None,
    cluster: Cluster | None = None,
    nproc: int | None = None,
    mode: str | None = None,
    plan_mesh: bool = True,
) -> list[Check]:
    """All checks (or the fast subset); paths and thresholds are parameters so tests can plant problems."""
    env = os.environ if env is None else env
    if cluster is None:
        first, cluster = check_cluster(env, overrides)
        checks = [first]
    else:
        checks = [
            Check("cluster", "ok", f"{cluster.source}: {cluster.nnodes} node(s), rank {cluster.node_rank}")
        ]
    nnodes = cluster.nnodes if cluster else 1
    if nproc is None:  # torch-free GPU count: the fast subset must not import torch
        gpus = lambda: visible_gpus(env, torch_fallback=False)  # noqa: E731
        try:
            nproc = resolve_nproc(cluster.nproc_per_node, env, gpus) if cluster else 1
        except NoGPU:
            checks.append(
                Check(
                    "nproc",
                    "fail",
                    f"{cluster.origin('nproc_per_node')}=gpu but no GPU is visible",
                    "use auto (1 process without GPUs) or a number",
                )
            )
            nproc = 1
    world = nproc * nnodes if plan_mesh else None  # the mesh (parallel.*) for this many processes
    cfg, problem = resolve_config(config, config_overrides, world, nproc, mode)
    if problem:
        checks.append(
            Check("config", "fail", problem, "fix the key named (python -m trainer config lists them)")
        )
    checks.append(check_cpus(nproc, env))
    checks.append(check_shm(*shm_need(cfg, nproc, nproc * nnodes, sample), path=shm_path))
    if cfg is not None and "_mesh" in cfg:
        checks.append(Check("mesh", "ok", mesh_line(cfg)))
    run_dir = run_dir or str(_get(cfg or {}, "run.dir") or "runs")  # the trainer's default: runs/<stamp>
    ckpt_dir = _get(cfg or {}, "checkpoint.dir")
    checks.append(check_run_dir(run_dir, min_free))
    if bucket.is_url(ckpt_dir):  # checkpoints on an object store: no shared volume needed
        checks.append(Check("shared_dir", "ok", f"checkpoints in {ckpt_dir}: no shared volume needed"))
    else:
        checks.append(check_shared(run_dir, nnodes))
    # In the preflight too: a misnamed fabric interface (a manifest's --net-if) otherwise surfaces as a
    # rendezvous or NCCL timeout minutes later.
    checks += check_ifnames(env)
    if fast:
        return checks
    if bucket.is_url(ckpt_dir):
        checks.append(Check("checkpoint_dir", *bucket.check_bucket(ckpt_dir, env)))
    checks.append(check_cpu_ram(nproc, env))
    checks += check_gpus(cluster.nproc_per_node if cluster else "auto", env)
    ep = check_endpoint(cluster, timeout)
    return checks + ([ep] if ep else [])


def format_report(checks: Sequence[Check]) -> str:
    mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    lines = []
    for c in checks:
        lines.append(f"[{mark[c.status]}] {c.name:<18} {c.message}")
        if c.fix and c.status != "ok":
            lines.append(f"       {'':<18} fix: {c.fix}")
    return "\n".join(lines)


def exit_code(checks: Sequence[Check]) -> int:
    return 2 if any(c.status == "fail" for c in checks) else 0


def main(argv: Sequence[str], parser: argparse.ArgumentParser) -> int:
    """``python -m launch doctor``; ``parser`` carries the cluster flags shared with the launch command."""
    parser.add_argument("--json", action="store_true", help="machine-readable report")
    parser.add_argument("--fast", action="store_true", help="only the preflight subset (no torch import)")
    parser.add_argument("-c", "--config", help="training config, for the /dev/shm need and run.dir")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--run-dir", help="run directory to check (default: run.dir of the config, or runs)")
    parser.add_argument("--min-free-gb", type=float, default=1.0, help="free disk required in the run dir")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds for the rendezvous TCP connect")
    parser.add_argument("--shm-path", default="/dev/shm", help=argparse.SUPPRESS)
    parser.add_argument("--sample-bytes", type=int, help="bytes per sample for the /dev/shm need")
    ns = parser.parse_intermixed_args(argv)
    flags = {
        k: getattr(ns, k)
        for k in ("nnodes", "node_rank", "nproc_per_node", "rdzv_endpoint", "rdzv_id", "max_restarts")
    }
    checks = run_checks(
        overrides=flags,
        config=ns.config,
        config_overrides=ns.overrides,
        fast=ns.fast,
        shm_path=ns.shm_path,
        run_dir=ns.run_dir,
        min_free=int(ns.min_free_gb * GiB),
        timeout=ns.timeout,
        sample=ns.sample_bytes,
    )
    if ns.json:
        print(json.dumps({"ok": exit_code(checks) == 0, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        print(format_report(checks))
    sys.stdout.flush()
    return exit_code(checks)

"""``python -m launch``: choose how the trainer's processes start, with one switch.

One machine::

    python -m launch single -c configs/cnn.yaml                     # one process
    python -m launch dp -c configs/cnn.yaml                         # one process, nn.DataParallel over GPUs
    python -m launch ddp --nproc-per-node auto -c configs/cnn.yaml  # torchrun, one process per GPU (1 on CPU)
    python -m launch fsdp --nproc-per-node 2 -c configs/gpt.yaml    # FSDP2
    python -m launch accelerate --nproc-per-node 2 -c configs/cnn.yaml
    python -m launch ddp -c configs/cnn.yaml train.precision=bf16   # AMP on any mode (launch/amp.sh)
    python -m launch ddp --nproc-per-node 2 --dry-run -c configs/cnn.yaml   # print the command, run nothing

Two machines (run on each; node 0 hosts the rendezvous at HOST:PORT)::

    python -m launch ddp --nnodes 2 --node-rank 0 --rdzv-endpoint node0:29500 -c configs/cnn.yaml
    python -m launch ddp --nnodes 2 --node-rank 1 --rdzv-endpoint node0:29500 -c configs/cnn.yaml

On Kubeflow, a Kubernetes Indexed Job, JobSet or Slurm the flags come from the environment
(:mod:`launch.cluster`); flags given on the command line win. Also::

    python -m launch env [--json]          # the cluster description the launcher would use, and LAUNCH_MODE
    python -m launch doctor [--json] [-c CONFIG]   # preflight report; exit 2 on a blocking problem
    python -m launch k8s ...               # render Kubernetes manifests (launch.k8s)
    python -m launch wait ...              # wait for the rendezvous host to resolve (launch.wait)

Exit codes (launch/exitcodes.py): 0 ok, 1 internal error, 2 config/usage/environment error, 3 non-finite loss,
4 hang/collective timeout, 74 storage error (fix it, retry resumes), 75 preempted (retry resumes), 76 peer
lost (a rank or node died; retry resumes), 128+N a worker killed by signal N. The config is checked once
(``python -m trainer check``) and a fast doctor runs before any worker starts, unless ``--no-preflight``.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import os
import sys
from collections.abc import Sequence

from launch.cluster import ClusterError, resolve
from launch.exitcodes import CONFIG
from launch.gpus import NoGPU, resolve_nproc
from launch.modes import DEFAULT_INIT_TIMEOUT_S, MODES, UsageError, build, env_mode

SUBCOMMANDS = ("env", "doctor", "k8s", "wait")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (exit 2) instead of usage plus error."""

    def error(self, message: str):
        print(f"{self.prog}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(CONFIG)


def _parser(prog: str, description: str = "") -> _Parser:
    p = _Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("cluster (override the environment)")
    g.add_argument(
        "--nproc-per-node", metavar="N|auto", help="processes per node; auto = one per GPU, 1 on CPU"
    )
    g.add_argument("--nnodes", metavar="N", help="number of nodes (MIN:MAX for elastic jobs)")
    g.add_argument("--node-rank", metavar="R", help="this node's rank, 0..N-1")
    g.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="node 0's address for the c10d rendezvous")
    g.add_argument("--rdzv-id", metavar="ID", help="job id shared by all nodes")
    g.add_argument("--max-restarts", metavar="K", help="restart the worker group up to K times on failure")
    return p


def _cluster_flags(ns: argparse.Namespace) -> dict:
    return {
        k: getattr(ns, k)
        for k in ("nnodes", "node_rank", "nproc_per_node", "rdzv_endpoint", "rdzv_id", "max_restarts")
    }


def _fail(message: str, code: int = CONFIG) -> int:
    print(f"launch: {message}", file=sys.stderr)
    return code


def _init_timeout(config: str | None, overrides: Sequence[str]) -> float:
    """dist.init_timeout_s of the resolved config (the trainer's answer, ~0.1 s); its default if it
    has none."""
    from launch.doctor import _get, resolve_config

    cfg, _problem = resolve_config(
        config, overrides
    )  # a problem is reported by the config check, before any start
    try:
        return max(1.0, float(_get(cfg or {}, "dist.init_timeout_s") or DEFAULT_INIT_TIMEOUT_S))
    except (TypeError, ValueError):
        return float(DEFAULT_INIT_TIMEOUT_S)


def launch_main(mode: str, argv: Sequence[str]) -> int:
    p = _parser(f"python -m launch {mode}", f"Start the trainer in {mode} mode.")
    p.add_argument("-c", "--config", help="training config (YAML); without it, the trainer's defaults")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.max_steps=100"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the command and the variables it adds; run nothing"
    )
    p.add_argument("--no-preflight", action="store_true", help="skip the config check and the fast doctor")
    p.add_argument(
        "--local-addr",
        help="address this node advertises to its peers (default LAUNCH_LOCAL_ADDR): "
        "hosts that cannot resolve each other, or whose name resolves to another interface",
    )
    p.add_argument(
        "--entry", default="trainer", help=argparse.SUPPRESS
    )  # worker module; tests use a fake one
    ns = p.parse_intermixed_args(argv)
    try:
        cluster = resolve(overrides=_cluster_flags(ns))
        plan = build(
            mode,
            cluster,
            ns.config,
            ns.overrides,
            entry=ns.entry,
            local_addr=ns.local_addr,
            init_timeout_s=_init_timeout(ns.config, ns.overrides) if cluster.nnodes > 1 else None,
        )
    except (ClusterError, UsageError) as e:
        return _fail(str(e))
    world = plan.nnodes * plan.nproc_per_node
    if ns.dry_run:
        print(plan.shell())
        if ns.entry == "trainer" and mode in ("ddp", "fsdp"):
            from launch import doctor

            over = [*ns.overrides, f"train.strategy={mode}"]  # never empty: the defaults' mesh too
            cfg, bad = doctor.resolve_config(ns.config, over, world, plan.nproc_per_node)
            print(f"# mesh: {doctor.mesh_line(cfg)}" if cfg else f"# mesh: refused: {bad}")
        return 0
    if not ns.no_preflight:
        from launch import doctor, runner

        multi = mode in ("ddp", "fsdp") and ns.entry == "trainer"  # a test's fake worker plans no mesh
        sized = {"world_size": world, "nproc_per_node": plan.nproc_per_node} if multi else {}
        problem = runner.check_config(ns.entry, ns.config, ns.overrides, mode, **sized)
        if problem:
            return _fail(f"config check failed: {problem}")
        checks = doctor.run_checks(
            env={**os.environ, **plan.env},  # what the workers will see (the threads the launcher sets)
            config=ns.config,
            config_overrides=ns.overrides,
            fast=True,
            cluster=cluster,
            nproc=plan.nproc_per_node,
            mode=mode,
            plan_mesh=ns.entry == "trainer",  # another worker module (tests' fake one) has no mesh
        )
        for c in checks:
            if c.status != "ok":
                print(
                    f"launch: doctor {c.status}: {c.name}: {c.message}"
                    + (f" (fix: {c.fix})" if c.fix else ""),
                    file=sys.stderr,
                )
        if doctor.exit_code(checks):
            return CONFIG
    from launch import runner

    return runner.execute(plan)


def env_main(argv: Sequence[str]) -> int:
    p = _parser(
        "python -m launch env",
        "Print the cluster description read from the environment, and the mode LAUNCH_MODE names.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    ns = p.parse_args(argv)
    try:
        c = resolve(overrides=_cluster_flags(ns))
        mode, mode_origin = env_mode(os.environ)
        info = {"mode": mode, **c.as_dict(), "nproc_per_node_resolved": resolve_nproc(c.nproc_per_node)}
        info["origins"]["mode"] = mode_origin
    except (ClusterError, UsageError) as e:
        return _fail(str(e))
    except NoGPU:
        return _fail(
            f"{c.origin('nproc_per_node')}=gpu: one process per GPU, but no GPU is visible here; use auto "
            "(1 process without GPUs) or a number"
        )
    if ns.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        origins = info.pop("origins")
        for k, v in info.items():
            print(f"{k:<24} {v}" + (f"   ({origins[k]})" if k in origins else ""))
    return 0


def _delegate(name: str, argv: Sequence[str]) -> int:
    """k8s and wait belong to the container work; imported only when asked for."""
    try:
        module = importlib.import_module(f"launch.{name}")
    except ModuleNotFoundError as e:
        if e.name not in (f"launch.{name}", "launch"):
            raise
        return _fail(f"`{name}` is not available in this installation (launch/{name} is missing)")
    return int(module.main(list(argv)) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else CONFIG
    cmd, rest = argv[0], argv[1:]
    if cmd in MODES:
        return launch_main(cmd, rest)
    if cmd == "env":
        return env_main(rest)
    if cmd == "doctor":
        from launch import doctor

        return doctor.main(
            rest, _parser("python -m launch doctor", "Check this machine before a job starts.")
        )
    if cmd in ("k8s", "wait"):
        return _delegate(cmd, rest)
    return _fail(
        f"unknown command {cmd!r}{_did_you_mean(cmd, (*MODES, *SUBCOMMANDS))}: expected a mode "
        f"({', '.join(MODES)}) or {', '.join(SUBCOMMANDS)}"
    )


def _edits(a: str, b: str) -> int:
    """Levenshtein distance (tiny inputs: command, mode and key names)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    """The same rule as trainer/config.py ``did_you_mean`` (one typo away, same length first)."""
    near = sorted((_edits(word, c), len(c) != len(word), c) for c in choices)
    if near and near[0][0] <= max(1, len(word) // 4):
        return f" (did you mean {near[0][2]}?)"
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


if __name__ == "__main__":
    sys.exit(main())

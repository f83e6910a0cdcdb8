"""``python -m launch k8s render ...``: the command line of :mod:`launch.k8s.manifests`.

    python -m launch k8s render --kind indexedjob --name gpt --image REGISTRY/torchrunner:0.1.0-cu128 \\
        --nodes 2 --gpus-per-node 8 --config configs/gpt.yaml -o k8s/gpt/ -- train.precision=bf16
    kubectl apply -f k8s/gpt/
    python -m launch k8s runtime --image REGISTRY/torchrunner:0.1.0-cu128 -o k8s/runtime.yaml  # v2, shared

Writes to stdout (one multi-document stream), to a file (``-o FILE``) or one file per object (``-o DIR/``),
each headed by the command that rendered it, the job's failure policy and how it is scheduled. A directory
holds one job: rendering another kind or name into it is refused (``kubectl apply -f DIR/`` would start both);
the same job overwrites.
Exit 0, or 2 with one line that names the bad option.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import yaml

from launch import exitcodes
from launch.k8s import policy, scheduling
from launch.k8s.manifests import (
    DEFAULT_CONFIG,
    KINDS,
    MODES,
    RUNS_MOUNT,
    Options,
    RenderError,
    render,
    to_yaml,
)
from launch.k8s.runtime import DEFAULT_BACKOFF, RuntimeOptions


def _header(argv: list[str], *paragraphs: str) -> str:
    lines = ["Rendered by: python -m launch k8s " + " ".join(argv)]
    for text in paragraphs:
        lines += textwrap.wrap(text, 108)
    return "".join(f"# {line}\n" for line in lines)


class _Parser(argparse.ArgumentParser):
    """One-line argument errors (exit 2), like the rest of `python -m launch`."""

    def error(self, message: str):
        print(f"{self.prog}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(exitcodes.CONFIG)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m launch k8s", description="Kubernetes manifests for a training job.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser(
        "render",
        help="print or write the manifests for one job",
        description="Print or write the Kubernetes manifests for one training job.",
    )
    r.add_argument("--kind", required=True, choices=KINDS)
    r.add_argument("--image", required=True, help="image with a pinned tag or digest")
    r.add_argument("--nodes", type=int, default=1, help="number of pods (nodes); default 1")
    r.add_argument("--gpus-per-node", type=int, default=0, help="nvidia.com/gpu per pod; 0 = CPU (default)")
    r.add_argument("--nproc-per-node", type=int, default=None, help="processes per pod (default: GPUs, or 1)")
    r.add_argument("--mode", default="ddp", choices=MODES, help="launch mode (LAUNCH_MODE); default ddp")
    r.add_argument(
        "--config", default=DEFAULT_CONFIG, help=f"trainer config inside the image ({DEFAULT_CONFIG})"
    )
    r.add_argument("--name", default="train", help="job name (DNS label); default train")
    r.add_argument("--namespace", default=None, help="metadata.namespace (default: kubectl's)")
    r.add_argument(
        "--run-dir", default=None, help=f"run.dir on the shared volume (default {RUNS_MOUNT}/NAME)"
    )
    r.add_argument("--pvc", default=None, help="existing ReadWriteMany claim (default: render NAME-runs)")
    r.add_argument("--pvc-size", default="100Gi", help="size of the rendered claim (default 100Gi)")
    r.add_argument(
        "--checkpoint-dir",
        default=None,
        help="s3://bucket/prefix: checkpoints on object storage (checkpoint.dir); no PVC is rendered",
    )
    r.add_argument(
        "--s3-secret",
        default=None,
        help="Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (optional AWS_ENDPOINT_URL, AWS_REGION); "
        "omit to use the node's instance role",
    )
    r.add_argument(
        "--storage-class", default=None, help="storageClassName of the rendered claim (RWX-capable)"
    )
    r.add_argument(
        "--shm-size", default=None, help="/dev/shm size limit (default 16Gi with GPUs, 2Gi without)"
    )
    r.add_argument(
        "--grace-period",
        type=int,
        default=120,
        help="terminationGracePeriodSeconds (default 120); torchrun gets this minus 30 s to stop workers",
    )
    r.add_argument("--backoff-limit", type=int, default=None, help="retry budget (default 2 x nodes)")
    r.add_argument("--max-restarts", type=int, default=None, help="torchrun --max-restarts inside each pod")
    r.add_argument("--cpu", default=None, help="CPU request per pod, e.g. 16")
    r.add_argument("--memory", default=None, help="memory request per pod, e.g. 200Gi")
    r.add_argument(
        "--runtime-ref",
        default=None,
        metavar="NAME",
        help="trainjob only: reference this ClusterTrainingRuntime (ours from `launch k8s runtime`, or e.g. "
        "torch-distributed) instead of rendering a TrainingRuntime for the job",
    )
    _scheduling_flags(r)
    r.add_argument(
        "--wait",
        type=int,
        default=300,
        dest="wait_s",
        help="seconds a worker waits for the master to resolve (ENTRYPOINT_WAIT_S); default 300",
    )
    r.add_argument(
        "-o",
        "--output",
        default=None,
        help="file for all objects, or a directory (existing, or ending in /) for one file each",
    )
    r.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="trainer overrides, after --")

    rt = sub.add_parser(
        "runtime",
        help="print or write one ClusterTrainingRuntime for many TrainJobs",
        description="One Kubeflow Trainer v2 ClusterTrainingRuntime for the image, named "
        "torchrunner-<version>: the exit-code policy, gang scheduling, priority and host network that "
        "TrainJobs rendered with --runtime-ref NAME share.",
    )
    rt.add_argument("--image", required=True, help="image with a pinned tag or digest")
    rt.add_argument("--name", default=None, help="metadata.name (default: torchrunner-<image tag>)")
    rt.add_argument(
        "--gang",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="podGroupPolicy coscheduling: every pod of a TrainJob or none (needs scheduler-plugins' "
        "coscheduling plugin); default on",
    )
    rt.add_argument(
        "--gang-timeout",
        type=int,
        default=scheduling.GANG_TIMEOUT_S,
        help=f"coscheduling scheduleTimeoutSeconds (default {scheduling.GANG_TIMEOUT_S})",
    )
    rt.add_argument("--priority-class", default=None, help="priorityClassName of every pod")
    rt.add_argument("--host-network", action="store_true", help="hostNetwork + ClusterFirstWithHostNet DNS")
    rt.add_argument(
        "--backoff-limit",
        type=int,
        default=DEFAULT_BACKOFF,
        help=f"JobSet restarts after a failure (default {DEFAULT_BACKOFF})",
    )
    rt.add_argument("-o", "--output", default=None, help="file, or a directory (existing, or ending in /)")
    return p


def _scheduling_flags(r: argparse.ArgumentParser) -> None:
    g = r.add_argument_group(
        "queue, gang, priority, placement and fabric (what each renders per kind: docs/kubernetes.md)"
    )
    g.add_argument(
        "--queue", default=None, help="Kueue LocalQueue: label kueue.x-k8s.io/queue-name, suspended"
    )
    g.add_argument("--priority-class", default=None, help="PriorityClass of the pods")
    g.add_argument(
        "--node-selector",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="node label the pods need (repeatable)",
    )
    g.add_argument(
        "--toleration",
        action="append",
        default=[],
        dest="tolerations",
        metavar="KEY=VALUE:EFFECT",
        help="taint the pods tolerate (repeatable): KEY=VALUE:EFFECT, KEY:EFFECT (Exists), KEY=VALUE, KEY",
    )
    g.add_argument(
        "--gang",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="all pods or none (default: on with more than one node; indexedjob: with --queue)",
    )
    g.add_argument(
        "--gang-timeout",
        type=int,
        default=scheduling.GANG_TIMEOUT_S,
        help=f"seconds a partly placed pod group may wait (default {scheduling.GANG_TIMEOUT_S})",
    )
    g.add_argument(
        "--rdma",
        action="append",
        default=[],
        metavar="RESOURCE=N",
        help="RDMA device-plugin resource per pod, e.g. rdma/ib=1 (repeatable); sets NCCL_IB_HCA",
    )
    g.add_argument(
        "--ib-hca", default=None, help=f"NCCL_IB_HCA with --rdma (default {scheduling.DEFAULT_IB_HCA})"
    )
    g.add_argument(
        "--net-if", default=None, help="interface between the nodes: NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME"
    )
    g.add_argument(
        "--host-network", action="store_true", help="hostNetwork + dnsPolicy ClusterFirstWithHostNet"
    )
    g.add_argument("--elastic", default=None, metavar="MIN:MAX", help="pytorchjob: elasticPolicy node range")
    g.add_argument(
        "--topology",
        default=None,
        metavar="LABEL",
        help="Kueue topology-aware scheduling: keep the pods in one domain of this node label (with --queue)",
    )
    g.add_argument(
        "--topology-required", action="store_true", help="--topology as a requirement, not a preference"
    )


JOB_KINDS = ("Job", "PyTorchJob", "TrainJob")  # the objects that start pods; one per output directory


def _jobs_in(directory: Path) -> dict[tuple[str, str], Path]:
    """(kind, name) -> file of every job object already rendered (or put) in ``directory``."""
    found: dict[tuple[str, str], Path] = {}
    for path in sorted(directory.glob("*.y*ml")):
        try:
            docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except (OSError, yaml.YAMLError):
            continue
        for doc in docs:
            if isinstance(doc, dict) and doc.get("kind") in JOB_KINDS:
                found[(doc["kind"], str((doc.get("metadata") or {}).get("name", "")))] = path
    return found


def check_directory(objs: list[dict], directory: Path) -> None:
    """Refuse to put a second job into a directory: ``kubectl apply -f DIR`` would start both, sharing the
    claim and RUN_DIR when they share a name. Rendering the same job again (same kind and name) overwrites
    it."""
    if not directory.is_dir():
        return
    mine = {(o["kind"], o["metadata"]["name"]) for o in objs if o["kind"] in JOB_KINDS}
    for (kind, name), path in _jobs_in(directory).items():
        if (kind, name) not in mine:
            raise RenderError(
                f"{path} already holds {kind} {name!r}: `kubectl apply -f {directory}/` would start "
                "both jobs; render into another directory (one job each) or remove that one first"
            )


def write(objs: list[dict], output: str | None, header: str) -> list[Path]:
    if output is None:
        sys.stdout.write(to_yaml(objs, header))
        return []
    out = Path(output)
    if output.endswith("/") or out.is_dir():
        check_directory(objs, out)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for obj in objs:
            path = out / f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
            path.write_text(to_yaml([obj], header), encoding="utf-8")
            paths.append(path)
        return paths
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_yaml(objs, header), encoding="utf-8")
    return [out]


def _render(args: dict, argv: list[str]) -> tuple[list[dict], str, str | None]:
    opts = Options(**args)
    objs = render(opts)
    header = _header(
        argv, "Failure policy: " + policy.failure_policy(opts), "Scheduling: " + policy.scheduling(opts)
    )
    return objs, header, policy.notice(opts)


def _runtime(args: dict, argv: list[str]) -> tuple[list[dict], str, str | None]:
    opts = RuntimeOptions(**args)
    problems = opts.problems()
    if problems:
        raise RenderError("; ".join(problems))
    objs = opts.render()
    name = objs[0]["metadata"]["name"]
    return (
        objs,
        _header(
            argv,
            f"TrainJobs use it with: python -m launch k8s render --kind trainjob --runtime-ref {name} ...",
            "Failure policy: " + policy.FAILURE_POLICY["trainjob-our-cluster-runtime"].format(runtime=name),
        ),
        None,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = vars(_parser().parse_args(argv))
    command = args.pop("command")
    output = args.pop("output")
    try:
        objs, header, notice = (_render if command == "render" else _runtime)(args, argv)
        paths = write(objs, output, header)
    except RenderError as err:
        print(f"k8s {command}: {err}", file=sys.stderr)
        return exitcodes.CONFIG
    for path in paths:
        print(f"wrote {path}", file=sys.stderr)
    if notice:  # after the files: a note, not an error
        print(f"k8s {command}: note: {notice}", file=sys.stderr)
    return exitcodes.OK

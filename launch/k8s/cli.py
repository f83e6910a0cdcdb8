"""``python -m launch k8s render ...``: the command line of :mod:`launch.k8s.manifests`.

    python -m launch k8s render --kind indexedjob --name gpt --image REGISTRY/torchrunner:0.1.0-cu128 \\
        --nodes 2 --gpus-per-node 8 --config configs/gpt.yaml -o k8s/gpt/ -- train.precision=bf16
    kubectl apply -f k8s/gpt/

Writes to stdout (one multi-document stream), to a file (``-o FILE``) or one file per object (``-o DIR/``),
each headed by the command that rendered it and the job's failure policy. A directory holds one job: rendering
another kind or name into it is refused (``kubectl apply -f DIR/`` would start both); the same job overwrites.
Exit 0, or 2 with one line that names the bad option.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import yaml

from launch import exitcodes
from launch.k8s.manifests import (
    DEFAULT_CONFIG,
    KINDS,
    MODES,
    RUNS_MOUNT,
    Options,
    RenderError,
    failure_policy,
    render,
    to_yaml,
)


def _header(opts: Options, argv: list[str]) -> str:
    lines = [
        "Rendered by: python -m launch k8s " + " ".join(argv),
        *textwrap.wrap("Failure policy: " + failure_policy(opts), 108),
    ]
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
        "--runtime",
        default="torchrunner",
        help="trainjob only: 'torchrunner' renders our TrainingRuntime (exit-code policy); any other "
        "name references that ClusterTrainingRuntime, e.g. torch-distributed",
    )
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
    return p


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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = vars(_parser().parse_args(argv))
    args.pop("command")
    output = args.pop("output")
    opts = Options(**args)
    try:
        objs = render(opts)
        paths = write(objs, output, _header(opts, argv))
    except RenderError as err:
        print(f"k8s render: {err}", file=sys.stderr)
        return exitcodes.CONFIG
    for path in paths:
        print(f"wrote {path}", file=sys.stderr)
    return exitcodes.OK

"""Kubernetes manifests for a training job, as Python data: a Kubeflow PyTorchJob (v1), a Kubeflow TrainJob
(Trainer v2) with its TrainingRuntime, or a plain Indexed Job with a headless Service; plus the PVC for
run.dir.

The YAML files in ``templates/`` hold what every job shares; this module loads them with ``yaml.safe_load``,
fills in the job's values as Python data and writes them with ``yaml.safe_dump`` (no text templating).
Every pod gets a memory-backed ``/dev/shm``, a grace period longer than torchrun's shutdown timeout, GPU
limits, a ReadWriteMany volume for ``run.dir`` and a failure policy keyed on the launcher's exit codes
(``FAILURE_POLICY`` below says how each kind maps them). The command line is :mod:`launch.k8s.cli`.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from launch import exitcodes

KINDS = ("pytorchjob", "trainjob", "indexedjob")
MODES = ("single", "dp", "ddp", "fsdp", "accelerate")
TEMPLATES = Path(__file__).with_name("templates")

# The image's exec-form ENTRYPOINT (Dockerfile); only the TrainJob must spell it out, because the
# runtime's container command would otherwise replace it. tests/unit/test_k8s.py keeps the two in step.
ENTRYPOINT = ["/usr/bin/tini", "--", "/app/docker/entrypoint.sh"]
DEFAULT_CONFIG = "configs/cnn.yaml"  # the image's default CMD recipe
RUNS_MOUNT = "/runs"
RDZV_PORT = (
    29500  # rendezvous port of the PyTorchJob and the Indexed Job (the TrainJob's is the Trainer's 29400)
)
SHUTDOWN_MARGIN_S = 30  # grace period minus this = how long torchrun waits for workers after SIGTERM

FAILURE_POLICY = {
    "indexedjob": (
        "podFailurePolicy (restartPolicy Never): exit 2 (config) and 3 (non-finite loss) -> FailJob at once; "
        "exit 75 (preempted, checkpoint saved) and the DisruptionTarget condition (eviction, drain) -> "
        "Ignore: the pod is replaced and resumes, not counted; any other failure counts towards "
        "backoffLimit."
    ),
    "trainjob": (
        "Runtime 'torchrunner' (rendered alongside): the Job's podFailurePolicy fails on exit 2/3 and the "
        "JobSet rule FailJobSet on reason PodFailurePolicy ends the TrainJob; exit 75 and DisruptionTarget "
        "are ignored (pod replaced, resumes); any other failure restarts the whole JobSet (every node, from "
        "the shared checkpoint), at most --backoff-limit times (default 2 per node). With --runtime NAME the "
        "cluster's runtime decides."
    ),
    "trainjob-cluster-runtime": (
        "ClusterTrainingRuntime {runtime}: its Job and JobSet policies decide; the stock torch-distributed "
        "has no exit-code policy (default Job backoffLimit, no JobSet restarts). Render with --runtime "
        "torchrunner for exit 2/3 -> fail fast, exit 75 -> resume."
    ),
    "pytorchjob": (
        "restartPolicy OnFailure + runPolicy.backoffLimit: every non-zero exit restarts the container in "
        "place and counts towards backoffLimit (summed over all pods). ExitCode is not used: it treats 1-127 "
        "as permanent, so a preemption (75) and the exit 1 of the peers whose rendezvous broke would fail "
        "the job. The cost: a config error (2) is retried until backoffLimit before the job fails; use "
        "--kind indexedjob or trainjob for an exact exit-code policy."
    ),
}

_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P|m)?$")


class RenderError(ValueError):
    """A bad option: the message names it and what was expected."""


@dataclass
class Options:
    kind: str
    image: str
    nodes: int = 1
    gpus_per_node: int = 0
    nproc_per_node: int | None = None  # default: one process per GPU, or 1 without GPUs
    mode: str = "ddp"  # LAUNCH_MODE of the entrypoint
    config: str = DEFAULT_CONFIG
    overrides: list[str] = field(default_factory=list)  # KEY=VALUE passed to the trainer
    name: str = "train"
    namespace: str | None = None
    run_dir: str | None = None  # default /runs/<name>
    pvc: str | None = None  # an existing ReadWriteMany claim; default: render <name>-runs
    pvc_size: str = "100Gi"
    storage_class: str | None = None
    shm_size: str | None = None  # default 16Gi with GPUs, 2Gi without
    grace_period: int = 120
    backoff_limit: int | None = None  # default 2 per node
    max_restarts: int | None = None  # torchrun --max-restarts inside each pod (launcher default when None)
    cpu: str | None = None
    memory: str | None = None
    runtime: str = "torchrunner"  # trainjob: our TrainingRuntime, or the name of a ClusterTrainingRuntime
    wait_s: int = 300  # ENTRYPOINT_WAIT_S: how long non-zero nodes wait for the master
    checkpoint_dir: str | None = None  # s3://bucket/prefix: checkpoints on object storage, no shared volume
    s3_secret: str | None = (
        None  # a Secret holding AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (+ endpoint, region)
    )

    def check(self) -> None:
        problems = []
        if self.kind not in KINDS:
            problems.append(f"--kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        if self.mode not in MODES:
            problems.append(f"--mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if not self.image or any(c.isspace() for c in self.image):
            problems.append(
                f"--image {self.image!r}: expected an image reference such as registry/torchrunner:0.1.0"
            )
        elif (
            self.image.endswith(":latest")
            or ":" not in self.image.rsplit("/", 1)[-1]
            and "@" not in self.image
        ):
            problems.append(
                f"--image {self.image!r}: pin a tag or digest (no implicit or explicit :latest), "
                "so that restarted pods run the same code"
            )
        # Pod host names are <name>-<index> (Indexed Job) or <name>-node-0-<i> (TrainJob), at most 63 chars.
        if not _NAME_RE.match(self.name) or len(self.name) > 40:
            problems.append(
                f"--name {self.name!r}: expected a DNS label of at most 40 characters "
                "(lower-case letters, digits, '-'; starting with a letter)"
            )
        if self.nodes < 1:
            problems.append(f"--nodes {self.nodes}: expected at least 1")
        if self.gpus_per_node < 0:
            problems.append(f"--gpus-per-node {self.gpus_per_node}: expected 0 or more")
        if self.nproc_per_node is not None and self.nproc_per_node < 1:
            problems.append(f"--nproc-per-node {self.nproc_per_node}: expected at least 1")
        if self.grace_period <= SHUTDOWN_MARGIN_S:
            problems.append(
                f"--grace-period {self.grace_period}: expected more than {SHUTDOWN_MARGIN_S} s "
                "(checkpoint save time plus torchrun's shutdown)"
            )
        for flag, value in (
            ("--backoff-limit", self.backoff_limit),
            ("--max-restarts", self.max_restarts),
            ("--wait", self.wait_s),
        ):
            if value is not None and value < 0:
                problems.append(f"{flag} {value}: expected 0 or more")
        for flag, value in (
            ("--shm-size", self.shm_size),
            ("--pvc-size", self.pvc_size),
            ("--cpu", self.cpu),
            ("--memory", self.memory),
        ):
            if value is not None and not _QUANTITY_RE.match(value):
                problems.append(f"{flag} {value!r}: expected a Kubernetes quantity such as 16Gi or 500m")
        if self.pvc is not None and not re.match(r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$", self.pvc):
            problems.append(f"--pvc {self.pvc!r}: expected the name of an existing PersistentVolumeClaim")
        if self.run_dir is not None and not self.run_dir.startswith(RUNS_MOUNT + "/"):
            problems.append(
                f"--run-dir {self.run_dir!r}: expected a path under {RUNS_MOUNT}/ (the shared volume)"
            )
        problems += self._check_object_storage()
        bad = [o for o in self.overrides if "=" not in o or o.startswith("=")]
        if bad:
            problems.append(f"overrides {bad}: expected KEY=VALUE")
        if problems:
            raise RenderError("; ".join(problems))

    def _check_object_storage(self) -> list[str]:
        problems = []
        if self.checkpoint_dir is not None and not re.match(
            r"^s3a?://[a-z0-9][-.a-z0-9]{1,61}[a-z0-9](/|$)", self.checkpoint_dir
        ):
            problems.append(
                f"--checkpoint-dir {self.checkpoint_dir!r}: expected s3://bucket/prefix (a path "
                "would be on each pod's own disk; use --pvc for a shared volume)"
            )
        if self.s3_secret is not None:
            if self.checkpoint_dir is None:
                problems.append(f"--s3-secret {self.s3_secret!r}: only with --checkpoint-dir s3://...")
            if not re.match(r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$", self.s3_secret):
                problems.append(f"--s3-secret {self.s3_secret!r}: expected the name of a Secret")
        if self.checkpoint_dir is not None and self.pvc is not None:
            problems.append(
                f"--pvc {self.pvc!r}: not used with --checkpoint-dir (no shared volume is needed)"
            )
        return problems

    @property
    def object_storage(self) -> bool:
        return self.checkpoint_dir is not None

    @property
    def nproc(self) -> int:
        return self.nproc_per_node or max(self.gpus_per_node, 1)

    @property
    def backoff(self) -> int:
        return 2 * self.nodes if self.backoff_limit is None else self.backoff_limit

    @property
    def claim(self) -> str:
        return self.pvc or f"{self.name}-runs"

    @property
    def shm(self) -> str:
        return self.shm_size or ("16Gi" if self.gpus_per_node else "2Gi")


def _template(name: str) -> dict:
    with open(TEMPLATES / f"{name}.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f)


def _metadata(obj: dict, opts: Options, name: str) -> None:
    meta = obj.setdefault("metadata", {})
    meta["name"] = name
    if opts.namespace:
        meta["namespace"] = opts.namespace
    meta.setdefault("labels", {})["app.kubernetes.io/instance"] = opts.name


def _env(pairs: dict[str, object]) -> list[dict]:
    return [{"name": k, "value": str(v)} for k, v in pairs.items()]


def _entrypoint_env(opts: Options) -> dict[str, object]:
    """What docker/entrypoint.sh reads; the cluster variables come from the operator or the renderer."""
    env: dict[str, object] = {
        "LAUNCH_MODE": opts.mode,
        "RUN_DIR": opts.run_dir or f"{RUNS_MOUNT}/{opts.name}",
        "ENTRYPOINT_WAIT_S": opts.wait_s,
        # torchrun forwards SIGTERM to the workers, then waits this long before SIGKILL: the checkpoint
        # save must fit in it, and it must end before the kubelet's own SIGKILL at the grace period.
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": opts.grace_period - SHUTDOWN_MARGIN_S,
    }
    if opts.max_restarts is not None:
        env["MAX_RESTARTS"] = opts.max_restarts
    if opts.gpus_per_node:
        # NCCL Flight Recorder dumps (TORCH_NCCL_DUMP_ON_TIMEOUT=1 in the image) go to the shared run
        # directory instead of the pod's /tmp, which a restart throws away.
        env["TORCH_NCCL_DEBUG_INFO_TEMP_FILE"] = f"{env['RUN_DIR']}/nccl_trace_rank_"
    return env


def _args(opts: Options) -> list[str]:
    ckpt = [f"checkpoint.dir={opts.checkpoint_dir}"] if opts.object_storage else []
    return ["-c", opts.config, *ckpt, *opts.overrides]


def _secret_env(opts: Options) -> list[dict]:
    """The standard AWS variables from the Secret, key by key (TrainJob's trainer.env has no envFrom)."""
    if not opts.s3_secret:
        return []  # an instance role / IRSA / workload identity supplies the credentials
    keys = [
        ("AWS_ACCESS_KEY_ID", False),
        ("AWS_SECRET_ACCESS_KEY", False),
        ("AWS_ENDPOINT_URL", True),
        ("AWS_REGION", True),
    ]
    return [
        {"name": k, "valueFrom": {"secretKeyRef": {"name": opts.s3_secret, "key": k, "optional": optional}}}
        for k, optional in keys
    ]


def _resources(opts: Options) -> dict:
    res: dict = {}
    if opts.gpus_per_node:
        res["limits"] = {"nvidia.com/gpu": opts.gpus_per_node}
    requests = {k: v for k, v in (("cpu", opts.cpu), ("memory", opts.memory)) if v}
    if requests:
        res["requests"] = requests
    return res


def pod_template(opts: Options, container: str = "trainer", env: dict[str, object] | None = None) -> dict:
    """The PodTemplateSpec every kind shares: image, args, env, shm, run volume, GPUs, grace period."""
    tpl = _template("pod")
    tpl["metadata"]["labels"]["app.kubernetes.io/instance"] = opts.name
    spec = tpl["spec"]
    spec["terminationGracePeriodSeconds"] = opts.grace_period
    shared = spec["containers"][0]  # imagePullPolicy, securityContext, volumeMounts
    ctr = {
        "name": container,
        "image": opts.image,
        "args": _args(opts),
        "env": _env({**_entrypoint_env(opts), **(env or {})}) + _secret_env(opts),
    }
    resources = _resources(opts)
    if resources:
        ctr["resources"] = resources
    ctr.update((k, v) for k, v in shared.items() if k != "name")
    spec["containers"] = [ctr]
    for vol in spec["volumes"]:
        if vol["name"] == "dshm":
            vol["emptyDir"]["sizeLimit"] = opts.shm
        elif vol["name"] == "runs" and opts.object_storage:
            # Checkpoints (and copies of logs, metrics, the final model) go to the bucket; run.dir is scratch.
            del vol["persistentVolumeClaim"]
            vol["emptyDir"] = {}
        elif vol["name"] == "runs":
            vol["persistentVolumeClaim"]["claimName"] = opts.claim
    if opts.gpus_per_node:
        # GPU node pools are commonly tainted nvidia.com/gpu:NoSchedule (GKE, AKS, the GPU operator's docs).
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return tpl


def pvc(opts: Options) -> dict:
    obj = _template("pvc")
    _metadata(obj, opts, opts.claim)
    obj["spec"]["resources"]["requests"]["storage"] = opts.pvc_size
    if opts.storage_class:
        obj["spec"]["storageClassName"] = opts.storage_class
    return obj


def pytorchjob(opts: Options) -> list[dict]:
    obj = _template("pytorchjob")
    _metadata(obj, opts, opts.name)
    spec = obj["spec"]
    spec["nprocPerNode"] = str(opts.nproc)
    spec["runPolicy"]["backoffLimit"] = opts.backoff
    tpl = pod_template(opts, container="pytorch")  # the operator injects its variables into "pytorch"
    tpl["spec"]["containers"][0]["ports"] = [{"name": "pytorchjob-port", "containerPort": RDZV_PORT}]
    replicas = spec["pytorchReplicaSpecs"]
    replicas["Master"]["template"] = tpl
    if opts.nodes > 1:
        replicas["Worker"]["replicas"] = opts.nodes - 1
        replicas["Worker"]["template"] = copy.deepcopy(tpl)
    else:
        del replicas["Worker"]
    return [obj]


def indexedjob(opts: Options) -> list[dict]:
    svc = _template("service")
    _metadata(svc, opts, opts.name)
    svc["spec"]["selector"]["app.kubernetes.io/instance"] = opts.name
    svc["spec"]["ports"][0].update(port=RDZV_PORT, targetPort=RDZV_PORT)

    job = _template("indexedjob")
    _metadata(job, opts, opts.name)
    spec = job["spec"]
    spec["completions"] = spec["parallelism"] = opts.nodes
    spec["backoffLimit"] = opts.backoff
    _set_exit_codes(spec["podFailurePolicy"], "trainer")
    tpl = pod_template(
        opts,
        env={
            # The Job controller sets JOB_COMPLETION_INDEX (the node rank) and the host name <job>-<index>;
            # the subdomain makes it resolvable as <job>-<index>.<service>.
            "LAUNCH_NNODES": opts.nodes,
            "LAUNCH_MASTER_ADDR": f"{opts.name}-0.{opts.name}",
            "LAUNCH_MASTER_PORT": RDZV_PORT,
            "NPROC_PER_NODE": opts.nproc,
        },
    )
    tpl["spec"]["subdomain"] = opts.name
    tpl["spec"]["restartPolicy"] = "Never"
    tpl["spec"]["containers"][0]["ports"] = [{"name": "rdzv", "containerPort": RDZV_PORT}]
    spec["template"] = tpl
    return [svc, job]


def _set_exit_codes(policy: dict, container: str) -> None:
    """Point the podFailurePolicy's exit-code rules at our container and at the codes in
    launch/exitcodes.py."""
    codes = {"FailJob": [exitcodes.CONFIG, exitcodes.NONFINITE], "Ignore": [exitcodes.PREEMPTED]}
    for rule in policy["rules"]:
        if "onExitCodes" in rule:
            rule["onExitCodes"].update(containerName=container, values=codes[rule["action"]])


def trainjob(opts: Options) -> list[dict]:
    objs = []
    job = _template("trainjob")
    _metadata(job, opts, opts.name)
    spec = job["spec"]
    if opts.runtime == "torchrunner":
        runtime = _template("trainingruntime")
        runtime_name = f"{opts.name}-runtime"  # one per job: deleting the job's files deletes all of it
        _metadata(runtime, opts, runtime_name)
        jobset = runtime["spec"]["template"]["spec"]
        jobset["failurePolicy"]["maxRestarts"] = opts.backoff
        rjob = jobset["replicatedJobs"][0]["template"]["spec"]
        _set_exit_codes(rjob["podFailurePolicy"], "node")
        rjob["template"]["spec"]["containers"][0]["image"] = opts.image
        objs.append(runtime)
        spec["runtimeRef"] = {
            "apiGroup": "trainer.kubeflow.org",
            "kind": "TrainingRuntime",
            "name": runtime_name,
        }
    else:
        spec["runtimeRef"] = {
            "apiGroup": "trainer.kubeflow.org",
            "kind": "ClusterTrainingRuntime",
            "name": opts.runtime,
        }

    pod = pod_template(opts, container="node")["spec"]
    ctr = pod["containers"][0]
    trainer = spec["trainer"]
    trainer.update(
        image=opts.image,
        command=list(ENTRYPOINT),
        args=ctr["args"],
        env=ctr["env"],
        numNodes=opts.nodes,
        numProcPerNode=opts.nproc,
    )
    if "resources" in ctr:
        trainer["resourcesPerNode"] = ctr["resources"]
    # Only the fields a PodSpecPatch allows; env goes through trainer.env (the Trainer forbids it here).
    pod_patch = {
        key: pod[key]
        for key in ("terminationGracePeriodSeconds", "securityContext", "volumes", "tolerations")
        if key in pod
    }
    pod_patch["containers"] = [
        {"name": "node", "securityContext": ctr["securityContext"], "volumeMounts": ctr["volumeMounts"]}
    ]
    spec["runtimePatches"] = [
        {
            "manager": "torchrunner",
            "trainingRuntimeSpec": {
                "template": {
                    "spec": {
                        "replicatedJobs": [
                            {"name": "node", "template": {"spec": {"template": {"spec": pod_patch}}}},
                        ]
                    }
                }
            },
        }
    ]
    return [*objs, job]


def render(opts: Options) -> list[dict]:
    """All objects for one job, in the order `kubectl apply` should create them."""
    opts.check()
    objs = [] if opts.pvc or opts.object_storage else [pvc(opts)]
    objs += {"pytorchjob": pytorchjob, "trainjob": trainjob, "indexedjob": indexedjob}[opts.kind](opts)
    return objs


def to_yaml(objs: list[dict], header: str = "") -> str:
    body = yaml.safe_dump_all(objs, sort_keys=False, default_flow_style=False, width=120)
    return header + body


def failure_policy(opts: Options) -> str:
    """One paragraph: how this job maps the launcher's exit codes (also printed atop the manifests)."""
    if opts.kind == "trainjob" and opts.runtime != "torchrunner":
        return FAILURE_POLICY["trainjob-cluster-runtime"].format(runtime=opts.runtime)
    return FAILURE_POLICY[opts.kind]

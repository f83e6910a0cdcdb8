"""Kubernetes manifests for a training job, as Python data: a Kubeflow PyTorchJob (v1), a Kubeflow TrainJob
(Trainer v2) with its TrainingRuntime, or a plain Indexed Job with a headless Service; plus the PVC for
run.dir.

The YAML files in ``templates/`` hold what every job shares; this module loads them with ``yaml.safe_load``,
fills in the job's values as Python data and writes them with ``yaml.safe_dump`` (no text templating).
Every pod gets a memory-backed ``/dev/shm``, a grace period longer than torchrun's shutdown timeout, GPU
limits, a ReadWriteMany volume for ``run.dir`` and a failure policy keyed on the launcher's exit codes
(:mod:`launch.k8s.policy` says how each kind maps them). Queue, gang, priority, placement and fabric flags are
parsed and placed by :mod:`launch.k8s.scheduling`; the Trainer v2 runtime is :mod:`launch.k8s.runtime`. The
command line is :mod:`launch.k8s.cli`.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

import yaml

from launch.k8s import scheduling as S
from launch.k8s.objects import check_image, set_exit_codes, template
from launch.k8s.runtime import training_runtime

KINDS = ("pytorchjob", "trainjob", "indexedjob")
MODES = ("single", "dp", "ddp", "fsdp", "accelerate")

# The image's exec-form ENTRYPOINT (Dockerfile); only the TrainJob must spell it out, because the
# runtime's container command would otherwise replace it. tests/unit/test_k8s.py keeps the two in step.
ENTRYPOINT = ["/usr/bin/tini", "--", "/app/docker/entrypoint.sh"]
DEFAULT_CONFIG = "configs/cnn.yaml"  # the image's default CMD recipe
RUNS_MOUNT = "/runs"
RDZV_PORT = (
    29500  # rendezvous port of the PyTorchJob and the Indexed Job (the TrainJob's is the Trainer's 29400)
)
SHUTDOWN_MARGIN_S = 30  # grace period minus this = how long torchrun waits for workers after SIGTERM
ELASTIC_RESTARTS = 3  # elasticPolicy.maxRestarts when --max-restarts is not given

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
    runtime_ref: str | None = None  # trainjob: a ClusterTrainingRuntime to use (None: render a runtime)
    wait_s: int = 300  # ENTRYPOINT_WAIT_S: how long non-zero nodes wait for the master
    checkpoint_dir: str | None = None  # s3://bucket/prefix: checkpoints on object storage, no shared volume
    s3_secret: str | None = (
        None  # a Secret holding AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (+ endpoint, region)
    )
    # Scheduling and placement (launch/k8s/scheduling.py says where each lands per kind).
    queue: str | None = None  # Kueue LocalQueue: label kueue.x-k8s.io/queue-name, created suspended
    priority_class: str | None = None  # PriorityClass of the pods
    node_selector: list[str] = field(default_factory=list)  # KEY=VALUE node labels
    tolerations: list[str] = field(default_factory=list)  # KEY=VALUE:EFFECT, KEY:EFFECT, KEY=VALUE, KEY
    gang: bool | None = None  # all pods or none; None: on with more than one node (indexedjob: with --queue)
    gang_timeout: int = S.GANG_TIMEOUT_S  # how long a partly placed group may hold nodes
    rdma: list[str] = field(default_factory=list)  # RESOURCE=N device-plugin resources per pod
    ib_hca: str | None = None  # NCCL_IB_HCA with --rdma (default mlx5)
    net_if: str | None = None  # NCCL_SOCKET_IFNAME and GLOO_SOCKET_IFNAME
    host_network: bool = False  # hostNetwork + dnsPolicy ClusterFirstWithHostNet
    elastic: str | None = None  # MIN:MAX nodes (pytorchjob elasticPolicy)
    topology: str | None = None  # node label of the domain (rack, block) Kueue TAS places the pods in
    topology_required: bool = False  # required instead of preferred

    def check(self) -> None:
        problems = []
        if self.kind not in KINDS:
            problems.append(f"--kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        if self.mode not in MODES:
            problems.append(f"--mode {self.mode!r}: expected one of {', '.join(MODES)}")
        problems += check_image(self.image)
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
        problems += S.check_flags(self)
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
    def max_nodes(self) -> int:
        return S.parse_elastic(self.elastic)[1] if self.elastic else self.nodes

    @property
    def min_nodes(self) -> int:
        return S.parse_elastic(self.elastic)[0] if self.elastic else self.nodes

    @property
    def gang_on(self) -> bool:
        """Gang scheduling: the flag, else on for more than one pod where the kind can do it alone (an Indexed
        Job through Kueue only; a TrainJob on --runtime-ref as its runtime says)."""
        if self.gang is not None:
            return self.gang
        if self.kind == "indexedjob":
            return bool(self.queue) and self.nodes > 1
        if self.kind == "trainjob" and self.runtime_ref:
            return False
        return self.max_nodes > 1

    @property
    def object_storage(self) -> bool:
        return self.checkpoint_dir is not None

    @property
    def nproc(self) -> int:
        return self.nproc_per_node or max(self.gpus_per_node, 1)

    @property
    def backoff(self) -> int:
        return 2 * self.max_nodes if self.backoff_limit is None else self.backoff_limit

    @property
    def claim(self) -> str:
        return self.pvc or f"{self.name}-runs"

    @property
    def shm(self) -> str:
        return self.shm_size or ("16Gi" if self.gpus_per_node else "2Gi")


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
    env.update(S.network_env(S.parse_rdma(opts.rdma)[0], opts.net_if, opts.ib_hca))
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
    limits = {"nvidia.com/gpu": opts.gpus_per_node} if opts.gpus_per_node else {}
    limits.update(S.parse_rdma(opts.rdma)[0])  # RDMA devices: limits only (requests follow them)
    if limits:
        res["limits"] = limits
    requests = {k: v for k, v in (("cpu", opts.cpu), ("memory", opts.memory)) if v}
    if requests:
        res["requests"] = requests
    return res


def pod_template(opts: Options, container: str = "trainer", env: dict[str, object] | None = None) -> dict:
    """The PodTemplateSpec every kind shares: image, args, env, shm, run volume, GPUs, grace period and the
    placement flags (a TrainJob takes the ones its PodSpecPatch allows; the runtime carries the rest)."""
    tpl = template("pod")
    tpl["metadata"]["labels"]["app.kubernetes.io/instance"] = opts.name
    annotations = S.topology_annotations(opts.topology, opts.topology_required)
    if annotations:
        tpl["metadata"]["annotations"] = annotations
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
    S.place_pod(
        spec,
        node_selector=S.parse_node_selector(opts.node_selector)[0],
        tolerations=S.parse_tolerations(opts.tolerations)[0],
        priority_class=opts.priority_class,
        host_network=opts.host_network,
    )
    return tpl


def pvc(opts: Options) -> dict:
    obj = template("pvc")
    _metadata(obj, opts, opts.claim)
    obj["spec"]["resources"]["requests"]["storage"] = opts.pvc_size
    if opts.storage_class:
        obj["spec"]["storageClassName"] = opts.storage_class
    return obj


def pytorchjob(opts: Options) -> list[dict]:
    obj = template("pytorchjob")
    _metadata(obj, opts, opts.name)
    spec = obj["spec"]
    spec["nprocPerNode"] = str(opts.nproc)
    run = spec["runPolicy"]
    run["backoffLimit"] = opts.backoff
    S.queue_job(obj, opts.queue)
    if opts.queue:
        run["suspend"] = True  # Kueue unsuspends it on admission
    if opts.gang_on:
        # A PodGroup (volcano or scheduler-plugins, whichever the operator runs with) of this many pods.
        policy = {"minAvailable": opts.min_nodes, "scheduleTimeoutSeconds": opts.gang_timeout}
        if opts.priority_class:
            policy["priorityClass"] = opts.priority_class
        run["schedulingPolicy"] = policy
    tpl = pod_template(opts, container="pytorch")  # the operator injects its variables into "pytorch"
    tpl["spec"]["containers"][0]["ports"] = [{"name": "pytorchjob-port", "containerPort": RDZV_PORT}]
    replicas = spec["pytorchReplicaSpecs"]
    if opts.elastic:
        # Workers only (the operator's elastic mode): PET_RDZV_ENDPOINT is worker 0, ranks come from the
        # c10d rendezvous, and the job runs on anything from MIN to MAX pods.
        lo, hi = S.parse_elastic(opts.elastic)
        del replicas["Master"]
        replicas["Worker"].update(replicas=opts.nodes, template=tpl)
        spec["elasticPolicy"] = {
            "minReplicas": lo,
            "maxReplicas": hi,
            "rdzvBackend": "c10d",
            "maxRestarts": ELASTIC_RESTARTS if opts.max_restarts is None else opts.max_restarts,
        }
    elif opts.nodes > 1:
        replicas["Master"]["template"] = tpl
        replicas["Worker"]["replicas"] = opts.nodes - 1
        replicas["Worker"]["template"] = copy.deepcopy(tpl)
    else:
        replicas["Master"]["template"] = tpl
        del replicas["Worker"]
    return [obj]


def indexedjob(opts: Options) -> list[dict]:
    svc = template("service")
    _metadata(svc, opts, opts.name)
    svc["spec"]["selector"]["app.kubernetes.io/instance"] = opts.name
    svc["spec"]["ports"][0].update(port=RDZV_PORT, targetPort=RDZV_PORT)

    job = template("indexedjob")
    _metadata(job, opts, opts.name)
    spec = job["spec"]
    spec["completions"] = spec["parallelism"] = opts.nodes
    spec["backoffLimit"] = opts.backoff
    S.queue_job(job, opts.queue)
    if opts.queue:
        # Kueue admits the whole Job (every completion index) as one workload, then unsuspends it.
        spec["suspend"] = True
    set_exit_codes(spec["podFailurePolicy"], "trainer")
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


def trainjob(opts: Options) -> list[dict]:
    objs = []
    job = template("trainjob")
    _metadata(job, opts, opts.name)
    spec = job["spec"]
    S.queue_job(job, opts.queue)
    if opts.queue:
        spec["suspend"] = True  # Kueue's webhook would set it too; explicit, so the file says what happens
    if opts.runtime_ref is None:
        runtime_name = f"{opts.name}-runtime"  # one per job: deleting the job's files deletes all of it
        runtime = training_runtime(
            kind="TrainingRuntime",
            name=runtime_name,
            image=opts.image,
            backoff=opts.backoff,
            gang=opts.gang_on,
            gang_timeout=opts.gang_timeout,
            priority_class=opts.priority_class,
            host_network=opts.host_network,
        )
        _metadata(runtime, opts, runtime_name)
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
            "name": opts.runtime_ref,
        }

    tpl = pod_template(opts, container="node")
    pod = tpl["spec"]
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
    # Only the fields a PodSpecPatch allows; env goes through trainer.env (the Trainer forbids it here);
    # priorityClassName and hostNetwork are the runtime's (rendered above, or --runtime-ref's).
    pod_patch = {
        key: pod[key]
        for key in (
            "terminationGracePeriodSeconds",
            "securityContext",
            "volumes",
            "nodeSelector",
            "tolerations",
        )
        if key in pod
    }
    pod_patch["containers"] = [
        {"name": "node", "securityContext": ctr["securityContext"], "volumeMounts": ctr["volumeMounts"]}
    ]
    pod_tpl_patch = {"spec": pod_patch}
    if "annotations" in tpl["metadata"]:
        pod_tpl_patch = {"metadata": {"annotations": tpl["metadata"]["annotations"]}, **pod_tpl_patch}
    spec["runtimePatches"] = [
        {
            "manager": "torchrunner",
            "trainingRuntimeSpec": {
                "template": {
                    "spec": {
                        "replicatedJobs": [
                            {"name": "node", "template": {"spec": {"template": pod_tpl_patch}}},
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

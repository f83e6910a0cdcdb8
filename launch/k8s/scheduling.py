"""Where and when a job's pods run: queue, gang, priority, placement and the fabric (RDMA, NCCL interfaces).

Each flag of ``launch k8s render`` is parsed here once (a bad value is one line naming the flag, exit 2) and
applied to a PodSpec or to the job object by the functions below; :mod:`launch.k8s.manifests` calls them
for every kind. What lands where, per kind (field names checked against the kubeflow-training and
kubeflow-trainer-api models in tests/unit/test_k8s.py; the README's "Run on Kubernetes" has it as a table):

- ``--queue``: the label ``kueue.x-k8s.io/queue-name`` on the job object, which is created suspended
  (Job ``spec.suspend``, PyTorchJob ``runPolicy.suspend``, TrainJob ``spec.suspend``).
- ``--gang``: PyTorchJob ``runPolicy.schedulingPolicy.minAvailable``; the TrainJob runtime's
  ``podGroupPolicy.coscheduling``; an Indexed Job only through Kueue (``--queue``; refused without).
- ``--priority-class``: the pods' ``priorityClassName`` (PyTorchJob also ``schedulingPolicy.priorityClass``).
- ``--node-selector``, ``--toleration``: the pods' ``nodeSelector``, ``tolerations`` (TrainJob: its patch).
- ``--rdma``, ``--net-if``: container limits (TrainJob ``resourcesPerNode``) and NCCL_IB_HCA,
  NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME in the env (TrainJob ``trainer.env``).
- ``--host-network``: ``hostNetwork`` + ``dnsPolicy: ClusterFirstWithHostNet``.
- ``--elastic``: PyTorchJob ``elasticPolicy`` with Worker replicas only; refused for the other kinds.
- ``--topology LABEL``: Kueue TAS pod-template annotation (preferred, or required with
  ``--topology-required``); needs ``--queue``. A PyTorchJob's Master and Worker are two pod sets.

A TrainJob cannot patch priorityClassName, hostNetwork, dnsPolicy or the podGroupPolicy (the v2 PodSpecPatch
has none of them): they live in the runtime, the per-job TrainingRuntime or the ClusterTrainingRuntime of
``launch k8s runtime``, and are refused together with ``--runtime-ref``.
"""

from __future__ import annotations

import re

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"  # Kueue's LocalQueue label (Job, PyTorchJob, TrainJob)
# Kueue Topology-Aware Scheduling: pod-template annotations naming the node label of the domain (rack, block)
# that must (or should) hold all pods of a pod set.
TOPOLOGY_REQUIRED = "kueue.x-k8s.io/podset-required-topology"
TOPOLOGY_PREFERRED = "kueue.x-k8s.io/podset-preferred-topology"
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
DEFAULT_IB_HCA = "mlx5"  # NCCL_IB_HCA prefix: every ConnectX HCA (mlx5_0, mlx5_1, ...)
GANG_TIMEOUT_S = 300  # how long a partly placed pod group waits before the scheduler gives its nodes back

# Kubernetes names: a label key is [prefix/]name, a label value at most 63 characters.
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
LABEL_KEY_RE = re.compile(rf"^({_DNS_SUBDOMAIN}/)?{_NAME}$")
LABEL_VALUE_RE = re.compile(rf"^({_NAME})?$")
OBJECT_NAME_RE = re.compile(rf"^{_DNS_SUBDOMAIN}$")  # PriorityClass, LocalQueue: DNS subdomains
# An extended resource is domain-prefixed (rdma/ib, nvidia.com/hostdev, vpc.amazonaws.com/efa).
RESOURCE_RE = re.compile(rf"^{_DNS_SUBDOMAIN}/{_NAME}$")
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,15}(,[A-Za-z0-9_.@-]{1,15})*$")
IB_HCA_RE = re.compile(r"^\^?=?[A-Za-z0-9_]+(:[0-9]+)?(,[A-Za-z0-9_]+(:[0-9]+)?)*$")
_TOLERATION_RE = re.compile(r"^(?P<key>[^=:]+)(=(?P<value>[^:]*))?(:(?P<effect>[A-Za-z]+))?$")


def parse_node_selector(items: list[str]) -> tuple[dict[str, str], list[str]]:
    """['K=V', ...] -> ({K: V}, problems)."""
    out: dict[str, str] = {}
    problems = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not LABEL_KEY_RE.match(key) or not LABEL_VALUE_RE.match(value):
            problems.append(f"--node-selector {item!r}: expected KEY=VALUE, a node label such as pool=a100")
        elif out.get(key, value) != value:  # a pod matches one value per label: the last would win silently
            problems.append(
                f"--node-selector {item!r}: {key} is already {out[key]!r}; a node has one value per label"
            )
        else:
            out[key] = value
    return out, problems


def parse_toleration(item: str) -> dict:
    """K=V:EFFECT (Equal), K:EFFECT (Exists), K=V (Equal, every effect), K (Exists, every effect)."""
    m = _TOLERATION_RE.match(item)
    if not m or not LABEL_KEY_RE.match(m["key"]):
        raise ValueError(f"--toleration {item!r}: expected KEY=VALUE:EFFECT, KEY:EFFECT or KEY")
    tol: dict = {"key": m["key"], "operator": "Exists" if m["value"] is None else "Equal"}
    if m["value"] is not None:
        if not LABEL_VALUE_RE.match(m["value"]):
            raise ValueError(f"--toleration {item!r}: {m['value']!r} is not a taint value")
        tol["value"] = m["value"]
    if m["effect"] is not None:
        if m["effect"] not in EFFECTS:
            raise ValueError(
                f"--toleration {item!r}: effect {m['effect']!r}, expected one of {', '.join(EFFECTS)}"
            )
        tol["effect"] = m["effect"]
    return tol


def parse_tolerations(items: list[str]) -> tuple[list[dict], list[str]]:
    out, problems = [], []
    for item in items:
        try:
            out.append(parse_toleration(item))
        except ValueError as e:
            problems.append(str(e))
    return out, problems


def parse_rdma(items: list[str]) -> tuple[dict[str, int], list[str]]:
    """['rdma/ib=1', ...] -> ({resource: count}, problems)."""
    out: dict[str, int] = {}
    problems = []
    for item in items:
        name, sep, count = item.partition("=")
        if not sep or not RESOURCE_RE.match(name) or not count.isdigit() or int(count) < 1:
            problems.append(
                f"--rdma {item!r}: expected RESOURCE=N, a device plugin's resource such as rdma/ib=1 "
                "or nvidia.com/hostdev=8"
            )
        else:
            out[name] = int(count)
    return out, problems


def parse_elastic(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition(":")
    if not sep or not lo.isdigit() or not hi.isdigit() or not 1 <= int(lo) <= int(hi):
        raise ValueError(f"--elastic {text!r}: expected MIN:MAX nodes, 1 <= MIN <= MAX, e.g. 2:4")
    return int(lo), int(hi)


def check_flags(opts) -> list[str]:
    """Problems with the scheduling flags of ``opts`` (a manifests.Options), each naming its flag."""
    problems = []
    problems += parse_node_selector(opts.node_selector)[1]
    problems += parse_tolerations(opts.tolerations)[1]
    problems += parse_rdma(opts.rdma)[1]
    for flag, value, what in (
        ("--queue", opts.queue, "Kueue LocalQueue"),
        ("--priority-class", opts.priority_class, "PriorityClass"),
    ):
        if value is not None and not (OBJECT_NAME_RE.match(value) and len(value) <= 63):
            problems.append(f"{flag} {value!r}: expected the name of a {what}")
    if opts.net_if is not None and not IFNAME_RE.match(opts.net_if):
        problems.append(f"--net-if {opts.net_if!r}: expected a network interface name such as ib0 or eth1")
    if opts.ib_hca is not None and not opts.rdma:
        problems.append(f"--ib-hca {opts.ib_hca!r}: only with --rdma RESOURCE=N")
    elif opts.ib_hca is not None and not IB_HCA_RE.match(opts.ib_hca):
        problems.append(
            f"--ib-hca {opts.ib_hca!r}: expected NCCL_IB_HCA's form, e.g. mlx5 or =mlx5_0:1,mlx5_1:1"
        )
    if opts.gang_timeout < 1:
        problems.append(f"--gang-timeout {opts.gang_timeout}: expected at least 1 s")
    if opts.elastic is not None:
        problems += _check_elastic(opts)
    if opts.kind == "indexedjob" and opts.gang and not opts.queue:
        problems.append(
            "--gang with --kind indexedjob needs --queue NAME: a plain Job has no pod group, Kueue "
            "admits all its pods at once (or use --kind pytorchjob or trainjob, which have one)"
        )
    if opts.runtime_ref is not None:
        problems += _check_runtime_ref(opts)
    if opts.topology is not None and not LABEL_KEY_RE.match(opts.topology):
        problems.append(f"--topology {opts.topology!r}: expected a node label key such as example.com/rack")
    elif opts.topology is not None and not opts.queue:
        problems.append(
            f"--topology {opts.topology!r} needs --queue NAME: Kueue's Topology-Aware Scheduling places "
            "the pods"
        )
    if opts.topology_required and opts.topology is None:
        problems.append("--topology-required: only with --topology LABEL")
    return problems


def _check_elastic(opts) -> list[str]:
    if opts.kind == "trainjob":
        return [
            "--elastic: a TrainJob (Trainer v2) has no elastic policy (ElasticPolicy left the v2 API): "
            "restarts come from the runtime's JobSet failurePolicy (--backoff-limit) and torchrun "
            "--max-restarts in each pod; use --kind pytorchjob for a MIN:MAX node range"
        ]
    if opts.kind == "indexedjob":
        return [
            "--elastic: an Indexed Job runs a fixed number of completions; use --kind pytorchjob for a "
            "MIN:MAX node range (elasticPolicy)"
        ]
    try:
        lo, hi = parse_elastic(opts.elastic)
    except ValueError as e:
        return [str(e)]
    if not lo <= opts.nodes <= hi:
        return [f"--nodes {opts.nodes}: outside --elastic {opts.elastic} (the pods started at first)"]
    return []


def _check_runtime_ref(opts) -> list[str]:
    if opts.kind != "trainjob":
        return [f"--runtime-ref {opts.runtime_ref!r}: only with --kind trainjob"]
    problems = []
    if not OBJECT_NAME_RE.match(opts.runtime_ref):
        problems.append(f"--runtime-ref {opts.runtime_ref!r}: expected a ClusterTrainingRuntime's name")
    # The v2 PodSpecPatch cannot carry these; they live in the runtime.
    for flag, value in (
        ("--priority-class", opts.priority_class),
        ("--host-network", opts.host_network or None),
        ("--backoff-limit", opts.backoff_limit),
        ("--gang" if opts.gang else "--no-gang", None if opts.gang is None else True),
    ):
        if value is not None:
            problems.append(
                f"{flag} with --runtime-ref: a TrainJob cannot patch it, the runtime sets it; render the "
                f"runtime with `python -m launch k8s runtime {flag} ...` (or leave out --runtime-ref)"
            )
    return problems


def network_env(rdma: dict[str, int], net_if: str | None, ib_hca: str | None) -> dict[str, str]:
    """The NCCL/gloo settings the fabric flags imply (trainer.env for a TrainJob, the container's env
    otherwise)."""
    env: dict[str, str] = {}
    if rdma:
        # Which HCAs NCCL's IB transport uses; a prefix matches every port of every ConnectX device.
        env["NCCL_IB_HCA"] = ib_hca or DEFAULT_IB_HCA
    if net_if:
        # NCCL's bootstrap and socket transport, and gloo (CPU collectives, the trainer's object
        # broadcasts), on the interface that connects the nodes instead of the first one found.
        env["NCCL_SOCKET_IFNAME"] = net_if
        env["GLOO_SOCKET_IFNAME"] = net_if
    return env


def merge_tolerations(existing: list[dict], extra: list[dict]) -> list[dict]:
    return existing + [t for t in extra if t not in existing]


def place_pod(
    spec: dict,
    *,
    node_selector: dict[str, str],
    tolerations: list[dict],
    priority_class: str | None = None,
    host_network: bool = False,
) -> None:
    """Put the placement settings into a PodSpec (a Job's or replica's pod, or a runtime's)."""
    if node_selector:
        spec["nodeSelector"] = {**spec.get("nodeSelector", {}), **node_selector}
    if tolerations:
        spec["tolerations"] = merge_tolerations(spec.get("tolerations", []), tolerations)
    if priority_class:
        spec["priorityClassName"] = priority_class
    if host_network:
        # The pod shares the node's interfaces (RDMA, the fabric's IPs) and its ports: the rendezvous port
        # must be free on the node. ClusterFirstWithHostNet keeps cluster DNS (<job>-0.<job> resolves).
        spec["hostNetwork"] = True
        spec["dnsPolicy"] = "ClusterFirstWithHostNet"


def topology_annotations(level: str | None, required: bool) -> dict[str, str]:
    if not level:
        return {}
    return {TOPOLOGY_REQUIRED if required else TOPOLOGY_PREFERRED: level}


def queue_job(obj: dict, queue: str | None) -> None:
    """Kueue: the LocalQueue label on the job object. The job is created suspended; Kueue unsuspends it
    once the whole workload (every pod) fits its ClusterQueue's quota."""
    if queue:
        obj["metadata"].setdefault("labels", {})[QUEUE_LABEL] = queue

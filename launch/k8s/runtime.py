"""The Kubeflow Trainer v2 runtime for our image: one per job (a namespaced ``TrainingRuntime``, rendered
beside its TrainJob) or one for the cluster (``python -m launch k8s runtime``: a ``ClusterTrainingRuntime``
named for the image's version, which many TrainJobs reference with ``render --kind trainjob --runtime-ref
NAME``).

Both carry what a TrainJob cannot patch: the exit-code policy (the Job's podFailurePolicy, the JobSet's
failurePolicy), gang scheduling (``podGroupPolicy.coscheduling``: the Trainer creates a scheduler-plugins
PodGroup with minMember = every pod of the job), the pods' priorityClassName and hostNetwork.

    python -m launch k8s runtime --image REGISTRY/torchrunner:0.1.0-cu128 -o k8s/runtime.yaml
    kubectl apply -f k8s/runtime.yaml        # ClusterTrainingRuntime torchrunner-0.1.0-cu128
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from launch.k8s import scheduling
from launch.k8s.objects import check_image, set_exit_codes, template

RUNTIME_PREFIX = "torchrunner-"  # every ClusterTrainingRuntime rendered here is named torchrunner-<version>
DEFAULT_BACKOFF = 4  # JobSet restarts of a cluster runtime (a per-job runtime: 2 per node)


def runtime_name(image: str) -> str:
    """torchrunner-<tag> (torchrunner-sha256-<12 hex> for a digest): a DNS subdomain, one per image version,
    so jobs on the old image keep their runtime while the new one is rolled out."""
    ref = image.rsplit("/", 1)[-1]
    if "@" in ref:
        algo, _, digest = ref.split("@", 1)[1].partition(":")
        version = f"{algo}-{digest[:12]}"
    else:
        version = ref.rsplit(":", 1)[-1]
    version = re.sub(r"[^a-z0-9.-]+", "-", version.lower()).strip("-.")
    return (RUNTIME_PREFIX + version)[:253].rstrip("-.")


def training_runtime(
    *,
    kind: str,
    name: str,
    image: str,
    backoff: int,
    gang: bool,
    gang_timeout: int = scheduling.GANG_TIMEOUT_S,
    priority_class: str | None = None,
    host_network: bool = False,
) -> dict:
    """A TrainingRuntime or ClusterTrainingRuntime (``kind``) for ``image``; metadata.name is ``name``."""
    obj = template("trainingruntime")
    obj["kind"] = kind
    obj["metadata"]["name"] = name
    spec = obj["spec"]
    if gang:
        # The Trainer's coscheduling plugin labels every pod with the PodGroup and creates the group with
        # minMember = numNodes: no pod binds until all fit. Needs scheduler-plugins' coscheduling installed.
        group = {"podGroupPolicy": {"coscheduling": {"scheduleTimeoutSeconds": gang_timeout}}}
        obj["spec"] = spec = {"mlPolicy": spec["mlPolicy"], **group, "template": spec["template"]}
    jobset = spec["template"]["spec"]
    jobset["failurePolicy"]["maxRestarts"] = backoff
    rjob = jobset["replicatedJobs"][0]["template"]["spec"]
    set_exit_codes(rjob["podFailurePolicy"], "node")
    pod = rjob["template"]["spec"]
    pod["containers"][0]["image"] = image
    scheduling.place_pod(
        pod, node_selector={}, tolerations=[], priority_class=priority_class, host_network=host_network
    )
    return obj


@dataclass
class RuntimeOptions:
    """``python -m launch k8s runtime``: one ClusterTrainingRuntime for many TrainJobs."""

    image: str
    name: str | None = None  # default torchrunner-<image version>
    gang: bool = True  # podGroupPolicy coscheduling (scheduler-plugins); --no-gang without it
    gang_timeout: int = scheduling.GANG_TIMEOUT_S
    priority_class: str | None = None
    host_network: bool = False
    backoff_limit: int = DEFAULT_BACKOFF

    def problems(self) -> list[str]:
        problems = check_image(self.image)
        if self.name is not None and (not scheduling.OBJECT_NAME_RE.match(self.name) or len(self.name) > 253):
            problems.append(f"--name {self.name!r}: expected a DNS subdomain (lower-case, digits, '-', '.')")
        if self.priority_class is not None and not scheduling.OBJECT_NAME_RE.match(self.priority_class):
            problems.append(f"--priority-class {self.priority_class!r}: expected the name of a PriorityClass")
        if self.gang_timeout < 1:
            problems.append(f"--gang-timeout {self.gang_timeout}: expected at least 1 s")
        if self.backoff_limit < 0:
            problems.append(f"--backoff-limit {self.backoff_limit}: expected 0 or more")
        return problems

    def render(self) -> list[dict]:
        obj = training_runtime(
            kind="ClusterTrainingRuntime",
            name=self.name or runtime_name(self.image),
            image=self.image,
            backoff=self.backoff_limit,
            gang=self.gang,
            gang_timeout=self.gang_timeout,
            priority_class=self.priority_class,
            host_network=self.host_network,
        )
        return [obj]

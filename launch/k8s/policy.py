"""What a rendered job does on failure and how it is scheduled, in words: the paragraphs atop every file that
``launch k8s render`` writes (and docs/kubernetes.md's tables say the same)."""

from __future__ import annotations

from launch.k8s.runtime import RUNTIME_PREFIX

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
        "the shared checkpoint), at most --backoff-limit times (default 2 per node). With --runtime-ref NAME "
        "the cluster's runtime decides."
    ),
    "trainjob-our-cluster-runtime": (
        "ClusterTrainingRuntime {runtime} (rendered by `launch k8s runtime`): exit 2/3 fail the TrainJob at "
        "once, exit 75 and DisruptionTarget are ignored (pod replaced, resumes), any other failure restarts "
        "the whole JobSet up to the runtime's --backoff-limit."
    ),
    "trainjob-cluster-runtime": (
        "ClusterTrainingRuntime {runtime}: its Job and JobSet policies decide; the stock torch-distributed "
        "has no exit-code policy (default Job backoffLimit, no JobSet restarts). Render our runtime with "
        "`launch k8s runtime` (or leave out --runtime-ref) for exit 2/3 -> fail fast, exit 75 -> resume."
    ),
    "pytorchjob": (
        "restartPolicy OnFailure + runPolicy.backoffLimit: every non-zero exit restarts the container in "
        "place and counts towards backoffLimit (summed over all pods). ExitCode is not used: it treats 1-127 "
        "as permanent, so a preemption (75) and the exit 1 of the peers whose rendezvous broke would fail "
        "the job. The cost: a config error (2) is retried until backoffLimit before the job fails; use "
        "--kind indexedjob or trainjob for an exact exit-code policy."
    ),
}


def failure_policy(opts) -> str:
    """One paragraph: how this job maps the launcher's exit codes (``opts``: manifests.Options)."""
    if opts.kind == "trainjob" and opts.runtime_ref:
        key = (
            "trainjob-our-cluster-runtime"
            if opts.runtime_ref.startswith(RUNTIME_PREFIX)
            else "trainjob-cluster-runtime"
        )
        return FAILURE_POLICY[key].format(runtime=opts.runtime_ref)
    return FAILURE_POLICY[opts.kind]


def scheduling(opts) -> str:
    """One paragraph: gang scheduling and queueing of this job, and what the cluster needs for them."""
    parts = []
    n = opts.max_nodes
    if opts.kind == "trainjob" and opts.runtime_ref:
        parts.append(
            f"gang: as ClusterTrainingRuntime {opts.runtime_ref} says (ours: podGroupPolicy coscheduling)"
        )
    elif not opts.gang_on:
        if opts.kind == "indexedjob" and n > 1 and not opts.queue:
            parts.append(f"no gang: {NO_GANG_INDEXED.format(n=n, wait=opts.wait_s)}")
        else:
            parts.append("no gang scheduling" + (" (--no-gang)" if opts.gang is False else " (one pod)"))
    elif opts.kind == "pytorchjob":
        parts.append(
            f"gang: runPolicy.schedulingPolicy minAvailable={opts.min_nodes}, used when the training "
            "operator runs with --gang-scheduler-name (volcano or scheduler-plugins)"
        )
    elif opts.kind == "trainjob":
        parts.append(
            f"gang: the runtime's podGroupPolicy coscheduling (PodGroup of {n} pods, "
            f"scheduleTimeoutSeconds {opts.gang_timeout}); needs scheduler-plugins' coscheduling plugin"
        )
    else:
        parts.append(
            f"gang: Kueue admits all {n} pods of the Job at once (its waitForPodsReady makes it all or none)"
        )
    if opts.queue:
        parts.append(
            f"queue: Kueue LocalQueue {opts.queue!r}; created suspended, started when Kueue admits it"
        )
    return "; ".join(parts) + "."


NO_GANG_INDEXED = (
    "a plain Indexed Job has no pod group, so its {n} pods may start partly (a worker waits {wait} s for the "
    "master, then exits 69); --queue NAME has Kueue admit them together"
)


def notice(opts) -> str | None:
    """A one-line note for stderr when the job renders without something a platform team may expect."""
    if opts.kind == "indexedjob" and opts.max_nodes > 1 and not opts.gang_on and opts.gang is None:
        return "no gang scheduling: " + NO_GANG_INDEXED.format(n=opts.max_nodes, wait=opts.wait_s)
    return None

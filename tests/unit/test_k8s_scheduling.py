"""Queue, gang, priority, placement, fabric and elastic flags of `launch k8s render`; `launch k8s runtime`.

Each kind is rendered with every flag it supports (through the CLI), each field is asserted where the kind
puts it, and then every document is validated the way tests/unit/test_k8s.py does: core/batch objects and the
pod/Job templates inside the Kubeflow objects with ONE `kubernetes-validate --strict` call, the Kubeflow
objects by a round trip through the pinned API models (kubeflow-training, kubeflow-trainer-api), which drop
unknown fields, so a misspelled key comes back missing.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest
import yaml

from launch import exitcodes
from launch.k8s import cli, runtime
from launch.k8s import manifests as R
from launch.k8s import scheduling as S
from tests.unit.test_k8s import IMAGE, ROOT, _env, _norm, _one, _pod_templates, _tool

FLAGS = [
    "--queue",
    "team-a",
    "--priority-class",
    "train-high",
    "--node-selector",
    "pool=h100",
    "--node-selector",
    "topology.kubernetes.io/zone=z1",
    "--toleration",
    "dedicated=ml:NoSchedule",
    "--toleration",
    "spot:NoExecute",
    "--rdma",
    "rdma/ib=1",
    "--ib-hca",
    "mlx5_0,mlx5_1",
    "--net-if",
    "ib0",
    "--host-network",
    "--gang-timeout",
    "120",
    "--topology",
    "example.com/rack",
]
BASE = ["--image", IMAGE, "--nodes", "4", "--gpus-per-node", "8"]
CASES = {
    "indexedjob": ["--kind", "indexedjob", "--name", "ij", *BASE, *FLAGS],
    "pytorchjob": ["--kind", "pytorchjob", "--name", "pj", *BASE, *FLAGS],
    "pytorchjob-elastic": [
        "--kind",
        "pytorchjob",
        "--name",
        "pje",
        *BASE,
        "--elastic",
        "2:6",
        "--max-restarts",
        "5",
        "--queue",
        "team-a",
    ],
    "trainjob": ["--kind", "trainjob", "--name", "tj", *BASE, *FLAGS, "--topology-required"],
    "trainjob-runtime-ref": [
        "--kind",
        "trainjob",
        "--name",
        "tjr",
        *BASE,
        "--runtime-ref",
        runtime.runtime_name(IMAGE),
        "--queue",
        "team-a",
        "--node-selector",
        "pool=h100",
        "--toleration",
        "dedicated=ml:NoSchedule",
        "--rdma",
        "rdma/ib=1",
        "--net-if",
        "ib0",
    ],
}
RUNTIME_ARGS = ["runtime", "--image", IMAGE, "--priority-class", "train-high", "--host-network"]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    out = {}
    base = tmp_path_factory.mktemp("k8s-sched")
    for case, argv in CASES.items():
        assert cli.main(["render", *argv, "-o", f"{base / case}/"]) == 0, case
        out[case] = [yaml.safe_load(p.read_text()) for p in sorted((base / case).glob("*.yaml"))]
    assert cli.main([*RUNTIME_ARGS, "-o", str(base / "runtime.yaml")]) == 0
    out["runtime"] = list(yaml.safe_load_all((base / "runtime.yaml").read_text()))
    return out


def _workload(objs: list[dict]) -> dict:
    return next(o for o in objs if o["kind"] in ("Job", "PyTorchJob", "TrainJob"))


def _runtime_pod(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]


TOLERATIONS = [
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
    {"key": "spot", "operator": "Exists", "effect": "NoExecute"},
]
SELECTOR = {"pool": "h100", "topology.kubernetes.io/zone": "z1"}


def _assert_fabric(ctr: dict, hca: str = "mlx5_0,mlx5_1") -> None:
    env = _env(ctr)
    assert env["NCCL_IB_HCA"] == hca
    assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == "ib0"
    assert ctr["resources"]["limits"] == {"nvidia.com/gpu": 8, "rdma/ib": 1}


def test_indexed_job_with_every_flag(rendered):
    job = _one(rendered["indexedjob"], "Job")
    assert job["metadata"]["labels"][S.QUEUE_LABEL] == "team-a"
    assert job["spec"]["suspend"] is True  # Kueue admits all four pods as one workload, then unsuspends
    assert job["spec"]["template"]["metadata"]["annotations"] == {S.TOPOLOGY_PREFERRED: "example.com/rack"}
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == SELECTOR and pod["tolerations"] == TOLERATIONS
    assert pod["priorityClassName"] == "train-high"
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    _assert_fabric(pod["containers"][0])


def test_pytorchjob_with_every_flag(rendered):
    job = _one(rendered["pytorchjob"], "PyTorchJob")
    run = job["spec"]["runPolicy"]
    assert job["metadata"]["labels"][S.QUEUE_LABEL] == "team-a" and run["suspend"] is True
    assert run["schedulingPolicy"] == {
        "minAvailable": 4,
        "scheduleTimeoutSeconds": 120,
        "priorityClass": "train-high",
    }
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 3)
    for replica in replicas.values():  # each replica type is a Kueue pod set of its own
        assert replica["template"]["metadata"]["annotations"] == {S.TOPOLOGY_PREFERRED: "example.com/rack"}
    for tpl in _pod_templates(job):
        pod = tpl["spec"]
        assert pod["nodeSelector"] == SELECTOR and pod["tolerations"] == TOLERATIONS
        assert pod["priorityClassName"] == "train-high" and pod["hostNetwork"] is True
        assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
        _assert_fabric(pod["containers"][0])


def test_pytorchjob_elastic_renders_workers_and_an_elastic_policy(rendered):
    job = _one(rendered["pytorchjob-elastic"], "PyTorchJob")
    spec = job["spec"]
    assert list(spec["pytorchReplicaSpecs"]) == ["Worker"]  # the operator's elastic mode: workers only
    assert spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 4
    assert spec["elasticPolicy"] == {
        "minReplicas": 2,
        "maxReplicas": 6,
        "rdzvBackend": "c10d",
        "maxRestarts": 5,
    }
    assert spec["runPolicy"]["schedulingPolicy"]["minAvailable"] == 2  # the gang is the minimum
    assert spec["runPolicy"]["backoffLimit"] == 12  # 2 per node at the maximum


def test_trainjob_with_every_flag_puts_what_it_cannot_patch_in_its_runtime(rendered):
    objs = rendered["trainjob"]
    job, rt = _one(objs, "TrainJob"), _one(objs, "TrainingRuntime")
    assert job["metadata"]["labels"][S.QUEUE_LABEL] == "team-a" and job["spec"]["suspend"] is True
    assert rt["spec"]["podGroupPolicy"] == {"coscheduling": {"scheduleTimeoutSeconds": 120}}
    pod = _runtime_pod(rt)
    assert pod["priorityClassName"] == "train-high"
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    assert patch["template"]["spec"]["template"]["metadata"] == {
        "annotations": {S.TOPOLOGY_REQUIRED: "example.com/rack"}
    }
    (tpl,) = _pod_templates(job)  # what the TrainJob patches in: placement, fabric env and devices
    assert tpl["spec"]["nodeSelector"] == SELECTOR and tpl["spec"]["tolerations"] == TOLERATIONS
    assert "priorityClassName" not in tpl["spec"] and "hostNetwork" not in tpl["spec"]
    _assert_fabric(tpl["spec"]["containers"][0])


def test_trainjob_on_a_cluster_runtime_references_it(rendered):
    objs = rendered["trainjob-runtime-ref"]
    assert [o["kind"] for o in objs] == ["PersistentVolumeClaim", "TrainJob"]  # no runtime per job
    job = _one(objs, "TrainJob")
    name = runtime.runtime_name(IMAGE)
    assert name == "torchrunner-0.1.0-cu128"
    assert job["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": name,
    }
    (cluster_rt,) = rendered["runtime"]
    assert cluster_rt["kind"] == "ClusterTrainingRuntime" and cluster_rt["metadata"]["name"] == name
    assert "namespace" not in cluster_rt["metadata"]
    assert cluster_rt["spec"]["podGroupPolicy"] == {"coscheduling": {"scheduleTimeoutSeconds": 300}}
    assert _runtime_pod(cluster_rt)["priorityClassName"] == "train-high"
    assert _runtime_pod(cluster_rt)["containers"][0]["image"] == IMAGE
    assert cluster_rt["spec"]["template"]["spec"]["failurePolicy"]["maxRestarts"] == runtime.DEFAULT_BACKOFF
    (tpl,) = _pod_templates(job)
    _assert_fabric(tpl["spec"]["containers"][0], hca=S.DEFAULT_IB_HCA)


def test_runtime_is_named_for_the_image_version():
    assert runtime.runtime_name("r.io/ml/torchrunner:0.2.0-CU128") == "torchrunner-0.2.0-cu128"
    assert runtime.runtime_name("r.io:5000/torchrunner:1.0_rc1") == "torchrunner-1.0-rc1"
    assert runtime.runtime_name("r.io/t@sha256:" + "ab" * 32) == "torchrunner-sha256-abababababab"


def _validate_docs(rendered: dict[str, list[dict]], tmp_path) -> int:
    files = []
    for case, objs in rendered.items():
        for i, obj in enumerate(objs):
            docs = [obj] if obj["apiVersion"] in ("v1", "batch/v1") else []
            if obj["kind"] in ("PyTorchJob", "TrainJob"):
                docs += [
                    {
                        "apiVersion": "v1",
                        "kind": "PodTemplate",
                        "metadata": {"name": f"{case}-{j}"},
                        "template": t,
                    }
                    for j, t in enumerate(_pod_templates(obj))
                ]
            if obj["kind"] in ("TrainingRuntime", "ClusterTrainingRuntime"):
                rjob = obj["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]
                spec = {**rjob["spec"], "completions": 4, "parallelism": 4}
                docs.append(
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "metadata": {"name": f"{case}-rt"},
                        "spec": spec,
                    }
                )
            for k, doc in enumerate(docs):
                path = tmp_path / f"{case}-{i}-{k}.yaml"
                path.write_text(yaml.safe_dump(doc))
                files.append(str(path))
    r = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "--quiet", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "ERROR" not in r.stdout + r.stderr, r.stdout + r.stderr
    return len(files)


def test_every_document_passes_kubernetes_validate_strict(rendered, tmp_path):
    # 5 claims, a Service, a Job; 3 PodTemplates of the PyTorchJobs' replicas, 2 of the TrainJobs' patched
    # pods; the Jobs of the TrainingRuntime and of the ClusterTrainingRuntime
    assert _validate_docs(rendered, tmp_path) == 14


def test_kubeflow_objects_round_trip_through_the_pinned_models(rendered):
    """Field names as the installed models spell them: runPolicy.schedulingPolicy, elasticPolicy, suspend,
    podGroupPolicy.coscheduling, ClusterTrainingRuntime."""
    from kubeflow.training import ApiClient
    from kubeflow_trainer_api import models as v2

    client = ApiClient()
    checked = 0
    for objs in rendered.values():
        for obj in objs:
            if obj["kind"] == "PyTorchJob":

                class Response:  # ApiClient.deserialize reads a REST response's .data
                    data = json.dumps(obj)

                model = client.deserialize(Response(), "KubeflowOrgV1PyTorchJob")
                back = client.sanitize_for_serialization(model)
            elif obj["kind"] in ("TrainJob", "TrainingRuntime", "ClusterTrainingRuntime"):
                back = getattr(v2, f"TrainerV1alpha1{obj['kind']}").from_dict(obj).to_dict()
            else:
                continue
            assert _norm(back) == _norm(obj), obj["kind"]
            checked += 1
    assert checked == 6  # 2 PyTorchJobs, 2 TrainJobs, 1 TrainingRuntime, 1 ClusterTrainingRuntime


def test_the_model_round_trip_catches_a_misspelled_field(rendered):
    from kubeflow_trainer_api import models as v2

    rt = json.loads(json.dumps(_one(rendered["trainjob"], "TrainingRuntime")))
    rt["spec"]["podGroupPolicy"]["coscheduling"]["scheduleTimeoutSecond"] = 5
    assert _norm(v2.TrainerV1alpha1TrainingRuntime.from_dict(rt).to_dict()) != _norm(rt)


def test_gang_defaults_per_kind(capsys):
    def render(*argv: str) -> list[dict]:
        return R.render(R.Options(**dict(image=IMAGE, **dict(argv))))

    pj = _one(render(("kind", "pytorchjob"), ("nodes", 2)), "PyTorchJob")
    assert pj["spec"]["runPolicy"]["schedulingPolicy"]["minAvailable"] == 2
    assert "schedulingPolicy" not in _one(render(("kind", "pytorchjob")), "PyTorchJob")["spec"]["runPolicy"]
    off = _one(render(("kind", "pytorchjob"), ("nodes", 2), ("gang", False)), "PyTorchJob")
    assert "schedulingPolicy" not in off["spec"]["runPolicy"]
    tj = _one(render(("kind", "trainjob"), ("nodes", 2)), "TrainingRuntime")
    assert "coscheduling" in tj["spec"]["podGroupPolicy"]
    assert "podGroupPolicy" not in _one(render(("kind", "trainjob")), "TrainingRuntime")["spec"]
    # A plain Indexed Job has no pod group: without a queue it renders, with a note on stderr and in the file.
    assert cli.main(["render", "--kind", "indexedjob", "--image", IMAGE, "--nodes", "2"]) == 0
    out, err = capsys.readouterr()
    assert err.startswith("k8s render: note: no gang scheduling") and err.count("\n") == 1
    assert "# Scheduling: no gang" in out and "--queue NAME" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--kind", "indexedjob", "--nodes", "2", "--gang"],
            "--gang with --kind indexedjob needs --queue NAME",
        ),
        (
            ["--kind", "trainjob", "--elastic", "1:2"],
            "--elastic: a TrainJob (Trainer v2) has no elastic policy",
        ),
        (["--kind", "indexedjob", "--elastic", "1:2"], "--elastic: an Indexed Job runs a fixed number"),
        (["--kind", "pytorchjob", "--elastic", "3:1"], "--elastic '3:1': expected MIN:MAX"),
        (["--kind", "pytorchjob", "--elastic", "2:4"], "--nodes 1: outside --elastic 2:4"),
        (["--kind", "pytorchjob", "--toleration", "k=v:Sometimes"], "effect 'Sometimes'"),
        (["--kind", "pytorchjob", "--toleration", "=v"], "--toleration '=v': expected KEY=VALUE:EFFECT"),
        (["--kind", "pytorchjob", "--node-selector", "pool"], "--node-selector 'pool': expected KEY=VALUE"),
        (
            ["--kind", "pytorchjob", "--node-selector", "pool=a", "--node-selector", "pool=b"],
            "--node-selector 'pool=b': pool is already 'a'",
        ),
        (["--kind", "pytorchjob", "--rdma", "ib=1"], "--rdma 'ib=1': expected RESOURCE=N"),
        (["--kind", "pytorchjob", "--rdma", "rdma/ib=0"], "--rdma 'rdma/ib=0': expected RESOURCE=N"),
        (["--kind", "pytorchjob", "--ib-hca", "mlx5"], "--ib-hca 'mlx5': only with --rdma"),
        (["--kind", "pytorchjob", "--net-if", "ib 0"], "--net-if 'ib 0': expected a network interface"),
        (
            ["--kind", "pytorchjob", "--queue", "Team_A"],
            "--queue 'Team_A': expected the name of a Kueue LocalQueue",
        ),
        (["--kind", "pytorchjob", "--priority-class", "Hi!"], "--priority-class 'Hi!': expected the name"),
        (["--kind", "pytorchjob", "--gang-timeout", "0"], "--gang-timeout 0: expected at least 1 s"),
        (
            ["--kind", "pytorchjob", "--topology", "example.com/rack"],
            "--topology 'example.com/rack' needs --queue",
        ),
        (
            ["--kind", "pytorchjob", "--topology", "a b", "--queue", "q"],
            "--topology 'a b': expected a node label",
        ),
        (["--kind", "indexedjob", "--topology-required"], "--topology-required: only with --topology"),
        (["--kind", "pytorchjob", "--runtime-ref", "x"], "--runtime-ref 'x': only with --kind trainjob"),
        (
            ["--kind", "trainjob", "--runtime-ref", "r", "--priority-class", "p"],
            "--priority-class with --runtime-ref",
        ),
        (["--kind", "trainjob", "--runtime-ref", "r", "--host-network"], "--host-network with --runtime-ref"),
        (["--kind", "trainjob", "--runtime-ref", "r", "--no-gang"], "--no-gang with --runtime-ref"),
        (
            ["--kind", "trainjob", "--runtime-ref", "r", "--backoff-limit", "3"],
            "--backoff-limit with --runtime-ref",
        ),
    ],
)
def test_bad_scheduling_flags_are_one_line_errors(capsys, argv, message):
    assert cli.main(["render", "--image", IMAGE, *argv]) == exitcodes.CONFIG
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--image", "torchrunner"], "pin a tag or digest"),
        (["--image", IMAGE, "--name", "Bad_Name"], "--name 'Bad_Name': expected a DNS subdomain"),
        (["--image", IMAGE, "--gang-timeout", "0"], "--gang-timeout 0"),
        (["--image", IMAGE, "--backoff-limit", "-1"], "--backoff-limit -1"),
    ],
)
def test_bad_runtime_flags_are_one_line_errors(capsys, argv, message):
    assert cli.main(["runtime", *argv]) == exitcodes.CONFIG
    err = capsys.readouterr().err
    assert err.startswith("k8s runtime: ") and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    "text, toleration",
    [
        (
            "dedicated=ml:NoSchedule",
            {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
        ),
        ("spot:NoExecute", {"key": "spot", "operator": "Exists", "effect": "NoExecute"}),
        ("team=a", {"key": "team", "operator": "Equal", "value": "a"}),
        ("example.com/gpu", {"key": "example.com/gpu", "operator": "Exists"}),
    ],
)
def test_toleration_forms(text, toleration):
    assert S.parse_toleration(text) == toleration


def test_the_readme_kueue_example_renders_what_it_says(tmp_path):
    """The README's worked example (Kueue queue + gang), its `python -m launch` lines run as written."""
    text = (ROOT / "README.md").read_text()
    block = text.split("A Kueue queue with gang scheduling", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [c for c in block.replace("\\\n", " ").splitlines() if c.startswith("python -m launch")]
    assert len(commands) == 2
    for command in commands:
        argv = shlex.split(command.split("#", 1)[0])
        r = subprocess.run(
            [sys.executable, *argv[1:]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert r.returncode == 0, r.stderr
    (rt,) = yaml.safe_load_all((tmp_path / "k8s" / "rt.yaml").read_text())
    job = yaml.safe_load((tmp_path / "k8s" / "llm" / "trainjob-llm.yaml").read_text())
    assert job["spec"]["runtimeRef"]["name"] == rt["metadata"]["name"] == "torchrunner-0.1.0-cu128"
    assert "coscheduling" in rt["spec"]["podGroupPolicy"]
    assert job["metadata"]["labels"][S.QUEUE_LABEL] == "team-a" and job["spec"]["suspend"] is True

"""Kubernetes manifests from `python -m launch k8s render`, checked offline.

Every rendered core/batch object, and every pod template embedded in a Kubeflow object (wrapped as a
PodTemplate or a batch/v1 Job), passes `kubernetes-validate --strict` in ONE invocation (~0.3 s each call).
The Kubeflow objects themselves load into the API models from PyPI (kubeflow-training for PyTorchJob,
kubeflow-trainer-api for TrainJob/TrainingRuntime) and must come back unchanged: the models silently drop
unknown fields, so the round trip is what catches a misspelled key. Then explicit assertions on what the
issue asks of every pod: /dev/shm, grace period, GPUs, the ReadWriteMany run volume, the exit-code policy.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launch import exitcodes
from launch.k8s import cli
from launch.k8s import manifests as R

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "registry.example.com/ml/torchrunner:0.1.0-cu128"

# (case id, render arguments); the matrix of the issue: 2 nodes x 8 GPUs and 1 node x 0 GPUs for each kind.
CASES = {
    f"{kind}-{shape}": [
        "--kind",
        kind,
        "--image",
        IMAGE,
        "--name",
        f"{kind[:3]}{shape.replace('x', '-')}",
        "--nodes",
        shape.split("x")[0],
        "--gpus-per-node",
        shape.split("x")[1],
        "--config",
        "configs/gpt.yaml",
        "--",
        "train.precision=bf16",
    ]
    for kind in R.KINDS
    for shape in ("2x8", "1x0")
}
CASES["trainjob-cluster-runtime"] = [
    "--kind",
    "trainjob",
    "--image",
    IMAGE,
    "--name",
    "tjc",
    "--nodes",
    "2",
    "--gpus-per-node",
    "8",
    "--runtime-ref",
    "torch-distributed",
]
CASES["indexedjob-existing-pvc"] = [
    "--kind",
    "indexedjob",
    "--image",
    IMAGE,
    "--name",
    "ipvc",
    "--nodes",
    "3",
    "--gpus-per-node",
    "4",
    "--pvc",
    "team-runs",
    "--run-dir",
    "/runs/exp7",
    "--grace-period",
    "300",
    "--backoff-limit",
    "9",
    "--shm-size",
    "64Gi",
]
# Checkpoints on object storage: credentials from a Secret, no ReadWriteMany claim (issue 17).
S3_DIR = "s3://team-ckpts/exp7"
for _kind in R.KINDS:
    CASES[f"{_kind}-s3"] = [
        "--kind",
        _kind,
        "--image",
        IMAGE,
        "--name",
        f"{_kind[:3]}s3",
        "--nodes",
        "2",
        "--gpus-per-node",
        "8",
        "--checkpoint-dir",
        S3_DIR,
        "--s3-secret",
        "s3-creds",
    ]


def _tool(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed: `make setup` installs it (requirements-dev.txt)"
    return found


def _norm(x):
    """Compare numbers by value: the models turn the quantity 8 into '8' (kubernetes client) or 8.0
    (pydantic)."""
    if isinstance(x, dict):
        return {k: _norm(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_norm(v) for v in x]
    if isinstance(x, (int, float, str)) and not isinstance(x, bool):
        try:
            return float(x)
        except ValueError:
            return x
    return x


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """case id -> objects, each case rendered through the CLI into its own directory (one file per object)."""
    out = {}
    base = tmp_path_factory.mktemp("k8s")
    for case, argv in CASES.items():
        target = base / case
        cut = argv.index("--") if "--" in argv else len(argv)
        assert cli.main(["render", *argv[:cut], "-o", f"{target}/", *argv[cut:]]) == 0
        files = sorted(target.glob("*.yaml"))
        out[case] = [yaml.safe_load(f.read_text()) for f in files]
        for f, obj in zip(files, out[case]):
            assert f.read_text().startswith("# Rendered by: python -m launch k8s render")
            assert f.name == f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
    return out


def _one(objs: list[dict], kind: str) -> dict:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[o['kind'] for o in objs]}"
    return found[0]


def _pod_templates(obj: dict) -> list[dict]:
    """Every PodTemplateSpec a kind carries; for a TrainJob, the pod the Trainer would build from it."""
    if obj["kind"] == "Job":
        return [obj["spec"]["template"]]
    if obj["kind"] == "PyTorchJob":
        return [r["template"] for r in obj["spec"]["pytorchReplicaSpecs"].values()]
    if obj["kind"] == "TrainJob":
        trainer = obj["spec"]["trainer"]
        patch = obj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][
            0
        ]
        pod = dict(patch["template"]["spec"]["template"]["spec"])
        ctr_patch = pod.pop("containers")[0]
        ctr = {
            "name": ctr_patch["name"],
            "image": trainer["image"],
            "command": trainer["command"],
            "args": trainer["args"],
            "env": trainer["env"],
            **{k: v for k, v in ctr_patch.items() if k != "name"},
        }
        if "resourcesPerNode" in trainer:
            ctr["resources"] = trainer["resourcesPerNode"]
        return [{"metadata": {"labels": obj["metadata"]["labels"]}, "spec": {**pod, "containers": [ctr]}}]
    return []


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def test_every_object_passes_kubernetes_validate_strict(rendered, tmp_path):
    """Core/batch objects as rendered, plus the Kubeflow objects' pod and Job templates wrapped, in one
    call."""
    files = []
    for case, objs in rendered.items():
        for i, obj in enumerate(objs):
            docs = []
            if obj["apiVersion"] in ("v1", "batch/v1"):
                docs.append(obj)
            for j, tpl in enumerate(_pod_templates(obj) if obj["kind"] in ("PyTorchJob", "TrainJob") else []):
                docs.append(
                    {
                        "apiVersion": "v1",
                        "kind": "PodTemplate",
                        "metadata": {"name": f"{case}-{i}-{j}"},
                        "template": tpl,
                    }
                )
            if obj["kind"] == "TrainingRuntime":
                rjob = obj["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]
                docs.append(
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "metadata": {"name": f"{case}-rt"},
                        "spec": {**rjob["spec"], "completions": 2, "parallelism": 2},
                    }
                )
            for k, doc in enumerate(docs):
                path = tmp_path / f"{case}-{i}-{k}.yaml"
                path.write_text(yaml.safe_dump(doc))
                files.append(str(path))
    assert len(files) >= 20
    r = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "--quiet", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ERROR" not in r.stdout + r.stderr


def test_kubernetes_validate_catches_a_misspelled_field(tmp_path):
    """The validator is strict for real: the checks above would catch a typo in a template."""
    job = _one(R.render(R.Options(kind="indexedjob", image=IMAGE, nodes=2)), "Job")
    job["spec"]["template"]["spec"]["subdomian"] = job["spec"]["template"]["spec"].pop("subdomain")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(job))
    r = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "--quiet", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "subdomian" in r.stdout + r.stderr


def test_pytorchjob_loads_into_the_kubeflow_training_model_unchanged(rendered):
    from kubeflow.training import ApiClient
    from kubeflow.training.models import KubeflowOrgV1PyTorchJob

    client = ApiClient()
    for case in ("pytorchjob-2x8", "pytorchjob-1x0", "pytorchjob-s3"):
        obj = _one(rendered[case], "PyTorchJob")

        class Response:  # ApiClient.deserialize reads a REST response's .data
            data = json.dumps(obj)

        model = client.deserialize(Response(), "KubeflowOrgV1PyTorchJob")
        assert isinstance(model, KubeflowOrgV1PyTorchJob)
        assert _norm(client.sanitize_for_serialization(model)) == _norm(obj), case


def test_trainjob_and_runtime_load_into_the_trainer_api_models_unchanged(rendered):
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainingRuntime, TrainerV1alpha1TrainJob

    for case in ("trainjob-2x8", "trainjob-1x0", "trainjob-cluster-runtime", "trainjob-s3"):
        job = _one(rendered[case], "TrainJob")
        assert _norm(TrainerV1alpha1TrainJob.from_dict(job).to_dict()) == _norm(job), case
    runtime = _one(rendered["trainjob-2x8"], "TrainingRuntime")
    assert _norm(TrainerV1alpha1TrainingRuntime.from_dict(runtime).to_dict()) == _norm(runtime)


@pytest.mark.parametrize("case", list(CASES))
def test_every_pod_has_shm_grace_gpus_and_the_shared_run_volume(rendered, case):
    objs = rendered[case]
    argv = CASES[case]
    opt = dict(zip(argv[::2], argv[1::2]))
    gpus = int(opt["--gpus-per-node"])
    grace = int(opt.get("--grace-period", 120))
    workload = next(o for o in objs if o["kind"] in ("Job", "PyTorchJob", "TrainJob"))
    claim = opt.get("--pvc") or f"{workload['metadata']['name']}-runs"
    if "--pvc" in opt or "--checkpoint-dir" in opt:
        assert not [o for o in objs if o["kind"] == "PersistentVolumeClaim"]
    else:
        pvc = _one(objs, "PersistentVolumeClaim")
        assert pvc["metadata"]["name"] == claim and pvc["spec"]["accessModes"] == ["ReadWriteMany"]

    templates = _pod_templates(workload)
    assert templates
    for tpl in templates:
        spec = tpl["spec"]
        vols = {v["name"]: v for v in spec["volumes"]}
        (ctr,) = spec["containers"]
        mounts = {m["mountPath"]: m["name"] for m in ctr["volumeMounts"]}
        env = _env(ctr)

        shm = vols[mounts["/dev/shm"]]["emptyDir"]
        assert shm["medium"] == "Memory"
        assert shm["sizeLimit"] == opt.get("--shm-size", "16Gi" if gpus else "2Gi")

        assert spec["terminationGracePeriodSeconds"] == grace
        # torchrun must give up on its workers before the kubelet's SIGKILL
        assert 0 < int(env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]) < grace

        limits = ctr.get("resources", {}).get("limits", {})
        if gpus:
            assert env["TORCH_NCCL_DEBUG_INFO_TEMP_FILE"].startswith(
                env["RUN_DIR"] + "/"
            )  # survives restarts
            assert limits["nvidia.com/gpu"] == gpus
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
                "tolerations"
            ]
        else:
            assert "nvidia.com/gpu" not in limits and "tolerations" not in spec

        if "--checkpoint-dir" in opt:  # run.dir is pod scratch; checkpoints and history go to the bucket
            assert vols[mounts["/runs"]] == {"name": "runs", "emptyDir": {}}
        else:
            assert vols[mounts["/runs"]]["persistentVolumeClaim"]["claimName"] == claim
        assert env["RUN_DIR"] == opt.get("--run-dir", f"/runs/{workload['metadata']['name']}")
        assert env["RUN_DIR"].startswith("/runs/")
        assert env["LAUNCH_MODE"] == "ddp"
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
        if "--checkpoint-dir" in opt:
            assert ctr["args"] == ["-c", R.DEFAULT_CONFIG, f"checkpoint.dir={S3_DIR}"]
        elif "--" in argv:
            assert ctr["args"] == ["-c", "configs/gpt.yaml", "train.precision=bf16"]
        else:
            assert ctr["args"] == ["-c", R.DEFAULT_CONFIG]
        assert ctr["image"] == IMAGE


def _policy_codes(policy: dict, container: str) -> dict[str, list[int]]:
    out: dict[str, list] = {}
    for rule in policy["rules"]:
        if "onExitCodes" in rule:
            assert rule["onExitCodes"]["containerName"] == container
            assert rule["onExitCodes"]["operator"] == "In"
            out.setdefault(rule["action"], []).extend(rule["onExitCodes"]["values"])
        for cond in rule.get("onPodConditions", []):
            out.setdefault(rule["action"], []).append(cond["type"])
    return out


def test_indexed_job_fails_fast_on_config_error_and_resumes_after_preemption(rendered):
    svc, job = _one(rendered["indexedjob-2x8"], "Service"), _one(rendered["indexedjob-2x8"], "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 2
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # required by podFailurePolicy
    codes = _policy_codes(spec["podFailurePolicy"], "trainer")
    assert codes == {
        "FailJob": [exitcodes.CONFIG, exitcodes.NONFINITE],
        "Ignore": [exitcodes.PREEMPTED, "DisruptionTarget"],
    }
    assert (exitcodes.CONFIG, exitcodes.PREEMPTED) == (2, 75)
    assert spec["backoffLimit"] == 4  # 2 per node
    assert _one(rendered["indexedjob-existing-pvc"], "Job")["spec"]["backoffLimit"] == 9

    # Pod <job>-<index> is reachable as <job>-<index>.<service> through the headless Service.
    pod = spec["template"]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert pod["spec"]["subdomain"] == svc["metadata"]["name"]
    assert all(pod["metadata"]["labels"].get(k) == v for k, v in svc["spec"]["selector"].items())
    env = _env(pod["spec"]["containers"][0])
    name = job["metadata"]["name"]
    assert env["LAUNCH_MASTER_ADDR"] == f"{name}-0.{svc['metadata']['name']}"
    assert env["LAUNCH_NNODES"] == "2" and env["NPROC_PER_NODE"] == "8"
    assert int(env["LAUNCH_MASTER_PORT"]) == svc["spec"]["ports"][0]["port"]


def test_trainjob_runtime_carries_the_exit_code_policy(rendered):
    objs = rendered["trainjob-2x8"]
    job, runtime = _one(objs, "TrainJob"), _one(objs, "TrainingRuntime")
    assert job["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "TrainingRuntime",
        "name": runtime["metadata"]["name"],
    }
    jobset = runtime["spec"]["template"]["spec"]
    (rjob,) = jobset["replicatedJobs"]
    assert rjob["name"] == "node"
    assert rjob["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    jspec = rjob["template"]["spec"]
    assert jspec["template"]["spec"]["restartPolicy"] == "Never"
    assert _policy_codes(jspec["podFailurePolicy"], "node") == {
        "FailJob": [2, 3],
        "Ignore": [75, "DisruptionTarget"],
    }
    assert jspec["backoffLimit"] == 0  # any counted failure restarts the whole JobSet, all nodes together
    assert jobset["failurePolicy"]["maxRestarts"] == 4
    assert jobset["failurePolicy"]["rules"] == [
        {
            "name": "FailFastOnConfigOrNonFinite",
            "action": "FailJobSet",
            "onJobFailureReasons": ["PodFailurePolicy"],
        }
    ]

    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 8
    assert trainer["command"] == _dockerfile_entrypoint()  # the runtime's command would replace the image's
    reserved = {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}
    assert not reserved & set(_env(trainer))  # the Trainer rejects them in trainer.env
    assert (
        job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
            "name"
        ]
        == "node"
    )

    cluster = rendered["trainjob-cluster-runtime"]
    assert [o["kind"] for o in cluster] == ["PersistentVolumeClaim", "TrainJob"]
    assert _one(cluster, "TrainJob")["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "torch-distributed",
    }


def test_pytorchjob_restarts_on_failure_within_a_backoff_budget(rendered):
    job = _one(rendered["pytorchjob-2x8"], "PyTorchJob")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 1
    # OnFailure, not ExitCode: ExitCode treats 1-127 as permanent, and our preemption code is 75.
    assert {r["restartPolicy"] for r in replicas.values()} == {"OnFailure"}
    assert job["spec"]["runPolicy"]["backoffLimit"] == 4
    assert job["spec"]["nprocPerNode"] == "8"
    for r in replicas.values():
        (ctr,) = r["template"]["spec"]["containers"]
        assert ctr["name"] == "pytorch"  # the container the operator injects MASTER_ADDR & co. into
        assert ctr["ports"] == [{"name": "pytorchjob-port", "containerPort": 29500}]
    single = _one(rendered["pytorchjob-1x0"], "PyTorchJob")["spec"]
    assert list(single["pytorchReplicaSpecs"]) == ["Master"] and single["nprocPerNode"] == "1"


def _dockerfile_entrypoint() -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    return json.loads(re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M).group(1))


def test_renderer_agrees_with_the_dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    assert R.ENTRYPOINT == _dockerfile_entrypoint()
    assert json.loads(re.search(r"^CMD\s+(\[.*\])\s*$", text, re.M).group(1)) == ["-c", R.DEFAULT_CONFIG]
    assert (ROOT / R.DEFAULT_CONFIG).is_file()
    uid = int(re.search(r"^ARG APP_UID=(\d+)", text, re.M).group(1))
    pod = R.pod_template(R.Options(kind="indexedjob", image=IMAGE))
    assert pod["spec"]["securityContext"]["runAsUser"] == uid == pod["spec"]["securityContext"]["fsGroup"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--image", "torchrunner"], "pin a tag or digest"),
        (["--image", "torchrunner:latest"], "pin a tag or digest"),
        (["--name", "Bad_Name"], "--name 'Bad_Name'"),
        (["--nodes", "0"], "--nodes 0"),
        (["--grace-period", "20"], "--grace-period 20"),
        (["--shm-size", "lots"], "--shm-size 'lots'"),
        (["--run-dir", "/tmp/x"], "under /runs/"),
        (["--", "notakeyvalue"], "KEY=VALUE"),
    ],
)
def test_bad_options_are_one_line_errors(capsys, argv, message):
    base = ["render", "--kind", "indexedjob", "--image", IMAGE]
    assert cli.main(base + argv) == exitcodes.CONFIG
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_render_to_stdout_is_a_multi_document_stream(capsys):
    assert (
        cli.main(["render", "--kind", "indexedjob", "--image", IMAGE, "--nodes", "2", "--namespace", "ml"])
        == 0
    )
    out = capsys.readouterr().out
    objs = list(yaml.safe_load_all(out))
    assert [o["kind"] for o in objs] == ["PersistentVolumeClaim", "Service", "Job"]
    assert {o["metadata"]["namespace"] for o in objs} == {"ml"}
    assert "Failure policy:" in out.split("apiVersion")[0]


@pytest.mark.parametrize("kind", R.KINDS)
def test_s3_checkpoints_take_credentials_from_the_secret_and_need_no_claim(rendered, kind):
    objs = rendered[f"{kind}-s3"]
    assert not [o for o in objs if o["kind"] == "PersistentVolumeClaim"]
    text = yaml.safe_dump_all(objs)
    assert "persistentVolumeClaim" not in text and "ReadWriteMany" not in text
    workload = next(o for o in objs if o["kind"] in ("Job", "PyTorchJob", "TrainJob"))
    for tpl in _pod_templates(workload):
        (ctr,) = tpl["spec"]["containers"]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in ctr["env"] if "valueFrom" in e}
        assert set(refs) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION"}
        assert all(r["name"] == "s3-creds" and r["key"] == k for k, r in refs.items())
        assert not refs["AWS_ACCESS_KEY_ID"]["optional"] and refs["AWS_ENDPOINT_URL"]["optional"]
    assert f"checkpoint.dir={S3_DIR}" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--checkpoint-dir", "/mnt/ckpt"], "--checkpoint-dir '/mnt/ckpt': expected s3://bucket/prefix"),
        (["--s3-secret", "creds"], "--s3-secret 'creds': only with --checkpoint-dir"),
        (["--checkpoint-dir", "s3://b-1/x", "--pvc", "runs"], "--pvc 'runs': not used with --checkpoint-dir"),
        (
            ["--checkpoint-dir", "s3://b-1/x", "--s3-secret", "Bad_Name"],
            "--s3-secret 'Bad_Name': expected the name",
        ),
    ],
)
def test_object_storage_options_are_one_line_errors(capsys, argv, message):
    assert cli.main(["render", "--kind", "indexedjob", "--image", IMAGE, *argv]) == exitcodes.CONFIG
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_one_job_per_output_directory(tmp_path, capsys):
    """The README once rendered three kinds into k8s/: `kubectl apply -f k8s/` then started three jobs named
    train, sharing one claim and one RUN_DIR. A second job is refused; the same one re-renders in place."""
    base = ["render", "--image", IMAGE, "--nodes", "2"]
    out = f"{tmp_path}/k8s/"
    assert cli.main([*base, "--kind", "indexedjob", "--name", "gpt", "-o", out]) == 0
    first = sorted(p.name for p in (tmp_path / "k8s").iterdir())
    assert first == ["job-gpt.yaml", "persistentvolumeclaim-gpt-runs.yaml", "service-gpt.yaml"]
    assert cli.main([*base, "--kind", "indexedjob", "--name", "gpt", "--gpus-per-node", "8", "-o", out]) == 0
    capsys.readouterr()
    for other in (
        ["--kind", "pytorchjob", "--name", "gpt"],
        ["--kind", "trainjob", "--name", "gpt"],
        ["--kind", "indexedjob", "--name", "bert"],
    ):
        assert cli.main([*base, *other, "-o", out]) == exitcodes.CONFIG
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "job-gpt.yaml already holds Job 'gpt'" in err, err
    assert sorted(p.name for p in (tmp_path / "k8s").iterdir()) == first  # nothing half-written
    assert cli.main([*base, "--kind", "pytorchjob", "--name", "gpt-v1", "-o", f"{tmp_path}/k8s-v1/"]) == 0
    assert (tmp_path / "k8s-v1" / "pytorchjob-gpt-v1.yaml").is_file()

"""docker/entrypoint.sh under a simulated PyTorchJob and TrainJob with the fabric settings the manifests
render (`launch k8s render --rdma rdma/ib=1 --net-if IFACE`): both nodes start through the entrypoint,
torchrun forms its rendezvous on loopback, and the stand-in worker (tests/distributed/fake_worker.py) records
what each rank sees, so the NCCL/gloo variables are shown to reach every worker. A misnamed interface stops
the launch in the preflight (exit 2) before any worker starts, instead of an NCCL timeout minutes later.
"""

from __future__ import annotations

import json
import subprocess

import psutil
import pytest

from launch.k8s import manifests as R
from tests.conftest import free_port
from tests.integration.test_entrypoint import ENTRYPOINT, ROOT, _env, _pytorchjob_env, _trainer_v2_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
FAKE_DIR = ROOT / "tests" / "distributed"
LOOPBACK = next(
    n for n, addrs in psutil.net_if_addrs().items() if any(a.address == "127.0.0.1" for a in addrs)
)


def rendered_env(kind: str, net_if: str, run_dir) -> dict[str, str]:
    """The container env of node pods as rendered (the values; the controller adds its own variables)."""
    opts = R.Options(kind=kind, image="r/t:1", nodes=2, rdma=["rdma/ib=1"], net_if=net_if, pvc="runs")
    job = next(o for o in R.render(opts) if o["kind"] in ("PyTorchJob", "TrainJob"))
    if kind == "trainjob":
        entries = job["spec"]["trainer"]["env"]
    else:
        entries = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]
    env = {e["name"]: e["value"] for e in entries}
    assert env["NCCL_IB_HCA"] == "mlx5" and env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == net_if
    return {**env, "RUN_DIR": str(run_dir)}  # /runs/<job> is the pod's volume; here a test folder


def start(env: dict, out) -> subprocess.Popen:
    extra = {
        **env,
        "PYTHONPATH": f"{ROOT}:{FAKE_DIR}",
        "FAKE_OUT": str(out),
        "ENTRYPOINT_WAIT_S": "60",
        "CUDA_VISIBLE_DEVICES": "",
    }
    return subprocess.Popen(
        ["bash", str(ENTRYPOINT), "--entry", "fake_worker", "-c", "configs/cnn.yaml"],
        cwd=ROOT,
        env=_env(extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(
    "kind, controller", [("pytorchjob", _pytorchjob_env), ("trainjob", _trainer_v2_env)], ids=["v1", "v2"]
)
def test_rendered_fabric_settings_reach_every_worker(tmp_path, kind, controller):
    port = free_port()
    rendered = rendered_env(kind, LOOPBACK, tmp_path / "run")
    procs = [start({**rendered, **controller(rank, port)}, tmp_path) for rank in (0, 1)]
    try:
        outs = [p.communicate(timeout=150) for p in procs]
    finally:
        for p in procs:
            p.kill() if p.poll() is None else None
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    for _, err in outs:
        names = f"NCCL_SOCKET_IFNAME={LOOPBACK} GLOO_SOCKET_IFNAME={LOOPBACK} NCCL_IB_HCA=mlx5"
        assert f"entrypoint: network: {names}" in err, err
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank{rank}-attempt0.json").read_text())["env"]
        assert seen["WORLD_SIZE"] == "2" and seen["LAUNCH_MODE"] == "ddp"
        assert (seen["NCCL_SOCKET_IFNAME"], seen["GLOO_SOCKET_IFNAME"], seen["NCCL_IB_HCA"]) == (
            LOOPBACK,
            LOOPBACK,
            "mlx5",
        )


def test_a_missing_interface_stops_the_launch_before_any_worker(tmp_path):
    rendered = rendered_env("pytorchjob", "ib9", tmp_path / "run")
    proc = start({**rendered, **_pytorchjob_env(0, free_port()), "PET_NNODES": 1, "WORLD_SIZE": 1}, tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "launch: doctor fail: NCCL_SOCKET_IFNAME: NCCL_SOCKET_IFNAME=ib9: no interface ib9 here" in err
    assert "Traceback" not in err and not list(tmp_path.glob("rank*.json"))

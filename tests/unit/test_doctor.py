"""``launch doctor`` finds each planted problem, and its fast subset stays fast and free of torch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

from launch import doctor
from launch.cluster import resolve

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
StatVfs = namedtuple("StatVfs", "f_blocks f_bavail f_frsize")
Part = namedtuple("Part", "mountpoint fstype")


def by_name(checks, name):
    (check,) = [c for c in checks if c.name == name]
    return check


def fake_shm(total_mib: int, free_mib: int):
    return lambda _path: StatVfs(total_mib * 256, free_mib * 256, 4096)


def refused_port() -> int:
    """A port nothing listens on: bind one, then close it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tiny_shm_fails_when_workers_need_more():
    cfg = {"data": {"num_workers": 4, "prefetch_factor": 2, "name": "custom"}, "train": {"batch_size": 64}}
    need, formula = doctor.shm_need(cfg, nproc=2, world=2)
    assert need == 2 * 4 * 2 * 32 * doctor.IMAGE_SAMPLE_BYTES * 2 + doctor.NCCL_SHM
    check = doctor.check_shm(need, formula, statvfs=fake_shm(64, 64))
    assert check.status == "fail" and "--ipc=host" in check.fix and "4 workers" in check.message


def test_docker_default_shm_warns_even_without_workers():
    need, formula = doctor.shm_need({"data": {"num_workers": 0}}, nproc=1, world=1)
    assert need == 0
    assert doctor.check_shm(need, formula, statvfs=fake_shm(64, 64)).status == "warn"
    assert doctor.check_shm(need, formula, statvfs=fake_shm(8192, 8000)).status == "ok"


def test_unknown_config_uses_the_floor():
    need, _ = doctor.shm_need(None, nproc=1, world=1)
    assert need == doctor.SHM_FLOOR
    assert doctor.check_shm(need, "", statvfs=fake_shm(512, 512)).status == "fail"


def test_missing_shm_path_fails(tmp_path):
    assert doctor.check_shm(0, "", path=str(tmp_path / "nope")).status == "fail"


def test_missing_interface():
    env = {"GLOO_SOCKET_IFNAME": "eth7", "NCCL_SOCKET_IFNAME": "en"}
    checks = doctor.check_ifnames(env, if_addrs=lambda: {"lo": [], "ens5": []})
    assert by_name(checks, "GLOO_SOCKET_IFNAME").status == "fail"
    assert "eth7" in by_name(checks, "GLOO_SOCKET_IFNAME").message
    assert by_name(checks, "NCCL_SOCKET_IFNAME").status == "ok"  # NCCL matches prefixes
    exact = doctor.check_ifnames({"NCCL_SOCKET_IFNAME": "=en"}, if_addrs=lambda: {"ens5": []})
    assert exact[0].status == "fail"
    assert doctor.check_ifnames({"NCCL_SOCKET_IFNAME": "^docker"}, if_addrs=lambda: {"lo": []}) == []


def test_unreachable_endpoint_fails_quickly():
    c = resolve({}, {"nnodes": "2", "node_rank": "1", "rdzv_endpoint": f"127.0.0.1:{refused_port()}"})
    start = time.monotonic()
    check = doctor.check_endpoint(c, timeout=0.5)
    assert check.status == "fail" and time.monotonic() - start < 2
    assert (
        doctor.check_endpoint(resolve({}, {"nnodes": "2", "rdzv_endpoint": "127.0.0.1:1"})) is None
    )  # node 0


def test_reachable_endpoint_is_ok():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        c = resolve(
            {}, {"nnodes": "2", "node_rank": "1", "rdzv_endpoint": f"127.0.0.1:{server.getsockname()[1]}"}
        )
        assert doctor.check_endpoint(c, timeout=2).status == "ok"


def test_read_only_run_dir(tmp_path):
    # Tests run as root, which ignores permission bits: plant places nobody can write instead.
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert doctor.check_run_dir(str(a_file / "run")).status == "fail"
    assert doctor.check_run_dir("/proc/1/run").status == "fail"
    ok = doctor.check_run_dir(str(tmp_path / "new" / "run"))
    assert ok.status == "ok" and not (tmp_path / "new").exists()  # checked without creating it
    assert doctor.check_run_dir(str(tmp_path), min_free=1 << 62).status == "fail"


def test_shared_dir_heuristic(tmp_path):
    local = lambda: [Part("/", "ext4"), Part("/tmp", "tmpfs")]  # noqa: E731
    nfs = lambda: [Part("/", "overlay"), Part(str(tmp_path), "nfs4")]  # noqa: E731
    assert doctor.check_shared(str(tmp_path / "run"), 2, partitions=local).status == "warn"
    assert doctor.check_shared(str(tmp_path / "run"), 2, partitions=nfs).status == "ok"
    assert doctor.check_shared(str(tmp_path / "run"), 1, partitions=local).status == "ok"


def test_inconsistent_env():
    check, cluster = doctor.check_cluster(
        {"SLURM_JOB_ID": "1", "SLURM_NNODES": "2", "SLURM_NODEID": "5", "SLURM_JOB_NODELIST": "n[1-2]"}
    )
    assert check.status == "fail" and cluster is None and "SLURM_NODEID" in check.message


def test_report_and_exit_code(tmp_path):
    env = {"JOB_COMPLETION_INDEX": "3"}  # index 3 of a one-node world
    checks = doctor.run_checks(env=env, fast=True, run_dir=str(tmp_path))
    assert doctor.exit_code(checks) == 2
    assert "[FAIL] cluster" in doctor.format_report(checks)
    assert doctor.exit_code(doctor.run_checks(env={}, fast=True, run_dir=str(tmp_path))) == 0


def run_cli(*args, env=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "launch", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )


def test_cli_json_parses_and_exit_code(tmp_path):
    proc = run_cli("--json", "--run-dir", str(tmp_path), env={"GLOO_SOCKET_IFNAME": "nosuchif0"})
    report = json.loads(proc.stdout)
    assert proc.returncode == 2 and report["ok"] is False
    names = {c["name"]: c["status"] for c in report["checks"]}
    assert names["GLOO_SOCKET_IFNAME"] == "fail" and "torch" in names
    assert set(report["checks"][0]) == {"name", "status", "message", "fix"}


def test_cli_reads_shm_need_from_the_config(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  num_workers: 8\n  name: mypkg.data:Custom\ntrain:\n  batch_size: 4096\n")
    proc = run_cli(
        "--fast", "--json", "-c", str(config), "data.prefetch_factor=4", "--run-dir", str(tmp_path)
    )
    shm = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}["shm"]
    assert "8 workers x prefetch 4 x batch 4096" in shm["message"]


def test_run_dir_comes_from_overrides_without_a_config_file(tmp_path):
    cfg, problem = doctor.resolve_config(None, [f"run.dir={tmp_path}/r", "data.num_workers=2"])
    assert problem is None and cfg["run"]["dir"] == f"{tmp_path}/r" and cfg["data"]["num_workers"] == 2
    checks = doctor.run_checks(env={}, fast=True, config_overrides=[f"run.dir={tmp_path}/r"])
    assert str(tmp_path) in by_name(checks, "run_dir").message


def test_fast_subset_imports_no_torch_and_takes_under_a_second(tmp_path):
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "from launch import doctor\n"
        f"checks = doctor.run_checks(env={{}}, fast=True, run_dir={str(tmp_path)!r})\n"
        "elapsed = time.perf_counter() - t\n"
        "print('torch' in sys.modules, 'trainer' in sys.modules, round(elapsed, 3), "
        "doctor.exit_code(checks))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    torch_loaded, trainer_loaded, elapsed, rc = proc.stdout.split()
    assert (torch_loaded, trainer_loaded, rc) == ("False", "False", "0"), proc.stderr
    assert float(elapsed) < 1.0


def test_gpu_checks_with_a_simulated_cuda(monkeypatch):
    import torch

    props = SimpleNamespace(name="NVIDIA H200", total_memory=141 << 30)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.cuda.nccl, "version", lambda: (2, 27, 3))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    checks = doctor.check_gpus(2, {})
    assert by_name(checks, "gpus").status == "ok" and "H200 141 GiB" in by_name(checks, "gpus").message
    assert by_name(checks, "cuda").message == "CUDA 13.0, NCCL 2.27.3"
    assert by_name(doctor.check_gpus(4, {}), "gpus").status == "fail"  # more processes than GPUs


def test_driver_without_cuda_torch_warns(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(doctor, "visible_gpus", lambda env: 1)
    assert by_name(doctor.check_gpus("auto", {}), "gpus").status == "warn"


def test_an_invalid_config_is_the_trainers_verdict(tmp_path):
    """The doctor asks `python -m trainer check --json`; it does not parse or default the config itself."""
    checks = doctor.run_checks(
        env={}, fast=True, run_dir=str(tmp_path), config_overrides=["train.batch_size=0"]
    )
    c = by_name(checks, "config")
    assert c.status == "fail" and "train.batch_size" in c.message

"""A worker's own exit code reaches the launcher's caller through torchrun, accelerate and single mode.

Real processes (torchrun in-process in the launcher, gloo-free fake workers from fake_worker.py) on this
machine; the verdict comes from exit codes and the files the workers wrote. The first tests need no processes:
they pin how :mod:`launch.outcome` picks the code when several ranks fail.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from launch import outcome

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- choosing the code (no processes)


def pf(code, ts):
    return SimpleNamespace(exitcode=code, timestamp=ts)


def test_earliest_failure_wins_and_a_specific_code_beats_1_in_the_same_second():
    assert outcome.from_failures({0: pf(1, 100), 1: pf(75, 100)}, {}).code == 75
    assert outcome.from_failures({0: pf(1, 99), 1: pf(75, 100)}, {}).code == 1
    # torchrun SIGTERMs the survivors of a SIGKILLed rank: the killed rank is the one to name
    killed = outcome.from_failures({0: pf(-15, 100), 1: pf(-9, 100)}, {})
    assert (killed.rank, killed.code) == (1, 128 + 9)


def test_reason_file_times_order_failures_precisely():
    reasons = {
        0: {"code": 1, "reason": "peer gone", "time": 100.9},
        1: {"code": 3, "reason": "nan", "time": 100.2},
    }
    assert outcome.from_failures({0: pf(1, 100), 1: pf(3, 100)}, reasons).code == 3


def test_signal_after_the_reason_file_keeps_the_intended_code():
    reasons = {1: {"code": 75, "reason": "preempted", "time": 100.0}}
    assert outcome.from_failures({1: pf(-6, 101)}, reasons).code == 75
    assert outcome.from_failures({1: pf(-6, 101)}, {}).code == 128 + 6
    stale = {1: {"code": 75, "reason": "earlier round", "time": 100.0 - 2 * outcome.RECENT_S}}
    assert outcome.from_failures({1: pf(-9, 101)}, stale).code == 128 + 9


def test_from_reasons_ignores_files_before_the_signal():
    reasons = {
        0: {"code": 1, "reason": "old", "time": 10.0},
        1: {"code": 75, "reason": "saved", "time": 50.0},
    }
    assert outcome.from_reasons(reasons, since=40.0).code == 75
    assert outcome.from_reasons(reasons, since=60.0) is None


def test_read_reasons_skips_garbage(tmp_path):
    (tmp_path / "exit-rank0.json").write_text(json.dumps({"rank": 0, "code": 3, "reason": "x", "time": 1.5}))
    (tmp_path / "exit-rank1.json").write_text("{not json")
    assert outcome.read_reasons(str(tmp_path)) == {0: {"code": 3, "reason": "x", "time": 1.5}}


# --------------------------------------------------------------------------- real launches


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PET_", "SLURM_", "JOBSET_", "LAUNCH_", "TORCHELASTIC_", "FAKE_"))
        and k
        not in (
            "RANK",
            "LOCAL_RANK",
            "WORLD_SIZE",
            "LOCAL_WORLD_SIZE",
            "MASTER_ADDR",
            "MASTER_PORT",
            "JOB_COMPLETION_INDEX",
            "TRAINER_EXIT_DIR",
        )
    }
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]),
        OMP_NUM_THREADS="1",
        TMPDIR=str(tmp),
        HF_HOME=str(tmp / "hf"),
        MASTER_ADDR="127.0.0.1",
        FAKE_OUT=str(out),
        CUDA_VISIBLE_DEVICES="",
    )
    env.update(extra)
    return env


def launch(tmp_path: Path, *args: str, timeout: float = 50, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "launch", *args, "--entry", "fake_worker", "train.max_steps=1"]
    return subprocess.run(
        cmd, env=job_env(tmp_path, **env), capture_output=True, text=True, timeout=timeout, cwd=tmp_path
    )


def seen(tmp_path: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (tmp_path / "out").glob("rank*.json")}


@pytest.mark.timeout(60)
def test_all_ranks_succeed_exit_0(tmp_path):
    r = launch(tmp_path, "ddp", "--nproc-per-node", "2")
    assert r.returncode == 0, r.stderr
    runs = seen(tmp_path)
    assert set(runs) == {"rank0-attempt0", "rank1-attempt0"}
    for info in runs.values():
        assert info["argv"][-1] == "train.strategy=ddp"
        assert info["env"]["WORLD_SIZE"] == "2" and info["env"]["TRAINER_EXIT_DIR"]
    assert len({info["pid"] for info in runs.values()}) == 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("code", [75, 3])
def test_worker_code_survives_torchrun(tmp_path, code):
    r = launch(tmp_path, "ddp", "--nproc-per-node", "2", FAKE_EXIT=str(code), FAKE_RANK="1")
    assert r.returncode == code, r.stderr
    assert f"rank 1 exited with {code}" in r.stderr


@pytest.mark.timeout(60)
def test_abort_at_exit_after_choosing_a_code_keeps_the_code(tmp_path):
    # gloo's "terminate called without an active exception" lands after the trainer chose its code.
    r = launch(tmp_path, "ddp", "--nproc-per-node", "2", FAKE_EXIT="3", FAKE_RANK="0", FAKE_SIGNAL="ABRT")
    assert r.returncode == 3, r.stderr


@pytest.mark.timeout(60)
def test_crash_once_under_max_restarts_then_succeed(tmp_path):
    r = launch(
        tmp_path,
        "ddp",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "1",
        FAKE_EXIT="1",
        FAKE_RANK="0",
        FAKE_FIRST_ONLY="1",
    )
    assert r.returncode == 0, r.stderr
    runs = seen(tmp_path)
    assert {"rank0-attempt0", "rank0-attempt1", "rank1-attempt1"} <= set(runs)
    assert runs["rank0-attempt1"]["env"]["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"


@pytest.mark.timeout(60)
def test_sigterm_to_the_launcher_exits_with_the_workers_preemption_code(tmp_path):
    cmd = [sys.executable, "-m", "launch", "ddp", "--nproc-per-node", "2", "--entry", "fake_worker"]
    proc = subprocess.Popen(
        cmd,
        env=job_env(tmp_path, FAKE_WAIT_TERM="1"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = [tmp_path / "out" / f"ready-rank{r}" for r in (0, 1)]
        deadline = time.monotonic() + 40
        while not all(p.exists() for p in ready) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert all(p.exists() for p in ready), proc.communicate(timeout=5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, err


@pytest.mark.timeout(60)
def test_single_mode_passes_the_code_through(tmp_path):
    r = launch(tmp_path, "single", FAKE_EXIT="4")
    assert r.returncode == 4, r.stderr
    assert seen(tmp_path)["rank0-attempt0"]["argv"][-1] == "train.strategy=single"


@pytest.mark.timeout(60)
def test_accelerate_two_processes_keeps_the_code(tmp_path):
    r = launch(tmp_path, "accelerate", "--nproc-per-node", "2", FAKE_EXIT="3", FAKE_RANK="1")
    assert r.returncode == 3, r.stderr
    assert {"rank0-attempt0", "rank1-attempt0"} == set(seen(tmp_path))


@pytest.mark.timeout(60)
def test_two_nodes_on_localhost_both_report_the_workers_code(tmp_path):
    for _attempt in range(3):  # the free port can be taken between picking and binding it
        port = free_port()
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "launch",
                    "ddp",
                    "--nnodes",
                    "2",
                    "--node-rank",
                    str(node),
                    "--nproc-per-node",
                    "1",
                    "--rdzv-endpoint",
                    f"127.0.0.1:{port}",
                    "--rdzv-id",
                    "exitcodes",
                    "--entry",
                    "fake_worker",
                ],
                env=job_env(tmp_path, FAKE_EXIT="75"),
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for node in range(2)
        ]
        outs = [p.communicate(timeout=50) for p in procs]
        if not any(os.strerror(errno.EADDRINUSE) in err for _, err in outs):
            break
    assert [p.returncode for p in procs] == [75, 75], outs


@pytest.mark.timeout(60)
@pytest.mark.parametrize("role", ["host", "client"])
def test_a_lone_node_exits_4_within_the_timeout_in_one_line(tmp_path, role):
    """Node 0 whose peers never come (it hosts the store and waits join_timeout), and node 1 whose node 0
    never comes (the store never answers): exit 4 with one line within dist.init_timeout_s plus a few
    seconds."""
    port, timeout = free_port(), 3
    env = {
        "JOB_COMPLETION_INDEX": "0" if role == "host" else "1",
        "LAUNCH_NNODES": "2",
        "LAUNCH_MASTER_ADDR": "127.0.0.1",
        "LAUNCH_MASTER_PORT": str(port),
    }
    t0 = time.monotonic()
    r = launch(
        tmp_path, "ddp", "--nproc-per-node", "1", "--no-preflight", f"dist.init_timeout_s={timeout}", **env
    )
    wall = time.monotonic() - t0
    print(f"lone {role}: exit {r.returncode} after {wall:.1f} s (timeout {timeout} s)")
    assert r.returncode == 4, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"127.0.0.1:{port} " in lines[0] and f"in {timeout} s" in lines[0] and "is node 0 up?" in lines[0]
    assert ("no peer reached" if role == "host" else "did not answer") in lines[0]
    # The rest is start-up (torch import, torchrun): 3.3-7.6 s in all on an idle 2-core machine, up to ~13 s
    # under load; torchrun alone waits 600 s (node 0) or 2 x 60 s (a client).
    assert wall < timeout + 15
    assert not seen(tmp_path)  # no worker started


@pytest.mark.timeout(60)
def test_elastic_pytorchjob_empty_pet_standalone_does_not_crash_torchrun(tmp_path):
    """elastic.go sets PET_STANDALONE="" (empty); torchrun's own parser fails on int('') when it reads it."""
    r = launch(
        tmp_path,
        "ddp",
        "--nproc-per-node",
        "1",
        PET_STANDALONE="",
        PET_NNODES="1",
        PET_MAX_RESTARTS="0",
        PET_RDZV_ENDPOINT="127.0.0.1:1",
        PET_RDZV_BACKEND="c10d",
    )
    assert r.returncode == 0, r.stderr
    assert set(seen(tmp_path)) == {"rank0-attempt0"}

"""The container entrypoint running real training outside Docker: two nodes, and a signal that checkpoints."""

import os
import signal
import subprocess
import time

import pytest

from tests.conftest import ROOT, free_port
from tests.distributed.test_equivalence import TINY, assert_close, launch
from tests.helpers import final_weights
from tests.integration.test_entrypoint import ENTRYPOINT, _env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def start(args, env):
    e = _env({"PYTHONPATH": ROOT, "ENTRYPOINT_WAIT_S": "60", **env})
    return subprocess.Popen(
        ["bash", str(ENTRYPOINT), *args],
        cwd=ROOT,
        env=e,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("flavour", ["pytorchjob", "trainer-v2"])
def test_two_node_job_through_the_entrypoint_equals_one_node(tmp_path, flavour):
    ref = tmp_path / "ref"
    launch("ddp", ref, "--nproc-per-node", "2")
    run_dir = tmp_path / "job"
    port = free_port()
    procs = []
    for node in range(2):
        if flavour == "pytorchjob":  # Kubeflow v1: RANK is the NODE rank
            env = {
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
                "WORLD_SIZE": 2,
                "RANK": node,
                "PET_NPROC_PER_NODE": 1,
                "PET_NNODES": 2,
                "PET_NODE_RANK": node,
            }
        else:  # Kubeflow Trainer v2
            env = {
                "PET_MASTER_ADDR": "127.0.0.1",
                "PET_MASTER_PORT": port,
                "PET_NNODES": 2,
                "PET_NODE_RANK": node,
                "PET_NPROC_PER_NODE": 1,
            }
        procs.append(start([f"run.dir={run_dir}", *TINY], {k: str(v) for k, v in env.items()}))
    try:
        outs = [p.communicate(timeout=150) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    assert_close(final_weights(ref), final_weights(run_dir))


def test_sigterm_to_the_entrypoint_checkpoints_and_exits_75(tmp_path):
    run_dir = tmp_path / "run"
    over = [o for o in TINY if not o.startswith(("train.max_steps", "log.every_steps"))]
    p = start(["single", f"run.dir={run_dir}", *over, "train.max_steps=100000", "log.every_steps=5"], {})
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.2)  # wait until training is really under way (two logged intervals)
    assert metrics.exists(), p.stderr.read() if p.poll() is not None else "no metrics yet"
    os.kill(p.pid, signal.SIGTERM)  # the entrypoint exec'd the launcher: same PID
    out, err = p.communicate(timeout=60)
    assert p.returncode == 75, err[-3000:]
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert (run_dir / "checkpoints" / latest / "manifest.json").is_file()
    assert "preempted by signal" in err

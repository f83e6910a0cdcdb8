"""`accelerate launch -m trainer train ...` run by hand (not through python -m launch): the trainer uses the
accelerate strategy and accelerate's --mixed_precision, and refuses what it would otherwise ignore."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT
from tests.distributed.test_equivalence import TINY

pytestmark = pytest.mark.slow


def accelerate(tmp_path, *args: str, processes: int = 2) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=ROOT,
        HF_HOME=str(tmp_path / "hf"),
        CUDA_VISIBLE_DEVICES="",
    )
    # Two CPU processes on gloo (../shared/PLATFORM.md: --cpu would silently start one).
    several = ["--multi_gpu", "--main_process_port", "0"] if processes > 1 else []
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *several,
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--dynamo_backend",
        "no",
        *args,
    ]
    return subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=150)


@pytest.mark.timeout(180)
def test_accelerate_launch_uses_its_strategy_and_precision(tmp_path):
    run_dir = tmp_path / "run"
    r = accelerate(
        tmp_path, "--mixed_precision", "bf16", "-m", "trainer", "train", f"run.dir={run_dir}", *TINY
    )
    assert r.returncode == 0, r.stderr[-3000:]
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (resolved["train"]["strategy"], resolved["train"]["precision"]) == ("accelerate", "bf16")
    log = (run_dir / "logs" / "rank-0.log").read_text()
    assert "accelerate on 2 process(es), bf16" in log, log
    assert (
        "started by accelerate launch: train.strategy=accelerate, train.precision=bf16" in r.stdout + r.stderr
    )


@pytest.mark.timeout(180)
def test_a_contradicting_precision_is_refused_in_one_line(tmp_path):
    # One process: with two, torchrun may stop rank 0 (which prints config errors) once rank 1 exited 2.
    r = accelerate(
        tmp_path,
        "--mixed_precision",
        "fp16",
        "-m",
        "trainer",
        "train",
        f"run.dir={tmp_path / 'run'}",
        "train.precision=bf16",
        *TINY,
        processes=1,
    )
    assert r.returncode != 0
    assert "accelerate launch --mixed_precision fp16 contradicts train.precision=bf16" in r.stderr, r.stderr[
        -3000:
    ]
    assert not (tmp_path / "run").exists()  # nothing half-written

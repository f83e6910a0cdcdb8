"""Elastic restarts: a worker that crashes once under `--max-restarts 1` and the job still ends exactly right.

Rank 1 SIGKILLs itself in the forward of step 10 (tests/faultmodels.py `crash_at`), only in the first attempt
(TORCHELASTIC_RESTART_COUNT=0). torchrun restarts the group (the launcher sets
TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, ../shared/PLATFORM.md), the new workers resume from the step-8
checkpoint with no manual step, and the final parameters equal those of an uninterrupted 2-process run bitwise
(same world size, same thread count, train.deterministic=true).
"""

from __future__ import annotations

import os
import re

import pytest
import torch

from tests.faultutil import DIST, FAULTY, launch, resumed_steps
from tests.helpers import final_weights, read_summary

pytestmark = pytest.mark.slow

JOB = [*FAULTY, "train.max_steps=16", "checkpoint.every_steps=4", "log.every_steps=4", *DIST]


def ddp(run_dir, *extra: str, restarts: int = 0) -> list[str]:
    return [
        "ddp",
        "--nproc-per-node",
        "2",
        *(["--max-restarts", str(restarts)] if restarts else []),
        f"run.dir={run_dir}",
        *JOB,
        *extra,
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(uninterrupted run dir, crashed-once run dir, the crashed job's launcher result)."""
    base = tmp_path_factory.mktemp("elastic")
    env = {"TMPDIR": str(base)}  # module scope: the per-test TMPDIR is not set yet (torchelastic_* dirs)
    ref = launch(ddp(base / "ref", "model.kwargs={crash_at: 10, ranks: []}"), env=env, timeout=100)
    assert ref.returncode == 0, ref.stderr[-3000:]
    job = launch(
        ddp(base / "crash", "model.kwargs={crash_at: 10, ranks: [1]}", restarts=1), env=env, timeout=150
    )
    return base / "ref", base / "crash", job


@pytest.mark.timeout(300)
def test_crash_once_under_max_restarts_completes_with_equal_parameters(runs):
    ref, crashed, job = runs
    assert job.returncode == 0, job.stderr[-4000:]
    pids = re.findall(r"^rank 1 pid (\d+)", (crashed / "logs" / "rank-1.log").read_text(), re.M)
    assert len(set(pids)) == 2, f"rank 1 ran as {pids}: expected a crashed worker and its replacement"
    assert resumed_steps(crashed) == [8]  # the restarted group found the latest checkpoint by itself
    assert read_summary(crashed)["steps"] == 16 and read_summary(crashed)["world_size"] == 2
    a, b = final_weights(ref), final_weights(crashed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), (
        "parameters after the restart differ from the uninterrupted run"
    )


@pytest.mark.timeout(300)
def test_the_restart_count_is_logged(runs):
    """Each worker of the restarted group says which restart it is (TORCHELASTIC_RESTART_COUNT) in its log."""
    _, crashed, job = runs
    assert job.returncode == 0, job.stderr[-4000:]
    for rank in (0, 1):
        with open(os.path.join(crashed, "logs", f"rank-{rank}.log"), encoding="utf-8") as fh:
            lines = [ln for ln in fh if re.search(r"restart", ln, re.I) and re.search(r"\b1\b", ln)]
        assert lines, f"rank {rank}: no log line gives the restart count (1) of the restarted worker group"

"""A rank that stalls inside a step: every process exits within the timeout, and the message names it."""

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.mark.timeout(90)
def test_stalled_rank_is_named_and_all_ranks_exit(tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--log-dir", str(tmp_path / "tl"), "-m", "trainer", "train",
           "model.name=tests.hangmodel:SleepyMLP", "model.kwargs={sleep_rank: 1, sleep_at_call: 3, sleep_s: 120}",
           "data.name=synthetic_classification", "data.num_samples=256", "data.num_features=8",
           "train.batch_size=32", "train.max_steps=10", f"run.dir={run_dir}", "dist.collective_timeout_s=3",
           "log.tensorboard=false", "device=cpu"]
    t0 = time.monotonic()
    r = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=80)
    elapsed = time.monotonic() - t0
    assert r.returncode != 0
    assert elapsed < 60, elapsed  # not the 120 s sleep, nor gloo's backstop
    summaries = [line for line in r.stderr.splitlines() if line.startswith("hang:")]
    assert len(summaries) == 1, r.stderr[-3000:]  # one summary, from the lowest healthy rank
    assert "stalled rank(s): 1 - in forward of step 3" in summaries[0]  # the 3rd forward is step 3
    for rank in (0, 1):  # every rank dumped its Python stacks into its own log
        text = (run_dir / "logs" / f"rank-{rank}.log").read_text()
        assert "Python stacks of every thread" in text and "Thread" in text

"""SIGKILL of `python -m launch` itself (the OOM killer, `kill -9` on the wrong pid, a node agent): its
workers used to train on, orphaned, writing checkpoints into run.dir beside the rerun of the same command
(measured: 2 ranks went from step 20 to step 140 after the launcher was gone). Now every worker gets SIGTERM
when its launcher dies (Linux PR_SET_PDEATHSIG), saves a checkpoint and exits 75, as when preempted.
Real launcher, two tiny processes.
"""

from __future__ import annotations

import subprocess
import time

import psutil
import pytest

from tests.faultutil import DIST, TINY, kill_tree, start

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode", ["ddp", "single"])
def test_workers_stop_and_save_when_the_launcher_is_killed(tmp_path, mode):
    run_dir = tmp_path / "run"
    job = [*TINY, *DIST, "train.max_steps=100000", "checkpoint.every_steps=20", f"run.dir={run_dir}"]
    nproc = ["--nproc-per-node", "2"] if mode == "ddp" else []
    proc = start([mode, *nproc, *job], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        # any checkpoint: at ~0.4 ms a step the first ones are rotated out (keep_last) between two polls
        while not any((run_dir / "checkpoints").glob("step-*")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
            time.sleep(0.1)
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert len([w for w in workers if "trainer" in " ".join(w.cmdline())]) >= 1
        proc.kill()
        proc.wait()
        gone, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"workers still running after their launcher was killed: {alive}"
    finally:
        kill_tree(proc)
        for w in workers:  # orphans (the defect this test is about) are ours to end
            try:
                w.kill()
            except psutil.NoSuchProcess:
                pass
        proc.stderr.close()
    # they left through the preemption path: a checkpoint at the step they stopped, exit 75 in the log
    log = (run_dir / "logs" / "rank-0.log").read_text()
    assert "preempted by signal: checkpoint at step" in log, log[-4000:]

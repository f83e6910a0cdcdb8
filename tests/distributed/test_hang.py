"""A rank that stalls inside a step: every process exits within the timeout, and the message names it."""

import os
import re
import signal
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
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "--log-dir",
        str(tmp_path / "tl"),
        "-m",
        "trainer",
        "train",
        "model.name=tests.hangmodel:SleepyMLP",
        "model.kwargs={sleep_rank: 1, sleep_at_call: 3, sleep_s: 120}",
        "data.name=synthetic_classification",
        "data.num_samples=256",
        "data.num_features=8",
        "train.batch_size=32",
        "train.max_steps=10",
        f"run.dir={run_dir}",
        "dist.collective_timeout_s=3",
        "log.tensorboard=false",
        "device=cpu",
    ]
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


STALL_RUN = [
    "model.name=mlp",
    "model.hidden=[16]",
    "data.name=synthetic_classification",
    "data.num_samples=512",
    "data.num_features=8",
    "data.num_classes=4",
    "train.batch_size=32",
    "train.max_steps=6",
    "log.every_steps=1",
    "train.eval_every_steps=3",
    "checkpoint.every_steps=3",
    "log.tensorboard=false",
    "log.plot=false",
    "log.progress=off",
    "device=cpu",
    "dist.collective_timeout_s=2",
]


# Every breadcrumb of runtime/watchdog.py OPS at step 3 (eval, agree and the save all happen at step 3),
# stopped as `kill -STOP` does (heartbeat included); and two stalls by a sleeping main thread (heartbeat
# alive), where the verdict is "behind": the rank still writing its checkpoint, the rank that never joined the
# preemption all-reduce.
STALLS = [
    (op, "stop", f"no heartbeat since {op} of step 3")
    for op in (
        "data",
        "forward",
        "backward",
        "optimizer",
        "log",
        "eval",
        "agree",
        "checkpoint",
        "checkpoint barrier",
    )
]
STALLS += [
    ("checkpoint", "sleep", "in checkpoint of step 3 while the others wait"),
    ("agree", "sleep", "in agree of step 3 while the others wait"),
]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "op, how, where", STALLS, ids=[f"{op.replace(' ', '-')}-{how}" for op, how, _ in STALLS]
)
def test_the_watchdog_names_the_stalled_rank_at_every_phase(tmp_path, op, how, where):
    """The side groups (preemption all-reduce, checkpoint barriers) time out after the watchdog, not with it:
    the healthy rank's summary names rank 1 and where it stalled, every time (issue 14: a gloo timeout won 2
    of 3)."""
    run_dir = tmp_path / "run"
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=ROOT,
        TRAINER_TEST_STALL_AT=f"{op}:3:1:{how}",
        TMPDIR=str(tmp_path),
    )
    cmd = [
        sys.executable,
        "-m",
        "launch",
        "ddp",
        "--nproc-per-node",
        "2",
        "--no-preflight",
        f"run.dir={run_dir}",
        *STALL_RUN,
    ]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, env=env, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    stalled = None
    try:
        err, t_step = [], None
        for (
            line
        ) in proc.stderr:  # up to the summary; then the stalled rank goes, as its node would be drained
            err.append(line)
            if t_step is None and re.search(r"\bstep 2 ", line):
                t_step = time.monotonic()  # the last step before the stall: start-up time (load) left out
            if line.startswith("hang:"):
                break
        fired = time.monotonic() - (t_step or t0)
        head = (run_dir / "logs" / "rank-1.log").read_text().splitlines()[0]
        stalled = int(re.search(r"pid (\d+)", head).group(1))
        os.kill(
            stalled, signal.SIGKILL
        )  # torchrun's SIGTERM cannot end a stopped process: 30 s, then SIGKILL
        out, rest = proc.communicate(timeout=60)
    finally:
        proc.kill() if proc.poll() is None else None
        if stalled:
            try:
                os.kill(stalled, signal.SIGKILL)
            except ProcessLookupError:
                pass
    stderr = "".join(err) + rest
    print(
        f"stall at {op} ({how}): summary {fired:.1f} s after step 2 ({time.monotonic() - t0:.1f} s in all), "
        f"exit {proc.returncode}"
    )
    summaries = [line for line in stderr.splitlines() if line.startswith("hang:")]
    assert proc.returncode == 4, stderr[-3000:]
    assert summaries and all(f"stalled rank(s): 1 - {where}" in s for s in summaries), stderr[-3000:]
    assert re.search(r"^launch: rank \d exited with 4 ", stderr, re.M) and "Traceback" not in stderr, stderr[
        -3000:
    ]
    assert fired < 12, fired  # the watchdog at 2 s after step 2's log line, not the 1 h sleep

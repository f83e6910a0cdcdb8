"""Preemption and exact resume: SIGTERM at a chosen step, a second signal, and resumes across world sizes.

Signals come from the user model (tests/faultmodels.py: `os.kill(os.getpid(), SIGTERM)` in the forward of a
chosen step) or from the test once the process has said it is ready, never after a sleep. The job is 32 steps
of 32 samples on IndexLogged (512 samples: two whole epochs), which records every index each process reads.
"""

from __future__ import annotations

import math
import os
import signal
import time

import pytest
import torch

from tests.conftest import run_cli
from tests.faultmodels import read_served
from tests.faultutil import DIST, FAULTY, launch, resumed_steps, start
from tests.helpers import FAST, final_weights, read_metrics, train_inprocess
from trainer import checkpoint as ckpt
from trainer.data.sampler import epoch_permutation
from trainer.exitcodes import PREEMPTED

STEPS = 32  # two epochs of 16 steps
N = 512


def job(log_dir, *kwargs: str) -> list[str]:
    model = "{" + ", ".join(kwargs) + "}"
    return [
        *FAULTY,
        f"train.max_steps={STEPS}",
        "log.every_steps=1",
        "checkpoint.every_steps=0",
        f"model.kwargs={model}",
        f"data.kwargs={{log_dir: {log_dir}}}",
    ]


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)}  # a resumed run appends: the last row wins


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted one-process run; what every interrupted run must reproduce."""
    base = tmp_path_factory.mktemp("resume-ref")
    (base / "served").mkdir()
    assert train_inprocess(None, base / "run", job(base / "served")) == 0
    return base


def assert_every_sample_once_per_epoch(log_dir) -> None:
    served = read_served(log_dir)
    assert sorted(served) == [0, 1]
    for epoch, idx in served.items():
        assert sorted(idx) == list(range(N)), f"epoch {epoch}: {len(idx)} indices, {len(set(idx))} distinct"


def test_reference_reads_one_global_permutation_per_epoch(reference):
    served = read_served(reference / "served")
    for epoch in (0, 1):
        assert served[epoch] == epoch_permutation(N, 0, epoch).tolist()  # seed 0 (the default)
    assert served[0] != served[1]
    assert all(math.isfinite(v) for v in losses(reference / "run").values())


@pytest.mark.timeout(120)
def test_sigterm_at_step_exits_75_with_a_checkpoint_and_the_restart_is_bitwise_equal(reference, tmp_path):
    (tmp_path / "served").mkdir()
    run_dir, overrides = tmp_path / "run", job(tmp_path / "served", "sigterm_at: 11")
    r = run_cli(["train", f"run.dir={run_dir}", *FAST, *overrides], timeout=100)
    assert r.returncode == PREEMPTED, r.stderr[-3000:]
    assert "received SIGTERM" in r.stderr and "rerun the same command to resume" in r.stderr
    assert "checkpoint step 11 saved in" in r.stderr  # the time to save is logged
    latest = ckpt.resolve(str(run_dir))
    assert os.path.basename(latest) == ckpt.step_name(11)
    state, _ = ckpt.load_state(latest)
    assert state["progress"] == {
        "step": 11,
        "epoch": 0,
        "samples_in_epoch": 11 * 32,
        "samples_total": 11 * 32,
        "bad_steps": 0,  # non-finite steps skipped so far (issue #27), carried across a resume
    }

    assert train_inprocess(None, run_dir, overrides) == 0  # the same command again
    assert resumed_steps(run_dir) == [11]
    a, b = final_weights(reference / "run"), final_weights(run_dir)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed parameters differ from the uninterrupted run"
    assert losses(run_dir) == losses(reference / "run")
    assert_every_sample_once_per_epoch(tmp_path / "served")


@pytest.mark.timeout(60)
def test_a_second_signal_exits_at_once_without_a_checkpoint(tmp_path):
    """SIGTERM while a step is busy (60 s in forward), then SIGTERM again: exit 143 now, not after the
    step."""
    ready, err = tmp_path / "ready", tmp_path / "stderr.txt"
    overrides = job(tmp_path, f"sleep_at: 5, sleep_s: 60, ready_file: {ready}")
    with open(err, "w") as fh:
        proc = start(
            ["train", f"run.dir={tmp_path / 'run'}", *FAST, *overrides, "checkpoint.every_steps=2"],
            module="trainer",
            stdout=fh,
            stderr=fh,
        )
    try:
        _wait_for(lambda: ready.exists(), proc, 40, "the model to reach step 5")
        proc.send_signal(signal.SIGTERM)
        _wait_for(lambda: "received SIGTERM" in err.read_text(), proc, 10, "the first signal to be handled")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 128 + signal.SIGTERM, err.read_text()[-3000:]
    assert time.monotonic() - t0 < 5
    assert "second signal SIGTERM: exiting now without a checkpoint" in err.read_text()
    assert os.path.basename(ckpt.resolve(str(tmp_path / "run"))) == ckpt.step_name(4)  # nothing newer


def _wait_for(cond, proc, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"the trainer exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def assert_losses_close(run_dir, reference) -> None:
    got, want = losses(run_dir), losses(reference / "run")
    assert sorted(got) == list(range(1, STEPS + 1))
    bad = {
        s: (got[s], want[s]) for s in want if not math.isclose(got[s], want[s], rel_tol=1e-4, abs_tol=1e-5)
    }
    assert not bad, f"losses differ at steps {bad}"


def assert_weights_close(run_dir, reference) -> None:
    a, b = final_weights(reference / "run"), final_weights(run_dir)
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), atol=1e-5, rtol=0), (k, (a[k] - b[k]).abs().max())


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_preempted_on_two_processes_resumed_on_one_sees_every_sample_once(reference, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    run_dir, overrides = tmp_path / "run", job(served, "sigterm_at: 6", "ranks: [1]")  # rank 1 only
    j = launch(["ddp", "--nproc-per-node", "2", f"run.dir={run_dir}", *overrides, *DIST], timeout=100)
    assert j.returncode == PREEMPTED, j.stderr[-3000:]
    stopped = ckpt.load_state(ckpt.resolve(str(run_dir)))[0]["progress"]["step"]
    assert stopped in (6, 7)  # ranks agree at the step boundary after the signal, at the latest
    assert ckpt.read_manifest(ckpt.resolve(str(run_dir)))["world_size"] == 2

    assert train_inprocess(None, run_dir, overrides) == 0  # one process now
    assert resumed_steps(run_dir) == [stopped]
    assert_every_sample_once_per_epoch(served)
    assert {n.split("-")[1] for n in os.listdir(served)} == {"rank0", "rank1"}
    assert_losses_close(run_dir, reference)
    assert_weights_close(run_dir, reference)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_preempted_on_one_process_resumed_on_two_sees_every_sample_once(reference, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    run_dir, overrides = tmp_path / "run", job(served, "sigterm_at: 21")  # in epoch 1
    assert train_inprocess(None, run_dir, overrides) == PREEMPTED
    assert os.path.basename(ckpt.resolve(str(run_dir))) == ckpt.step_name(21)

    j = launch(["ddp", "--nproc-per-node", "2", f"run.dir={run_dir}", *overrides, *DIST], timeout=100)
    assert j.returncode == 0, j.stderr[-3000:]
    assert resumed_steps(run_dir) == [21]
    assert_every_sample_once_per_epoch(served)
    ranks_in_epoch1 = {n.split("-")[1] for n in os.listdir(served) if not n.endswith(f"pid{os.getpid()}.txt")}
    assert ranks_in_epoch1 == {"rank0", "rank1"}
    assert_losses_close(run_dir, reference)
    assert_weights_close(run_dir, reference)

"""Non-finite loss: a bad step is skipped (no parameter or optimizer change), too many in a row stop the run.

NaN comes from the user model's forward at chosen steps (tests/faultmodels.py `nan_at`), so the trainer is
exercised as it ships. Policy under test (train.max_bad_steps=N, checked at log.every_steps intervals): more
than N consecutive bad steps -> exit 3, and the newest checkpoint is the one from before the bad streak (no
checkpoint is written on stopping); fewer are skipped.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from tests.faultutil import DIST, FAULTY, launch
from tests.helpers import final_weights, read_metrics, train_inprocess
from trainer import checkpoint as ckpt
from trainer.exitcodes import NONFINITE

pytestmark = pytest.mark.timeout(120)


def job(tmp_path, nan_at, *extra: str, ranks=(0,)) -> list[str]:
    return [
        *FAULTY,
        "train.max_steps=12",
        "train.max_bad_steps=2",
        f"model.kwargs={{nan_at: {list(nan_at)}, ranks: {list(ranks)}}}",
        f"data.kwargs={{log_dir: {tmp_path}}}",
        *extra,
    ]


def saved(run_dir, step: int) -> dict:
    state, _ = ckpt.load_state(os.path.join(run_dir, "checkpoints", ckpt.step_name(step)))
    return state


def params(state: dict) -> dict:
    return {k: v for k, v in state["model"].items() if k != "calls"}  # `calls` counts forwards, bad or not


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def momentum(state: dict) -> list[torch.Tensor]:
    return [s["momentum_buffer"] for s in state["optimizer"]["state"].values()]


def assert_bad_step_changed_nothing(run_dir, bad: int) -> None:
    before, after, next_good = saved(run_dir, bad - 1), saved(run_dir, bad), saved(run_dir, bad + 1)
    assert same(params(before), params(after)), f"step {bad} (NaN loss) changed the parameters"
    assert all(torch.equal(x, y) for x, y in zip(momentum(before), momentum(after))), "optimizer state moved"
    assert not same(params(after), params(next_good)), "training did not go on after the bad step"
    assert all(torch.isfinite(v).all() for v in params(next_good).values())


def test_a_transient_nan_is_skipped_and_training_completes(tmp_path):
    run_dir = tmp_path / "run"
    overrides = job(tmp_path, [5], "checkpoint.every_steps=1", "checkpoint.keep=20", "log.every_steps=1")
    assert train_inprocess(None, run_dir, overrides) == 0
    assert_bad_step_changed_nothing(run_dir, 5)
    rows = {r["step"]: r["loss"] for r in read_metrics(run_dir)}
    assert rows[5] is None and all(
        math.isfinite(v) for s, v in rows.items() if s != 5
    )  # NaN is null: strict JSON
    assert all(torch.isfinite(v).all() for v in final_weights(run_dir).values())


def test_two_bad_steps_in_a_row_are_within_max_bad_steps_2(tmp_path):
    run_dir = tmp_path / "run"
    overrides = job(tmp_path, [5, 6], "checkpoint.every_steps=4", "log.every_steps=2")
    assert train_inprocess(None, run_dir, overrides) == 0
    assert os.path.basename(ckpt.resolve(str(run_dir))) == ckpt.step_name(12)


def test_more_bad_steps_than_allowed_stop_with_exit_3_and_the_last_good_state(tmp_path):
    run_dir = tmp_path / "run"
    # NaN from step 5 on; checks at steps 2, 4, 6, 8: 2 bad at step 6 (allowed), 4 at step 8 -> stop there.
    overrides = job(tmp_path, range(5, 13), "checkpoint.every_steps=4", "log.every_steps=2")
    assert train_inprocess(None, run_dir, overrides) == NONFINITE
    latest = ckpt.resolve(str(run_dir))
    assert os.path.basename(latest) == ckpt.step_name(4)  # from before the streak: nothing saved on stopping
    assert all(torch.isfinite(v).all() for v in params(saved(run_dir, 4)).values())
    log = (run_dir / "logs" / "rank-0.log").read_text()
    assert "non-finite for 4 consecutive steps (train.max_bad_steps=2)" in log
    assert f"the last good checkpoint is {latest}" in log
    assert not (run_dir / "model.safetensors").exists()  # not a finished run


def test_a_bad_run_that_ended_between_two_checks_still_stops(tmp_path):
    """Steps 5-7 bad, step 8 good again: the count kept on the device remembers the run of 3 at the check."""
    run_dir = tmp_path / "run"
    overrides = job(tmp_path, [5, 6, 7], "checkpoint.every_steps=4", "log.every_steps=4")
    assert train_inprocess(None, run_dir, overrides) == NONFINITE
    assert os.path.basename(ckpt.resolve(str(run_dir))) == ckpt.step_name(4)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_nan_on_one_rank_is_skipped_by_every_rank(tmp_path):
    """Under DDP the NaN reaches the other rank through the gradient all-reduce: both skip, both stay
    equal."""
    run_dir = tmp_path / "run"
    overrides = job(
        tmp_path, [5], "checkpoint.every_steps=1", "checkpoint.keep=20", "log.every_steps=1", ranks=[1]
    )
    j = launch(["ddp", "--nproc-per-node", "2", f"run.dir={run_dir}", *overrides, *DIST], timeout=120)
    assert j.returncode == 0, j.stderr[-3000:]
    assert_bad_step_changed_nothing(run_dir, 5)
    rows = {r["step"]: r["loss"] for r in read_metrics(run_dir)}
    assert rows[5] is None and math.isfinite(rows[6])

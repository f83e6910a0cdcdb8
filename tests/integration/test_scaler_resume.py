"""fp16 under train.strategy=accelerate: the GradScaler is accelerate's (on a CPU, torch.amp.GradScaler("cpu")
handed to it by strategy.make_accelerator), and a checkpoint must hold its state like the one the trainer owns
under ddp/fsdp: a resumed run continues with the scale and growth count of the run it resumes."""

from __future__ import annotations

import pytest

from tests.helpers import train_inprocess
from trainer import checkpoint as ckpt

OVER = [
    "train.strategy=accelerate",
    "train.precision=fp16",
    "train.max_steps=4",
    "checkpoint.every_steps=2",
    "train.eval_every_steps=0",
    "train.deterministic=true",
]


def _scaler(run_dir, step: int) -> dict:
    state, _ = ckpt.load_state(str(run_dir / "checkpoints" / ckpt.step_name(step)))
    return state["scaler"]


@pytest.mark.timeout(240)
def test_accelerate_fp16_resume_keeps_the_grad_scaler_state(tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert train_inprocess("mlp", whole, OVER) == 0
    at2 = _scaler(whole, 2)
    assert at2 is not None, "the accelerate GradScaler's state is not in the checkpoint"
    assert at2["_growth_tracker"] == 2  # it counted the two unskipped fp16 steps
    step2 = whole / "checkpoints" / ckpt.step_name(2)
    assert train_inprocess("mlp", resumed, [*OVER, f"run.resume={step2}"]) == 0
    want, got = _scaler(whole, 4), _scaler(resumed, 4)
    assert got["scale"] == want["scale"] and got["_growth_tracker"] == want["_growth_tracker"] == 4, (
        got,
        want,
    )


@pytest.mark.timeout(240)
def test_accelerate_fp16_overflow_is_the_scalers_business_not_a_bad_step(tmp_path):
    """fp16 overflow under accelerate: accelerate's GradScaler skips the step and lowers its scale (as ours
    does under ddp/fsdp); the trainer neither counts it as a non-finite step nor skips the optimizer call
    that lets the scaler update (before: the scale never came down and the run ended with exit 3)."""
    from tests.helpers import read_metrics

    over = [o for o in OVER if not o.startswith(("train.max_steps", "checkpoint.every_steps"))]
    over += ["train.max_steps=30", "checkpoint.every_steps=30", "train.loss=tests.byo_models:huge_ce"]
    over += ["train.grad_clip=1.0"]  # the norm is taken: before, its inf made the trainer skip the step
    run = tmp_path / "run"
    assert train_inprocess("mlp", run, over) == 0
    assert _scaler(run, 30)["scale"] < 2.0**16  # it came down from its initial 65536
    assert read_metrics(run)[-1].get("bad_steps", 0) == 0

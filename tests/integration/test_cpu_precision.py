"""A CPU run in an emulated precision logs the one warning with its measured cost; a native one logs none."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli
from trainer.runtime import cpu

TINY = [
    "model.name=mlp",
    "model.hidden=[16]",
    "data.name=synthetic_classification",
    "data.num_samples=128",
    "data.eval_fraction=0",
    "train.max_steps=2",
    "train.batch_size=16",
    "log.trackers=[]",
    "log.plot=false",
]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_one_warning_exactly_when_the_precision_is_emulated_here(precision, tmp_path):
    r = run_cli(["train", *TINY, f"train.precision={precision}", f"run.dir={tmp_path / 'run'}"], timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [x for x in (r.stdout + r.stderr).splitlines() if f"train.precision={precision} on " in x]
    expected = cpu.precision_warning(precision)
    assert len(lines) == (1 if expected else 0), lines
    if expected:
        assert lines[0].endswith(expected) and "the CPU time per step of fp32" in lines[0]

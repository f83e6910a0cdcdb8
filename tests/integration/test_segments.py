"""After a resume, summary.json and the "done" line report the whole run, not only the last segment (#29
item 7): the first start, wall and compute time summed over the segments, how many, and the last apart."""

from __future__ import annotations

import os

import pytest

from tests.faultutil import TINY
from tests.helpers import read_summary, train_inprocess
from trainer import checkpoint as ckpt
from trainer.training.observe.segments import done_line

pytestmark = pytest.mark.timeout(120)

JOB = [*TINY, "checkpoint.every_steps=2"]


def rank_log(run_dir) -> str:
    return open(os.path.join(run_dir, "logs", "rank-0.log"), encoding="utf-8").read()


def test_a_resumed_run_reports_the_whole_run_and_its_last_segment(tmp_path):
    run = tmp_path / "run"
    assert train_inprocess(None, run, [*JOB, "train.max_steps=4"]) == 0
    first = read_summary(run)
    assert first["segments"] == 1 and first["last_segment"]["from_step"] == 0
    assert first["last_segment"]["wall_time_s"] == first["wall_time_s"] > 0
    assert 0 < first["compute_time_s"] <= first["wall_time_s"]
    saved = ckpt.load_state(os.path.join(run, "checkpoints", ckpt.step_name(4)))[0]["segments"]

    assert train_inprocess(None, run, [*JOB, "train.max_steps=8"]) == 0
    s = read_summary(run)
    last = s["last_segment"]
    assert s["segments"] == 2 and s["steps"] == 8
    assert s["provenance"]["start_time"] == first["provenance"]["start_time"]  # the first start
    assert (
        last["start_time"] >= first["provenance"]["start_time"]
        and last["start_time"] <= s["provenance"]["end_time"]
    )
    assert (last["from_step"], last["steps"]) == (4, 4)
    assert s["wall_time_s"] == pytest.approx(saved["wall_s"] + last["wall_time_s"], abs=2e-3)
    assert s["compute_time_s"] == pytest.approx(saved["compute_s"] + last["compute_time_s"], abs=2e-3)
    assert s["wall_time_s"] > last["wall_time_s"] and s["compute_time_s"] > last["compute_time_s"]
    assert f"done: {done_line(8, s)};" in rank_log(run)
    assert f"done: 8 steps in {s['wall_time_s']:.1f}s over 2 segments (the last: steps 4-8 in " in rank_log(
        run
    )

    os.remove(run / "summary.json")  # a complete run's summary regenerated: the totals it recorded
    assert train_inprocess(None, run, [*JOB, "train.max_steps=8"]) == 0
    again = read_summary(run)
    assert again["segments"] == 2 and again["provenance"]["start_time"] == first["provenance"]["start_time"]
    assert again["last_segment"]["from_step"] == 4 and 0 < again["wall_time_s"] <= s["wall_time_s"]


def test_the_done_line_of_one_segment_is_unchanged():
    one = {"wall_time_s": 3.21, "segments": 1, "last_segment": {"from_step": 0, "wall_time_s": 3.21}}
    assert done_line(8, one) == "8 steps in 3.2s"
    two = {"wall_time_s": 5.06, "segments": 2, "last_segment": {"from_step": 4, "wall_time_s": 1.24}}
    assert done_line(8, two) == "8 steps in 5.1s over 2 segments (the last: steps 4-8 in 1.2s)"

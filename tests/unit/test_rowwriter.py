"""The metrics writer thread: no row dropped with a tiny queue, flush means written, a failing sink is
dropped with one warning, a failing file is raised in the caller's thread."""

from __future__ import annotations

import io
import json
import logging
import threading

import pytest

from trainer.training.observe.rowwriter import RowWriter


def test_a_full_queue_blocks_the_producer_and_no_row_is_lost():
    gate = threading.Event()
    seen: list[int] = []

    def slow_sink(batch):
        gate.wait(5)  # hold the writer until the producer has met a full queue
        seen.extend(r["step"] for _, r in batch)

    fh = io.StringIO()
    w = RowWriter(fh, {"slow": slow_sink}, interval_s=0.01, maxsize=4)
    blocked = threading.Event()

    def produce():
        for i in range(50):
            w.put("train", {"step": i, "loss": 1.0 / (i + 1)})
        blocked.set()

    t = threading.Thread(target=produce)
    t.start()
    assert not blocked.wait(0.3)  # the producer cannot finish: 50 rows, a 4-row queue, a held writer
    gate.set()
    t.join(10)
    w.close()
    assert seen == list(range(50))
    assert [json.loads(x)["step"] for x in fh.getvalue().splitlines()] == list(range(50))


def test_flush_returns_once_rows_are_written_and_eval_rows_are_marked():
    fh = io.StringIO()
    w = RowWriter(fh, {}, interval_s=60)  # no timed wake-up: only flush writes
    w.put("train", {"step": 1, "loss": 0.5})
    w.put("eval", {"step": 1, "loss": 0.4, "accuracy": 0.9})
    w.flush()
    rows = [json.loads(x) for x in fh.getvalue().splitlines()]
    assert rows == [{"step": 1, "loss": 0.5}, {"eval": True, "step": 1, "loss": 0.4, "accuracy": 0.9}]
    w.close()


def test_a_failing_sink_is_dropped_with_one_warning_and_the_rest_go_on(caplog):
    fh = io.StringIO()

    def bad(batch):
        raise ConnectionError("tracker gone")

    w = RowWriter(fh, {"bad": bad}, interval_s=60)
    with caplog.at_level(logging.WARNING, logger="trainer"):
        for i in range(3):
            w.put("train", {"step": i})
            w.flush()
    w.close()
    assert len(fh.getvalue().splitlines()) == 3
    assert [r.getMessage() for r in caplog.records if "bad" in r.getMessage()] == [
        "bad: logging failed (ConnectionError: tracker gone); no more rows go to it in this run"
    ]
    assert "bad" not in w.sinks


def test_a_failing_metrics_file_is_raised_in_the_callers_thread():
    fh = io.StringIO()
    fh.close()
    w = RowWriter(fh, {}, interval_s=60)
    w.put("train", {"step": 1})
    with pytest.raises(OSError, match="writing metrics.jsonl failed"):
        w.close()

"""Optional outputs and switches: profiler traces, activation checkpointing, compile, progress bar."""

import os

import pytest

from tests.helpers import read_metrics, read_summary, train_inprocess

GPT_TINY = [
    "model.n_layer=2",
    "model.n_embd=32",
    "model.block_size=32",
    "data.max_bytes=100000",
    "train.batch_size=8",
    "train.eval_every_steps=0",
    "checkpoint.every_steps=0",
]


def test_profiler_trace_for_the_requested_window(tmp_path):
    assert train_inprocess("cnn", tmp_path / "run", ["train.max_steps=6", "profile.steps=[2,4]"]) == 0
    traces = os.listdir(tmp_path / "run" / "profile")
    assert traces and all(t.endswith((".json", ".json.gz", ".pt.trace.json")) for t in traces)


def test_activation_checkpointing_trains_the_same(tmp_path):
    over = [*GPT_TINY, "train.max_steps=4", "log.every_steps=1"]
    assert train_inprocess("gpt", tmp_path / "a", over) == 0
    assert train_inprocess("gpt", tmp_path / "b", [*over, "train.activation_checkpointing=true"]) == 0
    a = [r["loss"] for r in read_metrics(tmp_path / "a")]
    b = [r["loss"] for r in read_metrics(tmp_path / "b")]
    assert a == pytest.approx(b, abs=1e-5)


def test_compile_logs_compile_time_apart(tmp_path):
    over = ["train.max_steps=4", "train.compile=true", "train.compile_backend=aot_eager", "log.every_steps=2"]
    assert train_inprocess("mlp", tmp_path / "run", over) == 0
    summary = read_summary(tmp_path / "run")
    assert summary["compile_time_s"] > 0
    assert all(r["step_time_s"] < summary["compile_time_s"] for r in read_metrics(tmp_path / "run"))

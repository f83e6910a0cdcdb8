"""Streams under ``python -m launch ddp --nproc-per-node 2`` (issue 22): the ranks train on disjoint samples
(recorded by the model), a finite stream that runs out on one rank first ends the epoch on both without a
hang, and a preempted 2-process run resumes exactly on 2 processes (bitwise) and on 1 (every sample once; a
stream that shards itself refuses a new layout: tests/integration/test_streaming.py)."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from tests.conftest import run_cli
from tests.faultutil import DIST, launch, resumed_steps
from tests.helpers import FAST, final_weights, read_summary
from tests.streammodels import read_seen

pytestmark = pytest.mark.slow

BASE = [
    *FAST,
    *DIST,
    "model.name=tests.streammodels:RecordingMLP",
    "train.batch_size=16",
    "train.eval_every_steps=0",
    "log.every_steps=1",
]


def ddp(run_dir, *over: str, timeout: float = 120, env: dict | None = None):
    return launch(
        ["ddp", "--nproc-per-node", "2", *BASE, f"run.dir={run_dir}", *over], env=env, timeout=timeout
    )


def seen(path) -> str:
    os.makedirs(path, exist_ok=True)
    return str(path)


def kwargs(log_dir, extra: str = "") -> str:
    os.makedirs(log_dir, exist_ok=True)
    return f"model.kwargs={{log_dir: {log_dir}{extra}}}"


def test_ranks_read_disjoint_samples_and_stop_together_when_one_runs_out(tmp_path):
    # 104 samples in blocks of 8 (16 a step over 2 ranks): rank 0 gets 7 blocks, rank 1 gets 6, so at step
    # 7 only rank 0 has a batch; both end the pass there and start the next one.
    log = tmp_path / "seen"
    job = ddp(
        tmp_path / "run",
        kwargs(log),
        "data.name=tests.streammodels:Counting",
        "data.kwargs={n: 104}",
        "train.max_steps=9",
    )
    assert job.returncode == 0, job.stderr[-4000:]
    r0, r1 = read_seen(log, 0), read_seen(log, 1)
    first = [i for s in range(1, 7) for i in r0[s] + r1[s]]
    assert sorted(first) == list(range(96)) and len(set(first)) == 96  # disjoint, nothing skipped
    assert all(r0[s] == list(range(16 * (s - 1), 16 * (s - 1) + 8)) for s in range(1, 7))
    assert r0[7] == list(range(8)) and r1[7] == list(range(8, 16))  # pass 2 starts at sample 0
    rank0 = (tmp_path / "run" / "logs" / "rank-0.log").read_text()
    assert "another rank's stream ran out; this rank ends the epoch with it" in rank0
    assert "epoch 0 of the stream ended after 96 samples (step 6)" in rank0

    # a stream that shards itself, very unevenly (rank 0: 5 blocks, rank 1: 1): no hang either
    log2 = tmp_path / "seen2"
    job = ddp(
        tmp_path / "self", kwargs(log2), "data.name=tests.streammodels:SelfSharded", "train.max_steps=3"
    )
    assert job.returncode == 0, job.stderr[-4000:]
    assert read_summary(tmp_path / "self")["steps"] == 3
    assert read_seen(log2, 1) == {s: [1, 3, 5, 7, 9, 11, 13, 15] for s in (1, 2, 3)}


def test_preempted_on_two_processes_resumes_exactly_on_two_and_on_one(tmp_path):
    """SIGTERM at step 4 of a 2-process stream. The same command on 2 processes ends bitwise equal to an
    uninterrupted 2-process run, each rank on the same samples (its own loader state, data-rankN.pt); a copy
    of the preempted run resumed on 1 process continues at the next unseen sample, none twice."""
    data = ["data.name=tests.streammodels:Counting", "data.kwargs={n: 400}", "train.max_steps=10"]
    over = [kwargs(tmp_path / "unused", ", sigterm_at: 4"), *data, "checkpoint.every_steps=0"]
    ref = ddp(
        tmp_path / "ref", kwargs(tmp_path / "unused"), *data, env={"SEEN_DIR": seen(tmp_path / "ref-seen")}
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    env = {"SEEN_DIR": seen(tmp_path / "seen")}
    job = ddp(tmp_path / "run", *over, env=env)
    assert job.returncode != 0 and "preempted" in job.stderr, job.stderr[-3000:]
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    job = ddp(tmp_path / "run", *over, env=env)  # the same command
    assert job.returncode == 0, job.stderr[-3000:]
    a, b = final_weights(tmp_path / "ref"), final_weights(tmp_path / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)
    for r in range(2):
        assert read_seen(tmp_path / "seen", r) == read_seen(tmp_path / "ref-seen", r)

    one = run_cli(
        ["train", *BASE, f"run.dir={tmp_path / 'copy'}", *over],
        timeout=120,
        env={"SEEN_DIR": seen(tmp_path / "one-seen")},
    )
    assert one.returncode == 0, one.stderr[-3000:]
    assert "the checkpoint read the stream on 2 process(es) x 0 worker(s) -> 1 x 0" in one.stderr
    (at,) = resumed_steps(tmp_path / "copy")  # the preemption is agreed at a step boundary after step 4
    assert f"read {16 * at} samples to reach global sample {16 * at} (the position rule)" in one.stderr
    r0, r1 = read_seen(tmp_path / "ref-seen", 0), read_seen(tmp_path / "ref-seen", 1)
    assert sorted(i for s in range(1, at + 1) for i in r0[s] + r1[s]) == list(range(16 * at))
    after = [i for ids in read_seen(tmp_path / "one-seen").values() for i in ids]
    assert after == list(range(16 * at, 160))  # the next unseen sample, in stream order, none twice

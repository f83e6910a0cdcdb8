"""Streams through the real trainer (issue 22): SIGTERM and SIGKILL mid-stream then the same command (bitwise
weights and the same samples as an uninterrupted run), Hugging Face ``datasets`` streaming from local JSON and
Parquet through ``fit()`` and the CLI, token and text shards from a glob, and shards on SeaweedFS (S3)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from tests.conftest import run_cli
from tests.faultutil import run_forked
from tests.helpers import FAST, final_weights, read_metrics, read_summary, train_inprocess
from tests.streammodels import KeywordMLP, hf_json, read_seen, sample
from trainer import fit

# A recording model on a 300-sample stream, 16 a step: epoch 0 ends at step 18 (300 // 16), so 24 steps cross
# into a second pass.
STREAM_JOB = [
    "model.name=tests.streammodels:RecordingMLP",
    "train.max_steps=24",
    "train.batch_size=16",
    "train.eval_every_steps=0",
    "train.deterministic=true",
    "checkpoint.every_steps=4",
    "optim.lr=0.05",
    "log.every_steps=4",
]


def job(log_dir, source: str, extra_model: str = "", *more: str) -> list[str]:
    os.makedirs(log_dir, exist_ok=True)
    return [
        *STREAM_JOB,
        f"model.kwargs={{log_dir: {log_dir}{extra_model}}}",
        f"data.name=tests.streammodels:{source}",
        "data.kwargs={n: 300}",
        *more,
    ]


def all_records(log_dir) -> list[tuple[int, list[int]]]:
    with open(os.path.join(log_dir, "seen-rank0.txt"), encoding="utf-8") as fh:
        return [(int(a[0]), list(map(int, a[1:]))) for a in (line.split() for line in fh)]


def kill_and_resume(tmp_path, signal_kind: str, source: str, more: list[str]) -> None:
    ref_log, log = tmp_path / "ref-seen", tmp_path / "seen"
    local_ref = [m for m in more if not m.startswith("checkpoint.dir=")]
    assert train_inprocess(None, tmp_path / "ref", job(ref_log, source, "", *local_ref)) == 0
    fault = ", sigterm_at: 7" if signal_kind == "sigterm" else ", kill_at: 10"
    over = job(log, source, fault, *more)
    first = run_forked(tmp_path / "run", over)
    assert first == (75 if signal_kind == "sigterm" else -9)
    assert run_forked(tmp_path / "run", over) == 0  # the same command resumes
    rank0 = (tmp_path / "run" / "logs" / "rank-0.log").read_text()
    resumed_at = 7 if signal_kind == "sigterm" else 8  # SIGKILL at step 10: the last checkpoint is step 8
    assert f"at step {resumed_at} (epoch 0, {resumed_at * 16} samples into it" in rank0
    a, b = final_weights(tmp_path / "ref"), final_weights(tmp_path / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the same samples at every step; after a SIGKILL, the replayed steps 9-10 saw what they saw before
    assert read_seen(log) == read_seen(ref_log)
    records = all_records(log)
    steps = [s for s, _ in records]
    replayed = list(range(resumed_at + 1, 11)) if signal_kind == "sigkill" else []
    assert steps == list(range(1, resumed_at + 1)) + replayed + list(range(resumed_at + 1, 25))
    first_pass = dict(records[: resumed_at + len(replayed)])
    assert all(first_pass[s] == ids for s, ids in records if s in first_pass)
    if not any(m.startswith("data.shuffle_buffer") for m in more):
        assert read_seen(log)[8] == list(range(112, 128)) and read_seen(log)[19] == list(range(16))
    if source == "Counting":  # no state_dict: the reader re-reads the stream and skips, and says so
        window = next((int(m.split("=")[1]) for m in more if m.startswith("data.shuffle_buffer")), 16)
        skipped = resumed_at * 16 // window * window  # to the start of the window holding the position
        assert f"skipped {skipped} samples to resume (the source has no state_dict)" in rank0


@pytest.mark.parametrize(
    "signal_kind,source,more",
    [
        ("sigterm", "Counting", []),  # a plain generator: skipped ahead by count
        ("sigkill", "StatefulCounting", ["data.num_workers=2"]),  # restored from its state, in workers
        ("sigkill", "Counting", ["data.shuffle_buffer=24"]),
    ],
)
def test_stopped_mid_stream_then_the_same_command_equals_an_uninterrupted_run(
    tmp_path, signal_kind, source, more
):
    kill_and_resume(tmp_path, signal_kind, source, more)


def test_loader_state_rides_in_checkpoints_on_s3(tmp_path, s3):
    """checkpoint.dir on SeaweedFS: each rank's loader state is an object of the same checkpoint."""
    _, prefix, fs = s3
    kill_and_resume(tmp_path, "sigkill", "StatefulCounting", [f"checkpoint.dir=s3://{prefix}/ckpt"])
    assert fs.exists(f"{prefix}/ckpt/step-00000024/data-rank00000.pt")


def test_a_stream_that_shards_itself_refuses_a_new_layout_with_one_line(tmp_path):
    """Its position cannot be redistributed (here data.num_workers 0 -> 2; 2 processes -> 1 alike)."""
    log = tmp_path / "seen"
    over = [
        *STREAM_JOB,
        f"model.kwargs={{log_dir: {log}, sigterm_at: 3}}",
        "data.name=tests.streammodels:SelfSharded",
        "data.kwargs={lengths: [400]}",
    ]
    os.makedirs(log)
    assert run_forked(tmp_path / "run", over) == 75
    res = fit(overrides=[*FAST, *over, "data.num_workers=2", f"run.dir={tmp_path / 'run'}"])
    err = res.reason
    assert res.exit_code == 2 and "\n" not in err
    assert "read a stream that shards itself on 1 process(es) x 0 worker(s) -> 1 x 2" in err, err
    assert "data.num_workers=0" in err and "run.resume=restart" in err and "new run.dir" in err


def test_an_endless_stream_without_max_steps_is_exit_2_in_one_line(tmp_path):
    r = run_cli(["train", *FAST, "data.name=tests.streammodels:Counting", f"run.dir={tmp_path / 'run'}"])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "config error: train.max_steps=0: data.name='tests.streammodels:Counting' is a stream with no length "
        "(it may never end), so train.epochs cannot say how many steps to run; set train.max_steps"
    )
    assert not (tmp_path / "run").exists()


def _rows(n: int) -> list[dict]:
    out = []
    for i in range(n):
        x, y = sample(i)
        out.append({"x": x.tolist(), "label": y})
    return out


def test_hf_streaming_json_through_fit_and_parquet_through_the_cli(tmp_path):
    pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _rows(96)
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = [
        *FAST,
        "data.target_key=label",
        "train.max_steps=10",
        "train.batch_size=16",
        "log.every_steps=2",
    ]
    res = fit(
        train_data=hf_json(str(path)),
        model=KeywordMLP(),
        overrides=[*common, f"run.dir={tmp_path / 'fit'}"],
    )
    assert res.exit_code == 0, res.reason
    assert res.summary["steps"] == 10
    log = (tmp_path / "fit" / "logs" / "rank-0.log").read_text()
    assert "stream (sharded by the dataset itself" in log and "epoch 0 of the stream ended after 96" in log

    parquet = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    r = run_cli(
        [
            "train",
            *common,
            "data.name=tests.streammodels:hf_parquet",
            f"data.kwargs={{path: {parquet}}}",
            "model.name=tests.streammodels:KeywordMLP",
            f"run.dir={tmp_path / 'cli'}",
        ],
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    losses = [m["loss"] for m in read_metrics(tmp_path / "cli")]
    assert read_summary(tmp_path / "cli")["steps"] == 10 and losses[-1] < losses[0]


TINY_GPT = [
    "model.name=gpt",
    "model.block_size=16",
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    "model.vocab_size=64",
    "train.batch_size=8",
    "optim.name=adamw",
    "optim.lr=0.003",
    "train.eval_every_steps=0",
]


def write_token_shards(root, sizes=(1000, 700, 900), vocab=64) -> list:
    os.makedirs(root, exist_ok=True)
    g = np.random.default_rng(0)
    paths = []
    for k, n in enumerate(sizes):
        p = os.path.join(root, f"train-{k:03d}.bin")
        g.integers(0, vocab, n).astype(np.uint16).tofile(p)
        paths.append(p)
    return paths


@pytest.mark.parametrize("name", ["tokens", "text"])
def test_token_and_text_shards_from_a_glob_train_one_epoch(tmp_path, name):
    if name == "tokens":
        write_token_shards(tmp_path / "shards")
        pattern, per = (
            str(tmp_path / "shards" / "train-*.bin"),
            [(n // 1 - 1) // 16 for n in (1000, 700, 900)],
        )
    else:
        os.makedirs(tmp_path / "shards")
        texts = [("hello stream " * 50)[:n] for n in (500, 300)]
        for k, t in enumerate(texts):
            (tmp_path / "shards" / f"part-{k}.txt").write_text(t)
        pattern, per = str(tmp_path / "shards" / "part-*.txt"), [(len(t) - 1) // 16 for t in texts]
    eval_path = (
        str(tmp_path / "shards" / "train-002.bin")
        if name == "tokens"
        else str(tmp_path / "shards/part-1.txt")
    )
    over = [
        *TINY_GPT,
        f"data.name={name}",
        f"data.path={pattern}",
        f"data.eval_path={eval_path}",
        "train.epochs=1",
    ]
    assert train_inprocess(None, tmp_path / "run", over) == 0
    steps = sum(per) // 8  # train.epochs=1: one pass over every window of every shard
    summary = read_summary(tmp_path / "run")
    assert summary["steps"] == steps and "eval" in json.dumps(summary)
    log = (tmp_path / "run" / "logs" / "rank-0.log").read_text()
    assert f"{name}: stream of {sum(per):,} windows of 16 from {len(per)} shard(s)" in log


def test_shards_on_s3_stream_with_two_workers(tmp_path, s3):
    """Token shards in a SeaweedFS bucket, read through fsspec by 2 DataLoader workers (ranged reads)."""
    _, prefix, fs = s3
    local = write_token_shards(tmp_path / "local")
    for p in local:
        fs.put(p, f"{prefix}/data/{os.path.basename(p)}")
    over = [
        *TINY_GPT,
        "data.name=tokens",
        f"data.path=s3://{prefix}/data/train-*.bin",
        "data.num_workers=2",
        "train.max_steps=12",
        "checkpoint.every_steps=6",
    ]
    assert train_inprocess(None, tmp_path / "s3run", over) == 0
    ref = [*TINY_GPT, "data.name=tokens", f"data.path={tmp_path}/local/train-*.bin", "train.max_steps=12"]
    assert train_inprocess(None, tmp_path / "localrun", ref) == 0
    a, b = final_weights(tmp_path / "s3run"), final_weights(tmp_path / "localrun")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same windows in the same order, from either store


def test_jsonl_shards_local_and_on_s3_through_the_existing_record_encoding(tmp_path, s3):
    """The same three JSONL shards from a local glob (tokenized in 2 DataLoader workers) and from SeaweedFS
    (in the loop's process): the same rows in the same order, so the same weights."""
    pytest.importorskip("transformers")
    from tests.hfutil import make_model, make_tokenizer, qa_records, write_jsonl

    _, prefix, fs = s3
    tok = make_tokenizer(tmp_path / "tok")
    model = make_model(tmp_path / "llama", "llama", tok_dir=tok)
    os.makedirs(tmp_path / "local")
    for k in range(3):
        p = write_jsonl(tmp_path / "local" / f"train-{k}.jsonl", qa_records(20, seed=k))
        fs.put(p, f"{prefix}/jsonl/train-{k}.jsonl")
    common = [
        "model.name=hf",
        f"model.path={model}",
        "data.name=jsonl",
        "data.seq_len=32",
        "train.batch_size=8",
        "train.max_steps=9",  # 60 records: the first pass ends after 7 steps, then a second pass
        "optim.name=adamw",
        "optim.lr=0.001",
        "train.eval_every_steps=0",
        "checkpoint.every_steps=0",
    ]
    s3_over = [*common, f"data.path=s3://{prefix}/jsonl/*.jsonl"]
    assert train_inprocess(None, tmp_path / "s3run", s3_over) == 0
    local = [*common, f"data.path={tmp_path}/local/train-*.jsonl", "data.num_workers=2"]
    assert train_inprocess(None, tmp_path / "localrun", local) == 0
    log = (tmp_path / "s3run" / "logs" / "rank-0.log").read_text()
    assert "jsonl: stream of records from 3 shard(s)" in log and "epoch 0 of the stream ended after 56" in log
    a, b = final_weights(tmp_path / "s3run"), final_weights(tmp_path / "localrun")
    assert all(torch.equal(a[k], b[k]) for k in a)

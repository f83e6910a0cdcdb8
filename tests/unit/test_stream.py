"""Streams without a process group (trainer/data/stream.py): the position rule that shards a stream across
ranks and DataLoader workers, the shuffle windows, exact resume from the loader state (stateful sources,
plain generators, Hugging Face ``datasets``), resume on another layout, and what stays unimported."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.streammodels import SCALE, Counting, StatefulCounting
from trainer import config as C
from trainer import fit
from trainer.data import Stream, StreamBatches, wrap_datasets


def stream_of(ds) -> Stream:
    cfg = C.load(None, ["train.max_steps=5", "data.name=tests.streammodels:Counting"])
    train, _, _ = wrap_datasets(cfg, ds)
    assert isinstance(train, Stream)
    return train


def loader(ds, rank=0, world=1, micro=4, workers=0, window=0, seed=0) -> StreamBatches:
    return StreamBatches(stream_of(ds), rank, world, micro, micro * world, workers, window, seed, False, 2)


def ids(batch) -> list[int]:
    return [int(round(v * SCALE)) for v in batch[0][:, 0].tolist()]


def take(it, n=None) -> list[list[int]]:
    out = []
    for batch in it:
        out.append(ids(batch))
        if n is not None and len(out) == n:
            break
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_two_ranks_read_disjoint_blocks_in_global_order(workers):
    """Block b (m samples) goes to rank b % W and, on it, to worker (b // W) % w: the ranks' k-th
    micro-batches together are the stream's next W*m samples, none twice, none skipped."""
    m, W, n = 4, 2, 90  # 22 full blocks, then a partial one (never trained)
    per_rank = [take(loader(Counting(n), r, W, m, workers).epoch_iter(0, 0)) for r in range(W)]
    assert [len(p) for p in per_rank] == [11, 11]
    for r in range(W):
        for k, got in enumerate(per_rank[r]):
            b = k * W + r
            assert got == list(range(b * m, (b + 1) * m)), (r, k, got)


def test_shuffle_windows_permute_each_window_and_are_reproducible():
    m, N, n = 4, 12, 48
    a = sum(take(loader(Counting(n), micro=m, window=N, seed=3).epoch_iter(0, 0)), [])
    b = sum(take(loader(Counting(n), micro=m, window=N, seed=3).epoch_iter(0, 0)), [])
    other_epoch = sum(take(loader(Counting(n), micro=m, window=N, seed=3).epoch_iter(1, 0)), [])
    assert a == b and a != list(range(n)) and a != other_epoch
    for w in range(n // N):
        assert sorted(a[w * N : (w + 1) * N]) == list(range(w * N, (w + 1) * N))


@pytest.mark.parametrize(
    "source,workers,window",
    [(Counting, 0, 0), (StatefulCounting, 0, 10), (Counting, 2, 10), (StatefulCounting, 2, 0)],
)
def test_loader_state_resumes_with_the_next_unseen_micro_batch(source, workers, window):
    """StatefulDataLoader's state_dict after 5 micro-batches, loaded into a fresh loader: the rest equals an
    uninterrupted pass (a stateful source is restored, a plain generator skipped ahead)."""
    full = take(loader(source(100), workers=workers, window=window).epoch_iter(0, 0))
    first = loader(source(100), workers=workers, window=window)
    it = first.epoch_iter(0, 0)
    head = take(it, 5)
    sd = first.state_dict()
    del it
    second = loader(source(100), workers=workers, window=window)
    second.load_state_dict(json.loads(json.dumps(sd)))  # plain data: what a checkpoint holds
    it = second.epoch_iter(0, 20)
    again = second.state_dict()  # saved again before a micro-batch was drawn (workers' start-up state)
    del it
    third = loader(source(100), workers=workers, window=window)
    third.load_state_dict(json.loads(json.dumps(again)))
    rest = take(third.epoch_iter(0, 20))
    assert head + rest == full


def test_another_world_size_continues_at_the_global_position(caplog):
    """2 ranks read 3 steps (global position 24), then 1 rank at micro 8 starts there: every sample once."""
    W, m = 2, 4
    seen = []
    for r in range(W):
        seen += sum(take(loader(Counting(80), r, W, m).epoch_iter(0, 0), 3), [])
    with caplog.at_level(logging.INFO, logger="trainer"):
        rest = sum(take(loader(Counting(80), 0, 1, 8).epoch_iter(0, 24)), [])
    assert sorted(seen) == list(range(24)) and rest == list(range(24, 80))
    assert "read 24 samples to reach global sample 24 (the position rule)" in caplog.text


def test_hf_streaming_dataset_resumes_from_its_own_state(tmp_path):
    pytest.importorskip("datasets")
    from tests.streammodels import hf_json

    path = tmp_path / "d.jsonl"
    path.write_text(
        "".join(json.dumps({"x": [i / SCALE] + [0.0] * 7, "label": i % 4}) + "\n" for i in range(40))
    )

    def batches(sb, start=0, n=None):
        return [
            [int(round(v * SCALE)) for v in x["x"][:, 0].tolist()]
            for x, _ in take_raw(sb.epoch_iter(0, start), n)
        ]

    def take_raw(it, n):
        out = []
        for b in it:
            out.append(b)
            if n is not None and len(out) == n:
                break
        return out

    cfg = C.load(None, ["train.max_steps=5", "data.target_key=label"])

    def make():
        train, _, info = wrap_datasets(cfg, hf_json(str(path)))
        assert train.kind == "self" and info.task == "classification"
        return StreamBatches(train, 0, 1, 4, 4, 0, 0, 0, False, 2)

    full = batches(make())
    first = make()
    head = batches(first, n=3)
    sd = first.state_dict()
    second = make()
    second.load_state_dict(sd)
    assert head + batches(second) == full == [list(range(i, i + 4)) for i in range(0, 40, 4)]


def test_a_stream_without_length_needs_max_steps(tmp_path):
    res = fit(
        train_data=Counting(),
        overrides=[f"run.dir={tmp_path / 'run'}", "model.name=mlp", "log.progress=off", "device=cpu"],
    )
    assert res.exit_code == 2 and "train.max_steps=0" in res.reason and "set train.max_steps" in res.reason
    assert not (tmp_path / "run").exists()


def test_the_trainer_does_not_import_datasets_or_fsspec_for_other_data():
    code = (
        "import sys, trainer, trainer.api, trainer.run, trainer.data, trainer.training.loop; "
        "print(sorted(m for m in ('datasets', 'pyarrow', 'fsspec', 's3fs') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_hf_streaming_dataset_is_split_across_ranks_by_datasets(tmp_path):
    """A datasets.IterableDataset shards itself: split_dataset_by_node gives each rank its own samples."""
    pytest.importorskip("datasets")
    from tests.streammodels import hf_json

    for k in range(2):  # two files: two shards, one per rank
        (tmp_path / f"d{k}.jsonl").write_text(
            "".join(
                json.dumps({"x": [i / SCALE] + [0.0] * 7, "label": i % 4}) + "\n"
                for i in range(k * 20, k * 20 + 20)
            )
        )
    cfg = C.load(None, ["train.max_steps=5", "data.target_key=label"])
    seen = []
    for rank in range(2):
        train, _, _ = wrap_datasets(cfg, hf_json([str(tmp_path / "d0.jsonl"), str(tmp_path / "d1.jsonl")]))
        sb = StreamBatches(train, rank, 2, 4, 8, 0, 0, 0, False, 2)
        seen.append([int(round(v * SCALE)) for x, _ in sb.epoch_iter(0, 0) for v in x["x"][:, 0].tolist()])
    assert seen[0] == list(range(20)) and seen[1] == list(range(20, 40))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_record_in_a_worker_is_one_line(workers):
    from tests.streammodels import BadAt
    from trainer.config import ConfigError

    cfg = C.load(None, ["train.max_steps=5"])
    train, _, _ = wrap_datasets(cfg, BadAt(400, bad=300))  # after the 256 read ahead
    sb = StreamBatches(train, 0, 1, 4, 4, workers, 0, 0, False, 2)
    with pytest.raises(ConfigError) as e:
        take(sb.epoch_iter(0, 0))
    assert str(e.value) == "data.path='shard-0' line 301: not valid JSON"


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stream_that_raises_mid_run_is_one_line_naming_the_sample(workers):
    """Past the samples read at build (head_samples), a user's stream that raises is still exit 2 (a
    ConfigError) naming the sample and the exception, in the main process and from a worker."""
    from tests.streammodels import RaisesAt
    from trainer.config import ConfigError

    cfg = C.load(None, ["train.max_steps=5"])
    train, _, _ = wrap_datasets(cfg, RaisesAt(400, bad=300))  # after the 256 read ahead
    sb = StreamBatches(train, 0, 1, 4, 4, workers, 0, 0, False, 2)
    with pytest.raises(ConfigError) as e:
        take(sb.epoch_iter(0, 0))
    assert "\n" not in str(e.value)
    assert "sample 300" in str(e.value) and "RuntimeError: boom at 300" in str(e.value), str(e.value)


def test_streamed_jsonl_rows_follow_the_layouts_and_truncation(tmp_path):
    """One row per record through jsonl.encode_records/pack: an alpaca record learns only its output, a
    record data.truncation=drop leaves out is a row with no loss (the block keeps one row a record)."""
    pytest.importorskip("transformers")
    from tests.hfutil import make_tokenizer
    from trainer.data.jsonl import IGNORE
    from trainer.data.shards import JsonlDecode, JsonlShards

    tok = make_tokenizer(tmp_path / "tok")
    recs = [
        {"instruction": "next after one:", "output": " two"},
        {"text": "three four " * 40},  # longer than 16 tokens
        {"text": "five"},
    ]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    files = [str(tmp_path / "a.jsonl")]
    raws = list(JsonlShards(files))
    inp, pos, lab, docs = JsonlDecode(files, tok, "data.tokenizer", 16, "auto", "assistant", "drop").rows(
        raws
    )
    assert inp.shape == lab.shape == (3, 16)
    learned = lab != IGNORE
    assert 0 < learned[0].sum() < (inp[0] != inp[0, -1]).sum()  # the output only, not the instruction
    assert not learned[1].any() and learned[2].any()
    assert docs[:, 0].tolist() == [0, 2]  # the dropped record has a row but no document
    _, _, kept, _ = JsonlDecode(files, tok, "data.tokenizer", 16, "auto", "assistant", "left").rows(raws)
    assert (kept[1] != IGNORE).sum() == 15  # cut from the left to 16 tokens, every one learned


def test_trainer_data_shows_the_first_samples_of_a_stream(tmp_path, capfd):
    """`python -m trainer data` on streamed data: the samples the trainer reads first (no end to count)."""
    pytest.importorskip("transformers")
    from tests.hfutil import make_tokenizer, qa_records, write_jsonl
    from tests.integration.test_finetune_cli import tool

    r = tool(["data", "data.name=tests.streammodels:Counting", "--json", "--show", "2"], capfd)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["samples"] == [{"x": "float32 (8,)", "y": "int64 ()"}] * 2
    tok = make_tokenizer(tmp_path / "tok")
    for k in range(2):
        write_jsonl(tmp_path / f"train-{k}.jsonl", qa_records(5, seed=k))
    over = ["data.name=jsonl", f"data.path={tmp_path}/train-*.jsonl", f"data.tokenizer={tok}"]
    r = tool(["data", *over, "model.name=tests.streammodels:KeywordMLP", "data.seq_len=32", "--json"], capfd)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["documents"] == 8 and shown["learned_tokens"] > 0  # the 8 records read ahead
    assert shown["samples"][0]["learned"] and "next after" in shown["samples"][0]["text"]


def test_streamed_jsonl_refuses_bad_utf8_and_oversized_records_naming_file_and_line(tmp_path, monkeypatch):
    """The streamed reader checks each line as the in-memory reader does (jsonl.check_line): not UTF-8 or
    longer than MAX_RECORD_BYTES is exit 2 naming the shard and the line, never a UnicodeDecodeError or
    an unbounded read."""
    from trainer.config import ConfigError
    from trainer.data import jsonl, shards
    from trainer.data.shards import JsonlDecode, JsonlShards

    pytest.importorskip("transformers")
    from tests.hfutil import make_tokenizer

    tok = make_tokenizer(tmp_path / "tok")
    good = json.dumps({"text": "fine"}).encode() + b"\n"
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(good * 2 + b'{"text": "caf\xe9 \xff"}\n')
    files = [str(bad)]
    with pytest.raises(ConfigError) as e:
        JsonlDecode(files, tok, "data.tokenizer", 16, "auto", "assistant", "left").rows(
            list(JsonlShards(files))
        )
    assert str(bad) in str(e.value) and "line 3" in str(e.value) and "UTF-8" in str(e.value)

    monkeypatch.setattr(jsonl, "MAX_RECORD_BYTES", 64)
    monkeypatch.setattr(shards, "MAX_RECORD_BYTES", 64)
    big = tmp_path / "big.jsonl"
    big.write_bytes(good + b'{"text": "' + b"a" * 200 + b'"}\n' + good)
    with pytest.raises(ConfigError) as e:
        list(JsonlShards([str(big)]))
    assert str(big) in str(e.value) and "line 2" in str(e.value) and "longer than" in str(e.value)

"""Bad data in files and in user code (issue 27, classes 7 and 8), through the real CLI: each is exit 2 with
one line naming where (file and line, item, sample), and NaN samples are skipped steps that are warned about,
counted (bad_steps) and bounded (train.max_bad_fraction: exit 3 keeping the last good checkpoint)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from tests.helpers import read_metrics, read_summary
from trainer.checkpoint import CheckpointDir
from trainer.checkpoint.read import verify
from trainer.data.jsonl import MAX_RECORD_BYTES

FAULTY = [
    "data.name=tests.faultdata:Faulty",
    "model.name=mlp",
    "model.hidden=[16]",
    "train.batch_size=8",
    "log.progress=off",
    "log.plot=false",
    "log.tensorboard=false",
    "data.eval_fraction=0",
    "device=cpu",
]


def _one_error_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("config error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    pytest.importorskip("transformers")
    from tests.hfutil import make_model, make_tokenizer

    root = tmp_path_factory.mktemp("lm")
    tok = make_tokenizer(root / "tok")
    return root, make_model(root / "model", "llama", tok_dir=tok)


def _jsonl_run(lm, tmp_path, data: bytes):
    root, model = lm
    path = tmp_path / "train.jsonl"
    path.write_bytes(data)
    args = ["train", f"run.dir={tmp_path / 'run'}", "model.name=hf", f"model.path={model}", "data.name=jsonl",
            f"data.path={path}", "data.seq_len=32", "train.max_steps=1", "log.progress=off"]  # fmt: skip
    return run_cli(args), str(path)


def test_invalid_utf8_in_jsonl_is_exit_2_naming_file_and_line(lm, tmp_path):
    # main: exit 1, a UnicodeDecodeError traceback naming neither file nor line
    good = json.dumps({"text": "fine"}).encode() + b"\n"
    r, path = _jsonl_run(lm, tmp_path, good * 3 + b'{"text": "caf\xe9 \xff"}\n' + good)
    assert r.returncode == 2, r.stderr[-3000:]
    err = _one_error_line(r)
    assert path in err and "line 4" in err and "UTF-8" in err, err


def test_a_record_over_the_size_bound_is_exit_2_in_one_line(lm, tmp_path):
    # main: a 100 MB line was read and tokenized for minutes without a word
    good = json.dumps({"text": "fine"}).encode() + b"\n"
    huge = b'{"text": "' + b"a" * (MAX_RECORD_BYTES + 10) + b'"}\n'
    r, path = _jsonl_run(lm, tmp_path, good + huge + good)
    assert r.returncode == 2, r.stderr[-3000:]
    err = _one_error_line(r)
    assert path in err and "line 2" in err and "MAX_RECORD_BYTES" in err, err


@pytest.mark.parametrize("workers", [0, 1])
def test_a_dataset_that_raises_at_an_item_is_exit_2_naming_it(tmp_path, workers):
    # main: "internal error" exit 1 with a DataLoader worker's traceback
    r = run_cli(["train", *FAULTY, f"run.dir={tmp_path / 'run'}", "train.max_steps=40",
                 f"data.num_workers={workers}", "data.kwargs={n: 256, raise_at: 137}"])  # fmt: skip
    assert r.returncode == 2, r.stderr[-3000:]
    err = _one_error_line(r)
    assert "item 137" in err and "ValueError: corrupt record at offset 13700" in err, err


def test_a_sample_of_another_shape_is_one_line_naming_it(tmp_path):
    # main: "samples 343..695 cannot be batched" (a range of shuffled indices) inside a multi-line message.
    # In the main process here: with a DataLoader worker the message is the same (SampleError condenses it,
    # see test_a_dataset_that_raises_at_an_item_is_exit_2_naming_it[1]), but the worker, still receiving
    # indices when the process exits, sometimes prints a traceback of its own (not fixed here).
    r = run_cli(["train", *FAULTY, f"run.dir={tmp_path / 'run'}", "train.max_steps=40", "data.num_workers=0",
                 "data.kwargs={n: 256, shape_at: 201}"])  # fmt: skip
    assert r.returncode == 2, r.stderr[-3000:]
    err = _one_error_line(r)
    assert "sample 201 has x of shape (9,), the others in its batch (8,)" in err, err


def test_one_nan_sample_is_one_warning_naming_step_and_micro_batch_and_is_counted(tmp_path):
    # main: the step was skipped in silence, and nothing counted it
    run_dir = tmp_path / "run"
    r = run_cli(["train", *FAULTY, f"run.dir={run_dir}", "train.max_steps=8", "train.grad_accum=2",
                 "log.every_steps=2", "data.kwargs={n: 64, nan_every: 1000}"])  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    warned = [ln for ln in r.stderr.splitlines() if "non-finite" in ln]
    assert len(warned) == 1 and "micro-batch" in warned[0] and "of 2" in warned[0], r.stderr[-3000:]
    step = int(warned[0].split("step ")[1].split(":")[0].split()[0])
    rows = read_metrics(run_dir)
    assert all("bad_steps" in row for row in rows)
    assert [row["bad_steps"] for row in rows] == [0 if row["step"] < step else 1 for row in rows]
    assert read_summary(run_dir)["bad_steps"] == 1


def test_more_than_max_bad_fraction_skipped_is_exit_3_keeping_the_last_good_checkpoint(tmp_path):
    # main: every row finite and no word until exit 3 (or none at all while no streak reached max_bad_steps)
    run_dir = tmp_path / "run"
    r = run_cli(["train", *FAULTY, f"run.dir={run_dir}", "train.max_steps=200", "log.every_steps=4",
                 "checkpoint.every_steps=4", "train.max_bad_steps=3", "train.max_bad_fraction=0.05",
                 "data.kwargs={n: 512, nan_every: 64}"])  # fmt: skip
    assert r.returncode == 3, r.stderr[-3000:]
    assert "more than train.max_bad_fraction=0.05" in r.stderr, r.stderr[-3000:]
    rows = read_metrics(run_dir)
    last = rows[-1]
    assert last["bad_steps"] > 3 and last["bad_steps"] > 0.05 * last["step"] and last["step"] < 200
    ckpts = CheckpointDir(str(run_dir / "checkpoints"))
    latest = ckpts.latest_pointer()
    assert latest is not None and verify(latest) is None

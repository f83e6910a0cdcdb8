"""Issue #23: chat and instruction JSONL as people export it, seen with ``trainer data --json`` and trained
with LoRA on a tiny Llama (made here, nothing downloaded).

Each layout shows which spans are learned (messages with a ``weight: 0`` turn, ShareGPT, Alpaca with a
``text`` column, prompt/response, text); each trains; responses longer than ``data.seq_len`` allows keep
their learned tokens (``data.truncation=left``) or are exit 2 (0 learned tokens), never a run that learns
nothing with exit 0.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from tests.helpers import read_summary, train_inprocess
from tests.hfutil import WORDS, make_model, make_tokenizer, qa_records, write_jsonl
from tests.integration.test_finetune_cli import tool

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    tok = make_tokenizer(root / "tok")
    return {"root": root, "tok": tok, "model": make_model(root / "llama", "llama", tok_dir=tok)}


def as_layout(layout: str, prompt: str, answer: str) -> dict:
    """One question/answer in each layout (the answer is what should be learned)."""
    if layout == "messages":
        return {
            "messages": [
                {"role": "system", "content": "count"},
                {"role": "user", "content": "warm up"},
                {"role": "assistant", "content": "skip me", "weight": 0},
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": answer},
            ]
        }
    if layout == "sharegpt":
        return {"conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]}
    if layout == "alpaca":  # the common dump: structured fields plus the rendered text
        return {"instruction": prompt, "input": "", "output": answer, "text": f"{prompt} {answer}"}
    if layout == "prompt_response":
        return {"prompt": prompt, "response": answer}
    return {"text": f"{prompt} {answer}"}


LEARNED = {  # what `trainer data --json` shows as learned for as_layout(layout, "next after two:", "three")
    "messages": ["three<|end|><|eos|>"],
    "sharegpt": ["three<|end|><|eos|>"],
    "alpaca": ["three<|end|><|eos|>"],
    "prompt_response": ["three<|eos|>"],
}
LAYOUTS = ["messages", "sharegpt", "alpaca", "prompt_response", "text"]


def _data_json(assets, path, capfd, *extra, stderr: list | None = None):
    r = tool(
        [
            "data",
            "data.name=jsonl",
            f"data.path={path}",
            f"model.path={assets['model']}",
            "model.name=hf",
            f"run.dir={assets['root'] / 'runs' / 'x'}",
            "data.seq_len=64",
            "data.eval_fraction=0",
            "--json",
            "--show",
            "2",
            *extra,
        ],
        capfd,
    )
    assert r.returncode == 0, r.stderr
    if stderr is not None:
        stderr.append(r.stderr)
    return json.loads(r.stdout)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_trainer_data_json_shows_what_each_layout_learns(assets, tmp_path, capfd, layout):
    path = write_jsonl(tmp_path / "d.jsonl", [as_layout(layout, "next after two:", "three")] * 2)
    got = _data_json(assets, path, capfd)
    assert set(got) == {"format", "documents", "tokens", "learned_tokens", "truncated", "dropped", "samples"}
    assert got["format"] == layout and got["documents"] == 2 and got["truncated"] == got["dropped"] == 0
    s = got["samples"][0]
    if layout == "text":  # every token but the first (nothing before it predicts it)
        assert s["text"] == "next after two: three<|eos|>" and s["learned"] == [" after two: three<|eos|>"]
        return
    assert s["learned"] == LEARNED[layout], s
    if layout == "messages":  # the weight-0 turn is in the text but not learned
        assert "skip me" in s["text"] and not any("skip me" in t for t in s["learned"])
    if layout == "alpaca":  # the structured fields win over the text column
        assert s["text"] == "<|user|>next after two:<|end|><|assistant|>three<|end|><|eos|>"
    # data.train_on=all learns the prompt too; data.format=text forces the text column of an Alpaca dump
    everything = _data_json(assets, path, capfd, "data.train_on=all")
    assert everything["learned_tokens"] == everything["tokens"] - 2  # all but each document's first token
    if layout == "alpaca":
        forced = _data_json(assets, path, capfd, "data.format=text")
        assert forced["format"] == "text" and forced["samples"][0]["text"] == "next after two: three<|eos|>"


def test_a_mixed_file_is_detected_with_counts(assets, tmp_path, capfd):
    recs = [as_layout(k, "next after one:", "two") for k in LAYOUTS] + [as_layout("alpaca", "a", "b")]
    err: list = []
    got = _data_json(assets, write_jsonl(tmp_path / "m.jsonl", recs), capfd, stderr=err)
    assert got["format"] == "alpaca+messages+prompt_response+sharegpt+text" and got["documents"] == 6
    assert "detected alpaca 2, messages 1, prompt_response 1, sharegpt 1, text 1 record(s)" in err[0]


LORA = [
    "model.name=hf",
    "data.name=jsonl",
    "data.seq_len=64",
    "train.batch_size=8",
    "train.max_steps=12",
    "train.eval_batch_size=64",
    "optim.name=adamw",
    "optim.lr=1e-2",
    "optim.schedule=constant",
    "lora.targets=[q_proj,v_proj,o_proj,down_proj]",
    "lora.trainable=[lm_head]",
    "lora.rank=8",
    "log.every_steps=4",
    "checkpoint.every_steps=0",
    "train.precision=fp32",
]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_trains_with_lora(assets, tmp_path, layout):
    recs = [as_layout(layout, r["prompt"], r["response"].strip()) for r in qa_records(96, seed=3)]
    run = tmp_path / "run"
    over = [*LORA, f"data.path={write_jsonl(tmp_path / 't.jsonl', recs)}", f"model.path={assets['model']}"]
    assert train_inprocess(None, run, over) == 0
    s = read_summary(run)
    counts = s["data_counts"]
    assert counts["format"] == layout and counts["train"]["learned_tokens"] > 0
    assert s["eval"]["loss"] < s["eval_before"]["loss"], (s["eval_before"], s["eval"])


def _long(n: int) -> list[dict]:
    """n prompts of ~140 tokens (a row of 64 cannot hold them) and n/2 short ones; one-token responses."""
    filler = " ".join(WORDS * 7)
    recs = [
        {"prompt": f"{filler} next after {WORDS[i % 10]}:", "response": f" {WORDS[(i + 1) % 10]}"}
        for i in range(n)
    ]
    return recs + qa_records(n // 2, seed=4)


def test_responses_past_seq_len_keep_their_learned_tokens_or_fail_loudly(assets, tmp_path, capfd):
    from trainer.data.tokenizer import load_tokenizer

    tok = load_tokenizer(assets["tok"])
    recs = _long(40)
    learned = [len(tok(r["response"], add_special_tokens=False)["input_ids"]) + 1 for r in recs]  # + EOS
    path = write_jsonl(tmp_path / "long.jsonl", recs)
    left = _data_json(assets, path, capfd)  # default data.truncation=left: the prompt is cut from the left
    assert left["documents"] == 60 and left["truncated"] == 40 and left["dropped"] == 0
    assert left["learned_tokens"] == sum(learned)  # every response whole, long documents included
    dropped = _data_json(assets, path, capfd, "data.truncation=drop")
    assert (
        dropped["documents"] == 20
        and dropped["dropped"] == 40
        and dropped["learned_tokens"] == sum(learned[40:])
    )
    right = _data_json(assets, path, capfd, "data.truncation=right")  # only the short ones still learn
    assert right["truncated"] == 40 and right["learned_tokens"] == sum(learned[40:])
    path = write_jsonl(tmp_path / "all-long.jsonl", _long(40)[:40])
    # right truncation cuts every response away: the run is exit 2 before anything is written
    run = tmp_path / "run"
    r = run_cli(
        [
            "train",
            *LORA,
            f"data.path={path}",
            f"model.path={assets['model']}",
            f"run.dir={run}",
            "data.truncation=right",
            "device=cpu",
        ],
        timeout=180,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "0 learned tokens in the train split of" in r.stderr and "data.truncation=right" in r.stderr
    assert "Traceback" not in r.stderr and not run.exists()
    # the default trains on them, and summary.json counts the cut documents
    assert (
        train_inprocess(
            None, run, [*LORA, f"data.path={path}", f"model.path={assets['model']}", "train.max_steps=2"]
        )
        == 0
    )
    c = read_summary(run)["data_counts"]
    assert c["train"]["truncated"] + c["eval"]["truncated"] == 40 and c["train"]["learned_tokens"] > 0

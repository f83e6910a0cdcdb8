"""Bring your own model and data (issue #11), trained with no adapter code: a nanoGPT-style GPT through the
CLI, a Hugging Face causal LM and sequence classifier through ``trainer.fit``, a custom loss, each probe
error (exit 2, one line, no run dir), resume bitwise equal, and eval/export of a user model's run.

Everything but one CLI run goes through ``fit`` in this process (it must be callable many times anyway);
``eval``/``export`` through ``trainer.__main__.main`` in-process, as test_finetune_cli.py does.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests import byo_models
from tests.conftest import run_cli
from tests.helpers import FAST, final_weights, read_metrics, read_summary
from tests.integration.test_finetune_cli import tool
from trainer import fit, load_config

transformers = pytest.importorskip("transformers")

NANO = [
    "model.name=tests.byo_models:GPT",
    "model.config=tests.byo_models:GPTConfig",
    "model.kwargs={block_size: 16, n_layer: 2, n_embd: 32}",
    "model.target_arg=targets",
    "data.name=text",
    "data.max_bytes=20000",
    "model.block_size=16",
    "train.batch_size=8",
    "optim.name=adamw",
    "optim.lr=0.003",
    "log.every_steps=1",
    *FAST,
]
LLAMA = [
    "model.name=transformers:LlamaForCausalLM",
    "model.config=transformers:LlamaConfig",
    "model.kwargs={vocab_size: 256, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, "
    "num_attention_heads: 2, num_key_value_heads: 2, max_position_embeddings: 32}",
    "data.name=text",
    "data.max_bytes=20000",
    "model.block_size=16",
    "train.batch_size=8",
    "train.max_steps=4",
    "optim.name=adamw",
    "optim.lr=0.003",
    "log.every_steps=1",
    *FAST,
]


def losses(run_dir) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir)]


@pytest.fixture(scope="module")
def nano_run(tmp_path_factory):
    """The nanoGPT-style model through the real CLI: model.config + model.kwargs + model.target_arg."""
    run_dir = tmp_path_factory.mktemp("nano") / "run"
    r = run_cli(
        ["train", f"run.dir={run_dir}", "train.max_steps=6", "checkpoint.every_steps=3", *NANO],
        env={"OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir, r


def test_nanogpt_style_model_trains_through_the_cli(nano_run):
    run_dir, r = nano_run
    assert "the model's loss" in r.stderr  # (logits, loss): the model's own loss trains
    s = read_summary(run_dir)
    assert s["steps"] == 6 and s["eval"]["perplexity"] > 1
    ls = losses(run_dir)
    assert len(ls) == 6 and ls[-1] < ls[0]


def test_export_and_eval_of_a_user_model_run(nano_run, tmp_path, capfd):
    run_dir, _ = nano_run
    out = tmp_path / "nano.safetensors"
    r = tool(["export", "--from", str(run_dir), "--out", str(out)], capfd)
    assert r.returncode == 0 and out.is_file(), r.stderr
    r = tool(["eval", "--from", str(out), "--json", str(tmp_path / "e.json")], capfd)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "e.json").read_text())
    # the same model, data split and loss (the model's, through model.target_arg) as the run's final eval
    assert res["loss"] == pytest.approx(read_summary(run_dir)["eval"]["loss"], rel=1e-5)


def test_resume_of_a_user_model_is_bitwise_equal(tmp_path):
    cfg = NANO + ["checkpoint.every_steps=3", "optim.name=adamw"]
    straight = fit(overrides=[*cfg, f"run.dir={tmp_path / 'a'}", "train.max_steps=6"])
    first = fit(overrides=[*cfg, f"run.dir={tmp_path / 'b'}", "train.max_steps=3"])
    second = fit(overrides=[*cfg, f"run.dir={tmp_path / 'b'}", "train.max_steps=6"])  # resumes at step 3
    assert (straight.exit_code, first.exit_code, second.exit_code) == (0, 0, 0)
    assert "resumed from" in (tmp_path / "b" / "logs" / "rank-0.log").read_text()
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert losses(tmp_path / "a")[3:] == losses(tmp_path / "b")[3:]


@pytest.fixture(scope="module")
def llama_single(tmp_path_factory):
    """A tiny Llama from its config class on the built-in text data, its loss computed by the trainer."""
    run_dir = tmp_path_factory.mktemp("llama") / "single"
    res = fit(overrides=[*LLAMA, f"run.dir={run_dir}"])
    assert res.exit_code == 0, res.reason
    return run_dir, res


def test_hf_causal_lm_trains_and_its_own_loss_equals_the_trainers(llama_single, tmp_path):
    run_dir, res = llama_single
    assert type(res.model).__name__ == "LlamaForCausalLM" and res.summary["steps"] == 4
    assert res.run_dir == str(run_dir) and res.summary["eval"]["perplexity"] > 1
    # labels=y into the model (with shift_labels=y: no double shift): HF's loss trains, and it is the same
    own = fit(overrides=[*LLAMA, f"run.dir={tmp_path / 'own'}", "model.target_arg=labels"])
    assert own.exit_code == 0, own.reason
    assert losses(tmp_path / "own") == pytest.approx(losses(run_dir), abs=1e-5)
    assert own.summary["eval"]["loss"] == pytest.approx(res.summary["eval"]["loss"], abs=1e-5)


def test_hf_sequence_classifier_on_a_dict_dataset_through_fit(tmp_path, capfd):
    model = transformers.BertForSequenceClassification(
        transformers.BertConfig(
            vocab_size=40,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=16,
            num_labels=2,
        )
    )
    cfg = load_config(
        {"train": {"max_steps": 8, "batch_size": 16}, "optim": {"name": "adamw", "lr": 0.003}},
        [*FAST, f"run.dir={tmp_path / 'bert'}", "model.target_arg=labels"],
    )
    res = fit(
        cfg,
        model=model,
        train_data=byo_models.DictSequences(96),
        eval_data=byo_models.DictSequences(32, seed=1),
    )
    assert res.exit_code == 0, res.reason
    assert res.model is model  # the trained module itself, unwrapped
    ev = res.summary["eval"]
    assert ev["samples"] == 32 and 0.0 <= ev["accuracy"] <= 1.0 and ev["loss"] > 0
    saved = (tmp_path / "bert" / "config.yaml").read_text()
    assert "BertForSequenceClassification" in saved and "DictSequences" in saved  # what trained is recorded
    log = (tmp_path / "bert" / "logs" / "rank-0.log").read_text()
    assert "keys input_ids, attention_mask -> forward" in log
    assert "output SequenceClassifierOutput(loss: tensor (), logits: tensor (16, 2)), the model's loss" in (
        capfd.readouterr().err
    )  # the probe's line (printed before the run dir, hence its log, exists)


def test_a_custom_loss_trains_and_evaluates(tmp_path):
    byo_models.LOSS_CALLS.clear()
    over = [
        *FAST,
        "model.name=mlp",
        "model.hidden=[16]",
        "data.name=synthetic_classification",
        "data.num_samples=256",
        "train.batch_size=32",
        "train.max_steps=3",
        "train.eval_batch_size=64",
        f"run.dir={tmp_path / 'a'}",
        "train.loss=tests.byo_models:counted_ce",
    ]
    res = fit(overrides=over)
    assert res.exit_code == 0, res.reason
    # the probe (32), 3 steps (32 each), the final eval over 26 samples (0.1 of 256) in one batch
    assert byo_models.LOSS_CALLS == [(32,)] * 4 + [(26,)]
    res = fit(overrides=[*over[:-2], f"run.dir={tmp_path / 'b'}"], loss=byo_models.smoothed_ce)
    assert res.exit_code == 0 and "smoothed_ce" in (tmp_path / "b" / "config.yaml").read_text()


PROBE_ERRORS = {
    "classes": (
        ["model.name=tests.byo_models:four_outputs", "data.name=digits"],
        "model output (64, 4) does not fit 10 classes",
    ),
    "last_position": (
        [o for o in NANO if not o.startswith("model.target_arg")],
        "model output (8, 1, 256) does not fit token targets (8, 16): expected (8, 16, vocab) "
        "(a model that returns only the last position without targets needs model.target_arg)",
    ),
    "loss_not_scalar": (
        ["model.name=mlp", "train.loss=tests.byo_models:scalar_per_sample_loss"],
        "train.loss='tests.byo_models:scalar_per_sample_loss' returned (64,), expected a scalar",
    ),
    "forward_fails": (
        [*NANO, "model.target_arg=labels"],
        "forward on a micro-batch of 8 from data.name='text' failed: TypeError",
    ),
    "target_key": (
        ["model.name=mlp", "data.name=tests.byo_models:DictSequences", "data.target_key=label"],
        "data.target_key='label': not a key of the dataset's samples",
    ),
}


@pytest.mark.parametrize("case", sorted(PROBE_ERRORS))
def test_each_probe_error_is_exit_2_one_line_and_no_run_dir(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no run.dir given either: nothing may appear under ./runs
    over, expected = PROBE_ERRORS[case]
    res = fit(overrides=[*FAST, *over])
    assert res.exit_code == 2 and expected in res.reason and "\n" not in res.reason, res.reason
    assert os.listdir(tmp_path) == []


def test_probe_error_through_the_cli_is_one_line(tmp_path):
    r = run_cli(["train", f"run.dir={tmp_path / 'run'}", *FAST, *PROBE_ERRORS["classes"][0]], timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "config error: model.name='tests.byo_models:four_outputs' on data.name='digits': "
        "model output (64, 4) does not fit 10 classes"
    ]
    assert not (tmp_path / "run").exists()

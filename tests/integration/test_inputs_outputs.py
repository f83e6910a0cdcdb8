"""Issue #23: inputs and outputs as users bring them, through ``trainer.fit`` (no adapter code).

Hugging Face causal-LM dicts with ``labels = input_ids`` train on the next token (measured: the trained
model's argmax is the next token, not the current one), or are refused when the convention cannot be told;
a loss under another key trains and says so (several: exit 2 naming ``model.loss_key``); ``(a, b, y)``
samples reach ``forward(a, b)``; a minGPT-style ``**kwargs`` config class receives ``model.kwargs``; T5's
seq2seq dicts (labels shorter than the inputs) train on the model's own loss.
"""

from __future__ import annotations

import pytest
import torch

from tests import byo_models
from tests.helpers import FAST, read_metrics
from trainer import fit

transformers = pytest.importorskip("transformers")

SMALL = [*FAST, "log.every_steps=1", "checkpoint.every_steps=0", "optim.name=adamw"]
CLASSES = [
    "data.name=synthetic_classification",
    "data.num_samples=256",
    "data.num_features=8",
    "data.num_classes=4",
    "train.batch_size=32",
]


def _llama(vocab: int = 64):
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(
        byo_models.tiny_llama_config(vocab_size=vocab, max_position_embeddings=32)
    )


def test_hf_labels_equal_to_inputs_train_the_next_token(tmp_path, capfd):
    res = fit(
        overrides=[
            *SMALL,
            f"run.dir={tmp_path / 'run'}",
            "train.max_steps=40",
            "optim.lr=0.01",
            "train.eval_batch_size=64",
        ],
        model=_llama(),
        train_data=byo_models.CausalDicts(256),
        eval_data=byo_models.CausalDicts(64, seed=1),
    )
    assert res.exit_code == 0, res.reason
    assert (
        "LM labels equal the inputs (Hugging Face's causal-LM convention): shifted" in capfd.readouterr().err
    )
    ids = byo_models.CausalDicts(64, seed=1).ids
    with torch.no_grad():
        pred = res.model.eval()(input_ids=ids).logits.argmax(-1)
    nxt = (pred[:, :-1] == ids[:, 1:]).float().mean().item()
    copy = (pred == ids).float().mean().item()
    # measured: next 1.00, copy 0.00 after 40 steps; main before #23: next 0.00, copy 1.00, exit 0
    assert nxt > 0.9 and copy < 0.1, (nxt, copy)
    # the last position of each row has no next token: 15 of 16 positions scored
    assert res.summary["eval"]["tokens"] == 64 * 15


class _Constant(torch.utils.data.Dataset):
    """labels = input_ids = one repeated token: fits both conventions, so neither can be assumed."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        ids = torch.full((8,), 5)
        return {"input_ids": ids, "labels": ids.clone()}


class _Tags(torch.utils.data.Dataset):
    """Per-token targets of their own (neither the inputs nor the inputs shifted)."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        ids = torch.arange(8) + i
        return {"input_ids": ids, "labels": (ids * 3) % 7}


@pytest.mark.parametrize("data", [_Constant, _Tags])
def test_labels_whose_convention_cannot_be_told_are_exit_2_naming_target_arg(data, tmp_path):
    res = fit(
        overrides=[*SMALL, f"run.dir={tmp_path / 'run'}", "train.max_steps=2", "train.batch_size=4"],
        model=_llama(),
        train_data=data(),
    )
    assert res.exit_code == 2 and "model.target_arg=labels" in res.reason and "\n" not in res.reason, (
        res.reason
    )
    # handing them to the model settles it: the model shifts and scores them
    res = fit(
        overrides=[
            *SMALL,
            f"run.dir={tmp_path / 'own'}",
            "train.max_steps=2",
            "train.batch_size=4",
            "model.target_arg=labels",
        ],
        model=_llama(),
        train_data=data(),
    )
    assert res.exit_code == 0, res.reason


def test_a_loss_under_another_key_trains_and_the_probe_says_which(tmp_path, capfd):
    over = [*SMALL, *CLASSES, "train.max_steps=3", "model.target_arg=targets"]
    res = fit(overrides=[*over, f"run.dir={tmp_path / 'a'}"], model=byo_models.TotalLoss())
    assert res.exit_code == 0, res.reason
    assert "the model's loss (total_loss)" in capfd.readouterr().err
    assert all(
        r["loss"] > 10 for r in read_metrics(tmp_path / "a")
    )  # CE + 10: the model's, not the trainer's
    # two 0-dim tensors and no "loss": exit 2 naming model.loss_key, nothing written
    res = fit(overrides=[*over, f"run.dir={tmp_path / 'b'}"], model=byo_models.TotalLoss(aux=True))
    assert res.exit_code == 2 and "set model.loss_key=NAME" in res.reason and "total_loss, aux" in res.reason
    assert not (tmp_path / "b").exists()
    res = fit(
        overrides=[*over, f"run.dir={tmp_path / 'c'}", "model.loss_key=total_loss"],
        model=byo_models.TotalLoss(aux=True),
    )
    assert res.exit_code == 0 and all(r["loss"] > 10 for r in read_metrics(tmp_path / "c"))
    res = fit(
        overrides=[*over, f"run.dir={tmp_path / 'd'}", "model.loss_key=nope"], model=byo_models.TotalLoss()
    )
    assert res.exit_code == 2 and "model.loss_key='nope': not a tensor of the model's output" in res.reason


def test_a_loss_without_gradient_is_exit_2_naming_the_ways_out(tmp_path):
    # a dict whose only 0-dim tensor is a detached metric: read as the model's loss, it cannot train;
    # exit 2 naming the key and the ways out, not torch's backward traceback (exit 1)
    over = [*SMALL, *CLASSES, "train.max_steps=2"]
    res = fit(overrides=[*over, f"run.dir={tmp_path / 'a'}"], model=byo_models.MetricOnly())
    assert res.exit_code == 2, (res.exit_code, res.reason)
    assert "'confidence'" in res.reason and "no gradient" in res.reason and "model.loss_key" in res.reason
    assert "train.loss" in res.reason and "\n" not in res.reason
    # the way out it names trains on the predictions
    res = fit(
        overrides=[*over, f"run.dir={tmp_path / 'b'}", "train.loss=tests.byo_models:scores_ce"],
        model=byo_models.MetricOnly(),
    )
    assert res.exit_code == 0, res.reason


def test_three_tuples_reach_forward_a_b(tmp_path):
    res = fit(
        overrides=[
            *SMALL,
            f"run.dir={tmp_path / 'run'}",
            "train.max_steps=30",
            "train.batch_size=32",
            "optim.lr=0.05",
        ],
        model=byo_models.TwoInputs(),
        train_data=byo_models.Triples(256),
        eval_data=byo_models.Triples(128, seed=1),
    )
    assert res.exit_code == 0, res.reason
    assert res.summary["eval"]["accuracy"] > 0.8, res.summary["eval"]
    assert "2 inputs -> forward(x1, ..., x2)" in (tmp_path / "run" / "logs" / "rank-0.log").read_text()


def test_a_kwargs_only_config_class_receives_model_kwargs(tmp_path):
    res = fit(
        overrides=[
            *SMALL,
            *CLASSES,
            f"run.dir={tmp_path / 'run'}",
            "train.max_steps=3",
            "model.name=tests.byo_models:MinMLP",
            "model.config=tests.byo_models:CfgNode",
            "model.kwargs={n_in: 8, n_hidden: 16, n_out: 4}",
        ]
    )
    assert res.exit_code == 0, res.reason
    assert res.model.net[0].out_features == 16


def test_t5_seq2seq_dicts_train_on_the_models_own_loss(tmp_path, capfd):
    torch.manual_seed(0)
    t5 = transformers.T5ForConditionalGeneration(
        transformers.T5Config(
            vocab_size=32,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    res = fit(
        overrides=[
            *SMALL,
            f"run.dir={tmp_path / 'run'}",
            "train.max_steps=30",
            "train.batch_size=16",
            "optim.lr=0.01",
        ],
        model=t5,
        train_data=byo_models.Seq2SeqDicts(128),
        eval_data=byo_models.Seq2SeqDicts(32, seed=1),
    )
    assert res.exit_code == 0, res.reason
    err = capfd.readouterr().err
    assert "seq2seq labels (another length than the inputs) go to forward as 'labels'" in err
    assert "the model's loss" in err
    losses = [r["loss"] for r in read_metrics(tmp_path / "run")]
    assert losses[-1] < losses[0] - 0.5, losses

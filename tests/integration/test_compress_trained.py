"""Compression on the trained digits CNN (the session's `cnn_run`, the `make train` recipe trained through
the real CLI, hence integration): int8 quantization keeps accuracy and shrinks the Linear weights ~4x,
magnitude pruning hits the requested sparsity exactly (also after a fine-tune with masks on), and channel
pruning really shrinks the tensors. Untrained-model tests: tests/unit/test_compress.py."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from trainer.models import CNN
from trainer.tools import prune as P
from trainer.tools import quantize as Q
from trainer.tools.evaluate import evaluate_module, load_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(cnn_run):
    """(model, eval_ds, train_ds, task, fp32 accuracy) from the session's trained CNN run."""
    run_dir, _ = cnn_run
    model, cfg, _, (train_ds, eval_ds, info) = load_model(str(run_dir))
    acc = evaluate_module(model, eval_ds, info.task, 512)["accuracy"]
    return model, eval_ds, train_ds, info.task, acc


@pytest.mark.parametrize("scheme", ["int8-dynamic", "int8-weight", "torch-ao-dynamic"])
def test_int8_quantization_keeps_accuracy_and_shrinks_linear_weights_4x(trained, scheme):
    model, eval_ds, _, task, acc = trained
    q, used, note = Q.quantize(model, scheme, fallback=False)
    assert used == scheme and type(model.fc1) is nn.Linear  # the source is untouched
    q_acc = evaluate_module(q, eval_ds, task, 512)["accuracy"]
    assert abs(q_acc - acc) <= 0.01, (scheme, acc, q_acc)
    before, after = Q.linear_weight_bytes(model), Q.linear_weight_bytes(q)
    assert before == (128 * 3136 + 10 * 128) * 4
    assert 3.8 < before / after <= 4.0, (before, after)  # int8 + one scale per row (or per tensor)


def test_torchao_failure_falls_back_to_torch_ao(trained, monkeypatch):
    model = trained[0]

    def broken(module, scheme):
        raise ImportError("No module named 'torchao'")

    monkeypatch.setattr(Q, "_torchao", broken)
    q, used, note = Q.quantize(model, "int8-dynamic")
    assert used == "torch-ao-dynamic" and note.startswith("fallback from int8-dynamic: ImportError")
    assert type(q.fc1).__module__.startswith("torch.ao.nn.quantized")
    with pytest.raises(ImportError):
        Q.quantize(model, "int8-dynamic", fallback=False)


@pytest.mark.parametrize("scope,amount", [("global", 0.5), ("layer", 0.7), ("global", 0.9)])
def test_unstructured_pruning_reaches_exactly_the_requested_sparsity(trained, scope, amount):
    model = copy.deepcopy(trained[0])
    names = P.unstructured(model, amount, scope, [])
    assert names == ["conv1", "conv2", "fc1", "fc2"]
    P.make_permanent(model)
    zeros, total = P.weight_sparsity(model, names)
    assert (
        zeros
        == P.expected_zeros(model, names, amount, scope)
        == (
            round(amount * total)
            if scope == "global"
            else sum(round(amount * model.get_submodule(n).weight.numel()) for n in names)
        )
    )
    assert abs(zeros / total - amount) < 1e-5
    if scope == "layer":
        for n in names:
            w = model.get_submodule(n).weight
            assert int((w == 0).sum()) == round(amount * w.numel()), n
    assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict())  # plain weights again


def test_fine_tune_with_masks_on_keeps_the_sparsity_and_recovers_accuracy(trained):
    model, eval_ds, train_ds, task, acc = trained
    model = copy.deepcopy(model)
    names = P.unstructured(model, 0.9, "global", ["fc*"])
    assert names == ["fc1", "fc2"]
    pruned_acc = evaluate_module(model, eval_ds, task, 512)["accuracy"]
    P.short_finetune(model, train_ds, task, steps=15, batch_size=64, lr=0.005, seed=0)
    P.make_permanent(model)
    zeros, total = P.weight_sparsity(model, names)
    assert zeros == round(0.9 * total)  # the masked entries stayed zero through the optimizer steps
    tuned_acc = evaluate_module(model, eval_ds, task, 512)["accuracy"]
    assert tuned_acc >= min(pruned_acc, acc - 0.02), (acc, pruned_acc, tuned_acc)


def test_channel_pruning_shrinks_tensors_and_the_model_still_runs(trained):
    model, eval_ds, _, task, acc = trained
    model = copy.deepcopy(model)
    changes = P.prune_channels(model, 0.5, [])
    assert [(c["layer"], c["channels_before"], c["channels_after"]) for c in changes] == [
        ("conv1", 32, 16),
        ("conv2", 64, 32),
        ("fc1", 128, 64),
    ]
    assert model.conv1.weight.shape == (16, 1, 3, 3) and model.conv2.weight.shape == (32, 16, 3, 3)
    assert model.fc1.weight.shape == (64, 32 * 7 * 7) and model.fc2.weight.shape == (10, 64)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    n = sum(p.numel() for p in model.parameters())
    assert n < 0.3 * 421_642
    assert (
        evaluate_module(model, eval_ds, task, 512)["accuracy"] > 0.5
    )  # degraded but alive before fine-tuning
    # A pruned state dict loads back into a freshly built model once its layers are resized.
    fresh = CNN(10)
    P.fit_shapes(fresh, model.state_dict())
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(fresh.eval()(x), model.eval()(x))

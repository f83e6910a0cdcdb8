"""Compression on the trained digits CNN (the session's `cnn_run`): int8 quantization keeps accuracy and
shrinks the Linear weights ~4x, magnitude pruning hits the requested sparsity exactly (also after a
fine-tune with masks on), and channel pruning really shrinks the tensors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from trainer.config import ConfigError
from trainer.models import CNN, GPT, MLP
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


def test_channel_groups_follow_the_graph():
    mlp = MLP((1, 4, 4), [8, 6], 3)
    groups = P.channel_groups(mlp)
    assert [(g.producer, g.consumers) for g in groups] == [
        ("body.1", [("body.4", 1)]),
        ("body.4", [("head", 1)]),
    ]
    P.prune_channels(mlp, 0.5, ["body.1"])
    assert mlp.body[1].weight.shape == (4, 16) and mlp.body[4].weight.shape == (6, 4)
    assert mlp(torch.randn(2, 1, 4, 4)).shape == (2, 3)
    with pytest.raises(ConfigError, match="torch.fx-traceable"):
        P.channel_groups(GPT(32, 8, 1, 2, 16))


def test_channel_pruning_maps_channels_exactly_through_pool_and_flatten():
    """Channels that are exactly zero contribute nothing: removing them must not change the output."""
    torch.manual_seed(0)
    model = CNN(10).eval()
    with torch.no_grad():
        for layer, n in ((model.conv1, 32), (model.conv2, 64), (model.fc1, 128)):
            dead = torch.randperm(n)[: n // 2]
            layer.weight[dead] = 0
            layer.bias[dead] = 0
    x = torch.randn(5, 1, 28, 28)
    before = model(x)
    P.prune_channels(model, 0.5, [])
    assert model.fc1.weight.shape == (64, 32 * 49)
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=0)


def test_auto_scheme_picks_the_fastest_not_slower_than_fp32_or_none(monkeypatch):
    """--scheme auto (the default): chosen by timing every scheme against fp32 here; never a slower one."""
    from trainer.tools import compress as K

    model = nn.Sequential(nn.Linear(8, 8))
    x = torch.randn(4, 8)
    fake = {"fp32": 10.0}

    def timings(models, x, repeats):
        return [(fake[k], fake[k], 0.0) for k in ["fp32", *Q.SCHEMES][: len(models)]]

    monkeypatch.setattr(K, "measure_latency", timings)
    fake.update({"int8-dynamic": 20.0, "int8-weight": 9.0, "torch-ao-dynamic": 5.0})
    auto = K.choose_scheme(model, x, 5)
    assert auto["chosen"] == "torch-ao-dynamic" and "2.00x fp32" in auto["why"]
    assert [c["speed_vs_fp32"] for c in auto["candidates"]] == [0.5, 10 / 9, 2.0]
    fake.update({"int8-weight": 11.0, "torch-ao-dynamic": 12.0})
    auto = K.choose_scheme(model, x, 5)
    assert auto["chosen"] is None and "none is written" in auto["why"]

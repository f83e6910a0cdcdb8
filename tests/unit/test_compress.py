"""Compression on small untrained models: channel groups follow the graph, channel pruning is exact through
pool and flatten, and `--scheme auto` never picks a slower scheme. The tests on the trained digits CNN are in
tests/integration/test_compress_trained.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.config import ConfigError
from trainer.models import CNN, GPT, MLP
from trainer.tools import prune as P
from trainer.tools import quantize as Q

torch.set_num_threads(1)


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

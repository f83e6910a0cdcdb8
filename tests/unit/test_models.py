"""Models: output shapes, the exact classic CNN, GPT's tied weights, causality and activation checkpointing,
deterministic init, user models by import path, FLOP estimates."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from torch import nn

from trainer import config
from trainer.config import ConfigError
from trainer.data import DataInfo
from trainer.models import GPT, build_model, flops_per_sample

torch.set_num_threads(1)

IMAGES = DataInfo("classification", (1, 28, 28), 10, None, None, None, "images", "0")
FEATURES = DataInfo("regression", (7,), None, 2, None, None, "features", "0")
CLASSES = DataInfo("classification", (7,), 3, None, None, None, "features", "0")
LM = DataInfo("lm", (16,), None, None, 64, 16, "lm", "0")
GPT_OVERRIDES = (
    "model.name=gpt",
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=16",
)


def make(info: DataInfo, *overrides: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(config.load(None, list(overrides)), info)


@pytest.mark.parametrize(
    "name,info,out",
    [
        ("linreg", FEATURES, (5, 2)),
        ("linreg", IMAGES, (5, 10)),
        ("cnn", IMAGES, (5, 10)),
        ("mlp", IMAGES, (5, 10)),
        ("mlp", FEATURES, (5, 2)),
        ("mlp", CLASSES, (5, 3)),
    ],
)
def test_output_shapes_and_task(name, info, out):
    model = make(info, f"model.name={name}", "model.hidden=[16,8]")
    assert model(torch.randn(5, *info.input_shape)).shape == out
    assert model.task == info.task


def test_gpt_output_shape_and_vocab_from_data():
    model = make(LM, *GPT_OVERRIDES, "model.vocab_size=999")
    assert model.wte.num_embeddings == 64  # the data's vocabulary wins over model.vocab_size
    assert model(torch.randint(0, 64, (3, 16))).shape == (3, 16, 64) and model.task == "lm"
    assert model(torch.randint(0, 64, (3, 5))).shape == (3, 5, 64)
    assert isinstance(model.blocks, nn.ModuleList) and len(model.blocks) == 2


def test_cnn_is_the_classic_architecture():
    model = make(IMAGES, "model.name=cnn")
    conv = lambda cin, cout, k: cout * cin * k * k + cout  # noqa: E731
    fc = lambda fin, fout: fout * fin + fout  # noqa: E731
    expected = conv(1, 32, 3) + conv(32, 64, 3) + fc(64 * 7 * 7, 128) + fc(128, 10)
    assert sum(p.numel() for p in model.parameters()) == expected == 421_642
    assert [n for n, _ in model.named_children()] == ["conv1", "conv2", "fc1", "fc2"]
    assert model.conv1.padding == (1, 1) and model.fc2.out_features == 10


def test_gpt_lm_head_is_tied_to_token_embedding():
    model = make(LM, *GPT_OVERRIDES)
    assert model.lm_head.weight is model.wte.weight
    n = sum(p.numel() for p in model.parameters())
    assert n == model.num_params(non_embedding=False)
    assert n < sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))


def test_gpt_init_scales_residual_projections():
    model = make(LM, "model.name=gpt", "model.n_layer=8", "model.n_embd=128", "model.block_size=16")
    std = model.blocks[0].mlp.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(16)) < 0.0005
    assert abs(model.blocks[0].mlp.c_fc.weight.std().item() - 0.02) < 0.001


def test_gpt_is_causal():
    model = make(LM, *GPT_OVERRIDES).eval()
    idx = torch.randint(0, 64, (2, 16))
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 64
    a, b = model(idx), model(changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_activation_checkpointing_gives_same_loss_and_grads():
    idx, tgt = torch.randint(0, 64, (4, 16)), torch.randint(0, 64, (4, 16))
    results = []
    for ckpt in (False, True):
        model = make(LM, *GPT_OVERRIDES, "model.dropout=0.1", f"train.activation_checkpointing={ckpt}")
        assert model.activation_checkpointing is ckpt
        model.train()
        calls = []
        model.blocks[0].register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        torch.manual_seed(7)  # same dropout masks: checkpoint restores the RNG state for recomputation
        loss = nn.functional.cross_entropy(model(idx).flatten(0, 1), tgt.flatten())
        loss.backward()
        assert len(calls) == (2 if ckpt else 1)  # with checkpointing the block really is recomputed
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (l0, g0), (l1, g1) = results
    assert torch.allclose(l0, l1, atol=1e-6, rtol=0)
    assert g0.keys() == g1.keys()
    for n in g0:
        assert torch.allclose(g0[n], g1[n], atol=1e-6, rtol=0), n


@pytest.mark.parametrize(
    "name,info,extra", [("cnn", IMAGES, ()), ("mlp", FEATURES, ()), ("gpt", LM, GPT_OVERRIDES)]
)
def test_init_is_deterministic_given_the_seed(name, info, extra):
    a = make(info, f"model.name={name}", *extra, seed=1).state_dict()
    b = make(info, f"model.name={name}", *extra, seed=1).state_dict()
    c = make(info, f"model.name={name}", *extra, seed=2).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_models_reject_mismatched_data():
    with pytest.raises(ConfigError, match="model.name='cnn'.*1x28x28"):
        make(FEATURES, "model.name=cnn")
    with pytest.raises(ConfigError, match="model.name='gpt'.*language-model"):
        make(IMAGES, *GPT_OVERRIDES)
    with pytest.raises(ConfigError, match="model.name='mlp'"):
        make(LM, "model.name=mlp")


USER_MODEL = """
import torch
from torch import nn

class Tiny(nn.Module):
    def __init__(self, width=4, out=3):
        super().__init__()
        self.fc = nn.Linear(7, width)
        self.out = nn.Linear(width, out)
    def forward(self, x):
        return self.out(torch.relu(self.fc(x)))

def not_a_module():
    return 42
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "tmodel_user.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tmodel_user", raising=False)
    return "tmodel_user"


def test_user_model_by_import_path(user_module):
    model = make(CLASSES, f"model.name={user_module}:Tiny", "model.kwargs={width: 5}")
    assert model.fc.out_features == 5 and model.task == "classification"
    assert model(torch.randn(2, 7)).shape == (2, 3)
    assert flops_per_sample(model, CLASSES) == 3 * 2 * (7 * 5 + 5 * 3)


def test_user_model_errors(user_module):
    with pytest.raises(ConfigError, match="model.name='no_such_pkg_xyz.mod:X': cannot import"):
        make(CLASSES, "model.name=no_such_pkg_xyz.mod:X")
    with pytest.raises(ConfigError, match=f"model.name='{user_module}:Missing'.*no attribute"):
        make(CLASSES, f"model.name={user_module}:Missing")
    with pytest.raises(ConfigError, match="model.name=.*model.kwargs=.*TypeError"):
        make(CLASSES, f"model.name={user_module}:Tiny", "model.kwargs={depth: 3}")
    with pytest.raises(ConfigError, match="model.name=.*expected an nn.Module"):
        make(CLASSES, f"model.name={user_module}:not_a_module")


def test_flops_per_sample():
    cnn = make(IMAGES, "model.name=cnn")
    fwd = 2 * (28 * 28 * 32 * 9 + 14 * 14 * 64 * 32 * 9 + 64 * 7 * 7 * 128 + 128 * 10)
    assert flops_per_sample(cnn, IMAGES) == 3 * fwd
    assert flops_per_sample(torch.nn.DataParallel(cnn), IMAGES) == 3 * fwd  # wrappers are looked through
    lin = make(FEATURES, "model.name=linreg")
    assert flops_per_sample(lin, FEATURES) == 6 * 7 * 2
    gpt = make(LM, *GPT_OVERRIDES)
    assert isinstance(gpt, GPT)
    n = sum(p.numel() for p in gpt.parameters()) - gpt.wpe.weight.numel()
    assert flops_per_sample(gpt, LM) == 6 * n * 16 + 12 * 2 * 32 * 16 * 16

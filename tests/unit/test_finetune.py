"""Fine-tuning: init_from (every source, strict and not, head re-init), freezing, per-group LRs, LoRA and its
merge, and refusing a pickle that would run code."""

from __future__ import annotations

import json
import os
import pickle
import re

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tests.helpers import final_weights, train_inprocess
from trainer import config as C
from trainer.checkpoint.weights import merge_lora_state, read_weights
from trainer.config import ConfigError
from trainer.data import build_datasets
from trainer.models import CNN, build_model
from trainer.training.finetune import apply_lora, load_into, prepare_for_finetune, resolve_targets
from trainer.training.optim import apply_freeze, build_optimizer

torch.set_num_threads(1)

# A small MLP on synthetic blobs: trains in well under a second, no sklearn import.
TINY = [
    "model.name=mlp",
    "model.hidden=[16]",
    "data.name=synthetic_classification",
    "data.num_samples=256",
    "data.num_features=8",
    "train.batch_size=32",
    "train.max_steps=4",
    "optim.name=sgd",
    "optim.lr=0.1",
    "train.eval_every_steps=0",
    "log.every_steps=2",
]


def tiny_model(*overrides: str, seed: int = 5) -> tuple[nn.Module, C.Config]:
    cfg = C.load(None, TINY + list(overrides))
    torch.manual_seed(seed)
    return build_model(cfg, build_datasets(cfg)[2]), cfg


def source_file(tmp_path, *overrides: str, seed: int = 5) -> tuple[str, dict]:
    model, _ = tiny_model(*overrides, seed=seed)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    path = str(tmp_path / f"src-{seed}.safetensors")
    save_file(sd, path)
    return path, sd


class Evil:
    """Unpickling this creates a marker file: the stand-in for arbitrary code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_file(tmp_path) -> tuple[str, str]:
    marker = str(tmp_path / "PWNED")
    path = str(tmp_path / "evil.pt")
    torch.save({"model": {"w": torch.zeros(1)}, "payload": Evil(marker)}, path)
    return path, marker


# ----------------------------------------------------------------------------- init_from


def test_freezing_keeps_frozen_parameters_bit_identical_and_the_log_says_what_trains(tmp_path, capfd):
    src, sd = source_file(tmp_path)
    run = tmp_path / "run"
    assert train_inprocess(None, run, TINY + [f"model.init_from={src}", "train.freeze=[body.*]"]) == 0
    err = capfd.readouterr().err
    assert "init_from: 4 tensors (212 parameters)" in err
    assert re.search(r"body\s+0 / 144\s+trainable", err) and re.search(
        r"total\s+68 / 212\s+trainable \(32.08%\)", err
    )
    out = final_weights(run)
    for k in ("body.1.weight", "body.1.bias"):
        assert torch.equal(out[k], sd[k]), k  # frozen: bit-identical after training
    assert not torch.equal(out["head.weight"], sd["head.weight"])  # the rest trained


def test_per_group_learning_rates_reach_the_optimizer(tmp_path):
    model, cfg = tiny_model("optim.param_groups=[{pattern: 'head.*', lr: 0.5}]", "train.freeze=[body.1.bias]")
    prepare_for_finetune(model, cfg)
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    lrs = {g["lr"]: sum(p.numel() for p in g["params"]) for g in opt.param_groups}
    assert lrs == {0.5: 16 * 4 + 4, 0.1: 16 * 8}  # head at 0.5; body weight at optim.lr; frozen bias absent


@pytest.mark.parametrize("kind", ["checkpoint", "run", "checkpoints", "pt_wrapped", "safetensors"])
def test_init_from_reads_every_kind_of_source(tmp_path, kind):
    model, _ = tiny_model(seed=11)
    sd = model.state_dict()
    if kind in ("checkpoint", "run", "checkpoints"):
        run = tmp_path / "run"
        assert train_inprocess(None, run, TINY) == 0
        ckpts = run / "checkpoints"
        path = {
            "run": run,
            "checkpoints": ckpts,
            "checkpoint": ckpts / (ckpts / "latest").read_text().strip(),
        }[kind]
        expected = final_weights(run)
    elif kind == "pt_wrapped":  # a DDP-style training script's checkpoint: {"model": {"module.x": ...}}
        path = tmp_path / "w.pt"
        torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "step": 3}, path)
        expected = sd
    else:
        path = tmp_path / "w.safetensors"
        save_file(dict(sd), str(path))
        expected = sd
    w = read_weights(str(path))
    assert set(w.state) == set(expected) and all(torch.equal(w.state[k], expected[k]) for k in expected)
    fresh, cfg = tiny_model(f"model.init_from={path}", seed=99)
    prepare_for_finetune(fresh, cfg)
    assert all(torch.equal(fresh.state_dict()[k], expected[k]) for k in expected)


def test_mismatched_head_is_reinitialised_and_reported(tmp_path):
    src, sd = source_file(tmp_path, "data.num_classes=3")  # a 3-class head
    model, _ = tiny_model("data.num_classes=5", seed=1)
    fresh_head = model.head.weight.detach().clone()
    rep = load_into(model, read_weights(src).state, strict=True)
    assert sorted(n for n, _ in rep.reinit) == ["head.bias", "head.weight"]
    assert "(5, 16) in the model, (3, 16) in the file" in dict(rep.reinit)["head.weight"]
    assert torch.equal(model.body[1].weight, sd["body.1.weight"])  # the body loaded
    assert torch.equal(model.head.weight, fresh_head)  # the head kept its fresh init
    # Through the config, the same thing is logged.
    model2, cfg = tiny_model("data.num_classes=5", f"model.init_from={src}", seed=1)
    prepare_for_finetune(model2, cfg)
    assert torch.equal(model2.head.weight, fresh_head)


def test_strict_loading_refuses_what_does_not_match_and_non_strict_reports_it(tmp_path):
    _, sd = source_file(tmp_path)
    model, _ = tiny_model(seed=2)
    broken = dict(sd)
    broken["extra.weight"] = torch.zeros(2)
    del broken["body.1.bias"]
    with pytest.raises(
        ConfigError, match=r"missing body\.1\.bias; unexpected extra\.weight.*init_strict=false"
    ):
        load_into(model, broken, strict=True)
    rep = load_into(model, broken, strict=False)
    assert rep.missing == ["body.1.bias"] and rep.unexpected == ["extra.weight"]
    assert torch.equal(model.body[1].weight, sd["body.1.weight"])
    other, _ = tiny_model("model.hidden=[12]", seed=3)  # body AND head change shape: not a head swap
    with pytest.raises(ConfigError, match="shapes differ in several modules"):
        load_into(other, sd, strict=True)
    assert len(load_into(other, sd, strict=False).reinit) == 3  # head.bias kept its shape


def test_init_skip_keeps_the_fresh_initialisation(tmp_path):
    src, sd = source_file(tmp_path)
    model, cfg = tiny_model(f"model.init_from={src}", "model.init_skip=[head]", seed=4)
    fresh_head = model.head.weight.detach().clone()
    prepare_for_finetune(model, cfg)
    assert torch.equal(model.head.weight, fresh_head) and torch.equal(
        model.body[1].weight, sd["body.1.weight"]
    )


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    path, marker = evil_file(tmp_path)
    with pytest.raises(ConfigError) as e:
        read_weights(path)
    assert not os.path.exists(marker)
    msg = str(e.value)
    assert "\n" not in msg and "refused" in msg and "weights_only=True" in msg
    # The same file planted as a checkpoint's state.pt (with a valid checksum) is refused too.
    from trainer import checkpoint as ckpt

    d = tmp_path / "ck" / "checkpoints" / "step-00000001"
    d.mkdir(parents=True)
    os.replace(path, d / "state.pt")
    manifest = {"step": 1, "files": {"state.pt": ckpt.sha256_file(str(d / "state.pt"))}}
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="refused"):
        read_weights(str(tmp_path / "ck"))
    assert not os.path.exists(marker)


def test_the_evil_pickle_does_run_code_when_loaded_unsafely(tmp_path):
    """Proof that the fixture is dangerous, so the refusal above means something."""
    path, marker = evil_file(tmp_path)
    torch.load(path, weights_only=False)
    assert os.path.exists(marker)
    os.remove(marker)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


# ----------------------------------------------------------------------------- LoRA (peft)


def _lora_cfg(*extra: str) -> C.Config:
    return C.load(None, [*TINY, *extra])


def test_lora_starts_as_an_exact_noop_and_merges_to_the_adapted_model():
    pytest.importorskip("peft")
    torch.manual_seed(0)
    model = CNN(10).eval()
    x = torch.randn(8, 1, 28, 28)
    before = model(x)
    cfg = _lora_cfg("lora.targets=[fc*]", "lora.rank=4", "lora.alpha=8")
    wrapped = apply_lora(model, cfg, [])
    assert wrapped.lora_targets == ["fc1", "fc2"] and type(wrapped).__name__ == "PeftModel"
    assert torch.equal(wrapped(x), before)  # B = 0: exactly what it computed before
    with torch.no_grad():
        for n, p in wrapped.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.05)
    adapted = wrapped(x)
    assert (adapted - before).abs().max() > 1e-3  # the adapter now does something
    merged = merge_lora_state(wrapped.state_dict(), C.to_dict(cfg))
    assert set(merged) == set(CNN(10).state_dict())  # plain names again
    plain = CNN(10).eval()
    plain.load_state_dict(merged)
    torch.testing.assert_close(plain(x), adapted, atol=1e-5, rtol=0)


def test_lora_resolves_globs_and_suffixes_refuses_tied_weights_and_names_unmatched_patterns():
    from trainer.models import GPT

    gpt = GPT(64, 16, 2, 2, 16)
    assert resolve_targets(gpt, ["blocks.*.attn.c_attn"]) == ["blocks.0.attn.c_attn", "blocks.1.attn.c_attn"]
    assert resolve_targets(gpt, ["c_attn"]) == ["blocks.0.attn.c_attn", "blocks.1.attn.c_attn"]
    with pytest.raises(ConfigError, match="lm_head.weight is tied to wte.weight"):
        resolve_targets(gpt, ["lm_head"])
    with pytest.raises(ConfigError, match=r"matches no nn.Linear \(the model has: fc1, fc2\)"):
        resolve_targets(CNN(10), ["conv*"])


def test_lora_run_trains_only_adapters_and_writes_merged_plain_weights(tmp_path, capfd):
    pytest.importorskip("peft")
    src, sd = source_file(tmp_path)
    run = tmp_path / "run"
    over = [
        f"model.init_from={src}",
        "lora.targets=[body.1]",
        "lora.rank=2",
        "lora.trainable=[head.bias]",
        "optim.param_groups=[{pattern: head.bias, lr: 0.2}]",
        "train.freeze=[body.1.lora_A*]",
    ]
    assert train_inprocess(None, run, TINY + over) == 0
    err = capfd.readouterr().err
    assert "lora (peft): body.1 wrapped (rank 2" in err and "LoRA adapters merged" in err
    assert "lr 0.2 for 'head.bias': 4 parameters" in err  # param_groups see peft's names as plain ones
    out = final_weights(run)
    assert set(out) == set(sd)  # plain keys only: loads into the plain model
    from trainer import checkpoint as ckpt

    state, _ = ckpt.load_state(ckpt.resolve(str(run)))
    trained = {k.removeprefix("base_model.model."): v for k, v in state["model"].items()}
    assert torch.equal(trained["body.1.base_layer.weight"], sd["body.1.weight"])  # base frozen
    assert torch.equal(trained["head.modules_to_save.default.weight"], sd["head.weight"])  # not in trainable
    assert not torch.equal(trained["head.modules_to_save.default.bias"], sd["head.bias"])  # lora.trainable
    assert trained["body.1.lora_B.default.weight"].abs().sum() > 0  # the adapter trained
    # The merged file computes what the adapted model computes.
    cfg = C.load(os.path.join(run, "config.yaml"))
    adapted = prepare_for_finetune(
        tiny_model()[0],
        C.load(None, [*TINY, "lora.targets=[body.1]", "lora.rank=2", "lora.trainable=[head.bias]"]),
    )
    adapted.load_state_dict(state["model"])
    plain, _ = tiny_model()
    plain.load_state_dict(out)
    x = torch.randn(16, 8)
    torch.testing.assert_close(plain.eval()(x), adapted.eval()(x), atol=1e-5, rtol=0)
    # train.freeze reaches adapter weights through their plain names (the run froze every lora_A)
    apply_freeze(adapted, cfg.train.freeze)
    grads = {n: p.requires_grad for n, p in adapted.named_parameters() if ".lora_" in n}
    assert grads == {
        "base_model.model.body.1.lora_A.default.weight": False,
        "base_model.model.body.1.lora_B.default.weight": True,
    }


def test_old_handwritten_lora_files_are_converted_on_read_and_refused_for_resume(tmp_path):
    """The former LoRALinear layout (X.lora_A, X.lora_B, X.lora_scale) still merges on read (init_from,
    eval, export); resuming such a checkpoint into a peft model is refused with a clear message."""
    torch.manual_seed(0)
    w, a, b = torch.randn(4, 3), torch.randn(2, 3), torch.randn(4, 2)
    old = {
        "fc.weight": w,
        "fc.bias": torch.zeros(4),
        "fc.lora_A": a,
        "fc.lora_B": b,
        "fc.lora_scale": torch.tensor(0.5),
    }
    merged = merge_lora_state(old)
    assert set(merged) == {"fc.weight", "fc.bias"}
    torch.testing.assert_close(merged["fc.weight"], w + 0.5 * b @ a)
    from trainer.training.checkpointer import refuse_old_lora

    with pytest.raises(ConfigError, match="written by the former hand-written LoRA"):
        refuse_old_lora(old, "ckpt")

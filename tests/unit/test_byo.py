"""Bring your own model (issue #11), the pieces without a run: output rules, the HF label shift, units,
construction from config classes, dict collation. Tiny transformers models are built from config classes;
nothing is downloaded."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.byo_models import GPT, DictSequences, GPTConfig, tiny_llama_config
from trainer import config as C
from trainer.config import ConfigError
from trainer.data import user as user_data
from trainer.data.base import DataInfo, TokenWindows
from trainer.models import GPT as BuiltinGPT
from trainer.models import build_model
from trainer.models.outputs import ModelIO, is_transformers_model, split_output
from trainer.training.tasks import Objective, eval_sums, task_loss
from trainer.training.units import describe, find_units

transformers = pytest.importorskip("transformers")


def test_output_rules_tensor_tuple_dict_model_output():
    logits, loss = torch.randn(4, 3), torch.tensor(1.5)
    assert split_output(logits) == (logits, None)
    for out in ((logits, loss), (loss, logits), [logits, None, loss]):  # nanoGPT, HF return_dict=False
        p, l_ = split_output(out)
        assert p is logits and l_ is loss
    p, l_ = split_output({"logits": logits, "loss": loss, "hidden": torch.zeros(2, 2)})
    assert p is logits and l_ is loss
    p, l_ = split_output({"scores": logits})  # no "logits": the first tensor
    assert p is logits and l_ is None
    mo = transformers.modeling_outputs.SequenceClassifierOutput(loss=None, logits=logits)  # omits None keys
    assert split_output(mo) == (logits, None)
    assert split_output(("text", 3)) == (None, None)


def test_objective_prefers_user_loss_then_model_loss_then_task_loss():
    logits, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    own = torch.tensor(7.0)
    task = Objective("classification")
    assert torch.equal(task.loss(logits, y), F.cross_entropy(logits, y))
    assert task.loss((logits, own), y) is own  # the model's loss trains
    user = Objective("classification", lambda out, t: torch.tensor(3.0))
    assert float(user.loss((logits, own), y)) == 3.0
    # eval: a batch-mean loss weighs by the valid count; accuracy still from the (N, C) predictions
    s = task.eval_sums((logits, own), y, 4)
    assert s[0].item() == pytest.approx(28.0) and s[1].item() == 4
    assert s[2].item() == eval_sums("classification", logits, y, 4)[2].item()


def test_hf_causal_lm_loss_equals_the_trainers_lm_loss_on_the_same_batch():
    """The built-in LM data yields already-shifted (x, y): labels=y alone would shift twice."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(tiny_llama_config()).eval()
    tokens = torch.randint(0, 256, (4 * 16 + 1,)).numpy()
    x, y = TokenWindows(16, 0, len(tokens), array=tokens).get_batch(torch.arange(4))
    assert is_transformers_model(model) and not is_transformers_model(nn.Linear(2, 2))

    class PeftLike(nn.Module):  # peft's PeftModel is no PreTrainedModel; the model it wraps is
        def get_base_model(self):
            return model

    assert is_transformers_model(PeftLike())
    with torch.no_grad():
        ours = task_loss("lm", model(x).logits, y)
        hf = split_output(ModelIO("labels", shift_labels=True).forward(model, x, y))[1]
        twice = split_output(ModelIO("labels").forward(model, x, y))[1]
    assert hf.item() == pytest.approx(ours.item(), abs=1e-6)
    assert abs(twice.item() - ours.item()) > 1e-3  # the double shift the issue measured


def test_nanogpt_style_target_arg_gives_full_logits_and_its_loss():
    m = GPT(GPTConfig(block_size=8, vocab_size=32, n_layer=1, n_embd=16))
    x = torch.randint(0, 32, (2, 8))
    assert split_output(ModelIO().forward(m, x, x))[0].shape == (2, 1, 32)  # last position only
    preds, loss = split_output(ModelIO("targets").forward(m, x, x))
    assert preds.shape == (2, 8, 32) and loss.ndim == 0


def test_units_by_rule():
    nano = GPT(GPTConfig(n_layer=3))
    units, rule = find_units(nano, [])
    assert describe(units) == "3 x Block" and rule == "the largest nn.ModuleList"
    assert describe(find_units(nano, ["Block"])[0]) == "3 x Block"
    with pytest.raises(
        ConfigError, match=r"train.fsdp_wrap=\['Blok'\]: no module of class Blok .*Block \(3\)"
    ):
        find_units(nano, ["Blok"])
    llama = transformers.LlamaForCausalLM(tiny_llama_config())
    units, rule = find_units(llama, [])
    assert describe(units) == "2 x LlamaDecoderLayer" and rule == "_no_split_modules"
    bert = transformers.BertForSequenceClassification(
        transformers.BertConfig(
            vocab_size=40,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=16,
        )
    )
    assert bert._no_split_modules == {"BertLayer", "BertEmbeddings"}  # a set, as the issue says
    assert sorted(describe(find_units(bert, [])[0]).split(", ")) == ["1 x BertEmbeddings", "2 x BertLayer"]
    assert describe(find_units(BuiltinGPT(32, 8, 2, 2, 16), [])[0]) == "2 x Block"
    assert find_units(nn.Sequential(nn.Linear(2, 2)), []) == ([], "no unit rule matched")


LM = DataInfo("lm", (16,), None, None, 256, 16, "", "")


def _cfg(*overrides):
    return C.load(None, ["data.name=text", "model.block_size=16", *overrides])


def test_model_config_classes_classmethods_and_their_errors():
    kw = (
        "model.kwargs={vocab_size: 256, hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1, "
        "num_attention_heads: 2, num_key_value_heads: 2, dtype: bfloat16}"
    )
    cfg = _cfg(
        "model.name=transformers:AutoModelForCausalLM.from_config",
        "model.config=transformers:LlamaConfig",
        kw,
        "train.precision=bf16",
    )
    m = build_model(cfg, LM)
    assert type(m).__name__ == "LlamaForCausalLM"
    assert {p.dtype for p in m.parameters()} == {torch.float32}  # built in bf16, cast to fp32 master weights
    with pytest.raises(ConfigError, match=r"'n_layers' is not a field of GPTConfig .*it takes: block_size"):
        build_model(
            _cfg(
                "model.name=tests.byo_models:GPT",
                "model.config=tests.byo_models:GPTConfig",
                "model.kwargs={n_layers: 2}",
            ),
            LM,
        )
    with pytest.raises(ConfigError, match=r"'hidden_size:16' is not a field of LlamaConfig .*with a space"):
        build_model(
            _cfg(
                "model.name=transformers:LlamaForCausalLM",
                "model.config=transformers:LlamaConfig",
                "model.kwargs={hidden_size:16}",
            ),
            LM,
        )
    with pytest.raises(
        ConfigError,
        match=r"model.name='tests.byo_models:GPT': calling GPT with "
        r"model.kwargs=\{'block_size': 8\} failed: TypeError.*it takes: config",
    ):
        build_model(_cfg("model.name=tests.byo_models:GPT", "model.kwargs={block_size: 8}"), LM)
    with pytest.raises(ConfigError, match="model.config='GPTConfig': expected package.module:Name"):
        _cfg("model.name=tests.byo_models:GPT", "model.config=GPTConfig")


def test_dict_samples_collate_per_key_and_the_target_key_is_the_target():
    cfg = C.load(None, ["data.name=tests.byo_models:DictSequences"])
    train, evald, info = user_data.wrap(cfg, DictSequences(40), DictSequences(8, seed=1))
    assert info.task == "classification" and info.num_classes == 2 and info.input_shape == (12,)
    x, y = train.get_batch(torch.arange(5))
    assert sorted(x) == ["attention_mask", "input_ids"] and x["input_ids"].shape == (5, 12)
    assert y.dtype == torch.long and y.shape == (5,)
    assert "keys input_ids, attention_mask -> forward" in info.description
    bad = C.load(None, ["data.name=tests.byo_models:DictSequences", "data.target_key=label"])
    with pytest.raises(
        ConfigError,
        match=r"data.target_key='label': not a key .*keys: input_ids, attention_mask, "
        r"labels",
    ):
        user_data.wrap(bad, DictSequences(8))


def test_the_models_loss_key_rules():
    """model.loss_key, else loss, else the only 0-dim tensor; never the only 0-dim of a transformers
    ModelOutput (an MoE aux_loss is not the loss)."""
    from transformers.modeling_outputs import MoeCausalLMOutputWithPast

    from trainer.models.outputs import loss_candidates, split_output

    logits, a, b = torch.randn(2, 3), torch.tensor(1.0), torch.tensor(2.0)
    assert split_output({"logits": logits, "total_loss": a})[1] is a
    assert split_output({"logits": logits, "loss": b, "total_loss": a})[1] is b
    assert split_output({"logits": logits, "total_loss": a, "aux": b})[1] is None  # the probe refuses this
    assert loss_candidates({"logits": logits, "total_loss": a, "aux": b}) == ["total_loss", "aux"]
    assert split_output({"logits": logits, "total_loss": a, "aux": b}, "aux")[1] is b
    preds, loss = split_output({"total_loss": a, "h": logits})
    assert preds is logits and loss is a
    assert split_output(MoeCausalLMOutputWithPast(logits=logits, aux_loss=a))[1] is None


def test_ddps_own_unused_parameter_error_is_a_config_error_naming_the_key():
    """The fallback for parameters unused only in later steps (the first-step check catches the rest)."""
    from trainer.api import _outcome

    msg = (
        "Expected to have finished reduction in the prior iteration before starting a new one. This error "
        "indicates that your module has parameters that were not used in producing loss.\n"
        "Parameter indices which did not receive grad for rank 0: 2 3"
    )
    code, reason = _outcome(RuntimeError(msg), None)
    assert code == 2 and "train.find_unused_parameters=true" in reason and "\n" not in reason
    assert "(Parameter indices which did not receive grad for rank 0: 2 3)" in reason

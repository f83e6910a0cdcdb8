"""Fine-tune a (tiny, random, made-here) Hugging Face model on a JSONL: LoRA on Llama, full on a sharded
Qwen2, FSDP on 2 processes with resume; the outputs load in transformers and peft; generate is
deterministic."""

import os

import pytest
import torch

from tests.conftest import run_cli
from tests.helpers import final_weights, read_summary, train_inprocess
from tests.hfutil import make_model, make_tokenizer, qa_records, write_jsonl

pytest.importorskip("peft")

COMMON = [
    "model.name=hf",
    "data.name=jsonl",
    "data.seq_len=64",
    "train.batch_size=8",
    "optim.name=adamw",
    "log.every_steps=5",
    "train.eval_batch_size=64",
]
LORA = [
    "lora.targets=[q_proj,v_proj,o_proj,down_proj]",
    "lora.trainable=[lm_head]",
    "lora.rank=8",
    "lora.alpha=16",
    "optim.lr=1e-2",
]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    tok = make_tokenizer(root / "tok")
    llama = make_model(root / "llama", "llama", tok_dir=tok)
    # 12 shards + index; a padded vocabulary (320 rows for a 300-301 token tokenizer), as real models have
    qwen = make_model(root / "qwen", "qwen2", tok_dir=tok, shard="40KB", vocab_size=320)
    train = write_jsonl(root / "train.jsonl", qa_records(320, seed=1))
    evalf = write_jsonl(root / "eval.jsonl", qa_records(48, seed=2))
    return {"root": root, "tok": tok, "llama": llama, "qwen": qwen, "train": train, "eval": evalf}


def _data(a):
    return [f"data.path={a['train']}", f"data.eval_path={a['eval']}"]


@pytest.fixture(scope="module")
def lora_run(assets):
    """configs/finetune_llm.yaml as a user runs it, sized down for the tiny model."""
    run = assets["root"] / "runs" / "lora"
    over = [
        *COMMON,
        *LORA,
        *_data(assets),
        f"model.path={assets['llama']}",
        "train.max_steps=40",
        "train.precision=fp32",
        "train.eval_every_steps=0",
        "optim.warmup_steps=0",
        "optim.schedule=constant",
        "lora.dropout=0",
        "checkpoint.every_steps=0",
    ]
    assert train_inprocess("finetune_llm", run, over) == 0
    return run


def _batch(assets, n=4):
    from trainer import config as C
    from trainer.data import build_datasets

    cfg = C.load(
        None,
        [
            *COMMON,
            *_data(assets),
            f"model.path={assets['llama']}",
            f"run.dir={assets['root'] / 'runs' / 'probe'}",
        ],
    )
    return build_datasets(cfg)[1].get_batch(list(range(n)))


def test_lora_lowers_held_out_response_loss_and_writes_hf_and_adapter(lora_run, assets):
    s = read_summary(lora_run)
    assert s["eval"]["loss"] < s["eval_before"]["loss"] - 1.0, (s["eval_before"], s["eval"])
    assert s["eval"]["perplexity"] < s["eval_before"]["perplexity"]
    assert s["eval"]["tokens"] == s["eval_before"]["tokens"] > 0
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(lora_run / "adapter"))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(lora_run / "hf"))
    assert not any("lora" in k for k in final_weights(lora_run))  # model.safetensors: merged, plain names


def test_hf_export_reloads_with_the_trainers_logits_and_the_adapter_in_peft(lora_run, assets):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer import checkpoint as ckpt
    from trainer import config as C
    from trainer.data.base import DataInfo
    from trainer.models import build_model
    from trainer.training.finetune import prepare_for_finetune

    x, _ = _batch(assets)
    # the trainer's own model: rebuilt as in training (peft-wrapped), loaded from the last checkpoint
    cfg = C.load(os.path.join(lora_run, "config.yaml"))
    info = DataInfo("lm", (64,), None, None, 300, 64, "", "")
    own = prepare_for_finetune(build_model(cfg, info), cfg)
    state, _ = ckpt.load_state(ckpt.CheckpointDir(os.path.join(lora_run, "checkpoints")).find_resumable())
    own.load_state_dict(state["model"])
    hf = AutoModelForCausalLM.from_pretrained(lora_run / "hf")
    base = AutoModelForCausalLM.from_pretrained(assets["llama"])
    adapted = PeftModel.from_pretrained(base, lora_run / "adapter")
    AutoTokenizer.from_pretrained(lora_run / "hf")
    with torch.no_grad():  # use_cache off: packed rows keep their block-diagonal mask, as in training
        ref = own.eval()(**x, use_cache=False).logits
        assert torch.allclose(hf.eval()(**x, use_cache=False).logits, ref, atol=1e-5)
        assert torch.allclose(adapted.eval()(**x, use_cache=False).logits, ref, atol=1e-5)


def test_generate_is_deterministic_at_temperature_0(lora_run, tmp_path, capsys):
    from trainer.__main__ import main

    prompts = tmp_path / "p.txt"
    prompts.write_text("next after two:\nnext after seven:\n")
    outs = []
    ckpts = sorted((lora_run / "checkpoints").glob("step-*"))
    for src in (lora_run, ckpts[-1], lora_run / "hf"):  # a run, one of its checkpoints, an hf/ directory
        with pytest.raises(SystemExit) as e:
            main(["generate", "--from", str(src), "--prompt-file", str(prompts), "--max-new-tokens", "3"])
        assert e.value.code == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] == outs[2] and len(outs[0].splitlines()) == 2
    assert outs[0].splitlines()[0].strip() == "three"  # learned: the word after "two"
    r = run_cli(["generate", "--from", str(tmp_path), "--prompt", "x"])
    assert r.returncode == 2 and "--from" in r.stderr and "Traceback" not in r.stderr


def test_full_finetune_of_a_sharded_qwen2_lowers_eval_loss(assets, tmp_path):
    run = tmp_path / "full"
    assert len([f for f in os.listdir(assets["qwen"]) if f.endswith(".safetensors")]) > 1
    over = [
        *COMMON,
        *_data(assets),
        f"model.path={assets['qwen']}",
        "train.max_steps=25",
        "optim.lr=3e-3",
        "train.freeze=[model.embed_tokens]",
    ]
    assert train_inprocess(None, run, over) == 0
    s = read_summary(run)
    assert s["eval"]["loss"] < s["eval_before"]["loss"] - 0.5
    w = final_weights(run)
    from safetensors.torch import load_file

    src = {}
    for f in os.listdir(assets["qwen"]):
        if f.endswith(".safetensors"):
            src.update(load_file(os.path.join(assets["qwen"], f)))
    assert torch.equal(w["model.embed_tokens.weight"], src["model.embed_tokens.weight"])  # frozen
    assert not torch.equal(w["lm_head.weight"], src["lm_head.weight"])  # trained
    assert not os.path.exists(run / "adapter")  # no LoRA, no adapter


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fsdp_two_processes_finetune_resume_and_match_one_process(assets, tmp_path):
    run = tmp_path / "fsdp"
    over = [
        *COMMON,
        *LORA,
        *_data(assets),
        f"model.path={assets['llama']}",
        "device=cpu",
        "log.plot=false",
        "log.tensorboard=false",
        "train.eval_before=true",
    ]
    env = {"OMP_NUM_THREADS": "1"}
    r = run_cli(
        ["fsdp", "--nproc-per-node", "2", f"run.dir={run}", *over, "train.max_steps=4"],
        module="launch",
        env=env,
        timeout=200,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert "rank 0 reads, the others get its weights by broadcast" in r.stderr
    r = run_cli(
        ["fsdp", "--nproc-per-node", "2", f"run.dir={run}", *over, "train.max_steps=8"],
        module="launch",
        env=env,
        timeout=200,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert "resumed from" in r.stderr and "at step 4" in r.stderr
    s = read_summary(run)
    assert s["steps"] == 8 and s["world_size"] == 2 and s["strategy"] == "fsdp"
    assert s["eval"]["loss"] < s["eval_before"]["loss"]
    assert (run / "hf" / "config.json").exists() and (run / "adapter" / "adapter_config.json").exists()
    # the same 8 steps on one process: equal weights (token-weighted loss across ranks, rank-0 broadcast)
    one = tmp_path / "one"
    assert train_inprocess(None, one, [*over, "train.max_steps=8"]) == 0
    a, b = final_weights(run), final_weights(one)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), (k, (a[k] - b[k]).abs().max().item())


def test_compress_quantizes_the_finetuned_lm_with_perplexity_size_and_latency(lora_run, tmp_path, capsys):
    import json

    from trainer.__main__ import main

    out = tmp_path / "q"
    with pytest.raises(SystemExit) as e:
        main(
            [
                "compress",
                "--from",
                str(lora_run),
                "--method",
                "quantize",
                "--scheme",
                "torch-ao-dynamic",
                "--out",
                str(out),
                "--threads",
                "1",
                "--repeats",
                "3",
            ]
        )
    assert e.value.code == 0
    rep = json.loads((out / "report.json").read_text())
    src, q = rep["rows"]
    assert src["metric"] == q["metric"] == "perplexity" and q["scheme"] == "torch-ao-dynamic"
    assert abs(q["value"] - src["value"]) / src["value"] < 0.05  # int8 barely moves the perplexity
    assert q["linear_weight_bytes"] < src["linear_weight_bytes"] / 3 and q["latency_ms"] > 0
    assert "perplexity" in capsys.readouterr().out

"""Data-pipeline cost: time the step loop waits for data, as a fraction of step time (target <= 2%).

    python -m bench.datapipe             # CNN and GPT recipes, 3 interleaved rounds, ~2 min on 2 cores
    python -m bench.datapipe --smoke     # seconds (CI)

Each run is `trainer.run.train(cfg)` on configs/cnn.yaml and configs/gpt.yaml with the default loader
settings (data.num_workers=0: batches are gathered in the training process from in-memory tensors with one
indexing operation; pin_memory and prefetch_factor apply only with workers / on CUDA), one torch thread by
default (--threads). The figure is the trainer's own ``data_wait_frac`` from metrics.jsonl (the
time spent fetching the next micro-batches divided by the log window's wall time), median over windows
after the first; a second estimate comes from stamps around ``Trainer._run_step``: the part of each step
interval spent outside the step call (data fetch plus the loop's bookkeeping), so it bounds the first from
above. One non-default row (data.num_workers=2 on the CNN) shows what worker processes would cost here.

Streams (issue 22): the GPT recipe on the same bytes as uint16 tokens, from one ``.bin`` read in memory vs
three ``.bin`` shards streamed by glob (0 and 2 workers); and a tiny Hugging Face Llama on JSONL records,
packed in memory (tokenized once, before the first step) vs streamed from three shards (tokenized per
micro-batch as the loop runs: in the loop's process with 0 workers, in 2 worker processes otherwise). The
tokenizer and the model are made here from config classes (nothing is downloaded). ``--smoke`` runs the
streamed token row only.
"""

from __future__ import annotations

import json
import os
import shutil
import sysconfig
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import common as B

GPT_SMOKE = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.block_size=32",
             "train.batch_size=8", "data.max_bytes=100000"]


LLAMA = ["model.name=hf", "data.name=jsonl", "data.seq_len=64", "train.batch_size=16", "optim.lr=0.001",
         "train.grad_clip=0", "optim.schedule=constant", "optim.warmup_steps=0"]


def stream_data(root: str, with_jsonl: bool) -> dict:
    """Token shards of the stdlib bytes (and JSONL shards + a tokenizer + a tiny Llama): paths by name."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    raw = b"".join(p.read_bytes() for p in sorted(stdlib.glob("*.py")))[:1_500_000]
    tokens = np.frombuffer(raw, np.uint8).astype(np.uint16)
    os.makedirs(os.path.join(root, "shards"))
    tokens.tofile(os.path.join(root, "all.bin"))
    for k, part in enumerate(np.array_split(tokens, 3)):
        part.tofile(os.path.join(root, "shards", f"train-{k}.bin"))
    out = {"bin": os.path.join(root, "all.bin"), "glob": os.path.join(root, "shards", "train-*.bin")}
    if not with_jsonl:
        return out
    lines = [ln for ln in raw.decode("utf-8", "replace").splitlines() if len(ln.strip()) > 20][:6000]
    os.makedirs(os.path.join(root, "jsonl"))
    for k, part in enumerate(np.array_split(np.arange(len(lines)), 3)):
        with open(os.path.join(root, "jsonl", f"train-{k}.jsonl"), "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps({"text": lines[i]}) + "\n" for i in part)
    with open(os.path.join(root, "all.jsonl"), "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"text": ln}) + "\n" for ln in lines)
    out.update(jsonl=os.path.join(root, "all.jsonl"), jsonl_glob=os.path.join(root, "jsonl", "*.jsonl"),
               model=tiny_llama(os.path.join(root, "llama"), lines))
    return out


def tiny_llama(out_dir: str, texts: list[str]) -> str:
    """A byte-level BPE tokenizer (vocab 512) trained on the texts and a random 2-layer Llama beside it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<|eos|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|eos|>", pad_token="<|pad|>")
    fast.save_pretrained(out_dir)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False, eos_token_id=0,
        pad_token_id=1, bos_token_id=None)).save_pretrained(out_dir)
    return out_dir


def stream_cases(paths: dict, smoke: bool) -> list[tuple]:
    """(label, recipe, overrides, steps, log interval) of the stream rows."""
    tok = ["data.name=tokens", "model.vocab_size=256"]
    if smoke:
        smoke_over = [*GPT_SMOKE, *tok, f"data.path={paths['glob']}"]
        return [("gpt tokens, streamed shards", "gpt", smoke_over, 8, 4)]
    llama = [*LLAMA, f"model.path={paths['model']}"]
    return [
        ("gpt tokens, in memory (one .bin)", "gpt", [*tok, f"data.path={paths['bin']}"], 60, 10),
        ("gpt tokens, streamed shards", "gpt", [*tok, f"data.path={paths['glob']}"], 60, 10),
        ("gpt tokens, streamed, num_workers=2", "gpt", [*tok, f"data.path={paths['glob']}",
                                                         "data.num_workers=2"], 60, 10),
        ("llama jsonl, in memory (packed)", None, [*llama, f"data.path={paths['jsonl']}"], 60, 10),
        ("llama jsonl, streamed shards", None, [*llama, f"data.path={paths['jsonl_glob']}"], 60, 10),
        ("llama jsonl, streamed, num_workers=2", None, [*llama, f"data.path={paths['jsonl_glob']}",
                                                        "data.num_workers=2"], 60, 10),
    ]


def run(recipe: str, extra: list[str], steps: int, every: int, smoke: bool) -> dict:
    tmp = tempfile.mkdtemp(prefix="bench-datapipe-")
    try:
        run_dir = os.path.join(tmp, "run")
        over = [f"run.dir={run_dir}", f"train.max_steps={steps}", f"log.every_steps={every}",
                "log.progress=off", "log.plot=false", "train.eval_every_steps=0", "checkpoint.every_steps=0",
                "device=cpu"]
        cfg = B.load_cfg(recipe, extra + over + (["log.tensorboard=false"] if smoke else []))
        clock = B.StepClock()
        B.run_train(cfg, clock.trainer_cls())
        rows = B.read_metrics(run_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = rows[1:] if len(rows) > 1 else rows  # the first window holds the warm-up steps
    iv = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])]
    outside = [i - d for i, d in zip(iv, clock.durations)]
    warm = min(every, len(iv) // 2)
    d = cfg.data
    return {"frac": B.median(r["data_wait_frac"] for r in rows),
            "frac_max": max(r["data_wait_frac"] for r in rows),
            "step_s": B.median(r["step_time_s"] for r in rows),
            "samples_s": B.median(r["samples_per_s"] for r in rows),
            "outside_frac": sum(outside[warm:]) / max(sum(iv[warm:]), 1e-12),
            "loader": f"num_workers={d.num_workers} pin_memory={d.pin_memory} "
                      f"prefetch_factor={d.prefetch_factor}"}


def main(argv=None) -> None:
    p = B.parser("datapipe", __doc__)
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds (default 3, smoke 1)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1; 0 = torch's default, as make train). On a 2-core machine "
                        "shared with other jobs, two intra-op threads stall on each other and step times "
                        "swing 10x")
    args = p.parse_args(argv)
    smoke = args.smoke
    rounds = args.rounds or (1 if smoke else 3)
    threads = B.set_threads(args.threads)
    load0 = B.loadavg()
    # (label, recipe, overrides, steps, log interval): the CNN recipe has 22 steps per epoch at batch 64,
    # so 88 steps cross three epoch boundaries (a new permutation, a new loader).
    cases = [("cnn", "cnn", [], 12 if smoke else 88, 4 if smoke else 10),
             ("gpt", "gpt", GPT_SMOKE if smoke else [], 8 if smoke else 60, 4 if smoke else 10)]
    if not smoke:
        cases.append(("cnn, num_workers=2 (not default)", "cnn", ["data.num_workers=2"], 88, 10))
    data_root = tempfile.mkdtemp(prefix="bench-datapipe-data-")
    cases += stream_cases(stream_data(data_root, with_jsonl=not smoke), smoke)
    results: dict[str, list[dict]] = defaultdict(list)
    for r in range(rounds):
        for label, recipe, extra, steps, every in B.rotate(cases, r):
            results[label].append(run(recipe, extra, steps, every, smoke))
        fracs = "  ".join(f"{k} {v[-1]['frac'] * 100:.2f}%" for k, v in results.items())
        print(f"  round {r + 1}/{rounds}: {fracs}", flush=True)
    rows = []
    for label, recipe, extra, steps, _every in cases:
        rs = results[label]
        fr = B.spread(x["frac"] for x in rs)
        step_s = B.median(x["step_s"] for x in rs)
        config = f"configs/{recipe}.yaml" if recipe else None
        rows.append({"recipe": label, "config": config, "overrides": extra,
                     "samples_s": B.median(x["samples_s"] for x in rs),
                     "loader": rs[0]["loader"], "steps": steps, "rounds": len(rs), "step_ms": step_s * 1e3,
                     "data_wait_frac": fr["median"], "data_wait_pct": fr["median"] * 100,
                     "pct_range": f"{fr['min'] * 100:.2f}-{fr['max'] * 100:.2f}",
                     "data_wait_ms": fr["median"] * step_s * 1e3,
                     "worst_window_pct": max(x["frac_max"] for x in rs) * 100,
                     "outside_step_pct": B.median(x["outside_frac"] for x in rs) * 100, "target_pct": 2.0})
    shutil.rmtree(data_root, ignore_errors=True)
    print(f"data wait / step time, {threads} thread(s), {rounds} round(s)")
    print(B.table(rows, [("recipe", "recipe", ""), ("loader", "loader", ""), ("step_ms", "step ms", ".2f"),
                         ("samples_s", "samples/s", ".0f"),
                         ("data_wait_ms", "data wait ms", ".3f"), ("data_wait_pct", "data wait %", ".2f"),
                         ("pct_range", "range %", ""), ("worst_window_pct", "worst window %", ".2f"),
                         ("outside_step_pct", "outside step %", ".2f")]))
    path = B.write_result("datapipe", args, {"settings": {"threads": threads, "rounds": rounds},
                                             "loadavg_start": load0, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

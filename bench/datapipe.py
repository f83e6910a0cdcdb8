"""Data-pipeline cost: time the step loop waits for data, as a fraction of step time (target <= 2%).

    python -m bench.datapipe             # CNN and GPT recipes, 3 interleaved rounds, ~2 min on 2 cores
    python -m bench.datapipe --quick     # one round (~1 min)
    python -m bench.datapipe --only gpt  # a subset of the rows: cnn, gpt, cnn_workers, streams, jsonl
    python -m bench.datapipe --smoke     # seconds (CI)

Each run is `trainer.run.train(cfg)` on configs/cnn.yaml and configs/gpt.yaml with the default loader
settings (data.num_workers=0: batches are gathered in the training process from in-memory tensors with one
indexing operation; pin_memory and prefetch_factor apply only with workers / on CUDA), one torch thread by
default (--threads). The figure is the trainer's own ``data_wait_frac`` from metrics.jsonl (the
time spent fetching the next micro-batches divided by the log window's wall time), median over windows
after the first; a second estimate comes from stamps around ``Trainer._run_step``: the part of each step
interval spent outside the step call (data fetch plus the loop's bookkeeping), so it bounds the first from
above. One non-default row (data.num_workers=2 on the CNN) shows what worker processes would cost here.
The rows run interleaved (the order rotates each round); the JSON is rewritten after every round.

"jsonl" (target <= 1.1x): JSONL tokenization, the trainer's ``data.name=jsonl`` path
(``trainer.data.jsonl.tokenize_records``: read, parse, tokenize, EOS, ids/learn/offsets arrays) against
batched tokenizer calls on the same records already in memory (``tok(prompts)`` and ``tok(responses,
add_special_tokens=False)``, each one call over all records): the ids must be identical, document by
document. Records are prompt/response pairs cut from stdlib sources (20,000; quick 10,000; smoke 500),
the tokenizer a byte-level BPE (vocab 4096; smoke 512) trained here with ``tokenizers`` (tests/hfutil.py),
which uses its own threads for a batch; both sides run with the same threads. Repeats are interleaved
pairs; wall and process CPU time (every thread) are shown.

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
import time
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
    cpu = [b - a for a, b in zip(clock.cpu, clock.cpu[1:])]  # the step thread's CPU time per interval
    d = cfg.data
    return {"frac": B.median(r["data_wait_frac"] for r in rows),
            "frac_max": max(r["data_wait_frac"] for r in rows),
            "step_s": B.median(r["step_time_s"] for r in rows),
            "cpu_s": B.median(cpu[warm:]),
            "samples_s": B.median(r["samples_per_s"] for r in rows),
            "outside_frac": sum(outside[warm:]) / max(sum(iv[warm:]), 1e-12),
            "loader": f"num_workers={d.num_workers} pin_memory={d.pin_memory} "
                      f"prefetch_factor={d.prefetch_factor}"}


ROWS = ("cnn", "gpt", "cnn_workers", "streams", "jsonl")


# ----------------------------------------------------------------------------- JSONL tokenization


def qa_from_stdlib(n: int) -> list[dict]:
    """n prompt/response records of varied length: runs of source lines of a few stdlib modules."""
    import sysconfig

    lines: list[str] = []
    for mod in ("textwrap.py", "argparse.py", "json/decoder.py", "difflib.py", "calendar.py"):
        with open(os.path.join(sysconfig.get_paths()["stdlib"], mod), encoding="utf-8") as fh:
            lines += [ln for ln in fh.read().splitlines() if ln.strip()]
    recs = []
    for i in range(n):
        a = (i * 7) % (len(lines) - 12)
        k = 1 + i % 4
        recs.append({"prompt": "\n".join(lines[a:a + k]), "response": "\n".join(lines[a + k:a + 2 * k + 2])})
    return recs


def _trainer_ids(tok, path: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, offsets) from the trainer's JSONL tokenization."""
    from trainer.data.jsonl import tokenize_records

    out = tokenize_records(tok, path, "data.path")
    # (ids, learn, offsets) on main; an Encoded (.ids, .offsets) after the chat-layout rewrite (issue 23)
    return (out[0], out[2]) if isinstance(out, tuple) else (out.ids, out.offsets)


def jsonl_rows(n: int, repeats: int, on_pair, vocab: int = 4096) -> list[dict]:
    """Interleaved pairs (trainer, batched calls); identical ids checked; ``on_pair(rows)`` after each."""
    import json

    from tests.hfutil import make_tokenizer
    from trainer.data.tokenizer import load_tokenizer

    tmp = tempfile.mkdtemp(prefix="bench-jsonl-")
    try:
        recs = qa_from_stdlib(n)
        path = os.path.join(tmp, "train.jsonl")
        with open(path, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in recs)
        tok = load_tokenizer(make_tokenizer(os.path.join(tmp, "tok"), vocab_size=vocab), "data.tokenizer")
        prompts, responses = [r["prompt"] for r in recs], [r["response"] for r in recs]

        def batched():
            return (tok(prompts, add_special_tokens=True)["input_ids"],
                    tok(responses, add_special_tokens=False)["input_ids"])

        samples: dict[str, list] = defaultdict(list)
        rows: list[dict] = []
        for i in range(repeats):
            for side in (("trainer", "batched") if i % 2 == 0 else ("batched", "trainer")):
                t, c = time.perf_counter(), time.process_time()
                out = _trainer_ids(tok, path) if side == "trainer" else batched()
                samples[side].append((time.perf_counter() - t, time.process_time() - c))
                if side == "trainer":
                    ids, offsets = out
                else:
                    p_ids, r_ids = out
            same = _same_ids(ids, offsets, p_ids, r_ids, tok.eos_token_id)
            ratio = B.spread(a[0] / b[0] for a, b in zip(samples["trainer"], samples["batched"]))
            cpu_ratio = B.spread(a[1] / b[1] for a, b in zip(samples["trainer"], samples["batched"]) if b[1])
            rows = [{"row": "jsonl", "recipe": "jsonl tokenization", "records": n, "tokens": int(len(ids)),
                     "pairs": len(samples["trainer"]), "identical_ids": same,
                     "trainer_s": B.median(x[0] for x in samples["trainer"]),
                     "trainer_cpu_s": B.median(x[1] for x in samples["trainer"]),
                     "batched_s": B.median(x[0] for x in samples["batched"]),
                     "batched_cpu_s": B.median(x[1] for x in samples["batched"]),
                     "ratio": ratio["median"], "ratio_range": f"{ratio['min']:.2f}-{ratio['max']:.2f}",
                     "cpu_ratio": cpu_ratio["median"], "target": "<= 1.1"}]
            on_pair(rows)
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _same_ids(ids, offsets, p_ids, r_ids, eos: int) -> bool:
    """The trainer's documents are the batched calls' prompt + response (+ EOS), one by one."""
    if len(offsets) - 1 != len(p_ids):
        return False
    for d, (p, r) in enumerate(zip(p_ids, r_ids)):
        want = list(p) + list(r)
        if not want or want[-1] != eos:
            want.append(eos)
        if ids[offsets[d]:offsets[d + 1]].tolist() != want:
            return False
    return True


def main(argv=None) -> None:
    p = B.parser("datapipe", __doc__)
    B.add_only(p, list(ROWS), "row(s)")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds (default 3, quick and smoke 1)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1; 0 = torch's default, as make train). On a 2-core machine "
                        "shared with other jobs, two intra-op threads stall on each other and step times "
                        "swing 10x")
    args = p.parse_args(argv)
    only = B.only(p, args)
    smoke = args.smoke
    rounds = args.rounds or (1 if smoke or args.quick else 3)
    threads = B.set_threads(args.threads)
    # (key, label, recipe, overrides, steps, log interval): the CNN recipe has 22 steps per epoch at batch
    # 64, so 88 steps cross three epoch boundaries (a new permutation, a new loader).
    cases = [("cnn", "cnn", "cnn", [], 12 if smoke else 88, 4 if smoke else 10),
             ("gpt", "gpt", "gpt", GPT_SMOKE if smoke else [], 8 if smoke else 60, 4 if smoke else 10)]
    if not smoke:
        cases.append(("cnn_workers", "cnn, num_workers=2 (not default)", "cnn", ["data.num_workers=2"], 88,
                      10))
    data_root = None
    if "streams" in only:  # issue 22's rows, one key for all of them
        data_root = tempfile.mkdtemp(prefix="bench-datapipe-data-")
        cases += [("streams", *c) for c in stream_cases(stream_data(data_root, with_jsonl=not smoke), smoke)]
    cases = [c for c in cases if c[0] in only]
    rep = B.Report("datapipe", args, {"threads": threads, "rounds": rounds}, threads=threads)
    tok_rows: list[dict] = []
    if "jsonl" in only:
        n, repeats = (500, 2) if smoke else (10_000, 3) if args.quick else (20_000, 5)

        def on_pair(rows: list[dict]) -> None:
            tok_rows[:] = rows
            rep.set_rows(list(tok_rows))

        jsonl_rows(n, repeats, on_pair, vocab=512 if smoke else 4096)
        print(f"JSONL tokenization, {n} prompt/response records, {repeats} interleaved pairs (medians)")
        print(B.table(tok_rows, [("tokens", "tokens", ""), ("trainer_s", "trainer s", ".3f"),
                                 ("trainer_cpu_s", "CPU s", ".3f"), ("batched_s", "batched tok() s", ".3f"),
                                 ("batched_cpu_s", "CPU s", ".3f"), ("ratio", "÷ batched", ".2f"),
                                 ("ratio_range", "range", ""), ("cpu_ratio", "CPU ÷", ".2f"),
                                 ("identical_ids", "identical ids", ""), ("target", "target", "")]))
        print(rep.machine_line() + "\n")
    results: dict[str, list[dict]] = defaultdict(list)
    for r in range(rounds if cases else 0):
        for _key, label, recipe, extra, steps, every in B.rotate(cases, r):
            results[label].append(run(recipe, extra, steps, every, smoke))
            rep.set_rows(tok_rows + rows_for(cases, results))
        fracs = "  ".join(f"{k} {v[-1]['frac'] * 100:.2f}%" for k, v in results.items())
        print(f"  round {r + 1}/{rounds}: {fracs}", flush=True)
    loop_rows = [r for r in rep.rows if r["row"] != "jsonl"]
    if loop_rows:
        print(f"data wait / step time, {threads} thread(s), {rounds} round(s)")
        print(B.table(loop_rows, [("recipe", "recipe", ""), ("loader", "loader", ""),
                                  ("step_ms", "step ms", ".2f"), ("cpu_ms", "CPU ms", ".2f"),
                                  ("samples_s", "samples/s", ".0f"), ("data_wait_ms", "data wait ms", ".3f"),
                                  ("data_wait_pct", "data wait %", ".2f"), ("pct_range", "range %", ""),
                                  ("worst_window_pct", "worst window %", ".2f"),
                                  ("outside_step_pct", "outside step %", ".2f")]))
        print(rep.machine_line())
    if data_root:
        shutil.rmtree(data_root, ignore_errors=True)
    print(f"wrote {rep.close()}")


def rows_for(cases: list, results: dict[str, list[dict]]) -> list[dict]:
    """One row per case from the rounds finished so far: median and range over rounds."""
    rows = []
    for key, label, recipe, extra, steps, _every in cases:
        rs = results.get(label)
        if not rs:
            continue
        fr = B.spread(x["frac"] for x in rs)
        step_s = B.median(x["step_s"] for x in rs)
        config = f"configs/{recipe}.yaml" if recipe else None
        rows.append({"row": key, "recipe": label, "config": config, "overrides": extra,
                     "samples_s": B.median(x["samples_s"] for x in rs),
                     "loader": rs[0]["loader"], "steps": steps, "rounds": len(rs), "step_ms": step_s * 1e3,
                     "cpu_ms": B.median(x["cpu_s"] for x in rs) * 1e3,
                     "data_wait_frac": fr["median"], "data_wait_pct": fr["median"] * 100,
                     "pct_range": f"{fr['min'] * 100:.2f}-{fr['max'] * 100:.2f}",
                     "data_wait_ms": fr["median"] * step_s * 1e3,
                     "worst_window_pct": max(x["frac_max"] for x in rs) * 100,
                     "outside_step_pct": B.median(x["outside_frac"] for x in rs) * 100, "target_pct": 2.0})
    return rows

if __name__ == "__main__":
    main()

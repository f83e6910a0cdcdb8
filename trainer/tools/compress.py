"""``python -m trainer compress``: quantize or prune a trained model and report what it cost and saved.

    python -m trainer compress --from runs/cnn-finetune --method quantize --out runs/cnn-int8
    python -m trainer compress --from runs/cnn-finetune --method quantize \
        --scheme int8-dynamic,int8-weight,torch-ao-dynamic --out runs/cnn-q
    python -m trainer compress --from runs/cnn-finetune --method prune --amount 0.8 --scope global \
        --finetune-steps 50 --out runs/cnn-sparse
    python -m trainer compress --from runs/cnn-finetune --method prune --amount 0.5 --scope channel \
        --finetune-steps 50 --out runs/cnn-slim

Every command writes ``<out>/report.json`` and prints the same table: for the source model and each
compressed variant, the eval metric on the recipe's eval split, size on disk, bytes of the Linear weights,
parameter count and sparsity, and CPU latency per batch (median over ``--repeats`` forward passes at
``--batch-size``, with the thread count used). Quantized models are written as ``model-<scheme>.pt``
(torch.save of the state dict: the int8 tensors are not plain tensors); pruned ones as ``model.safetensors``.
``python -m trainer eval --from <out>`` (or ``--from <out>/<file>``) evaluates them again.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import statistics
import time

import torch
from safetensors.torch import save
from torch import nn

from .. import config
from ..checkpoint.weights import write_safetensors
from ..models.outputs import ModelIO
from ..runtime import atomic
from ..training.tasks import metric_name
from . import prune
from .cli import QUANT_SCHEMES
from .evaluate import evaluate_module, load_model
from .quantize import linear_weight_bytes, quantize, zeros_and_total

log = logging.getLogger("trainer")

# ----------------------------------------------------------------------------- measuring


def _linear_layers(module) -> list:
    return [
        m
        for m in module.modules()
        if isinstance(m, nn.Linear) or type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")
    ]


def measure_latency(models: list, x, repeats: int) -> list[tuple[float, float, float]]:
    """(median ms, min ms, median ms inside Linear layers) of one forward pass at batch x, per model.

    Round-robin (one pass of each model per round) so a change in machine load hits every model alike.
    The Linear share comes from forward hooks around each Linear layer: quantization only touches those,
    and in a CNN the convolutions can hide what it does to them.
    """
    times: list[list[float]] = [[] for _ in models]
    inner: list[list[float]] = [[] for _ in models]
    acc = [0.0]
    io = ModelIO()  # a tensor batch positionally, a dict batch (an LM's input_ids, ...) as keywords

    def pre(mod, args):
        mod._t0 = time.perf_counter()

    def post(mod, args, out):
        acc[0] += time.perf_counter() - mod._t0

    handles = [
        h
        for m in models
        for lin in _linear_layers(m)
        for h in (lin.register_forward_pre_hook(pre), lin.register_forward_hook(post))
    ]
    try:
        with torch.inference_mode():
            for m in models:  # warm-up: first-call allocations, kernel selection
                io.forward(m, x, None)
                io.forward(m, x, None)
            for _ in range(max(1, repeats)):
                for i, m in enumerate(models):
                    acc[0] = 0.0
                    t0 = time.perf_counter()
                    io.forward(m, x, None)
                    times[i].append(time.perf_counter() - t0)
                    inner[i].append(acc[0])
    finally:
        for h in handles:
            h.remove()
    return [
        (1e3 * statistics.median(t), 1e3 * min(t), 1e3 * statistics.median(li)) for t, li in zip(times, inner)
    ]


def _row(variant: str, module, ctx: dict, size: int, **extra) -> dict:
    res = evaluate_module(module, ctx["eval_ds"], ctx["task"], ctx["eval_bs"])
    zeros, total = zeros_and_total(module)
    ctx["models"].append(module)
    return {
        "variant": variant,
        "metric": ctx["metric"],
        "value": res[ctx["metric"]],
        "loss": res["loss"],
        "size_bytes": size,
        "linear_weight_bytes": linear_weight_bytes(module),
        "params": total,
        "sparsity": zeros / max(total, 1),
        **extra,
    }


def _safetensors_bytes(module) -> int:
    return len(save({k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}))


def format_table(report: dict) -> str:
    rows = report["rows"]
    base = rows[0]
    head = (
        f"{'variant':<26} {base['metric']:>9} {'size':>9} {'linear W':>9} {'params':>9} {'sparsity':>8} "
        f"{'ms/batch':>9} {'speed':>6} {'Linear ms':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['variant']:<26} {r['value']:>9.4f} {r['size_bytes'] / 1e6:>7.3f}MB "
            f"{r['linear_weight_bytes'] / 1e6:>7.3f}MB {r['params']:>9,} {100 * r['sparsity']:>7.2f}% "
            f"{r['latency_ms']:>9.2f} {base['latency_ms'] / r['latency_ms']:>5.2f}x "
            f"{r['linear_latency_ms']:>9.2f}"
        )
    m = report["measurement"]
    lines.append(f"eval: {report['data']}")
    lines.append(
        f"latency: median of {m['repeats']} CPU forward passes per model, batch {m['batch_size']}, "
        f"{m['threads']} thread(s), models timed in turn; speed = source ms / variant ms; "
        "Linear ms = time inside Linear layers"
    )
    for r in rows[1:]:
        if r.get("note"):
            lines.append(f"{r['variant']}: {r['note']}")
    auto = report.get("auto_scheme")
    if auto:
        timed = [c for c in auto["candidates"] if "latency_ms" in c]
        lines.append(
            (f"--scheme auto chose {auto['chosen']}: " if auto["chosen"] else "--scheme auto: ")
            + f"{auto['why']}; measured "
            + ", ".join(f"{c['scheme']} {c['latency_ms']:.2f} ms ({c['speed_vs_fp32']:.2f}x)" for c in timed)
            + "".join(f"; {c['scheme']} failed ({c['error']})" for c in auto["candidates"] if "error" in c)
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- methods


def choose_scheme(module, x, repeats: int) -> dict:
    """``--scheme auto``: time every scheme against fp32 on this machine, this model and this batch, and
    pick the fastest one that is not slower than fp32 (int8 is not faster everywhere: torchao's dynamic
    path was 2.2x slower than fp32 inside Linear layers on our CI CPU, torch.ao's fbgemm 1.8x faster)."""
    candidates, models = [], [module]
    for scheme in QUANT_SCHEMES:
        try:
            q, used, _ = quantize(module, scheme, fallback=False)
        except Exception as e:  # a scheme this build cannot run: reported, not chosen
            candidates.append({"scheme": scheme, "error": f"{type(e).__name__}: {str(e)[:120]}"})
            continue
        candidates.append({"scheme": used})
        models.append(q)
    times = measure_latency(models, x, max(3, repeats // 2))
    fp32 = times[0][0]
    timed = [c for c in candidates if "error" not in c]
    for c, (med, _, _) in zip(timed, times[1:]):
        c.update(latency_ms=med, speed_vs_fp32=fp32 / med)
    ok = [c for c in timed if c["speed_vs_fp32"] >= 1.0]
    if not ok:  # the default never makes a model slower: nothing is written, the report says why
        best = max(timed, key=lambda c: c["speed_vs_fp32"]) if timed else {"scheme": "-", "speed_vs_fp32": 0}
        why = (
            f"no int8 scheme is as fast as fp32 ({fp32:.2f} ms) for this model on this machine (fastest: "
            f"{best['scheme']} at {best['speed_vs_fp32']:.2f}x), so none is written; pass --scheme NAME "
            "to quantize anyway"
        )
        return {"fp32_latency_ms": fp32, "candidates": candidates, "chosen": None, "why": why}
    best = max(ok, key=lambda c: c["speed_vs_fp32"])
    why = f"the fastest scheme measured here, {best['speed_vs_fp32']:.2f}x fp32 ({fp32:.2f} ms)"
    return {"fp32_latency_ms": fp32, "candidates": candidates, "chosen": best["scheme"], "why": why}


def _quantize(module, ctx: dict, args, out: str) -> list[dict]:
    if args.scheme == "auto":
        ctx["auto"] = choose_scheme(module, ctx["x"], args.repeats)
        log.info("--scheme auto: %s (%s)", ctx["auto"]["chosen"], ctx["auto"]["why"])
        if ctx["auto"]["chosen"] is None:
            return []
        schemes = [ctx["auto"]["chosen"]]
    else:
        schemes = [s.strip() for s in args.scheme.split(",") if s.strip()]
    bad = [s for s in schemes if s not in QUANT_SCHEMES]
    if bad or not schemes:
        raise config.ConfigError(
            f"--scheme {args.scheme!r}: expected auto or one or more of {', '.join(QUANT_SCHEMES)}"
        )
    rows = []
    for scheme in schemes:
        q, used, note = quantize(module, scheme)
        name = f"model-{used}.pt"
        path = os.path.join(out, name)
        with atomic.atomic_path(path) as tmp:
            torch.save(q.state_dict(), tmp)
        rows.append(
            _row(
                f"{used}" + (f" (for {scheme})" if used != scheme else ""),
                q,
                ctx,
                os.path.getsize(path),
                file=name,
                scheme=used,
                note=note if used != scheme else None,
            )
        )
    return rows


def _prune(module, ctx: dict, args, out: str) -> tuple[list[dict], dict]:
    layers = [p.strip() for p in args.layers.split(",") if p.strip()]
    if not 0.0 <= args.amount < 1.0:
        raise config.ConfigError(f"--amount {args.amount}: expected a fraction in [0, 1)")
    cfg = ctx["cfg"]
    info: dict = {"requested": args.amount, "scope": args.scope, "finetune_steps": args.finetune_steps}
    if args.scope == "channel":
        info["layers"] = prune.prune_channels(module, args.amount, layers)
        variant = f"channels -{args.amount:.0%}"
    else:
        names = prune.unstructured(module, args.amount, args.scope, layers)
        info["layers"] = names
        variant = f"{args.scope} -{args.amount:.0%}"
    if args.finetune_steps:
        lr = args.lr if args.lr is not None else cfg.optim.lr / 10
        info["finetune_lr"] = lr
        info["finetune_loss"] = prune.short_finetune(
            module, ctx["train_ds"], ctx["task"], args.finetune_steps, cfg.train.batch_size, lr, cfg.seed
        )
        variant += f" +{args.finetune_steps} steps"
    if args.scope != "channel":
        prune.make_permanent(module)
        zeros, total = prune.weight_sparsity(module, names)
        expected = prune.expected_zeros(module, names, args.amount, args.scope)
        info.update(zeros=zeros, total=total, achieved=zeros / total, expected_zeros=expected)
        if zeros != expected:  # a pruned weight came back, or the masks were not applied
            raise RuntimeError(
                f"pruning: {zeros} zero weights after making the masks permanent, expected {expected}"
            )
    module.eval()
    path = os.path.join(out, "model.safetensors")
    write_safetensors(module.state_dict(), path)
    row = _row(
        variant,
        module,
        ctx,
        os.path.getsize(path),
        file="model.safetensors",
        structured=args.scope == "channel",
    )
    if args.scope == "channel":
        row["note"] = "; ".join(
            f"{c['layer']} {c['channels_before']}->{c['channels_after']}" for c in info["layers"]
        )
    else:
        row["note"] = (
            f"sparsity of the pruned weights: requested {args.amount:.4f}, achieved {info['achieved']:.4f} "
            f"({zeros:,} of {total:,}; dense storage, so size and latency do not change)"
        )
    return [row], info


def _compress(module, cfg, w, info, ctx: dict, x, args, out: str) -> dict:
    rows = [_row("source (fp32)", copy.deepcopy(module), ctx, _safetensors_bytes(module), note=w.source)]
    details: dict = {}
    if args.method == "quantize":
        rows += _quantize(module, ctx, args, out)
    else:
        new_rows, details = _prune(module, ctx, args, out)
        rows += new_rows
    for row, (med, low, lin) in zip(rows, measure_latency(ctx["models"], x, args.repeats)):
        row.update(latency_ms=med, latency_min_ms=low, linear_latency_ms=lin)
    report = {
        "source": w.source,
        "method": args.method,
        "data": info.description,
        "rows": rows,
        "measurement": {
            "batch_size": ctx["batch_size"],
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
            "device": "cpu",
            "torch": torch.__version__,
        },
        "prune": details or None,
        "auto_scheme": ctx.get("auto"),
        "config": config.to_dict(cfg),
    }
    with atomic.atomic_open(os.path.join(out, "report.json"), "w") as fh:
        json.dump(report, fh, indent=1)
    return report


def compress_main(args: argparse.Namespace) -> int:
    out = args.out
    if os.path.isdir(out) and (
        os.path.exists(os.path.join(out, "checkpoints")) or os.path.exists(os.path.join(out, "manifest.json"))
    ):
        raise config.ConfigError(f"--out {out!r}: holds a run or checkpoint; choose a new directory")
    if args.threads:
        torch.set_num_threads(args.threads)
    module, cfg, w, (train_ds, eval_ds, info) = load_model(args.src, args.config, args.overrides)
    if w.extra.get("scheme"):
        raise config.ConfigError(f"--from {args.src!r}: already quantized; compress the float model")
    if len(eval_ds) == 0:
        raise config.ConfigError(f"data.eval_fraction={cfg.data.eval_fraction}: the eval split is empty")
    if getattr(args, "finetune_steps", 0) and not hasattr(train_ds, "__len__"):  # a stream (data/stream.py)
        raise config.ConfigError(
            f"--finetune-steps {args.finetune_steps}: data.name={cfg.data.name!r} is a stream; fine-tuning "
            "after pruning reads map-style training data (give a file or a map-style dataset)"
        )
    bs = args.batch_size or cfg.train.batch_size
    reps = -(-bs // len(eval_ds))
    x, _ = eval_ds.get_batch(torch.arange(len(eval_ds)).repeat(reps)[:bs])
    ctx = {
        "cfg": cfg,
        "eval_ds": eval_ds,
        "train_ds": train_ds,
        "task": info.task,
        "metric": metric_name(info.task),
        "eval_bs": cfg.train.eval_batch_size,
        "models": [],
        "x": x,
        "batch_size": bs,
    }
    created = not os.path.exists(out)
    os.makedirs(out, exist_ok=True)
    try:
        report = _compress(module, cfg, w, info, ctx, x, args, out)
    except BaseException:
        if created:  # nothing half-written
            shutil.rmtree(out, ignore_errors=True)
        raise
    print(format_table(report))
    print(f"report: {os.path.join(out, 'report.json')}")
    return 0

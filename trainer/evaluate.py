"""``python -m trainer eval`` and ``python -m trainer export``: any saved model, on its recipe's eval split.

    python -m trainer eval --from runs/cnn-finetune                  # a run dir: its newest checkpoint
    python -m trainer eval --from runs/x/checkpoints/step-00000100   # one checkpoint
    python -m trainer eval --from model.safetensors -c configs/cnn.yaml
    python -m trainer eval --from runs/cnn-pretrain data.classes=[]  # the 5-class model on all 10 classes
    python -m trainer eval --from runs/cnn-pruned                    # a `compress` output
    python -m trainer export --from runs/cnn-finetune --out cnn.safetensors

The config comes from what the weights were saved with (checkpoint manifest, run dir config.yaml, the
metadata of an exported file, a compress report), or from ``-c``; KEY=VALUE overrides apply on top. Weights
are read with ``weights_only=True`` only; LoRA adapters are merged on load. Everything runs on the CPU in
one process. This module imports torch lazily so ``python -m trainer --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from . import config as C

log = logging.getLogger("trainer")


def add_eval_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--from", dest="src", required=True, metavar="RUN_OR_CHECKPOINT",
                    help="run dir, checkpoints dir, checkpoint dir, compress output, .safetensors or .pt file")
    sp.add_argument("-c", "--config", help="recipe to use instead of the config saved with the weights")
    sp.add_argument("--json", metavar="FILE", help="also write the result as JSON to FILE")
    sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. data.classes=[]")


def add_export_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--from", dest="src", required=True, metavar="RUN_OR_CHECKPOINT",
                    help="run dir, checkpoints dir, checkpoint dir or weights file")
    sp.add_argument("--out", required=True, metavar="FILE.safetensors", help="the single file to write")


# ----------------------------------------------------------------------------- shared with compress


def resolve_config(saved: dict | None, config_path: str | None, overrides: list[str], src: str):
    """The Config to rebuild the model and data with: -c RECIPE, else the saved one; overrides on top."""
    if config_path:
        return C.load(config_path, overrides)
    if not saved:
        raise C.ConfigError(f"--from {src!r}: records no config; pass the recipe with -c configs/NAME.yaml")
    tree = json.loads(json.dumps(saved))  # a deep copy
    # Only what is needed to rebuild the model and the data: the weights come from --from, already merged.
    tree.setdefault("model", {})["init_from"] = None
    tree["model"]["init_skip"] = []
    tree.setdefault("lora", {})["targets"] = []
    tree.setdefault("run", {}).update({"resume": "auto", "dir": None})
    for key, value in C.parse_overrides(overrides):
        C._set_dotted(tree, key, value)
    return C.from_dict(tree)


def load_model(src: str, config_path: str | None = None, overrides: list[str] | None = None):
    """(module in eval mode on CPU, Config, Weights, (train_ds, eval_ds, info)) for ``--from SRC``."""
    import torch

    from .data import build_datasets
    from .finetune import read_weights
    from .models import build_model

    w = read_weights(src, "--from")
    cfg = resolve_config(w.config, config_path, overrides or [], src)
    torch.manual_seed(cfg.seed)
    data = build_datasets(cfg)
    module = build_model(cfg, data[2])
    extra = w.extra
    if extra.get("structured"):
        from .prune import fit_shapes

        fit_shapes(module, w.state)
    if extra.get("scheme"):
        from .quantize import rebuild

        module = rebuild(module, extra["scheme"])
    try:
        module.load_state_dict(w.state, strict=True, assign=bool(extra.get("scheme")))
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise C.ConfigError(f"--from {src!r}: does not fit model.name={cfg.model.name!r} built from its config: "
                            f"{' '.join(lines[1:3])[:300]}") from None
    return module.eval(), cfg, w, data


def evaluate_module(module, eval_ds, task: str, batch_size: int) -> dict:
    """Loss and the task's metric (accuracy | mse | perplexity) over the whole eval split, one process."""
    import torch

    from .loop import task_loss

    loss_sum, count, correct = 0.0, 0, 0
    module.eval()
    with torch.inference_mode():
        for start in range(0, len(eval_ds), batch_size):
            x, y = eval_ds.get_batch(torch.arange(start, min(start + batch_size, len(eval_ds))))
            out = module(x)
            loss_sum += float(task_loss(task, out, y, reduction="none").double().sum())
            count += len(y)
            if task == "classification":
                correct += int((out.argmax(-1) == y).sum())
    res = {"loss": loss_sum / max(count, 1), "samples": count}
    if task == "classification":
        res["accuracy"] = correct / max(count, 1)
    elif task == "regression":
        res["mse"] = res["loss"]
    else:
        import math

        res["perplexity"] = math.exp(min(res["loss"], 700.0))
    return res


def metric_name(task: str) -> str:
    return {"classification": "accuracy", "regression": "mse"}.get(task, "perplexity")


# ----------------------------------------------------------------------------- commands


def eval_main(args: argparse.Namespace) -> int:
    module, cfg, w, (_, eval_ds, info) = load_model(args.src, args.config, args.overrides)
    if len(eval_ds) == 0:
        raise C.ConfigError(f"data.eval_fraction={cfg.data.eval_fraction}: the eval split is empty")
    res = evaluate_module(module, eval_ds, info.task, cfg.train.eval_batch_size)
    shown = "  ".join(f"{k} {v:.4f}" for k, v in res.items() if k != "samples")
    print(f"eval: {shown} on {res['samples']} samples ({info.description}); weights: {w.source}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"source": w.source, "data": info.description, **res}, fh, indent=1)
    return 0


def export_main(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save_file

    from .finetune import read_weights

    if not args.out.endswith(".safetensors"):
        raise C.ConfigError(f"--out {args.out!r}: expected a .safetensors file name")
    w = read_weights(args.src, "--from")
    odd = [k for k, v in w.state.items() if type(v) not in (torch.Tensor, torch.nn.Parameter)]
    if odd:
        raise C.ConfigError(f"--from {args.src!r}: holds quantized tensors ({', '.join(odd[:3])}), which "
                            "safetensors cannot store; export the float model instead")
    meta = {"format": "pt", "source": w.source}
    if w.config:
        meta["config"] = json.dumps(w.config)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    tmp = args.out + ".tmp"
    # clone: tied weights share storage, which safetensors refuses.
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in w.state.items()}, tmp, metadata=meta)
    os.replace(tmp, args.out)
    n = sum(v.numel() for v in w.state.values())
    print(f"export: {len(w.state)} tensors, {n:,} values, {os.path.getsize(args.out):,} bytes -> {args.out} "
          f"(from {w.source})", file=sys.stdout)
    return 0


def run_tool(args: argparse.Namespace) -> int:
    """Dispatch eval / compress / export: a bad input is one line and exit 2, like `train`."""
    from .exitcodes import CONFIG, INTERNAL

    if args.cmd == "compress":
        from .compress import compress_main as fn
    else:
        fn = eval_main if args.cmd == "eval" else export_main
    try:
        return fn(args)
    except C.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return CONFIG
    except KeyboardInterrupt:
        return 128 + 2
    except Exception:  # a bug: the traceback goes to the console log
        log.exception("internal error in %s", args.cmd)
        return INTERNAL

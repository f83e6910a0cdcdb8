"""``python -m trainer eval``: any saved model, on its recipe's eval split (``load_model`` is shared with
``compress``).

    python -m trainer eval --from runs/cnn-finetune                  # a run dir: its newest checkpoint
    python -m trainer eval --from runs/x/checkpoints/step-00000100   # one checkpoint
    python -m trainer eval --from model.safetensors -c configs/cnn.yaml
    python -m trainer eval --from runs/cnn-pretrain data.classes=[]  # the 5-class model on all 10 classes
    python -m trainer eval --from runs/cnn-pruned                    # a `compress` output

The config comes from what the weights were saved with (checkpoint manifest, run dir config.yaml, the
metadata of an exported file, a compress report), or from ``-c``; KEY=VALUE overrides apply on top. Weights
are read with ``weights_only=True`` only; LoRA adapters are merged on load. Everything runs on the CPU in
one process.
"""

from __future__ import annotations

import argparse
import json
import logging

import torch

from .. import config
from ..checkpoint.weights import best_checkpoint, read_weights
from ..data import build_datasets
from ..data.collate import batch_size_of
from ..models import build_model
from ..models.outputs import ModelIO, model_io
from ..training.tasks import Objective, eval_result
from .prune import fit_shapes
from .quantize import rebuild

log = logging.getLogger("trainer")


# ----------------------------------------------------------------------------- shared with compress


def resolve_config(saved: dict | None, config_path: str | None, overrides: list[str], src: str):
    """The Config to rebuild the model and data with: -c RECIPE, else the saved one; overrides on top."""
    if config_path:
        return config.load(config_path, overrides)
    if not saved:
        raise config.ConfigError(
            f"--from {src!r}: records no config; pass the recipe with -c configs/NAME.yaml"
        )
    tree = json.loads(json.dumps(saved))  # a deep copy
    # Only what is needed to rebuild the model and the data: the weights come from --from, already merged.
    tree.setdefault("model", {})["init_from"] = None
    tree["model"]["init_skip"] = []
    tree.setdefault("lora", {})["targets"] = []
    tree.setdefault("run", {}).update({"resume": "auto", "dir": None})
    for key, value in config.parse_overrides(overrides):
        config.set_dotted(tree, key, value)
    return config.from_dict(tree)


def load_model(src: str, config_path: str | None = None, overrides: list[str] | None = None):
    """(module in eval mode on CPU, Config, Weights, (train_ds, eval_ds, info)) for ``--from SRC``."""
    w = read_weights(src, "--from")
    cfg = resolve_config(w.config, config_path, overrides or [], src)
    torch.manual_seed(cfg.seed)
    data = build_datasets(cfg)
    module = build_model(cfg, data[2])
    extra = w.extra
    if extra.get("structured"):
        fit_shapes(module, w.state)
    if extra.get("scheme"):
        module = rebuild(module, extra["scheme"])
    try:
        module.load_state_dict(w.state, strict=True, assign=bool(extra.get("scheme")))
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise config.ConfigError(
            f"--from {src!r}: does not fit model.name={cfg.model.name!r} built from its "
            f"config: {' '.join(lines[1:3])[:300]}"
        ) from None
    return module.eval(), cfg, w, data


def evaluate_module(
    module, eval_ds, task: str, batch_size: int, io: ModelIO | None = None, objective: Objective | None = None
) -> dict:
    """Loss and the task's metric (accuracy | mse | perplexity) over the whole eval split, one process.

    ``io`` / ``objective``: how the run fed its model and scored it (a user model's ``model.target_arg``,
    dict batches, ``train.loss``); default: the built-in models' plain path."""
    io, objective = io or ModelIO(), objective or Objective(task)
    sums = torch.zeros(4, dtype=torch.float64)  # loss sum, weight, correct, samples
    module.eval()
    with torch.inference_mode():
        for start in range(0, len(eval_ds), batch_size):
            stop = min(start + batch_size, len(eval_ds))
            x, y = eval_ds.get_batch(torch.arange(start, stop))
            sums += objective.eval_sums(io.forward(module, x, y), y, batch_size_of(x))
    return eval_result(task, *sums.tolist())


# ----------------------------------------------------------------------------- commands


def eval_main(args: argparse.Namespace) -> int:
    src = best_checkpoint(args.src) if args.best else args.src
    module, cfg, w, (_, eval_ds, info) = load_model(src, args.config, args.overrides)
    if len(eval_ds) == 0:
        raise config.ConfigError(f"data.eval_fraction={cfg.data.eval_fraction}: the eval split is empty")
    io, objective = model_io(cfg, module, info), Objective.for_run(cfg, info.task)
    res = evaluate_module(module, eval_ds, info.task, cfg.train.eval_batch_size, io, objective)
    shown = "  ".join(f"{k} {v:.4f}" for k, v in res.items() if k not in ("samples", "tokens"))
    scored = f"{res['samples']} samples" + (f", {res['tokens']} tokens" if "tokens" in res else "")
    print(f"eval: {shown} on {scored} ({info.description}); weights: {w.source}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"source": w.source, "data": info.description, **res}, fh, indent=1)
    return 0

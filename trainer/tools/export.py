"""``python -m trainer export --from RUN_OR_CHECKPOINT --out FILE.safetensors``: one portable weights file.

The config the weights were trained with travels in the file's metadata, so ``eval --from FILE`` rebuilds
the model without ``-c``.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from ..checkpoint.weights import best_checkpoint, read_weights, write_safetensors
from ..config import ConfigError


def export_main(args: argparse.Namespace) -> int:
    if not args.out.endswith(".safetensors"):
        raise ConfigError(f"--out {args.out!r}: expected a .safetensors file name")
    w = read_weights(best_checkpoint(args.src) if args.best else args.src, "--from")
    odd = [k for k, v in w.state.items() if type(v) not in (torch.Tensor, torch.nn.Parameter)]
    if odd:
        raise ConfigError(
            f"--from {args.src!r}: holds quantized tensors ({', '.join(odd[:3])}), which "
            "safetensors cannot store; export the float model instead"
        )
    meta = {"source": w.source}
    if w.config:
        meta["config"] = json.dumps(w.config)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_safetensors(w.state, args.out, meta)
    n = sum(v.numel() for v in w.state.values())
    print(
        f"export: {len(w.state)} tensors, {n:,} values, {os.path.getsize(args.out):,} bytes -> {args.out} "
        f"(from {w.source})"
    )
    return 0

"""``python -m trainer data [-c CONFIG] [overrides] [--split train|eval] [--show N] [--json]``: what trains.

Builds the data exactly as ``train`` would (``trainer.data.build_datasets``, the same token cache) and prints
the format, the counts and the first N documents decoded, learned spans marked (``[[`` ... ``]]``, or green
on a terminal). ``--json`` prints one object::

    {"format": str, "documents": int, "tokens": int, "learned_tokens": int, "truncated": int,
     "dropped": int, "samples": [{"text": str, "learned": [str, ...]}]}

``learned``: the decoded learned spans of that document. Data that is not documents of text (images,
tables, token windows, user datasets) shows the shapes and dtypes of its first samples instead:
``samples: [{"x": "float32 (1, 28, 28)", "y": "int64 ()"}]``, ``documents`` its length, token counts null.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

import torch

from .. import config as cfgmod
from ..data import Stream, build_datasets
from ..data.jsonl import PackedRows
from ..data.tokenizer import load_tokenizer

OPEN, CLOSE = "[[", "]]"
GREEN, RESET = "\033[32m", "\033[0m"


def _runs(ids: list[int], learned: list[bool]) -> list[tuple[list[int], bool]]:
    """Consecutive tokens grouped by whether they are learned."""
    out: list[tuple[list[int], bool]] = []
    for i, on in zip(ids, learned):
        if out and out[-1][1] == on:
            out[-1][0].append(i)
        else:
            out.append(([i], on))
    return out


def document_view(tok, ds: PackedRows, d: int, color: bool = False) -> dict:
    """One document: its text, its learned spans, and the text with the spans marked."""
    ids, learned = ds.document(d)
    runs = _runs(ids, learned)
    a, b = (GREEN, RESET) if color else (OPEN, CLOSE)
    marked = "".join(f"{a}{tok.decode(r)}{b}" if on else tok.decode(r) for r, on in runs)
    return {
        "text": tok.decode(ids),
        "learned": [tok.decode(r) for r, on in runs if on],
        "marked": marked,
        "tokens": len(ids),
        "learned_tokens": sum(learned),
    }


def _describe(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return f"{str(v.dtype).replace('torch.', '')} {tuple(v.shape)}"
    if isinstance(v, Mapping):
        return {k: _describe(t) for k, t in v.items()}
    if isinstance(v, (tuple, list)):
        return [_describe(t) for t in v]
    return type(v).__name__


def text_report(cfg, ds: PackedRows, info, n: int, color: bool) -> dict:
    tok = load_tokenizer(info.extra["tokenizer"], "data.tokenizer")
    views = [document_view(tok, ds, d, color) for d in range(min(n, len(ds.docs)))]
    # a stream counts no split (it has no end): the layouts of the records it read first
    fmt = info.extra["counts"]["format"] if "counts" in info.extra else info.extra.get("format", "?")
    return {"format": fmt, **ds.stats(), "samples": views}


def tensor_report(cfg, ds, info, n: int) -> dict:
    samples = []
    for i in range(min(n, len(ds))):
        x, y = ds[i]
        samples.append({"x": _describe(x), "y": _describe(y)})
    return {
        "format": cfg.data.name,
        "task": info.task,
        "documents": len(ds),
        "tokens": None,
        "learned_tokens": None,
        "truncated": None,
        "dropped": None,
        "samples": samples,
    }


def data_main(args: argparse.Namespace) -> int:
    cfg = cfgmod.load(args.config, args.overrides)
    train, evald, info = build_datasets(cfg)
    ds = train if args.split == "train" else evald
    if isinstance(ds, Stream):  # a stream has no end to count: its first samples, as the trainer read them
        ds = ds.head
    color = not args.json and sys.stdout.isatty()
    if isinstance(ds, PackedRows):
        report = text_report(cfg, ds, info, args.show, color)
    else:
        report = tensor_report(cfg, ds, info, args.show)
    if args.json:
        if isinstance(ds, PackedRows):
            report["samples"] = [{"text": s["text"], "learned": s["learned"]} for s in report["samples"]]
        print(json.dumps(report))
        return 0
    print(f"format: {report['format']}  ({info.description})")
    keys = ("documents", "tokens", "learned_tokens", "truncated", "dropped")
    counts = ", ".join(f"{k} {report[k]}" for k in keys if report[k] is not None)
    print(f"{args.split} split: {counts}")
    for i, s in enumerate(report["samples"]):
        if "marked" in s:
            print(f"--- document {i + 1}: {s['tokens']} tokens, {s['learned_tokens']} learned")
            print(s["marked"])
        else:
            print(f"--- sample {i + 1}: x {s['x']}, y {s['y']}")
    return 0

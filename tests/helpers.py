"""Shared test helpers: run the trainer in-process or as the real CLI, read what a run wrote."""

from __future__ import annotations

import json
import os

from trainer import config as C

FAST = ["log.tensorboard=false", "log.plot=false", "log.progress=off", "device=cpu"]


def train_inprocess(recipe: str | None, run_dir, overrides: list[str]) -> int:
    """`python -m trainer train` minus the process exit: returns the exit code."""
    from trainer.run import train

    path = (
        os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", f"{recipe}.yaml")
        if recipe
        else None
    )
    cfg = C.load(path, [f"run.dir={run_dir}", *FAST, *overrides])
    return train(cfg)


def read_metrics(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as fh:
        return [r for r in map(json.loads, fh) if not r.get("eval")]


def read_summary(run_dir) -> dict:
    with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as fh:
        return json.load(fh)


def final_weights(run_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(run_dir, "model.safetensors"))

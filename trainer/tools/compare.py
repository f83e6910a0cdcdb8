"""``python -m trainer compare RUN [RUN ...] [--metric eval/accuracy] --out compare.png``: runs side by side.

    python -m trainer compare runs/lr-0.1 runs/lr-0.05 runs/lr-0.01 --metric eval/accuracy --out compare.png

The figure has one curve per run in three panels (train loss, the eval metric, learning rate); the console
gets two tables: the config keys whose values differ between the runs, and each run's final metrics (last
train loss, last and best eval metric with its step, steps, wall time, early stop). Reads only what a run
wrote (config.yaml, metrics.jsonl, summary.json): no torch.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import yaml

from ..config import MONITOR_MODES, ConfigError
from ..errors import missing_path
from ..training.observe.plots import EVAL_METRICS, plot_compare


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {prefix + k: v})
    return out


def read_run(path: str) -> dict:
    metrics = os.path.join(path, "metrics.jsonl")
    if not os.path.exists(path):
        raise ConfigError(missing_path("compare", path))
    if not os.path.isfile(metrics):
        raise ConfigError(f"compare: {path!r} is not a run dir (no metrics.jsonl)")
    history, evals = [], []
    with open(metrics, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                (evals if row.pop("eval", False) else history).append(row)
    cfg, summary = {}, {}
    if os.path.isfile(os.path.join(path, "config.yaml")):
        with open(os.path.join(path, "config.yaml"), encoding="utf-8") as fh:
            cfg = yaml.safe_load(fh) or {}
    if os.path.isfile(os.path.join(path, "summary.json")):
        with open(os.path.join(path, "summary.json"), encoding="utf-8") as fh:
            summary = json.load(fh)
    return {"history": history, "evals": evals, "config": _flatten(cfg), "summary": summary}


def default_metric(runs: dict[str, dict]) -> str:
    for run in runs.values():
        for name in EVAL_METRICS:
            if run["evals"] and name in run["evals"][-1]:
                return f"eval/{name}"
    return "eval/loss"


def config_diff(runs: dict[str, dict]) -> list[list[str]]:
    keys = sorted({k for r in runs.values() for k in r["config"]} - {"run.dir"})
    rows = []
    for k in keys:
        vals = [r["config"].get(k, "—") for r in runs.values()]
        if any(json.dumps(v, default=str) != json.dumps(vals[0], default=str) for v in vals):
            rows.append([k, *(json.dumps(v) if isinstance(v, (list, dict)) else str(v) for v in vals)])
    return rows


def final_metrics(runs: dict[str, dict], metric: str) -> list[list[str]]:
    name = metric.split("/", 1)[-1]
    mode = MONITOR_MODES.get(metric, "min")
    rows = []
    for label, r in runs.items():
        pts = [(e["step"], e[name]) for e in r["evals"] if name in e]
        best = (max if mode == "max" else min)(pts, key=lambda p: p[1]) if pts else None
        s = r["summary"]
        rows.append(
            [
                label,
                str(r["history"][-1]["step"]) if r["history"] else "—",
                f"{r['history'][-1]['loss']:.4f}" if r["history"] else "—",
                f"{pts[-1][1]:.4f}" if pts else "—",
                f"{best[1]:.4f} @ {best[0]}" if best else "—",
                f"{s['wall_time_s']:.1f}" if s.get("wall_time_s") is not None else "—",
                f"step {s['early_stop']['step']}" if s.get("early_stop") else "no",
            ]
        )
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def labels(paths: list[str]) -> list[str]:
    names = [os.path.basename(os.path.abspath(p)) for p in paths]
    return names if len(set(names)) == len(names) else [os.path.normpath(p) for p in paths]


def compare_main(args: argparse.Namespace) -> int:
    if not args.out.endswith(".png"):
        raise ConfigError(f"--out {args.out!r}: expected a .png file name")
    runs = {label: read_run(p) for label, p in zip(labels(args.runs), args.runs)}
    metric = args.metric or default_metric(runs)
    if not metric.startswith("eval/") or not any(
        metric.split("/", 1)[1] in e for r in runs.values() for e in r["evals"]
    ):
        raise ConfigError(
            f"--metric {metric!r}: no run has it (its eval rows hold eval/loss and the task metric)"
        )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    plot_compare({k: (r["history"], r["evals"]) for k, r in runs.items()}, metric, args.out)
    diff = config_diff(runs)
    print(f"config differences ({len(diff)} keys):")
    print(table(["key", *runs], diff) if diff else "  none: the runs share every config value")
    better = "higher" if MONITOR_MODES.get(metric) == "max" else "lower"
    print(f"\nfinal metrics ({metric}, {better} is better):")
    head = ["run", "steps", "train loss", f"last {metric}", f"best {metric}", "wall s", "early stop"]
    print(table(head, final_metrics(runs, metric)))
    print(f"\nwrote {args.out}")
    return 0

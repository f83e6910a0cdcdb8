"""Pictures of runs: the per-run loss.png, and the curves ``python -m trainer compare`` draws for runs.

matplotlib (with pyplot ~1.4 s) is imported once per picture, at the end of a run or in the tool.
"""

from __future__ import annotations

import os
from typing import Optional

EVAL_METRICS = ("accuracy", "perplexity", "mse")  # the task's own eval metric, besides eval loss


def pyplot():
    import matplotlib  # ~1.4 s with pyplot: only when a picture is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def task_metric(evals: list[dict]) -> Optional[str]:
    return next((k for k in EVAL_METRICS if evals and k in evals[0]), None)


def _legend(ax) -> None:
    # outside the axes, below: a legend never covers a curve
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, fontsize="small", frameon=False)


def plot_run(run_dir: str, history: list[dict], evals: list[dict]) -> Optional[str]:
    """loss.png: train and eval loss (log scale when positive), the task's eval metric (perplexity for a
    language model), and the learning rate in its own panel."""
    if not history:
        return None
    plt = pyplot()
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    steps = [r["step"] for r in history]
    ax.plot(steps, [r["loss"] for r in history], label="train loss")
    if evals:
        ax.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="eval loss")
    ax.set_ylabel("loss")
    if min(r["loss"] for r in history) > 0:
        ax.set_yscale("log")
    key = task_metric(evals)
    if key:
        ax2 = ax.twinx()
        ax2.plot(
            [r["step"] for r in evals], [r[key] for r in evals], "s--", color="tab:green", label=f"eval {key}"
        )
        ax2.set_ylabel(f"eval {key}")
        if key == "perplexity":
            ax2.set_yscale("log")
        lines = ax.get_legend_handles_labels()
        more = ax2.get_legend_handles_labels()
        ax.legend(
            lines[0] + more[0],
            lines[1] + more[1],
            loc="upper center",
            bbox_to_anchor=(0.5, 1.13),
            ncol=3,
            fontsize="small",
            frameon=False,
        )
    else:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, 1.13), ncol=3, fontsize="small", frameon=False)
    ax_lr.plot(steps, [r["lr"] for r in history], color="tab:purple")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    fig.suptitle(os.path.basename(os.path.abspath(run_dir)), y=0.99)
    fig.tight_layout()
    path = os.path.join(run_dir, "loss.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_compare(runs: dict[str, tuple[list[dict], list[dict]]], metric: str, out: str) -> str:
    """Three panels, one curve per run: train loss, the eval metric (``eval/<name>``), learning rate."""
    plt = pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    name = metric.split("/", 1)[-1]
    for label, (history, evals) in runs.items():
        axes[0].plot([r["step"] for r in history], [r["loss"] for r in history], label=label)
        pts = [(r["step"], r[name]) for r in evals if name in r]
        axes[1].plot([s for s, _ in pts], [v for _, v in pts], "o-", label=label)
        axes[2].plot([r["step"] for r in history], [r["lr"] for r in history], label=label)
    axes[0].set_ylabel("train loss")
    if all(r["loss"] > 0 for h, _ in runs.values() for r in h):
        axes[0].set_yscale("log")
    axes[1].set_ylabel(metric)
    axes[2].set_ylabel("learning rate")
    axes[2].set_xlabel("step")
    _legend(axes[2])
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out

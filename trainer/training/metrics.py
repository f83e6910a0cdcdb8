"""Run outputs that are not checkpoints: metrics.jsonl, TensorBoard, progress bar, loss.png, summary.json.

Everything here runs on global rank 0 only (the loop passes ``enabled=False`` elsewhere) and only at log
intervals: nothing in this module is on the per-step hot path.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Optional

import psutil
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

log = logging.getLogger("trainer")

# Dense peak FLOP/s per device for MFU. Sources: vendor datasheets (dense, no sparsity).
PEAK_FLOPS = {
    ("H200", "bf16"): 989e12,
    ("H200", "fp16"): 989e12,
    ("H200", "fp32"): 494e12,  # fp32 = TF32 tensor cores
    ("H100", "bf16"): 989e12,
    ("H100", "fp16"): 989e12,
    ("H100", "fp32"): 494e12,
    ("A100", "bf16"): 312e12,
    ("A100", "fp16"): 312e12,
    ("A100", "fp32"): 156e12,
    ("L40S", "bf16"): 362e12,
    ("L40S", "fp16"): 362e12,
    ("L40S", "fp32"): 183e12,
    ("A10", "bf16"): 125e12,
    ("A10", "fp16"): 125e12,
    ("A10", "fp32"): 62.5e12,
    ("V100", "fp16"): 125e12,
    ("V100", "fp32"): 15.7e12,
    ("T4", "fp16"): 65e12,
    ("T4", "fp32"): 8.1e12,
}


def peak_flops(device_name: str, precision: str) -> Optional[float]:
    for (gpu, prec), flops in PEAK_FLOPS.items():
        if gpu in device_name and prec == precision:
            return flops
    return None


class Metrics:
    def __init__(
        self, run_dir: str, enabled: bool, tensorboard: bool, progress: str, total_steps: int, start_step: int
    ):
        self.enabled = enabled
        self.run_dir = run_dir
        self.history: list[dict] = []
        self.evals: list[dict] = []
        self._fh = None
        self._tb = None
        self._bar = None
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)  # prime: the first call always returns 0
        if not enabled:
            return
        self._fh = open(os.path.join(run_dir, "metrics.jsonl"), "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # ~0.2 s: only with TensorBoard on

                self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
            except ImportError:
                log.info("tensorboard not installed: no event files (pip install tensorboard)")
        interactive = sys.stderr.isatty()
        if progress == "on" or (progress == "auto" and interactive):
            self._bar = tqdm(
                total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr
            )
            open_progress(self)

    def process_stats(self) -> dict:
        return {
            "rss_mb": round(self._proc.memory_info().rss / 2**20, 1),
            "cpu_percent": self._proc.cpu_percent(None),
        }

    def log_train(self, row: dict) -> None:
        if not self.enabled:
            return
        row = {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in row.items()}
        self.history.append(row)
        self._fh.write(json.dumps(strict_json(row), allow_nan=False) + "\n")
        self._fh.flush()
        if self._tb is not None:
            self._tb_scalars(
                "train", {k: v for k, v in row.items() if k not in ("step", "epoch")}, row["step"]
            )
        if self._bar is not None:
            self._bar.set_postfix(progress_postfix(row), refresh=False)  # drawn by the update, once
            self._bar.update(row["step"] - self._bar.n)
        else:
            extra = f" tok/s {row['tokens_per_s']:.0f}" if "tokens_per_s" in row else ""
            log.info(
                "step %d  epoch %d  loss %.4f  lr %.3e  %.1f samples/s%s  %.1f ms/step",
                row["step"],
                row["epoch"],
                row["loss"],
                row["lr"],
                row["samples_per_s"],
                extra,
                row["step_time_s"] * 1e3,
            )

    def log_eval(self, step: int, result: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, **result}
        self.evals.append(row)
        self._fh.write(json.dumps(strict_json({"eval": True, **row}), allow_nan=False) + "\n")
        self._fh.flush()
        if self._tb is not None:
            self._tb_scalars("eval", result, step)
        msg = "  ".join(f"{k} {v:.4f}" for k, v in result.items() if k not in ("samples", "tokens"))
        log.info(f"eval @ step {step}: {msg}")  # timestamped; routed through the bar while it is shown

    def _tb_scalars(self, prefix: str, values: dict, step: int) -> None:
        """All of a row's scalars as ONE event: seven add_scalar calls cost ~450 us, one event ~30 us."""
        from tensorboard.compat.proto.summary_pb2 import Summary  # tensorboard is optional

        vals = [
            Summary.Value(tag=f"{prefix}/{k}", simple_value=float(v))
            for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        self._tb._get_file_writer().add_summary(Summary(value=vals), step)

    def write_summary(self, summary: dict) -> None:
        if not self.enabled:
            return
        with open(os.path.join(self.run_dir, "summary.json"), "w", encoding="utf-8") as fh:
            json.dump(strict_json(summary), fh, indent=1, allow_nan=False)

    def plot(self) -> Optional[str]:
        if not self.enabled or not self.history:
            return None
        import matplotlib  # ~1.4 s with pyplot: once, at the end of a run

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot([r["step"] for r in self.history], [r["loss"] for r in self.history], label="train loss")
        if self.evals:
            ax.plot([r["step"] for r in self.evals], [r["loss"] for r in self.evals], "o-", label="eval loss")
            key = next((k for k in ("accuracy", "mse") if k in self.evals[0]), None)
            if key:
                ax2 = ax.twinx()
                ax2.plot(
                    [r["step"] for r in self.evals],
                    [r[key] for r in self.evals],
                    "s--",
                    color="tab:green",
                    label=f"eval {key}",
                )
                ax2.set_ylabel(f"eval {key}")
                ax2.legend(loc="center right")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log" if min(r["loss"] for r in self.history) > 0 else "linear")
        ax.legend(loc="upper right")
        ax.set_title(os.path.basename(os.path.abspath(self.run_dir)))
        fig.tight_layout()
        path = os.path.join(self.run_dir, "loss.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def close(self) -> None:
        close_progress(self)
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def open_progress(metrics: Metrics) -> None:
    """While the bar is shown, console log lines go through tqdm.write (above the bar, not glued to it)."""
    metrics._redirect = logging_redirect_tqdm()
    metrics._redirect.__enter__()


def close_progress(metrics: Metrics) -> None:
    """Close the bar once (its final state printed once), then give the console handler back."""
    bar, metrics._bar = metrics._bar, None
    if bar is not None:
        bar.close()
    redirect = getattr(metrics, "_redirect", None)
    if redirect is not None:
        metrics._redirect = None
        redirect.__exit__(None, None, None)


def progress_postfix(row: dict) -> dict:
    """loss, lr and throughput (tokens/s for language models, samples/s otherwise) for the bar."""
    out = {"loss": f"{row['loss']:.4f}" if row.get("loss") is not None else "nan", "lr": f"{row['lr']:.2e}"}
    if "tokens_per_s" in row:
        out["tok/s"] = f"{row['tokens_per_s']:.0f}"
    else:
        out["samples/s"] = f"{row['samples_per_s']:.0f}"
    return out


def strict_json(obj):
    """NaN and Inf as null: metrics.jsonl and summary.json stay strict JSON (a bare NaN is not JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def _rows(path: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except ValueError:  # a torn last line from a killed run
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
    return rows


def trim_rows(run_dir: str, step: int) -> None:
    """On resume from `step`: drop rows logged after it (they are logged again, identically), so metrics.jsonl
    reads as one uninterrupted run. Atomic rewrite."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return
    rows = _rows(path)
    keep = [r for r in rows if r["step"] <= step]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, allow_nan=False) + "\n" for r in keep)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    if len(keep) < len(rows):
        log.info(
            "metrics.jsonl: %d row(s) after step %d dropped (they are logged again)",
            len(rows) - len(keep),
            step,
        )


def read_history(metrics: Metrics) -> None:
    """Earlier rows of this run (before a resume) into ``metrics.history`` / ``evals``: loss.png and a
    regenerated summary cover the whole run."""
    path = os.path.join(metrics.run_dir, "metrics.jsonl")
    if not metrics.enabled or not os.path.isfile(path):
        return
    rows = _rows(path)
    metrics.history[:0] = [r for r in rows if not r.get("eval") and r.get("loss") is not None]
    metrics.evals[:0] = [{k: v for k, v in r.items() if k != "eval"} for r in rows if r.get("eval")]


def plot_or_warn(metrics: Metrics) -> None:
    """loss.png, or one warning: a plot never costs the run its weights or its exit code."""
    try:
        metrics.plot()
    except ImportError:
        log.warning("loss.png skipped: matplotlib is not installed (pip install 'torchrunner[plot]')")
    except Exception as e:
        log.warning("loss.png skipped: plotting failed: %s: %s", type(e).__name__, e)


class Stopwatch:
    """Accumulates wall time between log steps without touching the device."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.data_s = 0.0

    def reset(self) -> None:
        self.t0 = time.perf_counter()
        self.data_s = 0.0

    def exclude(self, since: float) -> None:
        """Leave the time from `since` to now out of the current window (evaluation, checkpoints)."""
        self.t0 += time.perf_counter() - since

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

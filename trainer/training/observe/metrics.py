"""Run outputs that are not checkpoints: metrics.jsonl, the console line or progress bar, the trackers
(TensorBoard, MLflow, W&B), loss.png and summary.json.

Everything here runs on global rank 0 only (the loop passes ``enabled=False`` elsewhere) and only at log
intervals. The loop's side of a row is small (the row dict, two clock reads for the CPU share, a queue put):
the writing happens in the writer thread (observe/rowwriter.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import time
from typing import Optional

import psutil
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ...runtime import atomic
from ...runtime.redact import redact_obj
from .plots import plot_run
from .rowwriter import RowWriter, strict_json, yield_gil
from .trackers import Trackers

log = logging.getLogger("trainer")

# Dense peak FLOP/s per device for MFU (vendor datasheets, without sparsity), per unit: bf16 and fp16 tensor
# cores, TF32 tensor cores, fp32 without tensor cores (None: the device has no such unit). The first pattern
# that matches the device name wins, so the specific names come first ("H100 PCIe" before "H100", "L40S"
# before "L4").
PEAK_FLOPS: list[tuple[str, dict[str, Optional[float]]]] = [
    (r"H100.*PCI", {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51.2e12}),
    (r"H100.*NVL|H200.*NVL", {"bf16": 835e12, "fp16": 835e12, "tf32": 418e12, "fp32": 60e12}),
    # SXM; H200 and GH200 have the H100 SXM's units
    (r"H100|H200|GH200", {"bf16": 989e12, "fp16": 989e12, "tf32": 494.7e12, "fp32": 66.9e12}),
    (r"A100", {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
    (r"L40S", {"bf16": 362e12, "fp16": 362e12, "tf32": 183e12, "fp32": 91.6e12}),
    (r"\bL4\b", {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "fp32": 30.3e12}),
    (r"\bA10\b", {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12}),
    (r"V100", {"bf16": None, "fp16": 125e12, "tf32": None, "fp32": 15.7e12}),
    (r"\bT4\b", {"bf16": None, "fp16": 65e12, "tf32": None, "fp32": 8.1e12}),
]


def peak_flops(device_name: str, precision: str, tf32: bool = True) -> Optional[float]:
    """The device's dense peak for ``precision`` (bf16, fp16, fp32; fp32 runs on the TF32 units when ``tf32``,
    which the trainer turns on for CUDA); None for a device not in the table or a unit it lacks."""
    for pattern, peaks in PEAK_FLOPS:
        if re.search(pattern, device_name):
            if precision == "fp32" and tf32:
                return peaks["tf32"] or peaks["fp32"]
            return peaks.get(precision)
    return None


class ProcessStats:
    """rss and CPU share for each log row, cheaply: the CPU share from this process's CPU time over wall time
    (``time.process_time``, ~1 us; the figure psutil's ``cpu_percent`` reads from /proc in ~20 us), the
    resident set from psutil at most once a second (~10 us a read)."""

    def __init__(self):
        self._proc = psutil.Process()
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        self._rss, self._rss_at = 0.0, -math.inf

    def sample(self) -> dict:
        wall, cpu = time.perf_counter(), time.process_time()
        share = 100.0 * (cpu - self._cpu) / max(wall - self._wall, 1e-9)
        self._wall, self._cpu = wall, cpu
        if wall - self._rss_at >= 1.0:
            self._rss, self._rss_at = round(self._proc.memory_info().rss / 2**20, 1), wall
        return {"rss_mb": self._rss, "cpu_percent": round(share, 1)}


def train_line(row: dict) -> str:
    extra = f" tok/s {row['tokens_per_s']:.0f}" if "tokens_per_s" in row else ""
    return (
        f"step {row['step']}  epoch {row['epoch']}  loss {row['loss']:.4f}  lr {row['lr']:.3e}  "
        f"{row['samples_per_s']:.1f} samples/s{extra}  {row['step_time_s'] * 1e3:.1f} ms/step"
    )


def eval_line(row: dict) -> str:
    msg = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in ("samples", "step", "tokens"))
    return f"eval @ step {row['step']}: {msg}"


def console_sink(train_lines: bool):
    """The console lines of a batch of rows: eval lines always (timestamped; through the bar while it is
    shown), train lines when no progress bar shows them."""

    def sink(batch: list[tuple[str, dict]]) -> None:
        for kind, row in batch:
            if kind == "eval":
                log.info(eval_line(row))
            elif train_lines:
                log.info(train_line(row))
            yield_gil()

    return sink


class Metrics:
    def __init__(
        self,
        run_dir: str,
        enabled: bool,
        progress: str,
        total_steps: int,
        start_step: int,
        trackers: Optional[Trackers] = None,
    ):
        self.enabled = enabled
        self.run_dir = run_dir
        self.history: list[dict] = []
        self.evals: list[dict] = []
        self.trackers = trackers
        self._bar = None
        self._writer: Optional[RowWriter] = None
        self._stats = ProcessStats()
        if not enabled:
            return
        interactive = sys.stderr.isatty()
        if progress == "on" or (progress == "auto" and interactive):
            self._bar = tqdm(
                total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr
            )
            open_progress(self)
        sinks = {"console": console_sink(train_lines=self._bar is None)}
        sinks.update(trackers.sinks() if trackers else {})
        fh = open(os.path.join(run_dir, "metrics.jsonl"), "a", encoding="utf-8")
        self._writer = RowWriter(fh, sinks)

    def process_stats(self) -> dict:
        return self._stats.sample()

    def log_train(self, row: dict) -> None:
        if not self.enabled:
            return
        self.history.append(row)
        self._writer.put("train", row)
        if self._bar is not None:
            self._bar.set_postfix(progress_postfix(row), refresh=False)  # drawn by the update, once
            self._bar.update(row["step"] - self._bar.n)

    def log_eval(self, step: int, result: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, **result}
        self.evals.append(row)
        self._writer.put("eval", row)

    def flush(self) -> None:
        """Every row so far written (before a checkpoint is saved, and before the loop says something the
        rows must precede on the console)."""
        if self._writer is not None:
            self._writer.flush()
            if self.trackers:
                self.trackers.flush()

    def tracker_status(self) -> dict:
        """Each tracker's status once the rows so far reached it (or it was dropped for not answering)."""
        if not self.trackers:
            return {}
        self.trackers.settle()
        return self.trackers.status

    def write_summary(self, summary: dict) -> None:
        if not self.enabled:
            return
        text = json.dumps(strict_json(redact_obj(summary)), indent=1, allow_nan=False)  # no URL passwords
        atomic.write_text(os.path.join(self.run_dir, "summary.json"), text)

    def plot(self) -> Optional[str]:
        if not self.enabled:
            return None
        return plot_run(self.run_dir, self.history, self.evals)

    def close(self, summary: Optional[dict] = None, code: int = 0) -> None:
        """Write what is queued, then end the trackers' runs (with the summary when the run finished)."""
        writer, self._writer = self._writer, None
        try:
            if writer is not None:
                writer.close()
        finally:
            close_progress(self)
            if self.trackers:
                self.trackers.finish(summary, code)


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
    with atomic.atomic_open(path, "w") as fh:
        fh.writelines(json.dumps(r, allow_nan=False) + "\n" for r in keep)
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

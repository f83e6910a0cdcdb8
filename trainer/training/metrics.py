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
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()
        if self._tb is not None:
            self._tb_scalars(
                "train", {k: v for k, v in row.items() if k not in ("step", "epoch")}, row["step"]
            )
        if self._bar is not None:
            self._bar.update(row["step"] - self._bar.n)
            self._bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
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
        self._fh.write(json.dumps({"eval": True, **row}) + "\n")
        self._fh.flush()
        if self._tb is not None:
            self._tb_scalars("eval", result, step)
        msg = "  ".join(f"{k} {v:.4f}" for k, v in result.items() if k not in ("samples", "tokens"))
        (self._bar.write if self._bar is not None else log.info)(f"eval @ step {step}: {msg}")

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
            json.dump(summary, fh, indent=1)

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
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None


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

"""``checkpoint.monitor``: which evaluation was best, whether a checkpoint is among the K best, and when
``train.early_stop_patience`` evaluations in a row brought no improvement."""

from __future__ import annotations

import math
import os
from typing import Optional

from ..config import MONITOR_MODES, Config, ConfigError
from .tasks import metric_name


def better(mode: str, a: float, b: float) -> bool:
    """a strictly better than b."""
    return a > b if mode == "max" else a < b


class Monitor:
    def __init__(self, cfg: Config, task: str):
        self.metric = cfg.checkpoint.monitor
        self.keep_best = cfg.checkpoint.keep_best
        self.patience = cfg.train.early_stop_patience
        self.mode = MONITOR_MODES.get(self.metric or "", "min")
        self.name = (self.metric or "").split("/", 1)[-1]
        has = ("loss", metric_name(task))
        if self.metric and self.name not in has:
            raise ConfigError(
                f"checkpoint.monitor={self.metric}: a {task} task evaluates eval/{has[0]} and eval/{has[1]}"
            )
        self.best: Optional[float] = None
        self.best_step: Optional[int] = None
        self.since_best = 0
        self.kept: list[float] = []  # values of the best checkpoints saved so far (at most keep_best)

    @property
    def on(self) -> bool:
        return self.metric is not None

    def value(self, result: dict) -> Optional[float]:
        v = result.get(self.name)
        return float(v) if v is not None and math.isfinite(v) else None

    def update(self, step: int, result: dict) -> None:
        """After an evaluation: the best so far and the evaluations since it improved."""
        v = self.value(result)
        if v is not None and (self.best is None or better(self.mode, v, self.best)):
            self.best, self.best_step, self.since_best = v, step, 0
        else:
            self.since_best += 1

    def worth_saving(self, result: dict) -> bool:
        """Would a checkpoint of this evaluation be among the keep_best best? (records it if so)"""
        v = self.value(result)
        if not self.keep_best or v is None:
            return False
        if len(self.kept) >= self.keep_best and not better(self.mode, v, self.worst_kept()):
            return False
        self.kept = sorted([*self.kept, v], reverse=self.mode == "max")[: self.keep_best]
        return True

    def worst_kept(self) -> float:
        return self.kept[-1]

    def should_stop(self) -> bool:
        return bool(self.patience) and self.since_best >= self.patience

    def after_eval(self, step: int, result: dict, final: bool) -> tuple[bool, Optional[dict]]:
        """(save a best-K checkpoint here?, the early-stop record if the run stops here)."""
        if not self.on:
            return False, None
        self.update(step, result)
        keep = self.worth_saving(result)
        if final or not self.should_stop():
            return keep, None
        return keep, {
            "step": step,
            "metric": self.metric,
            "patience": self.patience,
            "best": self.best,
            "best_step": self.best_step,
        }

    def stop_line(self, step: int) -> str:
        best = self.best if self.best is not None else float("nan")
        return (
            f"early stop at step {step}: {self.metric} has not improved for {self.patience} evaluations "
            f"(best {best:.4f} at step {self.best_step})"
        )

    def summary(self, ckpts, run_dir: str) -> Optional[dict]:
        """summary.json's "best": the metric, its best value and step, and the best checkpoint kept."""
        if not self.on:
            return None
        best = ckpts.best(1)
        return {
            "metric": self.metric,
            "mode": self.mode,
            "value": self.best,
            "step": self.best_step,
            "checkpoint": (os.path.relpath(best[0], run_dir) if "://" not in best[0] else best[0])
            if best
            else None,
        }

    def record(self, result: dict) -> Optional[dict]:
        """What a checkpoint's manifest says about this evaluation."""
        v = self.value(result)
        return {"metric": self.metric, "mode": self.mode, "value": v} if self.on and v is not None else None

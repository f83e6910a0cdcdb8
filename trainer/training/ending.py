"""How a run ends: the verdict after each evaluation (best so far, early stop), whether the result is a
result (finite), and the summary, also regenerated for a run that was already complete.

``Ending`` is built by the ``Trainer`` with what it judges and reports (the progress counters, the
best-checkpoint monitor, the loss tally, the trained parameters, the checkpoint directory); the loop decides
when each verb runs (``Trainer._end``) and hands it the values of the moment (metrics writer, last loss and
eval, times).
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from .. import checkpoint as ckpt
from ..config import Config, batch_plan
from ..runtime import dist
from ..runtime.mesh import DIMS, MeshPlan
from .finite import nonfinite_outcome
from .monitor import Monitor
from .observe import provenance
from .observe.metrics import Metrics, close_progress, plot_or_warn, read_history
from .observe.segments import Segments, done_line

log = logging.getLogger("trainer")


class Ending:
    def __init__(
        self,
        cfg: Config,
        state: dist.DistState,
        run_dir: str,
        info,
        strategy_mode: str,
        progress: ckpt.Progress,
        monitor: Monitor,
        tally,
        params: list,
        ckpts: ckpt.CheckpointDir,
        segments: Segments,
    ):
        self.cfg, self.state, self.run_dir, self.info, self.strategy_mode = (
            cfg,
            state,
            run_dir,
            info,
            strategy_mode,
        )
        self.progress, self.monitor, self.tally, self.params, self.ckpts = (
            progress,
            monitor,
            tally,
            params,
            ckpts,
        )
        self.segments = segments  # the run's time across its starts and resumes
        self.stopped_early: Optional[dict] = None  # set when train.early_stop_patience ends the run
        self.summary: Optional[dict] = None

    def judge(self, result: dict, metrics: Optional[Metrics], final: bool = False) -> bool:
        """After an evaluation: best so far, early stop; True if it deserves a best-K checkpoint."""
        keep, stop = self.monitor.after_eval(self.progress.step, result, final)
        if stop:
            self.stopped_early = stop
            if metrics:
                metrics.flush()  # the eval rows before the line that explains the stop
            log.info(self.monitor.stop_line(self.progress.step))
        return keep

    def problem(self, last_loss: Optional[float], last_eval: dict) -> Optional[str]:
        """Collective. Why the run is not a result (non-finite loss, eval or parameters), or None."""
        return nonfinite_outcome(self.state, self.tally, last_loss, last_eval, self.params)

    def complete_outputs(self, total_steps: int, eval_before: Optional[dict]) -> None:
        """A complete run resumed again (e.g. killed after its final checkpoint): write what is missing."""
        want = ["summary.json"] + (["loss.png"] if self.cfg.log.plot else [])
        missing = [n for n in want if not os.path.exists(os.path.join(self.run_dir, n))]
        if not missing or not self.state.is_main:
            return
        log.info("run already complete: regenerating %s", ", ".join(missing))
        metrics = Metrics(self.run_dir, True, "off", total_steps, self.progress.step)
        try:
            read_history(metrics)
            train_rows = metrics.history
            last_loss = train_rows[-1]["loss"] if train_rows else None
            last_eval = {k: v for k, v in (metrics.evals or [{}])[-1].items() if k != "step"}
            self.finish(metrics, last_loss, last_eval, eval_before, None, {})
        finally:
            metrics.close()

    def finish(
        self,
        metrics: Metrics,
        last_loss: Optional[float],
        last_eval: dict,
        eval_before: Optional[dict],
        compile_time_s: Optional[float],
        provenance_: dict,
    ) -> None:
        """Rank 0: summary.json, the plot, the closing line."""
        if not self.state.is_main:
            return
        metrics.flush()  # the last rows on the console before the "done" line
        p = self.progress
        summary = {
            "steps": p.step,
            "epochs": p.epoch,
            "samples": p.samples_total,
            "bad_steps": p.bad_steps,  # skipped for a non-finite loss (train.max_bad_fraction bounds them)
            # as metrics.jsonl has it (6 decimals), so a summary regenerated from it is the same
            "final_loss": round(last_loss, 6) if last_loss is not None else None,
            "eval": last_eval,
            **({"eval_before": eval_before} if eval_before is not None else {}),
            # the whole run (every segment: start and resumes), and the last segment apart (segments.py)
            **self.segments.summary(p.step),
            "compile_time_s": compile_time_s,
            "world_size": self.state.world_size,
            "batch": batch_plan(self.cfg, self.state.dp_size),
            "mesh": dict(zip(DIMS, (self.state.plan or MeshPlan(1, self.state.world_size, 1)).shape)),
            "strategy": self.strategy_mode,
            "precision": self.cfg.train.precision,
            "data": self.info.description,
            "data_fingerprint": self.info.fingerprint,
            # jsonl: format, documents, tokens, learned_tokens, truncated, dropped per split
            **({"data_counts": self.info.extra["counts"]} if "counts" in self.info.extra else {}),
            "early_stop": self.stopped_early,
            "best": self.monitor.summary(self.ckpts, self.run_dir),
            "trackers": metrics.tracker_status(),
            "provenance": {
                **provenance_,
                "start_time": self.segments.first_start or provenance_.get("start_time"),
                "end_time": provenance.utc_now(),
            },
        }
        self.summary = summary
        metrics.write_summary(summary)
        if self.cfg.log.plot:
            plot_or_warn(metrics)
        close_progress(metrics)  # the finished bar once, then the closing line below it
        log.info(
            "done: %s; final loss %.4f; eval %s; outputs in %s",
            done_line(p.step, summary),
            summary["final_loss"] if summary["final_loss"] is not None else float("nan"),
            format_eval(last_eval),
            self.run_dir,
        )


def format_eval(res: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in res.items() if k not in ("samples", "tokens")) or "none"

"""How a run ends: the verdict after each evaluation (best so far, early stop), the last eval and checkpoint,
outputs regenerated for a run that was already complete, and the summary.

A mixin of ``trainer.training.loop.Trainer`` (it uses the Trainer's attributes); kept apart so the loop
reads in one sitting.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from ..exitcodes import NONFINITE, OK
from . import provenance
from .finite import nonfinite_outcome
from .metrics import Metrics, close_progress, plot_or_warn, read_history

log = logging.getLogger("trainer")


class EndVerbs:
    def _judge(self, result: dict, final: bool = False) -> bool:
        """After an evaluation: best so far, early stop; True if it deserves a best-K checkpoint."""
        keep, stop = self.monitor.after_eval(self.progress.step, result, final)
        if stop:
            self.stopped_early = stop
            if self.metrics:
                self.metrics.flush()  # the eval rows before the line that explains the stop
            log.info(self.monitor.stop_line(self.progress.step))
        return keep

    def _end(self, wall: float) -> int:
        """A run that reached its last step (or stopped early): last log row, final eval, final checkpoint,
        summary.

        Returns NONFINITE (no final checkpoint, no export) when the result is not finite."""
        if self._since_log:
            self._log()
        if self._eval_step != self.progress.step:
            self._judge(self.evaluate(), final=True)
        problem = nonfinite_outcome(self.state, self.tally, self.last_loss, self.last_eval, self.params)
        if problem:
            self.saver.finish(self.progress.step)
            log.error(
                "the run is not a result: %s; no final checkpoint or weights were written (the last good "
                "checkpoint is %s)",
                problem,
                self.saver.ckpts.latest_pointer() or "none",
            )
            self._finish(wall)
            return NONFINITE
        if self.saver.saved_at != self.progress.step:
            self.save(final=True)
        self.saver.finish(self.progress.step)
        self._finish(wall)
        return OK

    def _complete_outputs(self) -> None:
        """A complete run resumed again (e.g. killed after its final checkpoint): write what is missing."""
        want = ["summary.json"] + (["loss.png"] if self.cfg.log.plot else [])
        missing = [n for n in want if not os.path.exists(os.path.join(self.run_dir, n))]
        if not missing or not self.state.is_main:
            return
        log.info("run already complete: regenerating %s", ", ".join(missing))
        self.metrics = Metrics(self.run_dir, True, "off", self.total_steps, self.progress.step)
        try:
            read_history(self.metrics)
            train_rows = self.metrics.history
            self.last_loss = train_rows[-1]["loss"] if train_rows else None
            self.last_eval = {k: v for k, v in (self.metrics.evals or [{}])[-1].items() if k != "step"}
            self._finish(None)
        finally:
            self.metrics.close()

    def _finish(self, wall: Optional[float]) -> None:
        if not self.state.is_main:
            return
        self.metrics.flush()  # the last rows on the console before the "done" line
        summary = {
            "steps": self.progress.step,
            "epochs": self.progress.epoch,
            "samples": self.progress.samples_total,
            # as metrics.jsonl has it (6 decimals), so a summary regenerated from it is the same
            "final_loss": round(self.last_loss, 6) if self.last_loss is not None else None,
            "eval": self.last_eval,
            **({"eval_before": self.eval_before} if self.eval_before is not None else {}),
            "wall_time_s": round(wall, 3) if wall is not None else None,  # None: regenerated afterwards
            "compile_time_s": self.compile_time_s,
            "world_size": self.state.world_size,
            "strategy": self.strategy.mode,
            "precision": self.cfg.train.precision,
            "data": self.info.description,
            "data_fingerprint": self.info.fingerprint,
            "early_stop": self.stopped_early,
            "best": self.monitor.summary(self.saver.ckpts, self.run_dir),
            "trackers": self.metrics.tracker_status(),
            "provenance": {**self.provenance, "end_time": provenance.utc_now()},
        }
        self._summary = summary
        self.metrics.write_summary(summary)
        if self.cfg.log.plot:
            plot_or_warn(self.metrics)
        close_progress(self.metrics)  # the finished bar once, then the closing line below it
        ev = format_eval(self.last_eval)
        log.info(
            "done: %d steps in %.1fs; final loss %.4f; eval %s; outputs in %s",
            self.progress.step,
            wall or 0.0,
            summary["final_loss"] if summary["final_loss"] is not None else float("nan"),
            ev,
            self.run_dir,
        )


def format_eval(res: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in res.items() if k not in ("samples", "tokens")) or "none"

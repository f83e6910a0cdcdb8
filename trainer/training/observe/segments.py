"""A run's time across its segments: each start or resume of the same run is one segment.

The record travels in every checkpoint (the loop's state), so after a resume ``summary.json`` and the
"done" line report the whole run (its first start, wall and compute time summed over the segments, how
many) and the last segment apart. Time spent after the last checkpoint of a segment that was killed is
not counted: that work is redone, and counted, by the next segment.

wall: from the first step of a segment to its end, the final evaluation and checkpoint included (start-up,
data building and the final export not). compute: the time of the training steps (data wait included;
evaluation, checkpoints and the first compiled step's compilation not).
"""

from __future__ import annotations

import time
from typing import Optional


class Segments:
    def __init__(self):
        self.first_start: Optional[str] = None  # UTC time of the run's first start
        self.before = {"segments": 0, "wall_s": 0.0, "compute_s": 0.0}  # the earlier segments, together
        self.last: Optional[dict] = None  # the segment that wrote the checkpoint resumed from
        self.start_time: Optional[str] = None  # this segment's start, None until it trains
        self.from_step = 0
        self.compute_s = 0.0
        self._t0 = 0.0

    def start(self, step: int, start_time: str, t0: float) -> None:
        self.start_time, self.from_step, self._t0 = start_time, step, t0
        self.first_start = self.first_start or start_time

    def add_compute(self, seconds: float) -> None:
        self.compute_s += seconds

    def _this(self, wall: float, step: int, pending: float = 0.0) -> dict:
        return {
            "start_time": self.start_time,
            "from_step": self.from_step,
            "steps": step - self.from_step,
            "wall_time_s": round(wall, 3),
            "compute_time_s": round(self.compute_s + pending, 3),
        }

    def state_dict(self, step: int, pending_compute: float = 0.0) -> dict:
        """For a checkpoint at ``step``: the totals up to now (``pending_compute``: steps not logged yet)."""
        if self.start_time is None:  # nothing trained in this process: what was resumed stays as it was
            return {"first_start": self.first_start, **self.before, "last": self.last}
        this = self._this(time.perf_counter() - self._t0, step, pending_compute)
        return {
            "first_start": self.first_start,
            "segments": self.before["segments"] + 1,
            "wall_s": round(self.before["wall_s"] + this["wall_time_s"], 3),
            "compute_s": round(self.before["compute_s"] + this["compute_time_s"], 3),
            "last": this,
        }

    def load_state_dict(self, sd: Optional[dict]) -> None:
        """From a checkpoint; checkpoints from before this record count as one segment of unknown time."""
        sd = sd or {"segments": 1, "wall_s": 0.0, "compute_s": 0.0}
        self.first_start = sd.get("first_start")
        self.before = {k: sd[k] for k in ("segments", "wall_s", "compute_s")}
        self.last = sd.get("last")

    def summary(self, step: int) -> dict:
        """summary.json's fields: the whole run, and its last segment apart (this one; or, when nothing
        was trained in this process, e.g. a complete run's outputs regenerated, the record resumed from)."""
        if self.start_time is None:
            whole, last = self.before, self.last
        else:
            last = self._this(time.perf_counter() - self._t0, step)
            whole = {
                "segments": self.before["segments"] + 1,
                "wall_s": self.before["wall_s"] + last["wall_time_s"],
                "compute_s": self.before["compute_s"] + last["compute_time_s"],
            }
        return {
            "wall_time_s": round(whole["wall_s"], 3),
            "compute_time_s": round(whole["compute_s"], 3),
            "segments": whole["segments"],
            "last_segment": last,
        }


def done_line(steps: int, s: dict) -> str:
    """'8 steps in 5.1s' for one segment; with the last segment apart after a resume (``s``: the fields
    :meth:`Segments.summary` gave)."""
    line = f"{steps} steps in {s['wall_time_s']:.1f}s"
    last = s["last_segment"]
    if s["segments"] > 1 and last:
        line += (
            f" over {s['segments']} segments (the last: steps {last['from_step']}-{steps} in "
            f"{last['wall_time_s']:.1f}s)"
        )
    return line

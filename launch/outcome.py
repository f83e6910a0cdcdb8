"""Which exit code a finished job reports: the first failing worker's own code, not torchrun's 1.

Two sources, best first:

1. The code each worker process exited with, from torchrun's ``ChildFailedError.failures`` (rank ->
   ``ProcessFailure`` with ``exitcode`` and an integer-second ``timestamp``) or from the child process itself.
2. The reason file a worker writes when it exits non-zero (``$TRAINER_EXIT_DIR/exit-rank{RANK}.json`` =
   ``{"rank", "code", "reason", "time"}``). It is used when the process status says nothing about the intent:
   a worker killed by a signal *after* it chose its code (gloo's abort at interpreter exit,
   ../shared/PLATFORM.md), and a launcher stopped by SIGTERM, where torchrun reports the signal and not the
   workers' codes.

"First" is the earliest failure; within the same second, a specific code beats 1, since a rank that loses its
peer usually fails with 1 just after the rank that had the real problem. Reason files older than the failure
by more than :data:`RECENT_S` belong to an earlier restart round and are ignored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from launch.exitcodes import INTERNAL, from_returncode

RECENT_S = 60.0  # a reason file this much older than the failure is from an earlier restart round


@dataclass(frozen=True)
class Failure:
    rank: int
    code: int  # as a shell reports it: 128+N for a signal
    time: float
    reason: str = ""
    precise: bool = False  # time from a reason file (sub-second), not torchrun's whole seconds


def read_reasons(exit_dir: str | None) -> dict[int, dict[str, Any]]:
    """rank -> the worker's reason record; unreadable or malformed files are skipped."""
    out: dict[int, dict[str, Any]] = {}
    if not exit_dir or not os.path.isdir(exit_dir):
        return out
    for name in os.listdir(exit_dir):
        if not (name.startswith("exit-rank") and name.endswith(".json")):
            continue
        try:
            with open(os.path.join(exit_dir, name)) as f:
                rec = json.load(f)
            out[int(rec["rank"])] = {
                "code": int(rec["code"]),
                "reason": str(rec.get("reason", "")),
                "time": float(rec["time"]),
            }
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


# Codes a rank usually shows *because* another rank failed, least telling last: 76 (it saw its peer vanish
# and named it), 75 (torchrun's SIGTERM to the survivors read as a preemption), 143 (that SIGTERM itself),
# 1 (its peer vanished mid-collective, unrecognised).
# Within the same second they rank below a specific code or another signal (a SIGKILLed rank's 137), so
# the message names the rank that really failed.
_CONSEQUENTIAL = {76: 1, 75: 1, 128 + 15: 2, INTERNAL: 3}


def _first(items: list[Failure]) -> Failure:
    exact = all(f.precise for f in items)
    return min(items, key=lambda f: (f.time if exact else int(f.time), _CONSEQUENTIAL.get(f.code, 0), f.rank))


def from_failures(failures: Mapping[int, Any], reasons: Mapping[int, dict]) -> Failure:
    """The first failure among torchrun's ``ProcessFailure`` records (needs ``exitcode`` and
    ``timestamp``)."""
    items = []
    for rank, pf in failures.items():
        rc, ts = int(pf.exitcode), float(pf.timestamp)
        rec = reasons.get(int(rank))
        recent = rec is not None and rec["time"] >= ts - RECENT_S
        if rc < 0 and recent:  # killed after choosing its code: trust the worker's word
            items.append(Failure(int(rank), rec["code"], rec["time"], rec["reason"], True))
        elif recent and rec["code"] == from_returncode(rc):
            items.append(Failure(int(rank), rec["code"], rec["time"], rec["reason"], True))
        else:
            items.append(Failure(int(rank), from_returncode(rc), ts))
    return _first(items)


def from_process(returncode: int, reasons: Mapping[int, dict], now: float, rank: int = 0) -> Failure:
    """A single child process's status, corrected by its reason file when a signal ended it."""
    rec = reasons.get(rank)
    if rec is not None and rec["time"] >= now - RECENT_S and (returncode < 0 or rec["code"] == returncode):
        return Failure(rank, rec["code"], rec["time"], rec["reason"], True)
    return Failure(rank, from_returncode(returncode), now)


def from_reasons(reasons: Mapping[int, dict], since: float) -> Failure | None:
    """The first failure that workers recorded at or after ``since`` (after the launcher was signalled)."""
    items = [
        Failure(r, rec["code"], rec["time"], rec["reason"], True)
        for r, rec in reasons.items()
        if rec["time"] >= since and rec["code"] != 0
    ]
    return _first(items) if items else None

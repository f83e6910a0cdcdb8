"""Exit codes of `python -m trainer` (and, through the launcher, of the whole job).

They are part of the contract with Docker and Kubernetes: restart policies key on them (see README
"When things go wrong"). 75 is EX_TEMPFAIL from sysexits.h: "try again later"; 74 is EX_IOERR.
"""

import json
import os
import sys
import time

OK = 0
INTERNAL = 1  # a bug or an unexpected exception: do not blindly retry
CONFIG = 2  # bad config, bad input file, bad CLI usage: retrying cannot help
NONFINITE = 3  # loss stayed non-finite for more than train.max_bad_steps steps; last good state saved
HANG = 4  # a collective or the rendezvous timed out; stalled ranks named in the log
STORAGE = 74  # EX_IOERR: the storage refused a write (disk full, read-only, ...); fix it, rerun resumes
PREEMPTED = 75  # SIGTERM/SIGINT: checkpoint saved, a retry resumes from it
PEER_LOST = (
    76  # EX_PROTOCOL: a peer rank or node went away mid-collective; the lost rank is named; retry resumes
)

NAMES = {
    OK: "ok",
    INTERNAL: "internal error",
    CONFIG: "config error",
    NONFINITE: "non-finite loss",
    HANG: "hang / timeout",
    STORAGE: "storage error (fix the storage, rerun resumes)",
    PREEMPTED: "preempted (checkpoint saved)",
    PEER_LOST: "peer lost: a rank or node stopped answering (retry resumes)",
}


def _rank() -> int:
    """This process's global rank; 0 when RANK is unset or malformed (a bad RANK is itself reported)."""
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


def write_exit_reason(code: int, reason: str) -> None:
    """For the launcher: torchrun reports every worker failure as exit 1, so say what it really was.

    Written to ``$TRAINER_EXIT_DIR/exit-rank{RANK}.json`` when the launcher set that variable.
    """
    d = os.environ.get("TRAINER_EXIT_DIR")
    if not d or code == OK:
        return
    try:
        rank = _rank()
        with open(os.path.join(d, f"exit-rank{rank}.json"), "w", encoding="utf-8") as fh:
            json.dump({"rank": rank, "code": code, "reason": reason[:500], "time": time.time()}, fh)
    except OSError:
        pass


def config_error(e: BaseException) -> int:
    """Say a config error once per job (on global rank 0); returns CONFIG."""
    if _rank() == 0:
        print(f"config error: {e}", file=sys.stderr)
    return CONFIG

"""Exit codes shared by the launcher and the trainer (the README's table is the contract).

They exist so that Docker, Kubernetes (``podFailurePolicy``) and Slurm can tell a bug from a bad config, a
preemption worth retrying and a diverged run, without parsing logs. torchrun collapses every worker failure
into 1; :mod:`launch.outcome` recovers the worker's own code.
"""

from __future__ import annotations

import signal

OK = 0  # the job finished
INTERNAL = 1  # a bug or an unexpected crash: do not retry blindly
CONFIG = 2  # bad config, bad arguments or an unfit environment: fix it, retrying will not help
NONFINITE = 3  # stopped on a non-finite loss (after train.max_bad_steps skipped steps)
HANG = 4  # a collective or the rendezvous timed out; the stalled rank is named in the log
STORAGE = 74  # EX_IOERR: the storage refused a write (disk full, read-only, ...); fix it, rerun resumes
PREEMPTED = 75  # EX_TEMPFAIL: SIGTERM/SIGINT, checkpoint saved; retrying resumes
PEER_LOST = (
    76  # EX_PROTOCOL: a peer rank or node went away mid-collective; the lost rank is named; retry resumes
)

NAMES = {
    OK: "ok",
    INTERNAL: "internal error",
    CONFIG: "config or usage error",
    NONFINITE: "stopped on non-finite loss",
    HANG: "hang or collective timeout",
    STORAGE: "storage error (fix the storage, retry resumes)",
    PREEMPTED: "preempted (checkpoint saved, retry resumes)",
    PEER_LOST: "peer lost (a rank or node died; retry resumes)",
}


def from_returncode(rc: int) -> int:
    """A process status as a shell would report it: killed by signal N (negative in Python) becomes 128+N."""
    return 128 - rc if rc < 0 else rc


def describe(code: int) -> str:
    """Human words for an exit code, including the 128+N signal convention."""
    if code in NAMES:
        return NAMES[code]
    if 128 < code < 128 + 65:
        try:
            return f"killed by {signal.Signals(code - 128).name}"
        except ValueError:
            return f"killed by signal {code - 128}"
    return f"exit code {code}"

"""Rank-aware logging: the console shows global rank 0; every rank also writes its own file in the run dir."""

from __future__ import annotations

import logging
import os
import socket
import sys

from .redact import RedactFilter

NOISY = ("torch", "accelerate", "matplotlib", "PIL", "urllib3", "mlflow", "alembic", "wandb")


def setup_logging(rank: int) -> None:
    """Console handler on stderr: INFO on rank 0, errors only elsewhere."""
    root = logging.getLogger()
    root.handlers.clear()
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    h.setLevel(logging.INFO if rank == 0 else logging.ERROR)
    h.addFilter(RedactFilter())  # no password in a URI reaches the console (runtime/redact.py)
    root.addHandler(h)
    root.setLevel(logging.INFO)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _RankFileHandler(logging.FileHandler):
    """A rank log that a full or vanished disk silences instead of printing a traceback per record: the
    write that matters (checkpoint, metrics) reports the fault once, as exit 74."""

    def handleError(self, record: logging.LogRecord) -> None:
        self.setLevel(logging.CRITICAL + 1)


def add_rank_log(run_dir: str, rank: int, world_size: int) -> None:
    """``run_dir/logs/rank-N.log``, opened with one line saying who wrote it (tests and people count
    real processes by it)."""
    os.makedirs(os.path.join(run_dir, "logs"), exist_ok=True)
    fh = _RankFileHandler(os.path.join(run_dir, "logs", f"rank-{rank}.log"))
    fh.setFormatter(logging.Formatter("%(asctime)s rank" + str(rank) + " %(levelname)s %(message)s"))
    fh.addFilter(RedactFilter())
    fh.stream.write(f"rank {rank} pid {os.getpid()} host {socket.gethostname()} world {world_size}\n")
    logging.getLogger().addHandler(fh)


def rank_log_stream():
    """The open stream of this rank's log file (the watchdog dumps stacks into it), or None."""
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            return h.stream
    return None

"""Rank-aware logging: the console shows global rank 0; every rank also writes its own file in the run dir.

What a third-party library logs below ERROR *while it is being imported* (torchao's ``Failed to load
..._C_mxfp8...so`` and ``Detected no triton`` on every CPU run that imports transformers or peft, torch's
``_pytree`` deprecation lines) is kept off the console and written to the rank log instead; records logged
before the rank log exists are held and written when it opens. Errors, our own records and anything
logged outside an import still reach the console.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import sysconfig
from collections import deque

from .redact import RedactFilter

NOISY = ("torch", "accelerate", "matplotlib", "PIL", "urllib3", "mlflow", "alembic", "wandb")
# Where installed libraries live: a record from code there is third-party (a user's module beside the
# recipe is not, and its import-time warnings stay on the console).
LIBRARIES = (*{sysconfig.get_paths()[k] for k in ("purelib", "platlib")}, "site-packages", "dist-packages")
_held: deque = deque(maxlen=200)  # import-time records from before the rank log opened


def _importing() -> bool:
    """True while a module is being imported (an import machinery frame is on the stack)."""
    f = sys._getframe(2)
    while f is not None:
        if f.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        f = f.f_back
    return False


class ImportNoise(logging.Filter):
    """On a console handler: drops a third-party record below ERROR logged during an import, which goes
    to the rank log instead. ``deliver``: the handler's logger does not propagate to the root (torch's own
    handler), so the rank log is handed the record here; otherwise it gets it through the root."""

    def __init__(self, deliver: bool):
        super().__init__()
        self.deliver = deliver

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name.split(".", 1)[0] == "trainer"
        third_party = not ours and any(p in record.pathname for p in LIBRARIES)
        if record.levelno >= logging.ERROR or not third_party or not _importing():
            return True
        rank_log = _rank_handler()
        if rank_log is None:
            _held.append(record)
        elif self.deliver:
            rank_log.handle(record)
        return False


def _quiet_imports(handler: logging.Handler, deliver: bool) -> None:
    if not any(isinstance(f, ImportNoise) for f in handler.filters):
        handler.addFilter(ImportNoise(deliver))


def quiet_torch() -> None:
    """Import torch (if installed) and keep its own handler's import-time notices off the console: for a
    command that is about to import a user module, which imports torch anyway (``check``)."""
    try:
        import torch  # noqa: F401  (imported here, ~1.5 s, only when a user module is imported next)
    except ImportError:
        return
    _quiet_torch_handlers()


def _quiet_torch_handlers() -> None:
    # torch logs through its own stderr handler (torch._logging, propagate=False); an explicit TORCH_LOGS
    # is a request to see them, so those stay as they are
    if not os.environ.get("TORCH_LOGS"):
        for th in logging.getLogger("torch").handlers:
            _quiet_imports(th, deliver=True)


def setup_logging(rank: int) -> None:
    """Console handler on stderr: INFO on rank 0, errors only elsewhere; third-party import noise to the
    rank log (module docstring)."""
    root = logging.getLogger()
    root.handlers.clear()
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    h.setLevel(logging.INFO if rank == 0 else logging.ERROR)
    h.addFilter(RedactFilter())  # no password in a URI reaches the console (runtime/redact.py)
    _quiet_imports(h, deliver=False)
    root.addHandler(h)
    root.setLevel(logging.INFO)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _quiet_torch_handlers()


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
    while _held:
        fh.handle(_held.popleft())


def _rank_handler() -> logging.Handler | None:
    for h in logging.getLogger().handlers:
        if isinstance(h, _RankFileHandler):
            return h
    return None


def rank_log_stream():
    """The open stream of this rank's log file (the watchdog dumps stacks into it), or None."""
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            return h.stream
    return None

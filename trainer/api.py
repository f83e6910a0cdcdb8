"""Public entry points.

``train_command(cfg)`` is what ``python -m trainer train`` runs once the config is valid: it trains and
maps every way a run can end to an exit code and a one-line reason (README "Exit codes").
"""

from __future__ import annotations

import logging
import sys

from . import exitcodes as codes
from .config import Config, ConfigError
from .run import train
from .runtime import storage

log = logging.getLogger("trainer")


def _is_timeout(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, (RuntimeError, TimeoutError)) and ("timed out" in text or "timeout" in text)


def train_command(cfg: Config) -> tuple[int, str]:
    """Train; returns (exit code, reason). Never raises for a run's own failure."""
    try:
        code = train(cfg)
        return code, codes.NAMES.get(code, "")
    except ConfigError as e:
        return codes.config_error(e), str(e)
    except KeyboardInterrupt:
        return 128 + 2, "interrupted"
    except SystemExit as e:  # sys.exit() in user code (a model or dataset module) must not look like success
        reason = f"sys.exit({e.code!r}) was called during the run (user code?); the run did not finish"
        print(f"error: {reason}", file=sys.stderr)
        return codes.INTERNAL, reason
    except Exception as e:
        fault = storage.describe(e, where=cfg.run.dir or "the run directory")
        if fault:
            print(f"{fault} (fix the storage, then rerun the same command: it resumes)", file=sys.stderr)
            return codes.STORAGE, fault
        if _is_timeout(e):  # the watchdog normally fires first; this is the process group's backstop
            reason = f"collective timed out: {e}"
            print(f"hang: {reason.splitlines()[0][:300]}", file=sys.stderr)
            return codes.HANG, reason
        # a bug: full traceback to the log, one line to the user
        log.exception("internal error")
        return codes.INTERNAL, f"{type(e).__name__}: {e}"

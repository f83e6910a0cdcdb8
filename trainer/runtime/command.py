"""The command that started this process, as a user would retype it, with some overrides changed: what a
message tells the user to run next (resume a preempted run, start a new run dir)."""

from __future__ import annotations

import os
import shlex
import sys


def under_launcher() -> bool:
    """A torchrun (or launch/accelerate) worker: its argv is not the command the user typed."""
    return bool(os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("LOCAL_RANK"))


def rerun_command(overrides: dict[str, str]) -> str:
    """This process's command with each ``KEY=VALUE`` of ``overrides`` replacing the given one (or added)."""
    extra = " ".join(shlex.quote(f"{k}={v}") for k, v in overrides.items())
    if under_launcher():
        return f"your launch command with {extra}"
    argv = list(sys.argv)
    prog = (
        "python -m trainer"
        if argv and argv[0].endswith("__main__.py")
        else os.path.basename(argv[0] or "trainer")
    )
    args = [a for a in argv[1:] if a.split("=", 1)[0] not in overrides]
    return " ".join([prog, *map(shlex.quote, args), extra])

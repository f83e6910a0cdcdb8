"""Preemption: SIGTERM/SIGINT set a flag; ranks agree on it without stalling the step loop.

Agreement is an asynchronous all-reduce (MAX) of the local flag on the side gloo group, started at one
step boundary and waited on at the next, so every rank sees the same decision at the same step. A second
signal exits at once with 128 + signum.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

import torch
import torch.distributed as dist

from .dist import DistState

log = logging.getLogger("trainer")


_parent_death = False  # die_with_launcher armed SIGHUP


def die_with_launcher() -> None:
    """A worker whose parent is `python -m launch` (``LAUNCH_PID``) gets SIGHUP when the launcher dies,
    even by SIGKILL (Linux ``PR_SET_PDEATHSIG``): it saves a checkpoint and exits 75 like a preempted run,
    instead of training on, orphaned, beside the rerun of the same command. Another parent or OS: no-op.
    SIGHUP, not SIGTERM: the kernel sends it once per thread of the dead launcher (each exit reparents
    the worker to the next thread), and a second SIGTERM means "exit now without a checkpoint"."""
    global _parent_death
    want = os.environ.get("LAUNCH_PID")
    if not want or not sys.platform.startswith("linux") or str(os.getppid()) != want:
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGHUP)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    _parent_death = True
    if str(os.getppid()) != want:  # the launcher died before prctl took effect
        os.kill(os.getpid(), signal.SIGHUP)


class PreemptionWatch:
    def __init__(self, state: DistState):
        self.state = state
        self.flag = 0
        self.signum = None
        self.signalled_at = None
        self._old = {}
        self._buf = torch.zeros(1, dtype=torch.int32)
        self._work = None

    def _handler(self, signum, frame):
        if self.flag:
            sys.stderr.write(
                f"second signal {signal.Signals(signum).name}: exiting now without a checkpoint\n"
            )
            sys.stderr.flush()
            os._exit(128 + signum)
        self.flag, self.signum, self.signalled_at = 1, signum, time.perf_counter()
        log.warning(
            "received %s: will save a checkpoint at the next step boundary and exit 75",
            signal.Signals(signum).name,
        )

    def install(self) -> None:
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread (e.g. embedded use): signals stay the host's business
                pass
        if _parent_death:
            self._old[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._launcher_gone)

    def _launcher_gone(self, signum, frame):
        if not self.flag:  # the repeats (one per thread of the dead launcher) are the same event
            self._handler(signum, frame)

    def uninstall(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()
        if self._work is not None:
            try:
                self._work.wait()
            except Exception:  # a peer is gone; the error that ended the run is already on its way
                pass
            self._work = None

    def agreed(self) -> bool:
        """True when any rank has been signalled (decided one step after the signal at the latest)."""
        if not self.state.distributed:
            return bool(self.flag)
        decided = False
        if self._work is not None:
            self._work.wait()
            decided = bool(self._buf.item())
        if decided:
            self._work = None
            return True
        self._buf.fill_(self.flag)
        self._work = dist.all_reduce(
            self._buf, op=dist.ReduceOp.MAX, group=self.state.side_group, async_op=True
        )
        return False

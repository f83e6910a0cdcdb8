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
            sys.stderr.write(f"second signal {signal.Signals(signum).name}: exiting now without a checkpoint\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.flag, self.signum, self.signalled_at = 1, signum, time.perf_counter()
        log.warning("received %s: will save a checkpoint at the next step boundary and exit 75",
                    signal.Signals(signum).name)

    def install(self) -> None:
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread (e.g. embedded use): signals stay the host's business
                pass

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
        self._work = dist.all_reduce(self._buf, op=dist.ReduceOp.MAX, group=self.state.side_group, async_op=True)
        return False


# Order of the breadcrumbs inside one step: a rank at an earlier op of the same step is behind.
OPS = ("data", "forward", "backward", "optimizer", "log", "eval", "checkpoint", "done")


class Watchdog:
    """Names the stalled rank when a collective hangs, instead of hanging (or gloo's rank-less timeout).

    The main thread leaves a breadcrumb (step, op) at each phase of a step: two attribute writes, nothing
    on the device. A daemon thread publishes it with a heartbeat to the rendezvous store every interval
    and, when the main thread has made no progress for `timeout_s`, dumps every thread's Python stack into
    this rank's log (faulthandler), reads all ranks' breadcrumbs from the store, and exits with HANG (4).
    Stalled ranks are those whose heartbeat stopped (dead or frozen process) or, failing that, those behind
    the others (earliest step/op); the lowest-numbered healthy rank prints the one summary.
    """

    def __init__(self, state: DistState, timeout_s: float, log_file=None):
        import threading

        self.state = state
        self.timeout_s = timeout_s
        self.interval = max(0.05, min(1.0, timeout_s / 5))
        self.log_file = log_file
        self.step, self.op = 0, "start"
        self.t_progress = time.monotonic()
        self.paused = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trainer-watchdog", daemon=True)
        from torch.distributed.distributed_c10d import _get_default_store

        self.store = _get_default_store()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def mark(self, step: int, op: str) -> None:
        self.step, self.op, self.t_progress = step, op, time.monotonic()

    def pause(self, paused: bool) -> None:
        """For phases that may legitimately take long without collectives (first compiled step)."""
        self.paused = paused
        self.t_progress = time.monotonic()

    def _publish(self) -> None:
        import json

        self.store.set(f"trainer/hb/{self.state.rank}",
                       json.dumps({"step": self.step, "op": self.op, "t": time.time(), "pid": os.getpid()}))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._publish()
            except Exception:  # the store went away: the job is ending
                return
            if not self.paused and time.monotonic() - self.t_progress > self.timeout_s:
                self._on_hang()

    def _peers(self) -> dict:
        import json

        out = {}
        for r in range(self.state.world_size):
            key = f"trainer/hb/{r}"
            try:
                if self.store.check([key]):
                    out[r] = json.loads(self.store.get(key))
            except Exception:
                pass
        return out

    def verdict(self, peers: dict, now: float) -> tuple[list[int], str]:
        stale = sorted(r for r in range(self.state.world_size)
                       if r not in peers or now - peers[r]["t"] > max(3 * self.interval, 2.0))
        if stale:
            return stale, "no heartbeat (process dead or frozen)"
        pos = {r: (p["step"], OPS.index(p["op"]) if p["op"] in OPS else -1) for r, p in peers.items()}
        low = min(pos.values())
        behind = sorted(r for r, v in pos.items() if v == low)
        if len(behind) == len(pos):
            return [], f"every rank is in {peers[0]['op']} of step {peers[0]['step']}"
        return behind, f"in {peers[behind[0]]['op']} of step {peers[behind[0]]['step']} while the others wait"

    def _on_hang(self) -> None:
        import faulthandler

        from .exitcodes import HANG

        if self.log_file is not None:
            self.log_file.write(f"--- no progress for {self.timeout_s:.1f}s in {self.op} of step {self.step}; "
                                "Python stacks of every thread:\n")
            self.log_file.flush()
            faulthandler.dump_traceback(file=self.log_file, all_threads=True)
        self._publish()
        time.sleep(self.interval)  # let the other ranks publish their last breadcrumb
        peers = self._peers()
        stalled, what = self.verdict(peers, time.time())
        healthy = [r for r in range(self.state.world_size) if r not in stalled]
        names = ", ".join(map(str, stalled)) if stalled else "none behind"
        msg = (f"hang: collective timeout after {self.timeout_s:.1f}s (dist.collective_timeout_s); "
               f"stalled rank(s): {names} - {what}; this rank {self.state.rank} was in {self.op} of step "
               f"{self.step}; stacks in each rank's log")
        if healthy and self.state.rank == healthy[0] or not healthy and self.state.rank == 0:
            sys.stderr.write(msg + "\n")
        if self.log_file is not None:
            self.log_file.write(msg + "\n")
            self.log_file.flush()
        from .__main__ import _write_exit_reason

        _write_exit_reason(HANG, msg)
        sys.stderr.flush()
        os._exit(HANG)

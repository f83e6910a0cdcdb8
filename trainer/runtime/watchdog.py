"""Hang watchdog: per-rank breadcrumbs and heartbeats in the rendezvous store; the stalled rank named.

When a collective hangs, gloo's own timeout error names no rank; this thread does, dumps every thread's
Python stack into the rank's log and exits with HANG (4).
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import signal
import socket
import sys
import threading
import time

from torch.distributed.distributed_c10d import _get_default_store

from ..exitcodes import HANG, write_exit_reason
from .dist import DistState
from .dist import backend_line as dist_backend_line

log = logging.getLogger("trainer")
_HOST = socket.gethostname()


# Order of the breadcrumbs inside one step: a rank at an earlier op of the same step is behind. "agree" is the
# preemption all-reduce on the side group; during a save, "checkpoint" is this rank's own work and "checkpoint
# barrier" waiting for the others (a barrier or one of the save's collectives), so the rank still writing is
# the one behind.
OPS = (
    "data",
    "forward",
    "backward",
    "optimizer",
    "log",
    "eval",
    "agree",
    "checkpoint",
    "checkpoint barrier",
    "done",
)

# Test hook: TRAINER_TEST_STALL_AT=OP:STEP:RANK[:stop|sleep|kill] stalls RANK when it marks OP of STEP, by
# SIGSTOP of the whole process (heartbeat included, as `kill -STOP` does) or by a sleep of the main thread;
# kill SIGKILLs it (a lost peer).
# Normal runs never set it.
STALL_ENV = "TRAINER_TEST_STALL_AT"


def _stall_spec(rank: int) -> tuple[str, int, str] | None:
    spec = os.environ.get(STALL_ENV)
    if not spec:
        return None
    op, step, want_rank, how = (spec.split(":") + ["stop"])[:4]
    return (op, int(step), how) if int(want_rank) == rank else None


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
        self.state = state
        self.timeout_s = timeout_s
        self.interval = max(0.05, min(1.0, timeout_s / 5))
        self.log_file = log_file
        self.step, self.op = 0, "start"
        self.t_progress = time.monotonic()
        self.paused = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trainer-watchdog", daemon=True)
        self.store = _get_default_store()
        self._stall = _stall_spec(state.rank)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def mark(self, step: int, op: str) -> None:
        self.step, self.op, self.t_progress = step, op, time.monotonic()
        if self._stall is not None and self._stall[:2] == (op, step):
            self._publish()  # the breadcrumb of the stall point, as the heartbeat would have sent it
            if self._stall[2] == "sleep":
                time.sleep(3600)
            # kill: the process vanishes as on a lost node (no exit path runs); stop: it freezes
            os.kill(os.getpid(), signal.SIGKILL if self._stall[2] == "kill" else signal.SIGSTOP)

    def pause(self, paused: bool) -> None:
        """For phases that may legitimately take long without collectives (first compiled step)."""
        self.paused = paused
        self.t_progress = time.monotonic()

    def _publish(self) -> None:
        self.store.set(
            f"trainer/hb/{self.state.rank}",
            json.dumps(
                {"step": self.step, "op": self.op, "t": time.time(), "pid": os.getpid(), "host": _HOST}
            ),
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._publish()
            except Exception:  # the store went away: the job is ending
                return
            if not self.paused and time.monotonic() - self.t_progress > self.timeout_s:
                self._on_hang()

    def _peers(self) -> dict:
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
        stale = sorted(
            r
            for r in range(self.state.world_size)
            if r not in peers or now - peers[r]["t"] > max(3 * self.interval, 2.0)
        )
        if stale:
            seen = [f"{peers[r]['op']} of step {peers[r]['step']}" for r in stale if r in peers]
            return stale, "no heartbeat" + (
                f" since {seen[0]}" if len(seen) == 1 else ""
            ) + " (process dead or frozen)"
        pos = {r: (p["step"], OPS.index(p["op"]) if p["op"] in OPS else -1) for r, p in peers.items()}
        low = min(pos.values())
        behind = sorted(r for r, v in pos.items() if v == low)
        if len(behind) == len(pos):
            return [], f"every rank is in {peers[0]['op']} of step {peers[0]['step']}"
        return behind, f"in {peers[behind[0]]['op']} of step {peers[behind[0]]['step']} while the others wait"

    def lost_peers(self, error: BaseException) -> str:
        """After a collective failed because a peer went away (``dist.is_peer_lost``): the one line naming
        the rank(s) whose heartbeat stopped, and their host, as the others see it from the store."""
        self.stop()  # this rank's own heartbeat would keep saying "alive" while it waits below
        time.sleep(max(3 * self.interval, 2.0) + self.interval)  # let the dead ranks' heartbeats go stale
        try:
            peers = self._peers()
        except Exception:  # noqa: BLE001 - the store lived on the lost node
            peers = None
        where = f"in {self.op} of step {self.step}"
        said = dist_backend_line(error)
        if peers is None or not peers:
            who = "a peer (the rendezvous store is gone too: the lost node hosted it, usually rank 0's)"
        else:
            now = time.time()
            lost = [
                r
                for r in range(self.state.world_size)
                if r != self.state.rank
                and (r not in peers or now - peers[r]["t"] > max(3 * self.interval, 2.0))
            ]
            who = (
                ", ".join(
                    f"rank {r}" + (f" on {peers[r]['host']}" if r in peers and peers[r].get("host") else "")
                    for r in lost
                )
                or "a peer (every heartbeat is fresh: a network fault?)"
            )
        return f"peer lost: {who} stopped answering {where} ({said}); rerun the same command to resume"

    def _on_hang(self) -> None:
        if self.log_file is not None:
            self.log_file.write(
                f"--- no progress for {self.timeout_s:.1f}s in {self.op} of step {self.step}; "
                "Python stacks of every thread:\n"
            )
            self.log_file.flush()
            faulthandler.dump_traceback(file=self.log_file, all_threads=True)
        self._publish()
        time.sleep(self.interval)  # let the other ranks publish their last breadcrumb
        peers = self._peers()
        stalled, what = self.verdict(peers, time.time())
        healthy = [r for r in range(self.state.world_size) if r not in stalled]
        names = ", ".join(map(str, stalled)) if stalled else "none behind"
        msg = (
            f"hang: collective timeout after {self.timeout_s:.1f}s (dist.collective_timeout_s); "
            f"stalled rank(s): {names} - {what}; this rank {self.state.rank} was in {self.op} of step "
            f"{self.step}; stacks in each rank's log"
        )
        if healthy and self.state.rank == healthy[0] or not healthy and self.state.rank == 0:
            sys.stderr.write(msg + "\n")
        if self.log_file is not None:
            self.log_file.write(msg + "\n")
            self.log_file.flush()
        write_exit_reason(HANG, msg)
        sys.stderr.flush()
        os._exit(HANG)


class NoWatchdog:
    """Single process: nothing can hang on a peer."""

    def lost_peers(self, error: BaseException) -> str:
        return f"peer lost: {dist_backend_line(error)}; rerun the same command to resume"

    def mark(self, step: int, op: str) -> None:
        pass

    def pause(self, paused: bool) -> None:
        pass

    def stop(self) -> None:
        pass

"""One thread per tracker: its calls never run on the step loop or hold up metrics.jsonl.

The metrics writer (rowwriter.py) writes metrics.jsonl, then hands each batch of rows to every tracker's
``Feed`` without waiting. The feed's thread makes the tracker's calls one after another. A tracker that stops
answering (a hung MLflow server, a frozen network path) is dropped with one warning as soon as one of its
calls has run longer than ``log.tracker_timeout_s``, or its queue is full: the run trains on and
metrics.jsonl keeps every row. Its thread is a daemon left blocked in the client (Python cannot interrupt a
socket read in another thread); the process ends without waiting for it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Optional

log = logging.getLogger("trainer")

QUEUE_BATCHES = 1024  # batches of rows waiting for a slow tracker before it counts as not answering


class Feed:
    def __init__(self, name: str, timeout_s: float):
        self.name = name
        self.timeout_s = timeout_s
        self.dropped: Optional[str] = None  # why it was dropped (summary.json's tracker status)
        self._q: queue.Queue = queue.Queue(QUEUE_BATCHES)
        self._busy_since: Optional[float] = None
        self._what = ""
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name=f"tracker-{name}", daemon=True)
        self._thread.start()

    def put(self, what: str, fn: Callable, *args) -> bool:
        """Queue one call; False (and the tracker dropped) when it is not keeping up. Never blocks."""
        if self.dropped or self._stuck():
            return False
        with self._lock:
            self._pending += 1
        try:
            self._q.put_nowait((what, fn, args))
        except queue.Full:
            with self._lock:
                self._pending -= 1
            self._drop(f"{QUEUE_BATCHES} batches of rows waiting for it")
            return False
        return True

    def drain(self, limit_s: float) -> bool:
        """Wait until every queued call ran, or one of them overran timeout_s (then it is dropped), or
        limit_s passed in all; returns whether the tracker is still live."""
        deadline = time.monotonic() + limit_s
        with self._idle:
            while self._pending and not self.dropped and not self._overdue() and time.monotonic() < deadline:
                self._idle.wait(0.1)
        if self._pending and not self.dropped:
            self._drop(
                f"{self._what or 'a call'} got no answer within log.tracker_timeout_s={self.timeout_s:g}s"
            )
        return not self.dropped

    def close(self) -> None:
        if not self.dropped:
            self._q.put_nowait(None)

    # ------------------------------------------------------------------ internals
    def _overdue(self) -> bool:
        since = self._busy_since
        return since is not None and time.monotonic() - since > self.timeout_s

    def _stuck(self) -> bool:
        if self._overdue():
            self._drop(f"{self._what} got no answer within log.tracker_timeout_s={self.timeout_s:g}s")
            return True
        return False

    def _drop(self, why: str) -> None:
        with self._lock:
            if self.dropped:
                return
            self.dropped = why
            self._idle.notify_all()
        log.warning("%s: %s; dropped for the rest of this run (metrics.jsonl has every row)", self.name, why)

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            what, fn, args = item
            self._what, self._busy_since = what, time.monotonic()
            try:
                if not self.dropped:
                    fn(*args)
            except Exception as e:  # a tracker never ends a run: say so once and stop feeding it
                self._drop(f"{what} failed ({type(e).__name__}: {str(e)[:300]})")
            finally:
                self._busy_since = None
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()
            if self.dropped:
                return

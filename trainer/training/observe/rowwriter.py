"""The background writer of log rows: the step loop hands a row over and goes on; one thread writes it.

Measured on the overhead benchmark's MLP (bench/overhead.py, README "Performance"): a log step done inline
(metrics.jsonl write + flush, the console line through two logging handlers, one TensorBoard event, psutil)
cost ~300 us on its own step and another ~150 us spread over the next three steps, whose code and data had
been pushed out of the CPU caches. Here the loop's side of a row is one ``queue.put``; this thread wakes every
``interval_s`` (or when the queue is half full, or on ``flush``), takes every pending row and writes them in
one pass: the JSON lines in one write and one flush, then each sink (the console line, and the trackers,
which only queue the rows for their own threads: observe/feeds.py).

The queue is bounded and never drops a row: a producer that finds it full waits for the writer. ``flush()``
returns once every row put before it is written (the loop calls it before a checkpoint is saved and at the
end), and ``close()`` flushes and stops the thread. A sink that raises is reported once and dropped (a
tracker must never end a run); an error writing metrics.jsonl is raised in the loop's thread at the next
``flush``/``close``.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from typing import Optional, TextIO

log = logging.getLogger("trainer")

Sink = Callable[[list[tuple[str, dict]]], None]  # called with a batch of (kind, row), kind "train" | "eval"


def yield_gil() -> None:
    """Between two rows of a batch: let the step loop take the GIL now rather than after the interpreter's
    5 ms switch interval (a batch of rows can hold it for several ms)."""
    time.sleep(0)


def strict_json(obj):
    """NaN and Inf as null: metrics.jsonl and summary.json stay strict JSON (a bare NaN is not JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def json_line(kind: str, row: dict) -> str:
    """One metrics.jsonl line, strict JSON (non-finite as null); train floats to 6 decimals, eval values
    exact (a summary regenerated from the file matches the one written at the end of the run)."""
    if kind == "eval":
        return json.dumps(strict_json({"eval": True, **row}), allow_nan=False) + "\n"
    clean = {
        k: (round(v, 6) if math.isfinite(v) else None) if isinstance(v, float) else v for k, v in row.items()
    }
    return json.dumps(clean, allow_nan=False) + "\n"


class RowWriter:
    def __init__(self, jsonl: TextIO, sinks: dict[str, Sink], interval_s: float = 0.2, maxsize: int = 4096):
        self._fh = jsonl
        self.sinks = dict(sinks)
        self.interval_s = interval_s
        self._q: queue.Queue = queue.Queue(maxsize)
        self._half = maxsize // 2
        self._wake = threading.Event()
        self._done = threading.Condition()
        self._put = self._written = 0  # rows handed over / rows written (under _done)
        self._stop = False
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="metrics-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the loop's side
    def put(self, kind: str, row: dict) -> None:
        self._put += 1
        self._q.put((kind, row))  # blocks while full: a row is never dropped
        if self._q.qsize() >= self._half:
            self._wake.set()

    def flush(self) -> None:
        """Return once every row put so far is written (and metrics.jsonl flushed)."""
        target = self._put
        with self._done:
            self._wake.set()
            while self._written < target and self._thread.is_alive():
                self._done.wait(1.0)
        self._raise()

    def close(self) -> None:
        if not self._thread.is_alive():
            self._raise()
            return
        self.flush()
        self._stop = True
        self._wake.set()
        self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise OSError(f"writing metrics.jsonl failed: {err}") from err

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            stop = self._stop
            batch = []
            while True:
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            if batch:
                self._write(batch)
            with self._done:
                self._written += len(batch)
                self._done.notify_all()
            if stop and self._q.empty():
                return

    def _write(self, batch: list[tuple[str, dict]]) -> None:
        try:
            self._fh.write("".join(json_line(kind, row) for kind, row in batch))
            self._fh.flush()
        except Exception as e:  # disk full, closed file: the loop's thread raises it at the next flush
            self._error = e
        for name, sink in list(self.sinks.items()):
            try:
                sink(batch)
            except Exception as e:  # a tracker never ends a run: say so once and stop feeding it
                log.warning(
                    "%s: logging failed (%s: %s); no more rows go to it in this run",
                    name,
                    type(e).__name__,
                    e,
                )
                del self.sinks[name]

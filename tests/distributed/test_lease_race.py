"""Stale-lease takeover under contention (issue 27, class 3): many real processes find the same dead
holder's ``.lease`` at the same instant; exactly one of them may get it, every time."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import subprocess

from trainer.config import ConfigError
from trainer.runtime.lease import LEASE, Lease

PROCS = 12
ROUNDS = 15


def _contend(run_dir: str, start, results, done) -> None:
    start.wait()
    try:
        Lease(run_dir).acquire()
        results.put((os.getpid(), "got"))
    except ConfigError as e:
        results.put((os.getpid(), f"refused: {e}"))
    done.wait(60)  # hold it (alive) until every contender has answered


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_exactly_one_of_many_processes_takes_over_a_dead_lease(tmp_path):
    # main: read the lease, judge it stale, unlink, create: two processes could both unlink and both create
    # (seen 1 in 60 with two processes)
    ctx = mp.get_context("fork")
    winners = []
    for rnd in range(ROUNDS):
        run_dir = tmp_path / f"run{rnd}"
        run_dir.mkdir()
        stale = {"pid": _dead_pid(), "host": socket.gethostname(), "started": "earlier", "job": None}
        (run_dir / LEASE).write_text(json.dumps(stale))
        start, done, results = ctx.Barrier(PROCS), ctx.Event(), ctx.Queue()
        procs = [
            ctx.Process(target=_contend, args=(str(run_dir), start, results, done)) for _ in range(PROCS)
        ]
        for p in procs:
            p.start()
        try:
            answers = [results.get(timeout=60) for _ in procs]
        finally:
            done.set()
            for p in procs:
                p.join(30)
        got = [pid for pid, what in answers if what == "got"]
        assert len(got) == 1, f"round {rnd}: {len(got)} processes got the lease: {answers}"
        holder = json.loads((run_dir / LEASE).read_text())
        assert holder["pid"] == got[0]
        refused = [what for _, what in answers if what != "got"]
        assert all("in use by pid" in w or "could not take" in w for w in refused), refused
        assert sorted(os.listdir(run_dir)) == [LEASE]  # no claim or temp file left behind
        winners.append(got[0])
    assert len(winners) == ROUNDS

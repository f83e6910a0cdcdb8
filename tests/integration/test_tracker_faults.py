"""Trackers that misbehave, against the real MLflow server (issue 27, classes 1 and 5): a password in
MLFLOW_TRACKING_URI is never written or logged and does not make the server look unreachable; a server that
stops answering (SIGSTOP) is dropped with one warning while the step loop and metrics.jsonl go on."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.parse

import psutil

from tests.conftest import run_cli
from tests.helpers import read_metrics, read_summary

SECRET = "pw-Zq8x41secret"

FAULTY = [
    "data.name=tests.faultdata:Faulty",
    "model.name=mlp",
    "model.hidden=[16]",
    "train.batch_size=8",
    "log.progress=off",
    "log.plot=false",
    "log.tensorboard=false",
    "data.eval_fraction=0",
    "device=cpu",
]


def _files_under(root):
    for d, _, files in os.walk(root):
        for f in files:
            yield os.path.join(d, f)


def test_a_password_in_the_tracking_uri_is_never_written_and_the_probe_authenticates(mlflow_server, tmp_path):
    # main: the start-up probe (urllib) took "alice:pw@127.0.0.1" for a host name and dropped the server as
    # unreachable, and the URI with its password went to summary.json, logs/rank-0.log and the console
    u = urllib.parse.urlsplit(mlflow_server)
    uri = f"http://alice:{SECRET}@{u.netloc}"
    run_dir = tmp_path / "run"
    r = run_cli(
        ["train", *FAULTY, f"run.dir={run_dir}", "train.max_steps=8", "log.every_steps=4",
         "log.trackers=[mlflow]", "data.kwargs={n: 64}"],
        env={"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "redaction"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_summary(run_dir)["trackers"] == {"mlflow": "ok"}
    assert SECRET not in r.stdout + r.stderr
    leaked = [p for p in _files_under(run_dir) if SECRET.encode() in open(p, "rb").read()]
    assert leaked == [], leaked
    state = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    assert state["tracking_uri"] == f"http://alice:***@{u.netloc}"


def _tree(pid: int) -> list[psutil.Process]:
    p = psutil.Process(pid)
    return [p, *p.children(recursive=True)]


def _server_pid(url: str) -> int:
    port = urllib.parse.urlsplit(url).port
    for c in psutil.net_connections("tcp"):
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            top = psutil.Process(c.pid)
            while top.parent() is not None and "mlflow" in " ".join(top.parent().cmdline()):
                top = top.parent()
            return top.pid
    raise AssertionError(f"nothing listens on {url}")


def test_a_hung_mlflow_server_is_dropped_and_the_step_loop_never_waits(mlflow_server, tmp_path):
    # main: every metrics flush before a checkpoint waited for the writer thread, stuck in MLflow's client
    # (10 s timeout, 2 retries) for as long as the server was frozen: a save took 34.9 s instead of 0.16 s
    procs = _tree(_server_pid(mlflow_server))
    run_dir = tmp_path / "run"
    steps = 96  # 3 epochs of 32 steps; the server is frozen when epoch 1 starts
    try:
        t0 = time.monotonic()
        r = run_cli(
            ["train", *FAULTY, f"run.dir={run_dir}", f"train.max_steps={steps}", "log.every_steps=4",
             "checkpoint.every_steps=8", "log.trackers=[mlflow]", "log.tracker_timeout_s=2",
             "data.kwargs={n: 256, signal_at_epoch: 1, signal: SIGSTOP}"],
            env={
                "MLFLOW_TRACKING_URI": mlflow_server,
                "MLFLOW_EXPERIMENT_NAME": "hung",
                "FAULT_PIDS": ",".join(str(p.pid) for p in procs),
            },
        )  # fmt: skip
        wall = time.monotonic() - t0
        frozen = procs[0].status() == psutil.STATUS_STOPPED
    finally:
        for p in procs:
            p.send_signal(signal.SIGCONT)
    assert frozen, "the server was not frozen during the run"
    assert r.returncode == 0, r.stderr[-3000:]
    warn = [ln for ln in r.stderr.splitlines() if "mlflow" in ln.lower() and "dropped" in ln]
    assert len(warn) == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    rows = read_metrics(run_dir)
    assert [row["step"] for row in rows] == list(range(4, steps + 1, 4))  # every row, none lost
    after = [row["step_time_s"] for row in rows if row["step"] > 32]
    assert max(after) < 0.5, after  # no step (saves excluded, as step_time_s does) waited for the server
    summary = read_summary(run_dir)
    assert summary["trackers"]["mlflow"].startswith("dropped during the run"), summary["trackers"]
    print(
        f"run wall {wall:.1f}s; train wall {summary['wall_time_s']}s; max step after the freeze {max(after)}"
    )
    assert summary["wall_time_s"] < 20, summary["wall_time_s"]

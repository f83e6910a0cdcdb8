"""Helpers of the fault-injection tests: the tiny job, runs that may be killed, launches that may hang.

* ``run_forked`` runs the trainer in a fork of the test process (torch already imported: ~0.2 s instead of
  ~3 s for a fresh interpreter), so a SIGKILL from the checkpoint hook kills a real process, not the test.
* ``launch`` runs ``python -m launch ...`` and, if it overruns its timeout, kills the launcher and every
  worker it started (by pid; torchrun puts workers in sessions of their own) before failing the test.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest

from tests.conftest import ROOT
from tests.helpers import train_inprocess

# The tiny job of ../shared/PLATFORM.md habits: 14 steps of 32 on 461 training samples.
TINY = [
    "model.name=mlp",
    "model.hidden=[32]",
    "data.name=synthetic_classification",
    "data.num_samples=512",
    "data.num_features=8",
    "data.num_classes=4",
    "train.batch_size=32",
    "train.eval_every_steps=0",
    "train.deterministic=true",
    "optim.name=sgd",
    "optim.lr=0.1",
    "optim.momentum=0.9",
    "log.tensorboard=false",
    "log.plot=false",
    "log.progress=off",
    "device=cpu",
]
# The same with the fault-injecting model and the index-logging dataset (512 train samples: 16 steps/epoch).
FAULTY = [*TINY, "model.name=tests.faultmodels:FaultMLP", "data.name=tests.faultmodels:IndexLogged"]
# Small timeouts: a lost peer must fail the job in seconds, not in the default 10 minutes.
DIST = ["dist.init_timeout_s=60", "dist.collective_timeout_s=20"]


def _child(run_dir: str, overrides: list[str], env: dict) -> None:
    os.environ.update(env)
    code = 1
    try:
        code = train_inprocess(None, run_dir, overrides)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_forked(run_dir, overrides: list[str], env: dict | None = None, timeout: float = 60) -> int:
    """Exit code of the trainer run in a forked process (negative: killed by that signal)."""
    proc = multiprocessing.get_context("fork").Process(
        target=_child, args=(str(run_dir), overrides, env or {})
    )
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        pytest.fail(f"forked trainer run in {run_dir} did not finish within {timeout}s")
    return proc.exitcode


@dataclass
class Job:
    returncode: int
    stdout: str
    stderr: str


def job_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    for k in [k for k in env if k.startswith(("TORCHELASTIC_", "PET_", "TRAINER_TEST_"))]:
        del env[k]
    env.update(PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    env.update(extra or {})
    return env


def start(args: list[str], env: dict | None = None, module: str = "launch", **popen) -> subprocess.Popen:
    """``python -m MODULE ARGS`` with this test's environment (TMPDIR, threads) plus `env`."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=job_env(env), text=True, **popen
    )


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process we started and every descendant, by pid."""
    import psutil

    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        kids = []
    for p in [*kids, psutil.Process(proc.pid)] if proc.poll() is None else kids:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def launch(args: list[str], env: dict | None = None, timeout: float = 90) -> Job:
    """``python -m launch ARGS``; a run that overruns `timeout` is killed (with its workers) and fails."""
    proc = start(args, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        alive = _describe_tree(proc)
        kill_tree(proc)
        out, err = proc.communicate()
        pytest.fail(
            f"`launch {' '.join(args[:3])}` still running after {timeout}s ({alive}); killed.\n"
            f"stderr tail:\n{err[-4000:]}"
        )
    return Job(proc.returncode, out, err)


def _describe_tree(proc: subprocess.Popen) -> str:
    import psutil

    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
        return "alive: " + ", ".join(f"pid {k.pid} RANK={k.environ().get('RANK', '?')}" for k in kids)
    except psutil.Error:
        return "process tree unreadable"


def resumed_steps(run_dir) -> list[int]:
    """The step of every resume logged by rank 0 of this run dir, in order."""
    with open(os.path.join(run_dir, "logs", "rank-0.log"), encoding="utf-8") as fh:
        return [int(m) for m in re.findall(r"resumed from \S+ at step (\d+)", fh.read())]

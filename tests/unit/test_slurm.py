"""launch/slurm.sbatch run by bash under a simulated two-node allocation.

There is no Slurm here, so the test writes stand-ins for the three cluster binaries the script calls, each of
which records its argv: ``srun`` (runs the step's command once per node with the variables slurmd would set
for that task, or exits with a chosen code, or waits for SIGTERM like a training step), ``scancel`` (with
``--signal=TERM`` it delivers SIGTERM to the running step, as slurmd would) and ``scontrol``. The script's own
logic is what is tested: the mode, the launcher command, the signal forwarding, the requeue and its bound.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.unit.test_k8s import _tool

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "launch" / "slurm.sbatch"
JOB_ID = "4242"

FAKE_SRUN = f"""#!{sys.executable}
# Stand-in for srun: record argv, then run the step (FAKE_SRUN=run), exit with FAKE_SRUN_EXIT, or wait for
# SIGTERM and exit 75 like a preempted training step (FAKE_SRUN=wait-term).
import json, os, signal, subprocess, sys, time
log = os.environ["FAKE_LOG"]
argv = sys.argv[1:]
with open(os.path.join(log, "srun.jsonl"), "a") as f:
    f.write(json.dumps({{"argv": argv, "env": dict(os.environ)}}) + "\\n")
command = argv[next(i for i, a in enumerate(argv) if not a.startswith("--")):]
behaviour = os.environ.get("FAKE_SRUN", "run")
if behaviour == "wait-term":
    got = []
    signal.signal(signal.SIGTERM, lambda *_: got.append(1))
    with open(os.path.join(log, "srun.pid"), "w") as f:
        f.write(str(os.getpid()))
    deadline = time.time() + 30
    while not got and time.time() < deadline:
        time.sleep(0.02)
    sys.exit(75 if got else 1)
if behaviour == "exit":
    sys.exit(int(os.environ["FAKE_SRUN_EXIT"]))
n = int(os.environ["SLURM_NNODES"])
worst = 0
for node in range(n):  # what slurmd sets for task `node` of a one-task-per-node step
    env = dict(os.environ, SLURM_NODEID=str(node), SLURM_PROCID=str(node), SLURM_NTASKS=str(n),
               SLURM_STEP_NUM_NODES=str(n), SLURM_STEP_NODELIST=os.environ["SLURM_JOB_NODELIST"],
               SLURM_NODELIST=os.environ["SLURM_JOB_NODELIST"], SLURM_STEP_ID="0", SLURM_LOCALID="0")
    worst = max(worst, subprocess.run(command, env=env).returncode)
sys.exit(worst)
"""

FAKE_SCANCEL = f"""#!{sys.executable}
# Stand-in for scancel: record argv; --signal=TERM reaches the running step (slurmd's job), not the caller.
import json, os, signal, sys
log = os.environ["FAKE_LOG"]
with open(os.path.join(log, "scancel.jsonl"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if "--signal=TERM" in sys.argv[1:]:
    os.kill(int(open(os.path.join(log, "srun.pid")).read()), signal.SIGTERM)
"""

FAKE_SCONTROL = f"""#!{sys.executable}
# Stand-in for scontrol: record argv; `show job -o ID` prints the job's one-line record (FAKE_JOB_STATE).
import json, os, sys
with open(os.path.join(os.environ["FAKE_LOG"], "scontrol.jsonl"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:3] == ["show", "job"]:
    state = os.environ.get("FAKE_JOB_STATE", "RUNNING")
    print(f"JobId={{sys.argv[-1]}} JobName=train UserId=u(1000) Priority=1 JobState={{state}} Reason=None")
"""


@pytest.fixture
def slurm(tmp_path):
    """A fake-binary directory on PATH and the batch environment of a two-node allocation."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scancel", FAKE_SCANCEL), ("scontrol", FAKE_SCONTROL)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    log = tmp_path / "log"
    log.mkdir()
    env = {
        "PATH": os.pathsep.join([str(bindir), os.path.dirname(sys.executable), "/usr/bin", "/bin"]),
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "LANG": "C.UTF-8",
        "PYTHON": sys.executable,
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "FAKE_LOG": str(log),
        # what sbatch sets in the batch step (src/common/env.c)
        "SLURM_JOB_ID": JOB_ID,
        "SLURM_JOB_NAME": "train",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "gpu[01-02]",
        "SLURM_SUBMIT_DIR": str(ROOT),
    }
    return env, log


def _records(log: Path, name: str) -> list:
    path = log / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _requeues(log: Path) -> list:
    return [argv for argv in _records(log, "scontrol") if argv[0] == "requeue"]


def sbatch(env: dict, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SBATCH), *args],
        cwd=ROOT,
        env={**env, **extra},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "mode, extra", [("ddp", {}), ("fsdp", {"MODE": "fsdp"})], ids=["default-ddp", "fsdp"]
)
def test_each_node_runs_the_chosen_mode(slurm, mode, extra):
    """`MODE=fsdp sbatch launch/slurm.sbatch ...` (or `sbatch --export=ALL,MODE=fsdp`): one launcher per node
    in that mode; each node's plan (--dry-run, passed through) names it, its rank and node 0's endpoint."""
    env, log = slurm
    r = sbatch(env, "--dry-run", "-c", "configs/cnn.yaml", "train.max_steps=3", **extra)
    assert r.returncode == 0, r.stderr
    (srun,) = _records(log, "srun")
    assert srun["argv"] == [
        "--kill-on-bad-exit=1",
        "--ntasks-per-node=1",
        sys.executable,
        "-m",
        "launch",
        mode,
        "--nproc-per-node",
        "auto",
        "run.dir=runs/train",
        "--dry-run",
        "-c",
        "configs/cnn.yaml",
        "train.max_steps=3",
    ]
    plans = re.findall(
        r"^# (\w+): (\d) node\(s\) x \d process\(es\), node rank (\d), from (\S+)", r.stdout, re.M
    )
    assert plans == [(mode, "2", "0", "slurm"), (mode, "2", "1", "slurm")], r.stdout
    assert r.stdout.count("--rdzv-endpoint=gpu01:29500") == 2 and f"--rdzv-id={JOB_ID}" in r.stdout
    assert not _records(log, "scontrol")  # exit 0: nothing to requeue
    # `python -m launch env` in the step's environment shows the mode too.
    step_env = {**srun["env"], "SLURM_NODEID": "1", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}
    info = json.loads(
        subprocess.run(
            [sys.executable, "-m", "launch", "env", "--json"],
            cwd=ROOT,
            env=step_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    assert (info["mode"], info["origins"]["mode"], info["source"], info["node_rank"]) == (
        mode,
        "LAUNCH_MODE",
        "slurm",
        1,
    )
    assert srun["env"]["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "90"  # the checkpoint's time, under the 120 s


def test_exit_75_requeues_the_job(slurm):
    env, log = slurm
    r = sbatch(env, "-c", "configs/cnn.yaml", FAKE_SRUN="exit", FAKE_SRUN_EXIT="75")
    assert r.returncode == 75, r.stderr
    assert _records(log, "scontrol") == [["show", "job", "-o", JOB_ID], ["requeue", JOB_ID]]
    assert "requeueing (1 of 10)" in r.stderr


@pytest.mark.parametrize("state", ["COMPLETING", "REQUEUED"])
def test_exit_75_of_a_cancelled_or_slurm_requeued_job_is_not_requeued(slurm, state):
    """After `scancel` the job is COMPLETING when its steps get SIGTERM (and exit 75 with a checkpoint):
    requeueing would undo the cancel. After a preemption with PreemptMode=REQUEUE Slurm requeues it."""
    env, log = slurm
    r = sbatch(env, FAKE_SRUN="exit", FAKE_SRUN_EXIT="75", FAKE_JOB_STATE=state)
    assert r.returncode == 75 and not _requeues(log), r.stderr
    assert f"JobState={state}: Slurm is ending or requeueing the job; not requeued here" in r.stderr


@pytest.mark.parametrize("code", ["1", "2", "0"])
def test_other_exit_codes_do_not_requeue(slurm, code):
    env, log = slurm
    r = sbatch(env, "-c", "configs/cnn.yaml", FAKE_SRUN="exit", FAKE_SRUN_EXIT=code)
    assert r.returncode == int(code) and not _records(log, "scontrol"), r.stderr


def test_the_requeue_loop_is_bounded(slurm):
    env, log = slurm
    r = sbatch(env, FAKE_SRUN="exit", FAKE_SRUN_EXIT="75", SLURM_RESTART_COUNT="2", REQUEUE_MAX="3")
    assert r.returncode == 75 and _requeues(log) == [["requeue", JOB_ID]], r.stderr
    assert "requeueing (3 of 3)" in r.stderr
    (log / "scontrol.jsonl").unlink()
    r = sbatch(env, FAKE_SRUN="exit", FAKE_SRUN_EXIT="75", SLURM_RESTART_COUNT="3", REQUEUE_MAX="3")
    assert r.returncode == 75 and not _requeues(log)
    assert "already requeued 3 times (REQUEUE_MAX=3): stopping" in r.stderr


def test_sigterm_before_the_time_limit_reaches_the_step_which_checkpoints_and_requeues(slurm):
    """--signal=B:TERM@120 signals the batch shell only. The trap forwards it with `scancel --signal=TERM JOB`
    (every step, not the shell; a SIGTERM to srun itself would SIGKILL the tasks); the step exits 75 after
    its checkpoint; the job requeues."""
    env, log = slurm
    proc = subprocess.Popen(
        ["bash", str(SBATCH), "-c", "configs/cnn.yaml"],
        cwd=ROOT,
        env={**env, "FAKE_SRUN": "wait-term"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (log / "srun.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.02)  # the step is running (its pid is written once its handler is in place)
        assert (log / "srun.pid").exists(), proc.stderr.read() if proc.poll() is not None else "no step"
        proc.send_signal(signal.SIGTERM)  # to the batch shell only, as Slurm's B: does
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill() if proc.poll() is None else None
    assert proc.returncode == 75, err
    assert _records(log, "scancel") == [["--signal=TERM", JOB_ID]]
    assert _requeues(log) == [["requeue", JOB_ID]]
    assert "forwarding it to the job step" in err


@pytest.mark.parametrize(
    "extra, words",
    [
        ({"MODE": "deepspeed"}, "MODE='deepspeed': expected single"),
        ({"REQUEUE_MAX": "many"}, "REQUEUE_MAX='many'"),
    ],
)
def test_bad_settings_are_one_line_errors(slurm, extra, words):
    env, log = slurm
    r = sbatch(env, "-c", "configs/cnn.yaml", **extra)
    assert r.returncode == 2 and words in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not _records(log, "srun")


def test_script_asks_slurm_for_the_signal_and_requeue_and_is_shellcheck_clean():
    text = SBATCH.read_text()
    assert re.search(r"^#SBATCH --signal=B:TERM@120$", text, re.M)
    assert re.search(r"^#SBATCH --requeue$", text, re.M)
    r = subprocess.run([_tool("shellcheck"), str(SBATCH)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr

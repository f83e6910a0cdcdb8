"""Nothing is silently lost (issue 13, classes 2-7 and 11): damaged checkpoints, the run.dir lease, the
default run directory, storage faults, a kill after the final checkpoint, allowed config changes on resume
and log rows that line up after a resume.

Each case asserts the exit code, the one line that says why, what is left on disk, and that the previous
checkpoint still loads. Disk-full and read-only faults run in a private mount namespace (``unshare -m``: a
small tmpfs, a read-only bind mount; permission bits do not stop root, mounts do) and skip elsewhere.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys

import psutil
import pytest
import torch

import trainer.__main__ as cli
from tests.conftest import run_cli
from tests.faultutil import FAULTY, TINY, run_forked
from tests.helpers import FAST, read_metrics, read_summary, train_inprocess
from trainer import checkpoint as ckpt
from trainer import config as C
from trainer import exitcodes as codes
from trainer.api import train_command
from trainer.run import train
from trainer.runtime import io_faults
from trainer.training.loop import Trainer
from trainer.training.optim import lr_lambda

pytestmark = pytest.mark.timeout(120)

JOB = [*TINY, "checkpoint.every_steps=2", "checkpoint.keep=5"]


def outcome(run_dir, *overrides: str) -> tuple[int, str]:
    """What `python -m trainer train` would exit with, in-process: (code, one-line reason)."""
    cfg = C.load(None, [*FAST, *JOB, f"run.dir={run_dir}", *overrides])
    return train_command(cfg)


def step_dir(run_dir, step: int) -> str:
    return os.path.join(run_dir, "checkpoints", ckpt.step_name(step))


def assert_loads(path: str, step: int) -> None:
    state, _ = ckpt.load_state(path)
    assert state["progress"]["step"] == step
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def rank_log(run_dir) -> str:
    return open(os.path.join(run_dir, "logs", "rank-0.log"), encoding="utf-8").read()


@pytest.fixture
def four_steps(tmp_path):
    """A finished 4-step run with checkpoints at steps 2 and 4."""
    run_dir = tmp_path / "run"
    assert outcome(run_dir, "train.max_steps=4")[0] == codes.OK
    return run_dir


# ----------------------------------------------------------------------------- class 2: unusable checkpoints


def _flip(path: str) -> None:
    with open(path, "r+b") as fh:
        fh.seek(os.path.getsize(path) // 2)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0xFF]))


def _manifest(ckdir: str, edit) -> None:
    p = os.path.join(ckdir, ckpt.MANIFEST)
    with open(p, encoding="utf-8") as fh:
        m = json.load(fh)
    with open(p, "w", encoding="utf-8") as fh:
        json.dump(edit(m), fh)


def _refused_pickle(ckdir: str) -> None:
    """A state.pt whose checksum matches but which holds an object weights_only refuses."""
    p = os.path.join(ckdir, ckpt.STATE)
    torch.save({"model": argparse.Namespace(payload=1), "progress": {"step": 4}}, p)
    _manifest(
        ckdir,
        lambda m: {
            **m,
            "files": {**m["files"], ckpt.STATE: ckpt.file_checksum(p, m.get("checksum", "sha256"))},
        },
    )


def _latest(content: bytes):
    def damage(run_dir):
        with open(os.path.join(run_dir, "checkpoints", ckpt.LATEST), "wb") as fh:
            fh.write(content)

    return damage


DAMAGE = {  # name -> (damage(run_dir), step resumed from, problem named in the log)
    "files-empty": (
        lambda r: _manifest(step_dir(r, 4), lambda m: {**m, "files": {}}),
        2,
        "manifest lists no files",
    ),
    "files-list": (
        lambda r: _manifest(step_dir(r, 4), lambda m: {**m, "files": ["state.pt"]}),
        2,
        "manifest lists no files",
    ),
    "manifest-list": (lambda r: _manifest(step_dir(r, 4), lambda m: [m]), 2, "manifest is not a JSON object"),
    "file-outside": (
        lambda r: _manifest(step_dir(r, 4), lambda m: {**m, "files": {**m["files"], "../x": "0"}}),
        2,
        "outside the checkpoint",
    ),
    "refused-pickle": (lambda r: _refused_pickle(step_dir(r, 4)), 2, "state.pt refused"),
    "torn-state": (
        lambda r: _flip(os.path.join(step_dir(r, 4), ckpt.STATE)),
        2,
        "checksum mismatch in state.pt",
    ),
    "latest-binary": (_latest(b"\xff\xfe\x00step"), 4, "is unreadable"),
    "latest-absolute": (_latest(b"/etc\n"), 4, "outside"),
    "latest-out-of-run": (_latest(b"../../elsewhere\n"), 4, "outside"),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_an_unreadable_checkpoint_is_unusable_and_the_previous_one_is_used(four_steps, name):
    damage, resumed, problem = DAMAGE[name]
    damage(four_steps)
    code, reason = outcome(four_steps, "train.max_steps=6")
    assert code == codes.OK, reason
    log = rank_log(four_steps)
    assert problem in log, log[-3000:]
    assert f"resumed from {step_dir(four_steps, resumed)} at step {resumed}" in log
    if resumed == 2:  # the damaged one is kept aside, never deleted or overwritten by the new step 4
        assert os.path.isdir(os.path.join(four_steps, "checkpoints", "unusable-" + ckpt.step_name(4)))
    assert_loads(step_dir(four_steps, 6), 6)


def test_every_checkpoint_unusable_is_exit_2_and_they_are_kept_until_restart(four_steps):
    for step in (2, 4):
        _flip(os.path.join(step_dir(four_steps, step), ckpt.STATE))
    r = run_cli(["train", *FAST, *JOB, f"run.dir={four_steps}", "train.max_steps=6"], timeout=60)
    lines = [x for x in r.stderr.splitlines() if x.strip() and "trying the previous one" not in x]
    assert r.returncode == codes.CONFIG, r.stderr[-2000:]
    assert lines[-1].startswith("config error: run.dir=") and "no usable checkpoint" in lines[-1]
    assert "step-00000004: checksum mismatch in state.pt" in lines[-1] and "run.resume=restart" in lines[-1]
    assert "Traceback" not in r.stderr
    assert os.path.isdir(step_dir(four_steps, 2)) and os.path.isdir(
        step_dir(four_steps, 4)
    )  # nothing deleted

    code, reason = outcome(four_steps, "train.max_steps=6", "run.resume=restart")
    assert code == codes.OK, reason
    prev = [n for n in os.listdir(four_steps) if n.startswith("previous-")]
    assert len(prev) == 1 and sorted(os.listdir(os.path.join(four_steps, prev[0], "checkpoints"))) == [
        ckpt.LATEST,
        ckpt.step_name(2),
        ckpt.step_name(4),
    ]
    assert read_summary(four_steps)["steps"] == 6 and [r["step"] for r in read_metrics(four_steps)] == [6]


# ----------------------------------------------------------------------------- class 3: the run.dir lease


def _plant_lease(run_dir, **holder) -> None:
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, ".lease"), "w", encoding="utf-8") as fh:
        json.dump({"started": "2026-12-01T10:00:00+0000", "job": None, **holder}, fh)


@pytest.fixture
def live_pid():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_a_run_dir_in_use_is_refused_with_its_holder(tmp_path, live_pid):
    run_dir = tmp_path / "run"
    host = socket.gethostname()
    _plant_lease(run_dir, pid=live_pid, host=host, proc_start=psutil.Process(live_pid).create_time())
    code, reason = outcome(run_dir, "train.max_steps=2")
    assert code == codes.CONFIG
    assert f"in use by pid {live_pid} on {host} since 2026-12-01T10:00:00+0000" in reason
    assert sorted(os.listdir(run_dir)) == [".lease"]  # nothing written before the lease


def test_a_lease_from_another_host_is_refused_and_says_how_to_clear_it(tmp_path):
    run_dir = tmp_path / "run"
    _plant_lease(run_dir, pid=1234, host="node-7", job="job-a")
    code, reason = outcome(run_dir, "train.max_steps=2")
    assert code == codes.CONFIG and "in use by pid 1234 on node-7" in reason and "delete" in reason


@pytest.mark.parametrize("case", ["dead-process", "same-job-elsewhere"])
def test_a_stale_or_same_job_lease_is_taken_over(tmp_path, monkeypatch, case):
    run_dir = tmp_path / "run"
    if case == "dead-process":
        dead = subprocess.Popen(["true"])
        dead.wait()
        _plant_lease(run_dir, pid=dead.pid, host=socket.gethostname(), proc_start=1.0)
    else:  # an elastic restart put rank 0 on another node: the job id is the same
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-42")
        _plant_lease(run_dir, pid=1, host="node-0", job="job-42")
    assert outcome(run_dir, "train.max_steps=2")[0] == codes.OK
    log = rank_log(run_dir)
    assert ("stale lease" in log) if case == "dead-process" else ("taken over from pid 1 on node-0" in log)
    assert not os.path.exists(run_dir / ".lease")  # released at the end


def test_the_lease_is_released_after_a_failure_too(four_steps):
    for step in (2, 4):
        _flip(os.path.join(step_dir(four_steps, step), ckpt.STATE))
    assert outcome(four_steps, "train.max_steps=6")[0] == codes.CONFIG
    assert not os.path.exists(four_steps / ".lease")


# ----------------------------------------------------------------------------- class 4: rerun resumes


def test_the_same_command_resumes_with_the_default_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no run.dir: runs/<model>-<config key> under the working directory
    overrides = [*FAST, *JOB, "train.max_steps=6"]

    def same_command() -> int:
        return train_command(C.load(None, overrides))[0]

    killed = multiprocessing.get_context("fork").Process(target=lambda: os._exit(same_command()))
    monkeypatch.setenv("TRAINER_TEST_KILL_AT", "before_data:4")
    killed.start()
    killed.join(60)
    assert killed.exitcode == -signal.SIGKILL
    monkeypatch.delenv("TRAINER_TEST_KILL_AT")
    assert same_command() == codes.OK
    (run,) = os.listdir(tmp_path / "runs")  # one run, not a second timestamped one
    assert run.startswith("mlp-")
    assert f"resumed from runs/{run}/checkpoints/{ckpt.step_name(2)} at step 2" in rank_log(
        tmp_path / "runs" / run
    )
    assert read_summary(tmp_path / "runs" / run)["steps"] == 6


def test_preemption_prints_the_exact_command_that_resumes(tmp_path):
    run_dir = tmp_path / "run"
    args = [
        "train",
        *FAST,
        *FAULTY,
        "train.max_steps=8",
        "model.kwargs={sigterm_at: 3}",
        f"run.dir={run_dir}",
    ]
    r = run_cli(args, timeout=60)
    assert r.returncode == codes.PREEMPTED, r.stderr[-2000:]
    line = next(x for x in r.stderr.splitlines() if "resume with: " in x)
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[:4] == ["python", "-m", "trainer", "train"] and f"run.dir={run_dir}" in command
    ns, extra = cli._parser().parse_known_args(command[3:])  # exactly what was printed, parsed by the CLI
    assert not extra
    assert train_command(C.load(ns.config, ns.overrides))[0] == codes.OK
    assert "resumed from" in rank_log(run_dir) and read_summary(run_dir)["steps"] == 8


# ----------------------------------------------------------------------------- class 5: storage faults

CLONE_NEWNS = 0x00020000


def _ns_child(scenario, tmp_path) -> None:
    """In a fork: a private mount namespace (mounts vanish with it), then the scenario, its result as JSON."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        os._exit(97)
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    result = scenario(tmp_path)
    (tmp_path / "result.json").write_text(json.dumps(result))
    sys.stderr.flush()
    os._exit(0)


def _mount_ns_refused() -> str | None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return "needs root and mount(8) for a private mount namespace"
    r = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True, text=True
    )
    return None if r.returncode == 0 else f"no private mount namespace here: {r.stderr.strip()[:200]}"


needs_mounts = pytest.mark.skipif(_mount_ns_refused() is not None, reason=str(_mount_ns_refused()))

BIG = [*JOB, "model.hidden=[512]"]  # a ~60 kB checkpoint: more than the space left, unlike a log line


def in_mount_namespace(scenario, tmp_path) -> dict:
    proc = multiprocessing.get_context("fork").Process(target=_ns_child, args=(scenario, tmp_path))
    proc.start()
    proc.join(100)
    if proc.is_alive():
        proc.kill()
        pytest.fail("the storage scenario did not finish in 100 s")
    assert proc.exitcode == 0, f"scenario failed ({proc.exitcode}); see the test's stderr"
    return json.loads((tmp_path / "result.json").read_text())


def step(run_dir, err_file, *overrides: str) -> int:
    """One `python -m trainer train` in this process, its console (stderr) captured in `err_file`."""
    saved, sys.stderr = sys.stderr, open(err_file, "w", encoding="utf-8", buffering=1)
    try:
        return train_command(C.load(None, [*FAST, *BIG, f"run.dir={run_dir}", *overrides]))[0]
    finally:
        sys.stderr.close()
        sys.stderr = saved


def _disk_full(tmp):
    disk = tmp / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    out = {"first": step(disk / "run", tmp / "first.err", "train.max_steps=4")}
    st = os.statvfs(disk)  # leave 12 pages: room for the lease, config and log lines, not for a checkpoint
    (disk / "fill").write_bytes(b"x" * ((st.f_bavail - 12) * st.f_frsize))
    out["full"] = step(disk / "run", tmp / "full.err", "train.max_steps=8")
    shutil.copytree(disk / "run", tmp / "after-full", symlinks=True)
    os.remove(disk / "fill")
    out["again"] = step(disk / "run", tmp / "again.err", "train.max_steps=8")
    shutil.copytree(disk / "run", tmp / "final", symlinks=True)
    return out


@needs_mounts
def test_disk_full_during_a_checkpoint_is_exit_74_and_the_same_command_resumes(tmp_path):
    res = in_mount_namespace(_disk_full, tmp_path)
    assert res == {"first": 0, "full": codes.STORAGE, "again": 0}, (tmp_path / "full.err").read_text()[-2000:]
    err = (tmp_path / "full.err").read_text()
    last = [x for x in err.splitlines() if x.strip()][-1]
    assert last.startswith("storage error: disk full (No space left on device)"), err[-2000:]
    assert "checkpoint step 6" in last and "step-00000004 is intact" in last and "rerun" in last
    assert "Traceback" not in err
    after = tmp_path / "after-full"
    assert sorted(os.listdir(after / "checkpoints")) == [ckpt.LATEST, ckpt.step_name(2), ckpt.step_name(4)]
    assert_loads(step_dir(after, 4), 4)  # the previous checkpoint, intact; no half-written directory
    assert not (after / ".lease").exists()
    assert (
        f"resumed from {tmp_path}/disk/run/checkpoints/{ckpt.step_name(4)}"
        in (tmp_path / "again.err").read_text()
    )
    assert read_summary(tmp_path / "final")["steps"] == 8


def _read_only(tmp):
    disk = tmp / "disk"
    disk.mkdir()
    out = {"first": step(disk / "run", tmp / "first.err", "train.max_steps=4")}
    subprocess.run(["mount", "--bind", str(disk), str(disk)], check=True)
    subprocess.run(["mount", "-o", "remount,ro,bind", str(disk)], check=True)
    out["ro"] = step(disk / "run", tmp / "ro.err", "train.max_steps=6")
    subprocess.run(["mount", "-o", "remount,rw,bind", str(disk)], check=True)
    out["again"] = step(disk / "run", tmp / "again.err", "train.max_steps=6")
    return out


@needs_mounts
def test_a_read_only_run_dir_is_exit_74_and_resumes_once_writable(tmp_path):
    res = in_mount_namespace(_read_only, tmp_path)
    assert res == {"first": 0, "ro": codes.STORAGE, "again": 0}, (tmp_path / "ro.err").read_text()[-2000:]
    lines = [x for x in (tmp_path / "ro.err").read_text().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("storage error: read-only file system"), lines
    assert f"{tmp_path}/disk/run" in lines[0]
    assert "resumed from" in (tmp_path / "again.err").read_text()
    assert_loads(step_dir(tmp_path / "disk" / "run", 6), 6)


@pytest.mark.parametrize("case", ["name-too-long", "is-a-file", "foreign-folder"])
def test_a_run_dir_that_cannot_be_ours_is_one_line(tmp_path, case):
    run_dir = tmp_path / "run"
    if case == "name-too-long":
        run_dir = tmp_path / ("x" * 300)
    elif case == "is-a-file":
        run_dir.write_text("not a folder")
    else:
        run_dir.mkdir()
        (run_dir / "thesis.tex").write_text("precious")
    code, reason = outcome(run_dir, "train.max_steps=2")
    want = {
        "name-too-long": (codes.STORAGE, "storage error: file name too long"),
        "is-a-file": (codes.CONFIG, "is a file, expected a directory"),
        "foreign-folder": (codes.CONFIG, "not empty and not a run directory"),
    }[case]
    assert code == want[0] and want[1] in reason and "\n" not in reason, reason
    if case == "foreign-folder":
        assert sorted(os.listdir(run_dir)) == ["thesis.tex"]


class _DeletesRunDir(Trainer):
    def _after_step(self) -> int:
        if self.progress.step == 3:
            shutil.rmtree(self.run_dir)
        return super()._after_step()


def test_a_run_dir_deleted_while_training_is_detected_not_recreated(tmp_path):
    run_dir = tmp_path / "run"
    cfg = C.load(None, [*FAST, *JOB, f"run.dir={run_dir}", "train.max_steps=8", "log.every_steps=5"])
    with pytest.raises(io_faults.StorageError) as e:
        train(cfg, _DeletesRunDir)
    assert str(e.value) == f"storage error: run.dir {str(run_dir)!r} was deleted or replaced while training"
    assert not run_dir.exists()


# ----------------------------------------------------------------------------- class 6: kill after the end


def test_a_kill_after_the_final_checkpoint_loses_no_output(four_steps):
    summary = read_summary(four_steps)
    for name in ("summary.json", "model.safetensors"):
        os.remove(four_steps / name)
    code, _ = outcome(four_steps, "train.max_steps=4", "log.plot=true")
    assert code == codes.OK
    assert "regenerating summary.json, loss.png" in rank_log(four_steps)
    again = read_summary(four_steps)
    assert (again["steps"], again["final_loss"], again["eval"]) == (
        summary["steps"],
        summary["final_loss"],
        summary["eval"],
    )
    assert (four_steps / "loss.png").exists() and (four_steps / "model.safetensors").exists()


# ----------------------------------------------------------------------------- class 7: config change


def _lrs(run_dir) -> dict[int, float]:
    return {r["step"]: r["lr"] for r in read_metrics(run_dir)}


def test_an_allowed_lr_change_takes_effect_and_the_log_says_so(four_steps):
    code, reason = outcome(
        four_steps,
        "train.max_steps=6",
        "optim.lr=0.01",
        "log.every_steps=1",
        "run.resume_config_change=allow",
    )
    assert code == codes.OK, reason
    assert _lrs(four_steps)[5] == pytest.approx(0.01) and _lrs(four_steps)[6] == pytest.approx(0.01)
    assert "config change on resume: optim.lr 0.1 -> 0.01 (takes effect" in rank_log(four_steps)


def test_a_longer_cosine_schedule_is_re_stretched_knowingly(tmp_path):
    run_dir = tmp_path / "run"
    cos = ["optim.schedule=cosine", "log.every_steps=1"]
    assert outcome(run_dir, "train.max_steps=4", *cos)[0] == codes.OK
    assert outcome(run_dir, "train.max_steps=8", *cos)[0] == codes.OK
    cfg = C.load(None, [*JOB, "train.max_steps=8", *cos])
    f = lr_lambda(cfg, 8)
    assert _lrs(run_dir)[5] == pytest.approx(0.1 * f(5), rel=1e-5)  # the step after the resume: new schedule
    log = rank_log(run_dir)
    assert "config change on resume: train.max_steps 4 -> 8 (takes effect" in log
    assert "learning rate at the resumed step" in log


@pytest.mark.parametrize("change", ["model.hidden=[64]", "optim.name=adam", "seed=3"])
def test_a_change_that_cannot_take_effect_is_refused(four_steps, change):
    code, reason = outcome(four_steps, "train.max_steps=6", change, "run.resume_config_change=allow")
    assert code == codes.CONFIG and "cannot change on resume" in reason and change.split("=")[0] in reason
    assert_loads(step_dir(four_steps, 4), 4)


# ----------------------------------------------------------------------------- class 11: rows after a resume


def test_a_resumed_run_logs_the_same_rows_and_summary_as_an_uninterrupted_one(tmp_path):
    steps = [
        "train.max_steps=14",
        "log.every_steps=5",
        "checkpoint.every_steps=3",
        "train.deterministic=true",
    ]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert train_inprocess(None, ref, [*TINY, *steps]) == 0
    code = run_forked(cut, [*TINY, *steps], env={"TRAINER_TEST_KILL_AT": "before_data:9"})
    assert code == -signal.SIGKILL
    assert train_inprocess(None, cut, [*TINY, *steps]) == 0  # resumes at step 6, mid-window
    assert "at step 6" in rank_log(cut)

    def rows(d):
        return [(r["step"], r["epoch"], r["loss"], r["lr"]) for r in read_metrics(d)]

    assert rows(cut) == rows(ref) and [r[0] for r in rows(ref)] == [5, 10, 14]
    assert read_summary(cut)["final_loss"] == read_summary(ref)["final_loss"]

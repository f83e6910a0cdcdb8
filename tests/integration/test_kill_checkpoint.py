"""kill -9 at every instrumented phase of a checkpoint write: 20 real kills, the latest checkpoint always
loads.

The hook ``TRAINER_TEST_KILL_AT=PHASE:STEP:RANK`` (trainer/checkpoint.py) SIGKILLs the process at PHASE of the
save at STEP on RANK. Four phases (before_data, mid_file, before_rename, before_latest) times five variations:

* one process, in a fork of the test process (a real SIGKILL of a real process, without ~3 s of interpreter
  start-up per kill): the first save (nothing to fall back to), a periodic save, the final save, and an async
  save with keep=1 (the only older checkpoint must survive the crash); 16 kills;
* two processes under ``python -m launch ddp``: one kill per phase, chained in one job that is restarted
  with the same command after each kill (rank 1 at before_data, rank 0 elsewhere: the later phases run only
  on rank 0); 4 kills.

After each kill: the files on disk show the write stopped at that phase (so the hook really fired there),
``checkpoint.resolve`` + ``load_state`` give the checkpoint that `latest` promised, and the same command
resumes from exactly that step and completes; one-process restarts end bitwise equal to an uninterrupted run.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.faultutil import DIST, TINY, launch, resumed_steps, run_forked
from tests.helpers import final_weights, train_inprocess
from trainer import checkpoint as ckpt

PHASES = ["before_data", "mid_file", "before_rename", "before_latest"]
EVERY = 4
JOB = [
    *TINY,
    "train.max_steps=12",
    f"checkpoint.every_steps={EVERY}",
    "checkpoint.keep=2",
    "log.every_steps=4",
]
VARIANTS = {  # name -> (step of the killed save, extra overrides)
    "first_save": (4, []),
    "periodic": (8, []),
    "final_save": (12, []),
    "async_keep1": (8, ["checkpoint.async_save=true", "checkpoint.keep=1"]),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("kill-ref") / "run"
    assert train_inprocess(None, run_dir, JOB) == 0
    return run_dir


def expected_resume(phase: str, step: int) -> int:
    """The step a restart must resume from after a kill at `phase` of the save at `step`."""
    if phase == "before_latest" and step == EVERY:
        return step  # renamed into place but no `latest` yet: the newest committed checkpoint is used
    return step - EVERY  # `latest` still names the previous save (0: none, start afresh)


def assert_stopped_at(phase: str, root: str, step: int, killed_rank: int = 0, world: int = 1) -> None:
    """The files left behind match a write interrupted at `phase`: evidence that the hook fired there."""
    tmp = os.path.join(root, ".tmp-" + ckpt.step_name(step))
    final = os.path.join(root, ckpt.step_name(step))
    if phase == "before_latest":
        assert not os.path.exists(tmp) and ckpt.verify(final) is None, os.listdir(root)
        latest = ckpt.CheckpointDir(root).latest_pointer()
        assert latest != final, "the kill came after `latest` moved"
        return
    assert os.path.isdir(tmp) and not os.path.exists(final), os.listdir(root)
    files = set(os.listdir(tmp))
    if phase == "before_data":
        assert f"rng-rank{killed_rank:05d}.pt" not in files, files
    elif phase == "mid_file":
        size = os.path.getsize(os.path.join(tmp, "state.pt.tmp"))
        assert 0 < size < 1000 and "state.pt" not in files, (files, size)  # a complete state.pt is ~7 kB
    elif phase == "before_rename":
        assert ckpt.verify(tmp) is None  # complete and checksummed, but not committed: ignored
        assert files == {"manifest.json", "state.pt", *(f"rng-rank{r:05d}.pt" for r in range(world))}


def assert_latest_loads(run_dir, step: int) -> None:
    if step == 0:
        with pytest.raises(ckpt.CheckpointError):
            ckpt.resolve(str(run_dir))
        return
    path = ckpt.resolve(str(run_dir))
    assert os.path.basename(path) == ckpt.step_name(step)
    state, rng = ckpt.load_state(path)
    assert state["progress"]["step"] == step and rng is not None
    assert all(torch.isfinite(v).all() for v in state["model"].values())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("phase", PHASES)
def test_kill9_one_process(reference, tmp_path, phase, variant):
    step, extra = VARIANTS[variant]
    run_dir, overrides = tmp_path / "run", [*JOB, *extra]
    code = run_forked(run_dir, overrides, env={"TRAINER_TEST_KILL_AT": f"{phase}:{step}:0"})
    assert code == -9, f"expected a SIGKILL at {phase} of step {step}, the run exited with {code}"
    root = str(run_dir / "checkpoints")
    assert_stopped_at(phase, root, step)
    want = expected_resume(phase, step)
    assert_latest_loads(run_dir, want)
    if variant == "async_keep1" and want:
        assert ckpt.CheckpointDir(root).committed()[-1].endswith(ckpt.step_name(want))  # not pruned early

    assert train_inprocess(None, run_dir, overrides) == 0  # the same command, no hook
    assert resumed_steps(run_dir) == ([want] if want else [])
    a, b = final_weights(reference), final_weights(run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a), "the restarted run diverged from the uninterrupted one"
    assert not [n for n in os.listdir(root) if n.startswith(".tmp-")]
    assert os.path.basename(ckpt.resolve(str(run_dir))) == ckpt.step_name(12)


# (phase, step, rank) killed in turn; each restart resumes from what the previous kill left.
CHAIN = [("before_data", 8, 1), ("mid_file", 8, 0), ("before_rename", 12, 0), ("before_latest", 12, 0)]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_kill9_under_ddp_each_phase_then_the_same_command_completes(reference, tmp_path):
    run_dir = tmp_path / "run"
    cmd = ["ddp", "--nproc-per-node", "2", f"run.dir={run_dir}", *JOB, *DIST]
    root = str(run_dir / "checkpoints")
    resumes = []
    for phase, step, rank in CHAIN:
        job = launch(cmd, env={"TRAINER_TEST_KILL_AT": f"{phase}:{step}:{rank}"}, timeout=90)
        assert job.returncode != 0, f"the kill at {phase}:{step}:{rank} did not happen:\n{job.stderr[-3000:]}"
        assert_stopped_at(phase, root, step, killed_rank=rank, world=2)
        want = expected_resume(phase, step)
        assert_latest_loads(run_dir, want)
        resumes.append(want)
        assert resumed_steps(run_dir) == resumes[:-1]  # each restart resumed from what the last kill left
    job = launch(cmd, timeout=90)
    assert job.returncode == 0, job.stderr[-3000:]
    assert resumed_steps(run_dir) == resumes
    a, b = final_weights(reference), final_weights(run_dir)
    for k in a:  # 2 processes vs 1: the same math up to float reassociation
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), (k, (a[k] - b[k]).abs().max().item())
    assert not [n for n in os.listdir(root) if n.startswith(".tmp-")]

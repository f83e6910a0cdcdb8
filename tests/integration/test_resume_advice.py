"""A refused resume (#29 items 1 and 2) names every way out once, and each one works in one step: put the
old values back (adding run.resume_config_change=allow for the changes that can take effect), allow the
change, the exact command for a new run, or run.resume=restart. Each way is followed here, to the end."""

from __future__ import annotations

import os
import shlex
import shutil
import sys

import pytest

from tests.faultutil import TINY
from tests.helpers import FAST, read_summary
from trainer import config as C
from trainer import exitcodes as codes
from trainer.api import train_command

pytestmark = pytest.mark.timeout(120)

JOB = [*FAST, *TINY, "checkpoint.every_steps=2"]


def run(monkeypatch, overrides: list[str]) -> tuple[int, str]:
    """`python -m trainer train OVERRIDES`, in-process, with sys.argv as the real command has it (the
    messages quote it)."""
    monkeypatch.setattr(sys, "argv", ["trainer/__main__.py", "train", *overrides])
    return train_command(C.load(None, overrides))


@pytest.fixture
def base(tmp_path, monkeypatch):
    """A finished 4-step run."""
    monkeypatch.chdir(tmp_path)
    assert run(monkeypatch, [*JOB, "run.dir=base", "train.max_steps=4"])[0] == codes.OK
    return tmp_path


def ways(reason: str) -> list[str]:
    return reason.split("; choose one: ", 1)[1].split(" | ")


def follow(way: str, given: list[str]) -> list[str]:
    """The overrides after following one way out of the message."""
    if way.startswith("a new run: "):
        argv = shlex.split(way.removeprefix("a new run: "))
        assert argv[:4] == ["python", "-m", "trainer", "train"], way
        return argv[4:]
    if way.startswith("start over in "):
        assert way.split(": ", 1)[1].startswith("add run.resume=restart"), way
        return [*given, "run.resume=restart"]
    if way.startswith("continue it with the change"):
        assert "add run.resume_config_change=allow" in way, way
        return [*given, "run.resume_config_change=allow"]
    assert way.startswith("put back "), way
    back, _, extra = way.removeprefix("put back ").partition(" and add ")
    values = dict(kv.split("=", 1) for kv in back.split())
    out = [o for o in given if o.split("=", 1)[0] not in values] + [f"{k}={v}" for k, v in values.items()]
    return out + ([extra.split(" ", 1)[0]] if extra else [])


@pytest.mark.parametrize(
    "change, expect",
    [
        (["train.batch_size=16"], ["continue it", "put back train.batch_size=32", "a new run", "start over"]),
        (
            ["seed=3", "optim.lr=0.01"],
            ["put back seed=0 and add run.resume_config_change=allow", "a new run", "start over"],
        ),
        (
            ["model.hidden=[16]", "run.resume_config_change=allow"],
            ["put back model.hidden=[32]", "a new run", "start over"],
        ),
    ],
    ids=["batch-size-item-2", "seed-and-lr-item-1", "model-with-allow"],
)
def test_every_way_out_of_a_refused_resume_works_in_one_step(base, monkeypatch, change, expect):
    given = [*JOB, "train.max_steps=6", *change]
    code, reason = run(monkeypatch, [*given, "run.dir=base"])
    assert code == codes.CONFIG, reason
    got = ways(reason)
    assert [w for e in expect for w in got if w.startswith(e)] == got, reason  # each named, in this order
    assert reason.count("run.resume=restart") == 1 and reason.count("a new run:") == 1
    advice = " | ".join(w for w in got if not w.startswith("a new run"))  # not the user's own command
    assert advice.count("run.resume_config_change=allow") == (0 if "allow" in " ".join(change) else 1)
    for i, way in enumerate(got):
        here = f"copy{i}"
        shutil.copytree("base", here)
        overrides = follow(way, [*given, f"run.dir={here}"])
        code, why = run(monkeypatch, overrides)
        assert code == codes.OK, f"{way!r} did not work: {why}"
        run_dir = next(o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("run.dir="))
        assert read_summary(run_dir)["steps"] == 6
        if way.startswith("start over"):
            assert any(n.startswith("previous-") for n in os.listdir(here))
        if way.startswith("a new run"):
            assert run_dir == "base-2" and not os.path.exists(os.path.join("base", "previous"))
            shutil.rmtree(run_dir)

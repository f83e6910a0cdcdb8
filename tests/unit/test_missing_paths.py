"""A path that does not exist (#29 item 6): `--from runs/cnn --best` and its siblings say so and list the
run dirs that do exist, the closest first, instead of a misleading "needs a run dir"."""

from __future__ import annotations

import os

import pytest

from trainer.checkpoint.weights import best_checkpoint, read_weights
from trainer.config import ConfigError
from trainer.tools.compare import read_run


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, marker in (("cnn-1f2e3d4c5b6a", "config.yaml"), ("mlp-0a1b2c3d4e5f", "checkpoints")):
        (tmp_path / "runs" / name / marker).mkdir(parents=True)
    (tmp_path / "runs" / "notes").mkdir()  # not a run dir: never listed
    return tmp_path


@pytest.mark.parametrize(
    "call",
    [
        lambda p: best_checkpoint(p, "--from"),
        lambda p: read_weights(p, "--from"),
    ],
    ids=["--best", "--from"],
)
def test_from_a_missing_path_lists_the_run_dirs_that_exist(runs, call):
    with pytest.raises(ConfigError) as e:
        call("runs/cnn")
    msg = str(e.value)
    assert msg.startswith("--from='runs/cnn': does not exist (did you mean runs/cnn-1f2e3d4c5b6a?)")
    assert "run dirs in runs/:" in msg and "runs/mlp-0a1b2c3d4e5f" in msg and "notes" not in msg


def test_compare_and_a_path_with_no_run_dirs_near(runs):
    with pytest.raises(ConfigError, match=r"compare='runs/cnn': does not exist .*runs/cnn-1f2e3d4c5b6a"):
        read_run("runs/cnn")
    with pytest.raises(ConfigError) as e:
        best_checkpoint("/nonexistent-root/x", "--from")
    assert str(e.value) == "--from='/nonexistent-root/x': does not exist (no run dirs in /)"


def test_best_on_a_file_says_it_is_a_file(runs):
    (runs / "w.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="--best needs a run dir or checkpoints dir, not a file"):
        best_checkpoint("w.pt", "--from")


def test_run_resume_on_a_missing_path_lists_the_run_dirs(runs):
    from trainer import config as C

    with pytest.raises(ConfigError) as e:
        C.load(None, ["run.resume=runs/cnn"])
    assert str(e.value).endswith(
        "(did you mean runs/cnn-1f2e3d4c5b6a?); run dirs in runs/: "
        + ", ".join(
            sorted(["runs/cnn-1f2e3d4c5b6a", "runs/mlp-0a1b2c3d4e5f"], key=lambda p: -os.path.getmtime(p))
        )
    )

"""The real CLI on every recipe: what it writes, the digits accuracy, resume and its refusals."""

import json
import os

import pytest
import torch

from tests.conftest import run_cli
from tests.helpers import final_weights, read_metrics, read_summary

ROW_KEYS = {"step", "epoch", "loss", "lr", "samples_per_s", "step_time_s", "rss_mb", "cpu_percent"}


def test_make_train_recipe_reaches_95_percent_and_writes_every_output(cnn_run):
    run_dir, proc = cnn_run
    summary = read_summary(run_dir)
    assert summary["eval"]["accuracy"] >= 0.95, summary
    assert summary["steps"] == 264 and summary["epochs"] == 12
    assert {"steps", "final_loss", "eval", "wall_time_s"} <= summary.keys()
    rows = read_metrics(run_dir)
    assert rows and all(ROW_KEYS <= r.keys() for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"] / 10
    for f in ("config.yaml", "loss.png", "model.safetensors", "checkpoints/latest", "logs/rank-0.log"):
        assert os.path.isfile(run_dir / f), f
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(run_dir / "tensorboard"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")][-1] == 264
    assert "eval/accuracy" in events.Tags()["scalars"]
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    manifest = json.loads((run_dir / "checkpoints" / latest / "manifest.json").read_text())
    assert manifest["step"] == 264 and manifest["world_size"] == 1
    assert "done: 264 steps" in proc.stderr and "Traceback" not in proc.stderr
    weights = final_weights(run_dir)
    assert weights["fc1.weight"].shape == (128, 64 * 7 * 7)
    with open(run_dir / "loss.png", "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_rerun_of_a_finished_run_says_so_and_exits_0(cnn_run):
    run_dir, _ = cnn_run
    r = run_cli(["train", "-c", "configs/cnn.yaml", f"run.dir={run_dir}"])
    assert r.returncode == 0, r.stderr
    assert "run already complete: step 264 of 264" in r.stderr


@pytest.mark.parametrize(
    "recipe, extra, key",
    [
        ("linreg", ["train.epochs=1"], "mse"),
        ("mlp", ["train.max_steps=6"], "accuracy"),
        (
            "gpt",
            [
                "train.max_steps=4",
                "model.n_layer=1",
                "model.n_embd=32",
                "model.block_size=32",
                "data.max_bytes=200000",
                "train.batch_size=8",
            ],
            "perplexity",
        ),
    ],
)
def test_each_recipe_runs_through_the_cli(tmp_path, recipe, extra, key):
    run_dir = tmp_path / "run"
    r = run_cli(
        [
            "train",
            "-c",
            f"configs/{recipe}.yaml",
            f"run.dir={run_dir}",
            "log.every_steps=2",
            "log.tensorboard=false",
            *extra,
        ]
    )
    assert r.returncode == 0, r.stderr[-2000:]
    summary = read_summary(run_dir)
    assert key in summary["eval"] and summary["steps"] > 0
    rows = read_metrics(run_dir)
    assert all(ROW_KEYS <= r.keys() for r in rows)
    if recipe == "gpt":
        assert all("tokens_per_s" in r for r in rows)
    assert (run_dir / "config.yaml").is_file() and (run_dir / "model.safetensors").is_file()


def test_linreg_fits_the_synthetic_problem(tmp_path):
    r = run_cli(
        ["train", "-c", "configs/linreg.yaml", f"run.dir={tmp_path / 'run'}", "log.tensorboard=false"]
    )
    assert r.returncode == 0, r.stderr
    assert read_summary(tmp_path / "run")["eval"]["mse"] < 0.05


def test_resume_continues_bitwise_and_never_refuses(tmp_path):
    common = [
        "-c",
        "configs/cnn.yaml",
        "train.epochs=1",
        "train.eval_every_steps=0",
        "checkpoint.every_steps=5",
        "log.tensorboard=false",
        "log.plot=false",
        "train.deterministic=true",
    ]
    full, part = tmp_path / "full", tmp_path / "part"
    assert run_cli(["train", *common, f"run.dir={full}", "train.max_steps=12"]).returncode == 0
    r = run_cli(["train", *common, f"run.dir={part}", "train.max_steps=7"])
    assert r.returncode == 0
    r = run_cli(["train", *common, f"run.dir={part}", "train.max_steps=12"])
    assert r.returncode == 0 and "resumed from" in r.stderr and "at step 7" in r.stderr
    a, b = final_weights(full), final_weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
    r = run_cli(["train", *common, f"run.dir={part}", "run.resume=never"])
    assert r.returncode == 2 and "run.resume=never" in r.stderr


def test_resume_from_explicit_path_and_refuses_math_change(tmp_path):
    common = ["-c", "configs/cnn.yaml", "train.eval_every_steps=0", "log.tensorboard=false", "log.plot=false"]
    src = tmp_path / "src"
    assert run_cli(["train", *common, f"run.dir={src}", "train.max_steps=5"]).returncode == 0
    ck = src / "checkpoints" / "step-00000005"
    r = run_cli(["train", *common, f"run.dir={tmp_path / 'b'}", f"run.resume={ck}", "train.max_steps=8"])
    assert r.returncode == 0 and "at step 5" in r.stderr
    assert read_summary(tmp_path / "b")["steps"] == 8
    r = run_cli(
        [
            "train",
            *common,
            f"run.dir={tmp_path / 'c'}",
            f"run.resume={src}",
            "train.max_steps=8",
            "optim.lr=0.5",
        ]
    )
    assert r.returncode == 2 and "optim.lr" in r.stderr and "resume_config_change=allow" in r.stderr
    assert not (tmp_path / "c").exists()


def test_data_error_exits_2_and_leaves_no_run_dir(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,4\n")
    r = run_cli(
        [
            "train",
            "-c",
            "configs/mlp.yaml",
            "data.name=csv",
            f"data.path={bad}",
            "data.target=price",
            f"run.dir={tmp_path / 'run'}",
        ]
    )
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "data.target" in r.stderr
    assert not (tmp_path / "run").exists()

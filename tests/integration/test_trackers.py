"""Experiment trackers through the real CLI: a real MLflow server on loopback (params, metric history, resume
into the same MLflow run, a changed param as a tag), TensorBoard hparams written once, an unreachable
tracker, W&B offline. The MLflow server is one per session (tests/conftest.py ``mlflow_server``)."""

from __future__ import annotations

import glob
import json
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from tests.conftest import PY, ROOT, free_port, run_cli
from tests.helpers import read_summary

TINY = [
    "-c",
    "configs/cnn.yaml",
    "train.max_steps=20",
    "train.eval_every_steps=10",
    "log.progress=off",
    "log.plot=false",
    "data.eval_fraction=0.05",
]


def rest(url: str, path: str, **query) -> dict:
    with urllib.request.urlopen(
        f"{url}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}", timeout=30
    ) as r:
        return json.load(r)


def history(url: str, run_id: str, key: str) -> list[tuple[int, float]]:
    rows = rest(url, "metrics/get-history", run_id=run_id, metric_key=key).get("metrics", [])
    return sorted((int(m["step"]), m["value"]) for m in rows)


@pytest.fixture(scope="module")
def mlflow_run(mlflow_server, tmp_path_factory):
    """One run to step 20 with [tensorboard, mlflow], then resumed to step 30 with optim.lr changed."""
    run_dir = tmp_path_factory.mktemp("mlf") / "run"
    env = {"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_EXPERIMENT_NAME": "trainer-tests"}
    first = run_cli(["train", *TINY, f"run.dir={run_dir}", "log.trackers=[tensorboard,mlflow]"], env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = json.loads((run_dir / "trackers.json").read_text())["mlflow"]["run_id"]
    seen = {
        "run": rest(mlflow_server, "runs/get", run_id=run_id)["run"],
        "loss": history(mlflow_server, run_id, "train/loss"),
    }
    second = run_cli(
        [
            "train",
            *TINY,
            f"run.dir={run_dir}",
            "log.trackers=[tensorboard,mlflow]",
            "train.max_steps=30",
            "optim.lr=0.04",
            "run.resume_config_change=allow",
        ],
        env=env,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    return mlflow_server, run_dir, run_id, seen, second


def test_mlflow_gets_params_metrics_with_steps_system_stats_provenance_and_summary(mlflow_run):
    url, run_dir, run_id, seen, _ = mlflow_run
    run = seen["run"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert (
        params["optim.lr"] == "0.05" and params["train.batch_size"] == "64" and params["model.name"] == "cnn"
    )
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["provenance.world_size"] == "1" and "trainer train" in tags["provenance.command"]
    assert tags["provenance.versions.torch"].startswith("2.") and tags["provenance.hosts"]
    assert run["info"]["status"] == "FINISHED"
    assert [s for s, _ in seen["loss"]] == [10, 20]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in rows if not r.get("eval")}
    assert seen["loss"][0][1] == pytest.approx(train[10]["loss"], rel=1e-5)
    assert [s for s, _ in history(url, run_id, "eval/accuracy")][:2] == [10, 20]
    assert [s for s, _ in history(url, run_id, "system/rss_mb")][:2] == [10, 20]
    summ = read_summary(run_dir)
    assert summ["trackers"] == {"tensorboard": "ok", "mlflow": "ok"}
    assert history(url, run_id, "summary/steps")[-1] == (30, 30.0)


def test_resume_continues_the_same_mlflow_run_and_records_a_changed_param_as_a_tag(mlflow_run):
    url, run_dir, run_id, _, second = mlflow_run
    assert json.loads((run_dir / "trackers.json").read_text())["mlflow"]["run_id"] == run_id
    run = rest(url, "runs/get", run_id=run_id)["run"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert params["optim.lr"] == "0.05"  # immutable in MLflow: the first value stays ...
    assert tags["resumed_at_step_20.optim.lr"] == "0.04"  # ... and the new one is a tag
    assert [s for s, _ in history(url, run_id, "train/loss")] == [10, 20, 30]
    assert run["info"]["status"] == "FINISHED"


def test_tensorboard_gets_hparams_and_config_once_in_the_runs_own_event_files(mlflow_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir, _, _, _ = mlflow_run
    tb = run_dir / "tensorboard"
    assert [p.name for p in tb.iterdir() if p.is_dir()] == []  # no sub-run per resume (add_hparams makes one)
    plugins, texts, loss_steps = [], [], []
    for f in sorted(glob.glob(str(tb / "events.out.tfevents.*"))):
        acc = EventAccumulator(f, size_guidance={"tensors": 0, "scalars": 0})
        acc.Reload()
        try:
            plugins += acc.PluginTagToContent("hparams")
        except KeyError:  # the resumed run's event file: no hparams, as intended
            pass
        texts += acc.Tags()["tensors"]
        loss_steps += (
            [e.step for e in acc.Scalars("train/loss")] if "train/loss" in acc.Tags()["scalars"] else []
        )
    assert plugins.count("_hparams_/experiment") == 1 and plugins.count("_hparams_/session_start_info") == 1
    assert "config/text_summary" in texts
    assert sorted(loss_steps) == [10, 20, 30]


def test_unreachable_tracker_is_one_warning_and_the_run_trains_on(tmp_path):
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    r = run_cli(
        ["train", *TINY, f"run.dir={tmp_path / 'run'}", "log.trackers=[mlflow]", "train.max_steps=10"],
        env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    warn = [ln for ln in r.stderr.splitlines() if "mlflow" in ln]
    assert len(warn) == 1 and "cannot reach" in warn[0] and "training without it" in warn[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert read_summary(tmp_path / "run")["trackers"]["mlflow"].startswith("unreachable: cannot reach")
    assert time.monotonic() - t0 < 120


def test_the_loop_does_not_import_mlflow_or_wandb_unless_asked():
    r = subprocess.run(
        [
            PY,
            "-c",
            "import sys, trainer.run, trainer.training.loop; "
            "print(sorted(m for m in ('mlflow', 'wandb') if m in sys.modules))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr[-2000:]


def test_wandb_offline_run_starts_and_finishes_without_network(tmp_path):
    pytest.importorskip("wandb")
    r = run_cli(
        ["train", *TINY, f"run.dir={tmp_path / 'run'}", "log.trackers=[wandb]", "train.max_steps=10"],
        env={
            "WANDB_MODE": "offline",
            "WANDB_DIR": str(tmp_path / "wb"),
            "WANDB_SILENT": "true",
            "WANDB_CONFIG_DIR": str(tmp_path / "wbconfig"),
            "WANDB_CACHE_DIR": str(tmp_path / "wbcache"),
        },
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_summary(tmp_path / "run")["trackers"] == {"wandb": "ok"}
    run_id = json.loads((tmp_path / "run" / "trackers.json").read_text())["wandb"]["id"]
    assert glob.glob(str(tmp_path / "wb" / "wandb" / f"offline-run-*-{run_id}" / f"run-{run_id}.wandb"))

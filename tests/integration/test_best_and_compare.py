"""Best-K checkpoints, early stopping and `--best` on the digits CNN; `compare` on three runs."""

from __future__ import annotations

import argparse
import json

import pytest

from tests.conftest import run_cli
from tests.helpers import read_summary, train_inprocess
from trainer import checkpoint as ckpt
from trainer.checkpoint.weights import best_checkpoint, read_weights

CNN = ["train.max_steps=60", "train.eval_every_steps=10", "data.eval_fraction=0.1"]


def evals(run_dir) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r.get("eval")]


@pytest.fixture(scope="module")
def best_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("best") / "run"
    code = train_inprocess(
        "cnn", run_dir, [*CNN, "checkpoint.monitor=eval/loss", "checkpoint.keep_best=2", "checkpoint.keep=1"]
    )
    assert code == 0
    return run_dir


def test_keep_best_keeps_the_k_best_besides_the_latest_and_manifests_record_the_metric(best_run):
    rows = evals(best_run)
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
    best2 = {r["step"] for r in sorted(rows, key=lambda r: (r["loss"], r["step"]))[:2]}
    kept = {
        int(p.name.split("-")[1]) for p in (best_run / "checkpoints").iterdir() if p.name.startswith("step-")
    }
    assert kept == best2 | {60}, (kept, rows)
    for step in kept:
        mon = ckpt.read_manifest(str(best_run / "checkpoints" / ckpt.step_name(step)))["monitor"]
        assert mon["metric"] == "eval/loss" and mon["mode"] == "min"
        assert mon["value"] == pytest.approx(next(r["loss"] for r in rows if r["step"] == step), rel=1e-5)
    summ = read_summary(best_run)
    best = min(rows, key=lambda r: (r["loss"], r["step"]))
    assert summ["best"]["step"] == best["step"] and summ["best"]["checkpoint"].endswith(
        ckpt.step_name(best["step"])
    )


def test_best_flag_picks_the_best_checkpoint_for_export_and_eval(best_run, tmp_path):
    rows = evals(best_run)
    best = min(rows, key=lambda r: (r["loss"], r["step"]))["step"]
    assert best_checkpoint(str(best_run)).endswith(ckpt.step_name(best))
    out = tmp_path / "best.safetensors"
    r = run_cli(["export", "--from", str(best_run), "--best", "--out", str(out)])
    assert r.returncode == 0 and ckpt.step_name(best) in r.stdout, r.stderr[-2000:]
    from trainer.tools.evaluate import eval_main

    res = tmp_path / "eval.json"
    assert (
        eval_main(argparse.Namespace(src=str(best_run), best=True, config=None, overrides=[], json=str(res)))
        == 0
    )
    got = json.loads(res.read_text())
    assert ckpt.step_name(best) in got["source"]
    assert got["loss"] == pytest.approx(next(r["loss"] for r in rows if r["step"] == best), rel=1e-4)
    assert read_weights(str(out), "--from").state.keys()


def test_best_without_a_monitored_checkpoint_is_one_line_exit_2(tmp_path):
    assert train_inprocess("linreg", tmp_path / "run", ["train.max_steps=5"]) == 0
    r = run_cli(
        ["export", "--from", str(tmp_path / "run"), "--best", "--out", str(tmp_path / "x.safetensors")]
    )
    assert r.returncode == 2 and "checkpoint.monitor" in r.stderr and "Traceback" not in r.stderr


def test_early_stop_after_patience_evals_without_improvement_exits_0_and_says_so(tmp_path):
    run_dir = tmp_path / "run"
    # lr 0: the model never changes, so no evaluation after the first improves on it
    code = train_inprocess(
        "cnn",
        run_dir,
        [
            "train.max_steps=200",
            "train.eval_every_steps=5",
            "optim.lr=0.0",
            "checkpoint.monitor=eval/accuracy",
            "train.early_stop_patience=2",
        ],
    )
    assert code == 0
    summ = read_summary(run_dir)
    assert summ["steps"] == 15
    assert summ["early_stop"] == {
        "step": 15,
        "metric": "eval/accuracy",
        "patience": 2,
        "best": pytest.approx(summ["eval"]["accuracy"]),
        "best_step": 5,
    }
    log = (run_dir / "logs" / "rank-0.log").read_text()
    assert "early stop at step 15: eval/accuracy has not improved for 2 evaluations" in log
    assert (run_dir / "checkpoints" / ckpt.step_name(15)).is_dir()


@pytest.mark.parametrize(
    "override,needle",
    [
        ("checkpoint.keep_best=2", "needs checkpoint.monitor"),
        ("checkpoint.monitor=eval/f1", "expected one of eval/accuracy"),
        ("log.trackers=[neptune]", "unknown tracker 'neptune'"),
    ],
)
def test_bad_monitor_and_tracker_settings_are_one_line_exit_2(override, needle):
    r = run_cli(["check", "-c", "configs/cnn.yaml", override])
    assert r.returncode == 2 and needle in r.stderr, r.stderr


def test_compare_three_runs_writes_the_png_and_prints_config_differences_and_final_metrics(tmp_path):
    runs = []
    for lr in ("0.1", "0.05", "0.01"):
        d = tmp_path / f"lr-{lr}"
        assert (
            train_inprocess(
                None,
                d,
                [
                    "model.name=linreg",
                    "data.name=synthetic_regression",
                    "train.max_steps=20",
                    "train.eval_every_steps=10",
                    f"optim.lr={lr}",
                ],
            )
            == 0
        )
        runs.append(str(d))
    out = tmp_path / "cmp" / "compare.png"
    r = run_cli(["compare", *runs, "--metric", "eval/mse", "--out", str(out)])
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"
    diff = next(ln for ln in r.stdout.splitlines() if ln.startswith("optim.lr"))
    assert diff.split()[1:] == ["0.1", "0.05", "0.01"]
    assert "config differences (1 keys)" in r.stdout and "lower is better" in r.stdout
    for name in ("lr-0.1", "lr-0.05", "lr-0.01"):
        row = next(ln for ln in r.stdout.splitlines() if ln.startswith(name + " "))
        last_mse = [e for e in evals(tmp_path / name) if "mse" in e][-1]["mse"]
        assert row.split()[1] == "20" and f"{last_mse:.4f}" in row
    bad = run_cli(["compare", runs[0], str(tmp_path), "--out", str(out)])
    assert bad.returncode == 2 and "not a run dir" in bad.stderr

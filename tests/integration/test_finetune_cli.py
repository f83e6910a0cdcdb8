"""The CLI: pretrain -> fine-tune recipe -> eval -> export; compress quantize / prune with their reports; a
malicious pickle as init_from or --from is refused with one line and exit 2.

`train` runs as a real subprocess; eval / export / compress go through `trainer.__main__.main(argv)` in this
process (same argv parsing and dispatch, without paying ~3 s of interpreter and torch start-up each).
"""

from __future__ import annotations

import json
import os
import re

from tests.conftest import run_cli
from tests.helpers import FAST, read_summary, train_inprocess
from tests.unit.test_finetune import TINY, evil_file

ENV = {"OMP_NUM_THREADS": "2"}


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def tool(args: list[str], capfd) -> Result:
    """`python -m trainer eval|export|compress ARGS` in-process: exit code, stdout, stderr."""
    from trainer.__main__ import main

    capfd.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capfd.readouterr()
    return Result(code, out, err)


def test_pretrain_finetune_eval_export(tmp_path, capfd):
    pre, ft, out = tmp_path / "pre", tmp_path / "ft", tmp_path / "ft.safetensors"
    assert train_inprocess("cnn_pretrain", pre, ["train.max_steps=12", "train.eval_every_steps=0"]) == 0
    r = run_cli(
        [
            "train",
            "-c",
            "configs/finetune_cnn.yaml",
            f"run.dir={ft}",
            f"model.init_from={pre}",
            "train.max_steps=6",
            "train.eval_every_steps=0",
            *FAST,
        ],
        env=ENV,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "init_from: 6 tensors (420,352 parameters) from checkpoint" in r.stderr
    assert "fc2.weight re-initialised (model.init_skip)" in r.stderr
    assert "lr 0.01 for 'conv2': 18,496 parameters" in r.stderr
    assert re.search(r"conv1\s+0 / 320\s+trainable", r.stderr)  # train.freeze=[conv1]
    acc = read_summary(ft)["eval"]["accuracy"]
    # eval --from the run: the same number the run reported, on the recipe's eval split.
    r = tool(["eval", "--from", str(ft), "--json", str(tmp_path / "e.json")], capfd)
    assert r.returncode == 0, r.stderr
    assert f"accuracy {acc:.4f} on 359 samples" in r.stdout
    assert json.loads((tmp_path / "e.json").read_text())["accuracy"] == acc
    # export: one safetensors file that evaluates alike without a recipe (the config travels in metadata).
    r = tool(["export", "--from", str(ft), "--out", str(out)], capfd)
    assert r.returncode == 0 and out.is_file(), r.stderr
    r = tool(["eval", "--from", str(out), "data.classes=[0,1,2,3,4]"], capfd)
    assert r.returncode == 0 and "on 190 samples" in r.stdout, r.stderr


def test_compress_quantize_and_prune_report_before_and_after(cnn_run, tmp_path, capfd):
    run_dir, _ = cnn_run
    q = tmp_path / "q"
    r = tool(
        [
            "compress",
            "--from",
            str(run_dir),
            "--method",
            "quantize",
            "--scheme",
            "int8-dynamic,torch-ao-dynamic",
            "--out",
            str(q),
            "--repeats",
            "2",
        ],
        capfd,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((q / "report.json").read_text())
    base, *variants = rep["rows"]
    assert [v["variant"] for v in variants] == ["int8-dynamic", "torch-ao-dynamic"]
    for v in variants:
        assert abs(v["value"] - base["value"]) <= 0.01
        assert 3.8 < base["linear_weight_bytes"] / v["linear_weight_bytes"] <= 4.0
        assert v["size_bytes"] < base["size_bytes"] / 3 and (q / v["file"]).is_file()
        assert v["latency_ms"] > 0
    assert "linear W" in r.stdout and "int8-dynamic" in r.stdout and "ms/batch" in r.stdout
    r = tool(["eval", "--from", str(q / "model-int8-dynamic.pt")], capfd)
    assert r.returncode == 0 and f"accuracy {variants[0]['value']:.4f}" in r.stdout, r.stderr

    p = tmp_path / "p"
    r = tool(
        [
            "compress",
            "--from",
            str(run_dir),
            "--method",
            "prune",
            "--amount",
            "0.6",
            "--scope",
            "global",
            "--finetune-steps",
            "3",
            "--out",
            str(p),
            "--repeats",
            "2",
        ],
        capfd,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((p / "report.json").read_text())
    info = rep["prune"]
    assert info["zeros"] == info["expected_zeros"] == round(0.6 * info["total"])
    assert "requested 0.6000, achieved 0.6000" in r.stdout
    assert rep["rows"][1]["size_bytes"] == os.path.getsize(p / "model.safetensors")

    s = tmp_path / "s"
    r = tool(
        [
            "compress",
            "--from",
            str(run_dir),
            "--method",
            "prune",
            "--amount",
            "0.5",
            "--scope",
            "channel",
            "--out",
            str(s),
            "--repeats",
            "2",
        ],
        capfd,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    row = json.loads((s / "report.json").read_text())["rows"][1]
    assert row["params"] < 0.3 * 421_642 and row["size_bytes"] < 0.3 * rep["rows"][0]["size_bytes"]
    assert "conv1 32->16; conv2 64->32; fc1 128->64" in r.stdout
    r = tool(["eval", "--from", str(s)], capfd)
    assert r.returncode == 0 and f"accuracy {row['value']:.4f}" in r.stdout, r.stderr


def test_a_malicious_pickle_is_refused_with_one_line_and_exit_2(tmp_path, capfd):
    path, marker = evil_file(tmp_path)
    r = run_cli(["train", f"run.dir={tmp_path / 'run'}", f"model.init_from={path}", *TINY, *FAST], env=ENV)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1 and "refused" in lines[0] and "Traceback" not in r.stderr
    assert not os.path.exists(marker) and not (tmp_path / "run").exists()
    for cmd in (
        ["eval", "--from", path],
        ["export", "--from", path, "--out", str(tmp_path / "x.safetensors")],
    ):
        r = tool(cmd, capfd)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "refused" in r.stderr, r.stderr
    assert not os.path.exists(marker) and not (tmp_path / "x.safetensors").exists()

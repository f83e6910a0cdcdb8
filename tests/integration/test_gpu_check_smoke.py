"""The GPU check script runs every mode x precision row in its CPU smoke mode and writes its JSON."""

import json

import pytest

from bench import gpu_check

pytestmark = pytest.mark.slow


@pytest.mark.timeout(240)
def test_gpu_check_smoke_writes_every_row(tmp_path, capsys):
    assert gpu_check.main(["--smoke", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("gpu_check-*-smoke.json")
    result = json.loads(path.read_text())
    rows = result["rows"]
    modes = ("single", "dp", "ddp", "fsdp", "accelerate")
    assert sorted((r["recipe"], r["mode"], r["precision"]) for r in rows) == sorted(
        (rc, m, p) for rc in ("cnn", "gpt") for m in modes for p in ("bf16", "fp16", "fp32")
    )
    for r in rows:
        assert r["exit"] == 0 and r["step_ms"] > 0 and r["loss"] > 0, r
        # fp16 runs its GradScaler (torch.amp.GradScaler("cpu")) once per optimizer step under every mode,
        # accelerate included; the other precisions have none
        if r["precision"] == "fp16":
            assert r["grad_scaler_updates"] >= 2, r
        else:
            assert r["grad_scaler_updates"] == 0, r
    assert result["status"] == "done" and result["omp_num_threads"]
    assert result["wall_s"] < result["budget_s"]  # every row ran inside the budget: none skipped
    assert "ms/step" in capsys.readouterr().out

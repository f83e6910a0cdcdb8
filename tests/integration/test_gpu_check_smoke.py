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
    assert {(r["recipe"], r["mode"]) for r in rows} == {
        (rc, m) for rc in ("cnn", "gpt") for m in ("single", "dp", "ddp", "fsdp", "accelerate")
    }
    for r in rows:
        assert r["exit"] == 0 and r["step_ms"] > 0 and r["loss"] > 0
    assert "ms/step" in capsys.readouterr().out

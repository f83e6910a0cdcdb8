"""Issue #23, distributed parity: BatchNorm under ``launch ddp --nproc-per-node 2`` trains the model one
process trains (SyncBatchNorm, CPU/gloo included; ``train.sync_batchnorm=false`` shows the difference), and a
model with a parameter forward never uses is exit 2 naming ``train.find_unused_parameters=true`` (which then
trains). Real launcher, two tiny processes, OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import run_cli
from tests.distributed.test_equivalence import TINY, assert_close
from tests.helpers import final_weights

pytestmark = pytest.mark.slow

BN = [o for o in TINY if not o.startswith("model.")] + [
    "model.name=tests.byo_models:BNNet",
    "train.max_steps=8",
]


def launch(mode: str, run_dir, *args: str, extra=()):
    return run_cli(
        [mode, *args, f"run.dir={run_dir}", *extra],
        module="launch",
        timeout=150,
        env={"OMP_NUM_THREADS": "1"},
    )


def test_batchnorm_under_ddp_equals_one_process(tmp_path):
    one = launch("single", tmp_path / "one", extra=BN)
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch("ddp", tmp_path / "two", "--nproc-per-node", "2", extra=BN)
    assert two.returncode == 0, two.stderr[-3000:]
    log = (tmp_path / "two" / "logs" / "rank-0.log").read_text()
    assert "train.sync_batchnorm=auto: 1 BatchNorm layer(s) -> SyncBatchNorm" in log
    ref = final_weights(tmp_path / "one")
    assert "bn.running_mean" in ref and "bn.running_var" in ref  # the statistics match too
    assert_close(ref, final_weights(tmp_path / "two"))
    # per-process statistics (the old behaviour) train another model, and say so
    off = launch("ddp", tmp_path / "off", "--nproc-per-node", "2", extra=[*BN, "train.sync_batchnorm=false"])
    assert off.returncode == 0, off.stderr[-3000:]
    assert "keep per-process statistics" in (tmp_path / "off" / "logs" / "rank-0.log").read_text()
    w = final_weights(tmp_path / "off")
    assert not torch.allclose(w["fc1.weight"], ref["fc1.weight"], atol=1e-5)


def test_unused_parameters_are_exit_2_naming_the_key(tmp_path):
    over = [o for o in TINY if not o.startswith("model.")] + ["model.name=tests.byo_models:UnusedHead"]
    # found after the first backward, so even a one-step run fails (DDP's own error comes a step later)
    r = launch("ddp", tmp_path / "bad", "--nproc-per-node", "2", extra=[*over, "train.max_steps=1"])
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert (
        "ddp: 2 parameter(s) got no gradient in the first step (spare.weight, spare.bias): set " in r.stderr
    )
    assert "train.find_unused_parameters=true" in r.stderr and "Traceback" not in r.stderr
    ok = launch(
        "ddp", tmp_path / "ok", "--nproc-per-node", "2", extra=[*over, "train.find_unused_parameters=true"]
    )
    assert ok.returncode == 0, ok.stderr[-3000:]

"""FSDP checkpoints are sharded (DCP) and still serve every consumer: resume on 1 process, export,
init_from."""

import os

import pytest
import torch
from safetensors.torch import load_file

from tests.distributed.test_equivalence import TINY, assert_close, launch
from tests.helpers import final_weights, read_summary, train_inprocess
from trainer.__main__ import main as trainer_main

pytestmark = pytest.mark.slow


@pytest.mark.timeout(180)
def test_sharded_checkpoint_resume_export_and_init_from(tmp_path):
    run = tmp_path / "fsdp"
    launch("fsdp", run, "--nproc-per-node", "2", extra=["checkpoint.every_steps=6"])
    ck = run / "checkpoints" / "step-00000012"
    assert sorted(os.listdir(ck / "dcp")) == [".metadata", "__0_0.distcp", "__1_0.distcp"]

    out = tmp_path / "export.safetensors"
    with pytest.raises(SystemExit) as e:
        trainer_main(["export", "--from", str(ck), "--out", str(out)])
    assert e.value.code in (0, None)
    assert_close(load_file(str(out)), final_weights(run), tol=0)

    # Resume the sharded step-6 checkpoint on ONE process (DCP reshards) and finish: same as the 2-process
    # run.
    resumed = tmp_path / "resumed"
    over = [o for o in TINY if not o.startswith("device")] + [
        f"run.resume={run / 'checkpoints' / 'step-00000006'}"
    ]
    assert train_inprocess(None, resumed, over) == 0
    assert read_summary(resumed)["steps"] == 12
    assert_close(final_weights(run), final_weights(resumed))

    # init_from a sharded run dir: weights consolidated on the fly
    init = tmp_path / "init"
    over = [o for o in TINY if not o.startswith(("device", "train.max_steps"))]
    assert (
        train_inprocess(None, init, [*over, f"model.init_from={run}", "train.max_steps=1", "optim.lr=0"]) == 0
    )
    a, b = final_weights(run), final_weights(init)
    assert all(torch.equal(a[k], b[k]) for k in a)

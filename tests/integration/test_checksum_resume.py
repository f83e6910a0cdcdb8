"""Checkpoints written before xxh3 (sha256 digests, a manifest without a ``checksum`` key) still resume, and
to the same weights as an uninterrupted run; new ones record xxh3_128 (checkpoint.checksum selects sha256)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.helpers import final_weights, train_inprocess
from trainer import checkpoint as ckpt

OVER = [
    "train.max_steps=4",
    "checkpoint.every_steps=2",
    "train.eval_every_steps=0",
    "train.deterministic=true",
]


@pytest.mark.timeout(180)
def test_a_sha256_checkpoint_written_the_old_way_resumes_to_the_uninterrupted_weights(tmp_path):
    old, resumed = tmp_path / "old", tmp_path / "resumed"
    assert train_inprocess("mlp", old, [*OVER, "checkpoint.checksum=sha256"]) == 0
    step2 = old / "checkpoints" / ckpt.step_name(2)
    path = step2 / ckpt.MANIFEST
    manifest = json.loads(path.read_text())
    assert manifest.pop("checksum") == "sha256" and all(len(d) == 64 for d in manifest["files"].values())
    path.write_text(json.dumps(manifest))  # exactly the pre-xxh3 format
    assert train_inprocess("mlp", resumed, [*OVER, f"run.resume={step2}"]) == 0
    assert "resum" in (resumed / "logs" / "rank-0.log").read_text().lower()
    a, b = final_weights(old), final_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    new = ckpt.read_manifest(str(resumed / "checkpoints" / ckpt.step_name(4)))
    assert new["checksum"] == "xxh3_128"  # the default for what the resumed run writes
    assert os.path.basename(ckpt.resolve(str(resumed))) == ckpt.step_name(4)

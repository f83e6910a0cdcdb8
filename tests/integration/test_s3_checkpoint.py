"""Checkpoints on object storage (checkpoint.dir=s3://...) against a real S3 server on loopback (SeaweedFS).

The same guarantees as on disk, where S3 has no rename: files written in place under step-N/, the manifest
last, then `latest` in one PUT. kill -9 at instrumented points of an upload (a forked trainer, as in
test_kill_checkpoint.py), then the same command on a *fresh* local run.dir (a pod rescheduled on another
node) resumes from the bucket, keeps the run's history, and ends bitwise equal to an uninterrupted run.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.faultutil import TINY, resumed_steps, run_forked
from tests.helpers import final_weights, read_metrics, train_inprocess
from trainer.training import checkpoint as ckpt
from trainer.training import storage

EVERY = 4
JOB = [*TINY, "train.max_steps=12", f"checkpoint.every_steps={EVERY}", "checkpoint.keep=2", "log.every_steps=4"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("s3-ref") / "run"
    assert train_inprocess(None, run_dir, JOB) == 0
    return run_dir


def objects(fs, prefix: str) -> set[str]:
    return {p[len(prefix) + 1 :] for p in fs.find(prefix)}


def assert_equal_weights(a_dir, b_dir) -> None:
    a, b = final_weights(a_dir), final_weights(b_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "diverged from the reference"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("phase", ["mid_file", "before_manifest", "before_latest"])
def test_kill9_during_upload_leaves_previous_latest_and_a_fresh_node_resumes_bitwise(
    reference, s3, tmp_path, phase
):
    _, bucket, fs = s3  # bucket: "bucket/prefix", this test's own
    url = f"s3://{bucket}/job"
    overrides = [*JOB, f"checkpoint.dir={url}"]
    node_a = tmp_path / "node-a"
    code = run_forked(node_a, overrides, env={"TRAINER_TEST_KILL_AT": f"{phase}:8:0"})
    assert code == -9, f"expected a SIGKILL at {phase} of step 8, the run exited with {code}"

    # The bucket after the kill: `latest` still names step 4; step 8 is partial (or complete, manifest
    # and all, but unannounced); what a reader resumes from is step 4.
    left = objects(fs, f"{bucket}/job")
    assert fs.cat_file(f"{bucket}/job/latest").decode().strip() == ckpt.step_name(4)
    step8 = {n.split("/", 1)[1] for n in left if n.startswith(ckpt.step_name(8) + "/")}
    if phase == "mid_file":  # this rank's RNG is up, state.pt was being uploaded: not an object yet
        assert step8 == {"rng-rank00000.pt"}, left
    elif phase == "before_manifest":
        assert step8 == {"rng-rank00000.pt", "state.pt"}, left
    else:
        assert step8 == {"rng-rank00000.pt", "state.pt", "manifest.json"}, left
    assert ckpt.resolve(url) == f"{url}/{ckpt.step_name(4)}"
    assert {"metrics.jsonl", "config.yaml", "logs/rank-0.log"} <= left  # history copied at step 4

    # The same command on another node: an empty local run.dir, the same bucket.
    node_b = tmp_path / "node-b"
    assert train_inprocess(None, node_b, overrides) == 0
    assert resumed_steps(node_b) == [4]
    assert_equal_weights(reference, node_b)
    steps = [r["step"] for r in read_metrics(node_b)]
    assert steps == [4, 8, 12], steps  # node a's rows came with the history, node b appended its own

    final = objects(fs, f"{bucket}/job")
    assert sorted(n for n in {p.split("/")[0] for p in final} if n.startswith("step-")) == [
        ckpt.step_name(8),
        ckpt.step_name(12),
    ]  # checkpoint.keep=2, and no stale partial step left behind
    assert {"model.safetensors", "summary.json", "metrics.jsonl", "logs/rank-0.log"} <= final
    assert fs.cat_file(f"{bucket}/job/model.safetensors") == (node_b / "model.safetensors").read_bytes()
    manifest = json.loads(fs.cat_file(f"{bucket}/job/{ckpt.step_name(12)}/manifest.json"))
    assert set(manifest["files"]) == {"state.pt", "rng-rank00000.pt"}
    assert ckpt.verify(f"{url}/{ckpt.step_name(12)}") is None


@pytest.mark.timeout(60)
def test_async_save_to_s3_is_bitwise_equal_and_off_the_step_loop(reference, s3, tmp_path):
    _, bucket, fs = s3  # bucket: "bucket/prefix", this test's own
    run = tmp_path / "run"
    assert train_inprocess(None, run, [*JOB, f"checkpoint.dir=s3://{bucket}/a", "checkpoint.async_save=true"]) == 0
    assert_equal_weights(reference, run)
    text = (run / "logs" / "rank-0.log").read_text()
    assert "async write started" in text and "committed at step" in text
    assert fs.cat_file(f"{bucket}/a/latest").decode().strip() == ckpt.step_name(12)
    assert not (run / "checkpoints").exists()  # nothing written to the local disk's checkpoint dir


@pytest.mark.timeout(60)
def test_transient_errors_are_retried_and_a_failing_save_keeps_the_previous_checkpoint(s3, tmp_path, monkeypatch):
    _, bucket, _ = s3
    url = f"s3://{bucket}/t"
    monkeypatch.setattr(storage, "BACKOFF_S", 0.01)
    faults = {"n": 0}

    def flaky(op, path):  # the first two uploads of step 4's state.pt drop the connection
        if op == "write" and path.endswith(f"{ckpt.step_name(4)}/state.pt") and faults["n"] < 2:
            faults["n"] += 1
            raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(storage, "fault_hook", flaky)
    job = [*JOB, "train.max_steps=8", f"checkpoint.dir={url}"]
    assert train_inprocess(None, tmp_path / "ok", job) == 0
    assert faults["n"] == 2 and "retrying" in (tmp_path / "ok" / "logs" / "rank-0.log").read_text()

    def down(op, path):  # from step 12 on, every upload fails: retried, then the save fails
        if op == "write" and ckpt.step_name(12) in path:
            raise TimeoutError("read timeout")

    monkeypatch.setattr(storage, "fault_hook", down)
    with pytest.raises(OSError, match="read timeout"):
        train_inprocess(None, tmp_path / "ok", [*JOB, f"checkpoint.dir={url}"])
    assert ckpt.resolve(url) == f"{url}/{ckpt.step_name(8)}"  # the previous checkpoint, intact
    assert ckpt.verify(f"{url}/{ckpt.step_name(8)}") is None

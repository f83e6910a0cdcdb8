"""Checkpoints on object storage (checkpoint.dir=s3://...) against a real S3 server on loopback (SeaweedFS).

The same guarantees as on disk, where S3 has no rename: files written in place under step-N/, the manifest
last, then `latest` in one PUT. kill -9 at instrumented points of an upload (a forked trainer, as in
test_kill_checkpoint.py), then the same command on a *fresh* local run.dir (a pod rescheduled on another
node) resumes from the bucket, keeps the run's history, and ends bitwise equal to an uninterrupted run.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import free_port, run_cli
from tests.distributed.test_equivalence import TINY as EQ_TINY
from tests.distributed.test_equivalence import assert_close
from tests.distributed.test_equivalence import launch as eq_launch
from tests.faultutil import TINY, resumed_steps, run_forked
from tests.helpers import FAST, final_weights, read_metrics, train_inprocess
from tests.s3server import READER
from trainer import checkpoint as ckpt
from trainer import config as C
from trainer.__main__ import main as trainer_main
from trainer.api import train_command
from trainer.checkpoint import stores

EVERY = 4
JOB = [
    *TINY,
    "train.max_steps=12",
    f"checkpoint.every_steps={EVERY}",
    "checkpoint.keep=2",
    "log.every_steps=4",
]


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
    assert (
        train_inprocess(None, run, [*JOB, f"checkpoint.dir=s3://{bucket}/a", "checkpoint.async_save=true"])
        == 0
    )
    assert_equal_weights(reference, run)
    text = (run / "logs" / "rank-0.log").read_text()
    assert "async write started" in text and "committed at step" in text
    assert fs.cat_file(f"{bucket}/a/latest").decode().strip() == ckpt.step_name(12)
    assert not (run / "checkpoints").exists()  # nothing written to the local disk's checkpoint dir


@pytest.mark.timeout(60)
def test_transient_errors_are_retried_and_a_failing_save_keeps_the_previous_checkpoint(
    s3, tmp_path, monkeypatch
):
    _, bucket, _ = s3
    url = f"s3://{bucket}/t"
    monkeypatch.setattr(stores, "BACKOFF_S", 0.01)
    faults = {"n": 0}

    def flaky(op, path):  # the first two uploads of step 4's state.pt drop the connection
        if op == "write" and path.endswith(f"{ckpt.step_name(4)}/state.pt") and faults["n"] < 2:
            faults["n"] += 1
            raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(stores, "fault_hook", flaky)
    job = [*JOB, "train.max_steps=8", f"checkpoint.dir={url}"]
    assert train_inprocess(None, tmp_path / "ok", job) == 0
    assert faults["n"] == 2 and "retrying" in (tmp_path / "ok" / "logs" / "rank-0.log").read_text()

    def down(op, path):  # from step 12 on, every upload fails: retried, then the save fails
        if op == "write" and ckpt.step_name(12) in path:
            raise TimeoutError("read timeout")

    monkeypatch.setattr(stores, "fault_hook", down)
    cfg = C.load(None, [f"run.dir={tmp_path / 'ok'}", *FAST, *JOB, f"checkpoint.dir={url}"])
    code, reason = train_command(cfg)
    assert code == 74, (code, reason)  # a storage fault (docs/resume.md): fix it, rerun, it resumes
    assert "read timeout" in reason and "while writing checkpoint step 12" in reason, reason
    assert f"the previous checkpoint {url}/{ckpt.step_name(8)} is intact" in reason, reason
    assert ckpt.resolve(url) == f"{url}/{ckpt.step_name(8)}"  # the previous checkpoint, intact
    assert ckpt.verify(f"{url}/{ckpt.step_name(8)}") is None


# ----------------------------------------------------------------------------- errors: exit 2 before training


def _no_credentials(monkeypatch, server, prefix):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    return f"s3://{prefix}"


def _missing_bucket(monkeypatch, server, prefix):
    return "s3://no-such-bucket-here/run"


def _reader_only(monkeypatch, server, prefix):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", READER[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", READER[1])
    return f"s3://{prefix}"


def _bad_secret(monkeypatch, server, prefix):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    return f"s3://{prefix}"


def _unreachable(monkeypatch, server, prefix):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries: a test need not wait for them
    return f"s3://{prefix}"


ERRORS = {
    "no_credentials": (_no_credentials, "no credentials"),
    "bucket_missing": (_missing_bucket, "bucket 'no-such-bucket-here' does not exist"),
    "access_denied": (_reader_only, "access denied"),
    "bad_secret": (_bad_secret, "access denied (The request signature we calculated does not match"),
    "unreachable": (_unreachable, "endpoint unreachable: http://127.0.0.1:"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(ERRORS))
def test_storage_errors_are_one_line_exit_2_before_anything_is_written(s3, tmp_path, monkeypatch, case):
    server, prefix, _ = s3
    make, expected = ERRORS[case]
    monkeypatch.setattr(stores, "BACKOFF_S", 0.01)
    url = make(monkeypatch, server, prefix)
    cfg = C.load(None, [f"run.dir={tmp_path / 'run'}", *JOB, f"checkpoint.dir={url}"])
    code, reason = train_command(cfg)
    assert code == 2, (code, reason)
    assert reason.startswith(f"checkpoint.dir={url!r}: {expected}"), reason
    assert "\n" not in reason
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.timeout(60)
def test_cli_access_denied_exits_2_with_one_line(s3, tmp_path, monkeypatch):
    _, prefix, _ = s3
    env = {"AWS_ACCESS_KEY_ID": READER[0], "AWS_SECRET_ACCESS_KEY": READER[1]}
    r = run_cli(["train", f"run.dir={tmp_path / 'run'}", *JOB, f"checkpoint.dir=s3://{prefix}"], env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "Found credentials" not in ln]
    assert len(lines) == 1 and "access denied" in lines[0] and "Traceback" not in r.stderr, r.stderr


# ----------------------------------------------------------------------------- FSDP: sharded DCP on S3


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_fsdp_two_processes_sharded_checkpoints_in_the_bucket(s3, tmp_path):
    _, prefix, fs = s3
    url = f"s3://{prefix}"
    run = tmp_path / "fsdp"
    eq_launch(
        "fsdp", run, "--nproc-per-node", "2", extra=["checkpoint.every_steps=6", f"checkpoint.dir={url}"]
    )
    shards = objects(fs, f"{prefix}/{ckpt.step_name(12)}/dcp")
    assert shards == {".metadata", "__0_0.distcp", "__1_0.distcp"}, shards
    manifest = json.loads(fs.cat_file(f"{prefix}/{ckpt.step_name(12)}/manifest.json"))
    assert {"dcp/.metadata", "dcp/__0_0.distcp", "rng-rank00001.pt"} <= set(manifest["files"])
    assert {"logs/rank-0.log", "logs/rank-1.log", "model.safetensors"} <= objects(fs, prefix)

    # export consolidates the shards straight from the bucket (the restricted metadata unpickler)
    out = tmp_path / "export.safetensors"
    with pytest.raises(SystemExit) as e:
        trainer_main(["export", "--from", f"{url}/{ckpt.step_name(12)}", "--out", str(out)])
    assert e.value.code in (0, None)
    assert_close(load_file(str(out)), final_weights(run), tol=0)

    # resume the sharded step-6 checkpoint from the bucket on one process (DCP reshards) and finish
    resumed = tmp_path / "resumed"
    over = [o for o in EQ_TINY if not o.startswith("device")] + [f"run.resume={url}/{ckpt.step_name(6)}"]
    assert train_inprocess(None, resumed, over) == 0
    assert resumed_steps(resumed) == [6]
    assert_close(final_weights(run), final_weights(resumed))


# ----------------------------------------------------------------------------- the doctor


@pytest.mark.timeout(60)
def test_doctor_checks_the_bucket_is_reachable_and_writable(s3, tmp_path, monkeypatch):
    from launch import bucket, doctor

    server, prefix, fs = s3
    url = f"s3://{prefix}"
    checks = doctor.run_checks(
        env=dict(os.environ), run_dir=str(tmp_path), config_overrides=[f"checkpoint.dir={url}"]
    )
    by_name = {c.name: c for c in checks}
    assert by_name["checkpoint_dir"].status == "ok", by_name["checkpoint_dir"]
    assert by_name["shared_dir"].message == f"checkpoints in {url}: no shared volume needed"
    assert not [p for p in fs.find(prefix) if ".doctor-probe" in p]  # the probe object was removed

    reader = {**server.env(READER), "AWS_EC2_METADATA_DISABLED": "true"}
    status, message, fix = bucket.check_bucket(url, reader)
    assert status == "fail" and message.startswith(f"{url}: access denied") and "PutObject" in fix
    status, message, _ = bucket.check_bucket("s3://no-such-bucket-here/x", server.env())
    assert status == "fail" and "bucket 'no-such-bucket-here' does not exist" in message
    assert doctor.exit_code(checks) == 0

"""An object store that stops answering mid-run (issue 27, class 4), against a real SeaweedFS server of the
test's own: SIGSTOP (frozen: requests time out) or SIGKILL (gone: connections refused) right after the first
checkpoint. Each request has checkpoint.timeout_s, the documented retries follow, then exit 74 with one line;
nothing in the cleanup replaces that outcome, and `latest` still names the committed checkpoint."""

from __future__ import annotations

import signal
import time

import pytest

from tests import s3server
from tests.conftest import run_cli
from tests.s3server import BUCKET

TIMEOUT_S = 1.0
JOB = [
    "data.name=tests.faultdata:Faulty",
    "model.name=mlp",
    "model.hidden=[16]",
    "train.batch_size=8",
    "train.max_steps=40",  # 8 steps an epoch; the server is stopped when epoch 1 starts
    "log.every_steps=4",
    "checkpoint.every_steps=8",
    "log.progress=off",
    "log.plot=false",
    "log.tensorboard=false",
    "data.eval_fraction=0",
    "device=cpu",
    f"checkpoint.timeout_s={TIMEOUT_S}",
]


@pytest.fixture
def own_server(tmp_path):
    """A SeaweedFS server for this test alone (it is stopped or killed); ~10 s to start."""
    server = s3server.start(str(tmp_path / "s3"))
    try:
        yield server
    finally:
        server.proc.send_signal(signal.SIGCONT)
        server.stop(grace=0)


@pytest.mark.parametrize("how", ["SIGSTOP", "SIGKILL"])
def test_a_frozen_or_killed_endpoint_is_exit_74_in_bounded_time(own_server, tmp_path, how):
    # main: SIGSTOP hung the run for as long as the server was frozen (s3fs 5 x botocore 5 x our 5 attempts
    # of a 15 s read timeout: ~30 min); SIGKILL was exit 1, the failure handler's own EndpointConnectionError
    prefix = f"{BUCKET}/down-{how.lower()}"
    env = {**own_server.env(), "AWS_EC2_METADATA_DISABLED": "true", "FAULT_PIDS": str(own_server.proc.pid)}
    t0 = time.monotonic()
    r = run_cli(
        ["train", *JOB, f"run.dir={tmp_path / 'run'}", f"checkpoint.dir=s3://{prefix}",
         f"data.kwargs={{n: 64, signal_at_epoch: 1, signal: {how}}}"],
        env=env,
        timeout=240,
    )  # fmt: skip
    took = time.monotonic() - t0
    print(f"{how}: exit {r.returncode} after {took:.1f}s")
    assert r.returncode == 74, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("storage error:") and "checkpoint.timeout_s" in last, last
    assert "step 16" in last and "the previous checkpoint s3://" in last and "step-00000008 is intact" in last
    assert took < 120, took
    if how == "SIGSTOP":  # thawed: the committed checkpoint is still the one `latest` names
        own_server.proc.send_signal(signal.SIGCONT)
        fs = own_server.fs()
        assert fs.cat_file(f"{prefix}/latest").decode().strip() == "step-00000008"

"""Suite-wide habits (../shared/PLATFORM.md): thread counts, temp dirs and caches per test, free ports."""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


# Each test's TMPDIR is a short directory of its own under the system's: DataLoader workers make Unix sockets
# in it, whose paths may not pass 107 bytes, and a tmp_path under pytest-xdist's per-worker base is too deep.
SYSTEM_TMP = tempfile.gettempdir()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="t-", dir=SYSTEM_TMP))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setenv("HF_HOME", str(tmp / "hf"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp / "inductor"))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp / "mpl"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    for var in (
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "TORCHELASTIC_RESTART_COUNT",
        "TRAINER_EXIT_DIR",
    ):
        monkeypatch.delenv(var, raising=False)
    yield
    shutil.rmtree(tmp, ignore_errors=True)


# The tiers (docs/design.md "Tests"): tests/unit starts no server and trains nothing through the CLI, so that
# `make test-quick` (tests/unit, not marked slow) stays quick; these session fixtures belong to integration.
HEAVY_FIXTURES = {"cnn_run", "mlflow_server", "s3_server", "s3"}


# `make test` runs on two pytest-xdist workers with --dist loadfile: a module's tests stay together on one
# worker (module-scoped fixtures such as a reference run or the docs' scratch checkout are built once, and the
# tests keep their order). The longest modules start first, longest first, so that the many short ones fill
# in at the end and neither worker is left alone with a long one (seconds of one run, serial, idle, 2 cores).
# (xdist's loadgroup marks do nothing under pytest 9: they rename a node id attribute pytest 9 ignores.)
LONGEST = (
    "tests/integration/test_doc_examples.py",  # 216 s
    "tests/distributed/test_mesh.py",  # 116
    "tests/distributed/test_hang.py",  # 107
    "tests/integration/test_cli_recipes.py",  # 61
    "tests/integration/test_s3_endpoint_down.py",  # 48
    "tests/integration/test_kill_checkpoint.py",  # 43
    "tests/distributed/test_equivalence.py",  # 42
    "tests/distributed/test_launch_exitcodes.py",  # 38
    "tests/distributed/test_netns.py",  # 34
    "tests/integration/test_bench_smoke.py",  # 31
    "tests/distributed/test_stream_ddp.py",  # 31
    "tests/integration/test_gpu_check_smoke.py",  # 30
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        heavy = HEAVY_FIXTURES & set(getattr(item, "fixturenames", ()))
        if heavy and item.nodeid.startswith("tests/unit/"):
            raise pytest.UsageError(
                f"{item.nodeid} uses {', '.join(sorted(heavy))}: a unit test may not (tests/integration)"
            )
    rank = {path: i for i, path in enumerate(LONGEST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(LONGEST)))  # stable otherwise


def free_port() -> int:
    """A port that was free a moment ago (callers retry on EADDRINUSE)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(
    args: list[str], cwd: str = ROOT, env: dict | None = None, timeout: float = 180, module: str = "trainer"
) -> subprocess.CompletedProcess:
    """Run `python -m <module> ARGS` as a user would; never raises on a non-zero exit."""
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    e.update(env or {})
    return subprocess.run(
        [PY, "-m", module, *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def cnn_run(tmp_path_factory):
    """The `make train` recipe trained once per session through the real CLI; shared by tests."""
    run_dir = tmp_path_factory.mktemp("cnn") / "run"
    env = {"OMP_NUM_THREADS": "2", "MPLCONFIGDIR": str(run_dir.parent / "mpl")}
    r = run_cli(["train", "-c", "configs/cnn.yaml", f"run.dir={run_dir}"], env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir, r


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on loopback, once per session: sqlite backend, artifacts in the test's
    folder, a free port. Yields its URL; skipped when mlflow is not installed (`make setup` installs it)."""
    pytest.importorskip("mlflow")
    base = tmp_path_factory.mktemp("mlflow")
    log = open(base / "server.log", "w")
    for _attempt in range(3):  # retry on a port taken between free_port() and the bind
        port = free_port()
        proc = subprocess.Popen(
            [
                PY,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{base}/db.sqlite",
                "--artifacts-destination",
                str(base / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            cwd=str(base),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        deadline, healthy = time.monotonic() + 180, False  # ~10 s on a quiet machine, more under load
        while not healthy and time.monotonic() < deadline and proc.poll() is None:
            try:
                urllib.request.urlopen(url + "/health", timeout=2).close()
                healthy = True
            except OSError:
                time.sleep(0.5)
        if healthy:
            break
        proc.kill()
        proc.wait()
    else:
        pytest.fail(f"mlflow server did not start: {(base / 'server.log').read_text()[-2000:]}")
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(base / "artifacts", ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One SeaweedFS S3 server on loopback for the whole session (tests/s3server.py); ~10 s to start."""
    from tests import s3server

    server = s3server.start(str(tmp_path_factory.mktemp("s3")))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch, request):
    """The server's admin credentials in this test's environment, and a prefix of the session's bucket
    named after the test: (server, "bucket/prefix", s3fs filesystem)."""
    import hashlib
    import re

    from tests.s3server import BUCKET
    from trainer.checkpoint import stores

    monkeypatch.setattr(stores, "_REMOTE", {})  # a store made under another test's credentials is not reused
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role probe on a laptop/CI box
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())
    prefix = f"{BUCKET}/{name[:60].strip('-')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return s3_server, prefix, s3_server.fs()

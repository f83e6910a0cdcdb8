"""docker/entrypoint.sh run OUTSIDE Docker, under each simulated cluster environment.

The launcher only prints its plan (`--dry-run`), so each run takes a fraction of a second: the tests assert on
the torchrun command it would exec (nnodes, rendezvous endpoint) and on its plan header (node rank, source).
Non-zero nodes really wait: the rendezvous port is a socket this test listens on (the master's c10d store in
real life), or a name that never resolves to see the bounded timeout (exit 69). A stand-in interpreter shows
that the launcher replaces the shell (exec, same PID) and receives the SIGTERM sent to the entrypoint.
The real two-node training run through the entrypoint lives with the trainer's integration tests.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from launch.k8s import manifests
from launch.wait import UNAVAILABLE
from tests.unit.test_controllers import JOBS

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
CONFIG = ["-c", "configs/cnn.yaml"]

pytestmark = pytest.mark.timeout(120)


def _env(extra: dict | None = None) -> dict[str, str]:
    """A clean environment (no cluster variables leak in from the machine running the tests) + ``extra``."""
    env = {
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("TMPDIR", "/tmp"),
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
        "LANG": "C.UTF-8",
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
    }
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


def entrypoint(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ENTRYPOINT), *args],
        cwd=ROOT,
        env=_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        ["bash", str(ENTRYPOINT), *args],
        cwd=ROOT,
        env=_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_until(stream, pattern: str, timeout: float = 30) -> str:
    """What ``stream`` printed up to ``pattern`` (a deterministic point, not a sleep).

    Reads the raw descriptor: select() cannot see lines already sitting in a TextIOWrapper's buffer.
    """
    fd, seen, deadline = stream.fileno(), b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        seen += chunk
        text = seen.decode(errors="replace")
        if re.search(pattern, text, re.M):
            return text
    raise AssertionError(
        f"no line matching {pattern!r} within {timeout} s; got:\n{seen.decode(errors='replace')}"
    )


class Plan:
    """What `python -m launch MODE --dry-run` printed: its header and the torchrun command."""

    def __init__(self, proc: subprocess.CompletedProcess):
        assert proc.returncode == 0, proc.stderr
        head = re.search(
            r"^# (\w+): (\d+) node\(s\) x (\d+) process\(es\), node rank (\d+), from (\S+)", proc.stdout, re.M
        )
        assert head, proc.stdout
        self.mode, self.source = head.group(1), head.group(5)
        self.nnodes, self.nproc, self.node_rank = (int(head.group(i)) for i in (2, 3, 4))
        self.command = next(line for line in proc.stdout.splitlines() if line.startswith("torchrun "))
        self.stderr = proc.stderr

    def flag(self, name: str) -> str | None:
        m = re.search(rf"(?:^| )--{name}[= ](\S+)", self.command)
        return m.group(1) if m else None

    @property
    def trainer_args(self) -> list[str]:
        return self.command.split(" -m trainer train ", 1)[1].split()


@pytest.fixture
def master_port():
    """A listening socket that stands in for node 0's rendezvous store."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_plain_docker_is_one_local_node_and_arguments_pass_through():
    p = Plan(entrypoint("--dry-run", *CONFIG, "train.precision=bf16", "train.max_steps=7"))
    assert (p.source, p.nnodes, p.node_rank, p.mode) == ("local", 1, 0, "ddp")
    assert "--standalone" in p.command and p.flag("nnodes") == "1"
    assert p.trainer_args[:4] == [*CONFIG, "train.precision=bf16", "train.max_steps=7"]
    assert "waiting" not in p.stderr


def _pytorchjob_env(rank: int, port: int) -> dict:
    # What the Kubeflow training operator injects with 2 replicas and nprocPerNode 1.
    return {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": port,
        "RANK": rank,
        "WORLD_SIZE": 2,
        "PET_NPROC_PER_NODE": 1,
        "PET_NNODES": 2,
        "PET_NODE_RANK": rank,
    }


def _trainer_v2_env(rank: int, port: int) -> dict:
    return {
        "PET_NNODES": 2,
        "PET_NPROC_PER_NODE": "auto",
        "PET_NODE_RANK": rank,
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": port,
    }


def _indexed_job_env(rank: int, port: int) -> dict:
    """The container env of the rendered Indexed Job, as Kubernetes would start pod ``rank``."""
    job = next(
        o
        for o in manifests.render(manifests.Options(kind="indexedjob", image="r/t:1", nodes=2))
        if o["kind"] == "Job"
    )
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LAUNCH_MASTER_ADDR"] == "train-0.train"
    # The pod name train-0.train only resolves inside the cluster: point at the local stand-in.
    return {
        **env,
        "JOB_COMPLETION_INDEX": rank,
        "LAUNCH_MASTER_ADDR": "127.0.0.1",
        "LAUNCH_MASTER_PORT": port,
    }


def _compose_env(rank: int, port: int) -> dict:
    svc = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"][f"node{rank}"]
    return {**svc["environment"], "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": port}


@pytest.mark.parametrize(
    "make_env, source",
    [
        (_pytorchjob_env, "pytorchjob-v1"),
        (_trainer_v2_env, "trainer-v2"),
        (_indexed_job_env, "indexed-job"),
        (_compose_env, "trainer-v2"),  # compose uses torchrun's PET_* names, which that row reads
    ],
    ids=["pytorchjob", "trainer-v2", "indexed-job", "compose"],
)
def test_two_nodes_start_as_two_processes(make_env, source, master_port):
    """Node 0 and node 1 of one job, started together: same world and endpoint, their own node ranks."""
    procs = [start("--dry-run", *CONFIG, env=make_env(rank, master_port)) for rank in (0, 1)]
    plans = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        plans.append(Plan(subprocess.CompletedProcess(proc.args, proc.returncode, out, err)))
    for rank, p in enumerate(plans):
        assert (p.source, p.nnodes, p.node_rank, p.nproc) == (source, 2, rank, 1)
        assert p.flag("nnodes") == "2" and p.flag("rdzv-backend") == "c10d"
        assert p.flag("rdzv-endpoint") == f"127.0.0.1:{master_port}"
        assert p.trainer_args[:2] == CONFIG
    assert "waiting" not in plans[0].stderr  # node 0 hosts the rendezvous: nothing to wait for
    assert re.search(rf"wait: 127\.0\.0\.1:{master_port} is ready", plans[1].stderr), plans[1].stderr


def _slurm_step_env(rank: int, port: int) -> dict:
    """src/common/env.c inside `srun -N2` on the last two nodes of a 4-node allocation (MASTER_PORT: ours)."""
    return {
        "SLURM_JOB_ID": 77,
        "SLURM_JOB_NODELIST": "127.0.0.[0-1]",
        "SLURM_NODELIST": "127.0.0.1",
        "SLURM_STEP_NODELIST": "127.0.0.1",
        "SLURM_NNODES": 2,
        "SLURM_STEP_NUM_NODES": 2,
        "SLURM_NODEID": rank,
        "SLURM_PROCID": rank,
        "SLURM_NTASKS": 2,
        "MASTER_PORT": port,
    }


def _is_host(p: Plan) -> str | None:
    m = re.search(r"--rdzv-conf=\S*is_host=(\d)", p.command)
    return m.group(1) if m else None


@pytest.mark.parametrize(
    "make_env, source",
    [
        (_pytorchjob_env, "pytorchjob-v1"),
        (_trainer_v2_env, "trainer-v2"),
        (_indexed_job_env, "indexed-job"),
        (_slurm_step_env, "slurm"),
    ],
    ids=["pytorchjob", "trainer-v2", "indexed-job", "slurm-step"],
)
def test_node_0_is_told_it_hosts_the_store(make_env, source, master_port):
    """Whatever the host name resolves to: the controller fixed the endpoint to node rank 0."""
    hosts = []
    for rank in (0, 1):
        p = Plan(entrypoint("--dry-run", *CONFIG, env=make_env(rank, master_port)))
        assert (p.source, p.node_rank) == (source, rank)
        hosts.append(_is_host(p))
    assert hosts == ["1", "0"]


@pytest.mark.parametrize("envs, source, endpoint", [j[1:] for j in JOBS], ids=[j[0] for j in JOBS])
def test_every_controller_through_the_entrypoint(envs, source, endpoint):
    """The controllers' environments of tests/unit/test_controllers.py (each cites its source), every node, as
    the entrypoint reads them; the master names do not resolve here, so the workers do not wait
    (ENTRYPOINT_WAIT_S=0)."""
    for rank, env in enumerate(envs):
        p = Plan(
            entrypoint("--dry-run", *CONFIG, "--nproc-per-node", "1", env={**env, "ENTRYPOINT_WAIT_S": 0})
        )
        assert (p.source, p.nnodes, p.node_rank) == (source, len(envs), rank)
        assert p.flag("rdzv-endpoint") == endpoint and _is_host(p) == str(int(rank == 0))


def test_launch_local_addr_reaches_the_launcher():
    env = {**_trainer_v2_env(0, 29400), "PET_MASTER_ADDR": "10.99.0.1", "LAUNCH_LOCAL_ADDR": "10.99.0.1"}
    p = Plan(entrypoint("--dry-run", *CONFIG, env=env))
    assert p.flag("local-addr") == "10.99.0.1" and _is_host(p) == "1"


def test_jobset_example_without_a_node_count_is_refused():
    """JobSet's site/static/examples/pytorch/cnn-mnist/mnist.yaml pod 0 (MASTER_ADDR, RANK = completion index,
    no WORLD_SIZE; Kubernetes adds JOB_COMPLETION_INDEX) used to train alone."""
    r = entrypoint(
        "--dry-run",
        *CONFIG,
        env={
            "MASTER_ADDR": "pytorch-workers-0-0.pytorch",
            "MASTER_PORT": 3389,
            "RANK": 0,
            "JOB_COMPLETION_INDEX": 0,
        },
    )
    assert r.returncode == 2 and "LAUNCH_NNODES" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "exec" not in r.stderr and r.stdout == ""


def test_indexed_job_node0_uses_the_rendered_master_name_and_run_dir():
    env = {**_indexed_job_env(0, 0), "LAUNCH_MASTER_ADDR": "train-0.train", "LAUNCH_MASTER_PORT": "29500"}
    p = Plan(entrypoint("--dry-run", *CONFIG, env=env))
    assert p.flag("rdzv-endpoint") == "train-0.train:29500" and p.nproc == 1
    assert "run.dir=/runs/train" in p.trainer_args


def test_worker_waits_for_a_late_master_instead_of_crash_looping():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[
            1
        ]  # bound, not yet listening: connections are refused, like a master still starting
        proc = start("--dry-run", *CONFIG, env={**_trainer_v2_env(1, port), "ENTRYPOINT_WAIT_S": 60})
        try:
            read_until(proc.stderr, r"waiting up to 60 s")
            time.sleep(1.5)  # a few refused attempts
            assert proc.poll() is None, "the worker gave up instead of waiting"
            s.listen()
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill() if proc.poll() is None else None
    assert proc.returncode == 0, err
    assert Plan(subprocess.CompletedProcess(proc.args, 0, out, err)).node_rank == 1


def test_wait_times_out_with_the_documented_code():
    env = {
        "JOB_COMPLETION_INDEX": 1,
        "LAUNCH_NNODES": 2,
        "LAUNCH_MASTER_ADDR": "master.invalid",
        "ENTRYPOINT_WAIT_S": 1,
    }
    t0 = time.monotonic()
    r = entrypoint("--dry-run", *CONFIG, env=env)
    assert r.returncode == UNAVAILABLE == 69, r.stderr
    assert time.monotonic() - t0 < 15
    assert "master.invalid:29500 not reachable within 1 s" in r.stderr
    assert "exec" not in r.stderr and r.stdout == ""  # the launcher never started


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            pass  # gone meanwhile
    return pids


def test_sigterm_during_the_wait_ends_it_at_once():
    host = f"master-{os.getpid()}-{time.monotonic_ns()}.invalid"  # unique, to find the waiter process
    env = {
        "JOB_COMPLETION_INDEX": 1,
        "LAUNCH_NNODES": 2,
        "LAUNCH_MASTER_ADDR": host,
        "ENTRYPOINT_WAIT_S": 300,
    }
    proc = start("--dry-run", *CONFIG, env=env)
    try:
        read_until(proc.stderr, r"waiting up to 300 s")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM
        assert time.monotonic() - t0 < 5
        deadline = time.monotonic() + 5
        while _processes_mentioning(host) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _processes_mentioning(host), "the wait outlived the entrypoint"
    finally:
        proc.kill() if proc.poll() is None else None
        for pid in _processes_mentioning(host):
            os.kill(pid, signal.SIGKILL)


def test_contradictory_environment_is_a_one_line_config_error():
    r = entrypoint(
        "--dry-run", *CONFIG, env={"JOB_COMPLETION_INDEX": 5, "LAUNCH_NNODES": 2, "LAUNCH_MASTER_ADDR": "x"}
    )
    assert r.returncode == 2, r.stderr
    assert "JOB_COMPLETION_INDEX" in r.stderr and "Traceback" not in r.stderr


def test_settings_from_the_environment():
    p = Plan(
        entrypoint("--dry-run", *CONFIG, env={"NPROC_PER_NODE": 2, "MAX_RESTARTS": 3, "RUN_DIR": "/runs/a"})
    )
    assert p.flag("nproc-per-node") == "2" and p.flag("max-restarts") == "3"
    assert p.trainer_args.count("run.dir=/runs/a") == 1
    # An explicit run.dir argument wins over RUN_DIR.
    p = Plan(entrypoint("--dry-run", *CONFIG, "run.dir=/runs/mine", env={"RUN_DIR": "/runs/a"}))
    assert [a for a in p.trainer_args if a.startswith("run.dir=")] == ["run.dir=/runs/mine"]
    # LAUNCH_MODE, or a mode as the first word.
    assert Plan(entrypoint("--dry-run", *CONFIG, env={"LAUNCH_MODE": "fsdp"})).mode == "fsdp"
    assert Plan(entrypoint("fsdp", "--dry-run", *CONFIG)).mode == "fsdp"
    r = entrypoint(*CONFIG, env={"ENTRYPOINT_WAIT_S": "soon"})
    assert r.returncode == 2 and "ENTRYPOINT_WAIT_S" in r.stderr


def test_commands_run_instead_of_training():
    r = entrypoint("bash", "-c", "echo hello from $0")
    assert (r.returncode, r.stdout) == (0, "hello from bash\n")
    r = entrypoint("python", "-c", "import sys; print(sys.prefix)")
    assert r.returncode == 0 and r.stdout.strip() == sys.prefix
    r = entrypoint("launch", "env", "--json")
    assert r.returncode == 0 and '"source": "local"' in r.stdout
    r = entrypoint("doctor", "--help")
    assert r.returncode == 0 and "doctor" in r.stdout
    r = entrypoint("configs/cnn.yaml")  # forgot -c
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "-c CONFIG" in r.stderr


def test_the_launcher_replaces_the_shell_and_receives_sigterm(tmp_path):
    """exec, not a child: the launcher has the entrypoint's PID, so `docker stop` / the kubelet signal it."""
    fake = tmp_path / "python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        "# The interpreter for everything but the launch itself, which stands in for the launcher.\n"
        "if [[ $1 == -m && $2 == launch && $3 == ddp ]]; then\n"
        "  trap 'echo got TERM; exit 75' TERM\n"
        '  echo "launcher pid $$"\n'
        "  while :; do sleep 0.05; done\n"
        "fi\n"
        f'exec {sys.executable} "$@"\n'
    )
    fake.chmod(0o755)
    proc = subprocess.Popen(
        ["bash", str(ENTRYPOINT), *CONFIG],
        cwd=ROOT,
        env=_env({"PYTHON": fake}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        text = read_until(proc.stdout, r"^launcher pid \d+$")
        assert int(re.search(r"^launcher pid (\d+)$", text, re.M).group(1)) == proc.pid
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 75 and "got TERM" in out
    finally:
        proc.kill() if proc.poll() is None else None

"""``python -m launch``: the --dry-run command of every mode, argument errors, preflight, subcommands.

The CLI runs as a subprocess (it must start without torch, so this is fast) in an environment cleared of
every cluster variable, so the tests do not depend on where they run.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from launch.__main__ import _delegate
from launch.cluster import resolve
from launch.modes import DEFAULT_INIT_TIMEOUT_S, build

ROOT = Path(__file__).resolve().parents[2]
FAKE_DIR = ROOT / "tests" / "distributed"
CLUSTER_PREFIXES = ("PET_", "SLURM_", "JOBSET_", "LAUNCH_", "TORCHELASTIC_", "KUBEFLOW")
CLUSTER_VARS = {
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "JOB_COMPLETION_INDEX",
    "OMP_NUM_THREADS",
    "HF_HOME",
    "TORCH_DISABLE_SHARE_RDZV_TCP_STORE",
}


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in CLUSTER_VARS and not k.startswith(CLUSTER_PREFIXES)
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(FAKE_DIR)])
    env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU-only view even on a GPU machine
    env.update(extra)
    return env


def launch(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "launch", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or clean_env(),
        cwd=cwd or ROOT,
    )


def dry_run(*args: str, **env: str) -> tuple[list[str], dict[str, str]]:
    """(command argv, added variables) from a --dry-run."""
    proc = launch(*args, "--dry-run", env=clean_env(**env))
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln and not ln.startswith("#")]
    added = dict(ln[len("export ") :].split("=", 1) for ln in lines if ln.startswith("export "))
    added.update((ln[len("unset ") :], None) for ln in lines if ln.startswith("unset "))  # None = removed
    (command,) = [ln for ln in lines if not ln.startswith(("export ", "unset "))]
    return shlex.split(command), added


def test_single_runs_the_trainer_directly():
    argv, added = dry_run("single", "-c", "configs/cnn.yaml", "train.max_steps=5")
    assert argv == [
        sys.executable,
        "-m",
        "trainer",
        "train",
        "-c",
        "configs/cnn.yaml",
        "train.max_steps=5",
        "train.strategy=single",
    ]
    assert added["OMP_NUM_THREADS"] == str(len(os.sched_getaffinity(0)))
    assert added["TRAINER_EXIT_DIR"] == '"$(mktemp -d)"'


def test_config_file_is_optional():
    argv, _ = dry_run("ddp", "--nproc-per-node", "2", "model.name=mlp")
    assert argv[-5:] == ["-m", "trainer", "train", "model.name=mlp", "train.strategy=ddp"]


def test_dp_is_one_process():
    argv, _ = dry_run("dp", "-c", "c.yaml")
    assert argv[1:3] == ["-m", "trainer"] and argv[-1] == "train.strategy=dp" and "torchrun" not in argv


def test_ddp_one_node_is_standalone_torchrun():
    argv, added = dry_run("ddp", "--nproc-per-node", "2", "-c", "c.yaml")
    assert argv == [
        "torchrun",
        "--standalone",
        "--nnodes=1",
        "--nproc-per-node=2",
        "--max-restarts=0",
        "-m",
        "trainer",
        "train",
        "-c",
        "c.yaml",
        "train.strategy=ddp",
    ]
    assert added["OMP_NUM_THREADS"] == str(max(1, len(os.sched_getaffinity(0)) // 2))
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in added


def test_ddp_two_nodes_uses_c10d_rendezvous():
    argv, _ = dry_run(
        "ddp",
        "--nnodes",
        "2",
        "--node-rank",
        "1",
        "--nproc-per-node",
        "1",
        "--rdzv-endpoint",
        "node0:29555",
        "--rdzv-id",
        "job42",
        "-c",
        "c.yaml",
    )
    assert "--standalone" not in argv
    for flag in ("--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=node0:29555", "--rdzv-id=job42"):
        assert flag in argv


def test_ddp_two_nodes_from_the_environment():
    argv, _ = dry_run(
        "ddp",
        "-c",
        "c.yaml",
        PET_NNODES="2",
        PET_NODE_RANK="0",
        PET_MASTER_ADDR="tj-node-0-0.tj",
        PET_MASTER_PORT="29400",
        PET_NPROC_PER_NODE="1",
    )
    assert "--rdzv-endpoint=tj-node-0-0.tj:29400" in argv and "--nnodes=2" in argv


def _conf(argv: list[str]) -> dict[str, str]:
    (conf,) = [
        a.split("=", 1)[1] for a in argv if a.startswith("--rdzv-conf=")
    ]  # torchrun keeps only the last
    return dict(item.split("=", 1) for item in conf.split(","))


def test_local_addr_marks_the_rendezvous_host():
    base = ("ddp", "--nnodes", "2", "--rdzv-endpoint", "10.99.0.1:29555", "-c", "c.yaml")
    host, _ = dry_run(*base, "--local-addr", "10.99.0.1")
    other, _ = dry_run(*base, "--local-addr", "10.99.0.2")
    assert _conf(host)["is_host"] == "1" and "is_host" not in _conf(other)  # torchrun's own rule for the rest
    assert "--local-addr=10.99.0.2" in other
    env_addr, _ = dry_run(*base, LAUNCH_LOCAL_ADDR="10.99.0.1")  # the entrypoint's way to say it
    assert "--local-addr=10.99.0.1" in env_addr and _conf(env_addr)["is_host"] == "1"


def test_init_timeout_bounds_the_rendezvous_in_one_rdzv_conf(tmp_path):
    base = ("ddp", "--nnodes", "2", "--rdzv-endpoint", "10.99.0.1:29555")
    argv, _ = dry_run(*base, "dist.init_timeout_s=7")
    assert {k: _conf(argv)[k] for k in ("join_timeout", "read_timeout")} == {
        "join_timeout": "7",
        "read_timeout": "4",
    }
    config = tmp_path / "c.yaml"
    config.write_text("dist:\n  init_timeout_s: 42.5\n")
    argv, _ = dry_run(*base, "-c", str(config))
    assert _conf(argv)["join_timeout"] == "43"
    argv, _ = dry_run(*base)
    assert _conf(argv)["join_timeout"] == str(DEFAULT_INIT_TIMEOUT_S)
    # An elastic PyTorchJob's PET_RDZV_CONF (elastic.go) is merged into the one flag; its keys win.
    argv, added = dry_run(*base, PET_RDZV_CONF="join_timeout=900,foo=bar")
    assert _conf(argv) == {"join_timeout": "900", "read_timeout": "150", "foo": "bar"}
    assert added["PET_RDZV_CONF"] is None  # unset: torchrun must not read it a second time


def test_default_init_timeout_is_the_trainers():
    from trainer.schema import DistConfig

    assert DistConfig().init_timeout_s == DEFAULT_INIT_TIMEOUT_S


def test_fsdp_is_torchrun_with_fsdp_strategy():
    argv, _ = dry_run("fsdp", "--nproc-per-node", "2", "-c", "c.yaml")
    assert argv[0] == "torchrun" and argv[-1] == "train.strategy=fsdp"


def test_accelerate_starts_n_processes_without_cpu_flag():
    argv, added = dry_run("accelerate", "--nproc-per-node", "2", "-c", "c.yaml")
    assert argv[:3] == ["accelerate", "launch", "--multi_gpu"]
    assert argv[argv.index("--num_processes") + 1] == "2" and "--cpu" not in argv
    assert (
        argv[argv.index("--mixed_precision") + 1] == "no" and argv[argv.index("--dynamo_backend") + 1] == "no"
    )
    assert argv[-6:] == ["-m", "trainer", "train", "-c", "c.yaml", "train.strategy=accelerate"]
    assert added["HF_HOME"] == '"$(mktemp -d)"'


def test_accelerate_one_process():
    argv, _ = dry_run("accelerate", "-c", "c.yaml", HF_HOME="/tmp/hf")
    assert argv[:4] == ["accelerate", "launch", "--num_processes", "1"] and "--multi_gpu" not in argv


def test_accelerate_two_nodes_counts_all_processes():
    argv, _ = dry_run(
        "accelerate",
        "--nnodes",
        "2",
        "--node-rank",
        "1",
        "--nproc-per-node",
        "2",
        "--rdzv-endpoint",
        "h0:29555",
        "-c",
        "c.yaml",
    )
    get = lambda flag: argv[argv.index(flag) + 1]  # noqa: E731
    assert (get("--num_processes"), get("--num_machines"), get("--machine_rank")) == ("4", "2", "1")
    assert (get("--main_process_ip"), get("--main_process_port")) == ("h0", "29555")


def test_max_restarts_disables_the_shared_rendezvous_store():
    argv, added = dry_run("ddp", "--nproc-per-node", "2", "--max-restarts", "1", "-c", "c.yaml")
    assert "--max-restarts=1" in argv and added["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"


def test_nproc_auto_on_cpu_is_one():
    argv, _ = dry_run("ddp", "--nproc-per-node", "auto", "-c", "c.yaml")
    assert "--nproc-per-node=1" in argv


def test_user_thread_count_is_kept():
    _, added = dry_run("ddp", "-c", "c.yaml", OMP_NUM_THREADS="3")
    assert "OMP_NUM_THREADS" not in added


def test_inside_torchrun_the_trainer_runs_directly():
    argv, _ = dry_run(
        "ddp",
        "-c",
        "c.yaml",
        RANK="1",
        LOCAL_RANK="1",
        WORLD_SIZE="2",
        LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT="29999",
        TORCHELASTIC_RUN_ID="x",
    )
    assert argv[0] == sys.executable and argv[-1] == "train.strategy=ddp"


def test_paths_are_shell_quoted():
    argv, _ = dry_run("single", "-c", "my configs/a b.yaml", "run.dir=/tmp/x y")
    assert argv[4:7] == ["-c", "my configs/a b.yaml", "run.dir=/tmp/x y"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["ddp", "--bogus", "-c", "c.yaml"], "--bogus"),
        (["ddp", "--nnodes"], "expected one argument"),
        (["warp", "-c", "c.yaml"], "unknown command 'warp'"),
        (["ddp", "-c", "c.yaml", "train.max_steps"], "KEY=VALUE"),
        (["single", "--nproc-per-node", "2", "-c", "c.yaml"], "one process"),
        (["ddp", "--nnodes", "2", "-c", "c.yaml"], "no master address"),
        (["ddp", "--nproc-per-node", "two", "-c", "c.yaml"], "--nproc-per-node='two'"),
        (["fsdp", "-c", "c.yaml", "train.strategy=ddp"], "contradicts"),
        (["single", "--max-restarts", "2", "-c", "c.yaml"], "no restarts"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, words):
    proc = launch(*args, "--dry-run")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert words in proc.stderr


def test_preflight_refuses_a_bad_config_before_any_worker(tmp_path):
    proc = launch(
        "ddp",
        "--nproc-per-node",
        "2",
        "--entry",
        "fake_worker",
        "-c",
        str(tmp_path / "missing.yaml"),
        env=clean_env(FAKE_OUT=str(tmp_path)),
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"launch: config check failed: config: file '{tmp_path / 'missing.yaml'}' not found"
    ]
    assert not list(tmp_path.glob("rank*.json"))  # no worker started


def test_preflight_doctor_refuses_an_unwritable_run_dir(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("run:\n  dir: /proc/1/no/run\n")
    proc = launch(
        "single", "--entry", "fake_worker", "-c", str(config), env=clean_env(FAKE_OUT=str(tmp_path))
    )
    assert proc.returncode == 2 and "run_dir" in proc.stderr
    assert not list(tmp_path.glob("rank*.json"))


def test_no_preflight_skips_the_check(tmp_path):
    proc = launch(
        "single",
        "--no-preflight",
        "--entry",
        "fake_worker",
        "-c",
        str(tmp_path / "missing.yaml"),
        env=clean_env(FAKE_OUT=str(tmp_path)),
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "rank0-attempt0.json").exists()


def test_env_json():
    proc = launch(
        "env",
        "--json",
        env=clean_env(SLURM_JOB_ID="7", SLURM_NNODES="2", SLURM_NODEID="1", SLURM_JOB_NODELIST="n[3-4]"),
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert (info["source"], info["nnodes"], info["node_rank"], info["master_addr"]) == ("slurm", 2, 1, "n3")
    assert info["nproc_per_node_resolved"] == 1


def test_env_contradiction_exits_2():
    proc = launch("env", env=clean_env(JOB_COMPLETION_INDEX="3", LAUNCH_NNODES="2", LAUNCH_MASTER_ADDR="m"))
    assert proc.returncode == 2 and "JOB_COMPLETION_INDEX" in proc.stderr


def test_help_and_missing_delegate(capsys):
    assert launch("--help").returncode == 0
    assert _delegate("no_such_subcommand", []) == 2
    assert "not available" in capsys.readouterr().err


def test_build_is_pure_and_cpu_safe():
    plan = build("ddp", resolve({}, {"nproc_per_node": "auto"}), "c.yaml", gpus=lambda: 0, cpus=8, env={})
    assert plan.nproc_per_node == 1 and plan.env["OMP_NUM_THREADS"] == "8"


def test_wrappers(tmp_path):
    env = clean_env(PYTHON=sys.executable)
    amp = subprocess.run(
        [str(ROOT / "launch" / "amp.sh"), "--dry-run", "-c", "c.yaml"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert amp.returncode == 0 and "train.precision=bf16" in amp.stdout and "torchrun" in amp.stdout
    multi = subprocess.run(
        [str(ROOT / "launch" / "multinode.sh"), "-c", "c.yaml"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert multi.returncode == 2 and "NNODES" in multi.stderr
    env.update(NNODES="2", NODE_RANK="1", MASTER_ADDR="h0", MASTER_PORT="29555")
    multi = subprocess.run(
        [str(ROOT / "launch" / "multinode.sh"), "--dry-run", "-c", "c.yaml"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert multi.returncode == 0 and "--rdzv-endpoint=h0:29555" in multi.stdout


def test_dry_run_and_env_do_not_import_torch():
    code = (
        "import sys\nfrom launch.__main__ import main\n"
        "main(['ddp', '--nproc-per-node', 'auto', '--dry-run']); main(['env', '--json'])\n"
        "print('torch' in sys.modules, 'accelerate' in sys.modules, file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=clean_env()
    )
    assert proc.stderr.split() == ["False", "False"], proc.stderr


def test_store_host_is_found_on_any_interface_not_by_host_name(monkeypatch):
    """The multi-homed node: the endpoint's name resolves to the fabric address of node A, a second interface
    that A's own host name does not resolve to (torchrun's rule then makes nobody the host). The old
    --local-addr rule compared the name with the address (is_host=int("nodeA" == "198.18.0.1") = 0 on every
    node)."""
    from launch import addrs

    monkeypatch.setattr(addrs, "resolve", lambda host: {"nodeA": ["198.18.0.1"]}.get(host, []))
    c = resolve({}, {"nnodes": "2", "rdzv_endpoint": "nodeA:29400"})

    def conf(local: set[str], local_addr: str | None = None) -> dict:
        plan = build(
            "ddp",
            c,
            None,
            gpus=lambda: 0,
            cpus=2,
            env={},
            local_addrs=lambda: local,
            local_addr=local_addr,
            route=lambda host: None,
        )
        return _conf(plan.argv)

    assert conf({"10.0.0.5", "198.18.0.1"})["is_host"] == "1"  # node A: management NIC + fabric NIC
    assert "is_host" not in conf({"10.0.0.6", "198.18.0.2"})  # node B: torchrun's rule (not the host)
    assert conf({"10.0.0.5"}, local_addr="198.18.0.1")["is_host"] == "1"  # docs/launch.md's --local-addr
    assert "is_host" not in conf({"10.0.0.6"}, local_addr="198.18.0.2")
    monkeypatch.setattr(addrs, "resolve", lambda host: ["127.0.0.1"])  # several agents on one machine
    assert "is_host" not in conf({"127.0.0.1"})


def test_a_fixed_endpoint_decides_whatever_dns_says(monkeypatch):
    from launch import addrs

    monkeypatch.setattr(addrs, "resolve", lambda host: [])  # the master's name does not resolve yet
    for rank in (0, 1):
        c = resolve(
            {"JOB_COMPLETION_INDEX": str(rank), "LAUNCH_NNODES": "2", "LAUNCH_MASTER_ADDR": "train-0.train"}
        )
        plan = build("ddp", c, None, gpus=lambda: 0, cpus=2, env={}, local_addrs=lambda: {"10.0.0.9"})
        assert _conf(plan.argv)["is_host"] == str(int(rank == 0))
        assert plan.rdzv_client == (rank == 1)  # node 1 waits for the store within the timeout, then joins


def test_the_advertised_address_is_the_route_to_the_endpoint():
    """Without --local-addr torchrun advertises socket.getfqdn(), which on a multi-homed node names the
    management network; the source address on the route to the endpoint is on the network the nodes share."""
    c = resolve({}, {"nnodes": "2", "rdzv_endpoint": "nodeA:29400"})
    seen = []
    plan = build(
        "ddp",
        c,
        None,
        gpus=lambda: 0,
        cpus=2,
        env={},
        local_addrs=lambda: set(),
        route=lambda host: seen.append(host) or "198.18.0.2",
    )
    assert "--local-addr=198.18.0.2" in plan.argv and seen == ["nodeA"]
    plan = build(
        "ddp",
        c,
        None,
        gpus=lambda: 0,
        cpus=2,
        env={"LAUNCH_LOCAL_ADDR": "10.1.1.1"},
        local_addrs=lambda: set(),
        route=lambda host: "198.18.0.2",
    )
    assert "--local-addr=10.1.1.1" in plan.argv  # an explicit address wins
    one = build("ddp", resolve({}), None, gpus=lambda: 0, cpus=2, env={}, route=lambda host: "198.18.0.2")
    assert not [a for a in one.argv if a.startswith("--local-addr")]  # standalone: nothing to advertise


def test_more_processes_than_cores_warns_once_with_the_numbers(tmp_path):
    """#29: `--nproc-per-node 8` on 2 cores used to start 8 CPU workers silently."""
    cpus = len(os.sched_getaffinity(0))
    n = cpus + 1
    (tmp_path / "c.yaml").write_text("")
    proc = launch(
        "ddp",
        "--nproc-per-node",
        str(n),
        "--entry",
        "fake_worker",
        "-c",
        str(tmp_path / "c.yaml"),
        env=clean_env(FAKE_OUT=str(tmp_path)),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(list(tmp_path.glob("rank*-attempt0.json"))) == n  # a warning, not a refusal
    warn = [ln for ln in proc.stderr.splitlines() if "oversubscribed" in ln]
    assert warn == [
        f"launch: doctor warn: cpus: {n} process(es) x 1 thread(s) = {n} on {cpus} usable CPU core(s): "
        f"oversubscribed, each step waits for a core (fix: --nproc-per-node {cpus} (one process per core) "
        "or fewer; on CPUs more processes add no speed)"
    ], proc.stderr


@pytest.mark.parametrize("nproc, threads, warns", [(1, "", False), (2, "1", False), (1, "64", True)])
def test_threads_times_processes_against_cores(nproc, threads, warns):
    from launch.doctor import check_cpus

    c = check_cpus(nproc, {"OMP_NUM_THREADS": threads} if threads else {}, cpus=2)
    assert (c.status == "warn") is warns, c
    if warns:
        assert c.message.startswith("1 process(es) x 64 thread(s) = 64 on 2 usable CPU core(s)")
        assert c.fix == "OMP_NUM_THREADS=2"

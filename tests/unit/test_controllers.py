"""Each controller's environment as its own source sets it, for every node of a 2-3 node job.

Each case reads the environment three ways: :func:`launch.cluster.resolve` in process, ``python -m launch env
--json`` and ``python -m launch ddp --dry-run`` (subprocesses, as the entrypoint runs them; the entrypoint
itself is covered in tests/integration/test_entrypoint.py). The rendezvous host question (item 1 of issue 14)
is asserted on the torchrun command: node 0 of a source that fixes the endpoint is told ``is_host=1``, every
other node ``is_host=0``.
"""

from __future__ import annotations

import json

import pytest

from launch.cluster import ClusterError, resolve
from tests.unit.test_launch_cli import _conf, clean_env, dry_run, launch


def env_json(env: dict) -> dict:
    proc = launch("env", "--json", env=clean_env(**env))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def flag(argv: list[str], name: str) -> str | None:
    return next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")), None)


def check_job(
    envs: list[dict], source: str, endpoint: str, nnodes: int = None, fixed: bool = True, nproc: str = "1"
) -> list[list[str]]:
    """Every node of one job: the same world and endpoint, its own node rank, node 0 (only) hosting the
    store."""
    nnodes = nnodes or len(envs)
    argvs = []
    for rank, env in enumerate(envs):
        c = resolve(env)
        assert (c.source, c.nnodes, c.node_rank, c.rdzv_endpoint, c.rdzv_fixed) == (
            source,
            nnodes,
            rank,
            endpoint,
            fixed,
        ), c
        info = env_json(env)
        assert (info["source"], info["nnodes"], info["node_rank"], info["rdzv_endpoint"]) == (
            source,
            nnodes,
            rank,
            endpoint,
        )
        argv, added = dry_run("ddp", "-c", "c.yaml", "--nproc-per-node", nproc, **env)
        assert flag(argv, "nnodes") == str(nnodes) and flag(argv, "rdzv-endpoint") == endpoint
        conf = _conf(argv)
        if fixed:
            assert conf["is_host"] == str(int(rank == 0)), (rank, conf)
        else:
            assert "is_host" not in conf  # nothing fixes it: the endpoint is compared with local addresses
        assert not [k for k in env if k.startswith("PET_") and added.get(k, "") is not None], added
        argvs.append(argv)
    return argvs


def pytorchjob_v1(n: int = 3) -> list[dict]:
    return [
        {
            "MASTER_ADDR": "job-master-0",
            "MASTER_PORT": "23456",
            "WORLD_SIZE": str(2 * n),
            "RANK": str(r),
            "PET_NODE_RANK": str(r),
            "PET_NPROC_PER_NODE": "2",
            "PET_NNODES": str(n),
            "PYTHONUNBUFFERED": "1",
        }
        for r in range(n)
    ]


def volcano(n: int = 3) -> list[dict]:
    return [
        {
            "MASTER_ADDR": "vj-master-0.vj",
            "MASTER_PORT": "23456",
            "WORLD_SIZE": str(n),
            "RANK": str(r),
            "VC_TASK_INDEX": str(max(r - 1, 0)),
        }
        for r in range(n)
    ]


def trainer_v2(n: int = 2, nproc: str = "auto") -> list[dict]:
    return [
        {
            "PET_NNODES": str(n),
            "PET_NPROC_PER_NODE": nproc,
            "PET_NODE_RANK": str(r),
            "PET_MASTER_ADDR": "tj-node-0-0.tj",
            "PET_MASTER_PORT": "29400",
            "JOB_COMPLETION_INDEX": str(r),
        }
        for r in range(n)
    ]


def indexed_job(n: int = 3) -> list[dict]:
    return [
        {
            "JOB_COMPLETION_INDEX": str(r),
            "LAUNCH_NNODES": str(n),
            "LAUNCH_MASTER_ADDR": "train-0.train",
            "LAUNCH_MASTER_PORT": "29500",
        }
        for r in range(n)
    ]


def jobset(n: int = 2) -> list[dict]:
    return [
        {
            "JOBSET_NAME": "js",
            "JOBSET_REPLICATED_JOB_NAME": "workers",
            "JOBSET_JOB_INDEX": str(r),
            "JOB_COMPLETION_INDEX": "0",
            "LAUNCH_NNODES": str(n),
        }
        for r in range(n)
    ]


def slurm_step(n: int = 2) -> list[dict]:
    return [
        {
            "SLURM_JOB_ID": "77",
            "SLURM_JOB_NODELIST": "gpu[01-04]",
            "SLURM_JOB_NUM_NODES": "4",
            "SLURM_NODELIST": "gpu[03-04]",
            "SLURM_STEP_NODELIST": "gpu[03-04]",
            "SLURM_STEP_NUM_NODES": str(n),
            "SLURM_NNODES": str(n),
            "SLURM_NODEID": str(r),
            "SLURM_PROCID": str(r),
            "SLURM_NTASKS": str(n),
            "SLURM_STEP_ID": "0",
            "SLURM_LOCALID": "0",
        }
        for r in range(n)
    ]


# (id, the environment of every node, the row, the endpoint): shared with
# tests/integration/test_entrypoint.py.
JOBS = [
    ("pytorchjob-v1", pytorchjob_v1(), "pytorchjob-v1", "job-master-0:23456"),
    ("volcano", volcano(), "pytorchjob-v1", "vj-master-0.vj:23456"),
    ("trainer-v2", trainer_v2(), "trainer-v2", "tj-node-0-0.tj:29400"),
    ("indexed-job", indexed_job(), "indexed-job", "train-0.train:29500"),
    ("jobset", jobset(), "jobset", "js-workers-0-0.js:29500"),
    ("slurm-step", slurm_step(), "slurm", "gpu03:29500"),
]


def test_pytorchjob_v1_master_and_two_workers():
    """Kubeflow training-operator v1, pkg/controller.v1/pytorch/envvar.go (setPodEnv) and master.go:
    MASTER_ADDR = <job>-master-0, MASTER_PORT = the master's port (23456), WORLD_SIZE = replicas x
    nprocPerNode, RANK = replica index (+1 for workers), PET_NODE_RANK = RANK, PET_NPROC_PER_NODE =
    nprocPerNode, PET_NNODES = replicas (no elastic policy), PYTHONUNBUFFERED."""
    for argv in check_job(pytorchjob_v1(), "pytorchjob-v1", "job-master-0:23456", nproc="2"):
        assert flag(argv, "nproc-per-node") == "2"


def test_pytorchjob_v1_before_operator_1_7():
    """training-operator v1 before 1.7, pkg/controller.v1/pytorch/envvar.go: only MASTER_ADDR, MASTER_PORT,
    WORLD_SIZE = replicas and RANK (PYTHONUNBUFFERED=0)."""
    envs = [
        {
            "MASTER_ADDR": "job-master-0",
            "MASTER_PORT": "23456",
            "WORLD_SIZE": "2",
            "RANK": str(r),
            "PYTHONUNBUFFERED": "0",
        }
        for r in range(2)
    ]
    check_job(envs, "pytorchjob-v1", "job-master-0:23456")


def test_pytorchjob_v1_elastic_workers():
    """training-operator v1, pkg/controller.v1/pytorch/elastic.go: PET_RDZV_ENDPOINT = <job>-worker-0:PORT,
    PET_RDZV_BACKEND = c10d, PET_NNODES = min:max, PET_MAX_RESTARTS, PET_RDZV_ID, PET_RDZV_CONF = "k=v,...",
    PET_STANDALONE = "" (empty) when standalone is set. No MASTER_ADDR/RANK without a Master replica: the
    ranks come from the rendezvous, so no node is told it hosts; worker-0's own host name matches the
    endpoint."""
    env = {
        "PET_RDZV_ENDPOINT": "job-worker-0:23456",
        "PET_RDZV_BACKEND": "c10d",
        "PET_NNODES": "2:3",
        "PET_MAX_RESTARTS": "3",
        "PET_RDZV_ID": "job",
        "PET_RDZV_CONF": "last_call_timeout=5",
        "PET_STANDALONE": "",
        "PET_NPROC_PER_NODE": "1",
    }
    c = resolve(env)
    assert (c.source, c.min_nnodes, c.nnodes, c.max_restarts, c.rdzv_fixed) == (
        "torchrun-env",
        2,
        3,
        3,
        False,
    )
    argv, added = dry_run("ddp", "-c", "c.yaml", **env)
    assert flag(argv, "nnodes") == "2:3" and flag(argv, "rdzv-id") == "job"
    assert _conf(argv) == {"join_timeout": "300", "read_timeout": "150", "last_call_timeout": "5"}
    assert all(added[k] is None for k in env), (
        added
    )  # every PET_* value is now a flag: torchrun must not reread it


def test_volcano_pytorch_plugin():
    """Volcano, pkg/controllers/job/plugins/distributed-framework/pytorch/pytorch.go: MASTER_ADDR =
    <job>-master-0.<job>, MASTER_PORT = 23456, WORLD_SIZE = master + worker replicas, RANK = 0 for the master,
    worker index + 1 (the PyTorchJob v1 meaning, read by that row)."""
    check_job(volcano(), "pytorchjob-v1", "vj-master-0.vj:23456")


@pytest.mark.parametrize("nproc", ["auto", "cpu", "2"])
def test_trainer_v2_torch_plugin(nproc):
    """Kubeflow Trainer v2, pkg/runtime/framework/plugins/torch/torch.go (EnforceMLPolicy): PET_NNODES,
    PET_NPROC_PER_NODE (an int, auto, cpu or gpu), PET_NODE_RANK from the pod's job-completion-index,
    PET_MASTER_ADDR = <job>-node-0-0.<job>, PET_MASTER_PORT = 29400; Kubernetes adds JOB_COMPLETION_INDEX."""
    envs = trainer_v2(2, nproc)
    check_job(envs, "trainer-v2", "tj-node-0-0.tj:29400", nproc=nproc)
    argv, _ = dry_run("ddp", "-c", "c.yaml", **envs[0])  # the environment's own value, without the flag
    want = {"auto": "1", "2": "2"}.get(nproc)  # auto: 1 on this CPU-only view; cpu: one per usable core
    assert flag(argv, "nproc-per-node") == want if want else int(flag(argv, "nproc-per-node")) >= 1


def test_trainer_v2_gpu_without_a_gpu_is_refused():
    env = {
        "PET_NNODES": "1",
        "PET_NPROC_PER_NODE": "gpu",
        "PET_NODE_RANK": "0",
        "PET_MASTER_ADDR": "tj-node-0-0.tj",
    }
    proc = launch("ddp", "--dry-run", "-c", "c.yaml", env=clean_env(**env))
    assert proc.returncode == 2 and "PET_NPROC_PER_NODE=gpu" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_indexed_job_as_rendered():
    """Kubernetes Indexed Job (the Job controller sets JOB_COMPLETION_INDEX) with the variables our rendered
    manifest adds (launch/k8s/manifests.py): LAUNCH_NNODES, LAUNCH_MASTER_ADDR = <name>-0.<name>."""
    check_job(indexed_job(), "indexed-job", "train-0.train:29500")


def test_jobset_with_the_downward_api_snippet():
    """JobSet (annotations jobset.sigs.k8s.io/jobset-name, replicatedjob-name, job-index exposed through the
    downward API as in launch/cluster.py) with LAUNCH_NNODES; 2 jobs x 1 pod."""
    check_job(jobset(), "jobset", "js-workers-0-0.js:29500")


def test_jobset_pytorch_example_is_refused_not_run_alone():
    """JobSet's own example, site/static/examples/pytorch/cnn-mnist/mnist.yaml: MASTER_ADDR =
    pytorch-workers-0-0.pytorch, MASTER_PORT = 3389, RANK = the job-completion-index annotation, no
    WORLD_SIZE; the Job controller adds JOB_COMPLETION_INDEX. Index 0 used to train a 1-node job alone."""
    for r in range(4):
        env = {
            "MASTER_ADDR": "pytorch-workers-0-0.pytorch",
            "MASTER_PORT": "3389",
            "RANK": str(r),
            "JOB_COMPLETION_INDEX": str(r),
            "PYTHONUNBUFFERED": "0",
        }
        proc = launch("ddp", "--dry-run", "-c", "c.yaml", env=clean_env(**env))
        assert proc.returncode == 2, proc.stdout
        assert len(proc.stderr.strip().splitlines()) == 1 and "LAUNCH_NNODES" in proc.stderr, proc.stderr
        # With the node count the same pods form a job, node 0 hosting.
        argv, _ = dry_run("ddp", "-c", "c.yaml", **env, LAUNCH_NNODES="4")
        assert flag(argv, "rdzv-endpoint") == "pytorch-workers-0-0.pytorch:3389"
        assert _conf(argv)["is_host"] == str(int(r == 0))


def test_slurm_step_on_part_of_the_allocation():
    """Slurm, src/common/env.c: inside `srun -N2` of a 4-node allocation, SLURM_STEP_NODELIST and
    SLURM_NODELIST are the step's nodes, SLURM_JOB_NODELIST the allocation's; SLURM_NNODES /
    SLURM_STEP_NUM_NODES the step's node count; SLURM_NODEID the node's index in the step; SLURM_PROCID,
    SLURM_NTASKS per task."""
    envs = slurm_step()
    check_job(envs, "slurm", "gpu03:29500")
    # Older or hand-made environments: the next list in line.
    no_step = {k: v for k, v in envs[1].items() if k != "SLURM_STEP_NODELIST"}
    assert (
        resolve(no_step).master_addr == "gpu03" and resolve(no_step).origin("master_addr") == "SLURM_NODELIST"
    )
    batch = {k: v for k, v in no_step.items() if k != "SLURM_NODELIST"}
    assert resolve(batch).master_addr == "gpu01"


@pytest.mark.parametrize(
    "env, var",
    [
        (
            {
                "OMPI_COMM_WORLD_SIZE": "2",
                "OMPI_COMM_WORLD_RANK": "0",
                "OMPI_COMM_WORLD_LOCAL_RANK": "0",
                "PMIX_RANK": "0",
            },
            "OMPI_COMM_WORLD_SIZE",
        ),
        ({"PMI_SIZE": "2", "PMI_RANK": "1"}, "PMI_SIZE"),
        ({"PMIX_RANK": "1", "PMIX_NAMESPACE": "prterun-x-1@1"}, "PMIX_RANK"),
        ({"JOB_COMPLETION_INDEX": "0"}, "LAUNCH_NNODES"),
        (
            {"JOBSET_NAME": "js", "JOBSET_REPLICATED_JOB_NAME": "w", "JOB_COMPLETION_INDEX": "0"},
            "LAUNCH_NNODES",
        ),
        ({"MASTER_ADDR": "head", "RANK": "0"}, "MASTER_ADDR"),
        ({"WORLD_SIZE": "4"}, "WORLD_SIZE"),
    ],
    ids=["openmpi", "pmi", "pmix", "indexed-job", "jobset", "master-only", "world-only"],
)
def test_ambiguous_worlds_are_refused(env, var):
    """Open MPI (mpirun sets OMPI_COMM_WORLD_* and PMIX_*), MPICH/Intel MPI Hydra (PMI_SIZE, PMI_RANK), PMIx
    launchers (PMIX_RANK): process worlds, not nodes; never read as one local node."""
    with pytest.raises(ClusterError, match=var) as e:
        resolve(env)
    assert "--nnodes" in str(e.value) and "\n" not in str(e.value)
    proc = launch("env", env=clean_env(**env))
    assert proc.returncode == 2 and var in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert resolve(env, {"nnodes": "1"}).nnodes == 1  # the fix the message names


def test_one_process_mpi_world_and_loopback_master_are_one_node():
    assert resolve({"OMPI_COMM_WORLD_SIZE": "1", "PMIX_RANK": "0"}).nnodes == 1
    assert resolve({"MASTER_ADDR": "127.0.0.1"}).source == "local"


def test_pytorchjob_v1_elastic_before_1_7_names_nproc_differently():
    """training-operator v1 before 1.7, pkg/controller.v1/pytorch/elastic.go: EnvNProcPerNode =
    PET_N_PROC_PER_NODE (torchrun itself reads PET_NPROC_PER_NODE, so it never saw that value)."""
    env = {
        "PET_RDZV_ENDPOINT": "job-worker-0:23456",
        "PET_RDZV_BACKEND": "c10d",
        "PET_NNODES": "2",
        "PET_N_PROC_PER_NODE": "4",
        "PET_MAX_RESTARTS": "1",
    }
    c = resolve(env)
    assert (c.source, c.nnodes, c.nproc_per_node, c.max_restarts) == ("torchrun-env", 2, 4, 1)
    assert c.origin("nproc_per_node") == "PET_N_PROC_PER_NODE"

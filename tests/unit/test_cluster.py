"""The cluster table: one test per environment row, the contradictions, Slurm host lists, CLI overrides."""

from __future__ import annotations

import pytest

from launch.cluster import ROWS, ClusterError, detect, expand_nodelist, resolve
from launch.gpus import resolve_nproc, visible_gpus


def test_local_when_nothing_is_set():
    c = resolve({})
    assert (c.source, c.nnodes, c.node_rank, c.nproc_per_node, c.rdzv_endpoint) == (
        "local",
        1,
        0,
        "auto",
        None,
    )


def test_row_torchrun_inside_a_worker():
    env = {
        "RANK": "3",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "4",
        "LOCAL_WORLD_SIZE": "2",
        "GROUP_RANK": "1",
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29501",
        "TORCHELASTIC_RESTART_COUNT": "2",
        "TORCHELASTIC_MAX_RESTARTS": "3",
        "TORCHELASTIC_RUN_ID": "job7",
    }
    c = resolve(env)
    assert c.source == "torchrun" and c.in_torchrun
    assert (c.nnodes, c.node_rank, c.nproc_per_node) == (2, 1, 2)
    assert (c.restart_count, c.max_restarts, c.rdzv_id) == (2, 3, "job7")
    assert c.rdzv_endpoint == "10.0.0.1:29501"


def test_row_torchrun_pet_defaults():
    env = {
        "PET_NNODES": "2",
        "PET_NODE_RANK": "1",
        "PET_NPROC_PER_NODE": "4",
        "PET_RDZV_ENDPOINT": "head:29400",
        "PET_RDZV_ID": "r1",
        "PET_MAX_RESTARTS": "2",
    }
    c = resolve(env)
    assert c.source == "torchrun-env"
    assert (c.nnodes, c.node_rank, c.nproc_per_node, c.max_restarts) == (2, 1, 4, 2)
    assert (c.rdzv_endpoint, c.rdzv_id, c.master_addr) == ("head:29400", "r1", "head")


def test_row_pytorchjob_v1_rank_is_the_node_rank():
    # Worker 0 of a job with a Master and 2 Workers, nprocPerNode 4: RANK = 1 (a node), WORLD_SIZE = 3 x 4.
    env = {
        "MASTER_ADDR": "job-master-0",
        "MASTER_PORT": "23456",
        "RANK": "1",
        "WORLD_SIZE": "12",
        "PET_NPROC_PER_NODE": "4",
        "PYTHONUNBUFFERED": "0",
    }
    c = resolve(env)
    assert c.source == "pytorchjob-v1" and not c.in_torchrun
    assert (c.nnodes, c.node_rank, c.nproc_per_node) == (3, 1, 4)
    assert c.rdzv_endpoint == "job-master-0:23456"
    assert c.origin("node_rank") == "RANK"


def test_row_pytorchjob_v1_non_integer_nproc_means_world_is_replicas():
    env = {
        "MASTER_ADDR": "m",
        "MASTER_PORT": "23456",
        "RANK": "0",
        "WORLD_SIZE": "2",
        "PET_NPROC_PER_NODE": "auto",
    }
    c = resolve(env)
    assert (c.nnodes, c.nproc_per_node) == (2, "auto")


def test_row_pytorchjob_v1_7_uses_pet_nnodes_and_node_rank_and_elastic_vars():
    env = {
        "MASTER_ADDR": "m",
        "MASTER_PORT": "23456",
        "RANK": "2",
        "WORLD_SIZE": "8",
        "PET_NPROC_PER_NODE": "2",
        "PET_NNODES": "1:4",
        "PET_NODE_RANK": "2",
        "PET_RDZV_ENDPOINT": "job-worker-0:23456",
        "PET_RDZV_BACKEND": "c10d",
        "PET_MAX_RESTARTS": "3",
    }
    c = resolve(env)
    assert c.source == "pytorchjob-v1"
    assert (c.min_nnodes, c.nnodes, c.node_rank, c.max_restarts) == (1, 4, 2, 3)
    assert c.rdzv_endpoint == "job-worker-0:23456"


def test_row_trainer_v2():
    env = {
        "PET_NNODES": "2",
        "PET_NPROC_PER_NODE": "auto",
        "PET_NODE_RANK": "1",
        "PET_MASTER_ADDR": "tj-node-0-0.tj",
        "PET_MASTER_PORT": "29400",
        "JOB_COMPLETION_INDEX": "1",
    }
    c = resolve(env)
    assert c.source == "trainer-v2"  # not indexed-job, although Kubernetes also sets JOB_COMPLETION_INDEX
    assert (c.nnodes, c.node_rank, c.nproc_per_node) == (2, 1, "auto")
    assert c.rdzv_endpoint == "tj-node-0-0.tj:29400"


def test_row_indexed_job():
    env = {"JOB_COMPLETION_INDEX": "2", "LAUNCH_NNODES": "3", "LAUNCH_MASTER_ADDR": "train-0.train"}
    c = resolve(env)
    assert c.source == "indexed-job"
    assert (c.nnodes, c.node_rank, c.rdzv_endpoint) == (3, 2, "train-0.train:29500")


def test_row_jobset_from_downward_api():
    env = {
        "JOBSET_NAME": "js",
        "JOBSET_REPLICATED_JOB_NAME": "workers",
        "JOBSET_JOB_INDEX": "1",
        "JOB_COMPLETION_INDEX": "1",
        "LAUNCH_PODS_PER_JOB": "2",
        "LAUNCH_NNODES": "4",
    }
    c = resolve(env)
    assert c.source == "jobset"
    assert (c.nnodes, c.node_rank, c.rdzv_id) == (4, 3, "js")
    assert c.master_addr == "js-workers-0-0.js"


def test_row_slurm():
    env = {
        "SLURM_JOB_ID": "4242",
        "SLURM_NNODES": "3",
        "SLURM_NODEID": "2",
        "SLURM_PROCID": "2",
        "SLURM_NTASKS": "3",
        "SLURM_JOB_NODELIST": "gpu[07-09]",
    }
    c = resolve(env)
    assert c.source == "slurm"
    assert (c.nnodes, c.node_rank, c.rdzv_id, c.rdzv_endpoint) == (3, 2, "4242", "gpu07:29500")


def test_every_row_has_a_test():
    tested = {
        "torchrun",
        "torchrun-env",
        "pytorchjob-v1",
        "trainer-v2",
        "indexed-job",
        "jobset",
        "slurm",
        "local",
    }
    assert {row.source for row in ROWS} == tested


def test_detect_prefers_torchrun_inside_a_pytorchjob_pod():
    env = {
        "MASTER_ADDR": "m",
        "RANK": "5",
        "WORLD_SIZE": "8",
        "PET_NPROC_PER_NODE": "4",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
        "TORCHELASTIC_RUN_ID": "x",
    }
    assert detect(env).source == "torchrun"


# ----------------------------------------------------------------------------- contradictions


@pytest.mark.parametrize(
    "env, names",
    [
        (
            {"SLURM_JOB_ID": "1", "SLURM_NNODES": "2", "SLURM_NODEID": "2", "SLURM_JOB_NODELIST": "n[1-2]"},
            ["SLURM_NODEID", "SLURM_NNODES"],
        ),
        ({"JOB_COMPLETION_INDEX": "1"}, ["JOB_COMPLETION_INDEX"]),
        ({"JOB_COMPLETION_INDEX": "0", "LAUNCH_NNODES": "2"}, ["LAUNCH_NNODES", "MASTER_ADDR"]),
        (
            {"RANK": "4", "LOCAL_RANK": "0", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"},
            ["RANK=4", "WORLD_SIZE=4"],
        ),
        ({"PET_NNODES": "two"}, ["PET_NNODES"]),
        ({"PET_NNODES": "2", "PET_NODE_RANK": "-1", "PET_MASTER_ADDR": "h"}, ["PET_NODE_RANK"]),
        ({"PET_MASTER_ADDR": "h", "PET_MASTER_PORT": "70000"}, ["PET_MASTER_PORT"]),
        (
            {"MASTER_ADDR": "m", "RANK": "0", "WORLD_SIZE": "6", "PET_NPROC_PER_NODE": "4"},
            ["WORLD_SIZE", "PET_NPROC_PER_NODE"],
        ),
        (
            {
                "SLURM_JOB_ID": "1",
                "SLURM_NNODES": "2",
                "SLURM_NODEID": "0",
                "SLURM_NTASKS": "16",
                "SLURM_JOB_NODELIST": "n[1-2]",
            },
            ["SLURM_NTASKS", "SLURM_NNODES"],
        ),
        (
            {"SLURM_JOB_ID": "1", "SLURM_NNODES": "2", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "n[1-2"},
            ["SLURM_JOB_NODELIST"],
        ),
    ],
)
def test_contradiction_is_one_line_naming_the_variables(env, names):
    with pytest.raises(ClusterError) as e:
        resolve(env)
    message = str(e.value)
    assert "\n" not in message
    for name in names:
        assert name in message, message


def test_missing_master_with_two_nodes_names_the_flag():
    with pytest.raises(ClusterError, match=r"--nnodes.*no master address"):
        resolve({}, {"nnodes": "2"})


# ----------------------------------------------------------------------------- overrides


def test_cli_flags_override_the_environment():
    env = {"SLURM_JOB_ID": "9", "SLURM_NNODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "a,b"}
    c = resolve(
        env,
        {
            "node_rank": "0",
            "rdzv_endpoint": "other:1234",
            "nproc_per_node": "3",
            "max_restarts": "2",
            "rdzv_id": None,
        },
    )
    assert (c.node_rank, c.rdzv_endpoint, c.nproc_per_node, c.max_restarts) == (0, "other:1234", 3, 2)
    assert (c.master_addr, c.master_port) == ("other", 1234)
    assert c.rdzv_id == "9"  # None = flag not given
    assert c.origin("node_rank") == "--node-rank"


def test_cli_nnodes_one_turns_a_cluster_env_into_a_single_node_job():
    env = {"PET_NNODES": "4", "PET_NODE_RANK": "0", "PET_MASTER_ADDR": "h"}
    assert resolve(env, {"nnodes": "1"}).nnodes == 1


def test_bad_flag_value_names_the_flag():
    with pytest.raises(ClusterError, match="--node-rank='x'"):
        resolve({}, {"node_rank": "x"})


def test_endpoint_without_port_uses_torchrun_default():
    c = resolve({}, {"nnodes": "2", "rdzv_endpoint": "head"})
    assert c.rdzv_endpoint == "head:29400"


# ----------------------------------------------------------------------------- Slurm host lists


@pytest.mark.parametrize(
    "text, hosts",
    [
        ("node[01-03,7],gpu5", ["node01", "node02", "node03", "node7", "gpu5"]),
        ("a", ["a"]),
        ("a,b", ["a", "b"]),
        ("n[8-10]", ["n8", "n9", "n10"]),
        ("rack[1-2]-n[1,3]", ["rack1-n1", "rack1-n3", "rack2-n1", "rack2-n3"]),
        ("gpu-[001-002].cluster", ["gpu-001.cluster", "gpu-002.cluster"]),
    ],
)
def test_expand_nodelist(text, hosts):
    assert expand_nodelist(text) == hosts


@pytest.mark.parametrize("text", ["n[1-", "n[3-1]", "n[a-b]", "n]1["])
def test_expand_nodelist_rejects_malformed(text):
    with pytest.raises(ClusterError, match="SLURM_JOB_NODELIST"):
        expand_nodelist(text)


# ----------------------------------------------------------------------------- processes per node


def test_nproc_auto_is_one_on_a_cpu_only_machine(tmp_path):
    assert visible_gpus({}, driver_dir=str(tmp_path / "none")) == 0
    assert resolve_nproc("auto", {}, gpus=lambda: 0) == 1
    assert resolve_nproc(3, {}) == 3


def test_visible_gpus_reads_driver_and_cuda_visible_devices(tmp_path):
    tmp_path = tmp_path / "gpus"
    for bus in ("0000:01:00.0", "0000:02:00.0", "0000:03:00.0"):
        (tmp_path / bus).mkdir(parents=True)
    assert visible_gpus({}, driver_dir=str(tmp_path)) == 3
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,2"}, driver_dir=str(tmp_path)) == 2
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "1,-1,0"}, driver_dir=str(tmp_path)) == 1
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, driver_dir=str(tmp_path)) == 0
    assert resolve_nproc("auto", {}, gpus=lambda: visible_gpus({}, driver_dir=str(tmp_path))) == 3

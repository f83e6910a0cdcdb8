"""The trainer validates its worker environment with the launcher's rules (it cannot import launch/): both
are fed the same torchrun-shaped environments and must reach the same verdict, naming the same variable."""

from __future__ import annotations

import re

import pytest

from launch.cluster import ClusterError
from launch.cluster import resolve as launch_resolve
from trainer.config import ConfigError
from trainer.runtime import workerenv

BASE = {
    "LOCAL_RANK": "0",
    "LOCAL_WORLD_SIZE": "1",
    "RANK": "0",
    "WORLD_SIZE": "1",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
    "TORCHELASTIC_RUN_ID": "job",
}

CASES = [
    ({}, None),
    ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, None),
    ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "RANK": "3", "LOCAL_RANK": "1"}, None),
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE"),
    ({"RANK": "-1"}, "RANK"),
    ({"RANK": "x"}, "RANK"),
    ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, "RANK"),
    ({"LOCAL_RANK": "1"}, "LOCAL_RANK"),
    ({"LOCAL_RANK": "-3"}, "LOCAL_RANK"),
    ({"LOCAL_WORLD_SIZE": "0"}, "LOCAL_WORLD_SIZE"),
    ({"WORLD_SIZE": "3", "LOCAL_WORLD_SIZE": "2"}, "WORLD_SIZE"),
    ({"MASTER_PORT": "99999"}, "MASTER_PORT"),
    ({"MASTER_PORT": "0"}, "MASTER_PORT"),
    ({"MASTER_PORT": "http"}, "MASTER_PORT"),
    ({"TORCHELASTIC_RESTART_COUNT": "once"}, "TORCHELASTIC_RESTART_COUNT"),
]


def _verdict(fn, exc, env):
    try:
        fn(env)
    except exc as e:
        return re.match(r"[A-Z_]+", str(e)).group(0)
    return None


@pytest.mark.parametrize("change,bad", CASES, ids=[str(c) for c, _ in CASES])
def test_the_trainer_and_the_launcher_agree_on_a_worker_environment(change, bad):
    env = {**BASE, **change}
    assert _verdict(launch_resolve, ClusterError, env) == bad
    assert _verdict(workerenv.read, ConfigError, env) == bad


def test_a_world_without_a_master_address_is_refused_by_the_trainer():
    with pytest.raises(ConfigError, match="MASTER_ADDR is not set"):
        workerenv.read({"WORLD_SIZE": "2", "RANK": "0"})

"""The worker environment torchrun gives every process, validated before anything waits on it.

A trainer started by hand with ``WORLD_SIZE=abc``, ``MASTER_PORT=99999``, ``RANK>=WORLD_SIZE`` or
``RANK=-1`` would otherwise raise a traceback, or wait out ``dist.init_timeout_s`` and report a hang (exit 4,
"retry"). These are the launcher's own rules (``launch/cluster.py``, the torchrun row); the trainer cannot
import ``launch/``, so ``tests/unit/test_workerenv_agree.py`` feeds both the same environments and
requires the same verdicts. Every failure is a :class:`ConfigError` (exit 2) naming the variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..config import ConfigError

HINT = "start the trainer with torchrun or `python -m launch`, or unset the variable"


@dataclass(frozen=True)
class WorkerEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def _int(env: Mapping[str, str], var: str, default: str, lo: int) -> int:
    text = env.get(var)
    text = default if text in (None, "") else text
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ConfigError(f"{var}={text!r}: expected an integer ({HINT})") from None
    if value < lo:
        raise ConfigError(f"{var}={text!r}: expected an integer >= {lo} ({HINT})")
    return value


def read(env: Mapping[str, str]) -> WorkerEnv:
    """RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and the master's address, checked (ConfigError)."""
    world = _int(env, "WORLD_SIZE", "1", lo=1)
    local_world = _int(env, "LOCAL_WORLD_SIZE", "1", lo=1)
    rank = _int(env, "RANK", "0", lo=0)
    local_rank = _int(env, "LOCAL_RANK", "0", lo=0)
    if rank >= world:
        raise ConfigError(f"RANK={rank} is outside the world of WORLD_SIZE={world} ({HINT})")
    if local_rank >= local_world:
        raise ConfigError(f"LOCAL_RANK={local_rank} is outside LOCAL_WORLD_SIZE={local_world} ({HINT})")
    if world % local_world:
        raise ConfigError(f"WORLD_SIZE={world} is not a multiple of LOCAL_WORLD_SIZE={local_world} ({HINT})")
    if env.get("MASTER_PORT") not in (None, ""):
        port = _int(env, "MASTER_PORT", "0", lo=1)
        if port > 65535:
            raise ConfigError(f"MASTER_PORT={env['MASTER_PORT']!r}: a port is 1..65535 ({HINT})")
    for var in ("TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS"):
        if env.get(var) not in (None, ""):
            _int(env, var, "0", lo=0)
    if world > 1 and not str(env.get("MASTER_ADDR", "")).strip():
        raise ConfigError(f"WORLD_SIZE={world} but MASTER_ADDR is not set ({HINT})")
    return WorkerEnv(rank, world, local_rank, local_world)

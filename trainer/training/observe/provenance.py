"""Where a run came from: times, command line, git commit, versions, hosts (summary.json and the trackers)."""

from __future__ import annotations

import datetime
import os
import shlex
import socket
import subprocess
import sys
import time
from typing import Optional

import torch

from ...runtime import dist
from ...runtime.redact import redact


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _git(args: list[str], cwd: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):  # no git in the image, or it hangs
        return None
    return out.stdout if out.returncode == 0 else None


def git_state(cwd: str) -> dict:
    """{"commit", "dirty"} of the checkout the run was started from; {} outside a checkout."""
    commit = _git(["rev-parse", "HEAD"], cwd)
    if not commit:
        return {}
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return {"commit": commit.strip(), "dirty": bool(status and status.strip())}


def versions() -> dict:
    cuda = torch.cuda.is_available()
    nccl = None
    if cuda and hasattr(torch.cuda, "nccl"):
        v = torch.cuda.nccl.version()
        nccl = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "nccl": nccl,
        "python": sys.version.split()[0],
    }


def collect(state: dist.DistState) -> dict:
    """Collective (every rank calls it, for the host names); the record is the same on every rank."""
    hosts = dist.all_gather_object(state, socket.gethostname())
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return {
        "start_time": utc_now(),
        "start_unix": round(time.time(), 3),
        "command": redact(shlex.join(argv)),  # a URL in an override may carry a password
        "cwd": os.getcwd(),
        "git": git_state(os.getcwd()),
        "versions": versions(),
        "hosts": sorted(set(hosts)),
        "world_size": state.world_size,
    }


def flat(prov: dict, prefix: str = "") -> dict[str, str]:
    """One level of string values, e.g. {"git.commit": "...", "versions.torch": "2.13.0"} (tracker tags)."""
    out: dict[str, str] = {}
    for k, v in prov.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        elif v is not None:
            out[prefix + k] = ",".join(map(str, v)) if isinstance(v, list) else str(v)
    return out

"""An exclusive lease on run.dir: one run writes into a run directory at a time.

``<run.dir>/.lease`` holds ``{pid, host, started, job, proc_start}`` and is created with ``O_EXCL`` by
global rank 0 before anything else is written there. A second run on the same directory is refused (exit 2)
with who holds it. A lease is taken over:

- when it names this job (``TORCHELASTIC_RUN_ID``): after an elastic restart rank 0 may be on another node;
- when its process is dead on this host (a SIGKILLed run): with a warning.

A takeover is atomic: of several processes that find the same dead lease at the same instant, exactly one
gets it (``Lease._take_over``: a ``link(2)`` that only one can make, then a rename); the others see the
new, live holder and are refused.

A lease held from another host cannot be checked from here; if that host is gone, delete the ``.lease``
file (README "When things go wrong"). On a shared file system (NFS, Lustre, ...) ``O_EXCL`` creation is
atomic on NFSv3+ and all common parallel file systems, which is what the lease relies on.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from typing import Optional

import psutil

from ..config import ConfigError

LEASE = ".lease"


def job_id() -> Optional[str]:
    """The job this process belongs to: torchrun's run id (shared by every node and restart), if any."""
    rid = os.environ.get("TORCHELASTIC_RUN_ID", "")
    return rid if rid and rid.lower() != "none" else None  # torchrun's default --rdzv-id is "none"


def _proc_start(pid: int) -> Optional[float]:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def _mine() -> dict:
    pid = os.getpid()
    return {
        "pid": pid,
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "job": job_id(),
        "proc_start": _proc_start(pid),
    }


def _parse(raw: bytes) -> dict:
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError:
        return {}  # a torn or foreign file: treated as a lease of unknown holder
    return data if isinstance(data, dict) else {}


def _alive(holder: dict) -> bool:
    """Whether the holder's process still runs (same pid AND same start time: pids are reused)."""
    start = _proc_start(int(holder.get("pid", -1)))
    if start is None:
        return False
    want = holder.get("proc_start")
    return want is None or abs(start - float(want)) < 1.0


class Lease:
    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, LEASE)
        self.held = False

    def read(self) -> Optional[dict]:
        raw = self._read_raw()
        return None if raw is None else _parse(raw)

    def _read_raw(self) -> Optional[bytes]:
        try:
            with open(self.path, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None
        except OSError:
            return b""  # unreadable: treated as a lease of unknown holder

    def _write_exclusive(self, mine: dict) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(mine, fh)
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def _take_over(self, seen: bytes, mine: dict) -> bool:
        """Replace the lease whose bytes are ``seen`` with ours, or return False if another process took it
        first. The decision is one atomic operation: ``link(2)`` of the lease to a name derived from those
        bytes, which exactly one of several racing processes can create (on NFS too). The winner checks
        it linked the lease it judged (not a newer one), then renames its own lease over it."""
        claim = f"{self.path}.takeover-{hashlib.sha256(seen).hexdigest()[:16]}"
        try:
            os.link(self.path, claim)
        except FileExistsError:
            return False  # another process is taking over (or took over) this very lease
        except FileNotFoundError:
            return False  # released meanwhile: start again
        try:
            with open(claim, "rb") as fh:
                if fh.read() != seen:
                    return False  # the lease changed between our read and the link: judge it again
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(mine, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(tmp, self.path)
            return True
        finally:
            os.unlink(claim)  # a late racer that links the lease now links ours, whose bytes differ

    def acquire(self) -> Optional[str]:
        """Take the lease or raise ConfigError naming the holder; returns a warning to log when a lease was
        taken over (the caller logs it once the run's own log is open). OSError (storage) propagates."""
        mine = _mine()
        for _ in range(20):  # a holder may release, or a racer take over, between our attempts
            if self._write_exclusive(mine):
                self.held = True
                return None
            raw = self._read_raw()
            if raw is None:
                continue
            holder = _parse(raw)
            pid, host = holder.get("pid", "?"), holder.get("host", "?")
            who = f"pid {pid} on {host} since {holder.get('started', '?')}"
            if mine["job"] and holder.get("job") == mine["job"]:
                note = f"run.dir lease of this job ({mine['job']}) taken over from {who} (elastic restart)"
            elif holder.get("host") == mine["host"] and not _alive(holder):
                note = f"run.dir {self.path}: stale lease of {who} (that process is gone): taken over"
            else:
                raise ConfigError(
                    f"run.dir={os.path.dirname(self.path)!r}: in use by {who} "
                    f"(wait for it, choose another run.dir, or delete {self.path} if that run is gone)"
                )
            if self._take_over(raw, mine):
                self.held = True
                return note
            time.sleep(0.05)  # another process is mid-takeover: read the lease again once it is done
        raise ConfigError(f"run.dir={os.path.dirname(self.path)!r}: could not take the lease {self.path}")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        holder = self.read()
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            try:
                os.unlink(self.path)
            except OSError:
                pass  # a vanished run dir is reported elsewhere; releasing must not mask the exit code

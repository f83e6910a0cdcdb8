"""Transactional checkpoints: write under a temporary name, fsync, checksum, rename, then move `latest`.

Layout under ``<run.dir>/checkpoints/``::

    step-00000100/            a committed checkpoint (renamed into place only when complete)
        state.pt              model, optimizer, scheduler, scaler, progress (rank 0; full, unsharded)
        rng-rank00000.pt      RNG state of each rank
        manifest.json         step, epoch, samples, world size, config hash, versions, sha256 per file
    latest                    name of the newest committed checkpoint (atomic rename of a temp file)
    .tmp-step-00000200/       an interrupted write: ignored and cleaned on the next save

Reading verifies every checksum before unpickling anything, and then uses ``weights_only=True``; a
checkpoint that fails is reported and the previous one is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch

log = logging.getLogger("trainer")

STATE = "state.pt"
MANIFEST = "manifest.json"
LATEST = "latest"
FORMAT = 1

# Test hook: called with a phase name at each point of a write where a crash must leave the latest
# checkpoint loadable. Fault-injection tests set it; it is None in normal runs.
crash_hook: Optional[Callable[[str], None]] = None


def _phase(name: str) -> None:
    if crash_hook is not None:
        crash_hook(name)
    hook = os.environ.get("TRAINER_TEST_KILL_AT")
    if hook and hook == name:  # deterministic kill point for fault-injection tests
        os.kill(os.getpid(), 9)


class CheckpointError(RuntimeError):
    pass


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    samples_in_epoch: int = 0  # global samples consumed in the current epoch
    samples_total: int = 0  # global samples consumed since the start


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


def rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def versions() -> dict:
    import platform

    return {"torch": torch.__version__, "python": platform.python_version(), "format": FORMAT}


class CheckpointDir:
    """Owns ``<run.dir>/checkpoints``: save (all ranks call), discover, verify, load, prune."""

    def __init__(self, root: str, keep: int = 3):
        self.root = root
        self.keep = keep

    # ------------------------------------------------------------------ discovery
    def committed(self) -> list[str]:
        """Committed checkpoint directories, newest first (temp dirs are never listed)."""
        if not os.path.isdir(self.root):
            return []
        names = sorted((n for n in os.listdir(self.root) if n.startswith("step-")), reverse=True)
        return [os.path.join(self.root, n) for n in names if os.path.isfile(os.path.join(self.root, n, MANIFEST))]

    def latest_pointer(self) -> Optional[str]:
        p = os.path.join(self.root, LATEST)
        if not os.path.isfile(p):
            return None
        with open(p, encoding="utf-8") as fh:
            name = fh.read().strip()
        return os.path.join(self.root, name) if name else None

    def find_resumable(self) -> Optional[str]:
        """The `latest` checkpoint if it verifies, else the newest older one that does."""
        candidates = []
        ptr = self.latest_pointer()
        if ptr:
            candidates.append(ptr)
        candidates += [c for c in self.committed() if c != ptr and (ptr is None or c < ptr)]
        for c in candidates:
            problem = verify(c)
            if problem is None:
                return c
            log.warning("checkpoint %s is unusable (%s); trying the previous one", c, problem)
        return None

    # ------------------------------------------------------------------ writing
    def save(self, step: int, rank: int, world_size: int, state: Optional[dict], manifest_extra: dict,
             barrier: Callable[[], None]) -> str:
        """Collective: every rank calls it. Rank 0 writes `state` (already gathered), each rank its RNG."""
        final = os.path.join(self.root, step_name(step))
        tmp = os.path.join(self.root, ".tmp-" + step_name(step))
        t0 = time.perf_counter()
        if rank == 0:
            os.makedirs(self.root, exist_ok=True)
            if os.path.exists(tmp):
                shutil.rmtree(tmp)
            os.makedirs(tmp)
        barrier()
        _phase("before_data")
        atomic_torch_save(rng_state(), os.path.join(tmp, f"rng-rank{rank:05d}.pt"))
        if rank == 0:
            assert state is not None
            _phase("mid_file")
            atomic_torch_save(state, os.path.join(tmp, STATE))
        barrier()  # every rank's files are durable
        if rank == 0:
            files = sorted(f for f in os.listdir(tmp) if not f.endswith(".tmp"))
            manifest = {"step": step, "world_size": world_size, "time": time.time(), "versions": versions(),
                        "files": {f: sha256_file(os.path.join(tmp, f)) for f in files}, **manifest_extra}
            atomic_write_text(os.path.join(tmp, MANIFEST), json.dumps(manifest, indent=1, sort_keys=True))
            _phase("before_rename")
            if os.path.exists(final):  # same step saved again (e.g. final save after periodic)
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(self.root)
            _phase("before_latest")
            atomic_write_text(os.path.join(self.root, LATEST), step_name(step) + "\n")
            self._prune()
        barrier()  # nobody proceeds (or exits) before `latest` moved
        log.debug("checkpoint %s written in %.2fs", final, time.perf_counter() - t0)
        return final

    def _prune(self) -> None:
        for d in self.committed()[self.keep:]:
            shutil.rmtree(d, ignore_errors=True)
        for n in os.listdir(self.root):
            if n.startswith(".tmp-"):
                shutil.rmtree(os.path.join(self.root, n), ignore_errors=True)


def read_manifest(ckpt: str) -> dict:
    with open(os.path.join(ckpt, MANIFEST), encoding="utf-8") as fh:
        return json.load(fh)


def verify(ckpt: str) -> Optional[str]:
    """None if every file matches the manifest's checksum, else what is wrong."""
    try:
        manifest = read_manifest(ckpt)
    except (OSError, ValueError) as e:
        return f"manifest unreadable: {e}"
    for name, digest in manifest.get("files", {}).items():
        p = os.path.join(ckpt, name)
        if not os.path.isfile(p):
            return f"missing {name}"
        if sha256_file(p) != digest:
            return f"checksum mismatch in {name}"
    return None


def resolve(path: str) -> str:
    """A checkpoint dir from a checkpoint dir, a checkpoints/ dir or a run dir."""
    if os.path.isfile(os.path.join(path, MANIFEST)):
        return path
    for root in (path, os.path.join(path, "checkpoints")):
        if os.path.isdir(root) and (os.path.isfile(os.path.join(root, LATEST)) or
                                    any(n.startswith("step-") for n in os.listdir(root))):
            found = CheckpointDir(root).find_resumable()
            if found:
                return found
    raise CheckpointError(f"{path!r}: no usable checkpoint found")


def load_state(ckpt: str, rank: int = 0, map_location: str = "cpu", verify_first: bool = True) -> tuple[dict, Optional[dict]]:
    """(state, rng-of-this-rank or None). Verifies checksums before any unpickling."""
    if verify_first:
        problem = verify(ckpt)
        if problem:
            raise CheckpointError(f"checkpoint {ckpt}: {problem}")
    state = torch.load(os.path.join(ckpt, STATE), map_location=map_location, weights_only=True)
    rng_path = os.path.join(ckpt, f"rng-rank{rank:05d}.pt")
    rng = torch.load(rng_path, map_location="cpu", weights_only=True) if os.path.isfile(rng_path) else None
    return state, rng

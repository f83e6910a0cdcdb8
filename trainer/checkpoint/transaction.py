"""Transactional checkpoints: write under a temporary name, fsync, checksum, rename, then move `latest`.

Layout under ``checkpoint.dir`` (default ``<run.dir>/checkpoints/``)::

    step-00000100/            a committed checkpoint (renamed into place only when complete)
        state.pt              model, optimizer, scheduler, scaler, progress (rank 0; full, unsharded)
        rng-rank00000.pt      RNG state of each rank
        data-rank00000.pt     a stream's loader position on each rank (streamed data only)
        manifest.json         step, epoch, samples, world size, config hash, versions, checksum per file
    latest                    name of the newest committed checkpoint (atomic rename of a temp file)
    .tmp-step-00000200/       an interrupted write: ignored and cleaned on the next save

The checksum of each file (xxh3_128 by default, sha256 with ``checkpoint.checksum=sha256``; the manifest's
``checksum`` key names it, and a manifest without one is sha256) is computed from the bytes as they are
written (stores.HashingWriter), not by reading the file back. It catches a torn, truncated or accidentally
altered file; it is not a signature (whoever can write the files can write a matching manifest). Reading
verifies every checksum (read.py: hashed alongside the load, the state returned only once its digest
matched) and uses ``weights_only=True``; a checkpoint that fails is reported and the previous one is used.

On an object store (``checkpoint.dir=s3://bucket/prefix``, stores.py) there is no rename: the files are
written in place under ``step-N/`` (a stale one from an interrupted write is deleted first), the manifest
is written last (digests of the bytes rank 0 sent itself, read back for files other ranks wrote), then
``latest`` in one PUT. A ``step-N/`` without a manifest is not a checkpoint: it is never listed and is
deleted by the next commit.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any, Optional

import torch

from ..runtime import atomic
from . import stores
from .layout import DCP, LATEST, MANIFEST, STATE, CheckpointError, data_file, step_name, versions
from .read import ranked_by_monitor, verify

log = logging.getLogger("trainer")

# Test hook: called with a phase name at each point of a write where a crash must leave the latest
# checkpoint loadable. Fault-injection tests set it; it is None in normal runs.
crash_hook: Optional[Callable[[str], None]] = None


def _phase(name: str, step: int = -1, rank: int = 0) -> None:
    """Instrumented point of a checkpoint write, for deterministic fault injection.

    TRAINER_TEST_KILL_AT=PHASE[:STEP[:RANK]] SIGKILLs this process when it reaches PHASE (one of
    before_data, mid_file, before_manifest, before_rename, before_latest) of the save at STEP on RANK (any
    step / rank 0 when omitted). On an object store mid_file is during an upload and before_rename does not
    occur (nothing is renamed). Normal runs never set it.
    """
    if crash_hook is not None:
        crash_hook(name)
    spec = os.environ.get("TRAINER_TEST_KILL_AT")
    if not spec:
        return
    want, _, rest = spec.partition(":")
    want_step, _, want_rank = rest.partition(":")
    if want == name and (not want_step or int(want_step) == step) and int(want_rank or 0) == rank:
        os.kill(os.getpid(), 9)


class _PhaseAfterFirstWrite:
    """File proxy that fires the mid_file phase once some, but not all, bytes are on disk."""

    def __init__(self, fh, step: int, rank: int):
        self._fh, self._step, self._rank, self._fired = fh, step, rank, False

    def write(self, data) -> int:
        n = self._fh.write(data)
        if not self._fired:
            self._fired = True
            self._fh.flush()
            _phase("mid_file", self._step, self._rank)
        return n

    def __getattr__(self, name):
        return getattr(self._fh, name)


def atomic_torch_save(
    obj: Any, path: str, step: int = -1, rank: int = 0, checksum: str = stores.DEFAULT_CHECKSUM
) -> None:
    store = stores.for_path(path)
    if store.remote:  # serialized here, then one PUT (retried): an object is whole or absent
        buf = io.BytesIO()
        torch.save(obj, buf)
        on_first = (lambda: _phase("mid_file", step, rank)) if step >= 0 else None
        store.write_bytes(path, buf.getvalue(), on_first_chunk=on_first, checksum=checksum)
        return
    out = None
    try:
        with atomic.atomic_open(path, "wb") as fh:
            out = stores.HashingWriter(fh, checksum)  # the manifest's digest from the bytes written
            torch.save(obj, _PhaseAfterFirstWrite(out, step, rank) if step >= 0 else out)
    finally:
        if out is not None:
            out.close_pool()
    store.remember(path, checksum, out.hexdigest(), out.size)


def atomic_write_text(path: str, text: str) -> None:
    stores.for_path(path).write_bytes(path, text.encode("utf-8"))


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


class CheckpointDir:
    """Owns ``checkpoint.dir``: save (all ranks call), discover, verify, load, prune; local or remote."""

    def __init__(self, root: str, keep: int = 3, keep_best: int = 0, checksum: str = stores.DEFAULT_CHECKSUM):
        self.root = str(root)
        self.keep = keep
        self.keep_best = keep_best  # also kept: the K best by the metric their manifests record
        self.checksum = checksum  # of the files it writes; reading takes the one each manifest names
        self.store = stores.for_path(self.root)

    def _join(self, *parts: str) -> str:
        return stores.join(self.root, *parts)

    # ------------------------------------------------------------------ discovery
    def committed(self) -> list[str]:
        """Committed checkpoint directories, newest first (temp dirs are never listed)."""
        names = sorted((n for n in self.store.listdir(self.root) if n.startswith("step-")), reverse=True)
        return [self._join(n) for n in names if self.store.isfile(self._join(n, MANIFEST))]

    def latest_pointer(self) -> Optional[str]:
        """The checkpoint `latest` names; None (with a warning) if missing or not a plain name in here."""
        p = self._join(LATEST)
        if not self.store.isfile(p):
            return None
        try:
            name = self.store.read_bytes(p).decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            log.warning(
                "checkpoint pointer %s is unreadable (%s); looking at the checkpoints themselves", p, e
            )
            return None
        if not name:
            return None
        if os.path.isabs(name) or os.path.basename(name) != name or name in (".", ".."):
            log.warning("checkpoint pointer %s names %r, outside %s; ignored", p, name[:200], self.root)
            return None
        return self._join(name)

    def is_empty(self) -> bool:
        return not self.store.listdir(self.root)

    def find_resumable(self, preload: bool = False) -> Optional[str]:
        """The `latest` checkpoint if it verifies, else the newest older one that does.

        None when there is no checkpoint at all; CheckpointError naming every problem when there are some
        and none is usable. ``self.unusable`` lists those that failed (never to be deleted by a prune).
        ``preload``: the caller loads the one found next (resume): its state is kept from the verification
        (read.verify), so it is read and hashed once.
        """
        candidates = []
        ptr = self.latest_pointer()
        if ptr:
            candidates.append(ptr)
        candidates += [c for c in self.committed() if c != ptr and (ptr is None or c < ptr)]
        problems = []
        self.unusable: list[str] = []
        for c in candidates:
            problem = verify(c, preload=preload)
            if problem is None:
                return c
            log.warning("checkpoint %s is unusable (%s); trying the previous one", c, problem)
            problems.append(f"{os.path.basename(c)}: {problem}")
            if os.path.isdir(c):
                self.unusable.append(c)
        if problems:
            raise CheckpointError(f"no usable checkpoint in {self.root} ({'; '.join(problems)})")
        return None

    def set_aside(self, paths: list[str]) -> list[str]:
        """Move checkpoints that could not be read to ``unusable-step-N`` (never deleted, never resumed)."""
        moved = []
        for c in paths:
            dst = os.path.join(self.root, "unusable-" + os.path.basename(c))
            i = 1
            while os.path.exists(dst):
                i += 1
                dst = os.path.join(self.root, f"unusable-{os.path.basename(c)}-{i}")
            os.rename(c, dst)
            moved.append(dst)
        return moved

    # ------------------------------------------------------------------ writing
    # A save is three verbs so that the middle one can run in a background thread (async saves):
    # begin (collective, main thread) -> write (this rank's files) -> commit (collective, main thread).
    def tmp_dir(self, step: int) -> str:
        """Where the files of a save are written: a temp dir renamed later, or step-N/ itself (no rename)."""
        return self._join((".tmp-" if self.store.renames else "") + step_name(step))

    def begin(self, step: int, rank: int, barrier: Callable[[], None]) -> None:
        tmp = self.tmp_dir(step)
        if rank == 0:
            self.store.makedirs(self.root)
            # a link there is removed, never written through (stores.py drop_link)
            if not self.store.drop_link(tmp) and self.store.exists(tmp):
                self._remove_checkpoint(tmp)
            self.store.makedirs(tmp)
        barrier()

    def _remove_checkpoint(self, path: str) -> None:
        """Manifest first: a half-deleted checkpoint must never look committed."""
        self.store.remove(stores.join(path, MANIFEST))
        self.store.rmtree(path)

    def write(
        self,
        step: int,
        rank: int,
        state: Optional[dict],
        rng: dict,
        sharded: Optional[dict] = None,
        group=None,
        data: Optional[dict] = None,
    ) -> None:
        """This rank's files, each durable (fsync) before the function returns.

        Collective only for `sharded` state (FSDP), which DCP writes on `group`: a gloo group of its own,
        so that a write in a background thread never interleaves with the main thread's collectives.
        """
        tmp = self.tmp_dir(step)
        _phase("before_data", step, rank)
        atomic_torch_save(rng, stores.join(tmp, f"rng-rank{rank:05d}.pt"), checksum=self.checksum)
        if data is not None:  # a stream's loader position (data/stream.py)
            atomic_torch_save(data, stores.join(tmp, data_file(rank)), checksum=self.checksum)
        if sharded is not None:
            from . import dcp_io  # torch.distributed.checkpoint costs ~0.9 s to import: FSDP runs only

            dcp_io.save(sharded, stores.join(tmp, DCP), process_group=group)
        if rank == 0:
            assert state is not None
            atomic_torch_save(state, stores.join(tmp, STATE), step, rank, checksum=self.checksum)

    def commit(
        self, step: int, rank: int, world_size: int, manifest_extra: dict, barrier: Callable[[], None]
    ) -> str:
        """After every rank's write: manifest, rename into place, move `latest`, prune (rank 0)."""
        tmp, final = self.tmp_dir(step), self._join(step_name(step))
        barrier()  # every rank's files are durable
        if rank == 0:
            files = self.store.list_files(tmp)
            if not files:  # a listing that sees nothing must not become a manifest that vouches for nothing
                raise CheckpointError(f"checkpoint step {step}: no files found under {tmp}")
            manifest = {
                "step": step,
                "world_size": world_size,
                "time": time.time(),
                "versions": versions(),
                "checksum": self.checksum,
                "files": {
                    f: self.store.digest(stores.join(tmp, f), self.checksum, reread=False) for f in files
                },
                **manifest_extra,
            }
            _phase("before_manifest", step, rank)
            atomic_write_text(stores.join(tmp, MANIFEST), json.dumps(manifest, indent=1, sort_keys=True))
            if self.store.renames:
                _phase("before_rename", step, rank)
                self.store.rename_dir(tmp, final)
            _phase("before_latest", step, rank)
            atomic_write_text(self._join(LATEST), step_name(step) + "\n")
            self._prune(keep_step=step)
        barrier()  # nobody proceeds (or exits) before `latest` moved
        return final

    def save(
        self,
        step: int,
        rank: int,
        world_size: int,
        state: Optional[dict],
        manifest_extra: dict,
        barrier: Callable[[], None],
        sharded: Optional[dict] = None,
        group=None,
        data: Optional[dict] = None,
    ) -> str:
        """Synchronous save. Collective: every rank calls it; rank 0 passes the gathered `state`.

        A write the storage refuses (disk full, ...) removes its temp dir (space for the next try) and
        re-raises; `latest` still names the previous checkpoint.
        """
        try:
            self.begin(step, rank, barrier)
            self.write(step, rank, state, rng_state(), sharded, group, data)
            return self.commit(step, rank, world_size, manifest_extra, barrier)
        except OSError as e:
            if not stores.endpoint_failed(e):  # a dead endpoint: no cleanup; the next commit prunes it
                self.discard(step)
            raise
        except RuntimeError as e:  # torch.save reports ENOSPC as "unexpected pos", the OSError chained
            if isinstance(e.__cause__ or e.__context__, OSError) and not stores.endpoint_failed(e):
                self.discard(step)
            raise

    def discard(self, step: int) -> None:
        """Remove a failed save's files (on an object store: the partial step-N/, which has no manifest)."""
        try:
            self.store.rmtree(self.tmp_dir(step))
        except OSError as e:  # the store that refused the write may refuse this too; the next commit prunes
            log.warning("could not remove %s: %s", self.tmp_dir(step), stores.describe(e))

    def best(self, k: int) -> list[str]:
        """The k best committed checkpoints by the ``monitor`` record of their manifests, best first."""
        return ranked_by_monitor(self.committed())[:k]

    def _prune(self, keep_step: int = -1) -> None:
        committed = self.committed()
        spared = set(committed[: self.keep]) | set(self.best(self.keep_best) if self.keep_best else [])
        for d in committed:
            if d not in spared:
                self._remove_checkpoint(d)
        for n in self.store.listdir(self.root):
            if n.startswith(".tmp-"):
                self.store.rmtree(self._join(n))
            elif not self.store.renames and n.startswith("step-") and n != step_name(keep_step):
                if self._join(n) not in committed:  # an interrupted write in place: never a checkpoint
                    self.store.rmtree(self._join(n))


def resolve_best(path: str) -> str:
    """The best checkpoint of a run dir (or checkpoints dir) that verifies, by its manifest's monitor."""
    store = stores.for_path(path)
    for root in (stores.join(path, "checkpoints"), path):
        if store.isdir(root):
            for c in CheckpointDir(root).best(10**6):
                if verify(c) is None:
                    return c
    raise CheckpointError(
        f"{path!r}: no checkpoint records a monitored metric (train with checkpoint.monitor=...)"
    )


def resolve(path: str) -> str:
    """A checkpoint dir from a checkpoint dir, a checkpoints/ dir or a run dir (local paths or URLs)."""
    store = stores.for_path(path)
    if store.isfile(stores.join(path, MANIFEST)):
        return path
    for root in (path, stores.join(path, "checkpoints")):
        names = store.listdir(root)
        if LATEST in names or any(n.startswith("step-") for n in names):
            found = CheckpointDir(root).find_resumable()  # raises when every one is unusable
            if found:
                return found
    raise CheckpointError(f"{path!r}: no usable checkpoint found")

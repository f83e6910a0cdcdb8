"""When and how the loop checkpoints: synchronous saves, or asynchronous ones with one write in flight.

``Saver`` is the loop's side of ``trainer.checkpoint`` (which owns the on-disk transaction): it keeps the
``CheckpointDir`` of the run (``checkpoint.dir``: local or an object store), starts, polls and commits async
writes, says in the log what each save cost the step loop, and after each commit mirrors the run's files
beside remote checkpoints (``trainer.checkpoint.mirror``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Optional

import torch

from ..checkpoint import CheckpointDir, CheckpointError, checkpoint_root, mirror, rng_state, stores
from ..config import Config
from ..runtime import dist, io_faults

log = logging.getLogger("trainer")


class Saver:
    def __init__(self, cfg: Config, state: dist.DistState, run_dir: str):
        self.state, self.run_dir = state, run_dir
        self.ckpts = CheckpointDir(
            checkpoint_root(cfg.checkpoint.dir, run_dir),
            keep=cfg.checkpoint.keep,
            keep_best=cfg.checkpoint.keep_best,
            checksum=cfg.checkpoint.checksum,
        )
        self.writer: Optional[AsyncWriter] = None
        if cfg.checkpoint.async_save:
            self.writer = AsyncWriter(
                self.ckpts,
                state.rank,
                state.world_size,
                self._barrier,
                lambda done: dist.all_true(state, done),
            )
        self.saved_at = -1  # the step of the last save started (or resumed from)
        self.committed: Optional[str] = None  # the last checkpoint this process committed (for messages)
        self._mirroring: Optional[threading.Thread] = None  # copies of logs and metrics, off the step loop
        # The loop's watchdog breadcrumb: called with "checkpoint barrier" before each barrier and with
        # "checkpoint" after it, so that the watchdog names the rank still writing when the others wait.
        self.phase: Callable[[str], None] = lambda op: None

    def _barrier(self) -> None:
        self.phase("checkpoint barrier")
        dist.barrier(self.state)
        self.phase("checkpoint")

    def save(
        self,
        step: int,
        state: Optional[dict],
        extra: dict,
        sharded: Optional[dict],
        final: bool,
        t0: float,
        data: Optional[dict] = None,
        late: frozenset = frozenset(),
    ) -> Optional[str]:
        """Collective. Async (checkpoint.async_save) except for the last save of a run. ``data``: this
        rank's stream loader state (``data-rankN.pt``), None for map-style data. ``late``: see
        ``AsyncWriter.start`` (the caller then calls ``copy_fence()`` before its next optimizer step)."""
        self.close()  # the previous checkpoint's mirror copy is complete before this save starts
        self.saved_at = step
        if self.writer is not None:
            self.finish(step)  # at most one write in flight
            self.writer.start(step, state, extra, sharded, self.state.ckpt_group, data, late=late)
            log.info(
                "checkpoint step %d: async write started (step loop blocked %.3fs)",
                step,
                time.perf_counter() - t0,
            )
            return self.finish(step) if final else None
        try:
            path = self.ckpts.save(
                step,
                self.state.rank,
                self.state.world_size,
                state,
                extra,
                self._barrier,
                sharded,
                self.state.ckpt_group,
                data,
            )
        except Exception as e:
            self._raise_storage(e, step)
            raise
        self.committed = path
        log.info("checkpoint step %d saved in %.2fs -> %s", step, time.perf_counter() - t0, path)
        self._after_commit()
        return path

    def _after_commit(self) -> None:
        """Mirror the run's files as of this commit beside a remote checkpoint, in a thread (one at a time;
        it is done before the next save begins)."""
        if not self.ckpts.store.remote:
            return
        self.close()
        files = mirror.read_run_files(self.run_dir, self.state.rank)
        self._mirroring = threading.Thread(
            target=mirror.upload, args=(self.ckpts.root, files), name="mirror-upload", daemon=True
        )
        self._mirroring.start()

    def close(self) -> None:
        """Wait for the last mirror upload (before the process exits or the final files are uploaded)."""
        if self._mirroring is not None:
            self._mirroring.join()
            self._mirroring = None

    def _raise_storage(self, e: BaseException, step: int) -> None:
        """A write the storage refused: StorageError naming the checkpoint (exit 74); `latest` unchanged.

        On an object store, any OSError that survived the retries (a timeout, a 5xx, a refusal) is such a
        fault, worded by stores.describe."""
        fault = io_faults.describe(e, where=self.ckpts.tmp_dir(step))
        if not fault and self.ckpts.store.remote:
            cause = _os_error(e)
            if cause is not None:
                fault = f"storage error: {stores.describe(cause)} at {self.ckpts.tmp_dir(step)}"
        if fault and stores.endpoint_failed(e):  # nothing more is asked of a dead endpoint
            prev = (
                f"the previous checkpoint {self.committed} is intact"
                if self.committed
                else "`latest` unmoved"
            )
            raise io_faults.StorageError(f"{fault} while writing checkpoint step {step}; {prev}") from e
        if fault:
            self.ckpts.discard(step)  # free what the failed write took; the next try starts clean
            try:
                latest = self.ckpts.latest_pointer()
            except Exception:  # cleanup never replaces the outcome
                latest = None
            raise io_faults.StorageError(
                f"{fault} while writing checkpoint step {step}; "
                + (f"the previous checkpoint {latest} is intact" if latest else "no earlier checkpoint")
            ) from e

    def poll(self, step: int) -> None:
        """At a step boundary: commit an async write that every rank has finished."""
        if self.writer is not None and self.writer.in_flight:
            started = self.writer.step
            try:
                path = self.writer.poll()
            except Exception as e:
                self._raise_storage(e, started)
                raise
            if path:
                self.committed = path
                log.info(
                    "checkpoint step %d committed at step %d (async: %d steps ran during the write) -> %s",
                    started,
                    step,
                    step - started,
                    path,
                )
                self._after_commit()

    def finish(self, step: int) -> Optional[str]:
        """Wait for an in-flight async write and commit it (before exiting, or before the next save)."""
        if self.writer is None or not self.writer.in_flight:
            return None
        started = self.writer.step
        try:
            path = self.writer.wait()
        except Exception as e:
            self._raise_storage(e, started)
            raise
        self.committed = path
        log.info("checkpoint step %d committed at step %d -> %s", started, step, path)
        self._after_commit()
        return path


def _os_error(e: Optional[BaseException]) -> Optional[OSError]:
    """The first OSError in an exception chain (DCP and the async writer wrap the store's error)."""
    return stores.in_chain(e, OSError)


def _clone_tree(obj, late: frozenset = frozenset(), todo: Optional[list] = None):
    """Private copies of every tensor, so training can go on mutating the live ones during a write.

    With ``late`` (storage addresses of tensors only the optimizer step changes: parameters and optimizer
    state), such a tensor is left in its new container and listed in ``todo`` as (container, key, tensor),
    for ``_copy_late`` to copy in the writer thread while the loop runs its next forward and backward; the
    containers, and every other tensor (buffers, which forward updates), are copied here."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, (dict, list)):
        out = dict(obj) if isinstance(obj, dict) else list(obj)
        for k in out.keys() if isinstance(out, dict) else range(len(out)):
            v = out[k]
            if todo is not None and isinstance(v, torch.Tensor) and v.untyped_storage().data_ptr() in late:
                todo.append((out, k, v))
            else:
                out[k] = _clone_tree(v, late, todo)
        return out
    if isinstance(obj, tuple):
        return type(obj)(_clone_tree(v) for v in obj)
    return obj


def _copy_late(todo: list) -> None:
    for holder, key, t in todo:
        holder[key] = t.detach().to("cpu", copy=True)


class AsyncWriter:
    """At most one checkpoint write in flight, in a background thread.

    The main thread gathers the state and begins the save (collective), a thread writes this rank's files,
    and the commit (manifest, rename, `latest`) runs in the main thread at a step boundary once every rank's
    write has finished. The agreement is a tiny all-reduce on the side gloo group (never the training
    group), so a slow disk on one rank delays the commit, not the training step.
    """

    def __init__(
        self,
        ckdir: CheckpointDir,
        rank: int,
        world_size: int,
        barrier: Callable[[], None],
        all_done: Callable[[bool], bool],
    ):
        self.ckdir, self.rank, self.world_size = ckdir, rank, world_size
        self.barrier, self.all_done = barrier, all_done
        self._thread = None
        self._error: Optional[BaseException] = None
        self._step = -1
        self._extra: dict = {}
        self._copied: Optional[threading.Event] = None  # set once the thread copied the late tensors

    @property
    def in_flight(self) -> bool:
        return self._thread is not None

    @property
    def step(self) -> int:
        """The step of the write in flight (or of the last one started)."""
        return self._step

    def start(
        self,
        step: int,
        state: Optional[dict],
        extra: dict,
        sharded: Optional[dict] = None,
        group=None,
        data: Optional[dict] = None,
        late: frozenset = frozenset(),
    ) -> None:
        """Copy the state and start writing it in a thread. ``late``: storage addresses of tensors that only
        the optimizer step changes; the thread copies those, and ``copy_fence()`` (which the loop calls
        before its next optimizer step) waits for that copy."""
        if self.in_flight:
            self.wait()
        todo: list = []
        state = _clone_tree(state, late, todo) if state is not None else None
        data = _clone_tree(data) if data is not None else None
        sharded = _clone_tree(sharded) if sharded is not None else None  # DTensor shards: copied here
        rng = rng_state()
        self.ckdir.begin(step, self.rank, self.barrier)
        self._step, self._extra, self._error = step, extra, None
        copied = self._copied = threading.Event()

        def run():
            try:
                try:
                    _copy_late(todo)
                finally:
                    copied.set()
                self.ckdir.write(step, self.rank, state, rng, sharded, group, data)
            except BaseException as e:  # re-raised in the main thread at the next poll
                self._error = e

        self._thread = threading.Thread(target=run, name=f"ckpt-write-{step}", daemon=True)
        self._thread.start()

    def copy_fence(self) -> None:
        """Wait until the write in flight holds its own copy of the parameters and optimizer state: the loop
        calls this before the optimizer step that follows a save (a few ms of it, if any, are left)."""
        if self._copied is not None:
            self._copied.wait()
            self._copied = None

    def poll(self) -> Optional[str]:
        """Commit if every rank's write is done; call at each step boundary (collective while in flight)."""
        if not self.in_flight:
            return None
        if not self.all_done(not self._thread.is_alive()):
            return None
        return self._commit()

    def wait(self) -> Optional[str]:
        """Block until the in-flight write is done and commit it (all ranks call this at the same point)."""
        if not self.in_flight:
            return None
        self._thread.join()
        return self._commit()

    def _commit(self) -> str:
        self._thread.join()
        self._thread = None
        if self._error is not None:
            raise CheckpointError(
                f"checkpoint step {self._step}: write failed: {self._error}"
            ) from self._error
        return self.ckdir.commit(self._step, self.rank, self.world_size, self._extra, self.barrier)

"""The remote mirror of a run's files beside remote checkpoints, so a pod rescheduled on another node keeps
them (its logs and metrics rows).

With ``checkpoint.dir`` on an object store, logs and metrics are still written to the local ``run.dir``
(fast, appendable), and copied next to the checkpoints: ``metrics.jsonl`` and ``config.yaml`` (rank 0) and
``logs/rank-N.log`` (each rank, its own) at every committed checkpoint (as they were at the commit, uploaded
by a thread that is done before the next save starts); ``model.safetensors`` and ``summary.json`` at the
end. A run that resumes from the bucket on a node whose ``run.dir`` is empty first downloads them, so the
metrics and logs continue instead of restarting. Copies are best effort: a failed upload is a warning (the
checkpoint itself is what must not be lost, and it is already committed).
"""

from __future__ import annotations

import logging
import os

from . import stores

log = logging.getLogger("trainer")

MAIN_FILES = ("metrics.jsonl", "config.yaml")
FINAL_FILES = ("model.safetensors", "summary.json")


def _rank_log(rank: int) -> str:
    return os.path.join("logs", f"rank-{rank}.log")


def _remote(root: str, rel: str) -> str:
    return stores.join(root, *rel.split(os.sep))


def read_run_files(run_dir: str, rank: int, files: tuple[str, ...] = MAIN_FILES) -> list[tuple[str, bytes]]:
    """This rank's share of the run's files as they are now (read in the caller's thread: a few MB at most),
    so that what is uploaded is the files as of the checkpoint just committed, however late it goes up."""
    out = []
    for rel in [*(files if rank == 0 else ()), _rank_log(rank)]:
        local = os.path.join(run_dir, rel)
        if os.path.isfile(local):
            with open(local, "rb") as fh:
                out.append((rel, fh.read()))
    return out


def upload(root: str, files: list[tuple[str, bytes]]) -> None:
    """Copy run files (``read_run_files``) beside the checkpoints in `root` (a no-op for local checkpoint
    dirs); never raises."""
    store = stores.for_path(root)
    if not store.remote:
        return
    for rel, data in files:
        try:
            store.write_bytes(_remote(root, rel), data)
        except Exception as e:  # the checkpoint is committed; a missing copy of a log must not fail the run
            log.warning("could not upload %s to %s: %s", rel, root, stores.describe(e))
            if stores.endpoint_failed(e):
                return  # the endpoint is down: the other files would wait out the same retries


def upload_final(run_dir: str, root: str, rank: int) -> None:
    """At the end of a run: the history and the final model.safetensors and summary.json (rank 0)."""
    store = stores.for_path(root)
    if not store.remote:
        return
    upload(root, read_run_files(run_dir, rank, MAIN_FILES))
    for rel in FINAL_FILES if rank == 0 else ():
        local = os.path.join(run_dir, rel)
        if os.path.isfile(local):  # streamed from disk: the model may be large
            try:
                store.upload(local, _remote(root, rel))
            except Exception as e:
                log.warning("could not upload %s to %s: %s", rel, root, stores.describe(e))


def restore(run_dir: str, root: str, rank: int) -> list[str]:
    """Before logging starts on a resumed run: fetch this rank's files that the local run.dir lacks."""
    store = stores.for_path(root)
    if not store.remote:
        return []
    got = []
    for rel in [*(("metrics.jsonl",) if rank == 0 else ()), _rank_log(rank)]:  # config.yaml is rewritten
        local, remote = os.path.join(run_dir, rel), _remote(root, rel)
        if os.path.exists(local) or not store.isfile(remote):
            continue
        os.makedirs(os.path.dirname(local), exist_ok=True)
        store.download(remote, local)
        got.append(rel)
    return got

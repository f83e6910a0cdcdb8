"""A run's history beside remote checkpoints, so a pod rescheduled on another node keeps it.

With ``checkpoint.dir`` on an object store, logs and metrics are still written to the local ``run.dir`` (fast,
appendable), and copied next to the checkpoints: ``metrics.jsonl`` and ``config.yaml`` (rank 0) and
``logs/rank-N.log`` (each rank, its own) at every committed checkpoint, ``model.safetensors`` and
``summary.json`` at the end. A run that resumes from the bucket on a node whose ``run.dir`` is empty first
downloads them, so the history continues instead of restarting. Copies are best effort: a failed upload is a
warning (the checkpoint itself is what must not be lost, and it is already committed).
"""

from __future__ import annotations

import logging
import os

from . import storage

log = logging.getLogger("trainer")

MAIN_FILES = ("metrics.jsonl", "config.yaml")
FINAL_FILES = ("model.safetensors", "summary.json")


def _rank_log(rank: int) -> str:
    return os.path.join("logs", f"rank-{rank}.log")


def _remote(root: str, rel: str) -> str:
    return storage.join(root, *rel.split(os.sep))


def upload(run_dir: str, root: str, rank: int, files: tuple[str, ...] = MAIN_FILES) -> None:
    """Copy this rank's share of the run's files to `root` (a no-op for local checkpoint dirs)."""
    store = storage.for_path(root)
    if not store.remote:
        return
    wanted = [*(files if rank == 0 else ()), _rank_log(rank)]
    for rel in wanted:
        local = os.path.join(run_dir, rel)
        if not os.path.isfile(local):
            continue
        try:
            store.upload(local, _remote(root, rel))
        except Exception as e:  # the checkpoint is committed; a missing copy of a log must not fail the run
            log.warning("could not upload %s to %s: %s", rel, root, storage.describe(e))


def upload_final(run_dir: str, root: str, rank: int) -> None:
    upload(run_dir, root, rank, files=(*MAIN_FILES, *FINAL_FILES))


def restore(run_dir: str, root: str, rank: int) -> list[str]:
    """Before logging starts on a resumed run: fetch this rank's files that the local run.dir lacks."""
    store = storage.for_path(root)
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

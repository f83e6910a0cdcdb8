"""The one atomic write on a local file system: a temp file beside the target, flushed and fsync'd, renamed
over the target (``os.replace``), then the directory fsync'd.

A reader sees the old file or the new one, never part of either; once the call returns, the new one survives
a power cut. Every local writer of a run's files goes through here (checkpoints, metrics, weights, exports,
caches). Object stores have no rename: ``trainer.checkpoint.stores`` writes an object in one PUT instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from typing import IO


def fsync_dir(path: str) -> None:
    """Make a rename (or a new entry) in ``path`` durable."""
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(tmp: str, path: str) -> None:
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def _discard(tmp: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(tmp)


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ".tmp") -> Iterator[str]:
    """For writers that take a file name (safetensors, numpy): yields ``path + suffix`` to write; on a clean
    exit it is fsync'd and renamed over ``path``; on an error it is removed and ``path`` is untouched."""
    tmp = path + suffix
    try:
        yield tmp
        _fsync_file(tmp)
    except BaseException:
        _discard(tmp)
        raise
    _commit(tmp, path)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb", suffix: str = ".tmp") -> Iterator[IO]:
    """For writers that take a stream (torch.save, json.dump): yields the open temp file; committed as
    ``atomic_path`` commits."""
    tmp = path + suffix
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        _discard(tmp)
        raise
    _commit(tmp, path)


def write_bytes(path: str, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def replace_dir(tmp: str, final: str) -> None:
    """Move a directory written under ``tmp`` into place as ``final`` (replacing one there): its files are
    fsync'd first, so ``final`` never names a directory whose contents a crash could lose."""
    for d, _, files in os.walk(tmp):
        for f in files:
            _fsync_file(os.path.join(d, f))
    if os.path.isdir(final):
        shutil.rmtree(final)
    _commit(tmp, final)

"""Storage faults as outcomes: a write the file system refused is one line naming the cause and the path.

Disk full, a read-only mount, a name too long, a path component that is a file: none of these is a bug
(exit 1) or a bad config (exit 2); they are exit 74 (EX_IOERR, docs/resume.md "Exit codes"): fix the storage
and rerun the same command, which resumes from the last committed checkpoint (a failed write never moves
``latest``). torch.save reports ENOSPC as ``RuntimeError: ... unexpected pos`` with the OSError only in the
exception chain, so the chain is searched.
"""

from __future__ import annotations

import errno
import os
from typing import Optional

# errno values that mean "the storage refused", not "the program is wrong"
STORAGE_ERRNOS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOTDIR: "a path component is not a directory",
    errno.EIO: "I/O error",
    errno.ENOENT: "no such file or directory",
    errno.EFBIG: "file too large",
    errno.EMFILE: "too many open files",
    errno.ESTALE: "stale file handle (network file system)",
}


class StorageError(OSError):
    """The storage under run.dir failed (exit 74). ``str()`` is the one line for the user."""


def _chain(e: Optional[BaseException]):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def describe(e: BaseException, where: Optional[str] = None) -> Optional[str]:
    """One line for a storage fault anywhere in the exception chain of `e`, else None. `where` names the
    path when the OSError does not (a write through a file object carries no file name)."""
    for x in _chain(e):
        if isinstance(x, StorageError):
            return str(x)
        if isinstance(x, OSError) and x.errno in STORAGE_ERRNOS:
            path = x.filename if x.filename is not None else (where or "?")
            return f"storage error: {STORAGE_ERRNOS[x.errno]} ({os.strerror(x.errno)}) at {path}"
    return None


def require_dir(path: str, what: str = "run.dir") -> None:
    """A directory the run writes into must still be there (never silently recreated)."""
    if not os.path.isdir(path):
        raise StorageError(f"storage error: {what} {path!r} was deleted or replaced while training")


def fsspec_options(protocol: str) -> dict:
    """fsspec keyword arguments for a protocol: checkpoints (stores.py, DCP) and streamed data shards.

    Credentials and endpoint come the standard way (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_ENDPOINT_URL``, ``AWS_REGION``, or an instance role), read by botocore itself."""
    if protocol not in ("s3", "s3a"):
        return {}
    client: dict = {}
    if os.environ.get("AWS_ENDPOINT_URL"):
        client["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    if os.environ.get("AWS_REGION"):
        client["region_name"] = os.environ["AWS_REGION"]
    # No listings cache: several processes write one prefix, and `latest` must be read fresh every time.
    return {"client_kwargs": client, "use_listings_cache": False, "skip_instance_cache": True}

"""Reading checkpoints: the manifest, verification, resolving a path (or the best one), and loading state
with ``weights_only=True``. Local directories and object stores alike.

Verification reads each file once: a local torch file is hashed (by the manifest's ``checksum``: xxh3_128,
or sha256 for a manifest without the key; in a helper thread) while
``torch.load`` parses it, and what was loaded is handed on only if the digest matches the
manifest's; so a torn or tampered file is never used, and ``weights_only`` keeps the parse of an unverified
file from running code. ``find_resumable(preload=True)`` keeps the verified ``state.pt`` it loaded for the
``load_state`` that follows (as long as the file's inode, size, mtime and ctime are unchanged: any write to
it moves the ctime), so resuming reads and hashes the state once.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import torch

from . import stores
from .layout import DCP, MANIFEST, STATE, CheckpointError, data_file

log = logging.getLogger("trainer")


def is_sharded(ckpt: str) -> bool:
    return stores.for_path(ckpt).isdir(stores.join(ckpt, DCP))


def consolidated_model_state(ckpt: str) -> dict:
    """Full model state dict from any checkpoint (sharded ones consolidated here, in one process)."""
    state, _ = load_state(ckpt)
    if "model" in state:
        return state["model"]
    from . import dcp_io  # ~0.9 s import (torch.distributed.checkpoint), only for sharded checkpoints

    return dcp_io.consolidate(stores.join(ckpt, DCP))["model"]


def read_manifest(ckpt: str) -> dict:
    path = stores.join(ckpt, MANIFEST)
    return json.loads(stores.for_path(path).read_bytes(path).decode("utf-8"))


def _manifest_problem(manifest: Any) -> Optional[str]:
    if not isinstance(manifest, dict):
        return "manifest is not a JSON object"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "manifest lists no files"
    for name, digest in files.items():
        if not isinstance(name, str) or not isinstance(digest, str):
            return f"manifest entry {name!r} is malformed"
        if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
            return f"manifest names a file outside the checkpoint: {name!r}"
    if STATE not in files and not any(n.startswith(DCP + "/") for n in files):
        return f"manifest lists no {STATE} and no {DCP}/"
    if not isinstance(manifest.get("step"), int):
        return "manifest has no step"
    if checksum_of(manifest) not in stores.CHECKSUMS:
        return f"manifest names an unknown checksum {manifest.get('checksum')!r}"
    return None


def checksum_of(manifest: dict) -> str:
    """The algorithm of a manifest's digests (one written before xxh3 has no key: sha256)."""
    return manifest.get("checksum", stores.LEGACY_CHECKSUM)


def _load_problem(name: str, e: BaseException) -> str:
    if isinstance(e, pickle.UnpicklingError):
        return f"{name} refused: it holds objects other than tensors and plain data (weights_only load)"
    first = (str(e).strip().splitlines() or [""])[0][:200]
    return f"{name} cannot be loaded ({type(e).__name__}: {first})"


def _trial_load(src: io.BytesIO, name: str) -> Optional[str]:
    """Whether a remote object's bytes load with weights_only."""
    try:
        torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for a refused object, RuntimeError for a torn zip, ...
        return _load_problem(name, e)
    return None


def _stat_key(path: str) -> tuple:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def verified_load(
    path: str,
    digest: str,
    name: str,
    full: bool = True,
    map_location="cpu",
    algo: str = stores.LEGACY_CHECKSUM,
):
    """(problem or None, object or None): a local torch file hashed while ``torch.load`` reads it.

    ``full=False`` only parses it (tensors memory-mapped, nothing copied): the check of a file that is not
    needed now. The object is returned only when the digest matched and it loaded."""
    with open(path, "rb") as fh:
        is_zip = fh.read(4) == b"PK\x03\x04"
    with ThreadPoolExecutor(1, thread_name_prefix="ckpt-verify") as pool:
        hashed = pool.submit(stores.file_digest, path, algo)
        try:
            obj = torch.load(path, map_location=map_location, weights_only=True, mmap=is_zip and not full)
            problem = None
        except Exception as e:  # UnpicklingError for a refused object, RuntimeError for a torn zip, ...
            obj, problem = None, _load_problem(name, e)
        actual = hashed.result()
    if actual != digest:
        return f"checksum mismatch in {name}", None
    return problem, obj


# state.pt path -> (its _stat_key, the state): loaded and verified by verify(preload=True), for load_state
_PRELOADED: dict[str, tuple[tuple, Any]] = {}


def verify(ckpt: str, preload: bool = False, skip: frozenset = frozenset()) -> Optional[str]:
    """None if the manifest is sound, every file matches its checksum and loads with weights_only;
    else what is wrong (the caller then tries the previous checkpoint).

    ``preload``: keep the verified ``state.pt`` of a local checkpoint for the ``load_state`` that follows
    (it is loaded in full instead of only parsed). ``skip``: file names checked elsewhere."""
    try:
        manifest = read_manifest(ckpt)
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        return f"manifest unreadable: {e}"
    problem = _manifest_problem(manifest)
    if problem:
        return problem
    store, algo = stores.for_path(ckpt), checksum_of(manifest)
    for name, digest in manifest["files"].items():
        if name in skip:
            continue
        p = stores.join(ckpt, name)
        if not store.isfile(p):
            return f"missing {name}"
        try:
            if store.remote and name.endswith(".pt"):  # one download: checksum and load probe
                data = store.read_bytes(p)
                if stores.digest_bytes(data, algo) != digest:
                    return f"checksum mismatch in {name}"
                problem = _trial_load(io.BytesIO(data), name)
            elif name.endswith(".pt"):
                keep = preload and name == STATE
                key = _stat_key(p) if keep else None
                problem, obj = verified_load(p, digest, name, full=keep, algo=algo)
                if keep and problem is None:
                    _PRELOADED.clear()  # one checkpoint's state at a time
                    _PRELOADED[p] = (key, obj)
            else:
                same = store.digest(p, algo, reread=True) == digest
                problem = None if same else f"checksum mismatch in {name}"
        except OSError as e:
            return f"{name} unreadable: {e.strerror or e}"
        if problem:
            return problem
    return None


def ranked_by_monitor(ckpts: list[str]) -> list[str]:
    """Checkpoints whose manifest records a ``monitor`` value, best first (a tie goes to the earlier one)."""
    scored = []
    for c in ckpts:
        try:
            mon = read_manifest(c).get("monitor") or {}
        except (OSError, ValueError):
            continue
        if mon.get("value") is not None:
            sign = -1.0 if mon.get("mode") == "max" else 1.0
            scored.append((sign * mon["value"], os.path.basename(c), c))
    return [c for *_, c in sorted(scored)]


def load_state(
    ckpt: str, rank: int = 0, map_location: str = "cpu", verify_first: bool = True
) -> tuple[dict, Optional[dict]]:
    """(state, rng-of-this-rank or None). Nothing is returned before its checksum matched: ``state.pt`` is
    hashed while it loads (or was, by ``verify(preload=True)``), the other files are verified first."""
    store = stores.for_path(ckpt)
    state_path, rng_path = stores.join(ckpt, STATE), stores.join(ckpt, f"rng-rank{rank:05d}.pt")
    state = None
    stashed = _PRELOADED.pop(state_path, None)
    if stashed is not None and map_location == "cpu" and _same_file(state_path, stashed[0]):
        state = stashed[1]
    if verify_first:
        local_state = not store.remote and store.isfile(state_path)
        problem = verify(ckpt, skip=frozenset([STATE]) if local_state else frozenset())
        if problem is None and local_state and state is None:
            manifest = read_manifest(ckpt)
            problem, state = verified_load(
                state_path,
                (manifest["files"] or {}).get(STATE),
                STATE,
                full=True,
                map_location=map_location,
                algo=checksum_of(manifest),
            )
        if problem:
            raise CheckpointError(f"checkpoint {ckpt}: {problem}")
    try:
        if state is None:
            state = torch.load(_readable(store, state_path), map_location=map_location, weights_only=True)
        rng = None
        if store.isfile(rng_path):
            rng = torch.load(_readable(store, rng_path), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # a refused pickle (UnpicklingError) or a torn file: one line, not a traceback
        raise CheckpointError(f"checkpoint {ckpt}: {_load_problem(STATE, e)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {ckpt}: {STATE} does not hold a state dict")
    return state, rng


def _same_file(path: str, key: tuple) -> bool:
    try:
        return _stat_key(path) == key
    except OSError:
        return False


def load_rank_data(ckpt: str, rank: int) -> Optional[dict]:
    """A rank's stream loader state, or None (map-style data, or a checkpoint from before streams).
    Called after ``load_state`` has verified every checksum."""
    store = stores.for_path(ckpt)
    path = stores.join(ckpt, data_file(rank))
    if not store.isfile(path):
        return None
    try:
        return torch.load(_readable(store, path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {ckpt}: {_load_problem(data_file(rank), e)}") from None


def _readable(store, path: str):
    """A local path as is, a remote object as its bytes in memory."""
    return io.BytesIO(store.read_bytes(path)) if store.remote else path

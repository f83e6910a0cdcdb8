"""Where checkpoints live: a local directory, or an fsspec URL (``s3://bucket/prefix`` first).

``CheckpointDir`` (transaction.py) owns the transaction and calls only these verbs, so the logic of "a reader
never sees a half-written checkpoint" is written once. What differs is what each store can do atomically:

* ``LocalStorage``: files are written to a temporary name, fsynced and renamed; a checkpoint directory is
  renamed into place (``renames`` is True).
* ``FsspecStorage``: object stores have no rename (``mv`` is copy + delete), but a single PUT is atomic. So a
  checkpoint is written in place under ``step-N/``, its manifest last (a step without a verified manifest
  does not exist), then ``latest`` in one PUT. Every write is retried with backoff on transient errors.

s3fs is imported only for ``s3://`` paths (it is the optional extra ``.[s3]``); credentials and endpoint come
the standard way (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_REGION``, or
an instance role), read by botocore itself.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from typing import Optional

import xxhash

from ..runtime import atomic, io_faults

log = logging.getLogger("trainer")

# Test hook: called with (operation, path) before every write to a remote store; a test raises from it to
# simulate a transient fault. None in normal runs.
fault_hook: Optional[Callable[[str, str], None]] = None

RETRIES = 4  # attempts after the first one, 0.5 s, 1 s, 2 s, 4 s apart
BACKOFF_S = 0.5
# Connect and read timeout of each request (checkpoint.timeout_s, set by ``configure``): without one, a
# frozen endpoint blocks a call for as long as it is frozen. botocore's and s3fs's own retries are off:
# RETRIES above are the only ones, so a dead endpoint is exit 74 after about 5 x timeout + 7.5 s.
TIMEOUT_S = 60.0


_REMOTE: dict = {}  # (protocol, pid) -> FsspecStorage


class StoreError(OSError):
    """A store that cannot be used (no credentials, missing bucket, access denied, unreachable endpoint)."""


class EndpointError(io_faults.StorageError):
    """A request that failed every retry (timeouts, refused connections, 5xx): the endpoint is down or
    frozen. Exit 74; cleanup that would talk to the same endpoint is skipped (``endpoint_failed``)."""


def in_chain(e: Optional[BaseException], cls: type) -> Optional[BaseException]:
    """The first exception of type ``cls`` in ``e``'s chain (``e``, then what it was raised from)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, cls):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def endpoint_failed(e: Optional[BaseException]) -> bool:
    """Whether ``e`` (or an exception it was raised from) is an EndpointError."""
    return in_chain(e, EndpointError) is not None


def configure(timeout_s: float) -> None:
    """checkpoint.timeout_s, before the first remote store of this process is made (run.build)."""
    global TIMEOUT_S
    if timeout_s != TIMEOUT_S:
        TIMEOUT_S = float(timeout_s)
        _REMOTE.clear()


def is_url(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def join(root: str, *parts: str) -> str:
    return "/".join([str(root).rstrip("/"), *parts]) if is_url(root) else os.path.join(root, *parts)


def basename(path: str) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1] if is_url(path) else os.path.basename(path)


def dirname(path: str) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[0] if is_url(path) else os.path.dirname(path)


def for_path(path: str) -> LocalStorage | FsspecStorage:
    """The store a path lives on (one object per protocol and process)."""
    if not is_url(path):
        return LOCAL
    protocol = str(path).split("://", 1)[0]
    key = (protocol, os.getpid())  # a forked child must not share its parent's event loop
    if key not in _REMOTE:
        _REMOTE[key] = FsspecStorage(protocol)
    return _REMOTE[key]


def storage_options(protocol: str) -> dict:
    """fsspec keyword arguments for checkpoints (also given to DCP's fsspec writer and reader): the common
    ones (io_faults.fsspec_options) and, on S3, checkpoint.timeout_s per request and no botocore retries."""
    opts = io_faults.fsspec_options(protocol)
    if protocol in ("s3", "s3a"):
        # botocore: a timeout per request (s3fs's defaults are 5 s / 15 s) and no retries of its own
        opts["config_kwargs"] = {
            "connect_timeout": TIMEOUT_S,
            "read_timeout": TIMEOUT_S,
            "retries": {"max_attempts": 1, "mode": "standard"},
        }
    return opts


# The checksum a manifest records per file: against a torn, truncated or accidentally altered file. It is
# not a signature: anyone who can write the files can write a matching manifest (xxh3 is not
# collision-resistant, and a sha256 in a manifest beside the files adds nothing against a forger either).
# xxh3_128 costs ~1/5 of sha256's CPU; sha256 stays selectable (checkpoint.checksum) and verifiable.
CHECKSUMS = ("xxh3_128", "sha256")
DEFAULT_CHECKSUM = "xxh3_128"
LEGACY_CHECKSUM = "sha256"  # what a manifest without a "checksum" key used (written before xxh3)


def new_hash(algo: str):
    if algo == "xxh3_128":
        return xxhash.xxh3_128()
    if algo == "sha256":
        return hashlib.sha256()
    raise ValueError(f"unknown checksum {algo!r} (one of {', '.join(CHECKSUMS)})")


def digest_bytes(data, algo: str) -> str:
    h = new_hash(algo)
    h.update(data)
    return h.hexdigest()


def file_digest(path: str, algo: str, chunk: int = 1 << 20) -> str:
    """Checksum of a local file, read into one reused buffer (1 MiB: stays in cache; both hashes release
    the GIL on it). Cheaper in CPU than hashing a memory map (a page fault per 4 KiB) or a new bytes per
    block."""
    h, buf = new_hash(algo), bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


class HashingWriter:
    """A file proxy that computes the checksum (``algo``) of every byte written through it, so the
    manifest's digest comes from the write itself instead of a second read of the file. A large block is
    hashed in a helper thread while the main thread's ``write`` copies it to the page cache (the hash and
    the write both release the GIL), and is done before ``write`` returns: the caller may reuse its buffer
    (torch.save hands out views of tensor storage)."""

    _PARALLEL = 1 << 20  # blocks smaller than this are hashed inline (a thread hand-off costs ~20 µs)

    def __init__(self, fh, algo: str = DEFAULT_CHECKSUM):
        self._fh, self._h, self.size, self.algo = fh, new_hash(algo), 0, algo
        self._pool = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if view.nbytes >= self._PARALLEL:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(1, thread_name_prefix="ckpt-hash")
            pending = self._pool.submit(self._h.update, view)
            try:
                n = self._fh.write(view)
            finally:
                pending.result()
        else:
            self._h.update(view)
            n = self._fh.write(view)
        self.size += view.nbytes
        return n

    def hexdigest(self) -> str:
        return self._h.hexdigest()

    def close_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __getattr__(self, name):
        return getattr(self._fh, name)


class LocalStorage:
    renames = True
    remote = False

    def __init__(self):
        # (algorithm, digest, size) of the files this process wrote through HashingWriter, by path: the
        # manifest takes them from here (the size is checked against the file) instead of reading them back.
        self._written: dict[str, tuple[str, str, int]] = {}

    def remember(self, path: str, algo: str, digest: str, size: int) -> None:
        self._written[path] = (algo, digest, size)
        while len(self._written) > 64:  # files another rank commits are never asked for here: keep a few
            del self._written[next(iter(self._written))]

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def isfile(self, path: str) -> bool:
        return os.path.isfile(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path) if os.path.isdir(path) else []

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as fh:
            return fh.read()

    def write_bytes(self, path: str, data: bytes) -> None:
        """Atomic: a temp file, fsynced, renamed over `path`, the directory fsynced."""
        atomic.write_bytes(path, data)

    def drop_link(self, path: str) -> bool:
        """A symbolic link where the run's own checkpoint tree has a directory is never written or deleted
        through: the link itself is removed (what it points to is left alone), with one warning."""
        if not os.path.islink(path):
            return False
        target = os.readlink(path)
        os.unlink(path)
        log.warning("%s is a symbolic link (to %s): removed the link, not what it points to", path, target)
        return True

    def rmtree(self, path: str) -> None:
        if not self.drop_link(path):
            shutil.rmtree(path, ignore_errors=True)

    def remove(self, path: str) -> None:
        if os.path.islink(os.path.dirname(path)):
            return  # never delete through a linked directory; its rmtree removes the link
        if os.path.lexists(path):
            os.remove(path)

    def rename_dir(self, src: str, dst: str) -> None:
        if not self.drop_link(dst) and os.path.exists(
            dst
        ):  # the same step saved again (final after periodic)
            shutil.rmtree(dst)
        os.rename(src, dst)
        atomic.fsync_dir(os.path.dirname(dst))

    def list_files(self, root: str) -> list[str]:
        """Every file under root, relative, sorted (temp files of atomic writes excluded)."""
        out = []
        for d, _, files in os.walk(root):
            out += [os.path.relpath(os.path.join(d, f), root) for f in files if not f.endswith(".tmp")]
        return sorted(out)

    def digest(self, path: str, algo: str, reread: bool = True, chunk: int = 1 << 20) -> str:
        """Of the file: as this process wrote it (``reread=False``, same algorithm and size on disk), else
        read back."""
        known = self._written.pop(path, None)
        if known is not None and not reread and known[0] == algo and os.path.getsize(path) == known[2]:
            return known[1]
        return file_digest(path, algo, chunk)

    def upload(self, local: str, path: str) -> None:
        if os.path.abspath(local) != os.path.abspath(path):
            self.makedirs(os.path.dirname(path))
            shutil.copyfile(local, path)

    def download(self, path: str, local: str) -> None:
        if os.path.abspath(local) != os.path.abspath(path):
            shutil.copyfile(path, local)


LOCAL = LocalStorage()


def _transient(e: BaseException) -> bool:
    """Worth retrying: a dropped connection, a timeout, a 5xx, SlowDown; not a refusal or a missing bucket."""
    if isinstance(e, (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return False
    name = type(e).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError", "ClientError") and "SlowDown" not in str(e):
        return False
    return isinstance(e, (OSError, TimeoutError, ConnectionError)) or "Timeout" in name or "Connect" in name


class FsspecStorage:
    renames = False
    remote = True

    def __init__(self, protocol: str):
        import fsspec  # ~60 ms (and s3fs ~0.4 s more): only when a remote path is used

        self.protocol = protocol
        # (algorithm, digest) of what this process PUT with a checksum asked for, by path: the manifest need
        # not download what rank 0 uploaded itself (botocore checksums every PutObject in transit, so the
        # digest of the bytes sent is the digest of the object stored); other files are read back.
        self._sent: dict[str, tuple[str, str]] = {}
        self.down = False  # the last request failed every retry (see _retry)
        # Their INFO lines ("Found credentials in environment variables") would reach the console.
        for name in ("botocore", "aiobotocore", "s3fs"):
            logging.getLogger(name).setLevel(logging.WARNING)
        try:
            self.fs = fsspec.filesystem(protocol, **storage_options(protocol))
            if hasattr(self.fs, "retries"):
                self.fs.retries = 1  # s3fs retries 5 times with backoff on its own: ours (RETRIES) only
            if protocol in ("s3", "s3a"):
                _no_expect_continue(self.fs)
        except ImportError as e:
            extra = " (pip install '.[s3]')" if protocol.startswith("s3") else ""
            raise StoreError(f"{protocol}:// needs a package that is not installed: {e}{extra}") from None

    def _p(self, path: str) -> str:
        return self.fs._strip_protocol(str(path))  # the path as this filesystem names it in listings

    def _retry(self, op: str, path: str, fn: Callable[[], object]):
        delay = BACKOFF_S
        # once a request failed every retry, later ones (the save after a failed mirror copy, say) are tried
        # once until one succeeds: a dead endpoint is not waited out again for each request
        retries = 0 if self.down else RETRIES
        for attempt in range(retries + 1):
            try:
                if fault_hook is not None:
                    fault_hook(op, path)
                out = fn()
                self.down = False
                return out
            except Exception as e:
                if not _transient(e):
                    raise
                if attempt == retries:
                    self.down = True
                    raise EndpointError(
                        f"storage error: {op} {path}: {describe(e)} ({attempt + 1} attempt(s), "
                        f"checkpoint.timeout_s={TIMEOUT_S:g} each)"
                    ) from e
                log.warning("%s %s failed (%s: %s); retrying in %.1fs", op, path, type(e).__name__, e, delay)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def exists(self, path: str) -> bool:
        return self._retry("exists", path, lambda: self.fs.exists(self._p(path)))

    def isfile(self, path: str) -> bool:
        return self._retry("isfile", path, lambda: self.fs.isfile(self._p(path)))

    def isdir(self, path: str) -> bool:
        return self._retry("isdir", path, lambda: self.fs.isdir(self._p(path)))

    def listdir(self, path: str) -> list[str]:
        def ls():
            try:
                return [basename(p) for p in self.fs.ls(self._p(path), detail=False)]
            except FileNotFoundError:
                return []

        return self._retry("list", path, ls)

    def makedirs(self, path: str) -> None:
        pass  # prefixes exist as soon as an object is written under them

    def drop_link(self, path: str) -> bool:
        return False  # object stores have no links

    def read_bytes(self, path: str) -> bytes:
        return self._retry("read", path, lambda: self.fs.cat_file(self._p(path)))

    def write_bytes(
        self,
        path: str,
        data: bytes,
        on_first_chunk: Optional[Callable[[], None]] = None,
        checksum: Optional[str] = None,
    ) -> None:
        """One PUT (atomic on S3: the object is either the old one or the new one); retried with backoff.

        on_first_chunk: called once part of the object is handed to the client, before the upload completes
        (the instrumented kill point of the tests). checksum: remember the bytes' digest for the manifest.
        """

        def put():
            with self.fs.open(self._p(path), "wb") as fh:
                fh.write(data[: len(data) // 2])
                if on_first_chunk is not None:
                    on_first_chunk()
                fh.write(data[len(data) // 2 :])

        self._sent.pop(path, None)
        self._retry("write", path, put)
        if checksum is not None:
            self._sent[path] = (checksum, digest_bytes(data, checksum))

    def rmtree(self, path: str) -> None:
        def rm():
            try:
                self.fs.rm(self._p(path), recursive=True)
            except FileNotFoundError:
                pass

        self._retry("delete", path, rm)
        for p in [p for p in self._sent if p.startswith(str(path).rstrip("/") + "/")]:
            del self._sent[p]

    def remove(self, path: str) -> None:
        def rm():
            try:
                self.fs.rm_file(self._p(path))
            except FileNotFoundError:
                pass

        self._retry("delete", path, rm)
        self._sent.pop(path, None)

    def rename_dir(self, src: str, dst: str) -> None:
        raise NotImplementedError("object stores have no rename: checkpoints are written in place")

    def list_files(self, root: str) -> list[str]:
        base = self._p(root).rstrip("/") + "/"
        found = self._retry("list", root, lambda: self.fs.find(base))
        return sorted(p[len(base) :] for p in found if p.startswith(base))

    def digest(self, path: str, algo: str, reread: bool = False) -> str:
        """Of the object: remembered if this process wrote it, else as the store returns it (a read-back)."""
        known = self._sent.get(path)
        if known is not None and known[0] == algo and not reread:
            return known[1]

        def digest():
            h = new_hash(algo)
            with self.fs.open(self._p(path), "rb", block_size=8 << 20) as fh:
                while block := fh.read(8 << 20):
                    h.update(block)
            return h.hexdigest()

        return self._retry("read", path, digest)

    def upload(self, local: str, path: str) -> None:
        self._retry("upload", path, lambda: self.fs.put_file(local, self._p(path)))

    def download(self, path: str, local: str) -> None:
        self._retry("download", path, lambda: self.fs.get_file(self._p(path), local))


def _drop_expect(params: dict, **_) -> None:
    params.get("headers", {}).pop("Expect", None)


def _no_expect_continue(fs) -> None:
    """No ``Expect: 100-continue`` on uploads. botocore adds it to every PUT with a file-like body, and
    aiohttp waits for the "100 Continue" with no timeout at all (sock_read starts only after it): a frozen
    endpoint (SIGSTOP: the kernel still accepts the connection) held a 20-byte PUT for as long as it was
    frozen, with read_timeout=1. Without the header the same PUT times out after read_timeout."""
    try:
        from fsspec.asyn import sync

        client = sync(fs.loop, fs.set_session)  # makes the client; no request is sent
        client.meta.events.register_last("before-call.s3", _drop_expect)  # after botocore's own adds it
    except Exception as e:  # the first real request reports what is wrong (credentials, endpoint)
        log.debug("could not remove Expect: 100-continue: %s", e)


def read_stream(path: str) -> io.BytesIO:
    return io.BytesIO(for_path(path).read_bytes(path))


def check_writable(root: str) -> None:
    """Raise StoreError with one line if `root` cannot hold checkpoints: the start-of-run preflight."""
    store = for_path(root)
    if not store.remote:
        return
    bucket = store._p(root).lstrip("/").split("/", 1)[0]
    probe = join(root, f".probe-{uuid.uuid4().hex[:12]}")
    try:
        store._retry("list", root, lambda: store.fs.ls(bucket, detail=False))
        store._retry("write", probe, lambda: store.fs.pipe_file(store._p(probe), b"probe"))
        store._retry("delete", probe, lambda: store.fs.rm_file(store._p(probe)))
    except Exception as e:
        cause = e.__cause__ if isinstance(e, EndpointError) and e.__cause__ is not None else e
        raise StoreError(f"{root}: {describe(cause, bucket)}") from None


def describe(e: BaseException, bucket: str = "") -> str:
    """One line for a storage failure, in the terms a user acts on."""
    name, text = type(e).__name__, str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return "no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or use an instance role)"
    if isinstance(e, FileNotFoundError):
        return f"bucket {bucket!r} does not exist ({text})" if bucket else f"not found ({text})"
    if isinstance(e, PermissionError):
        return f"access denied ({text})"
    if "Endpoint" in name or "Connect" in name or isinstance(e, (ConnectionError, TimeoutError)):
        where = os.environ.get("AWS_ENDPOINT_URL", "the default AWS endpoint")
        return f"endpoint unreachable: {where} ({text or name})"
    return f"{name}: {text}"

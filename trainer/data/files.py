"""Datasets read from ``data.path``: a byte-level text corpus, pre-tokenized .bin files, arrays (.npz, .pt,
.npy) and numeric CSV. Every bad input is a one-line ConfigError naming the key and the value.
"""

from __future__ import annotations

import csv
import os
import sysconfig
from pathlib import Path

import numpy as np
import torch

from ..config import Config, ConfigError
from .base import ArrayDataset, DataInfo, TokenWindows, fingerprint, split_indices

# ----------------------------------------------------------------------------- language-model corpora


def stdlib_corpus_files() -> list[Path]:
    """The default text corpus: top-level *.py files of the running Python's standard library, by name.

    Top-level only, so neither site-packages nor test suites are included; always present, no download.
    ``_sysconfigdata_*.py`` is skipped: it is generated per build (paths, compiler flags), so it would make
    the fingerprint of the same Python version differ between machines.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        (p for p in root.glob("*.py") if p.is_file() and not p.name.startswith("_sysconfigdata")),
        key=lambda p: p.name,
    )


def corpus_files(path: str) -> list[Path]:
    """A file, or every regular non-hidden file below a directory (recursively, sorted by relative path).

    No suffix filter: a byte-level model accepts any bytes, and the user chose the folder; hidden files and
    folders (.git, .cache, ...) are skipped because they are tooling, not corpus.
    """
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise ConfigError(f"data.path={path!r}: no such file or directory")
    out = []
    for f in p.rglob("*"):
        rel = f.relative_to(p).parts
        if f.is_file() and not any(part.startswith(".") for part in rel):
            out.append(f)
    if not out:
        raise ConfigError(f"data.path={path!r}: directory holds no (non-hidden) files")
    return sorted(out, key=lambda f: f.relative_to(p).as_posix())


def read_corpus(files: list[Path], max_bytes: int) -> tuple[bytes, list[Path]]:
    """Concatenate files in order up to max_bytes; returns the bytes and the files actually read (later
    files are not even opened)."""
    chunks, used, total = [], [], 0
    for f in files:
        if total >= max_bytes:
            break
        with open(f, "rb") as fh:
            data = fh.read(max_bytes - total)
        chunks.append(data)
        used.append(f)
        total += len(data)
    return b"".join(chunks), used


def _lm_split(cfg: Config, n_tokens: int, what: str) -> int:
    """Split point: the last eval_fraction of the corpus is eval, contiguous, so no window straddles both."""
    T = cfg.model.block_size
    cut = n_tokens - int(round(n_tokens * cfg.data.eval_fraction))
    if cut - 1 < T:
        raise ConfigError(
            f"data.path={cfg.data.path!r}: {what} has {n_tokens} tokens; the training part ({cut}) "
            f"needs at least model.block_size+1={T + 1}"
        )
    if cfg.data.eval_fraction > 0 and n_tokens - cut - 1 < T:
        raise ConfigError(
            f"data.eval_fraction={cfg.data.eval_fraction}: the eval part of {what} has "
            f"{n_tokens - cut} tokens, fewer than model.block_size+1={T + 1}"
        )
    return cut


def text(cfg: Config):
    """Byte-level LM (vocab 256) over ``data.path`` or, when unset, the stdlib corpus; capped at max_bytes."""
    d, T = cfg.data, cfg.model.block_size
    files = stdlib_corpus_files() if d.path is None else corpus_files(d.path)
    raw, files = read_corpus(files, d.max_bytes)
    if not raw:
        raise ConfigError(f"data.path={d.path!r}: the text corpus is empty")
    tokens = np.frombuffer(raw, dtype=np.uint8)
    cut = _lm_split(cfg, len(tokens), "the text corpus")
    train = TokenWindows(T, 0, cut, array=tokens)
    evald = TokenWindows(T, cut, len(tokens), array=tokens)
    where = "stdlib top-level .py" if d.path is None else repr(d.path)
    info = DataInfo(
        "lm",
        (T,),
        None,
        None,
        256,
        T,
        f"text: {len(raw) / 1e6:.2f} MB from {len(files)} file(s) ({where}), {len(train)} train / "
        f"{len(evald)} eval windows of {T} bytes",
        fingerprint(raw),
    )
    train.files = evald.files = [str(f) for f in files]  # what was read, in order (for tests and debugging)
    return train, evald, info


_FULL_HASH_BYTES = 256 << 20  # hash whole token files up to this size, else a sample (see _file_fingerprint)
_FULL_CHECK_TOKENS = (
    64 << 20
)  # vocab-check every token up to this count, else 64 evenly spaced 1M-token chunks


def _file_fingerprint(path: str) -> str:
    """sha256 of the whole file when small; of its size and 16 evenly spaced 1 MiB chunks when huge
    (hashing many GB at every start would dominate start-up)."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        if size <= _FULL_HASH_BYTES:
            return fingerprint(fh.read())
        parts = [str(size).encode()]
        for k in range(16):
            fh.seek((size - (1 << 20)) * k // 15)
            parts.append(fh.read(1 << 20))
        return fingerprint(*parts)


def _open_tokens(cfg: Config, path: str) -> np.memmap:
    d, V = cfg.data, cfg.model.vocab_size
    itemsize = np.dtype(d.token_dtype).itemsize
    size = os.path.getsize(path)
    if size == 0 or size % itemsize:
        raise ConfigError(
            f"data.path={path!r}: {size} bytes is not a positive multiple of {itemsize} "
            f"(data.token_dtype={d.token_dtype})"
        )
    arr = np.memmap(path, dtype=d.token_dtype, mode="r")
    n = len(arr)
    if n <= _FULL_CHECK_TOKENS:
        spans = [(s, min(n, s + (1 << 22))) for s in range(0, n, 1 << 22)]
    else:
        spans = [((n - (1 << 20)) * k // 63, (n - (1 << 20)) * k // 63 + (1 << 20)) for k in range(64)]
    for a, b in spans:
        top = int(arr[a:b].max())
        if top >= V:
            pos = a + int(np.argmax(arr[a:b] >= V))
            raise ConfigError(
                f"data.path={path!r}: token id {int(arr[pos])} at position {pos} >= model.vocab_size={V} "
                f"(wrong data.token_dtype={d.token_dtype} or model.vocab_size?)"
            )
    return arr


def tokens(cfg: Config):
    """A flat pre-tokenized .bin file, memory-mapped; or a directory with nanoGPT's train.bin + val.bin.
    (A directory of several other .bin files, or a glob, is streamed as shards: ``shards.py``.)

    A single file (or a directory with exactly one .bin) is split like text: the last eval_fraction is
    eval. With train.bin and val.bin, val.bin is the eval set and eval_fraction is not used.
    """
    d, T = cfg.data, cfg.model.block_size
    p = Path(d.path or "")
    if not p.exists():
        raise ConfigError(f"data.path={d.path!r}: no such file or directory")
    if p.is_dir():
        pair = (p / "train.bin", p / "val.bin")
        if all(f.is_file() for f in pair):
            tr, ev = (str(f) for f in pair)
            atr, aev = _open_tokens(cfg, tr), _open_tokens(cfg, ev)
            for f, a in ((tr, atr), (ev, aev)):
                if len(a) < T + 1:
                    raise ConfigError(
                        f"data.path={f!r}: {len(a)} tokens, fewer than model.block_size+1={T + 1}"
                    )
            train = TokenWindows(T, 0, len(atr), path=tr, dtype=d.token_dtype)
            evald = TokenWindows(T, 0, len(aev), path=ev, dtype=d.token_dtype)
            fp = fingerprint(_file_fingerprint(tr), _file_fingerprint(ev))
            return train, evald, _token_info(cfg, f"{tr} + {ev}", len(atr) + len(aev), train, evald, fp)
        bins = sorted(p.glob("*.bin"))
        if len(bins) != 1:
            raise ConfigError(
                f"data.path={d.path!r}: expected train.bin and val.bin, or exactly one .bin file "
                f"(found {', '.join(b.name for b in bins) or 'none'})"
            )
        p = bins[0]
    arr = _open_tokens(cfg, str(p))
    cut = _lm_split(cfg, len(arr), str(p))
    train = TokenWindows(T, 0, cut, path=str(p), dtype=d.token_dtype)
    evald = TokenWindows(T, cut, len(arr), path=str(p), dtype=d.token_dtype)
    return train, evald, _token_info(cfg, str(p), len(arr), train, evald, _file_fingerprint(str(p)))


def _token_info(cfg: Config, where: str, n: int, train, evald, fp: str) -> DataInfo:
    T, V = cfg.model.block_size, cfg.model.vocab_size
    return DataInfo(
        "lm",
        (T,),
        None,
        None,
        V,
        T,
        f"tokens: {n:,} {cfg.data.token_dtype} tokens from {where}, vocab {V}, {len(train)} train / "
        f"{len(evald)} eval windows of {T}",
        fp,
    )


# ----------------------------------------------------------------------------- arrays and tables


_KEY_PAIRS = (("x", "y"), ("X", "Y"), ("inputs", "targets"))


def _load_arrays(path: str) -> tuple[np.ndarray, np.ndarray]:
    suffix = Path(path).suffix.lower()
    key = f"data.path={path!r}"
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            if arr.ndim != 2 or arr.shape[1] < 2:
                raise ConfigError(
                    f"{key}: a .npy must be 2-D (samples, features + target column), got shape "
                    f"{arr.shape}; use .npz with arrays x and y otherwise"
                )
            return arr[:, :-1], arr[:, -1]
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                found = {k: z[k] for k in z.files}
        elif suffix in (".pt", ".pth"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, (tuple, list)) and len(obj) == 2:
                obj = {"x": obj[0], "y": obj[1]}
            if not isinstance(obj, dict):
                raise ConfigError(
                    f"{key}: expected a dict {{'x': tensor, 'y': tensor}}, got {type(obj).__name__}"
                )
            found = {k: (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in obj.items()}
        else:
            raise ConfigError(
                f"{key}: unsupported suffix {suffix!r} for data.name=tensors (use .npz, .pt or .npy)"
            )
    except ConfigError:
        raise
    except Exception as e:  # OSError, BadZipFile, UnpicklingError (weights_only refuses code), ...
        msg = str(e).splitlines()[0] if str(e) else ""
        raise ConfigError(f"{key}: cannot read as {suffix}: {type(e).__name__}: {msg}") from None
    for kx, ky in _KEY_PAIRS:
        if kx in found and ky in found:
            return found[kx], found[ky]
    raise ConfigError(
        f"{key}: expected arrays named x and y (or X/Y, inputs/targets); found {', '.join(found) or 'none'}"
    )


def _array_datasets(cfg: Config, x: np.ndarray, y: np.ndarray, task: str, what: str, fp: str):
    """Shared by tensors and csv: validate, convert, split by split_seed, describe."""
    d = cfg.data
    key = f"data.path={d.path!r}"
    if len(x) != len(y) or len(x) == 0:
        raise ConfigError(f"{key}: x has {len(x)} samples and y has {len(y)} (need the same positive number)")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise ConfigError(f"{key}: x must be numeric, got dtype {x.dtype}")
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if xt.ndim == 1:
        xt = xt[:, None]
    if task == "classification":
        y = y.reshape(len(y), -1)
        if y.shape[1] != 1:
            raise ConfigError(f"{key}: integer targets must be one label per sample, got shape {y.shape}")
        yt = torch.from_numpy(y[:, 0].astype(np.int64))
        if int(yt.min()) < 0:
            raise ConfigError(f"{key}: class labels must be >= 0, found {int(yt.min())}")
        num_classes, num_outputs = int(yt.max()) + 1, None
    else:
        if y.ndim > 2:
            raise ConfigError(f"{key}: regression targets must be (N,) or (N, k), got shape {y.shape}")
        yt = torch.from_numpy(np.ascontiguousarray(y.reshape(len(y), -1), dtype=np.float32))
        num_classes, num_outputs = None, yt.shape[1]
    tr, ev = (torch.from_numpy(i) for i in split_indices(len(xt), d.eval_fraction, d.split_seed))
    train, evald = ArrayDataset(xt[tr], yt[tr]), ArrayDataset(xt[ev], yt[ev])
    kind = f"{num_classes} classes" if task == "classification" else f"{num_outputs} output(s)"
    info = DataInfo(
        task,
        tuple(xt.shape[1:]),
        num_classes,
        num_outputs,
        None,
        None,
        f"{what} {d.path}: {len(train)} train / {len(evald)} eval, input {tuple(xt.shape[1:])}, "
        f"{task} with {kind}",
        fp,
    )
    return train, evald, info


def tensors(cfg: Config):
    """Arrays from .npz (x/y, X/Y or inputs/targets), .pt (dict of tensors, loaded with weights_only=True)
    or a 2-D .npy whose last column is the target. The task follows y's dtype: integer or bool ->
    classification (num_classes = max + 1), floating -> regression."""
    path = cfg.data.path or ""
    if not os.path.isfile(path):
        raise ConfigError(f"data.path={cfg.data.path!r}: no such file")
    x, y = _load_arrays(path)
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise ConfigError(f"data.path={path!r}: y must be numeric, got dtype {y.dtype}")
    task = "regression" if np.issubdtype(y.dtype, np.floating) else "classification"
    return _array_datasets(cfg, x, y, task, "tensors", _file_fingerprint(path))


MAX_CSV_CLASSES = 100  # an integer-valued target with at most this many distinct values is a class label
MAX_CSV_LABEL = (
    1000  # ... and labels below this: a year column (1990..2020) is a regression target, not 2021 classes
)


def _read_csv(path: str) -> tuple[list[str], np.ndarray]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    if len(rows) < 2:
        raise ConfigError(f"data.path={path!r}: need a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    out = np.empty((len(rows) - 1, len(header)), dtype=np.float64)
    for i, row in enumerate(rows[1:]):
        if len(row) != len(header):
            raise ConfigError(f"data.path={path!r} line {i + 2}: {len(row)} fields, header has {len(header)}")
        for j, cell in enumerate(row):
            try:
                out[i, j] = float(cell)
            except ValueError:
                raise ConfigError(
                    f"data.path={path!r} line {i + 2} column {header[j]!r}: {cell!r} is not a number "
                    f"(csv data must be numeric)"
                ) from None
    if not np.isfinite(out).all():
        i, j = np.argwhere(~np.isfinite(out))[0]
        raise ConfigError(f"data.path={path!r} line {i + 2} column {header[j]!r}: value is not finite")
    return header, out


def csv_table(cfg: Config):
    """A numeric CSV with a header row. ``data.target`` is a column name or an integer index (default -1).

    An integer-valued target in [0, MAX_CSV_LABEL) with at most MAX_CSV_CLASSES distinct values is a class
    label (num_classes = max + 1); anything else is a regression target.
    """
    d = cfg.data
    path = d.path or ""
    if not os.path.isfile(path):
        raise ConfigError(f"data.path={d.path!r}: no such file")
    header, table = _read_csv(path)
    cols = ", ".join(header)
    if d.target in header:
        t = header.index(d.target)
    else:
        try:
            t = int(d.target)
        except ValueError:
            raise ConfigError(
                f"data.target={d.target!r}: column {d.target!r} not found in data.path={path!r} "
                f"(columns: {cols})"
            ) from None
        if not -len(header) <= t < len(header):
            raise ConfigError(
                f"data.target={d.target!r}: index out of range for {len(header)} columns ({cols})"
            )
        t %= len(header)
    if len(header) < 2:
        raise ConfigError(f"data.path={path!r}: need at least one feature column besides the target")
    y = table[:, t]
    x = np.delete(table, t, axis=1)
    is_class = bool(
        np.all(y == np.round(y))
        and y.min() >= 0
        and y.max() < MAX_CSV_LABEL
        and len(np.unique(y)) <= MAX_CSV_CLASSES
    )
    task = "classification" if is_class else "regression"
    train, evald, info = _array_datasets(
        cfg,
        x,
        y.astype(np.int64) if is_class else y,
        task,
        f"csv (target {header[t]!r})",
        _file_fingerprint(path),
    )
    info.extra["feature_names"] = [h for k, h in enumerate(header) if k != t]
    return train, evald, info

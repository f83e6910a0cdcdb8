"""Built-in streams over shard files: ``data.name=tokens | text | jsonl`` with ``data.path`` a glob
(``data/train-*.jsonl``), a directory of shards, or an fsspec URL (``s3://bucket/prefix/*.bin``).

Shards are taken in sorted order and read lazily; the stream's samples are numbered across them, and the
readers of ``stream.py`` take their blocks by that number, so every rank and worker reads its own samples:

* ``tokens`` (``.bin``, ``data.token_dtype``) and ``text`` (bytes, vocab 256): windows of block_size+1
  tokens, stride block_size, inside each shard (a window never straddles two shards). Random access: a
  reader reads only its own windows (a memory map locally, ranged reads on an object store), so a resume
  or a new world size costs nothing to skip.
* ``jsonl``: one record a row (cut by ``data.truncation`` to ``data.seq_len``, padded; the in-memory path
  packs several, a stream does not, so that a row is a pure function of its record; a record
  ``data.truncation=drop`` leaves out is a row with no loss), encoded by ``jsonl.encode_records`` in the
  layouts of ``data.format`` with ``data.train_on``, a micro-batch per tokenizer call. Read
  line by line; every reader scans the lines of every shard and parses and tokenizes only its own. The
  source's state is (shard, byte offset), so a resume on the same layout seeks instead of re-reading.

``data.eval_path`` (a file, glob or URL of the same kind) is read into memory once as the eval set; without
it a stream has no evaluation. The fingerprint covers the shard names and sizes, not their bytes.
"""

from __future__ import annotations

import glob as globmod
import io
import json
import os
from collections import Counter
from itertools import groupby
from typing import Any, Optional

import numpy as np
import torch

from ..config import Config, ConfigError
from ..runtime.io_faults import fsspec_options
from .base import ArrayDataset, DataInfo, fingerprint
from .jsonl import (  # the in-memory path's encoding, packing and data.seq_len rule
    IGNORE,
    MAX_RECORD_BYTES,
    Encoded,
    PackedRows,
    _non_default,
    _seq_len,
    check_line,
    encode_records,
    format_name,
    pack,
    special_prefix,
)
from .stream import Stream
from .tokenizer import load_tokenizer, tokenizer_fingerprint

GLOB_CHARS = "*?["
SUFFIXES = {"jsonl": (".jsonl", ".json"), "tokens": (".bin",), "text": ()}
HEAD_ROWS = 8  # rows decoded at build time: the probe and the vocab check
EVAL_CAP = 100_000  # rows of a streamed eval set (read into memory once)
OPEN_SHARDS = 8  # token shards a reader keeps open (memory maps, or object-store handles with their cache)


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def wants_stream(name: str, path: Optional[str]) -> bool:
    """Whether ``data.path`` names shards to stream rather than one file (or dir) read into memory."""
    if not path or name not in SUFFIXES:
        return False
    if is_url(path) or any(c in path for c in GLOB_CHARS):
        return True
    if os.path.isdir(path):
        if name == "jsonl":
            return True
        if name == "tokens":
            pair = all(os.path.isfile(os.path.join(path, f)) for f in ("train.bin", "val.bin"))
            return not pair and len(globmod.glob(os.path.join(path, "*.bin"))) > 1
    return False


def _fs(url: str):
    import fsspec  # only for URLs (s3fs is the optional extra .[s3])

    protocol = url.split("://", 1)[0]
    return fsspec.filesystem(protocol, **fsspec_options(protocol))


def list_shards(path: str, name: str, key: str) -> list[tuple[str, int]]:
    """(path, size in bytes) of every shard, sorted by path."""
    suffixes = SUFFIXES[name]
    globbed = any(c in path for c in GLOB_CHARS)
    try:
        if is_url(path):
            protocol = path.split("://", 1)[0]
            fs = _fs(path)
            found = fs.glob(path, detail=True) if globbed else fs.find(path, detail=True)
            items = [
                (f"{protocol}://{p.split('://', 1)[-1]}", int(i.get("size") or 0))
                for p, i in found.items()
                if i.get("type") == "file"
            ]
        else:
            names = (
                globmod.glob(path, recursive=True)
                if globbed
                else [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
                if os.path.isdir(path)
                else [path]
            )
            items = [(p, os.path.getsize(p)) for p in names if os.path.isfile(p)]
    except ConfigError:
        raise
    except Exception as e:  # unreachable endpoint, no credentials, missing bucket
        raise ConfigError(f"{key}={path!r}: cannot list shards ({type(e).__name__}: {e})") from None
    if not globbed and suffixes:
        items = [(p, n) for p, n in items if p.endswith(suffixes)]
    items = [(p, n) for p, n in items if not os.path.basename(p).startswith(".")]
    if not items:
        want = f" ({' or '.join(suffixes)})" if suffixes and not globbed else ""
        raise ConfigError(f"{key}={path!r}: no shard files match{want}")
    return sorted(items)


def open_shard(path: str):
    return _fs(path).open(path, "rb") if is_url(path) else open(path, "rb")


# ----------------------------------------------------------------------------- token and byte windows


class TokenShards:
    """Windows of T+1 tokens over shards, random access by stream position."""

    random_access = True

    def __init__(self, shards: list[tuple[str, int]], dtype: str, T: int):
        self.files = [p for p, _ in shards]
        self.dtype, self.T = dtype, T
        item = np.dtype(dtype).itemsize
        counts = [max(0, (n // item - 1) // T) for _, n in shards]
        self.cum = np.cumsum([0, *counts])
        self.length = int(self.cum[-1])
        self._open: dict = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}}  # each process opens its own maps and handles

    def _read(self, shard: int, start: int, n: int) -> np.ndarray:
        path = self.files[shard]
        if shard not in self._open:
            if len(self._open) >= OPEN_SHARDS:  # thousands of shards must not hold thousands of handles
                old = self._open.pop(next(iter(self._open)))
                if not isinstance(old, np.memmap):
                    old.close()
            self._open[shard] = (
                open_shard(path) if is_url(path) else np.memmap(path, dtype=self.dtype, mode="r")
            )
        src = self._open[shard]
        if isinstance(src, np.memmap):
            return np.asarray(src[start : start + n])
        item = np.dtype(self.dtype).itemsize
        src.seek(start * item)
        return np.frombuffer(src.read(n * item), dtype=self.dtype)

    def get(self, positions: list[int]) -> list[np.ndarray]:
        shard = np.searchsorted(self.cum, positions, side="right") - 1
        return [
            self._read(int(s), int(p - self.cum[s]) * self.T, self.T + 1) for p, s in zip(positions, shard)
        ]


class TokenDecode:
    def __call__(self, raws: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.from_numpy(np.stack(raws).astype(np.int64))
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def _token_stream(cfg: Config, name: str, dtype: str, vocab: int):
    d, T = cfg.data, cfg.model.block_size
    shards = list_shards(d.path, name, "data.path")
    src = TokenShards(shards, dtype, T)
    if src.length == 0:
        raise ConfigError(f"data.path={d.path!r}: no shard holds model.block_size+1={T + 1} tokens")
    decode = TokenDecode()
    x, y = decode(src.get(list(range(min(HEAD_ROWS, src.length)))))
    if int(y.max()) >= vocab:
        raise ConfigError(
            f"data.path={d.path!r}: token id {int(y.max())} >= model.vocab_size={vocab} in the first windows "
            f"(wrong data.token_dtype={dtype} or model.vocab_size?)"
        )
    head = ArrayDataset(x, y)
    evald = ArrayDataset(torch.zeros(0, T, dtype=torch.long), torch.zeros(0, T, dtype=torch.long))
    if d.eval_path:
        esrc = TokenShards(list_shards(d.eval_path, name, "data.eval_path"), dtype, T)
        if esrc.length > EVAL_CAP:
            raise ConfigError(f"data.eval_path={d.eval_path!r}: {esrc.length} windows, more than {EVAL_CAP}")
        if esrc.length:
            evald = ArrayDataset(*decode(esrc.get(list(range(esrc.length)))))
    fp = fingerprint(name, dtype, str(T), *(f"{os.path.basename(p)}:{n}" for p, n in shards))
    info = DataInfo(
        "lm",
        (T,),
        None,
        None,
        vocab,
        T,
        f"{name}: stream of {src.length:,} windows of {T} from {len(shards)} shard(s) ({d.path!r}), "
        f"{len(evald)} eval windows",
        fp,
    )
    return Stream(src, decode, "index", head, src.length, name), evald, info


def tokens_stream(cfg: Config):
    return _token_stream(cfg, "tokens", cfg.data.token_dtype, cfg.model.vocab_size)


def text_stream(cfg: Config):
    return _token_stream(cfg, "text", "uint8", 256)


# ----------------------------------------------------------------------------- jsonl records


class JsonlShards:
    """Raw records ``(shard, line number, bytes)`` of JSONL shards in order; Stateful by (shard, offset)."""

    def __init__(self, files: list[str]):
        self.files = files
        self._pos = {"file": 0, "offset": 0, "lineno": 0}
        self._resume: Optional[dict] = None

    def state_dict(self) -> dict:
        return dict(self._pos)

    def load_state_dict(self, sd: dict) -> None:
        self._resume = dict(sd)

    def __iter__(self):
        start = self._resume or {"file": 0, "offset": 0, "lineno": 0}
        self._resume = None
        self._pos = dict(start)  # set now: state_dict() before the first next() must say where it starts
        return self._lines(start)

    def _lines(self, start: dict):
        for fi in range(start["file"], len(self.files)):
            first = fi == start["file"]
            with open_shard(self.files[fi]) as fh:
                offset, lineno = (start["offset"], start["lineno"]) if first else (0, 0)
                fh.seek(offset)
                # a local file reads no further than MAX_RECORD_BYTES a line (then check_line refuses it);
                # an fsspec file's readline takes no size, so there the check follows the read
                bounded = isinstance(fh, io.BufferedIOBase)
                readline = (lambda f=fh: f.readline(MAX_RECORD_BYTES + 1)) if bounded else fh.readline
                for line in iter(readline, b""):
                    offset, lineno = offset + len(line), lineno + 1
                    self._pos = {"file": fi, "offset": offset, "lineno": lineno}
                    if len(line) > MAX_RECORD_BYTES:
                        check_line(line, lineno, f"data.path={self.files[fi]!r}")
                    if line.strip():
                        yield fi, lineno, line


class JsonlDecode:
    """A block of raw records -> one micro-batch of rows, one record a row, through the in-memory path's
    ``jsonl.encode_records`` (data.format, data.train_on) and ``jsonl.pack`` (data.truncation); the
    tokenizer is loaded once per process."""

    def __init__(self, files: list[str], tok_dir: str, key: str, T: int, fmt: str, train_on: str, cut: str):
        self.files, self.tok_dir, self.key, self.T = files, tok_dir, key, T
        self.fmt, self.train_on, self.cut = fmt, train_on, cut
        self._tok = None
        self.formats: Counter = Counter()  # records per layout decoded by this copy (the head's, at build)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tok": None}

    def _tokenizer(self):
        if self._tok is None:
            self._tok = load_tokenizer(self.tok_dir, self.key)
            self._prefix = special_prefix(self._tok)
        return self._tok

    def rows(self, raws: list) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(input_ids, position_ids, labels, docs): one row per record; ``docs`` as ``jsonl.Packed.docs``
        (row, start, length, cut), a dropped record has none."""
        tok, T = self._tokenizer(), self.T
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        bos = tok.bos_token_id if tok.bos_token_id != tok.eos_token_id else None
        empty = (np.full((1, T), pad, np.int64), np.arange(T)[None], np.full((1, T), IGNORE, np.int64))
        out, docs = [], []
        for fi, group in groupby(raws, key=lambda r: r[0]):  # a block may span two shards
            group = list(group)
            where = f"data.path={self.files[fi]!r}"
            recs = []
            for _, lineno, line in group:
                try:
                    recs.append(json.loads(check_line(line, lineno, where)))
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{where} line {lineno}: not valid JSON ({e.msg})") from None
            lines = [lineno for _, lineno, _ in group]
            enc = encode_records(tok, recs, self.fmt, self.train_on, where, lines, self._prefix)
            self.formats.update(enc.formats)
            for a, b in zip(enc.offsets[:-1].tolist(), enc.offsets[1:].tolist()):
                one = Encoded(enc.ids[a:b], enc.learn[a:b], np.array([0, b - a], np.int64))
                p = pack(one, T, pad, self.cut, bos)
                # data.truncation=drop: a row with no loss, so that a block stays one row per record
                out.append((p.input_ids, p.position_ids, p.labels) if len(p.labels) else empty)
                docs += [(len(out) - 1, *d[1:]) for d in p.docs.tolist()]
        arrays = tuple(np.concatenate([r[i] for r in out]) for i in range(3))
        return (*arrays, np.asarray(docs, np.int64).reshape(-1, 4))

    def __call__(self, raws: list):
        inp, pos, lab, _ = (torch.from_numpy(a) for a in self.rows(raws))
        return {"input_ids": inp, "position_ids": pos}, lab


def jsonl_stream(cfg: Config):
    d = cfg.data
    tok_dir = d.tokenizer or cfg.model.path
    key = "data.tokenizer" if d.tokenizer else "model.path"
    tok = load_tokenizer(tok_dir, key)
    T = _seq_len(cfg)
    shards = list_shards(d.path, "jsonl", "data.path")
    files = [p for p, _ in shards]
    decode = JsonlDecode(files, tok_dir, key, T, d.format, d.train_on, d.truncation)
    head_raws = []
    for raw in JsonlShards(files):
        head_raws.append(raw)
        if len(head_raws) == HEAD_ROWS:
            break
    if not head_raws:
        raise ConfigError(f"data.path={d.path!r}: no records in {len(files)} shard(s)")
    head = PackedRows(*decode.rows(head_raws))
    empty = np.zeros((0, T), np.int64)
    evald = PackedRows(empty, empty, empty, np.zeros((0, 4), np.int64))
    if d.eval_path:
        efiles = [p for p, _ in list_shards(d.eval_path, "jsonl", "data.eval_path")]
        eraws = list(JsonlShards(efiles))
        if len(eraws) > EVAL_CAP:
            raise ConfigError(f"data.eval_path={d.eval_path!r}: {len(eraws)} records, more than {EVAL_CAP}")
        edecode = JsonlDecode(efiles, tok_dir, "data.eval_path", T, d.format, d.train_on, d.truncation)
        evald = PackedRows(*edecode.rows(eraws))
    tok_fp = tokenizer_fingerprint(tok_dir)
    names = (f"{os.path.basename(p)}:{n}" for p, n in shards)
    fp = fingerprint("jsonl-stream", tok_fp, str(T), *_non_default(d), *names)
    learned = int((head.labels != IGNORE).sum())
    info = DataInfo(
        "lm",
        (T,),
        None,
        None,
        len(tok),
        T,
        f"jsonl: stream of records from {len(files)} shard(s) ({d.path!r}), one record a row of {T} tokens "
        f"({learned} learned tokens in the first {len(head)}), {len(evald)} eval rows",
        fp,
        extra={
            "loss_mask": True,
            "labels_shifted": True,
            "tokenizer": tok_dir,
            "tokenizer_fingerprint": tok_fp,
            "format": format_name(dict(decode.formats)),  # of the records read ahead
        },
    )
    return Stream(JsonlShards(files), decode, "index", head, None, "jsonl"), evald, info


BUILDERS: dict[str, Any] = {"tokens": tokens_stream, "text": text_stream, "jsonl": jsonl_stream}

"""``data.name=jsonl``: a JSONL file of your own examples, tokenized once, packed into rows, prompts masked.

Records (one JSON object a line; blank lines are skipped) come in the layouts of ``layouts.py``: ``text``,
``prompt``/``response``, OpenAI ``messages`` (per-message ``weight``), ShareGPT ``conversations`` and Alpaca
``instruction``/``input``/``output``; ``data.format`` forces one (default ``auto``: by each record's keys, the
counts logged) and ``data.train_on=assistant|all`` says what is learned.

Each document ends with EOS (learned when its last text is). Documents are tokenized once and cached in
``<parent of run.dir>/.token-cache/`` (keyed by the data file's and the tokenizer's fingerprints, the format
and data.train_on), then packed greedily, in file order, into rows of ``data.seq_len`` tokens. A document
longer than a row is cut by ``data.truncation``: ``left`` (default) keeps its end (the response, which is
what is learned) and cuts the prompt from the left (a leading BOS stays), ``right`` keeps its start,
``drop`` leaves it out. Cut and dropped documents are counted in the log and ``summary.json``; a split with
rows but 0 learned tokens is a ConfigError (exit 2), never a run that trains on nothing. Position ids
restart at 0 for every document, which is also what keeps attention inside a document for Hugging Face
models (transformers builds a block-diagonal causal mask from restarting position ids).

A sample is ``({"input_ids": (T,), "position_ids": (T,)}, labels (T,))`` with the labels already shifted:
``labels[t]`` is the token after ``t`` when that token is learned and in the same document, else -100.
A bad record is a one-line ConfigError naming the file and the line.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import Config, ConfigError
from ..runtime import atomic
from .base import DataInfo, Indices, as_index, fingerprint, split_indices
from .layouts import RecordError, segments
from .tokenizer import load_tokenizer, tokenizer_fingerprint

log = logging.getLogger("trainer")

IGNORE = -100  # the label of a position that carries no loss (torch's cross_entropy ignore_index)
_CACHE_VERSION = "2"
_MAX_DEFAULT_SEQ = 2048
_READ_BATCH = 4096  # records parsed, rendered and tokenized together (one tokenizer call per batch)
# One JSONL record (line) at most: a 100 MB line otherwise took minutes and GBs of memory without a word.
MAX_RECORD_BYTES = 16 << 20


# ----------------------------------------------------------------------------- records -> token ids


@dataclass
class Encoded:
    """Token ids of documents laid end to end: ``ids`` int32, ``learn`` uint8 (1 = the token is learned),
    ``offsets`` int64 (document d is ``ids[offsets[d]:offsets[d+1]]``), and records counted per layout."""

    ids: np.ndarray
    learn: np.ndarray
    offsets: np.ndarray
    formats: dict = field(default_factory=dict)

    @property
    def documents(self) -> int:
        return len(self.offsets) - 1


def special_prefix(tok) -> list[int]:
    """The ids the tokenizer puts before a text of its own accord (a BOS, or nothing)."""
    with_ = list(tok("a", add_special_tokens=True)["input_ids"])
    without = list(tok("a", add_special_tokens=False)["input_ids"])
    for i in range(len(with_) - len(without) + 1):
        if with_[i : i + len(without)] == without:
            return with_[:i]
    return []


def token_ids(tok, texts: list[str]) -> list[list[int]]:
    """``tok(texts, add_special_tokens=False)["input_ids"]`` in one batched call; for a fast tokenizer
    straight through its ``tokenizers`` backend (the same ids, measured 3x faster: transformers' per-text
    conversion cost more than the tokenization), unless the backend has truncation or padding set."""
    if not texts:
        return []
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return tok(texts, add_special_tokens=False)["input_ids"]
    encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
    return [e.ids for e in encode(texts, add_special_tokens=False)]


def encode_records(
    tok,
    records: list,
    fmt: str = "auto",
    train_on: str = "assistant",
    where: str = "data.path",
    lines: Optional[list[int]] = None,
    prefix: Optional[list[int]] = None,
) -> Encoded:
    """A batch of parsed records -> token ids, learned masks and layout counts; EOS ends every document.

    Pure (no I/O) and batch-first: every segment of every record goes through one tokenizer call.
    ``lines``: the records' line numbers for errors (default 1..n); ``prefix``: :func:`special_prefix`
    when already known.
    """
    prefix = special_prefix(tok) if prefix is None else prefix
    eos = tok.eos_token_id
    texts: list[str] = []
    docs: list[tuple[bool, list[bool]]] = []  # (opens with the special prefix, learned flag per segment)
    formats: Counter = Counter()
    for n, rec in enumerate(records):
        try:
            layout, segs, opens = segments(tok, rec, fmt, train_on)
        except RecordError as e:
            raise ConfigError(f"{where} line {lines[n] if lines else n + 1}: {e}") from None
        formats[layout] += 1
        texts += [t for t, _ in segs]
        docs.append((opens, [on for _, on in segs]))
    pieces = token_ids(tok, texts)
    # the pieces are referenced, not copied, per document; one pass over all tokens at the end
    out: list[list[int]] = []
    flags_out: list[int] = []
    offsets = [0]
    total = k = 0
    end = [eos]
    for opens, flags in docs:
        start, last, last_on = total, None, 1
        if opens and prefix:
            out.append(prefix)
            flags_out.append(0)
            total += len(prefix)
            last, last_on = prefix[-1], 0
        for on in flags:
            piece = pieces[k]
            k += 1
            if piece:
                out.append(piece)
                flags_out.append(on)
                total += len(piece)
                last, last_on = piece[-1], on
        if last != eos:  # EOS ends every document, learned when its last text is
            out.append(end)
            flags_out.append(last_on if total > start else 1)
            total += 1
        offsets.append(total)
    lengths = np.fromiter(map(len, out), np.int64, len(out))
    ids = np.fromiter(chain.from_iterable(out), np.int32, total)
    learn = np.repeat(np.asarray(flags_out, np.uint8), lengths)
    return Encoded(ids, learn, np.asarray(offsets, np.int64), dict(formats))


def _concat(parts: list[Encoded]) -> Encoded:
    base = np.cumsum([0] + [len(p.ids) for p in parts[:-1]])
    formats: Counter = Counter()
    for p in parts:
        formats.update(p.formats)
    return Encoded(
        np.concatenate([p.ids for p in parts]),
        np.concatenate([p.learn for p in parts]),
        np.concatenate([[0]] + [p.offsets[1:] + b for p, b in zip(parts, base)]).astype(np.int64),
        dict(formats),
    )


def check_line(raw: bytes, lineno: int, where: str) -> str:
    """One JSONL line's text. A line longer than MAX_RECORD_BYTES (a bounded read returns more than that)
    or not UTF-8 is exit 2 naming the file and the line; a BOM on line 1 is dropped."""
    if len(raw) > MAX_RECORD_BYTES and not (len(raw) == MAX_RECORD_BYTES + 1 and raw.endswith(b"\n")):
        raise ConfigError(
            f"{where} line {lineno}: a record longer than {MAX_RECORD_BYTES >> 20} MiB "
            "(MAX_RECORD_BYTES in trainer/data/jsonl.py); split it into several records"
        )
    try:
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{where} line {lineno}: not valid UTF-8 (byte {raw[e.start : e.start + 1]!r} at "
            f"column {e.start + 1}); re-encode the file as UTF-8"
        ) from None


def read_lines(fh, path: str, key: str):
    """(line number, text) of each line of a JSONL file open in binary mode, each through
    :func:`check_line` (read no further than MAX_RECORD_BYTES a line)."""
    where = f"{key}={path!r}"
    for lineno, raw in enumerate(iter(lambda: fh.readline(MAX_RECORD_BYTES + 1), b""), 1):
        yield lineno, check_line(raw, lineno, where)


def tokenize_records(tok, path: str, key: str, fmt: str = "auto", train_on: str = "assistant") -> Encoded:
    """Every document of a JSONL file (see :func:`encode_records`), read and encoded in batches."""
    where = f"{key}={path!r}"
    prefix = special_prefix(tok)
    parts: list[Encoded] = []
    recs: list = []
    lines: list[int] = []

    def flush() -> None:
        if recs:
            parts.append(encode_records(tok, recs, fmt, train_on, where, lines, prefix))
            recs.clear()
            lines.clear()

    with open(path, "rb") as fh:  # read_lines: a BOM (Windows tools write one) is not a record
        for lineno, line in read_lines(fh, path, key):
            if not line.strip():
                continue
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ConfigError(f"{where} line {lineno}: not valid JSON ({e.msg})") from None
            lines.append(lineno)
            if len(recs) >= _READ_BATCH:
                flush()
    flush()
    if not parts:
        raise ConfigError(f"{where}: no records")
    return _concat(parts) if len(parts) > 1 else parts[0]


def _file_sha(path: str) -> str:
    with open(path, "rb") as fh:
        return fingerprint(fh.read())


def cached_tokens(
    path: str,
    key: str,
    tok,
    tok_fp: str,
    cache_dir: Optional[str],
    fmt: str = "auto",
    train_on: str = "assistant",
) -> tuple[Encoded, str, bool]:
    """``tokenize_records`` once per (data, tokenizer, format, train_on): later runs read
    ``cache_dir/<key>.npz``. Returns (encoded, the data file's fingerprint, whether the cache served)."""
    data_fp = _file_sha(path)
    name = fingerprint(_CACHE_VERSION, data_fp, tok_fp, fmt, train_on)
    target = os.path.join(cache_dir, f"{name}.npz") if cache_dir else None
    if target and os.path.isfile(target):
        with np.load(target) as z:
            enc = Encoded(z["ids"], z["learn"], z["offsets"], json.loads(str(z["formats"])))
        return enc, data_fp, True
    enc = tokenize_records(tok, path, key, fmt, train_on)
    if target:
        os.makedirs(cache_dir, exist_ok=True)
        # every rank may write (a temp name of its own); the rename makes it atomic
        with atomic.atomic_path(target, suffix=f".{os.getpid()}.tmp.npz") as tmp:
            np.savez(
                tmp,
                ids=enc.ids,
                learn=enc.learn,
                offsets=enc.offsets,
                formats=np.array(json.dumps(enc.formats)),
            )
    return enc, data_fp, False


def format_name(formats: dict) -> str:
    """``alpaca``, or ``messages+text`` for a file that mixes layouts (most records first)."""
    return "+".join(k for k, _ in sorted(formats.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"


# ----------------------------------------------------------------------------- packing


@dataclass
class Packed:
    """Packed rows (each (rows, seq_len) int64) and ``docs`` (documents, 4) int64: row, start in the row,
    length, 1 if the document was cut; ``dropped``: documents left out (data.truncation=drop)."""

    input_ids: np.ndarray
    position_ids: np.ndarray
    labels: np.ndarray
    docs: np.ndarray
    dropped: int = 0


def _spans(enc: Encoded, seq_len: int, truncation: str, bos: Optional[int]):
    """(first, head, start, stop, cut) of each kept document after truncation: its tokens are
    ``ids[first:first + head] + ids[start:stop]``; and the number dropped. ``left`` keeps a leading BOS."""
    spans, dropped = [], 0
    ids = enc.ids
    for a, b in zip(enc.offsets[:-1].tolist(), enc.offsets[1:].tolist()):
        if b - a <= seq_len:
            spans.append((a, 0, a, b, 0))
        elif truncation == "drop":
            dropped += 1
        elif truncation == "left":  # keep the end: the response, which is what is learned
            head = int(bos is not None and seq_len > 1 and ids[a] == bos)
            spans.append((a, head, b - seq_len + head, b, 1))
        else:
            spans.append((a, 0, a, a + seq_len, 1))
    return spans, dropped


def pack(
    enc: Encoded, seq_len: int, pad_id: int, truncation: str = "left", bos: Optional[int] = None
) -> Packed:
    """Greedy in-order packing of whole documents (cut by ``truncation``) into rows of ``seq_len``.
    ``bos``: the tokenizer's BOS id, kept at the start of a document cut from the left."""
    ids, learn = enc.ids, enc.learn
    spans, dropped = _spans(enc, seq_len, truncation, bos)
    rows: list[list[tuple[int, int, int, int, int]]] = []
    cur: list[tuple[int, int, int, int, int]] = []
    used = 0
    for span in spans:
        n_tok = span[1] + span[3] - span[2]
        if used + n_tok > seq_len and cur:
            rows.append(cur)
            cur, used = [], 0
        cur.append(span)
        used += n_tok
    if cur:
        rows.append(cur)
    n = len(rows)
    inp = np.full((n, seq_len), pad_id, np.int64)
    pos = np.zeros((n, seq_len), np.int64)
    lab = np.full((n, seq_len), IGNORE, np.int64)
    docs = np.zeros((len(spans), 4), np.int64)
    d = 0
    for r, row in enumerate(rows):
        t = 0
        for first, head, a, b, cut in row:
            sel = (
                np.arange(a, b)
                if not head
                else np.concatenate([np.arange(first, first + head), np.arange(a, b)])
            )
            L = len(sel)
            tok = ids[sel]
            inp[r, t : t + L] = tok
            pos[r, t : t + L] = np.arange(L)
            # position j predicts token j+1 of the same document, when that token is learned
            lab[r, t : t + L - 1] = np.where(learn[sel[1:]] > 0, tok[1:].astype(np.int64), IGNORE)
            docs[d] = (r, t, L, cut)
            d += 1
            t += L
        pos[r, t:] = np.arange(seq_len - t)  # padding: its own "document", no loss
    return Packed(inp, pos, lab, docs, dropped)


class PackedRows(Dataset):
    """Packed rows in memory; ``get_batch`` returns a dict of model inputs and the shifted labels.

    ``docs`` ((documents, 4): row, start, length, cut) says where each document sits, for ``stats`` and
    ``python -m trainer data``; ``dropped`` counts the documents of its file that data.truncation=drop
    left out."""

    def __init__(
        self,
        input_ids: np.ndarray,
        position_ids: np.ndarray,
        labels: np.ndarray,
        docs: Optional[np.ndarray] = None,
        dropped: int = 0,
    ):
        self.input_ids = torch.from_numpy(input_ids)
        self.position_ids = torch.from_numpy(position_ids)
        self.labels = torch.from_numpy(labels)
        self.docs = np.zeros((0, 4), np.int64) if docs is None else docs
        self.dropped = dropped

    @classmethod
    def of(cls, p: Packed, rows: Optional[np.ndarray] = None, dropped: Optional[int] = None) -> PackedRows:
        """The rows ``rows`` (sorted; default all) of a packing, with their documents."""
        if rows is None:
            return cls(p.input_ids, p.position_ids, p.labels, p.docs, p.dropped)
        new = np.full(len(p.input_ids), -1, np.int64)
        new[rows] = np.arange(len(rows))
        keep = new[p.docs[:, 0]] >= 0
        docs = p.docs[keep].copy()
        docs[:, 0] = new[docs[:, 0]]
        return cls(
            p.input_ids[rows],
            p.position_ids[rows],
            p.labels[rows],
            docs,
            p.dropped if dropped is None else dropped,
        )

    def stats(self) -> dict:
        """documents, tokens, learned_tokens, truncated, dropped of this split."""
        return {
            "documents": int(len(self.docs)),
            "tokens": int(self.docs[:, 2].sum()),
            "learned_tokens": int((self.labels != IGNORE).sum()),
            "truncated": int(self.docs[:, 3].sum()),
            "dropped": int(self.dropped),
        }

    def document(self, d: int) -> tuple[list[int], list[bool]]:
        """Document ``d``'s token ids and which of them are learned (the target of the position before)."""
        r, s, L, _ = (int(v) for v in self.docs[d])
        ids = self.input_ids[r, s : s + L].tolist()
        learned = [False] + (self.labels[r, s : s + L - 1] != IGNORE).tolist()
        return ids, learned

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return len(self.labels)

    def get_batch(self, indices: Indices):
        idx = as_index(indices, len(self))
        x = {"input_ids": self.input_ids[idx], "position_ids": self.position_ids[idx]}
        return x, self.labels[idx]

    def __getitem__(self, i: int):
        x, y = self.get_batch([i + len(self) if i < 0 else i])
        return {k: v[0] for k, v in x.items()}, y[0]


# ----------------------------------------------------------------------------- the builder


def model_max_positions(model_dir: Optional[str]) -> Optional[int]:
    """``max_position_embeddings`` (or GPT-2's ``n_positions``) from ``model_dir/config.json``."""
    if not model_dir:
        return None
    try:
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as fh:
            c = json.load(fh)
    except (OSError, ValueError):
        return None
    for k in ("max_position_embeddings", "n_positions", "max_seq_len"):
        if isinstance(c.get(k), int):
            return c[k]
    return None


def _seq_len(cfg: Config) -> int:
    if cfg.data.seq_len:
        return cfg.data.seq_len
    if cfg.model.name == "hf":
        return min(model_max_positions(cfg.model.path) or _MAX_DEFAULT_SEQ, _MAX_DEFAULT_SEQ)
    return cfg.model.block_size


def cache_dir_for(cfg: Config) -> Optional[str]:
    """``<parent of run.dir>/.token-cache`` (beside the run, shared by runs over the same data)."""
    base = os.path.dirname(os.path.abspath(cfg.run.dir)) if cfg.run.dir else os.path.abspath("runs")
    return os.path.join(base, ".token-cache")


def _check_learned(cfg: Config, split: str, rows: PackedRows, key: str, path: str) -> None:
    """A split with rows and no learned token trains (or scores) nothing: exit 2, saying why."""
    s = rows.stats()
    if len(rows) == 0 or s["learned_tokens"]:
        return
    d = cfg.data
    why = (
        f"; {s['truncated']} of {s['documents']} document(s) were cut to data.seq_len={_seq_len(cfg)} by "
        f"data.truncation={d.truncation} (use data.truncation=left or a larger data.seq_len)"
        if s["truncated"]
        else f" (data.format={d.format}, data.train_on={d.train_on}: no record has a learned turn)"
    )
    raise ConfigError(
        f"{key}={path!r}: 0 learned tokens in the {split} split of {s['documents']} documents{why}"
    )


def _describe_formats(path: str, enc: Encoded, fmt: str) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(enc.formats.items(), key=lambda kv: (-kv[1], kv[0])))
    how = "detected" if fmt == "auto" else "forced"
    return f"jsonl: data.format={fmt}: {how} {counts} record(s) in {path!r}"


def _non_default(d) -> list[str]:
    return [
        f"{k}={v}"
        for k, v, default in (
            ("format", d.format, "auto"),
            ("train_on", d.train_on, "assistant"),
            ("truncation", d.truncation, "left"),
        )
        if v != default
    ]


def jsonl(cfg: Config):
    d = cfg.data
    tok_dir = d.tokenizer or cfg.model.path
    key = "data.tokenizer" if d.tokenizer else "model.path"
    tok = load_tokenizer(tok_dir, key, cfg.model.trust_remote_code)
    tok_fp = tokenizer_fingerprint(tok_dir)
    T = _seq_len(cfg)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    cache = cache_dir_for(cfg)
    enc, data_fp, hit = cached_tokens(d.path, "data.path", tok, tok_fp, cache, d.format, d.train_on)
    log.info("%s", _describe_formats(d.path, enc, d.format))
    bos = tok.bos_token_id if tok.bos_token_id != tok.eos_token_id else None
    packed = pack(enc, T, pad, d.truncation, bos)
    fps = [data_fp]
    formats = Counter(enc.formats)
    if d.eval_path:
        e_enc, e_fp, _ = cached_tokens(
            d.eval_path, "data.eval_path", tok, tok_fp, cache, d.format, d.train_on
        )
        log.info("%s", _describe_formats(d.eval_path, e_enc, d.format))
        train, evald = PackedRows.of(packed), PackedRows.of(pack(e_enc, T, pad, d.truncation, bos))
        fps.append(e_fp)
        formats.update(e_enc.formats)
    else:
        tr, ev = split_indices(len(packed.labels), d.eval_fraction, d.split_seed)
        # one file feeds both splits: its dropped documents are reported with the train split
        train, evald = PackedRows.of(packed, tr), PackedRows.of(packed, ev, dropped=0)
    if len(train) == 0:
        if packed.dropped and len(packed.labels) == 0:  # every document longer than a row, and left out
            raise ConfigError(
                f"data.path={d.path!r}: all {packed.dropped} document(s) are longer than data.seq_len={T} "
                "and data.truncation=drop left them out (use data.truncation=left or a larger data.seq_len)"
            )
        raise ConfigError(f"data.path={d.path!r}: no training rows after the split (more records needed)")
    _check_learned(cfg, "train", train, "data.path", d.path)
    _check_learned(
        cfg, "eval", evald, "data.eval_path" if d.eval_path else "data.path", d.eval_path or d.path
    )
    st, se = train.stats(), evald.stats()
    cut, dropped = st["truncated"] + se["truncated"], st["dropped"] + se["dropped"]
    fmt_name = format_name(dict(formats))
    desc = (
        f"jsonl: {enc.documents} {fmt_name} documents from {d.path!r}{' (cached tokens)' if hit else ''}, "
        f"{len(train)} train / {len(evald)} eval rows of {T} tokens, {st['learned_tokens']} learned train "
        f"tokens"
        + (f", {cut} document(s) cut to {T} (data.truncation={d.truncation})" if cut else "")
        + (f", {dropped} dropped (longer than {T})" if dropped else "")
    )
    info = DataInfo(
        "lm",
        (T,),
        None,
        None,
        len(tok),
        T,
        desc,
        # the non-default choices only, so that a recipe's fingerprint stays what it was before they existed
        fingerprint(*fps, tok_fp, str(T), *_non_default(d)),
        extra={
            "loss_mask": True,
            "labels_shifted": True,
            "tokenizer": tok_dir,
            "tokenizer_fingerprint": tok_fp,
            "counts": {"format": fmt_name, "train": st, "eval": se},
        },
    )
    return train, evald, info

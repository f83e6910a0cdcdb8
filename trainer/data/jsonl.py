"""``data.name=jsonl``: a JSONL file of your own examples, tokenized once, packed into rows, prompts masked.

Records (one JSON object a line; blank lines are skipped):

- ``{"text": ...}``: every token is learned;
- ``{"prompt": ..., "response": ...}``: the prompt's tokens carry no loss, only the response is learned;
- ``{"messages": [{"role": ..., "content": ...}, ...]}``: rendered with the tokenizer's chat template (a
  tokenizer without one is a config error); only the assistant turns are learned.

Each document ends with EOS (learned when its last text is). Documents are tokenized once and cached in
``<parent of run.dir>/.token-cache/`` (keyed by the data file's and the tokenizer's fingerprints), then packed
greedily, in file order, into rows of ``data.seq_len`` tokens; a document longer than a row is cut to it.
Position ids restart at 0 for every document, which is also what keeps attention inside a document for
Hugging Face models (transformers builds a block-diagonal causal mask from restarting position ids).

A sample is ``({"input_ids": (T,), "position_ids": (T,)}, labels (T,))`` with the labels already shifted:
``labels[t]`` is the token after ``t`` when that token is learned and in the same document, else -100.
A bad record is a one-line ConfigError naming the file and the line.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import Config, ConfigError
from ..runtime import atomic
from .base import DataInfo, Indices, as_index, fingerprint, split_indices
from .tokenizer import load_tokenizer, tokenizer_fingerprint

IGNORE = -100  # the label of a position that carries no loss (torch's cross_entropy ignore_index)
_CACHE_VERSION = "1"
_MAX_DEFAULT_SEQ = 2048
# One JSONL record (line) at most: a 100 MB line otherwise took minutes and GBs of memory without a word.
MAX_RECORD_BYTES = 16 << 20


# ----------------------------------------------------------------------------- records -> token ids


def _text(key: str, lineno: int, rec: dict, field: str) -> str:
    v = rec.get(field)
    if not isinstance(v, str):
        raise ConfigError(f"{key} line {lineno}: {field!r} must be a string, got {type(v).__name__}")
    return v


def _ids(tok, text: str, special: bool) -> list[int]:
    return list(tok(text, add_special_tokens=special)["input_ids"])


def _chat(tok, key: str, lineno: int, messages) -> tuple[list[int], list[bool]]:
    """Token ids of a conversation through the chat template; only assistant turns are learned.

    Each turn's tokens are the difference between the rendering up to it and the rendering before it
    (for an assistant turn, before it *with* the generation prompt, so the role header is not learned).
    """
    if not getattr(tok, "chat_template", None):
        raise ConfigError(
            f"{key} line {lineno}: a 'messages' record needs a tokenizer with a chat template, and this one "
            "has none (use prompt/response records, or a tokenizer whose tokenizer_config.json has one)"
        )
    if not isinstance(messages, list) or not messages:
        raise ConfigError(f"{key} line {lineno}: 'messages' must be a non-empty list")
    for m in messages:
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise ConfigError(f"{key} line {lineno}: each message needs a string 'role' and 'content'")

    def render(msgs, gen: bool) -> list[int]:
        if not msgs:
            return []
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        return _ids(tok, text, special=False)

    ids: list[int] = []
    learn: list[bool] = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            head = render(messages[:i], gen=True)
            learn += [False] * (len(head) - len(ids))
            ids = head
        full = render(messages[: i + 1], gen=False)
        if full[: len(ids)] != ids:
            raise ConfigError(
                f"{key} line {lineno}: the chat template does not render conversations as prefixes of each "
                "other, so turns cannot be masked"
            )
        learn += [m["role"] == "assistant"] * (len(full) - len(ids))
        ids = full
    return ids, learn


def read_lines(fh, path: str, key: str):
    """(line number, text) of each line of a JSONL file open in binary mode. A line that is not UTF-8, or
    longer than MAX_RECORD_BYTES (read no further than that), is exit 2 naming the file and the line."""
    for lineno, raw in enumerate(iter(lambda: fh.readline(MAX_RECORD_BYTES + 1), b""), 1):
        if len(raw) > MAX_RECORD_BYTES and not (len(raw) == MAX_RECORD_BYTES + 1 and raw.endswith(b"\n")):
            raise ConfigError(
                f"{key}={path!r} line {lineno}: a record longer than {MAX_RECORD_BYTES >> 20} MiB "
                "(MAX_RECORD_BYTES in trainer/data/jsonl.py); split it into several records"
            )
        try:
            yield lineno, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"{key}={path!r} line {lineno}: not valid UTF-8 (byte {raw[e.start : e.start + 1]!r} at "
                f"column {e.start + 1}); re-encode the file as UTF-8"
            ) from None


def tokenize_records(tok, path: str, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids int32, learn uint8, offsets int64) of every document of a JSONL file, EOS appended."""
    eos = tok.eos_token_id
    ids: list[int] = []
    learn: list[int] = []
    offsets = [0]
    with open(path, "rb") as fh:
        for lineno, line in read_lines(fh, path, key):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{key}={path!r} line {lineno}: not valid JSON ({e.msg})") from None
            where = f"{key}={path!r}"
            if not isinstance(rec, dict):
                raise ConfigError(f"{where} line {lineno}: expected a JSON object, got {type(rec).__name__}")
            if "messages" in rec:
                d_ids, d_learn = _chat(tok, where, lineno, rec["messages"])
            elif "prompt" in rec or "response" in rec:
                p = _ids(tok, _text(where, lineno, rec, "prompt"), special=True)
                r = _ids(tok, _text(where, lineno, rec, "response"), special=False)
                d_ids, d_learn = p + r, [False] * len(p) + [True] * len(r)
            elif "text" in rec:
                d_ids = _ids(tok, _text(where, lineno, rec, "text"), special=True)
                d_learn = [True] * len(d_ids)
            else:
                raise ConfigError(
                    f"{where} line {lineno}: expected a 'text', 'prompt'/'response' or 'messages' record, "
                    f"got keys {sorted(rec)}"
                )
            if not d_ids or d_ids[-1] != eos:
                d_ids, d_learn = d_ids + [eos], d_learn + [d_learn[-1] if d_learn else True]
            ids += d_ids
            learn += [int(b) for b in d_learn]
            offsets.append(len(ids))
    if len(offsets) == 1:
        raise ConfigError(f"{key}={path!r}: no records")
    return np.asarray(ids, np.int32), np.asarray(learn, np.uint8), np.asarray(offsets, np.int64)


def _file_sha(path: str) -> str:
    with open(path, "rb") as fh:
        return fingerprint(fh.read())


def cached_tokens(path: str, key: str, tok, tok_fp: str, cache_dir: Optional[str]):
    """``tokenize_records`` once per (data, tokenizer): later runs read ``cache_dir/<key>.npz``."""
    data_fp = _file_sha(path)
    name = fingerprint(_CACHE_VERSION, data_fp, tok_fp)
    target = os.path.join(cache_dir, f"{name}.npz") if cache_dir else None
    if target and os.path.isfile(target):
        with np.load(target) as z:
            return z["ids"], z["learn"], z["offsets"], data_fp, True
    ids, learn, offsets = tokenize_records(tok, path, key)
    if target:
        os.makedirs(cache_dir, exist_ok=True)
        # every rank may write (a temp name of its own); the rename makes it atomic
        with atomic.atomic_path(target, suffix=f".{os.getpid()}.tmp.npz") as tmp:
            np.savez(tmp, ids=ids, learn=learn, offsets=offsets)
    return ids, learn, offsets, data_fp, False


# ----------------------------------------------------------------------------- packing


def pack(ids: np.ndarray, learn: np.ndarray, offsets: np.ndarray, seq_len: int, pad_id: int):
    """Greedy in-order packing of whole documents into rows of ``seq_len``: (input_ids, position_ids,
    labels, cut), each (rows, seq_len) int64; ``cut`` counts documents cut to ``seq_len``."""
    rows: list[list[int]] = []
    cur_ids: list[np.ndarray] = []
    used = 0
    cut = 0
    docs = []
    for a, b in zip(offsets[:-1], offsets[1:]):
        if b - a > seq_len:
            b, cut = a + seq_len, cut + 1
        docs.append((int(a), int(b)))
    for a, b in docs:
        if used + (b - a) > seq_len and cur_ids:
            rows.append(cur_ids)
            cur_ids, used = [], 0
        cur_ids.append((a, b))
        used += b - a
    if cur_ids:
        rows.append(cur_ids)
    n = len(rows)
    inp = np.full((n, seq_len), pad_id, np.int64)
    pos = np.zeros((n, seq_len), np.int64)
    lab = np.full((n, seq_len), IGNORE, np.int64)
    for r, spans in enumerate(rows):
        t = 0
        for a, b in spans:
            L = b - a
            inp[r, t : t + L] = ids[a:b]
            pos[r, t : t + L] = np.arange(L)
            # position j predicts token j+1 of the same document, when that token is learned
            nxt = ids[a + 1 : b].astype(np.int64)
            lab[r, t : t + L - 1] = np.where(learn[a + 1 : b] > 0, nxt, IGNORE)
            t += L
        pos[r, t:] = np.arange(seq_len - t)  # padding: its own "document", no loss
    return inp, pos, lab, cut


class PackedRows(Dataset):
    """Packed rows in memory; ``get_batch`` returns a dict of model inputs and the shifted labels."""

    def __init__(self, input_ids: np.ndarray, position_ids: np.ndarray, labels: np.ndarray):
        self.input_ids = torch.from_numpy(input_ids)
        self.position_ids = torch.from_numpy(position_ids)
        self.labels = torch.from_numpy(labels)

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


def jsonl(cfg: Config):
    d = cfg.data
    tok_dir = d.tokenizer or cfg.model.path
    key = "data.tokenizer" if d.tokenizer else "model.path"
    tok = load_tokenizer(tok_dir, key, cfg.model.trust_remote_code)
    tok_fp = tokenizer_fingerprint(tok_dir)
    T = _seq_len(cfg)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    cache = cache_dir_for(cfg)
    ids, learn, offs, data_fp, hit = cached_tokens(d.path, "data.path", tok, tok_fp, cache)
    inp, pos, lab, cut = pack(ids, learn, offs, T, pad)
    fps = [data_fp]
    if d.eval_path:
        e_ids, e_learn, e_offs, e_fp, _ = cached_tokens(d.eval_path, "data.eval_path", tok, tok_fp, cache)
        e_inp, e_pos, e_lab, e_cut = pack(e_ids, e_learn, e_offs, T, pad)
        train, evald = PackedRows(inp, pos, lab), PackedRows(e_inp, e_pos, e_lab)
        cut += e_cut
        fps.append(e_fp)
    else:
        tr, ev = split_indices(len(lab), d.eval_fraction, d.split_seed)
        train = PackedRows(inp[tr], pos[tr], lab[tr])
        evald = PackedRows(inp[ev], pos[ev], lab[ev])
    if len(train) == 0:
        raise ConfigError(f"data.path={d.path!r}: no training rows after the split (more records needed)")
    learned = int((train.labels != IGNORE).sum())
    desc = (
        f"jsonl: {len(offs) - 1} documents from {d.path!r}{' (cached tokens)' if hit else ''}, "
        f"{len(train)} train / {len(evald)} eval rows of {T} tokens, {learned} learned train tokens"
        + (f", {cut} document(s) cut to {T}" if cut else "")
    )
    info = DataInfo(
        "lm",
        (T,),
        None,
        None,
        len(tok),
        T,
        desc,
        fingerprint(*fps, tok_fp, str(T)),
        extra={"loss_mask": True, "tokenizer": tok_dir, "tokenizer_fingerprint": tok_fp},
    )
    return train, evald, info

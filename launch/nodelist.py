"""Slurm's compressed host lists (``gpu[01-04,07],login1``) as names, without ``scontrol show hostnames``."""

from __future__ import annotations

import re


def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth < 0 or depth > 1:
            raise ValueError("unbalanced brackets")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise ValueError("unbalanced brackets")
    parts.append("".join(cur))
    return [p for p in parts if p]


def _expand_one(name: str) -> list[str]:
    m = re.search(r"\[([^\]]*)\]", name)
    if not m:
        return [name]
    head, tail = name[: m.start()], name[m.end() :]
    out = []
    for item in m.group(1).split(","):
        lo, _, hi = item.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"bad range {item!r}")
        hi = hi or lo
        if int(hi) < int(lo):
            raise ValueError(f"descending range {item!r}")
        width = len(lo)  # Slurm keeps leading zeros: node[01-03] -> node01 node02 node03
        for n in range(int(lo), int(hi) + 1):
            out += [f"{head}{n:0{width}d}{rest}" for rest in _expand_one(tail)]
    return out


def expand(text: str) -> list[str]:
    """'node[01-03,7],gpu5' -> node01 node02 node03 node7 gpu5; ValueError for a malformed list."""
    return [host for part in _split_top(text.strip()) for host in _expand_one(part)]

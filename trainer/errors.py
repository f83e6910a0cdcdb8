"""The config error and the hints that come with it ("did you mean", option spellings, the run dirs that do
exist beside a path that does not). No torch; the one I/O is listing those run dirs."""

from __future__ import annotations

import difflib
import os
from typing import Optional

from .schema import iter_fields


class ConfigError(ValueError):
    """A bad key, value or file in the configuration (exit code 2)."""


def _edits(a: str, b: str) -> int:
    """Levenshtein distance (tiny inputs: command, mode and key names)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def did_you_mean(word: str, choices) -> str:
    """' (did you mean X?)' for the closest of `choices`, or ''. One typo away wins, a same-length name
    first (a typed letter wrong: dpp -> ddp, not dp); otherwise difflib's closest."""
    word, choices = str(word), [str(c) for c in choices]
    near = sorted((_edits(word, c), len(c) != len(word), c) for c in choices)
    if near and near[0][0] <= max(1, len(word) // 4):
        return f" (did you mean {near[0][2]}?)"
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def unknown_key_hint(prefix: str, name: str, names) -> str:
    """The hint after ``unknown key PREFIX.NAME``: a typo within the section first (train.max_step ->
    train.max_steps); else the same name in another section (train.lr -> optim.lr, lr -> optim.lr); else
    the closest key anywhere; else the section's keys."""
    near = did_you_mean(name, names)
    if near and _edits(str(name), near[len(" (did you mean ") : -2]) <= 1:
        return near.replace("mean ", "mean " + prefix)
    keys = [k for k, *_ in iter_fields()]
    elsewhere = [k for k in keys if k.rsplit(".", 1)[-1] == name and k != prefix + str(name)]
    if elsewhere:
        return f" (did you mean {' or '.join(elsewhere[:3])}?)"
    if near:
        return near.replace("mean ", "mean " + prefix)
    anywhere = did_you_mean(name, [k.rsplit(".", 1)[-1] for k in keys])
    if anywhere:
        leaf = anywhere[len(" (did you mean ") : -2]
        full = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
        return f" (did you mean {full[0]}?)"
    return f" (known in this section: {', '.join(sorted(names))})"


def option_hint(arg: str, following: Optional[str] = None) -> str:
    """For `--max_steps 10` (an option the CLI does not have): the KEY=VALUE override it probably meant."""
    name, _, value = arg.lstrip("-").partition("=")
    name = name.replace("-", "_")
    value = value or (following if following and not following.startswith("-") else "VALUE")
    keys = [k for k, *_ in iter_fields()]
    match = [k for k in keys if k == name or k.endswith("." + name)]
    if match:
        return f"{arg}: config keys are not options; use {match[0]}={value}"
    return f"unrecognized argument {arg}" + did_you_mean(name, [k.rsplit(".", 1)[-1] for k in keys])


# What marks a directory as one of our runs (a subset of trainer/run.py's RUN_MARKERS that every run has).
_RUN_FILES = ("config.yaml", "checkpoints", "metrics.jsonl")


def run_dirs_near(path: str) -> tuple[str, list[str]]:
    """(where looked, run dirs there, newest first) for a path that does not exist: its nearest existing
    parent (``runs/`` for ``runs/cnn``), and ``./runs`` when that parent is the working directory."""
    parent = os.path.dirname(os.path.normpath(path)) or "."
    while parent not in ("", ".", os.sep) and not os.path.isdir(parent):
        parent = os.path.dirname(parent) or "."
    where = [parent] + (["runs"] if os.path.abspath(parent) == os.getcwd() else [])
    found = []
    for d in where:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for n in names:
            cand = os.path.normpath(os.path.join(d, n))
            if os.path.isdir(cand) and any(os.path.exists(os.path.join(cand, m)) for m in _RUN_FILES):
                found.append(cand)
    found.sort(key=lambda p: -os.path.getmtime(p))
    return " or ".join(w.rstrip(os.sep) + os.sep for w in where), found


def missing_path(key: str, path: str) -> str:
    """``KEY='runs/cnn': does not exist; run dirs in runs/: runs/cnn-1f2e..., ...`` (the closest first)."""
    return f"{key}={path!r}: does not exist{run_dirs_hint(path)}"


def run_dirs_hint(path: str) -> str:
    """`` (did you mean D?); run dirs in runs/: D, ...`` for a path that does not exist."""
    where, found = run_dirs_near(path)
    if not found:
        return f" (no run dirs in {where})"
    want = os.path.normpath(path)
    # the default run dir is <model>-<key>: runs/cnn -> runs/cnn-1f2e...
    named = [f for f in found if os.path.basename(f).startswith(os.path.basename(want) + "-")]
    close = f" (did you mean {named[0]}?)" if named else did_you_mean(want, found)
    shown = found[:6]
    more = f" and {len(found) - len(shown)} more" if len(found) > len(shown) else ""
    return f"{close}; run dirs in {where}: {', '.join(shown)}{more}"

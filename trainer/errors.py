"""The config error and the hints that come with it ("did you mean", option spellings). No torch, no I/O."""

from __future__ import annotations

import difflib
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

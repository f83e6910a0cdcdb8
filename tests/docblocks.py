"""The fenced examples of README.md and docs/, as the doc test runs them (docs/design.md "Docs").

A block fenced as ```bash, ```sh, ```shell or ```python is runnable; any other fence (none, ```yaml,
```text) is output or a synopsis and is not run. A comment on the line before the fence says otherwise:

    <!-- doc-test: skip REASON -->     not run, for REASON (a GPU, a cluster, a cloud account, the network)
    <!-- doc-test: s3 ... -->          run against the test's S3 server (its AWS_* variables)
    <!-- doc-test: mlflow ... -->      run against the test's MLflow server (http://mlflow:5000 replaced)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNABLE = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python"}
KINDS = ("skip", "s3", "mlflow")
MARKER = re.compile(r"^<!--\s*doc-test:\s*(\w+)\s*(.*?)\s*-->$")
FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)")


@dataclass
class Block:
    page: str  # path relative to the repository root
    line: int  # 1-based line of the opening fence
    lang: str  # "bash" or "python"; "" for a block that is not run
    code: str
    kind: str = "run"  # run, skip, s3, mlflow
    note: str = ""  # the marker's text (for skip: the reason)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[str]:
    """README.md, then every page of mkdocs.yml's nav, in nav order."""
    with open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8") as fh:
        nav = yaml.safe_load(fh)["nav"]

    def walk(items):
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            if isinstance(value, list):
                yield from walk(value)
            else:
                yield "docs/" + value

    return ["README.md", *walk(nav)]


def blocks(page: str, root: str | None = None) -> list[Block]:
    """Every fenced block of a page (under ``root``, default the repository), with its marker; a malformed
    marker raises ValueError."""
    with open(os.path.join(root or ROOT, page), encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).lower(), i
        body = []
        i += 1
        while i < len(lines) and not lines[i].startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        block = Block(page, start + 1, RUNNABLE.get(lang, ""), "\n".join(body) + "\n")
        prev = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(prev)
        if marker:
            block.kind, block.note = marker.group(1), marker.group(2)
            if block.kind not in KINDS:
                raise ValueError(f"{block.where}: unknown doc-test marker {block.kind!r} (one of {KINDS})")
            if block.kind == "skip" and not block.note:
                raise ValueError(f"{block.where}: `doc-test: skip` needs a reason")
            if not block.lang:
                raise ValueError(f"{block.where}: a doc-test marker on a block that is not run ({lang!r})")
        elif "doc-test" in prev:
            raise ValueError(f"{block.where}: malformed doc-test marker {prev!r}")
        out.append(block)
    return out


def runnable(page: str, root: str | None = None) -> list[Block]:
    return [b for b in blocks(page, root) if b.lang]

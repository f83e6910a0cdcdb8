"""Every runnable example of README.md and docs/ runs, as a newcomer would run it (issue #26).

One scratch checkout for the whole module (the repository's files as `git ls-files` lists them, and the
project's .venv), the README first and then the pages in mkdocs.yml's nav order, each block as one
`bash -e` script (a ```python block through the venv's Python) with the venv activated: a later page may
use a run an earlier page made, as a reader following the docs top to bottom would. Blocks marked
`<!-- doc-test: skip REASON -->` are not run; `s3` and `mlflow` blocks run against the session's SeaweedFS
and MLflow servers (tests/docblocks.py says how the markers read).

Cost: `TRAINER_OVERRIDES="train.max_steps=STEPS log.plot=false"` caps every `python -m trainer train` and
every worker `python -m launch` starts (docs/configuration.md); the `fit()` examples set their own small
max_steps. What is left is mostly process start-up (`import torch`): ~4 min of CPU for the whole set.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time

import pytest

from tests import docblocks
from tests.conftest import ROOT

STEPS = 8  # enough for an eval, a checkpoint and a resume in every example; each run is then seconds
BLOCK_TIMEOUT = 300
MLFLOW_PLACEHOLDER = "http://mlflow:5000"
S3_BUCKET = "team-ckpts"
# (where, outcome, wall seconds, CPU seconds of its processes), printed at the end of the module: the CPU
# time is what the block costs on an idle machine, whatever the load while the suite runs
TIMES: list[tuple[str, str, float, float]] = []


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """The working tree's files as a fresh clone has them (untracked, not ignored, included), plus .venv."""
    dest = tmp_path_factory.mktemp("doc-examples") / "torchrunner"
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))
    venv = os.path.dirname(os.path.dirname(sys.executable))  # the venv running the tests (make setup's)
    os.symlink(venv, dest / ".venv")
    # `make train` / `make setup` in the examples must find setup done: were a copied requirements file or
    # pyproject.toml newer than the stamp, make would reinstall the project, editable, from this scratch
    # copy into the shared venv. The copies get the stamp's age (the venv is what the tests run on anyway).
    stamp = os.path.join(venv, ".installed")
    if os.path.exists(stamp):
        age = os.stat(stamp).st_mtime - 1
        for name in os.listdir(dest):
            if name.startswith("requirements") or name == "pyproject.toml":
                os.utime(dest / name, (age, age))
    finder = _editable_target()
    yield dest
    assert _editable_target() == finder, "an example reinstalled the project into the test venv"
    for where, outcome, wall, cpu in TIMES:
        print(f"doc example {where}: {outcome}, {wall:.1f} s wall, {cpu:.1f} s CPU")
    print(f"doc examples: {sum(t[2] for t in TIMES):.0f} s wall, {sum(t[3] for t in TIMES):.0f} s CPU")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _editable_target() -> str:
    """Where the venv's editable install of this project points (make setup's `pip install -e .`)."""
    import importlib.metadata

    dist = importlib.metadata.distribution("torchrunner")
    return "".join(sorted(f.read_text() or "" for f in dist.files or () if str(f).endswith(".py")))


def _env(checkout) -> dict:
    env = dict(os.environ)
    venv_bin = str(checkout / ".venv" / "bin")
    env.update(
        PATH=venv_bin + os.pathsep + env.get("PATH", ""),
        VIRTUAL_ENV=str(checkout / ".venv"),
        TRAINER_OVERRIDES=f"train.max_steps={STEPS} log.plot=false",  # matplotlib: ~1.3 s CPU a run
        WANDB_SILENT="true",
        MPLBACKEND="Agg",
    )
    env.pop("PYTHONPATH", None)
    return env


def _run(block: docblocks.Block, checkout, env: dict) -> subprocess.CompletedProcess:
    if block.lang == "python":
        argv, stdin = [str(checkout / ".venv" / "bin" / "python"), "-"], block.code
    else:
        argv, stdin = ["bash", "-e", "-o", "pipefail", "-c", block.code], None
    return subprocess.run(
        argv, cwd=checkout, env=env, input=stdin, capture_output=True, text=True, timeout=BLOCK_TIMEOUT
    )


# Pages with something to run; pages whose every block is marked skip are checked (markers and reasons)
# by tests/unit/test_docs.py.
PAGES = [p for p in docblocks.pages() if any(b.kind != "skip" for b in docblocks.runnable(p))]


@pytest.mark.timeout(1200)  # a page runs several blocks, each up to BLOCK_TIMEOUT on a loaded machine
@pytest.mark.parametrize("page", PAGES)
def test_every_example_of_the_page_runs(page, checkout, request):
    env = _env(checkout)
    for block in docblocks.runnable(page, str(checkout)):  # the pages as copied, with the code they describe
        if block.kind == "skip":
            TIMES.append((block.where, f"skipped ({block.note})", 0.0, 0.0))
            continue
        benv = dict(env)
        if block.kind == "mlflow":
            block.code = block.code.replace(MLFLOW_PLACEHOLDER, request.getfixturevalue("mlflow_server"))
        if block.kind == "s3":
            server = request.getfixturevalue("s3_server")
            benv.update(server.env(), AWS_EC2_METADATA_DISABLED="true")
            fs = server.fs()
            if not fs.exists(S3_BUCKET):
                fs.mkdir(S3_BUCKET)
        t0, c0 = time.monotonic(), _children_cpu()
        r = _run(block, checkout, benv)
        TIMES.append((block.where, f"exit {r.returncode}", time.monotonic() - t0, _children_cpu() - c0))
        assert r.returncode == 0, (
            f"{block.where} exited {r.returncode}\n--- block\n{block.code}--- stdout\n{r.stdout[-3000:]}"
            f"--- stderr\n{r.stderr[-4000:]}"
        )

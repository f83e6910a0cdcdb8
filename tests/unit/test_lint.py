"""House style is checked where CI looks: ruff over the Python code. The files covered and the rules are in
pyproject.toml ([tool.ruff]); `make lint` runs the same two commands, with no paths."""

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_ruff_is_clean():
    ruff = os.path.join(os.path.dirname(sys.executable), "ruff")
    r = subprocess.run(
        [ruff, "check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-1000:]


def test_trainer_launch_and_tests_are_formatted():
    """trainer/, launch/ and tests/ are kept in `ruff format` style (line length and the files from
    pyproject.toml: bench/ is linted but not yet formatted), so long lines cannot creep back."""
    ruff = os.path.join(os.path.dirname(sys.executable), "ruff")
    r = subprocess.run(
        [ruff, "format", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-1000:]

"""The launcher and the trainer meet only at the process boundary, so each has its exit codes: they agree,
and the "Exit codes" tables of the README and docs/resume.md (the contract with Docker, Kubernetes and Slurm)
list every one."""

import os
import re

import pytest

import launch.exitcodes as L
import trainer.exitcodes as T

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMES = ("OK", "INTERNAL", "CONFIG", "NONFINITE", "HANG", "STORAGE", "PREEMPTED", "PEER_LOST")


def test_exit_codes_agree():
    for name in NAMES:
        assert getattr(L, name) == getattr(T, name), name
    assert set(L.NAMES) == set(T.NAMES) == {getattr(T, n) for n in NAMES}


@pytest.mark.parametrize("page", ["README.md", "docs/resume.md"])
def test_the_exit_code_tables_list_every_exit_code(page):
    text = open(os.path.join(ROOT, page), encoding="utf-8").read()
    table = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    listed = {int(m) for m in re.findall(r"^\| (\d+) \|", table, flags=re.M)}
    assert set(T.NAMES) <= listed, sorted(set(T.NAMES) - listed)
    assert listed - set(T.NAMES) <= {69}, "69 is the container entrypoint's own code"

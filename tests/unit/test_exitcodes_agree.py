"""The launcher and the trainer meet only at the process boundary, so each has its exit codes: they agree,
and the README's "Exit codes" table (the contract with Docker, Kubernetes and Slurm) lists every one."""

import os
import re

import launch.exitcodes as L
import trainer.exitcodes as T

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMES = ("OK", "INTERNAL", "CONFIG", "NONFINITE", "HANG", "STORAGE", "PREEMPTED", "PEER_LOST")


def test_exit_codes_agree():
    for name in NAMES:
        assert getattr(L, name) == getattr(T, name), name
    assert set(L.NAMES) == set(T.NAMES) == {getattr(T, n) for n in NAMES}


def test_the_readme_table_lists_every_exit_code():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    table = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    listed = {int(m) for m in re.findall(r"^\| (\d+) \|", table, flags=re.M)}
    assert set(T.NAMES) <= listed, sorted(set(T.NAMES) - listed)
    assert listed - set(T.NAMES) <= {69}, "69 is the container entrypoint's own code"

"""The launcher and the trainer meet only at the process boundary, so each has its exit codes: they agree."""

import launch.exitcodes as L
import trainer.exitcodes as T


def test_exit_codes_agree():
    for name in ("OK", "INTERNAL", "CONFIG", "NONFINITE", "HANG", "PREEMPTED"):
        assert getattr(L, name) == getattr(T, name), name

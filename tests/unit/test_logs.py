"""Console noise (#29): a third-party library's warnings at import time go to the rank log, not the console;
its errors, warnings logged outside an import, and a user's own module still reach the console."""

from __future__ import annotations

import subprocess
import textwrap

from tests.conftest import PY, ROOT

NOISY_LIB = """
import logging
logging.getLogger("noisylib").warning("noisylib: failed to load _C_fancy.so")
logging.getLogger("noisylib.kernels").warning("noisylib: detected no triton")
logging.getLogger("noisylib").error("noisylib: a real error at import")
"""
USER_MODULE = 'import logging\nlogging.getLogger("mymodel").warning("mymodel: my own warning")\n'


def _run(code: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )


def test_third_party_import_warnings_go_to_the_rank_log_not_the_console(tmp_path):
    lib = tmp_path / "lib" / "site-packages" / "noisylib"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text(NOISY_LIB)
    (tmp_path / "mymodel.py").write_text(USER_MODULE)
    r = _run(
        f"""
        import logging, sys
        from trainer.runtime.logs import add_rank_log, setup_logging
        setup_logging(0)
        sys.path[:0] = [{str(lib.parent)!r}, "."]
        import noisylib, mymodel
        logging.getLogger("noisylib").warning("noisylib: a warning at run time")
        add_rank_log("run", 0, 1)
        """,
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    console = r.stderr
    assert "failed to load" not in console and "no triton" not in console
    assert "noisylib: a real error at import" in console
    assert "noisylib: a warning at run time" in console
    assert "mymodel: my own warning" in console
    rank_log = (tmp_path / "run" / "logs" / "rank-0.log").read_text()
    assert "WARNING noisylib: failed to load _C_fancy.so" in rank_log
    assert "WARNING noisylib: detected no triton" in rank_log


def test_importing_torchao_after_setup_prints_nothing_on_the_console(tmp_path):
    """The real noise: torchao's missing CUDA libraries and no-triton notices, torch's _pytree lines."""
    r = _run(
        """
        import logging, torch
        from trainer.runtime.logs import add_rank_log, setup_logging
        setup_logging(0)
        add_rank_log("run", 0, 1)
        import torchao.quantization
        logging.getLogger("trainer").info("trainer: still on the console")
        """,
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip().splitlines()[-1]], r.stderr
    assert r.stderr.strip().endswith("trainer: still on the console")
    rank_log = (tmp_path / "run" / "logs" / "rank-0.log").read_text()
    assert "Failed to load" in rank_log and "Detected no triton" in rank_log

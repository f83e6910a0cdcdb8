"""``import trainer`` stays free of torch (``check`` and ``--help`` must not pay for it), and the trainer
never imports transformers unless a user model names it (issue #11)."""

from __future__ import annotations

import subprocess

from tests.conftest import PY, ROOT


def test_trainer_imports_neither_torch_early_nor_transformers_ever():
    code = (
        "import sys, trainer\n"
        "assert 'torch' not in sys.modules, 'import trainer pulled in torch'\n"
        "from trainer import fit, load_config\n"
        "import trainer.run, trainer.tools.evaluate\n"
        "assert 'torch' in sys.modules\n"
        "assert 'transformers' not in sys.modules, 'the trainer imported transformers'\n"
        "print(load_config(None, ['train.loss=pkg.mod:fn']).train.loss)\n"
    )
    r = subprocess.run(
        [PY, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "pkg.mod:fn"

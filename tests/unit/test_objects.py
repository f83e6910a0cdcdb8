"""Import paths (#29 item 5): a typo fails before anything heavy runs, with a did-you-mean; a module that
is not found names the working directory and PYTHONPATH. The module is found without importing it, and a
name its source defines is confirmed without importing it either."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import PY, ROOT
from trainer import config as C
from trainer.config import ConfigError
from trainer.objects import check_import_path

SLOW_MODULE = """
import os, time
open(os.environ["IMPORTED_MARK"], "w").close()
time.sleep(2)  # stands for torch and friends


class Net:
    pass
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "slowmodels.py").write_text(SLOW_MODULE)
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "models.py").write_text("class Net:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("IMPORTED_MARK", str(tmp_path / "imported"))
    for m in ("slowmodels", "mypkg", "mypkg.models"):
        monkeypatch.delitem(sys.modules, m, raising=False)
    return tmp_path


def test_a_name_the_source_defines_is_confirmed_without_importing(user_module):
    t0 = time.perf_counter()
    check_import_path("model.name", "slowmodels:Net")
    check_import_path("model.name", "mypkg.models:Net")
    assert time.perf_counter() - t0 < 1.0 and not (user_module / "imported").exists()
    assert "mypkg" not in sys.modules  # not even the parent package was imported


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            "slowmodels:Nett",
            "model.name='slowmodels:Nett': cannot import 'Nett': module 'slowmodels' has no attribute "
            "'Nett' (did you mean Net?)",
        ),
        ("torch.nn:Linearr", "module 'torch.nn' has no attribute 'Linearr' (did you mean Linear?)"),
        (
            "mypkg.modles:Net",
            "model.name='mypkg.modles:Net': package 'mypkg' has no module 'modles' (did you mean models?)",
        ),
        ("mypkg.models.x:Net", "'mypkg.models' is a module, not a package"),
    ],
)
def test_typos_suggest_the_closest_name(user_module, spec, message):
    with pytest.raises(ConfigError) as e:
        check_import_path("model.name", spec)
    assert message in str(e.value)


def test_a_module_not_found_names_the_working_directory_and_pythonpath(user_module, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    with pytest.raises(ConfigError) as e:
        check_import_path("model.name", "mypkgg:Net")
    msg = str(e.value)
    assert msg.startswith("model.name='mypkgg:Net': no module named 'mypkgg' (did you mean mypkg?)")
    assert f"working directory ({os.getcwd()})" in msg and "PYTHONPATH (/somewhere/else)" in msg


def test_the_launcher_refuses_an_import_typo_before_any_worker_starts(tmp_path):
    """The launcher's preflight (`trainer check`) now catches it: no torchrun, no run dir."""
    t0 = time.perf_counter()
    r = subprocess.run(
        [
            PY,
            "-m",
            "launch",
            "ddp",
            "--nproc-per-node",
            "2",
            "-c",
            os.path.join(ROOT, "configs", "cnn.yaml"),
            f"run.dir={tmp_path / 'run'}",
            "model.name=mypkg:Net",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    elapsed = time.perf_counter() - t0
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "launch: config check failed: config error: model.name='mypkg:Net': no module named 'mypkg'; it is "
        f"looked for in the working directory ({tmp_path}), PYTHONPATH ({ROOT}) and the installed packages: "
        "run from the folder that holds it, or add that folder to PYTHONPATH"
    ]
    assert not (tmp_path / "run").exists()
    print(f"failed in {elapsed:.2f}s")  # ~0.4 s here; ~6 s before (torchrun and 2 workers started)


@pytest.mark.parametrize("key", ["model.name", "data.name", "train.loss"])
def test_a_dotted_path_without_the_colon_suggests_it(key):
    # the usual typo for package.module:Name: a dot where the colon goes
    with pytest.raises(ConfigError) as e:
        C.load(None, [f"{key}=mypkg.models.Net"])
    assert str(e.value).endswith("(did you mean mypkg.models:Net?)"), str(e.value)

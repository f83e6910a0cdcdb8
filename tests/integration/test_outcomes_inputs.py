"""Every bad input has a named outcome (issue 13, classes 1, 8, 9, 10): exit 2 with one line on stderr and
no run directory; a diverged run never exits 0; packaging and console habits.

Config errors are raised before torch is imported, so those cases run the CLI's main() in-process (a few
run the real process); the runs that train use the tiny job of tests/faultutil.py, in-process.
"""

from __future__ import annotations

import ast
import io
import json
import logging
import math
import os
import subprocess
import sys

import pytest
import tomllib
import torch

from tests.conftest import ROOT, run_cli
from tests.faultutil import TINY
from tests.helpers import FAST, train_inprocess
from trainer import checkpoint as ckpt
from trainer import config as C
from trainer import exitcodes as codes
from trainer.api import train_command
from trainer.training.observe import metrics as M

pytestmark = pytest.mark.timeout(120)


def strict_load(text: str):
    """json.loads that refuses NaN / Infinity (what a strict JSON reader does)."""
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def assert_one_line_exit_2(r, *needles: str) -> str:
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == codes.CONFIG, r.stderr[-2000:]
    assert len(lines) == 1, r.stderr[-2000:]
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    return lines[0]


def cli_train(tmp_path, *args: str, env: dict | None = None, cwd: str | None = None):
    """`python -m trainer train ARGS` as a real process (imports torch when it gets to training: ~3 s)."""
    run_dir = tmp_path / "run"
    r = run_cli(["train", *args, f"run.dir={run_dir}", *FAST], cwd=cwd or ROOT, env=env, timeout=60)
    return r, run_dir


@pytest.fixture
def main_train(tmp_path, capsys, monkeypatch):
    """The CLI's own main() in-process for inputs refused before training (~10 ms instead of ~0.5 s per
    process); reaching training would be a test failure, never an os._exit of pytest."""
    import trainer.__main__ as cli
    import trainer.api

    monkeypatch.setattr(trainer.api, "train_command", lambda cfg: pytest.fail("the input was accepted"))
    monkeypatch.chdir(tmp_path)

    def run(*args: str):
        run_dir = tmp_path / "run"
        monkeypatch.setattr(sys, "argv", ["trainer", "train", *args])
        with pytest.raises(SystemExit) as e:
            cli.main(["train", *args, f"run.dir={run_dir}", *FAST])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, e.value.code, out.out, out.err), run_dir

    return run


# ----------------------------------------------------------------------------- class 1: non-finite


@pytest.mark.parametrize(
    "override,key",
    [
        ("optim.lr=.nan", "optim.lr"),
        ("optim.momentum=nan", "optim.momentum"),
        ("train.grad_clip=nan", "train.grad_clip"),
        ("optim.lr=inf", "optim.lr"),
        ("optim.betas=[0.9, .nan]", "optim.betas[1]"),
        ("optim.param_groups=[{pattern: '*', lr: .inf}]", "optim.param_groups[0].lr"),
        ("dist.collective_timeout_s=-.inf", "dist.collective_timeout_s"),
    ],
)
def test_non_finite_numbers_are_config_errors(main_train, override, key):
    r, run_dir = main_train(override)
    assert_one_line_exit_2(r, key, "finite")
    assert not run_dir.exists()


def test_a_run_that_diverged_to_the_end_exits_3_and_its_files_are_strict_json(tmp_path):
    run_dir = tmp_path / "run"
    # lr 1e30: the first update throws the weights far out, every later loss is inf (skipped): the run ends
    # inside a bad streak that never reached train.max_bad_steps
    code = train_inprocess(
        None,
        run_dir,
        [
            *TINY,
            "optim.lr=1e30",
            "optim.momentum=0",
            "train.max_steps=6",
            "train.max_bad_steps=100",
            "checkpoint.every_steps=1",
            "checkpoint.keep=20",
            "log.every_steps=1",
        ],
    )
    assert code == codes.NONFINITE
    assert not (run_dir / "model.safetensors").exists()  # no export of a non-result
    summary = strict_load((run_dir / "summary.json").read_text())
    assert summary["final_loss"] is None
    rows = [strict_load(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("loss") is None for r in rows if not r.get("eval"))
    log = (run_dir / "logs" / "rank-0.log").read_text()
    assert "the run is not a result" in log
    latest = ckpt.resolve(str(run_dir))  # the previous checkpoint still loads, and is finite
    state, _ = ckpt.load_state(latest)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_strict_json_turns_every_non_finite_number_into_null():
    assert M.strict_json({"a": math.nan, "b": [math.inf, 1.0], "c": {"d": -math.inf}}) == {
        "a": None,
        "b": [None, 1.0],
        "c": {"d": None},
    }


# ----------------------------------------------------------------------------- class 8: config edge cases

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"b{i}: &b{i} [{', '.join(['*' + ('a' if i == 1 else f'b{i - 1}')] * 10)}]\n" for i in range(1, 8)
)


@pytest.mark.parametrize(
    "content,needle",
    [
        ("train:\n  max_steps: 1\n  max_steps: 2\n", "duplicate key 'max_steps' at line 3"),
        ("model: {name: cnn}\nmodel: {name: mlp}\n", "duplicate key 'model'"),
        (ALIAS_BOMB, "expands to more than"),
        ("model: []\n", "model=[]: expected a mapping"),
        ("train: 0\n", "train=0: expected a mapping"),
        ("- 1\n- 2\n", "top level must be a mapping"),
        (b"\x89PNG\r\n\x1a\n\x00\xff\xfe garbage", "not UTF-8 text"),
        ("train: {max_steps: 5\n", "invalid YAML"),
        ("train:\n  max_step: 5\n", "unknown key train.max_step (did you mean train.max_steps?)"),
    ],
    ids=[
        "dup-key",
        "dup-section",
        "alias-bomb",
        "model-list",
        "train-zero",
        "top-list",
        "binary",
        "bad-yaml",
        "typo",
    ],
)
def test_a_bad_config_file_is_one_line_and_writes_nothing(tmp_path, main_train, content, needle):
    path = tmp_path / "recipe.yaml"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    r, run_dir = main_train("-c", str(path))
    assert_one_line_exit_2(r, needle)
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["model.hidden=[0]"], "model.hidden[0]=0: must be >= 1"),
        (["seed=-1"], "seed=-1: must be >= 0"),
        (["seed=18446744073709551616"], "seed=18446744073709551616: must be <="),
        (["data.split_seed=-5"], "data.split_seed=-5"),
        (["model.kwargs={depth: 3}"], "model.name=cnn is built in and takes no kwargs"),
        (["data.kwargs={n: 3}"], "data.name=digits is built in and takes no kwargs"),
        (["train.max_step=10"], "did you mean train.max_steps?"),
        (["train.strategy=dpp"], "did you mean ddp?"),
        (["optim.name=sdg"], "did you mean sgd?"),
        (["run.resume=restrat"], "did you mean restart?"),
        (["--max_steps", "10"], "use train.max_steps=10"),
        (["--lr=0.1"], "use optim.lr=0.1"),
        ([os.path.join(ROOT, "configs", "cnn.yaml")], "a config file is given with -c: -c "),
        (["-c", os.path.join(ROOT, "configs")], "is a directory"),
        (["-c", "no/such.yaml"], "not found"),
    ],
)
def test_bad_values_and_usage_are_one_line_with_a_hint(main_train, args, needle):
    r, run_dir = main_train(*args)
    assert_one_line_exit_2(r, needle)
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "argv,needle", [(["trian"], "did you mean train?"), (["chek"], "did you mean check?")]
)
def test_unknown_trainer_commands_suggest_the_closest(argv, needle):
    assert_one_line_exit_2(run_cli(argv), needle)  # the real process: argparse's own exit path


def test_unknown_launch_mode_suggests_the_closest():
    assert_one_line_exit_2(run_cli(["dpp", "-c", "configs/cnn.yaml"], module="launch"), "did you mean ddp?")


def test_no_eval_split_reports_no_metric_instead_of_accuracy_zero(tmp_path):
    run_dir = tmp_path / "run"
    assert train_inprocess(None, run_dir, [*TINY, "train.max_steps=3", "data.eval_fraction=0"]) == 0
    summary = strict_load((run_dir / "summary.json").read_text())
    assert summary["eval"] == {}
    assert "no evaluation: the eval split is empty" in (run_dir / "logs" / "rank-0.log").read_text()


# ----------------------------------------------------------------------------- class 9: distributed env


@pytest.mark.parametrize(
    "env,needle",
    [
        ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc': expected an integer"),
        (
            {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "99999"},
            "MASTER_PORT='99999': a port is 1..65535",
        ),
        (
            {"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},
            "RANK=2 is outside the world of WORLD_SIZE=2",
        ),
        ({"RANK": "-1"}, "RANK='-1': expected an integer >= 0"),
        ({"WORLD_SIZE": "2", "RANK": "1"}, "MASTER_ADDR is not set"),
    ],
    ids=["world-abc", "port-99999", "rank-ge-world", "rank-minus-1", "no-master"],
)
def test_a_bad_distributed_environment_is_exit_2_before_any_wait(tmp_path, monkeypatch, env, needle):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = C.load(None, [*TINY, f"run.dir={tmp_path / 'run'}", "train.max_steps=2", "dist.init_timeout_s=600"])
    code, reason = train_command(cfg)
    assert code == codes.CONFIG and needle in reason
    assert not (tmp_path / "run").exists()


def test_a_bad_distributed_environment_through_the_cli_is_one_line(tmp_path):
    r, run_dir = cli_train(tmp_path, *TINY, env={"WORLD_SIZE": "abc"})
    assert_one_line_exit_2(r, "WORLD_SIZE='abc'", "torchrun")
    assert not run_dir.exists()


# ----------------------------------------------------------------------------- class 10: packaging, console

# import name -> distribution name where they differ
DIST_NAMES = {"yaml": "pyyaml", "sklearn": "scikit-learn", "PIL": "pillow"}
OPTIONAL_OK = {"transformers", "peft", "tokenizers", "mlflow", "wandb", "s3fs", "fsspec", "boto3"}


def _third_party_imports() -> set[str]:
    found = set()
    std = set(sys.stdlib_module_names)
    for d, _, files in os.walk(os.path.join(ROOT, "trainer")):
        for f in files:
            if not f.endswith(".py"):
                continue
            for node in ast.walk(ast.parse(open(os.path.join(d, f), encoding="utf-8").read())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                for n in names:
                    top = n.split(".")[0]
                    if top not in std and top not in ("trainer", "launch"):
                        found.add(top)
    return found


def test_pip_install_declares_every_package_the_trainer_imports():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        project = tomllib.load(fh)["project"]
    declared = {d.split(">")[0].split("=")[0].split("[")[0].strip().lower() for d in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        declared |= {d.split(">")[0].split("=")[0].strip().lower() for d in extra}
    missing = {DIST_NAMES.get(m, m).lower() for m in _third_party_imports()} - declared - OPTIONAL_OK
    assert not missing, f"imported by trainer/ but not declared in pyproject.toml: {sorted(missing)}"
    assert "scikit-learn" in {d.lower() for d in project["dependencies"]}  # the default recipe needs it


@pytest.mark.parametrize("failure", ["missing-matplotlib", "plot-raises"])
def test_a_plotting_failure_never_costs_the_weights(tmp_path, monkeypatch, failure):
    if failure == "missing-matplotlib":
        monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    else:
        monkeypatch.setattr(M.Metrics, "plot", lambda self: 1 / 0)
    run_dir = tmp_path / "run"
    assert train_inprocess(None, run_dir, [*TINY, "train.max_steps=3", "log.plot=true"]) == 0
    assert (run_dir / "model.safetensors").exists() and (run_dir / "summary.json").exists()
    assert not (run_dir / "loss.png").exists()
    want = (
        "matplotlib is not installed"
        if failure == "missing-matplotlib"
        else "plotting failed: ZeroDivisionError"
    )
    skipped = [
        x for x in (run_dir / "logs" / "rank-0.log").read_text().splitlines() if "loss.png skipped" in x
    ]
    assert len(skipped) == 1 and want in skipped[0], skipped


@pytest.mark.parametrize("where", ["on-import", "in-constructor"])
def test_a_user_module_that_calls_sys_exit_is_not_a_success(tmp_path, monkeypatch, where):
    body = (
        "import sys\nsys.exit(0)\n"
        if where == "on-import"
        else ("import sys\nclass Net:\n    def __init__(self, **kw):\n        sys.exit(0)\n")
    )
    (tmp_path / f"exits_{where[:2]}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = C.load(None, [*TINY, *FAST, f"model.name=exits_{where[:2]}:Net", f"run.dir={tmp_path / 'run'}"])
    code, reason = train_command(cfg)
    assert (
        code == codes.CONFIG and f"model.name='exits_{where[:2]}:Net'" in reason and "sys.exit(0)" in reason
    )
    assert not (tmp_path / "run").exists()


def test_fp16_on_cpu_warns_once_with_its_cost(tmp_path):
    # since #26 the one CPU precision warning (runtime/cpu.py) names the measured cost and fp32, not bf16:
    # bf16 is no faster on a CPU without AVX512-BF16/AMX
    run_dir = tmp_path / "run"
    assert train_inprocess(None, run_dir, [*TINY, "train.max_steps=2", "train.precision=fp16"]) == 0
    log = (run_dir / "logs" / "rank-0.log").read_text().splitlines()
    hits = [x for x in log if "train.precision=fp16 on" in x]
    assert len(hits) == 1 and "emulated" in hits[0] and "train.precision=fp32" in hits[0], hits


def test_log_lines_go_through_the_progress_bar_and_it_shows_throughput(tmp_path, monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    saved = root.handlers[:]
    root.handlers = [handler]
    try:
        m = M.Metrics(str(tmp_path), True, "on", 20, 0)
        row = {"step": 10, "epoch": 0, "loss": 1.5, "lr": 0.1, "samples_per_s": 1234.0, "step_time_s": 0.01}
        m.log_train(row)
        logging.getLogger("trainer").info("a log line while the bar is shown")
        m.log_eval(10, {"loss": 1.2, "accuracy": 0.5})
        m.flush()  # the eval line is written by the metrics writer thread
        M.close_progress(m)
        m.close()
    finally:
        root.handlers = saved
    text = err.getvalue()
    lines = text.replace("\r", "\n").splitlines()
    assert any(x.endswith("a log line while the bar is shown") and x[:2].isdigit() for x in lines), text
    assert any("eval @ step 10" in x and x[:2].isdigit() for x in lines), text  # timestamped
    assert "samples/s=1234" in text
    assert text.count("\n") - text.count("\r\n") >= 0 and text.rstrip().endswith(
        "samples/s=1234]"
    )  # once, last
    assert M.progress_postfix({**row, "tokens_per_s": 99.0})["tok/s"] == "99"

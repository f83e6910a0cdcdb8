"""Config: loading, overrides, every error path, and the frozen set of public keys."""

import os

import pytest

from tests.conftest import ROOT, run_cli
from trainer import config as C

# Users, docs and the launch layer rely on these names: renaming one is a breaking change.
REQUIRED_KEYS = {
    "seed",
    "device",
    "run.dir",
    "run.resume",
    "model.name",
    "data.name",
    "train.max_steps",
    "train.epochs",
    "train.batch_size",
    "train.precision",
    "train.compile",
    "train.grad_accum",
    "train.grad_clip",
    "optim.name",
    "optim.lr",
    "checkpoint.every_steps",
    "train.deterministic",
    "train.strategy",
    "log.trackers",
    "log.tensorboard",
    "checkpoint.monitor",
    "checkpoint.keep_best",
    "checkpoint.checksum",
    "train.early_stop_patience",
}


def keys():
    return {k for k, *_ in C.iter_fields()}


def test_required_keys_exist():
    assert REQUIRED_KEYS <= keys()


def test_every_key_has_help():
    for key, _tp, _default, help_ in C.iter_fields():
        assert help_.strip(), key


def test_defaults_load_and_validate():
    cfg = C.load()
    assert cfg.train.precision == "fp32" and cfg.run.resume == "auto" and cfg.device == "auto"


@pytest.mark.parametrize("recipe", ["cnn", "linreg", "mlp", "gpt"])
def test_recipes_load(recipe):
    cfg = C.load(os.path.join(ROOT, "configs", f"{recipe}.yaml"))
    assert cfg.model.name in ("cnn", "linreg", "mlp", "gpt")


def test_overrides_take_precedence_and_coerce(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  max_steps: 10\n  batch_size: 32\noptim:\n  lr: 0.1\n")
    cfg = C.load(
        str(p),
        [
            "train.max_steps=50",
            "optim.lr=1e-3",
            "train.compile=true",
            "train.freeze=[fc1, conv*]",
            "model.hidden=[8,4]",
            "run.dir=null",
        ],
    )
    assert cfg.train.max_steps == 50 and cfg.train.batch_size == 32
    assert cfg.optim.lr == pytest.approx(1e-3) and cfg.train.compile is True
    assert cfg.train.freeze == ["fc1", "conv*"] and cfg.model.hidden == [8, 4] and cfg.run.dir is None


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.bogus=1", "unknown key train.bogus"),
        ("bogus.x=1", "unknown key bogus"),
        ("train.max_steps=abc", "train.max_steps='abc': expected an integer"),
        ("train.max_steps=-5", "train.max_steps=-5: must be >= 0"),
        ("train.precision=fp4", "train.precision='fp4': expected one of fp32, fp16, bf16, fp8"),
        ("train.compile=maybe", "train.compile='maybe': expected true or false"),
        ("checkpoint.checksum=md5", "checkpoint.checksum='md5': expected one of xxh3_128, sha256"),
        ("optim.lr=fast", "optim.lr='fast': expected a number"),
        ("optim.name=lion", "optim.name='lion'"),
        ("device=tpu", "device='tpu'"),
        ("model.name=resnet", "model.name='resnet'"),
        ("data.path=/does/not/exist", "data.path='/does/not/exist': no such file"),
        ("model.init_from=/nope.pt", "model.init_from='/nope.pt': no such file"),
        ("run.resume=/nope/ckpt", "run.resume='/nope/ckpt'"),
        ("train.batch_size=10", "train.batch_size=10: not divisible by train.grad_accum=3"),
        ("data.eval_fraction=2", "data.eval_fraction=2: must be <= 0.9"),
        ("train.max_steps", "expected KEY=VALUE"),
        ("data.name=tokens", "data.path=None: data.name=tokens needs a file"),
    ],
)
def test_errors_name_key_and_value(override, needle):
    extra = ["train.grad_accum=3"] if "grad_accum" in needle else []
    with pytest.raises(C.ConfigError) as e:
        C.load(None, extra + [override])
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_gpt_heads_must_divide_width():
    with pytest.raises(C.ConfigError, match="model.n_embd=100: must be divisible by model.n_head=3"):
        C.load(None, ["model.name=gpt", "model.n_embd=100", "model.n_head=3"])


def test_world_size_divisibility():
    cfg = C.load(None, ["train.batch_size=64", "train.grad_accum=2"])
    assert C.check_world(cfg, 2) == 16
    with pytest.raises(C.ConfigError, match=r"train.batch_size=64: not divisible by world_size\(3\)"):
        C.check_world(cfg, 3)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(C.ConfigError, match="not found"):
        C.load(str(tmp_path / "none.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(C.ConfigError, match="invalid YAML"):
        C.load(str(bad))
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(C.ConfigError, match="top level must be a mapping"):
        C.load(str(scalar))


def test_dump_roundtrip():
    cfg = C.load(None, ["train.max_steps=7", "optim.param_groups=[{pattern: 'fc*', lr: 0.1}]"])
    import yaml

    again = C.from_dict(yaml.safe_load(C.dump(cfg)))
    assert again == cfg


def test_math_diff_ignores_safe_keys():
    a = C.load(None, ["train.max_steps=10"])
    b = C.load(None, ["train.max_steps=20", "log.every_steps=3", "optim.lr=0.5"])
    assert C.math_diff(a, b) == ["optim.lr"]


def test_the_default_run_dir_key_is_the_whole_config_but_run_and_world_size():
    from launch.modes import worker_args

    def key(*overrides):
        return C.run_key(C.load("configs/cnn.yaml", list(overrides)))

    same = key("train.max_steps=5")
    assert key("train.max_steps=5") == same  # the same command finds its run again
    # ...and so does a resume on another number of processes: the launcher's argv does not carry it
    one, two = (worker_args("trainer", "configs/cnn.yaml", ["train.max_steps=5"], "ddp") for _ in (1, 2))
    assert one == two
    monitor = ("train.max_steps=5", "checkpoint.monitor=eval/accuracy")
    assert key(*monitor) != same
    assert key(*monitor, "train.early_stop_patience=5") != key(*monitor)  # early stopping on
    for changed in (
        "log.trackers=[tensorboard,mlflow]",
        "train.eval_every_steps=20",
        "train.strategy=ddp",
        "checkpoint.every_steps=10",
        "log.every_steps=3",
        "train.max_steps=6",
    ):
        assert key("train.max_steps=5", changed) != same, changed
    # run.* names the directory and how to resume it: never part of its name
    assert key("train.max_steps=5", "run.resume=restart", "run.resume_config_change=allow") == same


def test_cli_config_lists_keys_and_errors_exit_2(tmp_path):
    r = run_cli(["config"])
    assert r.returncode == 0 and "train.batch_size" in r.stdout and "default=64" in r.stdout
    r = run_cli(["train", "--help"])
    assert r.returncode == 0 and "checkpoint.every_steps" in r.stdout
    run_dir = tmp_path / "run"
    r = run_cli(["train", "-c", "configs/cnn.yaml", "train.batch_size=oops", f"run.dir={run_dir}"])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["config error: train.batch_size='oops': expected an integer"]
    assert not run_dir.exists()


def test_check_does_not_import_torch():
    code = (
        "import sys, runpy; sys.argv=['trainer','check','-c','configs/gpt.yaml'];\n"
        "try:\n  runpy.run_module('trainer', run_name='__main__')\nexcept SystemExit as e:\n  pass\n"
        "print('torch' in sys.modules)"
    )
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip().splitlines()[-1] == "False", r.stdout + r.stderr


def test_trainer_overrides_come_after_the_command_line_and_reach_check_and_config():
    env = {"TRAINER_OVERRIDES": "train.max_steps=3 'log.trackers=[tensorboard, mlflow]'"}
    r = run_cli(["config", "-c", "configs/cnn.yaml", "train.max_steps=50"], env=env)
    assert r.returncode == 0, r.stderr
    resolved = r.stdout.split("\nresolved:\n", 1)[1]
    assert "  max_steps: 3\n" in resolved and "  - mlflow\n" in resolved
    r = run_cli(["check", "-c", "configs/cnn.yaml"], env={"TRAINER_OVERRIDES": "train.max_step=3"})
    assert r.returncode == 2 and "train.max_step" in r.stderr and "did you mean" in r.stderr
    r = run_cli(["check", "-c", "configs/cnn.yaml"], env={"TRAINER_OVERRIDES": "train.max_steps='3"})
    assert r.returncode == 2
    line = 'config error: TRAINER_OVERRIDES="train.max_steps=\'3": No closing quotation'
    assert r.stderr.strip().splitlines() == [line]
    # the key reference is the schema's, whatever the environment says
    assert run_cli(["config", "--markdown"], env=env).stdout == C.markdown()


@pytest.mark.parametrize(
    "yaml_text, override, needle",
    [
        ("train:\n  lr: 0.1\n", None, "unknown key train.lr (did you mean optim.lr?)"),
        (None, "train.lr=0.1", "unknown key train.lr (did you mean optim.lr?)"),
        (None, "lr=0.1", "unknown key lr (did you mean optim.lr?)"),
        ("model:\n  batch_size: 8\n", None, "unknown key model.batch_size (did you mean train.batch_size?)"),
        (None, "train.seed=1", "unknown key train.seed (did you mean seed?)"),
        (None, "data.hidden=[4]", "unknown key data.hidden (did you mean model.hidden?)"),
        (None, "train.max_step=3", "unknown key train.max_step (did you mean train.max_steps?)"),
    ],
)
def test_a_key_in_the_wrong_section_suggests_its_section(tmp_path, yaml_text, override, needle):
    """#29: a key in the wrong section names the section that has it, in YAML and in dotted overrides."""
    path = None
    if yaml_text:
        path = tmp_path / "c.yaml"
        path.write_text(yaml_text)
    with pytest.raises(C.ConfigError) as e:
        C.load(str(path) if path else None, [override] if override else [])
    assert str(e.value) == needle


def test_workers_under_a_temp_dir_too_long_for_their_sockets_is_one_line(monkeypatch, tmp_path):
    """DataLoader workers pass batches over Unix sockets under TMPDIR (107 bytes at most): a deeper TMPDIR
    hung the run waiting for its first batch; now it is refused before anything starts, naming the fix."""
    import tempfile

    deep = tmp_path / ("d" * 80)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    with pytest.raises(C.ConfigError) as e:
        C.load(None, ["data.num_workers=2"])
    msg = str(e.value)
    assert msg.startswith("data.num_workers=2: the temporary directory ") and "set TMPDIR to a shorter" in msg
    assert "\n" not in msg
    C.load(None, ["data.num_workers=0"])  # no workers, no sockets: accepted
    monkeypatch.setattr(tempfile, "tempdir", "/tmp")
    C.load(None, ["data.num_workers=2"])

"""The device mesh from parallel.* (trainer/runtime/mesh.py, no process group), the batch split over its
data-parallel processes, and the launcher's view of both (`--dry-run`, `python -m trainer check`)."""

import pytest

from tests.conftest import run_cli
from trainer import config as C
from trainer.runtime.mesh import plan_mesh


def plan(mode: str, world: int, local: int, *over: str):
    return plan_mesh(C.load(None, list(over)), mode, world, local).shape


def test_meshes_from_the_parallel_keys():
    assert plan("fsdp", 4, 4) == (1, 4, 1)  # plain FSDP
    assert plan("fsdp", 16, 8) == (2, 8, 1)  # auto: one replica group per node (HSDP)
    assert plan("fsdp", 4, 4, "parallel.dp_replicate=2") == (2, 2, 1)
    assert plan("fsdp", 8, 8, "parallel.tp=2") == (1, 4, 2)
    assert plan("fsdp", 16, 8, "parallel.tp=2") == (2, 4, 2)  # HSDP + TP
    assert plan("fsdp", 8, 8, "parallel.dp_replicate=2", "parallel.dp_shard=2", "parallel.tp=2") == (2, 2, 2)
    assert plan("ddp", 4, 4) == (4, 1, 1)
    assert plan("ddp", 4, 4, "parallel.tp=2") == (2, 1, 2)
    assert plan("single", 1, 1) == (1, 1, 1)


@pytest.mark.parametrize(
    "mode,world,local,over,message",
    [
        ("fsdp", 4, 4, ["parallel.tp=3"], "parallel.tp=3: does not divide the world size 4"),
        (
            "fsdp",
            4,
            4,
            ["parallel.dp_replicate=2", "parallel.dp_shard=3"],
            "parallel: dp_replicate=2 x dp_shard=3 x tp=1 = 6, but the world size is 4",
        ),
        ("fsdp", 16, 8, ["parallel.tp=16"], "parallel.tp=16: more than the 8 processes on a node"),
        ("ddp", 4, 4, ["parallel.dp_shard=2"], "parallel.dp_shard=2: sharding needs train.strategy=fsdp"),
        (
            "single",
            1,
            1,
            ["parallel.tp=2"],
            "a mesh needs train.strategy=ddp or fsdp on several processes (got single on 1)",
        ),
    ],
)
def test_a_mesh_that_does_not_fit_is_one_line_naming_the_keys(mode, world, local, over, message):
    with pytest.raises(C.ConfigError) as e:
        plan(mode, world, local, *over)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_micro_batch_size_derives_the_accumulation():
    cfg = C.load(None, ["train.batch_size=32", "train.micro_batch_size=4"])
    assert C.batch_plan(cfg, 2) == {"global": 32, "micro": 4, "accum": 4, "world": 2}
    assert C.batch_plan(cfg, 8) == {"global": 32, "micro": 4, "accum": 1, "world": 8}
    with pytest.raises(
        C.ConfigError, match=r"train.micro_batch_size=4: train.batch_size=32 is not a multiple"
    ):
        C.batch_plan(cfg, 3)
    with pytest.raises(C.ConfigError, match="set one of them"):
        C.load(None, ["train.micro_batch_size=4", "train.grad_accum=2"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("parallel.tp=0", "parallel.tp=0: must be >= 1"),
        ("parallel.dp_replicate=two", "parallel.dp_replicate='two': expected an integer or one of auto"),
        ("parallel.tp_plan={a: diagonal}", "parallel.tp_plan['a']='diagonal': expected one of colwise"),
        ("train.compile=sometimes", "train.compile='sometimes': expected true or false or one of blocks"),
    ],
)
def test_bad_parallel_values_name_key_and_value(override, message):
    with pytest.raises(C.ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        C.load(None, [override])


def test_compile_blocks_and_auto_are_read_as_names():
    cfg = C.load(None, ["train.compile=blocks", "parallel.dp_replicate=auto"])
    assert cfg.train.compile == "blocks" and cfg.parallel.dp_replicate == "auto"
    assert C.load(None, ["train.compile=true", "parallel.dp_replicate=2"]).train.compile is True


def test_the_dry_run_prints_the_mesh_and_the_check_refuses_one_that_does_not_fit():
    r = run_cli(
        ["fsdp", "--nproc-per-node", "4", "--dry-run", "parallel.dp_replicate=2", "train.micro_batch_size=4"],
        module="launch",
    )
    assert r.returncode == 0, r.stderr
    assert (
        "# mesh: HSDP: dp_replicate=2 x dp_shard=2 x tp=1 (4 processes, 4 data-parallel); "
        "batch 64 = 4 x micro 4 x accum 4"
    ) in r.stdout
    r = run_cli(
        ["check", "--world-size", "4", "--nproc-per-node", "4", "parallel.tp=3", "train.strategy=ddp"]
    )
    assert r.returncode == 2 and "parallel.tp=3: does not divide the world size 4" in r.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        ({"body.1": "colwise"}, "parallel.tp_plan: body.1 is colwise with no rowwise Linear after it"),
        ({"head": "rowwise"}, "parallel.tp_plan: head is rowwise with no colwise Linear before it"),
    ],
)
def test_a_tp_plan_with_an_unpaired_half_is_refused_before_the_first_forward(override, message):
    # found by QA: {'body.1': colwise} alone trained into "mat1 and mat2 shapes cannot be multiplied" (exit 1)
    from trainer.models.mlp import MLP
    from trainer.models.tp_plans import resolve

    model = MLP((8,), [16, 16], 2)
    with pytest.raises(C.ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        resolve(model, override)
    plan, _ = resolve(model, {"body.1": "colwise", "body.4": "rowwise"})
    assert plan == {"body.1": "colwise", "body.4": "rowwise"}

"""Under `accelerate launch` the trainer takes accelerate's strategy and honours or refuses its precision.

The variables are the ones accelerate's launchers export to the processes they start
(accelerate/utils/launch.py, prepare_simple_launcher_cmd_env and prepare_multi_gpu_env):
ACCELERATE_MIXED_PRECISION, ACCELERATE_DYNAMO_BACKEND (an enum value such as NO or INDUCTOR),
ACCELERATE_USE_FSDP, ACCELERATE_USE_DEEPSPEED, ACCELERATE_USE_CPU.
"""

from __future__ import annotations

import pytest

from trainer.config import ConfigError, load
from trainer.training.strategy import adopt_accelerate_launch

LAUNCH = {
    "ACCELERATE_MIXED_PRECISION": "no",
    "ACCELERATE_DYNAMO_BACKEND": "NO",
    "ACCELERATE_USE_CPU": "False",
}


def adopt(overrides=(), **env):
    cfg, note = adopt_accelerate_launch(load(None, list(overrides)), {**LAUNCH, **env})
    return cfg.train.strategy, cfg.train.precision, note


def test_outside_accelerate_launch_nothing_changes():
    cfg = load(None, [])
    assert adopt_accelerate_launch(cfg, {}) == (cfg, None)


def test_auto_becomes_the_accelerate_strategy():
    strategy, precision, note = adopt()
    assert (strategy, precision) == ("accelerate", "fp32") and "accelerate launch" in note


@pytest.mark.parametrize("mp, want", [("bf16", "bf16"), ("fp16", "fp16"), ("no", "fp32")])
def test_mixed_precision_is_honoured(mp, want):
    assert adopt(ACCELERATE_MIXED_PRECISION=mp)[:2] == ("accelerate", want)


def test_the_recipes_precision_stands_when_accelerate_says_no():
    assert adopt(["train.precision=bf16"])[:2] == ("accelerate", "bf16")
    assert adopt(["train.precision=bf16"], ACCELERATE_MIXED_PRECISION="bf16")[:2] == ("accelerate", "bf16")


def test_an_explicit_other_strategy_says_why_accelerate_is_not_used():
    strategy, precision, note = adopt(["train.strategy=ddp"], ACCELERATE_MIXED_PRECISION="bf16")
    assert (strategy, precision) == ("ddp", "bf16")
    assert "train.strategy=ddp" in note and "Accelerator is not used" in note


@pytest.mark.parametrize(
    "overrides, env, words",
    [
        (
            ["train.precision=fp16"],
            {"ACCELERATE_MIXED_PRECISION": "bf16"},
            "contradicts train.precision=fp16",
        ),
        ([], {"ACCELERATE_MIXED_PRECISION": "fp8"}, "--mixed_precision fp8"),
        ([], {"ACCELERATE_USE_FSDP": "true"}, "--use_fsdp"),
        ([], {"ACCELERATE_USE_DEEPSPEED": "true"}, "--use_deepspeed"),
        ([], {"ACCELERATE_DYNAMO_BACKEND": "INDUCTOR"}, "train.compile=true"),
    ],
)
def test_what_the_trainer_would_ignore_is_refused(overrides, env, words):
    with pytest.raises(ConfigError, match=words) as e:
        adopt(overrides, **env)
    assert "\n" not in str(e.value)

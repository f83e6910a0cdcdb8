"""A key's allowed values and range live on its schema field, and validation enforces exactly those: every
enum and every bound in trainer/schema.py is checked here through the real loader, from the schema itself."""

import typing

import pytest

from trainer import config as C
from trainer import schema


def _rows() -> dict[str, dict]:
    return {r["key"]: r for r in schema.reference()}


def test_reference_is_every_key_with_type_default_choices_range_and_help():
    rows = _rows()
    assert list(rows) == [k for k, *_ in C.iter_fields()]
    assert all(
        set(r) == {"key", "type", "default", "choices", "other", "range", "help"} for r in rows.values()
    )
    assert rows["run.resume"]["choices"] == ["auto", "never", "restart"]
    assert rows["run.resume"]["other"] == "an existing checkpoint path"
    assert rows["model.name"]["choices"] == list(C.MODEL_NAMES)
    assert rows["model.name"]["other"] == "package.module:Name"
    assert rows["log.trackers"]["choices"] == list(C.TRACKERS)
    assert rows["checkpoint.monitor"]["choices"] == list(C.MONITOR_MODES)
    assert rows["data.eval_fraction"]["range"] == ">= 0.0, <= 0.9"
    assert rows["train.batch_size"] == {
        "key": "train.batch_size",
        "type": "int",
        "default": 64,
        "choices": [],
        "other": None,
        "range": ">= 1",
        "help": "GLOBAL samples per optimizer step, across all processes and micro-steps.",
    }
    text = C.describe()
    assert "run.resume" in text and "auto|never|restart|str" in text and "(>= 0.0, <= 0.9)" in text


@pytest.mark.parametrize("key", [r["key"] for r in schema.reference() if r["choices"]])
def test_every_enum_rejects_a_value_outside_it_naming_key_value_and_choices(key):
    row = _rows()[key]
    value = "[bogus]" if row["type"].startswith("list[") else "bogus"
    with pytest.raises(C.ConfigError) as e:
        C.load(None, [f"{key}={value}"])
    msg = str(e.value)
    assert msg.startswith(key) and "'bogus'" in msg and ", ".join(row["choices"]) in msg, msg
    if row["other"]:
        assert row["other"] in msg, msg
    for choice in row["choices"][:2]:  # and accepts its own values
        assert C.load(None, [f"{key}={choice}"]) is not None


@pytest.mark.parametrize(
    "key,bound,limit",
    [
        (k, b, meta[b])
        for k, _tp, _d, meta in schema.iter_leaves()
        for b in schema.BOUNDS
        if b in meta and not isinstance(_d, list)
    ],
)
def test_every_bound_rejects_the_first_value_past_it(key, bound, limit):
    tp = {k: t for k, t, *_ in schema.iter_leaves()}[key]
    step = 1 if int in (tp, *typing.get_args(tp)) else 1e-3  # Optional[int], Union[Literal[...], int]
    past = {"ge": limit - step, "gt": limit, "le": limit + step}[bound]
    with pytest.raises(C.ConfigError, match=rf"^{key}=.*: must be {schema.BOUNDS[bound]} {limit}$"):
        C.load(None, [f"{key}={past}"])

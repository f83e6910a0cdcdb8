"""Bring your own model under the launcher (issue #11): a tiny Hugging Face Llama, built from its config
class, on the built-in text data trains under ``ddp`` and ``fsdp`` with 2 processes like one process, FSDP
shards it per decoder layer (read from the log), activation checkpointing wraps the same units, and a probe
verdict reached on one rank only is every rank's exit 2."""

from __future__ import annotations

import os

import pytest
import torch

from tests.conftest import run_cli
from tests.helpers import final_weights, read_metrics
from tests.integration.test_byo_model import LLAMA
from trainer import fit

pytestmark = pytest.mark.slow
pytest.importorskip("transformers")


def launch(mode: str, run_dir, *extra: str, expect: int = 0):
    r = run_cli(
        [mode, "--nproc-per-node", "2", f"run.dir={run_dir}", *extra],
        module="launch",
        timeout=240,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == expect, f"{mode} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("llama") / "single"
    res = fit(overrides=[*LLAMA, f"run.dir={run_dir}"])
    assert res.exit_code == 0, res.reason
    return run_dir


def assert_same_training(a, b):
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5, rtol=0), (k, (wa[k] - wb[k]).abs().max().item())
    assert [r["loss"] for r in read_metrics(b)] == pytest.approx(
        [r["loss"] for r in read_metrics(a)], abs=1e-5
    )


def test_hf_llama_under_ddp_2_equals_one_process(single, tmp_path):
    launch("ddp", tmp_path / "ddp", *LLAMA)
    assert_same_training(single, tmp_path / "ddp")


def test_hf_llama_under_fsdp_2_is_sharded_per_decoder_layer(single, tmp_path):
    run_dir = tmp_path / "fsdp"
    launch("fsdp", run_dir, *LLAMA, "train.activation_checkpointing=true")
    log = (run_dir / "logs" / "rank-0.log").read_text()
    assert "fsdp: 2 x LlamaDecoderLayer + root (_no_split_modules)" in log
    assert "activation checkpointing: 2 x LlamaDecoderLayer (_no_split_modules)" in log
    assert_same_training(single, run_dir)  # sharding and recomputation change no number


def test_a_probe_error_on_one_rank_is_every_ranks_exit_2(tmp_path):
    run_dir = tmp_path / "run"
    r = launch(
        "ddp", run_dir, "model.name=tests.byo_models:RankTrap", "data.name=digits", "device=cpu", expect=2
    )
    assert (
        "rank 1: model.name='tests.byo_models:RankTrap' on data.name='digits': model output (32, 4) "
        "does not fit 10 classes" in r.stderr
    )
    assert not run_dir.exists() and not os.path.exists(tmp_path / "runs")

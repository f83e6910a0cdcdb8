"""Gradient accumulation all-reduces only on the last micro-step (DDP no_sync, FSDP2 gradient sync off)."""

import datetime

import pytest
import torch
import torch.distributed as dist

from tests.conftest import free_port
from trainer import config as C
from trainer.runtime.dist import DistState
from trainer.training.loop import Trainer
from trainer.training.optim import build_optimizer
from trainer.training.strategy import Strategy


@pytest.fixture
def group():
    store = dist.TCPStore("127.0.0.1", free_port(), 1, is_master=True, timeout=datetime.timedelta(seconds=30))
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield DistState(world_size=1, backend="gloo", side_group=dist.new_group(backend="gloo"))
    dist.destroy_process_group()


def make_trainer(mode: str, state: DistState, accum: int, tmp_path) -> Trainer:
    from trainer.data import build_datasets
    from trainer.models import build_model

    cfg = C.load(
        None,
        [
            "model.name=mlp",
            "model.hidden=[16]",
            "data.name=synthetic_classification",
            "data.num_samples=128",
            "data.num_features=8",
            "train.batch_size=32",
            f"train.grad_accum={accum}",
            f"train.strategy={mode}",
            "device=cpu",
        ],
    )
    torch.manual_seed(0)
    tr, ev, info = build_datasets(cfg)
    strategy = Strategy(cfg, state, mode)
    opt = strategy.wrap(build_model(cfg, info), lambda m: build_optimizer(m, cfg, state.device))
    return Trainer(cfg, state, strategy, opt, tr, ev, info, str(tmp_path))


def micro_batches(trainer, n):
    idx = list(range(32 // n))
    return [trainer.train_ds.get_batch(idx) for _ in range(n)]


def ddp_bucket_reductions(group, tmp_path, accum: int, steps: int = 3) -> int:
    trainer = make_trainer("ddp", group, accum, tmp_path)
    calls = []

    def counting_hook(_, bucket):
        calls.append(bucket.index())
        fut = torch.futures.Future()
        fut.set_result(bucket.buffer())
        return fut

    trainer.strategy._ddp.register_comm_hook(None, counting_hook)
    for _ in range(steps):
        trainer._run_step(micro_batches(trainer, accum))
    return len(calls)


def test_ddp_all_reduces_once_per_optimizer_step(group, tmp_path):
    per_step = ddp_bucket_reductions(group, tmp_path, 1, steps=1)
    assert per_step >= 1
    assert ddp_bucket_reductions(group, tmp_path, 4, steps=3) == 3 * per_step  # not 12 * per_step


@pytest.mark.parametrize("accum", [1, 4])
def test_fsdp_reduce_scatters_once_per_optimizer_step(group, tmp_path, accum, monkeypatch):
    calls = []
    # FSDP2's gradient reduction entry point (reduce-scatter + all-reduce); private, so tested here, where
    # a torch upgrade that renames it fails loudly instead of silently passing.
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group as pg

    real = pg.foreach_reduce

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(pg, "foreach_reduce", counting)
    trainer = make_trainer("fsdp", group, accum, tmp_path)
    for _ in range(3):
        trainer._run_step(micro_batches(trainer, accum))
    ref = len(calls)
    calls.clear()
    t1 = make_trainer("fsdp", group, 1, tmp_path)
    for _ in range(3):
        t1._run_step(micro_batches(t1, 1))
    assert ref == len(calls) and ref >= 3

"""The trainer adds nothing to the math: same losses as a plain hand-written PyTorch loop."""

import torch
import torch.nn.functional as F

from tests.helpers import read_metrics, train_inprocess
from trainer import config as C
from trainer.data import build_datasets
from trainer.data.sampler import epoch_permutation
from trainer.models import build_model


def raw_loop(cfg, steps):
    torch.manual_seed(cfg.seed)
    train_ds, _, info = build_datasets(cfg)
    model = build_model(cfg, info)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum)
    order = epoch_permutation(len(train_ds), cfg.seed, 0)
    B = cfg.train.batch_size
    losses = []
    for s in range(steps):
        x, y = train_ds.get_batch(order[s * B : (s + 1) * B].tolist())
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_trainer_matches_plain_loop_for_20_steps(tmp_path):
    torch.set_num_threads(1)
    over = [
        "train.max_steps=20",
        "log.every_steps=1",
        "optim.schedule=constant",
        "optim.warmup_steps=0",
        "train.eval_every_steps=0",
        "checkpoint.every_steps=0",
    ]
    assert train_inprocess("cnn", tmp_path / "run", over) == 0
    ours = [r["loss"] for r in read_metrics(tmp_path / "run")]
    cfg = C.load("configs/cnn.yaml", over)
    theirs = raw_loop(cfg, 20)
    assert len(ours) == 20
    for a, b in zip(ours, theirs):
        assert abs(a - b) <= 1e-6, (ours, theirs)

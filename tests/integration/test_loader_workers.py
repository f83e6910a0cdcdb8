"""DataLoader workers (persistent across epochs) read the same batches as the in-process path."""

import torch

from tests.helpers import final_weights, train_inprocess


def test_workers_match_in_process_loading_with_augmentation(tmp_path):
    over = [
        "train.max_steps=30",
        "data.augment=true",
        "train.batch_size=64",
        "train.eval_every_steps=0",
        "checkpoint.every_steps=0",
        "data.classes=[0,1,2]",
    ]  # ~430 samples: 6 steps/epoch, 5 epochs
    assert train_inprocess("cnn", tmp_path / "main", over) == 0
    assert train_inprocess("cnn", tmp_path / "workers", [*over, "data.num_workers=2"]) == 0
    a, b = final_weights(tmp_path / "main"), final_weights(tmp_path / "workers")
    assert all(torch.equal(a[k], b[k]) for k in a)

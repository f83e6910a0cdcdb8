"""Which sample indices each rank reads, defined by one global permutation per epoch.

A global step s of epoch e reads positions [s*B, (s+1)*B) of ``perm(seed, e)``, B = train.batch_size.
Inside that window, micro-step a of rank r reads the m = B / (W*A) positions starting at
``a*W*m + r*m``. So a *global sample position* (samples consumed this epoch) names the same samples
at any world size W or accumulation A: a job resumed on 1 process instead of 2 (or 2 instead of 1)
sees every remaining sample of the epoch exactly once.

The last partial batch of an epoch (N mod B samples) is dropped, so every rank runs the same number of
steps; the permutation changes every epoch, so no sample is systematically left out.
"""

from __future__ import annotations

import torch

from ..config import ConfigError


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch * 7_919 + 17) % (2**63))
    return torch.randperm(n, generator=g)


class GlobalBatchSampler:
    """Yields this rank's micro-batches (LongTensors of indices), resumable at a global sample position."""

    def __init__(self, n: int, batch_size: int, grad_accum: int, rank: int, world_size: int, seed: int):
        if batch_size % (world_size * grad_accum):
            raise ValueError(f"batch_size {batch_size} not divisible by world_size*grad_accum")
        if n < batch_size:
            raise ConfigError(f"train.batch_size={batch_size}: larger than the training set ({n} samples)")
        self.n, self.batch_size, self.grad_accum = n, batch_size, grad_accum
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.micro = batch_size // (world_size * grad_accum)
        self.epoch = 0
        self.start = 0  # global samples already consumed in this epoch

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    def set_position(self, epoch: int, samples_in_epoch: int) -> None:
        if samples_in_epoch % self.batch_size:
            raise ValueError(
                f"position {samples_in_epoch} is not a multiple of the global batch {self.batch_size}"
            )
        self.epoch, self.start = epoch, samples_in_epoch

    def micro_batch_indices(self, perm: torch.Tensor, step_in_epoch: int, micro_step: int) -> torch.Tensor:
        off = (
            step_in_epoch * self.batch_size
            + micro_step * self.world_size * self.micro
            + self.rank * self.micro
        )
        return perm[off : off + self.micro]

    def __iter__(self):
        perm = epoch_permutation(self.n, self.seed, self.epoch)
        for s in range(self.start // self.batch_size, self.steps_per_epoch):
            for a in range(self.grad_accum):
                yield self.micro_batch_indices(perm, s, a)  # a LongTensor view: no list round trip

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start // self.batch_size) * self.grad_accum


def eval_shards(n: int, batch_size: int, rank: int, world_size: int) -> list[tuple[list[int], int]]:
    """Equal-length per-rank eval batches covering [0, n) exactly once.

    Returns (indices, valid) pairs; `valid` leading indices count, the rest are padding so that every rank
    runs the same number of forward passes (FSDP all-gathers in forward and would hang otherwise).
    """
    m = max(1, batch_size // world_size)
    out = []
    for start in range(0, n, m * world_size):
        lo = start + rank * m
        idx = list(range(lo, min(lo + m, n)))
        valid = len(idx)
        if valid == 0:
            idx = [0]
        out.append((idx, valid))
    return out

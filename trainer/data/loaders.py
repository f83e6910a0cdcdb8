"""Micro-batches for the loop: in-process gathers, or a DataLoader whose workers call ``get_batch``.

With ``data.num_workers=0`` a micro-batch is one ``get_batch(indices)`` call in the main process (the
fastest path for in-memory data). With workers, a persistent DataLoader is built once and fed the sampler's
index tensors, tagged with their epoch.
"""

from __future__ import annotations

import torch

from .sampler import GlobalBatchSampler


class _Batches(torch.utils.data.Dataset):
    """Lets a DataLoader's workers call the dataset's batched `get_batch` on whole index tensors.

    Items are (epoch, indices): persistent workers hold their own copy of the dataset, so the epoch (which
    seeds augmentation) travels with each request instead of through `set_epoch` in the main process.
    """

    def __init__(self, ds):
        self.ds = ds
        self.epoch = None

    def __getitem__(self, item):
        epoch, idx = item
        if epoch != self.epoch:
            self.ds.set_epoch(epoch)
            self.epoch = epoch
        return self.ds.get_batch(idx)

    def __len__(self):
        return len(self.ds)


class _EpochTagged:
    """The sampler's micro-batches tagged with their epoch, read at the start of each pass."""

    def __init__(self, sampler: GlobalBatchSampler):
        self.sampler = sampler

    def __iter__(self):
        epoch = self.sampler.epoch
        return ((epoch, idx) for idx in self.sampler)

    def __len__(self):
        return len(self.sampler)


class BatchSource:
    """One pass over the sampler's remaining micro-batches per ``epoch_iter()`` call."""

    def __init__(
        self, dataset, sampler: GlobalBatchSampler, num_workers: int, pin_memory: bool, prefetch_factor: int
    ):
        self.dataset, self.sampler = dataset, sampler
        self.num_workers, self.pin_memory, self.prefetch_factor = num_workers, pin_memory, prefetch_factor
        self._dataloader = None

    def epoch_iter(self):
        if self.num_workers == 0:
            ds = self.dataset
            return (ds.get_batch(idx) for idx in self.sampler)
        if self._dataloader is None:  # built once: persistent workers survive across epochs
            self._dataloader = torch.utils.data.DataLoader(
                _Batches(self.dataset),
                sampler=_EpochTagged(self.sampler),
                batch_size=None,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                prefetch_factor=self.prefetch_factor,
                persistent_workers=True,
            )
        return _stop_workers_on_error(iter(self._dataloader))


def _stop_workers_on_error(it):
    """The loader's batches; when one raises (a bad item, a worker that died), the workers are stopped
    before the error goes on to end the run. Left running, a worker still receiving indices while the
    process exits prints a traceback of its own after the one-line error. Only on an exception: a
    generator closed at the end of an epoch keeps its persistent workers."""
    try:
        yield from it
    except Exception:
        stop = getattr(it, "_shutdown_workers", None)
        if stop is not None:
            stop()
        raise

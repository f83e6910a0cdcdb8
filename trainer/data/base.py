"""What every dataset shares: the DataInfo record, the two storage shapes (in-memory arrays and token
windows), the deterministic train/eval split, per-sample seeds and content fingerprints.

All datasets here are map-style and expose ``get_batch(indices)`` so the training loop can gather a whole
micro-batch with one indexing operation instead of B Python calls through a DataLoader, and
``set_epoch(epoch)`` so augmentation is a pure function of (seed, epoch, index): the same sample gets the
same augmentation whatever rank, worker or world size reads it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

Indices = Union[Sequence[int], torch.Tensor, np.ndarray]


@dataclass
class DataInfo:
    """What the model builder and the loop need to know about the data, and what the log shows."""

    task: str  # "regression" | "classification" | "lm"
    input_shape: tuple  # one sample's input, e.g. (1, 28, 28), (16,), (block_size,)
    num_classes: Optional[int]  # classification
    num_outputs: Optional[int]  # regression: y has shape (num_outputs,), float32
    vocab_size: Optional[int]  # lm
    seq_len: Optional[int]  # lm: tokens per sample input
    description: str  # one line for the log
    fingerprint: str  # first 16 hex chars of a sha256 over the raw data, so runs are comparable
    extra: dict = field(
        default_factory=dict
    )  # dataset-specific facts, e.g. target mean/std for de-standardising


# ----------------------------------------------------------------------------- helpers


def fingerprint(*parts: Union[bytes, np.ndarray, str]) -> str:
    """sha256 over the given byte strings / arrays (dtype and shape included), first 16 hex chars."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(f"{p.dtype.str}{p.shape}".encode())
            p = np.ascontiguousarray(p).tobytes()
        elif isinstance(p, str):
            p = p.encode()
        h.update(p)
    return h.hexdigest()[:16]


def split_indices(n: int, eval_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted (train, eval) index arrays from a permutation fixed by split_seed alone.

    Independent of ``cfg.seed`` so that runs with different seeds evaluate on the same samples. A positive
    eval_fraction always holds out at least one sample (when there are two or more).
    """
    n_eval = int(round(n * eval_fraction))
    if eval_fraction > 0 and n >= 2:
        n_eval = min(max(n_eval, 1), n - 1)
    perm = np.random.default_rng(split_seed).permutation(n)
    return np.sort(perm[n_eval:]), np.sort(perm[:n_eval])


def as_index(indices: Indices, n: int) -> torch.Tensor:
    """Indices as a 1-D LongTensor, bounds-checked (an out-of-range index is a bug in the caller).

    The sampler's LongTensors take the fast path: tensor indexing checks bounds itself, so the hot path
    pays for no extra reductions.
    """
    if isinstance(indices, torch.Tensor) and indices.dtype == torch.long and indices.dim() == 1:
        return indices
    idx = torch.as_tensor(
        np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices, dtype=torch.long
    ).reshape(-1)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise IndexError(
            f"index out of range for dataset of length {n}: min {int(idx.min())}, max {int(idx.max())}"
        )
    return idx


_M64 = (1 << 64) - 1


def _mix(z: np.ndarray) -> np.ndarray:
    # splitmix64 finaliser: numpy uint64 array arithmetic wraps modulo 2**64 without warnings.
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_hash(seed: int, epoch: int, index: Indices) -> np.ndarray:
    """A 64-bit hash per sample index of (seed, epoch, index): the seed of that sample's augmentation.

    A pure function, vectorised over the batch, so any rank or worker computes the same value for the same
    sample and the batched path equals the per-sample path bit for bit.
    """
    idx = np.asarray(index, dtype=np.int64).astype(np.uint64)
    h = _mix(np.full(idx.shape, seed & _M64, dtype=np.uint64))
    h = _mix(h ^ np.uint64(epoch & _M64))
    return _mix(h ^ idx)


# ----------------------------------------------------------------------------- storage shapes


Augment = Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor]


class ArrayDataset(Dataset):
    """In-memory (x, y) tensors; an optional ``augment(x, idx, seed, epoch)`` runs on each gathered batch.

    ``__getitem__`` goes through ``get_batch`` so both paths give identical samples.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment: Optional[Augment] = None, seed: int = 0):
        assert len(x) == len(y)
        self.x, self.y, self.augment, self.seed, self.epoch = x, y, augment, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.x)

    def get_batch(self, indices: Indices) -> tuple[torch.Tensor, torch.Tensor]:
        idx = as_index(indices, len(self))
        x = self.x[idx]
        if self.augment is not None:
            x = self.augment(x, idx, self.seed, self.epoch)
        return x, self.y[idx]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.get_batch([i + len(self) if i < 0 else i])
        return x[0], y[0]


class TokenWindows(Dataset):
    """Non-overlapping windows of seq_len+1 tokens, stride seq_len, over tokens[start:stop].

    Window i is x = t[s:s+T], y = t[s+1:s+T+1] with s = start + i*T: every token inside the range is a
    target exactly once. The token array is either in memory (``array``) or a ``numpy.memmap`` reopened
    lazily from ``path`` so pickling the dataset for a DataLoader worker never copies the file.
    """

    def __init__(
        self,
        seq_len: int,
        start: int,
        stop: int,
        array: Optional[np.ndarray] = None,
        path: Optional[str] = None,
        dtype: Optional[str] = None,
    ):
        self.seq_len, self.start, self.stop = seq_len, start, stop
        self.path, self.dtype, self._array = path, dtype, array
        self.n = max(0, (stop - start - 1) // seq_len)

    @property
    def tokens(self) -> np.ndarray:
        if self._array is None:
            self._array = np.memmap(self.path, dtype=self.dtype, mode="r")
        return self._array

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.path is not None:
            state["_array"] = None
        return state

    def set_epoch(self, epoch: int) -> None:
        pass  # no augmentation for token windows

    def __len__(self) -> int:
        return self.n

    def get_batch(self, indices: Indices) -> tuple[torch.Tensor, torch.Tensor]:
        idx = as_index(indices, self.n).numpy()
        starts = self.start + idx * self.seq_len
        w = self.tokens[starts[:, None] + np.arange(self.seq_len + 1)]
        w = torch.from_numpy(w.astype(np.int64))
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.get_batch([i + self.n if i < 0 else i])
        return x[0], y[0]

"""Datasets: ``build_datasets(cfg) -> (train, eval, DataInfo)``, the one entry point the loop calls.

Built-in names (``data.name``): synthetic_regression, synthetic_classification, digits, diabetes (no
files); text, tokens, tensors, csv, jsonl (read ``data.path``); or ``package.module:Name`` for a user Dataset.
A ``data.path`` that is a glob, a directory of shards or a URL streams instead (``shards``), and so does
a user IterableDataset (``stream``): the train set is then a ``Stream``. Every other dataset is map-style,
returns ``(x, y)`` (``x`` a tensor, or a dict of tensors for dict samples), and also offers
``get_batch(indices) -> (X, Y)`` (one gather per micro-batch instead of B Python calls) and
``set_epoch(epoch)`` (augmentation is a pure function of (seed, epoch, index), so it is identical at
any world size). The train/eval split depends only on ``data.split_seed``. Bad input raises
:class:`trainer.config.ConfigError` naming the key and the value.

The implementations live beside this file: ``base`` (DataInfo, storage, split, hashing), ``builtin``,
``files``, ``user``, ``jsonl`` (+ ``layouts``: chat and instruction records), ``collate`` (tensor, tuple
and dict batches), ``sampler`` (global-batch sampling), ``loaders`` (worker processes), ``stream`` (streams:
sharding, resumable readers) and ``shards`` (shard globs for tokens, text and jsonl).
"""

from __future__ import annotations

from torch.utils.data import Dataset

from ..config import DATA_NAMES, Config, ConfigError
from . import builtin, files, jsonl, shards, user
from .base import (
    ArrayDataset,
    DataInfo,
    TokenWindows,
    fingerprint,
    sample_hash,
    split_indices,
)
from .stream import Stream, StreamBatches
from .user import wrap as wrap_datasets

__all__ = [
    "ArrayDataset",
    "DataInfo",
    "Stream",
    "StreamBatches",
    "TokenWindows",
    "build_datasets",
    "fingerprint",
    "sample_hash",
    "split_indices",
    "wrap_datasets",
    "BUILDERS",
]

BUILDERS = {
    "synthetic_regression": builtin.synthetic_regression,
    "synthetic_classification": builtin.synthetic_classification,
    "digits": builtin.digits,
    "diabetes": builtin.diabetes,
    "text": files.text,
    "tokens": files.tokens,
    "tensors": files.tensors,
    "csv": files.csv_table,
    "jsonl": jsonl.jsonl,
}


def build_datasets(cfg: Config) -> tuple[Dataset, Dataset, DataInfo]:
    """The (train, eval) datasets named by ``cfg.data`` and what the model and the log need to know."""
    name = cfg.data.name
    if shards.wants_stream(name, cfg.data.path):  # a glob, a directory of shards or a URL
        return shards.BUILDERS[name](cfg)
    if name in BUILDERS:
        return BUILDERS[name](cfg)
    if ":" in name:
        return user.build(cfg)
    raise ConfigError(f"data.name={name!r}: expected one of {', '.join(DATA_NAMES)} or package.module:Name")

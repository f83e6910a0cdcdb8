"""A user Dataset: ``data.name=package.module:Name`` called with ``**data.kwargs``, or dataset objects
passed to ``trainer.fit(train_data=..., eval_data=...)``.

The factory may return one map-style dataset (split here by eval_fraction with split_seed) or a
``(train, eval)`` pair. A sample is an ``(x, y)`` pair, an ``(x1, ..., xn, y)`` tuple (``forward(x1, ...,
xn)``) or a dict: a dict's ``data.target_key`` entry (default ``labels``) is the target and every other
entry an input that reaches ``forward`` as a keyword argument (``input_ids``, ``attention_mask``...; see
``collate``). The task comes from attributes on the dataset when present (``task``, ``num_classes``,
``num_outputs``, ``vocab_size``), else from the first sample (for a dict, its ``input_ids`` or first tensor
stands for x):
  * y an integer scalar -> classification; num_classes = max label + 1 over ``targets``/``labels`` if the
    dataset has them, else over the first 10000 samples;
  * x and y integer sequences of the same shape -> lm (vocab from ``vocab_size`` or model.vocab_size);
  * a dict whose integer label sequence has another length than its ``input_ids`` -> lm as seq2seq (T5):
    the model computes its own loss (``models.outputs.model_io`` passes the labels);
  * y floating -> regression with num_outputs = y.numel().

LM labels follow one of two conventions, told apart on the first samples (:func:`label_convention`): already
shifted (``y[t]`` is the token after ``x[t]``, the trainer's own) or equal to the inputs (Hugging Face's
causal-LM recipe, ``labels = input_ids``, where the model shifts). Equal labels are shifted here, the way
transformers does (position t learns token t+1, the last position nothing), unless ``model.target_arg``
hands them to the model, which shifts them itself. Labels that fit both conventions cannot be told apart:
a one-line error naming ``model.target_arg``.
Samples are converted to the tensor types the loop expects; ``get_batch`` uses the dataset's own when it
has one, else collates ``__getitem__`` (per key for dicts); ``set_epoch`` is forwarded when the dataset
defines it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import Config, ConfigError
from ..objects import build_object
from .base import DataInfo, Indices, as_index, fingerprint, split_indices
from .collate import collate, first_tensor, split_target
from .stream import Stream, head_samples, is_stream, kind_of, stream_length

log = logging.getLogger("trainer")

HEAD_SAMPLES = 256  # samples a stream is read ahead at build time: task, num_classes, probe, fingerprint
EVAL_STREAM_CAP = 100_000  # an eval stream is read into memory once; a longer one is refused
LABEL_SCAN = 10_000  # samples scanned for the largest label when the dataset does not say num_classes
FINGERPRINT_SAMPLES = 64  # a user dataset may be huge or lazy: fingerprint its length and first samples
CONVENTION_SAMPLES = 8  # samples that decide whether LM labels are shifted already
IGNORE = -100  # an LM label that carries no loss (torch's cross_entropy ignore_index)


def _input(t: Any) -> torch.Tensor:
    t = torch.as_tensor(t)
    return t.float() if t.is_floating_point() or t.dtype == torch.bool else t


def _keyword_input(t: Any) -> Any:
    """A dict entry keeps its integer or bool dtype (masks, ids); floats become float32."""
    if not isinstance(t, (torch.Tensor, np.ndarray, list, tuple, int, float, bool)):
        return t  # strings and other metadata pass through to forward untouched
    t = torch.as_tensor(t)
    return t.float() if t.is_floating_point() else t


class SampleError(ConfigError):
    """User data that cannot be used: a sample that raised, or one of another shape (exit 2, one line).

    Raised in a DataLoader worker, torch re-raises it in the main process as ``SampleError(message)`` with
    the worker's whole traceback in the message; the one line is its last."""

    def __init__(self, message: str):
        if "Original Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            message = (last.split(": ", 1)[1] if ": " in last else last) + " (in a DataLoader worker)"
        super().__init__(message)


def _shape(v: Any) -> tuple:
    t = first_tensor(v) if isinstance(v, Mapping) else torch.as_tensor(v)
    return tuple(t.shape)


class UserDataset(Dataset):
    """Adapts any map-style dataset (optionally a subset of it) to get_batch/set_epoch and fixed dtypes."""

    def __init__(
        self,
        base: Any,
        indices: Optional[np.ndarray] = None,
        task: Optional[str] = None,
        target_key: str = "labels",
    ):
        self.base, self.indices, self.task, self.target_key = base, indices, task, target_key
        self.shift = False  # labels equal to the inputs: shifted here (see the module docstring)

    def __len__(self) -> int:
        return len(self.base) if self.indices is None else len(self.indices)

    def _map(self, idx: torch.Tensor) -> torch.Tensor:
        return idx if self.indices is None else torch.from_numpy(self.indices)[idx]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def _pair(self, sample: Any) -> tuple[Any, Any]:
        if isinstance(sample, Mapping):
            return split_target(sample, self.target_key)
        if not isinstance(sample, (tuple, list)) or len(sample) < 2:
            raise TypeError(
                f"user dataset samples must be (x, y) pairs, (x1, ..., xn, y) tuples or dicts, got "
                f"{type(sample).__name__}"
            )
        if len(sample) > 2:  # (x1, ..., xn, y): forward(x1, ..., xn)
            return tuple(sample[:-1]), sample[-1]
        return sample[0], sample[1]

    def _convert(self, x: Any, y: Any, batched: bool) -> tuple[Any, torch.Tensor]:
        y = torch.as_tensor(y)
        if self.shift:  # Hugging Face's shift: position t learns token t+1, the last position nothing
            y = torch.cat([y[..., 1:], torch.full_like(y[..., :1], IGNORE)], dim=-1)
        if isinstance(x, Mapping):
            x = {k: _keyword_input(v) for k, v in x.items()}
            if self.task in ("lm", "classification"):
                y = y.long()
        elif isinstance(x, tuple):
            x = tuple(_keyword_input(v) for v in x)
            if self.task in ("lm", "classification"):
                y = y.long()
        elif self.task == "lm":
            return torch.as_tensor(x).long(), y.long()
        else:
            x = _input(x)
        if self.task == "classification":
            y = y.long()
        elif self.task == "regression":
            y = y.float().reshape((y.shape[0], -1) if batched else (-1,))
        return x, y

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor]:
        j = int(self._map(as_index([i + len(self) if i < 0 else i], len(self)))[0])
        try:
            sample = self.base[j]
        except Exception as e:  # the user's code failed on this item: name it (exit 2), not a traceback
            text = (str(e).strip().splitlines() or [""])[0][:300]
            raise SampleError(f"data: item {j} of the dataset raised {type(e).__name__}: {text}") from None
        return self._convert(*self._pair(sample), batched=False)

    def _odd_sample(self, idx: torch.Tensor, pairs: list) -> Optional[str]:
        """The first sample whose x (or y) shape differs from the most common one in a batch."""
        for part, name in ((0, "x"), (1, "y")):
            shapes = [_shape(p[part]) for p in pairs]
            common = max(set(shapes), key=shapes.count)
            for k, sh in enumerate(shapes):
                if sh != common:
                    j = int(self._map(idx[k : k + 1])[0])
                    return (
                        f"data: sample {j} has {name} of shape {sh}, the others in its batch {common}; "
                        "pad or crop the samples to one shape in the dataset"
                    )
        return None

    def get_batch(self, indices: Indices) -> tuple[Any, torch.Tensor]:
        idx = as_index(indices, len(self))
        if hasattr(self.base, "get_batch"):
            return self._convert(*self._pair(self.base.get_batch(self._map(idx))), batched=True)
        pairs = [self[int(i)] for i in idx]
        if not pairs:
            x0, y0 = self[0] if len(self) else (torch.empty(0), torch.empty(0))
            return x0.new_empty((0, *x0.shape)), y0.new_empty((0, *y0.shape))
        try:
            x, y = collate(pairs)
        except RuntimeError as e:  # e.g. "stack expects each tensor to be equal size"
            raise SampleError(
                self._odd_sample(idx, pairs)
                or f"data: a batch of samples cannot be collated ({str(e).splitlines()[0]}); "
                "pad them to one shape in the dataset"
            ) from None
        return x, y


def _num_classes(base: Any, ds: UserDataset) -> int:
    for attr in ("targets", "labels"):
        labels = getattr(base, attr, None)
        if labels is not None:
            try:
                return int(torch.as_tensor(labels).max()) + 1
            except (TypeError, ValueError, RuntimeError):
                pass  # not a flat label array: scan samples instead
    n = min(len(ds), LABEL_SCAN)
    return max(int(ds[i][1]) for i in range(n)) + 1


def _infer(cfg: Config, key: str, base: Any, train: UserDataset) -> DataInfo:
    if len(train) == 0:
        raise ConfigError(f"{key}: the training dataset is empty")
    try:
        x0, y0 = train[0]
        x0 = first_tensor(x0)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"{key}: cannot read sample 0: {type(e).__name__}: {e}") from None
    task = getattr(base, "task", None)
    seq2seq = False
    if task is None:
        if not y0.is_floating_point() and y0.ndim == 0:
            task = "classification"
        elif (
            not x0.is_floating_point()
            and not y0.is_floating_point()
            and x0.ndim == 1
            and x0.shape == y0.shape
        ):
            task = "lm"
        elif isinstance(train[0][0], Mapping) and not y0.is_floating_point() and y0.ndim == 1:
            task, seq2seq = "lm", True  # T5: labels for the decoder, of their own length
        elif y0.is_floating_point():
            task = "regression"
        else:
            raise ConfigError(
                f"{key}: cannot infer the task from sample 0 (x {tuple(x0.shape)} {x0.dtype}, "
                f"y {tuple(y0.shape)} {y0.dtype}); set a `task` attribute on the dataset"
            )
    if task not in ("classification", "regression", "lm"):
        raise ConfigError(
            f"{key}: dataset attribute task={task!r}: expected classification, regression or lm"
        )
    train.task = task
    x0, y0 = train[0]
    x0 = first_tensor(x0)
    nc = no = vocab = seq = None
    if task == "classification":
        nc = getattr(base, "num_classes", None) or _num_classes(base, train)
    elif task == "regression":
        no = getattr(base, "num_outputs", None) or y0.numel()
    else:
        vocab = getattr(base, "vocab_size", None) or cfg.model.vocab_size
        seq = x0.shape[0]
    info = DataInfo(task, tuple(x0.shape), nc, no, vocab, seq, "", "")
    if seq2seq:
        info.extra.update(seq2seq=True, labels="seq2seq")
    elif task == "lm":
        info.extra["labels"] = label_convention(train)
    return info


def label_convention(ds: UserDataset) -> str:
    """How LM labels relate to the inputs, on the first samples (labels of -100 not compared):
    ``shifted`` (y[t] = x[t+1]), ``equal`` (y = x, Hugging Face's causal-LM recipe), ``ambiguous`` (both
    fit, e.g. every label -100) or ``per_token`` (neither: targets of their own, such as token tags)."""
    equal = shifted = True
    for i in range(min(len(ds), CONVENTION_SAMPLES)):
        x, y = ds[i]
        x = first_tensor(x)
        if x.shape != y.shape or x.ndim != 1:
            return "per_token"
        keep = y != IGNORE
        equal = equal and bool((y[keep] == x[keep]).all())
        k1 = keep[:-1]
        shifted = shifted and bool((y[:-1][k1] == x[1:][k1]).all())
    if equal and shifted:
        return "ambiguous"
    return "equal" if equal else "shifted" if shifted else "per_token"


def _apply_convention(cfg: Config, key: str, info: DataInfo, train: UserDataset, evald: UserDataset) -> None:
    """Labels equal to the inputs are shifted here unless model.target_arg hands them to the model."""
    conv = info.extra.get("labels")
    if conv is None:
        return
    passed = cfg.model.target_arg is not None
    if conv == "ambiguous" and not passed:
        raise ConfigError(
            f"{key}: cannot tell whether the LM labels are already shifted (on the first samples they fit "
            "both y[t]=x[t] and y[t]=x[t+1]); set model.target_arg=labels so the model takes them, or "
            "give the trainer shifted labels"
        )
    if conv == "equal" and not passed:
        train.shift = evald.shift = True
        info.extra["loss_mask"] = True  # the last position of each row now carries no loss
        log.info(
            "data: LM labels equal the inputs (Hugging Face's causal-LM convention): shifted so that "
            "position t learns token t+1 (model.target_arg=labels would let the model shift them)"
        )
    info.extra["labels_shifted"] = conv == "shifted" or (conv == "equal" and not passed)


def _tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, Mapping):
        return [x[k] for k in sorted(x) if isinstance(x[k], torch.Tensor)]
    if isinstance(x, tuple):
        return [t for t in x if isinstance(t, torch.Tensor)]
    return [x]


class UserDecode:
    """A block of a user stream's raw samples -> one micro-batch, converted like map-style samples."""

    def __init__(self, task: str, target_key: str, shift: bool = False):
        self.conv = UserDataset(None, task=task, target_key=target_key)
        self.conv.shift = shift  # LM labels equal to the inputs: shifted as for map-style data

    def __call__(self, raws: list) -> tuple[Any, torch.Tensor]:
        c = self.conv
        try:
            return collate([c._convert(*c._pair(s), batched=False) for s in raws])
        except RuntimeError as e:  # e.g. "stack expects each tensor to be equal size"
            raise ConfigError(
                f"data: stream samples cannot be batched ({str(e).splitlines()[0]}); pad them to one length"
            ) from None


def _materialize(obj: Any, key: str) -> list:
    out = []
    for s in obj:
        out.append(s)
        if len(out) > EVAL_STREAM_CAP:
            raise ConfigError(
                f"{key}: the eval stream has more than {EVAL_STREAM_CAP} samples (it is read into memory "
                "once); give a map-style eval dataset or a shorter stream"
            )
    return out


def wrap_stream(cfg: Config, made: Any, eval_made: Any, key: str):
    """(Stream, eval dataset, DataInfo) for a user IterableDataset (README "Data")."""
    d, tk = cfg.data, cfg.data.target_key
    length = stream_length(made)
    head = UserDataset(head_samples(made, HEAD_SAMPLES, key), target_key=tk)
    info = _infer(cfg, key, made, head)
    if eval_made is None:
        evald = UserDataset([], task=info.task, target_key=tk)
    else:
        evald = UserDataset(
            _materialize(eval_made, key) if is_stream(eval_made) else eval_made, target_key=tk
        )
        evald.task = info.task
    _apply_convention(cfg, key, info, head, evald)
    parts = ["stream", type(made).__qualname__, str(length)]
    for i in range(min(len(head), FINGERPRINT_SAMPLES)):
        x, y = head[i]
        parts += [
            t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy() for t in (*_tensors(x), y)
        ]
    info.fingerprint = fingerprint(*parts)
    kind = kind_of(made)
    x0 = head[0][0]
    keys = f", keys {', '.join(x0)} -> forward" if isinstance(x0, Mapping) else ""
    sharding = "sharded by the dataset itself" if kind == "self" else "sharded by position"
    size = f"{length} samples a pass" if length is not None else "no length"
    info.description = (
        f"{d.name}: stream ({sharding}, {size}), {len(evald)} eval, "
        f"input {info.input_shape}{keys}, {info.task} (user dataset)"
    )
    stream = Stream(made, UserDecode(info.task, tk, head.shift), kind, head, length, d.name)
    return stream, evald, info


def wrap(cfg: Config, made: Any, eval_made: Any = None, key: Optional[str] = None):
    """(train, eval, DataInfo) from what the user gave: one dataset (split here), a (train, eval) pair,
    or a train dataset and an eval dataset. An iterable train dataset is a stream (``wrap_stream``)."""
    d = cfg.data
    key = key or f"data.name={d.name!r}"
    if eval_made is None and isinstance(made, tuple) and len(made) == 2:
        made, eval_made = made
    if is_stream(made):
        return wrap_stream(cfg, made, eval_made, key)
    if is_stream(eval_made):
        eval_made = _materialize(eval_made, key)
    for obj in (made, eval_made):
        if obj is not None and not (hasattr(obj, "__getitem__") and hasattr(obj, "__len__")):
            raise ConfigError(
                f"{key}: got {type(obj).__name__}; expected a Dataset, an IterableDataset or a (train, eval) "
                "pair (a generator object can be read only once: wrap it in an IterableDataset)"
            )
    tk = d.target_key
    if eval_made is not None:
        train, evald = UserDataset(made, target_key=tk), UserDataset(eval_made, target_key=tk)
    else:
        tr, ev = split_indices(len(made), d.eval_fraction, d.split_seed)
        train, evald = UserDataset(made, tr, target_key=tk), UserDataset(made, ev, target_key=tk)
    info = _infer(cfg, key, made, train)
    evald.task = info.task
    _apply_convention(cfg, key, info, train, evald)
    n_fp = min(len(train), FINGERPRINT_SAMPLES)
    parts = [str(len(train)), str(len(evald))]
    for i in range(n_fp):
        x, y = train[i]
        parts += [
            t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy() for t in (*_tensors(x), y)
        ]
    info.fingerprint = fingerprint(*parts)
    x0 = train[0][0]
    keys = (
        f", keys {', '.join(x0)} -> forward"
        if isinstance(x0, Mapping)
        else f", {len(x0)} inputs -> forward(x1, ..., x{len(x0)})"
        if isinstance(x0, tuple)
        else ""
    )
    info.description = (
        f"{d.name}: {len(train)} train / {len(evald)} eval, input {info.input_shape}{keys}, {info.task} "
        f"(user dataset)"
    )
    return train, evald, info


def build(cfg: Config):
    return wrap(cfg, build_object("data.name", cfg.data.name, cfg.data.kwargs))

"""Streams: training data read as an iterable (no ``__len__`` needed), sharded across ranks and DataLoader
workers, resumable mid-stream.

A stream is a sequence of samples in a fixed order per epoch (one epoch = one pass). Three kinds:

* ``index`` (the default for any IterableDataset, and the built-in shard globs): the trainer shards it.
  Position ``q`` of the (optionally shuffled) stream belongs to block ``q // m`` (``m`` = micro-batch
  size); block ``b`` goes to rank ``b % W`` and, on that rank, to DataLoader worker ``(b // W) % w``.
  A global step therefore consumes exactly the next ``train.batch_size`` positions, as the map-style
  sampler does, so a *global sample position* names the same samples at any world size or worker count:
  a resume on another layout is exact (each reader skips to the position; the cost is logged).
* ``self``: the dataset shards itself, and is left alone: it has ``shards_itself = True`` (it reads the
  rank from ``torch.distributed`` and the worker from ``get_worker_info()``), or it is a Hugging Face
  ``datasets.IterableDataset``, which is split with ``datasets.distributed.split_dataset_by_node``. Each
  reader takes consecutive blocks of its own sub-stream. A resume needs the same world size and
  ``data.num_workers`` (anything else is refused with one line).

``data.shuffle_buffer=N`` shuffles within consecutive windows of N positions by a permutation seeded by
(seed, epoch, window): memory is N samples per reader, and the order stays a pure function of the position.

Resume: the loader is torchdata's ``StatefulDataLoader``; the reader below is its Stateful dataset, whose
state is (next block, source position of the oldest window still needed, and the source's own
``state_dict()`` at that position when it has one). A source with ``state_dict``/``load_state_dict``
(torchdata's Stateful protocol: ``load_state_dict`` then ``iter`` continues; ``iter`` alone starts over),
such as a ``datasets.IterableDataset`` or the built-in jsonl shards, is restored from it; a plain
generator is re-iterated from the start and skipped ahead by count, and the log says what that cost.
"""

from __future__ import annotations

import logging
import time
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader

from ..config import ConfigError

log = logging.getLogger("trainer")
# torchdata 0.11 calls the deprecated torch.set_vital in every StatefulDataLoader (torch 2.13 warns on each
# call): a warning per run that says nothing about the user's job.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)

SHARDS_ITSELF = "shards_itself"  # the attribute a dataset sets to say it shards across ranks/workers itself


def is_hf_iterable(obj: Any) -> bool:
    """A Hugging Face ``datasets.IterableDataset``, recognised without importing ``datasets``."""
    t = type(obj)
    return t.__module__.startswith("datasets.") and t.__name__ == "IterableDataset"


def is_stream(obj: Any) -> bool:
    """An iterable dataset (torch IterableDataset, HF streaming dataset, or any re-iterable object that is
    not map-style)."""
    if obj is None or isinstance(obj, (str, bytes, dict, types.GeneratorType)):
        return False
    if isinstance(obj, IterableDataset) or is_hf_iterable(obj):
        return True
    return hasattr(obj, "__iter__") and not (hasattr(obj, "__getitem__") and hasattr(obj, "__len__"))


def stream_length(obj: Any) -> Optional[int]:
    try:
        return int(len(obj))
    except TypeError:
        return None


@dataclass
class Stream:
    """Training data as a stream: what the loop builds its readers from (``StreamBatches``).

    ``source``: the iterable, or an object with ``random_access = True``, ``length`` and
    ``get(positions) -> raws`` (token shards); ``decode(raws) -> (x, y)`` turns a block of raw items into
    one micro-batch; ``head`` is a small map-style dataset of the first samples (task inference, the probe,
    the fingerprint); ``length``: samples per pass when known (``train.epochs`` then works)."""

    source: Any
    decode: Callable[[list], tuple]
    kind: str  # "index" | "self"
    head: Any
    length: Optional[int] = None
    what: str = "stream"
    extra: dict = field(default_factory=dict)

    @property
    def self_sharded(self) -> bool:
        return self.kind == "self"


def kind_of(obj: Any) -> str:
    return "self" if is_hf_iterable(obj) or getattr(obj, SHARDS_ITSELF, False) else "index"


def head_samples(obj: Any, n: int, key: str) -> list:
    """The first n samples of a stream (fewer if it is shorter), read once in the main process."""
    out = []
    try:
        it = iter(obj)
        for _ in range(n):
            try:
                out.append(next(it))
            except StopIteration:
                break
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"{key}: reading the stream failed: {type(e).__name__}: {e}") from None
    if not out:
        raise ConfigError(f"{key}: the stream yielded no samples")
    return out


def _guarded(it: Iterator, n: int) -> Iterator:
    """The source's samples; an exception the user's stream raises (at any point of a run, in the main
    process or a DataLoader worker) is exit 2 naming the source position and the exception, as
    head_samples does for the first ones, never an internal error with a traceback."""
    while True:
        try:
            x = next(it)
        except StopIteration:
            return
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(
                f"data: reading the stream failed at sample {n} (counted from its start): "
                f"{type(e).__name__}: {e}"
            ) from None
        n += 1
        yield x


def window_perm(seed: int, epoch: int, window: int, n: int) -> np.ndarray:
    """The order of the n samples of shuffle window ``window``: a pure function of its arguments."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, window & 0xFFFFFFFF, 0x5EED])
    return rng.permutation(n)


def _stateful(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


class Reader(IterableDataset):
    """One reader of a stream (a rank, or a DataLoader worker of a rank): yields its micro-batches.

    Stateful for ``StatefulDataLoader``: ``state_dict()`` after a yielded micro-batch describes where the
    next one starts; ``load_state_dict`` before ``iter`` continues there.
    """

    def __init__(self, stream: Stream, rank: int, world: int, micro: int, window: int, seed: int):
        self.source, self.decode = stream.source, stream.decode
        self.self_sharded = stream.self_sharded
        self.rank, self.world, self.micro, self.window, self.seed = rank, world, micro, window, seed
        self.epoch, self.start = 0, 0  # the pass, and the global position it starts at (index streams)
        self._pending: Optional[dict] = None
        self._state: Optional[dict] = None
        self._perms: dict = {}

    def set_pass(self, epoch: int, start: int) -> None:
        self.epoch, self.start, self._pending, self._state = epoch, start, None, None

    def state_dict(self) -> dict:
        """Where this reader's next micro-batch starts. Before its first one (a loader's start-up snapshot,
        or a save right after a resume) that is the loaded state, or the start of the pass."""
        if self._state is not None:
            return dict(self._state)
        return {"epoch": self.epoch, "start": self.start, "k": self._layout()[3]}

    def load_state_dict(self, sd: dict) -> None:
        self._pending, self._state = dict(sd), dict(sd)

    # -------------------------------------------------------------- layout
    def _layout(self) -> tuple[int, int, int, int, int]:
        """(first block, block stride, block offset, first k, k step) of this reader."""
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.self_sharded:
            return 0, 1, 0, 0, 1
        return self.start // self.micro, self.world, self.rank, wid, nw

    def _positions(self, block: int, n_total: Optional[int]) -> Optional[list[int]]:
        """Source positions of a block's samples; None when the block runs past a known end."""
        m, N = self.micro, self.window
        lo, hi = block * m, (block + 1) * m
        if n_total is not None and hi > n_total:
            return None
        if not N:
            return list(range(lo, hi))
        out = []
        for q in range(lo, hi):
            w = q // N
            size = N if n_total is None else min(N, n_total - w * N)
            out.append(w * N + int(self._perm(w, size)[q - w * N]))
        return out

    def _perm(self, w: int, size: int) -> np.ndarray:
        key = (self.epoch, w, size)
        if key not in self._perms:
            if len(self._perms) > 4:  # a block spans at most a few windows: keep the newest only
                self._perms.clear()
            self._perms[key] = window_perm(self.seed, self.epoch, w, size)
        return self._perms[key]

    # -------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator:
        st = self._pending
        self._pending = None
        base, stride, offset, k, kstep = self._layout()
        if st is not None:
            self.epoch, self.start, k = st["epoch"], st["start"], st["k"]
            base = 0 if self.self_sharded else self.start // self.micro
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(self.epoch)
        if getattr(self.source, "random_access", False):
            yield from self._random_access(base, stride, offset, k, kstep)
        else:
            yield from self._sequential(base, stride, offset, k, kstep, st)

    def _mark(self, k: int, **extra) -> None:
        self._state = {"epoch": self.epoch, "start": self.start, "k": k, **extra}

    def _random_access(self, base, stride, offset, k, kstep) -> Iterator:
        n = self.source.length
        while True:
            pos = self._positions(base + k * stride + offset, n)
            if pos is None:
                return
            batch = self.decode(self.source.get(pos))
            k += kstep
            self._mark(k)
            yield batch

    def _open(self, st: Optional[dict]) -> tuple[Iterator, int]:
        """The source's iterator positioned at the state's source position (restored or skipped to)."""
        src = st.get("src", 0) if st else 0
        inner = st.get("inner") if st else None
        if inner is not None and _stateful(self.source):
            self.source.load_state_dict(inner)
            return _guarded(iter(self.source), src), src
        it = _guarded(iter(self.source), 0)
        if src:
            t0 = time.perf_counter()
            for _ in range(src):
                try:
                    next(it)
                except StopIteration:
                    break
            log.info(
                "data: stream reader (rank %d) skipped %d samples to resume (the source has no "
                "state_dict) in %.2fs",
                self.rank,
                src,
                time.perf_counter() - t0,
            )
        return it, src

    def _sequential(self, base, stride, offset, k, kstep, st) -> Iterator:
        it, src = self._open(st)
        N = self.window or self.micro  # without shuffling a "window" is one block's worth
        stateful = _stateful(self.source)
        buf: dict[int, list] = {}  # window index -> raw samples
        snaps: dict[int, Any] = {}  # window index -> the source's state at the window's start
        ended = False
        first, t0 = self.start > 0 and st is None, time.perf_counter()  # a pass restarted mid-way
        while True:
            b = base + k * stride + offset
            lo, hi = b * self.micro, (b + 1) * self.micro
            w_lo, w_hi = lo // N, (hi - 1) // N
            for w in [w for w in buf if w < w_lo]:
                del buf[w], snaps[w]
            for w in range(w_lo, w_hi + 1):
                if w in buf or ended:
                    continue
                while src < w * N:  # skip what belongs to other readers
                    try:
                        next(it)
                    except StopIteration:
                        ended = True
                        break
                    src += 1
                if ended:
                    break
                snaps[w] = self.source.state_dict() if stateful else None
                items = []
                for _ in range(N):
                    try:
                        items.append(next(it))
                    except StopIteration:
                        ended = True
                        break
                src += len(items)
                buf[w] = items
            raws = []
            for q in range(lo, hi):
                w = q // N
                items = buf.get(w)
                if items is None or q - w * N >= len(items):
                    return  # the stream ended inside this block: a partial block is not trained
                j = q - w * N
                if self.window:
                    j = int(self._perm(w, len(items))[j])
                raws.append(items[j])
            batch = self.decode(raws)
            if first:
                first = False
                log.info(
                    "data: stream reader (rank %d) read %d samples to reach global sample %d (the position "
                    "rule) in %.2fs",
                    self.rank,
                    lo // N * N,
                    self.start,
                    time.perf_counter() - t0,
                )
            k += kstep
            nb = base + k * stride + offset
            nw_lo = nb * self.micro // N
            if nw_lo in buf:  # the next block starts in a window already read: resume from its start
                self._mark(k, src=nw_lo * N, inner=snaps[nw_lo])
            else:
                self._mark(k, src=src, inner=self.source.state_dict() if stateful else None)
            yield batch


class StreamBatches:
    """The loop's micro-batches of a stream, through torchdata's ``StatefulDataLoader``.

    ``layout`` is what a checkpoint records; a resume on the same layout loads this rank's loader state,
    on another layout an ``index`` stream restarts its readers at the global position (exact), and a
    self-sharded stream is refused.
    """

    def __init__(
        self,
        stream: Stream,
        rank: int,
        world: int,
        micro: int,
        batch_size: int,
        num_workers: int,
        window: int,
        seed: int,
        pin_memory: bool,
        prefetch_factor: int,
    ):
        source = stream.source
        if is_hf_iterable(source) and world > 1:
            from datasets.distributed import (
                split_dataset_by_node,
            )  # the user's data is already a datasets one

            source = split_dataset_by_node(source, rank=rank, world_size=world)
        self.stream = stream
        self.reader = Reader(
            Stream(source, stream.decode, stream.kind, None), rank, world, micro, window, seed
        )
        self.layout = {"kind": stream.kind, "world_size": world, "num_workers": num_workers, "micro": micro}
        self.steps_per_epoch = stream.length // batch_size if stream.length is not None else None
        kw: dict = {}
        if num_workers:
            kw = {"prefetch_factor": prefetch_factor, "persistent_workers": False}
        # A generator of its own: the loader's worker seeds must not draw from the global RNG, which the
        # model's dropout shares (a resumed run would otherwise diverge from an uninterrupted one).
        self.loader = StatefulDataLoader(
            self.reader,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(seed),
            **kw,
        )
        self._loaded = False

    def epoch_iter(self, epoch: int, samples_in_epoch: int) -> Iterator:
        if not self._loaded:
            self.reader.set_pass(epoch, samples_in_epoch)
        self._loaded = False
        it = iter(self.loader)
        return self._one_line_errors(it) if self.loader.num_workers else it

    @staticmethod
    def _one_line_errors(it: Iterator) -> Iterator:
        """A ConfigError raised in a DataLoader worker (a bad record) arrives with the worker's traceback in
        its message; the user gets its last line, as from the main process."""
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except ConfigError as e:
                last = [ln for ln in str(e).splitlines() if ln.strip()][-1]
                raise ConfigError(last.split("ConfigError: ", 1)[-1]) from None
            yield batch

    def state_dict(self) -> dict:
        return {"loader": self.loader.state_dict(), "layout": self.layout}

    def load_state_dict(self, sd: dict) -> None:
        self.loader.load_state_dict(sd["loader"])
        self._loaded = True

    def describe_layout_change(self, saved: dict) -> str:
        return (
            f"{saved.get('world_size')} process(es) x {saved.get('num_workers')} worker(s) -> "
            f"{self.layout['world_size']} x {self.layout['num_workers']}"
        )

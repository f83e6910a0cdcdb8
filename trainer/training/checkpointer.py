"""When and what the loop checkpoints, and resuming from a checkpoint.

``Checkpointer`` is built by the ``Trainer`` with exactly the state a checkpoint holds, the way torchtitan's
``CheckpointManager`` is handed its states: the strategy (which knows how the model and optimizer are
sharded), the optimizer, the loop's own state (``train_state``: its ``state_dict()``/``load_state_dict()``
cover the scheduler, scaler, progress and the best-checkpoint monitor), the progress counters, the loss
tally, the trained parameters, and for streamed data the loader (``data``: a ``StreamBatches`` whose per-rank
state rides in the same transaction). One save runs: this module (what: finite check, the log window, the
state dicts, the manifest's extra fields) -> ``saver.py`` (sync or async, one write in flight) ->
``trainer.checkpoint`` (how: the directory transaction).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Optional

import torch

from .. import checkpoint as ckpt
from ..checkpoint import stores
from ..config import Config, ConfigError, config_hash, to_dict
from ..runtime import dist, io_faults
from . import resume
from .finite import all_finite
from .monitor import Monitor
from .saver import Saver
from .strategy import Strategy
from .tally import reduced_window

log = logging.getLogger("trainer")


class Checkpointer:
    def __init__(
        self,
        cfg: Config,
        state: dist.DistState,
        run_dir: str,
        strategy: Strategy,
        optimizer,
        train_state,
        progress: ckpt.Progress,
        tally,
        params: list,
        monitor: Monitor,
        task: str,
        data=None,
    ):
        self.cfg, self.state, self.run_dir = cfg, state, run_dir
        self.strategy, self.optimizer, self.train_state = strategy, optimizer, train_state
        self.progress, self.tally, self.params, self.monitor, self.task = (
            progress,
            tally,
            params,
            monitor,
            task,
        )
        self.data = data  # a stream's loader (trainer.data.StreamBatches), None for map-style data
        self.saver = Saver(cfg, state, run_dir)
        self.ckpts = self.saver.ckpts
        # Set by an async save until the write holds its own copy of the weights: the loop calls it (then sets
        # it back to None) before its next optimizer step.
        self.fence: Optional[Callable[[], None]] = None
        # Set when the run begins (``watch``): the metrics' flush, so every row up to a step is written before
        # its checkpoint exists, and the watchdog's breadcrumb, so a hang names the rank still saving.
        self._flush: Callable[[], None] = lambda: None
        self._mark: Callable[[int, str], None] = lambda step, op: None

    def watch(self, flush: Callable[[], None], mark: Callable[[int, str], None]) -> None:
        self._flush, self._mark = flush, mark
        self.saver.phase = lambda op: mark(self.progress.step, op)

    # ------------------------------------------------------------------ save
    def save(self, final: bool = False, evaluated: Optional[dict] = None) -> Optional[str]:
        """Checkpoint the current step; async (checkpoint.async_save) except for the last save of a run.

        ``evaluated``: the evaluation of this very step, if any (the best-K monitor records it)."""
        t0 = time.perf_counter()
        step = self.progress.step
        self._flush()
        self._mark(step, "checkpoint")
        io_faults.require_dir(self.run_dir)
        # The save's collectives (finite check, log window, FSDP's gathers) wait for every rank, like a
        # barrier: the rank not there yet is the one the watchdog names.
        self._mark(step, "checkpoint barrier")
        finite = all_finite(self.state, self.params)
        window = reduced_window(self.state, self.tally) if finite else None
        if not finite:  # the previous checkpoint stays the newest
            log.warning(
                "not checkpointing step %d: the parameters are non-finite; the newest checkpoint (%s) is "
                "from before",
                step,
                self.ckpts.latest_pointer() or "none",
            )
            return None
        sharded, state = None, None
        if self.strategy.sharded:
            sharded = self.strategy.sharded_state(self.optimizer)
        else:
            msd, osd = self.strategy.full_state(self.optimizer)
        self._mark(step, "checkpoint")
        if self.state.is_main:
            state = self.train_state.state_dict()
            state["window"] = window
            if sharded is None:
                state.update(model=msd, optimizer=osd)
        p = self.progress
        extra = {
            "epoch": p.epoch,
            "samples_in_epoch": p.samples_in_epoch,
            "samples_total": p.samples_total,
            "config": to_dict(self.cfg),
            "config_hash": config_hash(self.cfg),
            "task": self.task,
        }
        if evaluated is not None and self.monitor.record(evaluated):
            extra["monitor"] = self.monitor.record(evaluated)
        data = None
        if self.data is not None:  # every rank's loader position, in the same transaction as the weights
            extra["data_layout"] = self.data.layout
            data = self.data.state_dict()
        # Async: the writer thread copies the parameters and optimizer state (only the optimizer step changes
        # them) while the loop runs its next forward and backward; the loop calls `fence` before that step.
        deferrable = state is not None and sharded is None and self.saver.writer is not None
        late = self._late_storage() if deferrable else frozenset()  # sharded (DTensor) state: copied at once
        path = self.saver.save(step, state, extra, sharded, final, t0, data, late=late)
        if late and not final:
            self.fence = self.saver.writer.copy_fence
        return path

    def _late_storage(self) -> frozenset:
        """Storage addresses of the parameters and the optimizer's state tensors."""
        tensors = list(self.strategy.module.parameters())
        for st in getattr(self.optimizer, "state", {}).values():
            tensors += [t for t in st.values() if isinstance(t, torch.Tensor)]
        return frozenset(t.untyped_storage().data_ptr() for t in tensors)

    # the saver's verbs the loop calls between saves
    def poll(self, step: int) -> None:
        self.saver.poll(step)

    def finish(self, step: int) -> Optional[str]:
        return self.saver.finish(step)

    def close(self) -> None:
        self.saver.close()

    @property
    def saved_at(self) -> int:
        return self.saver.saved_at

    def latest(self) -> str:
        """The newest committed checkpoint, for the lines that name it."""
        return self.ckpts.latest_pointer() or "none"

    # ------------------------------------------------------------------ resume
    def resume_from(self, path: str) -> list:
        """Load the model, optimizer, loop state and RNG from ``path``; returns the config changes since it
        was written (``trainer.training.resume``), for the loop to apply."""
        manifest = ckpt.read_manifest(path)
        self.saver.committed = path  # the checkpoint a failed save leaves intact, until a newer one commits
        remote = stores.is_url(ckpt.checkpoint_root(self.cfg.checkpoint.dir, self.run_dir))
        changed = resume.check(manifest.get("config"), self.cfg, path, self.run_dir, remote)
        state, rng = ckpt.load_state(path, rank=self.state.rank)
        if state is not None and isinstance(state.get("model"), dict):
            refuse_old_lora(state["model"], path)
        if ckpt.is_sharded(path):
            self.strategy.load_sharded(self.optimizer, os.path.join(path, ckpt.DCP))
        else:
            self.strategy.load_full_state(self.optimizer, state["model"], state["optimizer"])
        self.train_state.load_state_dict(state)
        p = self.progress
        if self.data is not None:
            self._resume_stream(path, manifest)
        if rng is not None and manifest.get("world_size") == self.state.world_size:
            ckpt.set_rng_state(rng)
        else:  # different world size: fresh per-rank streams, still deterministic
            torch.manual_seed(self.cfg.seed * 1000 + self.state.rank + 7919 * p.step)
        self.saver.saved_at = p.step
        self.monitor.kept = [
            ckpt.read_manifest(c)["monitor"]["value"] for c in self.ckpts.best(self.monitor.keep_best)
        ]
        log.info(
            "resumed from %s at step %d (epoch %d, %d samples into it; saved on %d process(es))",
            path,
            p.step,
            p.epoch,
            p.samples_in_epoch,
            manifest.get("world_size"),
        )
        return changed

    def _resume_stream(self, path: str, manifest: dict) -> None:
        """The stream's position: this rank's loader state on the same layout; on another layout an
        index-sharded stream restarts its readers at the global position (exact, see data/stream.py),
        and a self-sharded one is refused."""
        b, p = self.data, self.progress
        saved = manifest.get("data_layout") or {}
        if saved == b.layout:  # the same data-parallel layout (world_size there counts data-parallel ranks)
            # the saving rank that read this data-parallel rank's share: ranks are laid out (dp, tp), so the
            # first of its tensor-parallel group under the checkpoint's parallel.tp
            saved_tp = ((manifest.get("config") or {}).get("parallel") or {}).get("tp", 1)
            sd = ckpt.load_rank_data(path, self.state.dp_rank * saved_tp)
            if sd is not None:
                b.load_state_dict(sd)
                return
        if b.layout["kind"] == "index" and saved.get("kind", "index") == "index":
            log.warning(
                "data: the checkpoint read the stream on %s; every reader restarts at global sample %d of "
                "epoch %d (the position rule: exact, no sample repeated or skipped)",
                b.describe_layout_change(saved),
                p.samples_in_epoch,
                p.epoch,
            )
            return
        raise ConfigError(
            f"run.resume: checkpoint {path} read a stream that shards itself on "
            f"{b.describe_layout_change(saved)}; its position cannot be redistributed: resume with "
            f"{saved.get('world_size')} process(es) and data.num_workers={saved.get('num_workers')}, or "
            "start over (run.resume=restart, or a new run.dir)"
        )


def refuse_old_lora(model_state: dict, path: str) -> None:
    """A checkpoint of the former hand-written LoRA (``X.lora_scale`` beside ``X.lora_A``) cannot resume into
    a peft model; its weights still serve ``model.init_from`` (merged on read)."""
    if any(k.endswith(".lora_scale") for k in model_state):
        raise ConfigError(
            f"run.resume: checkpoint {path} was written by the former hand-written LoRA (before peft) and "
            f"cannot be resumed; start a new run from it with model.init_from={path} "
            "(adapters merged on read)"
        )

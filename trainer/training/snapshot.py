"""The loop's checkpoint verbs: its own state, resuming from a checkpoint, and saving one.

A mixin of ``trainer.training.loop.Trainer`` (it uses the Trainer's attributes: cfg, state, strategy,
optimizer, scheduler, progress, saver, watchdog, tally, monitor, ...); kept apart so the loop reads in one
sitting. The on-disk transaction is ``checkpoint.py``'s, the sync/async policy ``saver.py``'s.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Optional

import torch

from ..config import ConfigError, config_hash, from_dict, math_diff, to_dict
from ..runtime import storage
from . import checkpoint as ckpt
from . import resume
from .finite import all_finite
from .tally import reduced_window

log = logging.getLogger("trainer")


class CheckpointVerbs:
    def state_dict(self) -> dict:
        """The loop's own state for a checkpoint (the model and optimizer come from the strategy)."""
        return {
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.strategy.scaler.state_dict() if self.strategy.scaler else None,
            "progress": vars(self.progress).copy(),
            "monitor": {
                "best": self.monitor.best,
                "best_step": self.monitor.best_step,
                "since_best": self.monitor.since_best,
            },
            "eval_before": self.eval_before,  # so a resumed run still reports it
        }

    def load_state_dict(self, sd: dict) -> None:
        self.scheduler.load_state_dict(sd["scheduler"])
        if self.strategy.scaler is not None and sd.get("scaler"):
            self.strategy.scaler.load_state_dict(sd["scaler"])
        self.progress = ckpt.Progress(**sd["progress"])
        mon = sd.get("monitor") or {}  # checkpoints from before checkpoint.monitor have none
        self.monitor.best, self.monitor.best_step = mon.get("best"), mon.get("best_step")
        self.monitor.since_best = mon.get("since_best", 0)
        self.eval_before = sd.get("eval_before")
        w = sd.get("window")  # older checkpoints have none: the next row then covers fewer steps
        if w:
            self.tally.restore(
                *(x if self.state.is_main else 0 for x in (w["loss"], w["good"], w["bad_run"])), w["bad_max"]
            )

    def resume_from(self, path: str) -> None:
        manifest = ckpt.read_manifest(path)
        saved_cfg = manifest.get("config")
        changed: list = []
        if saved_cfg is not None:
            try:
                old_cfg = from_dict(saved_cfg)
                diff, changed = math_diff(old_cfg, self.cfg), resume.changes(old_cfg, self.cfg)
            except ConfigError:
                diff = ["<checkpoint config no longer valid>"]
            if diff and self.cfg.run.resume_config_change != "allow":
                raise ConfigError(
                    f"run.resume: checkpoint {path} was trained with a different config in "
                    f"{', '.join(diff)}; set run.resume_config_change=allow to resume anyway"
                )
            resume.check_allowed(changed, path)
        state, rng = ckpt.load_state(path, rank=self.state.rank)
        if state is not None and isinstance(state.get("model"), dict):
            refuse_old_lora(state["model"], path)
        if ckpt.is_sharded(path):
            self.strategy.load_sharded(self.optimizer, os.path.join(path, ckpt.DCP))
        else:
            self.strategy.load_full_state(self.optimizer, state["model"], state["optimizer"])
        self.load_state_dict(state)
        if self.stream:
            self._resume_stream(path, manifest)
        self._apply_config_changes(changed)
        if rng is not None and manifest.get("world_size") == self.state.world_size:
            ckpt.set_rng_state(rng)
        else:  # different world size: fresh per-rank streams, still deterministic
            torch.manual_seed(self.cfg.seed * 1000 + self.state.rank + 7919 * self.progress.step)
        self.saver.saved_at = self.progress.step
        self.monitor.kept = [
            ckpt.read_manifest(c)["monitor"]["value"] for c in self.saver.ckpts.best(self.monitor.keep_best)
        ]
        p = self.progress
        log.info(
            "resumed from %s at step %d (epoch %d, %d samples into it; saved on %d process(es))",
            path,
            p.step,
            p.epoch,
            p.samples_in_epoch,
            manifest.get("world_size"),
        )

    def _resume_stream(self, path: str, manifest: dict) -> None:
        """The stream's position: this rank's loader state on the same layout; on another layout an
        index-sharded stream restarts its readers at the global position (exact, see data/stream.py),
        and a self-sharded one is refused."""
        b, p = self.batches, self.progress
        saved = manifest.get("data_layout") or {}
        if saved == b.layout:
            sd = ckpt.load_rank_data(path, self.state.rank)
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

    def _apply_config_changes(self, changed: list) -> None:
        """Allowed config changes take effect: hyperparameters and the LR schedule from the new config."""
        keys = {k for k, _, _ in changed}
        total_changed = bool(keys & {"train.max_steps", "train.epochs"}) and self._schedule_moves
        rebuilt = any(k.startswith("optim.") for k in keys) or total_changed
        lr_before = self.scheduler.get_last_lr()[0]
        if rebuilt:
            self.scheduler = resume.rebuild_schedule(
                self.optimizer, self.strategy.module, self.cfg, self.total_steps, self.progress.step
            )
        resume.report(changed, lr_before, self.scheduler.get_last_lr()[0], rebuilt)

    # ------------------------------------------------------------------ checkpoint
    def save(self, final: bool = False) -> Optional[str]:
        """Checkpoint the current step; async (checkpoint.async_save) except for the last save of a run."""
        t0 = time.perf_counter()
        step = self.progress.step
        if self.metrics:
            self.metrics.flush()  # every row up to this step is written before its checkpoint exists
        self.watchdog.mark(step, "checkpoint")
        storage.require_dir(self.run_dir)
        # The save's collectives (finite check, log window, FSDP's gathers) wait for every rank, like a
        # barrier: the rank not there yet is the one the watchdog names.
        self.watchdog.mark(step, "checkpoint barrier")
        finite = all_finite(self.state, self.params)
        window = reduced_window(self.state, self.tally) if finite else None
        if not finite:  # the previous checkpoint stays the newest
            log.warning(
                "not checkpointing step %d: the parameters are non-finite; the newest checkpoint (%s) is "
                "from before",
                step,
                self.saver.ckpts.latest_pointer() or "none",
            )
            return None
        sharded, state = None, None
        if self.strategy.sharded:
            sharded = self.strategy.sharded_state(self.optimizer)
        else:
            msd, osd = self.strategy.full_state(self.optimizer)
        self.watchdog.mark(step, "checkpoint")
        if self.state.is_main:
            state = self.state_dict()
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
            "task": self.info.task,
        }
        if self._eval_step == step and self.monitor.record(self.last_eval):
            extra["monitor"] = self.monitor.record(self.last_eval)
        data = None
        if self.stream:  # every rank's loader position, in the same transaction as the weights
            extra["data_layout"] = self.batches.layout
            data = self.batches.state_dict()
        return self.saver.save(step, state, extra, sharded, final, t0, data)


def refuse_old_lora(model_state: dict, path: str) -> None:
    """A checkpoint of the former hand-written LoRA (``X.lora_scale`` beside ``X.lora_A``) cannot resume into
    a peft model; its weights still serve ``model.init_from`` (merged on read)."""
    if any(k.endswith(".lora_scale") for k in model_state):
        raise ConfigError(
            f"run.resume: checkpoint {path} was written by the former hand-written LoRA (before peft) and "
            f"cannot be resumed; start a new run from it with model.init_from={path} "
            "(adapters merged on read)"
        )

"""The training loop: small verbs (_next_micro_batches, _run_step, _log, evaluate, save, fit).

The hot path of one optimizer step is: next micro-batches (already on device), forward under autocast,
backward (scaled), gradient norm/clip, optimizer step, scheduler step. Host syncs (loss to the host,
metric all-reduce, checkpoint, signal agreement) happen only at their own intervals.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Optional

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import dist as D
from .config import Config, ConfigError, flat, math_diff
from .exitcodes import NONFINITE, OK, PREEMPTED
from .faults import PreemptionWatch, Watchdog
from .metrics import Metrics, Stopwatch, peak_flops
from .optim import build_scheduler
from .sampler import GlobalBatchSampler, eval_shards
from .strategy import Strategy

log = logging.getLogger("trainer")


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 else t.float()  # losses in fp32 under autocast too


def task_loss(task: str, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    if task == "regression":
        if reduction == "mean":
            return F.mse_loss(_f32(out), _f32(y))
        return F.mse_loss(_f32(out), _f32(y), reduction="none").flatten(1).mean(1)
    if task == "lm":
        if reduction == "mean":
            return F.cross_entropy(_f32(out.flatten(0, 1)), y.flatten())
        return F.cross_entropy(_f32(out.flatten(0, 1)), y.flatten(), reduction="none").view(y.shape).mean(1)
    return F.cross_entropy(_f32(out), y, reduction=reduction)


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


class Trainer:
    def __init__(self, cfg: Config, state: D.DistState, strategy: Strategy, optimizer, train_ds, eval_ds, info,
                 run_dir: str, flops_per_sample: Optional[float] = None):
        self.cfg, self.state, self.strategy, self.optimizer = cfg, state, strategy, optimizer
        self.train_ds, self.eval_ds, self.info = train_ds, eval_ds, info
        self.run_dir = run_dir
        self.device = state.device
        t = cfg.train
        self.sampler = GlobalBatchSampler(len(train_ds), t.batch_size, t.grad_accum, state.rank, state.world_size,
                                          cfg.seed)
        self.total_steps = t.max_steps or t.epochs * self.sampler.steps_per_epoch
        self.scheduler = build_scheduler(optimizer, cfg, self.total_steps)
        self.progress = ckpt.Progress()
        self.ckpts = ckpt.CheckpointDir(os.path.join(run_dir, "checkpoints"), keep=cfg.checkpoint.keep)
        self.params = [p for p in strategy.module.parameters() if p.requires_grad]
        self.flops_per_sample = flops_per_sample
        self.metrics: Optional[Metrics] = None
        self.preempt = PreemptionWatch(state)
        self.watchdog: Watchdog | _NoWatchdog = _NoWatchdog()
        self.compile_time_s: Optional[float] = None
        self.last_eval: dict = {}
        self.saved_at = -1
        self.writer = None
        self._dataloader = None
        if cfg.checkpoint.async_save:
            self.writer = ckpt.AsyncWriter(self.ckpts, state.rank, state.world_size, lambda: D.barrier(state),
                                           lambda done: D.all_true(state, done))
        self.tally = _HostTally() if self.device.type == "cpu" else _DeviceTally(self.device)
        self._need_norm = bool(cfg.train.grad_clip) or state.distributed or strategy.scaler is not None
        self._schedule_moves = cfg.optim.schedule != "constant" or cfg.optim.warmup_steps > 0

    # ------------------------------------------------------------------ resume
    def resume_from(self, path: str) -> None:
        manifest = ckpt.read_manifest(path)
        saved_cfg = manifest.get("config")
        if saved_cfg is not None:
            from .config import from_dict

            try:
                diff = math_diff(from_dict(saved_cfg), self.cfg)
            except ConfigError:
                diff = ["<checkpoint config no longer valid>"]
            if diff and self.cfg.run.resume_config_change != "allow":
                raise ConfigError(f"run.resume: checkpoint {path} was trained with a different config in "
                                  f"{', '.join(diff)}; set run.resume_config_change=allow to resume anyway")
        state, rng = ckpt.load_state(path, rank=self.state.rank)
        if ckpt.is_sharded(path):
            self.strategy.load_sharded(self.optimizer, os.path.join(path, ckpt.DCP))
        else:
            self.strategy.load_full_state(self.optimizer, state["model"], state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.strategy.scaler is not None and state.get("scaler"):
            self.strategy.scaler.load_state_dict(state["scaler"])
        p = state["progress"]
        self.progress = ckpt.Progress(**p)
        if rng is not None and manifest.get("world_size") == self.state.world_size:
            ckpt.set_rng_state(rng)
        else:  # different world size: fresh per-rank streams, still deterministic
            torch.manual_seed(self.cfg.seed * 1000 + self.state.rank + 7919 * self.progress.step)
        self.saved_at = self.progress.step
        log.info("resumed from %s at step %d (epoch %d, %d samples into it; saved on %d process(es))", path,
                 self.progress.step, self.progress.epoch, self.progress.samples_in_epoch, manifest.get("world_size"))

    # ------------------------------------------------------------------ checkpoint
    def save(self, final: bool = False) -> Optional[str]:
        """Checkpoint the current step; async (checkpoint.async_save) except for the last save of a run."""
        t0 = time.perf_counter()
        self.watchdog.mark(self.progress.step, "checkpoint")
        sharded, state = None, None
        if self.strategy.sharded:
            sharded = self.strategy.sharded_state(self.optimizer)
        else:
            msd, osd = self.strategy.full_state(self.optimizer)
        if self.state.is_main:
            state = {"scheduler": self.scheduler.state_dict(),
                     "scaler": self.strategy.scaler.state_dict() if self.strategy.scaler else None,
                     "progress": vars(self.progress).copy()}
            if sharded is None:
                state.update(model=msd, optimizer=osd)
        from .config import to_dict

        extra = {"epoch": self.progress.epoch, "samples_in_epoch": self.progress.samples_in_epoch,
                 "samples_total": self.progress.samples_total, "config": to_dict(self.cfg),
                 "config_hash": _config_hash(self.cfg), "task": self.info.task}
        self.saved_at = self.progress.step
        if self.writer is not None:
            self.finish_saves()  # at most one write in flight
            self.writer.start(self.progress.step, state, extra, sharded, self.state.ckpt_group)
            log.info("checkpoint step %d: async write started (step loop blocked %.3fs)", self.progress.step,
                     time.perf_counter() - t0)
            return None if not final else self.finish_saves()
        path = self.ckpts.save(self.progress.step, self.state.rank, self.state.world_size, state, extra,
                               lambda: D.barrier(self.state), sharded, self.state.ckpt_group)
        log.info("checkpoint step %d saved in %.2fs -> %s", self.progress.step, time.perf_counter() - t0, path)
        return path

    def poll_saves(self) -> None:
        if self.writer is not None and self.writer.in_flight:
            step = self.writer._step
            path = self.writer.poll()
            if path:
                log.info("checkpoint step %d committed at step %d (async: %d steps ran during the write) -> %s",
                         step, self.progress.step, self.progress.step - step, path)

    def finish_saves(self) -> Optional[str]:
        """Wait for an in-flight async write and commit it (before exiting, or before the next save)."""
        if self.writer is None or not self.writer.in_flight:
            return None
        step = self.writer._step
        path = self.writer.wait()
        log.info("checkpoint step %d committed at step %d -> %s", step, self.progress.step, path)
        return path

    # ------------------------------------------------------------------ data
    def _loader(self):
        d = self.cfg.data
        if d.num_workers == 0:
            ds = self.train_ds
            return (ds.get_batch(idx) for idx in self.sampler)
        if self._dataloader is None:  # built once: persistent workers survive across epochs
            pin = d.pin_memory and self.device.type == "cuda"
            self._dataloader = torch.utils.data.DataLoader(
                _Batches(self.train_ds), sampler=_EpochTagged(self.sampler), batch_size=None,
                num_workers=d.num_workers, pin_memory=pin, prefetch_factor=d.prefetch_factor,
                persistent_workers=True)
        return iter(self._dataloader)

    def _to_device(self, batch):
        x, y = batch
        nb = self.device.type == "cuda"
        return x.to(self.device, non_blocking=nb), y.to(self.device, non_blocking=nb)

    # ------------------------------------------------------------------ step
    def _run_step(self, micro_batches) -> None:
        s = self.strategy
        n = len(micro_batches)
        total = None
        wd, step = self.watchdog, self.progress.step + 1  # the step being run, counted from 1
        for i, (x, y) in enumerate(micro_batches):
            with s.sync(i == n - 1):
                wd.mark(step, "forward")
                with s.autocast():
                    out = s.model(x)
                loss = task_loss(self.info.task, out, y)
                if n > 1:
                    loss = loss / n
                wd.mark(step, "backward")
                s.backward(loss)
            total = loss.detach() if total is None else total + loss.detach()
        wd.mark(step, "optimizer")
        # Distributed: the all-reduced gradients are what every rank agrees on (a NaN on one rank's loss
        # reaches the others only through them). fp16: the scaler owns overflow; the loss decides.
        norm = s.grad_norm(self.optimizer, self.params, self.cfg.train.grad_clip) if self._need_norm else None
        check_norm = norm is not None and s.scaler is None
        if self.tally.on_host:  # CPU: no device to wait for, so reading the loss here costs nothing
            value = total.item()
            ok = math.isfinite(value) and (not check_norm or math.isfinite(norm.item()))
        else:
            value = total
            ok = torch.isfinite(total) & torch.isfinite(norm) if check_norm else torch.isfinite(total)
        s.optimizer_step(self.optimizer, ok)
        self.optimizer.zero_grad(set_to_none=True)
        if self._schedule_moves:
            self.scheduler.step()
        self.tally.add(value, ok)

    # ------------------------------------------------------------------ logging
    def _log(self, steps: int, watch: Stopwatch) -> bool:
        """Pull metrics to the host (the one sync per interval). Returns False if the run must stop."""
        self.watchdog.mark(self.progress.step, "log")
        loss_sum, good, _, bad_max = self.tally.pull(self.device)
        stats = D.all_reduce_sum(self.state, torch.stack([loss_sum.double(), good.double()]))
        loss_sum, good = stats.tolist()
        bad = D.all_reduce_max(self.state, bad_max).item()
        elapsed = max(watch.elapsed(), 1e-9)
        B = self.cfg.train.batch_size
        row = {"step": self.progress.step, "epoch": self.progress.epoch,
               "loss": loss_sum / good if good else float("nan"),
               "lr": self.scheduler.get_last_lr()[0], "samples_per_s": B * steps / elapsed,
               "step_time_s": elapsed / steps, "data_wait_frac": watch.data_s / elapsed}
        if self.info.task == "lm":
            row["tokens_per_s"] = row["samples_per_s"] * self.info.seq_len
        if self.device.type == "cuda":
            row["gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            peak = peak_flops(torch.cuda.get_device_name(self.device), self.cfg.train.precision)
            if peak and self.flops_per_sample:
                row["mfu"] = self.flops_per_sample * row["samples_per_s"] / (peak * self.state.world_size)
        row.update(self.metrics.process_stats() if self.metrics else {})
        if self.metrics:
            self.metrics.log_train(row)
        self.last_loss = row["loss"]
        watch.reset()
        if bad > self.cfg.train.max_bad_steps:
            log.error("loss was non-finite for %d consecutive steps (train.max_bad_steps=%d): stopping at step %d "
                      "with the last good state", int(bad), self.cfg.train.max_bad_steps, self.progress.step)
            return False
        return True

    # ------------------------------------------------------------------ eval
    @torch.no_grad()
    def evaluate(self) -> dict:
        s = self.strategy
        self.watchdog.mark(self.progress.step, "eval")
        s.model.eval()
        bs = self.cfg.train.eval_batch_size
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, count, correct / sq err
        for idx, valid in eval_shards(len(self.eval_ds), bs, self.state.rank, self.state.world_size):
            x, y = self._to_device(self.eval_ds.get_batch(idx))
            with s.autocast():
                out = s.model(x)
            per = task_loss(self.info.task, out, y, reduction="none")[:valid]
            sums[0] += per.double().sum()
            sums[1] += valid
            if self.info.task == "classification":
                sums[2] += (out[:valid].argmax(-1) == y[:valid]).sum()
        s.model.train()
        D.all_reduce_sum(self.state, sums)
        loss_sum, count, correct = sums.tolist()
        res = {"loss": loss_sum / max(count, 1), "samples": int(count)}
        if self.info.task == "classification":
            res["accuracy"] = correct / max(count, 1)
        elif self.info.task == "regression":
            res["mse"] = res["loss"]
        else:
            res["perplexity"] = float(torch.tensor(res["loss"]).exp())
        self.last_eval = res
        if self.metrics:
            self.metrics.log_eval(self.progress.step, res)
        return res

    # ------------------------------------------------------------------ fit
    def fit(self) -> int:
        cfg, p = self.cfg, self.progress
        t = cfg.train
        if p.step >= self.total_steps:
            log.info("run already complete: step %d of %d; nothing to do", p.step, self.total_steps)
            return OK
        self.metrics = Metrics(self.run_dir, self.state.is_main, cfg.log.tensorboard, cfg.log.progress,
                               self.total_steps, p.step)
        self.preempt.install()
        if self.state.distributed:
            self.watchdog = Watchdog(self.state, cfg.dist.collective_timeout_s, _rank_log_stream())
            self.watchdog.start()
        watch = Stopwatch()
        since_log = 0
        t_start = time.perf_counter()
        code = OK
        self.strategy.model.train()
        profiler = _Profiler(cfg, self.run_dir) if cfg.profile.steps and self.state.is_main else None
        try:
            while p.step < self.total_steps and code == OK:
                self.sampler.set_position(p.epoch, p.samples_in_epoch)
                self.train_ds.set_epoch(p.epoch)
                batches = self._loader()
                while p.step < self.total_steps:
                    self.watchdog.mark(p.step + 1, "data")
                    t_data = time.perf_counter()
                    try:
                        micro = [self._to_device(next(batches)) for _ in range(t.grad_accum)]
                    except StopIteration:
                        break
                    watch.data_s += time.perf_counter() - t_data
                    if profiler:
                        profiler.step(p.step)
                    t_step = time.perf_counter() if self.compile_time_s is None and t.compile else None
                    self.watchdog.pause(t_step is not None)  # compiling may take minutes on one rank
                    try:
                        self._run_step(micro)
                    except torch.cuda.OutOfMemoryError:
                        self._oom_snapshot()
                        raise
                    if t_step is not None:
                        self.watchdog.pause(False)
                        _sync(self.device)
                        self.compile_time_s = time.perf_counter() - t_step
                        log.info("first compiled step (compile included) took %.2fs", self.compile_time_s)
                        watch.reset()
                    p.step += 1
                    p.samples_in_epoch += t.batch_size
                    p.samples_total += t.batch_size
                    since_log += 1
                    if since_log >= cfg.log.every_steps or p.step == self.total_steps:
                        if not self._log(since_log, watch):
                            code = NONFINITE
                        since_log = 0
                    t_side = time.perf_counter()
                    if code == OK and t.eval_every_steps and p.step % t.eval_every_steps == 0 \
                            and p.step < self.total_steps:
                        self.evaluate()
                    self.poll_saves()
                    stop = code != OK or self.preempt.agreed()
                    if stop:
                        self.save(final=True)
                    elif cfg.checkpoint.every_steps and p.step % cfg.checkpoint.every_steps == 0:
                        self.save()
                    watch.exclude(t_side)  # eval and checkpoint time is not step time
                    if stop:
                        code = code if code != OK else PREEMPTED
                        break
                if code == OK and p.samples_in_epoch >= self.sampler.steps_per_epoch * t.batch_size:
                    p.epoch += 1
                    p.samples_in_epoch = 0
            if code == OK:
                if since_log:
                    self._log(since_log, watch)
                self.evaluate()
                if self.saved_at != p.step:
                    self.save(final=True)
                self.finish_saves()
                self._finish(time.perf_counter() - t_start)
            elif code == PREEMPTED:
                log.warning("preempted by signal: checkpoint at step %d saved; rerun the same command to resume",
                            p.step)
        finally:
            if profiler:
                profiler.close()
            self.preempt.uninstall()
            self.watchdog.stop()
            if self.metrics:
                self.metrics.close()
        return code

    def _oom_snapshot(self) -> None:
        """Write the CUDA allocator's state before the error ends the run, and say where it is."""
        import pickle

        path = os.path.join(self.run_dir, f"cuda_oom_snapshot-rank{self.state.rank}.pickle")
        try:
            with open(path, "wb") as fh:
                pickle.dump(torch.cuda.memory._snapshot(), fh)
            log.error("CUDA out of memory at step %d: allocator snapshot written to %s (drag it into "
                      "https://pytorch.org/memory_viz); lower train.batch_size, raise train.grad_accum, or set "
                      "train.activation_checkpointing=true", self.progress.step + 1, path)
        except Exception as e:  # the snapshot is a courtesy; the OOM is the error to report
            log.error("CUDA out of memory at step %d (snapshot failed: %s)", self.progress.step + 1, e)

    def _finish(self, wall: float) -> None:
        if not self.state.is_main:
            return
        summary = {"steps": self.progress.step, "epochs": self.progress.epoch,
                   "samples": self.progress.samples_total, "final_loss": getattr(self, "last_loss", None),
                   "eval": self.last_eval, "wall_time_s": round(wall, 3), "compile_time_s": self.compile_time_s,
                   "world_size": self.state.world_size, "strategy": self.strategy.mode,
                   "precision": self.cfg.train.precision, "data": self.info.description,
                   "data_fingerprint": self.info.fingerprint}
        self.metrics.write_summary(summary)
        if self.cfg.log.plot:
            self.metrics.plot()
        ev = "  ".join(f"{k} {v:.4f}" for k, v in self.last_eval.items() if k != "samples")
        log.info("done: %d steps in %.1fs; final loss %.4f; eval %s; outputs in %s", self.progress.step, wall,
                 summary["final_loss"] or float("nan"), ev, self.run_dir)


class _HostTally:
    """Per-step loss and bad-step bookkeeping when `ok` is already on the host (CPU): plain Python."""

    on_host = True

    def __init__(self):
        self.loss, self.good = 0.0, 0
        self.bad_run = self.bad_max = 0

    def add(self, value: float, ok: bool) -> None:
        if ok:
            self.loss += value
            self.good += 1
            self.bad_run = 0
        else:
            self.bad_run += 1
            self.bad_max = max(self.bad_max, self.bad_run)

    def pull(self, device):
        out = (torch.tensor(self.loss, dtype=torch.float64), torch.tensor(float(self.good), dtype=torch.float64),
               self.bad_run, torch.tensor(self.bad_max))
        self.loss, self.good = 0.0, 0
        self.bad_max = self.bad_run
        return out


class _DeviceTally:
    """The same on the device (CUDA), without a host sync per step: read only at log intervals."""

    on_host = False

    def __init__(self, device):
        z = torch.zeros((), device=device)
        self.loss, self.good, self.bad_run, self.bad_max = z.clone(), z.clone(), z.clone(), z.clone()

    def add(self, total: torch.Tensor, ok: torch.Tensor) -> None:
        okf = ok.float()
        self.loss += torch.where(ok, total.float(), torch.zeros_like(self.loss))
        self.good += okf
        self.bad_run = (self.bad_run + 1) * (1 - okf)
        self.bad_max = torch.maximum(self.bad_max, self.bad_run)

    def pull(self, device):
        out = (self.loss.clone(), self.good.clone(), None, self.bad_max.clone())
        self.loss.zero_()
        self.good.zero_()
        self.bad_max.copy_(self.bad_run)
        return out


class _NoWatchdog:
    """Single process: nothing can hang on a peer."""

    def mark(self, step: int, op: str) -> None:
        pass

    def pause(self, paused: bool) -> None:
        pass

    def stop(self) -> None:
        pass


def _rank_log_stream():
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            return h.stream
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _config_hash(cfg: Config) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(flat(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Profiler:
    """torch.profiler over profile.steps=[start, end] on rank 0, written for TensorBoard/Chrome."""

    def __init__(self, cfg: Config, run_dir: str):
        self.start, self.end = cfg.profile.steps
        self.dir = os.path.join(run_dir, "profile")
        self.prof = None

    def step(self, step: int) -> None:
        if step == self.start and self.prof is None:
            acts = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=acts, record_shapes=True,
                                               on_trace_ready=torch.profiler.tensorboard_trace_handler(self.dir))
            self.prof.__enter__()
        elif step == self.end:
            self.close()

    def close(self) -> None:
        if self.prof is not None:
            self.prof.__exit__(None, None, None)
            self.prof = None
            log.info("profiler trace written to %s", self.dir)

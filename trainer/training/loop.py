"""The training loop: ``Trainer`` receives its parts ready made and runs them in small verbs.

The hot path of one optimizer step is: next micro-batches (already on device), forward under autocast,
backward (scaled), gradient norm/clip, optimizer step, scheduler step. Host syncs (loss to the host,
metric all-reduce, checkpoint, signal agreement) happen only at their own intervals, in ``_after_step``.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Optional

import torch

from .. import checkpoint as ckpt
from ..config import Config, ConfigError, active_trackers, batch_plan
from ..data.collate import to_device
from ..data.loaders import BatchSource
from ..data.sampler import GlobalBatchSampler, eval_shards
from ..data.stream import Stream, StreamBatches
from ..exitcodes import INTERNAL, NONFINITE, OK, PREEMPTED
from ..models.outputs import ModelIO, split_output
from ..runtime import dist, io_faults
from ..runtime.logs import rank_log_stream
from ..runtime.memory import write_memory_dump
from ..runtime.signals import PreemptionWatch
from ..runtime.watchdog import NoWatchdog, Watchdog
from . import resume
from .checkpointer import Checkpointer
from .ending import Ending, format_eval
from .monitor import Monitor
from .observe import provenance
from .observe.metrics import Metrics, Stopwatch, peak_flops, read_history, trim_rows
from .observe.profiler import Profiler
from .observe.segments import Segments
from .observe.trackers import Trackers
from .optim import build_scheduler
from .strategy import Strategy
from .tally import make_tally
from .tasks import IGNORE, Objective, eval_result, lm_loss_sum

log = logging.getLogger("trainer")


class Trainer:
    """Runs ``fit()`` over parts built elsewhere (``trainer.run.build``): the strategy-wrapped model, its
    optimizer, the datasets and their ``DataInfo``, and the run directory. It owns the schedule, the
    progress counters, metrics, preemption and the hang watchdog; it builds two collaborators and hands each
    the state it needs: ``checkpointer`` (when and what to save, resume) and ``ending`` (the verdict after
    each evaluation, whether the result is finite, the summary).

    ``state_dict()`` / ``load_state_dict()`` cover the loop's own state (scheduler, scaler, progress, the
    monitor); the model and optimizer state comes from the strategy, which knows how it is sharded.

    ``io`` says how a batch goes into the model (``trainer.models.outputs.ModelIO``: positional tensor or
    keyword dict, the target as ``model.target_arg``); ``objective`` what the step minimises and eval
    reports (``trainer.training.tasks.Objective``). Both default to the built-in models' plain path.
    """

    def __init__(
        self,
        cfg: Config,
        state: dist.DistState,
        strategy: Strategy,
        optimizer,
        train_ds,
        eval_ds,
        info,
        run_dir: str,
        flops_per_sample: Optional[float] = None,
        io: Optional[ModelIO] = None,
        objective: Optional[Objective] = None,
    ):
        self.io = io or ModelIO()
        self.objective = objective or Objective(info.task)
        self.cfg, self.state, self.strategy, self.optimizer = cfg, state, strategy, optimizer
        self.train_ds, self.eval_ds, self.info = train_ds, eval_ds, info
        self.run_dir = run_dir
        self.device = state.device
        t, d = cfg.train, cfg.data
        pin = d.pin_memory and self.device.type == "cuda"
        # the data is split over the data-parallel ranks; tensor-parallel peers read the same micro-batches
        self.batch = batch_plan(cfg, state.dp_size)
        self.stream = isinstance(train_ds, Stream)  # an IterableDataset or shard glob (data/stream.py)
        self.sampler: Optional[GlobalBatchSampler] = None
        if self.stream:
            self.batches = StreamBatches(
                train_ds,
                state.dp_rank,
                state.dp_size,
                self.batch["micro"],
                t.batch_size,
                d.num_workers,
                d.shuffle_buffer,
                cfg.seed,
                pin,
                d.prefetch_factor,
            )
            steps_per_epoch = self.batches.steps_per_epoch
        else:
            self.sampler = GlobalBatchSampler(
                len(train_ds), t.batch_size, self.batch["accum"], state.dp_rank, state.dp_size, cfg.seed
            )
            self.batches = BatchSource(train_ds, self.sampler, d.num_workers, pin, d.prefetch_factor)
            steps_per_epoch = self.sampler.steps_per_epoch
            if d.shuffle_buffer:
                log.warning(
                    "data.shuffle_buffer=%d has no effect: the data is map-style, shuffled whole every epoch",
                    d.shuffle_buffer,
                )
        self.total_steps = t.max_steps or t.epochs * steps_per_epoch
        self.scheduler = build_scheduler(optimizer, cfg, self.total_steps)
        self.progress = ckpt.Progress()
        self.params = [p for p in strategy.module.parameters() if p.requires_grad]
        self.flops_per_sample = flops_per_sample
        self.metrics: Optional[Metrics] = None
        self.preempt = PreemptionWatch(state)
        self.watchdog: Watchdog | NoWatchdog = NoWatchdog()
        self.compile_time_s: Optional[float] = None
        self.last_eval: dict = {}
        self.eval_before: Optional[dict] = None
        # Masked LM data (jsonl): the loss is a mean over the labelled tokens of the whole step, all
        # micro-batches and ranks together, not a mean of per-micro-batch means.
        self._check_unused = True
        self._token_mean = (
            bool(info.extra.get("loss_mask"))
            and self.objective.loss_fn is None
            and not self.objective.loss_key
        )
        eb = cfg.train.eval_before
        self._eval_before = cfg.model.name == "hf" if eb is None else eb
        self.last_loss: Optional[float] = None
        self.monitor = Monitor(cfg, info.task)
        self.provenance: dict = {}
        self._eval_step = -1  # the step of the last evaluation
        self.tally = make_tally(self.device)
        # The collaborators, each handed exactly the state it reads (the loop's own state_dict() through
        # train_state); they share the loop's Progress, Monitor and tally objects, never replace them.
        self.checkpointer = Checkpointer(
            cfg,
            state,
            run_dir,
            strategy=strategy,
            optimizer=optimizer,
            train_state=self,
            progress=self.progress,
            tally=self.tally,
            params=self.params,
            monitor=self.monitor,
            task=info.task,
            data=self.batches if self.stream else None,
        )
        self.segments = Segments()  # the run's time across starts and resumes (summary.json)
        self.ending = Ending(
            cfg,
            state,
            run_dir,
            info=info,
            strategy_mode=strategy.mode,
            progress=self.progress,
            monitor=self.monitor,
            tally=self.tally,
            params=self.params,
            ckpts=self.checkpointer.ckpts,
            segments=self.segments,
        )
        # fp16: a GradScaler (ours or accelerate's) owns overflow: it skips the step and lowers the scale
        self._scaler_owns_overflow = strategy.state_scaler is not None
        self._need_norm = bool(cfg.train.grad_clip) or state.distributed or self._scaler_owns_overflow
        self._schedule_moves = cfg.optim.schedule != "constant" or cfg.optim.warmup_steps > 0
        # per-run loop state, set by _begin
        self._watch = Stopwatch()
        self._since_log = 0
        self._warned_bad = False  # the first skipped step of this process was reported
        self._profiler: Optional[Profiler] = None

    # ------------------------------------------------------------------ step
    def _to_device(self, batch):
        return to_device(batch, self.device, self.device.type == "cuda")

    def _token_scale(self, micro_batches) -> torch.Tensor:
        """world_size / labelled tokens in this step on all ranks: turns each micro-batch's loss sum into
        its share of the step's token mean (DDP and FSDP average gradients over ranks, hence world_size)."""
        count = sum((y != IGNORE).sum() for _, y in micro_batches).double()
        count = dist.all_reduce_sum(self.state, count)
        return self.state.world_size / count.clamp(min=1)

    def _run_step(self, micro_batches) -> None:
        s = self.strategy
        n = len(micro_batches)
        total = None
        wd, step = self.watchdog, self.progress.step + 1  # the step being run, counted from 1
        forward, objective = self.io.forward, self.objective.loss
        scale = self._token_scale(micro_batches) if self._token_mean else None
        parts = []  # each micro-batch's loss: the first skipped step names the one that was not finite
        for i, (x, y) in enumerate(micro_batches):
            with s.sync(i == n - 1):
                wd.mark(step, "forward")
                with s.autocast():
                    out = forward(s.model, x, y)
                if scale is not None:  # masked LM data: a share of the step's token mean
                    loss = lm_loss_sum(split_output(out)[0], y)[0] * scale
                else:
                    loss = objective(out, y)
                    if n > 1:
                        loss = loss / n
                if self._check_unused and i == 0:  # once: a loss without a gradient is exit 2
                    self.objective.check_trains(out, loss)
                wd.mark(step, "backward")
                s.backward(loss)
            parts.append(loss.detach())
            total = loss.detach() if total is None else total + loss.detach()
        if self._check_unused:  # once: DDP cannot reduce a parameter that forward never used
            self._check_unused = False
            s.check_unused_parameters()
        wd.mark(step, "optimizer")
        # Distributed: the all-reduced gradients are what every rank agrees on (a NaN on one rank's loss
        # reaches the others only through them). fp16: the scaler owns overflow; the loss decides.
        norm = s.grad_norm(self.optimizer, self.params, self.cfg.train.grad_clip) if self._need_norm else None
        check_norm = norm is not None and not self._scaler_owns_overflow
        if self.tally.on_host:  # CPU: no device to wait for, so reading the loss here costs nothing
            value = total.item()
            ok = math.isfinite(value) and (not check_norm or math.isfinite(norm.item()))
        else:
            value = total
            ok = torch.isfinite(total) & torch.isfinite(norm) if check_norm else torch.isfinite(total)
        if self.tally.on_host and not ok and not self._warned_bad:
            self._warn_first_bad(step, parts)
        if self.checkpointer.fence is not None:  # an async save is still copying the weights it writes
            self.checkpointer.fence()
            self.checkpointer.fence = None
        s.optimizer_step(self.optimizer, ok)
        self.optimizer.zero_grad(set_to_none=True)
        if self._schedule_moves:
            self.scheduler.step()
        self.tally.add(value, ok)

    def _warn_first_bad(self, step: int, parts: list, where: str = "") -> None:
        """Once per run: the first skipped step, and the micro-batch whose loss was not finite."""
        self._warned_bad = True
        bad = [i + 1 for i, p in enumerate(parts) if not bool(torch.isfinite(p))]
        what = f"loss of micro-batch {bad[0]} of {len(parts)}" if bad else "gradient norm"
        log.warning(
            "step %s%s: non-finite %s: step skipped (parameters unchanged); later skipped steps are counted "
            "as bad_steps in metrics.jsonl (the run stops after train.max_bad_steps=%d in a row, or more "
            "than train.max_bad_fraction=%g of its steps)",
            step,
            where,
            what,
            self.cfg.train.max_bad_steps,
            self.cfg.train.max_bad_fraction,
        )

    def _count_bad(self) -> int:
        """Progress.bad_steps brought up to date (on CUDA, one sync: log and checkpoint intervals only)."""
        new = self.tally.take_bad()
        if new and not self._warned_bad:  # CUDA: the step is known only to within the log interval
            first = self.progress.step - self._since_log + 1
            self._warn_first_bad(first, [], f" (or a later one up to step {self.progress.step})")
        self.progress.bad_steps += new
        return self.progress.bad_steps

    def _timed_step(self, micro) -> None:
        """One step; the first compiled step is timed apart (compile included) and the watchdog paused."""
        first_compiled = self.compile_time_s is None and self.cfg.train.compile
        t_step = time.perf_counter() if first_compiled else None
        self.watchdog.pause(first_compiled)  # compiling may take minutes on one rank
        try:
            self._run_step(micro)
        except torch.cuda.OutOfMemoryError:
            write_memory_dump(self.run_dir, self.state.rank, self.progress.step + 1)
            raise
        if t_step is not None:
            self.watchdog.pause(False)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.compile_time_s = time.perf_counter() - t_step
            log.info("first compiled step (compile included) took %.2fs", self.compile_time_s)
            self._watch.reset()

    # ------------------------------------------------------------------ logging
    def _log(self) -> bool:
        """Pull metrics to the host (the one sync per interval). Returns False if the run must stop."""
        steps, watch = self._since_log, self._watch
        bad_steps = self._count_bad()  # before the reset: on CUDA it names the window's steps
        self._since_log = 0
        self.watchdog.mark(self.progress.step, "log")
        if self.state.is_main:
            io_faults.require_dir(self.run_dir)  # a deleted run dir is an error, not silently written into
        if self.tally.on_host and not self.state.distributed:
            loss_sum, good, bad = self.tally.take()  # one CPU process: nothing to reduce
        else:
            loss_sum, good, bad_max = self.tally.pull()
            stats = dist.all_reduce_sum(self.state, torch.stack([loss_sum.double(), good.double()]))
            loss_sum, good = stats.tolist()
            both = torch.stack([bad_max.double().cpu(), torch.tensor(float(bad_steps), dtype=torch.float64)])
            bad, bad_steps = (int(v) for v in dist.all_reduce_max(self.state, both).tolist())
            self.progress.bad_steps = bad_steps
        elapsed = max(watch.elapsed(), 1e-9)
        self.segments.add_compute(elapsed)
        B = self.cfg.train.batch_size
        row = {
            "step": self.progress.step,
            "epoch": self.progress.epoch,
            "loss": loss_sum / good if good else float("nan"),
            "lr": self.scheduler.get_last_lr()[0],
            "samples_per_s": B * steps / elapsed,
            "step_time_s": elapsed / steps,
            "data_wait_frac": watch.data_s / elapsed,
            "bad_steps": bad_steps,  # skipped for a non-finite loss since the start of the run
            "time": round(time.time(), 3),  # when the row was made (the writer thread writes it later)
        }
        if self.info.task == "lm":
            row["tokens_per_s"] = row["samples_per_s"] * self.info.seq_len
        if self.device.type == "cuda":
            row["gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            peak = peak_flops(torch.cuda.get_device_name(self.device), self.cfg.train.precision)
            if peak and self.flops_per_sample:
                row["mfu"] = self.flops_per_sample * row["samples_per_s"] / (peak * self.state.world_size)
        if self.metrics:
            row.update(self.metrics.process_stats())
            self.metrics.log_train(row)
        self.last_loss = row["loss"]
        watch.reset()
        if bad > self.cfg.train.max_bad_steps:
            if self.metrics:
                self.metrics.flush()  # the rows first, then the line that says why the run stops
            log.error(
                "loss was non-finite for %d consecutive steps (train.max_bad_steps=%d): stopping at step %d; "
                "the last good checkpoint is %s",
                int(bad),
                self.cfg.train.max_bad_steps,
                self.progress.step,
                self.checkpointer.ckpts.latest_pointer() or "none (checkpoint.every_steps=0)",
            )
            return False
        t = self.cfg.train
        if bad_steps > t.max_bad_steps and bad_steps > t.max_bad_fraction * self.progress.step:
            if self.metrics:
                self.metrics.flush()
            log.error(
                "%d of %d steps were skipped for a non-finite loss, more than train.max_bad_fraction=%g: "
                "stopping at step %d; the last good checkpoint is %s",
                bad_steps,
                self.progress.step,
                t.max_bad_fraction,
                self.progress.step,
                self.checkpointer.ckpts.latest_pointer() or "none (checkpoint.every_steps=0)",
            )
            return False
        return True

    # ------------------------------------------------------------------ eval
    @torch.no_grad()
    def evaluate(self) -> dict:
        if len(self.eval_ds) == 0:  # data.eval_fraction=0: no metric, rather than accuracy 0.0 on 0 samples
            return {}
        s = self.strategy
        self.watchdog.mark(self.progress.step, "eval")
        s.model.eval()
        bs = self.cfg.train.eval_batch_size
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss sum, weight, correct, samples
        for idx, valid in eval_shards(len(self.eval_ds), bs, self.state.dp_rank, self.state.dp_size):
            x, y = self._to_device(self.eval_ds.get_batch(idx))
            with s.autocast():
                out = self.io.forward(s.model, x, y)
            sums += self.objective.eval_sums(out, y, valid)
        s.model.train()
        dist.all_reduce_sum(self.state, sums)
        if self.strategy.plan.tp > 1:  # tensor-parallel peers scored the same samples
            sums /= self.strategy.plan.tp
        res = eval_result(self.info.task, *sums.tolist())
        self.last_eval, self._eval_step = res, self.progress.step
        if self.metrics:
            self.metrics.log_eval(self.progress.step, res)
        return res

    # ------------------------------------------------------------------ state, save, resume
    def state_dict(self) -> dict:
        """The loop's own state for a checkpoint (the model and optimizer come from the strategy)."""
        self._count_bad()
        return {
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.strategy.state_scaler.state_dict() if self.strategy.state_scaler else None,
            "progress": vars(self.progress).copy(),
            "monitor": {
                "best": self.monitor.best,
                "best_step": self.monitor.best_step,
                "since_best": self.monitor.since_best,
            },
            "eval_before": self.eval_before,  # so a resumed run still reports it
            # the steps since the last log row are compute not counted yet
            "segments": self.segments.state_dict(
                self.progress.step, self._watch.elapsed() if self._since_log else 0.0
            ),
        }

    def load_state_dict(self, sd: dict) -> None:
        self.scheduler.load_state_dict(sd["scheduler"])
        if self.strategy.state_scaler is not None and sd.get("scaler"):
            self.strategy.state_scaler.load_state_dict(sd["scaler"])
        # in place: the checkpointer and the ending hold this same Progress
        vars(self.progress).update(vars(ckpt.Progress(**sd["progress"])))
        mon = sd.get("monitor") or {}  # checkpoints from before checkpoint.monitor have none
        self.monitor.best, self.monitor.best_step = mon.get("best"), mon.get("best_step")
        self.monitor.since_best = mon.get("since_best", 0)
        self.eval_before = sd.get("eval_before")
        self.segments.load_state_dict(sd.get("segments"))
        w = sd.get("window")  # older checkpoints have none: the next row then covers fewer steps
        if w:
            # per step (every rank holds the same share, at any world size); older: summed over ranks
            mine = w.get("per") == "step" or self.state.is_main
            self.tally.restore(
                *(x if mine else 0 for x in (w["loss"], w["good"], w["bad_run"])), w["bad_max"]
            )

    def resume_from(self, path: str) -> None:
        """Resume from a checkpoint; allowed config changes take effect (hyperparameters, the LR schedule)."""
        changed = self.checkpointer.resume_from(path)
        self.scheduler = resume.apply(
            changed,
            self.scheduler,
            self.optimizer,
            self.strategy.module,
            self.cfg,
            self.total_steps,
            self.progress.step,
        )

    def save(self, final: bool = False) -> Optional[str]:
        """Checkpoint the current step (with this step's evaluation, if one ran, for the best-K monitor)."""
        evaluated = self.last_eval if self._eval_step == self.progress.step else None
        return self.checkpointer.save(final, evaluated)

    # ------------------------------------------------------------------ fit
    def fit(self) -> int:
        """Train to ``total_steps`` (or until preempted / diverged); returns the exit code."""
        p = self.progress
        if p.step >= self.total_steps:
            log.info("run already complete: step %d of %d; nothing to do", p.step, self.total_steps)
            self.ending.complete_outputs(self.total_steps, self.eval_before)
            return OK
        self._begin()
        if self._eval_before and p.step == 0 and self.eval_before is None:
            self.eval_before = self.evaluate()
            self.strategy.model.train()
            log.info("eval before training: %s", format_eval(self.eval_before))
        self.segments.start(p.step, self.provenance["start_time"], time.perf_counter())
        code, ended = OK, False
        try:
            while p.step < self.total_steps and code == OK and not self.ending.stopped_early:
                code = self._run_epoch()
            if code == OK:
                code = self._end()
            elif code == PREEMPTED:
                log.warning(
                    "preempted by signal: checkpoint at step %d saved; rerun the same command to resume",
                    p.step,
                )
            ended = True
        except RuntimeError as e:
            if not dist.is_peer_lost(e):
                raise
            raise dist.PeerLost(self.watchdog.lost_peers(e)) from None
        finally:
            self._close(code if ended else INTERNAL)  # the trackers' runs end FAILED on an exception
        return code

    def _begin(self) -> None:
        cfg = self.cfg
        if self.state.is_main:
            trim_rows(self.run_dir, self.progress.step)
        self.provenance = provenance.collect(self.state)  # collective: every rank's host name
        trackers = None
        if self.state.is_main:
            trackers = Trackers(active_trackers(cfg), self.run_dir, cfg, self.provenance, self.progress.step)
        self.metrics = Metrics(
            self.run_dir, self.state.is_main, cfg.log.progress, self.total_steps, self.progress.step, trackers
        )
        read_history(self.metrics)
        self.preempt.install()
        if self.state.distributed:
            self.watchdog = Watchdog(self.state, cfg.dist.collective_timeout_s, rank_log_stream())
            self.watchdog.start()
        self.checkpointer.watch(self.metrics.flush, self.watchdog.mark)
        self._watch = Stopwatch()
        self._since_log = 0
        self.strategy.model.train()
        if len(self.eval_ds) == 0:
            if self.stream:
                log.info("no evaluation: a stream has no held-out split (give eval_data= or data.eval_path)")
            else:
                log.info(
                    "no evaluation: the eval split is empty (data.eval_fraction=%s)", cfg.data.eval_fraction
                )
        if cfg.profile.steps and self.state.is_main:
            self._profiler = Profiler(cfg.profile.steps, self.run_dir)

    def _run_epoch(self) -> int:
        """The rest of the current epoch (all of it unless resumed mid-epoch); returns the exit code."""
        p, t = self.progress, self.cfg.train
        if self.stream:
            batches = self.batches.epoch_iter(p.epoch, p.samples_in_epoch)
        else:
            self.sampler.set_position(p.epoch, p.samples_in_epoch)
            self.train_ds.set_epoch(p.epoch)
            batches = self.batches.epoch_iter()
        ended = False
        while p.step < self.total_steps:
            self.watchdog.mark(p.step + 1, "data")
            t_data = time.perf_counter()
            micro = self._draw(batches)
            if micro is None:
                ended = True
                break
            self._watch.data_s += time.perf_counter() - t_data
            if self._profiler:
                self._profiler.step(p.step)
            self._timed_step(micro)
            p.step += 1
            p.samples_in_epoch += t.batch_size
            p.samples_total += t.batch_size
            self._since_log += 1
            code = self._after_step()
            if code != OK or self.ending.stopped_early:
                return code
        if self.stream and ended:
            if p.samples_in_epoch == 0:
                raise ConfigError(
                    f"data.name={self.cfg.data.name!r}: the stream ended without one full step in epoch "
                    f"{p.epoch} (train.batch_size={t.batch_size} samples across all processes)"
                )
            log.info(
                "data: epoch %d of the stream ended after %d samples (step %d); the next pass starts",
                p.epoch,
                p.samples_in_epoch,
                p.step,
            )
            p.epoch += 1
            p.samples_in_epoch = 0
        elif not self.stream and p.samples_in_epoch >= self.sampler.steps_per_epoch * t.batch_size:
            p.epoch += 1
            p.samples_in_epoch = 0
        return OK

    def _draw(self, batches) -> Optional[list]:
        """This step's micro-batches on device, or None at the end of the epoch. A stream may run out on
        one rank before the others: the ranks agree on every step (one flag all-reduced on the side group)
        and stop together, so none waits for a peer that has no batch (a partial global step is not
        trained, as the map-style sampler drops the last partial batch)."""
        try:
            micro = [self._to_device(next(batches)) for _ in range(self.batch["accum"])]
        except StopIteration:
            micro = None
        if self.stream and self.state.distributed:
            if not dist.all_true(self.state, micro is not None):
                if micro is not None:
                    log.info("data: another rank's stream ran out; this rank ends the epoch with it")
                return None
        return micro

    def _after_step(self) -> int:
        """Log, eval, save and the preemption check, each at its own interval; returns the exit code."""
        p, cfg = self.progress, self.cfg
        code = OK
        # rows on multiples of log.every_steps (not "every N since the last row"): a resumed run logs the
        # same steps as an uninterrupted one
        if p.step % cfg.log.every_steps == 0 or p.step == self.total_steps:
            if not self._log():
                code = NONFINITE
        t_side = time.perf_counter()
        every = cfg.train.eval_every_steps
        best = False
        if code == OK and every and p.step % every == 0 and p.step < self.total_steps:
            best = self.ending.judge(self.evaluate(), self.metrics)
        self.checkpointer.poll(p.step)
        self.watchdog.mark(p.step, "agree")  # the preemption all-reduce (side group)
        stop = code != OK or self.preempt.agreed()
        if stop and code == NONFINITE:  # commit an in-flight (good) write; no checkpoint of the bad state
            self.checkpointer.finish(p.step)
        elif stop:
            self.save(final=True)
        elif best or (cfg.checkpoint.every_steps and p.step % cfg.checkpoint.every_steps == 0):
            self.save()
        self._watch.exclude(t_side)  # eval and checkpoint time is not step time
        if stop and code == OK:
            code = PREEMPTED
        return code

    def _end(self) -> int:
        """A run that reached its last step (or stopped early): last log row, final eval, final checkpoint,
        summary. Returns NONFINITE (no final checkpoint, no export) when the result is not finite."""
        step, ending = self.progress.step, self.ending
        if self._since_log:
            self._log()
        if self._eval_step != step:
            ending.judge(self.evaluate(), self.metrics, final=True)
        problem = ending.problem(self.last_loss, self.last_eval)
        if not problem and self.checkpointer.saved_at != step:
            self.save(final=True)
        self.checkpointer.finish(step)
        if problem:
            log.error(
                "the run is not a result: %s; no final checkpoint or weights were written (the last good "
                "checkpoint is %s)",
                problem,
                self.checkpointer.latest(),
            )
        ending.finish(
            self.metrics,
            self.last_loss,
            self.last_eval,
            self.eval_before,
            self.compile_time_s,
            self.provenance,
        )
        return NONFINITE if problem else OK

    def _close(self, code: int) -> None:
        self.checkpointer.close()
        if self._profiler:
            self._profiler.close()
        self.preempt.uninstall()
        self.watchdog.stop()
        if self.metrics:
            self.metrics.close(self.ending.summary, code)

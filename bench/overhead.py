"""CPU overhead of the trainer against a hand-written PyTorch loop, accelerate and Lightning Fabric.

    python -m bench.overhead                      # all sections, ~3 min on 2 idle cores (15+ when busy)
    python -m bench.overhead --quick              # one run per section, half the steps (~1 min idle)
    python -m bench.overhead --only mlp --rounds 5
    python -m bench.overhead --smoke              # seconds (CI)

Sections:
  mlp       per-step overhead in µs on a 784->32->10 MLP, batch 64 (digits, SGD momentum, fp32): raw loop,
            trainer, accelerate (Accelerator(cpu=True)) and Lightning Fabric (accelerator="cpu") loops, and
            the trainer with train.strategy=accelerate; target: trainer - raw <= +20 µs
  cnn, gpt  trainer / raw step-time ratio on configs/cnn.yaml and configs/gpt.yaml (batch 8); target <= 1.02
  hotpath   where the trainer's step time goes (real step vs raw vs lean, operators, Python functions, one
            log step, micro-timings behind the suggestions)

The trainer side is `trainer.run.train(cfg)`, the same build and `Trainer.fit` as `python -m trainer
train`, with the periodic eval and checkpoint off (their cost is not per step; bench.checkpoint measures
saving) and everything else as the recipe says (log.every_steps, TensorBoard). The raw side builds the same
data, model (same seed) and optimizer with the trainer's builders and runs the loop a user would write:
same sample order, the LR schedule written by hand, loss.item() at the same log interval.

Interleaving is per step: inside each trainer step one iteration of every raw loop runs too (before the
trainer's step on even steps, after it on odd ones), so noise from other jobs on the machine falls on both
sides of every pair. A figure is the median over steps (log steps excluded, warm-up dropped) of one run, then
the median over runs with the range beside it; "vs raw" is the median of per-step differences. "mean vs raw"
is what wall-clock pays: mean(trainer) - mean(raw) over the same steps of one run, log steps in (the issue's
figure, target <= +20 µs at the default log.every_steps), median over runs. CPU time
(this thread's, time.thread_time) is reported beside wall time: waiting for a core does not count in it.
The JSON is rewritten after every run, so a timeout keeps every finished run; the table's last line says
whether a core was free (load average and idle time of the machine while it ran).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Optional

from . import common as B

SECTIONS = ("mlp", "cnn", "gpt", "hotpath")
MLP = ["model.name=mlp", "model.hidden=[32]", "model.dropout=0.0", "optim.name=sgd", "optim.lr=0.05",
       "optim.momentum=0.9", "train.batch_size=64"]
GPT_FULL = ["train.batch_size=8"]  # configs/gpt.yaml at a quarter of its batch: ~0.15 s/step on one thread
GPT_SMOKE = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.block_size=32",
             "train.batch_size=8", "data.max_bytes=100000"]


# ----------------------------------------------------------------------------- the two sides


def lr_multiplier(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """The schedule a user writes by hand (nanoGPT style): linear warmup, then cosine to min_ratio."""
    import math

    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class RawLoop:
    """The loop a user writes by hand, advanced one iteration per ``step()`` call.

    Same data (the trainer's dataset builder and sample order), model (builder and seed) and optimizer as the
    trainer; the LR schedule written by hand; ``loss.item()`` at the trainer's log interval. ``flavor``:
    raw | accelerate (Accelerator(cpu=True)) | fabric (Fabric(accelerator="cpu")).
    """

    def __init__(self, recipe: str, extra: list[str], total_steps: int, flavor: str = "raw"):
        import torch
        import torch.nn.functional as F

        from trainer.data import build_datasets
        from trainer.data.sampler import epoch_permutation
        from trainer.models import build_model

        cfg = B.load_cfg(recipe, extra + ["device=cpu"])
        o, t = cfg.optim, cfg.train
        torch.manual_seed(cfg.seed)
        self.ds, _, info = build_datasets(cfg)
        model = build_model(cfg, info)
        torch.manual_seed(cfg.seed + 1)
        if o.name == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum,
                                  weight_decay=o.weight_decay)
        else:
            cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
            opt = cls(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                      weight_decay=o.weight_decay)
        self.backward = None
        if flavor == "accelerate":
            from accelerate import Accelerator

            acc = Accelerator(cpu=True)
            model, opt = acc.prepare(model, opt)
            self.backward = acc.backward
        elif flavor == "fabric":
            from lightning_fabric import Fabric

            fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
            model, opt = fabric.setup(model, opt)
            self.backward = fabric.backward
        model.train()
        self.model, self.opt, self.cfg, self.F, self.torch = model, opt, cfg, F, torch
        self.lm = info.task == "lm"
        self.scheduled = bool(o.warmup_steps) or o.schedule != "constant"
        self.total, self.every = total_steps, cfg.log.every_steps
        self.batch, self.n = t.batch_size, len(self.ds)
        self.per_epoch = self.n // self.batch
        self.perm = lambda epoch: epoch_permutation(self.n, cfg.seed, epoch)
        self.step_no, self.epoch, self.order = 0, 0, self.perm(0)
        self.data_s: list[float] = []  # the batch fetch part of each iteration

    def step(self) -> None:
        o, t, F = self.cfg.optim, self.cfg.train, self.F
        i = self.step_no % self.per_epoch
        if self.step_no and i == 0:
            self.epoch += 1
            self.order = self.perm(self.epoch)
        t0 = time.perf_counter()
        x, y = self.ds.get_batch(self.order[i * self.batch:(i + 1) * self.batch].tolist())
        self.data_s.append(time.perf_counter() - t0)
        if self.scheduled:
            lr = o.lr * lr_multiplier(self.step_no, o.warmup_steps, self.total, o.schedule, o.min_lr_ratio)
            for g in self.opt.param_groups:
                g["lr"] = lr
        out = self.model(x)
        loss = F.cross_entropy(out.flatten(0, 1), y.flatten()) if self.lm else F.cross_entropy(out, y)
        self.opt.zero_grad(set_to_none=True)
        if self.backward is None:
            loss.backward()
        else:
            self.backward(loss)
        if t.grad_clip > 0:
            self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.opt.step()
        self.step_no += 1
        if self.step_no % self.every == 0:
            loss.item()  # what a hand-written loop prints at its log interval


class TimedBatches:
    """The trainer's ``BatchSource``, recording the wall time of every ``next()`` on its epoch iterators."""

    def __init__(self, inner, data: list[float]):
        self.inner, self.data = inner, data

    def epoch_iter(self):
        it, data, wall = self.inner.epoch_iter(), self.data, time.perf_counter
        while True:
            t0 = wall()
            try:
                b = next(it)
            except StopIteration:
                return
            data.append(wall() - t0)
            yield b


class Interleaved:
    """Runs one iteration of every raw loop inside each ``Trainer._run_step`` call of a trainer built from
    ``trainer_cls()``, so each trainer step has raw steps next to it in time: noise from other jobs lasting
    longer than a step hits both sides alike.

    Trainer step i is the interval between the starts of calls i and i+1 (its data fetch, step, loop
    bookkeeping and any log) minus the raw iterations run inside call i. The raw loops go before the trainer's
    step on even calls and after it on odd ones, and their order rotates, so no side always runs first.
    """

    def __init__(self, loops: dict[str, RawLoop]):
        self.loops = loops
        self.stamps: list[float] = []
        self.cpu: list[float] = []
        self.inserted: list[float] = []
        self.inserted_cpu: list[float] = []
        self.in_step: list[float] = []  # wall time inside the trainer's own _run_step
        self.data: list[float] = []  # wall time of each next() on the trainer's batch iterator
        self.raw: dict[str, list[float]] = {k: [] for k in loops}
        self.raw_cpu: dict[str, list[float]] = {k: [] for k in loops}
        self.side_cpu: list[float] = []  # CPU seconds of the trainer's other threads, read at its close

    def trainer_cls(self) -> type:
        """A ``Trainer`` subclass whose batches are timed and whose steps run the raw loops beside them."""
        from trainer.training.loop import Trainer

        wall, thread = time.perf_counter, time.thread_time
        names = list(self.loops)
        stamps, cpu, in_step, inserted, inserted_cpu = (self.stamps, self.cpu, self.in_step, self.inserted,
                                                        self.inserted_cpu)
        loops, raw, raw_cpu, data = self.loops, self.raw, self.raw_cpu, self.data
        side_cpu = self.side_cpu

        def run_raw() -> tuple[float, float]:
            # One clock pair around all of it: the bookkeeping here is charged to neither side.
            a, c = wall(), thread()
            for name in B.rotate(names, len(stamps)):
                a1, c1 = wall(), thread()
                loops[name].step()
                raw[name].append(wall() - a1)
                raw_cpu[name].append(thread() - c1)
            return wall() - a, thread() - c

        class InterleavedTrainer(Trainer):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.batches = TimedBatches(self.batches, data)

            def _close(self, code: int) -> None:
                # CPU the trainer spent in its other threads (metrics writer, TensorBoard's writer): the
                # wall-clock figures only see it as it steals the step thread's core
                if self.metrics:
                    self.metrics.flush()
                side_cpu.append(sum(_thread_cpu(t) for t in threading.enumerate()
                                    if t is not threading.main_thread()))
                super()._close(code)

            def _run_step(self, micro_batches) -> None:
                stamps.append(wall())
                cpu.append(thread())
                before = len(stamps) % 2 == 0
                tw, tc = run_raw() if before else (0.0, 0.0)
                t0 = wall()
                super()._run_step(micro_batches)
                in_step.append(wall() - t0)
                if not before:
                    tw, tc = run_raw()
                inserted.append(tw)
                inserted_cpu.append(tc)

        return InterleavedTrainer

    def trainer_steps(self) -> tuple[list[float], list[float]]:
        iv = [b - a - x for a, b, x in zip(self.stamps, self.stamps[1:], self.inserted)]
        ic = [b - a - x for a, b, x in zip(self.cpu, self.cpu[1:], self.inserted_cpu)]
        return iv, ic


def _thread_cpu(t: threading.Thread) -> float:
    """CPU seconds a live thread has used (Linux: its pthread CPU clock); 0 if it is gone."""
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(t.ident))
    except (OSError, AttributeError, TypeError, OverflowError):
        return 0.0


def summarize(wall: list[float], cpu: list[float], every: int, warmup: int,
              base: Optional[list[float]] = None, base_cpu: Optional[list[float]] = None,
              side_cpu_per_step: float = 0.0) -> dict:
    """Medians over non-log steps after warm-up (wall, CPU), the mean with log steps in, the extra cost of a
    log step, and, given a baseline from the same steps, the median of the per-step differences."""
    idx = [i for i in range(warmup, len(wall)) if (i + 1) % every]
    logs = [wall[i] for i in range(warmup, len(wall)) if (i + 1) % every == 0]
    med = B.median(wall[i] for i in idx)
    out = {"median_s": med, "cpu_s": B.median(cpu[i] for i in idx),
           "mean_s": sum(wall[warmup:]) / max(1, len(wall) - warmup),
           "log_extra_s": (B.median(logs) - med) if logs else float("nan"), "steps": len(wall) - warmup}
    if base is not None:
        out["diff_s"] = B.median(wall[i] - base[i] for i in idx)
        # what wall-clock pays: the mean, log steps in, minus the raw loop's mean over the same steps
        out["mean_diff_s"] = out["mean_s"] - sum(base[warmup:]) / max(1, len(base) - warmup)
        # the same in CPU time, other threads' CPU spread over every step: what a core pays, unmoved by
        # waits for a core on a loaded machine (which swing the wall-clock mean by +-100 µs there)
        n = max(1, len(cpu) - warmup)
        out["mean_cpu_diff_s"] = (sum(cpu[warmup:]) / n + side_cpu_per_step) - sum(base_cpu[warmup:]) / n
        out["diff_cpu_s"] = B.median(cpu[i] - base_cpu[i] for i in idx)
        out["ratio"] = med / B.median(base[i] for i in idx)
        out["cpu_ratio"] = out["cpu_s"] / B.median(base_cpu[i] for i in idx)
    return out


def trainer_overrides(run_dir: str, steps: int, smoke: bool) -> list[str]:
    over = [f"run.dir={run_dir}", f"train.max_steps={steps}", "train.eval_every_steps=0",
            "checkpoint.every_steps=0", "log.progress=off", "log.plot=false", "device=cpu"]
    return over + (["log.tensorboard=false"] if smoke else [])


def run_interleaved(recipe: str, extra: list[str], steps: int, warmup: int, flavors: list[str], smoke: bool,
                    strategy: Optional[str] = None) -> dict[str, dict]:
    """One `train(cfg)` run with the raw loops interleaved step by step; summaries keyed by variant."""
    loops = {f: RawLoop(recipe, extra, steps + 1, f) for f in flavors}
    tmp = tempfile.mkdtemp(prefix="bench-overhead-")
    try:
        over = trainer_overrides(os.path.join(tmp, "run"), steps + 1, smoke)
        cfg = B.load_cfg(recipe, extra + over + ([f"train.strategy={strategy}"] if strategy else []))
        clock = Interleaved(loops)
        B.run_train(cfg, clock.trainer_cls())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    every = cfg.log.every_steps
    wall, cpu = clock.trainer_steps()
    n = len(wall)
    base, base_cpu = clock.raw["raw"][:n], clock.raw_cpu["raw"][:n]
    t_name = f"trainer[{strategy}]" if strategy else "trainer"
    side = sum(clock.side_cpu) / max(1, len(clock.stamps))  # spread over every step the trainer ran
    out = {t_name: summarize(wall, cpu, every, warmup, base, base_cpu, side)}
    for f in flavors:
        out[f] = summarize(clock.raw[f][:n], clock.raw_cpu[f][:n], every, warmup, base, base_cpu)
    # Split each side into the step itself and what surrounds it (data fetch; for the trainer also fit's
    # own per-step code), medians over non-log steps.
    idx = [i for i in range(warmup, n) if (i + 1) % every]
    out[t_name]["in_step_s"] = B.median(clock.in_step[i] for i in idx)
    out[t_name]["outside_s"] = B.median(wall[i] - clock.in_step[i] for i in idx)
    # data[j] is the fetch for step j (fetched before it); with grad_accum 1 there is one per step
    out[t_name]["data_s"] = B.median(clock.data[i + 1] for i in idx if i + 1 < len(clock.data))
    for f in flavors:
        d = loops[f].data_s
        out[f]["in_step_s"] = B.median(clock.raw[f][i] - d[i] for i in idx)
        out[f]["outside_s"] = out[f]["data_s"] = B.median(d[i + 1] for i in idx if i + 1 < len(d))
    return out


def compare(section: str, recipe: str, extra: list[str], plan: list[tuple[Optional[str], list[str]]],
            steps: int, warmup: int, rounds: int, smoke: bool,
            on_run: Optional[Callable[[dict], None]] = None) -> dict[str, list[dict]]:
    """``rounds`` x every (strategy, raw flavors) run in ``plan``; per-variant lists of run summaries.
    ``on_run(runs)`` after every run (the caller rewrites its JSON)."""
    runs: dict[str, list[dict]] = defaultdict(list)
    for r in range(rounds):
        for strategy, flavors in plan:
            res = run_interleaved(recipe, extra, steps, warmup, flavors, smoke, strategy)
            key = f"raw[{strategy}]" if strategy else "raw"
            for v, summ in res.items():
                runs[key if v == "raw" and strategy else v].append(summ)
            if on_run is not None:
                on_run(runs)
            line = "  ".join(f"{v} {s['median_s'] * 1e6:.0f}µs" for v, s in res.items())
            print(f"  [{section}] round {r + 1}/{rounds}: {line}", flush=True)
    return runs


def rows_for(runs: dict[str, list[dict]]) -> list[dict]:
    """One row per variant: medians over runs of the per-run figures, and their range over runs."""
    rows = []
    order = ["raw", "trainer", "accelerate", "fabric", "trainer[accelerate]"]
    for v, rs in sorted(runs.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
        if v.startswith("raw["):
            continue
        med = B.spread(x["median_s"] for x in rs)
        d = B.spread(x["diff_s"] for x in rs)
        md = B.spread(x["mean_diff_s"] for x in rs)
        mc = B.spread(x["mean_cpu_diff_s"] for x in rs)
        q = B.spread(x["ratio"] for x in rs)
        qc = B.spread(x["cpu_ratio"] for x in rs)
        rows.append({"variant": v, "runs": len(rs), "steps_per_run": rs[0]["steps"],
                     "step_us": med["median"] * 1e6,
                     "range_us": f"{med['min'] * 1e6:.0f}-{med['max'] * 1e6:.0f}",
                     "vs_raw_us": d["median"] * 1e6,
                     "vs_raw_range": f"{d['min'] * 1e6:+.0f}..{d['max'] * 1e6:+.0f}",
                     "ratio": q["median"], "ratio_range": f"{q['min']:.3f}-{q['max']:.3f}",
                     "cpu_us": B.median(x["cpu_s"] for x in rs) * 1e6,
                     "vs_raw_cpu_us": B.median(x["diff_cpu_s"] for x in rs) * 1e6,
                     "cpu_ratio": qc["median"], "cpu_ratio_range": f"{qc['min']:.3f}-{qc['max']:.3f}",
                     "mean_us": B.median(x["mean_s"] for x in rs) * 1e6,
                     "mean_vs_raw_us": md["median"] * 1e6,
                     "mean_vs_raw_range": f"{md['min'] * 1e6:+.0f}..{md['max'] * 1e6:+.0f}",
                     "mean_cpu_vs_raw_us": mc["median"] * 1e6,
                     "mean_cpu_vs_raw_range": f"{mc['min'] * 1e6:+.0f}..{mc['max'] * 1e6:+.0f}",
                     "in_step_us": B.median(x["in_step_s"] for x in rs) * 1e6,
                     "outside_us": B.median(x["outside_s"] for x in rs) * 1e6,
                     "data_us": B.median(x["data_s"] for x in rs) * 1e6,
                     "log_extra_us": B.median(x["log_extra_s"] for x in rs) * 1e6})
    return rows


# ----------------------------------------------------------------------------- hot-path breakdown


def hotpath(steps: int, rounds: int) -> dict:
    """Where the trainer's step goes on the tiny MLP, on one fixed batch (data excluded), measured on the real
    ``Trainer._run_step`` so the figures follow whatever trainer/training/loop.py holds (its digest is in the
    JSON):

    1. ``ab``: the real step, the raw step and a lean step (the raw step plus the trainer's features done the
       cheapest way: a finite-loss check that skips the update, a loss accumulator, the LR schedule),
       interleaved in blocks; real - lean is what the trainer's implementation costs beyond its features.
    2. ``ops``: aten operators per step (torch.profiler), real vs raw: the extra operators and their time.
    3. ``python``: the Python functions inside the real step (cProfile), time per step.
    4. ``log``: one log step (Trainer._log), with TensorBoard on and off.
    """
    tmp = tempfile.mkdtemp(prefix="bench-hotpath-")
    try:
        cfg = B.load_cfg("mlp", MLP + ["device=cpu", "log.tensorboard=false", f"run.dir={tmp}/run"])
        return B.inside_trainer(cfg, lambda tr: _hotpath(tr, steps, rounds))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _hotpath(tr, steps: int, rounds: int) -> dict:
    import torch
    import torch.nn.functional as F

    cfg = tr.cfg
    opt, model, sched = tr.optimizer, tr.strategy.model, tr.scheduler
    x, y = tr.train_ds.get_batch(list(range(cfg.train.batch_size)))
    pc = time.perf_counter
    acc = torch.zeros(())
    bad = {"run": 0, "max": 0}

    def lean():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if bool(torch.isfinite(loss)):  # CPU: the host knows at once
            opt.step()
            acc.add_(loss.detach())
            bad["run"] = 0
        else:
            bad["run"] += 1
            bad["max"] = max(bad["max"], bad["run"])
        opt.zero_grad(set_to_none=True)
        sched.step()

    def raw():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def real():
        tr._run_step([(x, y)])

    fns = {"Trainer._run_step": real, "lean step (same features)": lean, "raw step": raw}
    times: dict[str, list[float]] = defaultdict(list)
    cpus: dict[str, list[float]] = defaultdict(list)
    block = max(20, steps // 4)
    for r in range(rounds * 4):
        for nm in B.rotate(list(fns), r):
            fn = fns[nm]
            for _ in range(10):
                fn()
            ts, cs = [], []
            for _ in range(block):
                a, c = pc(), time.thread_time()
                fn()
                ts.append(pc() - a)
                cs.append(time.thread_time() - c)
            times[nm].append(B.median(ts))
            cpus[nm].append(B.median(cs))
    ab = []
    for nm, v in times.items():
        sp = B.spread(a - b for a, b in zip(v, times["raw step"]))
        ab.append({"step": nm, "us": B.median(v) * 1e6, "vs_raw_us": sp["median"] * 1e6,
                   "vs_raw_range": f"{sp['min'] * 1e6:+.0f}..{sp['max'] * 1e6:+.0f}",
                   "cpu_us": B.median(cpus[nm]) * 1e6,
                   "cpu_vs_raw_us": B.median(a - b for a, b in zip(cpus[nm], cpus["raw step"])) * 1e6})

    return {"ab": ab, "alternatives": alternatives(tr, 2000 if steps >= 500 else 200),
            "ops": op_diff(real, raw, 50 if steps < 500 else 300),
            "python": python_profile(real, 50 if steps < 500 else 500),
            "log": log_cost(tr, 40 if steps < 500 else 300)}


def alternatives(tr, n: int) -> list[dict]:
    """Micro-timings behind the hot-path choices in docs/performance.md: the same result computed two
    ways."""
    import math

    import torch

    t = torch.tensor(1.5)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in tr.params]
    params = tr.params

    def timeit(fn) -> float:
        for _ in range(min(n, 200)):
            fn()
        ts = []
        for _ in range(n):
            a = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - a)
        return B.median(ts) * 1e6

    rows = [("finite-loss check on CPU", "bool(torch.isfinite(loss))", lambda: bool(torch.isfinite(t)),
             "math.isfinite(loss.item())", lambda: math.isfinite(t.item()))]
    if hasattr(torch.nn.utils, "get_total_norm"):
        for p_, g in zip(params, grads):
            p_.grad = g
        rows.append(("gradient norm without clipping (grad_clip=0 but ddp/fp16 need the norm)",
                     "clip_grad_norm_(params, inf, foreach=True)",
                     lambda: torch.nn.utils.clip_grad_norm_(params, float("inf"), foreach=True),
                     "get_total_norm(grads, foreach=True)",
                     lambda: torch.nn.utils.get_total_norm([p_.grad for p_ in params], foreach=True)))
    out = []
    for what, now, f_now, alt, f_alt in rows:
        a, b = timeit(f_now), timeit(f_alt)
        out.append({"what": what, "now": now, "now_us": a, "alternative": alt, "alt_us": b,
                    "saves_us": a - b})
    for p_ in params:
        p_.grad = None
    return out


def op_diff(real, raw, n: int) -> list[dict]:
    """aten operators per step and their self CPU time (torch.profiler), real step vs raw step.

    The profiler adds a few µs per operator, so the times are inflated alike on both sides; the counts are
    exact. Rows: operators the real step runs more often, or that take longer, sorted by extra time.
    """
    from torch.profiler import ProfilerActivity, profile

    per = {}
    for name, fn in (("real", real), ("raw", raw)):
        for _ in range(20):
            fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n):
                fn()
        per[name] = {e.key: (e.count / n, e.self_cpu_time_total / n) for e in prof.key_averages()}
    rows = []
    for op in set(per["real"]) | set(per["raw"]):
        c1, t1 = per["real"].get(op, (0.0, 0.0))
        c0, t0 = per["raw"].get(op, (0.0, 0.0))
        if c1 > c0 + 1e-9 or t1 - t0 > 3.0:
            rows.append({"op": op, "calls_real": c1, "calls_raw": c0, "self_us_real": t1, "self_us_raw": t0,
                         "extra_us": t1 - t0})
    rows.sort(key=lambda r: -r["extra_us"])
    total1 = sum(t for _, t in per["real"].values())
    total0 = sum(t for _, t in per["raw"].values())
    rows.insert(0, {"op": "(all operators)", "calls_real": sum(c for c, _ in per["real"].values()),
                    "calls_raw": sum(c for c, _ in per["raw"].values()), "self_us_real": total1,
                    "self_us_raw": total0, "extra_us": total1 - total0})
    return rows[:16]


def python_profile(real, n: int) -> list[dict]:
    """cProfile of the real step: functions by own time per step (cProfile adds ~1 µs per call)."""
    import cProfile
    import pstats

    for _ in range(20):
        real()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        real()
    prof.disable()
    st = pstats.Stats(prof)
    rows = []
    for (path, line, fn), (_cc, nc, tt, ct, _callers) in st.stats.items():
        where = os.path.relpath(path, B.ROOT) if path.startswith(B.ROOT) else os.path.basename(path)
        if "site-packages" in path:
            where = path.split("site-packages/")[-1]
        rows.append({"function": f"{where}:{line}({fn})" if line else fn, "calls": nc / n,
                     "own_us": tt / n * 1e6, "cum_us": ct / n * 1e6})
    rows.sort(key=lambda r: -r["own_us"])
    return rows[:14]


def log_cost(tr, n: int) -> list[dict]:
    """What one log step costs: the loop's side (Trainer._log: the host sync, the row, the CPU share, the
    hand-over to the writer thread) and, apart, the writer thread's pass per row (metrics.jsonl, the console
    line, TensorBoard), with the logging handlers `python -m trainer train` installs (stderr here goes to a
    file)."""
    import logging

    from trainer.runtime.logs import add_rank_log, setup_logging
    from trainer.training.observe.metrics import Metrics, Stopwatch, console_sink
    from trainer.training.observe.rowwriter import RowWriter
    from trainer.training.observe.trackers import Trackers

    tmp = tempfile.mkdtemp(prefix="bench-log-")
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    rows = []
    try:
        with open(os.path.join(tmp, "stderr.txt"), "w", encoding="utf-8") as err:
            import contextlib

            with contextlib.redirect_stderr(err):
                setup_logging(0)
                add_rank_log(tmp, 0, 1)
                for tb in (True, False):
                    d = os.path.join(tmp, f"tb{int(tb)}")
                    os.makedirs(d)
                    trackers = Trackers(["tensorboard"] if tb else [], d, tr.cfg, {}, 0)
                    if tb and "tensorboard" not in trackers.open:
                        rows.append({"what": "Trainer._log with TensorBoard", "us": float("nan"),
                                     "note": "tensorboard not installed"})
                        continue
                    tr.metrics = Metrics(d, True, "off", 10**6, 0, trackers)
                    ts = []
                    for k in range(n + 5):
                        watch = Stopwatch()
                        watch.t0 -= 0.01  # a 10 ms window, as if 10 steps had run
                        tr._since_log, tr._watch = 10, watch
                        a = time.perf_counter()
                        tr._log()
                        if k >= 5:
                            ts.append(time.perf_counter() - a)
                    m = tr.metrics
                    m.flush()
                    ps = []
                    for _ in range(n):
                        a = time.perf_counter()
                        m.process_stats()
                        ps.append(time.perf_counter() - a)
                    # the writer thread's pass, timed here on the same rows in batches of 10
                    with open(os.path.join(d, "again.jsonl"), "w", encoding="utf-8") as fh:
                        writer_sinks = {"console": console_sink(True), **trackers.sinks()}
                        w = RowWriter(fh, writer_sinks, interval_s=3600)
                        hist = [("train", r) for r in m.history]
                        per_row = []
                        for i in range(0, len(hist) - 9, 10):
                            a = time.perf_counter()
                            w._write(hist[i:i + 10])
                            per_row.append((time.perf_counter() - a) / 10)
                        w.close()
                    tb_writer = trackers.open["tensorboard"].writer if tb else None
                    alt = _tb_alternative(tb_writer, m.history[-1], n) if tb else []
                    m.close()
                    rows.append({"what": f"Trainer._log (the loop's side), log.tensorboard={str(tb).lower()}",
                                 "us": B.median(ts) * 1e6})
                    sinks = "jsonl + console" + (" + TensorBoard" if tb else "")
                    rows.append({"what": f"  writer thread, per row ({sinks})",
                                 "us": B.median(per_row) * 1e6})
                    rows += alt
                    if not tb:
                        rows.append({"what": "  of which process_stats() (rss at most 1/s + CPU share)",
                                     "us": B.median(ps) * 1e6})
        tr.metrics = None
    finally:
        for h in list(root.handlers):
            if h not in saved[0]:
                h.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        shutil.rmtree(tmp, ignore_errors=True)
    for r in rows:
        r["per_step_us_at_every_10"] = r["us"] / 10
    return rows


def _tb_alternative(writer, row: dict, n: int) -> list[dict]:
    """TensorBoard: one add_scalar per metric vs one event holding every metric (what trackers.py does)."""
    try:
        from tensorboard.compat.proto.summary_pb2 import Summary
    except ImportError:
        return []
    vals = {k: float(v) for k, v in row.items() if k not in ("step", "epoch") and isinstance(v, (int, float))}
    step = int(row["step"])

    def per_metric():
        for k, v in vals.items():
            writer.add_scalar(f"train/{k}", v, step)

    def one_event():
        writer._get_file_writer().add_summary(
            Summary(value=[Summary.Value(tag=f"train/{k}", simple_value=v) for k, v in vals.items()]), step)

    out = []
    for what, fn in ((f"  TensorBoard alone, add_scalar x {len(vals)} (one event per metric)", per_metric),
                     (f"  TensorBoard alone, one event with {len(vals)} values (what we write)", one_event)):
        ts = []
        for _ in range(n):
            a = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - a)
        out.append({"what": what, "us": B.median(ts) * 1e6})
    return out


# ----------------------------------------------------------------------------- main


def main(argv=None) -> None:
    p = B.parser("overhead", __doc__)
    B.add_only(p, SECTIONS, "section(s)")
    p.add_argument("--rounds", type=int, default=None,
                   help="trainer runs per section (default 3, smoke 1)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: the overhead is single-threaded Python, and one thread "
                        "keeps other jobs on a shared machine from adding noise)")
    args = p.parse_args(argv)
    only = B.only(p, args)
    smoke, quick = args.smoke, args.quick
    rounds = args.rounds or (1 if smoke or quick else 3)
    big_rounds = rounds
    threads = B.set_threads(args.threads)
    # (steps timed per run, warm-up steps dropped)
    sizes = {"mlp": (30, 5) if smoke else (300, 30) if quick else (600, 50),
             "cnn": (6, 2) if smoke else (40, 5) if quick else (80, 10),
             "gpt": (6, 2) if smoke else (20, 4) if quick else (40, 5)}
    settings = {"threads": threads, "runs_per_section": rounds, "gpt_overrides": GPT_FULL,
                "mlp_overrides": MLP,
                "sizes": {k: {"steps": s, "warmup": w} for k, (s, w) in sizes.items()},
                "sources": B.file_digest("trainer/training/loop.py", "trainer/training/strategy.py",
                                         "trainer/training/observe/metrics.py",
                                         "trainer/training/observe/rowwriter.py")}
    rep = B.Report("overhead", args, settings, threads=threads)
    done: list[dict] = []  # rows of finished sections

    def saver(sec: str) -> Callable[[dict], None]:
        def on_run(runs: dict) -> None:
            rows = rows_for(runs)
            for r in rows:
                r["section"] = sec
            rep.set_rows(done + rows)

        return on_run

    cols = [("variant", "variant", ""), ("step_us", "median µs/step", ".0f"),
            ("range_us", "range (runs)", ""), ("vs_raw_us", "vs raw µs", "+.0f"),
            ("vs_raw_range", "range", ""), ("ratio", "÷ raw", ".3f"), ("cpu_us", "CPU µs/step", ".0f"),
            ("vs_raw_cpu_us", "CPU vs raw", "+.0f"),
            ("in_step_us", "in step µs", ".0f"), ("outside_us", "data + loop µs", ".0f"),
            ("data_us", "data µs", ".0f"), ("mean_us", "mean µs (log steps in)", ".0f"),
            ("mean_vs_raw_us", "mean vs raw µs", "+.0f"), ("mean_vs_raw_range", "range", ""),
            ("mean_cpu_vs_raw_us", "mean CPU vs raw µs (all threads)", "+.0f"),
            ("mean_cpu_vs_raw_range", "range", ""),
            ("log_extra_us", "log step +µs", ".0f")]

    if "mlp" in only:
        steps, warm = sizes["mlp"]
        plan = [(None, ["raw", "accelerate", "fabric"]), ("accelerate", ["raw"])]
        print(f"mlp 784->32->10, batch 64, SGD momentum, fp32, {threads} thread(s): {rounds} rounds x "
              f"{steps} steps")
        rows = rows_for(compare("mlp", "mlp", MLP, plan, steps, warm, rounds, smoke, saver("mlp")))
        for r in rows:
            r["section"] = "mlp"
        done += rows
        rep.set_rows(list(done))
        print(B.table(rows, cols))
        print(rep.machine_line() + "\n")
    for sec, recipe, extra in (("cnn", "cnn", []), ("gpt", "gpt", GPT_SMOKE if smoke else GPT_FULL)):
        if sec not in only:
            continue
        steps, warm = sizes[sec]
        print(f"{sec}: configs/{recipe}.yaml {' '.join(extra)}, {threads} thread(s): {big_rounds} rounds x "
              f"{steps} steps")
        rows = rows_for(compare(sec, recipe, extra, [(None, ["raw"])], steps, warm, big_rounds, smoke,
                                saver(sec)))
        for r in rows:
            r["section"] = sec
        done += rows
        rep.set_rows(list(done))
        print(B.table(rows, [("variant", "variant", ""), ("step_us", "median µs/step", ".0f"),
                             ("range_us", "range (runs)", ""), ("ratio", "÷ raw", ".3f"),
                             ("ratio_range", "range", ""), ("cpu_ratio", "CPU-time ÷ raw", ".3f"),
                             ("cpu_ratio_range", "range", ""),
                             ("mean_us", "mean µs (log steps in)", ".0f")]))
        print(rep.machine_line() + "\n")
    if "hotpath" in only:
        steps = 100 if smoke else 500 if quick else 1000
        hp = hotpath(steps, 1 if smoke or quick else 3)
        rep.put("hotpath", hp)
        print("hot path, MLP 784->32->10, one fixed batch: real step vs lean step vs raw step, interleaved "
              "blocks")
        print(B.table(hp["ab"], [("step", "step", ""), ("us", "µs", ".1f"),
                                 ("vs_raw_us", "vs raw µs", "+.1f"), ("vs_raw_range", "range", ""),
                                 ("cpu_us", "CPU µs", ".1f"),
                                 ("cpu_vs_raw_us", "CPU vs raw", "+.1f")]) + "\n")
        print("micro-timings behind the suggestions (same result, two ways; median µs)")
        print(B.table(hp["alternatives"], [("what", "what", ""), ("now", "now", ""), ("now_us", "µs", ".2f"),
                                           ("alternative", "alternative", ""), ("alt_us", "µs", ".2f"),
                                           ("saves_us", "saves µs", ".2f")]) + "\n")
        print("aten operators per step, real vs raw (torch.profiler; times inflated by the profiler alike)")
        print(B.table(hp["ops"], [("op", "operator", ""), ("calls_real", "calls real", ".3g"),
                                  ("calls_raw", "calls raw", ".3g"), ("self_us_real", "µs real", ".1f"),
                                  ("self_us_raw", "µs raw", ".1f"), ("extra_us", "extra µs", "+.1f")]) + "\n")
        print("Python functions inside the real step (cProfile, own time per step)")
        print(B.table(hp["python"], [("function", "function", ""), ("calls", "calls/step", ".3g"),
                                     ("own_us", "own µs", ".1f"), ("cum_us", "cum µs", ".1f")]) + "\n")
        print("one log step (every log.every_steps steps)")
        print(B.table(hp["log"], [("what", "what", ""), ("us", "µs", ".0f"),
                                  ("per_step_us_at_every_10", "µs/step at every_steps=10", ".1f")]) + "\n")
    print(rep.machine_line())
    print(f"wrote {rep.close()}")


if __name__ == "__main__":
    main()

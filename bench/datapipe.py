"""Data-pipeline cost: time the step loop waits for data, as a fraction of step time (target <= 2%).

    python -m bench.datapipe             # CNN and GPT recipes, 3 interleaved rounds, ~2 min on 2 cores
    python -m bench.datapipe --quick     # one round (~1 min)
    python -m bench.datapipe --only gpt  # a subset of the rows: cnn, gpt, cnn_workers
    python -m bench.datapipe --smoke     # seconds (CI)

Each run is `trainer.run.train(cfg)` on configs/cnn.yaml and configs/gpt.yaml with the default loader
settings (data.num_workers=0: batches are gathered in the training process from in-memory tensors with one
indexing operation; pin_memory and prefetch_factor apply only with workers / on CUDA), one torch thread by
default (--threads). The figure is the trainer's own ``data_wait_frac`` from metrics.jsonl (the
time spent fetching the next micro-batches divided by the log window's wall time), median over windows
after the first; a second estimate comes from stamps around ``Trainer._run_step``: the part of each step
interval spent outside the step call (data fetch plus the loop's bookkeeping), so it bounds the first from
above. One non-default row (data.num_workers=2 on the CNN) shows what worker processes would cost here.
The rows run interleaved (the order rotates each round); the JSON is rewritten after every round.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import defaultdict

from . import common as B

GPT_SMOKE = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.block_size=32",
             "train.batch_size=8", "data.max_bytes=100000"]


def run(recipe: str, extra: list[str], steps: int, every: int, smoke: bool) -> dict:
    tmp = tempfile.mkdtemp(prefix="bench-datapipe-")
    try:
        run_dir = os.path.join(tmp, "run")
        over = [f"run.dir={run_dir}", f"train.max_steps={steps}", f"log.every_steps={every}",
                "log.progress=off", "log.plot=false", "train.eval_every_steps=0", "checkpoint.every_steps=0",
                "device=cpu"]
        cfg = B.load_cfg(recipe, extra + over + (["log.tensorboard=false"] if smoke else []))
        clock = B.StepClock()
        B.run_train(cfg, clock.trainer_cls())
        rows = B.read_metrics(run_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = rows[1:] if len(rows) > 1 else rows  # the first window holds the warm-up steps
    iv = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])]
    outside = [i - d for i, d in zip(iv, clock.durations)]
    warm = min(every, len(iv) // 2)
    cpu = [b - a for a, b in zip(clock.cpu, clock.cpu[1:])]  # the step thread's CPU time per interval
    d = cfg.data
    return {"frac": B.median(r["data_wait_frac"] for r in rows),
            "frac_max": max(r["data_wait_frac"] for r in rows),
            "step_s": B.median(r["step_time_s"] for r in rows),
            "cpu_s": B.median(cpu[warm:]),
            "outside_frac": sum(outside[warm:]) / max(sum(iv[warm:]), 1e-12),
            "loader": f"num_workers={d.num_workers} pin_memory={d.pin_memory} "
                      f"prefetch_factor={d.prefetch_factor}"}


ROWS = ("cnn", "gpt", "cnn_workers")


def main(argv=None) -> None:
    p = B.parser("datapipe", __doc__)
    B.add_only(p, list(ROWS), "row(s)")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds (default 3, quick and smoke 1)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1; 0 = torch's default, as make train). On a 2-core machine "
                        "shared with other jobs, two intra-op threads stall on each other and step times "
                        "swing 10x")
    args = p.parse_args(argv)
    only = B.only(p, args)
    smoke = args.smoke
    rounds = args.rounds or (1 if smoke or args.quick else 3)
    threads = B.set_threads(args.threads)
    # (key, label, recipe, overrides, steps, log interval): the CNN recipe has 22 steps per epoch at batch
    # 64, so 88 steps cross three epoch boundaries (a new permutation, a new loader).
    cases = [("cnn", "cnn", "cnn", [], 12 if smoke else 88, 4 if smoke else 10),
             ("gpt", "gpt", "gpt", GPT_SMOKE if smoke else [], 8 if smoke else 60, 4 if smoke else 10)]
    if not smoke:
        cases.append(("cnn_workers", "cnn, num_workers=2 (not default)", "cnn", ["data.num_workers=2"], 88,
                      10))
    cases = [c for c in cases if c[0] in only]
    rep = B.Report("datapipe", args, {"threads": threads, "rounds": rounds}, threads=threads)
    results: dict[str, list[dict]] = defaultdict(list)
    for r in range(rounds):
        for key, _label, recipe, extra, steps, every in B.rotate(cases, r):
            results[key].append(run(recipe, extra, steps, every, smoke))
            rep.set_rows(rows_for(cases, results))
        fracs = "  ".join(f"{k} {v[-1]['frac'] * 100:.2f}%" for k, v in results.items())
        print(f"  round {r + 1}/{rounds}: {fracs}", flush=True)
    print(f"data wait / step time, {threads} thread(s), {rounds} round(s)")
    print(B.table(rep.rows, [("recipe", "recipe", ""), ("loader", "loader", ""),
                             ("step_ms", "step ms", ".2f"), ("cpu_ms", "CPU ms", ".2f"),
                             ("data_wait_ms", "data wait ms", ".3f"),
                             ("data_wait_pct", "data wait %", ".2f"), ("pct_range", "range %", ""),
                             ("worst_window_pct", "worst window %", ".2f"),
                             ("outside_step_pct", "outside step %", ".2f")]))
    print(rep.machine_line())
    print(f"wrote {rep.close()}")


def rows_for(cases: list, results: dict[str, list[dict]]) -> list[dict]:
    """One row per case from the rounds finished so far: median and range over rounds."""
    rows = []
    for key, label, recipe, extra, steps, _every in cases:
        rs = results.get(key)
        if not rs:
            continue
        fr = B.spread(x["frac"] for x in rs)
        step_s = B.median(x["step_s"] for x in rs)
        rows.append({"row": key, "recipe": label, "config": f"configs/{recipe}.yaml", "overrides": extra,
                     "loader": rs[0]["loader"], "steps": steps, "rounds": len(rs), "step_ms": step_s * 1e3,
                     "cpu_ms": B.median(x["cpu_s"] for x in rs) * 1e3,
                     "data_wait_frac": fr["median"], "data_wait_pct": fr["median"] * 100,
                     "pct_range": f"{fr['min'] * 100:.2f}-{fr['max'] * 100:.2f}",
                     "data_wait_ms": fr["median"] * step_s * 1e3,
                     "worst_window_pct": max(x["frac_max"] for x in rs) * 100,
                     "outside_step_pct": B.median(x["outside_frac"] for x in rs) * 100, "target_pct": 2.0})
    return rows

if __name__ == "__main__":
    main()

"""GPU check for the launch modes: every mode x precision on the GPT and CNN recipes, a few steps each.

    python3 -m bench.gpu_check            # on one NVIDIA GPU, from the repository root; ~1-2 minutes
    python3 -m bench.gpu_check --smoke    # on a CPU: the same table, tiny (what CI runs)

Runs the trainer in-process (the same `train(cfg)` that `python -m trainer train` runs) for single, dp
(nn.DataParallel over the visible GPUs), ddp and fsdp with a one-process NCCL group, and accelerate, in
bf16, fp16 (GradScaler: torch.amp.GradScaler("cuda"), or "cpu" in the smoke run, so the scaler's path
under DDP, FSDP2 and accelerate runs on a CPU too) and fp32; prints step time and final loss per row and
rewrites its JSON after every row to $OUT (the device tool's output folder) or bench/results/. Rows that
would end after ``--budget-s`` are skipped and marked. Then it checks the NCCL Flight Recorder: with the
trainer's defaults (TORCH_NCCL_TRACE_BUFFER_SIZE) a one-process NCCL group records its collectives and
dumps them. Uses only APIs present in torch 2.11 (the GPU machine's version); checks before use.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time

# Before torch is imported (main imports it): OpenMP reads this once, at load. A one-process NCCL group gets
# no OMP_NUM_THREADS from torchrun, and torch's default (every core) oversubscribes the host.
os.environ.setdefault("OMP_NUM_THREADS", "4")


def _row(recipe: str, mode: str, precision: str, steps: int, smoke: bool, root: str) -> dict:
    from tests.helpers import read_metrics, read_summary
    from trainer import config as C
    from trainer.run import train

    run_dir = os.path.join(root, f"{recipe}-{mode}-{precision}")
    over = [f"run.dir={run_dir}", f"train.strategy={mode}", f"train.precision={precision}",
            f"train.max_steps={steps}", "log.every_steps=5", "log.tensorboard=false", "log.plot=false",
            "log.progress=off", "checkpoint.every_steps=0", "train.eval_every_steps=0"]
    if recipe == "gpt":
        over += ["train.batch_size=16", "data.max_bytes=300000"]
        if smoke:
            over += ["model.n_layer=1", "model.n_embd=32", "model.block_size=32"]
    if smoke:
        over += ["device=cpu"]
    cfg = C.load(os.path.join("configs", f"{recipe}.yaml"), over)
    os.environ.pop("MASTER_PORT", None)  # each one-process group picks a fresh port
    os.environ.pop("MASTER_ADDR", None)
    t0 = time.perf_counter()
    try:
        with scaler_updates() as updates:
            code = train(cfg)
        err = None
    except Exception as e:  # a failing row is a result, not the end of the check
        code, err = -1, f"{type(e).__name__}: {e}"[:200]
    row = {"recipe": recipe, "mode": mode, "precision": precision, "exit": code,
           "wall_s": time.perf_counter() - t0, "grad_scaler_updates": updates["n"]}
    if code == 0:
        rows = read_metrics(run_dir)
        row["step_ms"] = 1e3 * rows[-1]["step_time_s"]
        row["loss"] = read_summary(run_dir)["final_loss"]
    else:
        row["error"] = err
    return row


@contextlib.contextmanager
def scaler_updates():
    """Counts ``torch.amp.GradScaler.update`` calls inside the block (whoever owns the scaler: the trainer's
    strategy, or accelerate's optimizer wrapper), so an fp16 row shows that its GradScaler really ran."""
    import torch

    box = {"n": 0}
    original = torch.amp.GradScaler.update

    def counted(self, *args, **kwargs):
        box["n"] += 1
        return original(self, *args, **kwargs)

    torch.amp.GradScaler.update = counted
    try:
        yield box
    finally:
        torch.amp.GradScaler.update = original


def flight_recorder_check(smoke: bool) -> dict:
    """A one-process NCCL group records collectives in the Flight Recorder, and the buffer can be dumped."""
    import torch
    import torch.distributed as dist

    if smoke or not torch.cuda.is_available():
        return {"flight_recorder": "skipped (no CUDA)"}
    os.environ.setdefault("TORCH_NCCL_TRACE_BUFFER_SIZE", "2000")
    dump = getattr(torch._C._distributed_c10d, "_dump_nccl_trace", None)
    if dump is None:
        return {"flight_recorder": "unavailable in this torch"}
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = dist.TCPStore("127.0.0.1", port, 1, is_master=True)
    dist.init_process_group("nccl", store=store, rank=0, world_size=1, device_id=torch.device("cuda", 0))
    try:
        t = torch.ones(1024, device="cuda")
        for _ in range(3):
            dist.all_reduce(t)
        torch.cuda.synchronize()
        import pickle

        trace = pickle.loads(dump())
        entries = trace.get("entries", [])
        return {"flight_recorder": "ok" if entries else "empty", "entries": len(entries),
                "last_op": entries[-1].get("profiling_name") if entries else None}
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run (CI): modes x precisions")
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join("bench", "results"))
    ap.add_argument("--budget-s", type=float, default=None,
                    help="skip rows that would end after this many seconds from the start (default 150; "
                         "smoke 210, for a loaded CI machine)")
    args = ap.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = 210.0 if args.smoke else 150.0
    t_start = time.monotonic()
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke on a CPU", file=sys.stderr)
        return 2
    modes = ["single", "dp", "ddp", "fsdp", "accelerate"]
    precisions = ["bf16", "fp16", "fp32"]
    steps = {"cnn": 2 if args.smoke else 40, "gpt": 2 if args.smoke else 30}  # CPU fp16 is slow: 2 steps
    on_gpu = torch.cuda.is_available() and not args.smoke
    device = torch.cuda.get_device_name(0) if on_gpu else platform.processor()
    rows: list[dict] = []
    result = {"date": time.strftime("%Y-%m-%d"), "device": device, "torch": torch.__version__,
              "python": platform.python_version(), "smoke": args.smoke, "budget_s": args.budget_s,
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "status": "running", "rows": rows}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"gpu_check-{time.strftime('%Y%m%d')}{'-smoke' if args.smoke else ''}.json")

    def save() -> None:
        result["wall_s"] = time.monotonic() - t_start
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)
        os.replace(tmp, path)  # a timeout leaves the previous version, never half a file

    longest = {"cnn": 0.0, "gpt": 0.0}  # the slowest row so far per recipe: the estimate for the next
    with tempfile.TemporaryDirectory() as root:
        # precision outermost: bf16 and fp16 (the scaler's path) under every mode before fp32
        for prec in precisions:
            for mode in modes:
                for recipe in ("gpt", "cnn"):
                    elapsed = time.monotonic() - t_start
                    if elapsed + longest[recipe] > args.budget_s:
                        r = {"recipe": recipe, "mode": mode, "precision": prec, "exit": None,
                             "skipped": f"time budget ({elapsed:.0f}s used, ~{longest[recipe]:.0f}s needed)"}
                        rows.append(r)
                        save()
                        print(f"{recipe:4} {mode:10} {prec:5} skipped: {r['skipped']}", flush=True)
                        continue
                    rows.append(_row(recipe, mode, prec, steps[recipe], args.smoke, root))
                    r = rows[-1]
                    longest[recipe] = max(longest[recipe], r["wall_s"])
                    save()
                    print(f"{recipe:4} {mode:10} {prec:5} exit {r['exit']:>2}  "
                          f"{r.get('step_ms', float('nan')):8.2f} ms/step  "
                          f"loss {r.get('loss') or float('nan'):.4f}"
                          + (f"  {r['error']}" if "error" in r else ""), flush=True)
    fr = flight_recorder_check(args.smoke)
    print("flight recorder:", fr)
    result.update(fr)
    result["status"] = "done"
    save()
    print("wrote", path)
    ran = [r for r in rows if "skipped" not in r]
    skipped = len(rows) - len(ran)
    if skipped:
        print(f"{skipped} row(s) skipped by the time budget (--budget-s {args.budget_s:.0f})")
    return 0 if ran and all(r["exit"] == 0 for r in ran) else 1

if __name__ == "__main__":
    sys.exit(main())

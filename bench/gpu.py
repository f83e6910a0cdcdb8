"""One GPU: the GPT-124M shape through the trainer and through a plain PyTorch loop, in the same process.

    python3 -m bench.gpu                      # one CUDA device, ~8 min at most (--budget-s 450)
    python3 -m bench.gpu --only recipe,bf16   # a subset of the rows below
    python3 -m bench.gpu --smoke              # a tiny shape on CPU (CI): every code path of the GPU run

Shape (issue 6): 12 layers, width 768, 12 heads, vocab 50304, block 1024, batch 32, tied embeddings, SDPA,
AdamW (fused where torch has it), grad clip 1.0, the configs/gpt.yaml optimizer settings. Tokens are random,
generated once on the device (no downloads, no host copies in the step loop). Rows, most important first (a
run cut short by its budget still has these):

  recipe                      configs/gpt124m_h200.yaml: the trainer's recommended recipe (bf16, compile,
                              batch 64 x 8 accumulation); the MFU >= 50% target
  bf16                        trainer and plain loop, bf16 eager, two interleaved builds per side (T R R T):
                              the parity target, trainer ÷ raw >= 0.98
  fsdp                        train.strategy=fsdp (FSDP2 fully_shard) on one NCCL process, bf16; ÷ raw is
                              against the bf16 plain loop
  compile                     bf16 + torch.compile, trainer and plain loop
  fp16, fp32                  trainer and plain loop (fp16 with a GradScaler; fp32 = TF32 matmuls, as the
                              trainer sets them)
  accelerate                  train.strategy=accelerate vs a plain Accelerator(mixed_precision="bf16") loop
  ddp                         train.strategy=ddp on one NCCL process vs a plain DDP loop
  ckpt                        trainer bf16 with train.activation_checkpointing=true (peak memory vs bf16)
  fused_loss                  plain loop at the recipe's micro-batch with the loss inside the compiled region
                              (what fusing the fp32 upcast + cross-entropy into the graph would buy)
  host_data                   the recipe with batches in pageable host memory, as a token file would give
  gpt1b                       the trainer at a ~1B shape (our GPT: 24 layers, width 2048, 16 heads, vocab
                              50304, block 1024: 1.31 B parameters), random weights, bf16 + compile, batch 8:
                              the "large model" row (transformers cannot travel to the device machine)
  blocks, fp8                 the trainer with train.compile=blocks (each block compiled) /
                              train.precision=fp8 (torchao float8; failed with the trainer's one line where
                              torchao or the GPU cannot; skipped in the CPU smoke: emulated, minutes)
  hsdp, tp                    the real launcher on 4 GPUs (HSDP dp_replicate=2 x dp_shard=2) / 2 GPUs (FSDP x
                              parallel.tp=2), timed by the trainer's own metrics row; skipped with the reason
                              on fewer GPUs

Every build is timed over ``--windows`` windows of ``--steps`` optimizer steps after warm-up, each window
between two device synchronisations: a row gives the median tokens/s over its windows with their range, and
trainer ÷ raw the ratio of medians with the range from the worst and best window pairs. TFLOP/s counts
6N + 12·L·d·T FLOPs per token (N: parameters, tied embedding once, position table excluded); MFU is against
the device's dense peak for the row's precision (bf16/fp16, TF32 for fp32 rows), from the CUDA device name
(the table in trainer/training/observe/metrics.py). Trainer rows also report the trainer's own metrics
row (tokens/s, MFU, GPU memory) and the host synchronisations per step seen by
``torch.cuda.set_sync_debug_mode`` (0 expected). A row whose
builds would end after ``--budget-s`` (estimated from the rows that ran) is skipped and marked; the JSON is
rewritten after every row, so a run cut short still leaves its rows. The CPU smoke runs every row with the
H100 SXM's peaks as nominal figures.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Optional

from . import common as B

T_START = time.monotonic()
# Most important first: a run cut short by its budget (or the device slot) still has the rows that matter.
ROWS = ("recipe", "bf16", "fsdp", "compile", "fp16", "fp32", "accelerate", "ddp", "ckpt", "fused_loss",
        "host_data", "gpt1b", "blocks", "fp8", "hsdp", "tp")
FULL = {"n_layer": 12, "n_head": 12, "n_embd": 768, "vocab": 50304, "block": 1024, "batch": 32}
SMOKE = {"n_layer": 2, "n_head": 2, "n_embd": 64, "vocab": 512, "block": 64, "batch": 4}
# ~1B: GPT-3 XL's shape (12 L d^2 = 1.21 B in the blocks + 0.10 B tied embedding); block as FULL's
ONE_B = {"n_layer": 24, "n_head": 16, "n_embd": 2048, "vocab": 50304, "block": 1024, "batch": 8}
ONE_B_SMOKE = {"n_layer": 2, "n_head": 2, "n_embd": 96, "vocab": 512, "block": 64, "batch": 2}
RECIPE = os.path.join(B.ROOT, "configs", "gpt124m_h200.yaml")


class DeviceTokens:
    """Random token windows made once on the device; ``get_batch`` hands out views (no copy, no sync).

    Used through the trainer's own user-dataset hook (``data.name=bench.gpu:DeviceTokens``). ``host=True``
    keeps them in pageable host memory instead, as a memory-mapped token file would.
    """

    task = "lm"

    def __init__(self, vocab: int, seq: int, batch: int, device: str = "cuda", pool: int = 4,
                 length: int = 100_000, host: bool = False, seed: int = 1234):
        import torch

        dev = "cpu" if host else device
        g = torch.Generator(device=dev)
        g.manual_seed(seed)
        w = torch.randint(0, vocab, (pool, batch, seq + 1), device=dev, generator=g)
        self.x, self.y = w[..., :-1].contiguous(), w[..., 1:].contiguous()
        self.vocab_size, self.pool, self.n = vocab, pool, length

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        k = int(i) % self.pool
        return self.x[k, 0], self.y[k, 0]

    def get_batch(self, indices):
        k = int(indices[0]) % self.pool  # indices live on the host: no device sync
        return self.x[k], self.y[k]


# ----------------------------------------------------------------------------- environment


def features(device) -> dict:
    """What this torch offers; every optional API is checked here before use (GPU machine: torch 2.11)."""
    import importlib.util

    import torch
    import torch.distributed as dist

    ver = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    cuda = device.type == "cuda"
    return {
        "torch_version": torch.__version__,
        "compile": hasattr(torch, "compile") and ver >= (2, 0),
        "fused_adamw": "fused" in inspect.signature(torch.optim.AdamW).parameters,
        "amp_grad_scaler": hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"),
        "sdpa": hasattr(torch.nn.functional, "scaled_dot_product_attention"),
        "bf16": (torch.cuda.is_bf16_supported() if cuda else True),
        "nccl": cuda and dist.is_available() and dist.is_nccl_available(),
        "gloo": dist.is_available() and dist.is_gloo_available(),
        "accelerate": importlib.util.find_spec("accelerate") is not None,
        "sync_debug_mode": hasattr(torch.cuda, "set_sync_debug_mode"),
        "init_pg_device_id": "device_id" in inspect.signature(dist.init_process_group).parameters,
        "dynamo_reset": hasattr(torch, "_dynamo") and hasattr(torch._dynamo, "reset"),
    }


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clean(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def reset_compiler(feat: dict) -> None:
    """Compiled rows start from an empty dynamo cache: a second shape of the same frame would otherwise be
    compiled with dynamic shapes (automatic_dynamic_shapes), which is slower than either static graph."""
    import torch

    if feat["dynamo_reset"]:
        torch._dynamo.reset()


def peak_gib(device) -> float:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


@contextlib.contextmanager
def count_syncs(device, feat: dict):
    """Counts the device synchronisations torch reports (set_sync_debug_mode) inside the block."""
    import torch

    box = {"n": 0 if device.type == "cuda" and feat["sync_debug_mode"] else None}
    if box["n"] is None:
        yield box
        return
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode(1)
        try:
            yield box
        finally:
            torch.cuda.set_sync_debug_mode(0)
    box["n"] = sum(1 for w in seen if "synchroniz" in str(w.message).lower())


# ----------------------------------------------------------------------------- the two sides


def trainer_side(recipe: str, overrides: list[str], warm: int, steps: int, windows: int, feat: dict) -> dict:
    """The trainer: `build(cfg)` makes everything; this loop replaces fit() only to time ``windows`` windows
    of ``steps`` optimizer steps, each between two device synchronisations."""
    from trainer.training.observe.metrics import Stopwatch

    cfg = B.load_cfg(recipe, overrides)

    def body(tr) -> dict:
        dev = tr.device
        tr.metrics = B.RowCatcher()
        tr.strategy.model.train()
        accum = tr.batch["accum"]  # train.grad_accum, or derived from train.micro_batch_size
        batches = tr.batches.epoch_iter()

        def micro():
            return [tr._to_device(next(batches)) for _ in range(accum)]

        t0 = time.perf_counter()
        first = None
        for i in range(warm):
            tr._run_step(micro())
            tr.progress.step += 1
            if i == 0:
                sync(dev)
                first = time.perf_counter() - t0
        sync(dev)
        watch = tr._watch = Stopwatch()  # the window _log reports on
        walls, n_syncs = [], 0
        for _ in range(windows):
            t0 = time.perf_counter()
            with count_syncs(dev, feat) as syncs:
                for _ in range(steps):
                    tw = time.perf_counter()
                    mb = micro()
                    watch.data_s += time.perf_counter() - tw
                    tr._run_step(mb)
                    tr.progress.step += 1
            sync(dev)
            walls.append(time.perf_counter() - t0)
            n_syncs = None if syncs["n"] is None else n_syncs + syncs["n"]
        tr._since_log = steps * windows
        tr._log()  # the trainer's own row; pulls the loss to the host
        row = tr.metrics.rows[-1]
        seq = tr.info.seq_len
        return {"walls": walls, "first_step_s": first,
                "syncs_per_step": None if n_syncs is None else n_syncs / (steps * windows),
                "trainer_tokens_per_s": row.get("tokens_per_s"), "trainer_mfu": row.get("mfu"),
                "trainer_gpu_mem_gb": row.get("gpu_mem_gb"), "loss": row.get("loss"),
                "batch": tr.cfg.train.batch_size, "grad_accum": accum,
                "flops_per_token": tr.strategy.module.flops_per_sample(seq) / seq,
                "fused_adamw": bool(getattr(tr.optimizer, "defaults", {}).get("fused")),
                "peak_gib": peak_gib(dev)}

    out = B.inside_trainer(cfg, body)
    clean(_device_of(overrides))
    return out


def _device_of(overrides: list[str]):
    import torch

    dev = next((o.split("=", 1)[1] for o in overrides if o.startswith("device=")), "cpu")
    return torch.device("cuda" if dev == "cuda" else "cpu")


def raw_side(shape: dict, device, precision: str, warm: int, steps: int, windows: int, feat: dict,
             **kw) -> dict:
    """A plain loop a user would write (nanoGPT style) on the trainer's GPT module, same seed and init."""
    try:
        return _raw_loop(shape, device, precision, warm, steps, windows, feat, **kw)
    finally:
        clean(device)  # the loop's model, optimizer and activations are gone once it has returned


def _raw_loop(shape: dict, device, precision: str, warm: int, steps: int, windows: int, feat: dict, *,
              compile_backend=None,
              flavor: str = "plain", batch: int | None = None, loss_in_graph: bool = False,
              lr: float = 1e-3, betas=(0.9, 0.95), weight_decay: float = 0.1, clip: float = 1.0) -> dict:
    import torch
    import torch.nn.functional as F

    from trainer.models.gpt import GPT

    B_ = batch or shape["batch"]
    V, T = shape["vocab"], shape["block"]
    torch.manual_seed(0)
    model = GPT(V, T, shape["n_layer"], shape["n_head"], shape["n_embd"], 0.0)
    flops_per_token = model.flops_per_sample(T) / T
    data = DeviceTokens(V, T, B_, device=device.type)
    model.to(device)
    fused = {"fused": True} if device.type == "cuda" and feat["fused_adamw"] else {}
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, eps=1e-8, weight_decay=weight_decay,
                            **fused)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    scaler = None
    if precision == "fp16":
        scaler = torch.amp.GradScaler(device.type) if feat["amp_grad_scaler"] else torch.cuda.amp.GradScaler()
    accelerator = None
    pg = False
    if flavor == "accelerate":
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="bf16" if dtype else "no")
        model, opt = accelerator.prepare(model, opt)
    elif flavor == "ddp":
        import torch.distributed as dist

        if not dist.is_initialized():
            port = _free_port()
            kw = {"device_id": device} if device.type == "cuda" and feat["init_pg_device_id"] else {}
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                                    rank=0, world_size=1, **kw)
            pg = True
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    params = [p for p in model.parameters()]
    fwd = model
    if compile_backend:
        if loss_in_graph:
            def fwd_loss(x, y):
                logits = model(x)
                return F.cross_entropy(logits.view(-1, V).float(), y.view(-1))

            fwd = torch.compile(fwd_loss, backend=compile_backend)
        else:
            fwd = torch.compile(model, backend=compile_backend)

    def autocast():
        if accelerator is not None:
            return accelerator.autocast()
        return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def step(i: int):
        x, y = data.get_batch([i])
        for g in opt.param_groups:  # the schedule a user writes by hand (warm-up, then cosine)
            g["lr"] = lr * min(1.0, (i + 1) / 30)
        with autocast():
            if loss_in_graph:
                loss = fwd(x, y)
            else:
                logits = fwd(x)
                loss = F.cross_entropy(logits.view(-1, V), y.view(-1))
        if accelerator is not None:
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(params, clip)
            opt.step()
        elif scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, clip)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    try:
        t0 = time.perf_counter()
        first = None
        for i in range(warm):
            step(i)
            if i == 0:
                sync(device)
                first = time.perf_counter() - t0
        sync(device)
        walls, n_syncs, i = [], 0, warm
        for _ in range(windows):
            t0 = time.perf_counter()
            with count_syncs(device, feat) as syncs:
                for _ in range(steps):
                    loss = step(i)
                    i += 1
            sync(device)
            walls.append(time.perf_counter() - t0)
            n_syncs = None if syncs["n"] is None else n_syncs + syncs["n"]
        loss = loss.item()  # the plain loop's one log line
        return {"walls": walls, "first_step_s": first, "loss": loss, "batch": B_, "grad_accum": 1,
                "syncs_per_step": None if n_syncs is None else n_syncs / (steps * windows),
                "flops_per_token": flops_per_token, "fused_adamw": bool(fused), "peak_gib": peak_gib(device)}
    finally:
        if pg:
            import torch.distributed as dist

            dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- rows


def base_overrides(shape: dict, device, tmp: str, micro: int, steps: int, host: bool = False) -> list[str]:
    kw = (f"{{vocab: {shape['vocab']}, seq: {shape['block']}, batch: {micro}, device: {device.type}, "
          f"host: {str(host).lower()}}}")
    return ["data.name=bench.gpu:DeviceTokens", "data.path=null", f"data.kwargs={kw}", "data.num_workers=0",
            f"run.dir={tempfile.mkdtemp(dir=tmp)}", "train.max_steps=1000000", "train.eval_every_steps=0",
            "checkpoint.every_steps=0", "log.tensorboard=false", "log.progress=off", "log.plot=false",
            f"log.every_steps={steps}", f"device={device.type}"]


def shape_overrides(shape: dict) -> list[str]:
    return [f"model.n_layer={shape['n_layer']}", f"model.n_head={shape['n_head']}",
            f"model.n_embd={shape['n_embd']}", f"model.block_size={shape['block']}",
            f"model.vocab_size={shape['vocab']}", "model.dropout=0.0"]


class Skip(Exception):
    """A row that cannot run here, with the reason (not a failure)."""


def skip(reason: str):
    raise Skip(reason)


def launched_side(mode: str, nproc: int, over: list[str], steps: int, shape: dict) -> dict:
    """Several GPUs: ``python -m launch MODE`` for 2 x steps steps; the second metrics row (after compile and
    warm-up) is the timed window."""
    import json
    import subprocess

    import torch

    from trainer.models.gpt import GPT

    have = torch.cuda.device_count()
    if have < nproc:
        raise Skip(f"needs {nproc} GPUs, {have} visible")
    run_dir = next(o.split("=", 1)[1] for o in over if o.startswith("run.dir="))
    argv = [sys.executable, "-m", "launch", mode, "--nproc-per-node", str(nproc), *over,
            f"train.max_steps={2 * steps}"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=B.ROOT)
    if r.returncode:
        raise RuntimeError((r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1])
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as fh:
        row = [x for x in map(json.loads, fh) if not x.get("eval")][-1]
    with torch.device("meta"):
        m = GPT(shape["vocab"], shape["block"], shape["n_layer"], shape["n_head"], shape["n_embd"])
    tokens = shape["batch"] * shape["block"] * steps
    return {"walls": [tokens / row["tokens_per_s"]], "trainer_tokens_per_s": row["tokens_per_s"],
            "trainer_gpu_mem_gb": row.get("gpu_mem_gb"), "loss": row["loss"], "batch": shape["batch"],
            "flops_per_token": m.flops_per_sample(shape["block"]) / shape["block"],
            "peak_gib": row.get("gpu_mem_gb"), "processes": nproc}


def finish(r: dict, steps: int, shape: dict, peak: Optional[float]) -> dict:
    """tokens/s per window, their median and range; TFLOP/s and MFU from the median against ``peak``."""
    tokens = r["batch"] * shape["block"] * steps
    per = sorted(tokens / w for w in r.pop("walls"))
    sp = B.spread(per)
    r["windows"] = len(per)
    r["wall_s"] = sum(tokens / x for x in per)
    r["tokens_per_s"] = sp["median"]
    r["tokens_range"] = f"{sp['min'] / 1e3:.1f}k-{sp['max'] / 1e3:.1f}k"
    r["tokens_per_s_min"], r["tokens_per_s_max"] = sp["min"], sp["max"]
    r["tflops"] = r["tokens_per_s"] * r["flops_per_token"] / 1e12
    r["peak_tflops"] = peak / 1e12 if peak else None
    r["mfu_pct"] = 100 * r["tflops"] * 1e12 / peak if peak else None
    return r


def merge_rounds(results: list[dict]) -> dict:
    """One side's builds of a row (interleaved rounds) as one sample: every window of every round."""
    out = dict(results[-1])
    out["walls"] = [w for r in results for w in r["walls"]]
    out["rounds"] = len(results)
    return out


def device_peak(device, smoke: bool) -> tuple[str, Callable[[str], Optional[float]]]:
    """The device's name and its dense peak per precision (the table in trainer/training/observe/metrics.py;
    on a CPU smoke run, the H100 SXM's figures as nominal values, so the columns fill)."""
    import torch

    from trainer.training.observe.metrics import peak_flops

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "NVIDIA H100 80GB HBM3"
    return name, lambda precision: peak_flops(name, precision)


def main(argv=None) -> None:
    p = B.parser("gpu", __doc__)
    B.add_only(p, list(ROWS), "row(s)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps per timed window (default 10, smoke 2)")
    p.add_argument("--windows", type=int, default=None,
                   help="timed windows per build, each between two device syncs (default 3, quick and smoke "
                        "2)")
    p.add_argument("--budget-s", type=float, default=450.0,
                   help="skip rows that would end after this many seconds from start (default 450: the "
                        "script ends within ~8 minutes, imports included)")
    args = p.parse_args(argv)
    only = B.only(p, args)

    import torch

    smoke, quick = args.smoke, args.quick
    if not smoke and not torch.cuda.is_available():
        print("bench.gpu: no CUDA device visible; run with --smoke for the CPU check of this script",
              file=sys.stderr)
        sys.exit(2)
    device = torch.device("cpu") if smoke else torch.device("cuda", 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # what the trainer sets (fp32 rows are TF32 on both sides)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(1)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR",
                          os.path.join(tempfile.gettempdir(), "bench-gpu-inductor"))
    shape = SMOKE if smoke else FULL
    steps = args.steps or (2 if smoke else 10)
    windows = args.windows or (2 if smoke or quick else 3)
    warm = 1 if smoke else 3
    backend = "eager" if smoke else "inductor"  # smoke: dynamo only, no compiler (seconds)
    feat = features(device)
    dev_name, peak_of = device_peak(device, smoke)
    tmp = tempfile.mkdtemp(prefix="bench-gpu-")
    base = shape_overrides(shape) + [f"train.batch_size={shape['batch']}", "train.grad_clip=1.0"]
    rows: list[dict] = []
    sources = B.file_digest("trainer/training/loop.py", "trainer/training/strategy.py",
                            "trainer/models/gpt.py", "configs/gpt124m_h200.yaml")
    settings = {"shape": shape, "steps_per_window": steps, "windows": windows, "warmup": warm,
                "compile_backend": backend, "device": str(device), "device_name": dev_name,
                "peak_tflops": {k: (peak_of(k) or 0) / 1e12 for k in ("bf16", "fp16", "fp32")},
                "budget_s": args.budget_s, "order": [r for r in ROWS if r in only],
                "recipe": os.path.relpath(RECIPE, B.ROOT), "sources": sources}
    rep = B.Report("gpu", args, settings, features=feat)
    rep.doc["rows"] = rows
    # Seconds one build of a row takes, refined from the rows that ran (the budget check uses them).
    est = {"eager": 15.0, "compile": 60.0, "recipe": 90.0, "gpt1b": 120.0} if not smoke else {}

    def over_budget(kind: str, builds: int) -> Optional[str]:
        elapsed, need = time.monotonic() - T_START, est.get(kind, 0.0) * builds
        if elapsed + need > args.budget_s and not smoke:
            return f"skipped: time budget ({elapsed:.0f}s used, ~{need:.0f}s needed)"
        return None

    def build(kind: str, fn) -> tuple[Optional[dict], Optional[str]]:
        """One build of one side: its result, or why it failed (OOM, a missing backend: the others go on)."""
        t0 = time.monotonic()
        try:
            r = fn()
        except Skip as e:
            return None, f"skipped: {e}"
        except Exception as e:
            clean(device)
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            return None, f"failed: {msg[:300]}"
        if kind in est:
            est[kind] = max(est[kind] * 0.5, time.monotonic() - t0)
        return r, None

    def record(name: str, side: str, setting: str, precision: str, results: list, status: Optional[str],
               seconds: float, n_steps: int = steps, **extra) -> None:
        row = {"row": name, "side": side, "setting": setting, "precision": precision, **extra}
        if status is None:
            of = extra.get("shape_of", shape)
            row.update(finish(merge_rounds(results), n_steps, of, peak_of(precision)))
            status = "ok"
        row["status"], row["row_s"] = status, seconds
        rows.append(row)
        parity(rows)
        rep.save()
        figures = ""
        if status == "ok":
            figures = (f"{row['tokens_per_s'] / 1e3:8.1f}k tok/s ({row['tokens_range']})  MFU "
                       f"{B.fmt(row['mfu_pct'], '5.1f')}%  peak {B.fmt(row['peak_gib'], '.1f')} GiB  "
                       f"({seconds:.0f}s)")
        print(f"  {name:<10} {side:<8} {status:<6} " + figures, flush=True)

    def run_row(name: str, side: str, setting: str, kind: str, fn, precision: str, n_steps: int = steps,
                **extra) -> None:
        """One side of a row, one build."""
        skip = over_budget(kind, 1)
        t0 = time.monotonic()
        r, err = (None, skip) if skip else build(kind, fn)
        record(name, side, setting, precision, [r], err, time.monotonic() - t0, n_steps, **extra)

    def pair(key: str, setting: str, kind: str, prec: str, t_fn, r_fn, rounds: int = 1) -> None:
        """Trainer and raw loop at identical settings, builds interleaved (T R, then R T, ...) so neither side
        always runs first; each side's row holds every window of its builds."""
        skip = over_budget(kind, 2 * rounds)
        got: dict[str, list] = {"trainer": [], "raw": []}
        err: dict[str, Optional[str]] = {"trainer": skip, "raw": skip}
        secs = {"trainer": 0.0, "raw": 0.0}
        for k in range(0 if skip else rounds):
            for side in (("trainer", "raw") if k % 2 == 0 else ("raw", "trainer")):
                if err[side] is None:
                    t0 = time.monotonic()
                    r, err[side] = build(kind, t_fn if side == "trainer" else r_fn)
                    secs[side] += time.monotonic() - t0
                    got[side].append(r)
        for side in ("trainer", "raw"):
            record(key, side, setting, prec, got[side], err[side], secs[side])

    def trainer_fn(over: list[str], recipe: str = "gpt", w: int = warm, n: int = steps):
        return lambda: trainer_side(recipe, over, w, n, windows, feat)

    def raw_fn(prec: str, **kw):
        return lambda: raw_side(shape, device, prec, warm, steps, windows, feat, **kw)

    def ov(micro: int, extra: list[str], host: bool = False) -> list[str]:
        return base + base_overrides(shape, device, tmp, micro, steps, host) + extra

    recipe_cfg = B.load_cfg(RECIPE, ["data.name=text", "data.path=null"])
    rt = recipe_cfg.train
    micro = rt.batch_size // rt.grad_accum if not smoke else shape["batch"]
    accum = rt.grad_accum if not smoke else 2
    r_steps = 2 if not smoke else 1
    r_shape = [] if not smoke else shape_overrides(shape) + [f"train.batch_size={shape['batch'] * 2}",
                                                               "train.grad_accum=2",
                                                               f"train.compile_backend={backend}"]
    compiled = ["train.precision=bf16", "train.compile=true", f"train.compile_backend={backend}"]
    try:
        for key in [r for r in ROWS if r in only]:
            if key == "recipe":
                reset_compiler(feat)
                run_row("recipe", "trainer", f"{os.path.basename(RECIPE)}: batch {micro * accum} = {micro} "
                        f"x {accum} accum, {rt.precision}, compile={rt.compile}", "recipe",
                        trainer_fn(base_overrides(shape, device, tmp, micro, r_steps) + r_shape,
                                   recipe=RECIPE, w=2 if not smoke else 1, n=r_steps), rt.precision,
                        n_steps=r_steps)
            elif key in ("bf16", "fp16", "fp32"):
                if key == "bf16" and not feat["bf16"]:
                    continue
                # bf16 is the parity row the issue names: two interleaved builds per side
                pair(key, f"{key} eager", "eager", key,
                     trainer_fn(ov(shape["batch"], [f"train.precision={key}"])), raw_fn(key),
                     rounds=2 if key == "bf16" else 1)
            elif key == "fsdp" and (feat["nccl"] or device.type == "cpu"):
                group = "NCCL" if device.type == "cuda" else "gloo"
                run_row("fsdp", "trainer", f"bf16, FSDP2 (fully_shard) on 1 {group} process", "eager",
                        trainer_fn(ov(shape["batch"], ["train.precision=bf16", "train.strategy=fsdp"])),
                        "bf16")
                _drop_group_env()
            elif key == "compile" and feat["compile"]:
                reset_compiler(feat)
                run_row("compile", "trainer", f"bf16 + torch.compile({backend})", "compile",
                        trainer_fn(ov(shape["batch"], compiled)), "bf16")
                reset_compiler(feat)
                run_row("compile", "raw", f"bf16 + torch.compile({backend})", "compile",
                        raw_fn("bf16", compile_backend=backend), "bf16")
                reset_compiler(feat)
            elif key == "accelerate" and feat["accelerate"]:
                pair(key, "bf16 eager, accelerate", "eager", "bf16",
                     trainer_fn(ov(shape["batch"], ["train.precision=bf16", "train.strategy=accelerate"])),
                     raw_fn("bf16", flavor="accelerate"))
            elif key == "ddp" and (feat["nccl"] or device.type == "cpu"):
                group = "NCCL" if device.type == "cuda" else "gloo"
                pair(key, f"bf16 eager, DDP on 1 {group} process", "eager", "bf16",
                     trainer_fn(ov(shape["batch"], ["train.precision=bf16", "train.strategy=ddp"])),
                     raw_fn("bf16", flavor="ddp"))
                _drop_group_env()
            elif key == "ckpt":
                run_row("ckpt", "trainer", "bf16 eager, activation checkpointing on", "eager",
                        trainer_fn(ov(shape["batch"], ["train.precision=bf16",
                                                        "train.activation_checkpointing=true"])), "bf16")
            elif key == "fused_loss" and feat["compile"]:
                reset_compiler(feat)
                run_row("fused_loss", "raw", f"bf16 + compile, loss inside the compiled graph, batch {micro}",
                        "compile", raw_fn("bf16", compile_backend=backend, batch=micro, loss_in_graph=True),
                        "bf16")
            elif key == "host_data":
                reset_compiler(feat)
                run_row("host_data", "trainer", "recipe, batches in pageable host memory (copied each step)",
                        "recipe", trainer_fn(base_overrides(shape, device, tmp, micro, r_steps, host=True)
                                             + r_shape, recipe=RECIPE, w=2 if not smoke else 1, n=r_steps),
                        "bf16", n_steps=r_steps)
            elif key == "gpt1b" and (feat["bf16"] or smoke):
                big = ONE_B_SMOKE if smoke else ONE_B
                b_steps = 3 if not smoke else 1
                over = shape_overrides(big) + [f"train.batch_size={big['batch']}", "train.grad_clip=1.0",
                                               "train.precision=bf16", "train.compile=true",
                                               f"train.compile_backend={backend}"]
                reset_compiler(feat)
                label = f"GPT {big['n_layer']}x{big['n_embd']} ({'smoke' if smoke else '~1B'}), bf16, compile"
                run_row("gpt1b", "trainer", f"{label}, batch {big['batch']}", "gpt1b",
                        trainer_fn(over + base_overrides(big, device, tmp, big["batch"], b_steps),
                                   w=2 if not smoke else 1, n=b_steps), "bf16", n_steps=b_steps, shape_of=big)
            elif key in ("blocks", "fp8"):  # scale-out (issue 24): per-block compile, float8
                extra = "train.compile=blocks" if key == "blocks" else "train.precision=fp8"
                bf16 = ["train.precision=bf16", f"train.compile_backend={backend}"]
                fn = trainer_fn(ov(shape["batch"], [*bf16, extra]))
                if key == "fp8" and device.type == "cpu":  # emulated: minutes here; tests/ train it on CPU
                    fn = functools.partial(skip, "float8 on the CPU is emulated (minutes)")
                reset_compiler(feat)
                run_row(key, "trainer", f"bf16, {extra}", "compile", fn, "bf16")
            elif key in ("hsdp", "tp"):  # several GPUs, through the real launcher
                nproc, extra = (4, "parallel.dp_replicate=2") if key == "hsdp" else (2, "parallel.tp=2")
                over = ov(shape["batch"] // (nproc if key == "hsdp" else 1), ["train.precision=bf16", extra])
                run_row(key, "trainer", f"bf16, fsdp on {nproc} processes, {extra}", "compile",
                        functools.partial(launched_side, "fsdp", nproc, over, steps, shape), "bf16")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    parity(rows)
    print(f"\nGPT {shape['n_layer']}x{shape['n_embd']}, vocab {shape['vocab']}, block {shape['block']}, "
          f"device {dev_name}{' (CPU smoke: nominal peaks)' if smoke else ''}, torch {torch.__version__}; "
          f"{windows} windows x {steps} steps per build, median tokens/s with the range over windows; MFU "
          f"against the device's dense peak for the row's precision")
    print(B.table(rows, [("row", "row", ""), ("side", "side", ""), ("setting", "setting", ""),
                         ("batch", "batch", ""), ("tokens_per_s", "tokens/s", ".0f"),
                         ("tokens_range", "range", ""), ("tflops", "TFLOP/s", ".1f"),
                         ("mfu_pct", "MFU %", ".1f"), ("peak_gib", "peak GiB", ".1f"),
                         ("vs_raw", "÷ raw", ".3f"), ("vs_raw_range", "range", ""),
                         ("first_step_s", "1st step s", ".1f"), ("syncs_per_step", "syncs/step", ".2g"),
                         ("trainer_mfu", "trainer MFU", ".3f"), ("status", "status", "")]))
    print(rep.machine_line())
    print(f"wrote {rep.close()}")


def _drop_group_env() -> None:
    for var in ("MASTER_ADDR", "MASTER_PORT"):  # set by the trainer's group of one
        os.environ.pop(var, None)


def parity(rows: list[dict]) -> None:
    """trainer ÷ raw tokens/s where both sides ran at identical settings (the range: worst and best window
    pairs); the FSDP row against the bf16 raw loop; the recipe against the plain compiled loop at batch 32."""
    by = {(r["row"], r["side"]): r for r in rows if r.get("status") == "ok"}
    for r in rows:
        if r["side"] != "trainer" or r.get("status") != "ok":
            continue
        raw = by.get(("bf16" if r["row"] == "fsdp" else r["row"], "raw"))
        if raw:
            r["vs_raw"] = r["tokens_per_s"] / raw["tokens_per_s"]
            r["vs_raw_range"] = (f"{r['tokens_per_s_min'] / raw['tokens_per_s_max']:.3f}-"
                                 f"{r['tokens_per_s_max'] / raw['tokens_per_s_min']:.3f}")
    ck, bf = by.get(("ckpt", "trainer")), by.get(("bf16", "trainer"))
    if ck and bf:
        ck["peak_gib_without"] = bf["peak_gib"]
    rec, base_c = by.get(("recipe", "trainer")), by.get(("compile", "raw"))
    if rec and base_c:
        rec["vs_plain_compile_b32"] = rec["tokens_per_s"] / base_c["tokens_per_s"]

if __name__ == "__main__":
    main()

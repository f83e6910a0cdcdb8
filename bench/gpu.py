"""One GPU: the GPT-124M shape through the trainer and through a plain PyTorch loop, in the same process.

    python3 -m bench.gpu                      # one CUDA device, under 4 min; JSON to $OUT or bench/results
    python3 -m bench.gpu --only bf16,compile  # a subset of the rows below
    python3 -m bench.gpu --smoke              # a tiny shape on CPU in seconds (CI): every code path, no GPU

Shape (issue 6): 12 layers, width 768, 12 heads, vocab 50304, block 1024, batch 32, tied embeddings, SDPA,
AdamW (fused where torch has it), grad clip 1.0, the configs/gpt.yaml optimizer settings. Tokens are random,
generated once on the device (no downloads, no host copies in the step loop). Rows:

  fp32, fp16, bf16, compile   trainer and plain loop at identical settings (fp32 = TF32 matmuls, as the
                              trainer sets them; fp16 with a GradScaler; compile = bf16 + torch.compile)
  accelerate                  train.strategy=accelerate vs a plain Accelerator(mixed_precision="bf16") loop
  ddp                         train.strategy=ddp on one NCCL process vs a plain DDP loop
  ckpt                        trainer bf16 with train.activation_checkpointing=true (peak memory vs bf16)
  recipe                      configs/gpt124m_h200.yaml: the trainer's recommended recipe
  fused_loss                  plain loop at the recipe's micro-batch with the loss inside the compiled region
                              (what fusing the fp32 upcast + cross-entropy into the graph would buy)
  host_data                   the recipe with batches in pageable host memory, as a token file would give
  gpt1b                       the trainer at a ~1B shape (our GPT: 24 layers, width 2048, 16 heads, vocab
                              50304, block 1024: 1.31 B parameters), random weights, bf16 + compile, batch 8:
                              the "large model" row (transformers cannot travel to the device machine)

Throughput is timed over ``--steps`` optimizer steps after warm-up, between two device synchronisations;
TFLOP/s counts 6N + 12·L·d·T FLOPs per token (N: parameters, tied embedding once, position table excluded);
MFU is against 989 TFLOP/s (dense bf16, H100/H200). Trainer rows also report the trainer's own metrics row
(tokens/s, MFU against its per-precision peak table, GPU memory) and the host synchronisations per step seen
by ``torch.cuda.set_sync_debug_mode`` (0 expected). Rows that would overrun ``--budget-s`` are skipped and
marked; the JSON is rewritten after every row, so a run cut short still leaves its rows.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import os
import shutil
import sys
import tempfile
import time
import warnings

from . import common as B

T_START = time.monotonic()
PEAK = 989e12
ROWS = ("fp32", "fp16", "bf16", "compile", "accelerate", "ddp", "ckpt", "recipe", "fused_loss", "host_data",
        "gpt1b")
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


def trainer_side(recipe: str, overrides: list[str], warm: int, steps: int, feat: dict) -> dict:
    """The trainer: `build(cfg)` makes everything; this loop replaces fit() only to time a window."""
    from trainer.training.metrics import Stopwatch

    cfg = B.load_cfg(recipe, overrides)

    def body(tr) -> dict:
        dev = tr.device
        tr.metrics = B.RowCatcher()
        tr.strategy.model.train()
        accum = tr.cfg.train.grad_accum
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
        t0 = time.perf_counter()
        with count_syncs(dev, feat) as syncs:
            for _ in range(steps):
                tw = time.perf_counter()
                mb = micro()
                watch.data_s += time.perf_counter() - tw
                tr._run_step(mb)
                tr.progress.step += 1
        tr._since_log = steps
        tr._log()  # the trainer's own row; pulls the loss to the host
        sync(dev)
        wall = time.perf_counter() - t0
        row = tr.metrics.rows[-1]
        loss = row.get("loss")
        seq = tr.info.seq_len
        return {"wall_s": wall, "first_step_s": first,
                "syncs_per_step": None if syncs["n"] is None else syncs["n"] / steps,
                "trainer_tokens_per_s": row.get("tokens_per_s"), "trainer_mfu": row.get("mfu"),
                "trainer_gpu_mem_gb": row.get("gpu_mem_gb"), "loss": loss, "batch": tr.cfg.train.batch_size,
                "grad_accum": accum, "flops_per_token": tr.strategy.module.flops_per_sample(seq) / seq,
                "fused_adamw": bool(getattr(tr.optimizer, "defaults", {}).get("fused")),
                "peak_gib": peak_gib(dev)}

    out = B.inside_trainer(cfg, body)
    clean(_device_of(overrides))
    return out


def _device_of(overrides: list[str]):
    import torch

    dev = next((o.split("=", 1)[1] for o in overrides if o.startswith("device=")), "cpu")
    return torch.device("cuda" if dev == "cuda" else "cpu")


def raw_side(shape: dict, device, precision: str, warm: int, steps: int, feat: dict, **kw) -> dict:
    """A plain loop a user would write (nanoGPT style) on the trainer's GPT module, same seed and init."""
    try:
        return _raw_loop(shape, device, precision, warm, steps, feat, **kw)
    finally:
        clean(device)  # the loop's model, optimizer and activations are gone once it has returned


def _raw_loop(shape: dict, device, precision: str, warm: int, steps: int, feat: dict, *, compile_backend=None,
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
        t0 = time.perf_counter()
        with count_syncs(device, feat) as syncs:
            for i in range(warm, warm + steps):
                loss = step(i)
        loss = loss.item()  # the plain loop's one log line per window
        sync(device)
        wall = time.perf_counter() - t0
        return {"wall_s": wall, "first_step_s": first, "loss": loss, "batch": B_, "grad_accum": 1,
                "syncs_per_step": None if syncs["n"] is None else syncs["n"] / steps,
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


def finish(r: dict, steps: int, shape: dict) -> dict:
    tokens = r["batch"] * shape["block"] * steps
    r["tokens_per_s"] = tokens / r["wall_s"]
    r["tflops"] = r["tokens_per_s"] * r["flops_per_token"] / 1e12
    r["mfu_pct"] = 100 * r["tflops"] * 1e12 / PEAK
    return r


def main(argv=None) -> None:
    p = B.parser("gpu", __doc__)
    B.add_only(p, ROWS, "row(s)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed optimizer steps per row (default 10, smoke 2)")
    p.add_argument("--budget-s", type=float, default=225.0,
                   help="skip rows that would end after this many seconds from start (default 225: under "
                        "4 min)")
    args = p.parse_args(argv)
    only = B.only(p, args)

    import torch

    smoke = args.smoke
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
    warm = 1 if smoke else 3
    backend = "eager" if smoke else "inductor"  # smoke: dynamo only, no compiler (seconds)
    feat = features(device)
    tmp = tempfile.mkdtemp(prefix="bench-gpu-")
    base = shape_overrides(shape) + [f"train.batch_size={shape['batch']}", "train.grad_clip=1.0"]
    rows: list[dict] = []
    sources = B.file_digest("trainer/training/loop.py", "trainer/training/strategy.py",
                            "trainer/models/gpt.py", "configs/gpt124m_h200.yaml")
    settings = {"shape": shape, "steps": steps, "warmup": warm, "compile_backend": backend,
                "peak_flops": PEAK, "device": str(device), "budget_s": args.budget_s,
                "recipe": os.path.relpath(RECIPE, B.ROOT), "sources": sources}
    rep = B.Report("gpu", args, settings, features=feat)
    rep.doc["rows"] = rows

    def save() -> str:
        return rep.save()

    def run_row(name: str, side: str, setting: str, est_s: float, fn, **extra) -> None:
        elapsed = time.monotonic() - T_START
        row = {"row": name, "side": side, "setting": setting, **extra}
        if elapsed + est_s > args.budget_s and not smoke:
            row["status"] = f"skipped: time budget ({elapsed:.0f}s used, ~{est_s:.0f}s needed)"
        else:
            t0 = time.monotonic()
            try:
                r = fn()
                row.update(finish(r, steps if "steps" not in extra else extra["steps"], shape))
                row["status"] = "ok"
            except Exception as e:  # one failing row (OOM, a missing backend) must not lose the others
                msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                row["status"] = f"failed: {msg[:300]}"
                clean(device)
            row["row_s"] = time.monotonic() - t0
        rows.append(row)
        figures = ""
        if row["status"] == "ok":
            figures = (f"{row['tokens_per_s'] / 1e3:8.1f}k tok/s  MFU {row['mfu_pct']:5.1f}%  "
                       f"peak {B.fmt(row['peak_gib'], '.1f')} GiB  ({row['row_s']:.0f}s)")
        print(f"  {name:<10} {side:<8} {row['status']:<6} " + figures, flush=True)
        save()

    def trainer_fn(over: list[str], recipe: str = "gpt", w: int = warm, n: int = steps):
        return lambda: trainer_side(recipe, over, w, n, feat)

    def ov(micro: int, extra: list[str], host: bool = False) -> list[str]:
        return base + base_overrides(shape, device, tmp, micro, steps, host) + extra

    eager_s, compile_s = (20.0, 60.0) if not smoke else (0, 0)
    try:
        for i, (key, prec) in enumerate((("fp32", "fp32"), ("fp16", "fp16"), ("bf16", "bf16"))):
            if key not in only:
                continue
            if prec == "bf16" and not feat["bf16"]:
                continue
            sides = [("trainer", trainer_fn(ov(shape["batch"], [f"train.precision={prec}"]))),
                     ("raw", lambda prec=prec: raw_side(shape, device, prec, warm, steps, feat))]
            for side, fn in B.rotate(sides, i):
                run_row(key, side, f"{prec} eager", eager_s / 2, fn)
        if "compile" in only and feat["compile"]:
            compiled = ["train.precision=bf16", "train.compile=true", f"train.compile_backend={backend}"]
            for side, fn in (("trainer", trainer_fn(ov(shape["batch"], compiled))),
                             ("raw", lambda: raw_side(shape, device, "bf16", warm, steps, feat,
                                                      compile_backend=backend))):
                reset_compiler(feat)
                run_row("compile", side, f"bf16 + torch.compile({backend})", compile_s / 2, fn)
            reset_compiler(feat)
        if "accelerate" in only and feat["accelerate"]:
            for side, fn in (("trainer", trainer_fn(ov(shape["batch"], ["train.precision=bf16",
                                                                         "train.strategy=accelerate"]))),
                             ("raw", lambda: raw_side(shape, device, "bf16", warm, steps, feat,
                                                      flavor="accelerate"))):
                run_row("accelerate", side, "bf16 eager, accelerate", eager_s / 2, fn)
        if "ddp" in only and (feat["nccl"] or device.type == "cpu"):
            group = "NCCL" if device.type == "cuda" else "gloo"
            for side, fn in (("trainer", trainer_fn(ov(shape["batch"], ["train.precision=bf16",
                                                                         "train.strategy=ddp"]))),
                             ("raw", lambda: raw_side(shape, device, "bf16", warm, steps, feat,
                                                      flavor="ddp"))):
                run_row("ddp", side, f"bf16 eager, DDP on 1 {group} process", eager_s / 2, fn)
            for var in ("MASTER_ADDR", "MASTER_PORT"):  # set by the trainer's group of one
                os.environ.pop(var, None)
        if "ckpt" in only:
            run_row("ckpt", "trainer", "bf16 eager, activation checkpointing on", eager_s / 2,
                    trainer_fn(ov(shape["batch"], ["train.precision=bf16",
                                                   "train.activation_checkpointing=true"])))
        recipe_cfg = B.load_cfg(RECIPE, ["data.name=text", "data.path=null"])
        rt = recipe_cfg.train
        micro = rt.batch_size // rt.grad_accum
        r_steps = max(1, steps // 2) if not smoke else 1
        r_shape = [] if not smoke else shape_overrides(shape) + [f"train.batch_size={shape['batch'] * 2}",
                                                                   "train.grad_accum=2",
                                                                   f"train.compile_backend={backend}"]
        if smoke:
            micro = shape["batch"]
        r_batch = micro * (rt.grad_accum if not smoke else 2)
        if "recipe" in only:
            reset_compiler(feat)
            run_row("recipe", "trainer", f"{os.path.basename(RECIPE)}: batch {r_batch} = {micro} x "
                    f"{rt.grad_accum if not smoke else 2} accum, {rt.precision}, compile={rt.compile}",
                    compile_s * 0.7, trainer_fn(base_overrides(shape, device, tmp, micro, r_steps) + r_shape,
                                                recipe=RECIPE, w=2 if not smoke else 1, n=r_steps),
                    steps=r_steps)
        if "fused_loss" in only and feat["compile"]:
            reset_compiler(feat)
            run_row("fused_loss", "raw", f"bf16 + compile, loss inside the compiled graph, batch {micro}",
                    compile_s * 0.6, lambda: raw_side(shape, device, "bf16", warm, steps, feat,
                                                      compile_backend=backend, batch=micro,
                                                      loss_in_graph=True))
        if "host_data" in only:
            reset_compiler(feat)
            run_row("host_data", "trainer", "recipe, batches in pageable host memory (copied each step)",
                    compile_s * 0.5,
                    trainer_fn(base_overrides(shape, device, tmp, micro, r_steps, host=True) + r_shape,
                               recipe=RECIPE, w=2 if not smoke else 1, n=r_steps), steps=r_steps)
        if "gpt1b" in only and (feat["bf16"] or smoke):
            big = ONE_B_SMOKE if smoke else ONE_B
            b_steps = max(2, steps // 2) if not smoke else 1
            over = shape_overrides(big) + [f"train.batch_size={big['batch']}", "train.grad_clip=1.0",
                                           "train.precision=bf16", "train.compile=true",
                                           f"train.compile_backend={backend}"]
            reset_compiler(feat)
            label = f"GPT {big['n_layer']}x{big['n_embd']} ({'smoke' if smoke else '~1B'}), bf16 + compile"
            run_row("gpt1b", "trainer", f"{label}, batch {big['batch']}", compile_s * 1.5,
                    trainer_fn(over + base_overrides(big, device, tmp, big["batch"], b_steps),
                               w=2 if not smoke else 1, n=b_steps), steps=b_steps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # Parity: trainer / raw tokens per second where both sides ran at identical settings.
    by = {(r["row"], r["side"]): r for r in rows if r.get("status") == "ok"}
    for r in rows:
        raw = by.get((r["row"], "raw"))
        if r["side"] == "trainer" and raw and r.get("status") == "ok":
            r["vs_raw"] = r["tokens_per_s"] / raw["tokens_per_s"]
    ck, bf = by.get(("ckpt", "trainer")), by.get(("bf16", "trainer"))
    if ck and bf:
        ck["peak_gib_without"] = bf["peak_gib"]
    rec = by.get(("recipe", "trainer"))
    base_c = by.get(("compile", "raw"))
    if rec and base_c:
        rec["vs_plain_compile_b32"] = rec["tokens_per_s"] / base_c["tokens_per_s"]
    print(f"\nGPT {shape['n_layer']}x{shape['n_embd']}, vocab {shape['vocab']}, block {shape['block']}, "
          f"device {B.env_info().get('gpu', 'cpu')}, torch {torch.__version__}; {steps} timed steps per row")
    print(B.table(rows, [("row", "row", ""), ("side", "side", ""), ("setting", "setting", ""),
                         ("batch", "batch", ""), ("tokens_per_s", "tokens/s", ".0f"),
                         ("tflops", "TFLOP/s", ".1f"), ("mfu_pct", "MFU %", ".1f"),
                         ("peak_gib", "peak GiB", ".1f"), ("vs_raw", "÷ raw", ".3f"),
                         ("first_step_s", "1st step s", ".1f"), ("syncs_per_step", "syncs/step", ".2g"),
                         ("trainer_mfu", "trainer MFU", ".3f"), ("status", "status", "")]))
    print(rep.machine_line())
    print(f"wrote {rep.close()}")


if __name__ == "__main__":
    main()

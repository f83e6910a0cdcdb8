"""python -m trainer: train, check, config.

    python -m trainer train -c configs/cnn.yaml train.max_steps=50         # one process (CPU or one GPU)
    torchrun --standalone --nproc-per-node 2 -m trainer train -c configs/cnn.yaml
    python -m launch ddp --nproc-per-node 2 -c configs/cnn.yaml             # the same, chosen by the launcher
    python -m trainer check -c configs/gpt.yaml model.n_layer=8             # validate only (no torch import)
    python -m trainer config                                                # every key, type, default, help

main() reads top to bottom: config -> distributed init -> build -> train -> teardown in `finally`, then a
clean exit that keeps the intended exit code (see trainer/exitcodes.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time

from . import config as C
from . import exitcodes as X

log = logging.getLogger("trainer")
_KEEPALIVE: list = []  # see train()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer", description="Config-driven PyTorch trainer.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"exit codes: {', '.join(f'{k} {v}' for k, v in X.NAMES.items())}")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("train", "train a model"), ("check", "validate a config and exit (0 ok, 2 error)")):
        sp = sub.add_parser(name, help=help_, formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="config keys (KEY=VALUE overrides):\n" + C.describe() if name == "train" else None)
        sp.add_argument("-c", "--config", help="YAML recipe, e.g. configs/cnn.yaml")
        sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.max_steps=50")
    sp = sub.add_parser("config", help="list every config key with its type, default and help")
    sp.add_argument("-c", "--config", help="also print this recipe resolved with the overrides")
    sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    from . import compress, evaluate  # no torch import at module level: --help stays fast

    for name, help_, add in (("eval", "evaluate a run, checkpoint or weights file on its eval split",
                              evaluate.add_eval_arguments),
                             ("compress", "quantize or prune a trained model; before/after report",
                              compress.add_arguments),
                             ("export", "write a run or checkpoint as one .safetensors file",
                              evaluate.add_export_arguments)):
        add(sub.add_parser(name, help=help_, description=help_))
    return p


def _setup_logging(rank: int) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    # Console output from global rank 0 only; every rank also logs to its own file in the run dir.
    h.setLevel(logging.INFO if rank == 0 else logging.ERROR)
    root.addHandler(h)
    root.setLevel(logging.INFO)
    for noisy in ("torch", "accelerate", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _add_rank_log(run_dir: str, rank: int) -> None:
    os.makedirs(os.path.join(run_dir, "logs"), exist_ok=True)
    fh = logging.FileHandler(os.path.join(run_dir, "logs", f"rank-{rank}.log"))
    fh.setFormatter(logging.Formatter("%(asctime)s rank" + str(rank) + " %(levelname)s %(message)s"))
    logging.getLogger().addHandler(fh)


def _default_run_dir(cfg: C.Config) -> str:
    model = cfg.model.name.split(":")[-1].lower()
    base = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S") + f"-{model}")
    path, i = base, 1
    while os.path.exists(path):
        i += 1
        path = f"{base}-{i}"
    return path


def _write_exit_reason(code: int, reason: str) -> None:
    """For the launcher: torchrun reports every worker failure as exit 1, so say what it really was."""
    d = os.environ.get("TRAINER_EXIT_DIR")
    if not d or code == X.OK:
        return
    try:
        rank = int(os.environ.get("RANK", "0"))
        with open(os.path.join(d, f"exit-rank{rank}.json"), "w", encoding="utf-8") as fh:
            json.dump({"rank": rank, "code": code, "reason": reason[:500], "time": time.time()}, fh)
    except OSError:
        pass


def train(cfg: C.Config) -> int:
    """Everything after the config is valid. Returns an exit code."""
    import torch

    from . import dist as D
    from .data import build_datasets
    from .finetune import merge_lora_file, prepare_for_finetune
    from .loop import Trainer
    from .models import build_model, flops_per_sample
    from .optim import apply_freeze, build_optimizer
    from .strategy import Strategy, make_accelerator, resolve_mode

    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    accelerator = None
    if cfg.train.strategy == "accelerate":  # Accelerator creates the process group itself
        accelerator = make_accelerator(cfg, D.pick_device(cfg.device, int(os.environ.get("LOCAL_RANK", 0))))
    state = D.init(cfg.device, cfg.dist.init_timeout_s, cfg.dist.collective_timeout_s,
                   want_group=accelerator is None, force_group=cfg.train.strategy in ("ddp", "fsdp"))
    if accelerator is not None and torch.distributed.is_initialized():
        state.backend = torch.distributed.get_backend()
        D.add_groups(state, cfg.dist.collective_timeout_s)
    _setup_logging(state.rank)
    created: list[str] = []
    try:
        mode = resolve_mode(cfg, state)
        C.check_world(cfg, state.world_size)
        torch.manual_seed(cfg.seed)
        train_ds, eval_ds, info = build_datasets(cfg)
        module = build_model(cfg, info)  # identical init on every rank: seeded just above
        module = prepare_for_finetune(module, cfg)  # model.init_from, LoRA wrapping, trainable report
        trainable, total = apply_freeze(module, cfg.train.freeze)
        # MFU is reported on CUDA only; counting FLOPs imports torch._dynamo (~1.3 s), so not on CPU.
        flops = flops_per_sample(module, info) if state.device.type == "cuda" else None  # before FSDP shards
        run_dir = D.broadcast_object(state, cfg.run.dir or _default_run_dir(cfg))
        resume_path = _find_resume(cfg, run_dir)
        if state.is_main and not os.path.isdir(run_dir):
            os.makedirs(run_dir)
            created.append(run_dir)
        D.barrier(state)
        _add_rank_log(run_dir, state.rank)
        import socket

        for h in logging.getLogger().handlers:  # who wrote this log: tests and people count real processes
            if isinstance(h, logging.FileHandler):
                h.stream.write(f"rank {state.rank} pid {os.getpid()} host {socket.gethostname()} "
                               f"world {state.world_size}\n")
        if state.is_main:
            with open(os.path.join(run_dir, "config.yaml"), "w", encoding="utf-8") as fh:
                fh.write(C.dump(cfg))
        torch.manual_seed(cfg.seed + 1 + state.rank)  # dropout differs per rank; init did not
        strategy = Strategy(cfg, state, mode, accelerator)
        optimizer = strategy.wrap(module, lambda m: build_optimizer(m, cfg, state.device))
        log.info("data: %s (fingerprint %s)", info.description, info.fingerprint)
        log.info("model: %s, %.3fM parameters (%.3fM trainable); %s on %d process(es), %s, device %s",
                 cfg.model.name, total / 1e6, trainable / 1e6, mode, state.world_size, cfg.train.precision,
                 state.device)
        trainer = Trainer(cfg, state, strategy, optimizer, train_ds, eval_ds, info, run_dir,
                          flops)
        # Freeing a DDP model after its gloo group can deadlock on the GIL (a gloo worker thread frees a
        # finished all-reduce while the group's destructor waits for it); the process ends with os._exit,
        # so keep these alive until then instead of letting train() return them to the GC.
        _KEEPALIVE.extend([strategy, module, optimizer, trainer])
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
        if restarts:
            logging.getLogger("trainer").warning(
                "elastic restart %d (of at most %s): resuming from the latest checkpoint", restarts,
                os.environ.get("TORCHELASTIC_MAX_RESTARTS", "?"))
        if resume_path:
            trainer.resume_from(resume_path)
        created.clear()  # from here on the run dir holds real work
        code = trainer.fit()
        if code == X.OK and state.is_main:
            _export_final(strategy, optimizer, run_dir)
            if cfg.lora.targets:  # model.safetensors holds plain weights, adapters merged (README)
                merge_lora_file(os.path.join(run_dir, "model.safetensors"))
        elif code == X.OK:
            strategy.full_state(optimizer)  # FSDP: gathering the full state is a collective
        return code
    except BaseException:
        for d in created:
            shutil.rmtree(d, ignore_errors=True)
        raise
    finally:
        D.teardown(state)


def _find_resume(cfg: C.Config, run_dir: str):
    from . import checkpoint as ckpt

    r = cfg.run.resume
    if r == "never":
        if os.path.isdir(run_dir) and os.listdir(run_dir):
            raise C.ConfigError(f"run.dir={run_dir!r}: not empty and run.resume=never (choose another run.dir "
                                "or run.resume=auto)")
        return None
    if r == "auto":
        return ckpt.CheckpointDir(os.path.join(run_dir, "checkpoints")).find_resumable()
    try:
        return ckpt.resolve(r)
    except ckpt.CheckpointError as e:
        raise C.ConfigError(f"run.resume={r!r}: {e}") from None


def _export_final(strategy, optimizer, run_dir: str) -> None:
    from safetensors.torch import save_file

    msd, _ = strategy.full_state(optimizer)
    # clone: tied weights share storage, which safetensors refuses.
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in msd.items()},
              os.path.join(run_dir, "model.safetensors"), metadata={"format": "pt"})


def _is_timeout(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, (RuntimeError, TimeoutError)) and ("timed out" in text or "timeout" in text)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.cmd == "config":
        import signal

        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `python -m trainer config | head` ends quietly
        print("Config keys (YAML sections or dotted KEY=VALUE overrides):\n" + C.describe())
        if args.config or args.overrides:
            try:
                print("\nresolved:\n" + C.dump(C.load(args.config, args.overrides)))
            except C.ConfigError as e:
                print(f"config error: {e}", file=sys.stderr)
                sys.exit(X.CONFIG)
        return
    if args.cmd in ("eval", "compress", "export"):  # trainer/evaluate.py, trainer/compress.py
        _setup_logging(0)
        from .evaluate import run_tool

        sys.exit(run_tool(args))
    try:
        cfg = C.load(args.config, args.overrides)
    except C.ConfigError as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"config error: {e}", file=sys.stderr)
        _write_exit_reason(X.CONFIG, str(e))
        sys.exit(X.CONFIG)
    if args.cmd == "check":
        print("config ok")
        return
    code, reason = X.INTERNAL, "internal error"
    try:
        code = train(cfg)
        reason = X.NAMES.get(code, "")
    except C.ConfigError as e:
        code, reason = X.CONFIG, str(e)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"config error: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        code, reason = 128 + 2, "interrupted"
    except Exception as e:
        if _is_timeout(e):  # the watchdog normally fires first; this is the process group's backstop
            code, reason = X.HANG, f"collective timed out: {e}"
            print(f"hang: {reason.splitlines()[0][:300]}", file=sys.stderr)
            _write_exit_reason(code, reason)
            from .dist import clean_exit

            clean_exit(code)
        # a bug: full traceback to the log, one line to the user
        logging.getLogger("trainer").exception("internal error")
        code, reason = X.INTERNAL, f"{type(e).__name__}: {e}"
    _write_exit_reason(code, reason)
    from .dist import clean_exit

    clean_exit(code)


if __name__ == "__main__":
    main()

"""python -m trainer: train, check, config, eval, export, compress, generate, compare, data.

    python -m trainer train -c configs/cnn.yaml train.max_steps=50         # one process (CPU or one GPU)
    torchrun --standalone --nproc-per-node 2 -m trainer train -c configs/cnn.yaml
    python -m launch ddp --nproc-per-node 2 -c configs/cnn.yaml             # the same, chosen by the launcher
    python -m trainer check -c configs/gpt.yaml model.n_layer=8             # validate only (no torch import*)
    python -m trainer check --json -c configs/gpt.yaml                      # ... printing the resolved config
    python -m trainer config                                                # every key, type, default, help
    python -m trainer generate --from runs/llm --prompt "Q: ..."            # complete with a fine-tuned LM
    python -m trainer data -c configs/finetune_llm.yaml --show 2             # what the run will learn

(*) ``check`` also checks that each ``package.module:Name`` the config names exists: it finds the module
without importing it and looks the name up in its source; a module whose source does not settle it (star
imports, lazy modules such as transformers) is imported, after torch.

This module parses arguments and dispatches; nothing imports it. ``train`` ends with a clean exit that
keeps the intended exit code (trainer/exitcodes.py, trainer/runtime/dist.py ``clean_exit``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from . import config
from . import exitcodes as codes
from .objects import check_import_paths
from .runtime.logs import quiet_torch, setup_logging
from .tools import cli as tools_cli


class _Parser(argparse.ArgumentParser):
    """One line on a usage error (exit 2), with a "did you mean" for commands and options."""

    argv: list[str] = []

    def error(self, message: str):
        bad = next((a for a in self.argv[:1] if a not in COMMANDS and not a.startswith("-")), None)
        if "invalid choice" in message and bad:
            message = f"unknown command {bad!r}{config.did_you_mean(bad, COMMANDS)}"
        print(f"{self.prog}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(codes.CONFIG)


COMMANDS = ("train", "check", "config", *tools_cli.COMMANDS)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m trainer",
        description="Config-driven PyTorch trainer.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"exit codes: {', '.join(f'{k} {v}' for k, v in codes.NAMES.items())}",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("train", "train a model"), ("check", "validate a config and exit (0 ok, 2 error)")):
        sp = sub.add_parser(
            name,
            help=help_,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog="config keys (KEY=VALUE overrides):\n" + config.describe() if name == "train" else None,
        )
        sp.add_argument("-c", "--config", help="YAML recipe, e.g. configs/cnn.yaml")
        sp.add_argument(
            "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.max_steps=50"
        )
        if name == "check":
            sp.add_argument(
                "--json",
                action="store_true",
                help="print the resolved config as JSON (for tools such as `python -m launch doctor`)",
            )
            sp.add_argument(
                "--no-imports",
                action="store_true",
                help="do not check that the package.module:Name paths exist (the keys and values only)",
            )
            sp.add_argument(
                "--world-size",
                type=int,
                help="also plan the device mesh for this many processes (with --nproc-per-node per node)",
            )
            sp.add_argument("--nproc-per-node", type=int, help="processes per node (with --world-size)")
    sp = sub.add_parser("config", help="list every config key with its type, default and help")
    sp.add_argument("-c", "--config", help="also print this recipe resolved with the overrides")
    sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    tools_cli.add_commands(sub)
    return p


def _config_command(args: argparse.Namespace) -> int:
    print("Config keys (YAML sections or dotted KEY=VALUE overrides):\n" + config.describe())
    if args.config or args.overrides:
        try:
            print("\nresolved:\n" + config.dump(config.load(args.config, args.overrides)))
        except config.ConfigError as e:
            print(f"config error: {e}", file=sys.stderr)
            return codes.CONFIG
    return codes.OK


def _tool_command(args: argparse.Namespace) -> int:
    # Each implementation imports torch (~1.5 s): only the one that runs, never for --help or check.
    if args.cmd == "compress":
        from .tools.compress import compress_main as fn
    elif args.cmd == "export":
        from .tools.export import export_main as fn
    elif args.cmd == "generate":
        from .tools.generate import generate_main as fn
    elif args.cmd == "compare":
        from .tools.compare import compare_main as fn
    elif args.cmd == "data":
        from .tools.show_data import data_main as fn
    else:
        from .tools.evaluate import eval_main as fn
    setup_logging(0)
    return tools_cli.run_tool(fn, args)


def _mesh(cfg: config.Config, world_size: int, nproc_per_node: int) -> dict:
    """The device mesh the workers of this job will build (runtime.mesh; no torch), or a ConfigError."""
    from .runtime.mesh import DIMS, mode_for, plan_mesh

    mode = mode_for(cfg.train.strategy, world_size)
    plan = plan_mesh(cfg, mode, world_size, nproc_per_node)
    batch = config.batch_plan(cfg, plan.dp)
    return {**dict(zip(DIMS, plan.shape)), "text": plan.describe(mode), "batch": batch}


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    _Parser.argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*(args.overrides or []), *extra]  # KEY=VALUE after an option: still overrides
        extra = []
    if extra:  # e.g. `--max_steps 10`, meant as train.max_steps=10
        given = _Parser.argv
        nxt = given[given.index(extra[0]) + 1] if given.index(extra[0]) + 1 < len(given) else None
        print(f"python -m trainer: {config.option_hint(extra[0], nxt)}", file=sys.stderr)
        sys.exit(codes.CONFIG)
    if args.cmd in ("config", "check"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `python -m trainer config | head` ends quietly
    if args.cmd == "config":
        sys.exit(_config_command(args))
    if args.cmd in tools_cli.COMMANDS:
        sys.exit(_tool_command(args))
    mesh = None
    try:
        cfg = config.load(args.config, args.overrides)
        if args.cmd == "check" and args.world_size:
            mesh = _mesh(cfg, args.world_size, args.nproc_per_node or args.world_size)
        if args.cmd == "check" and not args.no_imports:  # the launcher's preflight: before any worker
            setup_logging(0)  # a library's import notices off the console (runtime/logs.py)
            check_import_paths(cfg, before_import=quiet_torch)
    except config.ConfigError as e:
        if args.cmd == "check" and args.json:
            print(json.dumps({"ok": False, "error": str(e)}))
        codes.write_exit_reason(codes.config_error(e), str(e))
        sys.exit(codes.CONFIG)
    if args.cmd == "check":
        if args.json:
            print(json.dumps({"ok": True, "config": config.to_dict(cfg), **({"mesh": mesh} if mesh else {})}))
        else:
            print("config ok" + (f"; mesh {mesh['text']}" if mesh else ""))
        return
    # `check`, `config` and --help never import torch (~1.5 s): the training stack is imported only here.
    from .api import train_command
    from .runtime.dist import clean_exit
    from .runtime.signals import die_with_launcher

    die_with_launcher()

    code, reason = train_command(cfg)
    codes.write_exit_reason(code, reason)
    clean_exit(code)


if __name__ == "__main__":
    main()

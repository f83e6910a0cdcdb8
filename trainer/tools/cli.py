"""The offline tools' command lines (``eval``, ``export``, ``data``, ...) and how a tool's error ends.

Nothing here imports torch: ``python -m trainer --help`` and ``check`` build these parsers, and ``import
torch`` alone costs ~1.5 s. ``trainer/__main__.py`` imports a tool's implementation only when it runs.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..config import ConfigError
from ..exitcodes import CONFIG, INTERNAL

log = logging.getLogger("trainer")

QUANT_SCHEMES = ("int8-dynamic", "int8-weight", "torch-ao-dynamic")  # the --scheme names (tools/quantize.py)

COMMANDS = {  # name -> (help, argument adder); see add_commands
    "eval": "evaluate a run, checkpoint or weights file on its eval split",
    "compress": "quantize or prune a trained model; before/after report",
    "export": "write a run or checkpoint as one .safetensors file",
    "generate": "complete prompts with a fine-tuned language model (a run, a checkpoint or an hf/ dir)",
    "compare": "plot several runs' curves on one figure; print their config differences and final metrics",
    "data": "build the data as `train` would and show the format, counts and what is learned",
}

BEST_HELP = (
    "use the run's best checkpoint by the metric its manifests record (checkpoint.monitor), not the newest"
)


def add_eval_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--from",
        dest="src",
        required=True,
        metavar="RUN_OR_CHECKPOINT",
        help="run dir, checkpoints dir, checkpoint dir, compress output, .safetensors or .pt file",
    )
    sp.add_argument("--best", action="store_true", help=BEST_HELP)
    sp.add_argument("-c", "--config", help="recipe to use instead of the config saved with the weights")
    sp.add_argument("--json", metavar="FILE", help="also write the result as JSON to FILE")
    sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. data.classes=[]")


def add_export_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--from",
        dest="src",
        required=True,
        metavar="RUN_OR_CHECKPOINT",
        help="run dir, checkpoints dir, checkpoint dir or weights file",
    )
    sp.add_argument("--out", required=True, metavar="FILE.safetensors", help="the single file to write")
    sp.add_argument("--best", action="store_true", help=BEST_HELP)


def add_compare_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("runs", nargs="+", metavar="RUN", help="run directories (each with metrics.jsonl)")
    sp.add_argument(
        "--metric",
        default=None,
        help="eval metric to plot and rank by, e.g. eval/accuracy (default: the runs' task metric)",
    )
    sp.add_argument(
        "--out", default="compare.png", metavar="FILE.png", help="the figure (default compare.png)"
    )


def add_compress_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--from",
        dest="src",
        required=True,
        metavar="RUN_OR_CHECKPOINT",
        help="run dir, checkpoint dir, .safetensors or .pt file (config from the run or -c)",
    )
    sp.add_argument("--method", required=True, choices=("quantize", "prune"))
    sp.add_argument(
        "--out", required=True, metavar="DIR", help="new directory for the model(s) and report.json"
    )
    sp.add_argument("-c", "--config", help="recipe to use instead of the config saved with the weights")
    q = sp.add_argument_group("quantize")
    q.add_argument(
        "--scheme",
        default="auto",
        help=f"auto (default: every scheme is timed against fp32 on this machine and the fastest that is "
        f"not slower is used; the report shows the measurement), or comma-separated from "
        f"{', '.join(QUANT_SCHEMES)} (torchao schemes fall back to torch-ao-dynamic if torchao fails)",
    )
    p = sp.add_argument_group("prune")
    p.add_argument("--amount", type=float, default=0.5, help="fraction of weights (or channels) to remove")
    p.add_argument(
        "--scope",
        choices=("global", "layer", "channel"),
        default="global",
        help="global / layer: unstructured magnitude, one threshold for all chosen layers or one "
        "per layer; channel: remove whole output channels (tensors shrink)",
    )
    p.add_argument(
        "--layers",
        default="",
        metavar="PATTERNS",
        help="comma-separated Linear/Conv2d layers to prune (glob or re:REGEX on module names; "
        "default all), e.g. 'fc*,conv2'",
    )
    p.add_argument(
        "--finetune-steps",
        type=int,
        default=0,
        help="SGD steps on the train split after pruning "
        "(masks on for unstructured), before the masks are made permanent",
    )
    p.add_argument("--lr", type=float, default=None, help="fine-tune learning rate (default optim.lr / 10)")
    m = sp.add_argument_group("measurement")
    m.add_argument("--batch-size", type=int, default=None, help="latency batch (default train.batch_size)")
    m.add_argument("--repeats", type=int, default=20, help="timed forward passes per model (median reported)")
    m.add_argument("--threads", type=int, default=None, help="torch threads for latency (default: current)")
    sp.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.classes=[]"
    )


def add_generate_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--from",
        dest="src",
        required=True,
        metavar="RUN_OR_DIR",
        help="a model.name=hf run dir (its hf/), a checkpoint dir of one, or a Hugging Face model dir",
    )
    src = sp.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt (repeat for several)")
    src.add_argument("--prompt-file", metavar="FILE", help="a file with one prompt a line")
    sp.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate per prompt (64)")
    sp.add_argument(
        "--temperature", type=float, default=0.0, help="0 = greedy, deterministic (default); > 0 samples"
    )
    sp.add_argument("--top-k", type=int, default=0, help="sample among the K most likely tokens (0 = all)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the sampling (temperature > 0)")


def add_data_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("-c", "--config", help="the YAML recipe `train` would run")
    sp.add_argument("--split", choices=("train", "eval"), default="train", help="which split (train)")
    sp.add_argument(
        "--show", type=int, default=3, metavar="N", help="documents (or samples) to print (default 3)"
    )
    sp.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: format, documents, tokens, learned_tokens, truncated, dropped, "
        "samples [{text, learned}]",
    )
    sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides, as for train")


def add_commands(sub) -> None:
    """Add the tools' subcommands to the ``python -m trainer`` subparsers."""
    adders = {
        "eval": add_eval_arguments,
        "compress": add_compress_arguments,
        "export": add_export_arguments,
        "generate": add_generate_arguments,
        "compare": add_compare_arguments,
        "data": add_data_arguments,
    }
    for name, help_ in COMMANDS.items():
        adders[name](sub.add_parser(name, help=help_, description=help_))


def run_tool(fn, args: argparse.Namespace) -> int:
    """Run a tool's main ``fn(args)``: a bad input is one line and exit 2, like `train`."""
    try:
        return fn(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return CONFIG
    except KeyboardInterrupt:
        return 128 + 2
    except Exception:  # a bug: the traceback goes to the console log
        log.exception("internal error in %s", args.cmd)
        return INTERNAL

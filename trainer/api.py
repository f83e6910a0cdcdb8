"""Public entry points: ``fit(...)`` for notebooks and scripts, ``train_command(cfg)`` for the CLI.

``train_command(cfg)`` is what ``python -m trainer train`` runs once the config is valid: it trains and
maps every way a run can end to an exit code and a one-line reason (README "Exit codes"). ``fit`` does the
same from Python with objects instead of import paths, and returns instead of exiting::

    from trainer import fit
    result = fit("configs/gpt.yaml", model=my_module, train_data=my_dataset, overrides=["train.max_steps=50"])
    result.exit_code, result.model, result.summary, result.run_dir

Under torchrun a script that calls ``fit`` trains with DDP on every process (``train.strategy=auto``); see
README "Python API".
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from torch import nn

from . import exitcodes as codes
from .config import Config, ConfigError, load_config
from .run import Given, train_parts
from .runtime import io_faults
from .runtime.dist import PeerLost
from .runtime.redact import redact

log = logging.getLogger("trainer")


def _is_timeout(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, (RuntimeError, TimeoutError)) and ("timed out" in text or "timeout" in text)


# DDP's error when a parameter got no gradient in the previous step (torch/nn/parallel/distributed.py)
_UNUSED_PARAMETERS = "Expected to have finished reduction in the prior iteration"


def _unused_parameters(e: BaseException) -> Optional[str]:
    """The one-line reason for DDP's unused-parameter error, naming the key that allows them."""
    text = str(e)
    if not isinstance(e, RuntimeError) or _UNUSED_PARAMETERS not in text:
        return None
    which = next((ln.strip() for ln in text.splitlines() if "did not receive grad" in ln), "")
    return (
        "ddp: some parameters got no gradient in the forward pass"
        + (f" ({which})" if which else "")
        + ": set train.find_unused_parameters=true (slower), or use every parameter in forward"
    )


def _outcome(e: BaseException, run_dir: Optional[str]) -> tuple[int, str]:
    """The exit code and one-line reason of a run that raised ``e``."""
    if isinstance(e, ConfigError):
        return codes.config_error(e), str(e)
    unused = _unused_parameters(e)
    if unused:
        return codes.config_error(ConfigError(unused)), unused
    if isinstance(e, KeyboardInterrupt):
        return 128 + 2, "interrupted"
    if isinstance(
        e, SystemExit
    ):  # sys.exit() in user code (a model or dataset module) must not look like success
        reason = f"sys.exit({e.code!r}) was called during the run (user code?); the run did not finish"
        print(f"error: {reason}", file=sys.stderr)
        return codes.INTERNAL, reason
    if isinstance(e, PeerLost):
        print(str(e), file=sys.stderr)
        return codes.PEER_LOST, str(e)
    fault = io_faults.describe(e, where=run_dir or "the run directory")
    if fault:
        print(redact(f"{fault} (fix the storage, then rerun the same command: it resumes)"), file=sys.stderr)
        return codes.STORAGE, fault
    if _is_timeout(e):  # the watchdog normally fires first; this is the process group's backstop
        reason = f"collective timed out: {e}"
        print(redact(f"hang: {reason.splitlines()[0][:300]}"), file=sys.stderr)
        return codes.HANG, reason
    # a bug: full traceback to the log, one line to the user
    log.error("internal error", exc_info=e)
    return codes.INTERNAL, f"{type(e).__name__}: {e}"


def train_command(cfg: Config) -> tuple[int, str]:
    """Train; returns (exit code, reason). Never raises for a run's own failure."""
    try:
        code, _ = train_parts(cfg)
        return code, codes.NAMES.get(code, "")
    except (Exception, KeyboardInterrupt, SystemExit) as e:
        code, reason = _outcome(e, cfg.run.dir)
        return code, redact(reason)  # the launcher's exit-reason file: no URL passwords


@dataclass
class FitResult:
    """What ``fit`` returns. ``model`` is the trained module, unwrapped (no DDP/compile wrapper; under FSDP
    its parameters stay sharded DTensors); ``summary`` is ``run_dir/summary.json`` (empty unless the run
    finished, and on ranks other than 0)."""

    exit_code: int
    model: Optional[nn.Module] = None
    summary: dict = field(default_factory=dict)
    run_dir: Optional[str] = None
    reason: str = ""  # the one-line reason of a non-zero exit code


def _path_of(obj: Any) -> str:
    """``module:QualName`` of an object's class (or of a function): what the run's config.yaml records."""
    target = (
        obj
        if callable(obj) and not isinstance(obj, nn.Module) and hasattr(obj, "__qualname__")
        else type(obj)
    )
    return f"{target.__module__}:{target.__qualname__}"


def fit(
    config: Any = None,
    *,
    model: Optional[nn.Module] = None,
    train_data: Any = None,
    eval_data: Any = None,
    loss: Optional[Callable] = None,
    overrides: Any = (),
) -> FitResult:
    """Train like ``python -m trainer train``, from Python; never exits the process, callable again.

    ``config``: a YAML path, a dict, a ``Config`` or None (defaults); ``overrides``: dotted ``KEY=VALUE``
    strings on top. ``model``: an ``nn.Module`` used instead of ``model.name``; ``train_data`` /
    ``eval_data``: map-style datasets whose samples are ``(x, y)`` pairs or dicts (an HF ``datasets.Dataset``
    in torch format works), or an ``IterableDataset`` stream (README "Streaming data"); without
    ``eval_data`` the train data is split by ``data.eval_fraction`` (a stream has no split: no eval).
    ``loss``: ``fn(outputs, targets) -> scalar tensor`` used instead of ``train.loss``. The run's
    ``config.yaml`` records the objects' classes as ``model.name`` / ``data.name`` / ``train.loss``.
    """
    named = []
    if model is not None:
        named.append(f"model.name={_path_of(model)}")
    if train_data is not None:
        named.append(f"data.name={_path_of(train_data)}")
    if loss is not None:
        named.append(f"train.loss={_path_of(loss)}")
    overrides = [overrides] if isinstance(overrides, str) else list(overrides)
    cfg = None
    try:
        cfg = load_config(config, [*overrides, *named])
        code, parts = train_parts(cfg, given=Given(model, train_data, eval_data, loss))
    except (Exception, KeyboardInterrupt, SystemExit) as e:
        code, reason = _outcome(e, cfg.run.dir if cfg is not None else None)
        return FitResult(code, reason=reason)
    finally:
        _close_rank_logs()
    summary: dict = {}
    path = os.path.join(parts.run_dir, "summary.json")
    if parts.state.is_main and os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            summary = json.load(fh)
    return FitResult(code, parts.strategy.module, summary, parts.run_dir, codes.NAMES.get(code, ""))


def _close_rank_logs() -> None:
    """The run's ``logs/rank-N.log`` handler: closed, so that later logging in the caller's process (and the
    next ``fit``) does not write into a finished run."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.FileHandler):
            root.removeHandler(h)
            h.close()

"""User objects by import path: ``package.module:Name`` (a model, a dataset, a loss) resolved and called.

Any failure is a one-line :class:`~trainer.config.ConfigError` naming the config key, never a traceback.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import ConfigError


def import_object(key: str, spec: str) -> Any:
    """Resolve "package.module:Name"; any failure is a one-line ConfigError naming the config key."""
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise ConfigError(f"{key}={spec!r}: expected package.module:Name")
    try:
        module = importlib.import_module(mod_name)
    except SystemExit as e:  # a module that exits on import would end the run with its code, silently
        raise ConfigError(
            f"{key}={spec!r}: importing module {mod_name!r} called sys.exit({e.code!r})"
        ) from None
    except Exception as e:  # ImportError, but also a SyntaxError or any error raised by the module body
        raise ConfigError(
            f"{key}={spec!r}: cannot import module {mod_name!r}: {type(e).__name__}: {e}"
        ) from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(
                f"{key}={spec!r}: cannot import {attr!r}: module {mod_name!r} has no attribute {part!r}"
            )
        obj = getattr(obj, part)
    return obj


def build_object(key: str, spec: str, kwargs: dict) -> Any:
    """Import "package.module:Name" and call it with the `<section>.kwargs` mapping; one-line errors."""
    factory = import_object(key, spec)
    try:
        return factory(**kwargs)
    except SystemExit as e:
        raise ConfigError(f"{key}={spec!r}: calling it called sys.exit({e.code!r})") from None
    except Exception as e:
        kw_key = key.rsplit(".", 1)[0] + ".kwargs"
        raise ConfigError(
            f"{key}={spec!r}: calling it with {kw_key}={kwargs!r} failed: {type(e).__name__}: {e}"
        ) from None

"""User objects by import path: ``package.module:Name`` (a model, a dataset, a loss) resolved and called.

Any failure is a one-line :class:`~trainer.config.ConfigError` naming the config key, never a traceback.
:func:`check_import_paths` finds a typo before anything heavy runs (``check``, and ``train`` before torch
is imported, data built or workers started): the module is located without importing it, and the name is
looked up in its source; only when the source does not settle it is the module imported.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Callable
from typing import Any, Optional

from .config import Config, ConfigError, did_you_mean, iter_leaves
from .config import flat as config_flat


def import_paths(cfg: Config) -> list[tuple[str, str]]:
    """(key, spec) of every ``package.module:Name`` the config names: the schema's ``kind="import"`` keys."""
    flat = config_flat(cfg)
    keys = [key for key, _tp, _default, meta in iter_leaves() if meta.get("kind") == "import"]
    return [(k, flat[k]) for k in keys if isinstance(flat.get(k), str) and ":" in flat[k]]


def check_import_paths(cfg: Config, skip: tuple = (), before_import: Optional[Callable] = None) -> None:
    """Every import path of the config (but the keys in ``skip``, given as objects) exists.
    ``before_import``: called once before the first module that must be imported to tell."""
    for key, spec in import_paths(cfg):
        if key not in skip:
            check_import_path(key, spec, before_import)


def _path_hint() -> str:
    pp = os.environ.get("PYTHONPATH")
    return (
        f"; it is looked for in the working directory ({os.getcwd()}), PYTHONPATH "
        f"({pp if pp else 'not set'}) and the installed packages: run from the folder that holds it, or "
        "add that folder to PYTHONPATH"
    )


def _locate(key: str, spec: str, mod_name: str):
    """The module's spec, found without importing it (nor, where possible, its parent packages)."""
    parts = mod_name.split(".")
    found, path = None, None
    for i, part in enumerate(parts):
        name = ".".join(parts[: i + 1])
        if name in sys.modules or i == 0:
            try:
                found = importlib.util.find_spec(name)  # imports nothing for a top-level name
            except (ImportError, ValueError):
                found = None
        else:
            found = next(
                (
                    s
                    for f in sys.meta_path
                    if hasattr(f, "find_spec") and (s := f.find_spec(name, path)) is not None
                ),
                None,
            )
        if found is None:
            if i == 0:
                near = did_you_mean(part, [mi.name for mi in pkgutil.iter_modules()])
                raise ConfigError(f"{key}={spec!r}: no module named {part!r}{near}{_path_hint()}")
            parent = ".".join(parts[:i])
            near = did_you_mean(part, [mi.name for mi in pkgutil.iter_modules(path)])
            raise ConfigError(f"{key}={spec!r}: package {parent!r} has no module {part!r}{near}")
        path = found.submodule_search_locations
        if path is None and i < len(parts) - 1:
            raise ConfigError(
                f"{key}={spec!r}: {name!r} is a module, not a package (no {parts[i + 1]!r} in it)"
            )
    return found


def _static_names(origin: Optional[str]) -> Optional[set]:
    """Names a module's source binds at top level (in if/try/with blocks too, TYPE_CHECKING imports
    included), or None if its source cannot settle the question (no source, a star import, a module-level
    __getattr__, or names made at run time)."""
    if not origin or not origin.endswith(".py"):
        return None
    try:
        with open(origin, encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None  # the import reports it properly
    names: set = set()
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                if a.name == "*":
                    return None
                names.add(a.asname or a.name.split(".")[0])
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For, ast.With)):
            targets = getattr(node, "targets", None) or [getattr(node, "target", None)]
            if isinstance(node, ast.With):
                targets = [i.optional_vars for i in node.items]
            for t in targets:
                for n in ast.walk(t) if t is not None else ():
                    if isinstance(n, ast.Name):
                        names.add(n.id)
        for field in ("body", "orelse", "finalbody", "handlers"):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                stack.extend(getattr(node, field, None) or [])
    return None if "__getattr__" in names else names


def check_import_path(key: str, spec: str, before_import: Optional[Callable] = None) -> None:
    """A one-line ConfigError for a module or name that does not exist, before the heavy imports."""
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise ConfigError(f"{key}={spec!r}: expected package.module:Name")
    found = _locate(key, spec, mod_name)
    first = attr.split(".")[0]
    names = _static_names(found.origin)
    if names is not None and first in names:
        return  # the source defines it: no import needed
    if before_import is not None:
        before_import()
    import_object(key, spec)  # the source does not settle it: import, as training would


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
    except ModuleNotFoundError as e:
        hint = _path_hint() if e.name and f"{mod_name}.".startswith(f"{e.name}.") else ""
        raise ConfigError(f"{key}={spec!r}: cannot import module {mod_name!r}: {e}{hint}") from None
    except Exception as e:  # an ImportError, but also a SyntaxError or any error raised by the module body
        raise ConfigError(
            f"{key}={spec!r}: cannot import module {mod_name!r}: {type(e).__name__}: {e}"
        ) from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            near = did_you_mean(part, [n for n in dir(obj) if not n.startswith("_")])
            where = f"module {mod_name!r}" if obj is module else repr(obj)
            raise ConfigError(
                f"{key}={spec!r}: cannot import {attr!r}: {where} has no attribute {part!r}{near}"
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

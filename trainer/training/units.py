"""The units of a model: the modules FSDP2 shards one by one and activation checkpointing recomputes.

``find_units(model, names)`` picks them by the first rule that finds any:

1. ``train.fsdp_wrap=[ClassName, ...]``: every submodule of those classes (a name that matches nothing is a
   config error listing the model's classes);
2. the model's own ``_no_split_modules`` (transformers models: ``LlamaDecoderLayer``; Bert's is the set
   ``{BertLayer, BertEmbeddings}``);
3. the children of ``model.blocks`` (the built-in GPT);
4. the children of the ``nn.ModuleList`` holding the most parameters (nanoGPT's ``transformer.h``);
5. none: the root alone.

``describe(units)`` gives the log's wording, ``2 x LlamaDecoderLayer``.
"""

from __future__ import annotations

from collections import Counter

from torch import nn

from ..config import ConfigError


def _by_class(model: nn.Module, classes: set[str]) -> list[nn.Module]:
    # named_modules is pre-order: reversed, every unit comes before the units that contain it, the order
    # in which fully_shard must see nested units.
    return [m for name, m in reversed(list(model.named_modules())) if name and type(m).__name__ in classes]


def find_units(model: nn.Module, names: list[str]) -> tuple[list[nn.Module], str]:
    """(units, the rule that chose them) for ``model``; see the module docstring."""
    if names:
        units = _by_class(model, set(names))
        missing = sorted(set(names) - {type(u).__name__ for u in units})
        if missing:
            counts = Counter(type(m).__name__ for _, m in model.named_modules())
            known = ", ".join(f"{k} ({v})" for k, v in counts.most_common(12))
            raise ConfigError(
                f"train.fsdp_wrap={names!r}: no module of class {missing[0]} in the model "
                f"(its classes: {known})"
            )
        return units, "train.fsdp_wrap"
    own = getattr(model, "_no_split_modules", None)
    if own:
        units = _by_class(model, set(own))
        if units:
            return units, "_no_split_modules"
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.ModuleList) and len(blocks):
        return list(blocks), ".blocks"
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)]
    if lists:
        biggest = max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))
        if any(True for _ in biggest.parameters()):
            return list(biggest), "the largest nn.ModuleList"
    return [], "no unit rule matched"


def describe(units: list[nn.Module]) -> str:
    """``2 x LlamaDecoderLayer`` (classes in order of first appearance), or ``no units``."""
    counts = Counter(type(u).__name__ for u in units)
    return ", ".join(f"{n} x {k}" for k, n in counts.items()) or "no units"

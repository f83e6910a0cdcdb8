"""YAML for configs, strictly: duplicate keys are errors and alias expansion is capped (a "billion laughs"
file is refused, not expanded). Safe loading only."""

from __future__ import annotations

from typing import Any

import yaml

from .errors import ConfigError

MAX_YAML_VALUES = 100_000  # a config expands to at most this many values (caps YAML alias bombs)


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (safe_load silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(
                    f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                    f"(first at line {seen[key] + 1})"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _count_values(tree: Any, budget: int = MAX_YAML_VALUES) -> None:
    """Walk the tree as it would expand (aliases are shared objects); refuse more than `budget` values."""
    stack, n = [tree], 0
    while stack:
        node = stack.pop()
        n += 1
        if n > budget:
            raise ConfigError(f"expands to more than {budget} values (YAML aliases nested too deep?)")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


def load_yaml(text: str) -> Any:
    """Strict YAML: safe types only, no duplicate keys, bounded alias expansion. Raises ConfigError."""
    tree = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    _count_values(tree)
    return tree

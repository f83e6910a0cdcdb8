"""The layers of trainer/ (docs/design.md): every import, also those inside functions, points downward.

    __main__  ->  api, run  ->  tools  ->  training (observe/ inside)  ->  checkpoint  ->  models  ->  data
              ->  runtime  ->  config, schema, exitcodes, objects

A module may import its own layer or a lower one, never a higher one; no import circle, even inside a layer;
nothing imports ``trainer.__main__``; ``tools`` never imports the loop; ``checkpoint`` never imports
``training``; ``runtime`` never imports ``training`` or ``checkpoint``; ``launch`` never imports ``trainer``.
The way test_exitcodes_agree.py guards the exit codes, this guards the arrows.
"""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LAYERS = {  # module prefix -> layer (higher may import lower)
    "trainer.config": 0,
    "trainer.schema": 0,
    "trainer.errors": 0,
    "trainer.strict_yaml": 0,
    "trainer.validate": 0,
    "trainer.exitcodes": 0,
    "trainer.objects": 0,
    "trainer.runtime": 1,
    "trainer.data": 2,
    "trainer.models": 3,
    "trainer.checkpoint": 4,  # hf_export reads the tokenizer (data) and the HF dtype (models)
    "trainer.training": 5,  # with trainer.training.observe, the things that watch a run
    "trainer.tools": 6,
    "trainer.run": 7,
    "trainer.api": 7,
    "trainer": 7,
    "trainer.__main__": 8,
}


def _modules(pkg: str) -> dict[str, str]:
    out = {}
    for d, _, files in os.walk(os.path.join(ROOT, pkg)):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), ROOT)[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(d, f)
    return out


def _imports(name: str, path: str, known: set[str]) -> set[str]:
    """Modules of ours that `name` imports anywhere in its file (function bodies included)."""
    is_pkg = path.endswith("__init__.py")
    base = name if is_pkg else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                mod = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        for t in targets:
            while (
                t and t not in known
            ):  # `from . import x` names a module; `from .m import f` names its module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _layer(mod: str) -> int:
    best = max((p for p in LAYERS if mod == p or mod.startswith(p + ".")), key=len)
    return LAYERS[best]


def _graph() -> dict[str, set[str]]:
    mods = _modules("trainer")
    known = set(mods)
    return {m: _imports(m, p, known) for m, p in mods.items()}


def test_every_module_has_a_layer():
    for m in _graph():
        assert _layer(m) is not None, m


def test_arrows_point_down():
    bad = [
        f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
        for a, deps in _graph().items()
        for b in deps
        if _layer(b) > _layer(a)
    ]
    assert not bad, "\n".join(bad)


def test_no_import_circle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(d) :] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_named_rules():
    graph = _graph()
    assert not [a for a, deps in graph.items() if "trainer.__main__" in deps], (
        "nothing imports trainer.__main__"
    )
    tools_to_loop = [
        a
        for a, deps in graph.items()
        if a.startswith("trainer.tools")
        for b in deps
        if b in ("trainer.training.loop", "trainer.run", "trainer.api")
    ]
    assert not tools_to_loop, tools_to_loop
    runtime_up = [
        a
        for a, deps in graph.items()
        if a.startswith("trainer.runtime")
        for b in deps
        if b.startswith(("trainer.training", "trainer.checkpoint"))
    ]
    assert not runtime_up, runtime_up
    checkpoint_up = [
        (a, b)
        for a, deps in graph.items()
        if a.startswith("trainer.checkpoint")
        for b in deps
        if b.startswith("trainer.training")
    ]
    assert not checkpoint_up, checkpoint_up


def test_launch_never_imports_trainer():
    mods = _modules("launch")
    known = set(mods) | set(_modules("trainer"))
    bad = [(m, d) for m, p in mods.items() for d in _imports(m, p, known) if d.split(".")[0] == "trainer"]
    assert not bad, bad


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "trainer" / "tools"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text("def f():\n    from ..training import loop\n    from . import y\n")
    known = {"trainer.tools.x", "trainer.tools.y", "trainer.training", "trainer.training.loop"}
    assert _imports("trainer.tools.x", str(pkg / "x.py"), known) == {
        "trainer.training.loop",
        "trainer.tools.y",
    }


def test_one_list_of_builtin_names():
    """config.py (no torch) holds the names; the builders in models/ and data/ are keyed by the same ones."""
    from trainer import config
    from trainer.data import BUILDERS as DATA
    from trainer.models import BUILDERS as MODELS

    assert tuple(MODELS) == config.MODEL_NAMES
    assert tuple(DATA) == config.DATA_NAMES

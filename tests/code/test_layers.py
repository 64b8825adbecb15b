"""The declared layering, checked on the source: core -> libraries -> stages -> flows.

- **core** (``weakflow.tasks.core``): torch, numpy, scikit-learn only; imports no other weakflow module;
- **libraries** (``weakflow.data_checks``, ``weakflow.monitoring``, ``weakflow.deploy`` and the helper
  modules of ``weakflow.tasks``: config, data, tracking, report, ...): import core and each other;
- **stages** (the ``weakflow.tasks`` modules that define a ``@stage_task``): import core, libraries and
  the result types of the stages before them;
- **flows** (``weakflow.flows``): wire stages; nothing below imports them.

Every import counts, also one inside a function: a cycle hidden by a function-level import is a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("flows", "tasks", "deploy", "monitoring", "data_checks")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = "weakflow." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("weakflow."):
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("weakflow.")}
        edges[name] = {m for m in found if m in mods and m != name}
    return edges


def layer(name: str, stages: set[str]) -> int:
    if name.startswith("weakflow.tasks.core"):
        return 0
    if name.startswith("weakflow.flows"):
        return 3
    return 2 if name in stages else 1


def stage_modules() -> set[str]:
    return {name for name, path in modules().items() if "@stage_task" in path.read_text()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_each_layer_imports_only_layers_below_it():
    edges, stages = graph(), stage_modules()
    assert {"weakflow.tasks.validate", "weakflow.tasks.register", "weakflow.tasks.select"} <= stages
    upward = sorted(f"{m} -> {d}" for m, deps in edges.items() for d in deps
                    if layer(d, stages) > layer(m, stages))
    assert upward == []


def test_the_checks_see_a_violation():
    """The checks themselves can fail: a made-up cycle and a core module importing a stage."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert cycles(edges) == [["a", "b", "c"]]
    stages = {"weakflow.tasks.validate"}
    assert layer("weakflow.tasks.validate", stages) > layer("weakflow.tasks.core.models", stages)

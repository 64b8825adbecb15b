"""The declared layering, checked on the source: core -> libraries -> stages -> flows.

- **core** (``weakflow.tasks.core``): torch, numpy, scikit-learn only; imports no other weakflow module and
  none of Prefect, MLflow, Great Expectations or Evidently (it runs, and is benchmarked, on a bare GPU box);
- **libraries** (``weakflow.data_checks``, ``weakflow.monitoring``, ``weakflow.deploy`` and the modules of
  ``weakflow.tasks`` that define no stage: config, data, results, tracking, report, ...): import core and
  each other;
- **stages** (the ``weakflow.tasks`` modules that define a ``Stage`` or a ``@stage_task``): import core and
  libraries, never another stage: they stand side by side, and what two of them share (result types,
  pseudo-label scoring and checks, candidate logging) lives below them;
- **flows** (``weakflow.flows``): wire stages; nothing below imports them.

Every import counts, also one inside a function or under ``TYPE_CHECKING``: a cycle hidden by a
function-level import is a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("flows", "tasks", "deploy", "monitoring", "data_checks")


TOP = ROOT / "flows" / "weakflow" / "__init__.py"  # the `weakflow` package itself (pyproject's package-dir)


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = "weakflow." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    out.pop("weakflow.flows.weakflow", None)
    out["weakflow"] = TOP
    return out


def imported(path: Path) -> set[str]:
    """Every module name ``path`` imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {m for m in imported(path) if m in mods and m != name} for name, path in mods.items()}


# Entry points stand with the flows: the package itself (its API names flows' functions) and the file MLflow
# loads a registered model from (it imports the installed package before the model's own code).
ENTRY_POINTS = {"weakflow", "weakflow.deploy.pyfunc_entry"}


def layer(name: str, stages: set[str]) -> int:
    if name.startswith("weakflow.tasks.core"):
        return 0
    if name.startswith("weakflow.flows") or name in ENTRY_POINTS:
        return 3
    return 2 if name in stages else 1


def defines_stage(path: Path) -> bool:
    """A module-level ``X = Stage(...)`` (the pipeline's stages) or a ``@stage_task`` function."""
    for node in ast.parse(path.read_text(), str(path)).body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name) and node.value.func.id == "Stage"):
            return True
        if isinstance(node, ast.FunctionDef) and any(
                isinstance(d, ast.Call) and isinstance(d.func, ast.Name) and d.func.id == "stage_task"
                for d in node.decorator_list):
            return True
    return False


def stage_modules() -> set[str]:
    return {name for name, path in modules().items()
            if name.startswith("weakflow.tasks.") and name.count(".") == 2 and defines_stage(path)}


FORBIDDEN_IN_CORE = ("prefect", "mlflow", "great_expectations", "evidently")


def stage_to_stage(edges: dict[str, set[str]], stages: set[str]) -> list[str]:
    return sorted(f"{m} -> {d}" for m, deps in edges.items() if m in stages for d in deps if d in stages)


def heavy_in_core(imports: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} imports {i}" for m, found in imports.items() if m.startswith("weakflow.tasks.core")
                  for i in found if i.split(".")[0] in FORBIDDEN_IN_CORE)


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


PIPELINE_STAGES = {f"weakflow.tasks.{n}" for n in ("validate", "governance", "weak_labels", "gold_only", "weak_train",
                                                    "pseudo_label", "full_train", "select", "evaluate", "register",
                                                    "publish")}


def upward(edges: dict[str, set[str]], stages: set[str]) -> list[str]:
    return sorted(f"{m} -> {d}" for m, deps in edges.items() for d in deps if layer(d, stages) > layer(m, stages))


def test_each_layer_imports_only_layers_below_it():
    edges, stages = graph(), stage_modules()
    assert PIPELINE_STAGES <= stages
    assert upward(edges, stages) == []


# Modules that make Prefect tasks but are no pipeline stage: the pseudo_label stage's shard sub-tasks and the
# training stages' fold models (they may run on Dask workers, so they are tasks of their own), libraries below the stages.
NOT_STAGES = {"weakflow.tasks.lib.pseudo_shards", "weakflow.tasks.lib.spread_training"}


def test_no_stage_imports_another():
    assert stage_to_stage(graph(), stage_modules()) == []


def test_every_module_defining_a_stage_counts_as_one():
    """A stage defined anywhere but the stage floor (say under tasks/lib) would escape the rules above."""
    defining = {name for name, path in modules().items() if defines_stage(path)}
    assert defining - NOT_STAGES == stage_modules(), defining ^ stage_modules()


def test_nothing_imports_the_package_front_as_a_flows_module():
    """flows/weakflow/ is the ``weakflow`` package itself; imported as ``weakflow.flows.weakflow`` it would be
    a second copy of the API module."""
    found = {name for name, path in modules().items() if "weakflow.flows.weakflow" in imported(path)}
    assert found == set()


def test_core_imports_no_orchestration_or_tracking():
    mods = modules()
    assert heavy_in_core({name: imported(path) for name, path in mods.items()}) == []


def test_the_checks_see_a_violation(tmp_path):
    """Each rule fails on a planted violation: a cycle, a core module importing a stage, a stage importing a
    stage, core importing MLflow (also inside a function), a module defining a stage found as one."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert cycles(edges) == [["a", "b", "c"]]
    stages = {"weakflow.tasks.validate", "weakflow.tasks.publish"}
    assert upward({"weakflow.tasks.core.models": {"weakflow.tasks.validate"}}, stages) == [
        "weakflow.tasks.core.models -> weakflow.tasks.validate"]
    assert stage_to_stage({"weakflow.tasks.publish": {"weakflow.tasks.validate"}}, stages) == [
        "weakflow.tasks.publish -> weakflow.tasks.validate"]
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    import mlflow.pyfunc\n    from prefect import flow\n\nSTAGE = Stage('x', f)\n")
    assert heavy_in_core({"weakflow.tasks.core.planted": imported(planted)}) == [
        "weakflow.tasks.core.planted imports mlflow.pyfunc", "weakflow.tasks.core.planted imports prefect",
        "weakflow.tasks.core.planted imports prefect.flow"]
    gx = tmp_path / "gx.py"
    gx.write_text("import great_expectations as gx\nfrom evidently import Report\nimport numpy\n")
    assert heavy_in_core({"weakflow.tasks.core.gx": imported(gx)}) == [
        "weakflow.tasks.core.gx imports evidently", "weakflow.tasks.core.gx imports evidently.Report",
        "weakflow.tasks.core.gx imports great_expectations"]
    assert defines_stage(planted)
    task = tmp_path / "task.py"
    task.write_text("@stage_task('y')\ndef y():\n    pass\n")
    plain = tmp_path / "plain.py"
    plain.write_text("STAGES = ('a', 'b')\ndef stage():\n    return Stage\n")
    assert defines_stage(task) and not defines_stage(plain)

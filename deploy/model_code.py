"""The code a registered model ships (MLflow ``code_paths``): the modules loading it imports, and nothing else.

MLflow puts a model's code folder first on ``sys.path`` wherever the model is loaded, so what it ships must
not shadow anything a user has: here it is one ``weakflow`` folder holding only the modules that
``weakflow.deploy.model`` imports, directly or through them (the torch core: the network, the text
featuriser, the input schema), found by reading their imports, so the list cannot go stale.
"""

from __future__ import annotations

import ast
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "weakflow"
ENTRY_MODULE = f"{PACKAGE}.deploy.model"


def module_file(module: str) -> Path:
    """The source file of a ``weakflow.*`` module in this checkout or installation."""
    parts = module.split(".")[1:]
    base = ROOT.joinpath(*parts)
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def imported(path: Path) -> set[str]:
    """The ``weakflow.*`` modules a file imports, at any level (also inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(f"{PACKAGE}."):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names
                      if module_file(f"{node.module}.{a.name}").is_file()}  # "from pkg import module"
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(f"{PACKAGE}.")}
    return found


def closure(module: str = ENTRY_MODULE) -> list[str]:
    """``module`` and every ``weakflow.*`` module it needs, with their packages, sorted."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(2, len(parts))]  # the packages above it
        todo += sorted(imported(module_file(name)))
    return sorted(seen)


def stage(folder: Path) -> Path:
    """Copy the closure into ``folder/weakflow`` (the package folders mirrored); returns that folder, the
    one path to give MLflow as ``code_paths``."""
    target = Path(folder) / PACKAGE
    for name in closure():
        source = module_file(name)
        rel = source.relative_to(ROOT)
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / rel)
    return target


def load_pyfunc(uri: str) -> Any:  # -> mlflow.pyfunc.PyFuncModel
    """``mlflow.pyfunc.load_model``, then the code folders it put first on ``sys.path`` taken out of the way.

    MLflow leaves a loaded model's code folder at the front of ``sys.path`` for the rest of the process. A
    folder holding a partial ``weakflow/`` (what :func:`stage` ships) would then hide the rest of the package
    from every later import, and from a spawned worker's (``weakflow.tasks.core.noise`` not found), even at
    the end of ``sys.path`` under an editable install, whose finder comes after the path-based one. Loading
    has imported the model's modules by then, so such a folder is removed. A folder of a model saved before
    the weakflow.* names (top-level ``tasks/`` and ``deploy/``) moves to the end instead: that code stays findable
    and shadows nothing of weakflow."""
    import mlflow

    before = set(sys.path)
    model = mlflow.pyfunc.load_model(uri)
    added = [p for p in sys.path if p not in before]
    if added:
        sys.path[:] = ([p for p in sys.path if p not in added]
                       + [p for p in added if not (Path(p) / PACKAGE).is_dir()])
    return model


def picture_signature(signature: Any, image_columns: list[str]) -> Any:  # ModelSignature -> ModelSignature
    """``signature`` with each picture column typed ``binary``: a served model takes the bytes of a picture
    file (base64 in JSON, which MLflow's scoring server decodes for binary columns), not the path a training
    row carried (inferred as ``string`` from the input example)."""
    if not image_columns or signature is None or signature.inputs is None:
        return signature
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, DataType, Schema

    columns = [ColSpec(DataType.binary, c.name, c.required) if c.name in image_columns else c
               for c in signature.inputs.inputs]
    return ModelSignature(Schema(columns), signature.outputs, signature.params)

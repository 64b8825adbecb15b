"""weakflow: train production models from weak labels (validate, weak-train, pseudo-label, full-train,
evaluate, register, serve, monitor), on tables and text.

The Python API is this package:

    import weakflow

    cfg = weakflow.config("my.yaml", weak_train__epochs=20)  # or a dict, or weakflow.config() for the demo
    result = weakflow.run(cfg)                               # the whole pipeline (Prefect + MLflow)
    print(result.version, result.alias, result.shipped, result.metrics["test_accuracy"])
    model = weakflow.load_model(cfg)                         # the champion (or version=..., alias=...)
    scores = model.predict(frame)                            # prediction, confidence, prob_<class>

Errors, each reported in one line: :class:`ConfigError` (a bad setting), :class:`DataError` (bad data;
nothing is registered), :class:`RegistryError` (a missing model, version or alias),
:class:`PrefectStartupError` (Prefect's temporary API server did not answer within
``limits.prefect_startup_seconds``).

Importing weakflow imports none of torch, MLflow or Prefect: each name is loaded when first used. (This
file is ``flows/weakflow/__init__.py``: the repository's top-level folders become ``weakflow.flows``,
``weakflow.tasks``, ... and this is the package above them.)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "config": "weakflow.flows.api",
    "run": "weakflow.flows.api",
    "load_model": "weakflow.flows.api",
    "RunResult": "weakflow.flows.api",
    "Config": "weakflow.tasks.lib.config",
    "ConfigError": "weakflow.tasks.lib.errors",
    "DataError": "weakflow.tasks.lib.errors",
    "RegistryError": "weakflow.tasks.lib.errors",
    "PrefectStartupError": "weakflow.flows.runtime",
}
__all__ = [*_WHERE, "__version__"]

if TYPE_CHECKING:
    from weakflow.flows.api import RunResult, config, load_model, run  # noqa: F401
    from weakflow.flows.runtime import PrefectStartupError  # noqa: F401
    from weakflow.tasks.lib.config import Config  # noqa: F401
    from weakflow.tasks.lib.errors import ConfigError, DataError, RegistryError  # noqa: F401


def __getattr__(name: str) -> Any:
    """``weakflow.run`` and the rest, imported when first asked for (PEP 562); ``__version__`` from the
    installed distribution (pyproject.toml's version, written once)."""
    if name == "__version__":
        from importlib.metadata import version

        return version("weakflow")
    if name not in _WHERE:
        raise AttributeError(f"module 'weakflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

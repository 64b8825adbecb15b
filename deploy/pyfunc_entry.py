"""The file MLflow loads the registered model from ("models from code": no pickled Python object).

Only MLflow executes this file, when it logs or loads a model; nothing in weakflow imports it. MLflow puts
the model's code folder (a partial ``weakflow/``, deploy/model_code.py) first on ``sys.path``: an installed
weakflow is imported first, without that folder, so ``import weakflow`` stays the whole package (its API)
and the model runs the installed code, as it does in the process that registered it; only where weakflow
is not installed does the model's own copy run.
"""

import sys
from pathlib import Path

import mlflow


def _import_installed_weakflow() -> None:
    """``import weakflow`` with every folder holding a bare ``weakflow/`` (a model's code) off ``sys.path``."""
    if "weakflow" in sys.modules:
        return
    shipped = [p for p in sys.path if (Path(p or ".") / "weakflow").is_dir()
               and not (Path(p or ".") / "weakflow" / "__init__.py").is_file()]
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if p not in shipped]
    try:
        import weakflow  # noqa: F401  (installed: a wheel, or the editable install's finder)
    except ImportError:  # not installed: the model's own code, below
        pass
    finally:
        sys.path[:] = saved


_import_installed_weakflow()
from weakflow.deploy.model import WeakflowClassifier  # noqa: E402

mlflow.models.set_model(WeakflowClassifier())

"""A tiny real model in a real MLflow registry, for tests that need registered versions but no training.

The model is the project's own pyfunc (``deploy/pyfunc_entry.py`` -> :class:`deploy.model.WeakflowClassifier`)
around a real torch network: an MLP with no hidden layer (one linear layer) whose weights are set by
hand, so each version's accuracy on :func:`frozen_split` is known exactly. Logging and registering go
through MLflow as the pipeline's ``register`` stage does (a run, ``log_model``, ``register_model``,
version tags), about a second per version on SQLite.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from weakflow.deploy.model import save_weights
from weakflow.tasks.lib.data import InputSchema
from weakflow.tasks.core.models import ModelSpec, build_model

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ROOT / "deploy" / "pyfunc_entry.py"
FEATURES = [f"px_{i}" for i in range(64)]
CLASSES = list(range(10))


def weights(correct_classes: int | None = None, n_classes: int = len(CLASSES)) -> np.ndarray:
    """Logit weights: class ``c`` scores feature ``px_c``. The first ``correct_classes`` classes read their
    own feature; the others read the next class's feature (cyclically among themselves), so on
    :func:`frozen_split` the model's accuracy is exactly ``correct_classes / 10``."""
    correct = n_classes if correct_classes is None else correct_classes
    w = np.zeros((n_classes, len(FEATURES)), dtype=np.float32)
    wrong = list(range(correct, n_classes))
    for c in range(n_classes):
        if c < correct or len(wrong) < 2:
            w[c, c] = 1.0
        else:
            w[c, wrong[(wrong.index(c) + 1) % len(wrong)]] = 1.0
    return w


def frozen_split(rows_per_class: int = 3) -> pd.DataFrame:
    """A balanced test split: a row of class ``c`` has ``px_c = 10``, every other feature small noise."""
    rng = np.random.default_rng(0)
    labels = np.repeat(CLASSES, rows_per_class)
    x = rng.uniform(0, 1, (len(labels), len(FEATURES)))
    x[np.arange(len(labels)), labels] = 10.0
    frame = pd.DataFrame(x, columns=FEATURES)
    frame["label"] = labels
    return frame


_EMPTY_STORE: Path | None = None


def _empty_store() -> Path:
    """An empty, migrated MLflow SQLite store, made once per process (migrating one costs ~5 s)."""
    global _EMPTY_STORE
    if _EMPTY_STORE is None:
        path = Path(tempfile.mkdtemp(prefix="empty-mlflow-")) / "mlflow.db"
        mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()  # creates and migrates the tables
        _EMPTY_STORE = path
    return _EMPTY_STORE


def use_registry(folder: Path) -> str:
    """Point MLflow at a fresh SQLite store with its artifacts under ``folder``; returns the tracking URI."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "mlflow.db").exists():
        shutil.copyfile(_empty_store(), folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    if client.get_experiment_by_name("tiny") is None:
        client.create_experiment("tiny", artifact_location=(folder / "artifacts").as_uri())
    mlflow.set_experiment("tiny")
    return uri


def register_tiny(name: str, correct_classes: int | None = None, tags: dict[str, str] | None = None,
                  alias: str | None = None, classes: list[int] = CLASSES, reference: bool = False) -> str:
    """Log and register one version on the current tracking URI (see :func:`use_registry`); returns its
    version number. ``reference``: also log the drift reference the monitoring flow reads (as the
    pipeline's register stage does: features, prediction and confidence of some rows)."""
    spec = ModelSpec(kind="mlp", num_features=len(FEATURES), num_classes=len(classes), hidden=(), dropout=0.0)
    model = build_model(spec)
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(weights(correct_classes, len(classes))))
        model.head.bias.zero_()
    model.eval()
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name=f"tiny-{name}"):
        path = Path(tmp) / "model.pt"
        save_weights(path, model, spec, InputSchema(FEATURES, []), list(classes))
        info = mlflow.pyfunc.log_model(name="model", python_model=str(ENTRY), artifacts={"weights": str(path)},
                                       pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        if reference:
            rows = frozen_split()[FEATURES]
            with torch.no_grad():
                probs = torch.softmax(model(torch.from_numpy(rows.to_numpy(np.float32))), dim=1).numpy()
            frame = rows.assign(prediction=np.asarray(classes)[probs.argmax(axis=1)], confidence=probs.max(axis=1))
            frame.to_parquet(Path(tmp) / "reference.parquet", index=False)
            mlflow.log_artifact(str(Path(tmp) / "reference.parquet"), "reference")
    version = str(mlflow.register_model(info.model_uri, name).version)
    client = mlflow.MlflowClient()
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, version, key, value)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return version


def accuracy_scorer(name: str, split: pd.DataFrame):  # -> Callable[[str], float]
    """What ``weakflow promote`` does with ``tasks.register.score_version``: the registered version's
    pyfunc, loaded from the registry, predicting the frozen split."""

    def score(version: str) -> float:
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
        pred = model.predict(split[FEATURES].astype(np.float64))["prediction"].to_numpy()
        return float((pred == split["label"].to_numpy()).mean())

    return score

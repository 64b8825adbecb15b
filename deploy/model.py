"""The registered model: an MLflow pyfunc that takes raw feature columns and returns class + probabilities.

Weights and the network spec travel as one artifact; loading needs only torch and this package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch

from tasks.core.models import ModelSpec, build_model
from tasks.core.training import predict_proba


def save_weights(path: Path, model: torch.nn.Module, spec: ModelSpec, features: list[str], classes: list[int]) -> None:
    torch.save({"state_dict": model.state_dict(), "meta": json.dumps(
        {"spec": spec.to_dict(), "features": features, "classes": classes})}, path)


def load_weights(path: str | Path) -> tuple[torch.nn.Module, list[str], list[int]]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    meta = json.loads(blob["meta"])
    model = build_model(ModelSpec.from_dict(meta["spec"]))
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, meta["features"], meta["classes"]


class WeakflowClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc output: ``prediction`` (class), ``confidence`` and one ``prob_<class>`` column per class."""

    def load_context(self, context: Any) -> None:
        self.model, self.features, self.classes = load_weights(context.artifacts["weights"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        missing = [c for c in self.features if c not in model_input.columns]
        if missing:
            raise ValueError(f"input is missing feature columns {missing}")
        probs = predict_proba(self.model, model_input[self.features].to_numpy(dtype=np.float32), device="cpu")
        return output_frame(probs, self.classes)


def output_frame(probs: np.ndarray, classes: list[int]) -> pd.DataFrame:
    out = pd.DataFrame({"prediction": np.asarray(classes)[probs.argmax(axis=1)], "confidence": probs.max(axis=1)})
    for i, c in enumerate(classes):
        out[f"prob_{c}"] = probs[:, i]
    return out


def registered_classes(name: str, version: str) -> list[int]:
    """The class set of a registered version (what the server answers with), read from its weights file's
    metadata on the current tracking URI: only the MLmodel file and the weights are downloaded, and the
    network is not built."""
    import tempfile

    from mlflow.models import Model

    uri = f"models:/{name}/{version}"
    weights = Model.load(uri).flavors["python_function"]["artifacts"]["weights"]["path"]
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(f"{uri}/{weights}", dst_path=tmp)
        return list(json.loads(torch.load(local, map_location="cpu", weights_only=True)["meta"])["classes"])

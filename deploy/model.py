"""The registered model: an MLflow pyfunc that takes raw input columns (numbers, text, pictures as bytes) and
returns class + probabilities.

Weights, the network spec, the input schema and the fitted text featurisation travel as one artifact;
loading needs only torch, scikit-learn and this package. A model whose text goes through the pretrained
encoder (:mod:`tasks.core.encoder`) also carries the encoder's folder as the artifact ``text_encoder`` (and
needs sentence-transformers); its weights' package, version and sha256 are in the metadata.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch

from weakflow.tasks.core.encoder import EncoderFeaturizer
from weakflow.tasks.core.images import ImageFeaturizer
from weakflow.tasks.core.models import ModelSpec, build_model
from weakflow.tasks.core.text import TextFeaturizer
from weakflow.tasks.core.training import predict_proba
from weakflow.tasks.core.schema import InputSchema


def save_weights(path: Path, model: torch.nn.Module, spec: ModelSpec, schema: InputSchema, classes: list) -> None:
    encoder = schema.featurizer.source() if isinstance(schema.featurizer, EncoderFeaturizer) else None
    meta = {"spec": spec.to_dict(), "features": schema.numeric, "text": schema.text, "classes": classes,
            "text_dims": schema.featurizer.dims if schema.featurizer is not None else 0,
            "text_encoder": encoder, "images": schema.images.state() if schema.images is not None else None}
    blob: dict[str, Any] = {"state_dict": model.state_dict(), "meta": json.dumps(meta)}
    if schema.featurizer is not None:
        blob["text_state"] = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in schema.featurizer.state().items()}
    torch.save(blob, path)


@dataclass
class Loaded:
    """A saved network with what turns raw rows into its input: the input schema (and text featuriser)."""

    model: torch.nn.Module
    schema: InputSchema
    classes: list

    @property
    def inputs(self) -> list[str]:
        return self.schema.inputs

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return predict_proba(self.model, self.schema.x(frame), device="cpu")


def encoder_folder(schema: InputSchema) -> Path | None:
    """The encoder folder a model's text goes through (log it as the artifact ``text_encoder``); None for
    the hashed n-gram featurisation."""
    return schema.featurizer.folder if isinstance(schema.featurizer, EncoderFeaturizer) else None


def load_weights(path: str | Path, encoder: str | Path | None = None) -> Loaded:
    """A saved model; weights written before text inputs existed (only ``features``) load as numeric-only.
    ``encoder``: the model's ``text_encoder`` folder (default: the one beside ``path`` in a downloaded model,
    else the installed package's copy, whose weights' sha256 must match the recorded one)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    meta = json.loads(blob["meta"])
    model = build_model(ModelSpec.from_dict(meta["spec"]))
    model.load_state_dict(blob["state_dict"])
    model.eval()
    text = list(meta.get("text", []))
    featurizer = None
    if text:
        arrays = {k: v.numpy() for k, v in blob["text_state"].items()}
        source = meta.get("text_encoder")
        featurizer = (TextFeaturizer.from_state(text, int(meta["text_dims"]), arrays) if not source else
                      EncoderFeaturizer.from_state(text, _encoder_location(Path(path), encoder, source), arrays))
    images = ImageFeaturizer.from_state(meta["images"]) if meta.get("images") else None
    return Loaded(model, InputSchema(list(meta["features"]), text, featurizer, images), list(meta["classes"]))


def _encoder_location(weights: Path, given: str | Path | None, source: dict) -> Path:
    from weakflow.tasks.core import encoder as enc

    sha = str(source.get("weights_sha256", ""))
    for folder in (given, weights.parent / f"{enc.NAME}-{sha[:12]}"):  # as the pyfunc's artifacts hold it
        if folder is not None and (Path(folder) / "model.safetensors").is_file():
            return Path(folder)
    if sha != enc.WEIGHTS_SHA256:
        raise enc.EncoderUnavailable(f"the model's text encoder (sha256 {sha}) is not "
                                     "beside its weights, and this weakflow pins another")
    import tempfile

    return enc.unpack(Path(tempfile.gettempdir()) / f"weakflow-encoders-{os.getuid()}")


class WeakflowClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc output: ``prediction`` (class), ``confidence`` and one ``prob_<class>`` column per class."""

    def load_context(self, context: Any) -> None:
        self.loaded = load_weights(context.artifacts["weights"], context.artifacts.get("text_encoder"))
        self.model, self.classes = self.loaded.model, self.loaded.classes
        self.features = self.loaded.inputs  # the raw columns a row must carry

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        missing = [c for c in self.features if c not in model_input.columns]
        if missing:
            raise ValueError(f"input is missing column(s) {missing}")
        return output_frame(self.loaded.predict_proba(model_input), self.classes)


def output_frame(probs: np.ndarray, classes: list) -> pd.DataFrame:
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

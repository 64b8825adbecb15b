"""Networks: an MLP for feature vectors, a small CNN for image arrays.

Both carry their input standardisation as buffers, so a saved model takes raw features.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network before loading its weights."""

    kind: Literal["mlp", "cnn"]
    num_features: int
    num_classes: int
    hidden: tuple[int, ...] = (256, 256)
    dropout: float = 0.2
    image_shape: tuple[int, int, int] | None = None  # (channels, height, width) for the CNN
    ensemble: int = 1  # > 1: a LogitEnsemble of that many networks (a bagged refit, or CLID-MU snapshots)
    pool: bool = False  # CNN: 2x2 max-pool between the conv blocks (new models; specs saved before it lack it)
    temperature: float = 1.0  # logits are divided by it (calibration fitted after training; 1 while training)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        data = dict(data)
        data["hidden"] = tuple(data["hidden"])
        if data.get("image_shape") is not None:
            data["image_shape"] = tuple(data["image_shape"])
        return cls(**data)


class Standardize(nn.Module):
    """(x - mean) / std with statistics fitted on training features and saved with the model."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))

    def fit(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        std = x.std(axis=0)
        self.mean.copy_(torch.as_tensor(x.mean(axis=0), dtype=torch.float32))
        self.std.copy_(torch.as_tensor(np.where(std < 1e-6, 1.0, std), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class MLP(nn.Module):
    temperature = 1.0  # set on a trained network by calibrate(); a plain attribute, so state dicts are unchanged

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.scale = Standardize(spec.num_features)
        layers: list[nn.Module] = []
        width = spec.num_features
        for h in spec.hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(spec.dropout)]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, spec.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation (used by CLID-style label-free scores)."""
        return self.body(self.scale(x))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        f = self.features(x)
        return (f, self.head(f)) if return_features else _tempered(self.head(f), self.temperature)


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head; input is flat features reshaped to ``image_shape``."""

    temperature = 1.0

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        if spec.image_shape is None:
            raise ValueError("the CNN needs data.image_shape (channels, height, width)")
        c, h, w = spec.image_shape
        if c * h * w != spec.num_features:
            raise ValueError(f"image_shape {spec.image_shape} has {c * h * w} values, features have {spec.num_features}")
        self.image_shape = (c, h, w)
        self.scale = Standardize(spec.num_features)
        width = spec.hidden[0] if spec.hidden else 64
        # pooling before the wider block: a quarter of its work, and no less accurate on small images
        # (digits: 98.6-100% vs 98.1-99.7% on 3 splits, 1.6x faster per epoch; docs/benchmarks.md)
        pool = [nn.MaxPool2d(2)] if spec.pool and min(h, w) >= 4 else []
        self.body = nn.Sequential(
            nn.Conv2d(c, width // 2, 3, padding=1), nn.BatchNorm2d(width // 2), nn.ReLU(), *pool,
            nn.Conv2d(width // 2, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(spec.dropout),
        )
        self.head = nn.Linear(width * 4, spec.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # channels_last on CPU too: oneDNN's convolutions run it 10-30% faster on these small images
        x = self.scale(x).view(-1, *self.image_shape).contiguous(memory_format=torch.channels_last)
        return self.body(x)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        f = self.features(x)
        return (f, self.head(f)) if return_features else _tempered(self.head(f), self.temperature)


class LogitEnsemble(nn.Module):
    """Mean logits of several snapshots of one network (CLID snapshot ensembling)."""

    temperature = 1.0

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _tempered(torch.stack([m(x) for m in self.members]).mean(dim=0), self.temperature)


def _tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits if temperature == 1.0 else logits / temperature


def calibrated(model: nn.Module, spec: ModelSpec, temperature: float) -> tuple[nn.Module, ModelSpec]:
    """A copy of a trained network whose logits are divided by ``temperature``, and its spec (so the saved
    model answers with calibrated confidences wherever it is loaded)."""
    import copy

    out = copy.deepcopy(model)
    out.temperature = float(temperature)
    return out, replace(spec, temperature=float(temperature))


def build_model(spec: ModelSpec) -> nn.Module:
    if spec.ensemble > 1:
        model: nn.Module = LogitEnsemble([build_model(replace(spec, ensemble=1, temperature=1.0))
                                          for _ in range(spec.ensemble)])
    elif spec.kind == "mlp":
        model = MLP(spec)
    elif spec.kind == "cnn":
        model = SmallCNN(spec)
    else:
        raise ValueError(f"unknown model kind {spec.kind!r}; expected 'mlp' or 'cnn'")
    if spec.temperature != 1.0:
        model.temperature = spec.temperature
    return model


def replace_ensemble(spec: ModelSpec, model: nn.Module) -> ModelSpec:
    """The spec that rebuilds ``model``: records the member count of a snapshot ensemble."""
    return replace(spec, ensemble=len(model.members) if isinstance(model, LogitEnsemble) else 1)

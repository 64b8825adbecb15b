"""Glue between the typed config and the torch core: which network, which training settings."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from tasks.config import Config, TrainStageConfig
from tasks.core.losses import LossName
from tasks.core.models import ModelSpec, build_model
from tasks.core.training import EpochStats, TrainSettings
from tasks.data import PipelineData


@dataclass
class TrainedModel:
    """A trained network with what is needed to rebuild it and to review its training."""

    model: nn.Module
    spec: ModelSpec
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = -1

    @property
    def best_dev_accuracy(self) -> float | None:
        return self.history[self.best_epoch].dev_accuracy if self.history else None


def model_spec(data: PipelineData, stage: TrainStageConfig) -> ModelSpec:
    image_shape = data.spec.image_shape
    kind = stage.model if stage.model != "auto" else ("cnn" if image_shape else "mlp")
    hidden = (stage.cnn_width,) if kind == "cnn" else tuple(stage.hidden)
    return ModelSpec(kind=kind, num_features=len(data.features), num_classes=len(data.classes), hidden=hidden,
                     dropout=stage.dropout, image_shape=image_shape)


def new_model(data: PipelineData, stage: TrainStageConfig, seed: int) -> tuple[nn.Module, ModelSpec]:
    """A fresh network, initialised from ``seed`` (so equal configs give equal models, whatever ran
    before), whose input scaling is fitted on every training row's features (no labels, no test)."""
    spec = model_spec(data, stage)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(spec)
    model.scale.fit(data.x(data.train))
    return model, spec


def settings(stage: TrainStageConfig, cfg: Config, *, epochs: int | None = None, lr: float | None = None,
             loss: LossName = "ce") -> TrainSettings:
    return TrainSettings(epochs=epochs or stage.epochs, batch_size=stage.batch_size, lr=lr or stage.lr,
                         weight_decay=stage.weight_decay, loss=getattr(stage, "loss", loss), gce_q=stage.gce_q,
                         seed=cfg.seed, device=cfg.device)

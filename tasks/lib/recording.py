"""What the training stages record alike (their recording halves call these inside their own MLflow run)."""

from __future__ import annotations

import mlflow

from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.data import PipelineData
from weakflow.tasks.lib.modeling import TrainedModel


def log_candidate(trained: TrainedModel, data: PipelineData) -> None:
    """What every cross-fitted stage logs: the per-epoch curve, the chosen epoch, the out-of-fold gold
    accuracy and the temperature fitted on it, and the spec."""
    tracking.log_history(trained.history)
    mlflow.log_metrics({"best_epoch": trained.best_epoch, "oof_gold_accuracy": trained.best_dev_accuracy or 0.0,
                        "temperature": trained.temperature, "gold_folds": float(data.folds),
                        "gold_rows": float(len(data.rows("gold")))})
    mlflow.log_dict(trained.spec.to_dict(), "model_spec.json")

"""Stage 2, weak training: learn from the weak labels with a noise-robust loss."""

from __future__ import annotations

from collections.abc import Callable

import mlflow
import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import tracking
from tasks.config import Config
from tasks.core.training import EpochStats, fit
from tasks.data import PipelineData
from tasks.modeling import TrainedModel, new_model, settings
from tasks.progress import epoch_bar


def weak_targets(data: PipelineData) -> tuple[np.ndarray, np.ndarray]:
    """Rows with a weak label and their class index; several weak columns are merged by majority vote."""
    rows = data.rows("weak")
    spec = data.spec
    votes = rows[spec.weak_label_columns].apply(lambda c: c.fillna(spec.abstain)).to_numpy(dtype=np.int64)
    classes = np.asarray(data.classes)
    counts = np.zeros((len(rows), len(classes)))
    for column in votes.T:
        voted = column != spec.abstain
        np.add.at(counts, (np.nonzero(voted)[0], np.searchsorted(classes, column[voted])), 1)
    return data.x(rows), counts.argmax(axis=1)  # ties go to the lowest class index


def train_weak(data: PipelineData, cfg: Config, on_epoch: Callable[[EpochStats], None] | None = None) -> TrainedModel:
    x, y = weak_targets(data)
    if len(x) == 0:
        raise ValueError("weak_train: no weakly labelled rows (every weak label is the abstain value)")
    dev = data.rows("gold_dev")
    model, spec = new_model(data, cfg.weak_train)
    result = fit(model, x, y, settings(cfg.weak_train, cfg), x_dev=data.x(dev), y_dev=data.y(dev), on_epoch=on_epoch)
    return TrainedModel(result.model, spec, result.history, result.best_epoch)


@task(name="weak_train", cache_policy=NO_CACHE, persist_result=False)
def weak_train(data: PipelineData, cfg: Config, parent_run_id: str, experiment_id: str) -> TrainedModel:
    with tracking.stage_run("weak_train", parent_run_id, experiment_id):
        mlflow.log_params({f"weak_train.{k}": v for k, v in cfg.weak_train.model_dump().items()})
        with epoch_bar("weak_train", cfg.weak_train.epochs) as bar:
            trained = train_weak(data, cfg, on_epoch=bar)
        tracking.log_history(trained.history)
        mlflow.log_metrics({"best_epoch": trained.best_epoch, "best_dev_accuracy": trained.best_dev_accuracy or 0.0})
        mlflow.log_dict(trained.spec.to_dict(), "model_spec.json")
        return trained

"""Stage 3, weak training: learn from the aggregated weak labels with the configured method.

Methods (``weak_train.method``): ``ce`` (baseline), ``gce`` (bounded loss), ``confident_learning``
(cleanlab removes likely-wrong labels first) and ``clid_mu`` (meta-learned sample weights with CLID on
unlabeled rows as the meta loss; no clean labels). The gold dev split picks the epoch for ce, gce and
confident_learning; for clid_mu it is only reported: CLID picks the snapshots.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import mlflow
import numpy as np

from tasks.stage import stage_task
from tasks import tracking
from tasks.config import Config
from tasks.core.clid import ClidMuSettings
from tasks.core.methods import ConfidentLearningSettings, train_weak_model
from tasks.core.models import replace_ensemble
from tasks.core.training import EpochStats
from tasks.data import PROVENANCE, ROW_ID, PipelineData
from tasks.modeling import TrainedModel, model_spec, new_model, settings
from tasks.progress import epoch_bar
from tasks.weak_labels import WeakLabels


@dataclass
class WeakModel(TrainedModel):
    figures: dict[str, float] = field(default_factory=dict)


def meta_features(data: PipelineData, size: int, seed: int) -> np.ndarray:
    """Features of up to ``size`` random non-gold rows (weak and unlabeled): CLID's meta set.
    Only features are taken: no label of these rows is read."""
    pool = data.train[data.train[PROVENANCE] != "gold"]
    rows = pool.sample(n=min(size, len(pool)), random_state=seed) if len(pool) else pool
    return data.x(rows)


def train_weak(data: PipelineData, labels: WeakLabels, cfg: Config,
               on_epoch: Callable[[EpochStats], None] | None = None) -> WeakModel:
    stage = cfg.weak_train
    if len(labels.row_ids) == 0:
        raise ValueError("weak_train: no weakly labelled rows (every weak vote abstains)")
    rows = data.train.set_index(ROW_ID).loc[labels.row_ids]
    y = labels.soft if labels.soft is not None else labels.hard
    dev = data.rows("gold_dev")
    gold = data.rows("gold_train", "gold_dev")
    gold_check = None
    if len(data.spec.weak_label_columns) == 1:  # one annotator: its label on gold rows checks confident learning
        col = data.spec.weak_label_columns[0]
        labelled = gold[gold[col] != data.spec.abstain]
        classes = np.asarray(data.classes)
        gold_check = (data.x(labelled), np.searchsorted(classes, labelled[col].to_numpy()), data.y(labelled))
    c = stage.clid_mu
    fitted = train_weak_model(
        stage.method, lambda: new_model(data, stage, cfg.seed)[0], data.x(rows), y, settings(stage, cfg, loss=stage.method if stage.method in ("ce", "gce") else "ce"),
        meta_x=meta_features(data, c.meta_set_size, cfg.seed), x_dev=data.x(dev), y_dev=data.y(dev),
        clid=ClidMuSettings(tau=c.tau, meta_lr=c.meta_lr, virtual_lr=c.virtual_lr, meta_batch=c.meta_batch,
                            meta_interval=c.meta_interval, virtual_scope=c.virtual_scope, snapshots=c.snapshots),
        cl=ConfidentLearningSettings(stage.confident_learning.folds, stage.confident_learning.filter_by),
        gold_check=gold_check, on_epoch=on_epoch,
    )
    result = fitted.result
    spec = replace_ensemble(model_spec(data, stage), result.model)
    return WeakModel(result.model, spec, result.history, result.best_epoch, fitted.figures)


@stage_task("weak_train")
def weak_train(data: PipelineData, labels: WeakLabels, cfg: Config, parent_run_id: str, experiment_id: str) -> WeakModel:
    stage = cfg.weak_train
    with tracking.stage_run("weak_train", parent_run_id, experiment_id):
        mlflow.set_tag("method", stage.method)
        mlflow.log_params({f"weak_train.{k}": v for k, v in stage.model_dump().items() if not isinstance(v, dict)})
        if stage.method == "clid_mu":
            mlflow.log_params({f"weak_train.clid_mu.{k}": v for k, v in stage.clid_mu.model_dump().items()})
        if stage.method == "confident_learning":
            mlflow.log_params({f"weak_train.confident_learning.{k}": v for k, v in stage.confident_learning.model_dump().items()})
        total = stage.epochs  # confident learning: the progress bar follows its final training
        with epoch_bar(f"weak_train ({stage.method})", total) as bar:
            trained = train_weak(data, labels, cfg, on_epoch=bar)
        tracking.log_history(trained.history)
        mlflow.log_metrics(trained.figures | {"best_epoch": trained.best_epoch,
                                              "best_dev_accuracy": trained.best_dev_accuracy or 0.0})
        mlflow.log_dict(trained.spec.to_dict(), "model_spec.json")
        return trained

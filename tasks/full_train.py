"""Stage 4, full training: a fresh network on gold + pseudo labels."""

from __future__ import annotations

from collections.abc import Callable

import mlflow
import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import tracking
from tasks.config import Config
from tasks.core.training import EpochStats, fit
from tasks.data import ROW_ID, PipelineData
from tasks.modeling import TrainedModel, new_model, settings
from tasks.progress import epoch_bar
from tasks.pseudo_label import PseudoLabels


def train_full(
    data: PipelineData, pseudo: PseudoLabels, cfg: Config, on_epoch: Callable[[EpochStats], None] | None = None
) -> TrainedModel:
    """``augment``: one run on gold + confidence-weighted pseudo rows. ``pretrain_finetune``: pseudo
    rows first, then gold only at a tenth of the learning rate. Both keep the best gold-dev epoch."""
    stage = cfg.full_train
    gold, dev = data.rows("gold_train"), data.rows("gold_dev")
    kept = pseudo.kept
    pseudo_rows = data.train.set_index(ROW_ID).loc[kept[ROW_ID].to_numpy()]
    x_pseudo = data.x(pseudo_rows)
    y_pseudo = np.searchsorted(np.asarray(data.classes), kept["pseudo_label"].to_numpy())
    w_pseudo = kept["confidence"].to_numpy() if stage.pseudo_weight == "confidence" else np.ones(len(kept))
    model, spec = new_model(data, stage)
    dev_xy = {"x_dev": data.x(dev), "y_dev": data.y(dev)}
    if stage.strategy == "augment":
        x = np.concatenate([data.x(gold), x_pseudo])
        y = np.concatenate([data.y(gold), y_pseudo])
        w = np.concatenate([np.ones(len(gold)), w_pseudo])
        result = fit(model, x, y, settings(stage, cfg), weights=w, on_epoch=on_epoch, **dev_xy)
        history = result.history
    else:
        if len(x_pseudo) == 0:
            raise ValueError("full_train: pretrain_finetune needs pseudo labels, but none cleared the threshold")
        pre = fit(model, x_pseudo, y_pseudo, settings(stage, cfg), weights=w_pseudo, on_epoch=on_epoch, **dev_xy)
        fine_settings = settings(stage, cfg, epochs=stage.finetune_epochs, lr=stage.lr / 10)
        result = fit(pre.model, data.x(gold), data.y(gold), fine_settings, on_epoch=on_epoch, **dev_xy)
        history = pre.history + [type(h)(h.epoch + len(pre.history), h.train_loss, h.dev_accuracy, h.dev_loss)
                                 for h in result.history]
        result.best_epoch += len(pre.history)
    return TrainedModel(result.model, spec, history, result.best_epoch)


@task(name="full_train", cache_policy=NO_CACHE, persist_result=False)
def full_train(data: PipelineData, pseudo: PseudoLabels, cfg: Config, parent_run_id: str, experiment_id: str) -> TrainedModel:
    stage = cfg.full_train
    with tracking.stage_run("full_train", parent_run_id, experiment_id):
        mlflow.log_params({f"full_train.{k}": v for k, v in stage.model_dump().items()})
        total = stage.epochs + (stage.finetune_epochs if stage.strategy == "pretrain_finetune" else 0)
        with epoch_bar("full_train", total) as bar:
            trained = train_full(data, pseudo, cfg, on_epoch=bar)
        tracking.log_history(trained.history)
        mlflow.log_metrics({"best_epoch": trained.best_epoch, "best_dev_accuracy": trained.best_dev_accuracy or 0.0,
                            "train_rows_gold": len(data.rows("gold_train")), "train_rows_pseudo": len(pseudo.kept)})
        mlflow.log_dict(trained.spec.to_dict(), "model_spec.json")
        return trained

"""Stage gold_only: the network trained on the gold rows alone, cross-fitted.

Two jobs: it is the baseline every other candidate must beat (and may be what ships, when weak labels do
not help), and its calibrated p(class | x) is the prior the gold-anchored weak labels are combined with
(each fold's weak model uses the gold-only fold model that did not see that fold's gold rows).
"""

from __future__ import annotations

from collections.abc import Callable

import mlflow

from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.config import Config
from weakflow.tasks.core.training import EpochStats
from weakflow.tasks.lib.data import PipelineData
from weakflow.tasks.lib.modeling import TrainedModel, crossfit, gold_first, settings
from weakflow.tasks.lib.progress import epoch_bar
from weakflow.tasks.lib.stage import stage_task


def train_gold_only(data: PipelineData, cfg: Config, on_epoch: Callable[[EpochStats], None] | None = None) -> TrainedModel:
    """The weak-training network and schedule on the gold rows only (plain CE, batches of at most 32: the set is
    small)."""
    stage = cfg.weak_train
    table = gold_first(data)
    return crossfit(data, table, data.y(table), stage, cfg,
                    train=settings(stage, cfg, batch_size=min(stage.batch_size, 32), loss="ce"), on_epoch=on_epoch)


def log_candidate(trained: TrainedModel, data: PipelineData) -> None:
    """What every cross-fitted stage logs: the per-epoch curve, the chosen epoch, the out-of-fold gold
    accuracy and the temperature fitted on it, and the spec."""
    tracking.log_history(trained.history)
    mlflow.log_metrics({"best_epoch": trained.best_epoch, "oof_gold_accuracy": trained.best_dev_accuracy or 0.0,
                        "temperature": trained.temperature, "gold_folds": float(data.folds),
                        "gold_rows": float(len(data.rows("gold")))})
    mlflow.log_dict(trained.spec.to_dict(), "model_spec.json")


@stage_task("gold_only")
def gold_only(data: PipelineData, cfg: Config, parent_run_id: str, experiment_id: str) -> TrainedModel:
    with tracking.stage_run("gold_only", parent_run_id, experiment_id):
        tracking.log_section(cfg.selection, "selection")
        with epoch_bar("gold_only (cross-fitted)", cfg.weak_train.epochs) as bar:
            trained = train_gold_only(data, cfg, on_epoch=bar)
        log_candidate(trained, data)
        return trained

"""Stage gold_only: the network trained on the gold rows alone, cross-fitted.

Two jobs: it is the baseline every other candidate must beat (and may be what ships, when weak labels do
not help), and its calibrated p(class | x) is the prior the gold-anchored weak labels are combined with
(each fold's weak model uses the gold-only fold model that did not see that fold's gold rows). Its training
settings are the ``gold_only`` section, each one left out following ``weak_train``'s.
"""

from __future__ import annotations

from collections.abc import Callable

from weakflow.tasks.core.training import EpochStats
from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.config import Config, SelectionConfig, TrainStageConfig
from weakflow.tasks.lib.data import PipelineData
from weakflow.tasks.lib.modeling import TrainedModel, crossfit, gold_first, settings
from weakflow.tasks.lib.recording import log_candidate
from weakflow.tasks.lib.steps import RunContext, Stage


def compute(ctx: RunContext, data: PipelineData, section: TrainStageConfig, selection: SelectionConfig,
            trained: TrainedModel | None = None, on_epoch: Callable[[EpochStats], None] | None = None
            ) -> TrainedModel:
    """Plain CE on the gold rows only (``section``: ``gold_only.resolved(weak_train)``). ``trained``: this
    very model, already cross-fitted on the same rows and features (text.encoder auto trains it to choose)."""
    if trained is not None:
        return trained
    table = gold_first(data)
    return crossfit(data, table, data.y(table), section, ctx, selection, train=settings(section, ctx, loss="ce"),
                    on_epoch=on_epoch)


def train_gold_only(data: PipelineData, cfg: Config, on_epoch: Callable[[EpochStats], None] | None = None
                    ) -> TrainedModel:
    """:func:`compute` on a whole config (benchmarks, tests)."""
    return compute(RunContext.of(cfg), data, cfg.gold_only.resolved(cfg.weak_train), cfg.selection, on_epoch=on_epoch)


def log_settings(ctx: RunContext, data: PipelineData, section: TrainStageConfig, selection: SelectionConfig,
                 trained: TrainedModel | None = None) -> None:
    tracking.log_section(selection, "selection")
    tracking.log_section(section, "gold_only")


def record(result: TrainedModel, ctx: RunContext, data: PipelineData, section: TrainStageConfig,
           selection: SelectionConfig, trained: TrainedModel | None = None) -> None:
    log_candidate(result, data)


def progress(ctx: RunContext, data: PipelineData, section: TrainStageConfig, selection: SelectionConfig,
             trained: TrainedModel | None = None) -> tuple[str, int]:
    return "gold_only (cross-fitted)", section.epochs


STAGE = Stage("gold_only", compute, record, progress=progress, settings=log_settings)

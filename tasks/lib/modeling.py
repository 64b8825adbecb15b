"""Glue between the typed config and the torch core: which network, which training settings, and one
cross-fitted training of a candidate model (the refit on all gold plus the fold models that judge it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from weakflow.tasks.lib.config import SelectionConfig, TrainStageConfig
from weakflow.tasks.core.calibration import fit_temperature, softmax_t
from weakflow.tasks.core.crossfit import MEMBER_SEED, CrossFit, FoldTraining, PerFold, fold_rows_for, race, refit_count
from weakflow.tasks.core.losses import LossName
from weakflow.tasks.core.models import ModelSpec, build_model, replace_ensemble
from weakflow.tasks.core.training import EpochStats, TrainSettings, UpdateRule
from weakflow.tasks.lib.data import PipelineData
from weakflow.tasks.lib.progress import note_training
from weakflow.tasks.lib.steps import RunContext
from weakflow.tasks.lib.spread_training import training_spread


@dataclass
class TrainedModel:
    """A trained network with what is needed to rebuild it, to judge it honestly and to review its training.

    ``model`` is the refit on every gold row (what ships), returning raw logits; ``folds`` are the k fold
    models, ``oof_logits`` each gold row's logits from the fold model that never trained on it (in the
    order of ``data.rows("gold")``), and ``temperature`` the calibration fitted on them. ``folds_sampled``:
    the fold models trained on a sample of the non-gold rows (``selection.fold_rows``), so they are weaker
    networks than the refit and only judge it."""

    model: nn.Module
    spec: ModelSpec
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = -1
    folds: list[nn.Module] = field(default_factory=list)
    oof_logits: np.ndarray | None = None
    temperature: float = 1.0
    folds_sampled: bool = field(default=False, kw_only=True)

    @property
    def best_dev_accuracy(self) -> float | None:
        """Cross-fitted gold accuracy at the chosen epoch (every gold row judged out of fold)."""
        return self.history[self.best_epoch].dev_accuracy if self.history else None

    @property
    def oof_probs(self) -> np.ndarray:
        """Calibrated out-of-fold probabilities of the gold rows."""
        if self.oof_logits is None:
            raise ValueError("this model was not cross-fitted: it has no out-of-fold predictions")
        return softmax_t(self.oof_logits, self.temperature)


def model_spec(data: PipelineData, stage: TrainStageConfig) -> ModelSpec:
    """The network for this data: ``auto`` is the residual picture network for a picture column, the small CNN
    for pixel columns with an image shape, else the MLP."""
    pictures = data.schema.images
    image_shape = data.spec.image_shape or data.schema.image_shape
    auto = "resnet" if pictures is not None else ("cnn" if image_shape else "mlp")
    kind = stage.model if stage.model != "auto" else auto
    if kind in ("cnn", "resnet") and image_shape is None:
        raise ValueError(f"model {kind!r} needs pictures (data.image_columns) or data.image_shape")
    hidden = (stage.cnn_width,) if kind in ("cnn", "resnet") else tuple(stage.hidden)
    return ModelSpec(kind=kind, num_features=len(data.features), num_classes=len(data.classes), hidden=hidden,
                     dropout=stage.dropout, image_shape=image_shape, pool=kind == "cnn",
                     augment=pictures.augment if pictures is not None and kind == "resnet" else None)


def new_model(data: PipelineData, stage: TrainStageConfig, seed: int) -> tuple[nn.Module, ModelSpec]:
    """A fresh network, initialised from ``seed`` (so equal configs give equal models, whatever ran
    before), whose input scaling is fitted on every training row's features (no labels, no test)."""
    spec = model_spec(data, stage)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(spec)
    model.scale.fit(data.table(data.train), spec.image_shape if spec.kind == "resnet" else None)
    return model, spec


def settings(stage: TrainStageConfig, ctx: RunContext, *, epochs: int | None = None, lr: float | None = None,
             loss: LossName = "ce", batch_size: int | None = None) -> TrainSettings:
    return TrainSettings(epochs=epochs or stage.epochs, batch_size=batch_size or stage.batch_size, lr=lr or stage.lr,
                         weight_decay=stage.weight_decay, loss=getattr(stage, "loss", loss), gce_q=stage.gce_q,
                         seed=ctx.seed, device=ctx.device)


def gold_first(data: PipelineData, *others: pd.DataFrame) -> pd.DataFrame:
    """The training table of a cross-fitted model: every gold row first (in ``data.rows("gold")`` order, so
    out-of-fold predictions line up across models), then ``others``."""
    return pd.concat([data.rows("gold"), *others])


def one_hot(y: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[np.asarray(y, dtype=np.int64)]


def crossfit(data: PipelineData, table: pd.DataFrame, targets: PerFold | np.ndarray,
             stage: TrainStageConfig, ctx: RunContext, selection: SelectionConfig, *,
             weights: PerFold | np.ndarray | None = None, train: TrainSettings | None = None, rule: Callable[[int | None], UpdateRule | None] | None = None,
             build: Callable[[int | None], nn.Module] | None = None, spec: ModelSpec | None = None,
             monitor: Callable[[nn.Module], dict[str, float]] | None = None,
             on_epoch: Callable[[EpochStats], None] | None = None) -> TrainedModel:
    """Cross-fit one candidate on ``table`` (gold rows first, see :func:`gold_first`): k fold models and the
    refit, stopped at the epoch best on the out-of-fold gold predictions (or the last one within noise of it:
    ``selection.epoch_noise``), then a temperature fitted on those
    predictions under ``selection.temperature_prior_sd``. ``build(fold)`` overrides the fresh network each
    trainer starts from (e.g. a fold's pretrained model; ``spec`` then describes it)."""
    run = _fold_training(data, table, targets, stage, ctx, selection, weights=weights, train=train, rule=rule,
                         build=build, monitor=monitor)
    note_training(f"cross-fitting {run.gold.k} fold models{_sampled(run)}{_where(run)} + the refit, {run.epochs} epochs",
                  _rows(table, weights))
    run.advance(run.epochs, on_epoch)
    _say_kept_epoch(run)
    if run.lazy:  # the refit trains after the folds, silently: say so
        note_training(f"training the refit up to the chosen epoch {run.best_epoch + 1}")
    return _trained(run.result(), spec or model_spec(data, stage), run.gold.y, selection)


def race_crossfit(data: PipelineData, table: pd.DataFrame, candidates: dict[str, PerFold | np.ndarray],
                  stage: TrainStageConfig, ctx: RunContext, selection: SelectionConfig, *, probe: int, choose: Callable[[dict[str, np.ndarray]], str],
                  train: TrainSettings | None = None, rule: Callable[[int | None], UpdateRule | None] | None = None,
                  on_epoch: Callable[[EpochStats], None] | None = None
                  ) -> tuple[str, dict[str, np.ndarray], TrainedModel]:
    """Cross-fit several candidates (the same rows and network, different targets) ``probe`` epochs each,
    keep the one ``choose`` names from their calibrated out-of-fold gold probabilities so far, and finish only
    that one (:func:`tasks.core.crossfit.race`). Returns (the kept name, every candidate's calibrated
    out-of-fold probabilities at the probe, the kept model)."""
    runs = {name: _fold_training(data, table, targets, stage, ctx, selection, train=train, rule=rule)
            for name, targets in candidates.items()}
    first = next(iter(runs.values()))
    note_training(f"racing {len(runs)} candidates ({', '.join(runs)}): {first.gold.k} fold models{_sampled(first)}"
                  f"{_where(first)} each, "
                  f"{probe} epochs, then the best one to {first.epochs} epochs and its refit", len(table))
    gold_y = first.gold.y
    calibrated: dict[str, np.ndarray] = {}

    def judge(oof: dict[str, np.ndarray]) -> str:
        calibrated.update({name: softmax_t(logits, _temperature(logits, gold_y, selection)) for name, logits in oof.items()})
        return choose(calibrated)

    kept, fitted = race(runs, probe, judge, on_epoch)
    _say_kept_epoch(runs[kept])
    return kept, calibrated, _trained(fitted, model_spec(data, stage), gold_y, selection)


def epoch_noise(selection: SelectionConfig, pictures: bool) -> float:
    """``selection.epoch_noise`` resolved: auto is 1 standard error for picture data, else 0 (the best epoch)."""
    if selection.epoch_noise != "auto":
        return float(selection.epoch_noise)
    return 1.0 if pictures else 0.0


def _say_kept_epoch(run: FoldTraining) -> None:
    """Where ``selection.epoch_noise`` kept a later epoch than the best one, a progress line says which and why."""
    if run.best_epoch != run.peak_epoch:
        note_training(f"epoch {run.best_epoch + 1} kept: within noise of the best out-of-fold gold accuracy, epoch "
                      f"{run.peak_epoch + 1}'s ({run.history[run.peak_epoch].dev_accuracy:.3f} against "
                      f"{run.history[run.best_epoch].dev_accuracy:.3f})")


def _sampled(run: FoldTraining) -> str:
    """How the fold models' rows were sampled, for the progress line (selection.fold_rows); empty: all rows."""
    return "" if run.sampled is None else f" (on their gold rows and {run.sampled:,} others drawn at random)"


def _where(run: FoldTraining) -> str:
    """Where the fold models train, for the progress line (parallel.training under Dask); empty: here."""
    return "" if run.spread is None else " as tasks on the Dask cluster"


def _rows(table: pd.DataFrame, weights: PerFold | np.ndarray | None) -> int:
    """Rows the refit trains on (a weight of 0 leaves a row out), what a progress line reports."""
    refit_weights = weights(None) if callable(weights) else weights
    return len(table) if refit_weights is None else int((np.asarray(refit_weights) > 0).sum())


def _fold_training(data: PipelineData, table: pd.DataFrame, targets: PerFold | np.ndarray, stage: TrainStageConfig,
                   ctx: RunContext, selection: SelectionConfig, *, weights: PerFold | np.ndarray | None = None, train: TrainSettings | None = None,
                   rule: Callable[[int | None], UpdateRule | None] | None = None,
                   build: Callable[[int | None], nn.Module] | None = None,
                   monitor: Callable[[nn.Module], dict[str, float]] | None = None) -> FoldTraining:
    gold = data.gold_folds(table)
    if not np.array_equal(gold.rows, np.arange(len(gold.rows))):
        raise ValueError("crossfit needs the gold rows first in the training table (use gold_first)")

    def fresh(_fold: int | None, member: int = 0) -> nn.Module:
        return new_model(data, stage, ctx.seed + MEMBER_SEED * member)[0]

    rows = _rows(table, weights)
    return FoldTraining(build or fresh, data.table(table), targets, gold, train or settings(stage, ctx), weights=weights,
                        rule=rule, monitor=monitor, refits=refit_count(selection.refits, rows),
                        member=(lambda i: build(None)) if build else (lambda i: fresh(None, i)),
                        fold_rows=fold_rows_for(selection.fold_rows, len(table) - len(gold.rows)),
                        spread=training_spread(ctx.spread_training),
                        epoch_noise=epoch_noise(selection, data.schema.images is not None))


def _temperature(oof_logits: np.ndarray, gold_y: np.ndarray, selection: SelectionConfig) -> float:
    return fit_temperature(oof_logits, gold_y, prior_sd=selection.temperature_prior_sd) if len(gold_y) else 1.0


def _trained(fitted: CrossFit, spec: ModelSpec, gold_y: np.ndarray, selection: SelectionConfig) -> TrainedModel:
    assert fitted.refit is not None
    return TrainedModel(fitted.refit, replace_ensemble(spec, fitted.refit), fitted.history, fitted.best_epoch,
                        fitted.folds, fitted.oof_logits, _temperature(fitted.oof_logits, gold_y, selection),
                        folds_sampled=fitted.folds_sampled)

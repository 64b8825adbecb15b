"""Cross-fitting over the gold rows: every gold row judges a model that never trained on it.

The gold rows are cut into k stratified folds. Fold model f trains on everything except fold f's gold
rows and is scored on them; together the k models give each gold row an out-of-fold (OOF) prediction, so
epochs, methods and the model to ship are chosen on *every* gold row instead of one small dev split.
A refit on all gold trains beside them in lockstep: after each epoch the k models' OOF accuracy (ties:
lower OOF loss, then the later epoch) decides whether this epoch is the best so far, and the refit is kept
at that same epoch. The refit is the model the pipeline ships; the folds only judge it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from weakflow.tasks.core.folds import GoldFolds
from weakflow.tasks.core.training import EpochStats, TrainSettings, Trainer, UpdateRule, dev_scores, predict_logits, to_device
from weakflow.tasks.core.device import resolve_device


@dataclass
class CrossFit:
    """k fold models and the refit, all at the epoch chosen on the gold rows' OOF predictions."""

    refit: nn.Module | None
    folds: list[nn.Module]
    oof_logits: np.ndarray  # (gold rows, C), in GoldFolds order
    best_epoch: int
    history: list[EpochStats] = field(default_factory=list)  # per epoch: mean train loss, OOF accuracy / loss

    @property
    def oof_accuracy(self) -> float:
        return self.history[self.best_epoch].dev_accuracy or 0.0 if self.history else 0.0


PerFold = Callable[[int | None], np.ndarray]  # fold index (None: the refit) -> an array over the rows


def fit_folds(
    build: Callable[[int | None], nn.Module],
    x: np.ndarray,
    targets: PerFold | np.ndarray,
    gold: GoldFolds,
    settings: TrainSettings,
    weights: PerFold | np.ndarray | None = None,
    refit: bool = True,
    rule: Callable[[int | None], UpdateRule | None] | None = None,
    monitor: Callable[[nn.Module], dict[str, float]] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> CrossFit:
    """Train k fold models (fold f without fold f's gold rows) and, with ``refit``, one on every row.

    ``build(fold)`` gives each trainer's network (``None`` = the refit). ``targets`` are the rows' training
    targets ((N,) class indices or (N, C) soft), or a function of the fold giving them, when a fold's
    targets depend on the gold it may use (the gold-anchored weak labels do); ``weights`` likewise, where
    a weight of 0 leaves a row out of that trainer (a row only some folds' pseudo-labellers kept).
    ``rule`` gives each trainer its update rule (a rule keeps state, so one per trainer). ``monitor``
    (e.g. per-epoch CLID) runs on the refit, or on fold 0 without one.
    """
    device = resolve_device(settings.device)
    shared_x = to_device(np.asarray(x, dtype=np.float32), device)
    target_of = targets if callable(targets) else (lambda _f: targets)
    weight_of = weights if callable(weights) else (lambda _f: weights)
    trainers: list[Trainer] = []
    for f in [*range(gold.k), *([None] if refit else [])]:
        w = weight_of(f)
        keep = np.ones(len(x), dtype=bool) if w is None else np.asarray(w) > 0
        if f is not None:
            keep[gold.rows[gold.held_out(f)]] = False
        trainers.append(Trainer(build(f), shared_x, target_of(f), settings if f is None else _seeded(settings, f), w,
                                rule(f) if rule else None, monitor if f is None else None, np.flatnonzero(keep)))
    if not refit and monitor is not None:
        trainers[0].monitor = monitor
    history: list[EpochStats] = []
    per_trainer: list[list[EpochStats]] = [[] for _ in trainers]
    best_key: tuple[float, float, float] | None = None
    best_states: list[dict[str, torch.Tensor]] = []
    best_oof = np.zeros((len(gold.rows), 0), dtype=np.float32)
    best_epoch = 0
    for epoch in range(settings.epochs):
        losses, extras = [], {}
        for i, trainer in enumerate(trainers):
            loss, extra = trainer.epoch(epoch)
            losses.append(loss)
            per_trainer[i].append(EpochStats(epoch, loss, None, None, extra))
            extras = extras or extra
        oof = _oof(trainers[: gold.k], x, gold, device)
        acc, nll = dev_scores(oof, gold.y)
        stats = EpochStats(epoch, float(np.mean(losses)), acc, nll, dict(extras))
        history.append(stats)
        key = (acc, -nll, float(epoch))
        if best_key is None or key >= best_key:
            best_key, best_epoch, best_oof = key, epoch, oof
            best_states = [copy.deepcopy(t.model.state_dict()) for t in trainers]
        if on_epoch is not None:
            on_epoch(stats)
    models: list[nn.Module] = []
    selected_any = False
    for trainer, state, own in zip(trainers, best_states, per_trainer):
        chosen = trainer.rule.select(trainer.model, own)
        if chosen is None:
            trainer.model.load_state_dict(state)
            chosen = trainer.model
        else:
            selected_any = True
        models.append(chosen.eval())
    if selected_any:  # a rule picked its own networks (CLID snapshots): judge those on the held-out gold
        best_oof = _oof_of(models[: gold.k], x, gold, device)
        acc, nll = dev_scores(best_oof, gold.y)
        history[best_epoch] = EpochStats(best_epoch, history[best_epoch].train_loss, acc, nll,
                                         history[best_epoch].extra)
    return CrossFit(models[gold.k] if refit else None, models[: gold.k], best_oof, best_epoch, history)


def _seeded(settings: TrainSettings, fold: int) -> TrainSettings:
    from dataclasses import replace

    return replace(settings, seed=settings.seed + 1000 * (fold + 1))


def _oof(trainers: list[Trainer], x: np.ndarray, gold: GoldFolds, device: torch.device) -> np.ndarray:
    return _oof_of([t.model for t in trainers], x, gold, device)


def _oof_of(models: list[nn.Module], x: np.ndarray, gold: GoldFolds, device: torch.device) -> np.ndarray:
    """Each gold row's logits from the fold model that did not train on it (GoldFolds order)."""
    out: np.ndarray | None = None
    for f, model in enumerate(models):
        held = gold.held_out(f)
        logits = predict_logits(model, x[gold.rows[held]], device=device)
        out = np.zeros((len(gold.rows), logits.shape[1]), dtype=np.float32) if out is None else out
        out[held] = logits
    assert out is not None
    return out

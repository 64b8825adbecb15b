"""Cross-fitting over the gold rows: every gold row judges a model that never trained on it.

The gold rows are cut into k stratified folds. Fold model f trains on everything except fold f's gold
rows and is scored on them; together the k models give each gold row an out-of-fold (OOF) prediction, so
epochs, methods and the model to ship are chosen on *every* gold row instead of one small dev split.
After each epoch the k models' OOF accuracy (ties: lower OOF loss, then the later epoch) decides whether
this epoch is the best so far; the refit on all gold is kept at that same epoch (trained afterwards, up to
it, unless it must train beside the folds). The refit is the model the pipeline ships; the folds only
judge it. On small data the refit may be a bag of networks from different seeds, their logits averaged
(:func:`refit_count`): there one network's seed moves test accuracy by more than the methods differ.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from weakflow.tasks.core.folds import GoldFolds
from weakflow.tasks.core.training import EpochStats, TrainSettings, Trainer, UpdateRule, dev_scores, predict_logits, to_device
from weakflow.tasks.core.device import resolve_device
from weakflow.tasks.core.models import LogitEnsemble
from weakflow.tasks.core.picture_rows import PictureRows

SMALL_TABLE = 1_000  # refit rows up to which ``refits: auto`` bags (a network there costs seconds on a CPU core)
AUTO_REFITS = 3
FOLD_FLOOR = 10_000  # selection.fold_rows auto: fold models train on at least this many non-gold rows
FOLD_SAMPLE_STREAM = 7  # spawn key of the fold models' row sample under the run's seed
MEMBER_SEED = 7919  # member i of a bagged refit draws from seed + i * MEMBER_SEED


@dataclass
class CrossFit:
    """k fold models and the refit, all at the epoch chosen on the gold rows' OOF predictions."""

    refit: nn.Module | None
    folds: list[nn.Module]
    oof_logits: np.ndarray  # (gold rows, C), in GoldFolds order
    best_epoch: int
    history: list[EpochStats] = field(default_factory=list)  # per epoch: mean train loss, OOF accuracy / loss
    folds_sampled: bool = False  # the fold models trained on a sample of the non-gold rows (selection.fold_rows)

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
    refits: int = 1,
    member: Callable[[int], nn.Module] | None = None,
    fold_rows: int | None = None,
    spread: Spread | None = None,
) -> CrossFit:
    """Train k fold models (fold f without fold f's gold rows) and, with ``refit``, one on every row.

    ``build(fold)`` gives each trainer's network (``None`` = the refit). ``targets`` are the rows' training
    targets ((N,) class indices or (N, C) soft), or a function of the fold giving them, when a fold's
    targets depend on the gold it may use (the gold-anchored weak labels do); ``weights`` likewise, where
    a weight of 0 leaves a row out of that trainer (a row only some folds' pseudo-labellers kept).
    ``rule`` gives each trainer its update rule (a rule keeps state, so one per trainer). ``monitor``
    (e.g. per-epoch CLID) runs on the refit, or on fold 0 without one. ``refits`` > 1 bags the refit:
    ``member(i)`` builds the network member i (i >= 1) starts from; each trains on the refit's rows, with
    its own seed, up to the chosen epoch, and the refit is their :class:`LogitEnsemble`. ``fold_rows``: the
    fold models train on their gold rows and that many of the others, drawn once (see :func:`fold_rows_for`).
    ``spread`` trains the fold models elsewhere, all at once (see :data:`Spread`); the refit trains here.
    """
    run = FoldTraining(build, x, targets, gold, settings, weights, refit, rule, monitor, refits, member, fold_rows,
                       spread)
    run.advance(run.epochs, on_epoch)
    return run.result()


class FoldTraining:
    """One candidate's cross-fitting as a resumable state (see :func:`fit_folds`), so candidates can be raced
    (:func:`race`): each trained part of the way, the losers dropped.

    The fold models move together, epoch by epoch. The refit trains beside them only where it must (a
    ``monitor`` reports on it every epoch, or its rule picks its own epochs, as CLID-MU's snapshots do);
    otherwise it trains last, and only up to the epoch the folds chose: every trainer draws from its own
    random stream (:class:`~tasks.core.training.Trainer`), so the refit comes out the same either way, and a
    raced candidate that loses never trains one. A bagged refit (``refits`` > 1) is only possible where the
    refit waits: a refit that must train beside the folds stays one network."""

    def __init__(self, build: Callable[[int | None], nn.Module], x: np.ndarray, targets: PerFold | np.ndarray,
                 gold: GoldFolds, settings: TrainSettings, weights: PerFold | np.ndarray | None = None,
                 refit: bool = True, rule: Callable[[int | None], UpdateRule | None] | None = None,
                 monitor: Callable[[nn.Module], dict[str, float]] | None = None, refits: int = 1,
                 member: Callable[[int], nn.Module] | None = None, fold_rows: int | None = None,
                 spread: Spread | None = None, epoch_noise: float = 0.0) -> None:
        if refits > 1 and member is None:
            raise ValueError(f"refits = {refits} needs member(i) to build the bag's other networks")
        self.device = device = resolve_device(settings.device)
        self.x, self.gold, self.epochs, self.spread = x, gold, settings.epochs, spread
        # one copy of the rows on the device for every trainer (a streamed picture table stays on disk)
        self.shared_x = shared_x = x if isinstance(x, PictureRows) else to_device(np.asarray(x, dtype=np.float32), device)
        target_of = targets if callable(targets) else (lambda _f: targets)
        weight_of = weights if callable(weights) else (lambda _f: weights)
        trainers: list[Trainer] = []
        sample = _fold_sample(len(x), gold.rows, fold_rows, settings.seed)
        # non-gold rows each fold model trains on, where they are a sample (said in the run); None: all
        self.sampled = None if sample is None else int(sample.sum()) - len(gold.rows)
        for f in [*range(gold.k), *([None] if refit else [])]:
            w = weight_of(f)
            keep = np.ones(len(x), dtype=bool) if w is None else np.asarray(w) > 0
            if f is not None:
                keep[gold.rows[gold.held_out(f)]] = False
                if sample is not None:
                    keep &= sample
            trainers.append(Trainer(bag_member(build(f), 0), shared_x, target_of(f),
                                    settings if f is None else _seeded(settings, f), w, rule(f) if rule else None,
                                    monitor if f is None else None, np.flatnonzero(keep)))
        if not refit and monitor is not None:
            trainers[0].monitor = monitor
        self.trainers = trainers
        self.refit = trainers[gold.k] if refit else None
        self.lazy = self.refit is not None and self.refit.monitor is None and not getattr(self.refit.rule, "own_epochs", True)
        # the bagged refit's other members, trained in result(); a refit training beside the folds is one network
        self.more_members: Callable[[], list[Trainer]] = lambda: []
        if self.lazy and refits > 1:
            assert member is not None
            w = weight_of(None)
            rows = None if w is None else np.flatnonzero(np.asarray(w) > 0)
            self.more_members = lambda: [Trainer(copy.deepcopy(bag_member(member(i), i)), shared_x, target_of(None),
                                                replace(settings, seed=settings.seed + MEMBER_SEED * i), w,
                                                rule(None) if rule else None, None, rows) for i in range(1, refits)]
        self.movers = trainers[: gold.k] if self.lazy else trainers  # the trainers that move every epoch
        self.epoch = 0  # epochs trained so far by the movers
        self.history: list[EpochStats] = []
        self.per_trainer: list[list[EpochStats]] = [[] for _ in trainers]
        self.best_key: tuple[float, float, float] | None = None
        self.best_states: list[dict[str, torch.Tensor]] = []  # the movers' states at the kept epoch
        self.best_oof = np.zeros((len(gold.rows), 0), dtype=np.float32)
        self.best_epoch = 0
        # a later epoch is kept unless the best one so far beats it beyond this many standard errors of their
        # paired difference on the out-of-fold gold (0: the best epoch, ties to the later)
        self.epoch_noise = epoch_noise
        self.peak_oof: np.ndarray | None = None  # the best epoch's out-of-fold predictions so far
        self.peak_epoch = 0  # ... and that epoch (best_epoch is the one kept)

    def advance(self, until: int, on_epoch: Callable[[EpochStats], None] | None = None) -> None:
        """Train the fold models (and a refit that cannot wait) up to epoch ``until``: here, epoch by epoch, or
        each through all its epochs at once where ``spread`` puts it (see :func:`advance_all`)."""
        if self.spread is not None:
            advance_all([self], until, on_epoch)
            return
        for epoch in range(self.epoch, until):
            losses, extras = [], {}
            for i, trainer in enumerate(self.movers):
                loss, extra = trainer.epoch(epoch)
                losses.append(loss)
                self.per_trainer[i].append(EpochStats(epoch, loss, None, None, extra))
                extras = extras or extra
            oof = _oof(self.trainers[: self.gold.k], self.x, self.gold, self.device)
            self._record(epoch, losses, extras, oof, lambda: [copy.deepcopy(t.model.state_dict()) for t in self.movers],
                         on_epoch)

    def _record(self, epoch: int, losses: list[float], extras: dict[str, float], oof: np.ndarray,
                states: Callable[[], list[dict[str, torch.Tensor]]], on_epoch: Callable[[EpochStats], None] | None) -> None:
        """Epoch ``epoch`` judged on the out-of-fold gold: its stats, and the movers' ``states`` if it is kept (the
        best so far, or within ``epoch_noise`` of it)."""
        acc, nll = dev_scores(oof, self.gold.y)
        stats = EpochStats(epoch, float(np.mean(losses)), acc, nll, dict(extras))
        self.history.append(stats)
        key = (acc, -nll, float(epoch))
        peak = self.best_key is None or key >= self.best_key
        if peak:
            self.best_key, self.peak_oof, self.peak_epoch = key, oof, epoch
        if peak or (self.epoch_noise > 0 and within_noise(oof, self.peak_oof, self.gold.y, self.epoch_noise)):
            self.best_epoch, self.best_oof, self.best_states = epoch, oof, states()
        self.epoch = epoch + 1
        if on_epoch is not None:
            on_epoch(stats)

    def _jobs(self, until: int) -> list[tuple[Trainer, int, int, np.ndarray | None]]:
        """One :func:`train_span` per mover, from the next epoch to ``until``; a fold model also scores the gold
        rows it held out after every epoch."""
        k = self.gold.k
        return [(t, self.epoch, until, self.x[self.gold.rows[self.gold.held_out(i)]] if i < k else None)
                for i, t in enumerate(self.movers)]

    def _absorb(self, spans: list[Span], on_epoch: Callable[[EpochStats], None] | None) -> None:
        """The movers' spans, taken in as if they had trained here epoch by epoch (the same choice, the same
        networks; the progress lines come once the spans are back)."""
        k, start = self.gold.k, self.epoch
        for i, span in enumerate(spans):
            span.trainer.x = self.shared_x  # its rows travelled without it
            self.trainers[self.trainers.index(self.movers[i])] = span.trainer
        self.movers = self.trainers[:k] if self.lazy else self.trainers
        self.refit = self.trainers[k] if self.refit is not None else None
        for j in range(len(spans[0].losses)):
            extras: dict[str, float] = {}
            for i, span in enumerate(spans):
                self.per_trainer[i].append(EpochStats(start + j, span.losses[j], None, None, span.extras[j]))
                extras = extras or span.extras[j]
            oof = _assemble(self.gold, [span.held[j] for span in spans[:k]])
            self._record(start + j, [s.losses[j] for s in spans], extras, oof, lambda j=j: [s.states[j] for s in spans],
                         on_epoch)

    def result(self) -> CrossFit:
        """Every network at its chosen epoch (a waiting refit trained now, up to that epoch), with the
        out-of-fold predictions. Call once, after the last :meth:`advance`."""
        k, models, selected_any = self.gold.k, [], False
        for trainer, state, own in zip(self.movers, self.best_states, self.per_trainer):
            chosen = trainer.rule.select(trainer.model, own)
            if chosen is None:
                trainer.model.load_state_dict(state)
                chosen = trainer.model
            else:
                selected_any = True
            models.append(chosen.eval())
        if self.lazy:
            assert self.refit is not None
            bag = [self.refit, *self.more_members()]
            for trainer in bag:
                for epoch in range(self.best_epoch + 1):
                    trainer.epoch(epoch)
            members = [t.model.eval() for t in bag]
            models.append(LogitEnsemble(members).eval() if len(members) > 1 else members[0])
        history, best_oof = list(self.history), self.best_oof
        if selected_any:  # a rule picked its own networks (CLID snapshots): judge those on the held-out gold
            best_oof = _oof_of(models[:k], self.x, self.gold, self.device)
            acc, nll = dev_scores(best_oof, self.gold.y)
            history[self.best_epoch] = EpochStats(self.best_epoch, history[self.best_epoch].train_loss, acc, nll,
                                                  history[self.best_epoch].extra)
        return CrossFit(models[k] if self.refit is not None else None, models[:k], best_oof, self.best_epoch, history,
                        self.sampled is not None)


def within_noise(oof: np.ndarray, peak: np.ndarray, y: np.ndarray, z: float) -> bool:
    """Whether ``peak``'s out-of-fold gold accuracy beats ``oof``'s by at most ``z`` standard errors of their
    paired difference (a sign test's: the rows only one of them gets right decide it)."""
    right, peak_right = np.asarray(oof).argmax(1) == y, np.asarray(peak).argmax(1) == y
    lost, won = int((peak_right & ~right).sum()), int((right & ~peak_right).sum())
    return lost - won <= z * np.sqrt(lost + won)


@dataclass
class Span:
    """What one trainer did over some epochs, wherever it trained (:func:`train_span`)."""

    trainer: Trainer  # its whole state after the last epoch, without its rows (``x`` is None)
    losses: list[float]  # per epoch: mean train loss
    extras: list[dict[str, float]]  # per epoch: the rule's and monitor's figures
    held: list[np.ndarray]  # per epoch: logits on the gold rows it held out (a fold model; else empty)
    states: list[dict[str, torch.Tensor]]  # per epoch: its network's weights, on the CPU


# Runs train_span(*job) for every job, maybe elsewhere and at once (e.g. as tasks on a Dask cluster), and returns
# the spans in job order. The core knows only this signature: tasks.lib.spread_training gives one.
Spread = Callable[[list[tuple[Trainer, int, int, np.ndarray | None]]], list[Span]]


def train_span(trainer: Trainer, start: int, until: int, held_x: np.ndarray | None) -> Span:
    """Epochs ``start`` .. ``until`` - 1 of one trainer, each followed by its logits on ``held_x`` (a fold model's
    held-out gold) and a copy of its weights: all a caller needs to choose the epoch on every fold's gold and
    restore each network at it. A trainer draws from its own random streams, so where it runs does not change
    what it learns."""
    losses, extras, held, states = [], [], [], []
    for epoch in range(start, until):
        with warnings.catch_warnings():
            # an unpickled trainer's LR schedule no longer finds its wrapper on optimizer.step and warns on its
            # first step; the schedule itself is intact (the spread tests compare every network bit for bit)
            warnings.filterwarnings("ignore", message="Seems like `optimizer.step", category=UserWarning)
            loss, extra = trainer.epoch(epoch)
        losses.append(loss)
        extras.append(extra)
        if held_x is not None:
            held.append(predict_logits(trainer.model, held_x, device=trainer.device))
        states.append({name: value.detach().to("cpu", copy=True) for name, value in trainer.model.state_dict().items()})
    trainer.x = None  # type: ignore[assignment]  # the rows stay with the caller, who puts them back
    return Span(trainer, losses, extras, held, states)


def advance_all(runs: list[FoldTraining], until: int, on_epoch: Callable[[EpochStats], None] | None = None) -> None:
    """:meth:`FoldTraining.advance` of several runs to ``until`` (each at most its own epochs); where they have a
    ``spread``, every mover of every run goes out in one call, so a cluster trains them all at once."""
    spread = runs[0].spread
    if spread is None:
        for run in runs:
            run.advance(min(until, run.epochs), on_epoch)
        return
    todo = [(run, run._jobs(min(until, run.epochs))) for run in runs if min(until, run.epochs) > run.epoch]
    spans = spread([job for _, jobs in todo for job in jobs]) if todo else []
    for run, jobs in todo:
        run._absorb(spans[: len(jobs)], on_epoch)
        spans = spans[len(jobs):]


def race(runs: dict[str, FoldTraining], probe: int, choose: Callable[[dict[str, np.ndarray]], str],
         on_epoch: Callable[[EpochStats], None] | None = None) -> tuple[str, CrossFit]:
    """Successive halving over candidates: train each one's fold models ``probe`` epochs, let ``choose`` name
    the one to keep from their best out-of-fold logits so far, and finish only that one (all its epochs).
    Returns (the kept name, its result)."""
    advance_all(list(runs.values()), probe, on_epoch)
    kept = choose({name: run.best_oof for name, run in runs.items()})
    runs[kept].advance(runs[kept].epochs, on_epoch)
    return kept, runs[kept].result()


def refit_count(setting: int | str, rows: int) -> int:
    """Networks in the refit (``selection.refits``): a number, or ``auto``: :data:`AUTO_REFITS` where the refit
    trains on at most :data:`SMALL_TABLE` rows, else one. On a few hundred rows a network's seed moves test
    accuracy by points (bagging measured +0.69 points per run on wine, +0.13 on breast cancer: docs/benchmarks.md),
    and each network costs seconds; on large tables one network is steadier and the bag would cost minutes."""
    if setting == "auto":
        return AUTO_REFITS if rows <= SMALL_TABLE else 1
    return int(setting)


def fold_rows_for(setting: int | str | None, rows: int) -> int | None:
    """Non-gold rows each fold model trains on (``selection.fold_rows``): a number, ``all``, or ``auto``: every row
    up to :data:`FOLD_FLOOR` x 2 rows, beyond that a tenth of them but at least :data:`FOLD_FLOOR`. The fold
    models only judge (their out-of-fold gold predictions choose the epoch, temperature and candidates); the
    refit, the model shipped, trains on every row. Two refits (weak and final) and eight fold models of a tenth
    (three per stage, and the evidence race's two variants over three folds for a third of the epochs) cost
    2.8 networks on the whole table, where all rows cost ten."""
    if setting in (None, "all"):
        return None
    if setting == "auto":
        return None if rows <= 2 * FOLD_FLOOR else max(FOLD_FLOOR, rows // 10)
    return int(setting)


def _fold_sample(n: int, gold_rows: np.ndarray, fold_rows: int | None, seed: int) -> np.ndarray | None:
    """The rows fold models may train on: every gold row and ``fold_rows`` of the others drawn at random
    (the same for every fold, so fold models differ only in the gold they hold out); None: all."""
    others = np.setdiff1d(np.arange(n), gold_rows)
    if fold_rows is None or len(others) <= fold_rows:
        return None
    mask = np.zeros(n, dtype=bool)
    mask[gold_rows] = True
    mask[np.random.default_rng([seed, FOLD_SAMPLE_STREAM]).choice(others, fold_rows, replace=False)] = True
    return mask


def bag_member(model: nn.Module, i: int) -> nn.Module:
    """Member ``i`` of a bagged refit that starts from ``model``: a bag's own member i (a final model
    warm-started from a bagged weak model), or the network itself."""
    if isinstance(model, LogitEnsemble):
        return model.members[i % len(model.members)]
    return model


def _seeded(settings: TrainSettings, fold: int) -> TrainSettings:
    return replace(settings, seed=settings.seed + 1000 * (fold + 1))


def _oof(trainers: list[Trainer], x: np.ndarray, gold: GoldFolds, device: torch.device) -> np.ndarray:
    return _oof_of([t.model for t in trainers], x, gold, device)


def _oof_of(models: list[nn.Module], x: np.ndarray, gold: GoldFolds, device: torch.device) -> np.ndarray:
    """Each gold row's logits from the fold model that did not train on it (GoldFolds order)."""
    return _assemble(gold, [predict_logits(model, x[gold.rows[gold.held_out(f)]], device=device)
                            for f, model in enumerate(models)])


def _assemble(gold: GoldFolds, held: list[np.ndarray]) -> np.ndarray:
    """The out-of-fold logits (GoldFolds order) from each fold model's logits on the gold rows it held out."""
    out = np.zeros((len(gold.rows), held[0].shape[1]), dtype=np.float32)
    for f, logits in enumerate(held):
        out[gold.held_out(f)] = logits
    return out

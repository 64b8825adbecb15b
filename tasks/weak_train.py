"""Stage weak_train: learn from the gold rows and the weak labels together, cross-fitted over the gold.

Every method trains on the gold rows (their labels, trusted) and the weak rows, as k fold models and a
refit on all gold (tasks/core/crossfit.py); the out-of-fold gold predictions choose the epoch and judge
the result. Methods (``weak_train.method``):

- ``anchored`` (default): each weak row is learnt through its votes' likelihood under every source's
  confusion matrix: the loss is the (bounded, GCE-form) negative log of sum_y p(y | x) P(votes | y) (the
  gold rows: plain CE, their label is not in doubt), so
  structured noise is undone rather than learnt, while symmetric noise averages out over many rows as with
  a robust loss (tasks/core/methods.py, EvidenceLoss). The confusions start from the gold rows
  (weak_labels, gold_anchored); with ``anchored_refine`` (default) each trainer re-estimates them on the weak
  rows too, by EM with its own fold's gold-only model's p(y | x) as each row's prior and the gold counts
  kept in every step (tasks/core/trusted.py, refine): a handful of gold rows per class cannot tell a 60/40
  pair flip from an even one, a thousand weak rows weighed by a model that sees x can.
  ``weak_train.anchored_prior: auto`` then cross-fits the weak model with and without the gold-only model's
  calibrated p(y | x) as a second opinion in the evidence for a third of the epochs (``anchored_prior_probe``),
  keeps the one the out-of-fold gold rows prefer by the selection stage's rule, and trains only that one on:
  the opinion helps where the votes say little about which of two classes a row is, and costs where the
  gold-only model is the weaker judge, so it is measured on the data rather than assumed. (Without
  refinement the opinion joins outright where the gold rows cannot pin down what a vote points to.)
- ``glc``: Gold Loss Correction: a model trained on the weak labels alone gives, on the gold rows, the
  corruption matrix C[true, weak]; the network then learns weak rows through softmax(z) @ C;
- ``ce`` / ``gce``: the aggregated weak labels with cross-entropy or its bounded variant;
- ``confident_learning``: cleanlab drops the weak rows it believes mislabelled (decided without gold);
- ``clid_mu``: meta-learned sample weights with CLID on unlabeled rows as the meta loss (no clean label
  enters the weighting; CLID, not gold, picks each model's snapshots).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import mlflow
import numpy as np
import pandas as pd
import torch

from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.config import Config, WeakTrainConfig
from weakflow.tasks.core.calibration import softmax_t
from weakflow.tasks.core.clid import ClidMonitor, ClidMu, ClidMuSettings
from weakflow.tasks.core.methods import (
    ConfidentLearningSettings, EvidenceLoss, ForwardCorrected, as_evidence, clid_dev_correlation,
    confident_learning_keep, glc_corruption, glc_targets, log_one_hot,
)
from weakflow.tasks.core.trusted import SourceNoise, refine, source_noise_records
from weakflow.tasks.core.training import EpochStats, UpdateRule, fit, predict_logits
from weakflow.tasks.lib.data import PROVENANCE, ROW_ID, PipelineData
from weakflow.tasks.gold_only import log_candidate
from weakflow.tasks.select import best_out_of_fold
from weakflow.tasks.lib.modeling import TrainedModel, crossfit, gold_first, new_model, one_hot, race_crossfit, settings
from weakflow.tasks.lib.progress import epoch_bar
from weakflow.tasks.lib.stage import stage_task
from weakflow.tasks.weak_labels import WeakLabels


class NoWeakRows(ValueError):
    """No non-gold row carries a usable weak vote: there is nothing for weak supervision to add."""


@dataclass
class WeakModel(TrainedModel):
    figures: dict[str, float] = field(default_factory=dict)
    rows: int = 0  # weak rows trained on (after confident learning's removals)
    row_ids: np.ndarray | None = None  # the weak rows (ids) the model trained on
    # anchored with anchored_refine: per trainer (fold, None = refit) the votes' refined log-likelihood over
    # the weak rows (what the final stage learns them through), and the refit's refined sources (logged)
    evidence: dict[int | None, np.ndarray] = field(default_factory=dict)
    refined_sources: list[SourceNoise] = field(default_factory=list)


def meta_features(data: PipelineData, size: int, seed: int) -> np.ndarray:
    """Features of up to ``size`` random non-gold rows (weak and unlabeled): CLID's meta set.
    Only features are taken: no label of these rows is read."""
    pool = data.train[data.train[PROVENANCE] != "gold"]
    rows = pool.sample(n=min(size, len(pool)), random_state=seed) if len(pool) else pool
    return data.x(rows)


def weak_frame(data: PipelineData, labels: WeakLabels) -> pd.DataFrame:
    """The weak training rows, in the order of ``labels.row_ids``."""
    return data.train.set_index(ROW_ID).loc[labels.row_ids].reset_index()


STABLE = 0.9  # below this vote-rank stability the opinion joins outright; above it auto compares both ways
PRIOR_NAMES = {False: "votes", True: "votes + gold-only"}


def prior_options(labels: WeakLabels, setting: str, gold_only: TrainedModel | None, refined: bool = True
                  ) -> list[bool]:
    """Whether the gold-only model's opinion joins the votes' evidence (``anchored_prior``): always, never,
    or ``auto``: both are cross-fitted and the gold rows choose (:func:`train_weak`). The second opinion
    helps where the confusions overstate the votes and costs where the gold-only model is the weaker judge;
    which holds is a property of the data, so it is measured rather than assumed. Without ``refined`` (the
    confusions from the gold rows alone) the opinion joins outright where those few rows cannot pin down
    what the votes point to (:func:`tasks.core.trusted.rank_stability` below ``STABLE``): there the
    votes-only evidence can teach a swapped pair."""
    if gold_only is None or setting == "never":
        return [False]
    if setting == "always":
        return [True]
    if labels.stability is None:  # not gold-anchored evidence: nothing measured it against the gold rows
        return [False]
    return [True] if not refined and labels.stability < STABLE else [False, True]


def probe_epochs(stage: WeakTrainConfig) -> int:
    """Epochs both evidences train before ``auto`` chooses (``anchored_prior_probe`` of the stage's epochs)."""
    return max(1, min(stage.epochs, round(stage.anchored_prior_probe * stage.epochs)))


def epoch_count(stage: WeakTrainConfig, labels: WeakLabels, gold_only: TrainedModel | None) -> int:
    """Epochs the weak stage trains in all (what its progress bar counts): a probe per evidence tried, then
    the rest of the epochs for the one kept."""
    if stage.method != "anchored" or len(prior_options(labels, stage.anchored_prior, gold_only,
                                                         stage.anchored_refine)) == 1:
        return stage.epochs
    probe = probe_epochs(stage)
    return 2 * probe + stage.epochs - probe


def evidence_note(figures: dict[str, float]) -> str:
    """Which evidence the anchored weak model learnt from, in words for the run summary ('' for the other
    methods), with both variants' out-of-fold gold accuracy when ``auto`` compared them."""
    if "anchored_prior" not in figures:
        return ""
    kept = PRIOR_NAMES[bool(figures["anchored_prior"])]
    if not figures.get("anchored_prior_compared"):
        return f"; evidence: {kept}"
    return (f"; evidence: {kept}, chosen out of fold after {figures['anchored_prior_probe_epochs']:.0f} epochs "
            f"(gold accuracy: {PRIOR_NAMES[False]} "
            f"{figures['oof_accuracy_votes']:.3f}, {PRIOR_NAMES[True]} {figures['oof_accuracy_with_prior']:.3f})")


def train_weak(data: PipelineData, labels: WeakLabels, cfg: Config,
               on_epoch: Callable[[EpochStats], None] | None = None, gold_only: TrainedModel | None = None) -> WeakModel:
    stage = cfg.weak_train
    if len(labels.row_ids) == 0:
        raise NoWeakRows("no row outside the gold set carries a weak vote (every weak column abstains or is "
                         "empty there, and no labelling function fires)")
    weak = weak_frame(data, labels)
    x_weak = data.x(weak)
    num_classes = len(data.classes)
    gold_y = data.y(data.rows("gold"))
    weak_y = labels.soft if labels.soft is not None else labels.hard
    figures: dict[str, float] = {}
    rule: Callable[[int | None], UpdateRule | None] | None = None
    monitor = None
    train = settings(stage, cfg, loss=stage.method if stage.method == "gce" else "ce")
    targets: Callable[[int | None], np.ndarray] | np.ndarray
    if stage.method == "anchored":
        opinion = _opinions(gold_only, x_weak, cfg.device)
        votes_ll, refined = _vote_evidence(labels, opinion if stage.anchored_refine and gold_only is not None else None,
                                           cfg.weak_labels.confusion_strength, num_classes)

        def anchored_targets(with_prior: bool) -> Callable[[int | None], np.ndarray]:
            def targets(fold: int | None) -> np.ndarray:
                evidence = votes_ll(fold)
                if with_prior:  # the gold-only model (of the same fold) says which of the confused classes
                    evidence = evidence + np.log(np.clip(opinion(fold), 1e-6, None))
                return np.concatenate([log_one_hot(gold_y, num_classes), as_evidence(evidence)])
            return targets

        def done(trained: TrainedModel, figures: dict[str, float]) -> WeakModel:
            if refined is None:
                return _weak_model(trained, figures | {"anchored_refined": 0.0}, weak)
            return _weak_model(trained, figures | {"anchored_refined": 1.0}, weak,
                               {f: votes_ll(f) for f in [*range(data.folds), None]}, refined(None))

        table = gold_first(data, weak)
        options = prior_options(labels, stage.anchored_prior, gold_only, stage.anchored_refine)
        evidence_rule = lambda _fold: EvidenceLoss("gce", stage.gce_q, gold_rows=len(gold_y))  # noqa: E731
        if len(options) == 1:
            trained = crossfit(data, table, anchored_targets(options[0]), stage, cfg, train=train, on_epoch=on_epoch,
                               rule=evidence_rule)
            return done(trained, figures | {"anchored_prior": float(options[0])})
        # auto: both evidences train a share of the epochs, the gold rows (out of fold) say which teaches
        # better, and only that one trains on
        probe = probe_epochs(stage)
        chosen, probs, trained = race_crossfit(
            data, table, {PRIOR_NAMES[opt]: anchored_targets(opt) for opt in options}, stage, cfg, probe=probe,
            choose=lambda oof: best_out_of_fold(oof, gold_y)[0], train=train, rule=evidence_rule,
            on_epoch=on_epoch)
        _, acc, nll = best_out_of_fold(probs, gold_y)
        figures |= {"anchored_prior": float(chosen == PRIOR_NAMES[True]), "anchored_prior_compared": 1.0,
                    "anchored_prior_probe_epochs": float(probe),
                    "oof_accuracy_votes": acc[PRIOR_NAMES[False]], "oof_accuracy_with_prior": acc[PRIOR_NAMES[True]],
                    "oof_log_loss_votes": nll[PRIOR_NAMES[False]], "oof_log_loss_with_prior": nll[PRIOR_NAMES[True]]}
        return done(trained, figures)
    elif stage.method == "glc":
        noisy = fit(new_model(data, stage, cfg.seed)[0], x_weak, labels.hard, replace(train, loss="ce")).model
        noisy_on_gold = softmax_t(predict_logits(noisy, data.x(data.rows("gold")), device=cfg.device), 1.0)
        folds = data.rows("gold")["fold"].to_numpy()

        def rule(fold: int | None) -> UpdateRule:
            seen = folds != fold if fold is not None else np.ones(len(folds), bool)
            return ForwardCorrected(glc_corruption(noisy_on_gold[seen], gold_y[seen], num_classes))

        targets = glc_targets(gold_y, labels.hard, num_classes)
    else:
        if stage.method == "confident_learning":
            keep, figures = confident_learning_keep(lambda: new_model(data, stage, cfg.seed)[0], x_weak, labels.hard,
                                                    train, _cl_settings(cfg), _gold_check(data))
            weak, x_weak, weak_y = weak[keep], x_weak[keep], np.asarray(weak_y)[keep]
        gold_part = one_hot(gold_y, num_classes) if np.ndim(weak_y) == 2 else gold_y
        targets = np.concatenate([gold_part, weak_y])
        meta = torch.as_tensor(meta_features(data, stage.clid_mu.meta_set_size, cfg.seed))
        c = stage.clid_mu
        if stage.method == "clid_mu":
            def rule(fold: int | None) -> UpdateRule:
                return ClidMu(meta, ClidMuSettings(tau=c.tau, meta_lr=c.meta_lr, virtual_lr=c.virtual_lr,
                                                   meta_batch=c.meta_batch, meta_interval=c.meta_interval,
                                                   virtual_scope=c.virtual_scope, snapshots=c.snapshots,
                                                   seed=cfg.seed + (0 if fold is None else 1000 * (fold + 1))))
        elif stage.clid_monitor:
            monitor = ClidMonitor(meta, c.meta_batch, c.tau)
    trained = crossfit(data, gold_first(data, weak), targets, stage, cfg, train=train, rule=rule, monitor=monitor,
                       on_epoch=on_epoch)
    return _weak_model(trained, figures, weak)


PerTrainer = Callable[[int | None], np.ndarray]  # fold index (None: the refit) -> an array over the weak rows


def _opinions(gold_only: TrainedModel | None, x_weak: np.ndarray, device: str) -> PerTrainer:
    """Per trainer, its own fold's gold-only model's calibrated p(class | x) on the weak rows (computed once)."""
    cache: dict[int | None, np.ndarray] = {}

    def opinion(fold: int | None) -> np.ndarray:
        if gold_only is None:
            raise ValueError("weak_train: the gold-only model's opinion was asked for, but there is none")
        if fold not in cache:
            model = gold_only.model if fold is None else gold_only.folds[fold]
            cache[fold] = softmax_t(predict_logits(model, x_weak, device=device), gold_only.temperature)
        return cache[fold]
    return opinion


def _vote_evidence(labels: WeakLabels, opinion: PerTrainer | None, strength: float, num_classes: int
                   ) -> tuple[PerTrainer, Callable[[int | None], list[SourceNoise]] | None]:
    """Per trainer, the weak rows' vote log-likelihood: measured on that trainer's gold rows, or with an
    ``opinion`` refined on the weak rows too (:func:`tasks.core.trusted.refine`, the trainer's own fold's
    gold-only model as the rows' prior, so no fold's gold leaks into its evidence). Also, when refined, the
    refined sources per trainer."""
    if opinion is None or labels.votes is None:
        return (lambda fold: labels.evidence(fold, num_classes)), None
    cache: dict[int | None, tuple[list[SourceNoise], np.ndarray]] = {}

    def refined(fold: int | None) -> tuple[list[SourceNoise], np.ndarray]:
        if fold not in cache:
            sources = labels.sources if fold is None else labels.fold_sources[fold]
            cache[fold] = refine(sources, labels.votes, opinion(fold), strength)
        return cache[fold]
    return (lambda fold: refined(fold)[1]), (lambda fold: refined(fold)[0])


def _weak_model(trained: TrainedModel, figures: dict[str, float], weak: pd.DataFrame,
                evidence: dict[int | None, np.ndarray] | None = None,
                refined_sources: list[SourceNoise] | None = None) -> WeakModel:
    figures = figures | clid_dev_correlation(trained.history) | {"weak_rows": float(len(weak))}
    return WeakModel(trained.model, trained.spec, trained.history, trained.best_epoch, trained.folds,
                     trained.oof_logits, trained.temperature, figures, len(weak), weak[ROW_ID].to_numpy(),
                     evidence or {}, refined_sources or [])


def _cl_settings(cfg: Config) -> ConfidentLearningSettings:
    cl = cfg.weak_train.confident_learning
    return ConfidentLearningSettings(cl.folds, cl.filter_by)


def _gold_check(data: PipelineData) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """One annotator: its label on gold rows checks confident learning's removals."""
    if len(data.spec.weak_label_columns) != 1:
        return None
    col = data.spec.weak_label_columns[0]
    gold = data.rows("gold")
    labelled = gold[gold[col] != data.spec.abstain]
    return data.x(labelled), np.searchsorted(np.asarray(data.classes), labelled[col].to_numpy()), data.y(labelled)


@stage_task("weak_train")
def weak_train(data: PipelineData, labels: WeakLabels, gold_only: TrainedModel, cfg: Config, parent_run_id: str,
               experiment_id: str) -> WeakModel:
    stage = cfg.weak_train
    with tracking.stage_run("weak_train", parent_run_id, experiment_id):
        mlflow.set_tag("method", stage.method)
        tracking.log_section(stage, "weak_train")
        with epoch_bar(f"weak_train ({stage.method}, cross-fitted)", epoch_count(stage, labels, gold_only)) as bar:
            trained = train_weak(data, labels, cfg, on_epoch=bar, gold_only=gold_only)
        log_candidate(trained, data)
        mlflow.log_metrics(trained.figures)
        if trained.refined_sources:  # the confusions the weak rows were learnt through, beside the gold-only ones
            tracking.log_json(source_noise_records(trained.refined_sources, data.classes),
                              "weak_train/refined_source_noise.json")
        return trained

"""The weak-training methods: one small object each, in one registry (:data:`METHODS`).

A method says what the weak_train stage cross-fits for it (a :class:`Plan`): the targets of the training
table (every gold row first, then the weak rows it keeps), the update rule each trainer steps with, what is
measured every epoch, and the figures it reports. The stage (``tasks/weak_train.py``) looks the method up by
``weak_train.method`` and runs the one cross-fitting; ``bench.methods`` and the method tests run that same
stage. Adding a method is one class here and one line in :data:`METHODS` (its name must also be allowed by
``WeakTrainConfig.method``).

The torch pieces (EvidenceLoss, ForwardCorrected, ClidMu, confident learning) live in ``tasks/core``;
here they meet the config, the data and the weak labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import torch
from torch import nn

from weakflow.tasks.core.calibration import softmax_t
from weakflow.tasks.core.clid import ClidMonitor, ClidMu, ClidMuSettings
from weakflow.tasks.core.crossfit import PerFold
from weakflow.tasks.core.picture_rows import PictureRows
from weakflow.tasks.core.losses import LossName
from weakflow.tasks.core.methods import (
    ConfidentLearningSettings, EvidenceLoss, ForwardCorrected, as_evidence, confident_learning_keep,
    glc_corruption, glc_targets, log_one_hot,
)
from weakflow.tasks.core.training import TrainSettings, UpdateRule, fit, predict_logits
from weakflow.tasks.core.trusted import SourceNoise, refine
from weakflow.tasks.lib.config import WeakTrainConfig
from weakflow.tasks.lib.data import PROVENANCE, ROW_ID, PipelineData
from weakflow.tasks.lib.modeling import TrainedModel, new_model, one_hot, settings
from weakflow.tasks.lib.results import PRIOR_NAMES, WeakLabels
from weakflow.tasks.lib.steps import RunContext

Targets = PerFold | np.ndarray  # per table row; per trainer (fold, None = the refit) where it differs
Rule = Callable[[int | None], UpdateRule | None]  # per trainer: a rule keeps state, so one each
Monitor = Callable[[nn.Module], dict[str, float]]
Refined = Callable[[int | None], tuple[list[SourceNoise], np.ndarray]]


def weak_frame(data: PipelineData, labels: WeakLabels) -> pd.DataFrame:
    """The weak training rows, in the order of ``labels.row_ids``."""
    return data.train.set_index(ROW_ID).loc[labels.row_ids].reset_index()


def meta_features(data: PipelineData, size: int, seed: int) -> np.ndarray:
    """Features of up to ``size`` random non-gold rows (weak and unlabeled): CLID's meta set.
    Only features are taken: no label of these rows is read."""
    pool = data.train[data.train[PROVENANCE] != "gold"]
    rows = pool.sample(n=min(size, len(pool)), random_state=seed) if len(pool) else pool
    return data.x(rows)


@dataclass
class Problem:
    """What every method starts from: the run, the data, the weak rows with their labels, the gold-only model
    (None: its opinion is not asked for) and the stage's settings."""

    ctx: RunContext
    data: PipelineData
    labels: WeakLabels
    gold_only: TrainedModel | None
    section: WeakTrainConfig
    confusion_strength: float  # weak_labels.confusion_strength: what refining the sources' confusions keeps

    @cached_property
    def weak(self) -> pd.DataFrame:
        return weak_frame(self.data, self.labels)

    @cached_property
    def x_weak(self) -> np.ndarray | PictureRows:
        return self.data.table(self.weak)

    @cached_property
    def gold_y(self) -> np.ndarray:
        return self.data.y(self.data.rows("gold"))

    @property
    def num_classes(self) -> int:
        return len(self.data.classes)

    @property
    def weak_y(self) -> np.ndarray:
        """The aggregated weak labels: soft shares where the labelling made them, else class indices."""
        return self.labels.soft if self.labels.soft is not None else self.labels.hard

    def network(self) -> nn.Module:
        """A fresh network of the stage's spec, seeded as a trainer's (for a method's own helper model)."""
        return new_model(self.data, self.section, self.ctx.seed)[0]

    def settings(self, loss: LossName = "ce") -> TrainSettings:
        return settings(self.section, self.ctx, loss=loss)

    def meta(self) -> torch.Tensor:
        """CLID's meta set (features of non-gold rows; no label)."""
        return torch.as_tensor(meta_features(self.data, self.section.clid_mu.meta_set_size, self.ctx.seed))


@dataclass
class Plan:
    """What the stage cross-fits for one method.

    ``targets`` cover the table ``gold_first(data, weak)``; a dict of several names them as candidates, each
    cross-fitted ``probe`` epochs, of which the out-of-fold gold rows keep one by the selection stage's rule
    (only that one trains on; ``raced(kept, accuracy, log_loss)`` gives the figures of that choice). ``figures``
    are reported as they are; ``refined`` (anchored_refine) gives per trainer the sources re-estimated on the
    weak rows and the evidence they make, which the model carries to the final stage."""

    targets: Targets | dict[str, Targets]
    weak: pd.DataFrame  # the weak rows trained on (after any removal), in target order
    loss: LossName = "ce"
    rule: Rule | None = None
    monitor: Monitor | None = None  # not with several candidates: a race measures the gold rows only
    figures: dict[str, float] = field(default_factory=dict)
    probe: int = 0
    raced: Callable[[str, dict[str, float], dict[str, float]], dict[str, float]] | None = None
    refined: Refined | None = None

    def __post_init__(self) -> None:
        if isinstance(self.targets, dict) and len(self.targets) > 1 and self.monitor is not None:
            raise ValueError("a raced plan takes no per-epoch monitor (the race judges on the gold rows alone)")


class WeakMethod:
    """One weak-training method: what the stage cross-fits for it (:meth:`plan`) and how many epochs that
    trains in all (:meth:`epochs`, the stage's progress bar)."""

    def plan(self, problem: Problem) -> Plan:
        raise NotImplementedError

    def epochs(self, section: WeakTrainConfig, labels: WeakLabels, gold_only: TrainedModel | None) -> int:
        return section.epochs


def aggregated_targets(problem: Problem, weak_y: np.ndarray) -> np.ndarray:
    """Gold labels, then the weak rows' aggregated labels (one-hot gold beside soft weak labels)."""
    gold = one_hot(problem.gold_y, problem.num_classes) if np.ndim(weak_y) == 2 else problem.gold_y
    return np.concatenate([gold, weak_y])


class Aggregated(WeakMethod):
    """``ce`` / ``gce``: the aggregated weak labels, learnt with cross-entropy or its bounded variant."""

    def __init__(self, loss: LossName) -> None:
        self.loss = loss

    def plan(self, problem: Problem) -> Plan:
        return Plan(aggregated_targets(problem, problem.weak_y), problem.weak, loss=self.loss,
                    monitor=clid_monitor(problem))


class ConfidentLearning(WeakMethod):
    """cleanlab drops the weak rows it believes mislabelled (decided without gold); CE on the rest."""

    def plan(self, problem: Problem) -> Plan:
        cl = problem.section.confident_learning
        keep, figures = confident_learning_keep(problem.network, problem.x_weak, problem.labels.hard,
                                                problem.settings(), ConfidentLearningSettings(cl.folds, cl.filter_by),
                                                gold_check(problem.data))
        return Plan(aggregated_targets(problem, np.asarray(problem.weak_y)[keep]), problem.weak[keep],
                    monitor=clid_monitor(problem), figures=figures)


class ClidMuMethod(WeakMethod):
    """CLID-MU: meta-learned sample weights with CLID on unlabeled rows as the meta loss (no clean label enters
    the weighting; CLID, not gold, picks each model's snapshots)."""

    def plan(self, problem: Problem) -> Plan:
        meta, c, seed = problem.meta(), problem.section.clid_mu, problem.ctx.seed

        def rule(fold: int | None) -> UpdateRule:
            return ClidMu(meta, ClidMuSettings(tau=c.tau, meta_lr=c.meta_lr, virtual_lr=c.virtual_lr,
                                               meta_batch=c.meta_batch, meta_interval=c.meta_interval,
                                               virtual_scope=c.virtual_scope, snapshots=c.snapshots,
                                               seed=seed + (0 if fold is None else 1000 * (fold + 1))))
        return Plan(aggregated_targets(problem, problem.weak_y), problem.weak, rule=rule)


class GoldLossCorrection(WeakMethod):
    """``glc`` (Hendrycks et al., NeurIPS 2018): a model trained on the weak labels alone gives, on each
    trainer's gold rows, the corruption matrix C[true, weak]; the network learns weak rows through
    softmax(z) @ C."""

    def plan(self, problem: Problem) -> Plan:
        data, num_classes = problem.data, problem.num_classes
        noisy = fit(problem.network(), problem.x_weak, problem.labels.hard, problem.settings()).model
        noisy_on_gold = softmax_t(predict_logits(noisy, data.x(data.rows("gold")), device=problem.ctx.device), 1.0)
        folds, gold_y = data.rows("gold")["fold"].to_numpy(), problem.gold_y

        def rule(fold: int | None) -> UpdateRule:
            seen = folds != fold if fold is not None else np.ones(len(folds), bool)
            return ForwardCorrected(glc_corruption(noisy_on_gold[seen], gold_y[seen], num_classes))
        return Plan(glc_targets(gold_y, problem.labels.hard, num_classes), problem.weak, rule=rule)


STABLE = 0.9  # below this vote-rank stability the opinion joins outright; above it auto compares both ways


class Anchored(WeakMethod):
    """Each weak row learnt through its votes' likelihood under every source's confusion matrix
    (:class:`EvidenceLoss`, ``evidence_loss``: bounded GCE-form by default, plain forward correction for pictures;
    gold rows plain CE). With ``anchored_refine`` each trainer re-estimates the
    confusions on the weak rows too, its own fold's gold-only model as the rows' prior; ``anchored_prior``
    adds that model's opinion to the evidence, always, never, or ``auto``: both evidences are cross-fitted for
    a probe of the epochs and the out-of-fold gold rows keep one (see the stage's docstring)."""

    def plan(self, problem: Problem) -> Plan:
        s, gold_y, num_classes = problem.section, problem.gold_y, problem.num_classes
        opinion = _opinions(problem.gold_only, problem.x_weak, problem.ctx.device)
        refined = (_refiner(problem.labels, opinion, problem.confusion_strength)
                   if s.anchored_refine and problem.gold_only is not None else None)

        def votes(fold: int | None) -> np.ndarray:
            return refined(fold)[1] if refined is not None else problem.labels.evidence(fold, num_classes)

        def evidence(with_prior: bool) -> PerFold:
            def targets(fold: int | None) -> np.ndarray:
                ll = votes(fold)
                if with_prior:  # the gold-only model (of the same fold) says which of the confused classes
                    ll = ll + np.log(np.clip(opinion(fold), 1e-6, None))
                return np.concatenate([log_one_hot(gold_y, num_classes), as_evidence(ll)])
            return targets

        options = prior_options(problem.labels, s.anchored_prior, problem.gold_only, s.anchored_refine)
        probe = probe_epochs(s)

        def raced(kept: str, acc: dict[str, float], nll: dict[str, float]) -> dict[str, float]:
            votes_, prior = PRIOR_NAMES[False], PRIOR_NAMES[True]
            return {"anchored_prior": float(kept == prior), "anchored_prior_compared": 1.0,
                    "anchored_prior_probe_epochs": float(probe),
                    "oof_accuracy_votes": acc[votes_], "oof_accuracy_with_prior": acc[prior],
                    "oof_log_loss_votes": nll[votes_], "oof_log_loss_with_prior": nll[prior]}

        chosen = {"anchored_prior": float(options[0])} if len(options) == 1 else {}
        return Plan({PRIOR_NAMES[o]: evidence(o) for o in options}, problem.weak,
                    rule=lambda _fold: EvidenceLoss(s.evidence_loss, s.gce_q, gold_rows=len(gold_y)),
                    figures=chosen | {"anchored_refined": float(refined is not None)}, probe=probe, raced=raced,
                    refined=refined)

    def epochs(self, section: WeakTrainConfig, labels: WeakLabels, gold_only: TrainedModel | None) -> int:
        """A probe per evidence tried, then the rest of the epochs for the one kept."""
        if len(prior_options(labels, section.anchored_prior, gold_only, section.anchored_refine)) == 1:
            return section.epochs
        probe = probe_epochs(section)
        return 2 * probe + section.epochs - probe


METHODS: dict[str, WeakMethod] = {
    "anchored": Anchored(),
    "glc": GoldLossCorrection(),
    "ce": Aggregated("ce"),
    "gce": Aggregated("gce"),
    "confident_learning": ConfidentLearning(),
    "clid_mu": ClidMuMethod(),
}


def method_of(name: str) -> WeakMethod:
    if name not in METHODS:
        raise ValueError(f"unknown weak-training method {name!r}; expected one of {tuple(METHODS)}")
    return METHODS[name]


def epoch_count(section: WeakTrainConfig, labels: WeakLabels, gold_only: TrainedModel | None) -> int:
    """Epochs the weak stage trains in all (what its progress bar counts)."""
    return method_of(section.method).epochs(section, labels, gold_only)


def prior_options(labels: WeakLabels, setting: str, gold_only: TrainedModel | None, refined: bool = True
                  ) -> list[bool]:
    """Whether the gold-only model's opinion joins the votes' evidence (``anchored_prior``): always, never,
    or ``auto``: both are cross-fitted and the gold rows choose (:class:`Anchored`). The second opinion
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


def probe_epochs(section: WeakTrainConfig) -> int:
    """Epochs both evidences train before ``auto`` chooses (``anchored_prior_probe`` of the stage's epochs)."""
    return max(1, min(section.epochs, round(section.anchored_prior_probe * section.epochs)))


def clid_monitor(problem: Problem) -> Monitor | None:
    """The label-free per-epoch CLID (``clid_monitor``), for methods whose rule does not measure it."""
    c = problem.section.clid_mu
    return ClidMonitor(problem.meta(), c.meta_batch, c.tau) if problem.section.clid_monitor else None


def gold_check(data: PipelineData) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """One annotator: its label on gold rows checks confident learning's removals (x, its label, gold label)."""
    if len(data.spec.weak_label_columns) != 1:
        return None
    col = data.spec.weak_label_columns[0]
    gold = data.rows("gold")
    labelled = gold[gold[col] != data.spec.abstain]
    return data.x(labelled), np.searchsorted(np.asarray(data.classes), labelled[col].to_numpy()), data.y(labelled)


def _opinions(gold_only: TrainedModel | None, x_weak: np.ndarray, device: str) -> PerFold:
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


def _refiner(labels: WeakLabels, opinion: PerFold, strength: float) -> Refined | None:
    """Per trainer, the sources refined on the weak rows too (:func:`tasks.core.trusted.refine`, the trainer's
    own fold's gold-only model as the rows' prior, so no fold's gold leaks into its evidence) and the weak
    rows' vote log-likelihood under them; None without the votes to refine on."""
    if labels.votes is None:
        return None
    votes = labels.votes
    cache: dict[int | None, tuple[list[SourceNoise], np.ndarray]] = {}

    def refined(fold: int | None) -> tuple[list[SourceNoise], np.ndarray]:
        if fold not in cache:
            sources = labels.sources if fold is None else labels.fold_sources[fold]
            cache[fold] = refine(sources, votes, opinion(fold), strength)
        return cache[fold]
    return refined

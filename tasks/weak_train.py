"""Stage weak_train: learn from the gold rows and the weak labels together, cross-fitted over the gold.

Every method trains on the gold rows (their labels, trusted) and the weak rows, as k fold models and a
refit on all gold (tasks/core/crossfit.py); the out-of-fold gold predictions choose the epoch and judge
the result. The method (``weak_train.method``) is looked up in the registry (tasks/lib/weak_methods.py),
which says what is cross-fitted for it; this stage runs that one cross-fitting and records it. Methods:

- ``anchored`` (default): each weak row is learnt through its votes' likelihood under every source's
  confusion matrix: the loss (``evidence_loss``: bounded GCE form by default, plain CE for pictures) is the
  negative log of sum_y p(y | x) P(votes | y) (the gold rows: plain CE, their label is not in doubt), so
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

import mlflow

from weakflow.tasks.core.methods import clid_dev_correlation
from weakflow.tasks.core.selection import best_out_of_fold
from weakflow.tasks.core.training import EpochStats
from weakflow.tasks.core.trusted import source_noise_records
from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.config import SelectionConfig, WeakTrainConfig
from weakflow.tasks.lib.data import ROW_ID, PipelineData
from weakflow.tasks.lib.modeling import TrainedModel, crossfit, gold_first, race_crossfit, settings
from weakflow.tasks.lib.recording import log_candidate
from weakflow.tasks.lib.results import NoWeakRows, WeakLabels, WeakModel
from weakflow.tasks.lib.steps import RunContext, Stage
from weakflow.tasks.lib.weak_methods import Plan, Problem, epoch_count, method_of


def compute(ctx: RunContext, data: PipelineData, labels: WeakLabels, gold_only: TrainedModel | None,
            section: WeakTrainConfig, selection: SelectionConfig, confusion_strength: float,
            on_epoch: Callable[[EpochStats], None] | None = None) -> WeakModel:
    """The weak model of ``section.method``: its plan (tasks/lib/weak_methods.py) cross-fitted over the gold
    rows. ``gold_only`` None: the gold-only model's opinion is not asked for (anchored: votes only, not
    refined)."""
    method = method_of(section.method)
    if len(labels.row_ids) == 0:
        raise NoWeakRows("no row outside the gold set carries a weak vote (every weak column abstains or is "
                         "empty there, and no labelling function fires)")
    problem = Problem(ctx, data, labels, gold_only, section, confusion_strength)
    plan = method.plan(problem)
    table, train = gold_first(data, plan.weak), settings(section, ctx, loss=plan.loss)
    candidates = plan.targets if isinstance(plan.targets, dict) else {section.method: plan.targets}
    figures: dict[str, float] = {}
    if len(candidates) == 1:
        trained = crossfit(data, table, next(iter(candidates.values())), section, ctx, selection, train=train,
                           rule=plan.rule, monitor=plan.monitor, on_epoch=on_epoch)
    else:  # several: each trains a probe of the epochs, the gold rows (out of fold) keep one, only it trains on
        kept, probs, trained = race_crossfit(
            data, table, candidates, section, ctx, selection, probe=plan.probe, train=train, rule=plan.rule,
            choose=lambda oof: best_out_of_fold(oof, problem.gold_y)[0], on_epoch=on_epoch)
        _, acc, nll = best_out_of_fold(probs, problem.gold_y)
        figures = plan.raced(kept, acc, nll) if plan.raced is not None else {}
    return _weak_model(trained, figures | plan.figures, plan, data.folds, section.method)


def _weak_model(trained: TrainedModel, figures: dict[str, float], plan: Plan, folds: int, method: str) -> WeakModel:
    refined = plan.refined
    figures = figures | clid_dev_correlation(trained.history) | {"weak_rows": float(len(plan.weak))}
    evidence = {f: refined(f)[1] for f in [*range(folds), None]} if refined is not None else {}
    return WeakModel(trained.model, trained.spec, trained.history, trained.best_epoch, trained.folds,
                     trained.oof_logits, trained.temperature, figures, len(plan.weak), plan.weak[ROW_ID].to_numpy(),
                     evidence, refined(None)[0] if refined is not None else [], method,
                     folds_sampled=trained.folds_sampled)


def record(trained: WeakModel, ctx: RunContext, data: PipelineData, labels: WeakLabels,
           gold_only: TrainedModel | None, section: WeakTrainConfig, selection: SelectionConfig,
           confusion_strength: float) -> None:
    log_candidate(trained, data)
    mlflow.log_metrics(trained.figures)
    if trained.refined_sources:  # the confusions the weak rows were learnt through, beside the gold-only ones
        tracking.log_json(source_noise_records(trained.refined_sources, data.classes),
                          "weak_train/refined_source_noise.json")


def progress(ctx: RunContext, data: PipelineData, labels: WeakLabels, gold_only: TrainedModel | None,
             section: WeakTrainConfig, selection: SelectionConfig, confusion_strength: float) -> tuple[str, int]:
    return f"weak_train ({section.method}, cross-fitted)", epoch_count(section, labels, gold_only)


def log_settings(ctx: RunContext, data: PipelineData, labels: WeakLabels, gold_only: TrainedModel | None,
             section: WeakTrainConfig, selection: SelectionConfig, confusion_strength: float) -> None:
    mlflow.set_tag("method", section.method)
    tracking.log_section(section, "weak_train")


STAGE = Stage("weak_train", compute, record, progress=progress, settings=log_settings)

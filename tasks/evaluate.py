"""Stage evaluate: the shipped model and every candidate on the frozen gold test split, and the review.

Nothing here chooses anything: the select stage decided on the gold rows; the test split only reports.
"""

from __future__ import annotations

import time
from dataclasses import replace

import mlflow
import numpy as np

from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.config import ReportConfig
from weakflow.tasks.core.calibration import softmax_t
from weakflow.tasks.core.training import predict_logits
from weakflow.tasks.lib.data import PipelineData
from weakflow.tasks.lib.scores import score
from weakflow.tasks.lib.modeling import TrainedModel
from weakflow.tasks.lib.pseudo_labels import PseudoLabels
from weakflow.tasks.lib.results import Evaluation, Selection, WeakLabels
from weakflow.tasks.lib.review import Champion
from weakflow.tasks.lib.steps import RunContext, Stage


def test_probs(data: PipelineData, model: TrainedModel, device: str = "auto") -> np.ndarray:
    """A candidate's calibrated probabilities on the test split."""
    return softmax_t(predict_logits(model.model, data.x(data.test), device=device), model.temperature)


def evaluate_models(data: PipelineData, candidates: dict[str, TrainedModel], shipped: str, device: str = "auto",
                    probs_out: dict[str, np.ndarray] | None = None, samples: int = 1000, seed: int = 0,
                    shipped_model: TrainedModel | None = None) -> Evaluation:
    """Score every candidate on the test split, the model shipped (``shipped_model``, the select stage's: the
    ``shipped`` candidate or its fold ensemble) and its difference from the gold-only model on ``samples``
    paired bootstrap resamples; ``probs_out`` (if given) receives the candidates' probabilities, the shipped
    model's under the shipped candidate's name (what the review compares as the challenger)."""
    from weakflow.tasks.core.bootstrap import paired_bootstrap

    y = data.y(data.test)
    probs = {name: test_probs(data, m, device) for name, m in candidates.items()}
    own = shipped_model is not None and shipped_model.model is not candidates[shipped].model
    shipped_probs = test_probs(data, shipped_model, device) if own else probs[shipped]
    if probs_out is not None:
        probs_out.update(probs | {shipped: shipped_probs})
    scores = {name: score(p, y, data.classes) for name, p in probs.items()}
    pair = {"shipped": shipped_probs, "gold_only": probs["gold_only"]}
    d = paired_bootstrap(y, pair, [("shipped", "gold_only")], samples=samples, seed=seed).delta("shipped", "gold_only",
                                                                                               "accuracy")
    assert d is not None
    return Evaluation(score(shipped_probs, y, data.classes) if own else scores[shipped], scores["gold_only"],
                      scores.get("weak"), scores.get("final"), shipped, (d.interval.estimate, d.interval.low, d.interval.high))


def confusion_figure(evaluation: Evaluation, classes: list):  # -> matplotlib Figure
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    shipped = f"shipped ({evaluation.shipped_name})"
    for ax, (title, s) in zip(axes, ((shipped, evaluation.shipped), ("gold-only model", evaluation.gold_only))):
        ax.imshow(s.confusion, cmap="Blues")
        ax.set_title(f"{title}: accuracy {s.accuracy:.3f}")
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        ax.set_xticks(range(len(classes)), [str(c) for c in classes])
        ax.set_yticks(range(len(classes)), [str(c) for c in classes])
        for (i, j), v in np.ndenumerate(s.confusion):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                        color="white" if v > s.confusion.max() / 2 else "black")
    fig.tight_layout()
    return fig


def evaluation_metrics(evaluation: Evaluation, classes: list) -> dict[str, float]:
    """``test_*`` for the shipped model, ``<candidate>_test_*`` for every candidate, the lift over gold-only."""
    metrics: dict[str, float] = {}
    named = (("test", evaluation.shipped), ("gold_only_test", evaluation.gold_only),
             ("weak_model_test", evaluation.weak), ("final_model_test", evaluation.final))
    for name, s in named:
        if s is not None:
            metrics |= {f"{name}_accuracy": s.accuracy, f"{name}_macro_f1": s.macro_f1, f"{name}_ece": s.ece}
    metrics["lift_over_gold_only"] = evaluation.lift_over_gold_only
    if evaluation.vs_gold_only is not None:
        metrics |= {"lift_over_gold_only_ci_low": evaluation.vs_gold_only[1],
                    "lift_over_gold_only_ci_high": evaluation.vs_gold_only[2]}
    for cls in classes:
        metrics[f"test_recall_class_{cls}"] = evaluation.shipped.report[str(cls)]["recall"]
    return metrics


def compute(ctx: RunContext, data: PipelineData, candidates: dict[str, TrainedModel], selection: Selection,
            section: ReportConfig, champion: Champion | None, labels: WeakLabels | None = None,
            pseudo: PseudoLabels | None = None) -> Evaluation:
    """Every candidate on the test split; with ``report.enabled`` the review (challenger vs ``champion``,
    robustness, label noise); ``labels`` and ``pseudo`` (the set the shipped model trained on) feed its
    label-noise view."""
    from weakflow.tasks.core.models import calibrated
    from weakflow.tasks.report import build as report

    champion = champion or Champion(None)  # nothing recorded: no registry, no champion
    probs: dict[str, np.ndarray] = {}
    evaluation = evaluate_models(data, candidates, selection.chosen, ctx.device, probs, section.bootstrap_samples,
                                 ctx.seed, selection.model)
    evaluation.tags = report.basic_tags(data, labels) | selection.tags
    if section.enabled:  # challenger vs champion, robustness, label noise: evaluation/report.html
        shipped, gold_only, weak = selection.model, candidates["gold_only"], candidates.get("weak")
        network = calibrated(shipped.model, shipped.spec, shipped.temperature)[0]
        judge = calibrated(gold_only.model, gold_only.spec, gold_only.temperature)[0]
        review = report.build_review(data, section, ctx, network, probs, champion, labels, pseudo, selection, judge,
                                     getattr(weak, "refined_sources", None))
        review.seconds = {"champion_load": champion.seconds, **review.seconds}
        evaluation.review = review
        evaluation.tags = report.review_tags(review) | selection.tags
    return evaluation


def record(evaluation: Evaluation, ctx: RunContext, data: PipelineData, candidates: dict[str, TrainedModel],
           selection: Selection, section: ReportConfig, champion: Champion | None,
           labels: WeakLabels | None = None,
           pseudo: PseudoLabels | None = None) -> Evaluation:
    """Metrics, reports, the confusion matrices and the review into the evaluate run, which the result then
    names (the register stage writes the gate's verdict back into it)."""
    import matplotlib.pyplot as plt

    from weakflow.tasks.report import build as report

    run_id = mlflow.active_run().info.run_id
    mlflow.log_metrics(evaluation_metrics(evaluation, data.classes))
    tracking.log_json({name: s.report for name, s in (("shipped", evaluation.shipped), ("gold_only", evaluation.gold_only),
                                                      ("weak_model", evaluation.weak), ("final", evaluation.final))
                       if s is not None}, "evaluation/classification_report.json")
    rows = [{"model": n, "accuracy": s.accuracy, "macro_f1": s.macro_f1, "ece": s.ece}
            for n, s in (("gold_only", evaluation.gold_only), ("weak_model", evaluation.weak),
                         ("final", evaluation.final)) if s is not None]
    mlflow.log_table(rows_to_columns(rows), "evaluation/side_by_side.json")
    fig = confusion_figure(evaluation, data.classes)
    mlflow.log_figure(fig, "evaluation/confusion_matrix.png")
    plt.close(fig)
    review = evaluation.review
    if review is not None:
        t = time.perf_counter()
        review = replace(review, run_id=run_id)
        report.log_review(review)
        report.log_test_input(data)
        review.seconds = {**review.seconds, "logging": time.perf_counter() - t}
        mlflow.log_metric("report_seconds", sum(review.seconds.values()))
    mlflow.set_tags(evaluation.tags)
    return replace(evaluation, run_id=run_id, review=review)


STAGE = Stage("evaluate", compute, record)


def rows_to_columns(rows: list[dict]) -> dict[str, list]:
    return {k: [r[k] for r in rows] for k in rows[0]}

"""Stage evaluate: the shipped model and every candidate on the frozen gold test split, and the review.

Nothing here chooses anything: the select stage decided on the gold rows; the test split only reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mlflow
import numpy as np

from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.config import Config
from weakflow.tasks.core.calibration import softmax_t
from weakflow.tasks.core.training import predict_logits
from weakflow.tasks.lib.data import PipelineData
from weakflow.tasks.lib.scores import ModelScores, score
from weakflow.tasks.lib.modeling import TrainedModel
from weakflow.tasks.lib.stage import stage_task


@dataclass
class Evaluation:
    shipped: ModelScores  # the model the select stage chose (what register logs)
    gold_only: ModelScores
    weak: ModelScores | None  # None: no weak model could be trained (no weak vote anywhere)
    final: ModelScores | None
    shipped_name: str = "final"
    # shipped minus gold-only test accuracy on paired bootstrap resamples: (estimate, low, high) (the gate's)
    vs_gold_only: tuple[float, float, float] | None = None
    run_id: str | None = None  # the evaluate stage run
    tags: dict[str, str] = field(default_factory=dict)  # the weakflow.* tags set on that run
    review: Any = None  # tasks.report.Review when report.enabled

    @property
    def lift_over_gold_only(self) -> float:
        return self.shipped.accuracy - self.gold_only.accuracy


def test_probs(data: PipelineData, model: TrainedModel, device: str = "auto") -> np.ndarray:
    """A candidate's calibrated probabilities on the test split."""
    return softmax_t(predict_logits(model.model, data.x(data.test), device=device), model.temperature)


def evaluate_models(data: PipelineData, candidates: dict[str, TrainedModel], shipped: str, device: str = "auto",
                    probs_out: dict[str, np.ndarray] | None = None, samples: int = 1000, seed: int = 0) -> Evaluation:
    """Score every candidate on the test split, and the shipped model's difference from the gold-only model
    on ``samples`` paired bootstrap resamples; ``probs_out`` (if given) receives their probabilities."""
    from weakflow.tasks.core.bootstrap import paired_bootstrap

    y = data.y(data.test)
    probs = {name: test_probs(data, m, device) for name, m in candidates.items()}
    if probs_out is not None:
        probs_out.update(probs)
    scores = {name: score(p, y, data.classes) for name, p in probs.items()}
    pair = {"shipped": probs[shipped], "gold_only": probs["gold_only"]}
    d = paired_bootstrap(y, pair, [("shipped", "gold_only")], samples=samples, seed=seed).delta("shipped", "gold_only",
                                                                                               "accuracy")
    assert d is not None
    return Evaluation(scores[shipped], scores["gold_only"], scores.get("weak"), scores.get("final"), shipped,
                      (d.interval.estimate, d.interval.low, d.interval.high))


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


@stage_task("evaluate")
def evaluate(data: PipelineData, candidates: dict[str, TrainedModel], selection: Any, cfg: Config, parent_run_id: str,
             experiment_id: str, labels: Any = None, pseudo: Any = None) -> Evaluation:
    """``selection`` (tasks.select.Selection) names the shipped candidate; ``labels`` (WeakLabels) and
    ``pseudo`` (the pseudo set the final refit trained on) feed the report's label-noise view."""
    import matplotlib.pyplot as plt

    from weakflow.tasks.report import build as report

    with tracking.stage_run("evaluate", parent_run_id, experiment_id) as run:
        probs: dict[str, np.ndarray] = {}
        evaluation = evaluate_models(data, candidates, selection.chosen, cfg.device, probs,
                                     cfg.report.bootstrap_samples, cfg.seed)
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
        evaluation.run_id = run.info.run_id
        evaluation.tags = report.basic_tags(data, labels) | selection.tags
        if cfg.report.enabled:  # challenger vs champion, robustness, label noise: evaluation/report.html
            evaluation.review = review = report.review_run(data, cfg, selection.model, probs, parent_run_id,
                                                           run.info.run_id, labels, pseudo, selection,
                                                           candidates["gold_only"], candidates.get("weak"))
            evaluation.tags = report.review_tags(review) | selection.tags
        mlflow.set_tags(evaluation.tags)
        return evaluation


def rows_to_columns(rows: list[dict]) -> dict[str, list]:
    return {k: [r[k] for r in rows] for k in rows[0]}

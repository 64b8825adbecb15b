"""Stage 5, evaluate: the final model, the weak model and a gold-only baseline on the gold test split."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mlflow
import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

from tasks.stage import stage_task
from tasks import tracking
from tasks.config import Config
from tasks.core.metrics import expected_calibration_error
from tasks.core.training import EpochStats, fit, predict_proba
from tasks.data import PipelineData
from tasks.modeling import TrainedModel, new_model, settings
from tasks.progress import epoch_bar


@dataclass
class ModelScores:
    accuracy: float
    macro_f1: float
    ece: float
    report: dict  # sklearn's per-class report
    confusion: np.ndarray


@dataclass
class Evaluation:
    final: ModelScores
    weak: ModelScores
    gold_only: ModelScores
    run_id: str | None = None  # the evaluate stage run
    tags: dict[str, str] = field(default_factory=dict)  # the weakflow.* tags set on that run
    review: Any = None  # tasks.report.Review when report.enabled

    @property
    def lift_over_gold_only(self) -> float:
        return self.final.accuracy - self.gold_only.accuracy


def score(probs: np.ndarray, y: np.ndarray, classes: list[int]) -> ModelScores:
    pred = probs.argmax(axis=1)
    labels = list(range(len(classes)))
    return ModelScores(
        accuracy=float(accuracy_score(y, pred)),
        macro_f1=float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        ece=expected_calibration_error(probs, y),
        report=classification_report(y, pred, labels=labels, target_names=[str(c) for c in classes],
                                      output_dict=True, zero_division=0),
        confusion=confusion_matrix(y, pred, labels=labels),
    )


def train_gold_only(data: PipelineData, cfg: Config, on_epoch: Callable[[EpochStats], None] | None = None) -> TrainedModel:
    """The baseline weak supervision must beat: the same network trained on the gold split alone."""
    gold, dev = data.rows("gold_train"), data.rows("gold_dev")
    model, spec = new_model(data, cfg.full_train, cfg.seed)
    stage = cfg.full_train.model_copy(update={"loss": "ce", "batch_size": min(cfg.full_train.batch_size, 32)})
    result = fit(model, data.x(gold), data.y(gold), settings(stage, cfg), x_dev=data.x(dev), y_dev=data.y(dev),
                 on_epoch=on_epoch)
    return TrainedModel(result.model, spec, result.history, result.best_epoch)


def evaluate_models(data: PipelineData, weak: TrainedModel, final: TrainedModel, gold_only: TrainedModel,
                    device: str = "auto", probs_out: dict[str, np.ndarray] | None = None) -> Evaluation:
    """Score the three models on the test split; ``probs_out`` (if given) receives their probabilities
    under the keys ``final``, ``weak``, ``gold_only``."""
    x, y = data.x(data.test), data.y(data.test)
    probs = {name: predict_proba(m.model, x, device=device) for name, m in
             (("final", final), ("weak", weak), ("gold_only", gold_only))}
    if probs_out is not None:
        probs_out.update(probs)
    return Evaluation(*(score(p, y, data.classes) for p in probs.values()))


def confusion_figure(evaluation: Evaluation, classes: list[int]):  # -> matplotlib Figure
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, (title, s) in zip(axes, (("final model", evaluation.final), ("gold-only baseline", evaluation.gold_only))):
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


@stage_task("evaluate")
def evaluate(data: PipelineData, weak: TrainedModel, final: TrainedModel, cfg: Config, parent_run_id: str,
             experiment_id: str, labels: Any = None, pseudo: Any = None) -> Evaluation:
    """``labels`` (WeakLabels) and ``pseudo`` (PseudoLabels) feed the report's label-noise view."""
    import matplotlib.pyplot as plt

    from tasks import report

    with tracking.stage_run("evaluate", parent_run_id, experiment_id) as run:
        with epoch_bar("gold_only baseline", cfg.full_train.epochs) as bar:
            gold_only = train_gold_only(data, cfg, on_epoch=bar)
        probs: dict[str, np.ndarray] = {}
        evaluation = evaluate_models(data, weak, final, gold_only, cfg.device, probs)
        metrics = {}
        for name, s in (("test", evaluation.final), ("weak_model_test", evaluation.weak),
                        ("gold_only_test", evaluation.gold_only)):
            metrics |= {f"{name}_accuracy": s.accuracy, f"{name}_macro_f1": s.macro_f1, f"{name}_ece": s.ece}
        metrics["lift_over_gold_only"] = evaluation.lift_over_gold_only
        for cls in data.classes:
            metrics[f"test_recall_class_{cls}"] = evaluation.final.report[str(cls)]["recall"]
        mlflow.log_metrics(metrics)
        tracking.log_json({"final": evaluation.final.report, "weak_model": evaluation.weak.report,
                           "gold_only": evaluation.gold_only.report}, "evaluation/classification_report.json")
        rows = [{"model": n, "accuracy": s.accuracy, "macro_f1": s.macro_f1, "ece": s.ece}
                for n, s in (("final", evaluation.final), ("weak_model", evaluation.weak), ("gold_only", evaluation.gold_only))]
        mlflow.log_table(rows_to_columns(rows), "evaluation/side_by_side.json")
        fig = confusion_figure(evaluation, data.classes)
        mlflow.log_figure(fig, "evaluation/confusion_matrix.png")
        plt.close(fig)
        evaluation.run_id = run.info.run_id
        evaluation.tags = report.basic_tags(data, labels)
        if cfg.report.enabled:  # challenger vs champion, robustness, label noise: evaluation/report.html
            evaluation.review = review = report.review_run(data, cfg, final.model, probs, parent_run_id, run.info.run_id,
                                                           labels, pseudo, getattr(final, "pseudo", None))
            evaluation.tags = report.review_tags(review)
        mlflow.set_tags(evaluation.tags)
        return evaluation


def rows_to_columns(rows: list[dict]) -> dict[str, list]:
    return {k: [r[k] for r in rows] for k in rows[0]}

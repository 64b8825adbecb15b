"""Stage 3, pseudo-labelling: the weak model's confident predictions become labels."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import tracking
from tasks.config import Config
from tasks.core.pseudo import precision_on, select_confident
from tasks.core.training import predict_proba
from tasks.data import ROW_ID, SPLIT, PipelineData
from tasks.modeling import TrainedModel


@dataclass
class PseudoLabels:
    table: pd.DataFrame  # one row per candidate: row_id, split, pseudo_label, confidence, kept, weak labels
    threshold: float
    holdout_precision: float | None  # on gold rows the weak model never trained on
    holdout_coverage: float  # share of those gold rows that cleared the threshold

    @property
    def kept(self) -> pd.DataFrame:
        return self.table[self.table["kept"]]


def make_pseudo_labels(data: PipelineData, weak: TrainedModel, cfg: Config) -> PseudoLabels:
    splits = ["unlabeled", "weak"] if cfg.pseudo_label.include_weak_rows else ["unlabeled"]
    candidates = data.rows(*splits)
    threshold = cfg.pseudo_label.threshold
    sel = select_confident(predict_proba(weak.model, data.x(candidates), device=cfg.device), threshold)
    classes = np.asarray(data.classes)
    table = pd.DataFrame({
        ROW_ID: candidates[ROW_ID].to_numpy(),
        SPLIT: candidates[SPLIT].to_numpy(),
        "pseudo_label": classes[sel.labels],
        "confidence": sel.confidence.astype(np.float32),
        "kept": sel.keep,
    })
    for col in data.spec.weak_label_columns:
        table[col] = candidates[col].to_numpy()
    # Precision check: gold_train rows were never seen by the weak model (dev rows picked its epoch).
    holdout = data.rows("gold_train")
    check = select_confident(predict_proba(weak.model, data.x(holdout), device=cfg.device), threshold)
    precision = precision_on(check, data.y(holdout))
    coverage = check.kept / len(holdout) if len(holdout) else 0.0
    return PseudoLabels(table, threshold, precision, coverage)


def per_class_counts(pseudo: PseudoLabels, classes: list[int]) -> pd.DataFrame:
    t = pseudo.table
    return pd.DataFrame({
        "class": classes,
        "candidates": [int((t["pseudo_label"] == c).sum()) for c in classes],
        "kept": [int(((t["pseudo_label"] == c) & t["kept"]).sum()) for c in classes],
    })


def confidence_histogram(pseudo: PseudoLabels):  # -> matplotlib Figure
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(pseudo.table["confidence"], bins=40, range=(0, 1), color="#4c72b0")
    ax.axvline(pseudo.threshold, color="#c44e52", linestyle="--", label=f"threshold {pseudo.threshold:g}")
    ax.set_xlabel("weak-model confidence")
    ax.set_ylabel("rows")
    ax.set_title(f"pseudo-label candidates: {int(pseudo.table['kept'].sum())} of {len(pseudo.table)} kept")
    ax.legend()
    fig.tight_layout()
    return fig


@task(name="pseudo_label", cache_policy=NO_CACHE, persist_result=False)
def pseudo_label(data: PipelineData, weak: TrainedModel, cfg: Config, parent_run_id: str, experiment_id: str) -> PseudoLabels:
    import matplotlib.pyplot as plt

    with tracking.stage_run("pseudo_label", parent_run_id, experiment_id):
        mlflow.log_params({f"pseudo_label.{k}": v for k, v in cfg.pseudo_label.model_dump().items()})
        pseudo = make_pseudo_labels(data, weak, cfg)
        t = pseudo.table
        metrics = {"candidates": len(t), "kept": int(t["kept"].sum()), "kept_share": float(t["kept"].mean()) if len(t) else 0.0,
                   "holdout_coverage": pseudo.holdout_coverage}
        if pseudo.holdout_precision is not None:
            metrics["holdout_precision"] = pseudo.holdout_precision
        for col in data.spec.weak_label_columns:
            kept_weak = pseudo.kept[pseudo.kept[col] != data.spec.abstain]
            if len(kept_weak):
                metrics[f"agreement_with_{col}"] = float((kept_weak["pseudo_label"] == kept_weak[col]).mean())
        mlflow.log_metrics(metrics)
        tracking.log_frame(t, "pseudo_labels", "pseudo_labels")
        mlflow.log_table(per_class_counts(pseudo, data.classes), "pseudo_labels/per_class.json")
        fig = confidence_histogram(pseudo)
        mlflow.log_figure(fig, "pseudo_labels/confidence_histogram.png")
        plt.close(fig)
        return pseudo

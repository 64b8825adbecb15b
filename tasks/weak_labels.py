"""Stage 2, weak_labels: weak label columns + labelling functions -> one training label per row.

Every source is measured (coverage, overlap, conflict, accuracy on gold rows it labelled), then the
votes are aggregated by majority vote or Dawid-Skene EM. Only non-gold rows with at least one vote
become weak training rows; gold rows only serve to measure the sources.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlflow
import numpy as np
import pandas as pd

from tasks.stage import stage_task
from tasks import tracking
from tasks.config import Config
from tasks.core.aggregate import dawid_skene, majority_vote, source_statistics
from tasks.data import PROVENANCE, ROW_ID, PipelineData
from tasks.labeling import apply_labeling_functions, votes_matrix


@dataclass
class WeakLabels:
    row_ids: np.ndarray  # the weak training rows
    hard: np.ndarray  # class index per row
    soft: np.ndarray | None  # (rows, classes) when weak_labels.soft_labels
    stats: pd.DataFrame  # one row per source
    figures: dict[str, float] = field(default_factory=dict)
    confusion: dict[str, list] = field(default_factory=dict)  # Dawid-Skene per-source confusion matrices
    label_source: np.ndarray | None = None  # per row: "weak:<the sources whose vote is the row's label>"


def make_weak_labels(data: PipelineData, cfg: Config) -> WeakLabels:
    spec, wl = data.spec, cfg.weak_labels
    frame = data.train[spec.weak_label_columns].copy()
    if wl.labeling_functions:
        lf_votes = apply_labeling_functions(data.train[data.features], wl.labeling_functions, data.classes, spec.abstain)
        frame = pd.concat([frame, lf_votes], axis=1)
    sources = list(frame.columns)
    if not sources:
        raise ValueError("weak_labels: no weak label columns and no labelling functions configured")
    votes = votes_matrix(frame, sources, data.classes, spec.abstain)
    is_gold = (data.train[PROVENANCE] == "gold").to_numpy()
    gold = np.full(len(votes), -1)
    gold[is_gold] = data.y(data.train[is_gold])
    stats = pd.DataFrame(source_statistics(votes, sources, gold))
    num_classes = len(data.classes)
    figures: dict[str, float] = {}
    confusion: dict[str, list] = {}
    if wl.aggregation == "dawid_skene":  # all rows' votes (gold rows' too) inform the source confusions
        ds = dawid_skene(votes, num_classes)
        hard, soft = ds.labels[~is_gold], ds.posterior[~is_gold]
        figures |= {"ds_iterations": ds.iterations, "ds_converged": float(ds.converged)}
        stats["estimated_accuracy_ds"] = ds.source_accuracy
        confusion = {name: ds.confusion[i].round(4).tolist() for i, name in enumerate(sources)}
    else:
        mv = majority_vote(votes[~is_gold], num_classes, tie_break=wl.tie_break, seed=cfg.seed)
        hard, soft = mv.labels, mv.soft
        figures |= {"ties": float(mv.ties), "all_abstain": float(mv.all_abstain)}
    keep = hard >= 0  # a vote was decided (no all-abstain row, no tie broken to abstain)
    figures["weak_training_rows"] = float(keep.sum())
    agree = votes[~is_gold][keep] == hard[keep][:, None]
    label_source = np.array(["weak:" + ",".join(s for s, a in zip(sources, row) if a) if row.any() else "weak:aggregate"
                             for row in agree], dtype=object)
    return WeakLabels(
        row_ids=data.train.loc[~is_gold, ROW_ID].to_numpy()[keep],
        hard=hard[keep],
        soft=soft[keep] if wl.soft_labels else None,
        stats=stats, figures=figures, confusion=confusion, label_source=label_source,
    )


@stage_task("weak_labels")
def weak_labels(data: PipelineData, cfg: Config, parent_run_id: str, experiment_id: str) -> WeakLabels:
    with tracking.stage_run("weak_labels", parent_run_id, experiment_id):
        mlflow.log_params({f"weak_labels.{k}": v for k, v in cfg.weak_labels.model_dump().items()})
        labels = make_weak_labels(data, cfg)
        mlflow.log_metrics(labels.figures)
        for row in labels.stats.to_dict("records"):
            name = _metric_name(row["source"])
            mlflow.log_metrics({f"{name}_coverage": row["coverage"], f"{name}_conflict": row["conflict"]})
            if row.get("accuracy") is not None and not pd.isna(row.get("accuracy")):
                mlflow.log_metric(f"{name}_gold_accuracy", row["accuracy"])
        mlflow.log_table(labels.stats, "weak_labels/sources.json")
        tracking.log_frame(labels.stats, "weak_labels", "sources")
        if labels.confusion:
            tracking.log_json(labels.confusion, "weak_labels/dawid_skene_confusion.json")
        classes = np.asarray(data.classes)
        tracking.log_provenance(pd.DataFrame({ROW_ID: labels.row_ids, "label": classes[labels.hard],
                                              "label_source": labels.label_source}), "weak_training_set")
        return labels


def _metric_name(source: str) -> str:
    return "source_" + "".join(c if c.isalnum() or c in "_-." else "_" for c in source)

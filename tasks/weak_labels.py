"""Stage weak_labels: weak label columns, rules and labelling functions -> evidence about each row's class.

Every source is measured (coverage, overlap, conflict, accuracy on the gold rows it labelled, with its
interval). The default aggregation, ``gold_anchored``, turns each source's gold-measured confusion matrix
(tasks/core/trusted.py) into the log-likelihood of every row's votes under each class: the weak training
stage multiplies it with the gold-only model's p(class | x). For honest cross-fitting the same evidence is
also computed once per gold fold from the gold rows outside that fold. ``majority`` and ``dawid_skene``
ignore gold and give one label (or vote shares) per row. Only non-gold rows with at least one vote become
weak training rows; a row only a rule or labelling function voted on becomes a weak row of the data the
stage hands on (assembly saw only the weak label columns).
"""

from __future__ import annotations


import mlflow
import numpy as np
import pandas as pd

from weakflow.tasks.lib.results import WeakLabels
from weakflow.tasks.lib.steps import RunContext, Stage
from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.config import Config, RuleConfig, WeakLabelsConfig
from weakflow.tasks.core.aggregate import dawid_skene, majority_vote, source_statistics
from weakflow.tasks.core.trusted import SourceNoise, anchor, rank_stability, source_noise_records
from weakflow.tasks.lib.data import FOLD, PROVENANCE, ROW_ID, PipelineData, weak_votes
from weakflow.tasks.lib.labeling import apply_sources, votes_matrix
from weakflow.tasks.lib.rules import configured_rules


def make_weak_labels(data: PipelineData, cfg: Config) -> WeakLabels:
    """:func:`weak_evidence` on a whole config (benchmarks, tests)."""
    return weak_evidence(data, cfg.weak_labels, configured_rules(cfg), cfg.seed)


def weak_evidence(data: PipelineData, wl: WeakLabelsConfig, rules: list[RuleConfig], seed: int) -> WeakLabels:
    """Every source's votes on the training rows, measured and aggregated (``rules``: the configured rules,
    or the text demo's own)."""
    spec = data.spec
    frame = weak_votes(data.train, spec, data.classes) if spec.weak_label_columns else pd.DataFrame(index=data.train.index)
    if rules or wl.labeling_functions:  # they see each row's input columns (numbers and raw text), never labels
        frame = pd.concat([frame, apply_sources(data.train, spec, rules, wl.labeling_functions,
                                                data.classes, spec.abstain)], axis=1)
    sources = list(frame.columns)
    if not sources:  # nothing to aggregate: the gold-only model is the one candidate (WeakLabels.missing)
        empty = np.zeros(0, dtype=np.int64)
        return WeakLabels(empty, empty, None, pd.DataFrame(), {"weak_training_rows": 0.0}, aggregation=wl.aggregation)
    votes = votes_matrix(frame, sources, data.classes, spec.abstain)
    is_gold = (data.train[PROVENANCE] == "gold").to_numpy()
    gold = np.full(len(votes), -1)
    gold[is_gold] = data.y(data.train[is_gold])
    stats = pd.DataFrame(source_statistics(votes, sources, gold))
    num_classes = len(data.classes)
    figures: dict[str, float] = {}
    confusion: dict[str, list] = {}
    anchored: dict = {}
    if wl.aggregation == "gold_anchored":
        anchored = _gold_anchored(data, votes, gold, sources, wl.confusion_strength)
        post = anchored["all"].posterior[~is_gold]
        voted = (votes[~is_gold] >= 0).any(axis=1)
        hard = np.where(voted, post.argmax(axis=1), -1)
        soft = post
        figures |= {"em_iterations": float(anchored["all"].iterations),
                    "sources_measured_on_gold": float(sum(src.basis == "gold" for src in anchored["all"].sources))}
        for src in anchored["all"].sources:
            confusion[src.name] = src.confusion.round(4).tolist()
        stats = stats.merge(_noise_table(anchored["all"].sources), on="source", how="left")
    elif wl.aggregation == "dawid_skene":  # all rows' votes (gold rows' too) inform the source confusions
        ds = dawid_skene(votes, num_classes)
        hard, soft = ds.labels[~is_gold], ds.posterior[~is_gold]
        figures |= {"ds_iterations": ds.iterations, "ds_converged": float(ds.converged)}
        stats["estimated_accuracy_ds"] = ds.source_accuracy
        confusion = {name: ds.confusion[i].round(4).tolist() for i, name in enumerate(sources)}
    else:
        mv = majority_vote(votes[~is_gold], num_classes, tie_break=wl.tie_break, seed=seed)
        hard, soft = mv.labels, mv.soft
        figures |= {"ties": float(mv.ties), "all_abstain": float(mv.all_abstain)}
    keep = hard >= 0  # a vote was decided (no all-abstain row, no tie broken to abstain)
    figures["weak_training_rows"] = float(keep.sum())
    agree = votes[~is_gold][keep] == hard[keep][:, None]
    label_source = np.array(["weak:" + ",".join(s for s, a in zip(sources, row) if a) if row.any() else "weak:aggregate"
                             for row in agree], dtype=object)
    weak_ll = {k: a.log_likelihood[~is_gold][keep] for k, a in anchored.items()}
    if anchored:
        stability = rank_stability(anchored["all"].sources, votes[~is_gold][keep], anchored["all"].prior,
                                   wl.confusion_strength, seed=seed)
        figures["vote_rank_stability"] = stability
    return WeakLabels(
        row_ids=data.train.loc[~is_gold, ROW_ID].to_numpy()[keep],
        hard=hard[keep],
        soft=soft[keep] if wl.soft_labels else None,
        stats=stats, figures=figures, confusion=confusion, label_source=label_source,
        sources=anchored["all"].sources if anchored else [],
        log_likelihood=weak_ll.get("all"),
        fold_log_likelihood=[weak_ll[f] for f in range(data.folds)] if anchored else [],
        stability=figures.get("vote_rank_stability"),
        votes=votes[~is_gold][keep] if anchored else None,
        fold_sources=[anchored[f].sources for f in range(data.folds)] if anchored else [],
        aggregation=wl.aggregation,
    )


def _gold_anchored(data: PipelineData, votes: np.ndarray, gold: np.ndarray, names: list[str], strength: float) -> dict:
    """The sources measured on all gold ("all") and, per fold f, on the gold rows outside fold f."""
    num_classes = len(data.classes)
    out = {"all": anchor(votes, gold, names, num_classes, strength)}
    folds = data.train[FOLD].to_numpy()
    for f in range(data.folds):
        out[f] = anchor(votes, np.where(folds == f, -1, gold), names, num_classes, strength)
    return out


def _noise_table(sources: list[SourceNoise]) -> pd.DataFrame:
    """Per source: how its noise was estimated, its gold accuracy interval, whether abstaining is evidence."""
    return pd.DataFrame([{
        "source": s.name, "noise_basis": s.basis, "accuracy_low": s.accuracy_low, "accuracy_high": s.accuracy_high,
        "abstain_informative": s.abstain is not None, "abstain_p_value": s.abstain_p_value,
    } for s in sources])


def compute(ctx: RunContext, data: PipelineData, section: WeakLabelsConfig, rules: list[RuleConfig]
            ) -> tuple[PipelineData, WeakLabels]:
    """The evidence, and the data with every non-gold row some source voted on counted as weak."""
    labels = weak_evidence(data, section, rules, ctx.seed)
    return data.with_weak_rows(labels.row_ids), labels


def record(result: tuple[PipelineData, WeakLabels], ctx: RunContext, data: PipelineData, section: WeakLabelsConfig,
           rules: list[RuleConfig]) -> None:
    data, labels = result
    mlflow.log_metrics(labels.figures)
    for row in labels.stats.to_dict("records"):
        name = _metric_name(row["source"])
        mlflow.log_metrics({f"{name}_coverage": row["coverage"], f"{name}_conflict": row["conflict"]})
        if row.get("accuracy") is not None and not pd.isna(row.get("accuracy")):
            mlflow.log_metric(f"{name}_gold_accuracy", row["accuracy"])
    if labels.missing():
        mlflow.set_tag("weak_labels.missing", labels.missing()["weak"])
        return
    mlflow.log_table(labels.stats, "weak_labels/sources.json")
    tracking.log_frame(labels.stats, "weak_labels", "sources")
    if labels.sources:  # gold_anchored: counts, smoothed confusion and its interval, per source
        tracking.log_json(source_noise_records(labels.sources, data.classes), "weak_labels/source_noise.json")
    elif labels.confusion:
        tracking.log_json(labels.confusion, "weak_labels/dawid_skene_confusion.json")
    classes = np.asarray(data.classes)
    tracking.log_provenance(pd.DataFrame({ROW_ID: labels.row_ids, "label": classes[labels.hard],
                                          "label_source": labels.label_source}), "weak_training_set")


def log_settings(ctx: RunContext, data: PipelineData, section: WeakLabelsConfig, rules: list[RuleConfig]) -> None:
    # the rules as an artifact: a long list outgrows an MLflow parameter
    tracking.log_section(section, "weak_labels", exclude={"rules"}, extra={"weak_labels.rules": len(rules)})
    if rules:
        tracking.log_json([r.model_dump(mode="json") for r in rules], "weak_labels/rules.json")


STAGE = Stage("weak_labels", compute, record, settings=log_settings)


def _metric_name(source: str) -> str:
    return "source_" + "".join(c if c.isalnum() or c in "_-." else "_" for c in source)

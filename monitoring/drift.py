"""Drift checks: a window of the prediction log against the reference saved with the served model.

Plain functions (no Prefect, no MLflow): read the window, run the Evidently report, and decide with an
explicit rule. Evidently is imported inside :func:`drift_report` only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from weakflow.deploy.prediction_log import FEEDBACK, PREDICTIONS, make_engine

PREDICTION, LABEL = "prediction", "label"
# Pinned stat tests. Left to choose, Evidently switches to Wasserstein / Jensen-Shannon *distances*
# (drift when >= 0.1) once the reference has more than 1000 rows; pinned, every value is a p-value.
NUM_METHOD, CAT_METHOD = "ks", "chisquare"
# Pictures: Evidently's embedding drift, pinned to its classifier method without bootstrap (deterministic): a
# linear classifier learns to tell window rows from reference rows; drift when its ROC AUC on held-out rows
# is above this (Evidently's default threshold), or above what chance reaches (embedding_threshold).
EMBEDDING_AUC = 0.55
EMBEDDING_ALPHA = 0.001  # with small windows the threshold rises so chance alone crosses it this rarely


def embedding_threshold(reference_rows: int, window_rows: int, alpha: float = EMBEDDING_ALPHA) -> float:
    """The ROC AUC above which the embedding counts as drifted: :data:`EMBEDDING_AUC`, or higher where chance
    could reach it. Evidently's classifier is judged on a random half of the rows it did not fit, so with no
    drift its AUC on them is a Mann-Whitney statistic: mean 0.5, variance (a + b + 1) / (12 a b) for a
    reference and b window rows there; the threshold is its one-sided 1 - ``alpha`` quantile (normal)."""
    from statistics import NormalDist

    a, b = max(1, reference_rows // 2), max(1, window_rows // 2)
    return max(EMBEDDING_AUC, 0.5 + NormalDist().inv_cdf(1 - alpha) * float(np.sqrt((a + b + 1) / (12 * a * b))))
P_VALUE_METHODS = {"ks", "chisquare", "z", "t_test", "mannw", "anderson", "cramer_von_mises", "g_test",
                   "fisher_exact", "epps_singleton", "es"}


def sample_bound(n: int, alpha: float = 0.001) -> float:
    """DKW: a uniform sample of ``n`` rows has every feature's empirical CDF within this distance of the
    whole window's with probability >= 1 - alpha, so each K-S statistic moves by at most this much."""
    return float(np.sqrt(np.log(2 / alpha) / (2 * n)))


def load_window(url: str, features: list[str], rows: int | None = 500, hours: float | None = None,
                model_name: str | None = None, model_version: str | None = None,
                max_rows: int | None = None, sample: int | None = None, seed: int = 0,
                optional: list[str] | None = None) -> pd.DataFrame:
    """The last ``rows`` logged predictions (or those of the last ``hours``), oldest first, with the
    features expanded, and the gold ``label`` where feedback exists (else NaN). With ``sample``, a
    window larger than that is read as a uniform random sample of ``sample`` rows (see :func:`sample_bound`).
    ``optional`` numeric fields (a picture model's embedding) are read as numbers when every row has them,
    and left out otherwise."""
    engine = make_engine(url)
    try:
        where = []
        if model_name is not None:
            where.append(PREDICTIONS.c.model_name == model_name)
        if model_version is not None:
            where.append(PREDICTIONS.c.model_version == str(model_version))
        if hours is not None:
            where.append(PREDICTIONS.c.ts >= datetime.now(timezone.utc) - timedelta(hours=hours))
        limit = rows if hours is None else max_rows
        ids_q = sa.select(PREDICTIONS.c.id).where(*where).order_by(PREDICTIONS.c.id.desc())
        if limit is not None:
            ids_q = ids_q.limit(limit)
        with engine.connect() as conn:
            ids = np.fromiter((r[0] for r in conn.execute(ids_q)), dtype=np.int64)
            if sample is not None and len(ids) > sample:
                ids = np.random.default_rng(seed).choice(ids, size=sample, replace=False)
            ids.sort()
            cols = [PREDICTIONS.c.id, PREDICTIONS.c.ts, PREDICTIONS.c.request_id, PREDICTIONS.c.row_index,
                    PREDICTIONS.c.model_version, PREDICTIONS.c.features, PREDICTIONS.c.predicted_class,
                    PREDICTIONS.c.confidence, FEEDBACK.c.label]
            joined = PREDICTIONS.outerjoin(FEEDBACK, sa.and_(FEEDBACK.c.request_id == PREDICTIONS.c.request_id,
                                                             FEEDBACK.c.row_index == PREDICTIONS.c.row_index))
            parts = [conn.execute(sa.select(*cols).select_from(joined).where(PREDICTIONS.c.id.between(
                int(block[0]), int(block[-1]))).where(PREDICTIONS.c.id.in_(block.tolist()))).mappings().all()
                for block in np.array_split(ids, max(1, -(-len(ids) // 20_000))) if len(block)]
    finally:
        engine.dispose()
    raw = pd.DataFrame([r for part in parts for r in part])
    if raw.empty:
        return pd.DataFrame(columns=[*features, PREDICTION, "confidence", LABEL, "request_id", "row_index", "ts"])
    raw = raw.sort_values("id").reset_index(drop=True)
    feats = pd.DataFrame.from_records([json.loads(f) for f in raw["features"]])
    missing = [f for f in features if f not in feats.columns]
    if missing:
        raise ValueError(f"prediction log rows lack feature(s) {missing[:5]}: were they served by another model?")
    out = feats[features].astype(np.float64)
    extra = [f for f in (optional or []) if f in feats.columns and f not in features]
    if extra and not feats[extra].isna().any().any():
        out = pd.concat([out, feats[extra].astype(np.float64)], axis=1)
    for column in feats.columns.difference([*features, *extra]):  # logged text, picture hashes: for the copy checks
        if feats[column].dtype == object:
            out[column] = feats[column]
    out[PREDICTION] = raw["predicted_class"].astype(str)  # class values compare as text: 3 and "3", "spam"
    out["confidence"] = raw["confidence"].astype(float)
    out[LABEL] = raw["label"].where(raw["label"].notna(), None).map(lambda v: None if v is None else str(v))
    for col in ("request_id", "row_index", "ts", "model_version"):
        out[col] = raw[col]
    return out


@dataclass(frozen=True)
class DriftRule:
    """When a window is drift: enough drifted feature columns, or (optionally) the predictions drifted."""

    drift_share: float = 0.3
    prediction_drift: bool = True
    min_rows: int = 100
    embedding_drift: bool = True  # pictures: the model's embedding drifted (Evidently's embedding drift)


@dataclass
class DriftResult:
    rows: int
    drift_share: float
    drifted_columns: list[str]
    prediction_p: float | None
    prediction_drifted: bool
    quality: dict[str, float] = field(default_factory=dict)  # from feedback labels, when there are enough
    snapshot: Any = None  # the Evidently snapshot (html/json)
    embedding_score: float | None = None  # pictures: ROC AUC of a classifier telling window from reference
    embedding_drifted: bool = False
    embedding_note: str = ""  # pictures: why the embedding was not checked
    embedding_threshold: float | None = None  # the AUC the score had to exceed (see embedding_threshold)

    def summary(self) -> dict[str, Any]:
        out = {"rows": self.rows, "drift_share": self.drift_share, "drifted_columns": self.drifted_columns,
               "prediction_p_value": self.prediction_p, "prediction_drifted": self.prediction_drifted,
               **{f"quality_{k}": v for k, v in self.quality.items()}}
        if self.embedding_score is not None:
            out |= {"embedding_drift_score": self.embedding_score, "embedding_drifted": self.embedding_drifted,
                    "embedding_drift_threshold": self.embedding_threshold}
        elif self.embedding_note:
            out["embedding"] = self.embedding_note
        return out


@dataclass
class Verdict:
    drift: bool
    reasons: list[str]
    checked: bool = True  # False: too few rows to judge

    @property
    def text(self) -> str:
        if not self.checked:
            return "not checked: " + "; ".join(self.reasons)
        return ("DRIFT: " if self.drift else "no drift: ") + ("; ".join(self.reasons) or "within the rule")


def decide(result: DriftResult, rule: DriftRule) -> Verdict:
    """The alert rule, on plain numbers (testable by hand)."""
    if result.rows < rule.min_rows:
        return Verdict(False, [f"{result.rows} rows in the window, fewer than min_rows={rule.min_rows}"], checked=False)
    reasons = []
    if result.drift_share >= rule.drift_share:
        reasons.append(f"{result.drift_share:.0%} of feature columns drifted (rule: >= {rule.drift_share:.0%}): "
                       f"{', '.join(result.drifted_columns[:8])}{' …' if len(result.drifted_columns) > 8 else ''}")
    if rule.prediction_drift and result.prediction_drifted:
        reasons.append(f"prediction distribution drifted (p = {result.prediction_p:.2g})")
    if rule.embedding_drift and result.embedding_drifted:
        reasons.append(f"the model's picture embedding drifted (a classifier tells the window from the reference "
                       f"with ROC AUC {result.embedding_score:.2f}; rule: > {result.embedding_threshold or EMBEDDING_AUC:.2f})")
    return Verdict(bool(reasons), reasons)


def _value_drifted(method: str, value: float, threshold: float) -> bool:
    """Evidently's own reading of a ``ValueDrift`` value: a p-value drifts below the threshold, a
    distance at or above it."""
    if method in P_VALUE_METHODS or "p_value" in method:
        return value < threshold
    return value >= threshold


def _constant_changed(reference: pd.Series, current: pd.Series) -> bool:
    """Constant on both sides but at different values (no spread for a K-S test, yet plainly drift)."""
    ref, cur = reference.dropna().unique(), current.dropna().unique()
    return len(ref) == 1 and len(cur) == 1 and ref[0] != cur[0]


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, features: list[str], *,
                 min_labelled: int = 30, embeddings: list[str] | None = None) -> DriftResult:
    """Evidently's data-drift preset over the features and the predicted class with pinned tests (K-S for
    numbers, chi-square for the class, whatever the sample sizes), plus classification quality where at
    least ``min_labelled`` window rows have feedback labels. A feature constant in both reference and
    window counts as drifted when the constant changed, and is left out when it did not.

    ``embeddings`` (a picture model's embedding columns): Evidently's embedding-drift method on them (a
    classifier tells window from reference, :func:`embedding_threshold`), judged apart from the per-feature
    share; columns the window lacks leave it unchecked, with a note."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from evidently import DataDefinition, Dataset, MulticlassClassification, Report
        from evidently.presets import ClassificationPreset, DataDriftPreset

    # Columns constant on both sides (e.g. always-blank pixels) have no spread for a K-S test: unchanged
    # they carry no signal and are left out; a changed constant is drift without any test.
    usable = [f for f in features if reference[f].nunique() > 1 or current[f].nunique() > 1]
    moved = [f for f in features if f not in usable and _constant_changed(reference[f], current[f])]
    ref = reference[usable + [PREDICTION]].copy()
    cur = current[usable + [PREDICTION]].copy()
    for frame in (ref, cur):
        frame[PREDICTION] = frame[PREDICTION].astype(str)
    labelled = current[LABEL].notna() if LABEL in current else pd.Series(False, index=current.index)
    metrics: list = [DataDriftPreset(columns=[*usable, PREDICTION], num_method=NUM_METHOD, cat_method=CAT_METHOD)]
    emb, emb_note = _embedding_columns(reference, current, embeddings or [])
    emb_score: float | None = None
    emb_limit = EMBEDDING_AUC
    if emb:  # Evidently's embedding-drift method, called directly: its report metric adds a t-SNE picture
        # that costs about a minute on two cores, for a plot
        from evidently.metrics.embeddings import ModelDriftMethod

        emb_limit = embedding_threshold(len(reference), len(current))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            emb_score = float(ModelDriftMethod(threshold=emb_limit, bootstrap=False)(
                pd.DataFrame(current[emb].to_numpy(np.float64)), pd.DataFrame(reference[emb].to_numpy(np.float64)))[0])
    definition = DataDefinition(numerical_columns=usable, categorical_columns=[PREDICTION])
    ref_ds = Dataset.from_pandas(ref, data_definition=definition)
    cur_ds = Dataset.from_pandas(cur, data_definition=definition)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snapshot = Report(metrics).run(cur_ds, ref_ds)
    tests: dict[str, tuple[str, float, float]] = {}  # column -> (method, value, threshold)
    for m in snapshot.dict()["metrics"]:
        conf = m.get("config") or {}
        if str(conf.get("type", "")).endswith(":ValueDrift"):  # config: column, method, threshold
            named = dict(part.split("=", 1) for part in m["metric_name"].split("(", 1)[1][:-1].split(",")
                         if "=" in part)  # ValueDrift(column=px_1,method=ks,threshold=0.05): the resolved ones
            method = str(conf.get("method") or named.get("method", ""))
            threshold = float(conf["threshold"] if conf.get("threshold") is not None else named["threshold"])
            tests[str(conf["column"])] = (method, float(m["value"]), threshold)
    drifted = [c for c in features if c in moved or (c in tests and _value_drifted(*tests[c]))]
    pred_p = tests[PREDICTION][1] if PREDICTION in tests else None
    quality: dict[str, float] = {}
    if int(labelled.sum()) >= min_labelled:
        y, p = current.loc[labelled, LABEL].astype(str), current.loc[labelled, PREDICTION].astype(str)
        quality = {"labelled_rows": float(labelled.sum()), "accuracy": float((y == p).mean())}
        lab = current.loc[labelled, usable + [PREDICTION, LABEL]].copy()
        lab[PREDICTION], lab[LABEL] = p.astype(str), y.astype(str)
        cls_def = DataDefinition(numerical_columns=usable, categorical_columns=[PREDICTION, LABEL],
                                 classification=[MulticlassClassification(target=LABEL, prediction_labels=PREDICTION)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quality_snap = Report([ClassificationPreset()]).run(Dataset.from_pandas(lab, data_definition=cls_def), None)
        for m in quality_snap.dict()["metrics"]:
            if m["metric_name"].startswith(("F1Score", "Precision(", "Recall(")) and not isinstance(m["value"], dict):
                quality[m["metric_name"].split("(")[0].lower()] = float(m["value"])
        snapshot = (snapshot, quality_snap)
    judged = len(usable) + len(moved)
    share = len(drifted) / judged if judged else 0.0
    return DriftResult(len(current), share, drifted, pred_p,
                       PREDICTION in tests and _value_drifted(*tests[PREDICTION]), quality, snapshot,
                       emb_score, emb_score is not None and emb_score > emb_limit, emb_note,
                       emb_limit if emb_score is not None else None)


def _embedding_columns(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]) -> tuple[list[str], str]:
    """The embedding columns both sides carry, or none and why (a window logged without the embedding)."""
    if not columns:
        return [], ""
    missing = [c for c in columns if c not in current.columns or current[c].isna().any()]
    if missing:
        return [], (f"embedding not checked: the prediction log rows lack {len(missing)} of its {len(columns)} "
                    f"columns (e.g. {missing[0]!r}); the server logs no embedding for them")
    absent = [c for c in columns if c not in reference.columns]
    if absent:
        return [], f"embedding not checked: the reference lacks {absent[0]!r}"
    return list(columns), ""

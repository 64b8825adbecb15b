"""The review report of a pipeline run: is the challenger better than the champion, where, how sure?

Plain functions (no Prefect), called by the evaluate stage. One :class:`Review` holds every number and
figure; it renders to a self-contained HTML page (figures embedded as base64 PNG, no external CSS or
JS) and to the same content as markdown, logged as ``evaluation/report.html`` and
``evaluation/report.md`` with the tables and figures beside them. Contents:

* challenger (this run's final model) vs the ``champion`` alias's model re-scored on the same frozen
  gold test split, with the gold-only baseline and the weak model beside them: accuracy, macro-F1,
  per-class recall, ECE with a reliability diagram, confusion matrices; paired bootstrap intervals on
  each headline metric and on every difference (tasks/core/bootstrap.py);
* the corruption suite on the test split for challenger and champion (tasks/core/robustness.py);
* the label-noise view: each weak source's noise rate against gold, its confusion measured on gold (and
  as the weak training refined it on the weak rows), pseudo-label precision, and the
  weak rows the final model believes mislabelled (cleanlab), top-k here and all in a CSV;
* once ``register``'s gate has decided, the verdict (:func:`record_gate` re-renders the page with it).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from torch import nn

from weakflow.tasks.lib.config import ReportConfig
from weakflow.tasks.core.bootstrap import paired_bootstrap
from weakflow.tasks.core.robustness import IMAGE_CORRUPTIONS, PICTURE_CORRUPTIONS, corruptions_for, robustness_table
from weakflow.tasks.core.training import predict_proba
from weakflow.tasks.lib.data import ROW_ID, PipelineData, dataset_digest
from weakflow.tasks.core.trusted import SourceNoise
from weakflow.tasks.lib.pseudo_labels import PseudoLabels
from weakflow.tasks.lib.results import Evaluation, Registration, Selection, WeakLabels
from weakflow.tasks.lib.scores import score
from weakflow.tasks.lib.steps import RunContext
from weakflow.tasks.report.render import ci_text, md_table, figures, gate_text, render_html, render_markdown, verdict_text
from weakflow.tasks.lib.review import CHALLENGER, CHAMPION, FINAL, GOLD_ONLY, LABELS, WEAK, Champion, Review

HTML_FILE, MD_FILE = "evaluation/report.html", "evaluation/report.md"


# --- the champion ------------------------------------------------------------------------------

def load_champion(name: str, data: PipelineData) -> Champion:
    """The network behind ``name@champion``, from its weights artifact only (no pyfunc environment),
    checked against this run's features and classes."""
    from weakflow.deploy.model import load_weights
    from weakflow.deploy.registry import champion_version

    client = mlflow.MlflowClient()
    try:
        version = champion_version(client, name)
    except Exception as exc:  # an unreachable registry is a report note, never a failed run
        return Champion(None, error=f"registry not readable: {type(exc).__name__}: {exc}")
    if version is None:
        return Champion(None)
    try:
        from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

        run_id = client.get_model_version(name, version).run_id
        with tempfile.TemporaryDirectory() as tmp:
            path = ModelsArtifactRepository(f"models:/{name}/{version}").download_artifacts("artifacts/model.pt", tmp)
            loaded = load_weights(path)
    except Exception as exc:
        return Champion(version, error=f"could not load its weights: {type(exc).__name__}: {exc}")
    if list(loaded.inputs) != list(data.inputs):
        theirs, ours = list(loaded.inputs), list(data.inputs)
        only = [c for c in theirs if c not in ours][:3] or theirs[:3]
        return Champion(version, error=f"it was trained on other input columns ({len(theirs)} columns, e.g. {only}; "
                                       f"{len(ours)} here)", run_id=run_id)
    if list(loaded.classes) != list(data.classes):
        return Champion(version, error=f"it predicts classes {loaded.classes}, this run's class set is "
                                       f"{data.classes}", run_id=run_id)
    ours = data.schema.images
    if ours is not None:  # its pictures must be read as this run reads them, from this run's files
        theirs = loaded.schema.images
        if theirs is None or theirs.fmt != ours.fmt:
            shape = theirs.fmt.shape if theirs is not None else None
            return Champion(version, error=f"it reads pictures as {shape}, this run as {ours.fmt.shape}", run_id=run_id)
        loaded = replace(loaded, schema=replace(loaded.schema, images=replace(theirs, root=ours.root, cache=ours.cache)))
    return Champion(version, loaded.model, None, run_id, loaded)


# --- the review --------------------------------------------------------------------------------


def data_version(data: PipelineData) -> str:
    """One short id for (training table after governance, test split): equal inputs, equal id."""
    both = f"{dataset_digest(data.train)}:{dataset_digest(data.test)}"
    return hashlib.sha256(both.encode()).hexdigest()[:12]


def source_noise(stats: pd.DataFrame | None) -> tuple[pd.DataFrame, float | None]:
    """Each weak source's noise rate on the gold rows it labelled, and the pooled rate over all sources
    (weighted by those rows): the run's noise estimate."""
    if stats is None or not len(stats):
        return pd.DataFrame(columns=["source", "coverage", "gold_rows", "gold_accuracy", "noise_rate"]), None
    out = pd.DataFrame({"source": stats["source"], "coverage": stats["coverage"]})
    out["gold_rows"] = stats["gold_rows"] if "gold_rows" in stats else 0
    out["gold_accuracy"] = pd.to_numeric(stats["accuracy"], errors="coerce") if "accuracy" in stats else np.nan
    out["noise_rate"] = 1.0 - out["gold_accuracy"]
    if "estimated_accuracy_ds" in stats:
        out["noise_rate_dawid_skene"] = 1.0 - pd.to_numeric(stats["estimated_accuracy_ds"], errors="coerce")
    judged = out["noise_rate"].notna() & (out["gold_rows"] > 0)
    pooled = (float((out.loc[judged, "noise_rate"] * out.loc[judged, "gold_rows"]).sum() / out.loc[judged, "gold_rows"].sum())
              if judged.any() else None)
    return out, pooled


ISSUE_TEXT_CHARS = 160  # of a suspect row's text in the report's label-noise view


def label_issues(data: PipelineData, labels: WeakLabels | None, model: nn.Module, device: str) -> tuple[pd.DataFrame, str, int]:
    """Weak training rows whose weak label ``model`` disputes, most suspicious first.

    ``model`` is the calibrated gold-only model: it never saw a weak row or a weak label, so its
    probabilities on these rows are out-of-sample, as cleanlab's confident-learning filter needs (a model
    trained on targets made from these labels would side with them). The filter picks the rows, ranked by
    self-confidence (the probability of the given label)."""
    if labels is None or len(labels.row_ids) == 0:
        return pd.DataFrame(), "no weak rows", 0
    rows = data.train.set_index(ROW_ID).loc[labels.row_ids]
    probs = predict_proba(model, data.x(rows), device=device)
    given = np.asarray(labels.hard)
    method = ("cleanlab find_label_issues (prune_by_noise_rate) on the gold-only model's calibrated probabilities "
              "(it never saw a weak row), ranked by self-confidence")
    try:
        import warnings

        from weakflow.tasks.core.label_issues import find_label_issues

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ranked = np.asarray(find_label_issues(given, probs, return_indices_ranked_by="self_confidence"), dtype=int)
    except Exception as exc:  # e.g. a class without any weak label: fall back to plain disagreement
        method = f"prediction disagrees with the weak label, ranked by self-confidence (cleanlab failed: {type(exc).__name__})"
        flagged = np.flatnonzero(probs.argmax(1) != given)
        ranked = flagged[np.argsort(probs[flagged, given[flagged]], kind="stable")]
    classes = np.asarray(data.classes)
    pred = probs.argmax(1)
    out = pd.DataFrame({
        "rank": np.arange(1, len(ranked) + 1),
        ROW_ID: np.asarray(labels.row_ids)[ranked],
        "weak_label": classes[given[ranked]],
        "predicted_label": classes[pred[ranked]],
        "confidence": probs[ranked, pred[ranked]].round(4),
        "prob_of_weak_label": probs[ranked, given[ranked]].round(4),
    })
    for col in data.spec.weak_label_columns:  # the raw votes, where a person fixes them
        if col != "weak_label" or len(data.spec.weak_label_columns) > 1:
            out[f"vote_{col}"] = rows[col].to_numpy()[ranked]
    for col in data.spec.text_columns:  # what a reviewer reads to judge the row (long texts shortened)
        text = rows[col].fillna("").astype(str).to_numpy()[ranked]
        out[col] = [t if len(t) <= ISSUE_TEXT_CHARS else t[:ISSUE_TEXT_CHARS - 1] + "…" for t in text]
    for col in data.schema.image_columns:  # the picture file, as the table names it (the sheet shows the pixels)
        out[col] = rows[col].astype(str).to_numpy()[ranked]
    return out, method, len(given)


def build_review(data: PipelineData, rc: ReportConfig, ctx: RunContext, final: nn.Module,
                 test_probs: dict[str, np.ndarray], champion: Champion, labels: WeakLabels | None = None,
                 pseudo: PseudoLabels | None = None, selection: Selection | None = None,
                 issue_model: nn.Module | None = None, refined: list[SourceNoise] | None = None) -> Review:
    """Every number and figure of the report (no MLflow writes).

    ``final``: the challenger network (the shipped model, calibrated); ``test_probs``: the evaluate stage's
    test-split probabilities per candidate (``gold_only``, ``weak``, ``final``); ``labels``/``pseudo``: the
    weak_labels result and the pseudo set the final refit trained on; ``selection``: the select stage's
    choice (None: the final model is the challenger); ``issue_model``: the network
    whose probabilities judge the weak labels (the calibrated gold-only model; default ``final``);
    ``refined``: the weak model's confusions refined on the weak rows (WeakModel.refined_sources), shown beside
    the gold-measured ones."""
    seed = ctx.seed if rc.seed is None else rc.seed
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    x, y = data.x(data.test), data.y(data.test)
    shipped = selection.chosen if selection is not None else "final"
    models = {CHALLENGER: final} | ({CHAMPION: champion.model} if champion.model is not None else {})
    probs = {CHALLENGER: test_probs[shipped]}
    if champion.model is not None:  # through its own input schema: its text features are its own
        probs[CHAMPION] = (champion.loaded.predict_proba(data.test) if champion.loaded is not None
                           else predict_proba(champion.model, x, device=ctx.device))
    probs |= {name: test_probs[key] for name, key in ((GOLD_ONLY, "gold_only"), (WEAK, "weak"), (FINAL, "final"))
              if key in test_probs and key != shipped}  # the shipped candidate is the challenger
    scores = {k: score(p, y, data.classes) for k, p in probs.items()}
    pairs = [(CHALLENGER, b) for b in (CHAMPION, GOLD_ONLY, WEAK, FINAL) if b in probs]
    boot = paired_bootstrap(y, probs, pairs, samples=rc.bootstrap_samples, level=rc.confidence_level, seed=seed)
    seconds["scores_and_bootstrap"] = time.perf_counter() - t

    t = time.perf_counter()
    robust, note = pd.DataFrame(), "off (report.robustness = false)"
    if rc.robustness and data.schema.text:
        note = "not run: the corruptions perturb numeric features, and this model reads text"
    elif rc.robustness:
        picture_shape = data.schema.image_shape  # pictures (image_columns): their pixels are the last features
        image_shape = data.spec.image_shape
        if picture_shape is not None and x.shape[1] == int(np.prod(picture_shape)):
            image_shape = picture_shape  # pixels only: the pixel-column corruptions apply to them too
        kinds = [k for k in (rc.corruptions or corruptions_for(image_shape, picture_shape))]
        skipped = [k for k in kinds if (k in IMAGE_CORRUPTIONS and image_shape is None)
                   or (k in PICTURE_CORRUPTIONS and picture_shape is None)]
        kinds = [k for k in kinds if k not in skipped]
        robust = pd.DataFrame(robustness_table(
            {k: (lambda a, m=m: predict_proba(m, a, device=ctx.device).argmax(1)) for k, m in models.items()},
            x, y, kinds, rc.severities, seed=seed, image_shape=image_shape, picture_shape=picture_shape))
        note = (f"{len(kinds)} corruption(s) x {len(rc.severities)} severities on the {len(y)} test rows, seed {seed}"
                + (f"; skipped {', '.join(skipped)}: the data has no "
                   + ("pictures" if picture_shape is None and any(k in PICTURE_CORRUPTIONS for k in skipped)
                      else "image shape") if skipped else ""))
        if picture_shape is not None:
            note += ("; picture corruptions as in ImageNet-C, applied to the decoded uint8 pixels "
                     f"({'x'.join(map(str, picture_shape))})")
    seconds["robustness"] = time.perf_counter() - t

    t = time.perf_counter()
    sources, noise = source_noise(getattr(labels, "stats", None))
    trained_on = pseudo
    pseudo_info: dict[str, Any] = {}
    per_class = pd.DataFrame()
    if trained_on is not None:
        pseudo_info = {"kept": trained_on.kept_count, "candidates": trained_on.candidates,
                       "holdout_precision": trained_on.holdout_precision,
                       "holdout_interval": trained_on.precision_interval,
                       "holdout_coverage": trained_on.holdout_coverage,
                       "temperature": trained_on.calibration.temperature, "policy": trained_on.policy.kind,
                       "round": trained_on.round}
        per_class = trained_on.per_class[[c for c in trained_on.per_class.columns if not c.endswith("_rows")]]
    issues, method, weak_rows = label_issues(data, labels, issue_model or final, ctx.device)
    basis = "gold"
    if noise is None and weak_rows:  # no source labelled a gold row: the model-based estimate instead
        noise, basis = len(issues) / weak_rows, "model"
    seconds["label_noise"] = time.perf_counter() - t

    from weakflow.tasks.core.trusted import source_noise_records

    review = Review(ctx.model_name, ctx.parent_run_id or "unrecorded", list(data.classes), len(y), data_version(data),
                    dataset_digest(data.test), champion, scores, boot, robust, note, sources, noise, pseudo_info,
                    per_class, issues, method, weak_rows, rc.top_k, seconds=seconds, noise_basis=basis,
                    shipped=shipped, selection_reason=selection.reason if selection is not None else "",
                    text_features=getattr(data.schema.featurizer, "chosen", "") if data.schema is not None else "",
                    selection=selection.table if selection is not None else pd.DataFrame(),
                    source_noise=source_noise_records(getattr(labels, "sources", []), list(data.classes)),
                    refined_noise=source_noise_records(list(refined or []), list(data.classes)))
    t = time.perf_counter()
    review.figures = figures(review, probs, y, data)
    seconds["figures"] = time.perf_counter() - t
    return review


# --- MLflow ------------------------------------------------------------------------------------


def review_metrics(review: Review) -> dict[str, float]:
    """The challenger's numbers under ``mlflow.evaluate``'s classifier names (``f1_score`` etc. with
    ``average = macro``), the champion's prefixed ``champion_``, and the intervals and differences."""
    s = review.scores[CHALLENGER]
    rep = s.report
    m: dict[str, float] = {
        "example_count": float(review.test_rows), "accuracy_score": s.accuracy, "f1_score": s.macro_f1,
        "precision_score": float(rep["macro avg"]["precision"]), "recall_score": float(rep["macro avg"]["recall"]),
        "ece": s.ece,
    }
    names = {"accuracy": "accuracy_score", "macro_f1": "f1_score", "ece": "ece"}
    for metric, key in names.items():
        iv = review.boot.intervals[CHALLENGER][metric]
        m[f"{key}_ci_low"], m[f"{key}_ci_high"] = iv.low, iv.high
    if review.has_champion:
        c = review.scores[CHAMPION]
        m |= {"champion_accuracy_score": c.accuracy, "champion_f1_score": c.macro_f1, "champion_ece": c.ece}
    for d in review.boot.deltas:
        prefix = f"vs_{d.b}_{names[d.metric]}_delta"
        m |= {prefix: d.interval.estimate, f"{prefix}_ci_low": d.interval.low, f"{prefix}_ci_high": d.interval.high,
              f"vs_{d.b}_{names[d.metric]}_share_better": d.share_better}
    if len(review.robustness):
        r = review.robustness
        for name, prefix in ((CHALLENGER, "robustness"), (CHAMPION, "champion_robustness")):
            part = r[r["model"] == name]
            if len(part):
                m[f"{prefix}_mean_drop"] = float(part["drop"].mean())
                m[f"{prefix}_worst_drop"] = float(part["drop"].max())
                if name == CHALLENGER:
                    for row in part.itertuples():
                        m[f"robustness/{row.corruption}_{row.severity:g}"] = float(row.accuracy)
                    pictures = part[part["corruption"].isin(PICTURE_CORRUPTIONS)]
                    for kind, drop in pictures.groupby("corruption", sort=False)["drop"].mean().items():
                        m[f"robustness_drop/{kind}"] = float(drop)  # ImageNet-C style: mean over severities
    if review.noise_estimate is not None:
        m["noise_estimate"] = review.noise_estimate
    if review.label_issue_rate is not None:
        m |= {"label_issues": float(len(review.issues)), "label_issue_rate": review.label_issue_rate}
    if review.pseudo.get("holdout_precision") is not None:
        m["pseudo_label_precision"] = float(review.pseudo["holdout_precision"])
    return m


def basic_tags(data: PipelineData, labels: WeakLabels | None = None) -> dict[str, str]:
    """The filterable tags that need no report: data version, test split, noise estimate against gold."""
    _, noise = source_noise(getattr(labels, "stats", None))
    return {"weakflow.data_version": data_version(data), "weakflow.test_set_digest": dataset_digest(data.test),
            "weakflow.noise_estimate": f"{noise:.2f}" if noise is not None else "n/a"}


def after_register(evaluation: Evaluation, registration: Registration) -> dict[str, str]:
    """Called by the register task once the gate decided: the verdict into the report and onto the evaluate
    run (``weakflow.gate``); returns the tags for the pipeline run (the evaluate run's, the verdict, where
    the report is)."""
    verdict = "passed" if registration.decision.passed else "failed"
    if evaluation.review is not None:
        record_gate(evaluation.review, verdict, registration.decision.reason, registration.version, registration.alias)
    elif evaluation.run_id is not None:
        mlflow.MlflowClient().set_tag(evaluation.run_id, "weakflow.gate", verdict)
    tags = dict(evaluation.tags) | {"weakflow.gate": verdict}
    if evaluation.run_id is not None:
        tags["weakflow.evaluate_run"] = evaluation.run_id
    return tags


def pipeline_note(evaluation: Evaluation) -> str:
    """A paragraph for the pipeline run's description: the verdict and where the report is."""
    if evaluation.review is None:
        return ""
    return (f"\n\n**Review** (`{HTML_FILE}` in the evaluate run {evaluation.run_id}): "
            f"{verdict_text(evaluation.review)}")


def review_tags(review: Review) -> dict[str, str]:
    """Tags a reviewer filters on in ``mlflow ui`` (set on the evaluate run and the pipeline run)."""
    return {
        "weakflow.data_version": review.data_version,
        "weakflow.test_set_digest": review.test_digest,
        "weakflow.noise_estimate": f"{review.noise_estimate:.2f}" if review.noise_estimate is not None else "n/a",
        "weakflow.champion": review.champion.version or "none",
        "weakflow.vs_champion": review.vs_champion,
        "weakflow.report": HTML_FILE,
    }


def note(review: Review) -> str:
    """The evaluate run's description (``mlflow.note.content``): the verdict and the headline table."""
    head = md_table(pd.DataFrame([{"model": LABELS[n], "accuracy": ci_text(review.boot.intervals[n]["accuracy"]),
                                    "macro-F1": ci_text(review.boot.intervals[n]["macro_f1"]),
                                    "ECE": ci_text(review.boot.intervals[n]["ece"])} for n in review.scores]))
    return (f"{verdict_text(review)}\n\nGate: {gate_text(review)}\n\n{head}\n\nFull report: artifacts "
            f"`{HTML_FILE}` (also `{MD_FILE}`).")


def log_review(review: Review) -> None:
    """Write the report, its tables and figures, metrics, tags and description into the active run."""
    mlflow.log_metrics(review_metrics(review))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "report.html").write_text(render_html(review))
        (root / "report.md").write_text(render_markdown(review))
        for f in review.figures:
            (root / f.name).write_bytes(f.png)
        per_class = pd.DataFrame([{"positive_class": c, **{f"{n}_{k}": review.scores[n].report[str(c)][k]
                                                            for n in review.scores for k in ("precision", "recall", "f1-score")}}
                                  for c in review.classes])
        per_class.to_csv(root / "per_class_metrics.csv", index=False)
        if len(review.robustness):
            review.robustness.to_csv(root / "robustness.csv", index=False)
        review.sources.to_csv(root / "weak_sources.csv", index=False)
        review.issues.to_csv(root / "label_issues.csv", index=False)
        (root / "bootstrap.json").write_text(json.dumps({
            "samples": review.boot.samples, "level": review.boot.level,
            "intervals": {n: {m: iv.as_dict() for m, iv in per.items()} for n, per in review.boot.intervals.items()},
            "deltas": [{"a": d.a, "b": d.b, "metric": d.metric, **d.interval.as_dict(), "share_better": d.share_better}
                       for d in review.boot.deltas]}, indent=2))
        mlflow.log_artifacts(tmp, "evaluation")
    mlflow.set_tags(review_tags(review) | {"mlflow.note.content": note(review)})


def log_test_input(data: PipelineData) -> None:
    """The gold test split as the run's MLflow dataset input, context ``evaluation`` (MLflow's convention for
    the data a model was evaluated on; same digest as the validate run's ``test`` input)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.log_input(mlflow.data.from_pandas(data.test, source=str(Path(data.spec.test_path).resolve()), name="test",
                                                 targets=data.label), context="evaluation")


def record_gate(review: Review, verdict: str, reason: str, version: str, alias: str) -> Review:
    """After ``register``: the report with the gate verdict (a copy: the evaluate stage's review is not
    edited), re-written in the evaluate run, which is tagged ``weakflow.gate``."""
    review = replace(review, gate={"verdict": verdict, "reason": reason, "version": version, "alias": alias})
    if review.run_id is None:
        return review
    client = mlflow.MlflowClient()
    client.log_text(review.run_id, render_html(review), HTML_FILE)
    client.log_text(review.run_id, render_markdown(review), MD_FILE)
    for key, value in {"weakflow.gate": verdict, "weakflow.model_version": version,
                       "mlflow.note.content": note(review)}.items():
        client.set_tag(review.run_id, key, value)
    return review

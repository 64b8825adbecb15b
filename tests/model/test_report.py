"""The review report: content with and without a champion, the champion loaded from a real MLflow
registry (temporary SQLite store), the artifacts, metrics and tags it logs, and the gate verdict."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from weakflow.deploy.model import save_weights
from weakflow.tasks.lib.config import DemoData
from weakflow.tasks.core.training import fit, predict_proba
from weakflow.tasks.lib.data import assemble, class_set, materialize_demo, read_raw
from weakflow.tasks.lib.modeling import new_model, settings
from weakflow.tasks.lib.steps import RunContext
from weakflow.tasks.core.pseudo import DevSet
from weakflow.tasks.lib.pseudo_labels import Calibration, Judge, make_pseudo_labels
from weakflow.tasks.register import MODEL_ENTRY
from weakflow.tasks.report.build import (
    HTML_FILE,
    MD_FILE,
    build_review,
    load_champion,
    log_review,
    record_gate,
)
from weakflow.tasks.report.render import render_html, render_markdown
from weakflow.tasks.lib.review import NO_CHAMPION, Champion
from weakflow.tasks.weak_labels import make_weak_labels
from tests.conftest import fast_config

SECTIONS = ["summary", "gate", "headline", "per-class", "calibration", "confusion", "robustness", "label-noise"]


@pytest.fixture(scope="module")
def setup(demo_root, tmp_path_factory):
    ws = tmp_path_factory.mktemp("report-ws")
    cfg = fast_config(ws, "report.top_k=5", "pseudo_label.policy=fixed",
                      "full_train.model=mlp", "full_train.hidden=[64]")  # a small MLP trains 4x faster than the CNN
    raw = read_raw(materialize_demo(DemoData(), demo_root))
    data = assemble(raw, class_set(raw)).fold_view(0)  # train on folds 1-2 of the gold rows, judge on fold 0
    gold, dev = data.rows("gold_train"), data.rows("gold_dev")

    def train(epochs: int):
        model, spec = new_model(data, cfg.full_train, cfg.seed)
        stage = cfg.full_train.model_copy(update={"epochs": epochs, "batch_size": 32})
        return fit(model, data.x(gold), data.y(gold), settings(stage, RunContext.of(cfg)), x_dev=data.x(dev), y_dev=data.y(dev)).model, spec

    good, spec = train(20)
    poor, _ = train(1)
    x = data.x(data.test)
    probs = {"final": predict_proba(good, x), "weak": predict_proba(poor, x), "gold_only": predict_proba(good, x)}
    labels = make_weak_labels(data, cfg)
    held = predict_proba(good, data.x(dev))
    judge = Judge(1.0, DevSet(held.argmax(1), held.max(1), data.y(dev)), DevSet(held.argmax(1), held.max(1), data.y(dev)))
    pseudo = make_pseudo_labels(data, good, cfg.pseudo_label, cfg.parallel, cfg.device, judge, Calibration(1.0, {}, {}),
                                ws / "pseudo", soft=False)
    return cfg, data, good, poor, spec, probs, labels, pseudo


def assert_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"""(src|href)=["'](?!data:image/png;base64,|#)""", page)  # nothing fetched from outside
    assert page.count('src="data:image/png;base64,') >= 3


def test_report_without_champion_says_so_and_shows_the_rest(setup):
    cfg, data, good, poor, spec, probs, labels, pseudo = setup
    review = build_review(data, cfg.report, RunContext.of(cfg, "run-1"), good, probs, Champion(None), labels, pseudo)
    page, md = render_html(review), render_markdown(review)
    assert_self_contained(page)
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    assert NO_CHAMPION in page and NO_CHAMPION in md
    assert review.vs_champion == "no champion" and "champion accuracy" not in page
    assert "gold-only model" in page and "weak model" in page
    assert page.count('<table class="confusion">') == 3  # challenger, gold-only, weak side by side
    assert "Pending: the register stage" in page
    # robustness: challenger only, every corruption that applies to 8x8 images, at both severities
    assert set(review.robustness["model"]) == {"challenger"}
    assert len(review.robustness) == 5 * 2
    # label noise: the demo annotator's noise on gold, pseudo-label precision, suspected rows (top 5)
    assert review.noise_estimate == pytest.approx(1 - labels.stats.loc[0, "accuracy"])
    assert "precision on held-out gold rows" in md
    assert 0 < len(review.issues) < review.weak_rows == len(labels.row_ids)
    assert {"row_id", "weak_label", "predicted_label", "confidence"} <= set(review.issues.columns)
    assert (review.issues["weak_label"] != review.issues["predicted_label"]).mean() > 0.9
    top = review.issues.head(5)
    assert all(f"| {r.rank} | {r.row_id} | {r.weak_label} | {r.predicted_label} |" in md for r in top.itertuples())
    assert "![accuracy per corruption and severity](robustness.png)" in md


def test_label_noise_view_shows_the_refined_confusions_beside_the_gold_ones(setup):
    from weakflow.tasks.core.trusted import refine
    from weakflow.tasks.lib.data import ROW_ID

    cfg, data, good, _, _, probs, labels, pseudo = setup
    x_weak = data.x(data.train.set_index(ROW_ID).loc[labels.row_ids].reset_index())
    refined, _ = refine(labels.sources, labels.votes, predict_proba(good, x_weak))
    review = build_review(data, cfg.report, RunContext.of(cfg, "run-r"), good, probs, Champion(None), labels, pseudo, refined=refined)
    md = render_markdown(review)
    gold, learnt = review.source_noise[0], review.refined_noise[0]
    assert learnt["basis"] == "gold+refined" and learnt["counts"] == gold["counts"]
    assert learnt["confusion"] != gold["confusion"]
    assert "as the weak training learnt it" in md
    first = "| " + " | ".join([str(data.classes[0]), *(f"{m:.2f}" for m in learnt["confusion"][0])]) + " |"
    assert first in md
    # no refined sources (another method, or anchored_refine off): only the gold-measured view
    without = render_markdown(build_review(data, cfg.report, RunContext.of(cfg, "run-r"), good, probs, Champion(None), labels, pseudo))
    assert "as the weak training learnt it" not in without and first not in without


def test_report_against_a_registered_champion_and_what_it_logs(setup, tmp_path):
    cfg, data, good, poor, spec, probs, labels, pseudo = setup
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("report", artifact_location=(tmp_path / "artifacts").as_uri())
    name = cfg.tracking.model_name
    with mlflow.start_run(experiment_id=experiment), tempfile.TemporaryDirectory() as tmp:  # the old, poor champion
        save_weights(Path(tmp) / "model.pt", poor, spec, data.schema, data.classes)
        info = mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_ENTRY),
                                       artifacts={"weights": str(Path(tmp) / "model.pt")}, pip_requirements=[])
    client = MlflowClient()
    version = mlflow.register_model(info.model_uri, name).version
    client.set_registered_model_alias(name, "champion", version)

    champion = load_champion(name, data)
    assert (champion.version, champion.error) == ("1", None)
    assert np.allclose(predict_proba(champion.model, data.x(data.test)), probs["weak"], atol=1e-5)
    other = data.spec.model_copy(update={"feature_columns": [f"f{i}" for i in range(len(data.features))]})
    refused = load_champion(name, type(data)(data.train, data.test, other, data.classes))
    assert refused.model is None and "trained on other input columns" in refused.error and "['px_0'" in refused.error

    with mlflow.start_run(experiment_id=experiment) as run:
        review = build_review(data, cfg.report, RunContext.of(cfg, "parent-1"), good, probs, champion, labels, pseudo)
        review.run_id = run.info.run_id
        log_review(review)
    assert review.vs_champion == "better"  # 25 epochs vs 1: the paired interval clears 0
    delta = review.boot.delta("challenger", "champion", "accuracy")
    assert delta.interval.low > 0
    page = render_html(review)
    assert_self_contained(page)
    assert "Challenger vs champion v1, both on the same 360 gold test rows" in page
    assert NO_CHAMPION not in page
    assert set(review.robustness["model"]) == {"challenger", "champion"}
    assert "challenger - champion" in page  # per-class recall difference column
    assert page.count('<table class="confusion">') == 4

    logged = client.get_run(run.info.run_id)
    files = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {HTML_FILE, MD_FILE, "evaluation/calibration_curve_plot.png", "evaluation/label_issues.png",
            "evaluation/robustness.png", "evaluation/label_issues.csv", "evaluation/per_class_metrics.csv",
            "evaluation/robustness.csv", "evaluation/bootstrap.json"} <= files
    m = logged.data.metrics
    assert m["accuracy_score"] == pytest.approx(review.scores["challenger"].accuracy)
    assert m["accuracy_score_ci_low"] <= m["accuracy_score"] <= m["accuracy_score_ci_high"]
    assert m["vs_champion_accuracy_score_delta_ci_low"] > 0
    assert m["champion_accuracy_score"] < m["accuracy_score"]
    assert {"f1_score", "ece", "example_count", "robustness_mean_drop", "champion_robustness_mean_drop",
            "noise_estimate", "label_issue_rate", "pseudo_label_precision"} <= set(m)
    tags = logged.data.tags
    assert tags["weakflow.champion"] == "1" and tags["weakflow.vs_champion"] == "better"
    assert tags["weakflow.noise_estimate"] == f"{review.noise_estimate:.2f}"
    assert "Verdict: **better**" in tags["mlflow.note.content"]
    runs = client.search_runs([experiment], "tags.`weakflow.vs_champion` = 'better'")  # what a reviewer filters on
    assert [r.info.run_id for r in runs] == [run.info.run_id]

    gated = record_gate(review, "failed", "min_accuracy: test accuracy 0.5 is below the minimum 0.9", "2", "challenger")
    assert gated.gate["verdict"] == "failed" and review.gate != gated.gate  # the evaluate stage's review untouched
    page = Path(client.download_artifacts(run.info.run_id, HTML_FILE, str(tmp_path))).read_text()
    assert "<strong>failed</strong>: min_accuracy" in page and "Pending" not in page
    assert client.get_run(run.info.run_id).data.tags["weakflow.gate"] == "failed"


def test_champion_that_cannot_be_scored_is_reported(setup, tmp_path):
    cfg, data, good, poor, spec, probs, labels, pseudo = setup
    champion = Champion("7", error="it was trained on other input columns")
    review = build_review(data, cfg.report, RunContext.of(cfg, "run-3"), good, probs, champion, labels, None)
    assert review.vs_champion == "champion not scored"
    assert "The champion (v7) could not be scored on this test split" in render_markdown(review)

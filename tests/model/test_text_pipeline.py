"""Text end to end on a slice of the shipped SMS data: the real pipeline (Prefect, MLflow, GX) trains a text
model from keyword/regex rules and a few gold rows; the registered model takes raw strings; the server
bounds text and logs what drift needs; the monitor sees drift in text and copies of test messages.
"""

from __future__ import annotations

import sqlite3

import mlflow
import pandas as pd
import pytest
import yaml

from weakflow.tasks.lib.config import DemoTextData, load_config
from weakflow.tasks.lib.demo_text import DEMO_RULES, materialize_demo_text
from weakflow.deploy.model_code import load_pyfunc

MAX_TEXT = 1000  # the longest SMS has 910 characters


@pytest.fixture(scope="module", params=["hashed", pytest.param("minilm", marks=pytest.mark.slow)])  # minilm: ~40 s
def text_run(prefect_harness, tmp_path_factory, request):
    """One pipeline run on 900 training messages (every gold one kept) and 300 test messages, per text
    featurisation: the hashed n-grams and the pretrained encoder."""
    from weakflow.flows.pipeline import training_pipeline
    from tests.conftest import FAST

    root = tmp_path_factory.mktemp("text")
    demo = materialize_demo_text(DemoTextData(), root / "demo")
    train, test = pd.read_parquet(demo.train_path), pd.read_parquet(demo.test_path)
    gold = train[train["label"].notna()]
    train = pd.concat([gold, train[train["label"].isna()].sample(900 - len(gold), random_state=0)])
    train.sample(frac=1.0, random_state=1).to_parquet(root / "train.parquet", index=False)
    test.sample(300, random_state=0).to_parquet(root / "test.parquet", index=False)
    config = {
        "data": {"source": "files", "train_path": "train.parquet", "test_path": "test.parquet", "text_columns": ["text"],
                 "label_column": "label", "classes": ["ham", "spam"], "abstain": "", "text_max_chars": MAX_TEXT},
        "weak_labels": {"rules": [r.model_dump(exclude_defaults=True) for r in DEMO_RULES]},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    log_url = f"sqlite:///{root / 'predictions.db'}"
    cfg = load_config(root / "config.yaml", [*FAST, f"tracking.workspace={root / 'ws'}", f"serve.prediction_log_url={log_url}",
                                             f"serve.max_text_chars={MAX_TEXT}", f"text.encoder={request.param}"])
    result = training_pipeline(cfg)
    return cfg, result, pd.read_parquet(root / "test.parquet")


def test_registered_text_model_takes_raw_strings_and_answers_names(text_run):
    cfg, result, test = text_run
    assert result.registration.version == "1" and result.registration.alias == "champion"
    uri = f"models:/{cfg.tracking.model_name}/1"
    inputs = mlflow.models.get_model_info(uri).signature.inputs.to_dict()
    assert inputs == [{"type": "string", "name": "text", "required": True}]
    out = load_pyfunc(uri).predict(test[["text"]])  # MLflow's loader, the code folder then moved back
    assert set(out["prediction"]) == {"ham", "spam"} and {"prob_ham", "prob_spam"} <= set(out)  # names, both of them, from raw strings
    accuracy = float((out["prediction"].to_numpy() == test["label"].to_numpy()).mean())
    assert accuracy == pytest.approx(result.evaluation.shipped.accuracy, abs=1e-9)  # the model the run measured
    # the report's label-noise view shows each suspect row's message, so a reviewer can judge it
    issues = result.evaluation.review.issues
    assert len(issues) > 0 and issues["text"].str.len().between(1, 160).all()
    html = mlflow.artifacts.load_text(f"runs:/{result.evaluation.run_id}/evaluation/report.html")
    import html as html_lib

    assert html_lib.escape(issues["text"].iloc[0]) in html
    # the report and the summary say how the text became features; the encoder travels inside the model
    text_line = dict(result.stages)["text_features"]
    assert f"Text features: {html_lib.escape(text_line)}" in html and f"text.encoder = {cfg.text.encoder}" in text_line
    artifacts = mlflow.models.Model.load(uri).flavors["python_function"]["artifacts"]
    version_tags = mlflow.MlflowClient().get_model_version(cfg.tracking.model_name, "1").tags
    if cfg.text.encoder == "minilm":
        from weakflow.tasks.core.encoder import WEIGHTS_SHA256

        assert set(artifacts) == {"weights", "text_encoder"} and WEIGHTS_SHA256 in version_tags["text_encoder"]
    else:
        assert set(artifacts) == {"weights"} and "text_encoder" not in version_tags


def test_server_bounds_text_and_logs_a_bounded_row(text_run):
    from fastapi.testclient import TestClient

    from weakflow.deploy.serve import LOGGED_TEXT_CHARS, create_app

    cfg, _, test = text_run
    log_url = cfg.serve.prediction_log_url
    long_ok = ("call me later " * 40)[:MAX_TEXT]
    app = create_app(cfg.tracking.model_name, poll_seconds=0, log_url=log_url, max_text_chars=cfg.serve.max_text_chars)
    with TestClient(app) as client:
        r = client.post("/predict", json={"records": [{"text": "WINNER!! Claim your £900 prize, txt 80086 now"},
                                                      {"text": long_ok}]})
        assert r.status_code == 200, r.text
        assert [p["class"] for p in r.json()["predictions"]] == ["spam", "ham"]
        assert set(r.json()["predictions"][0]["probabilities"]) == {"ham", "spam"}
        for bad, field in (({"text": "x" * (MAX_TEXT + 1)}, "records[0].text"), ({"text": 5}, "records[0].text"),
                           ({}, "records[0].text")):
            r = client.post("/predict", json={"records": [bad]})
            assert r.status_code == 422 and r.json()["detail"][0]["field"] == field, (bad, r.text)
        assert client.get("/model").json()["text_features"] == ["text"]
        assert client.app.state.weakflow["log"].flush(10)
    with sqlite3.connect(log_url.removeprefix("sqlite:///")) as db:
        rows = [r[0] for r in db.execute("select features from predictions order by rowid")]
    assert len(rows) == 2  # refused requests are never logged
    import json

    logged = json.loads(rows[1])
    assert logged["text"] == long_ok[:LOGGED_TEXT_CHARS] and len(long_ok) > LOGGED_TEXT_CHARS
    # what the drift check compares: the descriptors and the hashed model's LSA values or the encoder's embedding
    feature = "text:lsa0" if cfg.text.encoder == "hashed" else "text:embedding_0"
    assert "text:oov_share" in logged and feature in logged


def serve_rows(cfg, texts: list[str]) -> None:
    from fastapi.testclient import TestClient

    from weakflow.deploy.serve import create_app

    app = create_app(cfg.tracking.model_name, poll_seconds=0, log_url=cfg.serve.prediction_log_url,
                     max_text_chars=cfg.serve.max_text_chars)
    with TestClient(app) as client:
        for start in range(0, len(texts), 50):
            r = client.post("/predict", json={"records": [{"text": t} for t in texts[start:start + 50]]})
            assert r.status_code == 200, r.text
        assert client.app.state.weakflow["log"].flush(10)


def test_monitor_sees_text_drift_and_copies_of_test_messages(text_run, tmp_path):
    from weakflow.tasks.lib import tracking
    from weakflow.tasks.monitor import check_drift, load_served, load_window_task, production_contamination

    cfg, _, test = text_run
    cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(
        update={"prediction_log_url": f"sqlite:///{tmp_path / 'drift.db'}"})})
    # traffic unlike the training messages: long, upper-case order codes the model never saw
    shifted = [f"ORDER {i:06d} SHIPPED TO WAREHOUSE {i % 7} REF {i * 7919 % 100000:05d} STATUS CONFIRMED BY DEPOT"
               for i in range(150)]
    copies = [test["text"].iloc[0].upper() + " !!", test["text"].iloc[1]]  # a case/punctuation copy, a verbatim one
    serve_rows(cfg, shifted + copies)
    tracking.configure(cfg.tracking)
    served = load_served(cfg)
    window = load_window_task.fn(cfg, served)
    assert len(window) == 152 and window["text"].str.len().max() <= 200
    result, verdict = check_drift(cfg, served, window)
    assert verdict.drift, verdict.text
    assert {"text:log_length", "text:oov_share", "text:upper_share"} <= set(result.drifted_columns)
    if cfg.text.encoder == "minilm":  # the embedding is judged as a whole (a classifier tells window from reference)
        assert served.embeddings == [f"text:embedding_{i}" for i in range(384)]
        assert result.embedding_drifted and result.embedding_score > result.embedding_threshold
    found = production_contamination(cfg, served, window)["evaluation_contamination"]
    last = window["request_id"].iloc[-1]  # the copies' request: rows 0 and 1; the order codes match nothing
    assert (found["request_id"] == last).all() and set(found["row_index"]) == {0, 1}

"""Pictures end to end on a slice of the shipped Fashion-MNIST demo: the real pipeline (Prefect, MLflow, GX) reads
PNG files by path from a table, learns from three annotators and a few gold pictures; the registered model takes
picture bytes; the server takes base64 and logs a hash, never the bytes; `weakflow predict` scores a file of paths.
"""

from __future__ import annotations

import base64
import sqlite3

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from weakflow.deploy.model_code import load_pyfunc
from weakflow.tasks.lib.config import DemoImagesData, load_config
from weakflow.tasks.lib.demo_images import materialize_demo_images

# the module's run (600 PNGs through the real flow, streamed through a DataLoader worker) takes about two minutes
pytestmark = pytest.mark.slow

SMALL = ["weak_train.epochs=4", "full_train.epochs=2", "full_train.finetune_epochs=2", "weak_train.cnn_width=16",
         "full_train.cnn_width=16", "report.bootstrap_samples=200", "report.severities=[1.0]",
         "gates.min_accuracy=0.15",  # a narrow network and few epochs: the plumbing, not the accuracy, is tested
         "loader.resident_mb=0", "loader.workers=1"]  # every training table streams from the cache through a worker


@pytest.fixture(scope="module")
def picture_run(prefect_harness, tmp_path_factory):
    """One pipeline run on 600 training pictures (60 gold) and 200 test pictures, from a user's config file."""
    from weakflow.flows.pipeline import training_pipeline

    root = tmp_path_factory.mktemp("pictures")
    demo = materialize_demo_images(DemoImagesData(train_size=600, gold_fraction=0.1), root / "demo")
    train, test = pd.read_parquet(demo.train_path), pd.read_parquet(demo.test_path)
    for frame in (train, test):  # paths relative to the config file's folder, as a user writes them
        frame["image"] = "demo/" + demo.image_root.name + "/" + frame["image"]
    train.drop(columns=["row_id"]).to_csv(root / "train.csv", index=False)
    test.sample(200, random_state=0).to_csv(root / "test.csv", index=False)
    config = {"data": {"source": "files", "train_path": "train.csv", "test_path": "test.csv", "image_columns": ["image"],
                       "weak_label_columns": list(demo.weak_label_columns), "abstain": "", "classes": list(demo.classes)}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    log_url = f"sqlite:///{root / 'predictions.db'}"
    cfg = load_config(root / "config.yaml", [*SMALL, f"tracking.workspace={root / 'ws'}",
                                             f"serve.prediction_log_url={log_url}"])
    return cfg, training_pipeline(cfg), pd.read_csv(root / "test.csv"), root


@pytest.mark.parametrize(("method", "strategy"), [("glc", "pretrain_finetune"), ("confident_learning", "self_train"),
                                                  ("clid_mu", "distill")])
def test_every_method_and_strategy_trains_on_streamed_pictures(picture_run, tmp_path, method, strategy):
    """Each weak-training method and full-training strategy trains its networks on a streamed table."""
    from weakflow.flows.pipeline import training_pipeline

    first, _, _, root = picture_run
    cfg = load_config(root / "config.yaml", [*SMALL, f"tracking.workspace={tmp_path / 'ws'}",
                                             f"weak_train.method={method}", f"full_train.strategy={strategy}",
                                             # the 4-epoch network is unsure of everything: keep its pseudo labels
                                             "pseudo_label.policy=fixed", "pseudo_label.threshold=0.2"])
    try:
        result = training_pipeline(cfg)
        client = mlflow.MlflowClient()
        children = {r.data.tags.get("mlflow.runName"): r for r in client.search_runs(
            [result.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'")}
    finally:  # the run points MLflow at its own workspace: the module's other tests read the first run's
        mlflow.set_tracking_uri(first.tracking.resolved_uri)
    assert children["weak_train"].data.params["weak_train.method"] == method
    assert children["full_train"].data.params["full_train.strategy"] == strategy
    assert children["validate"].data.tags["picture_loading"].startswith("streamed")
    assert result.evaluation.shipped.accuracy > 0.1  # 10 classes: above chance


def test_registered_picture_model_takes_bytes_and_scores_as_measured(picture_run):
    cfg, result, test, root = picture_run
    assert result.registration.version == "1"
    uri = f"models:/{cfg.tracking.model_name}/1"
    inputs = mlflow.models.get_model_info(uri).signature.inputs.to_dict()
    assert inputs == [{"type": "binary", "name": "image", "required": True}]
    pictures = pd.DataFrame({"image": [(root / p).read_bytes() for p in test["image"]]})
    out = load_pyfunc(uri).predict(pictures)
    accuracy = float((out["prediction"].to_numpy() == test["label"].to_numpy()).mean())
    assert accuracy == pytest.approx(result.evaluation.shipped.accuracy, abs=1e-9)  # the model the run measured
    assert accuracy > 0.15  # 10 classes: chance is 0.1


def test_the_run_streamed_its_training_tables_from_the_cache(picture_run):
    cfg, result, _, _ = picture_run
    client = mlflow.MlflowClient()
    children = client.search_runs([result.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'")
    loading = [r.data.tags["picture_loading"] for r in children if "picture_loading" in r.data.tags]
    assert len(loading) == 1 and loading[0].startswith("streamed from the decoded cache by 1 DataLoader worker")


def test_server_takes_base64_and_logs_a_hash_not_the_picture(picture_run):
    from fastapi.testclient import TestClient

    from weakflow.deploy.serve import create_app

    cfg, _, test, root = picture_run
    sent = [(root / p).read_bytes() for p in test["image"].iloc[:3]]
    app = create_app(cfg.tracking.model_name, poll_seconds=0, log_url=cfg.serve.prediction_log_url)
    with TestClient(app) as client:
        r = client.post("/predict", json={"records": [{"image": base64.b64encode(b).decode()} for b in sent]})
        assert r.status_code == 200, r.text
        assert len(r.json()["predictions"]) == 3
        bad = client.post("/predict", json={"records": [{"image": "not base64 at all!"}]})
        assert bad.status_code == 422 and "image" in bad.text
        path = client.post("/predict", json={"records": [{"image": str(root / test["image"].iloc[0])}]})
        assert path.status_code == 422  # a path is never read on the server
    with sqlite3.connect(cfg.serve.prediction_log_url.removeprefix("sqlite:///")) as db:
        rows = pd.read_sql("select * from predictions", db)
    import hashlib

    assert len(rows) == 3
    logged = " ".join(rows.astype(str).to_numpy().ravel())
    assert hashlib.sha256(sent[0]).hexdigest() in logged
    assert base64.b64encode(sent[0]).decode()[:40] not in logged


def test_predict_scores_a_file_of_paths(picture_run, tmp_path):
    from weakflow.tasks.batch_predict import batch_predict

    cfg, result, test, root = picture_run
    test[["image"]].to_csv(root / "to_score.csv", index=False)
    job = batch_predict(cfg, root / "to_score.csv", tmp_path / "scores.csv")
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert job.rows == len(test) == len(scores)
    assert np.isclose((scores["prediction"].to_numpy() == test["label"].to_numpy()).mean(),
                      result.evaluation.shipped.accuracy)


@pytest.mark.slow
def test_a_second_run_scores_the_champion_on_this_runs_pictures(picture_run):
    """The champion's saved featurizer has no folder of its own: the review reads its pictures from this run's
    (a relative path once crashed the second run's evaluate stage)."""
    from weakflow.flows.pipeline import training_pipeline

    cfg, first, _, _ = picture_run
    second = training_pipeline(cfg)
    review = second.evaluation.review
    assert review.champion.version == "1" and review.champion.error is None
    assert "champion" in review.scores
    assert review.scores["champion"].accuracy == pytest.approx(first.evaluation.shipped.accuracy, abs=1e-9)

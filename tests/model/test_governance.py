"""Governance in the pipeline on planted data: 2 test rows copied into the weak split, 3 near copies in
the unlabeled split, and a feature that copies the label. Each policy does what it says."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from tasks.config import DemoData
from tasks.data import materialize_demo
from tasks.governance import GovernanceError
from tests.conftest import fast_config


def planted(spec, folder):
    train, test = pd.read_parquet(spec.train_path), pd.read_parquet(spec.test_path)
    rng = np.random.default_rng(0)
    feats = spec.feature_columns
    weak = train.index[train["provenance"] == "weak"][:2]
    unl = train.index[train["provenance"] == "unlabeled"][:3]
    train.loc[weak, feats] = test.loc[[4, 8], feats].to_numpy()
    train.loc[unl, feats] = np.clip(test.loc[[15, 16, 23], feats].to_numpy() + rng.normal(0, 0.05, (3, 64)), 0, 16)
    # a feature that is a near-copy of the label on labelled rows (random elsewhere)
    train["leak"] = np.where(train["label"].notna(), train["label"].astype("float") * 2 + 0.5, rng.uniform(0, 20, len(train)))
    test["leak"] = test["label"] * 2 + 0.5
    train.loc[weak, "leak"] = test.loc[[4, 8], "leak"].to_numpy()  # the copies copy every feature
    train.loc[unl, "leak"] = test.loc[[15, 16, 23], "leak"].to_numpy()
    folder.mkdir(parents=True, exist_ok=True)
    train.drop(columns=["provenance"]).to_parquet(folder / "train.parquet")
    test.to_parquet(folder / "test.parquet")
    features = "[" + ", ".join([*feats, "leak"]) + "]"
    return ["data.source=files", f"data.train_path={folder / 'train.parquet'}", f"data.test_path={folder / 'test.parquet'}",
            f"data.feature_columns={features}", "data.weak_label_columns=[weak_label]", "data.classes=[0,1,2,3,4,5,6,7,8,9]"]


def stage_runs(cfg, result=None):
    client = MlflowClient(cfg.tracking.resolved_uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    return client, {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


def test_drop_and_warn_policies_record_counts_and_the_model_card(prefect_harness, tmp_path, demo_root):
    from flows.pipeline import training_pipeline

    data = planted(materialize_demo(DemoData(), demo_root), tmp_path / "data")
    cfg = fast_config(tmp_path / "ws", *data, "governance.exact_duplicates=drop", "governance.near_duplicates=drop",
                      "governance.label_leakage=warn")
    result = training_pipeline(cfg)
    client, runs = stage_runs(cfg)
    gov = runs["governance"].data
    assert gov.metrics["exact_duplicates_found"] == 2 and gov.metrics["near_duplicates_found"] == 3
    assert gov.metrics["dropped_weak"] == 2 and gov.metrics["dropped_unlabeled"] == 3
    assert gov.metrics["label_leakage_found"] == 1 and gov.tags["governance.label_leakage"] == "warned"
    near = pd.read_parquet(client.download_artifacts(runs["governance"].info.run_id, "governance/near_duplicates.parquet"))
    assert sorted(near["test_index"]) == [15, 16, 23] and set(near["provenance"]) == {"unlabeled"}
    assert runs["validate"].data.metrics["rows_weak"] - 2 == runs["weak_labels"].data.metrics["weak_training_rows"]
    mv = client.get_model_version(cfg.tracking.model_name, result.registration.version)
    assert mv.tags["governance"] == "passed"
    card = mv.description
    assert "# Model card" in card and "near_duplicates | 3 found; dropped 3 row(s)" in card
    assert "label_leakage | 1 found; warned" in card and "gold-only baseline" in card
    assert "estimated noise rate" in card and "| weak_label |" in card
    assert "model_card.md" in {a.path for a in client.list_artifacts(runs["register"].info.run_id)}


@pytest.mark.parametrize("policies, message", [
    (["governance.exact_duplicates=warn", "governance.near_duplicates=fail", "governance.label_leakage=warn"],
     "near_duplicates: 3 training row(s) within"),
    (["governance.exact_duplicates=warn", "governance.near_duplicates=warn"],
     "label_leakage: feature(s) leak (1.000) predict the gold label alone"),
])
def test_fail_policy_stops_before_training_and_registers_nothing(prefect_harness, tmp_path, demo_root, policies, message):
    from flows.pipeline import training_pipeline

    data = planted(materialize_demo(DemoData(), demo_root), tmp_path / "data")
    cfg = fast_config(tmp_path / "ws", *data, *policies)
    with pytest.raises(GovernanceError, match=re.escape(message)):
        training_pipeline(cfg)
    client, runs = stage_runs(cfg)
    assert client.search_registered_models() == []
    assert set(runs) - {r for r in runs if r.startswith("pipeline-")} == {"validate", "governance"}
    assert runs["governance"].data.tags["governance"] == "failed"


def test_exact_copies_fail_validation_under_the_default_policy(prefect_harness, tmp_path, demo_root):
    from flows.pipeline import training_pipeline
    from tasks.data import DataError

    data = planted(materialize_demo(DemoData(), demo_root), tmp_path / "data")
    with pytest.raises(DataError, match="test_rows_in_training.training_copies: expected no test row"):
        training_pipeline(fast_config(tmp_path / "ws", *data))

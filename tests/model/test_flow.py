"""The whole pipeline under a real Prefect test harness and a temporary SQLite MLflow store."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from weakflow.tasks.lib.config import DemoData
from weakflow.tasks.lib.data import DataError, materialize_demo
from tests.conftest import fast_config
from weakflow.deploy.model_code import load_pyfunc

STAGES = ["validate", "governance", "weak_labels", "gold_only", "weak_train", "pseudo_label", "pseudo_governance",
          "full_train", "select", "evaluate", "register", "publish"]


def run_pipeline(cfg):
    from weakflow.flows.pipeline import training_pipeline

    return training_pipeline(cfg)


def children(client: MlflowClient, experiment_id: str, parent_id: str) -> dict[str, mlflow.entities.Run]:
    runs = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    return {r.info.run_name: r for r in runs}


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return out


@pytest.fixture(scope="module")
def first_run(prefect_harness, tmp_path_factory):
    workspace = tmp_path_factory.mktemp("ws")
    cfg = fast_config(workspace)
    return cfg, run_pipeline(cfg)


def test_run_tree_metrics_artifacts_and_champion(first_run):
    cfg, result = first_run
    client = MlflowClient(cfg.tracking.resolved_uri)
    assert result.tracking_uri == cfg.tracking.resolved_uri
    assert (cfg.tracking.workspace / "mlflow.db").is_file()
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED"
    stages = children(client, result.experiment_id, result.run_id)
    assert sorted(stages) == sorted(STAGES)
    assert all(r.info.status == "FINISHED" for r in stages.values())

    validate = stages["validate"]
    assert validate.data.tags["validation"] == "passed"
    assert validate.data.metrics["expectations_failed"] == 0
    assert validate.data.metrics["rows_gold"] + validate.data.metrics["rows_weak"] + validate.data.metrics["rows_unlabeled"] == 1437
    assert {"validation/result.json", "validation/summary.txt", "validation/data_docs/index.html",
            "data/provenance.json"} <= artifact_paths(client, validate.info.run_id)
    assert {d.dataset.name for d in validate.inputs.dataset_inputs} == {"train", "test"}

    # every training stage is cross-fitted: its dev accuracy per epoch is the out-of-fold gold accuracy
    for stage in ("gold_only", "weak_train"):
        hist = client.get_metric_history(stages[stage].info.run_id, "dev_accuracy")
        assert [m.step for m in hist] == list(range(cfg.weak_train.epochs))
        assert all(m.timestamp >= parent.info.start_time for m in hist)  # real times, not the 1970 epoch
        assert stages[stage].data.metrics["gold_folds"] == 3 and stages[stage].data.metrics["temperature"] > 0

    pseudo = stages["pseudo_label"]
    pm = pseudo.data.metrics
    assert 0 < pm["kept"] <= pm["candidates"] == 1293
    assert pm["holdout_precision_low"] <= pm["holdout_precision"] <= pm["holdout_precision_high"]
    assert pm["temperature"] > 0 and {"ece_oof_before", "ece_oof_after", "nll_oof_before", "nll_oof_after"} <= set(pm)
    assert pm["nll_oof_after"] <= pm["nll_oof_before"] + 1e-6  # what T minimises (with its prior, which is 0 at T=1)
    assert {"pseudo_labels/kept.parquet", "pseudo_labels/confidence_histogram.png", "pseudo_labels/per_class.json",
            "pseudo_labels/per_class.parquet"} <= artifact_paths(client, pseudo.info.run_id)
    kept = pd.read_parquet(client.download_artifacts(pseudo.info.run_id, "pseudo_labels/kept.parquet"))
    per_class = pd.read_parquet(client.download_artifacts(pseudo.info.run_id, "pseudo_labels/per_class.parquet"))
    assert len(kept) == pm["kept"] == per_class["kept"].sum()
    assert per_class["candidates"].sum() == pm["candidates"]
    assert {"threshold", "uncertified", "estimated_precision", "estimated_precision_low", "measured_precision",
            "measured_precision_low", "measured_precision_high"} <= set(per_class)
    thresholds = per_class.set_index("class")["threshold"]
    assert (kept["confidence"] >= kept["pseudo_label"].map(thresholds).astype("float32")).all()
    assert set(kept["split"]) <= {"weak", "unlabeled"} and set(kept["source"]) == {"train"}

    # provenance: every training label's source, as MLflow dataset inputs of the training stages
    assert {d.dataset.name for d in stages["weak_labels"].inputs.dataset_inputs} == {"weak_training_set"}
    full_set = pd.read_parquet(client.download_artifacts(stages["full_train"].info.run_id,
                                                         "provenance/full_training_set.parquet"))
    assert {d.dataset.name for d in stages["full_train"].inputs.dataset_inputs} == {"full_training_set"}
    sources = full_set["label_source"].str.split(":").str[0].value_counts().to_dict()
    assert sources["gold"] == validate.data.metrics["rows_gold"] and sources["pseudo"] == pm["kept"]
    assert sources.get("weak", 0) == stages["full_train"].data.metrics["train_rows_weak"]
    assert set(full_set.loc[full_set["label_source"].str.startswith("pseudo"), "label_source"]) <= {
        "pseudo:round0:weak", "pseudo:round0:unlabeled"}
    weak_set = pd.read_parquet(client.download_artifacts(stages["weak_labels"].info.run_id,
                                                         "provenance/weak_training_set.parquet"))
    assert weak_set["label_source"].eq("weak:weak_label").all()  # one annotator: every label is its vote
    noise = json.loads(Path(client.download_artifacts(stages["weak_labels"].info.run_id,
                                                      "weak_labels/source_noise.json")).read_text())
    assert noise[0]["basis"] == "gold" and noise[0]["accuracy_low"] < noise[0]["accuracy"] < noise[0]["accuracy_high"]
    # beside them, the confusions the weak rows were learnt through: refined on those rows, same gold counts
    refined = json.loads(Path(client.download_artifacts(stages["weak_train"].info.run_id,
                                                        "weak_train/refined_source_noise.json")).read_text())
    assert refined[0]["basis"] == "gold+refined" and refined[0]["counts"] == noise[0]["counts"]
    assert refined[0]["confusion"] != noise[0]["confusion"]
    assert stages["weak_train"].data.metrics["anchored_refined"] == 1.0

    # the choice of what ships is made on the gold rows, and said everywhere
    select = stages["select"]
    shipped = select.data.tags["weakflow.shipped"]
    assert shipped == result.evaluation.shipped_name and parent.data.tags["weakflow.shipped"] == shipped
    assert select.data.tags["weakflow.shipped_reason"] in parent.data.tags["mlflow.note.content"]
    oof = {c: select.data.metrics[f"oof_accuracy_{c}"] for c in ("gold_only", "weak", "final")}
    assert oof[shipped] == max(oof.values())

    ev = stages["evaluate"].data.metrics
    assert ev["test_accuracy"] == pytest.approx(result.evaluation.shipped.accuracy)
    assert ev["lift_over_gold_only"] == pytest.approx(ev["test_accuracy"] - ev["gold_only_test_accuracy"])
    assert "evaluation/confusion_matrix.png" in artifact_paths(client, stages["evaluate"].info.run_id)
    # the weak labels must earn their place: better than gold alone on the gold rows and on the test split
    assert shipped != "gold_only" and oof[shipped] > oof["gold_only"]
    assert ev["lift_over_gold_only_ci_low"] > 0, ev

    reg = result.registration
    assert (reg.version, reg.alias) == ("1", "champion")
    mv = client.get_model_version_by_alias(cfg.tracking.model_name, "champion")
    assert str(mv.version) == "1"
    assert mv.tags["gate_verdict"] == "passed" and mv.tags["pipeline_run_id"] == result.run_id
    assert mv.tags["shipped"] == shipped
    assert "reference/reference.parquet" in artifact_paths(client, stages["register"].info.run_id)


def test_the_pipeline_run_is_named_and_tagged_by_model_and_data(first_run):
    import hashlib

    cfg, result = first_run
    client = MlflowClient(cfg.tracking.resolved_uri)
    parent = client.get_run(result.run_id)
    stages = children(client, result.experiment_id, result.run_id)
    m = stages["validate"].data.metrics
    rows = int(m["rows_gold"] + m["rows_weak"] + m["rows_unlabeled"] + m["rows_test"])  # 1,797 digits
    assert parent.info.run_name.startswith(f"{cfg.tracking.model_name} · {rows:,} rows · 20"), parent.info.run_name
    tags = parent.data.tags
    assert (tags["weakflow.model_name"], tags["weakflow.data_source"], tags["weakflow.rows"]) == \
        (cfg.tracking.model_name, "demo", str(rows))
    spec = materialize_demo(cfg.data, cfg.tracking.workspace / "data")
    for role, path in (("train", spec.train_path), ("test", spec.test_path)):
        assert tags[f"weakflow.{role}_path"] == str(Path(path).resolve())
        assert tags[f"weakflow.{role}_sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    # the stage runs say whose they are, and the run list filters by model
    assert {r.data.tags.get("weakflow.model_name") for r in stages.values()} == {cfg.tracking.model_name}
    mine = client.search_runs([result.experiment_id], f"tags.`weakflow.model_name` = '{cfg.tracking.model_name}' "
                                                      "and tags.`weakflow.stage` = 'pipeline'")
    assert result.run_id in {r.info.run_id for r in mine}
    assert client.search_runs([result.experiment_id], "tags.`weakflow.model_name` = 'another-model'") == []


def test_registered_model_serves_raw_features(first_run):
    cfg, result = first_run
    mlflow.set_tracking_uri(cfg.tracking.resolved_uri)
    model = load_pyfunc(f"models:/{cfg.tracking.model_name}@champion")
    spec = materialize_demo(cfg.data, cfg.tracking.workspace / "data")
    test = pd.read_parquet(spec.test_path)
    out = model.predict(test[spec.feature_columns].astype(np.float64))
    assert list(out.columns[:2]) == ["prediction", "confidence"]
    assert np.allclose(out[[f"prob_{c}" for c in range(10)]].sum(axis=1), 1.0, atol=1e-5)
    assert (out["prediction"] == test["label"]).mean() == pytest.approx(result.evaluation.shipped.accuracy)


def test_failed_gate_registers_challenger_and_keeps_champion(first_run):
    cfg, _ = first_run
    strict = fast_config(cfg.tracking.workspace, "gates.min_accuracy=1.0")
    result = run_pipeline(strict)
    client = MlflowClient(cfg.tracking.resolved_uri)
    assert (result.registration.version, result.registration.alias) == ("2", "challenger")
    assert str(client.get_model_version_by_alias(cfg.tracking.model_name, "champion").version) == "1"
    tags = client.get_model_version(cfg.tracking.model_name, "2").tags
    assert tags["gate_verdict"] == "failed"
    assert "below the minimum 1.0000" in tags["gate_reason"]
    assert tags["champion_before"] == "1"
    # the verdict reaches the review: the pipeline run's tags, the evaluate run's tag and its report
    parent = client.get_run(result.run_id).data.tags
    assert parent["weakflow.gate"] == "failed" and parent["weakflow.vs_champion"] in {"better", "worse", "no clear difference"}
    evaluate = client.get_run(parent["weakflow.evaluate_run"])
    assert evaluate.data.tags["weakflow.stage"] == "evaluate" and evaluate.data.tags["weakflow.gate"] == "failed"
    report = Path(client.download_artifacts(evaluate.info.run_id, "evaluation/report.md")).read_text()
    assert "**failed**" in report and "below the minimum 1.0000" in report
    assert "as the weak training learnt it" in report  # the evaluate stage hands the weak model's refined confusions on


def test_a_failure_after_register_moves_no_alias(first_run, monkeypatch):
    """The alias is the run's last step: a later failure (here the run summary) leaves the champion where it
    was and the new version without an alias."""
    from weakflow.tasks import publish as publish_stage

    cfg, _ = first_run
    client = MlflowClient(cfg.tracking.resolved_uri)
    before = str(client.get_model_version_by_alias(cfg.tracking.model_name, "champion").version)

    def unreachable(*args, **kwargs):
        raise RuntimeError("summary store unreachable")

    monkeypatch.setattr(publish_stage, "summary_lines", unreachable)
    with pytest.raises(RuntimeError, match="summary store unreachable"):
        run_pipeline(fast_config(cfg.tracking.workspace))  # its gates pass: it would become champion
    versions = client.search_model_versions(f"name='{cfg.tracking.model_name}'")
    newest = max(versions, key=lambda v: int(v.version))
    assert int(newest.version) > int(before) and newest.tags["gate_verdict"] == "passed"
    assert newest.aliases == []
    assert str(client.get_model_version_by_alias(cfg.tracking.model_name, "champion").version) == before


def test_no_weak_vote_anywhere_ships_the_gold_only_model_and_says_why(prefect_harness, tmp_path, demo_root):
    spec = materialize_demo(DemoData(), demo_root)
    _, overrides = corrupt("none", spec, tmp_path / "data")
    train = pd.read_parquet(tmp_path / "data" / "train.parquet")
    train.loc[train["label"].isna(), "weak_label"] = -1  # the annotator labelled only the gold rows
    train.to_parquet(tmp_path / "data" / "train.parquet")
    cfg = fast_config(tmp_path / "ws", *overrides, "data.image_shape=null")
    result = run_pipeline(cfg)
    assert result.evaluation.shipped_name == "gold_only" and result.registration.version == "1"
    client = MlflowClient(cfg.tracking.resolved_uri)
    parent = client.get_run(result.run_id).data.tags
    assert parent["weakflow.shipped"] == "gold_only"
    assert "no row outside the gold set carries a weak vote" in parent["weakflow.shipped_reason"]
    stages = children(client, result.experiment_id, result.run_id)
    assert {"weak_train", "pseudo_label", "full_train"}.isdisjoint(stages)  # nothing to train them on
    assert dict(result.stages)["select"].startswith("weak labels did not help on this data: shipped the gold-only")


def corrupt(kind: str, spec, folder: Path) -> tuple[str, list[str]]:
    """Write a broken copy of the demo data; return (expected message, extra config overrides)."""
    train, test = pd.read_parquet(spec.train_path), pd.read_parquet(spec.test_path)
    msg = {"missing_column": "train.px_7: expected the column to exist",
           "nan_feature": "train.px_5: expected no missing (NaN) values",
           "label_outside": "train.label: expected a class in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]",
           "empty_gold": "gold_per_class.gold_rows: expected at least 2 gold rows per class",
           "test_in_training": "test_rows_in_training.training_copies: expected no test row",
           "unreadable": "data.train_path: cannot read", "none": ""}[kind]
    if kind == "missing_column":
        train = train.drop(columns=["px_7"])
    elif kind == "nan_feature":
        train.loc[10, "px_5"] = np.nan
    elif kind == "label_outside":
        train.loc[train["label"].notna().idxmax(), "label"] = 12
    elif kind == "empty_gold":
        train["label"] = pd.array([pd.NA] * len(train), dtype="Int64")
    elif kind == "test_in_training":
        train.loc[0, spec.feature_columns] = test.loc[0, spec.feature_columns].to_numpy()
    folder.mkdir(parents=True, exist_ok=True)
    train.to_parquet(folder / "train.parquet")
    test.to_parquet(folder / "test.parquet")
    if kind == "unreadable":
        (folder / "train.parquet").write_bytes(b"PAR1 truncated")
    features = "[" + ", ".join(spec.feature_columns) + "]"
    return msg, ["data.source=files", f"data.train_path={folder / 'train.parquet'}",
                 f"data.test_path={folder / 'test.parquet'}", f"data.feature_columns={features}",
                 "data.weak_label_columns=[weak_label]", "data.classes=[0,1,2,3,4,5,6,7,8,9]"]


# each ~9 s through the real flow; the data checks' own messages are all in tests/data/test_validation.py
SLOW = pytest.mark.slow


@pytest.mark.parametrize("kind", ["missing_column", pytest.param("nan_feature", marks=SLOW),
                                  pytest.param("label_outside", marks=SLOW), pytest.param("empty_gold", marks=SLOW),
                                  "test_in_training", "unreadable"])
def test_bad_data_stops_before_training_and_registers_nothing(prefect_harness, tmp_path, demo_root, kind):
    spec = materialize_demo(DemoData(), demo_root)
    message, overrides = corrupt(kind, spec, tmp_path / "data")
    cfg = fast_config(tmp_path / "ws", *overrides)
    with pytest.raises(DataError, match=re.escape(message)):
        run_pipeline(cfg)
    client = MlflowClient(cfg.tracking.resolved_uri)
    assert client.search_registered_models() == []
    runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert {r.info.run_name for r in runs if r.data.tags.get("weakflow.stage") != "pipeline"} == {"validate"}
    assert all(r.info.status == "FAILED" for r in runs)
    validate_run = next(r for r in runs if r.info.run_name == "validate")
    assert validate_run.data.tags["validation"] == "failed"
    summary = Path(client.download_artifacts(validate_run.info.run_id, "validation/summary.txt")).read_text()
    assert message in summary  # the reviewer sees the same reason in the MLflow UI


def test_bring_your_own_csv_with_two_weak_sources(prefect_harness, tmp_path, demo_root):
    """The data contract from the README: CSV, own column names, two weak columns, abstain, no image. Small
    (700 training rows), so the models shipped are bags of networks, which must register and serve."""
    spec = materialize_demo(DemoData(), demo_root)
    train, test = pd.read_parquet(spec.train_path).sample(700, random_state=0), pd.read_parquet(spec.test_path)
    names = {c: f"f{i}" for i, c in enumerate(spec.feature_columns)}
    rng = np.random.default_rng(0)
    annotator_b = train["weak_label"].where(rng.random(len(train)) < 0.5, -1)  # abstains half the time
    own = train.rename(columns=names).rename(columns={"label": "gold"}).drop(columns=["provenance", "row_id"])
    own = own.rename(columns={"weak_label": "annotator_a"}).assign(annotator_b=annotator_b)
    own.to_csv(tmp_path / "train.csv", index=False)
    test.rename(columns=names).rename(columns={"label": "gold"}).to_csv(tmp_path / "test.csv", index=False)
    (tmp_path / "cfg.yaml").write_text(
        "data:\n  source: files\n"
        f"  train_path: {tmp_path / 'train.csv'}\n  test_path: {tmp_path / 'test.csv'}\n"
        f"  feature_columns: [{', '.join(names.values())}]\n"
        "  label_column: gold\n  weak_label_columns: [annotator_a, annotator_b]\n  abstain: -1\n"
    )
    from weakflow.tasks.lib.config import load_config
    from tests.conftest import FAST

    cfg = load_config(tmp_path / "cfg.yaml", [*FAST, f"tracking.workspace={tmp_path / 'ws'}"])
    result = run_pipeline(cfg)
    assert result.registration.alias == "champion"
    assert result.evaluation.shipped.accuracy > 0.8
    client = MlflowClient(cfg.tracking.resolved_uri)
    spec_json = client.download_artifacts(children(client, result.experiment_id, result.run_id)["full_train"].info.run_id,
                                          "model_spec.json")
    assert '"kind": "mlp"' in Path(spec_json).read_text()  # no image_shape -> the MLP
    assert '"ensemble": 3' in Path(spec_json).read_text()  # selection.refits: auto bags a refit of <= 1,000 rows
    mlflow.set_tracking_uri(cfg.tracking.resolved_uri)
    served = load_pyfunc(f"models:/{cfg.tracking.model_name}@champion").predict(
        test.rename(columns=names)[list(names.values())].astype(np.float64))
    assert (served["prediction"] == test["label"]).mean() == pytest.approx(result.evaluation.shipped.accuracy)


def broken_lf(batch: pd.DataFrame) -> np.ndarray:
    raise RuntimeError("lookup table missing")


def out_of_set_lf(batch: pd.DataFrame) -> np.ndarray:
    return np.full(len(batch), 99)


@pytest.mark.slow  # ~20 s
def test_labelling_functions_dawid_skene_and_clid_mu(prefect_harness, tmp_path):
    lfs = "[weakflow.tasks.lib.example_lfs:ink_heavy_is_eight, weakflow.tasks.lib.example_lfs:empty_center_is_zero]"
    cfg = fast_config(tmp_path / "ws", f"weak_labels.labeling_functions={lfs}", "weak_labels.aggregation=dawid_skene",
                      "weak_train.method=clid_mu", "weak_train.clid_mu.meta_set_size=300")
    result = run_pipeline(cfg)
    client = MlflowClient(cfg.tracking.resolved_uri)
    stages = children(client, result.experiment_id, result.run_id)
    wl = stages["weak_labels"]
    sources = pd.read_parquet(client.download_artifacts(wl.info.run_id, "weak_labels/sources.parquet"))
    assert sources["source"].tolist() == ["weak_label", "lf:ink_heavy_is_eight", "lf:empty_center_is_zero"]
    # the simulated annotator is 40% wrong; measured on the gold rows it labelled
    assert sources.loc[0, "accuracy"] == pytest.approx(0.6, abs=0.1)
    assert 0 < sources.loc[1, "coverage"] < 0.2 and sources.loc[1, "accuracy"] > 0.5
    assert "weak_labels/dawid_skene_confusion.json" in artifact_paths(client, wl.info.run_id)
    # LFs also label unlabeled rows, so more rows train than the 905 annotated ones
    assert wl.data.metrics["weak_training_rows"] > 905
    weak = stages["weak_train"]
    assert weak.data.tags["method"] == "clid_mu"
    clid = client.get_metric_history(weak.info.run_id, "clid")
    assert len(clid) == cfg.weak_train.epochs
    assert "clid_dev_spearman" in weak.data.metrics
    assert result.registration.version == "1"


@pytest.mark.parametrize("lf, expected", [
    ("tests.model.test_flow:broken_lf", ["labelling function tests.model.test_flow:broken_lf raised RuntimeError: lookup table missing"]),
    pytest.param("tests.model.test_flow:out_of_set_lf", ["tests.model.test_flow:out_of_set_lf", "99"], marks=SLOW),
    pytest.param("tests.model.test_flow:no_such_lf", ["tests.model.test_flow:no_such_lf"], marks=SLOW),
])
def test_bad_labelling_function_fails_the_run_and_registers_nothing(prefect_harness, tmp_path, lf, expected):
    cfg = fast_config(tmp_path / "ws", f"weak_labels.labeling_functions=[{lf}]")
    with pytest.raises(DataError) as exc:
        run_pipeline(cfg)
    assert all(part in str(exc.value) for part in expected), str(exc.value)
    client = MlflowClient(cfg.tracking.resolved_uri)
    assert client.search_registered_models() == []


def write_pool(spec, path: Path, rows: int, seed: int = 0, row_group: int = 700) -> pd.DataFrame:
    """A pool of jittered copies of the demo's non-gold training rows, in several Parquet row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    train = pd.read_parquet(spec.train_path)
    base = train[train["label"].isna()][spec.feature_columns].to_numpy(np.float32)
    rng = np.random.default_rng(seed)
    x = base[rng.integers(0, len(base), rows)] + rng.normal(0, 0.3, (rows, base.shape[1])).astype(np.float32)
    pool = pd.DataFrame(np.clip(x, 0, 16), columns=spec.feature_columns)
    pq.write_table(pa.Table.from_pandas(pool, preserve_index=False), path, row_group_size=row_group)
    return pool


@pytest.mark.slow  # ~23 s
def test_self_training_with_per_class_thresholds_over_a_streamed_pool(prefect_harness, tmp_path, demo_root):
    spec = materialize_demo(DemoData(), demo_root)
    _, overrides = corrupt("none", spec, tmp_path / "data")
    write_pool(spec, tmp_path / "pool.parquet", 2500)
    cfg = fast_config(tmp_path / "ws", *overrides, f"data.unlabeled_path={tmp_path / 'pool.parquet'}",
                      "pseudo_label.chunk_rows=400", "pseudo_label.policy=per_class", "pseudo_label.threshold=0.9",
                      "pseudo_label.max_per_class=300", "full_train.strategy=self_train",
                      "full_train.self_train.max_rounds=2")
    result = run_pipeline(cfg)
    client = MlflowClient(cfg.tracking.resolved_uri)
    stages = children(client, result.experiment_id, result.run_id)
    assert stages["validate"].data.metrics["rows_pool"] == 2500
    pseudo = stages["pseudo_label"]
    assert pseudo.data.metrics["candidates"] == 1293 + 2500
    kept = pd.read_parquet(client.download_artifacts(pseudo.info.run_id, "pseudo_labels/kept.parquet"))
    assert set(kept["source"]) == {"train", "pool"}
    assert kept["pseudo_label"].value_counts().max() <= 300  # the per-class cap
    per_class = pd.read_parquet(client.download_artifacts(pseudo.info.run_id, "pseudo_labels/per_class.parquet"))
    assert (per_class["threshold"] >= 0.5 - 1e-6).all() and (per_class["threshold"] <= 0.9 + 1e-6).all()
    full = stages["full_train"]
    rounds = children(client, result.experiment_id, full.info.run_id)
    assert set(rounds) <= {"self_train_round_1", "self_train_round_2"} and "self_train_round_1" in rounds
    assert full.data.metrics["rounds"] == len(rounds)
    assert full.data.tags["self_train.stop_reason"]
    first = rounds["self_train_round_1"].data.metrics
    assert first["trained_on_pseudo"] == pseudo.data.metrics["kept"]
    # round 1 of 2 always relabels the candidates (the pool included) for round 2
    assert first["relabelled"] >= 0
    assert any(p.startswith("relabelled_round_1/") for p in artifact_paths(client, rounds["self_train_round_1"].info.run_id))
    assert result.registration.version == "1"


@pytest.mark.parametrize("problem", ["nan", "missing_column", "csv"])
def test_bad_pool_file_fails_with_file_and_column_and_registers_nothing(prefect_harness, tmp_path, demo_root, problem):
    spec = materialize_demo(DemoData(), demo_root)
    _, overrides = corrupt("none", spec, tmp_path / "data")
    pool = write_pool(spec, tmp_path / "pool.parquet", 1500)
    path = tmp_path / "pool.parquet"
    if problem == "nan":
        pool.loc[1234, "px_9"] = np.inf
        pool.to_parquet(path, row_group_size=500)
        expected = f"data.unlabeled_path: {path} rows 1200-1299: column px_9 has NaN or infinite values"
    elif problem == "missing_column":
        pool.drop(columns=["px_3"]).to_parquet(path)
        expected = "lacks input column(s) ['px_3']"
    else:
        path = tmp_path / "pool.csv"
        pool.to_csv(path, index=False)
        expected = "the pool is streamed, so it must be Parquet"
    cfg = fast_config(tmp_path / "ws", *overrides, f"data.unlabeled_path={path}", "pseudo_label.chunk_rows=100")
    with pytest.raises(DataError, match=re.escape(expected)):
        run_pipeline(cfg)
    client = MlflowClient(cfg.tracking.resolved_uri)
    assert client.search_registered_models() == []
    runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert {r.info.run_name for r in runs if r.data.tags.get("weakflow.stage") != "pipeline"} == {"validate"}

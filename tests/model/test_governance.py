"""Governance on planted data.

Plain-function tests (hand-made data): pseudo labels on rows equal or near test rows are found with the
planted count and handled by each policy, also on every self-training round's relabelled sets (a tiny
real network relabels real rows among which the copies are planted); a failed check still logs its
finding tables. Pipeline tests: 2 test rows copied into the weak split, 3 near copies in the unlabeled
split, and a feature that copies the label."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.datasets import load_digits

from weakflow.tasks.lib.config import Config, DemoData, FilesData, load_config
from weakflow.tasks.core.pseudo import HIST_BINS, StreamResult, ThresholdPolicy
from weakflow.tasks.lib.data import FOLD, PROVENANCE, ROW_ID, SPLIT, PipelineData, materialize_demo
from weakflow.tasks import governance
from weakflow.tasks.lib.checks import GovernanceError, check_pseudo
from weakflow.tasks.lib.pseudo_labels import Calibration, PseudoLabels
from weakflow.tasks.lib.steps import RunContext
from tests.conftest import fast_config

FEATURES = [f"px_{i}" for i in range(64)]
EXACT_TEST_ROWS = [3, 40, 77]  # test rows copied exactly onto pseudo-labelled rows
NEAR_TEST_ROWS = [10, 55, 90, 120]  # test rows copied with a small jitter


@pytest.fixture(scope="module")
def hand_data() -> PipelineData:
    """200 digits test rows; 600 training rows: 200 gold (3 folds), 200 weak, 200 unlabeled, of which the
    first 7 are copies of test rows (3 exact, 4 within jitter sd 0.05 on a 0-16 pixel scale)."""
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    test = pd.DataFrame(x[order[:200]], columns=FEATURES).assign(label=pd.array(y[order[:200]], dtype="Int64"))
    idx = order[200:800]
    train = pd.DataFrame(x[idx], columns=FEATURES)
    copies = np.concatenate([x[order[EXACT_TEST_ROWS]], x[order[NEAR_TEST_ROWS]]
                             + np.random.default_rng(1).normal(0, 0.05, (4, 64))])
    train.iloc[400:407, :64] = copies
    train["label"] = pd.array([*y[idx[:200]], *[pd.NA] * 400], dtype="Int64")
    train["weak_label"] = np.where((np.arange(600) >= 200) & (np.arange(600) < 400), y[idx], -1)
    train[PROVENANCE] = np.repeat(["gold", "weak", "unlabeled"], 200)
    train[SPLIT] = train[PROVENANCE]
    train[FOLD] = np.where(np.arange(600) < 200, np.arange(600) % 3, -1)
    train[ROW_ID] = np.arange(600)
    spec = FilesData(train_path=Path("unused-train.parquet"), test_path=Path("unused-test.parquet"),
                     feature_columns=FEATURES, weak_label_columns=["weak_label"], classes=list(range(10)))
    return PipelineData(train=train, test=test, spec=spec, classes=list(range(10)))


def planted_pseudo(data: PipelineData, folder: Path, rows: int = 40, round_: int = 0, seed: int = 1) -> PseudoLabels:
    """``rows`` unlabeled rows as a kept pseudo set, the first 3 replaced by exact copies of test rows and
    the next 4 by near copies (jitter sd 0.05 on a 0-16 pixel scale)."""
    rng = np.random.default_rng(seed)
    kept = data.rows("unlabeled").iloc[7:].head(rows)[[ROW_ID, SPLIT, *FEATURES]].reset_index(drop=True)
    kept.insert(2, "source", "train")
    test_x = data.x(data.test)
    if rows >= 7:
        kept.loc[0:2, FEATURES] = test_x[EXACT_TEST_ROWS]
        kept.loc[3:6, FEATURES] = test_x[NEAR_TEST_ROWS] + rng.normal(0, 0.05, (4, 64)).astype(np.float32)
    kept[FEATURES] = kept[FEATURES].astype(np.float32)
    kept["pseudo_label"] = rng.integers(0, 10, len(kept))
    kept["confidence"] = np.float32(0.95)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"pseudo-round{round_}-{seed}.parquet"
    kept.to_parquet(path, index=False)
    counts = np.bincount(kept["pseudo_label"], minlength=10)
    stream = StreamResult(thresholds=np.full(10, 0.9), candidates=counts.copy(), kept=counts.copy(),
                          cap_cutoff=np.full(10, np.nan), uncertified=np.zeros(10, bool),
                          histogram=np.zeros(HIST_BINS, np.int64), rows=len(kept))
    per_class = pd.DataFrame({"class": data.classes, "kept": counts})
    return PseudoLabels(path, ThresholdPolicy(), stream, Calibration(1.0, {}, {}), per_class, None, None, round_)


def policy(*overrides: str) -> Config:
    return load_config(None, list(overrides))


def test_pseudo_near_test_finds_the_planted_rows_and_drop_removes_exactly_them(hand_data, tmp_path):
    pseudo = planted_pseudo(hand_data, tmp_path)
    planted_ids = set(pseudo.kept[ROW_ID].head(7))
    out, findings = check_pseudo(hand_data, pseudo, policy("governance.pseudo_near_test=drop").governance)
    table = findings.tables["pseudo_near_test"]
    assert findings.count("pseudo_near_test") == 7
    assert sorted(table["test_index"]) == sorted(EXACT_TEST_ROWS + NEAR_TEST_ROWS)
    assert set(table[ROW_ID]) == planted_ids
    assert (table.set_index("test_index").loc[EXACT_TEST_ROWS, "distance"] == 0).all()
    assert (table.set_index("test_index").loc[NEAR_TEST_ROWS, "distance"] > 0).all()
    assert findings.actions["pseudo_near_test"] == "dropped 7 row(s)" and findings.dropped == {"pseudo": 7}
    # the set the next stage trains on: the file, the cached rows and the per-class counts agree
    on_disk = pd.read_parquet(out.path)
    assert len(on_disk) == 33 and out.kept_count == 33 and len(out.kept) == 33
    assert not planted_ids & set(on_disk[ROW_ID])
    assert out.stream.kept.tolist() == np.bincount(on_disk["pseudo_label"], minlength=10).tolist()


def test_pseudo_near_test_warn_keeps_the_rows_and_clean_sets_find_nothing(hand_data, tmp_path):
    pseudo = planted_pseudo(hand_data, tmp_path)
    out, findings = check_pseudo(hand_data, pseudo, policy("governance.pseudo_near_test=warn").governance)
    assert findings.count("pseudo_near_test") == 7 and findings.actions["pseudo_near_test"] == "warned"
    assert findings.dropped == {} and out.kept_count == 40 and len(pd.read_parquet(out.path)) == 40
    clean = planted_pseudo(hand_data, tmp_path, rows=6, seed=2)  # fewer than 7 rows: nothing planted
    _, none = check_pseudo(hand_data, clean, policy("governance.pseudo_near_test=drop").governance)
    assert none.count("pseudo_near_test") == 0 and none.actions["pseudo_near_test"] == "none"


def test_pseudo_near_test_fail_raises_with_the_findings_and_leaves_the_set(hand_data, tmp_path):
    pseudo = planted_pseudo(hand_data, tmp_path)
    with pytest.raises(GovernanceError, match=r"pseudo_near_test: 7 pseudo-labelled row\(s\)") as err:
        check_pseudo(hand_data, pseudo, policy("governance.pseudo_near_test=fail").governance)
    assert err.value.findings.count("pseudo_near_test") == 7
    assert len(pd.read_parquet(pseudo.path)) == 40


@pytest.fixture(scope="module")
def _mlflow_store(tmp_path_factory) -> Path:
    """One SQLite tracking store for this module's plain-function logging tests (creating one costs seconds)."""
    return tmp_path_factory.mktemp("mlflow-unit")


@pytest.fixture
def local_mlflow(_mlflow_store, request):
    """(client, experiment id) of a fresh experiment in the throwaway store; the previous URI is restored."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{_mlflow_store / 'mlflow.db'}")
    exp = mlflow.create_experiment(request.node.name, artifact_location=(_mlflow_store / request.node.name).as_uri())
    yield MlflowClient(), exp
    mlflow.set_tracking_uri(previous)


def test_a_failed_check_still_logs_every_finding_table(hand_data, local_mlflow):
    client, exp = local_mlflow
    planted = hand_data.rows("unlabeled").head(7).index  # this test plants its own copies
    data = PipelineData(train=hand_data.train.drop(index=planted), test=hand_data.test, spec=hand_data.spec,
                        classes=hand_data.classes)
    near = data.train.index[data.train[SPLIT] == "unlabeled"][:3]
    rng = np.random.default_rng(5)
    data.train.loc[near, FEATURES] = data.x(data.test)[[7, 8, 9]] + rng.normal(0, 0.05, (3, 64))
    cfg = policy("governance.near_duplicates=fail", "governance.exact_duplicates=drop", "governance.label_leakage=warn")
    ctx = RunContext.of(cfg)
    with mlflow.start_run(experiment_id=exp) as run, pytest.raises(GovernanceError, match="near_duplicates: 3"):
        try:
            governance.STAGE.compute(ctx, data, cfg.governance)
        except GovernanceError as exc:  # what the flow's runner does with a failed stage: record, re-raise
            governance.STAGE.record_error(exc, ctx, data, cfg.governance)
            raise
    logged = client.get_run(run.info.run_id).data
    assert logged.tags["governance"] == "failed" and logged.tags["governance.near_duplicates"] == "failed"
    assert logged.metrics["near_duplicates_found"] == 3 and logged.metrics["exact_duplicates_found"] == 0
    table = pd.read_parquet(client.download_artifacts(run.info.run_id, "governance/near_duplicates.parquet"))
    assert sorted(table["test_index"]) == [7, 8, 9] and set(table[ROW_ID]) == set(data.train.loc[near, ROW_ID])
    paths = {a.path for a in client.list_artifacts(run.info.run_id, "governance")}
    assert {"governance/summary.txt", "governance/summary.json", "governance/label_leakage_all.parquet"} <= paths


@pytest.fixture(scope="module")
def real_weak(hand_data, tmp_path_factory):
    """A tiny real cross-fitted weak model on the hand-made rows, and its pseudo sets with every candidate
    kept (threshold 0), the planted test copies included; then the same sets after pseudo_near_test=drop."""
    from weakflow.tasks.lib.checks import check_all_pseudo
    from weakflow.tasks.lib.pseudo_labels import label_all
    from weakflow.tasks.weak_labels import make_weak_labels
    from weakflow.tasks import weak_train

    cfg = self_train_config(tmp_path_factory.mktemp("ws"), "drop")
    labels = make_weak_labels(hand_data, cfg)
    weak = weak_train.compute(RunContext.of(cfg), hand_data, labels, None, cfg.weak_train, cfg.selection,
                              cfg.weak_labels.confusion_strength)
    raw = label_all(hand_data, weak, cfg.pseudo_label, cfg.parallel, cfg.device, tmp_path_factory.mktemp("pseudo"),
                    soft=False)
    clean, findings = check_all_pseudo(hand_data, raw, cfg.governance)
    return labels, weak, raw, clean, findings


def self_train_config(workspace: Path, policy_: str, *more: str) -> Config:
    return load_config(None, [f"tracking.workspace={workspace}", "weak_train.model=mlp", "weak_train.hidden=[32]",
                              "full_train.model=mlp", "full_train.hidden=[32]", "weak_train.epochs=3",
                              "full_train.epochs=2", "pseudo_label.policy=fixed", "pseudo_label.threshold=0.0",
                              "full_train.strategy=self_train", f"governance.pseudo_near_test={policy_}", *more])


def final_sections(cfg: Config) -> tuple:
    """The full_train stage's sections after its inputs, as the composition passes them."""
    return cfg.full_train, cfg.selection, cfg.pseudo_label, cfg.parallel, cfg.governance


def test_the_pseudo_sets_of_every_weak_model_are_checked(hand_data, real_weak):
    _, _, raw, clean, findings = real_weak
    planted_ids = set(hand_data.rows("unlabeled").head(7)[ROW_ID])
    for before, after in zip((raw.refit, *raw.folds), (clean.refit, *clean.folds)):
        assert planted_ids <= set(before.kept[ROW_ID])  # threshold 0 keeps every candidate
        assert not planted_ids & set(after.kept[ROW_ID]) and after.kept_count == before.kept_count - 7
        assert len(pd.read_parquet(before.path)) == before.kept_count  # the unchecked set is left as it was
    assert findings.count("pseudo_near_test") == 7
    assert findings.dropped == {"pseudo": 7, "pseudo_fold0": 7, "pseudo_fold1": 7, "pseudo_fold2": 7}


def test_every_self_training_round_passes_its_relabelled_sets_through_pseudo_near_test(hand_data, real_weak,
                                                                                      tmp_path):
    from weakflow.tasks.full_train import FinalSetup, self_training

    labels, weak, _, clean, _ = real_weak
    cfg = self_train_config(tmp_path, "drop", "full_train.self_train.max_rounds=2",
                            "full_train.self_train.min_growth=0", "full_train.self_train.dev_tolerance=1")
    seen = []
    final = self_training(hand_data, labels, weak, clean, FinalSetup(RunContext.of(cfg), *final_sections(cfg)),
                          on_round=seen.append)
    planted_ids = set(hand_data.rows("unlabeled").head(7)[ROW_ID])
    # round 1's students relabelled every candidate, the planted copies too: the check found and dropped them
    found = seen[0].model.relabel_findings
    assert found.count("pseudo_near_test") == 7
    assert found.dropped == {"pseudo": 7, "pseudo_fold0": 7, "pseudo_fold1": 7, "pseudo_fold2": 7}
    assert len(seen) == 2 and final.pseudo.round == 1
    trained = final.provenance
    assert not planted_ids & set(trained.loc[trained["label_source"].str.startswith("pseudo"), ROW_ID])
    assert final.pseudo.kept_count == seen[0].relabelled == 200 - 7 + 200  # unlabeled + weak rows, copies gone


def test_a_failed_round_check_is_logged_in_the_round_run_and_stops_training(hand_data, real_weak, tmp_path,
                                                                             local_mlflow):
    from weakflow.tasks import full_train

    client, exp = local_mlflow
    labels, weak, _, clean, _ = real_weak
    cfg = self_train_config(tmp_path, "fail", "full_train.self_train.max_rounds=3")
    args = (RunContext.of(cfg), hand_data, labels, weak, clean, *final_sections(cfg))
    with (mlflow.start_run(experiment_id=exp) as parent,
          pytest.raises(GovernanceError, match="pseudo_near_test: 7") as failed):
        try:
            full_train.STAGE.compute(*args)
        except GovernanceError as exc:  # what the flow's runner does with a failed stage: record, re-raise
            full_train.STAGE.record_error(exc, *args)
            raise
    assert [r.index for r in failed.value.rounds] == [1]  # round 2 never trained on the contaminated sets
    (rnd,) = client.search_runs([exp], "tags.`weakflow.stage` = 'self_train_round_1'")
    assert rnd.data.tags["mlflow.parentRunId"] == parent.info.run_id  # nested under the full_train stage run
    assert rnd.data.tags["governance"] == "failed" and rnd.data.metrics["pseudo_near_test_found"] == 7
    table = pd.read_parquet(client.download_artifacts(rnd.info.run_id, "governance/pseudo_near_test.parquet"))
    assert sorted(table["test_index"]) == sorted(EXACT_TEST_ROWS + NEAR_TEST_ROWS)


def test_the_model_card_describes_the_set_the_final_model_trained_on_and_the_recorded_validation(
        hand_data, tmp_path):
    """Self-training chose round 2, which trained on round 1's relabelled set: the card gives that set's
    size (not the weak model's), says its precision was not measured, lists each round's check; the
    validation text comes from the validate stage's report (and names its run) and says the test-overlap
    expectation was off."""
    from types import SimpleNamespace

    from weakflow.tasks.core.selftrain import Round, SelfTrainResult
    from weakflow.tasks.lib.checks import CheckResult, Findings
    from weakflow.tasks.lib.results import FullModel
    from weakflow.data_checks.suite import ValidationReport
    from weakflow.data_checks.suite import Validated
    from weakflow.tasks.register import Methods, Provenance, model_card, validation_result

    validated = Validated(hand_data, ValidationReport(True, 431), run_id="validate-run-7")
    cfg = policy("governance.exact_duplicates=drop", "full_train.strategy=self_train")
    validation = validation_result(validated, cfg.governance.exact_duplicates)
    assert validation.passed
    round1_set = planted_pseudo(hand_data, tmp_path, rows=57, round_=1)
    checked = Findings({"pseudo_near_test": pd.DataFrame({ROW_ID: [1, 2]})}, {"pseudo_near_test": "dropped 2 row(s)"},
                       {"pseudo": 2})
    final = FullModel(None, None, pseudo=round1_set)  # round 2 trained on round 1's relabelled set
    final.rounds = SelfTrainResult([Round(1, FullModel(None, None, relabel_findings=checked), 0.9, 40, 59),
                                    Round(2, final, 0.91, 57)], chosen=1)
    score = SimpleNamespace(accuracy=0.9321, macro_f1=0.9288, ece=0.0417)
    evaluation = SimpleNamespace(shipped=score, gold_only=SimpleNamespace(accuracy=0.8811, macro_f1=0.8765),
                                 weak=SimpleNamespace(accuracy=0.8502), shipped_name="final")
    prov = Provenance([{"source": "weak_label", "coverage": 0.61, "accuracy": 0.83}], 40, 0.912,
                      {"pseudo_near_test": CheckResult(0, "none")}, {})
    card = model_card(hand_data, evaluation, cfg.tracking.model_name, Methods.of(cfg), prov, "3", "challenger",
                      "all gates passed", validation, final)
    assert f"| pseudo-labelled ({cfg.pseudo_label.policy}; the set relabelled by self-training round 1's student) | 57 |" in card
    assert "(the set relabelled by self-training round 1's student): n/a (not measured" in card
    assert "0.912" not in card and "| 40 |" not in card  # the weak model's set is not what it trained on
    assert "pseudo_near_test (round 1 relabel) | 2 found; dropped 2 row(s)" in card
    assert "pseudo_round_1': 2" in card and "| weak_label | 0.61 | 0.17 |" in card
    assert "| this model | 0.9321 | 0.9288 | 0.0417 |" in card and "| gold-only baseline | 0.8811 | 0.8765 |" in card
    assert ("passed: Great Expectations suite before any training (431 expectations evaluated, 0 failed; validate "
            "run validate-run-7)") in card
    assert "expectation off (governance.exact_duplicates = drop)" in card
    assert "expectation ran" in validation_result(validated, policy().governance.exact_duplicates).text
    failed = validation_result(Validated(hand_data, ValidationReport(False, 431)), "drop")
    assert not failed.passed and failed.text.startswith("failed: ")


def planted(spec, folder):
    train, test = pd.read_parquet(spec.train_path), pd.read_parquet(spec.test_path)
    rng = np.random.default_rng(0)
    feats = spec.feature_columns
    train[feats] = train[feats].astype("float64")  # the jittered copies are not float32-exact
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


@pytest.mark.slow  # ~17 s
def test_drop_and_warn_policies_record_counts_and_the_model_card(prefect_harness, tmp_path, demo_root):
    from weakflow.flows.pipeline import training_pipeline

    data = planted(materialize_demo(DemoData(), demo_root), tmp_path / "data")
    cfg = fast_config(tmp_path / "ws", *data, "governance.exact_duplicates=drop", "governance.near_duplicates=drop",
                      "governance.label_leakage=warn", "selection.ship=final")  # the card of the pseudo-labelled model
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
    assert mv.tags["governance"] == "warned" and mv.tags["validation"] == "passed"  # leakage only warned
    card = mv.description
    assert "# Model card" in card and "near_duplicates | 3 found; dropped 3 row(s)" in card
    assert "label_leakage | 1 found; warned" in card and "Verdict: warned." in card
    # the card's numbers are this run's numbers
    e, weak = result.evaluation, runs["weak_labels"].data.metrics
    assert f"| this model | {e.shipped.accuracy:.4f} | {e.shipped.macro_f1:.4f} |" in card
    assert f"| gold-only baseline | {e.gold_only.accuracy:.4f} | {e.gold_only.macro_f1:.4f} |" in card
    assert f"| weak_label | {weak['source_weak_label_coverage']:.2f} | {1 - weak['source_weak_label_gold_accuracy']:.2f} |" in card
    pseudo_rows = int(runs["full_train"].data.metrics["train_rows_pseudo"])
    assert f"| pseudo-labelled ({cfg.pseudo_label.policy}; the weak model's pseudo set) | {pseudo_rows} |" in card
    # validation: the recorded result, and the test-overlap expectation was off under exact_duplicates=drop
    evaluated = int(runs["validate"].data.metrics["expectations_evaluated"])
    assert f"passed: Great Expectations suite before any training ({evaluated} expectations evaluated, 0 failed" in card
    assert "expectation off (governance.exact_duplicates = drop)" in card
    assert "model_card.md" in {a.path for a in client.list_artifacts(runs["register"].info.run_id)}


@pytest.mark.parametrize("policies, message", [
    (["governance.exact_duplicates=warn", "governance.near_duplicates=fail", "governance.label_leakage=warn"],
     "near_duplicates: 3 training row(s) within"),
    (["governance.exact_duplicates=warn", "governance.near_duplicates=warn"],
     "label_leakage: feature(s) leak (1.000) predict the gold label alone"),
])
def test_fail_policy_stops_before_training_and_registers_nothing(prefect_harness, tmp_path, demo_root, policies, message):
    from weakflow.flows.pipeline import training_pipeline

    data = planted(materialize_demo(DemoData(), demo_root), tmp_path / "data")
    cfg = fast_config(tmp_path / "ws", *data, *policies)
    with pytest.raises(GovernanceError, match=re.escape(message)):
        training_pipeline(cfg)
    client, runs = stage_runs(cfg)
    assert client.search_registered_models() == []
    assert {name for name, r in runs.items() if r.data.tags["weakflow.stage"] != "pipeline"} == {"validate", "governance"}
    gov = runs["governance"].data
    assert gov.tags["governance"] == "failed"
    # every check ran and logged its counts and table before the run stopped
    assert (gov.metrics["exact_duplicates_found"], gov.metrics["near_duplicates_found"],
            gov.metrics["label_leakage_found"]) == (2, 3, 1)
    near = pd.read_parquet(client.download_artifacts(runs["governance"].info.run_id, "governance/near_duplicates.parquet"))
    assert sorted(near["test_index"]) == [15, 16, 23]


def test_exact_copies_fail_validation_under_the_default_policy(prefect_harness, tmp_path, demo_root):
    from weakflow.flows.pipeline import training_pipeline
    from weakflow.tasks.lib.data import DataError

    data = planted(materialize_demo(DemoData(), demo_root), tmp_path / "data")
    with pytest.raises(DataError, match="test_rows_in_training.training_copies: expected no test row"):
        training_pipeline(fast_config(tmp_path / "ws", *data))

import numpy as np
import pandas as pd
import pytest

from weakflow.tasks.lib.config import DemoData, NoiseConfig
from weakflow.tasks.lib.data import FOLD, PROVENANCE, ROW_ID, SPLIT, assemble, class_set, feature_hashes, materialize_demo, read_raw


@pytest.fixture(scope="module")
def demo(demo_root):
    spec = materialize_demo(DemoData(), demo_root)
    raw = read_raw(spec)
    return spec, raw, assemble(raw, class_set(raw))


def test_splits_sizes_and_provenance(demo):
    spec, raw, data = demo
    assert len(raw.test) == 360  # 20% of 1797, stratified
    n_rest = 1797 - 360
    counts = data.provenance_counts()
    assert counts["gold"] == pytest.approx(0.1 * n_rest, abs=1)
    assert counts["unlabeled"] == pytest.approx(0.3 * (n_rest - counts["gold"]), abs=1)
    assert sum(counts.values()) == n_rest
    assert set(raw.train[PROVENANCE]) == {"gold", "weak", "unlabeled"}  # stored in the Parquet itself
    # the gold rows are cut into 3 stratified cross-fitting folds: every class in every fold
    gold = data.train[data.train[PROVENANCE] == "gold"]
    assert set(gold[SPLIT]) == {"gold"} and sorted(gold[FOLD].unique()) == [0, 1, 2]
    assert gold.groupby(FOLD)["label"].nunique().min() == 10
    assert (data.train.loc[data.train[PROVENANCE] != "gold", FOLD] == -1).all()
    # a fold's view trains on the other folds' gold rows and is judged on its own
    view = data.fold_view(1)
    assert set(view.rows("gold_dev")[FOLD]) == {1} and set(view.rows("gold_train")[FOLD]) == {0, 2}
    assert len(data.rows("gold_train")) == len(gold) and data.rows("gold_dev").empty  # the refit: all gold
    # only gold rows carry a gold label; the annotator labelled weak and gold rows
    assert data.train.loc[data.train[PROVENANCE] != "gold", "label"].isna().all()
    assert (data.train.loc[data.train[PROVENANCE] == "unlabeled", "weak_label"] == -1).all()
    assert (data.train.loc[data.train[PROVENANCE] != "unlabeled", "weak_label"] != -1).all()


def test_test_split_is_never_in_training(demo, demo_root):
    spec, raw, data = demo
    truth = pd.read_parquet(spec.train_path.parent / "truth.parquet")
    test_ids = set(truth[ROW_ID]) - set(raw.train[ROW_ID])
    assert len(test_ids) == len(raw.test)
    overlap = set(feature_hashes(raw.test, spec.feature_columns)) & set(feature_hashes(raw.train, spec.feature_columns))
    assert not overlap


def test_weak_noise_matches_config(demo):
    spec, raw, _ = demo
    truth = pd.read_parquet(spec.train_path.parent / "truth.parquet").set_index(ROW_ID)["true_label"]
    weak = raw.train[raw.train[PROVENANCE] == "weak"]
    noise = (weak["weak_label"].to_numpy() != truth.loc[weak[ROW_ID]].to_numpy()).mean()
    assert noise == pytest.approx(0.4, abs=0.05)


def test_deterministic_and_keyed_by_settings(tmp_path):
    a = materialize_demo(DemoData(seed=3), tmp_path)
    b = materialize_demo(DemoData(seed=3), tmp_path / "again")
    pd.testing.assert_frame_equal(pd.read_parquet(a.train_path), pd.read_parquet(b.train_path))
    c = materialize_demo(DemoData(seed=3, noise=NoiseConfig(kind="pairflip", rate=0.2)), tmp_path)
    assert c.train_path != a.train_path
    weak_a = pd.read_parquet(a.train_path)["weak_label"]
    weak_c = pd.read_parquet(c.train_path)["weak_label"]
    assert not np.array_equal(weak_a, weak_c)


def test_files_derive_provenance_from_labels(tmp_path):
    from weakflow.tasks.lib.config import FilesData

    train = pd.DataFrame({"a": [1.0, 2, 3, 4, 5, 6], "b": [0.0] * 6, "y": [0, 1, None, None, 0, 1],
                          "w1": [-1, -1, 1, -1, -1, -1], "w2": [None, None, None, -1, None, None]})
    test = pd.DataFrame({"a": [9.0, 8], "b": [1.0, 1], "y": [0, 1]})
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    spec = FilesData(train_path=tmp_path / "train.csv", test_path=tmp_path / "test.csv", feature_columns=["a", "b"],
                     label_column="y", weak_label_columns=["w1", "w2"])
    raw = read_raw(spec)
    assert class_set(raw) == [0, 1]
    data = assemble(raw, class_set(raw), folds=3)
    assert data.train[PROVENANCE].tolist() == ["gold", "gold", "weak", "unlabeled", "gold", "gold"]
    assert sorted(data.train[SPLIT].value_counts().items()) == [("gold", 4), ("unlabeled", 1), ("weak", 1)]
    # two gold rows per class: at most two folds, each with one row of each class
    assert data.folds == 2 and sorted(data.train[FOLD].tolist()) == [-1, -1, 0, 0, 1, 1]

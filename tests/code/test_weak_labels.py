"""make_weak_labels on a hand-made table: which rows train, and what is counted."""

import numpy as np
import pandas as pd
import pytest

from weakflow.tasks.lib.config import FilesData, load_config
from weakflow.tasks.lib.data import RawTables, assemble
from weakflow.tasks.weak_labels import make_weak_labels

# rows 0-3 gold (two per class); 4: both vote 1; 5: tie 0 vs 1; 6: only w2 votes 0; 7: nobody votes
TRAIN = pd.DataFrame({
    "a": np.arange(8, dtype=float), "y": [0, 0, 1, 1, None, None, None, None],
    "w1": [0, 1, 1, 1, 1, 0, -1, -1], "w2": [0, 0, 1, 0, 1, 1, 0, -1],
})
TEST = pd.DataFrame({"a": [10.0, 11.0], "y": [0, 1]})


def weak_labels(*overrides: str):
    spec = FilesData(train_path="t.csv", test_path="s.csv", feature_columns=["a"], label_column="y",
                     weak_label_columns=["w1", "w2"])
    data = assemble(RawTables(TRAIN.copy(), TEST.copy(), spec), [0, 1])
    return make_weak_labels(data, load_config(None, list(overrides)))


def test_majority_counts_non_gold_ties_and_abstains_and_drops_abstained_tie():
    wl = weak_labels("weak_labels.aggregation=majority", "weak_labels.tie_break=abstain")
    assert wl.figures["ties"] == 1 and wl.figures["all_abstain"] == 1  # gold rows 1 and 3 tie too: not counted
    assert wl.row_ids.tolist() == [4, 6] and wl.hard.tolist() == [1, 0]
    assert wl.figures["weak_training_rows"] == 2


def test_lowest_tie_break_keeps_the_tied_row_and_soft_labels_are_vote_shares():
    wl = weak_labels("weak_labels.aggregation=majority", "weak_labels.tie_break=lowest", "weak_labels.soft_labels=true")
    assert wl.row_ids.tolist() == [4, 5, 6] and wl.hard.tolist() == [1, 0, 0]
    assert wl.soft.tolist() == [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]


def test_source_accuracy_is_measured_on_gold_rows():
    stats = weak_labels().stats.set_index("source")
    assert stats.loc["w1", "accuracy"] == pytest.approx(3 / 4)  # row 1 says 1, gold 0
    assert stats.loc["w2", "accuracy"] == pytest.approx(3 / 4)  # row 3 says 0, gold 1


def test_dawid_skene_labels_only_non_gold_rows():
    wl = weak_labels("weak_labels.aggregation=dawid_skene", "weak_labels.soft_labels=true")
    assert set(wl.row_ids) <= {4, 5, 6}
    assert np.allclose(wl.soft.sum(axis=1), 1.0)
    assert set(wl.confusion) == {"w1", "w2"}

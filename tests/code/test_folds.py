"""The gold rows' cross-fitting folds: stratified, and copies of one row never split across folds."""

import numpy as np

from weakflow.tasks.core.folds import gold_folds


def test_copies_of_a_gold_row_share_a_fold() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 30)
    groups = np.arange(len(y))
    twins = rng.choice(len(y), size=(15, 2), replace=False)
    for a, b in twins:
        groups[b] = groups[a]
    folds = gold_folds(y, 3, seed=0, groups=groups)
    for a, b in twins:
        assert folds[a] == folds[b]
    assert np.bincount(folds).min() >= 20  # still three usable folds
    for c in range(3):
        assert len(np.unique(folds[y == c])) == 3  # every fold holds every class


def test_folds_are_stratified_without_groups() -> None:
    y = np.repeat([0, 1], [40, 8])
    folds = gold_folds(y, 3, seed=1)
    assert sorted(np.bincount(folds[y == 1]).tolist()) == [2, 3, 3]

"""The gold rows' cross-fitting folds (numpy only: the data layer assigns them without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def gold_folds(y_gold: np.ndarray, k: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Fold index (0..k'-1) per gold row, stratified by class; k' = min(k, the smallest class's rows),
    at least 2, so every fold sees every class where it can. ``groups`` (e.g. the normalised text)
    keeps copies of one row in one fold, or a copy would be judged by a model trained on its twin."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y_gold = np.asarray(y_gold)
    if len(y_gold) < 2:
        raise ValueError(f"cross-fitting needs at least 2 gold rows, got {len(y_gold)}")
    smallest = int(np.bincount(y_gold)[np.bincount(y_gold) > 0].min())
    k = max(2, min(k, smallest))
    folds = np.zeros(len(y_gold), dtype=np.int64)
    if smallest < 2:  # a class with one gold row: plain shuffled folds (that row is judged by the others)
        order = np.random.default_rng(seed).permutation(len(y_gold))
        folds[order] = np.arange(len(y_gold)) % k
        return folds
    if groups is not None and len(np.unique(groups)) < len(groups):
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y_gold)), y_gold, groups)
    else:
        splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y_gold)), y_gold)
    for f, (_, held) in enumerate(splits):
        folds[held] = f
    return folds


@dataclass(frozen=True)
class GoldFolds:
    """Where the gold rows are in the training arrays, their class and their fold."""

    rows: np.ndarray  # index of each gold row in x
    y: np.ndarray  # class index per gold row
    fold: np.ndarray  # fold per gold row

    @property
    def k(self) -> int:
        return int(self.fold.max()) + 1 if len(self.fold) else 0

    def held_out(self, f: int) -> np.ndarray:
        """Positions (into ``rows``) of fold f's gold rows."""
        return np.flatnonzero(self.fold == f)

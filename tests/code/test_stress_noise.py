"""The stress matrix's simulated weak sources (bench/stress.py) do what their names promise: flip rates near
their targets, flips only where they may go, abstains where they should be, look-alike pairs that really
are nearest class means, labelling functions inside their coverage band."""

from __future__ import annotations

import numpy as np
import pytest

from bench import stress
from weakflow.tasks.core.models import ModelSpec

N = 30_000
# the brief's targets, spelled out here so a changed constant in bench/stress.py fails the tests
ANNOTATORS, ANNOTATOR_SHARE, UNLABELED = (0.9, 0.7, 0.55), 0.6, 0.3
LF_COVERAGE, LF_ACCURACY = (0.15, 0.40), (0.60, 0.85)


def labels(k: int) -> np.ndarray:
    return np.random.default_rng(7).permutation(np.arange(N) % k)


def rng() -> np.random.Generator:
    return np.random.default_rng(11)


def no_features(n: int) -> np.ndarray:
    return np.zeros((n, 1), dtype=np.float32)


def flip_rate(y: np.ndarray, votes: np.ndarray, c: int | None = None) -> float:
    rows = np.ones(len(y), bool) if c is None else y == c
    return float((votes[rows] != y[rows]).mean())


@pytest.mark.parametrize("k", [2, 5])
def test_symmetric_flips_half_to_every_other_class(k):
    y = labels(k)
    votes = stress.symmetric(y, no_features(N), k, rng())
    v = votes.matrix[:, 0]
    assert votes.single and (v != stress.ABSTAIN).all()
    assert flip_rate(y, v) == pytest.approx(0.5, abs=0.015)
    offsets = np.bincount(((v - y) % k)[v != y], minlength=k)
    assert offsets[0] == 0 and offsets[1:].min() / offsets[1:].max() > 0.9


def test_pairflip_moves_forty_percent_to_the_next_class():
    k = 5
    y = labels(k)
    v = stress.pairflip(y, no_features(N), k, rng()).matrix[:, 0]
    assert flip_rate(y, v) == pytest.approx(0.4, abs=0.015)
    assert ((v == y) | (v == (y + 1) % k)).all()


@pytest.mark.parametrize("k", [2, 6])
def test_asymmetric_rates_per_class(k):
    y = labels(k)
    v = stress.asymmetric(y, no_features(N), k, rng()).matrix[:, 0]
    expected = [0.4, 0.1] if k == 2 else np.linspace(0.1, 0.5, k)
    for c in range(k):
        assert flip_rate(y, v, c) == pytest.approx(expected[c], abs=0.03), c
    assert (v >= 0).all() and (v < k).all()


def paired_features(y: np.ndarray) -> np.ndarray:
    """Class means (0,0)/(0,1), (10,0)/(10,1.5) and a lone class at (20,20): pairs {0,3}, {1,4}; 2 alone."""
    centres = np.array([[0, 0], [10, 0], [20, 20], [0, 1], [10, 1.5]])
    return centres[y] + np.random.default_rng(3).normal(0, 0.2, (len(y), 2))


def test_lookalike_pairs_are_mutual_nearest_class_means_and_flip_to_the_partner():
    k = 5
    y = labels(k)
    x = paired_features(y)
    pairs = stress.lookalike_pairs(x, y, k)
    assert sorted(tuple(sorted(p)) for p in pairs) == [(0, 3), (1, 4)]
    z = stress.standardise(x)
    means = np.stack([z[y == c].mean(0) for c in range(k)])
    dist = np.linalg.norm(means[:, None] - means[None], axis=2) + np.diag(np.full(k, np.inf))
    for a, b in pairs:
        assert dist[a].argmin() == b and dist[b].argmin() == a
    v = stress.lookalike(y, x, k, rng()).matrix[:, 0]
    partner = {0: 3, 3: 0, 1: 4, 4: 1}
    for c, p in partner.items():
        assert flip_rate(y, v, c) == pytest.approx(0.45, abs=0.03)
        assert set(np.unique(v[y == c])) == {c, p}
    assert flip_rate(y, v, 2) == 0.0  # odd class count: one class stays clean


def test_lookalike_first_pair_is_the_closest_on_real_data():
    ds = stress.load_dataset("digits")
    pairs = stress.lookalike_pairs(ds.x, ds.y, 10)
    assert len(pairs) == 5 and sorted(c for p in pairs for c in p) == list(range(10))
    z = stress.standardise(ds.x.astype(np.float64))
    means = np.stack([z[ds.y == c].mean(0) for c in range(10)])
    dist = np.linalg.norm(means[:, None] - means[None], axis=2) + np.diag(np.full(10, np.inf))
    assert dist[pairs[0]] == pytest.approx(dist.min())


def test_annotators_accuracy_and_abstain_share():
    k = 4
    y = labels(k)
    votes = stress.annotators(y, no_features(N), k, rng())
    assert not votes.single and votes.matrix.shape == (N, 3)
    for s, acc in enumerate(ANNOTATORS):
        v = votes.matrix[:, s]
        voted = v != stress.ABSTAIN
        assert voted.mean() == pytest.approx(ANNOTATOR_SHARE, abs=0.015)
        assert (v[voted] == y[voted]).mean() == pytest.approx(acc, abs=0.015)
        assert ((v[voted] >= 0) & (v[voted] < k)).all()
    independent = (votes.matrix != stress.ABSTAIN).mean(0).prod()
    assert ((votes.matrix != stress.ABSTAIN).all(1)).mean() == pytest.approx(independent, abs=0.015)


def informative_features(y: np.ndarray, k: int) -> np.ndarray:
    """Two noisy features per class, each higher on its class."""
    g = np.random.default_rng(5)
    return np.stack([(y == j % k) * 1.0 + g.normal(0, 1.0, len(y)) for j in range(2 * k)], axis=1)


def test_labelling_functions_coverage_accuracy_and_abstains():
    k = 3
    y = labels(k)
    x = informative_features(y, k)
    votes = stress.lfs(y, x, k, rng())
    assert votes.matrix.shape == (N, 2 * k) and not votes.single
    assert sorted(np.bincount([int(n.split("_")[1]) for n in votes.sources])) == [2, 2, 2]
    for s, name in enumerate(votes.sources):
        v = votes.matrix[:, s]
        target = int(name.split("_")[1])
        fires = v != stress.ABSTAIN
        assert set(np.unique(v)) == {stress.ABSTAIN, target}  # one class or abstain
        lo, hi = LF_COVERAGE
        assert lo <= fires.mean() <= hi
        assert votes.metrics[f"{name}_coverage"] == pytest.approx(fires.mean())
        acc = (y[fires] == target).mean()
        assert votes.metrics[f"{name}_accuracy"] == pytest.approx(acc)
        assert LF_ACCURACY[0] - 0.01 <= acc <= LF_ACCURACY[1] + 0.01
        assert name in votes.params  # the rule is recorded


def test_majority_vote_ties_random_and_no_vote_abstains():
    votes = np.array([[1, 1, 2], [-1, -1, -1], [0, 2, -1]] * 2000)
    mv = stress.majority_vote(votes, 3, rng())
    assert (mv[0::3] == 1).all() and (mv[1::3] == -1).all()
    tie = mv[2::3]
    assert set(np.unique(tie)) == {0, 2} and 0.45 < (tie == 0).mean() < 0.55


def test_cell_splits_single_annotator_leaves_thirty_percent_unlabeled_and_gold_voted():
    k, n = 3, 3000
    y = np.arange(n) % k
    ds = stress.Dataset("toy", informative_features(y, k).astype(np.float32), y.astype(np.int64),
                        ModelSpec("mlp", 2 * k, k, hidden=(8,)))
    cell = stress.make_cell(ds, "symmetric", 0.05, 0)
    assert len(cell.y_test) == n * 0.2
    assert np.bincount(cell.y[cell.gold]).min() >= 2
    assert cell.gold.mean() == pytest.approx(0.05, abs=0.005)
    voted = (cell.votes.matrix != stress.ABSTAIN).any(1)
    assert voted[cell.gold].all()  # gold rows carry the annotator's vote
    assert (~voted[~cell.gold]).mean() == pytest.approx(UNLABELED, abs=0.002)
    same = stress.make_cell(ds, "symmetric", 0.1, 0)
    assert (same.x_test == cell.x_test).all()  # the test split is frozen across gold shares

import subprocess
import sys

import numpy as np
import pytest

from weakflow.tasks.core.aggregate import dawid_skene, majority_vote, source_statistics

# 4 sources, 3 classes; -1 = abstain.
VOTES = np.array([
    [0, 0, 1, -1],    # clear winner 0 (2 vs 1)
    [1, 2, -1, -1],   # tie between 1 and 2
    [-1, -1, -1, -1],  # nobody votes
    [2, 2, 2, 0],     # clear winner 2
    [0, 1, 2, -1],    # three-way tie
])


def test_majority_vote_hand_table_lowest():
    mv = majority_vote(VOTES, 3, tie_break="lowest")
    assert mv.labels.tolist() == [0, 1, -1, 2, 0]
    assert mv.labels.dtype == np.int64
    assert mv.ties == 2
    assert mv.all_abstain == 1
    np.testing.assert_allclose(mv.soft, [
        [2 / 3, 1 / 3, 0],
        [0, 0.5, 0.5],
        [1 / 3, 1 / 3, 1 / 3],
        [0.25, 0, 0.75],
        [1 / 3, 1 / 3, 1 / 3],
    ])


def test_majority_vote_tie_abstain():
    mv = majority_vote(VOTES, 3, tie_break="abstain")
    assert mv.labels.tolist() == [0, -1, -1, 2, -1]
    assert (mv.ties, mv.all_abstain) == (2, 1)


def test_majority_vote_tie_random_picks_only_tied_classes_uniformly():
    labels = np.array([majority_vote(VOTES, 3, tie_break="random", seed=s).labels for s in range(300)])
    assert (labels[:, [0, 2, 3]] == [0, -1, 2]).all()  # untied rows never change
    assert set(labels[:, 1]) == {1, 2}  # only the tied classes, never 0
    assert set(labels[:, 4]) == {0, 1, 2}
    assert 0.35 < (labels[:, 1] == 1).mean() < 0.65
    # Same seed, same answer.
    assert majority_vote(VOTES, 3, seed=7).labels.tolist() == majority_vote(VOTES, 3, seed=7).labels.tolist()


def test_majority_vote_many_rows_matches_a_loop():
    rng = np.random.default_rng(1)
    votes = rng.integers(-1, 4, size=(500, 6))
    mv = majority_vote(votes, 4, tie_break="lowest")
    for row, label in zip(votes, mv.labels):
        counts = np.bincount(row[row >= 0], minlength=4)
        assert label == (counts.argmax() if counts.sum() else -1)


@pytest.mark.parametrize(
    ("votes", "match"),
    [
        (np.array([0, 1]), "2-D"),
        (np.array([[0.0, 1.0]]), "integer"),
        (np.array([[0, 1], [0, 3]]), r"vote 3 in source column 1"),
        (np.array([[0, -2]]), r"vote -2 in source column 1"),
    ],
)
def test_bad_votes_raise(votes, match):
    with pytest.raises(ValueError, match=match):
        majority_vote(votes, 3)
    with pytest.raises(ValueError, match=match):
        dawid_skene(votes, 3)


def _synthetic(n: int = 2000, seed: int = 0):
    """3 classes, 5 sources: three good, one weak, one adversarial (says the next class); 30% abstain."""
    rng = np.random.default_rng(seed)
    prior = np.array([0.5, 0.3, 0.2])
    truth = rng.choice(3, size=n, p=prior)

    def noisy(acc: float) -> np.ndarray:
        off = (1 - acc) / 2
        return np.full((3, 3), off) + np.eye(3) * (acc - off)

    adversarial = np.array([[0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.8, 0.1, 0.1]])
    confusion = np.stack([noisy(0.85), noisy(0.75), noisy(0.7), noisy(0.5), adversarial])
    votes = np.empty((n, 5), dtype=np.int64)
    for s in range(5):
        cumulative = confusion[s][truth].cumsum(axis=1)
        votes[:, s] = (rng.random((n, 1)) < cumulative).argmax(axis=1)
    votes[rng.random((n, 5)) < 0.3] = -1
    votes[:20] = -1  # some rows nobody labels
    return votes, truth, confusion, prior


def test_dawid_skene_beats_majority_vote_and_recovers_sources():
    votes, truth, confusion, prior = _synthetic()
    ds = dawid_skene(votes, 3)
    mv = majority_vote(votes, 3, tie_break="lowest")
    labelled = (votes >= 0).any(axis=1)
    ds_acc = (ds.labels[labelled] == truth[labelled]).mean()
    mv_acc = (mv.labels[labelled] == truth[labelled]).mean()
    assert ds_acc > mv_acc + 0.03, (ds_acc, mv_acc)
    # Each source's accuracy (prior-weighted diagonal mass) within 0.05 of the truth; the per-class
    # diagonal within 0.1 (class 2 has only ~280 votes per source, so sampling noise is ~0.03).
    true_diag = np.diagonal(confusion, axis1=1, axis2=2)
    est_diag = np.diagonal(ds.confusion, axis1=1, axis2=2)
    np.testing.assert_allclose(ds.source_accuracy, true_diag @ prior, atol=0.05)
    np.testing.assert_allclose(est_diag, true_diag, atol=0.1)
    assert ds.source_accuracy[4] < 0.15  # the adversarial source is recognised as such
    np.testing.assert_allclose(ds.prior, prior, atol=0.05)
    assert ds.converged and ds.iterations == len(ds.log_likelihood) <= 100


def test_dawid_skene_invariants():
    votes, _, _, _ = _synthetic(n=600, seed=3)
    ds = dawid_skene(votes, 3, tol=1e-9)
    assert np.all(np.diff(ds.log_likelihood) >= -1e-6)
    np.testing.assert_allclose(ds.posterior.sum(axis=1), 1.0)
    np.testing.assert_allclose(ds.confusion.sum(axis=2), 1.0)
    assert ds.prior.sum() == pytest.approx(1.0)
    nobody = (votes < 0).all(axis=1)
    assert nobody.sum() >= 20
    np.testing.assert_allclose(ds.posterior[nobody], np.tile(ds.prior, (nobody.sum(), 1)))
    assert (ds.labels[nobody] == -1).all() and (ds.labels[~nobody] >= 0).all()
    assert ds.labels.dtype == np.int64


def test_dawid_skene_stops_at_max_iter_and_accepts_init():
    votes, truth, _, _ = _synthetic(n=300, seed=5)
    short = dawid_skene(votes, 3, max_iter=2, tol=0.0)
    assert short.iterations == 2 and not short.converged and len(short.log_likelihood) == 2
    init = np.eye(3)[truth]  # start from the truth: EM should stay close to it
    ds = dawid_skene(votes, 3, init=init)
    labelled = (votes >= 0).any(axis=1)
    assert (ds.labels[labelled] == truth[labelled]).mean() > 0.8
    with pytest.raises(ValueError, match="init must have shape"):
        dawid_skene(votes, 3, init=np.ones((3, 3)))


def test_dawid_skene_unanimous_sources_are_trusted():
    votes = np.array([[0, 0], [1, 1], [0, 0], [1, 1], [-1, -1]])
    ds = dawid_skene(votes, 2)
    assert ds.labels.tolist() == [0, 1, 0, 1, -1]
    assert (np.diagonal(ds.confusion, axis1=1, axis2=2) > 0.95).all()
    assert ds.prior == pytest.approx([0.5, 0.5])


# Sources a, b, c over 5 rows.
STATS_VOTES = np.array([
    [0, 0, -1],   # a, b agree
    [0, 1, -1],   # a, b conflict
    [1, -1, -1],  # a alone
    [-1, 2, 2],   # b, c agree
    [-1, -1, -1],
])
GOLD = np.array([0, 1, 1, -1, 2])


def test_source_statistics_hand_table():
    a, b, c = source_statistics(STATS_VOTES, ["a", "b", "c"], gold=GOLD)
    # a: rows 0 (right), 1 (says 0, gold 1: wrong), 2 (right)
    assert a.pop("accuracy") == pytest.approx(2 / 3)
    assert a == {"source": "a", "coverage": 0.6, "overlap": 0.4, "conflict": 0.2, "votes": 3, "gold_rows": 3}
    # b: rows 0 (right), 1 (right), 3 (gold unknown, not judged)
    assert b == {"source": "b", "coverage": 0.6, "overlap": 0.6, "conflict": 0.2, "votes": 3,
                 "gold_rows": 2, "accuracy": 1.0}
    assert c == {"source": "c", "coverage": 0.2, "overlap": 0.2, "conflict": 0.0, "votes": 1,
                 "gold_rows": 0, "accuracy": None}


def test_source_statistics_accuracy_and_no_gold():
    stats = source_statistics(STATS_VOTES, ["a", "b", "c"], gold=np.array([1, 1, 0, 2, -1]))
    assert [s["accuracy"] for s in stats] == [pytest.approx(0.0), pytest.approx(2 / 3), 1.0]
    plain = source_statistics(STATS_VOTES, ["a", "b", "c"])
    assert "accuracy" not in plain[0] and "gold_rows" not in plain[0]
    with pytest.raises(ValueError, match="2 source names for 3"):
        source_statistics(STATS_VOTES, ["a", "b"])
    with pytest.raises(ValueError, match="gold"):
        source_statistics(STATS_VOTES, ["a", "b", "c"], gold=np.array([0, 1]))


def test_aggregate_imports_no_orchestration():
    """tasks.core must run on a bare machine: importing aggregate pulls in neither Prefect nor MLflow."""
    check = "import sys, weakflow.tasks.core.aggregate; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout
    assert "'numpy'" in loaded
    for heavy in ("prefect", "mlflow", "pandas", "torch"):
        assert f"'{heavy}'" not in loaded

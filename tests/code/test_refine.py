"""Refining gold-measured confusions on the weak rows (tasks.core.trusted.refine): a few gold rows per class
cannot tell a 60/40 pair flip from an even one; the weak rows, weighed by a model that sees x, can."""

from __future__ import annotations

import numpy as np

from weakflow.tasks.core.trusted import anchor, measure_on_gold, refine

K = 4


def pair_flip(rate: float) -> np.ndarray:
    """C[true, vote]: each class voted as the next one at ``rate``."""
    c = np.eye(K) * (1 - rate)
    c[np.arange(K), (np.arange(K) + 1) % K] = rate
    return c


def draw_votes(truth: np.ndarray, confusion: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.array([rng.choice(K, p=confusion[t]) for t in truth])


def opinion_of(truth: np.ndarray, accuracy: float, rng: np.random.Generator) -> np.ndarray:
    """p(class | x) of a model right ``accuracy`` of the time: its top class is the truth or a random other."""
    top = np.where(rng.random(len(truth)) < accuracy, truth, (truth + rng.integers(1, K, len(truth))) % K)
    probs = np.full((len(truth), K), 0.3 / (K - 1))
    probs[np.arange(len(truth)), top] = 0.7
    return probs


def problem(gold_per_class: int, weak_rows: int, seed: int):
    rng = np.random.default_rng(seed)
    truth_conf = pair_flip(0.4)
    gold_y = np.repeat(np.arange(K), gold_per_class)
    weak_y = rng.integers(0, K, weak_rows)
    votes = draw_votes(np.concatenate([gold_y, weak_y]), truth_conf, rng)[:, None]
    gold = np.concatenate([gold_y, np.full(weak_rows, -1)])
    return truth_conf, votes, gold, weak_y, rng


def test_refine_recovers_a_pair_flip_the_gold_rows_alone_misjudge():
    errors_gold, errors_refined, swapped_refined = [], [], 0
    for seed in range(5):
        truth_conf, votes, gold, weak_y, rng = problem(gold_per_class=4, weak_rows=3000, seed=seed)
        weak = gold < 0
        measured = anchor(votes, gold, ["annotator"], K).sources
        refined, ll = refine(measured, votes[weak], opinion_of(weak_y, 0.8, rng))
        assert ll.shape == (weak.sum(), K)
        np.testing.assert_allclose(ll, refined[0].log_likelihood(votes[weak, 0]))
        errors_gold.append(np.abs(measured[0].confusion - truth_conf).max())
        errors_refined.append(np.abs(refined[0].confusion - truth_conf).max())
        # per vote, the true class the estimate names as most likely (the pair's right side: the vote's own class)
        swapped_refined += int((refined[0].confusion.argmax(0) != np.arange(K)).sum())
        assert refined[0].counts is measured[0].counts  # the gold counts (what the report shows) are unchanged
    # measured: gold alone 0.18-0.38 off somewhere in the matrix, refined 0.03-0.06
    assert max(errors_refined) < 0.1 and max(errors_refined) < min(errors_gold) / 3
    assert swapped_refined == 0


def test_refine_with_no_weak_rows_is_the_gold_measurement():
    _, votes, gold, _, _ = problem(gold_per_class=5, weak_rows=0, seed=0)
    measured = measure_on_gold(votes, gold, ["annotator"], K)
    refined, ll = refine(measured, votes[:0], np.zeros((0, K)))
    np.testing.assert_allclose(refined[0].confusion, measured[0].confusion)
    assert ll.shape == (0, K)


def test_refine_with_a_certain_model_counts_the_weak_rows_as_gold():
    """A model certain of every weak row's class makes the E-step exact: the refined confusion is then the
    gold measurement over the gold rows and the weak rows together (the gold counts kept, not replaced)."""
    _, votes, gold, weak_y, _ = problem(gold_per_class=3, weak_rows=500, seed=2)
    weak = gold < 0
    measured = anchor(votes, gold, ["annotator"], K).sources
    refined, _ = refine(measured, votes[weak], np.eye(K)[weak_y])
    as_if_gold = measure_on_gold(votes, np.where(weak, np.concatenate([np.zeros((~weak).sum(), int), weak_y]), gold),
                                 ["annotator"], K)
    np.testing.assert_allclose(refined[0].confusion, as_if_gold[0].confusion, atol=1e-9)
    np.testing.assert_allclose(refined[0].confusion_low, as_if_gold[0].confusion_low, atol=1e-9)
    np.testing.assert_allclose(refined[0].confusion_high, as_if_gold[0].confusion_high, atol=1e-9)
    assert refined[0].basis == "gold+refined"

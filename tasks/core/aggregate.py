"""Turn many weak label votes per row into one label: majority vote, Dawid-Skene EM, source stats.

Votes are an int matrix (rows, sources) of class *indices* 0..C-1, with -1 for "abstain". An
abstaining source says nothing about a row, so it never counts as a vote or a likelihood term.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.special import logsumexp

ABSTAIN = -1
TieBreak = Literal["lowest", "abstain", "random"]


def _check_votes(votes: np.ndarray, num_classes: int | None) -> np.ndarray:
    """Return ``votes`` as int64 after checking shape, dtype and range (naming the first bad cell)."""
    votes = np.asarray(votes)
    if votes.ndim != 2:
        raise ValueError(f"votes must be a 2-D (rows, sources) array, got shape {votes.shape}")
    if votes.dtype.kind not in "iu":
        raise ValueError(f"votes must hold integer class indices (-1 = abstain), got dtype {votes.dtype}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    votes = votes.astype(np.int64)
    high = np.iinfo(np.int64).max if num_classes is None else num_classes - 1
    bad = (votes < ABSTAIN) | (votes > high)
    if bad.any():
        column = int(np.flatnonzero(bad.any(axis=0))[0])
        value = int(votes[bad[:, column], column][0])
        allowed = "[-1, inf)" if num_classes is None else f"[-1, {high}]"
        raise ValueError(f"vote {value} in source column {column} is outside {allowed} (-1 = abstain)")
    return votes


def _vote_counts(votes: np.ndarray, num_classes: int) -> np.ndarray:
    """(rows, C) count of votes per class, via one bincount on a flattened (row, class) index."""
    n = votes.shape[0]
    rows = np.broadcast_to(np.arange(n)[:, None], votes.shape)
    cast = votes >= 0
    flat = rows[cast] * num_classes + votes[cast]
    return np.bincount(flat, minlength=n * num_classes).reshape(n, num_classes)


@dataclass(frozen=True)
class MajorityVote:
    labels: np.ndarray  # int64 class index per row; -1 where no decision (no votes, or tie with "abstain")
    soft: np.ndarray  # (rows, C) vote shares; uniform 1/C on all-abstain rows
    ties: int  # rows with >= 1 vote whose top count is shared by >= 2 classes
    all_abstain: int  # rows where every source abstained


def majority_vote(
    votes: np.ndarray, num_classes: int, tie_break: TieBreak = "random", seed: int = 0
) -> MajorityVote:
    """Most-voted class per row; ``tie_break`` decides shared tops (lowest index, abstain, or random)."""
    if tie_break not in ("lowest", "abstain", "random"):
        raise ValueError(f"unknown tie_break {tie_break!r}; expected lowest, abstain or random")
    votes = _check_votes(votes, num_classes)
    counts = _vote_counts(votes, num_classes)
    total = counts.sum(axis=1)
    voted = total > 0
    soft = np.full(counts.shape, 1.0 / num_classes)
    soft[voted] = counts[voted] / total[voted, None]

    is_top = counts == counts.max(axis=1, initial=0)[:, None]
    tied = voted & (is_top.sum(axis=1) >= 2)
    labels = is_top.argmax(axis=1).astype(np.int64)  # lowest tied index; exact for untied rows
    if tie_break == "abstain":
        labels[tied] = ABSTAIN
    elif tie_break == "random" and tied.any():
        # A uniform score per tied class; the argmax is a uniform pick among them.
        scores = np.where(is_top[tied], np.random.default_rng(seed).random((int(tied.sum()), num_classes)), -1.0)
        labels[tied] = scores.argmax(axis=1)
    labels[~voted] = ABSTAIN
    return MajorityVote(labels=labels, soft=soft, ties=int(tied.sum()), all_abstain=int((~voted).sum()))


@dataclass
class DawidSkene:
    labels: np.ndarray  # int64 argmax of the posterior; -1 on all-abstain rows
    posterior: np.ndarray  # (rows, C), rows sum to 1; the class prior on all-abstain rows
    confusion: np.ndarray  # (sources, C, C): [s, true, given] = P(source s says given | true), rows sum to 1
    prior: np.ndarray  # (C,) class prior
    iterations: int
    converged: bool
    log_likelihood: list[float] = field(default_factory=list)  # smoothed objective per iteration

    @property
    def source_accuracy(self) -> np.ndarray:
        """Per source, P(correct) under the estimated prior: sum_k prior[k] * confusion[s, k, k]."""
        return np.einsum("k,skk->s", self.prior, self.confusion)


def _m_step(votes: np.ndarray, posterior: np.ndarray, smoothing: float) -> tuple[np.ndarray, np.ndarray]:
    """Confusion matrices and prior from soft labels, with ``smoothing`` pseudo-counts everywhere."""
    n_sources, num_classes = votes.shape[1], posterior.shape[1]
    confusion = np.empty((n_sources, num_classes, num_classes))
    for s in range(n_sources):
        cast = votes[:, s] >= 0
        given = np.zeros((cast.sum(), num_classes))
        given[np.arange(len(given)), votes[cast, s]] = 1.0
        confusion[s] = posterior[cast].T @ given + smoothing
    row_sums = confusion.sum(axis=2, keepdims=True)
    confusion = np.divide(confusion, row_sums, out=np.full_like(confusion, 1.0 / num_classes), where=row_sums > 0)
    prior_counts = posterior.sum(axis=0) + smoothing
    prior = prior_counts / prior_counts.sum() if prior_counts.sum() > 0 else np.full(num_classes, 1.0 / num_classes)
    return confusion, prior


def _e_step(votes: np.ndarray, confusion: np.ndarray, prior: np.ndarray) -> tuple[np.ndarray, float]:
    """Posterior over true classes per row and the data log-likelihood, both computed in log space."""
    with np.errstate(divide="ignore"):  # smoothing=0 may leave exact zeros: log 0 = -inf is right
        log_conf = np.log(confusion)
        log_joint = np.tile(np.log(prior), (votes.shape[0], 1))
    for s in range(votes.shape[1]):
        cast = votes[:, s] >= 0
        log_joint[cast] += log_conf[s][:, votes[cast, s]].T
    log_norm = logsumexp(log_joint, axis=1, keepdims=True)
    return np.exp(log_joint - log_norm), float(log_norm.sum())


def dawid_skene(
    votes: np.ndarray,
    num_classes: int,
    max_iter: int = 100,
    tol: float = 1e-6,
    smoothing: float = 0.01,
    init: np.ndarray | None = None,
) -> DawidSkene:
    """Dawid & Skene (1979) EM: learn each source's confusion matrix and the true-class posterior.

    Starts from majority-vote shares (or ``init``), so classes keep their meaning as long as the
    sources are better than chance on the whole. ``smoothing`` is a Dirichlet pseudo-count, which
    makes this MAP-EM: ``log_likelihood`` records the data log-likelihood plus the smoothing term
    ``smoothing * (sum log confusion + sum log prior)``, the quantity EM never decreases.
    Stops when that changes by less than ``tol`` between iterations.
    """
    votes = _check_votes(votes, num_classes)
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}")
    if init is None:
        posterior = majority_vote(votes, num_classes, tie_break="lowest").soft
    else:
        posterior = np.asarray(init, dtype=np.float64)
        if posterior.shape != (votes.shape[0], num_classes):
            raise ValueError(f"init must have shape {(votes.shape[0], num_classes)}, got {posterior.shape}")
        sums = posterior.sum(axis=1, keepdims=True)
        if (posterior < 0).any() or not np.isfinite(posterior).all() or (sums <= 0).any():
            raise ValueError("init must be finite, non-negative, with a positive sum in every row")
        posterior = posterior / sums

    history: list[float] = []
    converged = False
    iterations = 0
    confusion, prior = _m_step(votes, posterior, smoothing)
    for iterations in range(1, max_iter + 1):
        posterior, data_ll = _e_step(votes, confusion, prior)
        penalty = smoothing * (np.log(confusion).sum() + np.log(prior).sum()) if smoothing > 0 else 0.0
        history.append(data_ll + float(penalty))
        if len(history) >= 2 and abs(history[-1] - history[-2]) < tol:
            converged = True
            break
        if iterations < max_iter:
            confusion, prior = _m_step(votes, posterior, smoothing)

    labels = posterior.argmax(axis=1).astype(np.int64)
    labels[(votes < 0).all(axis=1)] = ABSTAIN
    return DawidSkene(labels, posterior, confusion, prior, iterations, converged, history)


def source_statistics(votes: np.ndarray, names: list[str], gold: np.ndarray | None = None) -> list[dict]:
    """Per source: coverage, overlap and conflict (shares of all rows), vote count, accuracy on gold.

    Tells which sources fire rarely, which only repeat others, and which fight them, before
    trusting any aggregate built from them.
    """
    votes = _check_votes(votes, None)
    n, n_sources = votes.shape
    if len(names) != n_sources:
        raise ValueError(f"got {len(names)} source names for {n_sources} vote columns")
    if gold is not None:
        gold = np.asarray(gold)
        if gold.shape != (n,):
            raise ValueError(f"gold must be a 1-D array of {n} class indices, got shape {gold.shape}")
        if gold.dtype.kind not in "iu" or (gold < ABSTAIN).any():
            raise ValueError("gold must hold integer class indices, -1 where unknown")
    cast = votes >= 0
    share = (lambda mask: float(mask.sum()) / n) if n else (lambda mask: 0.0)
    stats: list[dict] = []
    for s, name in enumerate(names):
        mine = cast[:, s]
        others = np.delete(votes, s, axis=1)
        other_cast = others >= 0
        disagree = (other_cast & (others != votes[:, [s]])).any(axis=1)
        row = {
            "source": name,
            "coverage": share(mine),
            "overlap": share(mine & other_cast.any(axis=1)),
            "conflict": share(mine & disagree),
            "votes": int(mine.sum()),
        }
        if gold is not None:
            judged = mine & (gold >= 0)
            row["gold_rows"] = int(judged.sum())
            row["accuracy"] = float((votes[judged, s] == gold[judged]).mean()) if judged.any() else None
        stats.append(row)
    return stats

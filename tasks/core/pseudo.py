"""Pseudo-label selection: which of a model's calibrated predictions become training labels.

Three threshold policies, all giving one threshold per class:

- ``fixed``: the same threshold for every class.
- ``per_class``: class-adaptive (FlexMatch, Zhang et al. 2021): a class whose predictions clear the base
  threshold less often than the best-learnt class gets a lower threshold,
  ``tau_c = t * beta_c / (2 - beta_c)`` with ``beta_c = n_c / max n``, never below ``floor``; so hard or
  rare classes are not starved.
- ``target_precision``: the lowest threshold at which the *lower bound* of the 95% Wilson interval of
  precision on held-out gold predictions reaches ``p`` (counting at least ``min_support`` rows): per
  class where that class's own rows can show it, else pooled over every class; where not even the pooled
  rows can, no row is kept (``uncertified``): a point estimate on a handful of rows proves nothing.

An optional ``max_per_class`` keeps only each class's most confident rows (ties broken by row order).
This module holds the decisions (thresholds, the cap's cut-off and ties, which rows are kept);
:mod:`tasks.core.pseudo_stream` applies them to a pool of any size in two passes, whole or in shards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

PolicyName = Literal["fixed", "per_class", "target_precision"]
HIST_BINS = 40


@dataclass(frozen=True)
class ThresholdPolicy:
    kind: PolicyName = "fixed"
    threshold: float = 0.9  # fixed: the threshold; per_class: the base
    floor: float = 0.5  # per_class and target_precision never go below this
    target_precision: float = 0.95
    min_support: int = 3
    max_per_class: int | None = None

    def __post_init__(self) -> None:
        for name in ("threshold", "floor", "target_precision"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.max_per_class is not None and self.max_per_class < 0:
            raise ValueError(f"max_per_class must be >= 0 or None, got {self.max_per_class}")


@dataclass(frozen=True)
class PseudoSelection:
    labels: np.ndarray  # predicted class per row (all rows)
    confidence: np.ndarray  # max probability per row (all rows)
    keep: np.ndarray  # bool mask

    @property
    def kept(self) -> int:
        return int(self.keep.sum())


def predictions(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(argmax class, top probability) per row of a (rows, classes) probability table."""
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise ValueError(f"probabilities must be a 2-D (rows, classes) array, got shape {probs.shape}")
    if len(probs) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    return probs.argmax(axis=1).astype(np.int64), probs.max(axis=1).astype(np.float32)


def select_confident(probs: np.ndarray, threshold: float) -> PseudoSelection:
    """Argmax labels of ``probs`` (N, C), kept where the top probability is >= ``threshold``."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    labels, confidence = predictions(probs)
    return PseudoSelection(labels, confidence, confidence >= np.float32(threshold))


def precision_on(selection: PseudoSelection, true_labels: np.ndarray) -> float | None:
    """Share of kept pseudo-labels equal to ``true_labels``; None when nothing was kept."""
    if selection.kept == 0:
        return None
    return float((selection.labels[selection.keep] == np.asarray(true_labels)[selection.keep]).mean())


def per_class_precision(labels: np.ndarray, confidence: np.ndarray, true: np.ndarray, thresholds: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Per predicted class: precision of rows at or above that class's threshold (NaN when none) and
    how many rows that is."""
    num_classes = len(thresholds)
    thresholds = np.asarray(thresholds, dtype=np.float32)
    keep = np.asarray(confidence, dtype=np.float32) >= thresholds[labels] if len(labels) else np.zeros(0, dtype=bool)
    support = np.bincount(labels[keep], minlength=num_classes)
    right = np.bincount(labels[keep & (labels == np.asarray(true))], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(support > 0, right / np.maximum(support, 1), np.nan)
    return precision, support


def flexmatch_thresholds(policy: ThresholdPolicy, counts_at_base: np.ndarray) -> np.ndarray:
    """``per_class``: tau_c = t * beta_c / (2 - beta_c), beta_c = n_c / max n, floored."""
    counts = np.asarray(counts_at_base, dtype=np.float64)
    if counts.max(initial=0) == 0:
        return np.full(len(counts), policy.threshold)
    beta = counts / counts.max()
    return np.maximum(policy.floor, policy.threshold * beta / (2.0 - beta))


NOTHING = np.float32(np.nextafter(np.float32(1.0), np.float32(2.0)))  # above every confidence: keeps no row


def lowest_certified(confidence: np.ndarray, right: np.ndarray, target: float, floor: float, min_support: int
                     ) -> float | None:
    """The lowest confidence t >= ``floor`` such that the rows at or above t number at least
    ``min_support`` and the Wilson lower bound of their share right reaches ``target``; None if none."""
    from weakflow.tasks.core.trusted import wilson_interval

    order = np.argsort(-np.asarray(confidence), kind="stable")
    conf, ok = np.asarray(confidence)[order], np.asarray(right)[order]
    n = np.arange(1, len(conf) + 1)
    low, _ = wilson_interval(np.cumsum(ok), n)
    last_of_tie = np.append(conf[1:] != conf[:-1], True)  # a threshold keeps every row of a tie
    good = last_of_tie & (conf >= floor) & (n >= min_support) & (low >= target)
    return float(conf[np.flatnonzero(good)[-1]]) if good.any() else None


def target_precision_thresholds(policy: ThresholdPolicy, dev_labels: np.ndarray, dev_confidence: np.ndarray,
                                dev_true: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class the lowest certified threshold (see the module docstring): the class's own rows first,
    else the pooled one. Returns (thresholds, uncertified); an uncertified class keeps no row."""
    right = np.asarray(dev_labels) == np.asarray(dev_true)
    pooled = lowest_certified(dev_confidence, right, policy.target_precision, policy.floor, policy.min_support)
    thresholds = np.full(num_classes, NOTHING if pooled is None else pooled, dtype=np.float64)
    uncertified = np.full(num_classes, pooled is None)
    for c in range(num_classes):
        mine = np.asarray(dev_labels) == c
        own = lowest_certified(np.asarray(dev_confidence)[mine], right[mine], policy.target_precision, policy.floor,
                               policy.min_support)
        if own is not None:
            thresholds[c], uncertified[c] = own, False
    return thresholds, uncertified


@dataclass
class DevSet:
    """Calibrated gold-dev predictions: what ``target_precision`` estimates precision on."""

    labels: np.ndarray
    confidence: np.ndarray
    true: np.ndarray


@dataclass
class StreamResult:
    thresholds: np.ndarray  # (C,)
    candidates: np.ndarray  # rows predicted as each class
    kept: np.ndarray  # rows kept per class
    cap_cutoff: np.ndarray  # (C,) confidence of the last row a cap let through (NaN: no cap bound)
    uncertified: np.ndarray  # (C,) bool: target_precision: no threshold's lower bound reached the target (none kept)
    histogram: np.ndarray  # (HIST_BINS,) confidence counts over every row
    rows: int = 0


Scorer = Callable[[np.ndarray], np.ndarray]  # feature chunk -> calibrated probabilities
# emit(features, payload, keep, labels, confidence, probs): one call per chunk in pass 2
Emit = Callable[[np.ndarray, Any, np.ndarray, np.ndarray, np.ndarray, "np.ndarray | None"], None]


@dataclass
class Tally:
    """Pass 1's counts over some rows: predicted per class, predicted at or above the base threshold per
    class (what ``per_class`` adapts from), and the confidence histogram. Shards' tallies add up."""

    counts: np.ndarray
    at_base: np.ndarray
    histogram: np.ndarray

    @classmethod
    def empty(cls, num_classes: int) -> Tally:
        return cls(np.zeros(num_classes, dtype=np.int64), np.zeros(num_classes, dtype=np.int64),
                   np.zeros(HIST_BINS, dtype=np.int64))

    def add(self, labels: np.ndarray, conf: np.ndarray, base_threshold: float) -> None:
        num_classes = len(self.counts)
        self.counts += np.bincount(labels, minlength=num_classes)
        self.at_base += np.bincount(labels[conf >= base_threshold], minlength=num_classes)
        self.histogram += np.histogram(conf, bins=HIST_BINS, range=(0.0, 1.0))[0]

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.counts + other.counts, self.at_base + other.at_base, self.histogram + other.histogram)


def decide_thresholds(policy: ThresholdPolicy, at_base: np.ndarray, num_classes: int, dev: DevSet | None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The policy's threshold per class (float32, the confidences' precision: 0.9 keeps 0.9) and which
    classes are uncertified (target_precision), from pass 1's ``at_base`` counts over every row."""
    uncertified = np.zeros(num_classes, dtype=bool)
    if policy.kind == "fixed":
        thresholds = np.full(num_classes, policy.threshold)
    elif policy.kind == "per_class":
        thresholds = flexmatch_thresholds(policy, at_base)
    else:
        if dev is None:
            raise ValueError("target_precision needs held-out gold predictions to estimate precision on")
        thresholds, uncertified = target_precision_thresholds(policy, dev.labels, dev.confidence, dev.true, num_classes)
    return thresholds.astype(np.float32), uncertified


def keep_mask(labels: np.ndarray, conf: np.ndarray, thresholds: np.ndarray, cutoff: np.ndarray,
              ties_allowed: np.ndarray, cap: int | None) -> np.ndarray:
    """Which of these rows are kept: at or above their class's threshold and, under a cap, at or above
    its cut-off, where only the first ``ties_allowed[c]`` rows exactly at the cut-off stay. Rows must
    come in pool order; ``ties_allowed`` is used up in place, so consecutive blocks give the same mask
    as one block of all rows."""
    keep = conf >= thresholds[labels]
    if cap is not None:
        keep &= conf >= cutoff[labels]
        for c in np.unique(labels[keep & (conf == cutoff[labels])]):
            tied = np.flatnonzero(keep & (labels == c) & (conf == cutoff[c]))
            drop = tied[ties_allowed[c]:]  # the first ``ties_allowed`` ties in row order stay
            ties_allowed[c] = max(0, ties_allowed[c] - len(tied))
            keep[drop] = False
    return keep


def score_chunk(score: Scorer, x: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(class, confidence) per row of one chunk, after checking the scorer gave one probability per class."""
    probs = score(x)
    if np.ndim(probs) != 2 or np.shape(probs)[1] != num_classes or len(probs) != len(x):
        raise ValueError(f"score returned shape {np.shape(probs)} for {len(x)} rows; expected "
                         f"({len(x)}, {num_classes}): one probability per class in use")
    return predictions(probs)


def cap_cutoffs(labels: np.ndarray, conf: np.ndarray, thresholds: np.ndarray, cap: int | None, num_classes: int,
                block: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the confidence of the cap-th most confident eligible row and how many rows at exactly
    that confidence still fit. Streams the scratch arrays in blocks, holding at most ``cap`` values per class."""
    cutoff = np.full(num_classes, -np.inf)
    ties = np.full(num_classes, np.iinfo(np.int64).max, dtype=np.int64)
    if cap is None:
        return cutoff, ties
    top = [np.zeros(0, dtype=np.float32) for _ in range(num_classes)]
    for start in range(0, len(labels), block):
        lab = np.asarray(labels[start : start + block])
        cf = np.asarray(conf[start : start + block])
        ok = cf >= thresholds[lab]
        for c in range(num_classes):
            merged = np.concatenate([top[c], cf[ok & (lab == c)]])
            top[c] = -np.partition(-merged, cap - 1)[:cap] if len(merged) > cap else merged
    for c in range(num_classes):
        if cap == 0:
            cutoff[c], ties[c] = np.inf, 0
        elif len(top[c]) >= cap:
            cutoff[c] = float(top[c].min())
            ties[c] = cap - int((top[c] > cutoff[c]).sum())
    return cutoff, ties

"""Pseudo-label selection: keep a model's confident predictions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PseudoSelection:
    labels: np.ndarray  # predicted class per row (all rows)
    confidence: np.ndarray  # max probability per row (all rows)
    keep: np.ndarray  # bool mask: confidence >= threshold

    @property
    def kept(self) -> int:
        return int(self.keep.sum())


def select_confident(probs: np.ndarray, threshold: float) -> PseudoSelection:
    """Argmax labels of ``probs`` (N, C), kept where the top probability is >= ``threshold``."""
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise ValueError(f"probabilities must be a 2-D (rows, classes) array, got shape {probs.shape}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    confidence = probs.max(axis=1) if len(probs) else np.zeros(0)
    labels = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    return PseudoSelection(labels=labels.astype(np.int64), confidence=confidence, keep=confidence >= threshold)


def precision_on(selection: PseudoSelection, true_labels: np.ndarray) -> float | None:
    """Share of kept pseudo-labels equal to ``true_labels``; None when nothing was kept."""
    if selection.kept == 0:
        return None
    return float((selection.labels[selection.keep] == np.asarray(true_labels)[selection.keep]).mean())

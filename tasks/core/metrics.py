"""Evaluation numbers computed on probabilities, shared by the stages and the benchmarks."""

from __future__ import annotations

import numpy as np


def calibration_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin: rows, accuracy and mean confidence (NaN where a bin is empty);
    what ECE sums and a reliability diagram plots."""
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("calibration of an empty set is undefined")
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / count
        mean_confidence = np.bincount(bins, weights=confidence, minlength=n_bins) / count
    return count, accuracy, mean_confidence


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE with equal-width confidence bins: sum_b |acc_b - conf_b| * n_b / n."""
    count, accuracy, mean_confidence = calibration_bins(probs, labels, n_bins)
    filled = count > 0
    return float((np.abs(accuracy[filled] - mean_confidence[filled]) * count[filled]).sum() / count.sum())

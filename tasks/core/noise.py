"""Simulated annotator noise, so the demo has weak labels with a known, configurable error process."""

from __future__ import annotations

from typing import Literal

import numpy as np

NoiseKind = Literal["symmetric", "pairflip", "instance"]


def corrupt_labels(
    labels: np.ndarray,
    num_classes: int,
    rate: float,
    kind: NoiseKind = "symmetric",
    seed: int = 0,
    features: np.ndarray | None = None,
) -> np.ndarray:
    """Return a noisy copy of ``labels``; each kind flips about ``rate`` of them.

    - ``symmetric``: a flipped label goes to any *other* class uniformly.
    - ``pairflip``: a flipped label goes to the next class (c -> c+1 mod C), the hardest
      class-conditional noise for a given rate.
    - ``instance``: per-sample flip rates (truncated normal around ``rate``) and flip targets that
      depend on the features (Xia et al., 2020), so look-alike samples are mislabelled together.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"noise rate must be in [0, 1), got {rate}")
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes to flip labels, got {num_classes}")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if kind == "symmetric":
        flip = rng.random(len(labels)) < rate
        offset = rng.integers(1, num_classes, size=len(labels))
        return np.where(flip, (labels + offset) % num_classes, labels)
    if kind == "pairflip":
        flip = rng.random(len(labels)) < rate
        return np.where(flip, (labels + 1) % num_classes, labels)
    if kind == "instance":
        if features is None:
            raise ValueError("instance-dependent noise needs the features")
        return _instance_dependent(labels, num_classes, rate, rng, np.asarray(features, dtype=np.float64))
    raise ValueError(f"unknown noise kind {kind!r}; expected symmetric, pairflip or instance")


def _instance_dependent(
    labels: np.ndarray, num_classes: int, rate: float, rng: np.random.Generator, features: np.ndarray
) -> np.ndarray:
    n, d = features.shape
    # Per-sample flip probability: normal(rate, 0.1) truncated to [0, 1).
    q = np.clip(rng.normal(rate, 0.1, size=n), 0.0, 0.999)
    scale = np.linalg.norm(features, axis=1, keepdims=True)
    x = features / np.where(scale == 0, 1.0, scale)
    w = rng.normal(size=(num_classes, d, num_classes))
    scores = np.einsum("nd,ndc->nc", x, w[labels])
    scores[np.arange(n), labels] = -np.inf  # the flip target is another class
    scores -= scores.max(axis=1, keepdims=True)
    target_probs = np.exp(scores)
    target_probs /= target_probs.sum(axis=1, keepdims=True)
    cumulative = target_probs.cumsum(axis=1)
    targets = (rng.random((n, 1)) < cumulative).argmax(axis=1)
    flip = rng.random(n) < q
    return np.where(flip, targets, labels)

"""Bootstrap confidence intervals for classifier metrics, paired across models (numpy only).

Every model is scored on the *same* resamples of the test rows, so the difference between two models
gets its own interval: a gain whose interval excludes 0 is unlikely to be resampling noise. Metrics are
computed for all resamples at once from class counts (no Python loop over resamples); the resamples
are drawn in chunks so memory stays bounded on large test splits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METRICS: tuple[str, ...] = ("accuracy", "macro_f1", "ece")
HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "ece": False}
_CELLS_PER_CHUNK = 4_000_000  # resampled row indices held at once


@dataclass(frozen=True)
class Interval:
    estimate: float  # on the full test split
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Delta:
    """``a`` minus ``b`` on paired resamples; ``share_better``: resamples where ``a`` is better."""

    a: str
    b: str
    metric: str
    interval: Interval
    share_better: float


@dataclass
class BootstrapResult:
    samples: int
    level: float
    intervals: dict[str, dict[str, Interval]]  # model -> metric -> interval
    deltas: list[Delta]

    def delta(self, a: str, b: str, metric: str) -> Delta | None:
        return next((d for d in self.deltas if (d.a, d.b, d.metric) == (a, b, metric)), None)


def resampled_metrics(y: np.ndarray, pred: np.ndarray, confidence: np.ndarray, idx: np.ndarray,
                      num_classes: int, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Accuracy, macro-F1 (every class counts, 0 where undefined, as sklearn's ``zero_division=0``) and
    ECE (equal-width bins, as :func:`tasks.core.metrics.expected_calibration_error`) of each row of
    ``idx`` (resamples x rows of indices into ``y``)."""
    b, n = idx.shape
    yb, pb = y[idx], pred[idx]
    correct = yb == pb
    offset = (np.arange(b) * num_classes)[:, None]
    size = b * num_classes
    tp = np.bincount((offset + yb).ravel(), weights=correct.ravel(), minlength=size).reshape(b, num_classes)
    support = np.bincount((offset + yb).ravel(), minlength=size).reshape(b, num_classes)
    predicted = np.bincount((offset + pb).ravel(), minlength=size).reshape(b, num_classes)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp, dtype=np.float64), where=denom > 0)
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)[idx]
    keys = ((np.arange(b) * n_bins)[:, None] + bins).ravel()
    acc_sum = np.bincount(keys, weights=correct.ravel(), minlength=b * n_bins).reshape(b, n_bins)
    conf_sum = np.bincount(keys, weights=confidence[idx].ravel(), minlength=b * n_bins).reshape(b, n_bins)
    return {"accuracy": correct.mean(axis=1), "macro_f1": f1.mean(axis=1),
            "ece": np.abs(acc_sum - conf_sum).sum(axis=1) / n}


def paired_bootstrap(y: np.ndarray, probs: dict[str, np.ndarray], pairs: list[tuple[str, str]] | None = None,
                     samples: int = 1000, level: float = 0.95, seed: int = 0) -> BootstrapResult:
    """Percentile intervals of accuracy, macro-F1 and ECE for every model in ``probs`` (name ->
    (rows, classes) probabilities on the same test rows ``y``), and of the difference for each
    ``(a, b)`` in ``pairs``, all on the same ``samples`` resamples drawn from ``seed``."""
    y = np.asarray(y)
    n = len(y)
    if n == 0:
        raise ValueError("bootstrap of an empty test split is undefined")
    if samples < 1:
        raise ValueError(f"bootstrap samples must be at least 1, got {samples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    pairs = pairs or []
    unknown = sorted({m for p in pairs for m in p} - set(probs))
    if unknown:
        raise ValueError(f"pairs name models without probabilities: {unknown}")
    num_classes = max(int(p.shape[1]) for p in probs.values())
    scored = {name: (np.asarray(p).argmax(axis=1), np.asarray(p).max(axis=1)) for name, p in probs.items()}
    full = np.arange(n)[None, :]
    point = {name: {k: float(v[0]) for k, v in resampled_metrics(y, pred, conf, full, num_classes).items()}
             for name, (pred, conf) in scored.items()}
    rng = np.random.default_rng(seed)
    chunk = max(1, _CELLS_PER_CHUNK // n)
    draws: dict[str, dict[str, list[np.ndarray]]] = {name: {m: [] for m in METRICS} for name in probs}
    for start in range(0, samples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, samples - start), n))
        for name, (pred, conf) in scored.items():
            for metric, values in resampled_metrics(y, pred, conf, idx, num_classes).items():
                draws[name][metric].append(values)
    dist = {name: {m: np.concatenate(v) for m, v in per.items()} for name, per in draws.items()}
    q = [(1 - level) / 2, 1 - (1 - level) / 2]

    def interval(estimate: float, values: np.ndarray) -> Interval:
        low, high = np.quantile(values, q)
        return Interval(estimate, float(low), float(high))

    intervals = {name: {m: interval(point[name][m], dist[name][m]) for m in METRICS} for name in probs}
    deltas = []
    for a, b in pairs:
        for m in METRICS:
            diff = dist[a][m] - dist[b][m]
            better = diff > 0 if HIGHER_IS_BETTER[m] else diff < 0
            deltas.append(Delta(a, b, m, interval(point[a][m] - point[b][m], diff), float(better.mean())))
    return BootstrapResult(samples, level, intervals, deltas)

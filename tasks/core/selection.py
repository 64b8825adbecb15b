"""The selection rule on calibrated out-of-fold gold probabilities, shared by the select stage (which
candidate ships) and the weak training (which evidence an anchored model keeps): numbers only."""

from __future__ import annotations

import numpy as np


def log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())


def best_out_of_fold(probs: dict[str, np.ndarray], y_gold: np.ndarray
                     ) -> tuple[str, dict[str, float], dict[str, float]]:
    """Of the models (listed simplest first) within one gold row of the best accuracy, the lowest log-loss
    (ties: the first listed): one row is never evidence, and a proper score uses every probability. Also
    returns every model's accuracy and log-loss."""
    acc = {n: float((p.argmax(1) == y_gold).mean()) for n, p in probs.items()}
    nll = {n: log_loss(p, y_gold) for n, p in probs.items()}
    top = max(acc.values())
    contenders = [n for n in probs if acc[n] >= top - 1.0 / len(y_gold) - 1e-12]
    order = list(probs)
    return min(contenders, key=lambda n: (nll[n], order.index(n))), acc, nll

"""Temperature scaling (Guo et al., 2017): one scalar T so softmax(logits / T) is calibrated.

Fitted on the gold dev split before any threshold is applied, so a confidence of 0.9 means about 90%
right. It never changes the predicted class, only how sure the model says it is.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200, prior_sd: float | None = 0.5) -> float:
    """The T > 0 that minimises the negative log-likelihood of ``labels`` under softmax(logits / T),
    plus, with ``prior_sd``, a normal prior on log T (mean 0: no rescaling; sd ``prior_sd``). On a few rows
    that all came out right the likelihood alone drives T towards 0 (every probability to 1); the prior
    keeps T where a handful of rows cannot push it, while a few hundred rows outweigh it."""
    logits_t = torch.as_tensor(np.asarray(logits, dtype=np.float32))
    labels_t = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if logits_t.ndim != 2 or len(logits_t) != len(labels_t):
        raise ValueError(f"logits must be (rows, classes) with one label per row; got {tuple(logits_t.shape)} "
                         f"and {len(labels_t)} labels")
    if len(labels_t) == 0:
        raise ValueError("cannot fit a temperature on an empty set")
    log_t = torch.zeros(1, requires_grad=True)  # optimise log T: T stays positive
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits_t / log_t.exp(), labels_t, reduction="sum")
        if prior_sd is not None:
            loss = loss + log_t.pow(2).sum() / (2.0 * prior_sd**2)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def softmax_t(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (float32, numerically stable)."""
    z = np.asarray(logits, dtype=np.float32) / np.float32(temperature)
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z

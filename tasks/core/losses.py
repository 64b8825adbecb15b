"""Per-sample losses for hard or soft targets; the training loop applies weights and reduction."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from weakflow.tasks.core.names import LossName


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy; ``targets`` are class indices (N,) or probabilities (N, C)."""
    if targets.dim() == 1:
        return F.cross_entropy(logits, targets, reduction="none")
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1)


def generalized_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, q: float = 0.7) -> torch.Tensor:
    """GCE (Zhang & Sabuncu, 2018): (1 - p_y^q) / q, between CE (q -> 0) and MAE (q = 1).

    Bounded per-sample loss, so confidently-wrong noisy labels cannot dominate the gradient.
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"GCE q must be in (0, 1], got {q}")
    probs = F.softmax(logits.float(), dim=1)
    if targets.dim() == 1:
        p_y = probs.gather(1, targets.view(-1, 1)).squeeze(1)
    else:
        p_y = (probs * targets).sum(dim=1)
    return (1.0 - p_y.clamp_min(1e-7) ** q) / q


def per_sample_loss(name: LossName, logits: torch.Tensor, targets: torch.Tensor, gce_q: float = 0.7) -> torch.Tensor:
    if name == "ce":
        return cross_entropy(logits, targets)
    if name == "gce":
        return generalized_cross_entropy(logits, targets, gce_q)
    raise ValueError(f"unknown loss {name!r}; expected 'ce' or 'gce'")

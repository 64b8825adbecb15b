"""The torch pieces of the weak-training methods: confident learning's row filter, Gold Loss Correction's
corruption matrix and loss, the evidence loss (anchored), and CLID's rank correlation with gold accuracy.

Arrays in, arrays or update rules out; no config, no tracking. Which method trains what is said once, in the
registry of ``tasks/lib/weak_methods.py``, which the weak_train stage (and the benchmark matrix through it) runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from weakflow.tasks.core.device import autocast
from weakflow.tasks.core.label_issues import find_label_issues
from weakflow.tasks.core.training import EpochStats, TrainSettings, WeightedLoss, fit, predict_proba


@dataclass(frozen=True)
class ConfidentLearningSettings:
    folds: int = 3
    filter_by: str = "prune_by_noise_rate"  # cleanlab.filter.find_label_issues(filter_by=...)


def clid_dev_correlation(history: list[EpochStats]) -> dict[str, float]:
    """Spearman rank correlation of per-epoch CLID with gold-dev accuracy (negative = CLID tracks quality)."""
    pairs = [(h.extra["clid"], h.dev_accuracy) for h in history if "clid" in h.extra and h.dev_accuracy is not None]
    if len(pairs) < 3 or len({p[0] for p in pairs}) < 2 or len({p[1] for p in pairs}) < 2:
        return {}
    rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return {"clid_dev_spearman": float(rho)} if np.isfinite(rho) else {}


def confident_learning_keep(build: Callable[[], nn.Module], x: np.ndarray, y: np.ndarray, settings: TrainSettings,
                           cl: ConfidentLearningSettings = ConfidentLearningSettings(),
                           gold_check: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                           ) -> tuple[np.ndarray, dict[str, float]]:
    """cleanlab on out-of-fold probabilities over the weak rows: (which rows to keep, figures). No gold
    row is used to decide; ``gold_check`` (x, weak label, gold label) only measures the removals."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError("confident_learning needs hard weak labels (set weak_labels.soft_labels: false)")
    fold_settings = replace(settings, loss="ce", epochs=max(1, settings.epochs // 2))
    oof: np.ndarray | None = None  # out-of-fold probabilities; width = the network's class count
    gold_probs = []
    counts = np.bincount(y)
    folds = max(2, min(cl.folds, int(counts[counts > 0].min()))) if len(counts) else cl.folds
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=settings.seed)
    for train_idx, held_idx in splitter.split(x, y):
        res = fit(build(), x[train_idx], y[train_idx], fold_settings)
        held = predict_proba(res.model, x[held_idx])
        oof = np.zeros((len(y), held.shape[1])) if oof is None else oof
        oof[held_idx] = held
        if gold_check is not None and len(gold_check[0]):
            gold_probs.append(predict_proba(res.model, gold_check[0]))
    issues = find_label_issues(labels=y, pred_probs=oof, filter_by=cl.filter_by)
    figures = {"cl_removed": float(issues.sum()), "cl_removed_share": float(issues.mean())}
    if gold_check is not None and len(gold_check[0]):
        _, weak_gold, true_gold = gold_check
        both = np.concatenate([y, weak_gold])
        probs = np.concatenate([oof, np.mean(gold_probs, axis=0)])
        flagged = find_label_issues(labels=both, pred_probs=probs, filter_by=cl.filter_by)[len(y):]
        wrong = weak_gold != true_gold
        figures["cl_gold_rows_checked"] = float(len(weak_gold))
        if flagged.any():
            figures["cl_removal_precision_gold"] = float(wrong[flagged].mean())
        if wrong.any():
            figures["cl_removal_recall_gold"] = float(flagged[wrong].mean())
    return ~issues, figures


# --- Gold Loss Correction (Hendrycks et al., NeurIPS 2018) ---------------------------------------


def glc_corruption(noisy_probs_on_gold: np.ndarray, gold_y: np.ndarray, num_classes: int) -> np.ndarray:
    """C[true, noisy]: the mean softmax of a model trained on the weak labels over the gold rows of each true
    class. A class with no gold row keeps the identity row (no correction without evidence)."""
    corruption = np.eye(num_classes)
    for c in range(num_classes):
        mine = np.asarray(gold_y) == c
        if mine.any():
            corruption[c] = np.asarray(noisy_probs_on_gold)[mine].mean(axis=0)
    return corruption / corruption.sum(axis=1, keepdims=True)


def glc_targets(gold_y: np.ndarray, weak_y: np.ndarray, num_classes: int) -> np.ndarray:
    """Targets for :class:`ForwardCorrected`: gold rows keep their class, weak rows are shifted by
    ``num_classes`` (so one int per row says both the label and whether it is trusted)."""
    return np.concatenate([np.asarray(gold_y, np.int64), np.asarray(weak_y, np.int64) + num_classes])


class ForwardCorrected(WeightedLoss):
    """GLC's loss: plain CE on trusted rows; on weak rows, CE of the weak label against the model's class
    probabilities pushed through the corruption matrix, -log((softmax(z) @ C)[weak label])."""

    def __init__(self, corruption: np.ndarray) -> None:
        super().__init__("ce")
        self.corruption = torch.as_tensor(np.asarray(corruption, dtype=np.float32))

    def step(self, model, optimizer, xb, yb, wb, rows=None):
        num_classes = self.corruption.shape[0]
        corruption = self.corruption.to(xb.device)
        with autocast(xb.device):
            logits = model(xb)
        log_p = F.log_softmax(logits.float(), dim=1)
        weak = yb >= num_classes
        label = torch.where(weak, yb - num_classes, yb)
        noisy = torch.log((log_p.exp() @ corruption).clamp_min(1e-7))
        losses = -torch.where(weak[:, None], noisy, log_p).gather(1, label[:, None]).squeeze(1)
        loss = (losses * wb).sum() / wb.sum().clamp_min(1e-8)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()


# --- the evidence loss: each row's votes judged through the gold-measured noise -------------------


NEVER = -1e4  # log of an impossible class: a gold row's evidence is its label alone


def log_one_hot(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Evidence of a known label: 0 for it, ``NEVER`` elsewhere."""
    out = np.full((len(y), num_classes), NEVER, dtype=np.float32)
    out[np.arange(len(y)), np.asarray(y, np.int64)] = 0.0
    return out


def as_evidence(log_likelihood: np.ndarray) -> np.ndarray:
    """A row's log-likelihood per class, shifted so its best class is 0 (only differences between classes
    matter) and floored at ``NEVER``."""
    ll = np.asarray(log_likelihood, dtype=np.float64)
    return np.maximum(ll - ll.max(axis=1, keepdims=True), NEVER).astype(np.float32)


class EvidenceLoss(WeightedLoss):
    """Per row, the (robust) negative log-likelihood of what is known about it under the network:
    P = sum_y p(y | x) exp(E(y)); loss -log P (``ce``) or the generalised cross-entropy (1 - P^q) / q
    (``gce``, bounded, so rows whose evidence is wrong cannot dominate).

    With E = the votes' log-likelihood under every source's gold-measured confusion matrix this is forward
    loss correction for any number of sources with abstains (one source: GLC with the corruption matrix
    counted on gold); with E = log one-hot it is plain CE / GCE, which is what gold and pseudo-labelled rows
    get. The network learns p(y | x) from all rows at once, so symmetric noise averages out across similar
    rows, while structured noise (look-alike classes, one class flipped more than another) is undone by the
    confusion matrices instead of being learned.

    The table's first ``gold_rows`` rows (cross-fitting puts the gold rows first) are learnt with the
    unbounded -log P whatever ``loss`` says: the bound is for evidence that may be wrong, and a gold label is
    not, so bounding it would discount exactly the gold rows the network still gets wrong. A batch's rows
    are told apart by their index in the table (``rows``), not by their targets: a pseudo label looks as
    certain as a gold one."""

    def __init__(self, loss: str = "gce", q: float = 0.7, gold_rows: int = 0) -> None:
        super().__init__(loss, q)
        self.gold_rows = gold_rows

    def step(self, model, optimizer, xb, yb, wb, rows=None):
        with autocast(xb.device):
            logits = model(xb)
        log_p = torch.logsumexp(F.log_softmax(logits.float(), dim=1) + yb, dim=1)
        losses = -log_p if self.loss == "ce" else (1.0 - torch.exp(self.gce_q * log_p)) / self.gce_q
        if self.gold_rows and self.loss != "ce":
            if rows is None:
                raise ValueError("EvidenceLoss with gold rows needs the batch's row indices in the table")
            losses = torch.where(rows < self.gold_rows, -log_p, losses)
        loss = (losses * wb).sum() / wb.sum().clamp_min(1e-8)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

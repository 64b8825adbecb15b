"""Weak-training methods over the one training loop: ce, gce, confident_learning, clid_mu.

Arrays in, a trained network and a few method-specific figures out; no config, no tracking, so the
stage and the benchmark matrix call the very same code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from tasks.core.clid import ClidMonitor, ClidMu, ClidMuSettings
from tasks.core.device import resolve_device
from tasks.core.label_issues import find_label_issues
from tasks.core.training import EpochStats, FitResult, TrainSettings, fit, predict_proba

Method = Literal["ce", "gce", "confident_learning", "clid_mu"]
METHODS: tuple[str, ...] = ("ce", "gce", "confident_learning", "clid_mu")


@dataclass(frozen=True)
class ConfidentLearningSettings:
    folds: int = 3
    filter_by: str = "prune_by_noise_rate"  # cleanlab.filter.find_label_issues(filter_by=...)


@dataclass
class WeakFit:
    result: FitResult
    figures: dict[str, float] = field(default_factory=dict)  # logged as metrics


def train_weak_model(
    method: Method,
    build: Callable[[], nn.Module],
    x: np.ndarray,
    y: np.ndarray,
    settings: TrainSettings,
    meta_x: np.ndarray,
    x_dev: np.ndarray | None = None,
    y_dev: np.ndarray | None = None,
    clid: ClidMuSettings = ClidMuSettings(),
    cl: ConfidentLearningSettings = ConfidentLearningSettings(),
    gold_check: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> WeakFit:
    """Train on weak targets ``y`` (class indices, or soft labels for ce/gce/clid_mu).

    ``meta_x`` are unlabeled features: CLID-MU's meta set and, for every method, the rows on which the
    per-epoch CLID is measured. ``gold_check`` = (x, weak label, gold label) of gold rows that also carry
    a weak label: confident learning reports the precision of its removals on them.
    """
    device = resolve_device(settings.device)
    meta = torch.as_tensor(np.asarray(meta_x, dtype=np.float32)).to(device)
    dev = {"x_dev": x_dev, "y_dev": y_dev}
    figures: dict[str, float] = {}
    if method in ("ce", "gce"):
        result = fit(build(), x, y, replace(settings, loss=method), on_epoch=on_epoch,
                     monitor=ClidMonitor(meta, clid.meta_batch, clid.tau), **dev)
    elif method == "clid_mu":
        rule = ClidMu(meta, replace(clid, seed=settings.seed))
        result = fit(build(), x, y, settings, on_epoch=on_epoch, rule=rule, **dev)
        figures["selected_epochs"] = float(len(rule.selected_epochs))
        figures["meta_steps"] = float(rule.meta_steps)
        if x_dev is not None and y_dev is not None and len(y_dev):
            figures["ensemble_dev_accuracy"] = float((predict_proba(result.model, x_dev).argmax(1) == y_dev).mean())
    elif method == "confident_learning":
        result, figures = _confident_learning(build, x, y, settings, meta, clid, cl, gold_check, on_epoch, dev)
    else:
        raise ValueError(f"unknown weak-training method {method!r}; expected one of {METHODS}")
    figures |= clid_dev_correlation(result.history)
    return WeakFit(result, figures)


def clid_dev_correlation(history: list[EpochStats]) -> dict[str, float]:
    """Spearman rank correlation of per-epoch CLID with gold-dev accuracy (negative = CLID tracks quality)."""
    pairs = [(h.extra["clid"], h.dev_accuracy) for h in history if "clid" in h.extra and h.dev_accuracy is not None]
    if len(pairs) < 3 or len({p[0] for p in pairs}) < 2 or len({p[1] for p in pairs}) < 2:
        return {}
    rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return {"clid_dev_spearman": float(rho)} if np.isfinite(rho) else {}


def _confident_learning(build, x, y, settings, meta, clid, cl, gold_check, on_epoch, dev) -> tuple[FitResult, dict]:
    """cleanlab on out-of-fold probabilities: drop the label issues, train with CE on the rest."""
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
    keep = ~issues
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
    result = fit(build(), x[keep], y[keep], replace(settings, loss="ce"), on_epoch=on_epoch,
                 monitor=ClidMonitor(meta, clid.meta_batch, clid.tau), **dev)
    return result, figures

"""The one training loop every stage shares (weak, pseudo-label, full, gold-only baseline)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tasks.core.device import autocast, resolve_device
from tasks.core.losses import LossName, per_sample_loss


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    loss: LossName = "ce"
    gce_q: float = 0.7
    seed: int = 0
    device: str = "auto"


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    dev_accuracy: float | None
    dev_loss: float | None


@dataclass
class FitResult:
    model: nn.Module
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = -1

    @property
    def best_dev_accuracy(self) -> float | None:
        return self.history[self.best_epoch].dev_accuracy if self.history else None


def fit(
    model: nn.Module,
    x: np.ndarray,
    targets: np.ndarray,
    settings: TrainSettings,
    weights: np.ndarray | None = None,
    x_dev: np.ndarray | None = None,
    y_dev: np.ndarray | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> FitResult:
    """Train ``model`` on (x, targets[, weights]); keep the epoch with the best gold-dev score.

    ``targets`` are class indices (N,) or soft labels (N, C). Without a dev split the last epoch is
    kept. Data lives on the device as whole tensors: the datasets here fit in memory, and indexing a
    resident tensor beats a DataLoader for small rows.
    """
    if len(x) == 0:
        raise ValueError("cannot train on an empty set")
    if len(x) != len(targets):
        raise ValueError(f"{len(x)} feature rows but {len(targets)} targets")
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    model.to(device)
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)
    soft = np.asarray(targets).ndim == 2
    yt = torch.as_tensor(np.asarray(targets), dtype=torch.float32 if soft else torch.long, device=device)
    wt = torch.as_tensor(np.ones(len(x)) if weights is None else weights, dtype=torch.float32, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = max(1, -(-len(x) // settings.batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.lr, total_steps=settings.epochs * steps_per_epoch, pct_start=0.15
    )
    result = FitResult(model=model)
    best_key: tuple[float, float] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    for epoch in range(settings.epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator).to(device)
        total, seen = 0.0, 0
        for start in range(0, len(x), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            if len(idx) < 2 and len(x) >= 2:  # BatchNorm needs two rows; fold a lone tail row away
                continue
            with autocast(device):
                logits = model(xt[idx])
            losses = per_sample_loss(settings.loss, logits.float(), yt[idx], settings.gce_q)
            w = wt[idx]
            loss = (losses * w).sum() / w.sum().clamp_min(1e-8)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        dev_acc = dev_loss = None
        if x_dev is not None and y_dev is not None and len(x_dev) > 0:
            probs = predict_proba(model, x_dev, device=device)
            dev_acc = float((probs.argmax(1) == y_dev).mean())
            dev_loss = float(-np.log(probs[np.arange(len(y_dev)), y_dev] + 1e-7).mean())
        stats = EpochStats(epoch, total / max(seen, 1), dev_acc, dev_loss)
        result.history.append(stats)
        key = (dev_acc, -dev_loss) if dev_acc is not None and dev_loss is not None else (float(epoch), 0.0)
        if best_key is None or key >= best_key:
            best_key, result.best_epoch = key, epoch
            best_state = copy.deepcopy(model.state_dict())
        if on_epoch is not None:
            on_epoch(stats)
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    return result


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: np.ndarray, device: torch.device | str = "auto", batch_size: int = 8192
) -> np.ndarray:
    """Logits for ``x`` in batches, in eval mode, as float32 numpy."""
    device = resolve_device(device) if isinstance(device, str) else device
    model.to(device).eval()
    out = []
    for start in range(0, len(x), batch_size):
        xb = torch.as_tensor(np.asarray(x[start : start + batch_size], dtype=np.float32), device=device)
        with autocast(device):
            out.append(model(xb).float().cpu().numpy())
    if not out:
        return np.zeros((0, _num_outputs(model)), dtype=np.float32)
    return np.concatenate(out)


def predict_proba(
    model: nn.Module, x: np.ndarray, device: torch.device | str = "auto", batch_size: int = 8192
) -> np.ndarray:
    logits = predict_logits(model, x, device=device, batch_size=batch_size)
    return F.softmax(torch.from_numpy(logits), dim=1).numpy()


def _num_outputs(model: nn.Module) -> int:
    head = getattr(model, "head", None)
    return int(head.out_features) if isinstance(head, nn.Linear) else 0

"""The one training loop every method and stage shares.

A method is an :class:`UpdateRule`: how one mini-batch updates the network (plain weighted loss, or
CLID-MU's virtual step / meta step / actual step), what it measures after each epoch, and optionally
which network it hands back (CLID snapshot ensembling). Batching, devices, the schedule, dev-split
reporting and progress callbacks live here once.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from weakflow.tasks.core.device import autocast, resolve_device
from weakflow.tasks.core.images import rows_per_pass as picture_rows_per_pass
from weakflow.tasks.core.models import PictureNet
from weakflow.tasks.core.picture_rows import PictureRows
from weakflow.tasks.core.losses import LossName, per_sample_loss


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
    extra: dict[str, float] = field(default_factory=dict)  # e.g. {"clid": ...}


class UpdateRule(Protocol):
    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor,
             wb: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Update ``model`` on one batch (``rows``: its row indices in the training table, for rules that
        treat some rows apart); return the (detached) batch loss."""

    def end_epoch(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """Label-free measurements after an epoch (may keep snapshots)."""

    def select(self, model: nn.Module, history: list[EpochStats]) -> nn.Module | None:
        """The network to return, or None to keep the best gold-dev epoch."""

    # True when ``select`` hands back networks of its own choosing: then every epoch must be trained and
    # seen (cross-fitting keeps such a refit in step with its fold models). A rule without it counts as True.
    own_epochs: bool


class WeightedLoss:
    """Plain step: per-sample loss (CE or GCE), weighted mean, one optimizer step."""

    own_epochs = False

    def __init__(self, loss: LossName = "ce", gce_q: float = 0.7) -> None:
        self.loss, self.gce_q = loss, gce_q

    def step(self, model, optimizer, xb, yb, wb, rows=None):
        device = xb.device
        with autocast(device):
            logits = model(xb)
        losses = per_sample_loss(self.loss, logits.float(), yb, self.gce_q)
        loss = (losses * wb).sum() / wb.sum().clamp_min(1e-8)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    def end_epoch(self, model, epoch):
        return {}

    def select(self, model, history):
        return None


@dataclass
class FitResult:
    model: nn.Module
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = -1

    @property
    def best_dev_accuracy(self) -> float | None:
        return self.history[self.best_epoch].dev_accuracy if self.history else None


DROPOUT_STREAM = 1  # spawn key of a trainer's own random stream (dropout, the rule's draws) under its seed


class Trainer:
    """One network's training state: its data on the device, optimizer, schedule and batch order.

    :func:`fit` drives one trainer; :func:`tasks.core.crossfit.fit_folds` drives several, epoch by epoch, so
    every fold model (and the refit on all gold) can be stopped at the epoch chosen on all gold rows.
    ``x`` may be a tensor already on the device (shared by trainers of the same rows); ``rows`` restricts
    this trainer to some of them (a fold model never even indexes its held-out gold rows).
    """

    def __init__(self, model: nn.Module, x: np.ndarray | torch.Tensor, targets: np.ndarray, settings: TrainSettings,
                 weights: np.ndarray | None = None, rule: UpdateRule | None = None,
                 monitor: Callable[[nn.Module], dict[str, float]] | None = None,
                 rows: np.ndarray | None = None) -> None:
        if len(x) != len(targets):
            raise ValueError(f"{len(x)} feature rows but {len(targets)} targets")
        if len(x) == 0 or (rows is not None and len(rows) == 0):
            raise ValueError("cannot train on an empty set")
        self.settings, self.monitor = settings, monitor
        self.rule = rule or WeightedLoss(settings.loss, settings.gce_q)
        self.device = device = resolve_device(settings.device)
        torch.manual_seed(settings.seed)
        self.generator = torch.Generator().manual_seed(settings.seed)
        # Its own stream for dropout and the rule's draws: a trainer's result does not depend on which
        # other trainers ran between its epochs (cross-fitting may train the refit after its fold models).
        # Seeded apart from the batch order's generator, so the two streams are not the same numbers.
        self.rng_devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=self.rng_devices):
            torch.manual_seed(int(np.random.SeedSequence([settings.seed, DROPOUT_STREAM]).generate_state(1)[0]))
            self.rng = _rng_state(self.rng_devices)
        self.model = model.to(device)
        # a streamed picture table stays on disk and is read batch by batch (see _batches); else one tensor
        self.x = x if isinstance(x, (torch.Tensor, PictureRows)) else to_device(np.asarray(x, dtype=np.float32), device)
        soft = np.asarray(targets).ndim == 2
        self.y = to_device(np.asarray(targets, dtype=np.float32 if soft else np.int64), device)
        self.w = to_device(np.ones(len(targets), dtype=np.float32) if weights is None else np.asarray(weights, np.float32),
                           device)
        self.subset = None if rows is None else torch.as_tensor(np.asarray(rows, dtype=np.int64)).to(device)
        self.rows = n = len(targets) if rows is None else len(rows)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        steps_per_epoch = max(1, -(-n // settings.batch_size))
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=settings.lr, total_steps=settings.epochs * steps_per_epoch, pct_start=0.15)

    def epoch(self, epoch: int) -> tuple[float, dict[str, float]]:
        """One pass over the rows in a fresh random order; (mean train loss, the rule's and monitor's extras)."""
        with torch.random.fork_rng(devices=self.rng_devices):
            _set_rng_state(self.rng, self.rng_devices)
            out = self._epoch(epoch)
            self.rng = _rng_state(self.rng_devices)
        return out

    def _epoch(self, epoch: int) -> tuple[float, dict[str, float]]:
        model, device, bs = self.model, self.device, self.settings.batch_size
        model.train()
        order = torch.randperm(self.rows, generator=self.generator).to(device)
        if self.subset is not None:
            order = self.subset[order]
        # BatchNorm needs two rows; a lone tail row is folded away
        batches = [order[start : start + bs] for start in range(0, self.rows, bs)
                   if min(bs, self.rows - start) >= 2 or self.rows < 2]
        total = torch.zeros((), device=device)
        seen = 0
        for idx, xb in zip(batches, self._batches(batches)):
            loss = self.rule.step(model, self.optimizer, xb, self.y[idx], self.w[idx], idx)
            self.scheduler.step()
            total += loss * len(idx)
            seen += len(idx)
        extra = self.rule.end_epoch(model, epoch) | (self.monitor(model) if self.monitor else {})
        return float(total) / max(seen, 1), extra


    def _batches(self, batches: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Each batch's features on the device: rows of the resident tensor, or of a streamed picture table
        read from the decoded cache by DataLoader workers (a few batches ahead) as uint8 and made float32 on the
        device, the same values the resident tensor holds."""
        if not isinstance(self.x, PictureRows):
            yield from (self.x[idx] for idx in batches)
            return
        rows = self.x
        cuda = self.device.type == "cuda"
        # its own generator: a DataLoader draws its workers' seed, which must not move the training's random stream
        loader = DataLoader(_Batches(rows, [idx.cpu().numpy() for idx in batches]), batch_size=None, shuffle=False,
                            num_workers=rows.workers, pin_memory=cuda, prefetch_factor=4 if rows.workers else None,
                            generator=torch.Generator().manual_seed(0))
        for side, pixels in loader:
            side = side.to(self.device, non_blocking=cuda)
            pixels = pixels.to(self.device, non_blocking=cuda).reshape(len(pixels), -1).float()
            yield torch.cat([side, pixels], dim=1) if side.shape[1] else pixels


class _Batches(Dataset):
    """Batch ``i`` of an epoch as (side features, uint8 pixels): what one DataLoader worker reads."""

    def __init__(self, rows: PictureRows, batches: list[np.ndarray]) -> None:
        self.rows, self.batches = rows, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        side, pixels = self.rows[self.batches[i]].parts()
        return torch.from_numpy(side), torch.from_numpy(pixels)


def _rng_state(devices: list[torch.device]) -> list[torch.Tensor]:
    return [torch.get_rng_state(), *(torch.cuda.get_rng_state(d) for d in devices)]


def _set_rng_state(state: list[torch.Tensor], devices: list[torch.device]) -> None:
    torch.set_rng_state(state[0])
    for d, s in zip(devices, state[1:]):
        torch.cuda.set_rng_state(s, d)


def dev_scores(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean negative log-likelihood) of ``logits`` on labels ``y``."""
    probs = F.softmax(torch.from_numpy(np.asarray(logits, dtype=np.float32)), dim=1).numpy()
    return float((probs.argmax(1) == y).mean()), float(-np.log(probs[np.arange(len(y)), y] + 1e-7).mean())


def fit(
    model: nn.Module,
    x: np.ndarray,
    targets: np.ndarray,
    settings: TrainSettings,
    weights: np.ndarray | None = None,
    x_dev: np.ndarray | None = None,
    y_dev: np.ndarray | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    rule: UpdateRule | None = None,
    monitor: Callable[[nn.Module], dict[str, float]] | None = None,
) -> FitResult:
    """Train ``model`` on (x, targets[, weights]) with ``rule`` (default: weighted ``settings.loss``).

    ``targets`` are class indices (N,) or soft labels (N, C). Unless the rule selects its own network,
    the epoch with the best gold-dev accuracy (ties: lower dev loss, then later) is returned; without
    a dev split, the last epoch. ``monitor`` adds label-free per-epoch numbers (e.g. CLID). Data lives
    on the device as whole tensors: indexing a resident tensor beats a DataLoader for small rows.
    """
    trainer = Trainer(model, x, targets, settings, weights, rule, monitor)
    result = FitResult(model=trainer.model)
    best_key: tuple[float, float, float] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    has_dev = x_dev is not None and y_dev is not None and len(x_dev) > 0
    for epoch in range(settings.epochs):
        train_loss, extra = trainer.epoch(epoch)
        dev_acc = dev_loss = None
        if has_dev:
            dev_acc, dev_loss = dev_scores(predict_logits(trainer.model, x_dev, device=trainer.device), y_dev)
        stats = EpochStats(epoch, train_loss, dev_acc, dev_loss, extra)
        result.history.append(stats)
        key = (dev_acc, -dev_loss, float(epoch)) if dev_acc is not None and dev_loss is not None else (0.0, 0.0, float(epoch))
        if best_key is None or key >= best_key:
            best_key, result.best_epoch = key, epoch
            best_state = copy.deepcopy(trainer.model.state_dict())
        if on_epoch is not None:
            on_epoch(stats)
    selected = trainer.rule.select(trainer.model, result.history)
    if selected is not None:
        result.model = selected
    else:
        assert best_state is not None
        trainer.model.load_state_dict(best_state)
    result.model.eval()
    return result


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def rows_per_pass(model: nn.Module) -> int:
    """Rows per forward pass when scoring: 8,192 for feature vectors (and the small CNN of pixel columns); for a
    picture network :func:`tasks.core.images.rows_per_pass` of its picture size."""
    shape = next((m.image_shape for m in model.modules() if isinstance(m, PictureNet)), None)
    return 8192 if shape is None else picture_rows_per_pass(int(np.prod(shape)))


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: np.ndarray, device: torch.device | str = "auto", batch_size: int | None = None
) -> np.ndarray:
    """Logits for ``x`` in batches (default :func:`rows_per_pass`), in eval mode, as float32 numpy."""
    batch_size = batch_size or rows_per_pass(model)
    device = resolve_device(device) if isinstance(device, str) else device
    was_training = model.training
    model.to(device).eval()
    out = []
    for start in range(0, len(x), batch_size):
        xb = torch.as_tensor(np.asarray(x[start : start + batch_size], dtype=np.float32), device=device)
        with autocast(device):
            out.append(model(xb).float().cpu().numpy())
    model.train(was_training)
    if not out:
        return np.zeros((0, _num_outputs(model)), dtype=np.float32)
    return np.concatenate(out)


def predict_proba(
    model: nn.Module, x: np.ndarray, device: torch.device | str = "auto", batch_size: int | None = None
) -> np.ndarray:
    logits = predict_logits(model, x, device=device, batch_size=batch_size)
    return F.softmax(torch.from_numpy(logits), dim=1).numpy()


def _num_outputs(model: nn.Module) -> int:
    heads = [m for name, m in model.named_modules() if name.endswith("head") and isinstance(m, nn.Linear)]
    return int(heads[0].out_features) if heads else 0

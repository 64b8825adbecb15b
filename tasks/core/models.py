"""Networks: an MLP for feature vectors, a small CNN for pixel columns, a residual CNN for pictures.

Both carry their input standardisation as buffers, so a saved model takes raw features.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import nn

from weakflow.tasks.core.picture_rows import PictureRows, blocks

BLOCK_VALUES = 1 << 22  # feature values per block when fitting the input scaling (16 MiB of float32)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network before loading its weights."""

    kind: Literal["mlp", "cnn", "resnet"]
    num_features: int
    num_classes: int
    hidden: tuple[int, ...] = (256, 256)
    dropout: float = 0.2
    image_shape: tuple[int, int, int] | None = None  # (channels, height, width) for the CNN
    ensemble: int = 1  # > 1: a LogitEnsemble of that many networks (a bagged refit, or CLID-MU snapshots)
    pool: bool = False  # CNN: 2x2 max-pool between the conv blocks (new models; specs saved before it lack it)
    temperature: float = 1.0  # logits are divided by it (calibration fitted after training; 1 while training)
    # resnet: (crop padding as a share of the side, flip 0/1, brightness/contrast jitter) while training; None: off
    augment: tuple[float, float, float] | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        data = dict(data)
        data["hidden"] = tuple(data["hidden"])
        for key in ("image_shape", "augment"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


class Standardize(nn.Module):
    """(x - mean) / std with statistics fitted on training features and saved with the model."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))

    def fit(self, x: np.ndarray | PictureRows, image_shape: tuple[int, int, int] | None = None) -> None:
        """Per-feature statistics; with ``image_shape`` the last ``prod(image_shape)`` features are pixels and
        share one mean and sd per channel (a picture shifted by an augmentation crop is standardised alike).
        Read in blocks of rows, merged exactly (Chan et al.), so a table streamed from disk is never whole."""
        width = x.shape[1]
        n, mean, m2 = 0, np.zeros(width), np.zeros(width)  # rows so far, their means, summed squared deviations
        for block in blocks(x, max(1, BLOCK_VALUES // max(width, 1))):
            k = len(block)
            b_mean = block.mean(axis=0, dtype=np.float64)
            b_m2 = ((block - b_mean) ** 2).sum(axis=0, dtype=np.float64)
            delta = b_mean - mean
            mean = mean + delta * (k / (n + k))
            m2 = m2 + b_m2 + delta**2 * (n * k / (n + k))
            n += k
        if image_shape is not None and n:
            c, per = image_shape[0], int(np.prod(image_shape[1:]))
            at = width - c * per
            for ch in range(c):
                cols = slice(at + ch * per, at + (ch + 1) * per)
                pooled = mean[cols].mean()  # every pixel column has n values: the channel's mean and spread
                m2[cols] = (m2[cols].sum() + n * ((mean[cols] - pooled) ** 2).sum()) / per
                mean[cols] = pooled
        std = np.sqrt(m2 / max(n, 1))
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(np.where(std < 1e-6, 1.0, std), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class MLP(nn.Module):
    temperature = 1.0  # set on a trained network by calibrate(); a plain attribute, so state dicts are unchanged

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.scale = Standardize(spec.num_features)
        layers: list[nn.Module] = []
        width = spec.num_features
        for h in spec.hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(spec.dropout)]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, spec.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation (used by CLID-style label-free scores)."""
        return self.body(self.scale(x))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        f = self.features(x)
        return (f, self.head(f)) if return_features else _tempered(self.head(f), self.temperature)


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head; input is flat features reshaped to ``image_shape``."""

    temperature = 1.0

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        if spec.image_shape is None:
            raise ValueError("the CNN needs data.image_shape (channels, height, width)")
        c, h, w = spec.image_shape
        if c * h * w != spec.num_features:
            raise ValueError(f"image_shape {spec.image_shape} has {c * h * w} values, features have {spec.num_features}")
        self.image_shape = (c, h, w)
        self.scale = Standardize(spec.num_features)
        width = spec.hidden[0] if spec.hidden else 64
        # pooling before the wider block: a quarter of its work, and no less accurate on small images
        # (digits: 98.6-100% vs 98.1-99.7% on 3 splits, 1.6x faster per epoch; docs/benchmarks.md)
        pool = [nn.MaxPool2d(2)] if spec.pool and min(h, w) >= 4 else []
        self.body = nn.Sequential(
            nn.Conv2d(c, width // 2, 3, padding=1), nn.BatchNorm2d(width // 2), nn.ReLU(), *pool,
            nn.Conv2d(width // 2, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(spec.dropout),
        )
        self.head = nn.Linear(width * 4, spec.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # channels_last on CPU too: oneDNN's convolutions run it 10-30% faster on these small images
        x = self.scale(x).view(-1, *self.image_shape).contiguous(memory_format=torch.channels_last)
        return self.body(x)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        f = self.features(x)
        return (f, self.head(f)) if return_features else _tempered(self.head(f), self.temperature)


class Block(nn.Module):
    """A basic residual block (two 3x3 convs with batch norm; a strided 1x1 shortcut where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = (nn.Identity() if stride == 1 and c_in == c_out else
                      nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


def augment_pictures(x: torch.Tensor, padding: float, flip: float, jitter: float) -> torch.Tensor:
    """Standard picture augmentation on a standardised batch (B, C, H, W), each picture its own draw: a random
    crop after zero padding (zero = the mean colour), a horizontal flip, brightness and contrast jitter."""
    b, _, h, w = x.shape
    pad = int(round(padding * min(h, w)))
    if pad > 0:
        padded = nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
        dx = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
        ys = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
        xs = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
        # a gather, not advanced indexing: with the latter, oneDNN's convolution backward on CPU (torch 2.13)
        # corrupted the heap for narrow networks (cnn_width 16; tests/model/test_picture_pipeline.py aborted)
        at = (ys * padded.shape[-1] + xs).reshape(b, 1, h * w).expand(b, x.shape[1], h * w)
        x = padded.reshape(b, x.shape[1], -1).gather(2, at).reshape(b, x.shape[1], h, w)
    if flip:
        flipped = torch.rand(b, device=x.device) < 0.5
        x = torch.where(flipped[:, None, None, None], x.flip(-1), x)
    if jitter > 0:
        scale = 1 + (torch.rand(b, 1, 1, 1, device=x.device) * 2 - 1) * jitter
        shift = (torch.rand(b, 1, 1, 1, device=x.device) * 2 - 1) * jitter
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * scale + mean + shift
    return x


class PictureNet(nn.Module):
    """A small residual CNN for pictures: a 3x3 stem, three residual stages (widths w/4, w/2, w with
    ``w = hidden[0]``, each after the first halving the resolution; pictures above 32 px are halved by a
    strided stem first), global average pooling and a linear head. Side features (numbers, text features)
    before the pixels are standardised and joined at the head. Augments its pictures in training mode only,
    so every training method gets augmentation and a saved model scores plain pictures."""

    temperature = 1.0

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        if spec.image_shape is None:
            raise ValueError("the picture network needs image_shape (channels, height, width)")
        c, h, w = spec.image_shape
        self.image_shape = (c, h, w)
        self.side = spec.num_features - c * h * w
        if self.side < 0:
            raise ValueError(f"image_shape {spec.image_shape} has {c * h * w} values, features have {spec.num_features}")
        self.scale = Standardize(spec.num_features)
        self.augment = spec.augment
        width = spec.hidden[0] if spec.hidden else 64
        w1, w2, w3 = max(4, width // 4), max(4, width // 2), width
        stride = 2 if min(h, w) > 32 else 1
        self.stem = nn.Sequential(nn.Conv2d(c, w1, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(w1), nn.ReLU())
        self.body = nn.Sequential(Block(w1, w1, 1), Block(w1, w2, 2), Block(w2, w3, 2),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(spec.dropout))
        self.head = nn.Linear(w3 + self.side, spec.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.scale(x)
        side, pixels = x[:, :self.side], x[:, self.side:].reshape(-1, *self.image_shape)
        if self.training and self.augment is not None:
            pixels = augment_pictures(pixels, *self.augment)
        f = self.body(self.stem(pixels.contiguous(memory_format=torch.channels_last)))
        return torch.cat([f, side], dim=1) if self.side else f

    def forward(self, x: torch.Tensor, return_features: bool = False):
        f = self.features(x)
        return (f, self.head(f)) if return_features else _tempered(self.head(f), self.temperature)


class LogitEnsemble(nn.Module):
    """Mean logits of several snapshots of one network (CLID snapshot ensembling)."""

    temperature = 1.0

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _tempered(torch.stack([m(x) for m in self.members]).mean(dim=0), self.temperature)


def fold_ensemble(refit: nn.Module, folds: list[nn.Module]) -> LogitEnsemble:
    """One network averaging the logits of the refit and the fold models (a bagged refit's or a snapshot
    ensemble's members each count as one): the k fold models are already trained and differ from the refit
    only in the gold fold each held out, so averaging them costs no training, only k more forward passes."""
    members = [m for net in (refit, *folds) for m in (net.members if isinstance(net, LogitEnsemble) else [net])]
    return LogitEnsemble(members).eval()


def _tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits if temperature == 1.0 else logits / temperature


def calibrated(model: nn.Module, spec: ModelSpec, temperature: float) -> tuple[nn.Module, ModelSpec]:
    """A copy of a trained network whose logits are divided by ``temperature``, and its spec (so the saved
    model answers with calibrated confidences wherever it is loaded)."""
    import copy

    out = copy.deepcopy(model)
    out.temperature = float(temperature)
    return out, replace(spec, temperature=float(temperature))


def build_model(spec: ModelSpec) -> nn.Module:
    if spec.ensemble > 1:
        model: nn.Module = LogitEnsemble([build_model(replace(spec, ensemble=1, temperature=1.0))
                                          for _ in range(spec.ensemble)])
    elif spec.kind == "mlp":
        model = MLP(spec)
    elif spec.kind == "cnn":
        model = SmallCNN(spec)
    elif spec.kind == "resnet":
        model = PictureNet(spec)
    else:
        raise ValueError(f"unknown model kind {spec.kind!r}; expected 'mlp', 'cnn' or 'resnet'")
    if spec.temperature != 1.0:
        model.temperature = spec.temperature
    return model


def replace_ensemble(spec: ModelSpec, model: nn.Module) -> ModelSpec:
    """The spec that rebuilds ``model``: records the member count of a snapshot ensemble."""
    return replace(spec, ensemble=len(model.members) if isinstance(model, LogitEnsemble) else 1)

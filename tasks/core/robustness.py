"""Corruption suite for out-of-distribution robustness: corrupt the test split, score each model.

Pure numpy (no Prefect, no MLflow, no torch needed). Every corruption takes a ``severity`` in [0, 1]:
0 returns the input unchanged, 1 is the strongest level of the suite. Random draws depend only on
``seed`` and the corruption (never on the severity), so a higher severity corrupts the same rows and
features further: accuracy falls off smoothly rather than jumping between unrelated draws.

Feature vectors (any data):

* ``gaussian_noise``: add N(0, (severity x per-feature std)^2); at 1 the noise is as large as the spread
  of each feature.
* ``feature_dropout``: set a share (severity x 0.5) of the entries to 0, as sensors that stop reporting.
* ``scaling``: multiply each feature by one gain in [2^-severity, 2^severity] (a unit or calibration
  change of that feature, the same for every row).

Images (when an image shape (C, H, W) is given), additionally:

* ``brightness_contrast``: contrast towards each image's mean by (1 - 0.5 x severity), brightness up by
  0.15 x severity of the value range, clipped to the range (at 1, close to ``simulate-traffic --shift
  brightness``).
* ``occlusion``: a square patch of side round(severity x min(H, W) / 2) at a random place per image, set
  to the range's minimum (background).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

VECTOR_CORRUPTIONS: tuple[str, ...] = ("gaussian_noise", "feature_dropout", "scaling")
IMAGE_CORRUPTIONS: tuple[str, ...] = ("brightness_contrast", "occlusion")
ALL_CORRUPTIONS: tuple[str, ...] = VECTOR_CORRUPTIONS + IMAGE_CORRUPTIONS


def corruptions_for(image_shape: Sequence[int] | None) -> tuple[str, ...]:
    """The suite that applies to data of this shape: vector corruptions, plus image ones for images."""
    return VECTOR_CORRUPTIONS + (IMAGE_CORRUPTIONS if image_shape is not None else ())


@dataclass(frozen=True)
class Reference:
    """Statistics the corruptions are scaled by (fitted on the clean split being corrupted)."""

    std: np.ndarray  # (F,) per-feature standard deviation
    low: float  # value range of the data, for brightness and occlusion
    high: float

    @classmethod
    def fit(cls, x: np.ndarray) -> Reference:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"expected a non-empty (rows, features) array, got shape {x.shape}")
        return cls(x.std(axis=0), float(x.min()), float(x.max()))


def _rng(seed: int, kind: str) -> np.random.Generator:
    return np.random.default_rng([seed, ALL_CORRUPTIONS.index(kind)])


def _check(x: np.ndarray, kind: str, severity: float, image_shape: Sequence[int] | None) -> None:
    if kind not in ALL_CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; expected one of {list(ALL_CORRUPTIONS)}")
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"corruption severity must be in [0, 1], got {severity}")
    if kind in IMAGE_CORRUPTIONS:
        if image_shape is None:
            raise ValueError(f"corruption {kind!r} needs an image shape (C, H, W)")
        if int(np.prod(image_shape)) != x.shape[1]:
            raise ValueError(f"image shape {tuple(image_shape)} has {int(np.prod(image_shape))} values, "
                             f"but the rows have {x.shape[1]} features")


def corrupt(x: np.ndarray, kind: str, severity: float, seed: int = 0, image_shape: Sequence[int] | None = None,
            reference: Reference | None = None) -> np.ndarray:
    """``x`` (rows, features) corrupted by ``kind`` at ``severity``; a new float32 array (``x`` is untouched).

    Deterministic given ``seed``; ``reference`` defaults to statistics of ``x`` itself."""
    x = np.asarray(x, dtype=np.float32)
    _check(x, kind, severity, image_shape)
    if severity == 0.0 or len(x) == 0:
        return x.copy()
    ref = reference or Reference.fit(x)
    rng = _rng(seed, kind)
    n, f = x.shape
    if kind == "gaussian_noise":
        noise = rng.standard_normal((n, f), dtype=np.float32)
        return x + noise * (severity * ref.std).astype(np.float32)
    if kind == "feature_dropout":
        keep = rng.random((n, f), dtype=np.float32) >= 0.5 * severity
        return np.where(keep, x, np.float32(0.0))
    if kind == "scaling":
        gain = np.exp2(rng.uniform(-1.0, 1.0, size=f) * severity).astype(np.float32)
        return x * gain
    c, h, w = (int(v) for v in image_shape)  # type: ignore[union-attr]
    img = x.reshape(n, c, h, w)
    if kind == "brightness_contrast":
        mean = img.mean(axis=(1, 2, 3), keepdims=True)
        out = (img - mean) * (1.0 - 0.5 * severity) + mean + 0.15 * severity * (ref.high - ref.low)
        return np.clip(out, ref.low, ref.high).reshape(n, f).astype(np.float32)
    # occlusion: the patch position is drawn per image from uniforms, so it nests across severities
    side = int(round(severity * min(h, w) / 2))
    out = img.copy()
    if side == 0:
        return out.reshape(n, f)
    u = rng.random((n, 2))
    top = np.floor(u[:, 0] * (h - side + 1)).astype(int)
    left = np.floor(u[:, 1] * (w - side + 1)).astype(int)
    rows = top[:, None] + np.arange(side)  # (n, side)
    cols = left[:, None] + np.arange(side)
    mask = np.zeros((n, h, w), dtype=bool)
    mask[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]] = True
    out[np.broadcast_to(mask[:, None], out.shape)] = ref.low
    return out.reshape(n, f)


@dataclass
class CorruptedBatch:
    """Every (corruption, severity) copy of a split stacked into one array, to score in one pass."""

    x: np.ndarray  # (len(cells) * rows, features)
    cells: list[tuple[str, float]]
    rows: int


def corrupted_batch(x: np.ndarray, kinds: Sequence[str], severities: Sequence[float], seed: int = 0,
                    image_shape: Sequence[int] | None = None) -> CorruptedBatch:
    x = np.asarray(x, dtype=np.float32)
    ref = Reference.fit(x)
    cells = [(k, float(s)) for k in kinds for s in severities]
    parts = [corrupt(x, k, s, seed, image_shape, ref) for k, s in cells]
    return CorruptedBatch(np.concatenate(parts) if parts else x[:0], cells, len(x))


def accuracy_by_cell(pred: np.ndarray, y: np.ndarray, batch: CorruptedBatch) -> np.ndarray:
    """Accuracy per (corruption, severity) cell from predictions on ``batch.x``."""
    correct = np.asarray(pred).reshape(len(batch.cells), batch.rows) == np.asarray(y)[None, :]
    return correct.mean(axis=1)


Predict = Callable[[np.ndarray], np.ndarray]  # features -> predicted class index per row


def robustness_table(models: dict[str, Predict], x: np.ndarray, y: np.ndarray, kinds: Sequence[str],
                     severities: Sequence[float], seed: int = 0,
                     image_shape: Sequence[int] | None = None) -> list[dict]:
    """One row per model, corruption and severity: accuracy, the clean accuracy and the drop from it.

    The corrupted copies are built once and every model scores the same rows."""
    y = np.asarray(y)
    batch = corrupted_batch(x, kinds, severities, seed, image_shape)
    rows: list[dict] = []
    both = np.concatenate([np.asarray(x, dtype=np.float32), batch.x])  # clean rows first: one pass per model
    for name, predict in models.items():
        pred = np.asarray(predict(both))
        clean = float((pred[: len(y)] == y).mean()) if len(y) else float("nan")
        acc = accuracy_by_cell(pred[len(y):], y, batch) if batch.cells else np.zeros(0)
        for (kind, severity), a in zip(batch.cells, acc):
            rows.append({"model": name, "corruption": kind, "severity": severity, "accuracy": float(a),
                         "clean_accuracy": clean, "drop": clean - float(a)})
    return rows

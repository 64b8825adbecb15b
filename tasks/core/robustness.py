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

Pictures (when a picture shape (C, S, S) is given: the last C x S x S features are a picture's uint8 pixels,
0..255, after any numeric or text features, which stay untouched), as in ImageNet-C (Hendrycks & Dietterich,
2019) with its five levels read as a continuous severity:

* ``pixel_noise``: add N(0, (0.38 x severity x 255)^2) per pixel (ImageNet-C's gaussian_noise, c up to 0.38).
* ``gaussian_blur``: a Gaussian blur of standard deviation severity x S / 32 px (CIFAR-10-C's strongest level
  is 1 px at 32 px, about ImageNet-C's 6 px at 224 px).
* ``brightness``: add 0.5 x severity to the value in HSV (grey: to the grey level), on a 0..1 scale.
* ``contrast``: pull each picture towards its mean by a factor 1 - 0.95 x severity (ImageNet-C's c down to 0.05).
* ``jpeg_compression``: encode and decode with Pillow at JPEG quality round(100 - 93 x severity) (7 at 1,
  ImageNet-C's strongest).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

VECTOR_CORRUPTIONS: tuple[str, ...] = ("gaussian_noise", "feature_dropout", "scaling")
IMAGE_CORRUPTIONS: tuple[str, ...] = ("brightness_contrast", "occlusion")
ALL_CORRUPTIONS: tuple[str, ...] = VECTOR_CORRUPTIONS + IMAGE_CORRUPTIONS
PICTURE_CORRUPTIONS: tuple[str, ...] = ("pixel_noise", "gaussian_blur", "brightness", "contrast", "jpeg_compression")
KNOWN_CORRUPTIONS: tuple[str, ...] = ALL_CORRUPTIONS + PICTURE_CORRUPTIONS  # appended: the old seeds stay


def corruptions_for(image_shape: Sequence[int] | None, picture_shape: Sequence[int] | None = None) -> tuple[str, ...]:
    """The suite that applies to data of this shape: vector corruptions, plus image ones for images; for
    pictures (``picture_shape``) the ImageNet-C corruptions of their pixels."""
    if picture_shape is not None:
        return PICTURE_CORRUPTIONS
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
    return np.random.default_rng([seed, KNOWN_CORRUPTIONS.index(kind)])


def _check(x: np.ndarray, kind: str, severity: float, image_shape: Sequence[int] | None,
           picture_shape: Sequence[int] | None = None) -> None:
    if kind not in KNOWN_CORRUPTIONS:
        known = KNOWN_CORRUPTIONS if picture_shape is not None else ALL_CORRUPTIONS
        raise ValueError(f"unknown corruption {kind!r}; expected one of {list(known)}")
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"corruption severity must be in [0, 1], got {severity}")
    if kind in PICTURE_CORRUPTIONS:
        if picture_shape is None:
            raise ValueError(f"corruption {kind!r} needs pictures (a picture shape (C, S, S))")
        if int(np.prod(picture_shape)) > x.shape[1]:
            raise ValueError(f"picture shape {tuple(picture_shape)} has {int(np.prod(picture_shape))} values, "
                             f"but the rows have {x.shape[1]} features")
        return
    if kind in IMAGE_CORRUPTIONS:
        if image_shape is None:
            raise ValueError(f"corruption {kind!r} needs an image shape (C, H, W)")
        if int(np.prod(image_shape)) != x.shape[1]:
            raise ValueError(f"image shape {tuple(image_shape)} has {int(np.prod(image_shape))} values, "
                             f"but the rows have {x.shape[1]} features")


def corrupt(x: np.ndarray, kind: str, severity: float, seed: int = 0, image_shape: Sequence[int] | None = None,
            reference: Reference | None = None, picture_shape: Sequence[int] | None = None) -> np.ndarray:
    """``x`` (rows, features) corrupted by ``kind`` at ``severity``; a new float32 array (``x`` is untouched).

    Deterministic given ``seed``; ``reference`` defaults to statistics of ``x`` itself. With ``picture_shape``
    the picture corruptions change the last prod(picture_shape) features (uint8 pixel values as floats)."""
    x = np.asarray(x, dtype=np.float32)
    _check(x, kind, severity, image_shape, picture_shape)
    if severity == 0.0 or len(x) == 0:
        return x.copy()
    if kind in PICTURE_CORRUPTIONS:
        at = x.shape[1] - int(np.prod(picture_shape))  # type: ignore[arg-type]
        pixels = np.clip(np.rint(x[:, at:]), 0, 255).astype(np.uint8).reshape(len(x), *picture_shape)  # type: ignore[misc]
        out = x.copy()
        out[:, at:] = corrupt_pictures(pixels, kind, severity, seed).reshape(len(x), -1)
        return out
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


def corrupt_pictures(pixels: np.ndarray, kind: str, severity: float, seed: int = 0) -> np.ndarray:
    """uint8 pictures (N, C, S, S) corrupted by one of :data:`PICTURE_CORRUPTIONS`; a new uint8 array.

    The noise draws depend on ``seed`` only, so a higher severity adds more of the same noise."""
    if kind not in PICTURE_CORRUPTIONS:
        raise ValueError(f"unknown picture corruption {kind!r}; expected one of {list(PICTURE_CORRUPTIONS)}")
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"corruption severity must be in [0, 1], got {severity}")
    pixels = np.asarray(pixels)
    if pixels.ndim != 4 or pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 pictures (rows, channels, size, size), got {pixels.dtype} {pixels.shape}")
    if severity == 0.0 or len(pixels) == 0:
        return pixels.copy()
    x = pixels.astype(np.float32) / 255.0
    if kind == "pixel_noise":
        noise = _rng(seed, kind).standard_normal(x.shape, dtype=np.float32)
        x = x + noise * np.float32(0.38 * severity)
    elif kind == "contrast":
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        x = (x - mean) * np.float32(1.0 - 0.95 * severity) + mean
    elif kind == "brightness":
        return _per_picture(pixels, lambda img: _brighter(img, 0.5 * severity))
    elif kind == "gaussian_blur":
        from PIL import ImageFilter

        radius = severity * pixels.shape[-1] / 32.0
        return _per_picture(pixels, lambda img: img.filter(ImageFilter.GaussianBlur(radius)))
    else:  # jpeg_compression
        quality = int(round(100 - 93 * severity))
        return _per_picture(pixels, lambda img: _jpeg(img, quality))
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _per_picture(pixels: np.ndarray, change: Callable) -> np.ndarray:
    """Apply a Pillow operation to every picture of (N, C, S, S) uint8 (grey as mode L, colour as RGB)."""
    from PIL import Image

    out = np.empty_like(pixels)
    for i, p in enumerate(pixels):
        img = Image.fromarray(p[0], "L") if p.shape[0] == 1 else Image.fromarray(np.ascontiguousarray(p.transpose(1, 2, 0)), "RGB")
        a = np.asarray(change(img), dtype=np.uint8)
        out[i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return out


def _brighter(img, amount: float):
    """ImageNet-C brightness: the HSV value (grey: the level) raised by ``amount`` on a 0..1 scale."""
    from PIL import Image

    if img.mode == "L":
        return Image.fromarray(np.clip(np.asarray(img, np.float32) + amount * 255.0, 0, 255).round().astype(np.uint8), "L")
    hsv = np.asarray(img.convert("HSV"), dtype=np.float32)
    hsv[..., 2] = np.clip(hsv[..., 2] + amount * 255.0, 0, 255)
    return Image.fromarray(hsv.round().astype(np.uint8), "HSV").convert("RGB")


def _jpeg(img, quality: int):
    """Encoded as JPEG at ``quality`` and decoded again (its block and ringing artefacts)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert(img.mode)


@dataclass
class CorruptedBatch:
    """Every (corruption, severity) copy of a split stacked into one array, to score in one pass."""

    x: np.ndarray  # (len(cells) * rows, features)
    cells: list[tuple[str, float]]
    rows: int


def corrupted_batch(x: np.ndarray, kinds: Sequence[str], severities: Sequence[float], seed: int = 0,
                    image_shape: Sequence[int] | None = None, picture_shape: Sequence[int] | None = None) -> CorruptedBatch:
    x = np.asarray(x, dtype=np.float32)
    ref = Reference.fit(x)
    cells = [(k, float(s)) for k in kinds for s in severities]
    parts = [corrupt(x, k, s, seed, image_shape, ref, picture_shape) for k, s in cells]
    return CorruptedBatch(np.concatenate(parts) if parts else x[:0], cells, len(x))


def accuracy_by_cell(pred: np.ndarray, y: np.ndarray, batch: CorruptedBatch) -> np.ndarray:
    """Accuracy per (corruption, severity) cell from predictions on ``batch.x``."""
    correct = np.asarray(pred).reshape(len(batch.cells), batch.rows) == np.asarray(y)[None, :]
    return correct.mean(axis=1)


Predict = Callable[[np.ndarray], np.ndarray]  # features -> predicted class index per row


def robustness_table(models: dict[str, Predict], x: np.ndarray, y: np.ndarray, kinds: Sequence[str],
                     severities: Sequence[float], seed: int = 0,
                     image_shape: Sequence[int] | None = None, picture_shape: Sequence[int] | None = None) -> list[dict]:
    """One row per model, corruption and severity: accuracy, the clean accuracy and the drop from it.

    The corrupted copies are built once and every model scores the same rows."""
    y = np.asarray(y)
    if picture_shape is not None:  # one cell at a time: a stack of every corrupted copy of large pictures won't fit
        return _table_by_cell(models, x, y, kinds, severities, seed, image_shape, picture_shape)
    batch = corrupted_batch(x, kinds, severities, seed, image_shape, picture_shape)
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


def _table_by_cell(models: dict[str, Predict], x: np.ndarray, y: np.ndarray, kinds: Sequence[str],
                   severities: Sequence[float], seed: int, image_shape: Sequence[int] | None,
                   picture_shape: Sequence[int]) -> list[dict]:
    """:func:`robustness_table`, each corrupted copy built, scored by every model and dropped in turn."""
    x = np.asarray(x, dtype=np.float32)
    ref = Reference.fit(x) if any(k not in PICTURE_CORRUPTIONS for k in kinds) else None  # pictures need none
    clean = {name: float((np.asarray(predict(x)) == y).mean()) if len(y) else float("nan")
             for name, predict in models.items()}
    rows: list[dict] = []
    for kind in kinds:
        for severity in severities:
            corrupted = corrupt(x, kind, float(severity), seed, image_shape, ref, picture_shape)
            for name, predict in models.items():
                a = float((np.asarray(predict(corrupted)) == y).mean()) if len(y) else float("nan")
                rows.append({"model": name, "corruption": kind, "severity": float(severity), "accuracy": a,
                             "clean_accuracy": clean[name], "drop": clean[name] - a})
    return sorted(rows, key=lambda r: list(models).index(r["model"]))  # one model's rows together, as above

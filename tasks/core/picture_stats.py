"""Small numbers that describe a picture (brightness, contrast, sharpness, size, colour), for drift checks.

The model server keeps no picture bytes in its prediction log, only a hash, the byte size and these
descriptors per picture, so the drift check compares served pictures with the training ones on what it can
still see. Computed on what the model sees (the picture decoded to its :class:`tasks.core.images.ImageFormat`,
so the reference and the served pictures are measured at the same resolution), with the original width and
height given beside it. Also the model's picture embedding (:func:`predict_with_embedding`), logged per
served row, so embedding drift needs no bytes either. Only numpy at import; PIL and torch lazily.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

# the per-picture descriptors, in this order; values: width/height in pixels, the rest on a 0..1 scale
DESCRIPTORS = ("width", "height", "brightness", "contrast", "sharpness", "red", "green", "blue", "colourfulness")
HASH, BYTES = "sha256", "bytes"  # what the prediction log keeps of the picture itself
EMBEDDING = "embedding"  # the model's picture embedding in the log: <column>:embedding_<i>
GREY = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")  # PIL modes read as one channel
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, what Pillow's convert("L") uses


def logged_names(column: str) -> list[str]:
    """The prediction-log fields for a picture column: ``<column>:sha256``, ``<column>:bytes``, then
    ``<column>:<descriptor>`` for each of :data:`DESCRIPTORS`."""
    return [f"{column}:{HASH}", f"{column}:{BYTES}", *(f"{column}:{d}" for d in DESCRIPTORS)]


def embedding_names(column: str, dims: int) -> list[str]:
    """The prediction-log fields of the model's picture embedding (see :func:`predict_with_embedding`):
    ``<column>:embedding_0`` ... ``<column>:embedding_<dims-1>``, as :mod:`monitoring.reference` names the
    reference's."""
    return [f"{column}:{EMBEDDING}_{k}" for k in range(dims)]


def predict_with_embedding(model: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(probabilities, picture embedding or None)`` for the feature rows ``x`` from an eval-mode network.
    The embedding is the picture network's pooled features (``PictureNet.features``, its picture part: the
    side features joined after it are left out), what the drift check compares beside the descriptors, from
    the same forward pass; a snapshot ensemble gives its first member's (as :mod:`monitoring.reference` does);
    other networks (MLP, CNN) give None. The saved model's temperature applies to the probabilities."""
    import torch

    net = model
    while hasattr(net, "members"):  # LogitEnsemble
        net = net.members[0]
    with torch.inference_mode():
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if type(net).__name__ != "PictureNet":
            return torch.softmax(model(t).float(), dim=1).numpy(), None
        if net is model:
            features, logits = model(t, return_features=True)
            temperature = float(getattr(model, "temperature", 1.0))
            logits = logits if temperature == 1.0 else logits / temperature
        else:
            logits, features = model(t), net.features(t)
        side = int(getattr(net, "side", 0))
        return torch.softmax(logits.float(), dim=1).numpy(), features[:, :features.shape[1] - side].float().numpy()


def _as_chw(picture: Any) -> np.ndarray:
    """uint8 (C, H, W) from a uint8 (C, H, W) / (H, W) array or a PIL image (any mode, made 8-bit L or RGB)."""
    if hasattr(picture, "convert") and hasattr(picture, "size"):  # a PIL image, without importing PIL
        img = picture if picture.mode in ("L", "RGB") else picture.convert("L" if picture.mode in GREY else "RGB")
        a = np.asarray(img, dtype=np.uint8)
        return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    a = np.asarray(picture)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[0] not in (1, 3):
        raise ValueError(f"expected a picture as uint8 (channels, height, width) with 1 or 3 channels; got shape "
                         f"{a.shape}")
    return a


def picture_descriptors(picture: Any, width: int | None = None, height: int | None = None) -> dict[str, float]:
    """``{descriptor: value}`` for one picture (uint8 (C, H, W) array, or a PIL image).

    brightness and contrast: mean and standard deviation of the luminance (0..1); sharpness: variance of the
    4-neighbour Laplacian of the luminance (0..1 scale; blur lowers it); red/green/blue: channel means (a grey
    picture has all three equal to its brightness); colourfulness: Hasler and Suesstrunk's measure (0 for
    grey). ``width``/``height``: the original picture's size when ``picture`` is already resized (default:
    its own size). A few sums per picture (the server computes it per request)."""
    a = _as_chw(picture).astype(np.float64) / 255.0
    c, h, w = a.shape
    luma = a[0] if c == 1 else np.tensordot(LUMA, a, axes=1)
    brightness, contrast = _mean_std(luma)
    if h >= 3 and w >= 3:
        lap = luma[1:-1, :-2] + luma[1:-1, 2:] + luma[:-2, 1:-1] + luma[2:, 1:-1] - 4.0 * luma[1:-1, 1:-1]
        sharpness = _mean_std(lap)[1] ** 2
    else:
        sharpness = 0.0
    if c == 1:
        means, colourfulness = [brightness] * 3, 0.0
    else:
        means = a.reshape(3, -1).mean(axis=1).tolist()
        (rg_mean, rg_std), (yb_mean, yb_std) = _mean_std(a[0] - a[1]), _mean_std(0.5 * (a[0] + a[1]) - a[2])
        colourfulness = float(np.hypot(rg_std, yb_std) + 0.3 * np.hypot(rg_mean, yb_mean))
    return {"width": float(w if width is None else width), "height": float(h if height is None else height),
            "brightness": brightness, "contrast": contrast, "sharpness": float(sharpness),
            "red": float(means[0]), "green": float(means[1]), "blue": float(means[2]), "colourfulness": colourfulness}


def _mean_std(a: np.ndarray) -> tuple[float, float]:
    flat = a.ravel()
    mean = float(flat.sum()) / flat.size
    return mean, float(np.sqrt(max(float(flat @ flat) / flat.size - mean * mean, 0.0)))


def picture_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a picture file's bytes, from its header: a PNG's IHDR directly, else Pillow's header
    reading (no pixels decoded)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.size


def picture_record(column: str, data: bytes, pixels: np.ndarray, width: int, height: int) -> dict[str, Any]:
    """What the prediction log keeps of one served picture (see :func:`logged_names`): the SHA-256 of its
    bytes, their number, and its descriptors rounded to 6 digits; never the bytes."""
    out: dict[str, Any] = {f"{column}:{HASH}": hashlib.sha256(data).hexdigest(), f"{column}:{BYTES}": len(data)}
    for name, value in picture_descriptors(pixels, width, height).items():
        out[f"{column}:{name}"] = round(value, 6)
    return out

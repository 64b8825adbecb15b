"""The drift reference saved with every registered model: a sample of its training features (the model's
own: numbers as they are, text as its text features) and its predictions on them, so later drift checks
compare live traffic with what the model was built on.

For a picture model the reference keeps, instead of the pixels (which the prediction log never holds), what
the server logs of each picture: its descriptors (:mod:`tasks.core.picture_stats`: size, brightness,
contrast, sharpness, colour), plus the model's embedding of it (:func:`picture_embedding`, columns
``<column>:embedding_<i>``), which the drift check compares where the log carries it too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from weakflow.tasks.core.training import predict_proba
from weakflow.tasks.lib.data import PROVENANCE, PipelineData

EMBEDDING = "embedding"  # picture embedding columns: <column>:embedding_<i>


def embedding_names(column: str, dims: int) -> list[str]:
    return [f"{column}:{EMBEDDING}_{i}" for i in range(dims)]


def embedding_columns(columns: list[str]) -> list[str]:
    """The picture-embedding columns among a reference's columns (in their order)."""
    return [c for c in columns if c.rpartition(":")[2].startswith(f"{EMBEDDING}_")
            and c.rpartition("_")[2].isdigit()]


def picture_embedding(model: nn.Module, x: np.ndarray, batch: int = 512) -> np.ndarray | None:
    """The picture network's pooled convolutional features of each row (its embedding, before the head and
    without the side features), on the CPU in eval mode; None for a network without one (MLP, CNN). An
    ensemble gives its first member's (the members' feature spaces differ)."""
    import torch

    net = model
    while hasattr(net, "members"):  # LogitEnsemble
        net = net.members[0]
    if not (hasattr(net, "features") and hasattr(net, "image_shape") and hasattr(net, "side")):
        return None
    was_training = net.training
    net.eval()
    parts = []
    try:
        device = next(net.parameters()).device
        with torch.inference_mode():
            for start in range(0, len(x), batch):
                f = net.features(torch.as_tensor(np.asarray(x[start:start + batch], np.float32), device=device))
                parts.append(f[:, : f.shape[1] - net.side].float().cpu().numpy())
    finally:
        net.train(was_training)
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def picture_sizes(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Each picture file's original width and height (read from its header only)."""
    from PIL import Image

    width, height = np.zeros(len(paths)), np.zeros(len(paths))
    for i, path in enumerate(paths):
        with Image.open(path) as img:
            width[i], height[i] = img.size
    return width, height


def picture_reference(data: PipelineData, rows: pd.DataFrame, x: np.ndarray, model: nn.Module) -> pd.DataFrame:
    """A picture model's reference features for ``rows``: the side features (numbers, text features), the
    picture descriptors as the server logs them, and the model's embedding."""
    from weakflow.tasks.core.picture_stats import picture_descriptors

    images = data.schema.images
    assert images is not None
    n_side = len(data.features) - images.fmt.values
    out = pd.DataFrame(x[:, :n_side], columns=data.features[:n_side])
    pixels = images.pixels(rows)
    width, height = picture_sizes(images.paths(rows))
    described = pd.DataFrame([picture_descriptors(p, int(w), int(h)) for p, w, h in zip(pixels, width, height)],
                             index=out.index)
    out[[f"{images.column}:{d}" for d in described.columns]] = described.to_numpy(np.float64)
    emb = picture_embedding(model, x)
    if emb is not None and emb.size:
        out[embedding_names(images.column, emb.shape[1])] = emb.astype(np.float64)
    return out


def reference_sample(data: PipelineData, model: nn.Module, size: int = 1000, seed: int = 0, device: str = "auto") -> pd.DataFrame:
    """Up to ``size`` training rows (any provenance; never test rows) with prediction and confidence."""
    rows = data.train.sample(n=min(size, len(data.train)), random_state=seed)
    x = data.x(rows)
    probs = predict_proba(model, x, device=device)
    if data.schema.images is not None:
        out = picture_reference(data, rows, x, model)
    else:
        out = pd.DataFrame(x, columns=data.features)
    out[PROVENANCE] = rows[PROVENANCE].to_numpy()
    out["prediction"] = np.asarray(data.classes)[probs.argmax(axis=1)]
    out["confidence"] = probs.max(axis=1)
    return out

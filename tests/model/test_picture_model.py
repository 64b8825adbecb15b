"""The picture network (tasks/core/models.py PictureNet): chosen for picture columns, augments only while training,
learns pictures, joins side features, and travels with its picture format in the saved model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from weakflow.tasks.core.images import ImageFeaturizer, ImageFormat
from weakflow.tasks.core.models import ModelSpec, augment_pictures, build_model
from weakflow.tasks.core.schema import InputSchema
from weakflow.tasks.core.training import TrainSettings, fit, predict_proba

SPEC = ModelSpec(kind="resnet", num_features=2 + 3 * 16 * 16, num_classes=2, hidden=(16,), image_shape=(3, 16, 16),
                 augment=(0.125, 1.0, 0.1))


def bars(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pictures of a bright vertical (class 0) or horizontal (class 1) bar at a random place, plus 2 noise features."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.integers(0, 40, (n, 3, 16, 16)).astype(np.float32)
    for i in range(n):
        at = rng.integers(2, 14)
        if y[i] == 0:
            x[i, :, :, at - 1:at + 1] = 250
        else:
            x[i, :, at - 1:at + 1, :] = 250
    side = rng.normal(size=(n, 2)).astype(np.float32)
    return np.hstack([side, x.reshape(n, -1)]), y


def test_augmentation_runs_in_training_mode_only() -> None:
    torch.manual_seed(0)
    model = build_model(SPEC)
    x = torch.as_tensor(bars(8)[0])
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    a = model.features(x)
    torch.manual_seed(2)
    b = model.features(x)
    assert not torch.allclose(a, b)  # another draw of crops, flips and jitter


def test_augmentation_keeps_shape_and_moves_pictures() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 3, 16, 16)
    out = augment_pictures(x, 0.25, 1.0, 0.0)
    assert out.shape == x.shape and not torch.equal(out, x)
    assert torch.equal(augment_pictures(x, 0.0, 0.0, 0.0), x)  # all off: the pictures as they are


def test_the_network_learns_pictures_with_side_features() -> None:
    x, y = bars(400)
    x_test, y_test = bars(200, seed=1)
    torch.manual_seed(0)
    model = build_model(SPEC)
    model.scale.fit(x, SPEC.image_shape)
    assert float(model.scale.std[2]) == float(model.scale.std[3])  # pixels share one sd per channel
    fit(model, x, y, TrainSettings(epochs=4, batch_size=32, lr=3e-3))
    accuracy = (predict_proba(model, x_test, device="cpu").argmax(1) == y_test).mean()
    assert accuracy > 0.9


def test_saved_model_keeps_its_picture_format(tmp_path: Path) -> None:
    from PIL import Image

    from weakflow.deploy.model import load_weights, save_weights

    fmt = ImageFormat(16, 3, max_pixels=5000)
    schema = InputSchema(["a", "b"], [], None, ImageFeaturizer("image", fmt))
    model = build_model(SPEC)
    model.eval()
    save_weights(tmp_path / "w.pt", model, SPEC, schema, [0, 1])
    loaded = load_weights(tmp_path / "w.pt")
    assert loaded.inputs == ["a", "b", "image"]
    assert loaded.schema.images.fmt == fmt
    path = tmp_path / "p.png"
    Image.new("RGB", (30, 20), (10, 200, 10)).save(path)
    frame = pd.DataFrame({"a": [0.5], "b": [1.0], "image": [path.read_bytes()]})
    expected = predict_proba(model, schema.x(frame), device="cpu")
    assert np.allclose(loaded.predict_proba(frame), expected, atol=1e-6)

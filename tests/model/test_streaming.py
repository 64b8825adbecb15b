"""A picture table larger than memory streams from the decoded cache (tasks/core/picture_rows.py): a selection
reads nothing until asked, reads the right rows from several files, and training on it through DataLoader
workers gives the very network the resident table gives (same batches, same values)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from weakflow.tasks.core import models
from weakflow.tasks.core.crossfit import fit_folds
from weakflow.tasks.core.folds import GoldFolds
from weakflow.tasks.core.models import ModelSpec, Standardize, build_model
from weakflow.tasks.core.picture_rows import PictureRows, StreamPolicy
from weakflow.tasks.core.training import TrainSettings, fit, predict_logits
from tests.model.test_picture_model import bars

SHAPE = (3, 16, 16)
SPEC = ModelSpec(kind="resnet", num_features=2 + 3 * 16 * 16, num_classes=2, hidden=(16,), image_shape=SHAPE,
                 augment=(0.125, 1.0, 0.1))


def bar_pictures(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The picture model's bar pictures (tests/model/test_picture_model.py) apart: 2 side features, the uint8
    pixels (their values are whole numbers up to 250), the classes."""
    x, y = bars(n, seed)
    return x[:, :2].copy(), x[:, 2:].reshape(n, *SHAPE).astype(np.uint8), y


def on_disk(tmp_path: Path, side: np.ndarray, pixels: np.ndarray, workers: int = 0, split: int | None = None) -> PictureRows:
    """The rows as two cache files (rows before ``split`` in one, the rest reversed in the other)."""
    split = len(pixels) // 2 if split is None else split
    first, second = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(first, pixels[:split])
    np.save(second, pixels[split:][::-1])
    which = np.r_[np.zeros(split, np.int32), np.ones(len(pixels) - split, np.int32)]
    at = np.r_[np.arange(split), np.arange(len(pixels) - split)[::-1]]
    return PictureRows(side, (first, second), which, at, SHAPE, workers)


def dense(side: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    return np.hstack([side, pixels.reshape(len(pixels), -1).astype(np.float32)])


def test_a_selection_reads_the_right_rows_from_every_file(tmp_path: Path) -> None:
    side, pixels, _ = bar_pictures(40)
    rows, full = on_disk(tmp_path, side, pixels), dense(side, pixels)
    assert rows.shape == full.shape and len(rows) == 40
    np.testing.assert_array_equal(np.asarray(rows), full)
    picks = np.array([39, 3, 21, 20, 0, 3])  # both files, out of order, a row twice
    np.testing.assert_array_equal(np.asarray(rows[picks]), full[picks])
    np.testing.assert_array_equal(np.asarray(rows[5:25][::3]), full[5:25][::3])
    mask = np.arange(40) % 3 == 0
    np.testing.assert_array_equal(np.asarray(rows[mask]), full[mask])
    side_part, pixel_part = rows[picks].parts()
    assert pixel_part.dtype == np.uint8 and np.array_equal(pixel_part, pixels[picks])


def test_input_scaling_fitted_block_by_block_equals_the_whole_table(tmp_path: Path, monkeypatch) -> None:
    side, pixels, _ = bar_pictures(50)
    full = dense(side, pixels)
    monkeypatch.setattr(models, "BLOCK_VALUES", 7 * full.shape[1])  # 8 blocks of 7 rows, the last short
    scale = Standardize(full.shape[1])
    scale.fit(on_disk(tmp_path, side, pixels), SHAPE)
    per = 16 * 16
    want_mean = [*full[:, :2].mean(0)] + [full[:, 2 + c * per: 2 + (c + 1) * per].mean() for c in range(3)]
    want_std = [*full[:, :2].std(0)] + [full[:, 2 + c * per: 2 + (c + 1) * per].std() for c in range(3)]
    got_mean = [*scale.mean[:2].tolist()] + [float(scale.mean[2 + c * per]) for c in range(3)]
    got_std = [*scale.std[:2].tolist()] + [float(scale.std[2 + c * per]) for c in range(3)]
    np.testing.assert_allclose(got_mean, want_mean, rtol=1e-5)
    np.testing.assert_allclose(got_std, want_std, rtol=1e-5)


def _trained(x: np.ndarray | PictureRows, y: np.ndarray, x_test: np.ndarray) -> tuple[dict, np.ndarray]:
    torch.manual_seed(0)
    model = build_model(SPEC)
    model.scale.fit(x, SHAPE)
    result = fit(model, x, y, TrainSettings(epochs=2, batch_size=16, lr=3e-3, seed=3, device="cpu"))
    return result.model.state_dict(), predict_logits(result.model, x_test, device="cpu")


@pytest.mark.parametrize("workers", [0, 1])
def test_training_on_a_streamed_table_gives_the_resident_tables_network(tmp_path: Path, workers: int) -> None:
    side, pixels, y = bar_pictures(90)  # 90 rows in batches of 16: a short last batch too
    x_test = dense(*bar_pictures(30, seed=1)[:2])
    state, logits = _trained(dense(side, pixels), y, x_test)
    streamed_state, streamed_logits = _trained(on_disk(tmp_path, side, pixels, workers), y, x_test)
    assert state.keys() == streamed_state.keys()
    for name in state:
        assert torch.equal(state[name], streamed_state[name]), name
    np.testing.assert_array_equal(logits, streamed_logits)


@pytest.mark.slow  # ~18 s
def test_cross_fitting_streams_its_folds_and_refit_alike(tmp_path: Path) -> None:
    side, pixels, y = bar_pictures(60)
    gold = GoldFolds(np.arange(18), y[:18], np.arange(18) % 3)

    def build(_fold: int | None) -> torch.nn.Module:
        torch.manual_seed(0)
        model = build_model(SPEC)
        model.scale.fit(dense(side, pixels), SHAPE)
        return model

    settings = TrainSettings(epochs=2, batch_size=16, lr=3e-3, seed=1, device="cpu")
    resident = fit_folds(build, dense(side, pixels), y, gold, settings)
    streamed = fit_folds(build, on_disk(tmp_path, side, pixels, workers=1), y, gold, settings)
    np.testing.assert_array_equal(resident.oof_logits, streamed.oof_logits)
    assert resident.best_epoch == streamed.best_epoch


def test_the_policy_streams_only_tables_above_its_budget() -> None:
    policy = StreamPolicy.resolve(resident_mb=1, workers=2)
    assert (policy.resident_bytes, policy.workers) == (1 << 20, 2)
    assert not policy.streams(rows=300, values=784)  # 0.9 MiB of float32
    assert policy.streams(rows=400, values=784)  # 1.2 MiB
    assert StreamPolicy.resolve(0, 0).streams(1, 1)  # 0: always
    assert policy.describe(300, 784).startswith("in memory: 1 MiB")
    assert policy.describe(400, 784).startswith("streamed from the decoded cache by 2 DataLoader worker(s)")
    assert StreamPolicy.resolve(0, 0).describe(1, 1).startswith("streamed from the decoded cache in the training process")
    default = StreamPolicy.resolve(None, None)
    assert default.resident_bytes > 0 and 0 <= default.workers <= 4

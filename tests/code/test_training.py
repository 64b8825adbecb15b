import numpy as np
import pytest

from weakflow.tasks.core.models import ModelSpec, build_model
from weakflow.tasks.core.training import TrainSettings, fit, predict_proba


def blobs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 4)) + np.eye(3, 4)[y] * 4
    return x.astype(np.float32), y


def test_fit_learns_and_keeps_best_dev_epoch():
    x, y = blobs()
    xd, yd = blobs(90, seed=1)
    model = build_model(ModelSpec("mlp", 4, 3, hidden=(16,)))
    model.scale.fit(x)
    res = fit(model, x, y, TrainSettings(epochs=8, batch_size=32, lr=1e-2), x_dev=xd, y_dev=yd)
    assert len(res.history) == 8
    best = max(h.dev_accuracy for h in res.history)
    assert res.history[res.best_epoch].dev_accuracy == best
    # the returned weights are the best epoch's: re-scoring dev reproduces its accuracy
    assert (predict_proba(res.model, xd).argmax(1) == yd).mean() == pytest.approx(best)
    assert best > 0.9


def test_zero_weight_rows_do_not_teach():
    x, y = blobs()
    flipped = (y + 1) % 3
    # every label wrong but weighted 0, plus the true labels weighted 1: the model learns the truth
    xx, yy = np.concatenate([x, x]), np.concatenate([flipped, y])
    w = np.concatenate([np.zeros(len(y)), np.ones(len(y))])
    model = build_model(ModelSpec("mlp", 4, 3, hidden=(16,)))
    res = fit(model, xx, yy, TrainSettings(epochs=6, batch_size=32, lr=1e-2), weights=w)
    assert (predict_proba(res.model, x).argmax(1) == y).mean() > 0.9


def test_cnn_reshapes_flat_features_and_checks_shape():
    spec = ModelSpec("cnn", 64, 10, hidden=(8,), image_shape=(1, 8, 8))
    probs = predict_proba(build_model(spec), np.zeros((5, 64), dtype=np.float32))
    assert probs.shape == (5, 10)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="has 49 values"):
        build_model(ModelSpec("cnn", 64, 10, image_shape=(1, 7, 7)))


def test_empty_or_mismatched_training_set_raises():
    model = build_model(ModelSpec("mlp", 4, 3))
    with pytest.raises(ValueError, match="empty"):
        fit(model, np.zeros((0, 4)), np.zeros(0), TrainSettings(epochs=1))
    with pytest.raises(ValueError, match="3 feature rows but 2 targets"):
        fit(model, np.zeros((3, 4)), np.zeros(2), TrainSettings(epochs=1))

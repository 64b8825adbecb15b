import numpy as np
import pytest

from weakflow.tasks.core.methods import clid_dev_correlation, train_weak_model
from weakflow.tasks.core.models import ModelSpec, build_model
from weakflow.tasks.core.noise import corrupt_labels
from weakflow.tasks.core.training import EpochStats, TrainSettings


def data(n=900, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (rng.normal(size=(n, 6)) + np.eye(3, 6)[y] * 3).astype(np.float32)
    return x, y, corrupt_labels(y, 3, 0.4, "symmetric", seed)


def build():
    return build_model(ModelSpec("mlp", 6, 3, hidden=(32,)))


def test_confident_learning_removes_mostly_wrong_labels():
    x, y, noisy = data()
    fitted = train_weak_model("confident_learning", build, x[:600], noisy[:600], TrainSettings(epochs=10, lr=3e-3),
                              meta_x=x[600:700], x_dev=x[700:800], y_dev=y[700:800],
                              gold_check=(x[800:], noisy[800:], y[800:]))
    f = fitted.figures
    assert 0.2 < f["cl_removed_share"] < 0.7  # about the 40% that are wrong
    assert f["cl_removal_precision_gold"] > 0.8  # flagged gold rows really had a wrong weak label
    assert f["cl_removal_recall_gold"] > 0.5
    assert "clid" in fitted.result.history[-1].extra


def test_every_method_logs_clid_the_methods_differ_and_unknown_method_fails():
    import torch

    from weakflow.tasks.core.training import predict_proba

    x, y, noisy = data(300)
    probs = {}
    for method in ("ce", "gce", "clid_mu"):
        torch.manual_seed(0)  # the same initial network for each method
        fitted = train_weak_model(method, build, x[:200], noisy[:200], TrainSettings(epochs=3, lr=3e-3),
                                  meta_x=x[200:], x_dev=x[200:], y_dev=y[200:])
        assert all("clid" in h.extra for h in fitted.result.history), method
        probs[method] = predict_proba(fitted.result.model, x[200:])
    # a method is not a label: each trains another network from the same start and data
    for a, b in (("ce", "gce"), ("ce", "clid_mu"), ("gce", "clid_mu")):
        assert np.abs(probs[a] - probs[b]).max() > 1e-3, (a, b)
    with pytest.raises(ValueError, match="unknown weak-training method 'mae'"):
        train_weak_model("mae", build, x, noisy, TrainSettings(epochs=1), meta_x=x)


def test_clid_dev_correlation_hand_example():
    hist = [EpochStats(i, 0.0, acc, 0.0, {"clid": c}) for i, (c, acc) in enumerate([(3.0, 0.5), (2.0, 0.7), (1.0, 0.9)])]
    assert clid_dev_correlation(hist)["clid_dev_spearman"] == pytest.approx(-1.0)
    assert clid_dev_correlation(hist[:2]) == {}  # too few epochs to rank

import numpy as np
import pytest

from weakflow.tasks.core.noise import corrupt_labels

N, C = 20_000, 10


@pytest.fixture()
def labels():
    return np.random.default_rng(1).integers(0, C, N)


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 0.6])
def test_symmetric_rate_and_targets(labels, rate):
    noisy = corrupt_labels(labels, C, rate, "symmetric", seed=3)
    flipped = noisy != labels
    assert flipped.mean() == pytest.approx(rate, abs=0.015)
    if rate:
        # flips land on every other class about equally
        offsets = ((noisy - labels) % C)[flipped]
        counts = np.bincount(offsets, minlength=C)
        assert counts[0] == 0
        assert counts[1:].min() / counts[1:].max() > 0.8


def test_pairflip_goes_to_next_class_only(labels):
    noisy = corrupt_labels(labels, C, 0.4, "pairflip", seed=3)
    flipped = noisy != labels
    assert flipped.mean() == pytest.approx(0.4, abs=0.015)
    assert np.all(noisy[flipped] == (labels[flipped] + 1) % C)


def test_instance_dependent_rate_and_feature_dependence():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 16))
    y = rng.integers(0, C, N)
    noisy = corrupt_labels(y, C, 0.4, "instance", seed=5, features=x)
    assert (noisy != y).mean() == pytest.approx(0.4, abs=0.02)
    # identical features and label -> one feature-dependent target distribution: duplicates of one
    # row favour some classes, where symmetric noise spreads evenly (1/9 each) over the other nine.
    xd = np.repeat(x[:1], 2000, axis=0)
    yd = np.repeat(y[:1], 2000)
    targets = corrupt_labels(yd, C, 0.9, "instance", seed=5, features=xd)
    flips = targets[targets != yd]
    assert np.bincount(flips, minlength=C).max() / len(flips) > 2 / (C - 1)


def test_deterministic_by_seed_and_errors(labels):
    a = corrupt_labels(labels, C, 0.4, "symmetric", seed=7)
    assert np.array_equal(a, corrupt_labels(labels, C, 0.4, "symmetric", seed=7))
    assert not np.array_equal(a, corrupt_labels(labels, C, 0.4, "symmetric", seed=8))
    with pytest.raises(ValueError, match="rate"):
        corrupt_labels(labels, C, 1.0)
    with pytest.raises(ValueError, match="features"):
        corrupt_labels(labels, C, 0.4, "instance")

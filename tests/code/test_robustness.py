"""The corruption suite and the paired bootstrap: pure numpy, no Prefect, no MLflow."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score, f1_score

from weakflow.tasks.core.bootstrap import paired_bootstrap
from weakflow.tasks.core.metrics import expected_calibration_error
from weakflow.tasks.core.robustness import (
    ALL_CORRUPTIONS,
    IMAGE_CORRUPTIONS,
    VECTOR_CORRUPTIONS,
    corrupt,
    corruptions_for,
    robustness_table,
)

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    train, test = order[:1200], order[1200:]
    centroids = np.stack([x[train][y[train] == c].mean(axis=0) for c in range(10)])

    def predict(a: np.ndarray) -> np.ndarray:  # nearest centroid: a simple, fixed, decent classifier
        d = ((a[:, None, :] - centroids[None]) ** 2).sum(-1)
        return d.argmin(1)

    return x[test], y[test], predict


@pytest.mark.parametrize("kind", ALL_CORRUPTIONS)
def test_corruption_shape_determinism_and_identity(digits, kind):
    x = digits[0][:50]
    before = x.copy()
    out = corrupt(x, kind, 0.5, seed=3, image_shape=SHAPE)
    assert out.shape == x.shape and out.dtype == np.float32
    assert np.array_equal(x, before)  # the input is never modified
    assert not np.allclose(out, x)
    assert np.array_equal(out, corrupt(x, kind, 0.5, seed=3, image_shape=SHAPE))  # same seed, same output
    np.testing.assert_array_equal(corrupt(x, kind, 0.0, seed=3, image_shape=SHAPE), x)  # severity 0 = identity
    if kind not in ("brightness_contrast",):  # the only one without randomness
        assert not np.array_equal(out, corrupt(x, kind, 0.5, seed=4, image_shape=SHAPE))


def test_suite_by_shape_and_clear_errors(digits):
    x = digits[0][:5]
    assert corruptions_for(None) == VECTOR_CORRUPTIONS
    assert corruptions_for(SHAPE) == VECTOR_CORRUPTIONS + IMAGE_CORRUPTIONS
    with pytest.raises(ValueError, match="needs an image shape"):
        corrupt(x, "occlusion", 0.5)
    with pytest.raises(ValueError, match=r"image shape \(1, 4, 4\) has 16 values, but the rows have 64"):
        corrupt(x, "occlusion", 0.5, image_shape=(1, 4, 4))
    with pytest.raises(ValueError, match="severity must be in"):
        corrupt(x, "scaling", 1.5)
    with pytest.raises(ValueError, match="unknown corruption 'blur'"):
        corrupt(x, "blur", 0.5)


def test_occlusion_patch_size_and_feature_scale(digits):
    x = digits[0][:20]
    out = corrupt(x, "occlusion", 1.0, image_shape=SHAPE).reshape(-1, 8, 8)
    changed = out != x.reshape(-1, 8, 8)
    assert (changed.sum(axis=(1, 2)) <= 16).all()  # a 4x4 patch at most (pixels already 0 stay unchanged)
    assert (out[changed] == x.min()).all()
    noisy = corrupt(digits[0], "gaussian_noise", 1.0)
    ratio = (noisy - digits[0]).std(axis=0)[digits[0].std(axis=0) > 1] / digits[0].std(axis=0)[digits[0].std(axis=0) > 1]
    assert 0.85 < np.median(ratio) < 1.15  # severity 1 = one feature std of noise


def test_accuracy_falls_with_severity(digits):
    x, y, predict = digits
    severities = [0.25, 0.5, 1.0]
    rows = robustness_table({"centroid": predict}, x, y, ALL_CORRUPTIONS, severities, seed=0, image_shape=SHAPE)
    assert len(rows) == len(ALL_CORRUPTIONS) * len(severities)
    clean = rows[0]["clean_accuracy"]
    assert clean == pytest.approx((predict(x) == y).mean()) and clean > 0.85
    for kind in ALL_CORRUPTIONS:
        acc = [r["accuracy"] for r in rows if r["corruption"] == kind]
        assert all(b <= a + 0.01 for a, b in zip([clean, *acc], acc)), (kind, clean, acc)  # monotone (1-pt slack)
        assert clean - acc[-1] > 0.02, (kind, clean, acc)  # the strongest level hurts
        assert all(r["drop"] == pytest.approx(clean - r["accuracy"]) for r in rows if r["corruption"] == kind)


def _probs(pred: np.ndarray, conf: float = 0.9, classes: int = 5) -> np.ndarray:
    p = np.full((len(pred), classes), (1 - conf) / (classes - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


def test_bootstrap_point_estimates_match_sklearn_and_intervals_contain_them():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 400)
    pred = np.where(rng.random(400) < 0.8, y, rng.integers(0, 5, 400))
    probs = _probs(pred, 0.7) * rng.uniform(0.9, 1.1, (400, 5))
    probs /= probs.sum(1, keepdims=True)
    res = paired_bootstrap(y, {"m": probs}, samples=500, seed=0)
    iv = res.intervals["m"]
    assert iv["accuracy"].estimate == pytest.approx(accuracy_score(y, probs.argmax(1)))
    assert iv["macro_f1"].estimate == pytest.approx(f1_score(y, probs.argmax(1), labels=range(5), average="macro",
                                                             zero_division=0))
    assert iv["ece"].estimate == pytest.approx(expected_calibration_error(probs, y))
    for metric in ("accuracy", "macro_f1", "ece"):
        assert iv[metric].low <= iv[metric].estimate <= iv[metric].high
        assert iv[metric].high - iv[metric].low < 0.15
    again = paired_bootstrap(y, {"m": probs}, samples=500, seed=0)
    assert again.intervals["m"]["accuracy"] == iv["accuracy"]  # deterministic given the seed


def test_paired_delta_separates_a_real_gain_from_noise():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 5, 360)
    good = np.where(rng.random(360) < 0.95, y, (y + 1) % 5)
    bad = np.where(rng.random(360) < 0.85, y, (y + 1) % 5)
    near = y.copy()  # as accurate as `good`, but wrong on other rows: any difference is noise
    wrong = np.flatnonzero(good != y)
    right = np.setdiff1d(np.arange(360), wrong)[: len(wrong)]
    near[right] = (y[right] + 1) % 5
    probs = {"good": _probs(good), "bad": _probs(bad), "same": _probs(good), "near": _probs(near)}
    res = paired_bootstrap(y, probs, [("good", "bad"), ("good", "same"), ("good", "near")], samples=1000, seed=0)
    real = res.delta("good", "bad", "accuracy")
    assert real.interval.estimate == pytest.approx((good == y).mean() - (bad == y).mean())
    assert real.interval.excludes_zero() and real.interval.low > 0 and real.share_better > 0.99
    same = res.delta("good", "same", "accuracy")
    assert (same.interval.low, same.interval.high) == (0.0, 0.0) and not same.interval.excludes_zero()
    near_delta = res.delta("good", "near", "accuracy")
    assert near_delta.interval.estimate == 0.0
    assert near_delta.interval.low < 0 < near_delta.interval.high and 0.3 < near_delta.share_better < 0.7
    assert res.delta("good", "bad", "macro_f1").interval.low > 0


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="empty test split"):
        paired_bootstrap(np.array([], dtype=int), {"m": np.zeros((0, 3))})
    with pytest.raises(ValueError, match="pairs name models without probabilities: \\['x'\\]"):
        paired_bootstrap(np.array([0, 1]), {"m": np.eye(2)}, [("m", "x")])

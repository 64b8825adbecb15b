"""The weak-training methods, run as the pipeline runs them: the registry (tasks/lib/weak_methods.py) through
the weak_train stage's compute, on small in-memory data built the way bench.methods builds its cells."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np
import pytest

from bench.methods import as_pipeline
from weakflow.tasks import weak_train
from weakflow.tasks.core.methods import clid_dev_correlation
from weakflow.tasks.core.noise import corrupt_labels
from weakflow.tasks.core.training import EpochStats, predict_proba
from weakflow.tasks.lib.config import SelectionConfig, WeakLabelsConfig, WeakTrainConfig
from weakflow.tasks.lib.modeling import one_hot
from weakflow.tasks.lib.steps import RunContext
from weakflow.tasks.lib.weak_methods import METHODS, Plan, Problem, WeakMethod, aggregated_targets


def blobs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three Gaussian blobs in 6 dimensions and their labels with 40% symmetric noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (rng.normal(size=(n, 6)) + np.eye(3, 6)[y] * 3).astype(np.float32)
    return x, y, corrupt_labels(y, 3, 0.4, "symmetric", seed)


def problem(n: int, weak: slice, unlabeled: slice, gold: slice, weak_on_gold: bool = False):
    x, y, noisy = blobs(n)
    return as_pipeline(x[gold], y[gold], x[weak], noisy[weak], x[unlabeled], x[unlabeled], y[unlabeled], 3,
                       weak_on_gold=noisy[gold] if weak_on_gold else None)


def section(method: str, epochs: int = 3) -> WeakTrainConfig:
    return WeakTrainConfig(method=method, model="mlp", hidden=[32], epochs=epochs, lr=3e-3, batch_size=64,
                           clid_monitor=True)


def train(data, labels, stage: WeakTrainConfig):
    """The weak_train stage's compute, as the pipeline calls it (no gold-only model: no opinion to ask)."""
    ctx = RunContext(seed=0, device="cpu", workspace=Path("unused"))
    return weak_train.compute(ctx, data, labels, None, stage, SelectionConfig(), WeakLabelsConfig().confusion_strength)


def test_confident_learning_removes_mostly_wrong_labels():
    data, labels = problem(900, weak=slice(0, 600), unlabeled=slice(600, 700), gold=slice(700, 900),
                           weak_on_gold=True)
    weak = train(data, labels, section("confident_learning", epochs=10))
    f = weak.figures
    assert 0.2 < f["cl_removed_share"] < 0.7  # about the 40% that are wrong
    assert f["cl_gold_rows_checked"] == 200  # the gold rows' weak labels measure the removals, not decide them
    assert f["cl_removal_precision_gold"] > 0.8  # flagged gold rows really had a wrong weak label
    assert f["cl_removal_recall_gold"] > 0.5
    assert weak.rows == f["weak_rows"] == 600 - f["cl_removed"]  # trained on the weak rows it kept
    assert set(weak.row_ids) < set(labels.row_ids)
    assert all("clid" in h.extra for h in weak.history)  # clid_monitor


def test_every_method_of_the_registry_trains_through_the_stage_and_the_methods_differ():
    data, labels = problem(300, weak=slice(0, 200), unlabeled=slice(260, 300), gold=slice(200, 260))
    x = data.x(data.test)
    probs = {}
    for name in METHODS:
        weak = train(data, labels, section(name))
        assert weak.oof_logits is not None and len(weak.folds) == data.folds == 3, name  # cross-fitted over gold
        if name in ("ce", "gce", "confident_learning", "clid_mu"):  # per-epoch CLID: monitored, or CLID-MU's own
            assert all("clid" in h.extra for h in weak.history), name
        probs[name] = predict_proba(weak.model, x)
    # a method is not a label: each trains another network from the same start and data
    names = list(probs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(probs[a] - probs[b]).max() > 1e-3, (a, b)


def test_an_unknown_method_fails_and_the_registry_is_what_the_config_allows():
    data, labels = problem(300, weak=slice(0, 200), unlabeled=slice(260, 300), gold=slice(200, 260))
    with pytest.raises(ValueError, match="unknown weak-training method 'mae'"):
        train(data, labels, section("ce").model_copy(update={"method": "mae"}))
    assert set(get_args(WeakTrainConfig.model_fields["method"].annotation)) == set(METHODS)


class Smoothed(WeakMethod):
    """A method of a few lines: CE on the aggregated weak labels smoothed toward uniform."""

    def plan(self, problem: Problem) -> Plan:
        soft = 0.8 * one_hot(problem.labels.hard, problem.num_classes) + 0.2 / problem.num_classes
        return Plan(aggregated_targets(problem, soft), problem.weak, figures={"smoothing": 0.2})


def test_adding_a_method_is_one_object_and_one_line(monkeypatch):
    data, labels = problem(300, weak=slice(0, 200), unlabeled=slice(260, 300), gold=slice(200, 260))
    stage = section("ce").model_copy(update={"method": "smoothed"})  # the config's Literal is not asked here
    with monkeypatch.context() as m:
        m.setitem(METHODS, "smoothed", Smoothed())  # the one line
        smoothed = train(data, labels, stage)
        assert weak_train.STAGE.progress(None, data, labels, None, stage, SelectionConfig(), 1.0) == (
            "weak_train (smoothed, cross-fitted)", 3)
    assert "smoothed" not in METHODS
    assert smoothed.figures["smoothing"] == 0.2 and smoothed.rows == 200 and len(smoothed.folds) == 3
    ce = train(data, labels, section("ce"))
    assert np.abs(smoothed.oof_probs - ce.oof_probs).max() > 1e-3  # its own targets were trained on
    with pytest.raises(ValueError, match="unknown weak-training method 'smoothed'"):
        train(data, labels, stage)


def test_clid_dev_correlation_hand_example():
    hist = [EpochStats(i, 0.0, acc, 0.0, {"clid": c}) for i, (c, acc) in enumerate([(3.0, 0.5), (2.0, 0.7), (1.0, 0.9)])]
    assert clid_dev_correlation(hist)["clid_dev_spearman"] == pytest.approx(-1.0)
    assert clid_dev_correlation(hist[:2]) == {}  # too few epochs to rank

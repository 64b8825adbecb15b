"""Self-training's stopping rules, on hand-made rounds (sizes and dev accuracies chosen per test)."""

import pytest

from weakflow.tasks.core.selftrain import self_train


def scripted(dev_accuracies: list[float], relabel_sizes: list[int]):
    """train_round returns the next scripted dev accuracy; relabel the next scripted set size."""
    calls: list[tuple[str, int, int]] = []

    def train_round(i, pseudo):
        calls.append(("train", i, pseudo))
        return f"model-{i}", dev_accuracies[i - 1]

    def relabel(i, model):
        calls.append(("relabel", i, relabel_sizes[i - 1]))
        return relabel_sizes[i - 1]

    return train_round, relabel, calls


def test_stops_when_the_pseudo_set_stops_growing_and_keeps_that_round():
    train_round, relabel, calls = scripted([0.90, 0.92, 0.93], [150, 151])
    res = self_train(100, int, train_round, relabel, max_rounds=5, min_growth=0.01)
    assert [r.index for r in res.rounds] == [1, 2] and res.model == "model-2"
    assert "stopped growing" in res.stop_reason
    assert calls == [("train", 1, 100), ("relabel", 1, 150), ("train", 2, 150), ("relabel", 2, 151)]
    assert res.rounds[1].trained_on == 150 and res.rounds[1].relabelled == 151


def test_stops_when_dev_accuracy_falls_and_hands_back_the_previous_round():
    train_round, relabel, _ = scripted([0.90, 0.95, 0.94], [200, 400, 800])
    seen = []
    res = self_train(100, int, train_round, relabel, max_rounds=5, on_round=seen.append)
    assert len(res.rounds) == 3 and res.model == "model-2" and res.chosen == 1
    assert "fell in round 3" in res.stop_reason
    assert [r.index for r in seen] == [1, 2, 3]


def test_dev_tolerance_lets_a_small_dip_continue():
    train_round, relabel, _ = scripted([0.90, 0.95, 0.945], [200, 400, 800])
    res = self_train(100, int, train_round, relabel, max_rounds=3, dev_tolerance=0.01)
    assert res.model == "model-3" and "max_rounds=3" in res.stop_reason


def test_max_rounds_one_is_plain_augmentation():
    train_round, relabel, calls = scripted([0.9], [])
    res = self_train(100, int, train_round, relabel, max_rounds=1)
    assert res.model == "model-1" and [c[0] for c in calls] == ["train"]
    with pytest.raises(ValueError, match="max_rounds"):
        self_train(100, int, train_round, relabel, max_rounds=0)


def test_an_empty_relabelling_stops_instead_of_retraining_the_same_model():
    train_round, relabel, calls = scripted([0.90, 0.90, 0.90], [0, 0, 0])
    res = self_train(0, int, train_round, relabel, max_rounds=3)
    assert len(res.rounds) == 1 and "stopped growing" in res.stop_reason
    assert [c[0] for c in calls] == ["train", "relabel"]

"""Sharded pseudo-labelling's core: shard planning, and per-shard passes that decide exactly what the
single stream decides (thresholds, cap ties in pool order, kept rows, tallies). No Prefect, no Dask."""

from __future__ import annotations

import numpy as np
import pytest

from weakflow.tasks.core.pseudo import DevSet, ThresholdPolicy
from weakflow.tasks.core.pseudo_stream import chunked, emit_kept, label_stream, plan_shards, score_shard, select_shards, split_rows


def test_plan_shards_covers_every_row_group_once_in_order():
    sizes = [100, 100, 100, 100, 100, 100, 100, 37]
    for shards in range(1, 12):
        plan = plan_shards(sizes, shards)
        assert 1 <= len(plan) <= min(shards, len(sizes))
        assert plan[0].first_group == 0 and plan[-1].stop_group == len(sizes)
        for a, b in zip(plan, plan[1:]):
            assert a.stop_group == b.first_group and b.first_row == a.first_row + a.rows
        assert all(r.rows > 0 for r in plan) and sum(r.rows for r in plan) == sum(sizes)
    assert [(r.first_group, r.stop_group) for r in plan_shards(sizes, 4)] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert [r.rows for r in plan_shards([262_144] * 38 + [38_528], 8)][:2] == [5 * 262_144, 5 * 262_144]
    assert plan_shards([0, 0], 3) == [] and plan_shards([], 2) == []
    with pytest.raises(ValueError, match="shards must be >= 1"):
        plan_shards(sizes, 0)


def test_split_rows_is_contiguous_and_never_empty():
    assert split_rows(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert split_rows(2, 5) == [(0, 1), (1, 2)]
    assert split_rows(0, 3) == []


def table(rows: int, classes: int, seed: int) -> np.ndarray:
    """Probabilities with many exact ties (rounded), so caps must break ties by pool order."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(rows, classes))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p = np.round(p / p.sum(1, keepdims=True), 2).astype(np.float32)
    return p


POLICIES = [
    ThresholdPolicy("fixed", threshold=0.6),
    ThresholdPolicy("per_class", threshold=0.8, floor=0.4),
    ThresholdPolicy("target_precision", threshold=0.9, floor=0.3, target_precision=0.7, min_support=3),
    ThresholdPolicy("fixed", threshold=0.5, max_per_class=7),
    ThresholdPolicy("per_class", threshold=0.7, floor=0.3, max_per_class=20),
]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: f"{p.kind}-cap{p.max_per_class}")
@pytest.mark.parametrize("cuts", [[], [1], [50, 51, 52], [37, 111, 250, 299]])
def test_shards_decide_what_one_stream_decides(policy, cuts):
    probs = table(300, 4, seed=1)
    dev_p = table(60, 4, seed=2)
    dev = DevSet(dev_p.argmax(1), dev_p.max(1), np.random.default_rng(3).integers(0, 4, 60))
    dev = DevSet(dev.labels, dev.confidence, np.where(np.arange(60) % 3 == 0, dev.true, dev.labels))
    out = []
    one = label_stream(chunked(probs, 16), lambda x: x, policy, 4,
                       lambda x, start, keep, labels, conf, p: out.append((keep.copy(), labels, conf, p)),
                       dev=dev, soft=True)
    keep_one = np.concatenate([k for k, *_ in out])

    edges = [0, *cuts, len(probs)]
    shards = [probs[a:b] for a, b in zip(edges, edges[1:])]
    scores = [score_shard(chunked(s, 16), lambda x: x, 4, policy.threshold) for s in shards]
    res, keeps = select_shards(scores, policy, 4, dev)
    assert np.array_equal(res.thresholds, one.thresholds) and res.thresholds.dtype == np.float32
    for name in ("candidates", "kept", "uncertified", "histogram"):
        assert np.array_equal(getattr(res, name), getattr(one, name)), name
    assert np.array_equal(res.cap_cutoff, one.cap_cutoff) and res.rows == one.rows == 300

    masks, soft = [], []
    for s, k in zip(shards, keeps):
        got = []
        n = emit_kept(chunked(s, 7), k, 4, lambda x, start, keep, labels, conf, p: got.append((keep, labels, conf, p)),
                      score=lambda x: x)
        mask = np.concatenate([g[0] for g in got]) if got else np.zeros(0, bool)
        assert n == mask.sum()
        labels = np.concatenate([g[1] for g in got])[mask] if got else []
        assert np.array_equal(labels, s[mask].argmax(1))
        masks.append(mask)
        soft += [g[3] for g in got]
    assert np.array_equal(np.concatenate(masks), keep_one)
    assert np.array_equal(np.concatenate(soft), np.concatenate([o[3] for o in out]))


def test_a_shard_that_reads_other_rows_in_pass_two_fails():
    probs = table(40, 3, seed=0)
    (keep,) = select_shards([score_shard(chunked(probs, 10), lambda x: x, 3, 0.5)], ThresholdPolicy("fixed", 0.5), 3)[1]
    with pytest.raises(ValueError, match="yielded 40 rows in pass 1 but 30"):
        emit_kept(chunked(probs[:30], 10), keep, 3, lambda *_: None)
    with pytest.raises(ValueError, match="at least 50"):
        emit_kept(chunked(np.vstack([probs, probs[:10]]), 10), keep, 3, lambda *_: None)


def test_no_shards_is_an_empty_result():
    res, keeps = select_shards([], ThresholdPolicy("fixed", 0.5), 3)
    assert keeps == [] and res.rows == 0 and res.kept.tolist() == [0, 0, 0]

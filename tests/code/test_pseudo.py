import numpy as np
import pytest

from weakflow.tasks.core.metrics import calibration_bins, expected_calibration_error
from weakflow.tasks.core.pseudo import precision_on, select_confident

PROBS = np.array([
    [0.95, 0.03, 0.02],  # class 0, kept
    [0.10, 0.85, 0.05],  # class 1, below 0.9
    [0.05, 0.05, 0.90],  # class 2, exactly at the threshold: kept
    [0.40, 0.30, 0.30],  # class 0, not kept
])


def test_select_confident_on_hand_table():
    sel = select_confident(PROBS, 0.9)
    assert sel.labels.tolist() == [0, 1, 2, 0]
    assert sel.keep.tolist() == [True, False, True, False]
    assert sel.kept == 2
    assert sel.confidence.tolist() == pytest.approx([0.95, 0.85, 0.90, 0.40])


def test_threshold_zero_keeps_all_and_one_keeps_only_certain():
    assert select_confident(PROBS, 0.0).kept == 4
    assert select_confident(PROBS, 1.0).kept == 0


def test_precision_counts_only_kept_rows():
    sel = select_confident(PROBS, 0.9)
    assert precision_on(sel, np.array([0, 0, 1, 2])) == 0.5  # row 0 right, row 2 wrong; rows 1, 3 ignored
    assert precision_on(select_confident(PROBS, 1.0), np.zeros(4)) is None


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="2-D"):
        select_confident(np.ones(3), 0.5)
    with pytest.raises(ValueError, match="threshold"):
        select_confident(PROBS, 1.5)


def test_ece_hand_computed():
    # two bins used: conf 0.9 (2 rows, 1 right: |0.5-0.9|) and conf 0.6 (2 rows, 2 right: |1-0.6|)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    # the bins a reliability diagram plots: only bins 6 and 9 hold rows
    count, acc, conf = calibration_bins(probs, labels, n_bins=10)
    assert count.tolist() == [0, 0, 0, 0, 0, 0, 2, 0, 0, 2]
    assert acc[[6, 9]] == pytest.approx([1.0, 0.5]) and conf[[6, 9]] == pytest.approx([0.6, 0.9])
    assert np.isnan(acc[0]) and np.isnan(conf[0])
    with pytest.raises(ValueError, match="empty"):
        expected_calibration_error(np.zeros((0, 2)), np.zeros(0))


# --- threshold policies on hand-made tables ---------------------------------------------------------

from weakflow.tasks.core.calibration import fit_temperature, softmax_t  # noqa: E402
from weakflow.tasks.core.pseudo import (  # noqa: E402
    DevSet, ThresholdPolicy, flexmatch_thresholds, per_class_precision, target_precision_thresholds,
)
from weakflow.tasks.core.pseudo_stream import chunked, label_stream  # noqa: E402


def run_stream(probs, policy, chunk_rows=1000, dev=None, soft=False):
    """label_stream over a probability table (the 'features' are the probabilities; scoring is identity)."""
    out = []
    res = label_stream(chunked(probs, chunk_rows), lambda x: x, policy, probs.shape[1],
                       lambda x, start, keep, labels, conf, p: out.append((start, keep.copy(), labels, conf, p)),
                       dev=dev, soft=soft)
    keep = np.concatenate([k for _, k, *_ in out]) if out else np.zeros(0, bool)
    return res, keep, out


def test_fixed_policy_keeps_rows_at_or_above_the_threshold():
    res, keep, _ = run_stream(PROBS, ThresholdPolicy("fixed", threshold=0.9))
    assert keep.tolist() == [True, False, True, False]
    assert res.thresholds == pytest.approx([0.9, 0.9, 0.9])
    assert res.candidates.tolist() == [2, 1, 1] and res.kept.tolist() == [1, 0, 1]


def test_per_class_lowers_the_threshold_of_a_starved_class_down_to_the_floor():
    policy = ThresholdPolicy("per_class", threshold=0.9, floor=0.5)
    # beta = [1, .5, .25] -> tau = .9*[1, 1/3, 1/7] -> floor 0.5 for the last two
    assert flexmatch_thresholds(policy, np.array([4, 2, 1])) == pytest.approx([0.9, 0.5, 0.5])
    assert flexmatch_thresholds(ThresholdPolicy("per_class", threshold=0.9, floor=0.0), np.array([4, 2, 0])) \
        == pytest.approx([0.9, 0.3, 0.0])
    # nothing clears the base anywhere: every class keeps the base threshold
    assert flexmatch_thresholds(policy, np.zeros(3, int)).tolist() == [0.9, 0.9, 0.9]
    probs = np.array([[0.95, 0.03, 0.02], [0.96, 0.02, 0.02], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.1, 0.5, 0.4]])
    res, keep, _ = run_stream(probs, policy)
    # class 0 clears 0.9 twice, classes 1 and 2 never: both drop to the floor 0.5
    assert res.thresholds == pytest.approx([0.9, 0.5, 0.5])
    assert keep.tolist() == [True, True, True, True, True]
    fixed, keep_fixed, _ = run_stream(probs, ThresholdPolicy("fixed", threshold=0.9))
    assert keep_fixed.sum() == 2 and fixed.kept[1:].sum() == 0  # the fixed policy starves classes 1 and 2


# For n rows all right, the 95% Wilson lower bound is n / (n + 1.96^2): it first reaches 0.9 at n = 35
# (35 / 38.84 = 0.901; 34 / 37.84 = 0.8985). 39 right of 40 has a lower bound of 0.871.
CONF40 = np.linspace(0.99, 0.60, 40)  # most confident first
RIGHT40 = np.ones(40, bool)
RIGHT40[35] = False  # the 36th most confident row is wrong: 39 of 40 right (97.5%) at the lowest threshold


def test_target_precision_needs_the_lower_bound_not_the_point_estimate():
    policy = ThresholdPolicy("target_precision", target_precision=0.9, floor=0.5, min_support=10)
    thr, uncertified = target_precision_thresholds(policy, np.zeros(40, int), CONF40, np.where(RIGHT40, 0, 1), 2)
    # the point estimate is >= 0.9 at every threshold; the lower bound only down to the 35th row
    assert thr[0] == pytest.approx(CONF40[34]) and not uncertified[0]
    # class 1 has no rows of its own: it takes the pooled threshold (here the same rows)
    assert thr[1] == pytest.approx(CONF40[34]) and not uncertified[1]


def test_target_precision_pools_classes_whose_own_rows_cannot_show_it():
    labels = np.arange(40) % 2  # 20 rows each: even 20 / 20 right is only 0.839 per class
    true = np.where(RIGHT40, labels, 1 - labels)
    policy = ThresholdPolicy("target_precision", target_precision=0.9, floor=0.5, min_support=10)
    thr, uncertified = target_precision_thresholds(policy, labels, CONF40, true, 2)
    assert thr.tolist() == pytest.approx([CONF40[34]] * 2) and not uncertified.any()


def test_target_precision_keeps_nothing_when_no_threshold_is_certified():
    policy = ThresholdPolicy("target_precision", target_precision=0.9, floor=0.5, min_support=3)
    thr, uncertified = target_precision_thresholds(policy, np.zeros(10, int), CONF40[:10], np.zeros(10, int), 2)
    assert uncertified.all() and (thr > 1.0).all()  # 10 / 13.84 = 0.72: a perfect handful proves nothing
    _, kept, _ = run_stream(np.array([[0.99, 0.01]]), policy, dev=DevSet(np.zeros(10, int), CONF40[:10],
                                                                          np.zeros(10, int)))
    assert not kept.any()


def test_the_floor_can_leave_nothing_certified():
    floored = ThresholdPolicy("target_precision", target_precision=0.9, floor=0.7, min_support=10)
    thr, uncertified = target_precision_thresholds(floored, np.zeros(40, int), CONF40, np.where(RIGHT40, 0, 1), 1)
    # at or above 0.7 only the top 30 rows remain (30 / 33.84 = 0.887): below the target
    assert uncertified[0] and thr[0] > 1.0


def test_target_precision_keeps_tied_confidences_together():
    policy = ThresholdPolicy("target_precision", target_precision=0.9, floor=0.0, min_support=1)
    conf = np.concatenate([np.linspace(0.99, 0.9, 40), [0.8, 0.8]])
    true = np.zeros(42, int)
    true[41] = 1
    # 0.8 would keep both tied rows, one of them wrong; 40/40 = 0.912 qualifies at 0.9
    thr, _ = target_precision_thresholds(policy, np.zeros(42, int), conf, true, 1)
    assert thr[0] == pytest.approx(0.9)


def test_target_precision_in_the_stream_uses_the_held_out_gold():
    dev = DevSet(np.zeros(40, int), CONF40, np.where(RIGHT40, 0, 1))
    probs = np.array([[0.75, 0.25], [0.62, 0.38], [0.3, 0.7]])
    res, keep, _ = run_stream(probs, ThresholdPolicy("target_precision", target_precision=0.9, min_support=10), dev=dev)
    assert res.thresholds == pytest.approx([CONF40[34], CONF40[34]]) and not res.uncertified.any()
    assert keep.tolist() == [True, False, True]  # 0.62 is below the 35th dev confidence (0.6500)
    with pytest.raises(ValueError, match="held-out gold"):
        run_stream(probs, ThresholdPolicy("target_precision"))


def test_cap_keeps_each_class_most_confident_rows_and_breaks_ties_by_row_order():
    probs = np.array([[0.91, 0.09], [0.99, 0.01], [0.95, 0.05], [0.95, 0.05], [0.05, 0.95], [0.95, 0.05]])
    res, keep, _ = run_stream(probs, ThresholdPolicy("fixed", threshold=0.9, max_per_class=2))
    # class 0 candidates: .91 .99 .95 .95 .95 -> keep .99 and the first .95 (row 2); class 1 has one row
    assert keep.tolist() == [False, True, True, False, True, False]
    assert res.kept.tolist() == [2, 1]
    _, keep_chunks, _ = run_stream(probs, ThresholdPolicy("fixed", threshold=0.9, max_per_class=2), chunk_rows=2)
    assert keep_chunks.tolist() == keep.tolist()
    _, none, _ = run_stream(probs, ThresholdPolicy("fixed", threshold=0.9, max_per_class=0))
    assert not none.any()


@pytest.mark.parametrize("kind", ["fixed", "per_class", "target_precision"])
def test_a_pool_larger_than_one_chunk_gives_the_same_result_as_one_piece(kind):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5003, 7)) * 3
    probs = softmax_t(logits)
    dev_probs = softmax_t(rng.normal(size=(200, 7)) * 3)
    dev = DevSet(dev_probs.argmax(1), dev_probs.max(1), np.where(rng.random(200) < 0.8, dev_probs.argmax(1), 0))
    policy = ThresholdPolicy(kind, threshold=0.8, floor=0.4, target_precision=0.85, max_per_class=300)
    whole, keep_whole, out_whole = run_stream(probs, policy, chunk_rows=10_000, dev=dev, soft=True)
    parts, keep_parts, out_parts = run_stream(probs, policy, chunk_rows=333, dev=dev, soft=True)
    assert len(out_parts) == 16 and len(out_whole) == 1
    assert keep_parts.tolist() == keep_whole.tolist()
    assert 0 < keep_whole.sum() <= 7 * 300
    for name in ("thresholds", "candidates", "kept", "histogram"):
        assert np.array_equal(getattr(whole, name), getattr(parts, name)), name
    soft_parts = np.concatenate([p for *_, p in out_parts])
    assert np.allclose(soft_parts, out_whole[0][4]) and np.allclose(soft_parts, probs[keep_whole])


def test_per_class_precision_counts_rows_at_each_class_threshold():
    labels = np.array([0, 0, 1, 1, 1])
    conf = np.array([0.9, 0.6, 0.8, 0.8, 0.4])
    true = np.array([0, 1, 1, 0, 1])
    precision, support = per_class_precision(labels, conf, true, np.array([0.5, 0.7, 0.5]))
    assert support.tolist() == [2, 2, 0]
    assert precision[:2].tolist() == [0.5, 0.5] and np.isnan(precision[2])


def test_temperature_scaling_recovers_a_known_temperature_and_lowers_ece():
    rng = np.random.default_rng(1)
    true_logits = rng.normal(size=(4000, 5)) * 2
    labels = np.array([rng.choice(5, p=p) for p in softmax_t(true_logits)])
    overconfident = true_logits * 3  # the model's logits: right ranking, 3x too sure
    t = fit_temperature(overconfident, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(softmax_t(overconfident), labels)
    after = expected_calibration_error(softmax_t(overconfident, t), labels)
    assert after < before / 3
    assert (softmax_t(overconfident, t).argmax(1) == overconfident.argmax(1)).all()  # classes unchanged
    with pytest.raises(ValueError, match="empty"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0))


def test_a_few_right_rows_cannot_collapse_the_temperature():
    """Six rows, all predicted right: the likelihood alone wants T -> 0 (every probability to 1); the prior
    on log T keeps T near 1, and a few thousand rows still move it where they point (the test above)."""
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.5, 0.0], [0.0, 0.0, 1.0]] * 2)
    labels = np.array([0, 1, 2] * 2)
    assert fit_temperature(logits, labels, prior_sd=None) < 0.1  # collapses towards 0
    assert 0.3 < fit_temperature(logits, labels) < 1.0  # the default prior: sharper, not collapsed


# --- the two passes must see the same rows; the label scratch must hold every class ---------------------

from weakflow.tasks.core.pseudo_stream import label_dtype  # noqa: E402


def flaky_chunks(probs, first_rows, second_rows, chunk_rows=2):
    """A chunk source that yields ``first_rows`` rows on its first call and ``second_rows`` after."""
    calls = []

    def gen():
        calls.append(1)
        n = first_rows if len(calls) == 1 else second_rows
        for start in range(0, n, chunk_rows):
            yield probs[start : min(start + chunk_rows, n)], start
    return gen


@pytest.mark.parametrize(("first", "second", "emitted"), [(4, 3, 2), (3, 4, 1)])
def test_a_pool_that_yields_other_rows_in_pass_two_raises(first, second, emitted):
    probs = np.vstack([PROBS, PROBS])
    seen = []
    with pytest.raises(ValueError, match=rf"{first} rows in pass 1 but .*{second}.* in pass 2"):
        label_stream(flaky_chunks(probs, first, second), lambda x: x, ThresholdPolicy("fixed", threshold=0.9),
                     3, lambda x, *_: seen.append(len(x)))
    assert len(seen) == emitted  # a longer pass 2 stops before the chunk that runs past pass 1's rows


def test_a_generator_used_as_chunk_source_is_caught():
    gen = chunked(PROBS, 2)()  # one-shot: pass 2 would see nothing
    with pytest.raises(ValueError, match="4 rows in pass 1 but 0 in pass 2"):
        label_stream(lambda: gen, lambda x: x, ThresholdPolicy("fixed"), 3, lambda *_: None)


@pytest.mark.parametrize(("classes", "dtype"), [(1, np.uint8), (256, np.uint8), (257, np.uint16),
                                                (40_000, np.uint16), (65_537, np.uint32)])
def test_label_scratch_is_wide_enough_for_the_class_count(classes, dtype):
    assert label_dtype(classes) == dtype and np.iinfo(label_dtype(classes)).max >= classes - 1


def test_many_classes_keep_their_labels_through_the_scratch():
    # 40,000 classes would wrap around in an int16 scratch (32,767 is its largest value)
    rows, classes = 5, 40_000
    top = np.array([0, 255, 256, 32_768, classes - 1])
    probs = np.full((rows, classes), 0.1 / (classes - 1), np.float32)
    probs[np.arange(rows), top] = 0.9
    out = []
    res = label_stream(chunked(probs, 2), lambda x: x, ThresholdPolicy("fixed", threshold=0.5), classes,
                       lambda x, s, keep, labels, conf, p: out.append(labels[keep]))
    assert np.concatenate(out).tolist() == top.tolist()
    assert np.flatnonzero(res.kept).tolist() == sorted(top.tolist())


def test_scores_of_the_wrong_width_raise():
    with pytest.raises(ValueError, match=r"expected \(4, 2\)"):
        label_stream(chunked(PROBS, 4), lambda x: x, ThresholdPolicy("fixed"), 2, lambda *_: None)

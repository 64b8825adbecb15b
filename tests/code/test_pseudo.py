import numpy as np
import pytest

from tasks.core.metrics import expected_calibration_error
from tasks.core.pseudo import precision_on, select_confident

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

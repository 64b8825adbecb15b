"""Reading the prediction log back: windows by rows and by time, feedback joined, and sampling of large
windows within its stated K-S error bound."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from weakflow.deploy.prediction_log import PredictionLog
from weakflow.monitoring.alerts import record_feedback
from weakflow.monitoring.drift import load_window, sample_bound

FEATURES = ["a", "b", "c"]


def classes_of(name: str, version: str) -> list[int]:
    """The class set of the log's model "m" v1 (no registry here; tests/model/test_feedback.py checks
    feedback against registered versions)."""
    assert (name, version) == ("m", "1")
    return list(range(10))


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('log') / 'p.db'}"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30_000, 3))
    x[:, 1] = rng.exponential(size=30_000)
    pl = PredictionLog(url)
    for start in range(0, len(x), 100):  # 300 requests of 100 records
        rows = [dict(zip(FEATURES, r)) for r in x[start : start + 100].tolist()]
        pl.put(f"req{start // 100}", "m", "1", FEATURES, rows, [int(start % 3)] * len(rows), [0.9] * len(rows))
    pl.close()
    assert pl.written == 30_000 and pl.failed == 0
    return url, x


def test_last_rows_in_order_with_feedback(log):
    url, x = log
    record_feedback(url, pd.DataFrame({"request_id": ["req299", "req299"], "row_index": [0, 99], "label": [2, 1]}),
                    classes_of)
    w = load_window(url, FEATURES, rows=1000)
    assert len(w) == 1000
    assert np.allclose(w[FEATURES].to_numpy(), x[-1000:])
    # class values come back as text, so integer and named classes compare alike ("1", "spam")
    assert w["label"].notna().sum() == 2 and w["label"].iloc[-1] == "1" and w["label"].iloc[-100] == "2"
    assert len(load_window(url, FEATURES, rows=None, hours=1.0)) == 30_000
    assert len(load_window(url, FEATURES, rows=10, model_name="other")) == 0
    with pytest.raises(ValueError, match="no logged prediction"):
        record_feedback(url, pd.DataFrame({"request_id": ["nope"], "row_index": [0], "label": [1]}), classes_of)
    # the same row twice in one file, and again later: the last label wins, one row each
    twice = pd.DataFrame({"request_id": ["req299"] * 2, "row_index": [0, 0], "label": [5, 7]})
    assert record_feedback(url, twice, classes_of) == 1
    assert load_window(url, FEATURES, rows=100)["label"].iloc[0] == "7"


def test_sampled_window_stays_within_the_ks_bound(log):
    url, x = log
    full = load_window(url, FEATURES, rows=30_000)
    sample = load_window(url, FEATURES, rows=30_000, sample=3000, seed=1)
    assert len(sample) == 3000 and sample["request_id"].isin(full["request_id"]).all()
    assert not sample.duplicated(["request_id", "row_index"]).any()
    reference = np.random.default_rng(5).normal(size=(2000, 3)) + 0.05
    bound = sample_bound(3000)
    for i, f in enumerate(FEATURES):
        d_full = ks_2samp(full[f], reference[:, i]).statistic
        d_sample = ks_2samp(sample[f], reference[:, i]).statistic
        assert abs(d_sample - d_full) <= bound, (f, d_full, d_sample, bound)
    assert sample_bound(50_000) == pytest.approx(0.0087, abs=1e-4)


def test_alerts_of_a_log_that_does_not_exist_yet_are_none_and_nothing_is_created(tmp_path):
    from weakflow.monitoring.alerts import list_alerts

    url = f"sqlite:///{tmp_path / 'no-such-folder' / 'log.db'}"
    assert list_alerts(url).empty and not (tmp_path / "no-such-folder").exists()

"""Anchored weak training: when the gold-only model's opinion joins the votes' evidence, and that ``auto``
lets the gold rows choose (out of fold) when the votes' ranks are stable. A pipeline slice in memory on the
demo with small epochs (no Prefect, no MLflow)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from weakflow.tasks.gold_only import train_gold_only
from weakflow.tasks.select import best_out_of_fold
from weakflow.tasks.validate import load_and_validate
from weakflow.tasks.weak_labels import make_weak_labels
from weakflow.tasks.weak_train import PRIOR_NAMES, STABLE, evidence_note, prior_options, train_weak
from tests.conftest import fast_config


@pytest.fixture(scope="module")
def slice_(tmp_path_factory):
    cfg = fast_config(tmp_path_factory.mktemp("ws"))
    data, _ = load_and_validate(cfg)
    labels = make_weak_labels(data, cfg)
    return cfg, data, labels, train_gold_only(data, cfg)


def test_prior_options_follow_the_setting_and_the_vote_rank_stability(slice_):
    _, _, labels, gold_only = slice_
    stable, unstable = replace(labels, stability=STABLE), replace(labels, stability=STABLE - 0.01)
    assert prior_options(stable, "auto", gold_only) == [False, True]  # measured, not assumed
    assert prior_options(unstable, "auto", gold_only) == [True]  # the gold rows cannot say what a vote means
    assert prior_options(replace(labels, stability=None), "auto", gold_only) == [False]  # no gold-anchored evidence
    assert prior_options(stable, "always", gold_only) == [True]
    assert prior_options(unstable, "never", gold_only) == [False]
    assert prior_options(unstable, "always", None) == [False]  # no gold-only model to ask


def test_auto_trains_both_and_ships_the_one_the_out_of_fold_gold_rows_prefer(slice_):
    cfg, data, labels, gold_only = slice_
    stable = replace(labels, stability=1.0)
    y_gold = data.y(data.rows("gold"))

    def fitted(setting: str):
        return train_weak(data, stable, cfg.model_copy(update={"weak_train": cfg.weak_train.model_copy(
            update={"anchored_prior": setting})}), gold_only=gold_only)

    auto, votes, prior = fitted("auto"), fitted("never"), fitted("always")
    # the two variants differ (the gold-only opinion changes what the weak rows teach) ...
    assert np.abs(votes.oof_probs - prior.oof_probs).max() > 1e-3
    # ... auto trained exactly those two and judged them on every gold row, out of fold
    f = auto.figures
    assert f["anchored_prior_compared"] == 1.0
    assert f["oof_accuracy_votes"] == pytest.approx(float((votes.oof_probs.argmax(1) == y_gold).mean()))
    assert f["oof_accuracy_with_prior"] == pytest.approx(float((prior.oof_probs.argmax(1) == y_gold).mean()))
    # ... and ships the one the selection rule prefers, as that very model
    expected = best_out_of_fold({PRIOR_NAMES[False]: votes.oof_probs, PRIOR_NAMES[True]: prior.oof_probs}, y_gold)[0]
    shipped = prior if expected == PRIOR_NAMES[True] else votes
    assert f["anchored_prior"] == float(expected == PRIOR_NAMES[True])
    np.testing.assert_allclose(auto.oof_logits, shipped.oof_logits, rtol=1e-5, atol=1e-5)
    assert "anchored_prior_compared" not in votes.figures and "anchored_prior_compared" not in prior.figures
    # the run summary says which evidence was kept and on what figures
    assert evidence_note(auto.figures) == (f"; evidence: {expected}, chosen out of fold (gold accuracy: votes "
                                           f"{f['oof_accuracy_votes']:.3f}, votes + gold-only "
                                           f"{f['oof_accuracy_with_prior']:.3f})")
    assert evidence_note(votes.figures) == "; evidence: votes"
    assert evidence_note(prior.figures) == "; evidence: votes + gold-only"

"""Anchored weak training: when the gold-only model's opinion joins the votes' evidence, and that ``auto``
lets the gold rows choose (out of fold, after a probe of the epochs) when the votes' ranks are stable. A pipeline slice in memory on the
demo with small epochs (no Prefect, no MLflow)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from weakflow.tasks.gold_only import train_gold_only
from weakflow.tasks.validate import load_and_validate
from weakflow.tasks.weak_labels import make_weak_labels
from weakflow.tasks import weak_train
from weakflow.tasks.lib.results import PRIOR_NAMES, evidence_note
from weakflow.tasks.lib.steps import RunContext
from weakflow.tasks.lib.weak_methods import STABLE, epoch_count, prior_options, probe_epochs
from tests.conftest import fast_config


@pytest.fixture(scope="module")
def slice_(tmp_path_factory):
    cfg = fast_config(tmp_path_factory.mktemp("ws"))
    data, _ = load_and_validate(cfg)
    labels = make_weak_labels(data, cfg)
    return cfg, data, labels, train_gold_only(data, cfg)


def test_prior_options_follow_the_setting_refinement_and_the_vote_rank_stability(slice_):
    _, _, labels, gold_only = slice_
    stable, unstable = replace(labels, stability=STABLE), replace(labels, stability=STABLE - 0.01)
    assert prior_options(stable, "auto", gold_only) == [False, True]  # measured, not assumed
    assert prior_options(unstable, "auto", gold_only) == [False, True]  # refined on the weak rows: measured too
    assert prior_options(stable, "auto", gold_only, refined=False) == [False, True]
    # from the gold rows alone, which cannot say what a vote means: the opinion joins outright
    assert prior_options(unstable, "auto", gold_only, refined=False) == [True]
    assert prior_options(replace(labels, stability=None), "auto", gold_only) == [False]  # no gold-anchored evidence
    assert prior_options(stable, "always", gold_only) == [True]
    assert prior_options(unstable, "never", gold_only) == [False]
    assert prior_options(unstable, "always", None) == [False]  # no gold-only model to ask


def best_so_far(history, epochs: int) -> tuple[float, float]:
    """(out-of-fold accuracy, loss) of the best of the first ``epochs`` epochs, by cross-fitting's own key."""
    best = max(history[:epochs], key=lambda h: (h.dev_accuracy, -h.dev_loss, h.epoch))
    return best.dev_accuracy, best.dev_loss


def test_auto_probes_both_and_trains_on_the_one_the_out_of_fold_gold_rows_prefer(slice_):
    cfg, data, labels, gold_only = slice_
    stable = replace(labels, stability=1.0)
    y_gold = data.y(data.rows("gold"))

    def fitted(setting: str):
        section = cfg.weak_train.model_copy(update={"anchored_prior": setting})
        return weak_train.compute(RunContext.of(cfg), data, stable, gold_only, section, cfg.selection,
                                  cfg.weak_labels.confusion_strength)

    auto, votes, prior = fitted("auto"), fitted("never"), fitted("always")
    probe = probe_epochs(cfg.weak_train)
    assert 0 < probe < cfg.weak_train.epochs
    assert epoch_count(cfg.weak_train, stable, gold_only) == cfg.weak_train.epochs + probe
    # the two variants differ (the gold-only opinion changes what the weak rows teach) ...
    assert np.abs(votes.oof_probs - prior.oof_probs).max() > 1e-3
    # ... auto trained exactly those two for the probe's epochs and judged them on every gold row, out of fold
    f = auto.figures
    assert f["anchored_prior_compared"] == 1.0 and f["anchored_prior_probe_epochs"] == probe
    assert f["oof_accuracy_votes"] == pytest.approx(best_so_far(votes.history, probe)[0])
    assert f["oof_accuracy_with_prior"] == pytest.approx(best_so_far(prior.history, probe)[0])
    # ... kept the one the selection rule prefers on those figures (within one gold row: the lower loss) ...
    acc = {False: f["oof_accuracy_votes"], True: f["oof_accuracy_with_prior"]}
    nll = {False: f["oof_log_loss_votes"], True: f["oof_log_loss_with_prior"]}
    contenders = [o for o in (False, True) if acc[o] >= max(acc.values()) - 1 / len(y_gold) - 1e-12]
    expected = min(contenders, key=lambda o: (nll[o], o))
    assert f["anchored_prior"] == float(expected)
    # ... and trained it on to the end: the very model that setting trains alone
    shipped = prior if expected else votes
    assert auto.best_epoch == shipped.best_epoch
    np.testing.assert_array_equal(auto.oof_logits, shipped.oof_logits)
    for a, b in zip(auto.model.state_dict().values(), shipped.model.state_dict().values()):
        assert torch.equal(a, b)
    assert "anchored_prior_compared" not in votes.figures and "anchored_prior_compared" not in prior.figures
    # the run summary says which evidence was kept and on what figures
    assert evidence_note(auto.figures) == (f"; evidence: {PRIOR_NAMES[expected]}, chosen out of fold after {probe} "
                                           f"epochs (gold accuracy: votes {f['oof_accuracy_votes']:.3f}, "
                                           f"votes + gold-only {f['oof_accuracy_with_prior']:.3f})")
    assert evidence_note(votes.figures) == "; evidence: votes"
    assert evidence_note(prior.figures) == "; evidence: votes + gold-only"


def test_evidence_loss_is_the_one_the_weak_rows_are_learnt_with(slice_):
    cfg, data, labels, gold_only = slice_

    def fitted(loss: str):
        section = cfg.weak_train.model_copy(update={"anchored_prior": "never", "evidence_loss": loss})
        return weak_train.compute(RunContext.of(cfg), data, labels, gold_only, section, cfg.selection,
                                  cfg.weak_labels.confusion_strength)

    ce, gce = fitted("ce"), fitted("gce")
    # the same rows, evidence and seed: only the loss on the weak rows differs, and it changes what is learnt
    assert ce.history[0].train_loss != pytest.approx(gce.history[0].train_loss)
    assert np.abs(ce.oof_probs - gce.oof_probs).max() > 1e-3

"""Which candidate ships, on hand-made out-of-fold probabilities of 10 gold rows."""

import numpy as np
import pytest

from weakflow.tasks.lib.modeling import TrainedModel
from weakflow.tasks.select import choose

Y = np.array([0, 1] * 5)


def candidate(right: int, confidence: float) -> TrainedModel:
    """Out-of-fold logits right on the first ``right`` gold rows, wrong after, at ``confidence``."""
    probs = np.full((10, 2), 1 - confidence)
    pred = np.where(np.arange(10) < right, Y, 1 - Y)
    probs[np.arange(10), pred] = confidence
    return TrainedModel(None, None, oof_logits=np.log(probs).astype(np.float32), temperature=1.0)


def test_a_clear_accuracy_lead_ships_whatever_the_log_loss():
    chosen = choose({"gold_only": candidate(6, 0.6), "weak": candidate(9, 0.99), "final": candidate(7, 0.55)}, Y)
    assert chosen.chosen == "weak" and chosen.reason.startswith("shipped the weak model, the best on the gold rows")
    assert chosen.table.set_index("candidate").loc["weak", "oof_accuracy"] == 0.9


def test_one_gold_row_is_no_evidence_the_log_loss_decides():
    # final is one row ahead, but sure of its mistake; weak is better calibrated
    chosen = choose({"gold_only": candidate(6, 0.6), "weak": candidate(8, 0.7), "final": candidate(9, 0.999)}, Y)
    assert chosen.chosen == "weak"
    assert "within one gold row of the best accuracy" in chosen.reason and "final" in chosen.reason


def test_weak_labels_that_do_not_help_ship_the_gold_only_model():
    chosen = choose({"gold_only": candidate(9, 0.8), "weak": candidate(6, 0.8), "final": candidate(7, 0.8)}, Y)
    assert chosen.chosen == "gold_only"
    assert chosen.reason.startswith("weak labels did not help on this data: shipped the gold-only model")
    # the same evidence with equal candidates: the simpler model
    tie = choose({"gold_only": candidate(8, 0.8), "weak": candidate(8, 0.8)}, Y)
    assert tie.chosen == "gold_only"


def test_a_shipped_bag_of_networks_is_said():
    from dataclasses import replace

    from weakflow.tasks.core.models import ModelSpec

    bag = replace(candidate(9, 0.9), spec=ModelSpec("mlp", 4, 2, ensemble=3))
    chosen = choose({"gold_only": candidate(6, 0.8), "weak": bag}, Y)
    assert chosen.chosen == "weak" and chosen.reason.endswith("; the shipped model averages the logits of 3 networks")
    one = choose({"gold_only": candidate(6, 0.8), "weak": replace(bag, spec=ModelSpec("mlp", 4, 2))}, Y)
    assert "networks" not in one.reason


def test_a_forced_choice_and_missing_candidates_are_said():
    only = choose({"gold_only": candidate(7, 0.8)}, Y, missing={"weak": "no weak vote", "final": "no weak vote"})
    assert only.chosen == "gold_only" and "no weak model: no weak vote" in only.reason
    forced = choose({"gold_only": candidate(9, 0.8), "final": candidate(6, 0.8)}, Y, ship="final")
    assert forced.chosen == "final" and forced.reason.startswith("selection.ship = final")
    with pytest.raises(ValueError, match="was not trained"):
        choose({"gold_only": candidate(9, 0.8)}, Y, ship="weak", missing={"weak": "no weak vote"})


def test_the_fold_ensemble_ships_the_refit_averaged_with_its_fold_models_and_leaves_the_candidate_alone():
    """selection.fold_ensemble: the shipped network's logits are the mean of the refit's (each member of a bagged
    refit counting once) and the fold models'; the candidate, its spec and its judged figures are unchanged; fold
    models trained on a sample of the rows, and the gold-only model's, are never averaged in."""
    from dataclasses import replace

    import torch

    from weakflow.tasks.core.models import LogitEnsemble, ModelSpec, build_model

    spec = ModelSpec("mlp", 4, 2, hidden=(8,))
    torch.manual_seed(0)
    refit = LogitEnsemble([build_model(spec), build_model(spec)])  # a bagged refit of 2
    folds = [build_model(spec) for _ in range(3)]
    weak = replace(candidate(9, 0.9), model=refit, spec=replace(spec, ensemble=2), folds=folds)
    chosen = choose({"gold_only": candidate(6, 0.8), "weak": weak}, Y, fold_ensemble=True)
    shipped = chosen.model
    assert chosen.chosen == "weak" and type(shipped) is type(weak) and shipped.folds is folds
    assert shipped.spec.ensemble == 5 and weak.spec.ensemble == 2 and weak.model is refit
    x = torch.randn(7, 4)
    with torch.no_grad():
        expected = torch.stack([*(m(x) for m in refit.members), *(f(x) for f in folds)]).mean(0)
        assert torch.allclose(shipped.model(x), expected)
    assert chosen.reason.endswith("averages the logits of its refit and its 3 fold models (5 networks)")
    assert np.array_equal(chosen.table["oof_accuracy"], choose({"gold_only": candidate(6, 0.8), "weak": weak}, Y)
                          .table["oof_accuracy"])
    sampled = choose({"gold_only": candidate(6, 0.8), "weak": replace(weak, folds_sampled=True)}, Y, fold_ensemble=True)
    assert sampled.model.model is refit and "fold models" not in sampled.reason
    off = choose({"gold_only": candidate(6, 0.8), "weak": weak}, Y)
    assert off.model is weak
    # the gold-only model's fold models each miss a third of all its rows: it ships alone
    gold_only = replace(weak, oof_logits=candidate(9, 0.9).oof_logits)
    alone = choose({"gold_only": gold_only, "weak": candidate(6, 0.8)}, Y, fold_ensemble=True)
    assert alone.chosen == "gold_only" and alone.model is gold_only and "fold models" not in alone.reason

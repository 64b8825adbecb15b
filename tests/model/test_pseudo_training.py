"""Pseudo-labelling and the four full-training strategies as a pipeline slice in memory (no Prefect,
no MLflow): the plain stage functions on the demo with small epochs, every model cross-fitted."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from weakflow.tasks.core.training import predict_proba
from weakflow.tasks.lib.data import FOLD, ROW_ID
from weakflow.tasks.core.methods import as_evidence
from weakflow.tasks.full_train import FinalSetup, final_table, train_full
from weakflow.tasks.gold_only import train_gold_only
from weakflow.tasks.lib.modeling import new_model
from weakflow.tasks.lib import pseudo_labels
from weakflow.tasks.lib.steps import RunContext
from weakflow.tasks.validate import load_and_validate
from weakflow.tasks.weak_labels import make_weak_labels
from weakflow.tasks import weak_train
from tests.conftest import fast_config


@pytest.fixture(scope="module")
def weak_setup(tmp_path_factory):
    ws = tmp_path_factory.mktemp("ws")
    cfg = fast_config(ws, "full_train.epochs=6", "full_train.finetune_epochs=3")
    data, _ = load_and_validate(cfg)
    labels = make_weak_labels(data, cfg)
    weak = weak_train.compute(RunContext.of(cfg), data, labels, None, cfg.weak_train, cfg.selection,
                              cfg.weak_labels.confusion_strength)
    return cfg, data, labels, weak


def with_(cfg, *overrides):
    from weakflow.tasks.lib.config import load_config
    from tests.conftest import FAST

    return load_config(None, [*FAST, f"tracking.workspace={cfg.tracking.workspace}", "full_train.epochs=6",
                              "full_train.finetune_epochs=3", *overrides])


def label_all(data, weak, cfg, out):
    """Every weak model's pseudo set under ``cfg``'s sections, as the pseudo_label stage makes it."""
    return pseudo_labels.label_all(data, weak, cfg.pseudo_label, cfg.parallel, cfg.device, out,
                                   soft=cfg.full_train.strategy == "distill")


def setup(cfg) -> FinalSetup:
    """What the full_train stage's trainers read of ``cfg``."""
    return FinalSetup(RunContext.of(cfg), cfg.full_train, cfg.selection, cfg.pseudo_label, cfg.parallel, cfg.governance)


def test_new_model_is_seeded_whatever_ran_before(weak_setup):
    cfg, data, _, _ = weak_setup
    a, _ = new_model(data, cfg.full_train, seed=3)
    torch.rand(100)  # consume the global generator
    b, _ = new_model(data, cfg.full_train, seed=3)
    c, _ = new_model(data, cfg.full_train, seed=4)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_every_weak_model_labels_for_its_own_fold_and_is_judged_on_it(weak_setup, tmp_path):
    cfg, data, _, weak = weak_setup
    fixed = with_(cfg, "pseudo_label.policy=fixed", "pseudo_label.threshold=0.9")
    pseudo = label_all(data, weak, fixed, tmp_path)
    assert len(pseudo.folds) == data.folds == 3
    for s in (pseudo.refit, *pseudo.folds):
        kept = pd.read_parquet(s.path)
        assert len(kept) == s.kept_count == s.per_class["kept"].sum() > 0
        assert s.candidates == 1293 and set(kept[ROW_ID]) <= set(data.rows("weak", "unlabeled")[ROW_ID])
        assert (kept["confidence"] >= np.float32(0.9)).all()
        # features written with the row equal the training file's features for that row
        train = data.train.set_index(ROW_ID).loc[kept[ROW_ID]]
        assert np.array_equal(kept[data.features].to_numpy(np.float32), data.x(train))
    # each fold set is measured on its own fold's gold rows; the refit's precision pools them
    gold = data.rows("gold")
    assert [s.holdout_rows for s in pseudo.folds] == [int((gold[FOLD] == f).sum()) for f in range(3)]
    assert pseudo.refit.holdout_kept == sum(s.holdout_kept for s in pseudo.folds)
    assert pseudo.refit.holdout_right == sum(s.holdout_right for s in pseudo.folds)
    low, high = pseudo.refit.precision_interval
    assert low <= pseudo.refit.holdout_precision <= high
    # a fold's labeller is not the refit: at least one fold keeps another set of rows
    assert any(set(pd.read_parquet(s.path)[ROW_ID]) != set(pseudo.refit.kept[ROW_ID]) for s in pseudo.folds)
    nll = pseudo.refit.calibration.nll  # T minimises out-of-fold NLL (+ its prior, 0 at T = 1)
    assert nll["oof_after"] <= nll["oof_before"] + 1e-6
    truth = pd.read_parquet(data.spec.train_path.parent / "truth.parquet").set_index(ROW_ID)["true_label"]
    kept = pseudo.refit.kept
    assert (kept["pseudo_label"].to_numpy() == truth.loc[kept[ROW_ID]].to_numpy()).mean() > 0.9


def test_target_precision_thresholds_respect_the_lower_bound(weak_setup, tmp_path):
    cfg, data, _, weak = weak_setup
    pseudo = label_all(data, weak, with_(cfg, "pseudo_label.policy=target_precision",
                                         "pseudo_label.target_precision=0.8", "pseudo_label.floor=0.3"), tmp_path)
    t = pseudo.refit.per_class
    certified = t[~t["uncertified"]]
    assert len(certified) > 0
    # a class certified by its own held-out rows shows a lower bound at the target; the others share the
    # one threshold the pooled rows certified; an uncertified class keeps nothing
    own = certified["estimated_precision_low"] >= 0.8
    assert certified.loc[~own, "threshold"].nunique() <= 1
    assert (t.loc[t["uncertified"], "kept"] == 0).all()
    assert (certified["threshold"] >= 0.3).all()
    demanding = label_all(data, weak, with_(cfg, "pseudo_label.policy=target_precision",
                                            "pseudo_label.target_precision=0.999"), tmp_path / "strict")
    assert demanding.refit.kept_count == 0 and demanding.refit.per_class["uncertified"].all()


def test_self_train_with_one_round_is_augment(weak_setup, tmp_path):
    cfg, data, labels, weak = weak_setup
    aug_cfg, st_cfg = with_(cfg), with_(cfg, "full_train.strategy=self_train", "full_train.self_train.max_rounds=1")
    pseudo = label_all(data, weak, aug_cfg, tmp_path)
    a = train_full(data, labels, weak, pseudo, setup(aug_cfg))
    b = train_full(data, labels, weak, pseudo, setup(st_cfg))
    x = data.x(data.test)
    assert np.array_equal(predict_proba(a.model, x), predict_proba(b.model, x))
    assert b.rounds is not None and len(b.rounds.rounds) == 1 and "max_rounds=1" in b.rounds.stop_reason


def test_self_train_rounds_relabel_with_the_students(weak_setup, tmp_path):
    cfg, data, labels, weak = weak_setup
    st_cfg = with_(cfg, "full_train.strategy=self_train", "full_train.self_train.max_rounds=3",
                   "full_train.self_train.min_growth=0.0", "full_train.self_train.dev_tolerance=1.0")
    pseudo = label_all(data, weak, st_cfg, tmp_path)
    seen = []
    final = train_full(data, labels, weak, pseudo, setup(st_cfg), on_round=seen.append)
    rounds, reason = final.rounds.rounds, final.rounds.stop_reason
    assert [r.index for r in seen] == [r.index for r in rounds]
    # round 1 trains on the weak models' sets and, with max_rounds > 1, always relabels with its students
    first = seen[0]
    assert first.trained_on == pseudo.refit.kept_count and first.relabelled == first.pseudo.refit.kept_count
    assert first.pseudo.refit.round == 1 and len(first.pseudo.folds) == 3
    for before, after in zip(seen, seen[1:]):  # each later round trains on exactly the previous relabelling
        assert after.trained_on == before.relabelled
    # dev_tolerance=1.0 never stops on accuracy: the run ends at max_rounds or when the set shrank
    assert (len(seen) == 3 and "max_rounds=3" in reason) or (
        seen[-1].relabelled < seen[-1].trained_on and "stopped growing" in reason), reason
    assert final is final.rounds.model
    chosen = final.rounds.chosen
    assert final.pseudo is (pseudo.refit if chosen == 0 else rounds[chosen - 1].pseudo.refit)


def test_final_trains_on_weak_rows_unless_relabelled_and_warm_starts(weak_setup, tmp_path):
    cfg, data, labels, weak = weak_setup
    aug = with_(cfg)
    pseudo = label_all(data, weak, aug, tmp_path)
    final = train_full(data, labels, weak, pseudo, setup(aug))
    relabelled = set(pseudo.refit.kept.loc[pseudo.refit.kept["source"] == "train", ROW_ID])
    assert final.train_rows == {"gold": len(data.rows("gold")), "pseudo": pseudo.refit.kept_count,
                                "weak": int(sum(r not in relabelled for r in weak.row_ids))}
    sources = final.provenance["label_source"].str.split(":").str[0].value_counts().to_dict()
    assert sources == {k: v for k, v in final.train_rows.items() if v}
    # init: weak starts from the weak models, fresh from new networks: different models
    fresh = train_full(data, labels, weak, pseudo, setup(with_(cfg, "full_train.init=fresh")))
    x = data.x(data.test)
    assert not np.array_equal(predict_proba(final.model, x), predict_proba(fresh.model, x))


def test_final_learns_the_weak_rows_through_the_weak_models_refined_evidence(weak_setup, tmp_path):
    cfg, data, labels, _ = weak_setup
    weak = weak_train.compute(RunContext.of(cfg), data, labels, train_gold_only(data, cfg), cfg.weak_train,
                              cfg.selection, cfg.weak_labels.confusion_strength)  # anchored_refine: on by default
    trainers = [*range(data.folds), None]
    assert set(weak.evidence) == set(trainers) and len(weak.refined_sources) == len(labels.sources)
    assert weak.figures["anchored_refined"] == 1.0
    table = final_table(data, labels, weak, label_all(data, weak, with_(cfg), tmp_path), with_(cfg).full_train)
    n_gold, n_weak, k = len(data.rows("gold")), len(weak.row_ids), len(data.classes)
    for t in trainers:
        own = table.weights[t][n_gold:n_gold + n_weak] > 0  # weak rows no pseudo label replaced
        learnt = table.targets[t][n_gold:n_gold + n_weak][own]
        assert own.sum() > 0
        np.testing.assert_allclose(learnt, as_evidence(weak.evidence[t])[own])
        # ... which is not the evidence measured on the gold rows alone
        assert np.abs(learnt - as_evidence(labels.evidence(t, k))[own]).max() > 1e-3


def test_distill_trains_on_soft_labels_and_pretrain_finetune_on_both_phases(weak_setup, tmp_path):
    cfg, data, labels, weak = weak_setup
    d_cfg = with_(cfg, "full_train.strategy=distill")
    pseudo = label_all(data, weak, d_cfg, tmp_path)
    soft = pd.read_parquet(pseudo.refit.path)[[f"soft_{c}" for c in data.classes]].to_numpy()
    assert np.allclose(soft.sum(axis=1), 1.0, atol=1e-4)
    assert len(soft) > 0
    # soft rows are rescored in pass 2 in other batches than pass 1's confidences: equal up to float32 noise
    confidence = pd.read_parquet(pseudo.refit.path)["confidence"].to_numpy()
    np.testing.assert_allclose(soft.max(axis=1), confidence, rtol=0, atol=1e-5)
    assert train_full(data, labels, weak, pseudo, setup(d_cfg)).best_dev_accuracy > 0.5
    with pytest.raises(ValueError, match="soft labels"):
        train_full(data, labels, weak, label_all(data, weak, with_(cfg), tmp_path / "hard"), setup(d_cfg))
    p_cfg = with_(cfg, "full_train.strategy=pretrain_finetune")
    pf = train_full(data, labels, weak, label_all(data, weak, p_cfg, tmp_path / "pf"), setup(p_cfg))
    assert len(pf.history) == 6 + 3 and pf.best_epoch >= 6  # fine-tuning epochs come after pre-training

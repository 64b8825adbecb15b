"""Pseudo-labelling and the four full-training strategies as a pipeline slice in memory (no Prefect,
no MLflow): the plain stage functions on the demo with small epochs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.core.training import predict_proba
from tasks.data import ROW_ID
from tasks.full_train import train_full
from tasks.modeling import new_model
from tasks.pseudo_label import make_pseudo_labels
from tasks.validate import load_and_validate
from tasks.weak_labels import make_weak_labels
from tasks.weak_train import train_weak
from tests.conftest import fast_config


@pytest.fixture(scope="module")
def weak_setup(tmp_path_factory):
    ws = tmp_path_factory.mktemp("ws")
    cfg = fast_config(ws, "full_train.epochs=6", "full_train.finetune_epochs=3")
    data, _ = load_and_validate(cfg)
    weak = train_weak(data, make_weak_labels(data, cfg), cfg)
    return cfg, data, weak


def with_(cfg, *overrides):
    from tasks.config import load_config
    from tests.conftest import FAST

    return load_config(None, [*FAST, f"tracking.workspace={cfg.tracking.workspace}", "full_train.epochs=6",
                              "full_train.finetune_epochs=3", *overrides])


def test_new_model_is_seeded_whatever_ran_before(weak_setup):
    cfg, data, _ = weak_setup
    a, _ = new_model(data, cfg.full_train, seed=3)
    torch.rand(100)  # consume the global generator
    b, _ = new_model(data, cfg.full_train, seed=3)
    c, _ = new_model(data, cfg.full_train, seed=4)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_pseudo_labels_are_calibrated_written_and_precise(weak_setup):
    cfg, data, weak = weak_setup
    pseudo = make_pseudo_labels(data, weak.model, with_(cfg, "pseudo_label.policy=fixed", "pseudo_label.threshold=0.9"))
    kept = pd.read_parquet(pseudo.path)
    assert len(kept) == pseudo.kept_count == pseudo.per_class["kept"].sum() > 0
    assert pseudo.candidates == 1293 and set(kept[ROW_ID]) <= set(data.rows("weak", "unlabeled")[ROW_ID])
    assert (kept["confidence"] >= np.float32(0.9)).all()
    # features written with the row equal the training file's features for that row
    train = data.train.set_index(ROW_ID).loc[kept[ROW_ID]]
    assert np.array_equal(kept[data.features].to_numpy(np.float32), data.x(train))
    nll = pseudo.calibration.nll  # T minimises dev NLL (ECE on ~50 dev rows may go either way)
    assert nll["dev_after"] <= nll["dev_before"] + 1e-6
    assert set(pseudo.calibration.ece) == {"dev_before", "dev_after", "holdout_before", "holdout_after"}
    truth = pd.read_parquet(data.spec.train_path.parent / "truth.parquet").set_index(ROW_ID)["true_label"]
    assert (kept["pseudo_label"].to_numpy() == truth.loc[kept[ROW_ID]].to_numpy()).mean() > 0.9


def test_target_precision_policy_uses_dev_and_logs_fallbacks(weak_setup):
    cfg, data, weak = weak_setup
    pseudo = make_pseudo_labels(data, weak.model, with_(cfg, "pseudo_label.policy=target_precision",
                                                        "pseudo_label.target_precision=0.9", "pseudo_label.floor=0.3"))
    t = pseudo.per_class
    qualified = t[~t["fell_back_to_base"]]
    assert len(qualified) > 0  # with ~5 dev rows per class, most classes reach 90% at some threshold
    assert (qualified["estimated_precision_dev"] >= 0.9).all() and (qualified["dev_rows"] >= 3).all()
    assert (t.loc[t["fell_back_to_base"], "threshold"] == pytest.approx(0.9)).all()


def test_self_train_with_one_round_is_augment(weak_setup):
    cfg, data, weak = weak_setup
    aug_cfg, st_cfg = with_(cfg), with_(cfg, "full_train.strategy=self_train", "full_train.self_train.max_rounds=1")
    pseudo = make_pseudo_labels(data, weak.model, aug_cfg)
    a = train_full(data, pseudo, aug_cfg)
    b = train_full(data, pseudo, st_cfg)
    x = data.x(data.test)
    assert np.array_equal(predict_proba(a.model, x), predict_proba(b.model, x))
    assert b.rounds is not None and len(b.rounds.rounds) == 1 and "max_rounds=1" in b.rounds.stop_reason


def test_self_train_rounds_relabel_with_the_student(weak_setup):
    cfg, data, weak = weak_setup
    st_cfg = with_(cfg, "full_train.strategy=self_train", "full_train.self_train.max_rounds=3",
                   "full_train.self_train.min_growth=0.0", "full_train.self_train.dev_tolerance=1.0")
    pseudo = make_pseudo_labels(data, weak.model, st_cfg)
    seen = []
    final = train_full(data, pseudo, st_cfg, on_round=seen.append)
    rounds, reason = final.rounds.rounds, final.rounds.stop_reason
    assert [r.index for r in seen] == [r.index for r in rounds]
    # round 1 trains on the weak model's set and, with max_rounds > 1, always relabels with its student
    first = seen[0]
    assert first.trained_on == pseudo.kept_count and first.relabelled == first.pseudo.kept_count
    assert first.pseudo.round == 1 and first.pseudo.holdout_precision is None  # student saw gold_train
    for before, after in zip(seen, seen[1:]):  # each later round trains on exactly the previous relabelling
        assert after.trained_on == before.relabelled
    # dev_tolerance=1.0 never stops on dev accuracy: the run ends at max_rounds or when the set shrank
    assert (len(seen) == 3 and "max_rounds=3" in reason) or (
        seen[-1].relabelled < seen[-1].trained_on and "stopped growing" in reason), reason
    assert final is final.rounds.model
    # the returned model carries the set it trained on (what bench/pseudo.py reports precision of)
    chosen = final.rounds.chosen
    assert final.pseudo is (pseudo if chosen == 0 else rounds[chosen - 1].pseudo)
    assert final.pseudo.kept_count == rounds[chosen].trained_on


def test_distill_trains_on_soft_labels_and_pretrain_finetune_on_both_phases(weak_setup):
    cfg, data, weak = weak_setup
    d_cfg = with_(cfg, "full_train.strategy=distill")
    pseudo = make_pseudo_labels(data, weak.model, d_cfg)
    soft = pd.read_parquet(pseudo.path)[[f"soft_{c}" for c in data.classes]].to_numpy()
    assert np.allclose(soft.sum(axis=1), 1.0, atol=1e-4)
    assert len(soft) > 0
    # soft rows are rescored in pass 2 in other batches than pass 1's confidences: equal up to float32 noise
    confidence = pd.read_parquet(pseudo.path)["confidence"].to_numpy()
    np.testing.assert_allclose(soft.max(axis=1), confidence, rtol=0, atol=1e-5)
    assert train_full(data, pseudo, d_cfg).best_dev_accuracy > 0.5
    with pytest.raises(ValueError, match="soft labels"):
        train_full(data, make_pseudo_labels(data, weak.model, with_(cfg)), d_cfg)
    p_cfg = with_(cfg, "full_train.strategy=pretrain_finetune")
    pf = train_full(data, make_pseudo_labels(data, weak.model, p_cfg), p_cfg)
    assert len(pf.history) == 6 + 3 and pf.best_epoch >= 6  # fine-tuning epochs come after pre-training

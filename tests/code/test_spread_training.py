"""Cross-fitting spread out (``parallel.training``): fold models that train elsewhere, all at once, and come back
through pickling, give the networks, the out-of-fold logits and the choice of epoch of fold models trained here
epoch by epoch."""

from __future__ import annotations

import cloudpickle
import numpy as np
import pytest

from tests.code.test_crossfit import MEMORISING, SETTINGS, InStep, build, problem, states_equal, wide
from weakflow.tasks.core.crossfit import FoldTraining, Span, fit_folds, race, train_span
from weakflow.tasks.core.training import WeightedLoss
from weakflow.tasks.lib.config import load_config


def elsewhere(jobs: list) -> list[Span]:
    """Each job pickled out, trained, and its span pickled back, as a task on another process is."""
    calls = [cloudpickle.loads(cloudpickle.dumps(job)) for job in jobs]
    return [cloudpickle.loads(cloudpickle.dumps(train_span(*call))) for call in calls]


def assert_same_crossfit(a, b) -> None:
    assert a.best_epoch == b.best_epoch
    assert [s.dev_accuracy for s in a.history] == [s.dev_accuracy for s in b.history]
    assert [s.train_loss for s in a.history] == [s.train_loss for s in b.history]
    np.testing.assert_array_equal(a.oof_logits, b.oof_logits)
    assert all(states_equal(f, g) for f, g in zip(a.folds, b.folds, strict=True))
    assert states_equal(a.refit, b.refit)


@pytest.mark.parametrize("rule", [WeightedLoss, InStep], ids=["refit after the folds", "refit beside the folds"])
def test_fold_models_trained_elsewhere_equal_fold_models_trained_here(rule) -> None:
    x, y, gold = problem(noise=1.0)
    here = fit_folds(wide, x, y, gold, MEMORISING, rule=lambda _f: rule())
    spread = fit_folds(wide, x, y, gold, MEMORISING, rule=lambda _f: rule(), spread=elsewhere)
    assert here.best_epoch < MEMORISING.epochs - 1  # the choice is not simply the last epoch
    assert_same_crossfit(spread, here)


def test_a_spread_sends_every_fold_model_once_per_advance_and_keeps_the_rows_at_home() -> None:
    x, y, gold = problem()
    sent: list[tuple[int, int, bool]] = []

    def count(jobs: list) -> list[Span]:
        sent.extend((start, until, held is None) for _t, start, until, held in jobs)
        spans = elsewhere(jobs)
        assert all(span.trainer.x is None for span in spans)  # the table does not travel back
        return spans

    run = FoldTraining(build, x, y, gold, SETTINGS, rule=lambda _f: WeightedLoss(), spread=count)
    run.advance(2)
    run.advance(SETTINGS.epochs)
    assert sent == [(0, 2, False)] * 3 + [(2, SETTINGS.epochs, False)] * 3  # the lazy refit is not sent
    result = run.result()
    assert all(t.x is run.shared_x for t in run.trainers)
    alone = fit_folds(build, x, y, gold, SETTINGS, rule=lambda _f: WeightedLoss())
    assert_same_crossfit(result, alone)


def test_a_race_sends_both_candidates_fold_models_in_one_spread_and_keeps_the_same_one() -> None:
    x, y, gold = problem()
    other = np.concatenate([y[:45], np.random.default_rng(1).permutation(y[45:])])
    calls: list[int] = []

    def counted(jobs: list) -> list[Span]:
        calls.append(len(jobs))
        return elsewhere(jobs)

    def choose(oof: dict[str, np.ndarray]) -> str:
        return max(oof, key=lambda n: float((oof[n].argmax(1) == gold.y).mean()))

    def runs(spread) -> dict[str, FoldTraining]:
        return {name: FoldTraining(build, x, t, gold, SETTINGS, rule=lambda _f: WeightedLoss(), spread=spread)
                for name, t in (("useful", y), ("useless", other))}

    kept, result = race(runs(counted), 2, choose)
    kept_here, here = race(runs(None), 2, choose)
    assert calls == [6, 3]  # the probe: 2 candidates x 3 folds at once; then the kept one's 3 folds
    assert kept == kept_here
    assert_same_crossfit(result, here)


def test_parallel_training_is_on_under_dask_only_and_can_be_turned_off() -> None:
    from weakflow.tasks.lib.steps import RunContext

    assert not RunContext.of(load_config(None, [])).spread_training
    assert RunContext.of(load_config(None, ["parallel.runner=dask", "parallel.n_workers=2"])).spread_training
    assert not RunContext.of(load_config(None, ["parallel.runner=dask", "parallel.n_workers=2",
                                                "parallel.training=false"])).spread_training

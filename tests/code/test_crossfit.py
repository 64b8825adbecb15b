"""Cross-fitting's schedule: the refit trained after its fold models (up to the chosen epoch) is the refit
trained beside them, and a race finishes only the candidate it keeps, as that candidate trained alone."""

from __future__ import annotations

import numpy as np
import torch

from weakflow.tasks.core.crossfit import FoldTraining, fit_folds, fold_rows_for, race, refit_count
from weakflow.tasks.core.folds import GoldFolds, gold_folds
from weakflow.tasks.core.models import LogitEnsemble, ModelSpec, build_model
from weakflow.tasks.core.training import TrainSettings, WeightedLoss
from weakflow.tasks.lib.config import SelectionConfig

SETTINGS = TrainSettings(epochs=6, batch_size=32, lr=1e-2)
MEMORISING = TrainSettings(epochs=20, batch_size=32, lr=1e-2)  # long enough to learn the random labels' noise


class InStep(WeightedLoss):
    """The plain loss, but claiming to pick its own epochs: the refit must then train beside the folds."""

    own_epochs = True


def problem(seed: int = 0, noise: float = 0.3) -> tuple[np.ndarray, np.ndarray, GoldFolds]:
    """45 gold rows first, then rows whose labels are random at rate ``noise`` (1.0: the out-of-fold gold
    accuracy peaks before the last epoch, as the network learns the noise)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 240)
    x = (rng.normal(size=(240, 4)) + np.eye(3, 4)[y] * 1.5).astype(np.float32)
    noisy = np.where(rng.random(240) < noise, rng.integers(0, 3, 240), y)
    noisy[:45] = y[:45]
    return x, noisy, GoldFolds(np.arange(45), y[:45], gold_folds(y[:45], 3, 0))


def build(_fold: int | None, hidden: tuple[int, ...] = (16,)) -> torch.nn.Module:
    torch.manual_seed(7)
    return build_model(ModelSpec("mlp", 4, 3, hidden=hidden, dropout=0.3))  # dropout: draws random numbers


def wide(_fold: int | None) -> torch.nn.Module:
    return build(_fold, (64, 64))


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_refit_trained_after_its_folds_equals_the_refit_trained_beside_them() -> None:
    x, y, gold = problem(noise=1.0)
    late = fit_folds(wide, x, y, gold, MEMORISING, rule=lambda _f: WeightedLoss())
    in_step = fit_folds(wide, x, y, gold, MEMORISING, rule=lambda _f: InStep())
    assert late.best_epoch == in_step.best_epoch < MEMORISING.epochs - 1  # the in-step refit was rolled back
    assert states_equal(late.refit, in_step.refit)
    assert all(states_equal(a, b) for a, b in zip(late.folds, in_step.folds))
    np.testing.assert_array_equal(late.oof_logits, in_step.oof_logits)


def test_lazy_refit_trains_only_up_to_the_chosen_epoch() -> None:
    x, y, gold = problem(noise=1.0)
    run = FoldTraining(wide, x, y, gold, MEMORISING, rule=lambda _f: WeightedLoss())
    assert run.lazy and run.refit is not None
    epochs: list[int] = []
    original = run.refit.epoch
    run.refit.epoch = lambda e: (epochs.append(e), original(e))[1]  # count, then train for real
    run.advance(MEMORISING.epochs)
    assert epochs == []  # the folds moved alone
    run.result()
    assert run.best_epoch < MEMORISING.epochs - 1
    assert epochs == list(range(run.best_epoch + 1))


def test_race_finishes_only_the_kept_candidate_as_if_trained_alone() -> None:
    x, y, gold = problem()
    shuffled = np.random.default_rng(1).permutation(y[45:])
    other = np.concatenate([y[:45], shuffled])  # same gold rows, weak labels that teach nothing
    runs = {name: FoldTraining(build, x, t, gold, SETTINGS, rule=lambda _f: WeightedLoss())
            for name, t in (("useful", y), ("useless", other))}
    seen: dict[str, float] = {}

    def choose(oof: dict[str, np.ndarray]) -> str:
        seen.update({n: float((o.argmax(1) == gold.y).mean()) for n, o in oof.items()})
        return max(seen, key=seen.__getitem__)

    kept, result = race(runs, 2, choose, None)
    assert set(seen) == {"useful", "useless"} and kept == max(seen, key=seen.__getitem__)
    assert runs["useless" if kept == "useful" else "useful"].epoch == 2  # the other stopped at the probe
    alone = fit_folds(build, x, y if kept == "useful" else other, gold, SETTINGS, rule=lambda _f: WeightedLoss())
    assert result.best_epoch == alone.best_epoch
    assert states_equal(result.refit, alone.refit)
    np.testing.assert_array_equal(result.oof_logits, alone.oof_logits)


def member(i: int) -> torch.nn.Module:
    torch.manual_seed(100 + i)
    return build_model(ModelSpec("mlp", 4, 3, hidden=(16,), dropout=0.3))


def test_a_bagged_refit_averages_members_from_their_own_seeds_and_changes_nothing_that_judges() -> None:
    x, y, gold = problem(noise=1.0)
    single = fit_folds(build, x, y, gold, MEMORISING, rule=lambda _f: WeightedLoss())
    bagged = fit_folds(build, x, y, gold, MEMORISING, rule=lambda _f: WeightedLoss(), refits=3, member=member)
    assert isinstance(bagged.refit, LogitEnsemble) and len(bagged.refit.members) == 3
    # the folds, their out-of-fold logits and the chosen epoch are the single refit's: the bag only ships
    assert bagged.best_epoch == single.best_epoch < MEMORISING.epochs - 1
    np.testing.assert_array_equal(bagged.oof_logits, single.oof_logits)
    a, b, c = bagged.refit.members
    assert states_equal(a, single.refit)  # the first member is the refit that would ship alone
    assert not (states_equal(a, b) or states_equal(a, c) or states_equal(b, c))
    with torch.no_grad():
        xt = torch.as_tensor(x[:20])
        mean = torch.stack([m(xt) for m in bagged.refit.members]).mean(0)
        torch.testing.assert_close(bagged.refit(xt), mean)
    # each member trained up to the chosen epoch only, like the single refit: the same number of steps
    steps = [int(m.body[1].num_batches_tracked) for m in bagged.refit.members]
    assert steps == [int(single.refit.body[1].num_batches_tracked)] * 3


def test_a_refit_that_trains_beside_its_folds_is_never_bagged() -> None:
    x, y, gold = problem()
    beside = fit_folds(build, x, y, gold, SETTINGS, rule=lambda _f: InStep(), refits=3, member=member)
    assert not isinstance(beside.refit, LogitEnsemble)


def test_auto_refits_bag_small_tables_only() -> None:
    assert [refit_count("auto", n) for n in (7, 1_000, 1_001, 10**6)] == [3, 3, 1, 1]
    assert refit_count(2, 10**6) == 2


def test_a_trainers_dropout_stream_is_not_its_batch_order_stream() -> None:
    from weakflow.tasks.core.training import Trainer

    x, y, _ = problem()
    trainer = Trainer(build(None), x, y, SETTINGS)
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(trainer.rng[0])
        dropout_draws = torch.rand(8)
    order_draws = torch.rand(8, generator=torch.Generator().manual_seed(SETTINGS.seed))
    assert not torch.equal(dropout_draws, order_draws)


def test_a_trainers_own_stream_moves_on_from_epoch_to_epoch() -> None:
    from weakflow.tasks.core.training import Trainer

    x, y, _ = problem()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(4, 3))
    masks: list[torch.Tensor] = []
    net[0].register_forward_hook(lambda _m, _i, out: masks.append(out == 0))
    trainer = Trainer(net, x, y, TrainSettings(epochs=2, batch_size=len(y)))  # one batch per epoch
    trainer.epoch(0)
    trainer.epoch(1)
    assert len(masks) == 2 and not torch.equal(masks[0], masks[1])  # fresh dropout draws each epoch


def test_fold_models_train_on_their_gold_and_a_sample_while_the_refit_trains_on_all() -> None:
    x, y, gold = problem()
    run = FoldTraining(build, x, y, gold, SETTINGS, fold_rows=50)
    for f in range(gold.k):
        rows = set(run.trainers[f].subset.tolist())
        held = set(gold.rows[gold.held_out(f)].tolist())
        assert rows.isdisjoint(held) and set(gold.rows.tolist()) - held <= rows  # all its gold, none held out
        assert len(rows - set(gold.rows.tolist())) == 50  # and 50 of the 195 others
    assert run.sampled == 50
    assert len({frozenset(t.subset.tolist()) - set(gold.rows.tolist()) for t in run.trainers[: gold.k]}) == 1
    assert run.refit is not None and run.refit.rows == len(x)
    every = FoldTraining(build, x, y, gold, SETTINGS, fold_rows=195)  # as many as there are: no sample
    assert every.sampled is None
    assert all(t.rows == len(x) - len(gold.rows[gold.held_out(f)]) for f, t in enumerate(every.trainers[: gold.k]))


def test_auto_fold_rows_sample_only_large_tables() -> None:
    assert fold_rows_for("all", 10**6) is None and fold_rows_for(None, 10**6) is None
    assert SelectionConfig().fold_rows == "auto"
    assert fold_rows_for("auto", 20_000) is None  # today's full cross-fitting up to 20,000 rows
    assert fold_rows_for("auto", 20_001) == 10_000
    assert fold_rows_for("auto", 1_000_000) == 100_000
    assert fold_rows_for(5_000, 100) == 5_000


def test_within_noise_counts_only_the_rows_one_epoch_gets_right_and_the_other_wrong() -> None:
    from weakflow.tasks.core.crossfit import within_noise

    y = np.zeros(100, dtype=np.int64)
    right = np.tile([5.0, 0.0], (100, 1))  # every row right

    def wrong_on(rows: list[int]) -> np.ndarray:
        out = right.copy()
        out[rows] = [0.0, 5.0]
        return out

    # the peak beats the later epoch by 1 row of 1 discordant: 1 <= 1 x sqrt(1)
    assert within_noise(wrong_on([0]), right, y, 1.0)
    assert not within_noise(wrong_on([0, 1]), right, y, 1.0)  # 2 > sqrt(2)
    # 5 lost, 3 won: a difference of 2 rows against sqrt(8) = 2.83
    assert within_noise(wrong_on([0, 1, 2, 3, 4]), wrong_on([5, 6, 7]), y, 1.0)
    assert not within_noise(wrong_on([0, 1, 2, 3, 4]), wrong_on([5]), y, 1.0)  # 4 > sqrt(6) = 2.45
    assert within_noise(wrong_on([0, 1, 2, 3]), right, y, 2.0)  # 4 <= 2 x sqrt(4)


def test_an_epoch_noise_keeps_a_later_epoch_within_noise_of_the_best_but_not_one_beyond_it() -> None:
    """Epochs judged on hand-made out-of-fold predictions (45 gold rows): the kept epoch, its predictions and its
    networks' states, with the rule and without."""
    x, y, gold = problem()

    def right_on(rows: range) -> np.ndarray:  # logits right on ``rows``, wrong (one class on) elsewhere
        out = np.eye(3, dtype=np.float32)[(gold.y + 1) % 3] * 5
        out[list(rows)] = np.eye(3, dtype=np.float32)[gold.y[list(rows)]] * 5
        return out

    epochs = [right_on(range(30)),  # 0
              right_on(range(40)),  # 1: the peak, 40 right
              right_on(range(38)),  # 2: 2 lost, 0 won: 2 > sqrt(2), beyond noise
              right_on(range(39)),  # 3: 1 lost of 1: within noise of the peak
              right_on(range(2, 41)),  # 4: 2 lost, 1 won: 1 <= sqrt(3), within noise
              right_on(range(10, 44))]  # 5: 10 lost, 4 won: 6 > sqrt(14), beyond

    def kept(epoch_noise: float) -> FoldTraining:
        run = FoldTraining(build, x, y, gold, SETTINGS, epoch_noise=epoch_noise)
        for e, oof in enumerate(epochs):
            run._record(e, [0.0], {}, oof, lambda e=e: [{"epoch": torch.tensor(e)}], None)
        return run

    best, later = kept(0.0), kept(1.0)
    assert best.best_epoch == best.peak_epoch == later.peak_epoch == 1
    assert later.best_epoch == 4 and later.best_states == [{"epoch": torch.tensor(4)}]
    np.testing.assert_array_equal(later.best_oof, epochs[4])
    assert best.best_states == [{"epoch": torch.tensor(1)}]
    assert kept(1e6).best_epoch == len(epochs) - 1  # any noise allowed: the last epoch


def test_an_epoch_noise_changes_the_choice_only_never_the_training() -> None:
    def run(epoch_noise: float) -> FoldTraining:
        x, y, gold = problem(noise=0.6)
        out = FoldTraining(wide, x, y, gold, MEMORISING, rule=lambda _f: WeightedLoss(), epoch_noise=epoch_noise)
        out.advance(MEMORISING.epochs)
        return out

    best, later, last = run(0.0), run(1.0), run(1e6)
    accuracy = [h.dev_accuracy for h in best.history]
    assert [h.dev_accuracy for h in later.history] == [h.dev_accuracy for h in last.history] == accuracy
    assert accuracy[best.best_epoch] == max(accuracy) and later.best_epoch >= best.best_epoch
    assert last.best_epoch == MEMORISING.epochs - 1
    result = last.result()  # the fold models are that epoch's, the refit trains up to it
    assert result.best_epoch == MEMORISING.epochs - 1
    assert np.isclose((result.oof_logits.argmax(1) == last.gold.y).mean(), accuracy[-1])

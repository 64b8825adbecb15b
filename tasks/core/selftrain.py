"""Self-training rounds: retrain on gold + pseudo labels, relabel the pool with the new model, expand.

The loop only decides; the caller supplies how to train a round and how to relabel, so the same rules
run on the demo, on a streamed pool, and on hand-made numbers in the tests. Stopping rules:

- the pseudo set stopped growing: a relabelling kept fewer than ``(1 + min_growth)`` times the rows the
  round trained on; the round's model is kept;
- dev accuracy fell by more than ``dev_tolerance`` against the previous round: that round's model is
  discarded and the previous one kept;
- ``max_rounds`` reached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

M = TypeVar("M")  # a trained model
P = TypeVar("P")  # a pseudo-labelled set


@dataclass
class Round(Generic[M, P]):
    index: int  # 1-based
    model: M
    dev_accuracy: float
    trained_on: int  # pseudo rows this round trained on
    relabelled: int | None = None  # pseudo rows the round's model kept when relabelling
    pseudo: P | None = None  # that relabelled set


@dataclass
class SelfTrainResult(Generic[M, P]):
    rounds: list[Round[M, P]] = field(default_factory=list)
    chosen: int = 0  # index into rounds of the model handed back
    stop_reason: str = ""

    @property
    def model(self) -> M:
        return self.rounds[self.chosen].model


def self_train(
    initial: P,
    size: Callable[[P], int],
    train_round: Callable[[int, P], tuple[M, float]],
    relabel: Callable[[int, M], P],
    max_rounds: int = 3,
    min_growth: float = 0.01,
    dev_tolerance: float = 0.0,
    on_round: Callable[[Round[M, P]], None] | None = None,
) -> SelfTrainResult[M, P]:
    """Run rounds from ``initial`` (the weak model's pseudo set) until a stopping rule fires.

    ``train_round(i, pseudo) -> (model, dev accuracy)``; ``relabel(i, model) -> pseudo set``;
    ``size(pseudo)`` counts its rows. ``on_round`` sees each finished round (for logging)."""
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
    result: SelfTrainResult[M, P] = SelfTrainResult()
    pseudo = initial
    for i in range(1, max_rounds + 1):
        model, dev_acc = train_round(i, pseudo)
        rnd: Round[M, P] = Round(i, model, dev_acc, size(pseudo))
        result.rounds.append(rnd)
        previous = result.rounds[-2] if len(result.rounds) > 1 else None
        if previous is not None and dev_acc < previous.dev_accuracy - dev_tolerance:
            result.chosen, result.stop_reason = len(result.rounds) - 2, (
                f"dev accuracy fell in round {i} ({dev_acc:.4f} < {previous.dev_accuracy:.4f}); kept round {i - 1}")
            _notify(on_round, rnd)
            return result
        result.chosen = len(result.rounds) - 1
        if i == max_rounds:
            result.stop_reason = f"reached max_rounds={max_rounds}"
            _notify(on_round, rnd)
            return result
        rnd.pseudo = relabel(i, model)
        rnd.relabelled = size(rnd.pseudo)
        _notify(on_round, rnd)
        if rnd.relabelled == 0 or rnd.relabelled < (1.0 + min_growth) * rnd.trained_on:  # 0 never "grows"
            result.stop_reason = (f"pseudo set stopped growing after round {i} ({rnd.trained_on} -> "
                                  f"{rnd.relabelled} rows, min_growth {min_growth:g})")
            return result
        pseudo = rnd.pseudo
    return result  # unreachable: the loop returns at max_rounds


def _notify(on_round: Callable[[Round], None] | None, rnd: Round) -> None:
    if on_round is not None:
        on_round(rnd)

"""Promotion gates: explicit functions that decide and raise, testable on hand-made numbers.

A new version becomes ``champion`` only when every gate passes; otherwise it is registered as
``challenger`` with the reasons as a tag, and the current champion keeps serving.

The gates that hold by default are relative to the same data: not worse than the gold-only model of the
same run, not worse than the champion re-scored on the same split. An absolute floor
(``gates.min_accuracy``) is opt-in: what accuracy is good depends on the data (98% on the digits demo,
far less on a hard task of the user's own), so no fixed number suits every data set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field


class GateFailure(Exception):
    """One gate said no; ``gate`` names it and the message says why with the numbers."""

    def __init__(self, gate: str, reason: str, forcible: bool = False, setting: str | None = None) -> None:
        super().__init__(f"{gate}: {reason}")
        self.gate = gate
        self.reason = reason
        # accuracy gates may be passed knowingly by a person who says why (`weakflow promote --force`);
        # validation and governance may not: their data or findings must be fixed
        self.forcible = forcible
        self.setting = setting  # the config change that would pass this gate, if one would


@dataclass(frozen=True)
class GateInput:
    accuracy: float  # candidate, on the frozen gold test split
    validation_passed: bool
    champion_version: str | None = None
    champion_accuracy: float | None = None  # the champion re-scored on the same split
    champion_error: str | None = None  # why the champion could not be re-scored, if it could not
    governance_passed: bool = True  # contamination/leakage checks (a version tagged governance=failed)
    # candidate minus the gold-only model trained in the same run, on paired bootstrap resamples of the test
    # split: (estimate, low, high); None when not measured (e.g. `weakflow promote` of an older version)
    vs_gold_only: tuple[float, float, float] | None = None


@dataclass
class GateDecision:
    passed: bool
    failures: list[GateFailure] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return "; ".join(str(f) for f in self.failures) if self.failures else "all gates passed"


def gate_validation(inputs: GateInput) -> None:
    if not inputs.validation_passed:
        raise GateFailure("validation", "the data validation suite did not pass")


def gate_governance(inputs: GateInput) -> None:
    if not inputs.governance_passed:
        raise GateFailure("governance", "the governance checks (contamination, leakage) did not pass")


def gate_min_accuracy(inputs: GateInput, minimum: float | None) -> None:
    """The opt-in absolute floor (``gates.min_accuracy``; None: no floor)."""
    if minimum is not None and not inputs.accuracy >= minimum:
        raise GateFailure("min_accuracy", f"test accuracy {inputs.accuracy:.4f} is below the minimum {minimum:.4f}",
                          forcible=True, setting="--set gates.min_accuracy=null (no floor) or a lower floor")


def gate_not_worse_than_champion(inputs: GateInput, max_regression: float) -> None:
    if inputs.champion_version is None:
        return  # first model: nothing to compare with
    if inputs.champion_accuracy is None:
        raise GateFailure("champion", f"champion v{inputs.champion_version} could not be scored on this test split "
                                      f"({inputs.champion_error or 'unknown error'})",
                          forcible=True)
    if inputs.accuracy < inputs.champion_accuracy - max_regression - 1e-12:
        drop = math.ceil((inputs.champion_accuracy - inputs.accuracy) * 10_000) / 10_000
        raise GateFailure(
            "champion",
            f"test accuracy {inputs.accuracy:.4f} is worse than champion v{inputs.champion_version}'s "
            f"{inputs.champion_accuracy:.4f} on the same test split (allowed drop {max_regression:.4f})",
            forcible=True, setting=f"--set gates.max_regression={drop:.4f} (the drop this version makes)",
        )


def gate_not_worse_than_gold_only(inputs: GateInput) -> None:
    """Weak supervision must earn its place: refuse a model whose accuracy is below the gold-only model's by
    more than resampling noise (the whole paired interval of the difference below 0)."""
    if inputs.vs_gold_only is None:
        return
    estimate, low, high = inputs.vs_gold_only
    if high < 0:
        raise GateFailure(
            "gold_only",
            f"test accuracy is below the gold-only model of the same run by {-estimate:.4f} (paired bootstrap "
            f"interval of the difference [{low:+.4f}, {high:+.4f}] lies below 0): weak labels made it worse",
            forcible=True)


def decide(inputs: GateInput, min_accuracy: float | None = None, max_regression: float = 0.0) -> GateDecision:
    """Run every gate (not just up to the first failure) so the reviewer sees all reasons. ``min_accuracy``
    None (the default): no absolute floor, the gate is not checked."""
    gates: list[tuple[str, Callable[[], None]]] = [
        ("validation", lambda: gate_validation(inputs)),
        ("governance", lambda: gate_governance(inputs)),
        *([("min_accuracy", lambda: gate_min_accuracy(inputs, min_accuracy))] if min_accuracy is not None else []),
        ("champion", lambda: gate_not_worse_than_champion(inputs, max_regression)),
        ("gold_only", lambda: gate_not_worse_than_gold_only(inputs)),
    ]
    decision = GateDecision(passed=True)
    for name, gate in gates:
        decision.checked.append(name)
        try:
            gate()
        except GateFailure as failure:
            decision.failures.append(failure)
    decision.passed = not decision.failures
    return decision


def enforce(decision: GateDecision) -> None:
    """Raise the first failure; for callers that must not continue past a failed gate."""
    if decision.failures:
        raise decision.failures[0]

"""The pipeline's one composition (``flows/compose.py``) in one process with a runner that records nothing:
no Prefect, no MLflow.

The same stages, in the same order, with the same inputs as `weakflow run`; only the recording halves
(MLflow logging, the registry, the alias) and the Prefect tasks, time limits and epoch bars around each
stage are left out, so `bench.pipeline` measures what orchestration and tracking add, not compute.

    python -m bench.plain --workspace /tmp/ws
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class PlainRun:
    """What one unrecorded run of the pipeline gives: test accuracy of the model it would ship and of the
    candidates it trained, and seconds per stage."""

    test_accuracy: float  # the model the pipeline ships (registers)
    candidates: dict[str, float]  # test accuracy per candidate: gold_only, weak, final
    shipped: str  # which candidate was shipped
    times: dict[str, float] = field(default_factory=dict)
    scores: dict = field(default_factory=dict)  # tasks.lib.scores.ModelScores per candidate and "shipped"
    summary: list[tuple[str, str]] = field(default_factory=list)  # the run summary's lines
    outcome: Any = None  # tasks.lib.results.RunOutcome: every stage's result


def run(workspace: Path, overrides: list[str]) -> PlainRun:
    from weakflow.tasks.lib.config import load_config

    return run_config(load_config(None, [f"tracking.workspace={workspace}", *overrides]))


def run_config(cfg, workspace: Path | None = None) -> PlainRun:  # cfg: tasks.lib.config.Config
    """The composition on ``cfg`` (any data source) with :class:`tasks.lib.steps.PlainSteps`; ``workspace``
    (default: ``tracking.workspace``) holds the demo data and the pseudo-label sets."""
    from weakflow.flows.compose import compose
    from weakflow.tasks.lib.steps import PlainSteps, RunContext

    if workspace is not None:
        cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"workspace": Path(workspace)})})
    steps = PlainSteps()
    published, outcome = compose(cfg, RunContext.of(cfg), steps)
    e = outcome.evaluation
    tested = {"gold_only": e.gold_only, "weak": e.weak, "final": e.final}
    print(f"test accuracy {e.shipped.accuracy:.4f} ({outcome.selection.chosen}), "
          f"gates passed: {outcome.registration.decision.passed}")
    return PlainRun(e.shipped.accuracy, {k: v.accuracy for k, v in tested.items() if v is not None},
                    outcome.selection.chosen, steps.times,
                    {k: v for k, v in {**tested, "shipped": e.shipped}.items() if v is not None}, published.stages,
                    outcome)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    args.workspace.mkdir(parents=True, exist_ok=True)
    result = run(args.workspace, args.overrides)
    print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.times.items()))


if __name__ == "__main__":
    main()

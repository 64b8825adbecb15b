"""Stage publish, the run's last: the summary onto the pipeline run, then the alias.

Everything a run writes about itself (the per-stage summary, headline metrics, tags) goes first; moving
``champion`` (through :func:`deploy.registry.move_champion`, which records the history rollback follows)
or ``challenger`` is the very last step, so any failure before it leaves the champion serving.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd

from weakflow.deploy.registry import CHAMPION, move_champion
from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.config import Config
from weakflow.tasks.lib.data import PipelineData
from weakflow.tasks.evaluate import Evaluation
from weakflow.tasks.full_train import FullModel
from weakflow.tasks.governance import CheckResult, Findings
from weakflow.tasks.pseudo_label import PseudoLabels
from weakflow.tasks.register import Registration
from weakflow.tasks.report.build import pipeline_note
from weakflow.tasks.select import Selection
from weakflow.tasks.lib.stage import stage_task
from weakflow.tasks.weak_labels import WeakLabels
from weakflow.tasks.weak_train import WeakModel, evidence_note


@dataclass(frozen=True)
class RunOutcome:
    """What each stage produced, as the summary needs it (any of the weak side may be missing)."""

    data: PipelineData
    labels: WeakLabels | None
    weak: WeakModel | None
    pseudo: PseudoLabels | None
    final: FullModel | None
    selection: Selection
    evaluation: Evaluation
    registration: Registration
    checks: Findings
    pseudo_checks: Findings | None

    @property
    def governance(self) -> dict[str, CheckResult]:
        return self.checks.summary() | (self.pseudo_checks.summary() if self.pseudo_checks is not None else {})


def _thresholds(pseudo: PseudoLabels) -> str:
    t = np.minimum(pseudo.stream.thresholds.astype(float), 1.0)
    if pseudo.stream.uncertified.all():
        return "none certified"
    lo, hi = float(t[~pseudo.stream.uncertified].min()), float(t[~pseudo.stream.uncertified].max())
    return f"{lo:.2f}" if round(lo, 2) == round(hi, 2) else f"{lo:.2f}-{hi:.2f}"


SHOWN_SOURCES = 6  # weak sources named in the summary line; the rest are counted


def source_accuracies(stats: pd.DataFrame, shown: int = SHOWN_SOURCES) -> str:
    """Each weak source's accuracy on gold with its interval, the sources that vote on most rows first; past
    ``shown`` sources, "… and N more" and where they all are (a table row per stage stays readable)."""
    records = stats.to_dict("records")
    if "coverage" in stats.columns:  # stable: equal coverage keeps the configured order
        records.sort(key=lambda r: -(r["coverage"] if r["coverage"] == r["coverage"] else 0.0))

    def one(r: dict) -> str:
        a, lo, hi = r.get("accuracy"), r.get("accuracy_low"), r.get("accuracy_high")
        if a is None or a != a:
            return f"{r['source']} n/a"
        return f"{r['source']} {a:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if lo is not None and lo == lo else "")

    text = ", ".join(one(r) for r in records[:shown])
    if len(records) > shown:
        text += (f" … and {len(records) - shown} more (fewer rows covered; all in the weak_labels run's "
                 "weak_labels/sources.json, or weakflow lfs)")
    return text


def summary_lines(o: RunOutcome, cfg: Config) -> list[tuple[str, str]]:
    """(stage, one line of figures) for the run summary table and the pipeline run's description."""
    counts = o.data.provenance_counts()
    lines = [("validate", "passed; rows " + ", ".join(f"{k} {v}" for k, v in counts.items())),
             ("governance", ", ".join(f"{k} {r.found}" + ("" if r.action == "none" else f" ({r.action})")
                                      for k, r in o.governance.items()))]
    if o.labels is not None:
        lines.append(("weak_labels", f"{len(o.labels.row_ids)} weak rows ({cfg.weak_labels.aggregation}); "
                                     f"source accuracy on gold: {source_accuracies(o.labels.stats)}"))
    sel = o.selection.table.set_index("candidate")["oof_accuracy"]
    lines.append(("gold_only", f"cross-fitted gold accuracy {sel['gold_only']:.3f} ({o.data.folds} folds)"))
    if o.weak is not None:
        lines.append(("weak_train", f"{cfg.weak_train.method}: cross-fitted gold accuracy {sel['weak']:.3f}"
                                    + evidence_note(o.weak.figures)))
    if o.pseudo is not None:
        p = o.pseudo
        interval = p.precision_interval
        precision = (f"{p.holdout_precision:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"
                     if p.holdout_precision is not None and interval else "n/a")
        lines.append(("pseudo_label", f"{p.policy.kind} thresholds {_thresholds(p)} after temperature "
                                      f"{p.calibration.temperature:.2f}: kept {p.kept_count} of {p.candidates}; "
                                      f"precision on held-out gold {precision}"))
    if o.final is not None:
        rounds = (f"; {len(o.final.rounds.rounds)} self-training round(s), {o.final.rounds.stop_reason}"
                  if o.final.rounds is not None else "")
        lines.append(("full_train", f"{cfg.full_train.strategy}: cross-fitted gold accuracy {sel['final']:.3f}{rounds}"))
    lines.append(("select", o.selection.reason))
    e = o.evaluation
    lift = e.vs_gold_only
    lines.append(("evaluate", f"test accuracy {e.shipped.accuracy:.4f} ({e.shipped_name}; gold-only "
                              f"{e.gold_only.accuracy:.4f}" + (f", weak {e.weak.accuracy:.4f}" if e.weak else "")
                              + (f", final {e.final.accuracy:.4f}" if e.final else "") + ")"
                              + (f"; vs gold-only {lift[0]:+.4f} [{lift[1]:+.4f}, {lift[2]:+.4f}]" if lift else "")
                              + f"; macro-F1 {e.shipped.macro_f1:.4f}; ECE {e.shipped.ece:.4f}"))
    r = o.registration
    lines.append(("register", f"{r.model_name} v{r.version} -> {r.alias} ({r.decision.reason})"))
    return lines


def move_alias(registration: Registration, parent_run_id: str) -> None:
    """``champion`` through the gates' record (history, who, why), else ``challenger``."""
    client = mlflow.MlflowClient()
    if registration.alias == CHAMPION:
        move_champion(client, registration.model_name, registration.version, "registered",
                      f"pipeline run {parent_run_id}: {registration.decision.reason}")
    else:
        client.set_registered_model_alias(registration.model_name, registration.alias, registration.version)


@dataclass(frozen=True)
class Published:
    registration: Registration
    stages: list[tuple[str, str]]  # the run summary: (stage, one line of figures)


@stage_task("publish")
def publish(outcome: RunOutcome, cfg: Config, parent_run_id: str, experiment_id: str) -> Published:
    with tracking.stage_run("publish", parent_run_id, experiment_id):
        lines = summary_lines(outcome, cfg)
        e, r = outcome.evaluation, outcome.registration
        client = mlflow.MlflowClient()
        for key, value in {"test_accuracy": e.shipped.accuracy, "gold_only_test_accuracy": e.gold_only.accuracy,
                           "lift_over_gold_only": e.lift_over_gold_only}.items():
            client.log_metric(parent_run_id, key, value)
        note = "\n".join(f"- **{s}**: {f}" for s, f in lines) + pipeline_note(e)
        tags = ({"model_version": r.version, "model_alias": r.alias, "mlflow.note.content": note}
                | r.review_tags | outcome.selection.tags)
        for key, value in tags.items():
            client.set_tag(parent_run_id, key, value)
        tracking.log_json({"stages": lines}, "summary.json")
        move_alias(r, parent_run_id)  # the last step of the run
        return Published(r, lines)
